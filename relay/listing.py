"""Listings over every partition: their indexes read as one, newest first.

Each partition has its own index of event ids by received ms (``redis_keys.events_index``,
``redis_keys.who``); a listing (``GET /v1/events``, the console, search) reads them
merged by ms, then id, a page of each at a time, so that ``before=`` pages on across
partitions exactly as within one (:meth:`relay.store.EventStore.page`).
"""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis

__all__ = ["MergedIndexes"]


class MergedIndexes:
    """Zsets of event ids by ms (a partition's each), read newest first as one: a page
    of each at a time, as far down as the others have been read."""

    __slots__ = ("_bottom", "_buffers", "_done", "_indexes", "_offsets", "_redis", "_top")

    def __init__(self, redis: Redis, indexes: list[str], top: str | float, bottom: str) -> None:
        self._redis = redis
        self._indexes = indexes
        self._top, self._bottom = top, bottom
        self._buffers: list[list[tuple[str, float]]] = [[] for _ in indexes]
        self._offsets = [0] * len(indexes)
        self._done = [False] * len(indexes)

    async def _fill(self, size: int) -> None:
        """Read the next page of every index whose buffer is empty."""
        empty = [i for i, b in enumerate(self._buffers) if not b and not self._done[i]]
        if not empty:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for i in empty:
                pipe.zrevrangebyscore(
                    self._indexes[i],
                    self._top,
                    self._bottom,
                    start=self._offsets[i],
                    num=size,
                    withscores=True,
                )
            pages = cast(list[list[tuple[str, float]]], await pipe.execute())
        for i, page in zip(empty, pages, strict=True):
            self._offsets[i] += len(page)
            self._done[i] = len(page) < size
            self._buffers[i] = page[::-1]  # oldest first: the newest pops off the end

    async def take(self, count: int) -> list[tuple[str, float]]:
        """The next ``count`` entries (or fewer: the end), newest first."""
        out: list[tuple[str, float]] = []
        while len(out) < count:
            await self._fill(max(count, 20))
            heads = [(b[-1][1], b[-1][0], i) for i, b in enumerate(self._buffers) if b]
            if not heads:
                break
            _, _, i = max(heads)
            out.append(self._buffers[i].pop())
        return out

    async def more(self) -> bool:
        """Whether any entry is left to read."""
        await self._fill(1)
        return any(self._buffers)
