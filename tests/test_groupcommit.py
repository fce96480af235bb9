"""Group commit against a real redis-server: concurrent enqueues share one script call,
each caller returns only once its own writes are in Redis, and failures reach every
caller."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from redis.asyncio import Redis

from relay import redis_keys
from relay.errors import StoreUnavailable
from relay.groupcommit import GroupCommit
from relay.hooks import Subscription
from relay.scripts import ENQUEUE, Batch, Bound
from relay.store import EventStore, NewEvent
from tests.events import new_lead


def lead(i: int) -> NewEvent:
    """The i-th lead, in partition i % 16 (leads of many contacts, as ingest sees them)."""
    return new_lead(f"p{i}@example.com", "crm", partition=i % 16)


async def test_concurrent_enqueues_share_round_trips_and_all_land(redis: Redis) -> None:
    """On one Redis, the events of every partition share the calls (a group a
    partition made a call of an event or two for each: a third of ingest's speed);
    each still lands in its own partition's keys, its notification too."""
    store = EventStore(redis, retention_s=3600, partitions=16)
    events = [lead(i) for i in range(64)]
    hook = Subscription(
        id="hk_1",
        key_id="key_test",
        event="lead.received",
        target_url="http://127.0.0.1:9/",
        created_at=datetime.now(UTC),
        secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )

    async def one(ev: NewEvent) -> bool:
        await store.enqueue([ev], subscribers=[hook])
        # Answered only after Redis has this request's own writes.
        return bool(await redis.exists(redis_keys.event(ev.id)))

    assert all(await asyncio.gather(*(one(ev) for ev in events)))
    assert list(store._commits) == [0]  # one group commit for all the partitions
    commit = store._commit(0)
    assert commit._rounds < 64 / 4  # against 16 (a call a partition) if grouped no better
    assert commit._largest > 16
    for p in range(16):
        assert await redis.xlen(redis_keys.queue("crm", p)) == 4
        assert await redis.zcard(redis_keys.events_index(p)) == 4
        assert await redis.xlen(redis_keys.queue(redis_keys.NOTIFICATIONS, p)) == 4


async def test_a_lone_write_goes_at_once_in_its_own_round(redis: Redis) -> None:
    store = EventStore(redis, retention_s=3600, partitions=16)
    await store.enqueue([lead(1)])
    await store.enqueue([lead(2)])
    assert (store._commit(0)._rounds, store._commit(0)._largest) == (2, 1)


def _commit(redis: Redis) -> GroupCommit:
    """A group commit of enqueue.lua, for writes of its simplest item (a notification's
    record: HSET of its "data", and a stream entry)."""
    return GroupCommit(ENQUEUE.bind(redis), lambda: ({}, {"cutoff_ms": 0, "retention_s": 60}))


def _set(key: str, value: str) -> Callable[[Batch], None]:
    def add(batch: Batch) -> None:
        stream = batch.key("{relay}:t:ntf")
        batch.add({"notify": batch.key(key), "stream": stream, "id": value, "data": value})

    return add


async def test_writes_arriving_during_a_round_go_in_the_next(redis: Redis) -> None:
    commit = _commit(redis)
    first = asyncio.create_task(commit.submit(_set("{relay}:t:a", "a")))
    await asyncio.sleep(0)  # "a" is now on its way
    later = [asyncio.create_task(commit.submit(_set("{relay}:t:last", n))) for n in "bcd"]
    await asyncio.gather(first, *later)
    assert await redis.hget("{relay}:t:last", "data") == "d"  # in the order they came
    assert (commit._rounds, commit._largest) == (2, 3)


class _Held:
    """A stand-in script that answers only when the test lets it go: how many of its
    calls are out at once, and the items each carried."""

    script = ENQUEUE

    def __init__(self) -> None:
        self.out = 0
        self.calls: list[int] = []
        self.go = asyncio.Event()

    def batch(self) -> Batch:
        return Batch(1)

    async def __call__(self, batch: Batch, **_: object) -> list[int]:
        self.calls.append(len(batch.items))
        self.out += 1
        await self.go.wait()
        self.out -= 1
        return list(range(len(batch.items)))


@pytest.mark.parametrize(
    ("depth", "calls", "answers"),
    [(1, [1, 3], [[0], [0], [1], [2]]), (2, [1, 1, 2], [[0], [0], [0], [1]])],
)
async def test_depth_is_how_many_calls_are_out_at_once(
    depth: int, calls: list[int], answers: list[list[int]]
) -> None:
    script = _Held()
    commit = GroupCommit(cast(Bound, script), lambda: ({}, {}), depth=depth)

    def item(batch: Batch) -> None:
        batch.add({})

    async def turns() -> None:
        for _ in range(3):
            await asyncio.sleep(0)

    first = commit.enter(item)
    await turns()
    second = commit.enter(item)  # goes at once with room for a second call, else waits
    await turns()
    rest = [commit.enter(item), commit.enter(item)]  # wait for a call to come back
    await turns()
    assert script.out == depth
    script.go.set()
    # Each caller its own item's answer: its place in the call that carried it.
    assert await asyncio.gather(first, second, *rest) == answers
    assert script.calls == calls
    # Nothing left running: a caller now goes at once, alone.
    assert await commit.submit(item) == [0]
    assert script.calls == [*calls, 1]


async def test_a_refused_group_fails_every_caller_and_stores_nothing(own_redis: Redis) -> None:
    store = EventStore(own_redis, retention_s=3600, partitions=16)
    before = await own_redis.dbsize()
    await own_redis.config_set("maxmemory", "1")  # every write now fails with OOM
    try:
        results = await asyncio.gather(
            *(store.enqueue([lead(i)]) for i in range(5)), return_exceptions=True
        )
    finally:
        await own_redis.config_set("maxmemory", "0")
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    assert await own_redis.dbsize() == before
    # And the next group goes through.
    await store.enqueue([lead(9)])
    assert await own_redis.xlen(redis_keys.queue("crm", 9)) == 1


async def test_a_cancelled_caller_does_not_cancel_the_group(redis: Redis) -> None:
    store = EventStore(redis, retention_s=3600, partitions=16)
    a, b = lead(1), lead(2)
    task_a = asyncio.create_task(store.enqueue([a]))
    task_b = asyncio.create_task(store.enqueue([b]))
    await asyncio.sleep(0)
    task_a.cancel()
    await task_b
    with pytest.raises(asyncio.CancelledError):
        await task_a
    # Both were written: a cancelled caller (a client that hung up) may get no answer,
    # but the others' writes went in the same MULTI.
    assert await redis.exists(redis_keys.event(a.id), redis_keys.event(b.id)) == 2


async def test_a_big_group_is_split_without_splitting_a_request(redis: Redis) -> None:
    store = EventStore(redis, retention_s=3600, partitions=16)
    # 6 requests of 700 events, and a call takes no more once it has 1,000 items (a
    # request's are never split): at most 2 requests a call.
    batches = [[lead(i * 700 + j) for j in range(700)] for i in range(6)]
    await asyncio.gather(*(store.enqueue(b) for b in batches))
    assert store._commit(0)._rounds >= 3
    queued = [await redis.xlen(redis_keys.queue("crm", p)) for p in range(16)]
    assert sum(queued) == 4200


async def test_a_failing_request_fails_its_group_and_the_next_goes_on(redis: Redis) -> None:
    commit = _commit(redis)

    def broken(batch: Batch) -> None:
        raise RuntimeError("a bug while building")

    first = asyncio.create_task(commit.submit(_set("{relay}:t:1", "x")))
    await asyncio.sleep(0)  # on its way
    results = await asyncio.gather(
        commit.submit(broken), commit.submit(_set("{relay}:t:2", "x")), return_exceptions=True
    )
    await first
    assert isinstance(results[0], RuntimeError)
    assert results[1] == [1]  # after the broken one: left for the next call, which ran
    await commit.submit(_set("{relay}:t:3", "x"))  # the loop is still alive
    assert await redis.exists("{relay}:t:1", "{relay}:t:2", "{relay}:t:3") == 3


def test_the_client_packs_commands_as_redis_py_does() -> None:
    # relay's connections pack commands in C (hiredis); the bytes must be redis-py's own.
    from redis.asyncio.connection import Connection

    from relay.connect import redis_client

    ours = redis_client("redis://127.0.0.1:1/0").connection_pool.connection_class()
    theirs = Connection()
    for args in [
        ("EVALSHA", "f" * 40, 2, "{relay}:a", "{relay}:b", '[["SET",1,"é"]]'),
        ("SET", "k", b"\xff\x00", "EX", 60),
        ("ZADD", "z", 1.5, "m", 10**15, "n"),
        ("CONFIG GET", "maxmemory"),
    ]:
        assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args))
    assert type(ours).__mro__[1].__name__ == "_HiredisPacking"


async def test_a_burst_past_the_pool_waits_for_a_connection(redis: Redis) -> None:
    # More commands at once than the client keeps connections: they wait their
    # turn (redis-py's own pool raised "Too many connections", a 503 at the API).
    from relay.connect import MAX_CONNECTIONS

    many = MAX_CONNECTIONS + 72
    answers = await asyncio.gather(*(redis.blpop(["{relay}:t:none"], 0.2) for _ in range(many)))
    assert answers == [None] * many
    assert redis.connection_pool.max_connections == MAX_CONNECTIONS


async def test_an_event_record_stays_a_compact_hash(redis: Redis) -> None:
    # Redis started as relay starts it (SERVER_SETTINGS) keeps an event's hash, JSON
    # and all, as a listpack: about half the memory of a hash table per queued event.
    store = EventStore(redis, retention_s=3600, partitions=16)
    ev = lead(1)
    await store.enqueue([ev])
    assert await redis.object("encoding", redis_keys.event(ev.id)) in ("ziplist", "listpack")


def test_deploy_redis_conf_says_what_relay_asks_of_its_own_redis() -> None:
    from pathlib import Path

    from relay.embedded import SERVER_SETTINGS

    conf = (Path(__file__).parent.parent / "deploy" / "redis.conf").read_text()
    lines = {line.strip() for line in conf.splitlines()}
    pairs = zip(SERVER_SETTINGS[::2], SERVER_SETTINGS[1::2], strict=True)
    for name, value in pairs:
        assert f"{name.removeprefix('--')} {value}" in lines, name


async def test_a_redis_that_would_keep_records_as_hash_tables_is_named_at_start(
    redis: Redis,
) -> None:
    from relay.connect import memory_hint

    assert await memory_hint(redis) is None  # the tests' Redis is set up as relay's own
    await redis.config_set("hash-max-ziplist-value", "64")
    try:
        hint = await memory_hint(redis)
    finally:
        await redis.config_set("hash-max-ziplist-value", "1024")
    assert hint is not None
    assert "hash-max-ziplist-value 64" in hint


async def test_events_past_the_retention_leave_each_partition_s_time_index(redis: Redis) -> None:
    """A call trims the time index of its first event's partition (on one Redis a call
    holds several partitions' events: each is trimmed when a call leads with it)."""
    store = EventStore(redis, retention_s=60, partitions=16)
    old = replace(lead(3), received_at=datetime.now(UTC) - timedelta(seconds=120))
    await store.enqueue([lead(5), old])  # led by partition 5: 3's index is not trimmed
    await store.enqueue([lead(21), lead(35)])  # 5 then 3: still not
    index = redis_keys.events_index(3)
    assert old.id in await redis.zrange(index, 0, -1)
    await store.enqueue([lead(19)])  # 3's turn
    assert old.id not in await redis.zrange(index, 0, -1)
    assert await redis.zcard(index) == 2  # lead(35) and lead(19)
