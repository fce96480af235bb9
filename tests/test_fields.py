"""``GET /v1/fields``: the field metadata Zapier and n8n load, checked against ingest itself."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

Client = TestClient[Any, Any]

# A value each kind of field takes, and what ingest stores for it.
_SENT = {"email": "Ann@Example.COM", "phone": "+44 7123 456789", "string": "Some value"}
_STORED = {"email": "ann@example.com", "phone": "+447123456789", "string": "Some value"}


async def _fields(client: Client, key: str, query: str = "") -> dict[str, Any]:
    resp = await client.get(f"/v1/fields{query}", headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200, await resp.text()
    doc: dict[str, Any] = await resp.json()
    return doc


async def test_shape_and_default_type(client: Client, make_key: Any) -> None:
    key = await make_key("read:events")  # any scope will do
    doc = await _fields(client, key)
    assert doc["type"] == "lead"  # absent type: lead
    assert set(doc) == {"type", "fields", "require_one_of", "destinations", "track_events"}
    assert doc["require_one_of"] == ["email", "phone"]
    names = [f["name"] for f in doc["fields"]]
    assert names[:3] == ["email", "phone", "first_name"]
    for field in doc["fields"]:
        assert set(field) == {"name", "label", "type", "required", "aliases"}
        assert field["required"] is False
        assert field["label"]
    by_name = {f["name"]: f for f in doc["fields"]}
    assert by_name["first_name"]["label"] == "First Name"
    assert by_name["email"]["type"] == "email"
    assert by_name["phone"]["type"] == "phone"
    assert "mobile" in by_name["phone"]["aliases"]
    assert "zip" in by_name["postcode"]["aliases"]
    assert doc["destinations"] == [
        {"name": "conveyour", "type": "conveyour", "events": ["contact", "lead"]},
        {"name": "convertr", "type": "convertr", "events": ["lead"]},
    ]
    contact = await _fields(client, key, "?type=contact")
    assert contact["type"] == "contact"
    assert [d["name"] for d in contact["destinations"]] == ["conveyour"]


async def test_every_name_listed_is_taken_by_ingest(client: Client, make_key: Any) -> None:
    """Post one lead per listed name (canonical or alias) and read back what ingest stored:
    the value must land in that canonical field, not in the custom traits."""
    key = await make_key("write:leads", "read:events")
    auth = {"X-API-Key": key}
    doc = await _fields(client, key, "?type=lead")
    tried = 0
    for field in doc["fields"]:
        for sent_as in [field["name"], *field["aliases"]]:
            body = {sent_as: _SENT[field["type"]]}
            if field["name"] not in doc["require_one_of"]:
                body["email"] = "base@example.com"
            resp = await client.post("/v1/leads", json=body, headers=auth)
            assert resp.status == 202, (sent_as, await resp.text())
            event = await (
                await client.get(f"/v1/events/{(await resp.json())['id']}", headers=auth)
            ).json()
            payload = event["payload"]
            assert payload.get(field["name"]) == _STORED[field["type"]], (sent_as, payload)
            assert payload["traits"] == {}, (sent_as, payload)
            tried += 1
    assert tried > 50  # every alias, not a handful


async def test_track_events_are_described_and_taken_as_described(
    client: Client, make_key: Any
) -> None:
    """``track_events``: the list's key, its item fields, the limit, and the destinations
    that track them; an item built from that description is stored as sent."""
    key = await make_key("write:leads", "write:contacts", "read:events")
    doc = await _fields(client, key, "?type=lead")
    info = doc["track_events"]
    assert info["name"] == "events"
    assert info["max_items"] == 20
    assert [(f["name"], f["type"], f["required"]) for f in info["fields"]] == [
        ("event", "string", True),
        ("properties", "object", False),
        ("timestamp", "datetime", False),
    ]
    assert info["destinations"] == ["conveyour"]  # not convertr: it never sends them
    assert "events" not in [f["name"] for f in doc["fields"]]  # a flat field cannot hold it
    values = {"string": "applied", "object": {"job": "driver"}, "datetime": "2026-01-31T12:00:00Z"}
    item = {f["name"]: values[f["type"]] for f in info["fields"]}
    body = {"email": "t@example.com", info["name"]: [item] * info["max_items"]}
    resp = await client.post("/v1/leads", json=body, headers={"X-API-Key": key})
    assert resp.status == 202, await resp.text()
    event_id = (await resp.json())["id"]
    got = await (await client.get(f"/v1/events/{event_id}", headers={"X-API-Key": key})).json()
    assert got["payload"]["events"] == [item] * info["max_items"]
    body[info["name"]] = [item] * (info["max_items"] + 1)
    resp = await client.post("/v1/leads", json=body, headers={"X-API-Key": key})
    assert resp.status == 422
    restricted = await make_key("write:leads", destinations=["convertr"])
    assert (await _fields(client, restricted))["track_events"]["destinations"] == []


async def test_restricted_key_sees_only_its_destinations(client: Client, make_key: Any) -> None:
    key = await make_key("write:leads", destinations=["convertr"])
    doc = await _fields(client, key, "?type=lead")
    assert [d["name"] for d in doc["destinations"]] == ["convertr"]
    contact = await _fields(client, key, "?type=contact")
    assert contact["destinations"] == []  # convertr takes no contacts


async def test_no_secrets(client: Client, make_key: Any) -> None:
    key = await make_key("admin")
    for kind in ("lead", "contact"):
        text = await (
            await client.get(f"/v1/fields?type={kind}", headers={"X-API-Key": key})
        ).text()
        for secret in ("cy-token-secret-0001", "cv-apikey-secret-0002", "127.0.0.1:9", key):
            assert secret not in text


async def test_errors(client: Client, make_key: Any) -> None:
    assert (await client.get("/v1/fields")).status == 401
    key = await make_key("read:events")
    bad = await client.get("/v1/fields?type=deal", headers={"X-API-Key": key})
    assert bad.status == 422
    assert bad.content_type == "application/problem+json"
    problem = await bad.json()
    assert problem["errors"][0]["loc"] == ["query", "type"]


async def test_in_openapi(client: Client) -> None:
    doc = await (await client.get("/openapi.json")).json()
    op = doc["paths"]["/v1/fields"]["get"]
    assert set(op["responses"]) >= {"200", "401", "422"}
    assert op["parameters"][0]["name"] == "type"
    ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    info = doc["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert "track_events" in info["required"]
    assert "track_events" in info["properties"]
