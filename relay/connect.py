"""Open the Redis that settings name: ``RELAY_REDIS_URL``, or the embedded server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError, RedisError

from relay.embedded import COMPACT_HASH_VALUE, EmbeddedRedis
from relay.errors import StoreUnavailable
from relay.settings import Settings

__all__ = ["MIN_REDIS_VERSION", "check_version", "memory_hint", "redis_client", "redis_for"]

#: XAUTOCLAIM, GETDEL, ZRANGE BYSCORE… first came with Redis 6.2.
MIN_REDIS_VERSION = (6, 2)
#: A Redis that does not answer within this long is "unavailable" (the API answers 503).
SOCKET_TIMEOUT_S = 5.0
#: Times a command is retried on a fresh connection after the old one dropped.
RECONNECT_RETRIES = 4
#: Connections one client keeps at most. A command that finds them all busy waits
#: for one (up to SOCKET_TIMEOUT_S) instead of failing: redis-py's own pool raises
#: "Too many connections" past 100, which a burst of requests turned into 503s.
MAX_CONNECTIONS = 128

try:
    from redis.connection import HiredisRespSerializer

    _HIREDIS: HiredisRespSerializer | None = HiredisRespSerializer()  # type: ignore[no-untyped-call,unused-ignore]
except ImportError:  # redis-py without hiredis: its own Python packing
    _HIREDIS = None


def redis_client(url: str) -> Redis:
    """A client as every part of relay expects it: text replies, bounded waits.

    A command that meets a dropped connection (Redis restarted; the pool's
    connections went stale) is sent again on a fresh one, a few times with a
    short backoff, before the error reaches the caller (503 at the API, a
    pending entry at the worker). At most MAX_CONNECTIONS are open; past that a
    command waits its turn.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=SOCKET_TIMEOUT_S,
        decode_responses=True,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        health_check_interval=10,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), RECONNECT_RETRIES),
        retry_on_error=[ConnectionError],
    )
    if _HIREDIS is not None and not issubclass(pool.connection_class, _HiredisPacking):
        # Whatever the URL chose (TCP, TLS, unix socket), with commands packed in C.
        pool.connection_class = type(
            pool.connection_class.__name__, (_HiredisPacking, pool.connection_class), {}
        )
    return Redis.from_pool(pool)


class _HiredisPacking:
    """Commands packed by hiredis, as redis-py's own sync client does, not in Python:
    a group commit's script call names a few hundred keys, and redis-py's asyncio
    connection packs each argument in Python (about 3x slower)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        assert _HIREDIS is not None
        packed: list[bytes] = _HIREDIS.pack(*args)
        return packed


async def check_version(redis: Redis) -> str:
    """The server's version; StoreUnavailable when it is older than 6.2 or does not answer."""
    try:
        info = await redis.info("server")
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"cannot reach Redis: {exc}") from exc
    version = str(info.get("redis_version", "0"))
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < MIN_REDIS_VERSION:
        raise StoreUnavailable(f"Redis {version} is too old: relay needs 6.2 or newer")
    return version


async def memory_hint(redis: Redis) -> str | None:
    """A sentence for the log when Redis keeps event records as hash tables (twice
    their listpack size), or None (compact, or CONFIG is not allowed here)."""
    try:
        found = await redis.config_get("hash-max-ziplist-value")
        value = int(str(next(iter(found.values()))))
    except (RedisError, OSError, ValueError, StopIteration):
        return None
    if value >= COMPACT_HASH_VALUE:
        return None
    return (
        f"this Redis has hash-max-ziplist-value {value}: each queued event takes about a "
        f"quarter more memory than with {COMPACT_HASH_VALUE} (deploy/redis.conf sets it)"
    )


@contextlib.asynccontextmanager
async def redis_for(settings: Settings) -> AsyncIterator[Redis]:
    """A client for the configured Redis, joining (and maybe starting) the embedded one."""
    embedded: EmbeddedRedis | None = None
    if settings.redis_url is None:
        embedded = EmbeddedRedis(settings.data_dir)
        await asyncio.to_thread(embedded.acquire)
        url = embedded.url
    else:
        url = settings.redis_url.get_secret_value()
    client = redis_client(url)
    try:
        yield client
    finally:
        await client.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.release)
