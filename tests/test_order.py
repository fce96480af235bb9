"""A contact's order per destination (relay.order): heads, parked events, old-style
lists, expired heads. Against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from relay import redis_keys
from relay.ids import new_event_id
from relay.models import DeliveryStatus
from relay.order import PARKED_FIELD, ContactOrder
from relay.queue import DeliveryQueue, Entry
from relay.settings import Settings
from relay.store import EventStore, NewEvent, contact_key
from relay.worker import Worker
from tests.events import new_lead
from tests.fakes import FakeReceiver

DEST = "crm"
_TAKE: dict[str, Any] = {"max_in_flight": 16, "holder": "w1", "ttl_ms": 10_000}


async def _enqueue(redis: Redis, *emails: str) -> list[NewEvent]:
    events = [new_lead(email, DEST) for email in emails]
    await DeliveryQueue(redis, retention_s=60).ensure_group(DEST)
    await EventStore(redis, retention_s=60).enqueue(events)
    return events


async def _read(queue: DeliveryQueue) -> dict[str, Entry]:
    """The stream entries not read yet, by event id."""
    return {e.event: e for e in await queue.read(DEST, "test", count=100, block_ms=1)}


async def _done(queue: DeliveryQueue, entry: Entry) -> None:
    attempt = {"status": 200, "outcome": "delivered"}
    await queue.finish(DEST, entry, attempt, status=DeliveryStatus.delivered, contact=entry.contact)


async def test_only_a_contacts_head_is_queued_and_the_next_comes_when_it_is_done(
    redis: Redis,
) -> None:
    ann, b1, b2, b3 = await _enqueue(
        redis, "ann@example.com", "bob@example.com", "bob@example.com", "bob@example.com"
    )
    queue = DeliveryQueue(redis, retention_s=60)
    entries = await _read(queue)
    assert list(entries) == [ann.id, b1.id]  # the later two are parked: no stream entry
    bob = entries[b1.id].contact
    assert bob is not None
    heads = redis_keys.heads(DEST)
    assert await redis.hgetall(heads) == {
        entries[ann.id].contact: ann.id,
        bob: b1.id,
        PARKED_FIELD: "2",
    }
    bobs = redis_keys.order(DEST, bob)
    assert await redis.lrange(bobs, 0, -1) == [b2.id, b3.id]
    assert not await redis.exists(redis_keys.order(DEST, entries[ann.id].contact or ""))
    assert (await queue.counts(DEST))["pending"] == 4  # parked ones are pending too

    await _done(queue, entries[b1.id])
    assert list(await _read(queue)) == [b2.id]  # its turn: a stream entry of its own
    assert await redis.hget(heads, bob) == b2.id
    await _done(queue, Entry("0-1", b2.id, bob))
    (last,) = (await _read(queue)).values()
    assert last.event == b3.id
    await _done(queue, last)
    await _done(queue, entries[ann.id])
    assert await redis.hgetall(heads) == {PARKED_FIELD: "0"}
    assert not await redis.exists(bobs)
    assert await _read(queue) == {}


async def test_the_take_and_the_check_agree_on_who_may_go(redis: Redis) -> None:
    _, second = await _enqueue(redis, "bob@example.com", "bob@example.com")
    queue = DeliveryQueue(redis, retention_s=60)
    (head,) = (await _read(queue)).values()
    parked = Entry("0-1", second.id, head.contact)  # an entry it should not have
    assert (await ContactOrder(redis).check(DEST, head.contact, parked.event)).state == "parked"
    assert (await queue.take(DEST, parked, **_TAKE)).state == "parked"
    assert (await ContactOrder(redis).check(DEST, head.contact, head.event)).state == "ok"
    assert (await queue.take(DEST, head, **_TAKE)).state == "ok"
    # A replayed dead letter is in no order: it goes at once.
    replayed = (await _enqueue(redis, "carl@example.com"))[0]
    assert (await ContactOrder(redis).check(DEST, head.contact, replayed.id)).state == "ok"


async def test_a_list_written_before_the_heads_hash_orders_its_contact(redis: Redis) -> None:
    # Earlier releases kept the head in the list itself ([head, later...], no heads
    # field), and every event had a stream entry; the later ones look again shortly.
    email = "old@example.com"
    contact = contact_key({"email": email})
    assert contact is not None
    old = [new_event_id(), new_event_id()]
    for event_id in old:
        await redis.hset(redis_keys.event(event_id), "data", "{}")
    await redis.rpush(redis_keys.order(DEST, contact), *old)
    queue = DeliveryQueue(redis, retention_s=60)
    (new,) = await _enqueue(redis, email)
    # The new event joins that list, with a stream entry, rather than starting a head.
    assert await redis.lrange(redis_keys.order(DEST, contact), 0, -1) == [*old, new.id]
    assert list(await _read(queue)) == [new.id]
    assert not await redis.hexists(redis_keys.heads(DEST), contact)

    async def states() -> list[str]:
        return [(await ContactOrder(redis).check(DEST, contact, e)).state for e in [*old, new.id]]

    assert await states() == ["ok", "blocked", "blocked"]
    await _done(queue, Entry("0-1", old[0], contact))
    assert await states() == ["ok", "ok", "blocked"]
    await redis.delete(redis_keys.event(old[1]))  # expired unsent: it holds nobody up
    assert (await ContactOrder(redis).check(DEST, contact, new.id)).state == "ok"
    assert await _read(queue) == {}  # old-style: nobody was given a new entry


async def test_an_expired_head_is_dropped_when_its_entry_comes_up(redis: Redis) -> None:
    expired, later = await _enqueue(redis, "bob@example.com", "bob@example.com")
    queue = DeliveryQueue(redis, retention_s=60)
    (entry,) = (await _read(queue)).values()
    await redis.delete(redis_keys.event(expired.id))  # past the retention, unsent
    assert (await queue.take(DEST, entry, **_TAKE)).state == "gone"
    await queue.drop(DEST, entry)
    assert list(await _read(queue)) == [later.id]
    assert await redis.xlen(redis_keys.queue(DEST)) == 1


async def test_the_sweep_moves_past_heads_gone_or_settled_without_knowing_of_heads(
    redis: Redis,
) -> None:
    # A retry's entry carries only the event id: if its event expired, the worker
    # cannot tell whose head it was. The sweep of the heads hash finds it, and a head
    # that a worker of an earlier release delivered (it knew nothing of heads).
    emails = [f"p{n}@example.com" for n in range(5) for _ in range(2)]
    events = await _enqueue(redis, *emails)
    queue = DeliveryQueue(redis, retention_s=60)
    heads = await _read(queue)
    for event_id in (events[0].id, events[4].id):
        await redis.delete(redis_keys.event(event_id))
    status = redis_keys.STATUS_FIELD_PREFIX + DEST
    await redis.hset(redis_keys.event(events[6].id), status, "delivered")
    await redis.hset(redis_keys.event(events[8].id), status, "retrying")  # still its turn
    cursor = "0"
    for _ in range(20):
        cursor = await ContactOrder(redis).sweep(DEST, cursor, count=2)
        if cursor == "0":
            break
    assert cursor == "0"
    assert set(await _read(queue)) == {events[1].id, events[5].id, events[7].id}
    # Pending: the five first entries (not settled yet), the three new ones, two parked.
    assert (await queue.counts(DEST))["pending"] == len(heads) + 3 + 2


async def test_a_contacts_backlog_moves_without_looking_again(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    async with FakeReceiver() as receiver:
        settings = make_settings(
            f'[destinations.{DEST}]\ntype = "webhook"\nurl = "{receiver.url}/crm"\n'
            'secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\nevents = ["lead"]\n'
        )
        events = await _enqueue(redis, *["same@example.com"] * 30, "other@example.com")
        await redis.config_resetstat()
        worker = Worker(settings, redis=redis, concurrency=8)
        await asyncio.wait_for(worker.run(drain=True), 30)
        sent = [r.parsed["id"] for r in receiver.requests]
    assert sorted(sent) == sorted(e.id for e in events)
    same = [i for i in sent if i != events[-1].id]
    assert same == [e.id for e in events[:-1]]
    # No event was put back to look again later, nor had an entry to drop (each of
    # those is a MULTI); the worker's other writes are script calls.
    stats = await redis.info("commandstats")
    assert "cmdstat_multi" not in stats, stats["cmdstat_multi"]
    assert await redis.zcard(redis_keys.retries(DEST)) == 0


@pytest.mark.parametrize("status", [DeliveryStatus.dead, DeliveryStatus.retrying])
async def test_a_dead_head_lets_the_next_go_and_a_retrying_one_does_not(
    redis: Redis, status: DeliveryStatus
) -> None:
    _, later = await _enqueue(redis, "bob@example.com", "bob@example.com")
    queue = DeliveryQueue(redis, retention_s=60)
    (head,) = (await _read(queue)).values()
    retry_at = None if status is DeliveryStatus.dead else 10**13
    await queue.finish(
        DEST, head, {"status": 500}, status=status, contact=head.contact, retry_at_ms=retry_at
    )
    assert list(await _read(queue)) == ([later.id] if status is DeliveryStatus.dead else [])
