"""The Redis boundary for deliveries: claim, finish (ack, retry or dead-letter), replay.

Each destination has a stream that every worker reads through one consumer
group. An entry is acknowledged (and deleted, so memory stays bounded) only
in the same atomic script call that records the attempt and its consequence: a delivered
status, a scheduled retry, or a dead letter. A worker that dies before that
leaves the entry pending, and another worker claims it with XAUTOCLAIM once
it has been idle longer than the visibility timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from relay import order, redis_keys
from relay.groupcommit import Batch, GroupCall, GroupCommit
from relay.hooks import queue_notifications
from relay.models import DeliveryStatus
from relay.ratelimit import NOW_LUA, TAKE_LEASE_LUA

__all__ = ["DeliveryQueue", "Entry"]


class Entry(NamedTuple):
    """One stream entry: its id, the event's, and the event's contact digest when the
    entry carries it (written at ingest; retries and replays do not carry it)."""

    id: str
    event: str
    contact: str | None = None


# Moves due retries back into their streams: ZRANGEBYSCORE + XADD + ZREM in one step,
# so a retry is never lost nor doubled by two workers moving at once.
# KEYS: retry zset 1..n, then stream 1..n (same order); ARGV: now_ms, limit.
_MOVE_DUE = """
local n = #KEYS / 2
local moved = 0
for i = 1, n do
  local due = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
  for _, event_id in ipairs(due) do
    redis.call('XADD', KEYS[n + i], '*', 'e', event_id)
    redis.call('ZREM', KEYS[i], event_id)
  end
  moved = moved + #due
end
return moved
"""


# A worker's one round trip before sending an entry to a destination without a rate
# limit: load the event, check its contact's order (relay.order), the pause and the
# in-flight lease (as relay.ratelimit), then mark it delivering.
# A stray copy (the event already delivered or dead here: acked and deleted; or being
# sent under another holder's live lease: left pending for that holder to settle, so a
# holder killed mid-send still has it claimed again) is refused first.
# KEYS: event hash, heads hash, order list (any keys when ARGV[6] is not '1'), retry
# zset, lease zset, pause marker, stream. ARGV: now ms or "", max in flight, holder, ttl
# ms (as the lease script), event id, '1' when the order applies, status field, contact,
# event key prefix, holder field, consumer group, stream entry id.
# Returns {'gone'}, {'stray'}, {'parked'}, {'blocked', due ms or 0}, {'paused', ms}, 0
# (every slot taken), or {'ok', field, value, ...} (the event's hash as it was read).
_TAKE = (
    NOW_LUA
    + order.LUA
    + """
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return {'gone'} end
local status = redis.call('HGET', KEYS[1], ARGV[7])
if status == 'delivered' or status == 'dead' then
  redis.call('XACK', KEYS[7], ARGV[11], ARGV[12])
  redis.call('XDEL', KEYS[7], ARGV[12])
  return {'stray'}
end
if status == 'delivering' then
  local other = redis.call('HGET', KEYS[1], ARGV[10])
  if other and other ~= ARGV[3] then
    local until_ms = redis.call('ZSCORE', KEYS[5], other)
    if until_ms and tonumber(until_ms) > now then
      return {'stray'}
    end
  end
end
if ARGV[6] == '1' then
  local due = order_check(KEYS[2], KEYS[3], KEYS[4], ARGV[8], ARGV[5], ARGV[9])
  if due == -2 then return {'parked'} end
  if due >= 0 then return {'blocked', due} end
end
local paused = redis.call('PTTL', KEYS[6])
if paused > 0 then return {'paused', paused} end
do
  local KEYS = {KEYS[5]}
"""
    + TAKE_LEASE_LUA
    + """
end
redis.call('HSET', KEYS[1], ARGV[7], 'delivering', ARGV[10], ARGV[3])
table.insert(fields, 1, 'ok')
return fields
"""
)

# Group-commit procedure: record an attempt and the status it leaves in the event's
# hash, as attempt n (n: the destination's attempts made, counted here), unless the
# event is gone (it expired while being sent: a hash written now would never expire).
# op: event key, status field, status, attempts-made field, record field prefix, JSON,
# and optionally a field to count one more in (the retries spent of the schedule).
_ATTEMPT = """
procedures.attempt = function(op)
  local key = KEYS[op[2]]
  if redis.call('EXISTS', key) == 0 then return end
  local n = redis.call('HINCRBY', key, op[5], 1)
  redis.call('HSET', key, op[3], op[4], op[6] .. n, op[7])
  if op[8] then redis.call('HINCRBY', key, op[8], 1) end
end
"""
# Keeps a worker's held entries claimed: resets the idle time of each one still pending
# with this consumer (one another worker claimed is left to it). KEYS: stream.
# ARGV: group, consumer, entry ids. Returns how many were kept.
_KEEP = """
local kept = 0
for i = 3, #ARGV do
  local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #mine > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
"""

#: Dead letters replayed per transaction.
_REPLAY_CHUNK = 500


def _entries(reply: Any) -> list[Entry]:
    return [
        Entry(entry_id, fields["e"], fields.get("c") or None)
        for entry_id, fields in reply
        if fields and "e" in fields
    ]


@dataclass(frozen=True, slots=True)
class Taken:
    """What :meth:`DeliveryQueue.take` found: go (with the event's hash), or why not."""

    #: "ok", "gone" (expired), "stray" (a copy of an event delivered, dead or being
    #: sent by another holder: forget it, it is acked or settled by that holder),
    #: "parked" (it waits in its contact's order, and gets a new entry when its turn
    #: comes: drop this one), "blocked" (an earlier event of
    #: the contact is on its way: look again), "paused" (an upstream 429) or "full"
    #: (every in-flight slot is taken).
    state: str
    fields: dict[str, str] | None = None
    #: blocked: when the contact's head is due for its retry (ms; 0: under way);
    #: paused: ms left.
    ms: int = 0


class DeliveryQueue:
    """Worker-side queue operations; expects a ``decode_responses=True`` client."""

    __slots__ = ("_commit", "_keep", "_move_due", "_redis", "_retention_s", "_take")

    def __init__(self, redis: Redis, *, retention_s: int) -> None:
        self._redis = redis
        self._retention_s = retention_s
        self._move_due = redis.register_script(_MOVE_DUE)
        self._keep = redis.register_script(_KEEP)
        #: Concurrent takes (one per delivery about to start) share a round trip.
        self._take = GroupCall(redis, _TAKE, keys=7)
        self._commit = GroupCommit(redis, procedures=order.PROCEDURES + _ATTEMPT)

    def __repr__(self) -> str:
        return f"<DeliveryQueue retention_s={self._retention_s}>"

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
        """Entries another consumer took and did not finish within ``min_idle_ms``."""
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

    async def keep(self, destination: str, consumer: str, entry_ids: Sequence[str]) -> int:
        """Reset the idle time of these entries while ``consumer`` still holds them, so
        housekeeping elsewhere does not claim them; how many it still holds."""
        args = [redis_keys.CONSUMER_GROUP, consumer, *entry_ids]
        return int(await self._keep(keys=[redis_keys.queue(destination)], args=args))

    async def stray(
        self, destination: str, entry: Entry, fields: dict[str, str], *, mine: str
    ) -> bool:
        """Whether ``entry`` is a copy not to send: its event is already delivered or dead
        here (the entry is then acked and deleted), or being sent under a live lease of a
        holder not starting with ``mine`` (that holder settles the entry). The take
        script makes the same check for the short path."""
        status = fields.get(redis_keys.STATUS_FIELD_PREFIX + destination)
        if status in (DeliveryStatus.delivered, DeliveryStatus.dead):
            stream = redis_keys.queue(destination)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xack(stream, redis_keys.CONSUMER_GROUP, entry.id)
                pipe.xdel(stream, entry.id)
                await pipe.execute()
            return True
        other = fields.get(redis_keys.HOLDER_FIELD_PREFIX + destination)
        if status != DeliveryStatus.delivering or not other or other.startswith(mine):
            return False
        until_ms = await self._redis.zscore(redis_keys.inflight(destination), other)
        return until_ms is not None and until_ms > time.time() * 1000

    async def load(self, event_id: str) -> dict[str, str] | None:
        """The event's hash (``data`` JSON, statuses, attempt counts), or None when expired."""
        raw = await self._redis.hgetall(redis_keys.event(event_id))
        return cast(dict[str, str], raw) if raw else None

    async def take(
        self, destination: str, entry: Entry, *, max_in_flight: int, holder: str, ttl_ms: int
    ) -> Taken:
        """Load, order check, pause check, lease and 'delivering' mark, in one round trip.

        Only for entries whose contact is known (``entry.contact``, or none at all when
        ``ordered`` is False: notifications) and destinations without a rate limit.
        """
        contact = entry.contact
        retries = redis_keys.retries(destination)
        keys = [
            redis_keys.event(entry.event),
            *(
                (redis_keys.heads(destination), redis_keys.order(destination, contact))
                if contact is not None
                else (retries, retries)
            ),
            retries,
            redis_keys.inflight(destination),
            redis_keys.paused(destination),
            redis_keys.queue(destination),
        ]
        status = redis_keys.STATUS_FIELD_PREFIX + destination
        args: list[str | int] = [
            *("", max_in_flight, holder, ttl_ms),
            *(
                entry.event,
                "0" if contact is None else "1",
                status,
                contact or "",
                order.EVENT_PREFIX,
            ),
            *(redis_keys.HOLDER_FIELD_PREFIX + destination, redis_keys.CONSUMER_GROUP, entry.id),
        ]
        reply = await self._take.call(keys, args)
        if not isinstance(reply, list):
            return Taken("full")
        if reply[0] == "ok":
            flat = reply[1:]
            return Taken("ok", dict(zip(flat[::2], flat[1::2], strict=True)))
        return Taken(reply[0], None, int(reply[1]) if len(reply) > 1 else 0)

    async def defer(self, destination: str, entry: Entry, *, until_ms: int) -> None:
        """Put an entry back until ``until_ms`` without counting an attempt."""
        entry_id, event_id = entry.id, entry.event
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(redis_keys.retries(destination), {event_id: until_ms})
            pipe.xack(redis_keys.queue(destination), redis_keys.CONSUMER_GROUP, entry_id)
            pipe.xdel(redis_keys.queue(destination), entry_id)
            await pipe.execute()

    async def finish(
        self,
        destination: str,
        entry: Entry,
        attempt: dict[str, Any],
        *,
        status: DeliveryStatus,
        contact: str | None,
        retry_at_ms: int | None = None,
        notifications: Sequence[tuple[str, bytes]] = (),
        release: str | None = None,
        spends_step: bool = False,
    ) -> None:
        """Record the attempt and its consequence, then ack and delete the entry, atomically
        (in one script call, shared with other deliveries finishing at the same time).
        ``spends_step``: the retry uses up a step of the schedule (counted on the event).

        ``contact`` (see ``store.contact_key``) lets the contact's next event go once
        this one is delivered or dead. ``notifications`` (see ``hooks.notification_records``)
        are queued in the same call. ``release`` gives that holder's in-flight lease back,
        and a delivery marks the destination healthy, in the same call too.
        """
        entry_id, event_id = entry.id, entry.event
        record = orjson.dumps({"at": time.time(), **attempt})
        stream = redis_keys.queue(destination)
        now_ms = int(time.time() * 1000)

        def writes(batch: Batch) -> None:
            batch.call(
                "attempt",
                redis_keys.event(event_id),
                *(redis_keys.STATUS_FIELD_PREFIX + destination, status),
                redis_keys.ATTEMPTS_FIELD_PREFIX + destination,
                f"{redis_keys.ATTEMPT_RECORD_PREFIX}{destination}:",
                record,
                *((redis_keys.RETRIES_FIELD_PREFIX + destination,) if spends_step else ()),
            )
            if status is DeliveryStatus.dead:
                batch.zadd(redis_keys.dead(destination), {event_id: now_ms})
            if contact is not None and status in (DeliveryStatus.dead, DeliveryStatus.delivered):
                order.done(batch, destination, contact, event_id)  # the contact's next may go
            if retry_at_ms is not None:
                batch.zadd(redis_keys.retries(destination), {event_id: retry_at_ms})
            if status is DeliveryStatus.delivered:
                minute = redis_keys.delivered_minute(destination, now_ms // 60_000)
                batch.call("INCR", minute)
                batch.expire(minute, redis_keys.DELIVERED_MINUTE_TTL_S)
            queue_notifications(batch, notifications, retention_s=self._retention_s)
            if release is not None:
                batch.call("ZREM", redis_keys.inflight(destination), release)
            if status is DeliveryStatus.delivered:
                batch.call("HDEL", redis_keys.HEALTH, destination)
            batch.call("XACK", stream, redis_keys.CONSUMER_GROUP, entry_id)
            batch.call("XDEL", stream, entry_id)

        await self._commit.submit(writes)

    async def drop(self, destination: str, entry: Entry) -> None:
        """Ack and delete an entry whose event no longer exists (expired), and take it out
        of its contact's order when the entry names the contact (else the workers' sweep
        of the heads does: relay.order), so the contact's next event goes."""
        stream = redis_keys.queue(destination)

        def writes(batch: Batch) -> None:
            if entry.contact is not None:
                order.done(batch, destination, entry.contact, entry.event)
            batch.call("XACK", stream, redis_keys.CONSUMER_GROUP, entry.id)
            batch.call("XDEL", stream, entry.id)

        await self._commit.submit(writes)

    async def move_due_retries(
        self, destinations: list[str], *, now_ms: int | None = None, limit: int = 500
    ) -> int:
        """Put retries whose time has come back into their streams; how many moved."""
        if not destinations:
            return 0
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        keys = [redis_keys.retries(d) for d in destinations]
        keys += [redis_keys.queue(d) for d in destinations]
        return int(await self._move_due(keys=keys, args=[now_ms, limit]))

    async def counts(self, destination: str) -> dict[str, int]:
        """pending (queued, or parked behind an earlier event of its contact), retrying,
        dead, and delivered in the last hour, for one destination."""
        now_minute = int(time.time() // 60)
        minutes = [redis_keys.delivered_minute(destination, now_minute - i) for i in range(60)]
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xlen(redis_keys.queue(destination))
            pipe.hget(redis_keys.heads(destination), order.PARKED_FIELD)
            pipe.zcard(redis_keys.retries(destination))
            pipe.zcard(redis_keys.dead(destination))
            pipe.mget(minutes)
            pending, parked, retrying, dead, delivered = await pipe.execute()
        return {
            "pending": int(pending) + int(parked or 0),
            "retrying": int(retrying),
            "dead": int(dead),
            "delivered_last_hour": sum(int(v) for v in delivered if v),
        }

    async def idle(self, destinations: list[str]) -> bool:
        """Nothing waiting, pending or scheduled for any of these destinations."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for dest in destinations:
                pipe.xlen(redis_keys.queue(dest))
                pipe.zcard(redis_keys.retries(dest))
            counts = await pipe.execute()
        return not any(counts)

    async def health(self) -> dict[str, dict[str, Any]]:
        """Destinations currently unhealthy: name -> {"problem", "since"}."""
        raw = cast(dict[str, str], await self._redis.hgetall(redis_keys.HEALTH))
        return {name: orjson.loads(value) for name, value in raw.items()}

    async def set_health(self, destination: str, problem: str | None) -> None:
        """Record a destination as unhealthy (with why), or healthy again."""
        if problem is None:
            await self._redis.hdel(redis_keys.HEALTH, destination)
        else:
            await self._redis.hset(
                redis_keys.HEALTH,
                destination,
                orjson.dumps({"problem": problem, "since": time.time()}).decode(),
            )

    async def dead_letters(self, destination: str) -> list[tuple[str, float]]:
        """(event id, dead-lettered at, unix seconds), oldest first."""
        rows = await self._redis.zrange(redis_keys.dead(destination), 0, -1, withscores=True)
        return [(event_id, score / 1000) for event_id, score in cast(list[tuple[str, float]], rows)]

    async def replay(
        self,
        destination: str,
        event_ids: list[str] | None = None,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Queue dead letters again (``None``: all of them), each with a fresh retry
        schedule; their earlier attempts stay on the event. Works in chunks, so replaying
        100 000 is not one giant MULTI; ``progress(done, total)`` is called after each.
        Returns how many were queued.
        """
        ids = (
            [e for e, _ in await self.dead_letters(destination)] if event_ids is None else event_ids
        )
        done = 0
        for start in range(0, len(ids), _REPLAY_CHUNK):
            done += await self._replay_chunk(destination, ids[start : start + _REPLAY_CHUNK])
            if progress is not None:
                progress(done, len(ids))
        return done

    async def _replay_chunk(self, destination: str, event_ids: list[str]) -> int:
        """Queue these dead letters again. How many.

        Ids that are not dead letters of this destination are skipped. The removal
        from the dead letters and the new stream entry go in one MULTI.
        """
        if not event_ids:
            return 0
        scores = await self._redis.zmscore(redis_keys.dead(destination), event_ids)
        present = [e for e, score in zip(event_ids, scores, strict=True) if score is not None]
        async with self._redis.pipeline(transaction=False) as pipe:
            for event_id in present:
                pipe.exists(redis_keys.event(event_id))
            alive = await pipe.execute()
        # An event past its retention has nothing left to send; its dead letter stays listed.
        present = [e for e, ok in zip(present, alive, strict=True) if ok]
        if not present:
            return 0
        async with self._redis.pipeline(transaction=True) as pipe:
            for event_id in present:
                pipe.zrem(redis_keys.dead(destination), event_id)
                pipe.hset(
                    redis_keys.event(event_id),
                    redis_keys.STATUS_FIELD_PREFIX + destination,
                    DeliveryStatus.pending.value,
                )
                pipe.hdel(redis_keys.event(event_id), redis_keys.RETRIES_FIELD_PREFIX + destination)
                pipe.xadd(redis_keys.queue(destination), {"e": event_id})
            await pipe.execute()
        return len(present)
