"""Commands about delivery: ``relay worker``, ``relay dlq``, ``relay status``.

Each takes the built Settings and the parsed arguments and returns an exit status;
``relay.cli`` parses and dispatches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson

from relay import redis_keys
from relay.availability import RedisWatch
from relay.backlog import overview
from relay.commands.probe import bind, serving
from relay.commands.reach import reach_redis
from relay.commands.text import one_line, terminal_json, width_of
from relay.connect import check_version, redis_for
from relay.deadletters import list_dead_letters, replay_dead_letters
from relay.errors import CannotListen, RelayError
from relay.models import DeadLetter
from relay.partitions import ensure_partitions
from relay.settings import Settings
from relay.tracing import Tracing, start_tracing
from relay.worker import Worker

__all__ = ["dlq_list", "dlq_replay", "run_worker", "status"]

log = logging.getLogger("relay")

#: Replays larger than this print a progress line as they go.
_PROGRESS_EVERY = 500


async def run_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Deliver until SIGTERM or SIGINT, then finish what is in flight; with
    ``--metrics-port``, serve /metrics and /healthz on it meanwhile (a port in use or
    out of range: one line, exit 1, before anything starts).

    A Redis that is not there yet is waited for (the RedisWatch logs it); one that
    answers but is too old is an error (exit 1)."""
    try:
        sockets = [] if args.metrics_port is None else bind(settings.host, args.metrics_port)
    except CannotListen as refused:
        print(f"relay worker: {refused}", file=sys.stderr)
        return 1
    tracing = start_tracing(service="relay-worker")
    async with (
        _shut_down_at_exit(tracing),
        redis_for(settings) as redis,
        contextlib.AsyncExitStack() as stack,
    ):
        watch = RedisWatch()
        worker = Worker(
            settings, redis=redis, concurrency=args.concurrency, watch=watch, tracing=tracing
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        names = ", ".join(settings.destinations) or "no destinations (relay.toml names none)"
        probe = ""
        if sockets:
            await stack.enter_async_context(
                serving(settings, sockets, redis=redis, alive=lambda: worker.alive)
            )
            probe = f"; /metrics and /healthz on http://{settings.host}:{args.metrics_port}"
        log.info(
            "relay worker delivering to %s, and hook notifications (concurrency %d)%s",
            names,
            args.concurrency,
            probe,
        )

        async def check() -> None:
            await watch.call(redis.ping)
            await check_version(redis)
            await ensure_partitions(redis, settings.partitions)

        checked = asyncio.create_task(check())
        running = asyncio.create_task(worker.run(drain=args.drain))
        await asyncio.wait({checked, running}, return_when=asyncio.FIRST_COMPLETED)
        if checked.done() and (exc := checked.exception()) is not None:
            worker.stop()
            await running
            raise exc
        await running
        checked.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checked
    return 0


@contextlib.asynccontextmanager
async def _shut_down_at_exit(tracing: Tracing) -> AsyncIterator[None]:
    """Last out: the spans of the deliveries a graceful stop lets finish are exported."""
    try:
        yield
    finally:
        await asyncio.to_thread(tracing.shutdown)


def _destinations(settings: Settings, only: str | None) -> list[str]:
    if only is None:
        return list(settings.destinations)
    if only not in settings.destinations:
        known = ", ".join(settings.destinations) or "none are configured"
        raise RelayError(f"unknown destination {only!r} (configured: {known})")
    return [only]


async def dlq_list(settings: Settings, args: argparse.Namespace) -> int:
    async with reach_redis(settings) as redis:
        letters = [
            letter
            for dest in _destinations(settings, args.destination)
            for letter in await list_dead_letters(redis, dest, partitions=settings.partitions)
        ]
    if args.json:
        print(terminal_json(orjson.dumps([letter.model_dump() for letter in letters]).decode()))
        return 0
    if not letters:
        print("No dead letters.")
        return 0
    _dead_letter_table(letters, columns=shutil.get_terminal_size((120, 24)).columns)
    many = "dead letter" if len(letters) == 1 else "dead letters"
    print(f"\n{len(letters)} {many}. Every attempt: relay events show EVENT_ID")
    return 0


def _dead_letter_table(letters: list[DeadLetter], *, columns: int) -> None:
    """One line per dead letter, the answer cut to what is left of ``columns``; every
    cell that came from an upstream is escaped (relay.commands.text)."""
    head = ("DESTINATION", "EVENT", "DEAD AT (UTC)", "STATUS", "ERROR", "ANSWER")
    rows = [
        (
            one_line(d.destination, 24),
            one_line(d.event_id, 40),
            datetime.fromtimestamp(d.dead_at, UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "-" if d.status_code is None else str(d.status_code),
            one_line(d.error or "-", 24),
            d.excerpt or d.note or "-",
        )
        for d in letters
    ]
    widths = [max(width_of(r[i]) for r in [head, *rows]) for i in range(5)]
    answer_width = max(20, columns - sum(widths) - 2 * len(widths))
    for row in [head, *rows]:
        cells = [cell + " " * (w - width_of(cell)) for cell, w in zip(row, widths, strict=False)]
        print("  ".join([*cells, one_line(row[5], answer_width)]).rstrip())


async def dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    if not args.all and not args.event_ids:
        raise RelayError("name EVENT_IDs to replay, or --all")
    total = 0
    async with reach_redis(settings) as redis:
        for dest in _destinations(settings, args.destination):

            def show(done: int, of: int, dest: str = dest) -> None:
                if of > _PROGRESS_EVERY:
                    print(f"  {dest}: {done}/{of} replayed", file=sys.stderr, flush=True)

            ids = None if args.all else list(args.event_ids)
            done = await replay_dead_letters(
                redis, dest, ids, partitions=settings.partitions, progress=show
            )
            total += done
            if done:
                print(f"{dest}: {done} replayed")
    if total == 0:
        print("Nothing replayed (no matching dead letters).")
        return 1 if args.event_ids else 0
    return 0


async def status(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 1 when a destination is unhealthy, or has events waiting and no live worker."""
    async with reach_redis(settings) as redis:
        seen = await overview(redis, settings)
    rows: list[dict[str, Any]] = []
    for row in seen.destinations:
        if row["destination"] == redis_keys.NOTIFICATIONS:
            if not (row["pending"] or row["retrying"] or row["dead"] or row["delivered_last_hour"]):
                continue  # no notification was ever sent (or none lately)
            row = {**row, "destination": "(hooks)"}
        rows.append({k: v for k, v in row.items() if k != "since"})
    workers = seen.workers
    if args.json:
        print(orjson.dumps({"destinations": rows, "workers": workers}).decode())
        return _exit_status(rows)
    if not rows:
        print("No destinations configured (relay.toml).")
    else:
        head = ("DESTINATION", "PENDING", "OLDEST", "RETRYING", "DEAD", "DELIVERED/1H", "HEALTH")
        print("{:<16} {:>8} {:>8} {:>9} {:>6} {:>13}  {}".format(*head))
        for r in rows:
            why = f" ({r['why']})" if r["why"] else ""
            oldest = _age(r["oldest_pending_s"]) if r["pending"] else "-"
            print(
                f"{r['destination']:<16} {r['pending']:>8} {oldest:>8} {r['retrying']:>9} "
                f"{r['dead']:>6} {r['delivered_last_hour']:>13}  {r['health']}{why}"
            )
    if workers:
        print(f"\nLive workers ({len(workers)}):")
        for w in workers:
            print(f"  {w['host']} pid {w['pid']}, last seen {w['last_seen']}")
    else:
        print("\nNo live worker: start `relay serve` or `relay worker` to deliver.")
    return _exit_status(rows)


def _age(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h10m``, ``3d04h``: how long the oldest pending event waited."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _exit_status(rows: list[dict[str, Any]]) -> int:
    return 1 if any(r["health"] == "unhealthy" for r in rows) else 0
