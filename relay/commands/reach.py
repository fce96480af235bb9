"""The Redis of a one-shot command: ``relay keys``, ``events``, ``dlq``, ``status``, ``config``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from relay.connect import check_version, redis_for
from relay.settings import Settings

__all__ = ["reach_redis"]


@contextlib.asynccontextmanager
async def reach_redis(settings: Settings) -> AsyncIterator[Redis]:
    """The configured Redis, checked before the command does anything.

    A Redis that cannot be reached (or is older than 6.2) is a StoreUnavailable
    here, which the CLI prints as one line naming the Redis, with exit status 1, so
    that no command answers "nothing there" without having looked.
    """
    async with redis_for(settings) as redis:
        await check_version(redis)
        yield redis
