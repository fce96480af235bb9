"""Leads posted without pause while a Redis topology fails over, and what came of each.

:func:`under_load` runs the real API (in process, on the topology's URL) and a worker
that delivers to a fake Convertr, keeps a few clients posting leads, each with an
address of its own, breaks the topology (``fail``, in a thread: the topology helpers
wait synchronously; it may return how long each of its steps took), waits until
ingest answers 202 again, then drains the queue and compares: every address that got
a 202 should be at the upstream. The
:class:`Outcome` says how many were accepted, delivered and lost, and how the clients
fared meanwhile (503s, and the longest run of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from relay import redis_keys
from relay.api import create_app
from relay.connect import redis_client
from relay.keystore import KeyStore
from relay.replicas import Replicas
from relay.settings import Settings, load_settings
from relay.worker import Worker
from tests.conftest import AppClient
from tests.events import PARTITIONS, total
from tests.fakes import FakeConvertr
from tests.redis_server import RedisServer
from tests.test_delivery_processes import convertr_toml
from tests.test_worker import drain

__all__ = ["Outcome", "kill_and_rejoin", "settings_for", "under_load"]

#: Clients posting at once (the machine may have two cores for everything).
POSTERS = 4
#: Each client's pause after an answer.
PAUSE_S = 0.03
#: Leads accepted before the topology is broken, and again after, to call ingest back.
ACCEPTED_EACH_SIDE = 30
#: The longest ingest may take to come back after ``fail`` returned.
RECOVERY_S = 30.0


def settings_for(url: str, convertr: FakeConvertr, tmp_path: Path, *, replicas: int) -> Settings:
    """One Convertr destination with a short visibility window (an entry whose worker
    lost its Redis mid-delivery is taken over after 3 s, not 40) and no rate limit to
    speak of."""
    toml = tmp_path / "relay.toml"
    toml.write_text(convertr_toml(convertr, 'timeout_s = 2\nrate_limit = "1000/s"'))
    return load_settings(
        env={"RELAY_REDIS_URL": url, "RELAY_CONFIG": str(toml)},
        claim_after_s=1,
        redis_min_replicas=replicas,
        redis_min_replicas_timeout_ms=1000,
    )


def kill_and_rejoin(
    kill: Callable[[], RedisServer], rejoin: Callable[[RedisServer], None]
) -> dict[str, float]:
    """A master killed, then started again once its replica was promoted; how long
    each took (a ``fail`` for :func:`under_load`)."""
    started = time.monotonic()
    killed = kill()
    promoted = time.monotonic()
    rejoin(killed)
    return {
        "replica promoted in": promoted - started,
        "old master back as a replica in": time.monotonic() - promoted,
    }


@dataclass
class Outcome:
    """What the clients saw, and what reached the upstream."""

    accepted: set[str] = field(default_factory=set)
    delivered: set[str] = field(default_factory=set)
    #: 503 answers, and the longest time from a first 503 to the next 202.
    unavailable: int = 0
    longest_503_s: float = 0.0
    #: Answers other than 202 and 503 ("status: body").
    other: list[str] = field(default_factory=list)
    #: How long ``fail`` took (the failover, as the topology saw it), and its steps.
    failover_s: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)
    #: ResourceWarnings (unclosed connections, sockets) found once the clients were
    #: closed (see under_load).
    unclosed: int = 0
    _since: float | None = None

    @property
    def lost(self) -> set[str]:
        """Accepted (202) and never delivered."""
        return self.accepted - self.delivered

    def saw(self, email: str, status: int, body: str) -> None:
        now = time.monotonic()
        if status == 202:
            self.accepted.add(email)
            if self._since is not None:
                self.longest_503_s = max(self.longest_503_s, now - self._since)
                self._since = None
        elif status == 503:
            self.unavailable += 1
            if self._since is None:
                self._since = now
        else:
            self.other.append(f"{status}: {body[:200]}")

    def report(self, what: str) -> str:
        return (
            f"{what}: accepted {len(self.accepted)}, delivered "
            f"{len(self.accepted & self.delivered)} of them, lost {len(self.lost)}; "
            f"{self.unavailable} answers 503, longest run "
            f"{self.longest_503_s:.1f} s; failover took {self.failover_s:.1f} s"
            + "".join(f", {step} {took:.1f} s" for step, took in self.steps.items())
            + (f"; {self.unclosed} unclosed-resource warnings" if self.unclosed else "")
        )


async def _post(
    client: TestClient[Any, Any], key: str, outcome: Outcome, n: int, step: int
) -> None:
    while True:
        email = f"lead{n}@example.com"
        n += step
        answer = await client.post("/v1/leads", json={"email": email},
                                   headers={"X-API-Key": key})  # fmt: skip
        outcome.saw(email, answer.status, await answer.text())
        # Paced (a client backing off a little after a 503): ingest alone is many
        # times faster than delivery here, and the drain must not take minutes.
        await asyncio.sleep(PAUSE_S)


async def _accepted_at_least(outcome: Outcome, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(outcome.accepted) < count:
        assert not outcome.other, outcome.other[:3]
        assert time.monotonic() < deadline, f"ingest did not come back: {outcome.report('so far')}"
        await asyncio.sleep(0.05)


async def _left(redis: Redis, outcome: Outcome) -> str:
    """What the queue still holds, for a drain that did not end."""
    streams = [redis_keys.queue("convertr", p) for p in range(PARTITIONS)]
    entries = [e for s in streams for e in (await redis.xrange(s, count=5) or [])][:5]
    pending = [await redis.xpending(s, redis_keys.CONSUMER_GROUP) for s in streams]
    retries = await total(redis, "ZCARD", functools.partial(redis_keys.retries, "convertr"))
    queued = await total(redis, "XLEN", functools.partial(redis_keys.queue, "convertr"))
    waiting = sum(int(p["pending"]) for p in pending)
    return (
        f"{queued} entries, first {entries}; {waiting} pending; "
        f"{retries} retries; {outcome.report('load')}"
    )


async def under_load(
    settings: Settings,
    convertr: FakeConvertr,
    aiohttp_client: AppClient,
    fail: Callable[[], dict[str, float] | None],
) -> Outcome:
    """Break the topology with ``fail`` while leads are posted and delivered; see the
    module docstring."""
    assert settings.redis_url is not None
    url = settings.redis_url.get_secret_value()
    api_redis, worker_redis = redis_client(url), redis_client(url)
    outcome = Outcome()
    try:
        _, key = await KeyStore(api_redis, replicas=Replicas.of(settings)).create(
            name="load", scopes=["write:leads"]
        )
        client = await aiohttp_client(create_app(settings, redis=api_redis))
        worker = Worker(settings, redis=worker_redis, concurrency=4)
        delivering = asyncio.create_task(worker.run())
        posters = [
            asyncio.create_task(_post(client, key, outcome, n, POSTERS)) for n in range(POSTERS)
        ]
        try:
            await _accepted_at_least(outcome, ACCEPTED_EACH_SIDE, RECOVERY_S)
            started = time.monotonic()
            steps = await asyncio.to_thread(fail)
            outcome.steps = steps or {}
            outcome.failover_s = time.monotonic() - started
            after = len(outcome.accepted) + ACCEPTED_EACH_SIDE
            await _accepted_at_least(outcome, after, RECOVERY_S)
        finally:
            for task in posters:
                task.cancel()
            for task in posters:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            worker.stop()
            await asyncio.wait_for(delivering, 30)
            await client.close()  # the API's listeners end before their client closes
        # What the worker left claimed when Redis went is taken over after its window.
        outcome.delivered = {lead["fields"]["email"] for lead in convertr.leads}
        try:
            await drain(settings, worker_redis, timeout_s=60)
        except TimeoutError:
            raise AssertionError(f"not drained: {await _left(worker_redis, outcome)}") from None
        outcome.delivered = {lead["fields"]["email"] for lead in convertr.leads}
        return outcome
    finally:
        await api_redis.aclose()
        await worker_redis.aclose()
        # A connection dropped unclosed during the failover (redis-py's Sentinel lost
        # sentinels from its list that way: relay.connect._Sentinel) is collected and
        # counted here, while this test's loop runs (the tests assert none), rather
        # than warned of in whichever later test the collector finds it.
        with warnings.catch_warnings(record=True) as found:
            warnings.simplefilter("always", ResourceWarning)
            gc.collect()
        outcome.unclosed = sum(issubclass(w.category, ResourceWarning) for w in found)
