"""The worker against real Redis and fake upstreams that answer like UPSTREAMS.md."""

from __future__ import annotations

import asyncio
import functools
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
from aiolimiter import AsyncLimiter
from redis.asyncio import Redis

from relay import redis_keys
from relay.backlog import counts
from relay.connect import redis_client
from relay.deadletters import list_dead_letters, replay_dead_letters
from relay.delivery import Deliverer, _Stopping
from relay.hooks import HookStore
from relay.ids import partition_of
from relay.queue import DeliveryQueue
from relay.settings import Settings
from relay.store import EventStore
from relay.worker import Worker
from tests.events import new_lead, total
from tests.fakes import (
    CONVERTR_API_KEY,
    CONVEYOUR_TOKEN,
    FakeConvertr,
    FakeConveyour,
    FakeReceiver,
    fake_convertr,
    fake_conveyour,
)

__all__ = ["fake_convertr", "fake_conveyour"]  # fixtures used below


#: Quick retries, enough of them that the scripted failures below never use them up
#: (an event with more retryable failures than steps is dead-lettered).
FAST_RETRIES = "retry_schedule = [0.05, 0.05, 0.05, 0.05, 0.05]"


def toml_for(conveyour: FakeConveyour, convertr: FakeConvertr, *, extra: str = "") -> str:
    return f"""
[destinations.conveyour]
type = "conveyour"
base_url = "{conveyour.url}"
token = "{CONVEYOUR_TOKEN}"
events = ["contact", "lead"]
{FAST_RETRIES}
{extra}

[destinations.convertr]
type = "convertr"
base_url = "{convertr.url}"
api_key = "{CONVERTR_API_KEY}"
campaign_id = 123
form_id = 45
publisher_id = 6
events = ["lead"]
{FAST_RETRIES}
{extra}
"""


@pytest.fixture
def relay_settings(
    make_settings: Callable[..., Settings],
    fake_conveyour: FakeConveyour,
    fake_convertr: FakeConvertr,
) -> Settings:
    return make_settings(toml_for(fake_conveyour, fake_convertr))


async def drain(settings: Settings, redis: Redis, timeout_s: float = 20) -> Worker:
    worker = Worker(settings, redis=redis, concurrency=4)
    await asyncio.wait_for(worker.run(drain=True), timeout_s)
    return worker


PostLead = Callable[..., Awaitable[str]]


@pytest.fixture
def post_lead(app_client: Any, relay_settings: Settings, make_key: Any) -> PostLead:
    """POST a lead through the real API; returns its event id."""

    async def post(doc: dict[str, Any], path: str = "/v1/leads") -> str:
        client = await app_client(relay_settings)
        key = await make_key("write:leads", "write:contacts")
        resp = await client.post(path, json=doc, headers={"X-API-Key": key})
        assert resp.status == 202, await resp.text()
        event_id: str = (await resp.json())["id"]
        return event_id

    return post


async def test_lead_delivered_to_both_upstreams(
    relay_settings: Settings,
    redis: Redis,
    post_lead: PostLead,
    fake_conveyour: FakeConveyour,
    fake_convertr: FakeConvertr,
) -> None:
    event_id = await post_lead(
        {
            "email": "Ada@Example.com",
            "first_name": "Ada",
            "phone": "+44 7123 456789",
            "utm_source": "ads",
        }
    )
    worker = await drain(relay_settings, redis)
    assert "delivered=2" in repr(worker)
    assert fake_conveyour.contacts == [
        {
            "id": "$email",
            "traits": {
                "email": "ada@example.com",
                "mobile": "+447123456789",
                "first_name": "Ada",
                "utm_source": "ads",
            },
        }
    ]
    assert fake_convertr.leads[0]["fields"] == {
        "email": "ada@example.com",
        "firstName": "Ada",
        "telephone": "+447123456789",
    }
    view = await EventStore(redis, retention_s=60, partitions=16).get(event_id)
    assert view is not None
    assert view.status == "delivered"
    by_name = {d.name: d for d in view.destinations}
    convertr = by_name["convertr"].attempts
    assert [a["outcome"] for a in convertr] == ["delivered"]
    assert convertr[0]["status"] == 201
    assert convertr[0]["upstream_id"] == str(fake_convertr.leads[0]["id"])
    assert "utm_source" in convertr[0]["note"]  # left out: no mapping
    # Delivered entries are trimmed from the streams.
    assert await total(redis, "XLEN", functools.partial(redis_keys.queue, "convertr")) == 0


async def test_retry_then_success(
    relay_settings: Settings, redis: Redis, post_lead: PostLead, fake_convertr: FakeConvertr
) -> None:
    fake_convertr.script(status=500, body={"code": 500, "message": ""}, times=2)
    event_id = await post_lead({"email": "bo@example.com"})
    await drain(relay_settings, redis)
    view = await EventStore(redis, retention_s=60, partitions=16).get(event_id)
    assert view is not None
    attempts = next(d for d in view.destinations if d.name == "convertr").attempts
    assert [a["outcome"] for a in attempts] == ["retry", "retry", "delivered"]
    assert [a.get("status") for a in attempts] == [500, 500, 201]
    assert len(fake_convertr.leads) == 1


async def test_retry_after_is_honoured(
    relay_settings: Settings, redis: Redis, post_lead: PostLead, fake_convertr: FakeConvertr
) -> None:
    fake_convertr.script(status=429, headers={"Retry-After": "1"}, times=1)
    await post_lead({"email": "cy@example.com"})
    await drain(relay_settings, redis)
    lead_posts = [r for r in fake_convertr.requests if r.method == "POST"]
    assert len(lead_posts) == 2
    assert lead_posts[1].time - lead_posts[0].time >= 0.95


async def test_rejection_is_dead_lettered_then_replayed(
    relay_settings: Settings, redis: Redis, post_lead: PostLead, fake_convertr: FakeConvertr
) -> None:
    fake_convertr.script(
        status=400,
        body={
            "code": 400,
            "message": "Validation failed",
            "data": [{"fieldName": "form[email]", "message": "This value is not valid."}],
        },
    )
    event_id = await post_lead({"email": "di@example.com"})
    await drain(relay_settings, redis)
    assert [d.event_id for d in await list_dead_letters(redis, "convertr", partitions=16)] == [
        event_id
    ]
    view = await EventStore(redis, retention_s=60, partitions=16).get(event_id)
    assert view is not None
    dest = next(d for d in view.destinations if d.name == "convertr")
    assert dest.status == "dead"
    assert "Validation failed" in dest.attempts[0]["excerpt"]
    assert CONVERTR_API_KEY not in str(dest.attempts)

    assert await replay_dead_letters(redis, "convertr", [event_id], partitions=16) == 1
    await drain(relay_settings, redis)
    view = await EventStore(redis, retention_s=60, partitions=16).get(event_id)
    assert view is not None
    dest = next(d for d in view.destinations if d.name == "convertr")
    assert dest.status == "delivered"
    assert [a["outcome"] for a in dest.attempts] == ["rejected", "delivered"]
    assert await list_dead_letters(redis, "convertr", partitions=16) == []


async def test_rejected_credentials_keep_the_event_and_mark_unhealthy(
    make_settings: Callable[..., Settings],
    redis: Redis,
    app_client: Any,
    make_key: Any,
    fake_conveyour: FakeConveyour,
    fake_convertr: FakeConvertr,
) -> None:
    settings = make_settings(
        toml_for(fake_conveyour, fake_convertr)
        .replace(CONVERTR_API_KEY, "wrong-key-123")
        .replace(FAST_RETRIES, "")  # the default schedule
    )
    client = await app_client(settings)
    key = await make_key("write:leads")
    resp = await client.post(
        "/v1/leads", json={"email": "ed@example.com"}, headers={"X-API-Key": key}
    )
    event_id = (await resp.json())["id"]
    worker = Worker(settings, redis=redis)
    task = asyncio.create_task(worker.run())
    queue = DeliveryQueue(redis, retention_s=60, partitions=16)
    for _ in range(200):
        if "convertr" in await queue.health():
            break
        await asyncio.sleep(0.02)
    worker.stop()
    await asyncio.wait_for(task, 10)
    health = await queue.health()
    assert "401" in health["convertr"]["problem"]
    found = (await counts(redis, ["convertr"], partitions=16))["convertr"]
    assert (found.retrying, found.dead) == (1, 0), found
    retries = redis_keys.retries("convertr", partition_of(event_id))
    rows = await redis.zrange(retries, 0, -1, withscores=True)
    ((member, due),) = cast(list[tuple[str, float]], rows)
    assert member.startswith(event_id + redis_keys.RETRY_CONTACT_SEP)
    # The long end of the schedule: 600 s ± 20 % jitter, minutes rather than seconds.
    assert due / 1000 - time.time() > 0.8 * 600 - 5


async def test_dead_letters_over_http(
    relay_settings: Settings,
    redis: Redis,
    app_client: Any,
    make_key: Any,
    post_lead: PostLead,
    fake_convertr: FakeConvertr,
) -> None:
    fake_convertr.script(status=400, body={"code": 400, "message": "Validation failed", "data": []})
    event_id = await post_lead({"email": "fy@example.com"})
    await drain(relay_settings, redis)
    client = await app_client(relay_settings)
    admin = {"X-API-Key": await make_key("admin")}
    listed = await (await client.get("/v1/dead-letters", headers=admin)).json()
    assert [(d["destination"], d["event_id"]) for d in listed] == [("convertr", event_id)]
    only = await client.get("/v1/dead-letters?destination=nowhere", headers=admin)
    assert only.status == 422
    empty = await client.post("/v1/dead-letters/replay", json={}, headers=admin)
    assert empty.status == 422
    replay = await client.post(
        "/v1/dead-letters/replay", json={"all": True, "destination": "convertr"}, headers=admin
    )
    assert (await replay.json()) == {"replayed": 1}
    await drain(relay_settings, redis)
    ready = await (await client.get("/readyz")).json()
    assert ready["destinations"]["convertr"]["healthy"] is True
    event = await EventStore(redis, retention_s=60, partitions=16).get(event_id)
    assert event is not None
    assert event.status == "delivered"


async def test_per_contact_order_with_two_workers(
    make_settings: Callable[..., Settings],
    redis: Redis,
    redis_server: Any,
    app_client: Any,
    make_key: Any,
    fake_conveyour: FakeConveyour,
    fake_convertr: FakeConvertr,
) -> None:
    fields = '\n[destinations.convertr.fields]\nemail = "email"\ncompany = "company"\n'
    settings = make_settings(toml_for(fake_conveyour, fake_convertr) + fields)
    client = await app_client(settings)
    key = await make_key("write:leads")
    # Some answers fail first, so retries would reorder a contact's events if allowed to.
    fake_convertr.script(status=500, body={"code": 500, "message": ""}, times=3)
    fake_convertr.script(status=429, headers={"Retry-After": "0"}, times=1)
    people = [f"p{n}@example.com" for n in range(4)]
    for seq in range(5):
        batch = [{"email": who, "company": str(seq)} for who in people]
        resp = await client.post("/v1/leads?destination=convertr", json=batch,
                                 headers={"X-API-Key": key})  # fmt: skip
        assert resp.status == 202
    other = redis_client(redis_server.url)
    try:
        workers = [Worker(settings, redis=r, concurrency=4) for r in (redis, other)]
        await asyncio.wait_for(asyncio.gather(*(w.run(drain=True) for w in workers)), 30)
    finally:
        await other.aclose()
    for who in people:
        seen = [lead["fields"]["company"] for lead in fake_convertr.leads
                if lead["fields"]["email"] == who]  # fmt: skip
        assert seen == ["0", "1", "2", "3", "4"], (who, seen)


async def test_per_contact_order_without_a_rate_limit(
    make_settings: Callable[..., Settings],
    redis: Redis,
    redis_server: Any,
    app_client: Any,
    make_key: Any,
) -> None:
    # A destination without a rate limit takes the worker's short way (one script
    # loads the event, checks the contact's order and takes the lease): the same order.
    async with FakeReceiver() as receiver:
        settings = make_settings(
            f'[destinations.crm]\ntype = "webhook"\nurl = "{receiver.url}/crm"\n'
            'secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\nevents = ["lead"]\n'
            f"{FAST_RETRIES}\n"
        )
        client = await app_client(settings)
        key = await make_key("write:leads")
        receiver.script(status=500, body="busy", times=3)
        receiver.script(status=429, headers={"Retry-After": "0"}, times=1)
        people = [f"p{n}@example.com" for n in range(4)]
        for seq in range(5):
            batch = [{"email": who, "seq": str(seq)} for who in people]
            resp = await client.post("/v1/leads", json=batch, headers={"X-API-Key": key})
            assert resp.status == 202
        other = redis_client(redis_server.url)
        try:
            workers = [Worker(settings, redis=r, concurrency=4) for r in (redis, other)]
            await asyncio.wait_for(asyncio.gather(*(w.run(drain=True) for w in workers)), 30)
        finally:
            await other.aclose()
        delivered = [r.parsed for r in receiver.requests[4:]]  # after the scripted answers
        failed = [r.parsed for r in receiver.requests[:4]]
    for who in people:
        seen = [d["payload"]["traits"]["seq"] for d in delivered if d["payload"]["email"] == who]
        retried = [d["payload"]["traits"]["seq"] for d in failed if d["payload"]["email"] == who]
        # Each contact's deliveries in order; a failed one is retried before the next.
        assert sorted(set(seen)) == ["0", "1", "2", "3", "4"], (who, seen)
        assert seen == sorted(seen), (who, seen, retried)


@pytest.fixture
def batching_settings(
    make_settings: Callable[..., Settings],
    fake_conveyour: FakeConveyour,
    fake_convertr: FakeConvertr,
) -> Settings:
    """The fakes' settings, with ConveYour contacts sent up to 25 a call."""
    toml = toml_for(fake_conveyour, fake_convertr).replace(
        'events = ["contact", "lead"]', 'events = ["contact", "lead"]\nbatch_size = 25', 1
    )
    return make_settings(toml)


async def test_conveyour_batches_and_falls_back_to_single_sends(
    batching_settings: Settings,
    redis: Redis,
    app_client: Any,
    make_key: Any,
    fake_conveyour: FakeConveyour,
) -> None:
    settings = batching_settings
    client = await app_client(settings)
    key = {"X-API-Key": await make_key("write:contacts")}
    batch = [{"email": f"c{i}@example.com"} for i in range(5)]
    resp = await client.post("/v1/contacts", json=batch, headers=key)
    assert resp.status == 202
    await drain(settings, redis)
    assert len(fake_conveyour.requests) == 1
    assert len(fake_conveyour.requests[0].parsed["data"]) == 5

    # A rejected batch: every contact is then sent alone, and each is delivered.
    fake_conveyour.script(status=400, body={"status": "error", "message": "bad item"})
    resp = await client.post(
        "/v1/contacts", json=[{"email": f"d{i}@example.com"} for i in range(3)], headers=key
    )
    ids = [a["id"] for a in (await resp.json())["accepted"]]
    await drain(settings, redis)
    assert len(fake_conveyour.requests) == 1 + 1 + 3
    store = EventStore(redis, retention_s=60, partitions=16)
    for event_id in ids:
        view = await store.get(event_id)
        assert view is not None
        assert view.status == "delivered"


@pytest.mark.parametrize("path", ["webhook", "rate-limited", "batch", "notifications"])
async def test_max_in_flight_holds_on_every_path(
    path: str,
    redis_server: Any,
    redis: Redis,
    make_settings: Callable[..., Settings],
) -> None:
    # Two workers with room for 16 requests each, a slow upstream, a cap of 3: the
    # upstream never has more than 3 requests of the destination open at once.
    async with FakeReceiver() as receiver, FakeConveyour() as conveyour:
        receiver.script(delay_s=0.1, times=1000)
        conveyour.script(delay_s=0.1, times=1000)
        webhook = (
            f'type = "webhook"\nurl = "{receiver.url}/crm"\n'
            'secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"'
        )
        dest = {
            "webhook": webhook,
            "rate-limited": webhook + '\nrate_limit = "500/s"',
            "batch": (
                f'type = "conveyour"\nbase_url = "{conveyour.url}"\n'
                f'token = "{CONVEYOUR_TOKEN}"\nbatch_size = 2'
            ),
            "notifications": webhook + "\nenabled = false",
        }[path]
        settings = make_settings(f"""
[destinations.d]
{dest}
events = ["lead"]
max_in_flight = 3
[hooks]
allow_private_targets = true
max_in_flight = 3
""")
        if path == "notifications":
            await HookStore(redis).create(
                key_id="k", event="lead.received", target_url=f"{receiver.url}/hook"
            )
        store = EventStore(redis, retention_s=60, partitions=16)
        subscribers = await HookStore(redis).matching("lead.received")
        events = [new_lead(f"p{i}@example.com", "d") for i in range(24)]
        await store.enqueue(events, subscribers=subscribers)
        other = redis_client(redis_server.url)
        try:
            workers = [Worker(settings, redis=r, concurrency=16) for r in (redis, other)]
            await asyncio.wait_for(asyncio.gather(*(w.run(drain=True) for w in workers)), 30)
        finally:
            await other.aclose()
        fake = conveyour if path == "batch" else receiver
        assert len(fake.requests) == (12 if path == "batch" else 24)
        assert fake.most_at_once == 3, fake.most_at_once


async def test_stop_ends_the_wait_of_a_request_not_sent_yet(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    # SIGTERM finishes what is in flight; a request still waiting to be sent (here for
    # the next slot of a 1/min limit) gives up at once, its entry left for another worker.
    async with FakeReceiver() as receiver:
        settings = make_settings(f"""
[destinations.crm]
type = "webhook"
url = "{receiver.url}/crm"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
events = ["lead"]
rate_limit = "1/m"
""")
        await EventStore(redis, retention_s=60, partitions=16).enqueue(
            [new_lead(f"p{i}@example.com", "crm") for i in range(3)]
        )
        worker = Worker(settings, redis=redis)
        task = asyncio.create_task(worker.run())
        for _ in range(100):
            if receiver.requests:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # the next one is read and waits for the minute to pass
        started = time.monotonic()
        worker.stop()
        await asyncio.wait_for(task, 10)
        assert time.monotonic() - started < 3
        assert len(receiver.requests) == 1
    assert (
        await total(redis, "XLEN", functools.partial(redis_keys.queue, "crm")) == 2
    )  # still there, to be sent
    assert await redis.zcard(redis_keys.inflight("crm")) == 0
    assert await redis.zcard(redis_keys.rate("crm")) == 1  # only the one sent counts


async def test_a_request_that_finds_the_worker_stopping_leaves_no_wait_unawaited(
    make_settings: Callable[..., Settings],
) -> None:
    # A request whose turn comes after stop() gives up before it waits for a slot of
    # this process's smoother or sleeps: neither wait is made and left unawaited (a
    # RuntimeWarning when collected, which the cluster failover test met at its stop).
    settings = make_settings("""
[destinations.crm]
type = "webhook"
url = "http://127.0.0.1:9/crm"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
events = ["lead"]
rate_limit = "1/m"
""")
    stopping = asyncio.Event()
    stopping.set()
    deliverer = Deliverer(
        cast(DeliveryQueue, None),  # none of these is reached: the stop comes first
        configs={"crm": settings.destinations["crm"]},
        adapters={},
        hooks=cast(HookStore, None),
        watch=cast(Any, None),
        claim_after_s=1,
        limiter=cast(Any, None),
        local={"crm": AsyncLimiter(1, 60)},
        stopping=stopping,
    )
    with pytest.raises(_Stopping):
        await deliverer._rate("crm", [], stoppable=True)
    with pytest.raises(_Stopping):
        await deliverer._wait(5, stoppable=True)
    gc.collect()  # a coroutine never awaited would warn here: an error under -W error


async def test_entries_a_worker_claims_back_from_itself_are_not_sent_again(
    redis: Redis, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # When keeping its entries comes late (a starved loop), the worker's own housekeeping
    # claims them back from itself: they are held already, and must not go twice.
    async def late() -> None:
        return None

    monkeypatch.setattr(Worker, "_keep_held", lambda self: late())
    async with FakeReceiver() as receiver:
        # 4 at a time, each answer 1.8 s: the last 2 wait 1.8 s, then go; read at 0 and
        # never kept, they are claimed back at 2.2 s (the window), while under way.
        receiver.script(delay_s=1.8, times=10)
        settings = make_settings(f"""
claim_after_s = 0.2
[destinations.crm]
type = "webhook"
url = "{receiver.url}/crm"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
events = ["lead"]
timeout_s = 2
max_in_flight = 4
""")
        events = [new_lead(f"p{i}@example.com", "crm") for i in range(6)]
        await EventStore(redis, retention_s=60, partitions=16).enqueue(events)
        await asyncio.wait_for(Worker(settings, redis=redis).run(drain=True), 30)
        sent = [r.parsed["id"] for r in receiver.requests]
    assert sorted(sent) == sorted(e.id for e in events)  # each once
