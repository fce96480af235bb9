"""The auth matrix: every way a key can be wrong, through every way it can be sent."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from relay.keystore import KeyStore

LEAD = {"email": "ada@example.com", "first_name": "Ada"}


def _send(how: str, key: str | None) -> dict[str, Any]:
    """Request kwargs carrying ``key`` the way ``how`` says."""
    if key is None:
        return {}
    if how == "bearer":
        return {"headers": {"Authorization": f"Bearer {key}"}}
    if how == "header":
        return {"headers": {"X-API-Key": key}}
    return {"params": {"api_key": key}}


async def _key_in_state(redis: Redis, state: str) -> str | None:
    store = KeyStore(redis)
    if state == "missing":
        return None
    if state == "unknown":
        return "rly_live_" + "A" * 32
    if state == "malformed":
        return "not-a-key"
    if state == "expired":
        past = datetime.now(UTC) - timedelta(seconds=1)
        _, key = await store.create(name="old", scopes=["write:leads"], expires_at=past)
        return key
    if state == "revoked":
        record, key = await store.create(name="gone", scopes=["write:leads"])
        await store.revoke(record.id)
        return key
    if state == "wrong_scope":
        _, key = await store.create(name="contacts only", scopes=["write:contacts"])
        return key
    if state == "future_expiry":
        future = datetime.now(UTC) + timedelta(days=1)
        _, key = await store.create(name="ok", scopes=["write:leads"], expires_at=future)
        return key
    _, key = await store.create(name="ok", scopes=["write:leads"])
    return key


@pytest.mark.parametrize("how", ["bearer", "header", "query"])
@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("missing", 401),
        ("unknown", 401),
        ("malformed", 401),
        ("expired", 401),
        ("revoked", 401),
        ("wrong_scope", 403),
        ("future_expiry", 202),
        ("valid", 202),
    ],
)
async def test_auth_matrix(
    client: TestClient[Any, Any], redis: Redis, how: str, state: str, status: int
) -> None:
    key = await _key_in_state(redis, state)
    resp = await client.post("/v1/leads", json=LEAD, **_send(how, key))
    assert resp.status == status, await resp.text()
    if status >= 400:
        assert resp.content_type == "application/problem+json"
        body = await resp.json()
        assert body["status"] == status
        assert body["title"]
        assert body["detail"]
        assert body["type"].startswith("/problems/")
        if key is not None:
            assert key not in await resp.text()
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    if state in ("expired", "revoked"):
        assert state in (await resp.json())["detail"]


@pytest.mark.parametrize("how", ["bearer", "header", "query"])
async def test_forbidden_destination(
    client: TestClient[Any, Any], make_key: Callable[..., Awaitable[str]], how: str
) -> None:
    key = await make_key("write:leads", destinations=["convertr"])
    resp = await client.post("/v1/leads?destination=conveyour", json=LEAD, **_send(how, key))
    assert resp.status == 403
    assert "conveyour" in (await resp.json())["detail"]
    allowed = await client.post("/v1/leads?destination=convertr", json=LEAD, **_send(how, key))
    assert allowed.status == 202
    assert (await allowed.json())["destinations"] == ["convertr"]


async def test_restricted_key_routes_only_to_its_destinations(
    client: TestClient[Any, Any], make_key: Callable[..., Awaitable[str]]
) -> None:
    key = await make_key("write:leads", destinations=["convertr"])
    resp = await client.post("/v1/leads", json=LEAD, headers={"X-API-Key": key})
    assert resp.status == 202
    assert (await resp.json())["destinations"] == ["convertr"]


async def test_non_bearer_authorization_is_explained(client: TestClient[Any, Any]) -> None:
    resp = await client.post(
        "/v1/leads", json=LEAD, headers={"Authorization": "Basic Zm9vOmJhcg=="}
    )
    assert resp.status == 401
    assert "Bearer" in (await resp.json())["detail"]


async def test_public_routes_need_no_key(client: TestClient[Any, Any]) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert (await client.get(path)).status == 200, path


async def test_me_for_any_scope(
    client: TestClient[Any, Any], make_key: Callable[..., Awaitable[str]]
) -> None:
    key = await make_key("read:events", name="zap", destinations=["conveyour"])
    resp = await client.get("/v1/me", headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200
    me = await resp.json()
    assert me["name"] == "zap"
    assert me["prefix"] == key[:12]
    assert me["scopes"] == ["read:events"]
    assert me["destinations"] == ["conveyour"]
    assert me["mode"] == "live"
    assert me["id"].startswith("key_")
    assert key not in await resp.text()


async def test_a_keys_own_rate_limit(
    client: TestClient[Any, Any], make_key: Callable[..., Awaitable[str]]
) -> None:
    key = await make_key("write:leads", rate_limit="3/m")
    other = await make_key("write:leads")
    answers = [
        await client.post("/v1/leads", json=LEAD, headers={"X-API-Key": key}) for _ in range(4)
    ]
    assert [a.status for a in answers] == [202, 202, 202, 429]
    assert [a.headers["RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
    assert all(a.headers["RateLimit-Limit"] == "3" for a in answers)
    over = answers[-1]
    assert 0 < int(over.headers["Retry-After"]) <= 60
    assert int(over.headers["RateLimit-Reset"]) == int(over.headers["Retry-After"])
    body = await over.json()
    assert body["status"] == 429
    assert "3/1m" in body["detail"] or "3/m" in body["detail"]
    # Other keys are not affected.
    assert (await client.post("/v1/leads", json=LEAD, headers={"X-API-Key": other})).status == 202
