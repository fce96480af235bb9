"""The key cache: used while its invalidation channel is up, emptied by a revocation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from relay.apikeys import KEY_RE, digest, parse_expires
from relay.connect import redis_client
from relay.keystore import KeyStore
from tests.redis_server import RedisServer


async def _until(predicate: object, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_revocation_empties_another_process_cache(
    redis: Redis, redis_server: RedisServer
) -> None:
    other = redis_client(redis_server.url)
    reader, writer = KeyStore(redis), KeyStore(other)
    listener = asyncio.create_task(reader.listen())
    try:
        await _until(lambda: "live" in repr(reader))
        record, key = await writer.create(name="k", scopes=["write:leads"])
        assert (await reader.lookup(key)) == record
        assert "cached=1" in repr(reader)
        await writer.revoke(record.id)
        await _until(lambda: "cached=0" in repr(reader))
        looked = await reader.lookup(key)
        assert looked is not None
        assert looked.state() == "revoked"
    finally:
        listener.cancel()
        await asyncio.wait({listener})
        await other.aclose()


async def test_no_cache_without_subscription(redis: Redis) -> None:
    store = KeyStore(redis)
    _, key = await store.create(name="k", scopes=["admin"])
    assert await store.lookup(key) is not None
    assert "cached=0 uncached" in repr(store)


async def test_keys_are_stored_only_as_digests(redis: Redis) -> None:
    record, key = await KeyStore(redis).create(name="k", scopes=["admin"], mode="test")
    assert KEY_RE.match(key)
    assert key.startswith("rly_test_")
    assert record.digest == digest(key)
    assert key not in repr(record)
    dump = [str(await redis.hgetall(name)) + name async for name in redis.scan_iter()]
    assert not any(key in d or key[12:] in d for d in dump)


def test_parse_expires() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_expires("30d", now=now) == now + timedelta(days=30)
    assert parse_expires("2027-01-31T00:00:00Z", now=now) == datetime(2027, 1, 31, tzinfo=UTC)
    for bad in ("yesterday", "0d", "2020-01-01T00:00:00Z", "99999999999999d", "9999999w"):
        with pytest.raises(ValueError, match="expiry"):
            parse_expires(bad, now=now)
