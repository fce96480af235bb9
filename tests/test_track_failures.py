"""ConveYour track events that fail: refused, paused, answered oddly, and replayed.

A track is not idempotent (sent twice, ConveYour records it twice) while an identify
is, so a retry and a replay both resume after the calls ConveYour took. Against a
real Redis, the real API and worker, and the fake ConveYour of tests/fakes.py."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from relay.deadletters import list_dead_letters, replay_dead_letters
from relay.settings import Settings
from tests.fakes import FakeConveyour, fake_convertr, fake_conveyour
from tests.test_track import TRACKS, _attempts, _paths
from tests.test_worker import PostLead, drain, post_lead, relay_settings

# fixtures used below
__all__ = ["fake_convertr", "fake_conveyour", "post_lead", "relay_settings"]


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (422, {"status": "error", "message": "Unknown <event> name"}),
        (400, {"status": "error", "message": "Unknown <event> name"}),
        (200, {"status": "error", "message": "Unknown <event> name"}),
    ],
)
async def test_a_refused_track_is_dead_lettered_and_a_replay_resumes_at_it(
    relay_settings: Settings,
    redis: Redis,
    post_lead: PostLead,
    fake_conveyour: FakeConveyour,
    status: int,
    body: dict[str, Any],
) -> None:
    fake_conveyour.script(status=None, times=2)  # the identify and the first track go
    fake_conveyour.script(status=status, body=body)  # the second track is refused
    event_id = await post_lead({"email": "ro@example.com", "events": TRACKS}, "/v1/contacts")
    await drain(relay_settings, redis)
    assert _paths(fake_conveyour) == ["identify", "track", "track"]  # none after it
    (dead,) = await list_dead_letters(redis, "conveyour", partitions=16)
    assert dead.event_id == event_id
    assert dead.status_code == status
    assert dead.excerpt is not None
    assert "Unknown <event> name" in dead.excerpt
    assert dead.note is not None
    assert "track event 1 ('interviewed')" in dead.note
    assert "Unknown <event> name" in dead.note

    # Replayed: not identified again, "applied" not tracked again; the refused one and
    # the one after it are sent.
    assert await replay_dead_letters(redis, "conveyour", [event_id], partitions=16) == 1
    await drain(relay_settings, redis)
    assert _paths(fake_conveyour) == ["identify", "track", "track", "track", "track"]
    assert len(fake_conveyour.contacts) == 1
    assert [e["event"] for _, e in fake_conveyour.tracked] == ["applied", "interviewed", "hired"]
    attempts = await _attempts(redis, event_id, "conveyour")
    assert [(a["outcome"], a["steps"]) for a in attempts] == [("rejected", 2), ("delivered", 4)]
    assert await list_dead_letters(redis, "conveyour", partitions=16) == []


async def test_a_replay_after_a_refused_identify_sends_everything(
    relay_settings: Settings, redis: Redis, post_lead: PostLead, fake_conveyour: FakeConveyour
) -> None:
    fake_conveyour.script(status=422, body={"status": "error", "message": "bad contact"})
    event_id = await post_lead({"email": "ri@example.com", "events": TRACKS[:1]}, "/v1/contacts")
    await drain(relay_settings, redis)
    assert await replay_dead_letters(redis, "conveyour", [event_id], partitions=16) == 1
    await drain(relay_settings, redis)
    assert _paths(fake_conveyour) == ["identify", "identify", "track"]
    assert [e["event"] for _, e in fake_conveyour.tracked] == ["applied"]


async def test_a_429_on_a_track_pauses_and_sends_no_track_twice(
    relay_settings: Settings, redis: Redis, post_lead: PostLead, fake_conveyour: FakeConveyour
) -> None:
    fake_conveyour.script(status=None, times=2)
    fake_conveyour.script(status=429, body="slow down", headers={"Retry-After": "1"})
    event_id = await post_lead({"email": "pa@example.com", "events": TRACKS}, "/v1/contacts")
    await drain(relay_settings, redis)
    paths = _paths(fake_conveyour)
    assert paths == ["identify", "track", "track", "track", "track"]
    times = [r.time for r in fake_conveyour.requests]
    assert times[3] - times[2] >= 0.95, times  # the destination paused for Retry-After
    assert len(fake_conveyour.contacts) == 1
    assert [e["event"] for _, e in fake_conveyour.tracked] == ["applied", "interviewed", "hired"]
    attempts = await _attempts(redis, event_id, "conveyour")
    assert [(a["outcome"], a["steps"], a.get("status")) for a in attempts] == [
        ("retry", 2, 429),
        ("delivered", 4, 200),
    ]
    assert attempts[0]["retry_after_s"] == 1
    assert await list_dead_letters(redis, "conveyour", partitions=16) == []


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, b""), (200, b"<html>ok</html>"), (202, {"queued": True}), (204, b"")],
)
async def test_a_track_taken_with_an_undocumented_answer_is_not_sent_again(
    relay_settings: Settings,
    redis: Redis,
    post_lead: PostLead,
    fake_conveyour: FakeConveyour,
    status: int,
    body: Any,
) -> None:
    """ConveYour documents no answer for track: any 2xx counts as taken (a note says
    so), since sending it again would record it twice. An identify answered so is
    retried instead (it is an upsert)."""
    fake_conveyour.script(status=None)  # the identify
    fake_conveyour.script(status=status, body=body)  # "applied"
    event_id = await post_lead({"email": "od@example.com", "events": TRACKS}, "/v1/contacts")
    await drain(relay_settings, redis)
    assert _paths(fake_conveyour) == ["identify", "track", "track", "track"]
    assert [e["event"] for _, e in fake_conveyour.tracked] == ["interviewed", "hired"]
    attempts = await _attempts(redis, event_id, "conveyour")
    assert [(a["outcome"], a["steps"]) for a in attempts] == [("delivered", 4)]
    assert attempts[0]["note"] == (
        f"track event 0 ('applied'): taken on HTTP {status} with no status in the answer"
        " (not resent)"
    )

    fake_conveyour.script(status=status, body=body)  # an identify answered so
    other = await post_lead({"email": "oe@example.com"}, "/v1/contacts")
    await drain(relay_settings, redis)
    attempts = await _attempts(redis, other, "conveyour")
    assert [a["outcome"] for a in attempts] == ["retry", "delivered"]
