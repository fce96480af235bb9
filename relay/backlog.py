"""Each destination's backlog and health, as ``relay status``, ``/readyz`` and the queue
gauges of ``/metrics`` report them.

Read from Redis at the time of asking, in one round trip of a few O(1) or O(log n)
reads per destination (never a scan), so every process and every scrape gives the same
figures:

==================  ===========================================================
pending             stream entries (waiting, or being sent) plus the events parked
                    behind an earlier event of their contact (the heads' counter)
retrying            scheduled retries
dead                dead letters
delivered_last_hour the last 60 minute counters
oldest_pending_s    how long the front of the queue has been waiting (below)
==================  ===========================================================

**Oldest pending.** An event joins its destination's stream when it may be sent: at
its acceptance, when its retry falls due (a live worker moves due retries within a
quarter second), when the earlier event of its contact is settled, or when it is
replayed. The stream keeps that order and settled entries leave it, so its first entry
(``XRANGE - + COUNT 1``; the entry id is Redis's time of the ``XADD``) is the one that
has waited longest to be sent. A retry that fell due and is still scheduled (no worker
moved it) has waited since it fell due (``ZRANGE 0 0 WITHSCORES``). ``oldest_pending_s``
is the longer of those two waits, by Redis's clock; 0 when nothing may be sent now. It
is the delivery lag an operator alerts on: it grows while nothing delivers, or while
delivery falls behind. Parked events are not measured on their own (the oldest would
take reading every contact's list): each waits behind an earlier event of its contact
that is in the stream or a retry not yet due. An event's whole wait, from its 202 to
the upstream's success, retries included, is ``relay_event_delivery_latency_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, TypedDict

from redis.asyncio import Redis

from relay import redis_keys
from relay.connect import server_time_ms
from relay.heartbeat import WorkerSeen, live_workers
from relay.queue import DeliveryQueue
from relay.settings import Settings

__all__ = ["Backlog", "Counts", "Overview", "counts", "overview"]

Health = Literal["healthy", "unhealthy", "disabled"]


class Counts(NamedTuple):
    """One destination's figures (see the module docstring)."""

    pending: int
    retrying: int
    dead: int
    delivered_last_hour: int
    oldest_pending_s: float


class Backlog(TypedDict):
    """One destination's row: ``relay status --json`` prints these."""

    destination: str
    pending: int
    retrying: int
    dead: int
    delivered_last_hour: int
    oldest_pending_s: float
    health: Health
    #: Why it is unhealthy (rejected credentials; events waiting and no live worker).
    why: str | None
    #: Since when (unix time) its upstream refuses our credentials.
    since: float | None


@dataclass(frozen=True, slots=True)
class Overview:
    """Every configured destination's backlog, then hook notifications' (``_hooks``),
    and the live workers."""

    destinations: list[Backlog]
    workers: list[WorkerSeen]


async def counts(
    redis: Redis, destinations: Sequence[str], *, partitions: int
) -> dict[str, Counts]:
    """Each destination's figures, summed over the partitions, in two round trips
    (Redis's clock, then the rest: a cluster pipeline takes only commands on keys)."""
    minute = int(time.time() // 60)  # the clock settle counted deliveries by
    now_ms = await server_time_ms(redis)
    async with redis.pipeline(transaction=False) as pipe:
        for dest in destinations:
            # MGET by name: redis-py's cluster pipeline refuses mget() (its keys could
            # span slots); these share relay's control hash tag.
            pipe.execute_command(
                "MGET", *[redis_keys.delivered_minute(dest, minute - i) for i in range(60)]
            )
            for p in range(partitions):
                stream, retries = redis_keys.queue(dest, p), redis_keys.retries(dest, p)
                pipe.xlen(stream)
                pipe.hget(redis_keys.heads(dest, p), redis_keys.PARKED_FIELD)
                pipe.zcard(retries)
                pipe.zcard(redis_keys.dead(dest, p))
                pipe.xrange(stream, count=1)
                pipe.zrange(retries, 0, 0, withscores=True)
        replies = await pipe.execute()
    found = {}
    per_dest = 1 + 6 * partitions
    for i, dest in enumerate(destinations):
        delivered, *rest = replies[per_dest * i : per_dest * (i + 1)]
        pending = retrying = dead = 0
        since_ms = []
        for p in range(partitions):
            queued, parked, waiting, gone, first, due = rest[6 * p : 6 * p + 6]
            pending += int(queued) + int(parked or 0)
            retrying += int(waiting)
            dead += int(gone)
            # An entry id is "<ms of its XADD>-<sequence>".
            if first:
                since_ms.append(int(first[0][0].partition("-")[0]))
            if due and due[0][1] <= now_ms:
                since_ms.append(int(due[0][1]))
        oldest_ms = max(0, now_ms - min(since_ms)) if since_ms else 0
        found[dest] = Counts(
            pending=pending,
            retrying=retrying,
            dead=dead,
            delivered_last_hour=sum(int(v) for v in delivered if v),
            oldest_pending_s=oldest_ms / 1000,
        )
    return found


async def overview(redis: Redis, settings: Settings) -> Overview:
    """Every destination's figures and health, as ``relay status`` judges it: unhealthy
    while its upstream refuses our credentials, or while events wait and no worker is
    live (a disabled destination is only ever "disabled")."""
    names = [*settings.destinations, redis_keys.NOTIFICATIONS]
    figures = await counts(redis, names, partitions=settings.partitions)
    refused = await DeliveryQueue(
        redis, retention_s=settings.retention_s, partitions=settings.partitions
    ).health()
    workers = await live_workers(redis)
    rows: list[Backlog] = []
    for name in names:
        got, dest = figures[name], settings.destinations.get(name)
        problem = refused.get(name, {})
        why: str | None = None
        if dest is not None and not dest.enabled:
            health: Health = "disabled"
        else:
            whys = [problem.get("problem")]
            if (waiting := got.pending + got.retrying) and not workers:
                whys.append(f"{waiting} events waiting and no live worker")
            why = "; ".join(filter(None, whys)) or None
            health = "unhealthy" if why else "healthy"
        rows.append(
            Backlog(
                destination=name,
                pending=got.pending,
                retrying=got.retrying,
                dead=got.dead,
                delivered_last_hour=got.delivered_last_hour,
                oldest_pending_s=got.oldest_pending_s,
                health=health,
                why=why,
                since=problem.get("since"),
            )
        )
    return Overview(rows, workers)
