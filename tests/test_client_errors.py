"""The Redis client is the one place where "Redis cannot serve this now" becomes
StoreUnavailable: for a command, a pipeline, a script and a pub/sub, raised from
redis-py's error and with its text. Every other error Redis answers passes
through as redis-py raised it, and a restart between calls is not seen at all.

Against real redis-servers (the test's own, stopped or full), and a fake one on
loopback for replies a real one does not give on demand (LOADING, BUSY, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import BusyLoadingError, ConnectionError, ResponseError

from relay.connect import redis_client
from relay.errors import StoreUnavailable
from tests.redis_server import RedisServer

_SET = "return redis.call('SET', KEYS[1], ARGV[1])"


async def _command(redis: Redis) -> object:
    return await redis.set("{relay}:t:k", "v")


async def _transaction(redis: Redis) -> object:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set("{relay}:t:k", "v")
        pipe.incr("{relay}:t:n")
        return await pipe.execute()


async def _pipeline(redis: Redis) -> object:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set("{relay}:t:k", "v")
        pipe.incr("{relay}:t:n")
        return await pipe.execute()


async def _script(redis: Redis) -> object:
    return await redis.register_script(_SET)(keys=["{relay}:t:k"], args=["v"])


async def _script_in_a_pipeline(redis: Redis) -> object:
    script = redis.register_script(_SET)
    async with redis.pipeline(transaction=True) as pipe:
        await script(keys=["{relay}:t:k"], args=["v"], client=pipe)
        return await pipe.execute()


async def _subscribe(redis: Redis) -> object:
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe("{relay}:t:channel")
        return await pubsub.get_message(timeout=1.0)


Call = Callable[[Redis], Awaitable[object]]
WRITES: list[Call] = [_command, _transaction, _pipeline, _script, _script_in_a_pipeline]


def _name(call: Call) -> str:
    return call.__name__.strip("_")


@pytest.mark.parametrize("call", [*WRITES, _subscribe], ids=_name)
async def test_a_call_to_a_stopped_redis_is_store_unavailable(
    own_server: RedisServer, own_redis: Redis, call: Call
) -> None:
    await own_redis.ping()  # a pooled connection, which the stop leaves stale
    own_server.stop()
    with pytest.raises(StoreUnavailable) as caught:
        await call(own_redis)
    cause = caught.value.__cause__
    assert isinstance(cause, ConnectionError)
    assert str(caught.value) == str(cause)
    assert str(cause).startswith(f"Error 111 connecting to 127.0.0.1:{own_server.port}.")


async def test_a_subscription_whose_redis_stops_is_store_unavailable(
    own_server: RedisServer, own_redis: Redis
) -> None:
    async with own_redis.pubsub() as pubsub:
        await pubsub.subscribe("{relay}:t:channel")
        assert await pubsub.get_message(timeout=1.0) is not None  # the confirmation
        own_server.stop()

        async def read_on() -> None:
            for _ in range(20):
                await pubsub.get_message(timeout=0.5)

        with pytest.raises(StoreUnavailable) as caught:
            await read_on()
    assert isinstance(caught.value.__cause__, ConnectionError)


async def test_a_restart_between_calls_is_not_seen(
    own_server: RedisServer, own_redis: Redis
) -> None:
    # redis-py's own reconnect (a few tries on a fresh connection) still runs first:
    # only what is left when it gives up is StoreUnavailable.
    await own_redis.set("{relay}:t:k", "v")
    async with own_redis.pubsub() as pubsub:
        await pubsub.subscribe("{relay}:t:channel")
        assert await pubsub.get_message(timeout=1.0) is not None
        own_server.stop()
        own_server.start()
        assert await own_redis.get("{relay}:t:k") == "v"
        assert await _script(own_redis) == "OK"
        message = None
        for _ in range(50):  # the subscription is renewed on the fresh connection
            await own_redis.publish("{relay}:t:channel", "hi")
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                break
        assert message is not None
        assert message["data"] == "hi"


@pytest.mark.parametrize("call", WRITES, ids=_name)
async def test_a_write_refused_at_maxmemory_is_store_unavailable(
    own_redis: Redis, call: Call
) -> None:
    await own_redis.config_set("maxmemory", "1")
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await call(own_redis)
    finally:
        await own_redis.config_set("maxmemory", "0")
    # OutOfMemoryError; from a script, Redis 6 quotes the OOM in the script's error.
    cause = caught.value.__cause__
    assert isinstance(cause, ResponseError)
    assert "command not allowed when used memory > 'maxmemory'" in str(cause)
    assert str(caught.value) == str(cause)


async def test_other_errors_pass_through_as_redis_py_raised_them(redis: Redis) -> None:
    await redis.set("{relay}:t:k", "v")
    with pytest.raises(ResponseError, match=r"^WRONGTYPE"):
        await redis.lpush("{relay}:t:k", "x")
    async with redis.pipeline(transaction=True) as pipe:
        pipe.lpush("{relay}:t:k", "x")
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await pipe.execute()
    wrong = redis.register_script("return redis.call('LPUSH', KEYS[1], 'x')")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await wrong(keys=["{relay}:t:k"])
    with pytest.raises(ResponseError, match="boom"):
        await redis.register_script("error('boom')")()
    await redis.xgroup_create("{relay}:t:s", "g", id="0", mkstream=True)
    with pytest.raises(ResponseError, match=r"^BUSYGROUP"):
        await redis.xgroup_create("{relay}:t:s", "g", id="0", mkstream=True)
    with pytest.raises(ResponseError, match=r"^NOGROUP"):
        await redis.xreadgroup("nosuch", "c", {"{relay}:t:s": ">"})


async def test_a_script_redis_forgot_is_loaded_again(redis: Redis) -> None:
    script = redis.register_script(_SET)
    assert await script(keys=["{relay}:t:k"], args=["v"]) == "OK"
    await redis.script_flush()  # NOSCRIPT next: redis-py's Script loads it and calls again
    assert await script(keys=["{relay}:t:k"], args=["w"]) == "OK"
    await redis.script_flush()
    assert await _script_in_a_pipeline(redis) == ["OK"]
    assert await redis.get("{relay}:t:k") == "v"


async def test_no_connection_free_within_the_pool_wait_is_store_unavailable(
    redis_server: RedisServer,
) -> None:
    redis = redis_client(redis_server.url)
    try:
        pool: Any = redis.connection_pool
        pool.max_connections, pool.timeout = 1, 0.2

        async def hold() -> object:
            return await redis.blpop(["{relay}:t:none"], 1)  # the one connection, for 1 s

        held = asyncio.create_task(hold())
        await asyncio.sleep(0.1)
        with pytest.raises(StoreUnavailable, match=r"^No connection available") as caught:
            await redis.get("{relay}:t:k")
        assert isinstance(caught.value.__cause__, ConnectionError)
        assert await held is None
    finally:
        await redis.aclose()


@contextlib.asynccontextmanager
async def answering(reply: str) -> AsyncIterator[Redis]:
    """A client of a fake Redis on loopback that answers every command with the error
    ``reply`` (and the handshake's CLIENT SETINFO with OK)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionResetError, asyncio.IncompleteReadError):
            while head := await reader.readline():
                args = []
                for _ in range(int(head[1:])):
                    size = int((await reader.readline())[1:])
                    args.append((await reader.readexactly(size + 2))[:-2])
                writer.write(
                    b"+OK\r\n" if args[0].upper() == b"CLIENT" else f"-{reply}\r\n".encode()
                )
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    redis = redis_client(f"redis://127.0.0.1:{port}/0")
    try:
        yield redis
    finally:
        await redis.aclose()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "reply",
    [
        "LOADING Redis is loading the dataset in memory",
        "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
        "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to "
        "persist to disk. Commands that may modify the data set are disabled",
        "NOREPLICAS Not enough good replicas to write.",
        "READONLY You can't write against a read only replica.",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        "UNBLOCKED force unblock from blocking operation, instance state changed "
        "(master -> replica?)",
        "ERR Error running script (call to f_0): @user_script:1: @user_script: 1: "
        "-READONLY You can't write against a read only replica.",
    ],
    ids=lambda reply: reply.split(" ")[0] if "script" not in reply else "script",
)
async def test_replies_that_mean_redis_cannot_serve_now_are_store_unavailable(
    reply: str,
) -> None:
    async with answering(reply) as redis:
        for call in (_command, _pipeline):
            with pytest.raises(StoreUnavailable) as caught:
                await call(redis)
            assert isinstance(caught.value.__cause__, ConnectionError | ResponseError)
            assert reply.split(" ", 1)[1] in str(caught.value)
    if reply.startswith("LOADING"):
        assert isinstance(caught.value.__cause__, BusyLoadingError)


@pytest.mark.parametrize(
    "reply",
    [
        "BUSYGROUP Consumer Group name already exists",
        "NOPERM this user has no permissions to run the 'set' command",
        "ERR Error running script (call to f_0): @user_script:1: user_script:1: BUSY boom",
    ],
    ids=lambda reply: reply.split(" ")[0],
)
async def test_other_replies_are_not(reply: str) -> None:
    async with answering(reply) as redis:
        for call in (_command, _pipeline):
            with pytest.raises(ResponseError):
                await call(redis)
