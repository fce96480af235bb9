"""``relay serve``: bind first, then the API (one process or N on one port) and its
in-process delivery worker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

from relay import __version__, metrics
from relay.connect import check_version, memory_hint
from relay.embedded import EmbeddedRedis
from relay.errors import CannotListen, ConfigError, EmbeddedRedisError, RelayError
from relay.partitions import ensure_partitions
from relay.settings import Settings
from relay.tracing import start_tracing

__all__ = ["in_process_worker", "loop_factory", "serve"]

log = logging.getLogger("relay")


def serve(settings: Settings, args: argparse.Namespace) -> int:
    """Exit status 1, in one line, for a port out of range or in use."""
    from relay.api.server import listen

    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    if not 1 <= port <= 65535:
        print(f"relay serve: --port must be 1-65535, got {port}", file=sys.stderr)
        return 1
    # Bind before anything starts: a port in use is an error now, not after "listening".
    try:
        sockets = listen(host, port, count=args.workers)
    except CannotListen as exc:
        print(f"relay serve: {exc}", file=sys.stderr)
        return 1
    # Even with no destinations the worker sends hook notifications.
    worker = not args.no_worker
    if args.workers == 1:
        return _run_api(settings, sockets[0], host=host, port=port, worker=worker)
    # Join the embedded Redis here so it outlives any one API process.
    embedded = EmbeddedRedis(settings.data_dir) if settings.redis_url is None else None
    if embedded is not None:
        embedded.acquire()
    try:
        # Every process counts into a directory of this run: one scrape shows the sum.
        with metrics.shared_between_processes():
            return _run_processes(settings, sockets, host=host, port=port, worker=worker)
    finally:
        if embedded is not None:
            embedded.release()


def _run_processes(
    settings: Settings, sockets: list[list[socket.socket]], *, host: str, port: int, worker: bool
) -> int:
    """One API process per set of sockets (forked, so each inherits its own set)."""
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(
            target=_run_child,
            args=(settings, sockets, index),
            kwargs={"host": host, "port": port, "worker": worker},
        )
        for index in range(len(sockets))
    ]
    for proc in procs:
        proc.start()
    for sock in (s for group in sockets for s in group):
        sock.close()  # the children listen; a copy left here would queue connections nobody takes

    def forward(signum: int, _frame: Any) -> None:
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for proc in procs:
        proc.join()
    return max((proc.exitcode or 0) for proc in procs)


def _run_child(
    settings: Settings, sockets: list[list[socket.socket]], index: int, **kwargs: Any
) -> None:
    for i, group in enumerate(sockets):
        if i != index:
            for sock in group:
                sock.close()  # a sibling's: kept open here, it would outlive that sibling
    raise SystemExit(_run_api(settings, sockets[index], **kwargs))


async def _freeze_heap(_app: Any) -> None:
    """Move everything loaded at start out of the garbage collector's view: its full
    collections then walk only what requests allocate (shorter pauses, a lower p99)."""
    gc.collect()
    gc.freeze()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (it is a dependency, but not on Windows)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _run_api(
    settings: Settings, sockets: list[socket.socket], *, host: str, port: int, worker: bool
) -> int:
    from relay.api.app import create_app

    # Here, in the process that serves (after a fork): the SDK's export thread is its own.
    tracing = start_tracing(service="relay")
    app = create_app(settings, tracing=tracing)

    app.cleanup_ctx.append(functools.partial(_announce, where=_where(settings)))
    app.on_startup.append(_freeze_heap)
    if worker:
        app.cleanup_ctx.append(in_process_worker)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(
                _serve_until_signal(
                    app, sockets, host=host, port=port, log_format=settings.log_format
                )
            )
    except EmbeddedRedisError as exc:
        print(f"relay: error: {exc}", file=sys.stderr)
        return 1
    finally:
        tracing.shutdown()  # the last spans (of the graceful stop's deliveries too) exported
    if _refused:
        print(f"relay: error: {_refused[0]}", file=sys.stderr)
        return 1
    return 0


#: What made this process stop at once after it reached Redis (relay.partitions).
_refused: list[ConfigError] = []


async def _serve_until_signal(
    app: Any, sockets: list[socket.socket], *, host: str, port: int, log_format: str
) -> None:
    from relay.api.server import running

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(app, sockets, log_format=log_format):
        log.info(
            "relay %s listening on http://%s:%s (pid %d)", __version__, host, port, os.getpid()
        )
        await stop.wait()


def _where(settings: Settings) -> str:
    if settings.redis_url is None:
        return f"embedded redis-server in {settings.data_dir}"
    return "RELAY_REDIS_URL"


async def _announce(app: Any, *, where: str) -> AsyncIterator[None]:
    """Say which Redis, once it answers: in the background, so that meanwhile the API
    listens and answers 503 (the process's RedisWatch logs the wait)."""
    from relay.api.state import REDIS, SETTINGS, WATCH

    async def say() -> None:
        await app[WATCH].call(app[REDIS].ping)
        try:
            log.info("redis %s: %s", await check_version(app[REDIS]), where)
            await ensure_partitions(app[REDIS], app[SETTINGS].partitions)
            if hint := await memory_hint(app[REDIS]):
                log.info("%s", hint)
        except ConfigError as exc:  # the data is partitioned otherwise: must not run
            log.error("%s", exc)
            _refused.append(exc)
            signal.raise_signal(signal.SIGTERM)
        except RelayError as exc:
            log.warning("%s (%s)", exc, where)

    task = asyncio.create_task(say(), name="relay-announce")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def in_process_worker(app: Any) -> AsyncIterator[None]:
    """The delivery worker beside the API, on the app's Redis; finishes in-flight on exit.

    Supervised: a worker that dies is logged and started again, and while it is down
    ingest and /readyz answer 503 (relay.api.health.no_delivery)."""
    from relay.api.state import DELIVERY_ALIVE, REDIS, SETTINGS, TRACING, WATCH
    from relay.availability import Supervisor
    from relay.worker import Worker

    # Started again after a death (run() builds its session and loops afresh).
    worker = Worker(app[SETTINGS], redis=app[REDIS], watch=app[WATCH], tracing=app[TRACING])
    supervisor = Supervisor("the in-process delivery worker")
    app[DELIVERY_ALIVE] = lambda: supervisor.running and worker.alive
    stopping = asyncio.Event()
    task = asyncio.create_task(supervisor.run(worker.run, stopping=stopping), name="relay-worker")
    log.info("delivery worker running in-process for %s", ", ".join(worker.destinations))
    yield
    stopping.set()
    worker.stop()
    await task
