"""Each subscription's last notification outcome, kept by settle.lua as real workers send
notifications to real loopback receivers, and shown by ``GET /v1/hooks`` and the
console's Hooks page."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from relay import redis_keys
from relay.hooks import HookStore
from relay.settings import Settings
from relay.worker import Worker
from tests.events import total
from tests.fakes import FakeReceiver
from tests.test_console import XSS_ANSWER, sign_in
from tests.test_hooks import drain, subscribe

Client = TestClient[Any, Any]
MakeKey = Callable[..., Awaitable[str]]

#: A failed notification waits an hour before its retry: it stays "retrying".
HOOKS = "[hooks]\nallow_private_targets = true\nretry_schedule = [3600]\n"


@pytest.fixture
async def served(
    app_client: Any, make_settings: Callable[..., Settings]
) -> tuple[Client, Settings]:
    """The API, with notifications retried only after an hour, and its settings."""
    settings = make_settings(HOOKS)
    return await app_client(settings), settings


def row(page: str, hook_id: str) -> str:
    """The Hooks page's table row of one subscription."""
    found = re.search(rf"<tr>\s*<td class=\"mono\">{hook_id}</td>.*?</tr>", page, re.S)
    assert found is not None, page
    return found.group(0)


async def until_retrying(redis: Redis, settings: Settings, hook_id: str) -> None:
    """Run a worker until the subscription's notification waits for its retry."""
    worker = Worker(settings, redis=redis)
    running = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(20):
            while True:
                last = await redis.hget(redis_keys.HOOKS_LAST, hook_id)
                if last and orjson.loads(last)["result"] == "retrying":
                    break
                await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await asyncio.wait_for(running, 20)


async def test_each_subscription_shows_its_last_outcome(
    served: tuple[Client, Settings], make_key: MakeKey, redis: Redis
) -> None:
    client, settings = served
    async with FakeReceiver() as ok_then_500, FakeReceiver() as rejects_then_ok:
        hooks_key = await make_key("webhooks")
        a = await subscribe(client, hooks_key, "lead.received", f"{ok_then_500.url}/a")
        b = await subscribe(client, hooks_key, "lead.received", f"{rejects_then_ok.url}/b")
        await sign_in(client, await make_key("admin"))
        page = await (await client.get("/console/hooks")).text()
        assert "none yet" in row(page, a["id"])
        lead_key = {"X-API-Key": await make_key("write:leads")}

        rejects_then_ok.script(status=400, body=XSS_ANSWER)
        await client.post("/v1/leads", json={"email": "a@example.com"}, headers=lead_key)
        await drain(settings, redis)
        page = await (await client.get("/console/hooks")).text()
        assert re.search(r'"delivered">delivered</span>: 200 at \d{4}-', row(page, a["id"]))
        assert re.search(r'"dead">dead</span>: 400 \(http_400\) at ', row(page, b["id"]))
        listed = await (await client.get("/v1/hooks", headers={"X-API-Key": hooks_key})).json()
        last = {h["id"]: h["last_notification"] for h in listed}
        assert last[a["id"]]["result"] == "delivered"
        assert last[a["id"]]["status_code"] == 200
        assert last[a["id"]]["notification"].startswith("ntf_")
        assert last[b["id"]]["result"] == "dead"
        assert last[b["id"]]["status_code"] == 400
        assert last[b["id"]]["error"] == "http_400"
        assert ok_then_500.requests[0].headers["webhook-id"] == last[a["id"]]["notification"]

        ok_then_500.script(status=500, body="<b>down</b>")
        await client.post("/v1/leads", json={"email": "b@example.com"}, headers=lead_key)
        await until_retrying(redis, settings, a["id"])
        page = await (await client.get("/console/hooks")).text()
        assert re.search(r'"retrying">retrying</span>: 500 \(http_500\) at ', row(page, a["id"]))
        assert re.search(r'"delivered">delivered</span>: 200 at ', row(page, b["id"]))
        listed = await (await client.get("/v1/hooks", headers={"X-API-Key": hooks_key})).json()
        assert {h["id"]: h["last_notification"]["result"] for h in listed} == {
            a["id"]: "retrying",
            b["id"]: "delivered",
        }

        # Deleting a subscription deletes its outcome.
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page)
        assert csrf is not None
        deleted = await client.post(f"/console/hooks/{a['id']}/delete", data={"csrf": csrf[1]})
        assert deleted.status == 200
        assert await redis.hget(redis_keys.HOOKS_LAST, a["id"]) is None


async def test_a_deleted_subscription_gets_no_outcome_back(
    served: tuple[Client, Settings], make_key: MakeKey, redis: Redis
) -> None:
    client, settings = served
    async with FakeReceiver() as receiver:
        sub = await subscribe(
            client, await make_key("webhooks"), "lead.received", f"{receiver.url}/x"
        )
        lead_key = {"X-API-Key": await make_key("write:leads")}
        await client.post("/v1/leads", json={"email": "a@example.com"}, headers=lead_key)
        # Deleted while its notification is queued: that one is settled dead
        # (subscription_deleted), and settle.lua keeps no outcome for a hook that is gone.
        assert await HookStore(redis).delete(sub["id"])
        await drain(settings, redis)
        assert receiver.requests == []
        assert (
            await total(
                redis, "ZCARD", functools.partial(redis_keys.dead, redis_keys.NOTIFICATIONS)
            )
            == 1
        )
        assert await redis.hgetall(redis_keys.HOOKS_LAST) == {}
