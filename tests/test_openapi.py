"""/openapi.json is as strict as the server: what it admits is served, where it says."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from openapi_spec_validator import validate

from relay.api.openapi import build_openapi
from relay.normalize import normalize_item
from relay.settings import Settings

KeyMaker = Callable[..., Awaitable[str]]
AppClient = Callable[..., Awaitable[TestClient[Any, Any]]]


def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator of ``schema`` that resolves the document's ``#/components`` refs."""
    return Draft202012Validator({**schema, "components": doc["components"]})


def _body(doc: dict[str, Any], path: str, media: str = "application/json") -> dict[str, Any]:
    schema: dict[str, Any] = doc["paths"][path]["post"]["requestBody"]["content"][media]["schema"]
    return schema


@pytest.fixture
async def doc(client: TestClient[Any, Any]) -> dict[str, Any]:
    document: dict[str, Any] = await (await client.get("/openapi.json")).json()
    return document


async def test_idempotency_key_is_a_header(doc: dict[str, Any]) -> None:
    for path in ("/v1/leads", "/v1/contacts"):
        params = {p["name"]: p for p in doc["paths"][path]["post"]["parameters"]}
        assert params["Idempotency-Key"]["in"] == "header"
        assert "explode" not in params["Idempotency-Key"]
        assert params["destination"]["in"] == "query"


async def test_ingest_body_needs_an_email_or_a_phone(doc: dict[str, Any]) -> None:
    for media in ("application/json", "application/x-www-form-urlencoded"):
        check = _validator(doc, _body(doc, "/v1/leads", media))
        assert not check.is_valid({"first_name": "Ada"}), media
        assert not check.is_valid({}), media
        assert check.is_valid({"email": "ada@example.com"}), media
        assert check.is_valid({"phone": "+447123456789", "first_name": "Ada"}), media
        assert not check.is_valid({"email": "not an email"}), media
        assert not check.is_valid({"phone": "12"}), media
    batch = _validator(doc, _body(doc, "/v1/leads"))
    assert batch.is_valid([{"email": "a@example.com"}, {"phone": "+12015550123"}])
    assert not batch.is_valid([])
    assert not batch.is_valid([{"email": "a@example.com"}, {"first_name": "Nobody"}])


async def test_hook_target_urls_admit_what_zapier_and_n8n_subscribe(doc: dict[str, Any]) -> None:
    check = _validator(doc, _body(doc, "/v1/hooks"))
    for url in (
        "https://hooks.zapier.com/hooks/standard/123456/0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "https://my-n8n.example.com/webhook/7f3c2a1e-1b2c-4d5e-8f90-123456789abc/webhook",
        "http://n8n.internal:5678/webhook-test/7f3c2a1e-1b2c-4d5e-8f90-123456789abc",
    ):
        assert check.is_valid({"event": "lead.received", "target_url": url}), url
    for url in ("http://n8n.internal:65536/x", "https://-n8n.example.com/", "ftp://example.com/"):
        assert not check.is_valid({"event": "lead.received", "target_url": url}), url


async def test_what_the_ingest_schema_admits_normalize_accepts(doc: dict[str, Any]) -> None:
    check = _validator(doc, _body(doc, "/v1/contacts"))
    admitted = [
        {"email": "A.b+c@Mail-1.Example.co", "traits": {"utm_source": "ads", "vip": True}},
        {"phone": "+12015550123", "traits": {"score": 2**53, "note": None}},
        {"email": "x9@y.io", "phone": "+447000000000", "address": "a" * 500, "city": None},
    ]
    for item in admitted:
        assert check.is_valid(item), item
        normalize_item(item, kind="contact")  # raises if relay would refuse it
    # Names relay would read as a canonical field are not custom traits in the schema.
    for name in ("email", "mobile", "zip", "first_name", "Phone"):
        assert not check.is_valid({"email": "a@b.co", "traits": {name: "x"}}), name


async def test_the_schema_of_track_events_admits_only_what_relay_takes(
    doc: dict[str, Any], client: TestClient[Any, Any], make_key: KeyMaker
) -> None:
    """Items at the edges of the ``events`` schema, posted: whatever the schema admits,
    relay takes (schemathesis's positive_data_acceptance); what relay refuses, the schema
    does not admit."""
    check = _validator(doc, _body(doc, "/v1/contacts"))
    headers = {"X-API-Key": await make_key("write:contacts")}
    cases: list[dict[str, Any]] = [
        {"event": "applied"},
        {"event": "x", "properties": {"job": "driver", "n": 2, "ok": True, "none": None}},
        {"event": "x", "timestamp": "2000-01-01T00:00:00Z"},
        {"event": "x", "timestamp": "2099-12-28T23:59:59Z"},
        {"event": "x", "timestamp": 0},
        {"event": "x", "timestamp": 99999999999.5},
        {"event": ""},
        {"event": " \t"},
        {"event": "a\x00"},
        {"event": "x", "timestamp": ""},
        {"event": "x", "timestamp": "yesterday"},
        {"event": "x", "timestamp": -1},
        {"event": "x", "timestamp": 1e11},
        {"event": "x", "properties": {"note": "a\x00"}},
        {"event": "x", "other": 1},
    ]
    admitted = 0
    for event in cases:
        item = {"email": "a@b.co", "events": [event]}
        status = (await client.post("/v1/contacts", headers=headers, json=item)).status
        if check.is_valid(item):
            admitted += 1
            assert status == 202, event
        else:
            assert status in (202, 422), event
    assert admitted == 6  # the first six: the rest relay refuses, and the schema with it


def _patterns(node: Any) -> list[str]:
    """Every ``pattern`` in a schema document."""
    if isinstance(node, dict):
        own = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return own + [p for v in node.values() for p in _patterns(v)]
    if isinstance(node, list):
        return [p for v in node for p in _patterns(v)]
    return []


async def test_the_schema_s_patterns_read_alike_in_ecma_262_and_python(
    doc: dict[str, Any], client: TestClient[Any, Any], make_key: KeyMaker
) -> None:
    """Patterns are ECMA-262 regexes to clients and fuzzers; relay checks with Python.
    Their shorthand classes differ (ECMA's \\s leaves out U+0085 and U+001C-U+001F, which
    Python strips; schemathesis found an event name "\\x85" the schema admitted and relay
    refused), so no pattern uses them; and an event name of any one white-space or
    near-white-space character is admitted by the schema exactly when relay takes it."""
    patterns = _patterns(doc)
    assert patterns
    assert [p for p in patterns if re.search(r"\\[sSdDwWbB]", p)] == []
    check = _validator(doc, _body(doc, "/v1/contacts"))
    headers = {"X-API-Key": await make_key("write:contacts")}
    names = [chr(c) for c in range(0x110000) if chr(c).isspace()] + ["\ufeff", "\u200b", "x"]
    for name in names:
        item = {"email": "a@b.co", "events": [{"event": name}]}
        status = (await client.post("/v1/contacts", headers=headers, json=item)).status
        assert status == (202 if check.is_valid(item) else 422), repr(name)


async def test_the_ingest_schema_admits_no_nul_relay_refuses(
    doc: dict[str, Any], client: TestClient[Any, Any], make_key: KeyMaker
) -> None:
    # relay answers 422 to a NUL anywhere (values are never altered): so must the schema.
    headers = {"X-API-Key": await make_key("write:leads")}
    cases: tuple[tuple[str, dict[str, Any]], ...] = (
        ("application/json", {"email": "a@b.co", "city": "Dal\x00las"}),
        ("application/json", {"email": "a@b.co", "traits": {"note": "a\x00"}}),
        ("application/x-www-form-urlencoded", {"email": "a@b.co", "state": "\x00"}),
    )
    for media, body in cases:
        assert not _validator(doc, _body(doc, "/v1/leads", media)).is_valid(body), body
        if media == "application/json":
            resp = await client.post("/v1/leads", headers=headers, json=body)
        else:
            resp = await client.post("/v1/leads", headers=headers, data=body)
        assert resp.status == 422, body


async def test_keys_scopes_are_an_enum_and_destinations_the_configured_ones(
    doc: dict[str, Any],
) -> None:
    check = _validator(doc, _body(doc, "/v1/keys"))
    assert check.is_valid({"name": "zap", "scopes": ["write:leads"], "destinations": ["convertr"]})
    assert not check.is_valid({"name": "zap", "scopes": ["write:everything"]})
    assert not check.is_valid({"name": "zap", "scopes": []})
    assert not check.is_valid({"name": "zap", "scopes": ["admin"], "destinations": ["nowhere"]})
    assert not check.is_valid(
        {"name": "zap", "scopes": ["admin"], "expires": "2020-01-01T00:00:00Z"}
    )
    assert not check.is_valid({"name": "zap", "scopes": ["admin"], "rate_limit": "fast"})


async def test_replay_needs_all_or_some_event_ids(doc: dict[str, Any]) -> None:
    check = _validator(doc, _body(doc, "/v1/dead-letters/replay"))
    assert check.is_valid({"all": True})
    assert check.is_valid({"event_ids": ["evt_1"], "destination": "convertr"})
    bad: list[dict[str, Any]] = [
        {},
        {"all": False},
        {"event_ids": []},
        {"all": True, "destination": "nowhere"},
    ]
    for body in bad:
        assert not check.is_valid(body), body


async def test_ingest_destinations_are_those_taking_the_type(doc: dict[str, Any]) -> None:
    def allowed(path: str) -> list[str]:
        (param,) = [p for p in doc["paths"][path]["post"]["parameters"] if p["in"] == "query"]
        values: list[str] = param["schema"]["items"]["enum"]
        return values

    assert allowed("/v1/leads") == ["", "conveyour", "convertr"]
    assert allowed("/v1/contacts") == ["", "conveyour"]  # convertr takes leads only


async def test_an_empty_destination_query_means_every_destination(
    client: TestClient[Any, Any], make_key: KeyMaker
) -> None:
    admin = {"X-API-Key": await make_key("admin")}
    resp = await client.get("/v1/dead-letters?destination=", headers=admin)
    assert resp.status == 200, await resp.text()
    replay = await client.post(
        "/v1/dead-letters/replay", json={"all": True, "destination": ""}, headers=admin
    )
    assert replay.status == 200, await replay.text()
    assert await replay.json() == {"replayed": 0}


async def test_the_document_is_valid_with_no_destination(
    app_client: AppClient, make_settings: Callable[..., Settings]
) -> None:
    client = await app_client(make_settings())
    document = await (await client.get("/openapi.json")).json()
    validate(document)
    assert _validator(document, _body(document, "/v1/keys")).is_valid(
        {"name": "zap", "scopes": ["admin"]}
    )


def test_build_openapi_is_valid_openapi_3_1() -> None:
    validate(build_openapi(version="0", destinations={"crm": ("lead",)}))


async def test_ingest_answers_match_their_documented_schemas(
    client: TestClient[Any, Any], doc: dict[str, Any], make_key: KeyMaker
) -> None:
    headers = {"X-API-Key": await make_key("write:leads")}
    answers = doc["paths"]["/v1/leads"]["post"]["responses"]
    for body in ({"email": "a@example.com"}, [{"email": "b@example.com"}]):
        resp = await client.post("/v1/leads", json=body, headers=headers)
        schema = answers[str(resp.status)]["content"]["application/json"]["schema"]
        _validator(doc, schema).validate(await resp.json())
