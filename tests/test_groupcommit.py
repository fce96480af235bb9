"""Group commit against a real redis-server: concurrent enqueues share one MULTI, each
caller returns only once its own writes are in Redis, and failures reach every caller."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from relay import redis_keys
from relay.errors import StoreUnavailable
from relay.groupcommit import Batch, GroupCall, GroupCommit
from relay.store import EventStore, NewEvent
from tests.events import new_lead


def lead(i: int) -> NewEvent:
    return new_lead(f"p{i}@example.com", "crm")


async def test_concurrent_enqueues_share_round_trips_and_all_land(redis: Redis) -> None:
    store = EventStore(redis, retention_s=3600)
    events = [lead(i) for i in range(50)]

    async def one(ev: NewEvent) -> bool:
        await store.enqueue([ev])
        # Answered only after Redis has this request's own writes.
        return bool(await redis.exists(redis_keys.event(ev.id)))

    assert all(await asyncio.gather(*(one(ev) for ev in events)))
    commit = store._commit
    assert commit._rounds < 50
    assert commit._largest > 1
    assert await redis.xlen(redis_keys.queue("crm")) == 50
    assert await redis.zcard(redis_keys.EVENTS_INDEX) == 50


async def test_a_lone_write_goes_at_once_in_its_own_round(redis: Redis) -> None:
    store = EventStore(redis, retention_s=3600)
    await store.enqueue([lead(1)])
    await store.enqueue([lead(2)])
    assert (store._commit._rounds, store._commit._largest) == (2, 1)


async def test_writes_arriving_during_a_round_go_in_the_next(redis: Redis) -> None:
    commit = GroupCommit(redis)
    order: list[str] = []

    def write(name: str) -> Callable[[Batch], None]:
        def add(pipe: Batch) -> None:
            order.append(name)
            pipe.rpush("{relay}:test:order", name)

        return add

    first = asyncio.create_task(commit.submit(write("a")))
    await asyncio.sleep(0)  # "a" is now on its way
    later = [asyncio.create_task(commit.submit(write(n))) for n in "bcd"]
    await asyncio.gather(first, *later)
    assert await redis.lrange("{relay}:test:order", 0, -1) == ["a", "b", "c", "d"]
    assert (commit._rounds, commit._largest) == (2, 3)


async def test_a_refused_group_fails_every_caller_and_stores_nothing(own_redis: Redis) -> None:
    store = EventStore(own_redis, retention_s=3600)
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
    assert await own_redis.xlen(redis_keys.queue("crm")) == 1


async def test_a_cancelled_caller_does_not_cancel_the_group(redis: Redis) -> None:
    store = EventStore(redis, retention_s=3600)
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
    store = EventStore(redis, retention_s=3600)
    # 6 requests of 700 events: 4 writes an event, 2,800 a request, so at most 2 a call.
    batches = [[lead(i * 700 + j) for j in range(700)] for i in range(6)]
    await asyncio.gather(*(store.enqueue(b) for b in batches))
    assert store._commit._rounds >= 3
    assert await redis.xlen(redis_keys.queue("crm")) == 4200


async def test_a_failing_request_fails_its_group_and_the_next_goes_on(redis: Redis) -> None:
    commit = GroupCommit(redis)

    def broken(batch: Batch) -> None:
        raise RuntimeError("a bug while building")

    def fine(batch: Batch) -> None:
        batch.rpush("{relay}:test:fine", "x")

    first = asyncio.create_task(commit.submit(fine))
    await asyncio.sleep(0)  # on its way
    results = await asyncio.gather(
        commit.submit(broken), commit.submit(fine), return_exceptions=True
    )
    await first
    assert isinstance(results[0], RuntimeError)
    assert results[1] is None  # after the broken one: left for the next call, which ran
    await commit.submit(fine)  # the loop is still alive
    assert await redis.llen("{relay}:test:fine") == 3


async def test_a_batch_names_each_key_once_and_runs_its_writes_in_order(redis: Redis) -> None:
    commit = GroupCommit(redis)

    def writes(batch: Batch) -> None:
        batch.rpush("{relay}:t:list", "a")
        batch.set("{relay}:t:str", "x", ex=60)
        batch.rpush("{relay}:t:list", "b", b"c")
        batch.expire("{relay}:t:list", 60)
        assert batch.keys == ["{relay}:t:list", "{relay}:t:str"]

    await commit.submit(writes)
    assert await redis.lrange("{relay}:t:list", 0, -1) == ["a", "b", "c"]
    assert 0 < await redis.ttl("{relay}:t:list") <= 60
    assert await redis.get("{relay}:t:str") == "x"


async def test_a_procedure_op_calls_its_lua_function_with_more_keys(redis: Redis) -> None:
    # A procedure gets its op: op[2] is its first key's index, later keys via Batch.key.
    commit = GroupCommit(
        redis,
        procedures="""
procedures.move = function(op)
  redis.call('RPUSH', KEYS[op[3]], redis.call('LPOP', KEYS[op[2]]) .. op[4])
end
""",
    )

    def writes(batch: Batch) -> None:
        batch.rpush("{relay}:t:from", "a", "b")
        batch.call("move", "{relay}:t:from", batch.key("{relay}:t:to"), "!")
        batch.call("move", "{relay}:t:from", batch.key("{relay}:t:to"), "?")

    await commit.submit(writes)
    assert await redis.lrange("{relay}:t:to", 0, -1) == ["a!", "b?"]
    assert not await redis.exists("{relay}:t:from")


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


_ECHO = """
redis.call('RPUSH', KEYS[1], ARGV[1])
return {KEYS[1], ARGV[1], redis.call('LLEN', KEYS[1])}
"""


async def test_concurrent_calls_share_a_round_trip_and_get_their_own_answers(
    redis: Redis,
) -> None:
    calls = GroupCall(redis, _ECHO, keys=1)
    first = asyncio.create_task(calls.call(["{relay}:t:0"], ["v0"]))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the first call is on its way to Redis now
    rest = await asyncio.gather(
        *(calls.call([f"{{relay}}:t:{i % 2}"], [f"v{i}"]) for i in range(1, 10))
    )
    answers = [await first, *rest]
    # The first went alone; the nine that came while it was in flight went together.
    assert calls._rounds == 2
    assert calls._largest == 9
    assert [a[1] for a in answers] == [f"v{i}" for i in range(10)]
    assert answers[-1] == ["{relay}:t:1", "v9", 5]  # run in order: the fifth on its list
    assert await redis.lrange("{relay}:t:0", 0, -1) == ["v0", "v2", "v4", "v6", "v8"]


async def test_a_call_that_raises_fails_its_group_only(redis: Redis) -> None:
    calls = GroupCall(redis, _ECHO, keys=1)
    await redis.set("{relay}:t:str", "not a list")
    first = asyncio.create_task(calls.call(["{relay}:t:a"], ["x"]))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    rest = await asyncio.gather(
        calls.call(["{relay}:t:a"], ["y"]),
        calls.call(["{relay}:t:str"], ["z"]),  # RPUSH on a string: the script stops
        return_exceptions=True,
    )
    assert (await first)[1] == "x"
    assert all(isinstance(r, ResponseError) and "WRONGTYPE" in str(r) for r in rest)
    # The next group goes through.
    assert (await calls.call(["{relay}:t:a"], ["w"]))[1] == "w"
    with pytest.raises(ValueError, match="expected 1 keys"):
        await calls.call([], ["w"])


async def test_an_event_record_stays_a_compact_hash(redis: Redis) -> None:
    # Redis started as relay starts it (SERVER_SETTINGS) keeps an event's hash, JSON
    # and all, as a listpack: about half the memory of a hash table per queued event.
    store = EventStore(redis, retention_s=3600)
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
