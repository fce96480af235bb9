"""Search: ``EventStore.find`` by event id, email or phone, and ``GET /v1/events?q=``.

Against a real redis-server: the email and phone index is written by the enqueue
script, with the event, and read back newest first."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from relay import redis_keys
from relay.cli import main
from relay.ids import new_event_id
from relay.models import Lead
from relay.settings import Settings
from relay.store import EventStore, NewEvent

KeyMaker = Callable[..., Awaitable[str]]


def lead(*, email: str | None = None, phone: str | None = None, ago_s: float = 0) -> NewEvent:
    """A live lead received ``ago_s`` seconds ago, to no destination."""
    at = datetime.now(UTC) - timedelta(seconds=ago_s)
    return NewEvent(
        id=new_event_id(now_ms=int(at.timestamp() * 1000)),
        type="lead",
        mode="live",
        key_id="key_test",
        received_at=at,
        payload=Lead(email=email, phone=phone),
        destinations=(),
    )


async def test_find_by_email_phone_and_id(redis: Redis) -> None:
    store = EventStore(redis, retention_s=3600, partitions=16)
    ann = lead(email="ann@example.com", phone="+14155550100")
    other = lead(email="bob@example.com", phone="+447123456789")
    await store.enqueue([ann, other])

    async def ids(text: str, limit: int = 10) -> list[str]:
        return [v.id for v in await store.find(text, limit=limit)]

    for typed in ("ann@example.com", " Ann@Example.COM ", "ANN@EXAMPLE.COM"):
        assert await ids(typed) == [ann.id], typed
    for typed in ("+14155550100", "(415) 555-0100", "+1 415-555-0100", "415.555.0100"):
        assert await ids(typed) == [ann.id], typed
    for typed in ("+44 7123 456789", "0044 (7123) 456-789"):
        assert await ids(typed) == [other.id], typed
    assert await ids(ann.id) == [ann.id]
    assert await ids(ann.id.lower()) == [ann.id]
    for nothing in ("", "   ", "nobody@example.com", "+1 212 555 0199", "ann", "evt_nope"):
        assert await ids(nothing) == [], nothing
    # The index keys hold no lead data: only digests.
    names = [k async for k in redis.scan_iter(match=f"{redis_keys.who(0, 'email', 'x')[:-20]}*")]
    assert len(names) == 4
    assert not any("ann" in k or "4155550100" in k for k in names)


async def test_a_contact_s_events_newest_first_and_limit(redis: Redis) -> None:
    store = EventStore(redis, retention_s=3600, partitions=16)
    events = [lead(email="cy@example.com", ago_s=30 - i) for i in range(3)]
    await store.enqueue(events[:1])
    await store.enqueue([lead(email="someone@example.com"), *events[1:]])
    newest_first = [e.id for e in reversed(events)]
    assert [v.id for v in await store.find("cy@example.com", limit=10)] == newest_first
    assert [v.id for v in await store.find("cy@example.com", limit=2)] == newest_first[:2]
    assert await store.find("cy@example.com", limit=0) == []


async def test_events_past_the_retention_are_not_found(redis: Redis) -> None:
    store = EventStore(redis, retention_s=60, partitions=16)
    old = lead(email="old@example.com", ago_s=120)  # received before the retention
    fresh = lead(email="old@example.com")
    await store.enqueue([old])
    await store.enqueue([fresh])
    key = redis_keys.who(0, "email", "old@example.com")
    # Trimmed where it is written: the zset holds only what the retention keeps...
    assert await redis.zrange(key, 0, -1) == [fresh.id]
    assert 0 < await redis.ttl(key) <= 60
    # ...and an entry whose record expired (before the next write trims it) is skipped.
    await redis.delete(redis_keys.event(fresh.id))
    assert await store.find("old@example.com", limit=10) == []


async def test_a_search_reads_no_further_back_than_its_retention(redis: Redis) -> None:
    await EventStore(redis, retention_s=3600, partitions=16).enqueue(
        [lead(email="gi@example.com", ago_s=120)]
    )
    assert (
        len(
            await EventStore(redis, retention_s=3600, partitions=16).find("gi@example.com", limit=5)
        )
        == 1
    )
    assert (
        await EventStore(redis, retention_s=60, partitions=16).find("gi@example.com", limit=5) == []
    )


async def test_values_that_share_a_digest_never_mix(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    same = "{{relay:{}}}:who:same".format
    monkeypatch.setattr(redis_keys, "who", lambda partition, kind, value: same(partition))
    store = EventStore(redis, retention_s=3600, partitions=16)
    ann, bob = lead(email="ann@example.com"), lead(phone="+14155550100")
    await store.enqueue([ann, bob])
    assert [v.id for v in await store.find("ann@example.com", limit=5)] == [ann.id]
    assert [v.id for v in await store.find("+14155550100", limit=5)] == [bob.id]


async def test_the_index_expires_with_the_events(redis: Redis) -> None:
    store = EventStore(redis, retention_s=1, partitions=16)
    await store.enqueue([lead(email="brief@example.com", phone="+14155550100")])
    assert len(await store.find("brief@example.com", limit=10)) == 1
    await asyncio.sleep(1.3)
    assert await store.find("brief@example.com", limit=10) == []
    assert await store.find("+14155550100", limit=10) == []
    assert await redis.exists(redis_keys.who(0, "email", "brief@example.com")) == 0


async def test_batch_ingest_indexes_every_item_and_no_rejected_one(
    client: TestClient[Any, Any], make_key: KeyMaker
) -> None:
    writer = {"X-API-Key": await make_key("write:leads")}
    reader = {"X-API-Key": await make_key("read:events")}
    batch = [
        {"email": "b0@example.com", "phone": "+1 415 555 0100"},
        {"email": "not-an-email", "phone": "+1 415 555 0101"},  # rejected
        {"Email": "B2@Example.com"},
        {"mobile": "(415) 555-0102"},
    ]
    resp = await client.post("/v1/leads", json=batch, headers=writer)
    assert resp.status == 207, await resp.text()
    answer = await resp.json()
    accepted = {a["index"]: a["id"] for a in answer["accepted"]}
    assert sorted(accepted) == [0, 2, 3]

    async def q(text: str) -> list[str]:
        found = await client.get("/v1/events", params={"q": text}, headers=reader)
        assert found.status == 200, await found.text()
        return [e["id"] for e in await found.json()]

    assert await q("b0@example.com") == [accepted[0]]
    assert await q("415-555-0100") == [accepted[0]]
    assert await q("b2@example.com") == [accepted[2]]
    assert await q("+14155550102") == [accepted[3]]
    assert await q(accepted[3]) == [accepted[3]]
    assert await q("+1 415 555 0101") == []  # the rejected item's phone


async def test_events_q_newest_first_limit_and_bad_queries(
    client: TestClient[Any, Any], make_key: KeyMaker
) -> None:
    writer = {"X-API-Key": await make_key("write:contacts")}
    reader = {"X-API-Key": await make_key("read:events")}
    ids = []
    for i in range(3):
        resp = await client.post(
            "/v1/contacts", json={"email": "Dee@Example.com", "n": i}, headers=writer
        )
        ids.append((await resp.json())["id"])
    found = await client.get("/v1/events?q=dee%40example.com&limit=2", headers=reader)
    assert [e["id"] for e in await found.json()] == ids[::-1][:2]
    both = await client.get("/v1/events?q=dee%40example.com&type=lead", headers=reader)
    assert (both.status, await both.json()) == (200, [])  # filters apply to what q finds
    older = await client.get(f"/v1/events?q=dee%40example.com&before={ids[2]}", headers=reader)
    assert [e["id"] for e in await older.json()] == [ids[1], ids[0]]
    blank = await client.get("/v1/events?q=%20%20", headers=reader)
    assert (blank.status, await blank.json()) == (200, [])
    for bad in ("q=", "q=" + "x" * 321):
        resp = await client.get(f"/v1/events?{bad}", headers=reader)
        assert resp.status == 422, bad
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["errors"][0]["loc"][:2] == ["query", "q"], bad
    assert (await client.get("/v1/events?q=x", headers=writer)).status == 403


async def test_relay_events_find(
    redis: Redis,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = EventStore(redis, retention_s=3600, partitions=16)
    older, newer = lead(phone="+14155550100", ago_s=5), lead(phone="+14155550100")
    await store.enqueue([older, newer])
    assert settings.redis_url is not None
    assert settings.config is not None
    monkeypatch.setenv("RELAY_REDIS_URL", settings.redis_url.get_secret_value())
    monkeypatch.setenv("RELAY_CONFIG", str(settings.config))
    # The command runs its own event loop: in a thread, beside this test's.
    assert await asyncio.to_thread(main, ["events", "find", "(415) 555-0100"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["event", "type", "status", "received", "email", "phone"]
    assert [line.split()[0] for line in lines[1:]] == [newer.id, older.id]
    assert lines[1].split()[-1] == "+14155550100"
    found = ["events", "find", "+1 415 555 0100", "--json", "--limit", "1"]
    assert await asyncio.to_thread(main, found) == 0
    assert [orjson.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == [newer.id]
    assert await asyncio.to_thread(main, ["events", "find", "nobody@example.com"]) == 1
    assert "no event found" in capsys.readouterr().err
