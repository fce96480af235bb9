"""deploy/prometheus and deploy/grafana stay true to the metrics contract: the files
load, every metric and label they query is one ARCHITECTURE.md "Operations" names,
every alert tells an operator what to do, and deploy/README.md names only files
the repository has.

ARCHITECTURE.md lives outside the repository, so its list of metrics is copied
into :data:`CONTRACT` below; change both together. promtool is not needed here
(``.ci/run`` runs it on the same files); when it is at hand, the dashboard's
queries go through its parser too, and under CI (``CI`` set, as ``.ci/run`` does)
it must be.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import ci
from tests.procs import ROOT

DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "relay-dashboard.json"

#: ARCHITECTURE.md, "Operations": name -> (type, labels). Binding; copied by hand.
CONTRACT: dict[str, tuple[str, frozenset[str]]] = {
    "relay_http_requests_total": ("counter", frozenset({"route", "method", "status"})),
    "relay_events_accepted_total": ("counter", frozenset({"type", "mode"})),
    "relay_events_rejected_total": ("counter", frozenset({"type"})),
    "relay_deliveries_total": ("counter", frozenset({"destination", "outcome"})),
    "relay_upstream_request_seconds": ("histogram", frozenset({"destination"})),
    "relay_event_delivery_latency_seconds": ("histogram", frozenset({"destination"})),
    "relay_queue_pending": ("gauge", frozenset({"destination"})),
    "relay_queue_retrying": ("gauge", frozenset({"destination"})),
    "relay_queue_dead": ("gauge", frozenset({"destination"})),
    "relay_queue_oldest_pending_seconds": ("gauge", frozenset({"destination"})),
    "relay_destination_healthy": ("gauge", frozenset({"destination"})),
    "relay_workers_live": ("gauge", frozenset()),
}
OUTCOMES = {"delivered", "retry", "dead", "credentials"}
#: Labels Prometheus adds to every scraped series, and its own per-target series.
TARGET_LABELS = frozenset({"job", "instance"})
BUILTIN: dict[str, frozenset[str]] = {"up": frozenset()}


def _series() -> dict[str, tuple[str, frozenset[str]]]:
    """Every series name a query may use -> (its contract name, the labels it has)."""
    names: dict[str, tuple[str, frozenset[str]]] = {}
    for name, (kind, labels) in CONTRACT.items():
        if kind == "histogram":
            names[f"{name}_bucket"] = (name, labels | {"le"} | TARGET_LABELS)
            names[f"{name}_sum"] = (name, labels | TARGET_LABELS)
            names[f"{name}_count"] = (name, labels | TARGET_LABELS)
        else:
            names[name] = (name, labels | TARGET_LABELS)
    for name, labels in BUILTIN.items():
        names[name] = (name, labels | TARGET_LABELS)
    return names


SERIES = _series()
ALL_LABELS = frozenset().union(*(labels for _, labels in SERIES.values()))
FUNCTIONS = {"sum", "min", "max", "avg", "count", "rate", "increase", "delta", "histogram_quantile"}
KEYWORDS = {"and", "or", "unless", "bool", "offset"}

_STR = r'"(?:[^"\\]|\\.)*"'
_SELECTOR = re.compile(rf"([A-Za-z_:][\w:]*)?\s*\{{((?:[^}}\"]|{_STR})*)\}}")
_MATCHER = re.compile(rf"\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*({_STR})\s*,?")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def metrics_in(expr: str) -> set[str]:
    """The series names a PromQL expression reads, after checking each selector's
    labels (and outcome values) and each grouping's labels against the contract."""
    used: set[str] = set()

    def selector(match: re.Match[str]) -> str:
        name, body = match[1], match[2]
        matchers = _MATCHER.findall(body)
        assert "".join(m.group(0) for m in _MATCHER.finditer(body)).strip() == body.strip(), (
            f"cannot read the matchers {{{body}}} in {expr!r}"
        )
        assert name, f"a selector without a metric name in {expr!r}"
        assert name in SERIES, f"{name} is not a contract metric ({expr!r})"
        used.add(name)
        for label, op, value in matchers:
            assert label in SERIES[name][1], f"{name} has no label {label} ({expr!r})"
            if label == "outcome":
                values = json.loads(value).split("|") if "~" in op else [json.loads(value)]
                assert set(values) <= OUTCOMES, f"no outcome {value} ({expr!r})"
        return f" {name} "

    rest = _SELECTOR.sub(selector, expr)
    assert '"' not in rest, f"a string outside a selector in {expr!r}"
    rest = re.sub(r"\[[^\]]*\]", " ", rest)  # ranges: [5m], [$__rate_interval]
    for _, labels in _GROUPING.findall(rest):
        for label in filter(None, (x.strip() for x in labels.split(","))):
            assert label in ALL_LABELS, f"no contract metric has a label {label} ({expr!r})"
    rest = _GROUPING.sub(" ", rest)
    for ident in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?", rest):
        name, call = ident[1], ident[2]
        if call:
            assert name in FUNCTIONS, f"{name}( is not a PromQL function used here ({expr!r})"
        elif name not in KEYWORDS:
            assert name in SERIES, f"{name} is not a contract metric ({expr!r})"
            used.add(name)
    assert rest.count("(") == rest.count(")"), f"unbalanced parentheses in {expr!r}"
    if "histogram_quantile" in expr:
        assert re.search(r"by \([^)]*\ble\b", expr), f"quantile without `by (le)`: {expr!r}"
        assert all(n.endswith("_bucket") for n in used), f"quantile of a non-bucket: {expr!r}"
    return used


def contract_names(series: set[str]) -> set[str]:
    return {SERIES[name][0] for name in series} - set(BUILTIN)


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(p, t) for p in dashboard["panels"] for t in p.get("targets", [])]


def _grafana_to_promql(expr: str) -> str:
    """A dashboard query as plain PromQL: Grafana's variables replaced by values."""
    return expr.replace("$__rate_interval", "5m").replace("$destination", ".*")


def test_checks_catch_what_they_should() -> None:
    assert metrics_in('sum by (destination) (rate(relay_deliveries_total{outcome="dead"}[5m]))')
    for bad in [
        "relay_queue_pendng",  # a typo
        "rate(relay_upstream_request_seconds[5m])",  # a histogram's bare name
        'relay_deliveries_total{status="500"}',  # a label it does not have
        'relay_deliveries_total{outcome="failed"}',  # an outcome that does not exist
        "sum by (region) (relay_queue_pending)",
        "histogram_quantile(0.9, rate(relay_upstream_request_seconds_bucket[5m]))",
        "sumx(relay_queue_pending)",
    ]:
        with pytest.raises(AssertionError):
            metrics_in(bad)


def test_prometheus_config_scrapes_api_and_workers_and_loads_the_rules() -> None:
    config = _yaml(PROMETHEUS)
    rule_files = config["rule_files"]
    assert rule_files, "no rule_files"
    for name in rule_files:  # Prometheus resolves them relative to the config file
        assert (PROMETHEUS.parent / name).resolve() == ALERTS.resolve()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert len(jobs) == len(config["scrape_configs"]), "job names repeat"
    assert set(jobs) == {"relay-api", "relay-worker"}
    for job in jobs.values():
        assert job.get("metrics_path", "/metrics") == "/metrics"
        assert job.keys() & {"static_configs", "dns_sd_configs", "file_sd_configs"}
        # A token, when one is configured, comes from a file, never from the repository.
        assert "credentials" not in job.get("authorization", {})
    text = PROMETHEUS.read_text()
    assert text.count("# authorization:") == len(jobs)
    assert text.count("#   credentials_file: ") == len(jobs)


def test_alert_rules_use_contract_metrics_and_say_what_to_do() -> None:
    rules = [rule for group in _yaml(ALERTS)["groups"] for rule in group["rules"]]
    jobs = {job["job_name"] for job in _yaml(PROMETHEUS)["scrape_configs"]}
    assert len({rule["alert"] for rule in rules}) == len(rules)
    used: set[str] = set()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        used |= metrics_in(rule["expr"])
        assert rule["labels"]["severity"] in {"warning", "critical"}
        notes = rule["annotations"]
        assert notes["summary"].strip(), rule["alert"]
        assert re.search(r"`relay \w+|README", notes["description"]), rule["alert"]
        for job_regex in re.findall(r'job=~?"([^"]*)"', rule["expr"]):
            assert set(job_regex.split("|")) <= jobs, "an alert names a job not scraped"
    # What issue 13 asks the alerts to watch.
    assert {
        "relay_destination_healthy",
        "relay_queue_oldest_pending_seconds",
        "relay_queue_dead",
        "relay_deliveries_total",
        "relay_workers_live",
        "relay_queue_pending",
        "relay_http_requests_total",
    } <= contract_names(used)


def test_dashboard_loads_and_shows_every_contract_metric() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 39  # Grafana 11 and later
    assert dashboard["uid"]
    assert dashboard["id"] is None
    assert [(i["name"], i["type"], i["pluginId"]) for i in dashboard["__inputs"]] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")
    ]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    # Provisioning from a file leaves ${DS_PROMETHEUS} alone: a variable resolves it.
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    used: set[str] = set()
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == source
            found = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["definition"])
            assert found, variable["definition"]
            assert found[1] in SERIES, variable["definition"]
            assert found[2] in SERIES[found[1]][1], variable["definition"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(set(ids)) == len(ids)
    for panel, target in _targets(dashboard):
        assert panel["datasource"] == source == target["datasource"], panel["title"]
        used |= metrics_in(target["expr"])
    for panel in dashboard["panels"]:
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(set(refs)) == len(refs), panel["title"]
        assert bool(refs) == (panel["type"] != "row"), panel["title"]
    assert contract_names(used) == set(CONTRACT)


def test_dashboard_panels_do_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in _dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[x, y]}"
                taken[x, y] = panel["title"]


def _promtool() -> str | None:
    """promtool on PATH, or the one .ci/promtool unpacks."""
    unpacked = ROOT / ".ci-promtool" / "usr" / "bin" / "promtool"
    return shutil.which("promtool") or (str(unpacked) if unpacked.exists() else None)


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    promtool = _promtool()
    if promtool is None:
        # .ci/run fetches promtool before pytest: in CI its absence is a failure.
        ci.missing("promtool", hint=".ci/promtool fetches it")
    rules = [
        {"record": f"relay_dashboard:panel{panel['id']}:{target['refId']}", "expr": expr}
        for panel, target in _targets(_dashboard())
        for expr in [_grafana_to_promql(target["expr"])]
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _tracked() -> set[str]:
    done = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        pytest.skip("not a git checkout")
    return set(done.stdout.splitlines())


def test_every_file_deploy_readme_names_is_in_the_repository() -> None:
    """Backticked paths in deploy/README.md: relative to deploy/ unless they start
    with ``deploy/`` or ``../``; absolute ones are on the user's host."""
    text = (DEPLOY / "README.md").read_text()
    ending = r"\.(?:ya?ml|json|conf|service|example)|Dockerfile[\w.]*|Procfile|build-image"
    named = set(re.findall(rf"`((?:\.\./)?[\w./-]*(?:{ending}))`", text))
    assert {"prometheus/alerts.yml", "grafana/relay-dashboard.json", "build-image"} <= named
    tracked = _tracked()
    missing = []
    for name in sorted(named):
        if name.startswith("/"):
            continue
        path = (ROOT if name.startswith("deploy/") else DEPLOY) / name
        if str(path.resolve().relative_to(ROOT)) not in tracked:
            missing.append(name)
    assert missing == []


def test_compose_monitoring_profile_mounts_what_the_configs_expect() -> None:
    tracked = _tracked()
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        assert all(yaml.safe_load_all(path.read_text())), path
    services = _yaml(DEPLOY / "compose.yaml")["services"]
    mounts: dict[str, dict[str, str]] = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and volume.startswith("."):
                source, target = volume.split(":")[:2]
                relative = str((DEPLOY / source).resolve().relative_to(ROOT))
                assert relative in tracked, f"{name} mounts {source}, not in the repository"
                mounts.setdefault(name, {})[relative] = target
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
    prometheus = mounts["prometheus"]
    config = prometheus["deploy/prometheus/prometheus.yml"]
    for rule_file in _yaml(PROMETHEUS)["rule_files"]:
        assert prometheus[f"deploy/prometheus/{rule_file}"] == str(Path(config).parent / rule_file)
    provider = _yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "relay.yml")
    dashboard = Path(mounts["grafana"]["deploy/grafana/relay-dashboard.json"])
    assert str(dashboard.parent) == provider["providers"][0]["options"]["path"]
    # The worker serves /metrics where Prometheus looks for it.
    worker = services["worker"]["command"]
    jobs = {job["job_name"]: job for job in _yaml(PROMETHEUS)["scrape_configs"]}
    port = worker[worker.index("--metrics-port") + 1]
    assert jobs["relay-worker"]["dns_sd_configs"][0]["port"] == int(port)


BUILD_IMAGE = DEPLOY / "build-image"


def _build_image(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUILD_IMAGE), *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_build_image_help_names_every_option_it_parses() -> None:
    """deploy/build-image needs root, Docker and minutes, so CI runs only its argument
    handling: --help, and the usage errors that come before anything is started."""
    done = _build_image("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: deploy/build-image ")
    # The argument loop's case labels (4 spaces in; the inner ones are deeper).
    cases = re.findall(r"^ {4}(-[^)\n]*)\)", BUILD_IMAGE.read_text(), re.M)
    parsed = {option.strip() for case in cases for option in case.split("|")} - {"-h"}
    listed = set(re.findall(r"^  (?:-h, )?(--[\w-]+)", done.stdout, re.M))
    assert {"--arch", "--cache", "--fresh-base", "--keep-daemon", "--help"} <= listed
    assert parsed == listed


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--arch", "x86"], "--arch: amd64, arm64 or all, not 'x86'"),
        (["--arch"], "--arch needs a value"),
        (["--cache"], "--cache needs a value"),
        (["--redis-server", ""], "--redis-server needs a value"),
        (["--arch", "all", "--nope"], "unknown argument '--nope'"),
    ],
)
def test_build_image_usage_errors_exit_2_before_starting_anything(
    args: list[str], says: str
) -> None:
    done = _build_image(*args)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"deploy/build-image: {says} (--help says more)\n"
