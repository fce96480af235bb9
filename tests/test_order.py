"""A contact's order per destination (relay.redis_keys.heads): only the head has a stream
entry, the rest wait parked, and the next goes when the head is delivered or dead.
Against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from relay import redis_keys
from relay.backlog import counts
from relay.models import DeliveryStatus
from relay.queue import DeliveryQueue, Entry
from relay.redis_keys import PARKED_FIELD
from relay.settings import Settings
from relay.store import EventStore, NewEvent
from relay.worker import Worker
from tests.events import new_lead, settle_next
from tests.fakes import FakeReceiver

DEST = "crm"


async def _enqueue(redis: Redis, *emails: str) -> list[NewEvent]:
    events = [new_lead(email, DEST) for email in emails]
    await DeliveryQueue(redis, retention_s=60, partitions=16).ensure_group(DEST)
    await EventStore(redis, retention_s=60, partitions=16).enqueue(events)
    return events


async def _read(queue: DeliveryQueue) -> dict[str, Entry]:
    """The stream entries not read yet, by event id."""
    return {e.event: e for e in await queue.read(DEST, "test", count=100, block_ms=1)}


def _webhook(receiver: FakeReceiver) -> str:
    """relay.toml with the receiver as destination DEST."""
    return (
        f'[destinations.{DEST}]\ntype = "webhook"\nurl = "{receiver.url}/crm"\n'
        'secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\nevents = ["lead"]\n'
    )


async def _done(redis: Redis) -> Entry:
    """Deliver the next entry of the stream (as a worker would)."""
    return await settle_next(redis, DEST, DeliveryStatus.delivered, {"status": 200})


async def test_only_a_contacts_head_is_queued_and_the_next_comes_when_it_is_done(
    redis: Redis,
) -> None:
    ann, b1, b2, b3 = await _enqueue(
        redis, "ann@example.com", "bob@example.com", "bob@example.com", "bob@example.com"
    )
    queue = DeliveryQueue(redis, retention_s=60, partitions=16)
    entries = await _read(queue)
    assert list(entries) == [ann.id, b1.id]  # the later two are parked: no stream entry
    bob = entries[b1.id].contact
    assert bob is not None
    heads = redis_keys.heads(DEST, 0)
    assert await redis.hgetall(heads) == {
        entries[ann.id].contact: ann.id,
        bob: b1.id,
        PARKED_FIELD: "2",
    }
    bobs = redis_keys.order(DEST, 0, bob)
    assert await redis.lrange(bobs, 0, -1) == [b2.id, b3.id]
    assert not await redis.exists(redis_keys.order(DEST, 0, entries[ann.id].contact or ""))
    assert (await counts(redis, [DEST], partitions=16))[
        DEST
    ].pending == 4  # parked ones are pending too

    # Settled in the order the worker reads them: ann first, then bob's head.
    await redis.xgroup_setid(redis_keys.queue(DEST, 0), redis_keys.CONSUMER_GROUP, "0")
    assert (await _done(redis)).event == ann.id
    assert (await _done(redis)).event == b1.id
    assert await redis.hget(heads, bob) == b2.id  # its turn: a stream entry of its own
    assert (await _done(redis)).event == b2.id
    assert (await _done(redis)).event == b3.id
    assert await redis.hgetall(heads) == {PARKED_FIELD: "0"}
    assert not await redis.exists(bobs)
    assert await _read(queue) == {}


async def test_a_contacts_backlog_moves_without_looking_again(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    async with FakeReceiver() as receiver:
        settings = make_settings(_webhook(receiver))
        events = await _enqueue(redis, *["same@example.com"] * 30, "other@example.com")
        await redis.config_resetstat()
        worker = Worker(settings, redis=redis, concurrency=8)
        await asyncio.wait_for(worker.run(drain=True), 30)
        sent = [r.parsed["id"] for r in receiver.requests]
    assert sorted(sent) == sorted(e.id for e in events)
    same = [i for i in sent if i != events[-1].id]
    assert same == [e.id for e in events[:-1]]
    # No event was put back to look again later (each sent once, at its first attempt),
    # and the worker's writes are all script calls.
    for event in events:
        assert await redis.hget(redis_keys.event(event.id), "n:crm") == "1"
    stats = await redis.info("commandstats")
    assert "cmdstat_multi" not in stats, stats["cmdstat_multi"]


@pytest.mark.parametrize("status", [DeliveryStatus.dead, DeliveryStatus.retrying])
async def test_a_dead_head_lets_the_next_go_and_a_retrying_one_does_not(
    redis: Redis, status: DeliveryStatus
) -> None:
    _, later = await _enqueue(redis, "bob@example.com", "bob@example.com")
    queue = DeliveryQueue(redis, retention_s=60, partitions=16)
    await settle_next(redis, DEST, status, {"status": 500}, retry_at_ms=10**13)
    assert list(await _read(queue)) == ([later.id] if status is DeliveryStatus.dead else [])


async def test_a_head_that_expired_unsent_lets_its_contact_s_next_event_go(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    async with FakeReceiver() as receiver:
        settings = make_settings(_webhook(receiver))
        expired, later = await _enqueue(redis, "bob@example.com", "bob@example.com")
        await redis.delete(redis_keys.event(expired.id))  # past the retention, unsent
        await asyncio.wait_for(Worker(settings, redis=redis).run(drain=True), 30)
        assert [r.parsed["id"] for r in receiver.requests] == [later.id]
    assert await redis.hgetall(redis_keys.heads(DEST, 0)) == {PARKED_FIELD: "0"}
    assert await redis.xlen(redis_keys.queue(DEST, 0)) == 0
