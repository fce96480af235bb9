"""Run the real ``relay`` command in subprocesses, the way a user does.

Every child runs the tree under test: :func:`clean_env` puts this checkout first
on ``PYTHONPATH`` (a venv made from another checkout would otherwise run that
one's ``relay``), and :func:`relay` and :class:`Serve` check it once per
environment with ``relay --version``, which names the package's directory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

from tests.redis_server import free_port

#: The checkout under test: the directory holding ``relay/`` and ``tests/``.
ROOT = Path(__file__).resolve().parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus any RELAY_* of the developer's, plus ``extra``, with this
    checkout first on ``PYTHONPATH`` so that ``python -m relay`` imports it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def relay_package(env: dict[str, str], cwd: Path) -> Path:
    """The directory of the ``relay`` package that ``python -m relay`` runs in ``env``."""
    done = _run("--version", cwd=cwd, env=env)
    # "relay 0.1.0 from /path/to/relay (python 3.11.9)"
    found = re.fullmatch(r"relay \S+ from (.+) \(python \S+\)\n", done.stdout)
    if done.returncode != 0 or found is None:
        raise AssertionError(f"relay --version said {done.stdout!r} {done.stderr!r}")
    return Path(found[1])


def assert_tree_under_test(env: dict[str, str], cwd: Path) -> None:
    """Fail the test when a child started with ``env`` would import relay from anywhere
    but this checkout (checked once per ``PYTHONPATH``: it costs a process)."""
    pythonpath = env.get("PYTHONPATH", "")
    if pythonpath not in _CHECKED:
        found = relay_package(env, cwd)
        assert found == ROOT / "relay", f"children run {found}, not the tree under test {ROOT}"
        _CHECKED.add(pythonpath)


#: The PYTHONPATH values whose children were seen to import this checkout.
_CHECKED: set[str] = set()


def relay(
    *args: str, cwd: Path, env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    assert_tree_under_test(env, cwd)
    done = _run(*args, cwd=cwd, env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"relay {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def _run(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def http(
    method: str, url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    assert url.startswith("http://127.0.0.1:"), "tests talk to loopback only"
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class Serve:
    """``relay serve`` in a subprocess, its stderr kept in a file."""

    def __init__(
        self,
        *,
        cwd: Path,
        env: dict[str, str],
        args: tuple[str, ...] = (),
        until: str = "/readyz",
        python: tuple[str, ...] = ("-m", "relay"),
    ) -> None:
        """Started and answering 200 at ``until`` (``/healthz``: listening, Redis or not).
        ``python``: the interpreter's arguments before ``serve`` (``-c`` a wrapper that
        runs relay.cli.main after setting something up)."""
        assert_tree_under_test(env, cwd)
        self.port = free_port()
        self.log_path = cwd / f"serve-{self.port}.log"
        self._log: IO[Any] = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, *python, "serve", "--port", str(self.port), *args],
            cwd=cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if http("GET", self.url(until))[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"relay serve did not answer {until}:\n{self.log()}")
            time.sleep(0.05)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=30)
        finally:
            self._log.close()
        return code
