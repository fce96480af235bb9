"""A key never reaches past itself: the keys it creates, lists and revokes, and the
dead letters a destination-restricted admin key sees and replays."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from relay import redis_keys
from relay.apikeys import KeyRecord, broader_fields
from relay.keystore import KeyStore
from relay.models import DeliveryStatus
from relay.store import EventStore
from tests.events import members, new_lead, settle_next

Client = TestClient[Any, Any]
KeyMaker = Callable[..., Awaitable[str]]

SOON = datetime.now(UTC) + timedelta(days=1)


async def _key_ids(redis: Redis) -> set[str]:
    return {r.id for r in await KeyStore(redis).list()}


# --- creating keys --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("holder", "body", "fields"),
    [
        # The issue: a destination-restricted admin minting an unrestricted admin.
        ({"destinations": ["convertr"]}, {"scopes": ["admin"]}, ["destinations"]),
        ({"destinations": ["convertr"]}, {"destinations": ["conveyour"]}, ["destinations"]),
        (
            {"destinations": ["convertr"]},
            {"destinations": ["convertr", "conveyour"]},
            ["destinations"],
        ),
        ({"mode": "test"}, {"mode": "live"}, ["mode"]),
        ({"expires_at": SOON}, {}, ["expires"]),
        ({"expires_at": SOON}, {"expires": "30d"}, ["expires"]),
        ({"rate_limit": "100/m"}, {}, ["rate_limit"]),
        ({"rate_limit": "100/m"}, {"rate_limit": "1000/10m"}, ["rate_limit"]),  # a bigger burst
        ({"rate_limit": "100/m"}, {"rate_limit": "10/s"}, ["rate_limit"]),  # a faster rate
        (
            {"destinations": ["convertr"], "mode": "test"},
            {"scopes": ["admin", "write:leads"]},
            ["destinations", "mode"],
        ),
    ],
)
async def test_a_key_cannot_create_a_broader_key(
    client: Client,
    make_key: KeyMaker,
    redis: Redis,
    holder: dict[str, Any],
    body: dict[str, Any],
    fields: list[str],
) -> None:
    admin = await make_key("admin", **holder)
    before = await _key_ids(redis)
    resp = await client.post(
        "/v1/keys",
        json={"name": "wider", "scopes": ["write:leads"], **body},
        headers={"X-API-Key": admin},
    )
    assert resp.status == 403, await resp.text()
    assert resp.content_type == "application/problem+json"
    doc = await resp.json()
    assert [e["loc"] for e in doc["errors"]] == [["body", f] for f in fields]
    assert doc["detail"].startswith("the new key would be broader than this key")
    assert admin not in await resp.text()
    assert await _key_ids(redis) == before


async def test_a_key_within_reach_is_created(client: Client, make_key: KeyMaker) -> None:
    admin = await make_key(
        "admin", destinations=["convertr"], mode="test", expires_at=SOON, rate_limit="100/m"
    )
    resp = await client.post(
        "/v1/keys",
        json={
            "name": "narrower",
            "scopes": ["admin", "write:leads"],
            "destinations": ["convertr"],
            "mode": "test",
            "expires": "12h",
            "rate_limit": "10/30s",
        },
        headers={"X-API-Key": admin},
    )
    assert resp.status == 201, await resp.text()
    made = await resp.json()
    assert made["destinations"] == ["convertr"]
    # The key it made is bound the same way: it cannot make an unrestricted one either.
    again = await client.post(
        "/v1/keys",
        json={
            "name": "x",
            "scopes": ["admin"],
            "mode": "test",
            "expires": "1h",
            "rate_limit": "1/m",
        },
        headers={"X-API-Key": made["key"]},
    )
    assert again.status == 403
    assert [e["loc"] for e in (await again.json())["errors"]] == [["body", "destinations"]]


def _record(**kw: Any) -> KeyRecord:
    fields: dict[str, Any] = {
        "id": "key_x",
        "digest": "0" * 64,
        "name": "x",
        "prefix": "rly_live_abc",
        "scopes": ("admin",),
        "destinations": (),
        "mode": "live",
        "created_at": datetime.now(UTC),
    }
    return KeyRecord(**(fields | kw))


def test_broader_fields_unit() -> None:
    ask: dict[str, Any] = {
        "destinations": (),
        "mode": "live",
        "expires_at": None,
        "rate_limit": None,
    }
    # admin counts as every scope; without it, only the scopes a key has can be granted.
    assert broader_fields(_record(), scopes=["webhooks", "admin"], **ask) == []
    narrow = _record(scopes=("write:leads", "read:events"))
    assert broader_fields(narrow, scopes=["read:events"], **ask) == []
    assert [f for f, _ in broader_fields(narrow, scopes=["webhooks"], **ask)] == ["scopes"]
    # Equal is within reach; a slower rate with a smaller burst too.
    limited = _record(rate_limit="100/m", expires_at=SOON)
    assert limited.reaches(limited)
    assert limited.reaches(_record(rate_limit="50/m", expires_at=SOON - timedelta(hours=1)))
    assert not limited.reaches(_record(rate_limit="100/30s", expires_at=SOON))
    assert not limited.reaches(_record(rate_limit="50/m", expires_at=SOON + timedelta(seconds=1)))


# --- listing and revoking keys ----------------------------------------------------------


async def test_a_restricted_admin_lists_and_revokes_only_keys_within_reach(
    client: Client, make_key: KeyMaker, redis: Redis
) -> None:
    root = await make_key("admin", name="root")
    boss = await make_key("admin", name="convertr-admin", destinations=["convertr"])
    await make_key("write:leads", name="convertr-zap", destinations=["convertr"])
    await make_key("write:contacts", name="conveyour-zap", destinations=["conveyour"])
    await make_key("write:leads", name="anywhere")
    ids = {r.name: r.id for r in await KeyStore(redis).list()}

    def names(doc: list[dict[str, Any]]) -> set[str]:
        return {k["name"] for k in doc}

    as_boss, as_root = {"X-API-Key": boss}, {"X-API-Key": root}
    seen = await (await client.get("/v1/keys", headers=as_boss)).json()
    assert names(seen) == {"convertr-admin", "convertr-zap"}
    everything = await (await client.get("/v1/keys", headers=as_root)).json()
    assert names(everything) == set(ids)

    for name in ("root", "conveyour-zap", "anywhere"):
        refused = await client.delete(f"/v1/keys/{ids[name]}", headers=as_boss)
        assert refused.status == 403, name
        doc = await refused.json()
        assert doc["errors"][0]["loc"] == ["path", "id"]
        assert "destinations" in doc["detail"]
    assert (await client.get("/v1/me", headers=as_root)).status == 200  # still works
    assert (await client.delete("/v1/keys/key_nonesuch", headers=as_boss)).status == 404
    assert (await client.delete(f"/v1/keys/{ids['convertr-zap']}", headers=as_boss)).status == 204
    assert (await client.delete(f"/v1/keys/{ids['convertr-admin']}", headers=as_root)).status == 204


# --- dead letters -----------------------------------------------------------------------


async def _dead(redis: Redis, *destinations: str) -> str:
    """An event dead-lettered at each of ``destinations`` (nothing is ever sent)."""
    event = new_lead("dl@example.com", *destinations)
    await EventStore(redis, retention_s=60, partitions=16).enqueue([event])
    for dest in destinations:
        await settle_next(redis, dest, DeliveryStatus.dead, {"status": 400, "outcome": "dead"})
    return event.id


async def _dead_ids(redis: Redis, destination: str) -> set[str]:
    return {str(e) for e in await members(redis, functools.partial(redis_keys.dead, destination))}


@pytest.fixture
async def dead(redis: Redis, make_key: KeyMaker) -> tuple[str, str, dict[str, str]]:
    """An event dead at both destinations, one dead at conveyour only, and the headers
    of an admin key limited to convertr."""
    both = await _dead(redis, "conveyour", "convertr")
    other = await _dead(redis, "conveyour")
    return both, other, {"X-API-Key": await make_key("admin", destinations=["convertr"])}


async def test_a_restricted_admin_sees_only_its_destinations_dead_letters(
    client: Client, make_key: KeyMaker, dead: tuple[str, str, dict[str, str]]
) -> None:
    both, other, boss = dead
    root = {"X-API-Key": await make_key("admin")}

    listed = await (await client.get("/v1/dead-letters", headers=boss)).json()
    assert [(d["destination"], d["event_id"]) for d in listed] == [("convertr", both)]
    everything = await (await client.get("/v1/dead-letters", headers=root)).json()
    assert sorted(d["event_id"] for d in everything) == sorted([both, both, other])
    refused = await client.get("/v1/dead-letters?destination=conveyour", headers=boss)
    assert refused.status == 403
    assert refused.content_type == "application/problem+json"
    assert (await refused.json())["errors"][0]["loc"] == ["query", "destination"]


async def test_a_restricted_admin_replays_only_its_destinations(
    client: Client, redis: Redis, dead: tuple[str, str, dict[str, str]]
) -> None:
    both, other, boss = dead

    # Naming a destination it may not use: refused, nothing replayed.
    for body in (
        {"all": True, "destination": "conveyour"},
        {"event_ids": [other], "destination": "conveyour"},
    ):
        refused = await client.post("/v1/dead-letters/replay", json=body, headers=boss)
        assert refused.status == 403
        assert (await refused.json())["errors"][0]["loc"] == ["body", "destination"]
    assert await _dead_ids(redis, "conveyour") == {both, other}

    # Without a destination: limited to its own.
    ids = await client.post("/v1/dead-letters/replay", json={"event_ids": [other]}, headers=boss)
    assert await ids.json() == {"replayed": 0}
    replayed = await client.post("/v1/dead-letters/replay", json={"all": True}, headers=boss)
    assert await replayed.json() == {"replayed": 1}
    assert await _dead_ids(redis, "convertr") == set()
    assert await _dead_ids(redis, "conveyour") == {both, other}


async def test_openapi_says_how_far_a_restricted_admin_reaches(client: Client) -> None:
    paths = (await (await client.get("/openapi.json")).json())["paths"]
    assert "never creates a key broader than itself" in paths["/v1/keys"]["post"]["description"]
    assert "within the calling key's reach" in paths["/v1/keys"]["get"]["summary"]
    revoke = paths["/v1/keys/{id}"]["delete"]["description"]
    assert "cannot revoke an unrestricted admin's key (403)" in revoke
    replay = paths["/v1/dead-letters/replay"]["post"]["description"]
    assert "the replay is limited to them" in replay
    assert "naming a destination it may not use is 403" in replay
    assert "lists only their dead letters" in paths["/v1/dead-letters"]["get"]["description"]
