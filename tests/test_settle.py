"""settle.lua on its own, against a real redis-server: the attempt is recorded and the
entry acked in one step, with everything that follows from the answer; only the
event's holder settles it; an expired event leaves nothing behind."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Sequence

import orjson
import pytest
from redis.asyncio import Redis

from relay import redis_keys
from relay.backlog import Counts, counts
from relay.errors import StoreUnavailable
from relay.ids import new_event_id, partition_of
from relay.models import DeliveryStatus
from relay.queue import DeliveryQueue, Entry, Result, Settlement, Taken
from relay.store import EventStore, NewEvent
from tests.events import new_lead, settle_next, total

DEST = "crm"
LEASE_MS = 10_000


async def _taken(redis: Redis, *events: NewEvent, holder: str = "h") -> list[Entry]:
    """Enqueue the events, read their stream entries and take them under ``holder``."""
    queue = DeliveryQueue(redis, retention_s=60, partitions=16)
    await queue.ensure_group(DEST)
    await EventStore(redis, retention_s=60, partitions=16).enqueue(list(events))
    entries = await queue.read(DEST, "w", count=100, block_ms=1)
    taken = await queue.take(DEST, [(holder, entries)], lease_ms=LEASE_MS, max_in_flight=8)
    assert [t.state for t in taken] == ["ok"] * len(entries)
    return entries


def _result(
    entry: Entry,
    status: DeliveryStatus,
    code: int,
    *,
    spends_step: bool = False,
    retry_at_ms: int = 0,
    notifications: Sequence[tuple[str, bytes]] = (),
) -> Result:
    record = orjson.dumps({"status": code, "outcome": status.value})
    return Result(entry, status, record, spends_step, retry_at_ms, notifications)


async def _settle(
    redis: Redis,
    holder: str,
    *results: Result,
    sent: Sequence[str] = (),
    pause_ms: int = 0,
    unhealthy: str | None = None,
) -> None:
    settlement = Settlement(DEST, holder, results, sent, pause_ms, unhealthy)
    await DeliveryQueue(redis, retention_s=60, partitions=16).settle(settlement)


async def _pending(redis: Redis) -> int:
    return int(
        (await redis.xpending(redis_keys.queue(DEST, 0), redis_keys.CONSUMER_GROUP))["pending"]
    )


async def test_a_delivery_is_recorded_and_acked_in_one_step(redis: Redis) -> None:
    ev = new_lead("ann@example.com", DEST)
    (entry,) = await _taken(redis, ev)
    await _settle(redis, "h", _result(entry, DeliveryStatus.delivered, 200))
    raw = await redis.hgetall(redis_keys.event(ev.id))
    assert raw["st:crm"] == "delivered"
    assert raw["n:crm"] == "1"
    assert orjson.loads(raw["a:crm:1"]) == {"status": 200, "outcome": "delivered"}
    assert {"h:crm", "u:crm"}.isdisjoint(raw)  # nobody holds it now
    assert await _pending(redis) == 0
    assert await redis.xlen(redis_keys.queue(DEST, 0)) == 0  # acked and deleted
    assert await redis.zcard(redis_keys.inflight(DEST)) == 0  # the lease given back
    (found,) = (await counts(redis, [DEST], partitions=16)).values()
    assert found == Counts(
        pending=0, retrying=0, dead=0, delivered_last_hour=1, oldest_pending_s=0.0
    )


async def test_a_refused_settle_records_nothing_and_acks_nothing(own_redis: Redis) -> None:
    # The ack goes with the attempt, or neither does: a Redis out of memory refuses both,
    # and the entry stays pending (another worker claims it after the window).
    ev = new_lead("ann@example.com", DEST)
    (entry,) = await _taken(own_redis, ev)
    await own_redis.config_set("maxmemory", "1")
    try:
        result = _result(entry, DeliveryStatus.delivered, 200)
        with pytest.raises(StoreUnavailable, match="maxmemory"):
            await _settle(own_redis, "h", result)
    finally:
        await own_redis.config_set("maxmemory", "0")
    raw = await own_redis.hgetall(redis_keys.event(ev.id))
    assert (raw["st:crm"], raw.get("n:crm")) == ("delivering", None)
    assert await _pending(own_redis) == 1


async def test_a_retry_keeps_its_contact_and_spends_a_step(redis: Redis) -> None:
    ev = new_lead("ann@example.com", DEST)
    (entry,) = await _taken(redis, ev)
    assert entry.contact is not None
    due = int(time.time() * 1000) - 1
    await _settle(
        redis,
        "h",
        _result(entry, DeliveryStatus.retrying, 503, spends_step=True, retry_at_ms=due),
    )
    raw = await redis.hgetall(redis_keys.event(ev.id))
    assert (raw["st:crm"], raw["n:crm"], raw["r:crm"]) == ("retrying", "1", "1")
    member = ev.id + redis_keys.RETRY_CONTACT_SEP + entry.contact
    assert await redis.zscore(redis_keys.retries(DEST, 0), member) == due
    # Still its contact's head: when due, it comes back with an entry naming the contact.
    queue = DeliveryQueue(redis, retention_s=60, partitions=16)
    assert await queue.move_due_retries([DEST]) == 1
    (again,) = await queue.read(DEST, "w", count=10, block_ms=1)
    assert (again.event, again.contact) == (ev.id, entry.contact)
    assert await total(redis, "ZCARD", functools.partial(redis_keys.retries, DEST)) == 0


async def test_a_dead_letter_lets_the_contact_s_next_event_go_and_notifies(
    redis: Redis,
) -> None:
    first, second = new_lead("bob@example.com", DEST), new_lead("bob@example.com", DEST)
    (entry,) = await _taken(redis, first, second)  # the second waits, parked
    ntf_id = new_event_id(prefix="ntf_", partition=partition_of(first.id))
    ntf = (ntf_id, orjson.dumps({"id": ntf_id, "topic": "event.failed"}))
    await _settle(redis, "h", _result(entry, DeliveryStatus.dead, 400, notifications=[ntf]))
    assert await redis.zscore(redis_keys.dead(DEST, 0), first.id) is not None
    (nxt,) = await DeliveryQueue(redis, retention_s=60, partitions=16).read(
        DEST, "w", count=10, block_ms=1
    )
    assert (nxt.event, nxt.contact) == (second.id, entry.contact)
    assert await redis.hget(redis_keys.heads(DEST, 0), entry.contact or "") == second.id
    # The notification was queued in the same step.
    record = await redis.hgetall(redis_keys.event(ntf_id))
    assert record == {"data": ntf[1].decode(), "st:_hooks": "pending"}
    assert 0 < await redis.ttl(redis_keys.event(ntf_id)) <= 60
    assert await redis.xlen(redis_keys.queue(redis_keys.NOTIFICATIONS, 0)) == 1


async def test_only_the_holder_settles_a_late_answer_is_only_recorded(redis: Redis) -> None:
    ev = new_lead("ann@example.com", DEST)
    (entry,) = await _taken(redis, ev, holder="old")
    # "old" stalled past its lease; "new" took the event over.
    queue = DeliveryQueue(redis, retention_s=60, partitions=16)
    later = int(time.time() * 1000) + LEASE_MS + 1
    (taken,) = await queue.take(
        DEST, [("new", [entry])], lease_ms=LEASE_MS, max_in_flight=8, now_ms=later
    )
    assert taken.state == "ok"
    await _settle(redis, "old", _result(entry, DeliveryStatus.delivered, 200))
    raw = await redis.hgetall(redis_keys.event(ev.id))
    assert (raw["st:crm"], raw["h:crm"], raw["n:crm"]) == ("delivering", "new", "1")
    assert await _pending(redis) == 1  # left for "new" to settle
    await _settle(redis, "new", _result(entry, DeliveryStatus.delivered, 200))
    raw = await redis.hgetall(redis_keys.event(ev.id))
    assert (raw["st:crm"], raw["n:crm"]) == ("delivered", "2")
    assert await _pending(redis) == 0


async def test_an_event_that_expired_while_sent_leaves_nothing_behind(redis: Redis) -> None:
    first, second = new_lead("bob@example.com", DEST), new_lead("bob@example.com", DEST)
    (entry,) = await _taken(redis, first, second)
    await redis.delete(redis_keys.event(first.id))
    await _settle(redis, "h", _result(entry, DeliveryStatus.delivered, 200))
    # Writing its status now would make a hash that never expires.
    assert not await redis.exists(redis_keys.event(first.id))
    assert await _pending(redis) == 0
    (nxt,) = await DeliveryQueue(redis, retention_s=60, partitions=16).read(
        DEST, "w", count=10, block_ms=1
    )
    assert nxt.event == second.id


async def test_what_the_answer_means_for_the_destination(redis: Redis) -> None:
    ev = new_lead("ann@example.com", DEST)
    (entry,) = await _taken(redis, ev)
    await redis.zadd(redis_keys.rate(DEST), {"req-1": 10**13, "req-2": 10**13})
    await redis.set(redis_keys.paused(DEST), "1", px=60_000)  # a longer pause stands
    due = int(time.time() * 1000) + 60_000
    await _settle(
        redis,
        "h",
        _result(entry, DeliveryStatus.retrying, 429, retry_at_ms=due),
        sent=["req-1"],
        pause_ms=5_000,
        unhealthy="upstream answered 401",
    )
    now_ms = time.time() * 1000
    answered = await redis.zscore(redis_keys.rate(DEST), "req-1")
    assert answered is not None
    assert abs(answered - now_ms) < 2_000  # dated at its answer
    assert await redis.zscore(redis_keys.rate(DEST), "req-2") == 10**13  # not this request's
    assert 55_000 < await redis.pttl(redis_keys.paused(DEST)) <= 60_000
    health = orjson.loads(await redis.hget(redis_keys.HEALTH, DEST) or "{}")
    assert health["problem"] == "upstream answered 401"
    # A delivery makes the destination healthy; a shorter pause is replaced by a longer one.
    await redis.delete(redis_keys.paused(DEST))
    await EventStore(redis, retention_s=60, partitions=16).enqueue(
        [new_lead("bo@example.com", DEST)]
    )
    await settle_next(redis, DEST, DeliveryStatus.delivered, {"status": 200})
    assert not await redis.hexists(redis_keys.HEALTH, DEST)
    (entry2,) = await _taken(redis, new_lead("cy@example.com", DEST), holder="h2")
    await redis.set(redis_keys.paused(DEST), "1", px=1_000)
    await _settle(redis, "h2", _result(entry2, DeliveryStatus.retrying, 429), pause_ms=30_000)
    assert 29_000 < await redis.pttl(redis_keys.paused(DEST)) <= 30_000


async def test_attempts_live_in_the_event_hash_and_show_in_order(redis: Redis) -> None:
    store = EventStore(redis, retention_s=60, partitions=16)
    ev = new_lead("ann@example.com", "crm", "sheet")
    await store.enqueue([ev])
    await settle_next(redis, "crm", DeliveryStatus.retrying, {"status": 500, "outcome": "retry"})
    await settle_next(redis, "sheet", DeliveryStatus.delivered, {"status": 200, "outcome": "ok"})
    await DeliveryQueue(redis, retention_s=60, partitions=16).move_due_retries(["crm"])
    await settle_next(redis, "crm", DeliveryStatus.retrying, {"status": 503, "outcome": "retry"})
    await DeliveryQueue(redis, retention_s=60, partitions=16).move_due_retries(["crm"])
    await settle_next(redis, "crm", DeliveryStatus.delivered, {"status": 200, "outcome": "ok"})
    raw = await redis.hgetall(redis_keys.event(ev.id))
    assert sorted(str(f) for f in raw if str(f).startswith("a:")) == [
        "a:crm:1", "a:crm:2", "a:crm:3", "a:sheet:1"
    ]  # fmt: skip
    assert (raw["n:crm"], raw["r:crm"]) == ("3", "2")
    assert 0 < await redis.ttl(redis_keys.event(ev.id)) <= 60
    view = await store.get(ev.id)
    assert view is not None
    shown = {d.name: [a["status"] for a in d.attempts] for d in view.destinations}
    assert shown == {"crm": [500, 503, 200], "sheet": [200]}
    assert view.status == "delivered"


async def test_the_next_take_shares_the_settle_s_control_call_and_gets_its_lease(
    redis: Redis,
) -> None:
    # The worker starts its next request when a settle's events are settled in their
    # partitions (``settled``), before the control step: under a cap of one lease, that
    # request's take gets the lease this settle gives back, in the same script call
    # (release.lua runs first in it). Called earlier, the take would find every lease
    # taken; later, it would need a call of its own.
    queue = DeliveryQueue(redis, retention_s=60, partitions=16)
    await queue.ensure_group(DEST)
    await EventStore(redis, retention_s=60, partitions=16).enqueue(
        [new_lead("ann@example.com", DEST), new_lead("bob@example.com", DEST)]
    )
    a, b = await queue.read(DEST, "w", count=100, block_ms=1)
    take = functools.partial(queue.take, DEST, lease_ms=LEASE_MS, max_in_flight=1)
    assert [t.state for t in await take([("ha", [a])])] == ["ok"]
    assert [t.state for t in await take([("hb", [b])])] == ["full"]
    (control,) = queue._controls.values()
    rounds = control._rounds
    nxt: list[asyncio.Task[list[Taken]]] = []
    settlement = Settlement(DEST, "ha", [_result(a, DeliveryStatus.delivered, 200)])
    words = await queue.settle(
        settlement, settled=lambda: nxt.append(asyncio.create_task(take([("hb", [b])])))
    )
    assert words == ["settled"]
    assert [t.state for t in await nxt[0]] == ["ok"]
    assert control._rounds == rounds + 1
    assert await redis.zrange(redis_keys.inflight(DEST), 0, -1) == ["hb"]


async def test_deliveries_settled_in_one_control_call_all_count(redis: Redis) -> None:
    # Settles of the same moment share release.lua's call; it adds their deliveries
    # to the minute's counter once, however many requests they came in.
    events = [new_lead(f"d{i}@example.com", DEST) for i in range(3)]
    entries = [(await _taken(redis, ev, holder=f"h{i}"))[0] for i, ev in enumerate(events)]
    queue = DeliveryQueue(redis, retention_s=60, partitions=16)
    await asyncio.gather(
        *(
            queue.settle(Settlement(DEST, f"h{i}", [_result(e, DeliveryStatus.delivered, 200)]))
            for i, e in enumerate(entries)
        )
    )
    (found,) = (await counts(redis, [DEST], partitions=16)).values()
    assert found.delivered_last_hour == 3
    minute = redis_keys.delivered_minute(DEST, int(time.time() // 60))
    assert 0 < await redis.ttl(minute) <= redis_keys.DELIVERED_MINUTE_TTL_S
    assert await redis.zcard(redis_keys.inflight(DEST)) == 0  # every lease given back
