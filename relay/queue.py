"""The Redis boundary for deliveries: read, take, settle, keep, retry.

Each destination has a stream that every worker reads through one consumer group.
Every delivery, whatever it is (a first try, a retry, a replay, a ConveYour batch,
a hook notification; rate-limited or not), goes through the same two script calls:

* :meth:`DeliveryQueue.take` (``relay/lua/take.lua``) admits the entries of one or
  more requests: it refuses a copy of an event already delivered, dead or being sent
  under another live lease, and waits out a 429 pause and ``max_in_flight``; what
  it admits it marks delivering by the request's holder, under a lease.
* :meth:`DeliveryQueue.settle` (``relay/lua/settle.lua``) records the answers, with
  everything that follows from them (retry, dead letter, the contact's next event,
  hook notifications, the lease given back, the rate log, a pause, the destination's
  health), and acks the entries, in one step shared with other deliveries settling at
  the same time (a group commit).

A worker that dies before settling leaves its entries pending, and another worker
claims them (XAUTOCLAIM) once they have been idle longer than the visibility window;
a live worker keeps what it holds (:meth:`DeliveryQueue.keep`) so that never happens
to it while its deliveries wait.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from relay import redis_keys
from relay.groupcommit import GroupCommit
from relay.hooks import last_outcome, notification_items
from relay.models import DeliveryStatus
from relay.scripts import KEEP, MOVE_DUE, SETTLE, TAKE, Batch

__all__ = ["DeliveryQueue", "Entry", "Result", "Settlement", "Taken"]


class Entry(NamedTuple):
    """One stream entry: its id, its event's, and the event's contact digest when the
    event heads that contact's order (see :func:`relay.redis_keys.heads`)."""

    id: str
    event: str
    contact: str | None = None


@dataclass(frozen=True, slots=True)
class Taken:
    """What :meth:`DeliveryQueue.take` made of one entry (see ``relay/lua/take.lua``)."""

    entry: Entry
    #: "ok" (marked delivering: send it), "gone" (expired), "stray" (a copy of an event
    #: delivered or dead: acked), "busy" (another holder sends it), "paused" (an upstream
    #: 429; ``wait_ms`` left) or "full" (every in-flight lease is taken).
    state: str
    #: ok: the event's JSON.
    data: str = ""
    #: ok: attempts made before this one, and retryable failures of the current schedule.
    made: int = 0
    retried: int = 0
    wait_ms: int = 0
    #: ok: the last attempt's record (JSON), if one was made.
    last: str | bytes | None = None

    @property
    def steps(self) -> int:
        """Requests of the event the upstream took in earlier attempts (their ``steps``)."""
        if not self.last:
            return 0
        steps = orjson.loads(self.last).get("steps")
        return steps if isinstance(steps, int) else 0


@dataclass(frozen=True, slots=True)
class Result:
    """What one attempt means for one event (see ``relay/lua/settle.lua``)."""

    entry: Entry
    status: DeliveryStatus
    #: The attempt's record (JSON), kept on the event.
    record: bytes
    #: The retry uses up a step of the schedule (rejected credentials do not).
    spends_step: bool = False
    #: status retrying: when (unix ms).
    retry_at_ms: int = 0
    #: Hook notifications to queue with it (``hooks.notification_records``).
    notifications: Sequence[tuple[str, bytes]] = ()
    #: For a notification (destination ``_hooks``): its subscription, whose last
    #: outcome this result becomes (``redis_keys.HOOKS_LAST``).
    hook: str | None = None


@dataclass(frozen=True, slots=True)
class Settlement:
    """One request's answer, settled in one go: its events' results and what it means
    for its destination."""

    destination: str
    #: Whose lease the request went under (given back).
    holder: str
    results: Sequence[Result]
    #: The request's ids in the destination's rate log, dated at the answer.
    sent: Sequence[str] = ()
    #: An upstream 429's Retry-After: the destination pauses this long (ms).
    pause_ms: int = 0
    #: Why the destination is unhealthy now (its credentials were refused).
    unhealthy: str | None = None
    #: Entries whose event expired before it was sent (a take found it gone): acked,
    #: and their contacts' next events go.
    expired: Sequence[Entry] = ()


class DeliveryQueue:
    """Worker-side queue operations; expects a ``decode_responses=True`` client."""

    __slots__ = (
        "_commit",
        "_keep",
        "_move_due",
        "_redis",
        "_retention_s",
        "_take",
        "_take_commits",
    )

    def __init__(self, redis: Redis, *, retention_s: int) -> None:
        self._redis = redis
        self._retention_s = retention_s
        self._take = TAKE.bind(redis)
        self._take_commits: dict[tuple[str, int, int, int | None], GroupCommit] = {}
        self._keep = KEEP.bind(redis)
        self._move_due = MOVE_DUE.bind(redis)
        #: Deliveries settling at the same time share one script call (relay.groupcommit).
        self._commit = GroupCommit(SETTLE.bind(redis), self._settle_fixed)

    def __repr__(self) -> str:
        return f"<DeliveryQueue retention_s={self._retention_s} {self._commit!r}>"

    async def ensure_group(self, destination: str) -> None:
        """Create the consumer group (and stream); an existing group is fine."""
        try:
            await self._redis.xgroup_create(
                redis_keys.queue(destination), redis_keys.CONSUMER_GROUP, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(
        self, destination: str, consumer: str, *, count: int, block_ms: int
    ) -> list[Entry]:
        """New entries for this consumer; recreates the group after a Redis restart lost it."""
        stream = redis_keys.queue(destination)
        try:
            reply = await self._redis.xreadgroup(
                redis_keys.CONSUMER_GROUP, consumer, {stream: ">"}, count=count, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group(destination)
            return []
        streams = cast(list[tuple[str, Any]], reply or [])
        return [e for _, rows in streams for e in _entries(rows)]

    async def claim_stale(
        self, destination: str, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[Entry]:
        """Entries another consumer took and did not settle within ``min_idle_ms``."""
        try:
            reply = await self._redis.xautoclaim(
                redis_keys.queue(destination),
                redis_keys.CONSUMER_GROUP,
                consumer,
                min_idle_time=min_idle_ms,
                start_id="0-0",
                count=count,
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group(destination)
            return []
        return _entries(reply[1])

    async def take(
        self,
        destination: str,
        requests: Sequence[tuple[str, Sequence[Entry]]],
        *,
        lease_ms: int,
        max_in_flight: int,
        now_ms: int | None = None,
    ) -> list[Taken]:
        """Admit the entries of these requests (holder, its entries) for sending; what
        became of each entry, in order (see :class:`Taken`). Takes of one destination
        made at the same time share one script call."""
        entries = [entry for _, group in requests for entry in group]
        if not entries:
            return []

        def writes(batch: Batch) -> None:
            for holder, group in requests:
                for entry in group:
                    event = batch.key(redis_keys.event(entry.event))
                    batch.add({"entry": entry.id, "event": event, "holder": holder})

        reply = await self._takes(destination, lease_ms, max_in_flight, now_ms).submit(writes)
        taken = []
        for entry, one in zip(entries, reply, strict=True):
            if one[0] == "ok":
                last = one[4] if len(one) > 4 else None
                taken.append(Taken(entry, "ok", one[1], int(one[2]), int(one[3]), last=last))
            else:
                taken.append(Taken(entry, one[0], wait_ms=int(one[1]) if len(one) > 1 else 0))
        return taken

    def _takes(
        self, destination: str, lease_ms: int, max_in_flight: int, now_ms: int | None
    ) -> GroupCommit:
        """The group commit of takes of one destination (and limits)."""
        key = (destination, lease_ms, max_in_flight, now_ms)
        commit = self._take_commits.get(key)
        if commit is None:
            keys = {
                "stream": redis_keys.queue(destination),
                "leases": redis_keys.inflight(destination),
                "pause": redis_keys.paused(destination),
            }
            args: dict[str, str | int | float] = {
                "destination": destination,
                "now_ms": "" if now_ms is None else now_ms,
                "lease_ms": lease_ms,
                "max_in_flight": max_in_flight,
            }
            commit = self._take_commits[key] = GroupCommit(self._take, lambda: (keys, args))
        return commit

    async def settle(self, settlement: Settlement) -> list[str]:
        """Record one request's answer and all that follows from it, and ack its entries,
        atomically (in one script call, shared with other settlements of the moment).
        For each expired entry, then each result: "settled", "late" (another worker took
        the event over: only the attempt was recorded) or "gone" (the event expired)."""
        (words,) = await self._commit.submit(lambda batch: _settle_item(batch, settlement))
        return cast(list[str], words)

    def _settle_fixed(self) -> tuple[dict[str, str], dict[str, str | int | float]]:
        keys = {
            "health": redis_keys.HEALTH,
            "notifications": redis_keys.queue(redis_keys.NOTIFICATIONS),
        }
        return keys, {"now_ms": "", "retention_s": self._retention_s}

    async def give_back(self, destination: str, holder: str) -> None:
        """Give back ``holder``'s lease without settling (nothing was sent); its entries
        stay pending, for another worker to claim."""
        await self._redis.zrem(redis_keys.inflight(destination), holder)

    async def keep(
        self,
        destination: str,
        consumer: str,
        entry_ids: Sequence[str],
        holders: Sequence[str],
        *,
        lease_ms: int,
        now_ms: int | None = None,
    ) -> tuple[int, int]:
        """Reset the idle time of the entries ``consumer`` still holds and renew the live
        leases of its requests, so that no other worker claims them while they wait; how
        many entries it still holds, and how many leases were renewed."""
        kept, renewed = await self._keep(
            keys={
                "stream": redis_keys.queue(destination),
                "leases": redis_keys.inflight(destination),
            },
            args={
                "consumer": consumer,
                "entries": orjson.dumps(list(entry_ids)).decode(),
                "holders": orjson.dumps(list(holders)).decode(),
                "now_ms": "" if now_ms is None else now_ms,
                "lease_ms": lease_ms,
            },
        )
        return int(kept), int(renewed)

    async def move_due_retries(
        self, destinations: Sequence[str], *, now_ms: int | None = None, limit: int = 500
    ) -> int:
        """Put retries whose time has come back into their streams; how many moved."""
        if not destinations:
            return 0
        batch = self._move_due.batch()
        for dest in destinations:
            retries, stream = redis_keys.retries(dest), redis_keys.queue(dest)
            batch.add({"retries": batch.key(retries), "stream": batch.key(stream)})
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        return int(await self._move_due(batch, keys={}, args={"now_ms": now_ms, "limit": limit}))

    async def idle(self, destinations: Sequence[str]) -> bool:
        """Nothing waiting, pending or scheduled for any of these destinations."""
        # Retries before the stream: a retry that falls due moves from the first to the
        # second, so read in this order it is seen in one or the other, never in neither.
        async with self._redis.pipeline(transaction=False) as pipe:
            for dest in destinations:
                pipe.zcard(redis_keys.retries(dest))
                pipe.xlen(redis_keys.queue(dest))
            counts = await pipe.execute()
        return not any(counts)

    async def health(self) -> dict[str, dict[str, Any]]:
        """Destinations currently unhealthy: name -> {"problem", "since"}."""
        raw = cast(dict[str, str], await self._redis.hgetall(redis_keys.HEALTH))
        return {name: orjson.loads(value) for name, value in raw.items()}


def _entries(reply: Any) -> list[Entry]:
    event, contact = redis_keys.ENTRY_EVENT_FIELD, redis_keys.ENTRY_CONTACT_FIELD
    return [
        Entry(entry_id, fields[event], fields.get(contact) or None)
        for entry_id, fields in reply
        if fields and event in fields
    ]


def _settle_item(batch: Batch, settlement: Settlement) -> None:
    """Add one settlement to a ``settle.lua`` call being built."""
    dest = settlement.destination
    stream = batch.key(redis_keys.queue(dest))
    events = [_settle_event(batch, dest, entry) for entry in settlement.expired]
    for result in settlement.results:
        entry = result.entry
        event = _settle_event(batch, dest, entry)
        event["status"] = result.status.value
        event["record"] = result.record.decode()
        if result.spends_step:
            event["spend"] = True
        if result.status is DeliveryStatus.retrying:
            event["retry"] = batch.key(redis_keys.retries(dest))
            event["at"] = result.retry_at_ms
            event["member"] = entry.event
            if entry.contact is not None:
                event["member"] += redis_keys.RETRY_CONTACT_SEP + entry.contact
        elif result.status is DeliveryStatus.dead:
            event["dead"] = batch.key(redis_keys.dead(dest))
        elif result.status is DeliveryStatus.delivered:
            minute = int(time.time() // 60)
            event["minute"] = batch.key(redis_keys.delivered_minute(dest, minute))
        if result.notifications:
            event["notify"] = notification_items(batch, result.notifications)
        if result.hook is not None:
            event["hook"] = result.hook
            event["hooks"] = batch.key(redis_keys.HOOKS_INDEX)
            event["last"] = batch.key(redis_keys.HOOKS_LAST)
            event["outcome"] = last_outcome(entry.event, result.status.value, result.record)
        events.append(event)
    item: dict[str, Any] = {
        "destination": dest,
        "holder": settlement.holder,
        "stream": stream,
        "leases": batch.key(redis_keys.inflight(dest)),
        "events": events,
    }
    if settlement.sent:
        item["rate"] = batch.key(redis_keys.rate(dest))
        item["sent"] = list(settlement.sent)
    if settlement.pause_ms > 0:
        item["pause"] = batch.key(redis_keys.paused(dest))
        item["pause_ms"] = settlement.pause_ms
    if settlement.unhealthy is not None:
        problem = {"problem": settlement.unhealthy, "since": time.time()}
        item["unhealthy"] = orjson.dumps(problem).decode()
    batch.add(item)


def _settle_event(batch: Batch, destination: str, entry: Entry) -> dict[str, Any]:
    """An event of a ``settle.lua`` item: its entry, and its contact's order when the
    entry names the contact (the order moves on when it is settled for good)."""
    event: dict[str, Any] = {
        "entry": entry.id,
        "id": entry.event,
        "event": batch.key(redis_keys.event(entry.event)),
    }
    if entry.contact is not None:
        event["contact"] = entry.contact
        event["heads"] = batch.key(redis_keys.heads(destination))
        event["list"] = batch.key(redis_keys.order(destination, entry.contact))
    return event
