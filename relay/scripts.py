"""The Redis scripts of ``relay/lua/``, loaded by name and called by the names of their
KEYS and ARGV.

Each Redis operation that must be atomic is one Lua file, readable alone: its header
says what it does, names its KEYS and ARGV, and every key it touches comes in through
``KEYS`` (Redis's scripting rule, and what Redis Cluster routes by). A :class:`Script`
declares the same names; loading checks them against the file's ``-- KEYS:`` and
``-- ARGV:`` lines, and a call must give exactly those names::

    take = TAKE.bind(redis)
    batch = take.batch()
    batch.add({"entry": entry_id, "event": batch.key(redis_keys.event(event_id)), "holder": h})
    keys = {"stream": redis_keys.queue(dest, p)}
    reply = await take(batch, keys=keys, args={"destination": dest, "now_ms": "", ...})

Every call touches one slot: a partition's keys (``{relay:<p>}``) or the control keys
(``{relay}``), never both (relay.redis_keys; tests/test_scripts.py checks each call).
The one exception is on one Redis, where slots mean nothing: there an enqueue call takes
the events of every partition at once (relay.store; on a cluster, one call a partition).

Scripts that work on a list of items (``items`` in ARGV) take the keys of those items
after their named ones: a :class:`Batch` collects them, each once, and gives the index
an item names it by. The names shared with Python (stream entry fields, status words,
hash field prefixes, the consumer group; from :mod:`relay.redis_keys` and
:class:`relay.models.DeliveryStatus`) are defined here, once, as Lua locals on the
script's first line, before the file's own text (so Lua's line numbers are the file's
plus one).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib.resources import files
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from relay import redis_keys
from relay.models import DeliveryStatus
from relay.replicas import Replicas, write

__all__ = [
    "ACQUIRE",
    "ADMIT",
    "CONTROL",
    "ENQUEUE",
    "KEEP",
    "MOVE_DUE",
    "RELEASE",
    "RENEW",
    "REPLAY",
    "SETTLE",
    "TAKE",
    "UNTAKE",
    "Batch",
    "Bound",
    "Composed",
    "Script",
    "compose",
]

#: The names every script may use, as Lua locals (see the module docstring).
SHARED_NAMES: dict[str, str | int] = {
    "DATA": redis_keys.EVENT_DATA_FIELD,
    "STATUS": redis_keys.STATUS_FIELD_PREFIX,
    "HOLDER": redis_keys.HOLDER_FIELD_PREFIX,
    "UNTIL": redis_keys.HOLD_UNTIL_FIELD_PREFIX,
    "ATTEMPTS": redis_keys.ATTEMPTS_FIELD_PREFIX,
    "RETRIES": redis_keys.RETRIES_FIELD_PREFIX,
    "RECORD": redis_keys.ATTEMPT_RECORD_PREFIX,
    "ENTRY_EVENT": redis_keys.ENTRY_EVENT_FIELD,
    "ENTRY_CONTACT": redis_keys.ENTRY_CONTACT_FIELD,
    "RETRY_SEP": redis_keys.RETRY_CONTACT_SEP,
    "PARKED": redis_keys.PARKED_FIELD,
    "GROUP": redis_keys.CONSUMER_GROUP,
    "NOTIFICATIONS": redis_keys.NOTIFICATIONS,
    "IDEMPOTENCY_TTL_S": redis_keys.IDEMPOTENCY_TTL_S,
    "DELIVERED_MINUTE_TTL_S": redis_keys.DELIVERED_MINUTE_TTL_S,
    **{status.name.upper(): status.value for status in DeliveryStatus},
}


def _lua(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    if "'" in value or "\\" in value:
        raise ValueError(f"not a plain Lua string: {value!r}")
    return f"'{value}'"


_PREAMBLE = f"local {', '.join(SHARED_NAMES)} = {', '.join(map(_lua, SHARED_NAMES.values()))}\n"
_HEADER = re.compile(r"^-- (KEYS|ARGV): (.*)$", re.MULTILINE)
#: What a header's KEYS line says after the names when items bring keys of their own.
_ITEM_KEYS = "then the items' keys"


@dataclass(frozen=True)
class Script:
    """One file of ``relay/lua``, and the names of its KEYS and ARGV, in order."""

    name: str
    keys: tuple[str, ...]
    args: tuple[str, ...]
    #: Items (ARGV ``items``, JSON) bring keys of their own, after the named ones.
    items: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", "items" in self.args)
        self.text  # noqa: B018 (a misnamed script fails at import, not at its first call)

    @cached_property
    def text(self) -> str:
        """The script as Redis runs it: the shared names, then the file."""
        return _PREAMBLE + self.source

    @cached_property
    def sha(self) -> str:
        """The digest Redis knows the script by (EVALSHA, SCRIPT LOAD)."""
        return hashlib.sha1(self.text.encode(), usedforsecurity=False).hexdigest()

    @cached_property
    def source(self) -> str:
        """The file, its header checked against the names declared here."""
        source = files("relay.lua").joinpath(f"{self.name}.lua").read_text()
        header = dict(_HEADER.findall(source))
        keys = ", ".join([*self.keys, *([_ITEM_KEYS] if self.items else [])])
        if header.get("KEYS") != keys or header.get("ARGV") != ", ".join(self.args):
            raise ValueError(
                f"relay/lua/{self.name}.lua names KEYS: {header.get('KEYS')!r} and ARGV: "
                f"{header.get('ARGV')!r}; its Script declares {keys!r} and {self.args!r}"
            )
        return source

    def bind(self, redis: Redis) -> Bound:
        """This script on ``redis`` (loaded there by its digest at the first call)."""
        return Bound(self, redis)


@dataclass(frozen=True)
class Composed(Script):
    """Scripts of one slot run as one call: each file's text, unchanged, becomes a local
    function of one script (its ``KEYS`` and ``ARGV`` are the function's parameters), and
    each item of the call names the script it is for (``"part"``: its name). The parts
    run in the order given, each on its own items (none: not run), and the answers come
    back in item order, as from any script of items.

    Why: the control steps of takes and settles of the same moment (admit.lua,
    release.lua) then share one call instead of two, on one Redis and on a cluster
    alike (their keys are all in the control slot); there is no second copy of either
    script to keep in step. The call's KEYS are every part's named keys (each once, in
    order of the parts), then the items' keys; a part sees its own named keys first,
    then the others, so the items' keys keep their places. Its ARGV is every part's (each
    name once); a part's ``items`` come to it decoded (its ``cjson.decode`` gives a table
    back as it is), not encoded again for it to decode."""

    parts: tuple[Script, ...] = ()

    @cached_property
    def source(self) -> str:
        lines = [
            f"-- {self.name}: {', '.join(p.name + '.lua' for p in self.parts)} in one call "
            "(relay.scripts.Composed)",
            "local items, answers = cjson.decode(ARGV[1]), {}",
            "-- Each part gets its items decoded already: its own cjson.decode(ARGV[1])",
            "-- hands the table back (encoding them again for it to decode again was",
            "-- about a tenth of a control call's time in Redis).",
            "local json = cjson",
            "local cjson = setmetatable({decode = function(v)",
            "  if type(v) == 'table' then return v end",
            "  return json.decode(v)",
            "end}, {__index = json})",
            "local function run(part, name, key_order, arg_order)",
            "  local mine, places = {}, {}",
            "  for i, item in ipairs(items) do",
            "    if item.part == name then mine[#mine + 1] = item; places[#places + 1] = i end",
            "  end",
            "  if #mine == 0 then return end",
            "  local keys, args = {}, {}",
            "  for j, k in ipairs(key_order) do keys[j] = KEYS[k] end",
            "  for k = #key_order + 1, #KEYS do keys[k] = KEYS[k] end",
            "  for j, a in ipairs(arg_order) do",
            "    if a == 1 then args[j] = mine else args[j] = ARGV[a] end",
            "  end",
            "  local out = part(keys, args)",
            "  for j, i in ipairs(places) do answers[i] = out[j] end",
            "end",
        ]
        for part in self.parts:
            lines += [f"local function {part.name}(KEYS, ARGV)", part.source, "end"]
        for part in self.parts:
            mine = [self.keys.index(k) + 1 for k in part.keys]
            key_order = mine + [i for i in range(1, len(self.keys) + 1) if i not in mine]
            arg_order = [self.args.index(a) + 1 for a in part.args]
            lines.append(
                f"run({part.name}, '{part.name}', {{{', '.join(map(str, key_order))}}}, "
                f"{{{', '.join(map(str, arg_order))}}})"
            )
        lines.append("return answers")
        return "\n".join(lines) + "\n"


def compose(name: str, *parts: Script) -> Composed:
    """One call running ``parts`` in this order (see :class:`Composed`); each must take
    items (``items`` first in its ARGV)."""
    if not all(p.items and p.args[0] == "items" for p in parts):
        raise ValueError(f"{name}: every part must take items first in its ARGV")
    keys = tuple(dict.fromkeys(k for p in parts for k in p.keys))
    args = tuple(dict.fromkeys(a for p in parts for a in p.args))
    return Composed(name, keys, args, parts=parts)


class Batch:
    """The items of one script call, and the keys they name, each once."""

    __slots__ = ("_first", "_index", "items", "keys")

    def __init__(self, first: int) -> None:
        #: The items' keys, in order of first use (KEYS from index ``first`` on).
        self.keys: list[str] = []
        self.items: list[dict[str, Any]] = []
        self._index: dict[str, int] = {}
        self._first = first

    def __repr__(self) -> str:
        return f"<Batch items={len(self.items)} keys={len(self.keys)}>"

    def key(self, key: str) -> int:
        """The index of ``key`` in the script's KEYS (Lua counts from 1)."""
        index = self._index.get(key)
        if index is None:
            self.keys.append(key)
            index = self._index[key] = self._first + len(self.keys) - 1
        return index

    def add(self, item: dict[str, Any]) -> None:
        self.items.append(item)


class Bound:
    """A :class:`Script` bound to a client: call it with its KEYS and ARGV by name."""

    __slots__ = ("_args", "_keys", "_redis", "script")

    def __init__(self, script: Script, redis: Redis) -> None:
        self.script = script
        self._redis = redis
        #: The names a call must give (checked at each call: a misnamed one fails loud).
        self._keys = frozenset(script.keys)
        self._args = frozenset(script.args) - {"items"}

    def __repr__(self) -> str:
        return f"<Bound {self.script.name}.lua>"

    def batch(self) -> Batch:
        """An empty batch of items for one call."""
        return Batch(len(self.script.keys) + 1)

    async def __call__(
        self,
        batch: Batch | None = None,
        *,
        keys: Mapping[str, str],
        args: Mapping[str, str | int | float],
        replicas: Replicas | None = None,
    ) -> Any:
        """Run the script; ``batch`` gives the items (ARGV ``items``) and their keys.
        With ``replicas``, its answer comes once they have its writes (WAIT, on the same
        connection), else NotReplicated is raised.

        By digest (EVALSHA); the script is loaded when Redis says NOSCRIPT (the first
        call, or Redis restarted or failed over since), and the call made again."""
        script = self.script
        if keys.keys() != self._keys or args.keys() != self._args:
            raise TypeError(
                f"{script.name}.lua takes KEYS {script.keys} and ARGV {script.args}; "
                f"got {tuple(keys)} and {tuple(args)}"
            )
        if (batch is not None) != script.items:
            raise TypeError(f"{script.name}.lua takes {'a' if script.items else 'no'} batch")
        names: list[str] = [keys[name] for name in script.keys]
        values: list[str | int | float | bytes] = []
        for name in script.args:
            if name == "items":
                assert batch is not None
                values.append(orjson.dumps(batch.items))
            else:
                values.append(args[name])
        if batch is not None:
            names += batch.keys
        try:
            return await self._run(names, values, replicas)
        except NoScriptError:
            await self._redis.script_load(script.text)
        return await self._run(names, values, replicas)

    async def _run(
        self, names: list[str], values: list[str | int | float | bytes], replicas: Replicas | None
    ) -> Any:
        if replicas is None:
            return await self._redis.evalsha(self.script.sha, len(names), *names, *values)
        # EVALSHA then WAIT on one connection (on a cluster, to the master of the keys'
        # slot, found from the first: every key of a script is in one slot), so WAIT
        # counts these writes.
        evalsha = ("EVALSHA", self.script.sha, len(names), *names, *values)
        (answer,) = await write(self._redis, names[0], [evalsha], replicas)
        return answer


#: Store accepted events and queue them (the API's group commit; on a cluster, one
#: partition's a call).
ENQUEUE = Script("enqueue", (), ("items", "cutoff_ms", "retention_s"))
#: Leases for requests to one destination, or why not (control slot: pause, cap).
ADMIT = Script("admit", ("leases", "pause"), ("items", "now_ms", "lease_ms", "max_in_flight"))
#: Mark one partition's stream entries delivering, or say why not.
TAKE = Script("take", ("stream",), ("items", "destination", "now_ms", "lease_ms"))
#: Undo take.lua's marks for requests that admit.lua refused (run side by side).
UNTAKE = Script("untake", (), ("items", "destination"))
#: Record answers for one partition's events, with all that follows, and ack the entries.
SETTLE = Script("settle", ("notifications",), ("items", "now_ms", "retention_s"))
#: What answers mean for their destinations (control slot: leases, rate, pause, health).
RELEASE = Script("release", ("health",), ("items", "now_ms"))
#: The control steps of the moment's settles and takes in one call: leases given back
#: (release.lua) before new ones are given (admit.lua).
CONTROL = compose("control", RELEASE, ADMIT)
#: Keep the entries and holds a worker has in one partition while its deliveries wait.
KEEP = Script(
    "keep", ("stream",), ("items", "consumer", "destination", "holders", "now_ms", "lease_ms")
)
#: Renew the leases of a worker's requests while they wait (control slot).
RENEW = Script("renew", ("leases",), ("holders", "now_ms", "lease_ms"))
#: One partition's due retries back into their streams.
MOVE_DUE = Script("move_due", (), ("items", "now_ms", "limit"))
#: Dead letters of one partition back into its stream.
REPLAY = Script("replay", ("dead", "stream"), ("items", "destination"))
#: A slot under a sliding-window rate limit.
ACQUIRE = Script(
    "acquire", ("log", "pause"), ("now_ms", "count", "period_ms", "request", "hold_ms", "poll_ms")
)
