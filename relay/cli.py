"""The ``relay`` command. Builds Settings once and hands them to what it runs.

Every command works with or without ``relay serve`` running: with no
``RELAY_REDIS_URL`` they all join the same embedded redis-server under
``RELAY_DATA_DIR`` (starting it if nobody has).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import platform
import sys
import textwrap
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from relay import __version__, logs
from relay.commands import admin, delivery, serve
from relay.errors import ConfigError, RelayError, RequestError, StoreUnavailable
from relay.models import SCOPES
from relay.settings import Settings, environment_variables, load_settings

__all__ = ["main"]

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
    tracing = (
        "with the otel extra (pip install 'relay[otel]'): OpenTelemetry traces of serve and "
        "worker, on when OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or "
        "OTEL_TRACES_EXPORTER is set; the SDK reads the rest (README: Tracing)"
    )
    for name, text in [*environment_variables(), ("OTEL_*", tracing)]:
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
    worker.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="also serve GET /metrics (Prometheus) and GET /healthz on this port, on "
        "RELAY_HOST (default 127.0.0.1); RELAY_METRICS_TOKEN applies as on the API",
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
        help="per destination: pending, oldest pending age, retrying, dead, delivered, health; "
        "live workers",
        description="Per destination (and `(hooks)` once notifications were sent): events "
        "pending and how long the front of its queue has waited (OLDEST), retrying, dead, "
        "delivered in the last hour, and healthy or why not; and the live workers (heartbeat "
        "within 15 s).",
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
        help='print {"destinations": [{"destination", "pending", "retrying", "dead", '
        '"delivered_last_hour", "oldest_pending_s", "health", "why"}, ...], '
        '"workers": [{"host", "pid", "last_seen"}]}',
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
    find = events_sub.add_parser(
        "find",
        help="the events of an email, a phone or an event id, newest first",
        description="Search events as GET /v1/events?q= does: an email (any case), a phone "
        "(as typed: spaces, dashes, parentheses, + or 00; without a country code, "
        "RELAY_DEFAULT_REGION) or an event id. Exit 1 when nothing is found.",
    )
    find.add_argument("text", metavar="TEXT")
    find.add_argument(
        "--limit", type=int, default=20, metavar="N", help="at most N events (default 20)"
    )
    find.add_argument("--json", action="store_true", help="print the events as JSON lines")

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
    logs.configure(level=settings.log_level, log_format=settings.log_format)
    # What start-up made (every module, the settings) lives as long as the process: out
    # of the collector's sight, a full collection no longer walks it every few seconds
    # of load (with it there, delivery was about a sixth slower: README, "Partitions").
    gc.freeze()
    try:
        if args.command == "serve":
            return serve.serve(settings, args)
        handler: Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]] = {
            ("worker", None): delivery.run_worker,
            ("status", None): delivery.status,
            ("dlq", "list"): delivery.dlq_list,
            ("dlq", "replay"): delivery.dlq_replay,
            ("keys", "create"): admin.keys_create,
            ("keys", "list"): admin.keys_list,
            ("keys", "revoke"): admin.keys_revoke,
            ("events", "show"): admin.events_show,
            ("events", "find"): admin.events_find,
            ("config", "check"): admin.config_check,
        }[(args.command, getattr(args, f"{args.command}_command", None))]
        with asyncio.Runner(loop_factory=serve.loop_factory()) as runner:
            return runner.run(handler(settings, args))
    except RequestError as exc:
        for err in exc.errors or [{"loc": [], "msg": exc.detail}]:
            print(f"relay: error: {_flag(err['loc'])}{err['msg']}", file=sys.stderr)
        return 1
    except StoreUnavailable as exc:
        where = "RELAY_REDIS_URL" if settings.redis_url else f"embedded, in {settings.data_dir}"
        print(f"relay: error: {exc} ({where})", file=sys.stderr)
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
