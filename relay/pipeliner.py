"""Script calls made at the same moment share one pipeline: one round trip.

With partitions (:mod:`relay.partitions`), the group commits of takes, settles and
enqueues are one per slot, so a moment's work is many small script calls (one per
partition it touches) rather than one big one. On one Redis they go together: a call
made while no pipeline is on its way leaves once the tasks ready at that moment have
had their turn (one pass of the event loop, no timer: they often have calls of their
own to add), and those made while one is in flight leave together as soon as it
returns, each still its own atomic EVALSHA; a call alone goes without a pipeline. A
cluster client calls each alone (its pipeline would split them by node
anyway, and does not load a script again after NOSCRIPT).

A reply that is an error fails only its own call (translated as the client translates:
StoreUnavailable when Redis cannot serve it now); a NOSCRIPT (Redis restarted, or
failed over, since the script was loaded) is run again alone, through redis-py's
Script, which loads it first.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from relay.connect import store_error

__all__ = ["Pipeliner"]

#: One call: the script's digest, its KEYS and ARGV, the call that loads it when Redis
#: forgot it, and the future of its answer.
_Call = tuple[
    str,
    Sequence[str],
    Sequence[Any],
    Callable[[], Awaitable[Any]],
    "asyncio.Future[Any]",
]


class Pipeliner:
    """Coalesce concurrent EVALSHA calls on one client into pipelines; see the module
    docstring. One per client (:meth:`of`)."""

    __slots__ = ("__weakref__", "_flusher", "_largest", "_pending", "_redis", "_rounds")

    _of: weakref.WeakKeyDictionary[Redis, Pipeliner] = weakref.WeakKeyDictionary()

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pending: list[_Call] = []
        self._flusher: asyncio.Task[None] | None = None
        self._rounds = 0
        self._largest = 0

    def __repr__(self) -> str:
        return (
            f"<Pipeliner rounds={self._rounds} largest={self._largest} "
            f"waiting={len(self._pending)}>"
        )

    @classmethod
    def of(cls, redis: Redis) -> Pipeliner | None:
        """The pipeliner of ``redis``; None for a cluster client (calls go alone)."""
        if isinstance(redis, RedisCluster):
            return None
        found = cls._of.get(redis)
        if found is None:
            found = cls._of[redis] = cls(redis)
        return found

    async def call(
        self,
        sha: str,
        keys: Sequence[str],
        args: Sequence[Any],
        alone: Callable[[], Awaitable[Any]],
    ) -> Any:
        """EVALSHA ``sha`` with these KEYS and ARGV, in the next pipeline; ``alone``
        makes the same call by itself (loading the script) after a NOSCRIPT."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((sha, keys, args, alone, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                # The tasks ready now (other group commits' flushes, other requests'
                # steps) add their calls first: one round trip for them all, no timer.
                await asyncio.sleep(0)
                group, self._pending = self._pending, []
                self._rounds += 1
                self._largest = max(self._largest, len(group))
                if len(group) == 1:  # no pipeline to build for one call (its cost is the CPU's)
                    await self._one(*group[0])
                    continue
                try:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for sha, keys, args, _, _ in group:
                            pipe.evalsha(sha, len(keys), *keys, *args)
                        answers = await pipe.execute(raise_on_error=False)
                except BaseException as exc:
                    for *_, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, _, _, alone, future), answer in zip(group, answers, strict=True):
                    if future.done():
                        continue
                    if isinstance(answer, NoScriptError):
                        _chain(asyncio.ensure_future(alone()), future)
                    elif isinstance(answer, Exception):
                        future.set_exception(store_error(answer))
                    else:
                        future.set_result(answer)
        finally:
            self._flusher = None

    async def _one(
        self,
        sha: str,
        keys: Sequence[str],
        args: Sequence[Any],
        alone: Callable[[], Awaitable[Any]],
        future: asyncio.Future[Any],
    ) -> None:
        """One call by itself, its errors as the pipeline's would be (the client
        translates them: StoreUnavailable when Redis cannot serve it now)."""
        try:
            answer = await self._redis.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            _chain(asyncio.ensure_future(alone()), future)
            return
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        if not future.done():
            future.set_result(answer)


def _chain(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    """``target`` gets what ``source`` ends with."""

    def done(f: asyncio.Future[Any]) -> None:
        if target.done():
            return
        if f.cancelled():
            target.cancel()
        elif (exc := f.exception()) is not None:
            target.set_exception(exc)
        else:
            target.set_result(f.result())

    source.add_done_callback(done)
