"""X-Request-ID: taken or made, echoed on every answer, kept on the events, and on the log
lines about the request and about its events' delivery attempts."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from relay.cli import main
from relay.logs import ContextFilter
from relay.settings import Settings
from relay.worker import Worker
from tests.fakes import FakeReceiver

KeyMaker = Callable[..., Awaitable[str]]
AppClient = Callable[..., Awaitable[TestClient[Any, Any]]]
#: What relay makes when the client sent none (or an id it may not keep).
MADE = re.compile(r"req_[0-9A-Z]{26}")


async def _lead(
    client: TestClient[Any, Any], key: str, doc: Any, **headers: str
) -> tuple[str, Any]:
    resp = await client.post("/v1/leads", json=doc, headers={"X-API-Key": key, **headers})
    assert resp.status == 202, await resp.text()
    return resp.headers["X-Request-ID"], await resp.json()


async def _event(client: TestClient[Any, Any], key: str, event_id: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/events/{event_id}", headers={"X-API-Key": key})
    assert resp.status == 200
    event: dict[str, Any] = await resp.json()
    return event


@pytest.mark.parametrize(
    "sent", ["zap-7f3a.run:42_x", "a", "A" * 128, "01J9Z3-b2c.d:e_f"], ids=lambda s: s[:20]
)
async def test_a_valid_id_is_kept_echoed_and_stored(
    client: TestClient[Any, Any], make_key: KeyMaker, sent: str
) -> None:
    key = await make_key("write:leads", "read:events")
    echoed, body = await _lead(client, key, {"email": "ada@example.com"}, **{"X-Request-ID": sent})
    assert echoed == sent
    event = await _event(client, key, body["id"])
    assert event["request_id"] == sent


@pytest.mark.parametrize(
    "sent",
    ["A" * 129, "has space", "slash/es", "semi;colon", "", 'quote"d', "tab\there"],
    ids=["129 chars", "space", "slash", "semicolon", "empty", "quote", "tab"],
)
async def test_an_invalid_id_is_replaced_by_a_new_one(
    client: TestClient[Any, Any], make_key: KeyMaker, sent: str
) -> None:
    key = await make_key("write:leads", "read:events")
    echoed, body = await _lead(client, key, {"email": "ada@example.com"}, **{"X-Request-ID": sent})
    assert MADE.fullmatch(echoed), echoed
    assert (await _event(client, key, body["id"]))["request_id"] == echoed


async def test_without_one_relay_makes_a_new_id_for_each_request(
    client: TestClient[Any, Any], make_key: KeyMaker
) -> None:
    key = await make_key("write:leads", "read:events")
    first, body = await _lead(client, key, {"email": "ada@example.com"})
    second, _ = await _lead(client, key, {"email": "bo@example.com"})
    assert MADE.fullmatch(first)
    assert MADE.fullmatch(second)
    assert first != second
    assert (await _event(client, key, body["id"]))["request_id"] == first


async def test_every_answer_carries_it(client: TestClient[Any, Any], make_key: KeyMaker) -> None:
    key = await make_key("write:leads", "read:events")
    auth = {"X-API-Key": key}
    answers = {
        "healthz": await client.get("/healthz", headers={"X-Request-ID": "r-healthz"}),
        "readyz": await client.get("/readyz", headers={"X-Request-ID": "r-readyz"}),
        "openapi": await client.get("/openapi.json", headers={"X-Request-ID": "r-openapi"}),
        "401": await client.get("/v1/me", headers={"X-Request-ID": "r-401"}),
        "403": await client.get("/v1/keys", headers={**auth, "X-Request-ID": "r-403"}),
        "404 route": await client.get("/nowhere", headers={"X-Request-ID": "r-404-route"}),
        "404 event": await client.get(
            "/v1/events/evt_nope", headers={**auth, "X-Request-ID": "r-404-event"}
        ),
        "405": await client.put("/v1/leads", headers={"X-Request-ID": "r-405"}),
        "400": await client.post(
            "/v1/leads",
            data=b"{bad",
            headers={**auth, "Content-Type": "application/json", "X-Request-ID": "r-400"},
        ),
        "415": await client.post(
            "/v1/leads",
            data=b"x",
            headers={**auth, "Content-Type": "text/plain", "X-Request-ID": "r-415"},
        ),
        "422": await client.post(
            "/v1/leads", json={"first_name": "Nobody"}, headers={**auth, "X-Request-ID": "r-422"}
        ),
    }
    statuses = {what: resp.status for what, resp in answers.items()}
    assert statuses == {
        "healthz": 200,
        "readyz": 200,
        "openapi": 200,
        "401": 401,
        "403": 403,
        "404 route": 404,
        "404 event": 404,
        "405": 405,
        "400": 400,
        "415": 415,
        "422": 422,
    }
    for what, resp in answers.items():
        assert resp.headers.get("X-Request-ID") == f"r-{what.replace(' ', '-')}", what
    assert answers["401"].headers["WWW-Authenticate"].startswith("Bearer")
    assert answers["422"].content_type == "application/problem+json"


async def test_a_batch_s_events_all_carry_the_request_s_id(
    client: TestClient[Any, Any], make_key: KeyMaker
) -> None:
    key = await make_key("write:leads", "read:events")
    batch = [{"email": "a@example.com"}, {"phone": "+12015550123"}]
    echoed, body = await _lead(client, key, batch, **{"X-Request-ID": "batch-1"})
    assert echoed == "batch-1"
    ids = [a["id"] for a in body["accepted"]]
    assert len(ids) == 2
    for event_id in ids:
        assert (await _event(client, key, event_id))["request_id"] == "batch-1"
    listed = await client.get("/v1/events", headers={"X-API-Key": key})
    assert {e["id"]: e["request_id"] for e in await listed.json()} == dict.fromkeys(ids, "batch-1")


async def test_events_show_names_the_request(
    client: TestClient[Any, Any],
    make_key: KeyMaker,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = await make_key("write:leads")
    _, body = await _lead(client, key, {"email": "ada@example.com"}, **{"X-Request-ID": "show-1"})
    assert settings.redis_url is not None
    assert settings.config is not None
    monkeypatch.setenv("RELAY_REDIS_URL", settings.redis_url.get_secret_value())
    monkeypatch.setenv("RELAY_CONFIG", str(settings.config))
    # The command runs its own event loop: in a thread, beside this test's.
    assert await asyncio.to_thread(main, ["events", "show", body["id"], "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["request_id"] == "show-1"
    assert await asyncio.to_thread(main, ["events", "show", body["id"]]) == 0
    assert re.search(r"^  request +show-1$", capsys.readouterr().out, re.M)


async def test_each_delivery_attempt_is_one_info_line_naming_the_request(
    make_settings: Callable[..., Settings],
    app_client: AppClient,
    make_key: KeyMaker,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.handler.addFilter(ContextFilter())  # as relay.logs.configure sets up
    caplog.set_level(logging.INFO)
    async with FakeReceiver() as receiver:
        settings = make_settings(
            f'[destinations.crm]\ntype = "webhook"\nurl = "{receiver.url}/hook"\n'
            'secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\nretry_schedule = [0.05]\n'
        )
        client = await app_client(settings)
        key = await make_key("write:leads")
        receiver.script(status=503, body="busy", times=1)
        _, body = await _lead(client, key, {"email": "ada@example.com"}, **{"X-Request-ID": "d-1"})
        await asyncio.wait_for(Worker(settings, redis=redis).run(drain=True), 20)
    lines = [r for r in caplog.records if getattr(r, "outcome", None)]
    assert [(r.name, r.levelname) for r in lines] == [("relay.worker", "INFO")] * 2
    assert [r.__dict__["outcome"] for r in lines] == ["retry", "delivered"]
    assert [r.__dict__["status"] for r in lines] == [503, 200]
    for record in lines:
        assert record.__dict__["request_id"] == "d-1"
        assert record.__dict__["event_id"] == body["id"]
        assert record.__dict__["destination"] == "crm"
        assert record.__dict__["duration_ms"] >= 0
    assert lines[1].getMessage().startswith(f"crm: {body['id']} delivered (200) in ")
