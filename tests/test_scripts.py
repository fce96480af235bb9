"""The script loader (relay.scripts), and the rules every script keeps: it touches only
keys it was given in KEYS (what Redis Cluster routes by), and every call's KEYS hash to
one slot (a partition's, or the control keys'; on one Redis an enqueue may take several
partitions'). Against a real redis-server, watched with MONITOR while a worker runs
every kind of delivery."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from relay import redis_keys, scripts
from relay.deadletters import replay_dead_letters
from relay.errors import StoreUnavailable
from relay.hooks import HookStore
from relay.models import Contact, DeliveryStatus
from relay.queue import DeliveryQueue, Entry
from relay.scripts import Batch, Script
from relay.settings import Settings
from relay.store import EventStore, NewEvent
from relay.worker import Worker
from tests.events import new_lead
from tests.fakes import CONVEYOUR_TOKEN, FakeConveyour, FakeReceiver
from tests.redis_server import RedisServer

ALL = [
    scripts.ACQUIRE,
    scripts.ADMIT,
    scripts.ENQUEUE,
    scripts.KEEP,
    scripts.MOVE_DUE,
    scripts.RELEASE,
    scripts.RENEW,
    scripts.REPLAY,
    scripts.SETTLE,
    scripts.TAKE,
    scripts.UNTAKE,
]
#: Scripts whose parts (of ALL) run only inside them (relay.scripts.Composed).
COMPOSED = [scripts.CONTROL]


def test_every_file_of_relay_lua_is_a_declared_script() -> None:
    files = {p.stem for p in Path(scripts.__file__).with_name("lua").glob("*.lua")}
    assert files == {s.name for s in ALL}


def test_a_script_must_declare_the_names_its_file_gives() -> None:
    with pytest.raises(ValueError, match=r"take\.lua names KEYS: .stream, then"):
        Script("take", ("leases", "stream"), scripts.TAKE.args)
    with pytest.raises(ValueError, match="ARGV"):
        Script("keep", scripts.KEEP.keys, ("consumer", "entries"))


def test_the_shared_names_come_first_on_one_line() -> None:
    text = scripts.TAKE.text
    first, rest = text.split("\n", 1)
    assert first.startswith("local DATA, STATUS, HOLDER")
    assert "'delivering'" in first
    assert f"'{redis_keys.PARKED_FIELD}'" in first
    assert rest.startswith("-- take:")  # the file's own lines follow, unchanged


async def test_a_call_gives_exactly_the_declared_names(redis: Redis) -> None:
    move_due = scripts.MOVE_DUE.bind(redis)
    with pytest.raises(TypeError, match="takes KEYS"):
        await move_due(move_due.batch(), keys={"stream": "x"}, args={"now_ms": 0, "limit": 1})
    with pytest.raises(TypeError, match="takes KEYS"):
        await move_due(move_due.batch(), keys={}, args={"now_ms": 0})
    with pytest.raises(TypeError, match="takes a batch"):
        await move_due(keys={}, args={"now_ms": 0, "limit": 1})
    assert await move_due(move_due.batch(), keys={}, args={"now_ms": 0, "limit": 1}) == 0


async def test_a_redis_that_cannot_serve_a_script_is_store_unavailable(
    own_redis: Redis,
) -> None:
    # An error reply that means "not now" (here OOM) is StoreUnavailable, which the
    # callers wait out; any other reply error stays what redis-py raised.
    move_due = scripts.MOVE_DUE.bind(own_redis)

    async def call() -> object:
        batch = move_due.batch()
        retries, stream = batch.key("{relay:0}:retry:d"), batch.key("{relay:0}:q:d")
        batch.add({"retries": retries, "stream": stream})
        return await move_due(batch, keys={}, args={"now_ms": 10, "limit": 10})

    assert await call() == 0  # loaded: nothing due
    await own_redis.zadd("{relay:0}:retry:d", {"e": 1})  # due: the call writes
    await own_redis.config_set("maxmemory", "1")
    try:
        with pytest.raises(StoreUnavailable, match="OOM"):
            await call()
    finally:
        await own_redis.config_set("maxmemory", "0")
    await own_redis.set("{relay:0}:q:d", "not a stream")  # its XADD fails: WRONGTYPE
    with pytest.raises(ResponseError) as raised:
        await call()
    assert not isinstance(raised.value, StoreUnavailable)


def test_a_batch_names_each_key_once_after_the_script_s_own() -> None:
    batch = Batch(first=3)
    assert [batch.key("a"), batch.key("b"), batch.key("a")] == [3, 4, 3]
    assert batch.keys == ["a", "b"]


async def test_a_composed_call_runs_its_parts_in_order_and_answers_in_item_order(
    redis: Redis,
) -> None:
    # CONTROL: release.lua, then admit.lua. One lease at most: the lease "a" gives back
    # in the call is the one "b" gets in it (admit.lua first would say "full"); an item
    # key of release.lua (its rate log) keeps its place behind the call's named keys.
    leases, rate = redis_keys.inflight("crm"), redis_keys.rate("crm")
    await redis.zadd(leases, {"a": 10**15})
    await redis.zadd(rate, {"r1": 10**15})
    control = scripts.CONTROL.bind(redis)
    batch = control.batch()
    batch.add({"part": "admit", "holder": "b"})
    release = {"destination": "crm", "holder": "a", "leases": batch.key(leases)}
    batch.add({"part": "release", **release, "rate": batch.key(rate), "sent": ["r1"]})
    batch.add({"part": "admit", "holder": "c"})
    keys = {"health": redis_keys.HEALTH, "leases": leases, "pause": redis_keys.paused("crm")}
    args = {"now_ms": 1000, "lease_ms": 5000, "max_in_flight": 1}
    assert await control(batch, keys=keys, args=args) == [["ok"], 1, ["full"]]
    assert await redis.zrange(leases, 0, -1, withscores=True) == [("b", 6000.0)]
    assert await redis.zscore(rate, "r1") == 1000
    # A part with no items is not run: no lease lapsed here (admit.lua would drop "b").
    only = control.batch()
    only.add({"part": "release", **release, "leases": only.key(leases)})
    assert await control(only, keys=keys, args={**args, "now_ms": 10**6}) == [1]
    assert await redis.zrange(leases, 0, -1) == ["b"]


def test_a_composed_script_is_made_of_scripts_of_items() -> None:
    assert scripts.CONTROL.keys == ("health", "leases", "pause")
    assert scripts.CONTROL.args == ("items", "now_ms", "lease_ms", "max_in_flight")
    assert scripts.CONTROL.text.startswith(scripts.TAKE.text.split("\n", 1)[0])
    with pytest.raises(ValueError, match="items"):
        scripts.compose("both", scripts.RELEASE, scripts.RENEW)


# --- every key a script touches is one it was given --------------------------------------

_TOKEN = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|.)")
_SIMPLE = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b"}


def _unquote(raw: bytes) -> bytes:
    """A MONITOR argument as Redis quoted it (sdscatrepr), back to its bytes."""

    def one(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        if code.startswith(b"x") and len(code) == 3:
            return bytes([int(code[1:], 16)])
        return _SIMPLE.get(code, code)

    return _ESCAPE.sub(one, raw)


@contextlib.asynccontextmanager
async def monitor(port: int) -> AsyncIterator[list[bytes]]:
    """Every line MONITOR shows while the block runs."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"MONITOR\r\n")
    assert await reader.readline() == b"+OK\r\n"
    lines: list[bytes] = []

    async def read() -> None:
        while line := await reader.readline():
            lines.append(line.rstrip(b"\r\n").removeprefix(b"+"))

    task = asyncio.create_task(read())
    try:
        yield lines
    finally:
        await asyncio.sleep(0.2)  # the last lines on their way
        task.cancel()
        writer.close()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _undeclared(redis: Redis, lines: list[bytes]) -> tuple[dict[str, int], list[str]]:
    """Scripts run (by digest: calls), every key a script's command touched that its
    call did not name in KEYS, and every call whose KEYS span several slots (what a
    cluster refuses: CROSSSLOT) but an enqueue's."""
    names = {s.sha: s.name for s in [*ALL, *COMPOSED]}
    calls: dict[str, int] = {}
    problems: list[str] = []
    declared: set[bytes] | None = None
    script = ""
    for line in lines:
        where, _, rest = line.partition(b"] ")
        args = [_unquote(t) for t in _TOKEN.findall(rest)]
        if not where.endswith(b" lua"):
            declared = None
            if args and args[0].lower() == b"evalsha":
                script = names.get(args[1].decode(), args[1].decode())
                calls[script] = calls.get(script, 0) + 1
                declared = set(args[3 : 3 + int(args[2])])
                slots = {key_slot(key) for key in declared}
                # On one Redis (here) an enqueue takes every partition's events at once
                # (relay.store); on a cluster one a partition, or CROSSSLOT would fail
                # the cluster's ingest (tests/test_topologies.py).
                if len(slots) > 1 and script != "enqueue":
                    problems.append(f"{script}.lua: KEYS in slots {sorted(slots)}")
            continue
        assert declared is not None, f"a script's command with no EVALSHA before it: {line!r}"
        if args[0].upper() == b"TIME":  # the one command scripts run with no key
            continue
        keys = cast(list[str], await redis.command_getkeys(*args))
        for key in keys:
            if key.encode() not in declared:
                problems.append(f"{script}.lua: {args[0].decode()} {key}")
    return calls, problems


async def test_every_key_a_script_touches_is_one_its_call_named(
    redis_server: RedisServer, redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    # Hook notifications go to a receiver of their own: the crm receiver's scripted
    # answers (a retry, a pause, a dead letter) are for crm's requests alone.
    async with (
        FakeReceiver() as receiver,
        FakeReceiver() as subscriber,
        FakeConveyour() as conveyour,
    ):
        settings = make_settings(f"""
claim_after_s = 0.2
[destinations.crm]
type = "webhook"
url = "{receiver.url}/crm"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
events = ["lead"]
rate_limit = "50/s"
timeout_s = 0.5
retry_schedule = [0.1]
[destinations.cy]
type = "conveyour"
base_url = "{conveyour.url}"
token = "{CONVEYOUR_TOKEN}"
events = ["lead"]
batch_size = 3
[hooks]
allow_private_targets = true
""")
        await HookStore(redis).create(
            key_id="key_x", event="lead.delivered", target_url=f"{subscriber.url}/done"
        )
        receiver.script(status=503)  # a retry
        receiver.script(status=429, headers={"Retry-After": "1"})  # a pause, kept through
        receiver.script(status=400)  # a dead letter
        store = EventStore(redis, retention_s=60, partitions=16)
        same = Contact(email="same@example.com")
        events = [
            *(new_lead("", "crm", "cy", payload=same) for _ in range(3)),  # one parked
            # in partitions of their own: a take or a settle of several spans them
            *(new_lead(f"p{i}@example.com", "crm", "cy", partition=i + 1) for i in range(4)),
        ]
        async with monitor(redis_server.port) as lines:
            await store.enqueue(events[:1], remember=("{relay}:idem:key_x:abc", b"{}"))
            await store.enqueue(events[1:])
            await asyncio.wait_for(Worker(settings, redis=redis).run(drain=True), 30)
            assert await replay_dead_letters(redis, "crm", partitions=16) == 1
            await asyncio.wait_for(Worker(settings, redis=redis).run(drain=True), 30)
            # What a worker does when deliveries wait long (too quick here to be sure of).
            queue = DeliveryQueue(redis, retention_s=60, partitions=16)
            entries = [Entry.of("1-0", events[1].id), Entry.of("1-0", events[4].id)]
            await queue.keep("crm", "w", entries, ["h"], lease_ms=1_000)
            # A take refused a lease (none is free) undoes its partition step's marks.
            await store.enqueue([new_lead("late@example.com", "crm")])
            read = await queue.read("crm", "w", count=10, block_ms=1)
            taken = await queue.take("crm", [("h2", read)], lease_ms=1_000, max_in_flight=0)
            assert [t.state for t in taken] == ["full"]
        assert await _event_statuses(store, events) == {"delivered"}
        calls, problems = await _undeclared(redis, lines)
    assert problems == []
    inside = {part.name for c in COMPOSED for part in c.parts}
    assert set(calls) == {s.name for s in ALL} - inside | {c.name for c in COMPOSED}, calls


async def _event_statuses(store: EventStore, events: list[NewEvent]) -> set[str]:
    views = [await store.get(e.id) for e in events]
    statuses = {d.status for v in views if v is not None for d in v.destinations}
    return {DeliveryStatus(s).value for s in statuses}
