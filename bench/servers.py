"""Every process the bench starts, and the stack it measures: Redis, relay, upstream.

:class:`Procs` starts processes in their own session (a Ctrl-C reaches only the
bench, which then stops them in order), logs each one to a file in the bench's
temp dir, and stops every one still running in :meth:`Procs.stop_all`,
newest first, with SIGTERM and then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from redis import Redis

from relay.embedded import SERVER_SETTINGS, redis_server_binary

__all__ = [
    "BATCH",
    "BenchError",
    "Proc",
    "Procs",
    "Stack",
    "cpu_s",
    "create_key",
    "free_port",
    "http",
    "rss_kib",
    "runqueue_wait_s",
    "start_redis",
]

#: Items per batch request (relay takes at most 500).
BATCH = 500
#: The directory that holds the ``bench`` package.
_ROOT = str(Path(__file__).resolve().parent.parent)
#: How long a server may take to answer its health check.
_READY_TIMEOUT_S = 30.0
#: How long a stopped process may take to exit before it is killed.
_STOP_TIMEOUT_S = 10.0


class BenchError(RuntimeError):
    """Something the bench needs broke: a process did not start, a request failed."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(
    method: str, url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One request to a loopback URL: (status, body)."""
    if not url.startswith("http://127.0.0.1:"):
        raise BenchError(f"the bench talks to 127.0.0.1 only, not {url}")
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def cpu_s(pid: int) -> float:
    """CPU time a process used so far, user and system, all its threads (seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runqueue_wait_s(pid: int) -> float | None:
    """How long a process's threads waited for a core so far, ready to run (seconds;
    None where the kernel does not say: /proc/PID/task/TID/schedstat, Linux)."""
    try:
        waited = sum(
            int((task / "schedstat").read_text().split()[1])
            for task in Path(f"/proc/{pid}/task").iterdir()
        )
    except (OSError, IndexError, ValueError):
        return None
    return waited / 1e9


def rss_kib(pid: int) -> int:
    """Resident set size of a process (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


@dataclass
class Proc:
    """One started process and its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        # One access line a request would bury whatever said why it stopped.
        kept = [line for line in text.splitlines() if "aiohttp.access" not in line]
        return "\n".join(kept[-lines:])

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with {code}:\n{self.log_tail()}")


class Procs:
    """Start processes, and stop every one of them, whatever happens."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._started: list[Proc] = []

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None) -> Proc:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                argv,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log_path)
        self._started.append(proc)
        return proc

    def python(self, name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        """``python -m ARGS`` with this interpreter, ``bench`` importable from any cwd."""
        env = dict(os.environ if env is None else env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
        return self.start(name, [sys.executable, "-m", *args], env=env)

    def wait(self, proc: Proc, *, timeout_s: float) -> int:
        """Wait for a process to exit by itself; BenchError when it takes too long."""
        try:
            return proc.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            raise BenchError(
                f"{proc.name} did not finish within {timeout_s:.0f} s:\n{proc.log_tail()}"
            ) from None

    def signal(self, proc: Proc, sig: int = signal.SIGTERM) -> None:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)

    def stop(self, proc: Proc, *, timeout_s: float = _STOP_TIMEOUT_S) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit status."""
        self.signal(proc, signal.SIGTERM)
        try:
            code = proc.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.signal(proc, signal.SIGKILL)
            code = proc.popen.wait()
        if proc in self._started:
            self._started.remove(proc)
        return code

    def stop_all(self) -> None:
        """Stop everything still running, newest first (relay before its Redis)."""
        for proc in reversed(list(self._started)):
            self.stop(proc)

    def wait_http(self, proc: Proc, url: str, *, timeout_s: float = _READY_TIMEOUT_S) -> None:
        """Wait until ``GET url`` answers 200 while ``proc`` still runs."""
        deadline = time.monotonic() + timeout_s
        while True:
            proc.check_alive()
            with contextlib.suppress(OSError):
                if http("GET", url)[0] == 200:
                    return
            if time.monotonic() > deadline:
                raise BenchError(f"{proc.name} did not answer {url}:\n{proc.log_tail()}")
            time.sleep(0.05)


def start_redis(
    procs: Procs,
    *,
    replica_of: int | None = None,
    name: str = "redis-server",
    args: Sequence[str] = (),
    port: int | None = None,
    under: Sequence[str] = (),
) -> tuple[Proc, int]:
    """A redis-server as relay asks for it, and its port; with ``replica_of``, a replica
    of that port's; ``args``: more options (``--cluster-enabled yes``...); ``port``: that
    one rather than a free one; ``under``: a command it runs under (valgrind...)."""
    port = port or free_port()
    if replica_of is not None:
        name = "redis-replica"
    data = procs.workdir / ("redis" if name == "redis-server" else f"{name}-{port}")
    data.mkdir()
    argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--dir", str(data), *SERVER_SETTINGS]
    argv += ["--save", "", "--logfile", "", *args]
    if replica_of is not None:
        argv += ["--replicaof", "127.0.0.1", str(replica_of)]
    proc = procs.start(name, [*under, *argv])
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while True:
        proc.check_alive()
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=1) as sock,
        ):
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                return proc, port
        if time.monotonic() > deadline:
            raise BenchError(f"redis-server did not start:\n{proc.log_tail()}")
        time.sleep(0.02)


def create_key(procs: Procs, env: dict[str, str]) -> str:
    """A new API key (write:leads, write:contacts) made by ``relay keys create`` in
    ``env`` (its relay, its Redis)."""
    argv = [sys.executable, "-m", "relay", "keys", "create", "--name", "bench"]
    argv += ["--scope", "write:leads", "--scope", "write:contacts", "--json"]
    done = subprocess.run(
        argv,
        cwd=procs.workdir,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"relay keys create failed:\n{done.stderr.decode(errors='replace')}")
    key: str = orjson.loads(done.stdout)["key"]
    return key


def _webhook(name: str, url: str, events: str, extra: str = "") -> str:
    return f"""
[destinations.{name}]
type = "webhook"
url = "{url}"
secret = "whsec_YmVuY2htYXJrLXNpZ25pbmcta2V5LTAxMjM0NTY3"
events = [{events}]
{extra}
"""


@dataclass(frozen=True)
class Api:
    """One ``relay serve`` (``--no-worker`` unless asked) and an API key of its own."""

    proc: Proc
    port: int
    key: str

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}

    def post(self, path: str, body: bytes) -> dict[str, Any]:
        """POST to relay; the JSON answer. BenchError unless 2xx."""
        try:
            status, answer = http("POST", self.url(path), body=body, headers=self.auth)
        except OSError as exc:
            raise BenchError(
                f"POST {path}: {exc!r}; relay serve's log ends:\n{self.proc.log_tail()}"
            ) from exc
        if not 200 <= status < 300:
            raise BenchError(f"POST {path}: {status} {answer[:300]!r}")
        doc: dict[str, Any] = orjson.loads(answer)
        return doc


class Stack:
    """Redis (AOF, everysec), the fake upstream, ``relay serve --no-worker``, one key.

    Destinations: ``sink`` takes leads (ingest and memory; no worker ever reads
    it), ``fast`` and ``limited`` take contacts, sent with ``?destination=``.
    A worker gets a relay.toml with only the destination it is measured on;
    so does the ``relay serve`` with its in-process worker of the latency
    section, on ``steady`` (leads, no rate limit).
    """

    def __init__(self, procs: Procs, *, concurrency: int, rate_limit: str) -> None:
        self.procs = procs
        self.concurrency = concurrency
        self.rate_limit = rate_limit
        self.redis, self.redis_port = start_redis(procs)
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.upstream_port = free_port()
        self.upstream = procs.python(
            "upstream", "bench.apps", "upstream", "--port", str(self.upstream_port)
        )
        procs.wait_http(self.upstream, self.upstream_url("/healthz"))
        self.toml = self._write_toml("relay.toml", "sink", "fast", "limited")
        self.env = self.relay_env(self.toml)
        self.api = self.start_api("relay-serve")

    def start_api(
        self,
        name: str,
        *flags: str,
        db: int = 0,
        worker_for: str | None = None,
        extra_env: dict[str, str] | None = None,
        redis_url: str | None = None,
    ) -> Api:
        """A ``relay serve --no-worker [flags]`` on Redis database ``db`` (``db`` > 0: a
        keyspace of its own, as fresh as a new Redis), with a key of its own.

        With ``worker_for``, a ``relay serve`` with its in-process worker instead,
        whose relay.toml names only that destination. ``extra_env``: more settings.
        ``redis_url``: another Redis than the stack's (a cluster), instead of ``db``."""
        env = self.env if worker_for is None else self.worker_env(worker_for)
        url = redis_url or f"redis://127.0.0.1:{self.redis_port}/{db}"
        env = env | {"RELAY_REDIS_URL": url}
        env |= extra_env or {}
        key = create_key(self.procs, env)
        port = free_port()
        no_worker = ("--no-worker",) if worker_for is None else ()
        proc = self.procs.python(
            name,
            *("relay", "serve", *no_worker, *flags),
            *("--host", "127.0.0.1", "--port", str(port)),
            env=env,
        )
        api = Api(proc, port, key)
        self.procs.wait_http(proc, api.url("/readyz"))
        return api

    def start_replica(self) -> Proc:
        """A replica of the stack's Redis, once its link to the master is up."""
        proc, port = start_redis(self.procs, replica_of=self.redis_port)
        deadline = time.monotonic() + _READY_TIMEOUT_S
        with Redis(host="127.0.0.1", port=port) as redis:
            while redis.info("replication").get("master_link_status") != "up":
                proc.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"redis replica never linked up:\n{proc.log_tail()}")
                time.sleep(0.05)
        return proc

    @property
    def serve(self) -> Proc:
        return self.api.proc

    @property
    def key(self) -> str:
        return self.api.key

    def url(self, path: str) -> str:
        return self.api.url(path)

    def upstream_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.upstream_port}{path}"

    def relay_env(self, toml: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env |= {
            # This checkout's relay, whatever the interpreter's venv has installed.
            "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")])),
            "RELAY_REDIS_URL": self.redis_url,
            "RELAY_CONFIG": str(toml),
            "RELAY_DATA_DIR": str(self.procs.workdir / "relay-data"),
        }
        return env

    def worker_env(self, destination: str) -> dict[str, str]:
        """The environment of a ``relay worker`` that delivers only ``destination``."""
        return self.relay_env(self._write_toml(f"relay-{destination}.toml", destination))

    def _write_toml(self, filename: str, *names: str) -> Path:
        hook = self.upstream_url("/hook")
        tables = {
            "sink": _webhook("sink", hook, '"lead"'),
            "fast": _webhook("fast", hook, '"contact"', f"max_in_flight = {self.concurrency}"),
            "limited": _webhook("limited", hook, '"contact"', f'rate_limit = "{self.rate_limit}"'),
            "steady": _webhook("steady", hook, '"lead"', f"max_in_flight = {self.concurrency}"),
        }
        path = self.procs.workdir / filename
        path.write_text("".join(tables[name] for name in names))
        return path

    @property
    def auth(self) -> dict[str, str]:
        return self.api.auth

    def post(self, path: str, body: bytes) -> dict[str, Any]:
        return self.api.post(path, body)

    def enqueue_contacts(
        self, destination: str, count: int, *, tag: str, api: Api | None = None
    ) -> None:
        """Queue ``count`` contacts (one contact each) for ``destination`` through the API
        (``api``, default the stack's)."""
        api = api or self.api
        for start in range(0, count, BATCH):
            items = [
                {"email": f"{tag}{i}@example.com", "first_name": "Ann", "phone": "+14155550100"}
                for i in range(start, min(count, start + BATCH))
            ]
            answer = api.post(f"/v1/contacts?destination={destination}", orjson.dumps(items))
            if len(answer.get("accepted", ())) != len(items):
                raise BenchError(f"relay did not queue every contact: {str(answer)[:300]}")

    def wait_quiet(self, *, timeout_s: float = 120.0) -> None:
        """Wait out a rewrite of Redis's append-only file (a fork and a rewrite buffer,
        which the previous section's writes may have set off): it takes a core from
        whatever is measured next, and counts in ``used_memory``."""
        deadline = time.monotonic() + timeout_s
        with Redis(host="127.0.0.1", port=self.redis_port) as redis:
            while True:
                info = redis.info("persistence")
                if not (info.get("aof_rewrite_in_progress") or info.get("aof_rewrite_scheduled")):
                    return
                if time.monotonic() > deadline:
                    raise BenchError(f"Redis still rewrote its AOF after {timeout_s:.0f} s")
                time.sleep(0.1)

    def _upstream_json(self, path: str) -> dict[str, Any]:
        status, body = http("GET", self.upstream_url(path))
        if status != 200:
            raise BenchError(f"upstream {path}: {status}")
        doc: dict[str, Any] = orjson.loads(body)
        return doc

    def upstream_stats(self) -> dict[str, Any]:
        return self._upstream_json("/_stats")

    def upstream_arrivals(self) -> dict[str, Any]:
        """``{"arrivals": {webhook-id: first arrival (bench.apps.host_clock)}, "repeats": n}``."""
        return self._upstream_json("/_arrivals")

    def reset_upstream(self) -> None:
        http("DELETE", self.upstream_url("/_stats"))
