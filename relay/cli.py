"""The ``relay`` command. Builds Settings once and hands them to what it runs.

Every command works with or without ``relay serve`` running: with no
``RELAY_REDIS_URL`` they all join the same embedded redis-server under
``RELAY_DATA_DIR`` (starting it if nobody has).
"""

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
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

from redis.exceptions import RedisError

from relay import __version__
from relay.commands import admin, delivery
from relay.connect import check_version, memory_hint
from relay.embedded import EmbeddedRedis
from relay.errors import ConfigError, EmbeddedRedisError, RelayError, RequestError
from relay.models import SCOPES
from relay.settings import Settings, load_settings

__all__ = ["main"]

#: The layout of every log line (relay.api.accesslog writes the same by hand).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger("relay")

_EPILOG = """\
environment:
  RELAY_REDIS_URL   Redis to use (redis://, rediss://, unix://); unset: an embedded
                    redis-server with its append-only file under RELAY_DATA_DIR
  RELAY_DATA_DIR    data of the embedded Redis (default ./.relay)
  RELAY_CONFIG      relay.toml to read (default ./relay.toml when it exists)
  RELAY_HOST, RELAY_PORT   where `relay serve` listens (default 127.0.0.1:8080)
  RELAY_ALLOW_PRIVATE_TARGETS=1   let hooks notify loopback/private addresses

examples:
  relay serve
  relay keys create --name zapier --scope write:leads --scope read:events --expires 90d
  curl -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
       -d '{"email": "ada@example.com", "first_name": "Ada"}' http://127.0.0.1:8080/v1/leads
"""


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="relay",
        description="Webhook relay for leads and contacts: scoped keys in, a durable Redis "
        "queue, rate-limited delivery to ConveYour, Convertr and signed webhooks.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the HTTP API", description="Run the HTTP API.")
    serve.add_argument("--host", help="address to listen on (default: RELAY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: RELAY_PORT or 8080)")
    serve.add_argument(
        "--workers",
        type=_positive,
        default=1,
        metavar="N",
        help="API processes sharing the port with SO_REUSEPORT (default 1)",
    )
    serve.add_argument(
        "--no-worker",
        action="store_true",
        help="API only; run delivery with `relay worker` processes instead",
    )

    worker = sub.add_parser(
        "worker",
        help="deliver queued events and hook notifications (any number, on any hosts)",
        description="Deliver queued events to the destinations of relay.toml, and hook "
        "notifications to their subscribers. SIGTERM stops taking work and finishes the "
        "deliveries in flight. A Redis that does not answer (at start or later) is waited "
        "for, and delivery resumes by itself.",
    )
    worker.add_argument(
        "--concurrency", type=_positive, default=16, metavar="N", help="deliveries at once"
    )
    worker.add_argument(
        "--drain", action="store_true", help="exit once nothing is waiting or scheduled"
    )

    dlq = sub.add_parser("dlq", help="dead letters: list and replay")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    dlq_ls = dlq_sub.add_parser("list", help="events a destination rejected")
    dlq_ls.add_argument("--destination", metavar="NAME", help="only this destination")
    dlq_ls.add_argument("--json", action="store_true", help="print a JSON array")
    replay = dlq_sub.add_parser(
        "replay", help="send dead letters again (their earlier attempts stay visible)"
    )
    replay.add_argument("event_ids", nargs="*", metavar="EVENT_ID")
    replay.add_argument("--all", action="store_true", help="every dead letter")
    replay.add_argument("--destination", metavar="NAME", help="only this destination")

    status = sub.add_parser(
        "status",
        help="per destination: pending, retrying, dead, delivered, health; live workers",
        description="Per destination: pending, retrying, dead, delivered in the last hour, "
        "healthy or why not; and the live workers (heartbeat within 15 s). Exit 1 when a "
        "destination is unhealthy or has events waiting and no live worker.",
    )
    status.add_argument(
        "--json",
        action="store_true",
        help='print {"destinations": [...], "workers": [{"host", "pid", "last_seen"}]}',
    )

    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser(
        "create",
        help="create a key (printed once)",
        description="Create an API key. The key is printed once: relay stores only its "
        "SHA-256 digest.",
    )
    create.add_argument("--name", required=True, help="what the key is for (at most 100 chars)")
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=SCOPES,
        metavar="SCOPE",
        help=f"repeat for several: {', '.join(SCOPES)}",
    )
    create.add_argument(
        "--expires", metavar="WHEN", help="ISO 8601 time (2027-01-31T00:00:00Z) or 30d, 12h, 2w"
    )
    create.add_argument(
        "--destination",
        action="append",
        default=[],
        metavar="NAME",
        help="restrict the key to these destinations (repeat; default: all)",
    )
    create.add_argument("--rate-limit", metavar="N/PERIOD", help="the key's own limit, e.g. 100/m")
    create.add_argument(
        "--test", action="store_true", help="test mode: events are stored, never sent upstream"
    )
    create.add_argument(
        "--signing",
        action="store_true",
        help="requests must carry Standard Webhooks signatures; prints a whsec_ secret too",
    )
    create.add_argument("--json", action="store_true", help="print one JSON object")
    listing = keys_sub.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    revoke = keys_sub.add_parser("revoke", help="revoke a key; it stops working at once")
    revoke.add_argument("key_id", metavar="KEY_ID", help="id from `relay keys list` (key_…)")

    events = sub.add_parser("events", help="inspect events")
    events_sub = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    show = events_sub.add_parser("show", help="one event, its destinations and their status")
    show.add_argument("event_id", metavar="EVENT_ID")
    show.add_argument("--json", action="store_true", help="print the event as JSON")

    config = sub.add_parser("config", help="check relay.toml")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    config_sub.add_parser(
        "check", help="validate relay.toml and the environment, and summarize destinations"
    )
    return top


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"relay: configuration error:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=LOG_FORMAT,
        stream=sys.stderr,
    )
    try:
        if args.command == "serve":
            return _serve(settings, args)
        if args.command == "config":
            return admin.config_check(settings)
        handler: Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]] = {
            ("worker", None): delivery.run_worker,
            ("status", None): delivery.status,
            ("dlq", "list"): delivery.dlq_list,
            ("dlq", "replay"): delivery.dlq_replay,
            ("keys", "create"): admin.keys_create,
            ("keys", "list"): admin.keys_list,
            ("keys", "revoke"): admin.keys_revoke,
            ("events", "show"): admin.events_show,
        }[(args.command, getattr(args, f"{args.command}_command", None))]
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(handler(settings, args))
    except RequestError as exc:
        for err in exc.errors or [{"loc": [], "msg": exc.detail}]:
            print(f"relay: error: {_flag(err['loc'])}{err['msg']}", file=sys.stderr)
        return 1
    except RelayError as exc:
        print(f"relay: error: {exc}", file=sys.stderr)
        return 1
    except RedisError as exc:
        where = "RELAY_REDIS_URL" if settings.redis_url else "the embedded Redis"
        print(f"relay: error: cannot use {where}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _flag(loc: Sequence[str | int]) -> str:
    names = {
        "scopes": "--scope",
        "expires": "--expires",
        "destinations": "--destination",
        "rate_limit": "--rate-limit",
        "name": "--name",
    }
    field = str(loc[-1]) if loc else ""
    return f"{names[field]}: " if field in names else ""


# --- serve -------------------------------------------------------------------


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    host = args.host or settings.host
    port = args.port or settings.port
    # Even with no destinations the worker sends hook notifications.
    worker = not args.no_worker
    if args.workers == 1:
        _run_api(settings, host, port, reuse_port=False, worker=worker)
        return 0
    # Join the embedded Redis here so it outlives any one API process.
    embedded = EmbeddedRedis(settings.data_dir) if settings.redis_url is None else None
    if embedded is not None:
        embedded.acquire()
    try:
        return _run_processes(settings, host, port, args.workers, worker=worker)
    finally:
        if embedded is not None:
            embedded.release()


def _run_processes(settings: Settings, host: str, port: int, count: int, *, worker: bool) -> int:
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(
            target=_run_api,
            args=(settings, host, port),
            kwargs={"reuse_port": True, "worker": worker},
        )
        for _ in range(count)
    ]
    for proc in procs:
        proc.start()

    def forward(signum: int, _frame: Any) -> None:
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for proc in procs:
        proc.join()
    return max((proc.exitcode or 0) for proc in procs)


async def _freeze_heap(_app: Any) -> None:
    """Move everything loaded at start out of the garbage collector's view: its full
    collections then walk only what requests allocate (shorter pauses, a lower p99)."""
    gc.collect()
    gc.freeze()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (it is a dependency, but not on Windows)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _run_api(settings: Settings, host: str, port: int, *, reuse_port: bool, worker: bool) -> None:
    from aiohttp import web

    from relay.api.app import AccessLogger, create_app

    factory = _loop_factory()
    loop = factory() if factory is not None else None
    app = create_app(settings)

    app.cleanup_ctx.append(functools.partial(_announce, where=_where(settings), at=(host, port)))
    app.on_startup.append(_freeze_heap)
    if worker:
        app.cleanup_ctx.append(_in_process_worker)
    try:
        web.run_app(
            app,
            host=host,
            port=port,
            reuse_port=reuse_port or None,
            access_log_class=AccessLogger,
            print=None,
            loop=loop,
        )
    except EmbeddedRedisError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def _where(settings: Settings) -> str:
    if settings.redis_url is None:
        return f"embedded redis-server in {settings.data_dir}"
    return "RELAY_REDIS_URL"


async def _announce(app: Any, *, where: str, at: tuple[str, int]) -> AsyncIterator[None]:
    """Say which Redis, once it answers: in the background, so that meanwhile the API
    listens and answers 503 (the process's RedisWatch logs the wait)."""
    from relay.api.state import REDIS, WATCH

    async def say() -> None:
        await app[WATCH].call(app[REDIS].ping)
        try:
            log.info("redis %s: %s", await check_version(app[REDIS]), where)
            if hint := await memory_hint(app[REDIS]):
                log.info("%s", hint)
        except RelayError as exc:
            log.warning("%s (%s)", exc, where)

    task = asyncio.create_task(say(), name="relay-announce")
    log.info("relay %s listening on http://%s:%s (pid %d)", __version__, *at, os.getpid())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _in_process_worker(app: Any) -> AsyncIterator[None]:
    """The delivery worker beside the API, on the app's Redis; finishes in-flight on exit.

    Supervised: a worker that dies is logged and started again, and while it is down
    ingest and /readyz answer 503 (relay.api.health.no_delivery)."""
    from relay.api.state import DELIVERY_ALIVE, REDIS, SETTINGS, WATCH
    from relay.availability import Supervisor
    from relay.worker import Worker

    # Started again after a death (run() builds its session and loops afresh).
    worker = Worker(app[SETTINGS], redis=app[REDIS], watch=app[WATCH])
    supervisor = Supervisor("the in-process delivery worker")
    app[DELIVERY_ALIVE] = lambda: supervisor.running and worker.alive
    stopping = asyncio.Event()
    task = asyncio.create_task(supervisor.run(worker.run, stopping=stopping), name="relay-worker")
    log.info("delivery worker running in-process for %s", ", ".join(worker.destinations))
    yield
    stopping.set()
    worker.stop()
    await task
