"""``relay serve`` on a port it cannot have: one line, exit 1, at once, nothing left running."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.embedded import EmbeddedRedis, _ping
from tests.procs import clean_env, relay

pytestmark = pytest.mark.slow


@pytest.fixture
def held() -> Iterator[int]:
    """A port on 127.0.0.1 that this test listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _serve(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", *args],
        cwd=cwd,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a hang is killed with all it started
    )
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"relay serve {' '.join(args)} hung:\n{err}") from None
    took_s = time.monotonic() - started
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), took_s


def _startup_s(cwd: Path) -> float:
    """How long the command takes to start and exit doing nothing, on this machine now."""
    started = time.monotonic()
    relay("--version", cwd=cwd, env=clean_env())
    return time.monotonic() - started


@pytest.mark.parametrize("flags", [(), ("--no-worker",), ("--workers", "3")])
def test_a_port_in_use_is_one_line_and_exit_1(
    tmp_path: Path, held: int, flags: tuple[str, ...]
) -> None:
    baseline_s = _startup_s(tmp_path)
    done, took_s = _serve(tmp_path, "--port", str(held), *flags)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [f"relay serve: port {held} on 127.0.0.1 is already in use"]
    assert done.stdout == ""
    # Binding comes first: nothing else was started, so nothing is left running.
    assert not (tmp_path / ".relay").exists()
    assert not _ping(EmbeddedRedis(tmp_path / ".relay").socket_path)
    # About a bare start-up: the error comes before Redis, the app or any process starts.
    assert took_s < 2 * baseline_s + 1.0, (took_s, baseline_s)


def test_workers_refuse_a_port_that_another_reuseport_server_holds(tmp_path: Path) -> None:
    """SO_REUSEPORT would let the N processes join another server's port silently."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        done, _ = _serve(tmp_path, "--port", str(port), "--workers", "2")
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [f"relay serve: port {port} on 127.0.0.1 is already in use"]


@pytest.mark.parametrize("port", ["70000", "0", "-1"])
def test_a_port_out_of_range_is_one_line_and_exit_1(tmp_path: Path, port: str) -> None:
    done, _ = _serve(tmp_path, "--port", port, "--workers", "2")
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [f"relay serve: --port must be 1-65535, got {port}"]
    assert not (tmp_path / ".relay").exists()
