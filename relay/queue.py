"""The Redis boundary for deliveries: read, take, settle, keep, retry.

Each destination has a stream per partition (:mod:`relay.partitions`) that every
worker reads through one consumer group. Every delivery, whatever it is (a first try,
a retry, a replay, a ConveYour batch, a hook notification; rate-limited or not), goes
through the same two steps, each a script call in the control slot and one in each
partition its events are in (a script call touches one slot: :mod:`relay.redis_keys`):

* :meth:`DeliveryQueue.take`: ``relay/lua/admit.lua`` gives each request its lease
  (the global 429 pause and ``max_in_flight``) and, in a call sent beside it (neither
  waits for the other: a round trip less before the request goes), ``take.lua``
  judges its entries in their partitions: it refuses a copy of an event already
  delivered, dead or being sent by another holder, and marks the rest delivering by
  the request's holder. A request refused a lease has those marks undone
  (``untake.lua``: status and holder as they were); one left nothing to send gives
  its lease back at once.
* :meth:`DeliveryQueue.settle`: ``settle.lua`` records the answers in each partition,
  with everything that follows for the events (retry, dead letter, the contact's next
  event, hook notifications) and acks the entries; then ``release.lua`` does what
  follows for the destination (the lease given back, the rate log, a pause, health,
  delivered counts, hooks' last outcomes). Each is shared with other deliveries
  settling at the same time (a group commit per slot).

The control steps of a destination's takes and settles of the moment go in one call
(``scripts.CONTROL``: release.lua, then admit.lua), and the worker starts its next
request when a settle's partition steps are done, so the lease that settle gives back
is the one the next take gets, in that same call: a delivery costs about three calls'
share, not four. Two such calls may be out at once (a take waits for its lease, and
should not wait for another call to come back first: see :meth:`_control_of`).

A worker that dies before settling leaves its entries pending, and another worker
claims them (XAUTOCLAIM) once they have been idle longer than the visibility window;
a live worker keeps what it holds (:meth:`DeliveryQueue.keep`) so that never happens
to it while its deliveries wait. One that dies between the two steps of a settle
leaves a lease that lapses by itself and rate entries dated a hold ahead: both safe.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from relay import redis_keys
from relay.groupcommit import GroupCommit
from relay.scripts import (
    ADMIT,
    CONTROL,
    KEEP,
    MOVE_DUE,
    RELEASE,
    RENEW,
    SETTLE,
    TAKE,
    UNTAKE,
    Batch,
)
from relay.settlement import Entry, Result, Settlement, release_item, settle_item

__all__ = ["DeliveryQueue", "Entry", "Result", "Settlement", "Taken"]

log = logging.getLogger("relay.worker")


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


class DeliveryQueue:
    """Worker-side queue operations; expects a ``decode_responses=True`` client."""

    __slots__ = (
        "_control",
        "_controls",
        "_controls_by_destination",
        "_keep",
        "_move_due",
        "_partitions",
        "_redis",
        "_renew",
        "_retention_s",
        "_settle",
        "_settles",
        "_start",
        "_take",
        "_takes",
        "_untake",
    )

    def __init__(self, redis: Redis, *, retention_s: int, partitions: int) -> None:
        self._redis = redis
        self._retention_s = retention_s
        #: RELAY_PARTITIONS: every destination has a stream in each.
        self._partitions = partitions
        self._control = CONTROL.bind(redis)
        self._take = TAKE.bind(redis)
        self._untake = UNTAKE.bind(redis)
        self._settle = SETTLE.bind(redis)
        self._keep = KEEP.bind(redis)
        self._renew = RENEW.bind(redis)
        self._move_due = MOVE_DUE.bind(redis)
        #: Group commits (relay.groupcommit), one per slot and fixed arguments: the
        #: control steps of takes and settles together (admit.lua and release.lua in one
        #: call: scripts.CONTROL), takes' and settles' partition steps.
        self._controls: dict[tuple[str, int, int, int | None], GroupCommit] = {}
        #: The control commit a destination's settles join: its takes' (server time).
        self._controls_by_destination: dict[str, GroupCommit] = {}
        self._takes: dict[tuple[str, int, int, int | None], GroupCommit] = {}
        self._settles: dict[int, GroupCommit] = {}
        #: Where each destination's next read starts: partitions take turns going first.
        self._start: dict[str, itertools.count[int]] = {}

    def __repr__(self) -> str:
        return (
            f"<DeliveryQueue partitions={self._partitions} retention_s={self._retention_s} "
            f"controls={len(self._controls)}>"
        )

    def streams(self, destination: str) -> list[str]:
        """The destination's stream in every partition, in partition order."""
        return [redis_keys.queue(destination, p) for p in range(self._partitions)]

    async def ensure_group(self, destination: str) -> None:
        """Create the consumer group (and stream) in every partition; existing ones are fine."""
        for stream in self.streams(destination):
            try:
                await self._redis.xgroup_create(
                    stream, redis_keys.CONSUMER_GROUP, id="0", mkstream=True
                )
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read(
        self, destination: str, consumer: str, *, count: int, block_ms: int
    ) -> list[Entry]:
        """New entries for this consumer, at most ``count``, from every partition in
        turn; recreates the groups after a Redis restart lost them.

        The partition whose turn it is comes first, alone: when it has ``count`` entries
        waiting (a busy queue), they are the whole read, so the requests made of them
        take and settle in that partition's script calls together (a read spread over
        every partition would leave each call an item or two: several times the calls).
        Then, on one Redis, with room for an entry from each, one XREADGROUP over the
        other partitions' streams (COUNT is per stream: the rest shared out), blocking
        up to ``block_ms`` if nothing was found. Otherwise (a cluster cannot read streams
        of several slots in one command, or room for fewer than one each): one stream
        after the other until ``count`` are read; nothing found, a short sleep (at most
        ``block_ms``) stands for the block."""
        start = next(self._start.setdefault(destination, itertools.count())) % self._partitions
        streams = self.streams(destination)
        streams = streams[start:] + streams[:start]
        one_redis = not isinstance(self._redis, RedisCluster)
        found: list[Entry] = []
        try:
            if one_redis and len(streams) > 1:
                found = await self._read(consumer, streams[:1], count=count)
                if len(found) >= count:
                    return found
                streams = streams[1:]
            left = count - len(found)
            if one_redis and left >= len(streams):
                block = None if found else block_ms
                return found + await self._read(
                    consumer, streams, count=left // len(streams), block_ms=block
                )
            for stream in streams:
                found += await self._read(consumer, [stream], count=count - len(found))
                if len(found) >= count:
                    break
            if not found:
                await asyncio.sleep(min(block_ms, _POLL_MS) / 1000)
            return found
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # A stream with no group yet (another worker may be making them): what the
            # reads before it took is this consumer's now, pending until settled; if it
            # were dropped here it would wait out the visibility window unsent.
            await self.ensure_group(destination)
            return found

    async def _read(
        self, consumer: str, streams: list[str], *, count: int, block_ms: int | None = None
    ) -> list[Entry]:
        """One XREADGROUP of new entries: up to ``count`` from each of these streams."""
        reply = await self._redis.xreadgroup(
            redis_keys.CONSUMER_GROUP,
            consumer,
            dict.fromkeys(streams, ">"),
            count=count,
            block=block_ms,
        )
        return _read_entries(reply)

    async def claim_stale(
        self, destination: str, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[Entry]:
        """Entries another consumer took and did not settle within ``min_idle_ms``, from
        every partition, at most ``count``. One round trip finds the partitions with
        entries pending at all (most have none most of the time); only those are asked."""
        streams = self.streams(destination)
        found: list[Entry] = []
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for stream in streams:
                    pipe.xpending(stream, redis_keys.CONSUMER_GROUP)
                summaries = await pipe.execute()
            for stream, summary in zip(streams, summaries, strict=True):
                if not summary["pending"]:
                    continue
                reply = await self._redis.xautoclaim(
                    stream,
                    redis_keys.CONSUMER_GROUP,
                    consumer,
                    min_idle_time=min_idle_ms,
                    start_id="0-0",
                    count=count - len(found),
                )
                found += _entries(reply[1])
                if len(found) >= count:
                    break
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group(destination)  # what was claimed before it is kept
        return found

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
        made at the same time share script calls (one per slot)."""
        requests = [(holder, group) for holder, group in requests if group]
        if not requests:
            return []

        def holders(batch: Batch) -> None:
            for holder, _ in requests:
                batch.add({"part": ADMIT.name, "holder": holder})

        # By place: entries of different partitions' streams may share an id.
        flat = [(holder, entry) for holder, group in requests for entry in group]
        by_partition: dict[int, list[int]] = {}
        for i, (_, entry) in enumerate(flat):
            by_partition.setdefault(entry.partition, []).append(i)
        # The lease joins the control call of the moment at once (a settle's release.lua
        # may be in it, giving back the lease this take gets), the marks beside it.
        admitted = self._control_of(destination, lease_ms, max_in_flight, now_ms).enter(holders)
        marks = [
            self._takes_of(destination, p, lease_ms, now_ms).enter(
                _marks([flat[i] for i in places])
            )
            for p, places in by_partition.items()
        ]
        replies: list[Any]
        try:
            if len(marks) == 1:  # the usual case: a request's events share a partition
                replies = await marks[0]
            else:
                replies = [None] * len(flat)
                found = await asyncio.gather(*marks)
                for places, answers in zip(by_partition.values(), found, strict=True):
                    for i, reply in zip(places, answers, strict=True):
                        replies[i] = reply
        except BaseException:
            if not admitted.cancel():  # done already: its error is not the one raised
                admitted.exception()
            raise
        leases = await admitted
        leased = {holder: lease for (holder, _), lease in zip(requests, leases, strict=True)}
        out: list[Taken] = []
        marked: dict[int, list[tuple[str, Entry, list[Any]]]] = {}  # refused, by partition
        for (holder, entry), reply in zip(flat, replies, strict=True):
            lease = leased[holder]
            if lease[0] == "ok":
                out.append(_taken(entry, reply))
                continue
            if reply[0] == "ok":
                marked.setdefault(entry.partition, []).append((holder, entry, reply))
            wait_ms = int(lease[1]) if len(lease) > 1 else 0
            out.append(Taken(entry, lease[0], wait_ms=wait_ms))
        if marked:
            await _each(self._unmark(destination, p, found) for p, found in marked.items())
        # A request admitted with nothing to send gives its lease back at once.
        sending = {holder for (holder, _), t in zip(flat, out, strict=True) if t.state == "ok"}
        idle = [h for h, lease in leased.items() if lease[0] == "ok" and h not in sending]
        if idle:
            await self._redis.zrem(redis_keys.inflight(destination), *idle)
        return out

    async def _unmark(
        self, destination: str, partition: int, marked: list[tuple[str, Entry, list[Any]]]
    ) -> None:
        """Put back what take.lua marked for requests refused a lease (untake.lua)."""
        batch = self._untake.batch()
        for holder, entry, reply in marked:
            # A Lua false comes back as None: JSON null would be a value to Lua.
            status, was, until = (reply[5] or False, reply[6] or False, reply[7] or False)
            event = batch.key(redis_keys.event(entry.event))
            batch.add(
                {"event": event, "holder": holder, "status": status, "was": was, "until": until}
            )
        await self._untake(batch, keys={}, args={"destination": destination})

    def _control_of(
        self, destination: str, lease_ms: int, max_in_flight: int, now_ms: int | None
    ) -> GroupCommit:
        """The group commit of control steps for one destination (and limits): its
        takes' (admit.lua) and, on the server's time, its settles' (release.lua)."""
        key = (destination, lease_ms, max_in_flight, now_ms)
        commit = self._controls.get(key)
        if commit is None:
            keys = {
                "health": redis_keys.HEALTH,
                "leases": redis_keys.inflight(destination),
                "pause": redis_keys.paused(destination),
            }
            args: dict[str, str | int | float] = {
                "now_ms": "" if now_ms is None else now_ms,
                "lease_ms": lease_ms,
                "max_in_flight": max_in_flight,
            }
            # Two calls in flight: every take and every settle of the destination comes
            # through here (twice a partition's traffic), and a take waits for it; with
            # one, a take arriving while a call is out waited for that call, then its
            # own. Two calls out may run in either order: a take's lease asked for
            # before the release it was to follow may find the cap full and wait its
            # poll (bench, cap 16: 0 to 8 such waits in 16,000 deliveries).
            commit = self._controls[key] = GroupCommit(self._control, lambda: (keys, args), depth=2)
        if now_ms is None:
            self._controls_by_destination[destination] = commit
        return commit

    def _takes_of(
        self, destination: str, partition: int, lease_ms: int, now_ms: int | None
    ) -> GroupCommit:
        """The group commit of takes' partition steps for one destination's partition."""
        key = (destination, partition, lease_ms, now_ms)
        commit = self._takes.get(key)
        if commit is None:
            keys = {"stream": redis_keys.queue(destination, partition)}
            args: dict[str, str | int | float] = {
                "destination": destination,
                "now_ms": "" if now_ms is None else now_ms,
                "lease_ms": lease_ms,
            }
            commit = self._takes[key] = GroupCommit(self._take, lambda: (keys, args))
        return commit

    async def settle(
        self, settlement: Settlement, *, settled: Callable[[], None] | None = None
    ) -> list[str]:
        """Record one request's answer and all that follows from it, and ack its entries:
        in each partition of its events (atomically there), then in the control slot,
        each step in a script call shared with other settlements of the moment. For each
        expired entry, then each result: "settled", "late" (another worker took the event
        over: only the attempt was recorded) or "gone" (the event expired).
        ``settled`` is called between the two steps (the worker starts its next request
        then: see relay.worker)."""
        expired, results = settlement.expired, settlement.results
        parts = {e.partition for e in expired} | {r.entry.partition for r in results}
        words: list[str]
        if len(parts) == 1:  # the usual case: a request's events share a partition
            (partition,) = parts
            (words,) = await self._settle_commit(partition).submit(
                functools.partial(
                    settle_item,
                    settlement=settlement,
                    partition=partition,
                    expired=expired,
                    results=results,
                )
            )
        else:
            words = [""] * (len(expired) + len(results))
            places: list[list[int]] = []  # of each partition's words in ``words``
            steps = []
            for partition in sorted(parts):
                gone = [i for i, e in enumerate(expired) if e.partition == partition]
                mine = [i for i, r in enumerate(results) if r.entry.partition == partition]
                places.append([*gone, *(len(expired) + i for i in mine)])
                writes = functools.partial(
                    settle_item,
                    settlement=settlement,
                    partition=partition,
                    expired=[expired[i] for i in gone],
                    results=[results[i] for i in mine],
                )
                steps.append(self._settle_commit(partition).enter(writes))
            for where, (answer,) in zip(places, await asyncio.gather(*steps), strict=True):
                for i, word in zip(where, answer, strict=True):
                    words[i] = word
        if settled is not None:  # before the control step is asked for: see relay.worker
            settled()
        final = [r for r, w in zip(results, words[len(expired) :], strict=True) if w == "settled"]
        control = self._controls_by_destination.get(settlement.destination)
        if control is None:  # settled before any take here: its limits do not matter
            control = self._control_of(settlement.destination, 0, 0, None)

        def release(batch: Batch) -> None:
            release_item(batch, settlement, final)
            batch.items[-1]["part"] = RELEASE.name

        await control.submit(release)
        return words

    def _settle_commit(self, partition: int) -> GroupCommit:
        commit = self._settles.get(partition)
        if commit is None:
            keys = {"notifications": redis_keys.queue(redis_keys.NOTIFICATIONS, partition)}

            def fixed() -> tuple[dict[str, str], dict[str, str | int | float]]:
                return keys, {"now_ms": "", "retention_s": self._retention_s}

            commit = self._settles[partition] = GroupCommit(self._settle, fixed)
        return commit

    async def give_back(self, destination: str, holder: str) -> None:
        """Give back ``holder``'s lease without settling (nothing was sent); its entries
        stay pending, for another worker to claim."""
        await self._redis.zrem(redis_keys.inflight(destination), holder)

    async def keep(
        self,
        destination: str,
        consumer: str,
        entries: Sequence[Entry],
        holders: Sequence[str],
        *,
        lease_ms: int,
        now_ms: int | None = None,
    ) -> tuple[int, int]:
        """Reset the idle time of the entries ``consumer`` still holds and renew its
        requests' holds on their events and their live leases, so that no other worker
        claims them while they wait; how many entries it still holds, and how many
        leases were renewed."""
        when = "" if now_ms is None else now_ms
        names = orjson.dumps(list(holders)).decode()
        kept = 0
        for partition in sorted({e.partition for e in entries}):
            batch = self._keep.batch()
            for entry in entries:
                if entry.partition == partition:
                    event = batch.key(redis_keys.event(entry.event))
                    batch.add({"entry": entry.id, "event": event})
            done, _ = await self._keep(
                batch,
                keys={"stream": redis_keys.queue(destination, partition)},
                args={
                    "consumer": consumer,
                    "destination": destination,
                    "holders": names,
                    "now_ms": when,
                    "lease_ms": lease_ms,
                },
            )
            kept += int(done)
        renewed = await self._renew(
            keys={"leases": redis_keys.inflight(destination)},
            args={"holders": names, "now_ms": when, "lease_ms": lease_ms},
        )
        return kept, int(renewed)

    async def move_due_retries(
        self, destinations: Sequence[str], *, now_ms: int | None = None, limit: int = 500
    ) -> int:
        """Put retries whose time has come back into their streams (a call per
        partition, at most ``limit`` per destination and partition); how many moved."""
        if not destinations:
            return 0
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms

        async def one(partition: int) -> int:
            batch = self._move_due.batch()
            for dest in destinations:
                retries = redis_keys.retries(dest, partition)
                stream = redis_keys.queue(dest, partition)
                batch.add({"retries": batch.key(retries), "stream": batch.key(stream)})
            args = {"now_ms": now_ms, "limit": limit}
            return int(await self._move_due(batch, keys={}, args=args))

        return sum(await asyncio.gather(*(one(p) for p in range(self._partitions))))

    async def idle(self, destinations: Sequence[str]) -> bool:
        """Nothing waiting, pending or scheduled for any of these destinations."""
        # Retries before the stream: a retry that falls due moves from the first to the
        # second, so read in this order it is seen in one or the other, never in neither.
        async with self._redis.pipeline(transaction=False) as pipe:
            for dest in destinations:
                for partition in range(self._partitions):
                    pipe.zcard(redis_keys.retries(dest, partition))
                    pipe.xlen(redis_keys.queue(dest, partition))
            counts = await pipe.execute()
        return not any(counts)

    async def health(self) -> dict[str, dict[str, Any]]:
        """Destinations currently unhealthy: name -> {"problem", "since"}."""
        raw = cast(dict[str, str], await self._redis.hgetall(redis_keys.HEALTH))
        return {name: orjson.loads(value) for name, value in raw.items()}


#: A read that found nothing in any partition, one stream at a time, sleeps this long.
_POLL_MS = 50


async def _each(steps: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run these steps at once; one (the usual case: a request's events in one
    partition) without the tasks of a gather."""
    todo = list(steps)
    if len(todo) == 1:
        await todo[0]
    else:
        await asyncio.gather(*todo)


def _marks(pairs: list[tuple[str, Entry]]) -> Callable[[Batch], None]:
    """take.lua's items for these (holder, entry) pairs, all of one partition."""

    def writes(batch: Batch) -> None:
        for holder, entry in pairs:
            event = batch.key(redis_keys.event(entry.event))
            batch.add({"entry": entry.id, "event": event, "holder": holder})

    return writes


def _taken(entry: Entry, reply: list[Any]) -> Taken:
    """What take.lua's reply for an entry of a leased request says (see its header)."""
    if reply[0] == "ok":
        return Taken(entry, "ok", reply[1], int(reply[2]), int(reply[3]), last=reply[4])
    return Taken(entry, reply[0])  # gone, stray or busy: no wait (waits are the lease's)


def _read_entries(reply: Any) -> list[Entry]:
    streams = cast(list[tuple[str, Any]], reply or [])
    return [e for _, rows in streams for e in _entries(rows)]


def _entries(reply: Any) -> list[Entry]:
    """The entries of an XREADGROUP or XAUTOCLAIM reply. One that names no event (relay
    writes none such: another program's, or a deleted entry's) is left out, pending."""
    event, contact = redis_keys.ENTRY_EVENT_FIELD, redis_keys.ENTRY_CONTACT_FIELD
    found: list[Entry] = []
    for entry_id, fields in reply:
        if not fields or event not in fields:
            continue
        try:
            found.append(Entry.of(entry_id, fields[event], fields.get(contact) or None))
        except ValueError:
            log.warning("stream entry %s names no event id (%.40r): left alone", entry_id, fields)
    return found
