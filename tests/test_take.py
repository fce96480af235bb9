"""take.lua and keep.lua on their own, against a real redis-server: what a take admits,
what it refuses (and acks), the pause and the in-flight cap; what keep keeps.

Time is the server's unless a test passes ``now_ms``."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from redis.asyncio import Redis

from relay import redis_keys
from relay.models import DeliveryStatus
from relay.queue import DeliveryQueue, Entry, Settlement, Taken
from relay.store import EventStore, NewEvent
from tests.events import new_lead

DEST = "crm"
T0 = 1_700_000_000_000
LEASE_MS = 10_000


async def _queued(redis: Redis, *emails: str) -> tuple[DeliveryQueue, list[Entry]]:
    """Enqueue a lead per email and read every stream entry (as consumer "w")."""
    queue = DeliveryQueue(redis, retention_s=60, partitions=16)
    await queue.ensure_group(DEST)
    await EventStore(redis, retention_s=60, partitions=16).enqueue(_leads(*emails))
    return queue, await queue.read(DEST, "w", count=100, block_ms=1)


def _leads(*emails: str) -> list[NewEvent]:
    return [new_lead(e, DEST) for e in emails]


async def _take(
    queue: DeliveryQueue, *requests: tuple[str, list[Entry]], cap: int = 8, now_ms: int = T0
) -> list[str]:
    taken = await queue.take(
        DEST, list(requests), lease_ms=LEASE_MS, max_in_flight=cap, now_ms=now_ms
    )
    return [t.state for t in taken]


async def _pending(redis: Redis) -> list[str]:
    rows = await redis.xpending_range(
        redis_keys.queue(DEST, 0), redis_keys.CONSUMER_GROUP, min="-", max="+", count=100
    )
    return [str(row["message_id"]) for row in rows]


async def _status(redis: Redis, event_id: str) -> list[str | None]:
    fields = [redis_keys.STATUS_FIELD_PREFIX + DEST, redis_keys.HOLDER_FIELD_PREFIX + DEST]
    return cast(list[str | None], await redis.hmget(redis_keys.event(event_id), fields))


async def test_a_take_marks_the_event_delivering_under_a_lease_and_gives_its_data(
    redis: Redis,
) -> None:
    queue, (entry,) = await _queued(redis, "ann@example.com")
    await redis.hset(redis_keys.event(entry.event), mapping={"n:crm": 3, "r:crm": 2})
    (taken,) = await queue.take(
        DEST, [("h1", [entry])], lease_ms=LEASE_MS, max_in_flight=8, now_ms=T0
    )
    assert (taken.state, taken.made, taken.retried) == ("ok", 3, 2)
    assert '"email":"ann@example.com"' in taken.data
    assert await _status(redis, entry.event) == ["delivering", "h1"]
    assert await redis.zrange(redis_keys.inflight(DEST), 0, -1, withscores=True) == [
        ("h1", T0 + LEASE_MS)
    ]
    assert await _pending(redis) == [entry.id]  # pending until settled


@pytest.mark.parametrize("status", [DeliveryStatus.delivered, DeliveryStatus.dead])
async def test_a_copy_of_a_settled_event_is_refused_and_acked(
    redis: Redis, status: DeliveryStatus
) -> None:
    queue, (entry,) = await _queued(redis, "ann@example.com")
    await redis.hset(redis_keys.event(entry.event), redis_keys.STATUS_FIELD_PREFIX + DEST, status)
    assert await _take(queue, ("h1", [entry])) == ["stray"]
    assert await _pending(redis) == []  # acked: it never comes back
    assert await redis.xlen(redis_keys.queue(DEST, 0)) == 0
    assert await redis.zcard(redis_keys.inflight(DEST)) == 0  # no lease taken for it


async def test_a_copy_another_holder_is_sending_is_refused_and_left_to_it(redis: Redis) -> None:
    queue, (entry,) = await _queued(redis, "ann@example.com")
    assert await _take(queue, ("w1-a", [entry])) == ["ok"]
    assert await _take(queue, ("w2-a", [entry]), now_ms=T0 + 1) == ["busy"]
    # Left pending: the holder settles it, or if it died it is claimed again later.
    assert await _pending(redis) == [entry.id]
    assert await _status(redis, entry.event) == ["delivering", "w1-a"]
    # The holder itself may take it again (a take tried again after a Redis error).
    assert await _take(queue, ("w1-a", [entry]), now_ms=T0 + 2) == ["ok"]
    # Once that lease has lapsed (the holder died), the copy goes, under its own.
    assert await _take(queue, ("w2-a", [entry]), now_ms=T0 + 2 + LEASE_MS) == ["ok"]
    assert await _status(redis, entry.event) == ["delivering", "w2-a"]


async def test_an_expired_event_is_not_taken_and_its_settle_lets_the_next_go(
    redis: Redis,
) -> None:
    queue = DeliveryQueue(redis, retention_s=60, partitions=16)
    await queue.ensure_group(DEST)
    events = _leads("bob@example.com", "bob@example.com")
    await EventStore(redis, retention_s=60, partitions=16).enqueue(events)
    (first,) = await queue.read(DEST, "w", count=100, block_ms=1)
    assert first.contact is not None
    await redis.delete(redis_keys.event(first.event))  # past the retention, unsent
    assert await _take(queue, ("h", [first])) == ["gone"]
    assert await _pending(redis) == [first.id]  # nothing changed: settling it is next
    assert await queue.settle(Settlement(DEST, "h", (), expired=[first])) == ["gone"]
    assert await _pending(redis) == []
    (nxt,) = await queue.read(DEST, "w", count=10, block_ms=1)
    assert (nxt.event, nxt.contact) == (events[1].id, first.contact)
    assert await redis.hget(redis_keys.heads(DEST, 0), first.contact) == events[1].id


async def test_an_event_gone_at_take_but_back_at_settle_is_left_to_its_holder(
    redis: Redis,
) -> None:
    """A failover can bring back an event the old master had expired (a replica expires
    nothing itself): take said "gone", and by the settle another worker holds it. The
    settle must not fail on the attempt record it does not have: it leaves the event,
    and its entry, to that holder."""
    queue = DeliveryQueue(redis, retention_s=60, partitions=16)
    await queue.ensure_group(DEST)
    (event,) = _leads("ann@example.com")
    await EventStore(redis, retention_s=60, partitions=16).enqueue([event])
    (entry,) = await queue.read(DEST, "w", count=100, block_ms=1)
    key = redis_keys.event(entry.event)
    saved = await redis.dump(key)
    assert saved is not None
    await redis.delete(key)
    assert await _take(queue, ("h", [entry])) == ["gone"]
    await redis.restore(key, 60_000, saved)
    await redis.hset(key, mapping={f"st:{DEST}": "delivering", f"h:{DEST}": "other"})
    assert await queue.settle(Settlement(DEST, "h", (), expired=[entry])) == ["late"]
    assert await _pending(redis) == [entry.id]  # for "other" to settle
    assert await _status(redis, entry.event) == ["delivering", "other"]


async def test_a_pause_holds_everything_and_changes_nothing(redis: Redis) -> None:
    queue, entries = await _queued(redis, "a@example.com", "b@example.com")
    await redis.set(redis_keys.paused(DEST), "1", px=30_000)
    taken = await queue.take(
        DEST, [("h1", entries[:1]), ("h2", entries[1:])], lease_ms=LEASE_MS, max_in_flight=8
    )
    assert [t.state for t in taken] == ["paused", "paused"]
    assert all(29_000 < t.wait_ms <= 30_000 for t in taken)
    assert await redis.zcard(redis_keys.inflight(DEST)) == 0
    assert await _status(redis, entries[0].event) == ["pending", None]
    assert await _pending(redis) == [e.id for e in entries]


async def test_the_in_flight_cap_holds_within_one_take_and_across_takes(redis: Redis) -> None:
    emails = [f"p{i}@example.com" for i in range(6)]
    queue, entries = await _queued(redis, *emails)
    # One take of three requests under a cap of 2: the third waits.
    states = await _take(queue, *[(f"h{i}", [e]) for i, e in enumerate(entries[:3])], cap=2)
    assert states == ["ok", "ok", "full"]
    assert await _status(redis, entries[2].event) == ["pending", None]
    # A batch goes under one lease: full too, whole, until a lease is given back.
    assert await _take(queue, ("batch", entries[3:]), cap=2) == ["full"] * 3
    await queue.give_back(DEST, "h0")
    assert await _take(queue, ("batch", entries[3:]), cap=2) == ["ok"] * 3
    assert sorted(await redis.zrange(redis_keys.inflight(DEST), 0, -1)) == ["batch", "h1"]
    # A holder taking again renews its own lease; it does not take a second one.
    assert await _take(queue, ("h1", [entries[1]]), cap=2, now_ms=T0 + 500) == ["ok"]
    assert await redis.zscore(redis_keys.inflight(DEST), "h1") == T0 + 500 + LEASE_MS
    # A lapsed lease (its worker died: the batch's, taken at T0) frees its place.
    later = T0 + LEASE_MS
    assert await _take(queue, ("h2", [entries[2]]), cap=2, now_ms=later) == ["ok"]
    assert sorted(await redis.zrange(redis_keys.inflight(DEST), 0, -1)) == ["h1", "h2"]
    # A renewal with room left takes no second place either: under a cap of 3, beside
    # h1's renewal in the same call, one new holder fits, not two.
    requests = [("h1", [entries[1]]), ("h3", [entries[4]]), ("h4", [entries[5]])]
    assert await _take(queue, *requests, cap=3, now_ms=later) == ["ok", "ok", "full"]


async def test_a_take_refused_a_lease_leaves_its_events_as_they_were(redis: Redis) -> None:
    # The lease (control slot) and the marks (partition) are asked for side by side; a
    # refused lease undoes the marks: status, holder and hold.
    queue, (a, b) = await _queued(redis, "a@example.com", "b@example.com")
    # b was being sent by a worker that died (its hold lapsed): a take may take it over.
    await redis.hset(
        redis_keys.event(b.event),
        mapping={"st:crm": "delivering", "h:crm": "dead", "u:crm": T0 - 1},
    )
    assert await _take(queue, ("h0", [a]), cap=1) == ["ok"]
    assert await _take(queue, ("h1", [b]), cap=1) == ["full"]
    assert await _status(redis, b.event) == ["delivering", "dead"]
    assert await redis.hget(redis_keys.event(b.event), "u:crm") == str(T0 - 1)
    assert await _pending(redis) == [a.id, b.id]
    # Once a lease is free, the same request takes it.
    await queue.give_back(DEST, "h0")
    assert await _take(queue, ("h1", [b]), cap=1) == ["ok"]
    assert await _status(redis, b.event) == ["delivering", "h1"]


async def test_concurrent_takes_never_exceed_the_cap(redis: Redis) -> None:
    queue, entries = await _queued(redis, *[f"p{i}@example.com" for i in range(40)])
    taken: list[list[Taken]] = await asyncio.gather(
        *(
            queue.take(DEST, [(f"h{i}", [e])], lease_ms=60_000, max_in_flight=5)
            for i, e in enumerate(entries)
        )
    )
    assert sum(t.state == "ok" for (t,) in taken) == 5
    assert await redis.zcard(redis_keys.inflight(DEST)) == 5


async def test_keep_resets_only_its_own_entries_and_renews_only_live_leases(
    redis: Redis,
) -> None:
    queue, entries = await _queued(redis, "a@example.com", "b@example.com")
    a, b = entries
    assert await _take(queue, ("ha", [a]), now_ms=T0) == ["ok"]
    assert await _take(queue, ("hb", [b]), now_ms=T0) == ["ok"]
    await asyncio.sleep(0.6)
    # Another worker claims a (as if "w" were dead): keep leaves it to that one.
    (claimed,) = await queue.claim_stale(DEST, "other", min_idle_ms=500, count=1)
    assert claimed.id == a.id  # the oldest first
    kept, renewed = await queue.keep(
        DEST, "w", [a, b], ["ha", "hb", "gone"], lease_ms=LEASE_MS, now_ms=T0 + 9_000
    )
    assert (kept, renewed) == (1, 2)
    assert await redis.zscore(redis_keys.inflight(DEST), "ha") == T0 + 9_000 + LEASE_MS
    # Their holds on their events (what a copy's take checks) are renewed alike.
    for entry in (a, b):
        assert await redis.hget(redis_keys.event(entry.event), "u:crm") == str(
            T0 + 9_000 + LEASE_MS
        )
    # Not stale any more: housekeeping elsewhere (500 ms window) claims nothing of it.
    assert await queue.claim_stale(DEST, "third", min_idle_ms=500, count=10) == []
    rows = await redis.xpending_range(
        redis_keys.queue(DEST, 0), redis_keys.CONSUMER_GROUP, min="-", max="+", count=10
    )
    assert {(str(r["message_id"]), r["consumer"]) for r in rows} == {
        (b.id, "w"),
        (a.id, "other"),
    }
    # A lease that lapsed is not brought back: another holder may have the event now.
    late = T0 + 9_000 + LEASE_MS
    assert await queue.keep(DEST, "w", [], ["ha"], lease_ms=LEASE_MS, now_ms=late) == (0, 0)


async def test_a_stream_entry_that_names_no_event_is_left_out_of_a_read(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # relay writes none such; one another program wrote must not stop the others' reads.
    queue, _ = await _queued(redis)
    stream = redis_keys.queue(DEST, 0)
    await redis.xadd(stream, {redis_keys.ENTRY_EVENT_FIELD: "evt_a"})
    (ann,) = _leads("ann@example.com")
    await EventStore(redis, retention_s=60, partitions=16).enqueue([ann])
    assert [e.event for e in await queue.read(DEST, "w", count=10, block_ms=1)] == [ann.id]
    assert "names no event id" in caplog.text
    assert "'evt_a'" in caplog.text
