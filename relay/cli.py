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
import platform
import signal
import socket
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from relay import __version__
from relay.commands import admin, delivery
from relay.connect import check_version, memory_hint
from relay.embedded import EmbeddedRedis
from relay.errors import CannotListen, ConfigError, EmbeddedRedisError, RelayError, RequestError
from relay.models import SCOPES
from relay.settings import Settings, environment_variables, load_settings

__all__ = ["main"]

#: The layout of every log line (relay.api.accesslog writes the same by hand).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger("relay")

_EXAMPLES = """\
examples:
  relay serve
  relay keys create --name zapier --scope write:leads --scope read:events \\
                    --scope webhooks --expires 90d
  curl -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
       -d '{"email": "ada@example.com", "first_name": "Ada"}' http://127.0.0.1:8080/v1/leads
"""


def _epilog() -> str:
    """Every RELAY_* variable settings read, from their descriptions, then examples."""
    lines = ["environment:"]
    for name, text in environment_variables():
        lines += textwrap.wrap(
            text,
            width=92,
            initial_indent=f"  {name:<28} ",
            subsequent_indent=" " * 31,
            break_on_hyphens=False,
        ) or [f"  {name}"]
    lines += [
        "  Each but RELAY_CONFIG may also be set in relay.toml, lower-cased without RELAY_",
        "  (allow_private_targets in its [hooks] table); the environment wins.",
    ]
    return "\n".join(lines) + "\n\n" + _EXAMPLES


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="relay",
        description="Webhook relay for leads and contacts: scoped keys in, a durable Redis "
        "queue, rate-limited delivery to ConveYour, Convertr and signed webhooks.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument(
        "--version",
        action="version",
        version=f"relay {__version__} from {Path(__file__).parent} "
        f"(python {platform.python_version()})",
        help="show the version, where relay runs from, and exit",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the HTTP API", description="Run the HTTP API.")
    serve.add_argument("--host", help="address to listen on (default: RELAY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port, 1-65535 (default: RELAY_PORT or 8080)")
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

    dlq = sub.add_parser(
        "dlq",
        help="dead letters: list and replay",
        description="Dead letters: events a destination rejected for good, or gave up on "
        "after the last retry. They are kept until replayed.",
    )
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    dlq_ls = dlq_sub.add_parser(
        "list",
        help="events a destination rejected, or whose retries ran out",
        description="List dead letters: destination, event id, when it died, and its last "
        "attempt's status code, error and answer. Every attempt: `relay events show EVENT_ID`.",
    )
    dlq_ls.add_argument("--destination", metavar="NAME", help="only this destination")
    dlq_ls.add_argument("--json", action="store_true", help="print a JSON array")
    replay = dlq_sub.add_parser(
        "replay",
        help="send dead letters again, each with a fresh retry schedule",
        description="Queue dead letters for delivery again, at once, each with a fresh retry "
        "schedule; their earlier attempts stay visible. Exit 1 when EVENT_IDs were named and "
        "none of them was dead.",
    )
    replay.add_argument("event_ids", nargs="*", metavar="EVENT_ID")
    replay.add_argument("--all", action="store_true", help="every dead letter")
    replay.add_argument("--destination", metavar="NAME", help="only this destination")

    status = sub.add_parser(
        "status",
        help="per destination: pending, retrying, dead, delivered, health; live workers",
        description="Per destination (and `(hooks)` once notifications were sent): events "
        "pending, retrying, dead, delivered in the last hour, and healthy or why not; and the "
        "live workers (heartbeat within 15 s).",
        epilog="exit status:\n"
        "  0  every destination is healthy (or disabled), and any events waiting have a\n"
        "     live worker\n"
        "  1  a destination is unhealthy (e.g. its credentials were rejected), or has events\n"
        "     waiting and no live worker, or Redis cannot be reached\n"
        "  2  usage error (a bad option) or a configuration error\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument(
        "--json",
        action="store_true",
        help='print {"destinations": [...], "workers": [{"host", "pid", "last_seen"}]}',
    )

    keys = sub.add_parser(
        "keys",
        help="create, list and revoke API keys",
        description="API keys: relay stores only their SHA-256 digest, so a key is shown "
        "once, when it is created.",
    )
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
    listing = keys_sub.add_parser(
        "list",
        help="list keys (never the keys themselves)",
        description="List every key, revoked and expired ones included: id, prefix (the "
        "first 12 characters), name, mode, scopes, destinations, expiry and state.",
    )
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    revoke = keys_sub.add_parser(
        "revoke",
        help="revoke a key; it stops working at once",
        description="Revoke a key: it answers 401 at once, on every API process. Name it by "
        "its id, or give the key itself (it is looked up by digest and never printed).",
    )
    revoke.add_argument(
        "key_id", metavar="KEY_ID", help="id from `relay keys list` (key_…), or the key itself"
    )

    events = sub.add_parser(
        "events",
        help="inspect events",
        description="Inspect accepted events (kept for RELAY_RETENTION_S).",
    )
    events_sub = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    show = events_sub.add_parser(
        "show",
        help="one event, its destinations and their status",
        description="Show one event: its normalized payload, its destinations, their status "
        "and every delivery attempt. Exit 1 when there is no such event.",
    )
    show.add_argument("event_id", metavar="EVENT_ID")
    show.add_argument("--json", action="store_true", help="print the event as JSON")

    config = sub.add_parser(
        "config", help="check relay.toml", description="Check the configuration."
    )
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    config_sub.add_parser(
        "check",
        help="validate relay.toml and the environment, and summarize destinations",
        description="Validate relay.toml and the RELAY_* environment, reach Redis, summarize "
        "the destinations and, for Convertr, read each campaign form's fields and report "
        "mapping mismatches. Exit 0 when all is well, 1 when Redis cannot be reached or a "
        "form does not match, 2 when the configuration is invalid.",
    )
    return top


def _positive(text: str) -> int:
    """A count of at least 1; argparse shows the message (not this function's name)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
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
        handler: Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]] = {
            ("worker", None): delivery.run_worker,
            ("status", None): delivery.status,
            ("dlq", "list"): delivery.dlq_list,
            ("dlq", "replay"): delivery.dlq_replay,
            ("keys", "create"): admin.keys_create,
            ("keys", "list"): admin.keys_list,
            ("keys", "revoke"): admin.keys_revoke,
            ("events", "show"): admin.events_show,
            ("config", "check"): admin.config_check,
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


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
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

    app = create_app(settings)

    app.cleanup_ctx.append(functools.partial(_announce, where=_where(settings)))
    app.on_startup.append(_freeze_heap)
    if worker:
        app.cleanup_ctx.append(_in_process_worker)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_serve_until_signal(app, sockets, host=host, port=port))
    except EmbeddedRedisError as exc:
        print(f"relay: error: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve_until_signal(
    app: Any, sockets: list[socket.socket], *, host: str, port: int
) -> None:
    from relay.api.server import running

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(app, sockets):
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
