"""Group commit: the writes of concurrent requests share one Redis round trip.

Each request hands over a function that adds its writes to a MULTI being
built, and waits. If no write is on its way to Redis, its writes leave at
once, alone (no timer, so no added latency at low load); while one round trip
is in flight, the writes of every request arriving meanwhile gather, and leave
together, in one MULTI/EXEC, as soon as it returns. Each request is answered
only after the EXEC that holds its own writes has returned.

One MULTI for the whole group keeps each request's writes atomic (a superset
of them is), and costs nothing in isolation: MULTI is all or nothing on every
error Redis reports before EXEC (out of memory, read-only replica, a dead
connection), and those would have failed each request alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

__all__ = ["GroupCommit"]

Writes = Callable[[Pipeline], None]


class GroupCommit:
    """Coalesce concurrent MULTI blocks into one; see the module docstring."""

    __slots__ = ("_flusher", "_largest", "_pending", "_redis", "_rounds", "_tail")

    def __init__(self, redis: Redis, *, tail: Writes | None = None) -> None:
        self._redis = redis
        #: Added once to every group (e.g. trimming an index), after the requests' writes.
        self._tail = tail
        self._pending: list[tuple[Writes, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._rounds = 0
        self._largest = 0

    def __repr__(self) -> str:
        return (
            f"<GroupCommit rounds={self._rounds} largest={self._largest} "
            f"waiting={len(self._pending)}>"
        )

    async def submit(self, writes: Writes) -> None:
        """Returns once Redis has executed ``writes`` (with others); raises what Redis raised."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((writes, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        await asyncio.shield(future)  # a cancelled request must not cancel the group's write

    async def _flush(self) -> None:
        try:
            while self._pending:
                group, self._pending = self._pending, []
                self._rounds += 1
                self._largest = max(self._largest, len(group))
                try:
                    async with self._redis.pipeline(transaction=True) as pipe:
                        for writes, _ in group:
                            writes(pipe)
                        if self._tail is not None:
                            self._tail(pipe)
                        await pipe.execute()
                except BaseException as exc:
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for _, future in group:
                        if not future.done():
                            future.set_result(None)
        finally:
            self._flusher = None
