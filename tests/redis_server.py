"""A real redis-server for tests, on a free loopback port, with AOF in a temp dir.

(Clusters and Sentinel setups of several of them: :mod:`tests.redis_topologies`.)"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from relay.embedded import SERVER_SETTINGS, redis_server_binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """Start, stop, restart and kill one redis-server process."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        password: str | None = None,
        args: Sequence[str] = (),
        config: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        #: ``requirepass`` (also ``masterauth``, for a replica of a server with the same).
        self.password = password
        #: More redis-server options (``--cluster-enabled yes``, ``--replicaof``...).
        self.args = tuple(args)
        #: A config file read first (a sentinel's: one it may rewrite).
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<RedisServer 127.0.0.1:{self.port} {'up' if self.proc else 'stopped'}>"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError(f"{self!r} is running already")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                *([str(self.config)] if self.config else []),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                *SERVER_SETTINGS,
                "--save",
                "",
                "--logfile",
                str(self.data_dir / "redis.log"),
                *(
                    ("--requirepass", self.password, "--masterauth", self.password)
                    if self.password
                    else ()
                ),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.data_dir}/redis.log")
            time.sleep(0.02)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                # A server with a password answers too: that it wants one.
                return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def _auth(self) -> bytes:
        return f"AUTH {self.password}\r\n".encode() if self.password else b""

    def stop(self) -> None:
        """Graceful: SHUTDOWN flushes the AOF."""
        if self.proc is None:
            return
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
        ):
            sock.sendall(self._auth() + b"SHUTDOWN\r\n")
            sock.recv(16)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
