"""Group commit: the writes of concurrent requests share one Redis round trip.

Each request hands over a function that adds its writes to a :class:`Batch`,
and waits. If no batch is on its way to Redis, its writes leave at once,
alone (no timer, so no added latency at low load); while one round trip is in
flight, the writes of every request arriving meanwhile gather, and leave
together as soon as it returns. Each request is answered only after Redis ran
the batch that holds its own writes.

A batch is one call of a Lua script that runs its writes in order: as atomic
as MULTI/EXEC (nothing else runs between them), and one command on the wire
instead of six per event, which is what the API spends its time on (parsing
redis-py's ``QUEUED`` replies, one per command). Like MULTI, a batch that Redis
refuses before its first write (out of memory, a read-only replica, a dead
connection) writes nothing, and every request in it fails alike.

:class:`GroupCall` does the same for calls of one script body (the worker's
take before each request): those made while one is in flight go together in
one script call, and each caller gets its own answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from itertools import chain
from typing import Any, Generic, TypeVar, cast

import orjson
from redis.asyncio import Redis

__all__ = ["Batch", "GroupCall", "GroupCommit"]

T = TypeVar("T")
R = TypeVar("R")

#: Runs the commands of ``ARGV[1]`` (a JSON array of [name, key index, args...]) in order.
#: One JSON argument rather than one per value, and each key once however many commands
#: touch it: redis-py encodes every argument in Python. A name found in ``procedures``
#: (filled in by the GroupCommit's own Lua) calls that function with the op instead.
_RUN = """
local procedures = {}
{procedures}
local ops = cjson.decode(ARGV[1])
for _, op in ipairs(ops) do
  local procedure = procedures[op[1]]
  if procedure then
    procedure(op)
  else
    redis.call(op[1], KEYS[op[2]], unpack(op, 3))
  end
end
return #ops
"""

#: Values as they are sent: text (``bytes`` must be UTF-8: relay only writes JSON and
#: ids) and integers (a Lua number, which Redis writes back as the same digits).
Value = str | bytes | int
#: Writes one script call takes before the rest wait for the next (about 5 ms of Redis).
_MAX_OPS = 5_000


class Batch:
    """Writes to run in one script call; the methods mirror redis-py's pipeline."""

    __slots__ = ("_index", "keys", "ops")

    def __init__(self) -> None:
        #: Every key the writes touch, once, in order of first use (the script's KEYS).
        self.keys: list[str] = []
        self._index: dict[str, int] = {}
        self.ops: list[tuple[Value, ...]] = []

    def __repr__(self) -> str:
        return f"<Batch writes={len(self.ops)} keys={len(self.keys)}>"

    def key(self, key: str) -> int:
        """The index of ``key`` in the script's KEYS (from 1), for a procedure's op that
        names more keys than its first."""
        index = self._index.get(key)
        if index is None:
            self.keys.append(key)
            index = self._index[key] = len(self.keys)  # Lua counts from 1
        return index

    def call(self, command: str, key: str, *args: Value) -> None:
        """Any command whose first argument is its one key (``XACK key group id``), or a
        procedure of the GroupCommit's."""
        self.ops.append((command, self.key(key), *args))

    def hset(self, key: str, *, mapping: Mapping[str, Value]) -> None:
        self.call("HSET", key, *chain.from_iterable(mapping.items()))

    def expire(self, key: str, seconds: int) -> None:
        self.call("EXPIRE", key, seconds)

    def zadd(self, key: str, mapping: Mapping[str, int]) -> None:
        pairs: list[Value] = []
        for member, score in mapping.items():
            pairs += (score, member)
        self.call("ZADD", key, *pairs)

    def rpush(self, key: str, *values: Value) -> None:
        self.call("RPUSH", key, *values)

    def xadd(self, key: str, fields: Mapping[str, Value]) -> None:
        self.call("XADD", key, "*", *chain.from_iterable(fields.items()))

    def set(self, key: str, value: Value, *, ex: int) -> None:
        self.call("SET", key, value, "EX", ex)

    def zremrangebyscore(self, key: str, low: Value, high: int) -> None:
        self.call("ZREMRANGEBYSCORE", key, low, high)


Writes = Callable[[Batch], None]


def _text(value: object) -> str:
    """orjson's fallback for what it cannot write itself: ``bytes`` (UTF-8) as text."""
    if isinstance(value, bytes):
        return value.decode()
    raise TypeError(f"{type(value).__name__} is not a Redis value")


class _Gathering(Generic[T, R]):
    """Items submitted while a call is in flight wait, and go together in the next one."""

    __slots__ = ("_flusher", "_largest", "_pending", "_rounds")

    def __init__(self) -> None:
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._rounds = 0
        self._largest = 0

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} rounds={self._rounds} largest={self._largest} "
            f"waiting={len(self._pending)}>"
        )

    async def _submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        # Each caller has a future of its own: a cancelled caller cancels only that one,
        # never the group (its writes still go, as they would have with a shield).
        return await future

    def _prepare(self, items: list[T]) -> tuple[int, Callable[[], Awaitable[list[R]]]]:
        """How many of the waiting ``items`` go in the next call, and that call (which
        answers each of them, in order, or raises for all of them)."""
        raise NotImplementedError

    async def _flush(self) -> None:
        try:
            while self._pending:
                taken, call = self._prepare([item for item, _ in self._pending])
                group, self._pending = self._pending[:taken], self._pending[taken:]
                self._rounds += 1
                self._largest = max(self._largest, len(group))
                try:
                    results = await call()
                except BaseException as exc:
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for (_, future), result in zip(group, results, strict=True):
                        if not future.done():
                            future.set_result(result)
        finally:
            self._flusher = None


class GroupCommit(_Gathering[Writes, None]):
    """Coalesce concurrent writes into one script call; see the module docstring."""

    __slots__ = ("_script", "_tail")

    def __init__(self, redis: Redis, *, tail: Writes | None = None, procedures: str = "") -> None:
        """``procedures``: Lua that adds functions to the table ``procedures``, each
        called as ``procedures[name](op)`` for an op of that name (op[2] is its first
        key's index in KEYS; see :meth:`Batch.key` for more keys)."""
        super().__init__()
        self._script = redis.register_script(_RUN.replace("{procedures}", procedures))
        #: Added once to every group (e.g. trimming an index), after the requests' writes.
        self._tail = tail

    async def submit(self, writes: Writes) -> None:
        """Returns once Redis has run ``writes`` (with others); raises what Redis raised."""
        await self._submit(writes)

    def _prepare(self, items: list[Writes]) -> tuple[int, Callable[[], Awaitable[list[None]]]]:
        batch, taken, failure = Batch(), 0, None
        try:
            # Up to _MAX_OPS writes a call (a request's writes are never split):
            # one huge script would hold Redis up for everyone else.
            for writes in items:
                if taken and len(batch.ops) >= _MAX_OPS:
                    break
                taken += 1
                writes(batch)
            if self._tail is not None:
                self._tail(batch)
        except Exception as exc:  # a bug: fail this group, not the whole loop
            failure = exc

        async def call() -> list[None]:
            if failure is not None:
                raise failure
            await self._script(keys=batch.keys, args=[orjson.dumps(batch.ops, default=_text)])
            return [None] * taken

        return taken, call


#: Runs one script body once per call gathered (``ARGV[1]``: each call's ARGV, as JSON;
#: KEYS: each call's keys in turn) and returns the list of their answers.
_EACH = """
local function one(KEYS, ARGV)
{body}
end
local calls, n, out = cjson.decode(ARGV[1]), {keys}, {}
for i, argv in ipairs(calls) do
  local keys = {}
  for k = 1, n do keys[k] = KEYS[(i - 1) * n + k] end
  out[i] = one(keys, argv)
end
return out
"""
#: Calls one script call takes at most.
_MAX_CALLS = 256


class GroupCall(_Gathering[tuple[Sequence[str], Sequence[str]], Any]):
    """Concurrent calls of one Lua script body share a round trip: those made while one
    is in flight go together, in one script call that runs the body once for each, in
    order, and each caller gets its own answer. For the worker's many small calls
    before a request (each one redis-py call of its own, else).

    A body that raises (a Redis error) stops the script: every caller of that group
    gets the error, and the calls before it in the group have run (Lua does not roll
    back), so a body must be safe to run again, as the worker's take is."""

    __slots__ = ("_keys", "_script")

    def __init__(self, redis: Redis, body: str, *, keys: int) -> None:
        """``body`` is a script's text, reading ``KEYS`` (exactly ``keys`` of them) and
        ``ARGV`` (strings) and returning its answer, which must not be nil."""
        super().__init__()
        self._keys = keys
        self._script = redis.register_script(
            _EACH.replace("{keys}", str(keys)).replace("{body}", body)  # body last: verbatim
        )

    async def call(self, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """The body's answer for these keys and arguments (run with others)."""
        if len(keys) != self._keys:
            raise ValueError(f"expected {self._keys} keys, got {len(keys)}")
        return await self._submit((keys, [str(a) for a in args]))

    def _prepare(
        self, items: list[tuple[Sequence[str], Sequence[str]]]
    ) -> tuple[int, Callable[[], Awaitable[list[Any]]]]:
        group = items[:_MAX_CALLS]

        async def call() -> list[Any]:
            keys = [k for ks, _ in group for k in ks]
            answers = await self._script(keys=keys, args=[orjson.dumps([a for _, a in group])])
            return cast(list[Any], answers)

        return len(group), call
