"""The ``relay`` command. Builds Settings once and hands them to what it runs.

Every command works with or without ``relay serve`` running: with no
``RELAY_REDIS_URL`` they all join the same embedded redis-server under
``RELAY_DATA_DIR`` (starting it if nobody has).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import orjson

from relay import __version__
from relay.apikeys import check_key_request
from relay.connect import check_version, redis_for
from relay.embedded import EmbeddedRedis
from relay.errors import ConfigError, EmbeddedRedisError, RelayError, RequestError
from relay.keystore import KeyStore
from relay.models import SCOPES, KeyCreate
from relay.settings import Settings, load_settings
from relay.store import EventStore

__all__ = ["main"]

log = logging.getLogger("relay")

_EPILOG = """\
environment:
  RELAY_REDIS_URL   Redis to use (redis://, rediss://, unix://); unset: an embedded
                    redis-server with its append-only file under RELAY_DATA_DIR
  RELAY_DATA_DIR    data of the embedded Redis (default ./.relay)
  RELAY_CONFIG      relay.toml to read (default ./relay.toml when it exists)
  RELAY_HOST, RELAY_PORT   where `relay serve` listens (default 127.0.0.1:8080)

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
        help="API only, no in-process delivery worker (delivery is not built yet, so "
        "today every serve is API only)",
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
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "serve":
            return _serve(settings, args)
        if args.command == "config":
            return _config_check(settings)
        handler: Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]] = {
            ("keys", "create"): _keys_create,
            ("keys", "list"): _keys_list,
            ("keys", "revoke"): _keys_revoke,
            ("events", "show"): _events_show,
        }[(args.command, getattr(args, f"{args.command}_command"))]
        return asyncio.run(handler(settings, args))
    except RequestError as exc:
        for err in exc.errors or [{"loc": [], "msg": exc.detail}]:
            print(f"relay: error: {_flag(err['loc'])}{err['msg']}", file=sys.stderr)
        return 1
    except RelayError as exc:
        print(f"relay: error: {exc}", file=sys.stderr)
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


# --- keys --------------------------------------------------------------------


async def _keys_create(settings: Settings, args: argparse.Namespace) -> int:
    body = KeyCreate.model_construct(
        name=args.name,
        scopes=args.scope,
        expires=args.expires,
        destinations=args.destination,
        rate_limit=args.rate_limit,
        mode="test" if args.test else "live",
    )
    if len(args.name) > 100:
        raise RelayError(f"--name: at most 100 characters (got {len(args.name)})")
    checked = check_key_request(body, known_destinations=settings.destinations)
    async with redis_for(settings) as redis:
        record, key = await KeyStore(redis).create(**checked)
    created = record.created(key)
    if args.json:
        print(orjson.dumps(created.model_dump(mode="json")).decode())
        return 0
    print(f"Created {record.mode} key {record.id} ({record.name!r}):\n\n    {key}\n")
    print("Copy it now: relay keeps only its digest and cannot show it again.\n")
    _table(
        [
            ("prefix", record.prefix),
            ("scopes", " ".join(record.scopes)),
            ("destinations", " ".join(record.destinations) or "all"),
            ("rate limit", record.rate_limit or "none"),
            ("expires", record.expires_at.isoformat() if record.expires_at else "never"),
        ]
    )
    return 0


async def _keys_list(settings: Settings, args: argparse.Namespace) -> int:
    async with redis_for(settings) as redis:
        records = await KeyStore(redis).list()
    if args.json:
        print(orjson.dumps([r.info().model_dump(mode="json") for r in records]).decode())
        return 0
    if not records:
        print("No keys yet. Create one: relay keys create --name NAME --scope write:leads")
        return 0
    rows = [("ID", "PREFIX", "NAME", "MODE", "SCOPES", "DESTINATIONS", "EXPIRES", "STATE")]
    for r in records:
        rows.append(
            (
                r.id,
                r.prefix,
                r.name,
                r.mode,
                ",".join(r.scopes),
                ",".join(r.destinations) or "all",
                r.expires_at.strftime("%Y-%m-%d %H:%M") if r.expires_at else "never",
                r.state(),
            )
        )
    _columns(rows)
    return 0


async def _keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    async with redis_for(settings) as redis:
        record = await KeyStore(redis).revoke(args.key_id)
    when = record.revoked_at.isoformat() if record.revoked_at else "?"
    print(f"Revoked {record.id} ({record.prefix}…, {record.name!r}) at {when}.")
    print("It answers 401 from now on, on every API process.")
    return 0


# --- events ------------------------------------------------------------------


async def _events_show(settings: Settings, args: argparse.Namespace) -> int:
    async with redis_for(settings) as redis:
        view = await EventStore(redis, retention_s=settings.retention_s).get(args.event_id)
    if view is None:
        print(
            f"relay: no event {args.event_id!r} (unknown, or older than the retention)",
            file=sys.stderr,
        )
        return 1
    data = view.model_dump(mode="json", exclude_none=True)
    if args.json:
        print(orjson.dumps(data).decode())
        return 0
    _table(
        [
            ("event", view.id),
            ("type", view.type),
            ("status", view.status),
            ("mode", view.mode),
            ("received", view.received_at.isoformat()),
            ("key", view.key_id),
        ]
    )
    print("\npayload:")
    print(orjson.dumps(data["payload"], option=orjson.OPT_INDENT_2).decode())
    print("\ndestinations:")
    if not view.destinations:
        print("  (none: no destination takes this event type, or the key may use none)")
    for dest in view.destinations:
        print(f"  {dest.name:<20} {dest.status.value}")
    return 0


# --- config ------------------------------------------------------------------


def _config_check(settings: Settings) -> int:
    source = str(settings.config) if settings.config else "no relay.toml (defaults and RELAY_*)"
    print(f"Configuration OK: {source}")
    redis = "embedded, data in " + str(settings.data_dir) if settings.redis_url is None else "URL"
    print(f"  redis: {redis}")
    if not settings.destinations:
        print("  destinations: none (events are stored but go nowhere)")
    for name, dest in settings.destinations.items():
        state = "" if dest.enabled else " (disabled)"
        limit = f", limit {dest.rate_limit}" if dest.rate_limit else ""
        print(f"  {name}: {dest.type}, events {', '.join(dest.events)}{limit}{state}")
    return 0


# --- serve -------------------------------------------------------------------


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    host = args.host or settings.host
    port = args.port or settings.port
    if args.workers == 1:
        _run_api(settings, host, port, reuse_port=False)
        return 0
    # Join the embedded Redis here so it outlives any one API process.
    embedded = EmbeddedRedis(settings.data_dir) if settings.redis_url is None else None
    if embedded is not None:
        embedded.acquire()
    try:
        return _run_processes(settings, host, port, args.workers)
    finally:
        if embedded is not None:
            embedded.release()


def _run_processes(settings: Settings, host: str, port: int, count: int) -> int:
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_run_api, args=(settings, host, port), kwargs={"reuse_port": True})
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


def _run_api(settings: Settings, host: str, port: int, *, reuse_port: bool) -> None:
    from aiohttp import web

    from relay.api.app import AccessLogger, create_app

    loop: asyncio.AbstractEventLoop | None = None
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = None
    app = create_app(settings)

    async def announce(app: web.Application) -> None:
        from relay.api.state import REDIS

        where = (
            f"embedded redis-server in {settings.data_dir}"
            if settings.redis_url is None
            else "RELAY_REDIS_URL"
        )
        try:
            version = await check_version(app[REDIS])
            log.info("redis %s: %s", version, where)
        except RelayError as exc:
            log.warning("%s (%s); /readyz answers 503 until it is back", exc, where)
        log.info(
            "relay %s listening on http://%s:%s (pid %d)", __version__, host, port, os.getpid()
        )

    app.on_startup.append(announce)
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


# --- output helpers ------------------------------------------------------------


def _table(rows: Sequence[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def _columns(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
