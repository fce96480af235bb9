"""Redis refusing writes (OOM) or gone: every route answers 503 problem+json, never 500.

The error middleware is the one place that turns Redis trouble into a 503, so
these go through the whole app against a real redis-server of their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from relay import redis_keys
from relay.api import create_app
from relay.api.state import HOOKS, KEYS
from relay.connect import redis_client
from relay.hooks import HookStore
from relay.ids import partition_of
from relay.keystore import KeyStore
from relay.models import SCOPES
from relay.settings import Settings
from tests.conftest import DESTINATIONS_TOML
from tests.redis_server import RedisServer

# The app runs no worker, so a loopback target is never sent to.
TOML = DESTINATIONS_TOML + "\n[hooks]\nallow_private_targets = true\n"
LEAD = {"email": "oom@example.com"}
FORM = {"email": "form@example.com", "traits[city]": "Dallas"}


class Staged:
    """What the routes under test act on, made while Redis still took writes."""

    def __init__(self, key: str, limited: str, victim_id: str, hook_id: str, dead_id: str):
        self.headers = {"X-API-Key": key}
        self.limited = {"X-API-Key": limited}
        self.victim_id, self.hook_id, self.dead_id = victim_id, hook_id, dead_id

    def writes(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Every write route, ingest in each of its shapes, with and without Idempotency-Key."""
        h = self.headers
        idem = {**h, "Idempotency-Key": "zap-run-7"}
        return [
            ("POST", "/v1/leads", {"json": LEAD, "headers": h}),
            ("POST", "/v1/leads", {"json": LEAD, "headers": idem}),
            ("POST", "/v1/leads", {"json": [LEAD, LEAD], "headers": h}),
            ("POST", "/v1/leads", {"json": [LEAD], "headers": idem}),
            ("POST", "/v1/leads", {"data": FORM, "headers": {**h, "webhook-id": "msg_9"}}),
            ("POST", "/v1/leads", {"json": LEAD, "headers": self.limited}),
            ("POST", "/v1/contacts", {"json": LEAD, "headers": h}),
            ("POST", "/v1/contacts", {"json": LEAD, "headers": idem}),
            ("POST", "/v1/contacts", {"json": [LEAD, {"phone": "nope"}], "headers": h}),
            ("POST", "/v1/contacts", {"data": FORM, "headers": h}),
            ("POST", "/v1/keys", {"json": {"name": "n", "scopes": ["write:leads"]}, "headers": h}),
            ("DELETE", f"/v1/keys/{self.victim_id}", {"headers": h}),
            (
                "POST",
                "/v1/hooks",
                {"json": {"target_url": "http://127.0.0.1:9/h", "event": "lead.received"}}
                | {"headers": h},
            ),
            ("POST", "/v1/dead-letters/replay", {"json": {"all": True}, "headers": h}),
            (
                "POST",
                "/v1/dead-letters/replay",
                {"json": {"event_ids": [self.dead_id], "destination": "convertr"}, "headers": h},
            ),
        ]

    def reads(self) -> list[tuple[str, str, dict[str, Any]]]:
        h = self.headers
        return [
            ("GET", "/v1/events", {"headers": h}),
            ("GET", f"/v1/events/{self.dead_id}", {"headers": h}),
            ("GET", "/v1/me", {"headers": h}),
            ("GET", "/v1/keys", {"headers": h}),
            ("GET", "/v1/hooks", {"headers": h}),
            ("GET", "/v1/dead-letters", {"headers": h}),
        ]


async def _stage(server: RedisServer, client: TestClient[Any, Any]) -> Staged:
    redis = redis_client(server.url)
    try:
        keys = KeyStore(redis)
        record, key = await keys.create(name="all", scopes=list(SCOPES))
        _, limited = await keys.create(name="paced", scopes=["write:leads"], rate_limit="100/m")
        victim, _ = await keys.create(name="victim", scopes=["write:leads"])
        hook = await HookStore(redis).create(
            key_id=record.id, event="lead.received", target_url="http://127.0.0.1:9/h"
        )
        resp = await client.post("/v1/leads", json=LEAD, headers={"X-API-Key": key})
        assert resp.status == 202, await resp.text()
        dead_id = (await resp.json())["id"]
        dead = redis_keys.dead("convertr", partition_of(dead_id))
        await redis.zadd(dead, {dead_id: int(time.time() * 1000)})
    finally:
        await redis.aclose()
    return Staged(key, limited, victim.id, hook.id, dead_id)


async def _assert_503(resp: Any, what: str) -> None:
    assert resp.status == 503, f"{what}: {resp.status} {await resp.text()}"
    assert resp.content_type == "application/problem+json", what
    assert resp.headers["Retry-After"].isdigit(), what
    body = await resp.json()
    assert body["status"] == 503, what
    assert body["type"] == "/problems/unavailable", what
    assert "Redis" in body["detail"], what


def _assert_logged_without_traceback(caplog: pytest.LogCaptureFixture, count: int) -> None:
    api = [r for r in caplog.records if r.name == "relay.api"]
    assert not [r for r in api if r.levelno >= logging.ERROR or r.exc_info], [
        r.getMessage() for r in api
    ]
    assert len([r for r in api if r.getMessage().startswith("503 ")]) == count


Stack = tuple[RedisServer, Redis, TestClient[Any, Any], Staged]


@pytest.fixture
async def stack(
    tmp_path: Path, aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> AsyncIterator[Stack]:
    """A redis-server of the test's own, the app on it, and what the routes act on."""
    server = RedisServer(tmp_path / "own")
    server.start()
    redis = redis_client(server.url)
    client = await aiohttp_client(create_app(make_settings(TOML), redis=redis))
    yield server, redis, client, await _stage(server, client)
    await client.close()
    await redis.aclose()
    server.stop()


async def test_every_write_route_is_503_while_redis_refuses_writes(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    _, redis, client, staged = stack
    before = await redis.dbsize()
    caplog.set_level(logging.WARNING, logger="relay.api")
    writes = staged.writes()
    await redis.config_set("maxmemory", "1")  # every write now fails with OOM
    try:
        for method, path, kw in writes:
            await _assert_503(await client.request(method, path, **kw), f"{method} {path} {kw}")
        # Redis takes deletes whatever its memory: the subscription is really gone.
        gone = await client.delete(f"/v1/hooks/{staged.hook_id}", headers=staged.headers)
        assert gone.status == 204
        # Reads still work while writes are refused.
        for method, path, kw in staged.reads():
            assert (await client.request(method, path, **kw)).status == 200, path
    finally:
        await redis.config_set("maxmemory", "0")
    assert await redis.dbsize() == before
    dead = redis_keys.dead("convertr", partition_of(staged.dead_id))
    assert await redis.zscore(dead, staged.dead_id) is not None
    _assert_logged_without_traceback(caplog, len(writes))
    # Nothing was left claimed: the same Idempotency-Key works once Redis takes writes.
    again = await client.post("/v1/leads", json=LEAD, headers=writes[1][2]["headers"])
    assert again.status == 202, await again.text()


async def test_every_route_is_503_while_redis_is_down(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    server, _, client, staged = stack
    server.stop()
    # Once the invalidation channels are lost, no cached key or subscription answers for Redis.
    app = client.app
    for _ in range(500):
        if "live" not in repr(app[KEYS]) + repr(app[HOOKS]):
            break
        await asyncio.sleep(0.02)
    caplog.set_level(logging.WARNING, logger="relay.api")
    routes = [
        *staged.writes(),
        ("DELETE", f"/v1/hooks/{staged.hook_id}", {"headers": staged.headers}),
        *staged.reads(),
    ]
    # At once: each waits out the client's reconnect attempts (under a second) first.
    answers = await asyncio.gather(*(client.request(m, p, **kw) for m, p, kw in routes))
    for (method, path, kw), resp in zip(routes, answers, strict=True):
        await _assert_503(resp, f"{method} {path} {kw}")
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/healthz")).status == 200
    _assert_logged_without_traceback(caplog, len(routes))


async def test_any_other_redis_error_is_a_bug_not_an_outage(
    client: TestClient[Any, Any],
    redis: Redis,
    make_key: Callable[..., Awaitable[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A 503 would have the client retry what can never work; a 500 and a traceback
    # in the log say that relay needs fixing.
    key = await make_key("read:events")
    await redis.set(redis_keys.events_index(0), "not a sorted set")
    resp = await client.get("/v1/events", headers={"X-API-Key": key})
    assert resp.status == 500, await resp.text()
    assert (await resp.json())["type"] == "/problems/internal-error"
    (logged,) = [r for r in caplog.records if r.name == "relay.api" and r.exc_info]
    assert logged.exc_info is not None
    assert "WRONGTYPE" in str(logged.exc_info[1])
