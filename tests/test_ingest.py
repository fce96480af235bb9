"""Ingest: shapes, batches, every error status with its problem body, durable enqueue."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from relay import redis_keys
from relay.api import create_app
from relay.connect import redis_client
from relay.keystore import KeyStore
from relay.settings import Settings
from tests.events import total
from tests.redis_server import free_port

KeyMaker = Callable[..., Awaitable[str]]


@pytest.fixture
async def headers(make_key: KeyMaker) -> dict[str, str]:
    key = await make_key("write:leads", "write:contacts", "read:events")
    return {"Authorization": f"Bearer {key}"}


def _problem(body: dict[str, Any], status: int) -> None:
    assert body["status"] == status
    assert set(body) >= {"type", "title", "status", "detail", "errors"}
    for err in body["errors"]:
        assert set(err) == {"loc", "msg"}


async def test_lead_is_stored_before_the_answer(
    client: TestClient[Any, Any], redis: Redis, headers: dict[str, str]
) -> None:
    resp = await client.post(
        "/v1/leads",
        json={
            "Email": "Ada@Example.COM",
            "firstName": "Ada",
            "phone": "+44 7123 456789",
            "utm_source": "ads",
        },
        headers=headers,
    )
    assert resp.status == 202
    body = await resp.json()
    assert body["status"] == "queued"
    assert body["id"].startswith("evt_")
    assert len(body["id"]) == 30
    assert body["destinations"] == ["conveyour", "convertr"]
    raw = await redis.hget(redis_keys.event(body["id"]), redis_keys.EVENT_DATA_FIELD)
    assert raw is not None
    stored = orjson.loads(raw)
    assert stored["payload"] == {
        "email": "ada@example.com",
        "phone": "+447123456789",
        "first_name": "Ada",
        "traits": {"utm_source": "ads"},
    }
    for dest in ("conveyour", "convertr"):
        entries: Any = await redis.xrange(redis_keys.queue(dest, 0))
        assert [e[1]["e"] for e in entries] == [body["id"]]
    assert await redis.ttl(redis_keys.event(body["id"])) > 6 * 86400


async def test_contact_routes_by_event_type(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    resp = await client.post("/v1/contacts", json={"email": "a@example.com"}, headers=headers)
    assert resp.status == 202
    assert (await resp.json())["destinations"] == ["conveyour"]


@pytest.mark.parametrize(
    "doc",
    [
        {"email": "ann@example.com", "first_name": "Ann"},
        {"id": "$email", "traits": {"email": "ann@example.com", "first_name": "Ann"}},
        {"contact": {"email": "ann@example.com", "first_name": "Ann"}},
        {"lead": {"email": "ann@example.com", "first_name": "Ann"}},
        {"traits__email": "ann@example.com", "traits__first_name": "Ann"},
    ],
    ids=["flat", "conveyour", "wrapped-contact", "wrapped-lead", "flattened"],
)
async def test_shapes(
    client: TestClient[Any, Any], headers: dict[str, str], doc: dict[str, Any]
) -> None:
    resp = await client.post("/v1/contacts", json=doc, headers=headers)
    assert resp.status == 202, await resp.text()
    event = await client.get(f"/v1/events/{(await resp.json())['id']}", headers=headers)
    payload = (await event.json())["payload"]
    assert payload["email"] == "ann@example.com"
    assert payload["first_name"] == "Ann"


async def test_form_bodies(client: TestClient[Any, Any], headers: dict[str, str]) -> None:
    urlencoded = await client.post(
        "/v1/leads",
        data="email=bo%40example.com&traits%5Bcity%5D=Dallas&first_name=Bo",
        headers={**headers, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert urlencoded.status == 202, await urlencoded.text()
    form = FormData()
    form.add_field("email", "cy@example.com")
    form.add_field("traits__city", "Austin")
    multipart = await client.post("/v1/leads", data=form(), headers=headers)
    assert multipart.status == 202, await multipart.text()
    for resp, city in ((urlencoded, "Dallas"), (multipart, "Austin")):
        ev = await client.get(f"/v1/events/{(await resp.json())['id']}", headers=headers)
        assert (await ev.json())["payload"]["city"] == city


async def test_mixed_batch_keeps_the_good_items(
    client: TestClient[Any, Any], redis: Redis, headers: dict[str, str]
) -> None:
    batch = [
        {"email": "one@example.com"},
        {"email": "not-an-email"},
        {"first_name": "nobody"},
        {"phone": "+1 415 555 2671"},
    ]
    resp = await client.post("/v1/leads", json=batch, headers=headers)
    assert resp.status == 207
    body = await resp.json()
    assert body["status"] == "partial"
    assert [a["index"] for a in body["accepted"]] == [0, 3]
    assert [r["index"] for r in body["rejected"]] == [1, 2]
    assert body["rejected"][0]["errors"][0]["loc"] == ["body", 1, "email"]
    assert body["rejected"][1]["errors"][0]["loc"] == ["body", 2]
    for item in body["accepted"]:
        assert await redis.exists(redis_keys.event(item["id"]))
    assert await total(redis, "XLEN", functools.partial(redis_keys.queue, "convertr")) == 2


async def test_all_good_batch_is_202(client: TestClient[Any, Any], headers: dict[str, str]) -> None:
    resp = await client.post(
        "/v1/leads", json=[{"email": f"u{i}@example.com"} for i in range(500)], headers=headers
    )
    assert resp.status == 202
    body = await resp.json()
    assert body["status"] == "queued"
    assert len(body["accepted"]) == 500
    assert body["rejected"] == []
    assert len({a["id"] for a in body["accepted"]}) == 500


async def test_all_bad_batch_is_422(
    client: TestClient[Any, Any], redis: Redis, headers: dict[str, str]
) -> None:
    resp = await client.post("/v1/leads", json=[{"email": "x"}, {}], headers=headers)
    assert resp.status == 422
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    _problem(body, 422)
    assert body["accepted"] == []
    assert [r["index"] for r in body["rejected"]] == [0, 1]
    assert {tuple(e["loc"][:2]) for e in body["errors"]} == {("body", 0), ("body", 1)}
    assert await total(redis, "XLEN", functools.partial(redis_keys.queue, "convertr")) == 0


@pytest.mark.parametrize(
    ("data", "ctype", "status", "loc"),
    [
        (b'{"email": ', "application/json", 400, ["body"]),
        (b"", "application/json", 400, ["body"]),
        (b'{"email": "a@example.com"}', "text/plain", 415, None),
        (b'{"email": "a@example.com"}', "application/x-www-form-urlencoded", 415, None),
        (b"email=a@example.com", "", 415, None),
        (b'{"email": "nope"}', "application/json", 422, ["body", "email"]),
        (b'{"first_name": "no contact"}', "application/json", 422, ["body"]),
        (b'{"phone": "12"}', "application/json", 422, ["body", "phone"]),
        (b"[]", "application/json", 422, ["body"]),
        (b'"just a string"', "application/json", 422, ["body"]),
    ],
    ids=[
        "bad-json",
        "empty",
        "text",
        "json-as-form",
        "no-ctype",
        "bad-email",
        "no-id",
        "bad-phone",
        "empty-batch",
        "not-object",
    ],
)
async def test_error_statuses(
    client: TestClient[Any, Any],
    redis: Redis,
    headers: dict[str, str],
    data: bytes,
    ctype: str,
    status: int,
    loc: list[Any] | None,
) -> None:
    resp = await client.post(
        "/v1/leads", data=data, headers={**headers, "Content-Type": ctype} if ctype else headers
    )
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    _problem(body, status)
    if loc is not None:
        assert body["errors"][0]["loc"] == loc
    assert await total(redis, "ZCARD", redis_keys.events_index) == 0


async def test_body_over_the_limit_is_413(
    app_client: Any, make_settings: Callable[..., Settings], make_key: KeyMaker
) -> None:
    client = await app_client(make_settings(max_body_bytes=2048))
    key = await make_key("write:leads")
    big = {"email": "a@example.com", "notes": "x" * 4096}
    resp = await client.post("/v1/leads", json=big, headers={"X-API-Key": key})
    assert resp.status == 413
    body = await resp.json()
    _problem(body, 413)
    assert "2048" in body["detail"]


async def test_batch_over_500_is_413(client: TestClient[Any, Any], headers: dict[str, str]) -> None:
    resp = await client.post("/v1/leads", json=[{"email": "a@example.com"}] * 501, headers=headers)
    assert resp.status == 413
    _problem(await resp.json(), 413)


async def test_unknown_destination_is_422(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    resp = await client.post(
        "/v1/contacts?destination=nowhere", json={"email": "a@example.com"}, headers=headers
    )
    assert resp.status == 422
    body = await resp.json()
    assert body["errors"][0]["loc"] == ["query", "destination"]
    assert "nowhere" in body["detail"]


async def test_event_without_destination_is_stored_and_shown(
    app_client: Any, make_settings: Callable[..., Settings], make_key: KeyMaker
) -> None:
    client = await app_client(make_settings())
    key = await make_key("write:leads", "read:events")
    resp = await client.post(
        "/v1/leads", json={"email": "a@example.com"}, headers={"X-API-Key": key}
    )
    assert resp.status == 202
    body = await resp.json()
    assert body["destinations"] == []
    event = await (await client.get(f"/v1/events/{body['id']}", headers={"X-API-Key": key})).json()
    assert event["status"] == "no_destination"
    assert event["destinations"] == []


async def test_redis_refusing_writes_is_503_and_stores_nothing(
    own_redis: Redis, aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    _, key = await KeyStore(own_redis).create(name="w", scopes=["write:leads"])
    client = await aiohttp_client(create_app(make_settings(), redis=own_redis))
    before = await own_redis.dbsize()
    await own_redis.config_set("maxmemory", "1")  # every write now fails with OOM
    try:
        resp = await client.post(
            "/v1/leads", json={"email": "a@example.com"}, headers={"X-API-Key": key}
        )
    finally:
        await own_redis.config_set("maxmemory", "0")
    assert resp.status == 503
    assert resp.headers["Retry-After"].isdigit()
    _problem(await resp.json(), 503)
    assert await own_redis.dbsize() == before


async def test_redis_down_is_503(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    dead = redis_client(f"redis://127.0.0.1:{free_port()}/0")
    client = await aiohttp_client(create_app(make_settings(), redis=dead))
    resp = await client.post(
        "/v1/leads", json={"email": "a@example.com"}, headers={"X-API-Key": "rly_live_" + "b" * 32}
    )
    assert resp.status == 503
    _problem(await resp.json(), 503)
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await client.get("/healthz")).status == 200
    await client.close()
    await dead.aclose()


async def test_unknown_route_and_method_are_problems(client: TestClient[Any, Any]) -> None:
    missing = await client.get("/v1/nothing")
    assert missing.status == 404
    _problem(await missing.json(), 404)
    wrong = await client.get("/v1/leads")
    assert wrong.status == 405
    _problem(await wrong.json(), 405)


async def test_a_broken_multipart_body_is_400(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    broken = b"--b0und\r\n1566718--b0und--\r\n"  # a part with a header line that is not one
    resp = await client.post(
        "/v1/leads",
        data=broken,
        headers={**headers, "Content-Type": "multipart/form-data; boundary=b0und"},
    )
    assert resp.status == 400, await resp.text()
    body = await resp.json()
    _problem(body, 400)
    assert "multipart" in body["detail"], body["detail"]  # says what could not be read
