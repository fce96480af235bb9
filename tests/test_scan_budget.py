"""A filtered listing reads a bounded part of the time index per call, and says where it
stopped: the store (``Page.stopped_at``), ``GET /v1/events`` (its ``Relay-Continue-Before``
header) and the console's Events page ("Search older")."""

from __future__ import annotations

import html
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from relay import store as store_module
from relay.api.events import CONTINUE_HEADER
from relay.ids import new_event_id
from relay.models import Contact, EventKind, Lead
from relay.store import EventStore, NewEvent
from tests.test_console import sign_in

Client = TestClient[Any, Any]
MakeKey = Callable[..., Awaitable[str]]

#: 3 contacts, the oldest, then this many leads.
LEADS = 20


async def stored(redis: Redis) -> tuple[list[str], list[str]]:
    """The contacts' and the leads' ids, newest first, one millisecond apart each."""
    base_ms = int(datetime.now(UTC).timestamp() * 1000) - 60_000
    events = []
    for i in range(3 + LEADS):
        ms = base_ms + i
        kind: EventKind = "contact" if i < 3 else "lead"
        payload = Contact(email=f"c{i}@example.com") if i < 3 else Lead(email=f"l{i}@example.com")
        events.append(
            NewEvent(
                id=new_event_id(now_ms=ms),
                type=kind,
                mode="live",
                key_id="k",
                received_at=datetime.fromtimestamp(ms / 1000, UTC),
                payload=payload,
                destinations=(),
            )
        )
    await EventStore(redis, retention_s=3600, partitions=16).enqueue(events)
    newest_first = [e.id for e in reversed(events)]
    return newest_first[LEADS:], newest_first[:LEADS]


async def test_a_rare_filter_stops_at_the_budget_and_goes_on_from_there(redis: Redis) -> None:
    contacts, leads = await stored(redis)
    store = EventStore(redis, retention_s=3600, partitions=16)
    first = await store.page(limit=10, kind="contact", budget=8)
    assert first.events == []
    assert first.stopped_at == leads[7]  # the last of the 8 entries read
    assert first.stopped_ms is not None
    seen: list[str] = []
    before: str | None = first.stopped_at
    calls = 1
    while before is not None:
        page = await store.page(limit=10, kind="contact", budget=8, before=before)
        seen += [v.id for v in page.events]
        before, calls = page.stopped_at, calls + 1
    assert seen == contacts  # all of them, newest first, none twice
    # 8 entries, then 7 new ones a call (each reads its cursor again: events of one
    # millisecond are told apart by id): 8 + 7 + 7 + 1.
    assert calls == 4
    # A budget that ends exactly with the index leaves nothing unread: no cursor.
    whole = await store.page(limit=10, kind="contact", budget=3 + LEADS)
    assert [v.id for v in whole.events] == contacts
    assert whole.stopped_at is None
    # A page that fills within the budget needs no cursor either.
    full = await store.page(limit=5, budget=8)
    assert [v.id for v in full.events] == leads[:5]
    assert full.stopped_at is None


async def test_the_api_says_where_it_stopped(
    client: Client, make_key: MakeKey, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    contacts, _ = await stored(redis)
    monkeypatch.setattr(store_module, "SCAN_BUDGET", 8)
    headers = {"X-API-Key": await make_key("read:events")}
    seen: list[str] = []
    params = {"type": "contact", "limit": "10"}
    for _ in range(10):
        answer = await client.get("/v1/events", params=params, headers=headers)
        assert answer.status == 200
        seen += [e["id"] for e in await answer.json()]
        cursor = answer.headers.get(CONTINUE_HEADER)
        if cursor is None:
            break
        params["before"] = cursor
    assert seen == contacts
    assert params["before"] != contacts[0]  # it did stop on the way
    doc = await (await client.get("/openapi.json")).json()
    documented = doc["paths"]["/v1/events"]["get"]["responses"]["200"]["headers"]
    assert CONTINUE_HEADER in documented


async def test_the_events_page_offers_to_search_older(
    client: Client, make_key: MakeKey, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    contacts, leads = await stored(redis)
    monkeypatch.setattr(store_module, "SCAN_BUDGET", 8)
    await sign_in(client, await make_key("read:events"))
    url = "/console/events?type=contact"
    found: list[str] = []
    for _ in range(10):
        page = await (await client.get(url)).text()
        found += re.findall(r'href="/console/events/(evt_\w+)"', page)
        older = re.search(r'<a href="([^"]+)">Search older</a>', page)
        if older is None:
            break
        assert "No more matches among events newer than" in page
        url = html.unescape(older.group(1))
        assert "type=contact" in url  # the filter goes on too
    assert found == contacts
    assert not set(found) & set(leads)
