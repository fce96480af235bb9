"""Idempotency-Key and webhook-id: one event per key, the first answer byte for byte."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from relay import redis_keys
from tests.events import total

KeyMaker = Callable[..., Awaitable[str]]
LEAD = {"email": "ida@example.com"}


async def test_repeat_gets_the_first_answer_and_queues_nothing(
    client: TestClient[Any, Any], redis: Redis, make_key: KeyMaker
) -> None:
    key = await make_key("write:leads")
    headers = {"X-API-Key": key, "Idempotency-Key": "zap-run-1"}
    first = await client.post("/v1/leads", json=LEAD, headers=headers)
    again = await client.post("/v1/leads", json=LEAD, headers=headers)
    assert first.status == again.status == 202
    assert await first.read() == await again.read()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await total(redis, "ZCARD", redis_keys.events_index) == 1
    assert await total(redis, "XLEN", functools.partial(redis_keys.queue, "convertr")) == 1


async def test_concurrent_identical_requests_make_one_event(
    client: TestClient[Any, Any], redis: Redis, make_key: KeyMaker
) -> None:
    key = await make_key("write:leads")
    headers = {"X-API-Key": key, "webhook-id": "msg_2Lh0"}
    answers = await asyncio.gather(
        *(client.post("/v1/leads", json=LEAD, headers=headers) for _ in range(8))
    )
    bodies = {await a.read() for a in answers}
    assert [a.status for a in answers] == [202] * 8
    assert len(bodies) == 1
    assert await total(redis, "ZCARD", redis_keys.events_index) == 1


async def test_same_key_with_another_body_is_422(
    client: TestClient[Any, Any], redis: Redis, make_key: KeyMaker
) -> None:
    headers = {"X-API-Key": await make_key("write:leads"), "Idempotency-Key": "k1"}
    assert (await client.post("/v1/leads", json=LEAD, headers=headers)).status == 202
    other = await client.post("/v1/leads", json={"email": "x@example.com"}, headers=headers)
    assert other.status == 422
    assert (await other.json())["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    assert await total(redis, "ZCARD", redis_keys.events_index) == 1


async def test_keys_are_per_api_key_and_errors_are_not_remembered(
    client: TestClient[Any, Any], redis: Redis, make_key: KeyMaker
) -> None:
    one, two = await make_key("write:leads"), await make_key("write:leads")
    for key in (one, two):
        resp = await client.post(
            "/v1/leads", json=LEAD, headers={"X-API-Key": key, "Idempotency-Key": "same"}
        )
        assert resp.status == 202
    assert await total(redis, "ZCARD", redis_keys.events_index) == 2
    headers = {"X-API-Key": one, "Idempotency-Key": "fixed-later"}
    bad = await client.post("/v1/leads", json={"email": "nope"}, headers=headers)
    assert bad.status == 422
    # The client fixes the body and retries with the same key: it is not stuck.
    good = await client.post("/v1/leads", json=LEAD, headers=headers)
    assert good.status == 202


async def test_signed_requests(
    client: TestClient[Any, Any], redis: Redis, make_key: KeyMaker
) -> None:
    from datetime import UTC, datetime, timedelta

    import orjson
    from standardwebhooks.webhooks import Webhook

    admin = {"X-API-Key": await make_key("admin")}
    created = await (
        await client.post(
            "/v1/keys", json={"name": "n8n", "scopes": ["write:leads"], "signing": True},
            headers=admin,
        )
    ).json()  # fmt: skip
    secret = created["signing_secret"]
    assert secret.startswith("whsec_")
    listed = await (await client.get("/v1/keys", headers=admin)).json()
    assert secret not in str(listed)
    assert next(k for k in listed if k["id"] == created["id"])["signing"] is True

    body = orjson.dumps(LEAD)

    def signed(msg_id: str, when: datetime, raw: bytes = body) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {created['key']}",
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, when, raw.decode()),
        }

    now = datetime.now(UTC)
    ok = await client.post("/v1/leads", data=body, headers=signed("msg_1", now))
    assert ok.status == 202, await ok.text()
    replay = await client.post("/v1/leads", data=body, headers=signed("msg_1", now))
    assert await replay.read() == await ok.read()
    assert await total(redis, "ZCARD", redis_keys.events_index) == 1

    unsigned = await client.post(
        "/v1/leads", data=body, headers={"Authorization": f"Bearer {created['key']}",
                                         "Content-Type": "application/json"}
    )  # fmt: skip
    assert unsigned.status == 401
    assert "webhook-signature" in (await unsigned.json())["detail"]
    tampered = signed("msg_2", now)
    other = orjson.dumps({"email": "evil@example.com"})
    assert (await client.post("/v1/leads", data=other, headers=tampered)).status == 401
    stale = signed("msg_3", now - timedelta(minutes=6))
    assert (await client.post("/v1/leads", data=body, headers=stale)).status == 401
    assert await total(redis, "ZCARD", redis_keys.events_index) == 1


async def test_a_key_that_is_not_utf8_is_a_key_like_any_other(
    client: TestClient[Any, Any], redis: Redis, make_key: KeyMaker
) -> None:
    """Header bytes are opaque (here Latin-1 "été-1"): the same bytes repeat, others do not."""
    key = await make_key("write:leads")
    assert client.server.port is not None

    async def post(idem: bytes) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        body = b'{"email": "ida@example.com"}'
        writer.write(
            b"POST /v1/leads HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nX-API-Key: " + key.encode() + b"\r\n"
            b"Idempotency-Key: " + idem + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
        head, _, payload = answer.partition(b"\r\n\r\n")
        return int(head.split(b" ")[1]), payload

    first, again, other = (
        await post(b"\xe9t\xe9-1"),
        await post(b"\xe9t\xe9-1"),
        await post(b"\xe9t\xe9-2"),
    )
    assert [first[0], again[0], other[0]] == [202, 202, 202]
    assert again[1] == first[1] != other[1]
    assert await total(redis, "ZCARD", redis_keys.events_index) == 2


async def test_multipart_bodies_with_a_key(
    client: TestClient[Any, Any], redis: Redis, make_key: KeyMaker
) -> None:
    """The key's digest reads the body first; the multipart form is still parsed from it."""
    from aiohttp import FormData

    headers = {"X-API-Key": await make_key("write:contacts"), "Idempotency-Key": "form-1"}

    def form() -> FormData:
        data = FormData(default_to_multipart=True)
        data.add_field("email", "Cy@Example.com")
        data.add_field("traits[city]", "Dallas")
        return data

    first = await client.post("/v1/contacts", data=form(), headers=headers)
    assert first.status == 202, await first.text()
    reader = {"X-API-Key": await make_key("read:events")}
    shown = await client.get(f"/v1/events/{(await first.json())['id']}", headers=reader)
    event = await shown.json()
    assert (event["payload"]["email"], event["payload"]["city"]) == ("cy@example.com", "Dallas")
    upload = FormData()
    upload.add_field("email", "cy@example.com")
    upload.add_field("cv", b"%PDF", filename="cv.pdf")
    refused = await client.post(
        "/v1/contacts", data=upload, headers={**headers, "Idempotency-Key": "form-2"}
    )
    assert refused.status == 422
    assert (await refused.json())["errors"][0]["loc"] == ["body", "cv"]


async def test_an_answer_whose_events_redis_lost_is_not_given_again(
    client: TestClient[Any, Any], redis: Redis, make_key: KeyMaker
) -> None:
    # The answer is written after the events, in its own command (another slot): a
    # master that failed over in between can keep the answer and lose the events.
    key = await make_key("write:leads")
    headers = {"X-API-Key": key, "Idempotency-Key": "zap-run-lost"}
    first = await client.post("/v1/leads", json=[LEAD, {"email": "b@example.com"}], headers=headers)
    lost = (await first.json())["accepted"][1]["id"]
    await redis.delete(redis_keys.event(lost))
    again = await client.post("/v1/leads", json=[LEAD, {"email": "b@example.com"}], headers=headers)
    assert again.status == 202
    assert "Idempotent-Replayed" not in again.headers
    ids = [a["id"] for a in (await again.json())["accepted"]]
    assert lost not in ids
    assert all([await redis.exists(redis_keys.event(i)) for i in ids])
    # And that answer is given to a third, its events being there.
    third = await client.post("/v1/leads", json=[LEAD, {"email": "b@example.com"}], headers=headers)
    assert third.headers["Idempotent-Replayed"] == "true"
    assert await third.read() == await again.read()
