"""Attempts are kept in the event's own hash (``a:<dest>:<n>``), shown in order, and
those an earlier release kept in a list of their own are still shown. Real Redis."""

from __future__ import annotations

import orjson
from redis.asyncio import Redis

from relay import redis_keys
from relay.models import DeliveryStatus
from relay.queue import DeliveryQueue, Entry
from relay.store import EventStore, NewEvent
from tests.events import new_lead


async def _queued(redis: Redis, *destinations: str) -> tuple[EventStore, NewEvent]:
    store = EventStore(redis, retention_s=60)
    event = new_lead("ann@example.com", *destinations)
    await store.enqueue([event])
    return store, event


async def _attempt(redis: Redis, dest: str, event_id: str, status: int, state: str) -> None:
    entry = Entry("0-1", event_id)
    await DeliveryQueue(redis, retention_s=60).finish(
        dest,
        entry,
        {"status": status, "outcome": state},
        status=DeliveryStatus(state),
        contact=None,
        retry_at_ms=None if state != "retrying" else 10**13,
    )


async def test_attempts_live_in_the_event_hash_and_show_in_order(redis: Redis) -> None:
    store, event = await _queued(redis, "crm", "sheet")
    await _attempt(redis, "crm", event.id, 500, "retrying")
    await _attempt(redis, "sheet", event.id, 200, "delivered")
    await _attempt(redis, "crm", event.id, 503, "retrying")
    await _attempt(redis, "crm", event.id, 200, "delivered")
    raw = await redis.hgetall(redis_keys.event(event.id))
    assert sorted(str(f) for f in raw if str(f).startswith("a:")) == [
        "a:crm:1", "a:crm:2", "a:crm:3", "a:sheet:1"
    ]  # fmt: skip
    assert raw["n:crm"] == "3"
    assert not await redis.exists(redis_keys.attempts(event.id))  # no key of their own
    assert 0 < await redis.ttl(redis_keys.event(event.id)) <= 60
    view = await store.get(event.id)
    assert view is not None
    shown = {d.name: [(a["status"], a["outcome"]) for a in d.attempts] for d in view.destinations}
    assert shown == {
        "crm": [(500, "retrying"), (503, "retrying"), (200, "delivered")],
        "sheet": [(200, "delivered")],
    }
    assert view.status == "delivered"


async def test_attempts_an_earlier_release_listed_come_first(redis: Redis) -> None:
    store, event = await _queued(redis, "crm")
    old = {"destination": "crm", "at": 1.0, "status": 500, "outcome": "retrying"}
    await redis.rpush(redis_keys.attempts(event.id), orjson.dumps(old))
    await redis.hset(redis_keys.event(event.id), "n:crm", 1)
    await _attempt(redis, "crm", event.id, 200, "delivered")
    view = await store.get(event.id)
    assert view is not None
    assert [a["status"] for a in view.destinations[0].attempts] == [500, 200]
    assert await redis.hget(redis_keys.event(event.id), "a:crm:2") is not None


async def test_an_event_that_expired_while_sent_leaves_no_record_behind(redis: Redis) -> None:
    _, event = await _queued(redis, "crm")
    await redis.delete(redis_keys.event(event.id))
    await _attempt(redis, "crm", event.id, 200, "delivered")
    # Writing its status now would make a hash that never expires.
    assert not await redis.exists(redis_keys.event(event.id))
