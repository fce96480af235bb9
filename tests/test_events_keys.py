"""Read side and key management over HTTP: events, keys, OpenAPI."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from relay.api.routing import routes

KeyMaker = Callable[..., Awaitable[str]]


async def test_event_view(client: TestClient[Any, Any], make_key: KeyMaker) -> None:
    writer = await make_key("write:contacts")
    reader = await make_key("read:events")
    resp = await client.post(
        "/v1/contacts",
        json={"email": "eve@example.com", "mobile": "+44 7123 456789", "Favourite Colour": "teal"},
        headers={"X-API-Key": writer},
    )
    event_id = (await resp.json())["id"]
    denied = await client.get(f"/v1/events/{event_id}", headers={"X-API-Key": writer})
    assert denied.status == 403
    got = await client.get(f"/v1/events/{event_id}", headers={"X-API-Key": reader})
    assert got.status == 200
    event = await got.json()
    assert event["id"] == event_id
    assert event["type"] == "contact"
    assert event["status"] == "pending"
    assert event["mode"] == "live"
    assert event["payload"]["traits"] == {"Favourite Colour": "teal"}
    assert event["destinations"] == [{"name": "conveyour", "status": "pending", "attempts": []}]


async def test_an_event_s_payload_reads_back_as_it_was_normalized(
    client: TestClient[Any, Any], make_key: KeyMaker
) -> None:
    # The record's payload JSON is pydantic's (relay.store.NewEvent.to_json): the values
    # JSON makes hard (floats, 64-bit ints, escapes, nesting) come back as they went in.
    traits = {
        "big": 1e16, "tiny": 5e-324, "neg0": -0.0, "u64": 18446744073709551615,
        "i64": -9223372036854775808, "text": 'é\u2028\t"\\<>&😀', "deep": {"a": [1, {"b": None}]},
        "empty": [], "yes": True,
    }  # fmt: skip
    body = {"email": "Eve@Example.com", "phone": "+44 7123 456789", "first_name": "Eve", **traits}
    writer = await make_key("write:leads")
    reader = await make_key("read:events")
    resp = await client.post("/v1/leads", json=body, headers={"X-API-Key": writer})
    assert resp.status == 202, await resp.text()
    got = await client.get(f"/v1/events/{(await resp.json())['id']}", headers={"X-API-Key": reader})
    payload = (await got.json())["payload"]
    assert payload["traits"] == traits
    canonical = {k: payload[k] for k in ("email", "phone", "first_name")}
    assert canonical == {"email": "eve@example.com", "phone": "+447123456789", "first_name": "Eve"}


async def test_unknown_event_is_404(client: TestClient[Any, Any], make_key: KeyMaker) -> None:
    reader = await make_key("read:events")
    for event_id in ("evt_01JD6Q9W5S3ZK8M2R4T7V9XB1C", "nonsense"):
        resp = await client.get(f"/v1/events/{event_id}", headers={"X-API-Key": reader})
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"


async def test_keys_over_http(client: TestClient[Any, Any], make_key: KeyMaker) -> None:
    admin = {"Authorization": f"Bearer {await make_key('admin')}"}
    created = await client.post(
        "/v1/keys",
        json={
            "name": "zapier",
            "scopes": ["write:leads"],
            "expires": "30d",
            "destinations": ["convertr"],
            "rate_limit": "100/m",
        },
        headers=admin,
    )
    assert created.status == 201, await created.text()
    body = await created.json()
    assert set(body) == {
        "id",
        "key",
        "prefix",
        "name",
        "scopes",
        "destinations",
        "expires_at",
        "mode",
    }
    assert body["key"].startswith("rly_live_")
    assert len(body["key"]) == 41
    assert body["prefix"] == body["key"][:12]

    listed = await (await client.get("/v1/keys", headers=admin)).json()
    mine = next(k for k in listed if k["id"] == body["id"])
    assert "key" not in mine
    assert mine["rate_limit"] == "100/m"
    assert body["key"] not in str(listed)

    new = {"X-API-Key": body["key"]}
    assert (
        await client.post("/v1/leads", json={"email": "a@example.com"}, headers=new)
    ).status == 202
    assert (await client.get("/v1/keys", headers=new)).status == 403
    assert (await client.delete(f"/v1/keys/{body['id']}", headers=admin)).status == 204
    after = await client.post("/v1/leads", json={"email": "a@example.com"}, headers=new)
    assert after.status == 401
    assert (await client.delete("/v1/keys/key_doesnotexist", headers=admin)).status == 404


async def test_key_request_errors_name_their_field(
    client: TestClient[Any, Any], make_key: KeyMaker
) -> None:
    admin = {"X-API-Key": await make_key("admin")}
    resp = await client.post(
        "/v1/keys",
        json={
            "name": "x",
            "scopes": ["write:everything"],
            "expires": "yesterday",
            "destinations": ["nowhere"],
            "rate_limit": "fast",
        },
        headers=admin,
    )
    assert resp.status == 422
    locs = [e["loc"] for e in (await resp.json())["errors"]]
    assert locs == [
        ["body", "scopes"],
        ["body", "expires"],
        ["body", "destinations"],
        ["body", "rate_limit"],
    ]
    missing = await client.post("/v1/keys", json={"scopes": ["admin"]}, headers=admin)
    assert missing.status == 422
    assert (await missing.json())["errors"][0]["loc"] == ["body", "name"]
    bad = await client.post(
        "/v1/keys", data=b"{", headers={**admin, "Content-Type": "application/json"}
    )
    assert bad.status == 400


async def test_openapi_covers_every_route(client: TestClient[Any, Any]) -> None:
    doc = await (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    for spec in routes:
        assert spec.method.lower() in doc["paths"][spec.path], spec.path
    for path in (
        "/v1/contacts",
        "/v1/leads",
        "/v1/events/{id}",
        "/v1/me",
        "/v1/keys",
        "/v1/keys/{id}",
        "/healthz",
        "/readyz",
    ):
        assert path in doc["paths"]
    leads = doc["paths"]["/v1/leads"]["post"]
    assert set(leads["responses"]) >= {
        "202",
        "207",
        "400",
        "401",
        "403",
        "413",
        "415",
        "422",
        "503",
    }
    assert "application/x-www-form-urlencoded" in leads["requestBody"]["content"]
    assert "Contact" in doc["components"]["schemas"] or "Lead" in doc["components"]["schemas"]


async def test_polling_list_newest_first_with_filters(
    client: TestClient[Any, Any], make_key: KeyMaker
) -> None:
    writer = {"X-API-Key": await make_key("write:contacts", "write:leads")}
    reader = {"X-API-Key": await make_key("read:events")}
    ids = []
    for i in range(4):
        path = "/v1/leads" if i % 2 else "/v1/contacts"
        resp = await client.post(path, json={"email": f"p{i}@example.com"}, headers=writer)
        ids.append((await resp.json())["id"])
    listed = await (await client.get("/v1/events", headers=reader)).json()
    assert [e["id"] for e in listed] == ids[::-1]
    leads = await (await client.get("/v1/events?type=lead&limit=1", headers=reader)).json()
    assert [e["id"] for e in leads] == [ids[3]]
    page2 = await client.get(f"/v1/events?type=lead&before={ids[3]}", headers=reader)
    assert [e["id"] for e in await page2.json()] == [ids[1]]
    convertr = await client.get("/v1/events?destination=convertr", headers=reader)
    assert [e["id"] for e in await convertr.json()] == [ids[3], ids[1]]
    pending = await client.get("/v1/events?status=pending&limit=100", headers=reader)
    assert len(await pending.json()) == 4
    for bad in ("limit=0", "limit=101", "type=deal", "status=lost"):
        resp = await client.get(f"/v1/events?{bad}", headers=reader)
        assert resp.status == 422, bad
    assert (await client.get("/v1/events", headers=writer)).status == 403


async def test_polling_pages_through_events_of_one_millisecond(redis: Any) -> None:
    from datetime import UTC, datetime

    from relay.ids import new_event_id
    from relay.models import Lead
    from relay.store import EventStore, NewEvent

    store = EventStore(redis, retention_s=3600, partitions=16)
    now = datetime.now(UTC)
    ms = int(now.timestamp() * 1000)
    events = [
        NewEvent(id=new_event_id(now_ms=ms), type="lead", mode="live", key_id="k",
                 received_at=now, payload=Lead(email=f"m{i}@example.com"), destinations=())
        for i in range(7)
    ]  # fmt: skip
    await store.enqueue(events)
    seen: list[str] = []
    before = None
    while True:
        page = (await store.page(limit=3, before=before)).events
        if not page:
            break
        seen += [v.id for v in page]
        before = page[-1].id
    assert sorted(seen, reverse=True) == seen
    assert set(seen) == {e.id for e in events}


async def test_test_mode_events_are_stored_and_never_queued(
    client: TestClient[Any, Any], redis: Any, make_key: KeyMaker
) -> None:
    from relay import redis_keys

    key = await make_key("write:leads", "read:events", mode="test")
    assert key.startswith("rly_test_")
    resp = await client.post(
        "/v1/leads", json={"email": "t@example.com"}, headers={"X-API-Key": key}
    )
    assert resp.status == 202
    event = await (
        await client.get(f"/v1/events/{(await resp.json())['id']}", headers={"X-API-Key": key})
    ).json()
    assert (event["mode"], event["status"]) == ("test", "test")
    assert {d["status"] for d in event["destinations"]} == {"test"}
    assert await redis.xlen(redis_keys.queue("convertr", 0)) == 0
    me = await (await client.get("/v1/me", headers={"X-API-Key": key})).json()
    assert me["mode"] == "test"


async def test_openapi_document_is_valid_openapi_3_1(client: TestClient[Any, Any]) -> None:
    from openapi_spec_validator import validate

    validate(await (await client.get("/openapi.json")).json())
