"""Listen on a pub/sub channel that tells in-process caches to drop something.

A cache may only be trusted while its subscription is up: :func:`listen`
calls ``on_up`` once Redis confirmed the subscription, ``on_message`` for
every message, and ``on_down`` whenever the connection is lost (then it
subscribes again). Used by the key cache and the hook subscription cache.
A lost connection is told to the process's :class:`~relay.availability.RedisWatch`,
which logs the outage once (not once per listener and retry).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from redis.asyncio import Redis

from relay.availability import RedisWatch, still_cancelled
from relay.errors import StoreUnavailable

__all__ = ["listen"]


async def listen(
    redis: Redis,
    channel: str,
    *,
    on_message: Callable[[str], None],
    on_up: Callable[[], None],
    on_down: Callable[[], None],
    watch: RedisWatch,
) -> None:
    """Keep the subscription to ``channel`` up until cancelled (run it as a task)."""
    while True:
        pause_s = 0.0
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(channel)
            # Wait for the subscribe confirmation before trusting the cache.
            while await pubsub.get_message(timeout=1.0) is None:
                still_cancelled()
            still_cancelled()  # one swallowed by subscribe (a write) ends it here
            watch.ok()
            on_up()
            while True:
                # A bounded wait, so the client's health checks run on a quiet channel.
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                still_cancelled()  # one the client swallowed still ends the listener
                watch.ok()
                if message is not None and message["type"] == "message":
                    on_message(message["data"])
        except StoreUnavailable as exc:
            pause_s = watch.failed(exc)  # uncached until it is back
        finally:
            on_down()
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
        await asyncio.sleep(pause_s)
