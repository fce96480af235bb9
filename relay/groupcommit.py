"""Group commit: concurrent calls of one script share one script call and round trip.

Each caller hands over a function that adds its items to a :class:`~relay.scripts.Batch`
of one script (``relay/lua/enqueue.lua`` at ingest; ``take.lua`` and ``settle.lua``
in the worker), and waits. If no call is on its way to Redis, its items leave at
once, alone (no timer, so no added latency at low load); while one is in flight,
the items of every caller arriving meanwhile gather, and leave together as soon as
it returns. Each caller gets the script's answers to its own items (a script
returns one per item), only after Redis ran the call that holds them.

A commit may keep more than one call in flight (``depth``): the items arriving
while ``depth`` calls are out gather for the first to return, as above, but with
fewer out, they leave at once. Calls in flight together may run in either order.

A script call is atomic (nothing else runs between its writes) and one command on
the wire instead of one or several per item, which is what the API and the worker
would spend their time on (redis-py's work per command). A call that Redis refuses
before its first write (out of memory, a read-only replica, a dead connection)
writes nothing, and every caller in it fails alike; so does a call whose writes too
few replicas confirmed (``RELAY_REDIS_MIN_REPLICAS``: NotReplicated, though the
writes are on the master).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from relay.replicas import Replicas
from relay.scripts import Batch, Bound

__all__ = ["GroupCommit", "Writes"]

#: What a caller hands over: it adds its items (and their keys) to the batch.
Writes = Callable[[Batch], None]
#: A script's named KEYS and other ARGV, made when the call leaves (e.g. with the time).
Fixed = Callable[[], tuple[Mapping[str, str], Mapping[str, str | int | float]]]
#: Items one script call takes before the rest wait for the next (a few ms of Redis).
_MAX_ITEMS = 1_000


class GroupCommit:
    """Coalesce concurrent callers' items into calls of one script; see the module
    docstring."""

    __slots__ = (
        "_depth",
        "_fixed",
        "_flushers",
        "_largest",
        "_pending",
        "_replicas",
        "_rounds",
        "_script",
        "_starting",
    )

    def __init__(
        self,
        script: Bound,
        fixed: Fixed,
        *,
        replicas: Replicas | None = None,
        depth: int = 1,
    ) -> None:
        self._script = script
        self._fixed = fixed
        #: Calls in flight at most (see the module docstring).
        self._depth = depth
        #: Replicas that must have a call's writes before its callers get their answers
        #: (one WAIT per call, so per group: relay.replicas); None: the master's word.
        self._replicas = replicas
        self._pending: list[tuple[Writes, asyncio.Future[list[Any]]]] = []
        #: Tasks sending calls (each one call at a time, while items are pending).
        self._flushers: set[asyncio.Task[None]] = set()
        #: A flusher is made and has not taken its first group yet: it takes what
        #: arrives meanwhile, so no other is made for it.
        self._starting = False
        self._rounds = 0
        self._largest = 0

    def __repr__(self) -> str:
        return (
            f"<GroupCommit {self._script.script.name}.lua rounds={self._rounds} "
            f"largest={self._largest} waiting={len(self._pending)} "
            f"flushers={len(self._flushers)}/{self._depth}"
            f"{'' if self._replicas is None else f' replicas={self._replicas.count}'}>"
        )

    async def submit(self, writes: Writes) -> list[Any]:
        """The script's answers to the items ``writes`` added, once Redis has run them
        (with others'); raises what the call raised."""
        return await self.enter(writes)

    def enter(self, writes: Writes) -> asyncio.Future[list[Any]]:
        """:meth:`submit`, joining the group now rather than when a task first runs
        (a caller that awaits something else meanwhile still shares the call)."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((writes, future))
        if not self._starting and len(self._flushers) < self._depth:
            self._starting = True
            self._flushers.add(asyncio.create_task(self._flush()))
        # Each caller has a future of its own: a cancelled caller cancels only that one,
        # never the group (its writes still go, as they would have with a shield).
        return future

    async def _flush(self) -> None:
        try:
            while self._pending:
                self._starting = False  # a caller arriving from now on may start another
                batch, failure = self._script.batch(), None
                ends: list[int] = []  # where each caller's items end
                try:
                    # Up to _MAX_ITEMS a call (a caller's items are never split): one
                    # huge script would hold Redis up for everyone else.
                    for writes, _ in self._pending:
                        if ends and len(batch.items) >= _MAX_ITEMS:
                            break
                        writes(batch)
                        ends.append(len(batch.items))
                except Exception as exc:  # a bug: fail this group, not the whole loop
                    failure = exc
                    ends.append(len(batch.items))
                group, self._pending = self._pending[: len(ends)], self._pending[len(ends) :]
                self._rounds += 1
                self._largest = max(self._largest, len(group))
                try:
                    if failure is not None:
                        raise failure
                    keys, args = self._fixed()
                    answers: list[Any] = await self._script(
                        batch, keys=keys, args=args, replicas=self._replicas
                    )
                except BaseException as exc:
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    start = 0
                    for (_, future), end in zip(group, ends, strict=True):
                        if not future.done():
                            future.set_result(answers[start:end])
                        start = end
        finally:
            # Out at once, not in a done callback: a caller arriving before that would
            # find no room for a flusher, and wait forever.
            task = asyncio.current_task()
            assert task is not None
            self._flushers.discard(task)
