"""Healthy deliveries are sent once (issue 12): entries that wait stay claimed.

Each test shortens the visibility window (``RELAY_CLAIM_AFTER_S`` 1 s plus a 1 s
``timeout_s``) and makes the worker wait longer than it: a 429 pause, a slow rate
limit, retried 5xx answers across several workers. The fake upstream counts the
copies it answered 2xx; a retried 5xx is not a duplicate, a second lead is.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from redis.asyncio import Redis

from relay.models import Lead
from relay.store import EventStore
from tests.events import new_lead
from tests.fakes import (
    CONVEYOUR_TOKEN,
    FakeConvertr,
    FakeConveyour,
    FakeReceiver,
    Handler,
    Recorded,
)
from tests.procs import clean_env
from tests.redis_server import RedisServer
from tests.test_delivery_processes import convertr_toml, enqueue, start_worker, statuses

pytestmark = pytest.mark.slow

#: The fields sent, so that each contact's order can be read off the leads.
_FIELDS = '\n[destinations.convertr.fields]\nemail = "email"\ncompany = "company"\n'


async def run_workers(tmp_path: Path, redis_server: RedisServer, workers: int, *args: str) -> None:
    env = clean_env(RELAY_REDIS_URL=redis_server.url, RELAY_CLAIM_AFTER_S="1")
    procs = [await start_worker(tmp_path, env, "--drain", *args) for _ in range(workers)]
    results = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 45)
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err.decode()


def copies(fake: FakeConvertr) -> Counter[tuple[str, str]]:
    """How many times each (contact, sequence number) was answered 2xx."""
    return Counter((lead["fields"]["email"], lead["fields"]["company"]) for lead in fake.leads)


def leads(people: int, each: int) -> list[Lead]:
    return [
        Lead(email=f"p{n}@example.com", company=str(s)) for s in range(each) for n in range(people)
    ]


def assert_once_in_order(fake: FakeConvertr, sent: list[Lead], label: str) -> None:
    counts = copies(fake)
    twice = sum(1 for n in counts.values() if n > 1)
    print(f"{label}: {len(sent)} events, {len(fake.leads)} leads, {twice} sent twice")
    assert twice == 0, sorted(k for k, n in counts.items() if n > 1)
    assert len(counts) == len(sent)
    for who in {lead.email for lead in sent}:
        seen = [int(f["fields"]["company"]) for f in fake.leads if f["fields"]["email"] == who]
        assert seen == sorted(seen), (who, seen)


async def test_a_long_429_pause_sends_nothing_twice(
    tmp_path: Path, redis_server: RedisServer, redis: Redis
) -> None:
    async with FakeConvertr() as fake:
        (tmp_path / "relay.toml").write_text(convertr_toml(fake, "timeout_s = 1") + _FIELDS)
        fake.script(status=429, headers={"Retry-After": "5"})  # 5 s: past the 2 s window
        sent = leads(25, 4)
        ids = await enqueue(redis, leads=sent)
        await run_workers(tmp_path, redis_server, 1)
        assert set(await statuses(redis, ids)) == {"delivered"}
        assert_once_in_order(fake, sent, "429 with Retry-After: 5")


async def test_a_long_429_pause_sends_no_webhook_twice(
    tmp_path: Path, redis_server: RedisServer, redis: Redis
) -> None:
    async with FakeReceiver() as fake:
        (tmp_path / "relay.toml").write_text(f"""
[destinations.crm]
type = "webhook"
url = "{fake.url}/crm"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
events = ["lead"]
timeout_s = 1
retry_schedule = [0.2]
""")
        fake.script(status=429, headers={"Retry-After": "5"})  # 5 s: past the 2 s window
        sent = leads(25, 4)
        events = [new_lead("", "crm", payload=lead) for lead in sent]
        await EventStore(redis, retention_s=3600, partitions=16).enqueue(events)
        await run_workers(tmp_path, redis_server, 1)
        assert set(await statuses(redis, [e.id for e in events])) == {"delivered"}
        # The first request was answered 429 and sent again; every other once, in order.
        ids = [r.headers["webhook-id"] for r in fake.requests]
        twice = len(ids) - len(set(ids)) - 1
        print(f"webhook, 429 with Retry-After: 5: {len(sent)} events, {twice} sent twice")
        assert twice == 0
        assert set(ids) == {e.id for e in events}
        for who in {lead.email for lead in sent}:
            seen = [
                int(r.parsed["payload"]["company"])
                for r in fake.requests[1:]
                if r.parsed["payload"]["email"] == who
            ]
            assert seen == sorted(seen), (who, seen)


async def test_a_long_429_pause_sends_no_conveyour_batch_item_twice(
    tmp_path: Path, redis_server: RedisServer, redis: Redis
) -> None:
    async with FakeConveyour() as fake:
        (tmp_path / "relay.toml").write_text(f"""
[destinations.conveyour]
type = "conveyour"
base_url = "{fake.url}"
token = "{CONVEYOUR_TOKEN}"
events = ["lead"]
batch_size = 5
timeout_s = 1
retry_schedule = [0.2]
""")
        fake.script(status=429, headers={"Retry-After": "5"})  # 5 s: past the 2 s window
        sent = leads(25, 2)
        events = [new_lead("", "conveyour", payload=lead) for lead in sent]
        await EventStore(redis, retention_s=3600, partitions=16).enqueue(events)
        await run_workers(tmp_path, redis_server, 1)
        assert set(await statuses(redis, [e.id for e in events])) == {"delivered"}
        counts = Counter(orjson.dumps(item, option=orjson.OPT_SORT_KEYS) for item in fake.contacts)
        twice = sum(1 for n in counts.values() if n > 1)
        print(f"ConveYour batches, 429 with Retry-After: 5: {len(sent)} events, {twice} sent twice")
        assert twice == 0
        assert len(counts) == len(sent)


async def test_a_slow_rate_limit_with_many_tasks_sends_nothing_twice(
    tmp_path: Path, redis_server: RedisServer, redis: Redis
) -> None:
    async with FakeConvertr() as fake:
        extra = 'timeout_s = 1\nrate_limit = "2/s"'
        (tmp_path / "relay.toml").write_text(convertr_toml(fake, extra) + _FIELDS)
        sent = leads(15, 1)
        ids = await enqueue(redis, leads=sent)
        await run_workers(tmp_path, redis_server, 1, "--concurrency", "32")
        assert set(await statuses(redis, ids)) == {"delivered"}
        assert_once_in_order(fake, sent, "2/s with --concurrency 32")


class FlakyConvertr(FakeConvertr):
    """Answers 503 to the first tries of chosen leads, whoever sends them and whenever.

    Not a script by arrival order: with "the 3rd, 6th and 10th of every 10 answers are
    503" and a 10/s limit, each second's burst is 10 requests, the 503s fall on the same
    places of every burst, and an event retried can keep arriving at one of them: six
    503s running, and it is dead-lettered (correctly: its schedule is spent), about one
    run in 6 to 30 on a loaded machine. Failing by lead gives each event the same
    answers whatever the timing.
    """

    def __init__(self, fails: dict[tuple[str, str], int]) -> None:
        super().__init__()
        #: (email, company) -> 503s still to answer for that lead.
        self.fails = fails

    async def _answer(
        self, request: web.Request, handler: Handler, recorded: Recorded
    ) -> web.StreamResponse:
        form = recorded.parsed if isinstance(recorded.parsed, dict) else {}
        lead = (form.get("form[email]", ""), form.get("form[company]", ""))
        if self.fails.get(lead, 0) > 0:
            self.fails[lead] -= 1
            return web.Response(status=503)
        return await super()._answer(request, handler, recorded)


async def test_retried_5xx_across_workers_sends_nothing_twice(
    tmp_path: Path, redis_server: RedisServer, redis: Redis
) -> None:
    sent = leads(20, 3)
    # 3 leads in 10 answered 503 first (a third of those twice): 24 of 84 answers, retried.
    fails = {(str(lead.email), str(lead.company)): 0 for lead in sent}
    for i, lead in enumerate(fails):
        fails[lead] = {2: 1, 5: 1, 9: 2}.get(i % 10, 0)
    async with FlakyConvertr(dict(fails)) as fake:
        extra = 'timeout_s = 1\nrate_limit = "10/s"'
        toml = convertr_toml(fake, extra).replace("[0.2]", "[0.2, 0.2, 0.2, 0.2, 0.2]")
        (tmp_path / "relay.toml").write_text(toml + _FIELDS)
        ids = await enqueue(redis, leads=sent)
        await run_workers(tmp_path, redis_server, 4)
        assert Counter(await statuses(redis, ids)) == {"delivered": len(ids)}
        assert not any(fake.fails.values())  # every 503 was answered, and retried
        assert_once_in_order(fake, sent, "4 workers at 10/s, 3 leads in 10 answered 503 first")
