"""Listen on a pub/sub channel that tells in-process caches to drop something.

A cache may only be trusted while its subscription is up: :func:`listen`
calls ``on_up`` once Redis confirmed the subscription, ``on_message`` for
every message, and ``on_down`` whenever the connection is lost (then it
subscribes again). Used by the key cache and the hook subscription cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

__all__ = ["listen"]

log = logging.getLogger(__name__)

#: Pause before re-subscribing after the pub/sub connection broke.
_RESUBSCRIBE_S = 0.5


async def listen(
    redis: Redis,
    channel: str,
    *,
    on_message: Callable[[str], None],
    on_up: Callable[[], None],
    on_down: Callable[[], None],
    what: str,
) -> None:
    """Keep the subscription to ``channel`` up until cancelled (run it as a task)."""
    while True:
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(channel)
            # Wait for the subscribe confirmation before trusting the cache.
            while await pubsub.get_message(timeout=1.0) is None:
                pass
            on_up()
            while True:
                # A bounded wait, so the client's health checks run on a quiet channel.
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None and message["type"] == "message":
                    on_message(message["data"])
        except (RedisError, OSError) as exc:
            log.warning("%s invalidation channel lost (%s); uncached until it is back", what, exc)
        finally:
            on_down()
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
        await asyncio.sleep(_RESUBSCRIBE_S)
