"""GET /metrics in one process: counters move by exactly what happened, routes are
templates, the token, and the queue gauges read from Redis (the same as `relay status`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from relay import redis_keys
from relay.api import create_app
from relay.backlog import counts
from relay.commands.delivery import status
from relay.connect import redis_client
from relay.heartbeat import Heartbeat
from relay.models import DeliveryStatus
from relay.settings import Settings
from relay.store import EventStore
from tests.conftest import AppClient
from tests.events import new_lead, settle_next
from tests.fakes import FakeConvertr, fake_convertr, fake_conveyour
from tests.redis_server import free_port
from tests.scrape import Scrape
from tests.test_worker import drain, relay_settings

__all__ = ["fake_convertr", "fake_conveyour", "relay_settings"]  # fixtures used below

KeyMaker = Callable[..., Any]
TOKEN = "metrics-token-3c9e1f70a2"


async def scrape(client: TestClient[Any, Any], **headers: str) -> Scrape:
    resp = await client.get("/metrics", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return Scrape(await resp.text())


async def test_counters_move_by_exactly_what_happened(
    app_client: AppClient,
    relay_settings: Settings,
    redis: Redis,
    make_key: KeyMaker,
    fake_convertr: FakeConvertr,
) -> None:
    client = await app_client(relay_settings)
    live = {"X-API-Key": await make_key("write:leads")}
    test = {"X-API-Key": await make_key("write:leads", mode="test")}
    before = await scrape(client)

    for i in range(3):
        assert (
            await client.post("/v1/leads", json={"email": f"a{i}@x.io"}, headers=live)
        ).status == 202
    batch = [{"email": "b1@x.io"}, {"first_name": "nobody"}, {"email": "b2@x.io"}]
    assert (await client.post("/v1/leads", json=batch, headers=live)).status == 207
    assert (await client.post("/v1/leads", json={"phone": "12"}, headers=live)).status == 422
    assert (await client.post("/v1/leads", json=[{}, {}], headers=live)).status == 422
    assert (await client.post("/v1/leads", json={"email": "t@x.io"}, headers=test)).status == 202
    repeat = {**live, "Idempotency-Key": "once"}
    for _ in range(2):  # the repeat queues nothing
        assert (
            await client.post("/v1/leads", json={"email": "i@x.io"}, headers=repeat)
        ).status == 202
    assert (await client.post("/v1/leads", data=b"{", headers=live)).status == 415

    after = await scrape(client)
    accepted = "relay_events_accepted_total"
    assert after.moved(before, (accepted, {"type": "lead", "mode": "live"})) == 3 + 2 + 1
    assert after.moved(before, (accepted, {"type": "lead", "mode": "test"})) == 1
    assert after.moved(before, (accepted, {"type": "contact"})) == 0
    assert after.moved(before, ("relay_events_rejected_total", {"type": "lead"})) == 1 + 1 + 2
    requests = "relay_http_requests_total"
    leads = {"route": "/v1/leads", "method": "POST"}
    assert after.moved(before, (requests, {**leads, "status": "202"})) == 3 + 1 + 2
    assert after.moved(before, (requests, {**leads, "status": "207"})) == 1
    assert after.moved(before, (requests, {**leads, "status": "422"})) == 2
    assert after.moved(before, (requests, {**leads, "status": "415"})) == 1
    assert after.moved(before, (requests, {"route": "/metrics", "status": "200"})) == 1

    # Delivered: 6 live leads to both destinations; then one dead and one retried at convertr.
    await drain(relay_settings, redis)
    fake_convertr.script(status=400, body={"code": 400, "message": "no", "data": []})
    fake_convertr.script(status=503, body=b"busy")
    for email in ("dead@x.io", "retry@x.io"):
        assert (await client.post("/v1/leads", json={"email": email}, headers=live)).status == 202
    await drain(relay_settings, redis)
    done = await scrape(client)
    deliveries = "relay_deliveries_total"
    cv = {"destination": "convertr"}
    assert done.moved(after, (deliveries, {**cv, "outcome": "delivered"})) == 6 + 1
    assert done.moved(after, (deliveries, {**cv, "outcome": "dead"})) == 1
    assert done.moved(after, (deliveries, {**cv, "outcome": "retry"})) == 1
    assert done.moved(after, (deliveries, {**cv, "outcome": "credentials"})) == 0
    cy = {"destination": "conveyour"}
    assert done.moved(after, (deliveries, {**cy, "outcome": "delivered"})) == 8
    # One request per attempt; a latency for each event delivered.
    assert done.moved(after, ("relay_upstream_request_seconds_count", cv)) == 6 + 1 + 1 + 1
    assert done.moved(after, ("relay_event_delivery_latency_seconds_count", cv)) == 7
    assert done.moved(after, ("relay_event_delivery_latency_seconds_count", cy)) == 8
    assert done.types["relay_upstream_request_seconds"] == "histogram"
    assert done.types["relay_event_delivery_latency_seconds"] == "histogram"
    assert done.types["relay_deliveries"] == "counter"


async def test_rejected_credentials_count_as_credentials(
    app_client: AppClient,
    relay_settings: Settings,
    redis: Redis,
    make_key: KeyMaker,
    fake_convertr: FakeConvertr,
) -> None:
    client = await app_client(relay_settings)
    before = await scrape(client)
    fake_convertr.script(status=401, body={"code": 401, "message": "bad key"})
    key = {"X-API-Key": await make_key("write:leads")}
    assert (await client.post("/v1/leads", json={"email": "c@x.io"}, headers=key)).status == 202
    await drain(relay_settings, redis)
    after = await scrape(client)
    cv = {"destination": "convertr"}
    assert after.moved(before, ("relay_deliveries_total", {**cv, "outcome": "credentials"})) == 1
    assert after.moved(before, ("relay_deliveries_total", {**cv, "outcome": "delivered"})) == 1


async def test_latency_runs_from_the_write_to_redis(
    relay_settings: Settings, redis: Redis, app_client: AppClient
) -> None:
    """The event's accepted_ms is when it was written; the latency counts from there."""
    client = await app_client(relay_settings)
    before = await scrape(client)
    event = new_lead("lat@x.io", "convertr")
    written_ms = time.time() * 1000
    await EventStore(redis, retention_s=60, partitions=16).enqueue([event])
    key = redis_keys.event(event.id)
    data = orjson.loads(await redis.hget(key, redis_keys.EVENT_DATA_FIELD) or "")
    assert written_ms - 5 <= data["accepted_ms"] <= time.time() * 1000
    # As if it had been accepted 30 s ago.
    data["accepted_ms"] -= 30_000
    await redis.hset(key, redis_keys.EVENT_DATA_FIELD, orjson.dumps(data).decode())
    await drain(relay_settings, redis)
    after = await scrape(client)
    cv = {"destination": "convertr"}
    assert after.moved(before, ("relay_event_delivery_latency_seconds_count", cv)) == 1
    assert 30 <= after.moved(before, ("relay_event_delivery_latency_seconds_sum", cv)) < 40
    bucket = ("relay_event_delivery_latency_seconds_bucket", {**cv, "le": "10.0"})
    assert after.moved(before, bucket) == 0


async def test_route_is_the_template_and_unmatched_paths_one_value(
    client: TestClient[Any, Any], make_key: KeyMaker
) -> None:
    reader = {"X-API-Key": await make_key("read:events")}
    before = await scrape(client)
    for event_id in ("evt_01AAAAAAAAAAAAAAAAAAAAAAAA", "evt_01BBBBBBBBBBBBBBBBBBBBBBBB"):
        assert (await client.get(f"/v1/events/{event_id}", headers=reader)).status == 404
    for path in ("/nothing", "/v1/nothing/else", "/v1/events/x/y"):
        assert (await client.get(path)).status == 404
    assert (await client.request("PURGE", "/v1/leads")).status == 405
    after = await scrape(client)
    requests = "relay_http_requests_total"
    one = {"route": "/v1/events/{id}", "method": "GET", "status": "404"}
    assert after.moved(before, (requests, one)) == 2
    assert after.moved(before, (requests, {"route": "unmatched", "status": "404"})) == 3
    assert after.moved(before, (requests, {"route": "unmatched", "method": "other"})) == 1
    routes = after.labels(requests, "route")
    assert not any("evt_" in r or "nothing" in r for r in routes), routes


async def test_the_token_guards_metrics_and_the_document_says_so(
    app_client: AppClient, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(f'metrics_token = "{TOKEN}"')
    assert TOKEN not in repr(settings)
    client = await app_client(settings)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        resp = await client.get("/metrics", headers=headers)
        assert resp.status == 401, headers
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in await resp.text()
    assert (await scrape(client, Authorization=f"Bearer {TOKEN}"))["relay_redis_up"] == 1
    doc = await (await client.get("/openapi.json")).json()
    operation = doc["paths"]["/metrics"]["get"]
    assert operation["security"] == [{"metricsToken": []}]
    assert "text/plain" in operation["responses"]["200"]["content"]
    assert "401" in operation["responses"]


async def test_metrics_are_open_without_a_token(client: TestClient[Any, Any]) -> None:
    got = await scrape(client, Authorization="Bearer anything")
    assert got["relay_redis_up"] == 1
    doc = await (await client.get("/openapi.json")).json()
    assert "security" not in doc["paths"]["/metrics"]["get"]


async def _status_json(settings: Settings, capsys: pytest.CaptureFixture[str]) -> Any:
    capsys.readouterr()
    code = await status(settings, argparse.Namespace(json=True))
    return code, json.loads(capsys.readouterr().out)


async def test_queue_gauges_are_what_relay_status_says(
    client: TestClient[Any, Any],
    settings: Settings,
    redis: Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = EventStore(redis, retention_s=60, partitions=16)
    await store.enqueue([new_lead(f"q{i}@x.io", "conveyour", "convertr") for i in range(3)])
    await store.enqueue([new_lead("q0@x.io", "convertr")])  # parked behind q0's first
    await settle_next(redis, "conveyour", DeliveryStatus.dead, {"status": 400})
    await settle_next(redis, "conveyour", DeliveryStatus.retrying, {}, retry_at_ms=2**41)
    await asyncio.sleep(0.05)

    code, shown = await _status_json(settings, capsys)
    got = await scrape(client)
    assert code == 1  # events waiting, no live worker
    rows = {row["destination"]: row for row in shown["destinations"]}
    assert (rows["convertr"]["pending"], rows["conveyour"]["pending"]) == (4, 1)
    assert (rows["conveyour"]["retrying"], rows["conveyour"]["dead"]) == (1, 1)
    for name, row in rows.items():
        dest = {"destination": name}
        for field in ("pending", "retrying", "dead"):
            assert got[f"relay_queue_{field}", dest] == row[field], (name, field)
        oldest = got["relay_queue_oldest_pending_seconds", dest]
        assert 0.05 <= oldest < row["oldest_pending_s"] + 1, (name, oldest, row)
        assert got["relay_destination_healthy", dest] == 0
        assert row["health"] == "unhealthy"
    assert got["relay_workers_live"] == 0
    assert got.types["relay_queue_pending"] == "gauge"
    assert got["relay_queue_pending", {"destination": "_hooks"}] == 0
    assert got["relay_destination_healthy", {"destination": "_hooks"}] == 1

    beat = Heartbeat(redis, "w1", host="here", pid=1)
    await beat.beat()
    code, shown = await _status_json(settings, capsys)
    got = await scrape(client)
    assert code == 0
    assert got["relay_workers_live"] == len(shown["workers"]) == 1
    assert got["relay_destination_healthy", {"destination": "convertr"}] == 1
    await beat.forget()


async def test_oldest_pending_grows_while_nothing_delivers(
    client: TestClient[Any, Any], redis: Redis
) -> None:
    dest = {"destination": "convertr"}
    assert (await scrape(client))["relay_queue_oldest_pending_seconds", dest] == 0
    await EventStore(redis, retention_s=60, partitions=16).enqueue(
        [new_lead("old@x.io", "convertr")]
    )
    first = (await scrape(client))["relay_queue_oldest_pending_seconds", dest]
    await asyncio.sleep(0.3)
    second = (await scrape(client))["relay_queue_oldest_pending_seconds", dest]
    assert 0 <= first < 0.3 <= second - first + 0.02 < 1


async def test_oldest_pending_counts_from_the_front_of_the_queue(redis: Redis) -> None:
    """The stream's first entry, or a retry that fell due and was not moved back; a
    retry not yet due and a parked event are not waiting to be sent."""
    dest = "convertr"
    store = EventStore(redis, retention_s=60, partitions=16)
    now_ms = int(time.time() * 1000)
    await store.enqueue([new_lead("p@x.io", dest), new_lead("p@x.io", dest)])  # one parked
    (found,) = (await counts(redis, [dest], partitions=16)).values()
    assert found.pending == 2
    assert found.oldest_pending_s < 0.5
    await redis.zadd(redis_keys.retries(dest, 0), {"evt_later": now_ms + 600_000})
    (found,) = (await counts(redis, [dest], partitions=16)).values()
    assert found.oldest_pending_s < 0.5
    await redis.zadd(redis_keys.retries(dest, 0), {"evt_due": now_ms - 90_000})
    (found,) = (await counts(redis, [dest], partitions=16)).values()
    assert found.retrying == 2
    assert 90 <= found.oldest_pending_s < 91
    await redis.delete(redis_keys.retries(dest, 0), redis_keys.queue(dest, 0))
    (found,) = (await counts(redis, [dest], partitions=16)).values()
    assert (found.pending, found.oldest_pending_s) == (1, 0)  # only the parked one


async def test_without_redis_the_counters_still_show(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    dead = redis_client(f"redis://127.0.0.1:{free_port()}/0")
    client = await aiohttp_client(create_app(make_settings(), redis=dead))
    got = await scrape(client)
    assert got["relay_redis_up"] == 0
    assert "relay_http_requests" in got.types
    assert "relay_queue_pending" not in got.types
    await client.close()
    await dead.aclose()
