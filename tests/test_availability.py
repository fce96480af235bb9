"""RedisWatch (an outage's log lines, its backoff) and Supervisor (dead loops restarted)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis
from redis.exceptions import ResponseError

import relay.adapters
import relay.worker
from relay.api import create_app
from relay.availability import RedisWatch, Supervisor
from relay.commands.serve import in_process_worker
from relay.errors import StoreUnavailable
from relay.invalidation import listen
from relay.queue import DeliveryQueue
from relay.settings import Settings
from relay.store import EventStore
from relay.worker import Worker
from tests.events import new_lead
from tests.fakes import FakeConvertr, fake_convertr
from tests.test_delivery_processes import convertr_toml

__all__ = ["fake_convertr"]  # fixture used below

#: What the Redis client raises for a refused connection (relay.connect).
DOWN = StoreUnavailable("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "relay.redis"]


def test_an_outage_is_one_line_when_it_starts_one_a_minute_and_one_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    watch = RedisWatch(clock=clock)
    watch.ok()  # up and well: nothing to say
    assert lines(caplog) == []
    for _ in range(130 * 4):  # 130 s of failures, four loops every second between them
        watch.failed(DOWN)
        clock.now += 0.25
    assert not watch.up
    watch.ok()  # the first success: not yet the end (calls keep failing meanwhile?)
    assert not watch.up
    clock.now += 6
    watch.ok()  # nothing failed for 6 s: it is over
    watch.ok()
    said = lines(caplog)
    assert len(said) == 4, said
    assert said[0].startswith("Redis went away (Error 111 connecting")
    assert said[1].startswith("Redis still unavailable after 1 min 0 s")
    assert said[2].startswith("Redis still unavailable after 2 min 0 s")
    assert said[3] == "Redis is back after 2 min 10 s"
    assert watch.up
    assert [r.exc_info for r in caplog.records] == [None] * 4  # no traceback


def test_some_calls_failing_while_others_work_is_one_outage_not_many(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    watch = RedisWatch(clock=clock)
    refused = StoreUnavailable("command not allowed when used memory > 'maxmemory'")
    for _ in range(180):  # 3 min: writes refused every second, reads served in between
        watch.failed(refused)
        clock.now += 0.5
        watch.ok()
        clock.now += 0.5
    said = lines(caplog)
    assert [s.split(" (")[0].split(" after")[0] for s in said] == [
        "Redis went away",
        "Redis still unavailable",
        "Redis still unavailable",
    ], said
    for _ in range(12):  # then only successes, for 6 s
        clock.now += 0.5
        watch.ok()
    assert lines(caplog)[3:] == ["Redis is back after 2 min 59 s"]


def test_the_pause_between_tries_grows_to_a_cap_and_starts_over_after_an_outage() -> None:
    clock = Clock()
    watch = RedisWatch(clock=clock)
    pauses = [watch.failed(DOWN) for _ in range(12)]
    assert pauses[0] <= 0.1
    assert max(pauses) <= 2.0
    assert min(pauses[-3:]) >= 1.0  # at the cap (with jitter)
    clock.now += 6
    watch.ok()
    assert watch.up
    assert watch.failed(DOWN) <= 0.1


async def test_start_up_calls_wait_until_redis_answers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    answers: list[BaseException | str] = [DOWN, DOWN, DOWN, "PONG"]

    async def ping() -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    clock = Clock()
    watch = RedisWatch(clock=clock)
    assert await watch.call(ping) == "PONG"
    assert answers == []
    clock.now += 6  # the loops' successes that follow end the outage
    watch.ok()
    said = lines(caplog)
    assert [s.split(" (")[0].split(" after")[0] for s in said] == [
        "Redis went away",
        "Redis is back",
    ]


async def test_only_store_unavailable_is_waited_out() -> None:
    # Anything else (a WRONGTYPE, a script's error) is a bug: it rises at once, to the
    # loop's Supervisor, which logs the traceback.
    calls = 0

    async def wrong() -> str:
        nonlocal calls
        calls += 1
        raise ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")

    watch = RedisWatch()
    with pytest.raises(ResponseError):
        await watch.call(wrong)
    with pytest.raises(ResponseError):
        await watch.repeat(wrong)
    assert calls == 2
    assert watch.up


async def test_a_dying_coroutine_is_restarted_with_one_traceback_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError(f"bug number {runs}")

    supervisor = Supervisor("the test loop")
    await asyncio.wait_for(supervisor.run(flaky), 10)
    assert runs == 4
    assert supervisor.deaths == 3
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].getMessage().startswith("the test loop died; restarting it in 0.1 s")
    assert errors[0].exc_info is not None
    assert "bug number 1" in str(errors[0].exc_info[1])


async def test_stop_ends_the_wait_before_a_restart() -> None:
    stopping = asyncio.Event()

    async def dies() -> None:
        stopping.set()
        raise RuntimeError("bug")

    supervisor = Supervisor("the test loop")
    supervisor.deaths = 20  # its next pause would be 30 s
    await asyncio.wait_for(supervisor.run(dies, stopping=stopping), 5)
    assert not supervisor.running


async def test_a_worker_loop_that_dies_is_restarted(
    make_settings: Callable[..., Settings],
    fake_convertr: FakeConvertr,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(convertr_toml(fake_convertr))
    read = DeliveryQueue.read
    bugs = 0

    async def buggy(self: DeliveryQueue, destination: str, *args: Any, **kw: Any) -> Any:
        nonlocal bugs
        if destination == "convertr" and bugs < 2:
            bugs += 1
            raise KeyError("a bug in the read loop")
        return await read(self, destination, *args, **kw)

    monkeypatch.setattr(DeliveryQueue, "read", buggy)
    event = new_lead("ada@example.com", "convertr")
    await EventStore(redis, retention_s=3600, partitions=16).enqueue([event])
    await asyncio.wait_for(Worker(settings, redis=redis).run(drain=True), 20)
    assert [lead["fields"]["email"] for lead in fake_convertr.leads] == ["ada@example.com"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    assert "worker loop 'reading convertr' died" in errors[0]


AppClient = Callable[..., Awaitable[TestClient[Any, Any]]]


async def test_serve_refuses_ingest_while_its_worker_is_dead_and_restarts_it(
    make_settings: Callable[..., Settings],
    fake_convertr: FakeConvertr,
    redis: Redis,
    aiohttp_client: AppClient,
    make_key: Callable[..., Awaitable[str]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(convertr_toml(fake_convertr))
    broken = True
    deaths = 0
    make_adapter = relay.adapters.make_adapter

    def failing(*args: Any, **kw: Any) -> Any:
        nonlocal deaths
        if broken:
            deaths += 1
            raise RuntimeError("the worker cannot start")
        return make_adapter(*args, **kw)

    monkeypatch.setattr(relay.worker, "make_adapter", failing)
    app = create_app(settings, redis=redis)
    app.cleanup_ctx.append(in_process_worker)
    client = await aiohttp_client(app)
    key = await make_key("write:leads")
    headers = {"X-API-Key": key}
    for _ in range(200):
        if deaths >= 3:
            break
        await asyncio.sleep(0.05)
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["delivery"] == "restarting"
    refused = await client.post("/v1/leads", json={"email": "a@example.com"}, headers=headers)
    assert refused.status == 503
    assert refused.content_type == "application/problem+json"
    assert "delivery worker" in (await refused.json())["detail"]

    broken = False
    for _ in range(200):
        if (await client.get("/readyz")).status == 200:
            break
        await asyncio.sleep(0.05)
    ready = await client.get("/readyz")
    assert ready.status == 200
    (seen,) = (await ready.json())["workers"]  # its heartbeat
    assert set(seen) == {"host", "pid", "last_seen"}
    accepted = await client.post("/v1/leads", json={"email": "b@example.com"}, headers=headers)
    assert accepted.status == 202
    for _ in range(200):
        if fake_convertr.leads:
            break
        await asyncio.sleep(0.05)
    assert [lead["fields"]["email"] for lead in fake_convertr.leads] == ["b@example.com"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # one traceback a minute
    assert "in-process delivery worker died" in errors[0].getMessage()


@pytest.mark.parametrize("swallowed_as", [None, DOWN])
async def test_a_loop_stops_even_when_its_client_swallows_the_cancellation(
    swallowed_as: Exception | None,
) -> None:
    async def step() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if swallowed_as is not None:  # what a Redis client may make of it
                raise swallowed_as from None

    task = asyncio.create_task(RedisWatch().repeat(step))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.cancelled()


class _SwallowingPubSub:
    """A pub/sub that swallows a cancellation once, in ``subscribe`` or in a read (which
    then answers "no message"), as redis-py's can on Python 3.11: ``asyncio.wait_for``
    around a write that finished in the same turn of the loop returns its result."""

    def __init__(self, swallow_in: str) -> None:
        self.swallow_in = swallow_in
        self.reads = 0
        self.swallowed = 0

    async def _wait(self, seconds: float) -> None:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            if self.swallowed:  # once: a second cancellation gets through
                raise
            self.swallowed += 1

    async def subscribe(self, channel: str) -> None:
        if self.swallow_in == "subscribe":
            await self._wait(0.2)

    async def get_message(
        self,
        ignore_subscribe_messages: bool = False,
        timeout: float = 0.0,  # noqa: ASYNC109 (redis-py's signature)
    ) -> dict[str, Any] | None:
        self.reads += 1
        if self.reads == 1:
            return {"type": "subscribe", "data": 1}
        await self._wait(timeout)
        return None

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize(
    ("swallow_in", "states", "reads"),
    [("subscribe", ["down"], 1), ("read", ["up", "down"], 2)],
)
async def test_an_invalidation_listener_stops_even_when_its_client_swallows_the_cancellation(
    swallow_in: str, states: list[str], reads: int
) -> None:
    pubsub = _SwallowingPubSub(swallow_in)

    class Client:
        def pubsub(self) -> _SwallowingPubSub:
            return pubsub

    seen: list[str] = []
    task = asyncio.create_task(
        listen(
            cast(Redis, Client()),
            "channel",
            on_message=seen.append,
            on_up=lambda: seen.append("up"),
            on_down=lambda: seen.append("down"),
            watch=RedisWatch(),
        )
    )
    await asyncio.sleep(0.05)  # subscribing, or subscribed and waiting for a message
    task.cancel()
    await asyncio.wait({task}, timeout=0.5)  # reads are 1 s: it stops at the one cancelled
    assert task.cancelled()
    assert seen == states
    assert (pubsub.reads, pubsub.swallowed) == (reads, 1)
