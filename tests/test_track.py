"""ConveYour track events: after the identify, in order, resumed on retry, rate-limited.

Against a real Redis, the real API and worker, and the fake ConveYour (UPSTREAMS.md:
``/api/analytics/track`` answers like identify: 200 with ``status: ok``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
from redis.asyncio import Redis

from relay.deadletters import list_dead_letters
from relay.settings import Settings
from relay.store import EventStore
from tests.fakes import FakeConvertr, FakeConveyour, fake_convertr, fake_conveyour
from tests.test_worker import (
    PostLead,
    batching_settings,
    drain,
    post_lead,
    relay_settings,
    toml_for,
)

# fixtures used below
__all__ = ["batching_settings", "fake_convertr", "fake_conveyour", "post_lead", "relay_settings"]

TRACKS = [
    {"event": "applied", "properties": {"job": "driver"}, "timestamp": "2026-01-31T12:00:00Z"},
    {"event": "interviewed", "timestamp": 1767225600},
    {"event": "hired", "properties": {"start": "monday"}},
]


async def _attempts(redis: Redis, event_id: str, destination: str) -> list[dict[str, Any]]:
    view = await EventStore(redis, retention_s=60, partitions=16).get(event_id)
    assert view is not None
    return next(d for d in view.destinations if d.name == destination).attempts


def _paths(fake: FakeConveyour) -> list[str]:
    return [r.path.rsplit("/", 1)[-1] for r in fake.requests]


async def test_events_are_tracked_in_order_after_the_identify(
    relay_settings: Settings,
    redis: Redis,
    post_lead: PostLead,
    fake_conveyour: FakeConveyour,
    fake_convertr: FakeConvertr,
) -> None:
    event_id = await post_lead({"email": "ada@example.com", "events": TRACKS})
    await drain(relay_settings, redis)
    assert _paths(fake_conveyour) == ["identify", "track", "track", "track"]
    assert "events" not in fake_conveyour.contacts[0]["traits"]
    assert fake_conveyour.tracked == [
        ("ada@example.com", {"event": "applied", "properties": {"job": "driver"},
                             "timestamp": "2026-01-31T12:00:00Z"}),
        ("ada@example.com", {"event": "interviewed", "timestamp": 1767225600}),
        ("ada@example.com", {"event": "hired", "properties": {"start": "monday"}}),
    ]  # fmt: skip
    attempts = await _attempts(redis, event_id, "conveyour")
    assert [(a["outcome"], a["steps"]) for a in attempts] == [("delivered", 4)]
    # Convertr has no track events: they are neither sent nor called left out.
    convertr = await _attempts(redis, event_id, "convertr")
    assert convertr[0]["outcome"] == "delivered"
    assert "events" not in convertr[0].get("note", "")
    assert "events" not in str(fake_convertr.leads[0]["fields"])


async def test_no_event_is_tracked_when_the_identify_fails(
    relay_settings: Settings, redis: Redis, post_lead: PostLead, fake_conveyour: FakeConveyour
) -> None:
    fake_conveyour.script(status=400, body={"status": "error", "message": "Bad <contact>"})
    event_id = await post_lead({"email": "bo@example.com", "events": TRACKS}, "/v1/contacts")
    await drain(relay_settings, redis)
    assert _paths(fake_conveyour) == ["identify"]
    assert fake_conveyour.tracked == []
    assert [d.event_id for d in await list_dead_letters(redis, "conveyour", partitions=16)] == [
        event_id
    ]
    (attempt,) = await _attempts(redis, event_id, "conveyour")
    assert attempt["outcome"] == "rejected"
    assert "Bad <contact>" in attempt["excerpt"]
    assert "steps" not in attempt


async def test_a_failed_track_is_retried_without_what_was_taken(
    relay_settings: Settings, redis: Redis, post_lead: PostLead, fake_conveyour: FakeConveyour
) -> None:
    fake_conveyour.script(status=None, times=2)  # the identify and the first track go
    fake_conveyour.script(status=503, body="busy")  # the second track does not
    event_id = await post_lead({"email": "cy@example.com", "events": TRACKS}, "/v1/contacts")
    await drain(relay_settings, redis)
    assert _paths(fake_conveyour) == ["identify", "track", "track", "track", "track"]
    assert len(fake_conveyour.contacts) == 1  # not identified again
    assert [e["event"] for _, e in fake_conveyour.tracked] == ["applied", "interviewed", "hired"]
    attempts = await _attempts(redis, event_id, "conveyour")
    assert [(a["outcome"], a["steps"]) for a in attempts] == [("retry", 2), ("delivered", 4)]
    assert "track event 1 ('interviewed')" in attempts[0]["note"]


async def test_each_track_spends_a_rate_slot(
    make_settings: Callable[..., Settings],
    redis: Redis,
    post_lead: PostLead,
    fake_conveyour: FakeConveyour,
    fake_convertr: FakeConvertr,
) -> None:
    settings = make_settings(toml_for(fake_conveyour, fake_convertr, extra='rate_limit = "2/s"'))
    await post_lead({"email": "di@example.com", "events": TRACKS}, "/v1/contacts")
    await drain(settings, redis)
    times = [r.time for r in fake_conveyour.requests]
    assert _paths(fake_conveyour) == ["identify", "track", "track", "track"]
    # 2 a second: no three requests within one second, as the fake saw them arrive.
    gaps = [later - first for first, later in zip(times, times[2:], strict=False)]
    assert min(gaps) >= 0.95, gaps
    assert times[-1] - times[0] >= 0.95


async def test_a_bad_track_event_is_a_422_naming_it(
    app_client: Any, relay_settings: Settings, make_key: Any
) -> None:
    client = await app_client(relay_settings)
    headers = {"X-API-Key": await make_key("write:contacts", "read:events")}
    bad = [{"event": "ok"}, {"properties": []}, {"event": "x", "timestamp": "yesterday"}]
    resp = await client.post(
        "/v1/contacts", json={"email": "e@example.com", "events": bad}, headers=headers
    )
    assert resp.status == 422, await resp.text()
    locs = [e["loc"] for e in (await resp.json())["errors"]]
    assert locs == [
        ["body", "events", 1, "event"],
        ["body", "events", 1, "properties"],
        ["body", "events", 2, "timestamp"],
    ]
    batch = [
        {"email": "f@example.com", "events": [{"event": "applied"}]},
        {"email": "g@example.com", "events": [{"event": ""}]},
        {"email": "h@example.com", "events": "applied"},
    ]
    resp = await client.post("/v1/contacts", json=batch, headers=headers)
    assert resp.status == 207, await resp.text()
    body = await resp.json()
    assert [a["index"] for a in body["accepted"]] == [0]
    assert [r["errors"][0]["loc"] for r in body["rejected"]] == [
        ["body", 1, "events", 0, "event"],
        ["body", 2, "events"],
    ]
    event = await client.get(f"/v1/events/{body['accepted'][0]['id']}", headers=headers)
    payload = (await event.json())["payload"]
    assert payload["events"] == [{"event": "applied", "properties": {}}]
    assert "events" not in payload.get("traits", {})


async def test_a_batch_tracks_each_contact_and_resumes_alone(
    batching_settings: Settings,
    redis: Redis,
    app_client: Any,
    make_key: Any,
    fake_conveyour: FakeConveyour,
) -> None:
    client = await app_client(batching_settings)
    key = {"X-API-Key": await make_key("write:contacts", "read:events")}
    batch = [
        {"email": "a@example.com", "events": [{"event": "applied"}, {"event": "hired"}]},
        {"email": "b@example.com"},
        {"email": "c@example.com", "events": [{"event": "viewed"}]},
    ]
    fake_conveyour.script(status=None, times=2)  # the batch identify and a's first track
    fake_conveyour.script(status=500, body="oops")  # a's second track fails
    resp = await client.post("/v1/contacts", json=batch, headers=key)
    ids = [a["id"] for a in (await resp.json())["accepted"]]
    await drain(batching_settings, redis)
    assert len(fake_conveyour.requests[0].parsed["data"]) == 3  # one identify for all three
    assert len(fake_conveyour.contacts) == 3  # and none again
    assert [(who, e["event"]) for who, e in fake_conveyour.tracked] == [
        ("a@example.com", "applied"),
        ("c@example.com", "viewed"),
        ("a@example.com", "hired"),  # the retry: only what was left
    ]
    steps = [[a.get("steps") for a in await _attempts(redis, i, "conveyour")] for i in ids]
    assert steps == [[2, 3], [None], [2]]


async def test_forms_and_flattened_keys_carry_events(
    app_client: Any, relay_settings: Settings, make_key: Any
) -> None:
    """A form cannot send a list: ``events__0__event`` (Zapier's flattening),
    ``events[0][event]`` and ``events.0.event`` are read as the list in the order of
    their numbers, and a timestamp of digits is epoch seconds."""
    client = await app_client(relay_settings)
    key = {"X-API-Key": await make_key("write:contacts", "read:events")}
    want = [
        {"event": "applied", "properties": {"job": "driver"}, "timestamp": 1767225600},
        {"event": "hired", "properties": {}, "timestamp": "2026-01-31T12:00:00Z"},
    ]

    async def payload_of(resp: Any) -> dict[str, Any]:
        assert resp.status == 202, await resp.text()
        event_id = (await resp.json())["id"]
        got = await client.get(f"/v1/events/{event_id}", headers=key)
        doc: dict[str, Any] = (await got.json())["payload"]
        return doc

    # urlencoded, Zapier's keys, the second event first: the numbers give the order
    form = (
        "email=z%40example.com&events__1__event=hired"
        "&events__1__timestamp=2026-01-31T12%3A00%3A00Z&events__0__event=applied"
        "&events__0__properties__job=driver&events__0__timestamp=1767225600"
    )
    resp = await client.post(
        "/v1/contacts",
        data=form,
        headers={**key, "Content-Type": "application/x-www-form-urlencoded"},
    )
    payload = await payload_of(resp)
    assert payload["events"] == want
    assert payload["traits"] == {}
    # multipart, bracketed keys
    multipart = aiohttp.FormData()
    for name, value in [
        ("email", "m@example.com"),
        ("events[0][event]", "applied"),
        ("events[0][properties][job]", "driver"),
        ("events[0][timestamp]", "1767225600"),
        ("events[1][event]", "hired"),
        ("events[1][timestamp]", "2026-01-31T12:00:00Z"),
    ]:
        multipart.add_field(name, value)
    assert (await payload_of(await client.post("/v1/contacts", data=multipart, headers=key)))[
        "events"
    ] == want
    # flat JSON written like a form (Zapier's flattened line items in a JSON payload)
    flat = {"email": "j@example.com", "events.0.event": "applied", "events.0.properties.job": "x"}
    resp = await client.post("/v1/contacts", json=flat, headers=key)
    assert (await payload_of(resp))["events"] == [{"event": "applied", "properties": {"job": "x"}}]
    # already nested by the sender (Webhooks by Zapier's json payload nests __ keys)
    nested = {"email": "n@example.com", "events": {"1": {"event": "b"}, "0": {"event": "a"}}}
    resp = await client.post("/v1/contacts", json=nested, headers=key)
    assert [e["event"] for e in (await payload_of(resp))["events"]] == ["a", "b"]
    # wrapped ({"contact": {...}}): the list inside the wrapper, and errors named there
    wrapped = {"contact": {"email": "w@example.com", "events": [{"event": "applied"}]}}
    resp = await client.post("/v1/contacts", json=wrapped, headers=key)
    payload = await payload_of(resp)
    assert payload["events"] == [{"event": "applied", "properties": {}}]
    assert payload["traits"] == {}
    wrapped["contact"]["events"] = [{"event": ""}]
    resp = await client.post("/v1/contacts", json=wrapped, headers=key)
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["loc"] == ["body", "contact", "events", 0, "event"]
    # what is not numbered, or is not an event, is named
    for body, loc in [
        ("email=a%40example.com&events__first__event=x", ["body", "events"]),
        ("email=a%40example.com&events=applied", ["body", "events"]),
        ("email=a%40example.com&events__0__name=x", ["body", "events", 0, "name"]),
        ("email=a%40example.com&events__3__timestamp=soon", ["body", "events", 3, "event"]),
    ]:
        resp = await client.post(
            "/v1/contacts",
            data=body,
            headers={**key, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert resp.status == 422, (body, await resp.text())
        assert loc in [e["loc"] for e in (await resp.json())["errors"]], body
