"""Script calls made at the same moment share one pipeline (relay.pipeliner), each
still its own atomic call: an error fails only its own, a forgotten script is loaded."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from relay.connect import redis_client
from relay.errors import StoreUnavailable
from relay.pipeliner import Pipeliner
from relay.scripts import MOVE_DUE
from tests.redis_server import RedisServer


def _move_due(redis: Redis, retries: str, stream: str) -> object:
    move_due = MOVE_DUE.bind(redis)
    batch = move_due.batch()
    batch.add({"retries": batch.key(retries), "stream": batch.key(stream)})
    return move_due(batch, keys={}, args={"now_ms": 10, "limit": 10})


async def test_calls_of_a_moment_share_a_round_trip_and_fail_alone(redis: Redis) -> None:
    pipeliner = Pipeliner.of(redis)
    assert pipeliner is not None
    for p in range(8):
        await redis.zadd(f"{{relay:{p}}}:retry:d", {f"e{p}": 1})
    await redis.set("{relay:3}:q:d", "not a stream")  # that call's XADD fails: WRONGTYPE
    before = pipeliner._rounds
    calls = [_move_due(redis, f"{{relay:{p}}}:retry:d", f"{{relay:{p}}}:q:d") for p in range(8)]
    answers = await asyncio.gather(*calls, return_exceptions=True)  # type: ignore[call-overload]
    assert pipeliner._rounds - before <= 2  # the first alone, the rest together
    assert [a for i, a in enumerate(answers) if i != 3] == [1] * 7
    assert isinstance(answers[3], ResponseError)
    assert not isinstance(answers[3], StoreUnavailable)
    assert await redis.xlen("{relay:5}:q:d") == 1
    # A script Redis forgot is loaded again and run.
    await redis.script_flush()
    await redis.zadd("{relay:0}:retry:d", {"again": 1})
    assert await _move_due(redis, "{relay:0}:retry:d", "{relay:0}:q:d") == 1  # type: ignore[misc]


async def test_a_redis_that_cannot_serve_is_store_unavailable(own_server: RedisServer) -> None:
    redis = redis_client(own_server.url)
    try:
        # Loaded (nothing due): the next call's error is its reply, not a NOSCRIPT.
        assert await _move_due(redis, "{relay:0}:retry:d", "{relay:0}:q:d") == 0  # type: ignore[misc]
        await redis.zadd("{relay:0}:retry:d", {"e": 1})  # due: the call writes
        await redis.config_set("maxmemory", "1")
        with pytest.raises(StoreUnavailable, match="OOM"):
            await _move_due(redis, "{relay:0}:retry:d", "{relay:0}:q:d")  # type: ignore[misc]
    finally:
        await redis.config_set("maxmemory", "0")
        await redis.aclose()
