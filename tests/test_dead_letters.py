"""Retries end in the dead letters, and dead letters say why: a real worker, real Redis,
fake upstreams on loopback that keep failing, and a loopback subscriber to event.failed."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import unicodedata
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis
from standardwebhooks.webhooks import Webhook

from relay import redis_keys
from relay.backlog import counts
from relay.commands.delivery import dlq_list
from relay.commands.text import one_line, terminal_json, width_of
from relay.queue import DeliveryQueue
from relay.settings import Settings
from relay.store import EventStore
from relay.worker import Worker
from tests.events import new_lead, total
from tests.fakes import (
    CONVERTR_API_KEY,
    CONVEYOUR_TOKEN,
    FakeConvertr,
    FakeConveyour,
    FakeReceiver,
    Recorded,
    fake_convertr,
    fake_conveyour,
)

__all__ = ["fake_convertr", "fake_conveyour"]  # fixtures used below

Client = TestClient[Any, Any]

#: Two quick retries: the third failed attempt is the last.
SHORT = "retry_schedule = [0.05, 0.05]"
HOOKS = f"\n[hooks]\nallow_private_targets = true\n{SHORT}\n"
#: An upstream's answer meant to mess up a terminal: clear the screen, recolour, a
#: second line, a C1 control (CSI) and a bidi override.
HOSTILE = "\x1b[2J\x1b[31mred\nsecond line\r\x9b6n \u202eevil"


@pytest.fixture
async def subscriber() -> AsyncIterator[FakeReceiver]:
    async with FakeReceiver() as fake:
        yield fake


def conveyour_toml(fake: FakeConveyour) -> str:
    return f"""
[destinations.conveyour]
type = "conveyour"
base_url = "{fake.url}"
token = "{CONVEYOUR_TOKEN}"
events = ["contact"]
{SHORT}
{HOOKS}"""


def convertr_toml(fake: FakeConvertr, api_key: str = CONVERTR_API_KEY) -> str:
    return f"""
[destinations.convertr]
type = "convertr"
base_url = "{fake.url}"
api_key = "{api_key}"
campaign_id = 123
form_id = 45
publisher_id = 6
events = ["lead"]
{SHORT}
{HOOKS}"""


async def drain(settings: Settings, redis: Redis) -> Worker:
    worker = Worker(settings, redis=redis, concurrency=4)
    await asyncio.wait_for(worker.run(drain=True), 20)
    return worker


async def subscribe(client: Client, key: str, url: str, event: str = "event.failed") -> str:
    """Subscribe ``url`` to ``event``; the subscription's secret."""
    resp = await client.post(
        "/v1/hooks", json={"target_url": url, "event": event}, headers={"X-API-Key": key}
    )
    assert resp.status == 201, await resp.text()
    secret: str = (await resp.json())["secret"]
    return secret


async def post(client: Client, key: str, path: str, doc: dict[str, Any]) -> str:
    resp = await client.post(path, json=doc, headers={"X-API-Key": key})
    assert resp.status == 202, await resp.text()
    event_id: str = (await resp.json())["id"]
    return event_id


def echo_token(request: Recorded) -> str:
    """A 503 that echoes the caller's token back, then something hostile to terminals."""
    return f"overloaded, token {request.headers.get('x-conveyour-token')} {HOSTILE}"


async def cli_list(settings: Settings, capsys: pytest.CaptureFixture[str], *, as_json: bool) -> str:
    assert await dlq_list(settings, argparse.Namespace(destination=None, json=as_json)) == 0
    return capsys.readouterr().out


async def test_retries_end_in_the_dead_letters_then_a_replay_gets_a_fresh_schedule(
    app_client: Any,
    make_settings: Callable[..., Settings],
    make_key: Any,
    redis: Redis,
    fake_conveyour: FakeConveyour,
    subscriber: FakeReceiver,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(conveyour_toml(fake_conveyour))
    client = await app_client(settings)
    secret = await subscribe(client, await make_key("webhooks"), f"{subscriber.url}/failed")
    fake_conveyour.script(status=503, body=echo_token, times=3)  # down for every attempt
    event_id = await post(
        client, await make_key("write:contacts"), "/v1/contacts", {"email": "ann@example.com"}
    )
    worker = await drain(settings, redis)  # returns: nothing is left scheduled

    assert "dead=1" in repr(worker)
    assert len(fake_conveyour.requests) == 3  # the first attempt and two retries
    assert fake_conveyour.contacts == []
    view = await EventStore(redis, retention_s=60, partitions=16).get(event_id)
    assert view is not None
    assert view.status == "dead"
    assert [a["status"] for a in view.destinations[0].attempts] == [503, 503, 503]

    # event.failed went to the subscriber, signed, naming the destination.
    [note] = [r for r in subscriber.requests if r.path == "/failed"]
    doc = Webhook(secret).verify(note.body, {k.lower(): v for k, v in note.headers.items()})
    assert (doc["event"], doc["id"], doc["destination"]) == ("event.failed", event_id, "conveyour")

    # GET /v1/dead-letters says why: the last attempt, its secret scrubbed.
    admin = {"X-API-Key": await make_key("admin")}
    [letter] = await (await client.get("/v1/dead-letters", headers=admin)).json()
    assert letter["destination"] == "conveyour"
    assert letter["event_id"] == event_id
    assert letter["status_code"] == 503
    assert letter["error"] == "http_503"
    assert letter["attempts"] == 3
    assert letter["excerpt"].startswith("overloaded, token *** ")
    assert HOSTILE in letter["excerpt"]  # JSON carries it as it came (escaped by JSON)
    assert CONVEYOUR_TOKEN not in str(letter)

    schema = (await (await client.get("/openapi.json")).json())["components"]["schemas"]
    assert {"status_code", "error", "excerpt"} <= set(schema["DeadLetter"]["required"])
    # relay dlq list --json: the same object, nothing raw for a terminal either.
    out = await cli_list(settings, capsys, as_json=True)
    [listed] = json.loads(out)
    assert listed == letter
    assert not any(ch in out for ch in "\x1b\x9b\u202e\r")
    assert "\\u009b6n" in out
    # The table: one line per dead letter, nothing raw reaches the terminal.
    monkeypatch.setenv("COLUMNS", "120")
    table = await cli_list(settings, capsys, as_json=False)
    lines = table.splitlines()
    assert " ".join(lines[0].split()) == "DESTINATION EVENT DEAD AT (UTC) STATUS ERROR ANSWER"
    row = lines[1]
    assert row.split()[:2] == ["conveyour", event_id]
    assert " 503 " in row
    assert "http_503" in row
    assert "overloaded, token ***" in row
    assert width_of(row) <= 120
    assert row.endswith("…")  # cut to fit
    assert not any(ch in table for ch in "\x1b\x9b\u202e\r")
    assert "\\x1b[2J" in row
    assert CONVEYOUR_TOKEN not in table

    # Replayed: a fresh schedule (two retries again), earlier attempts kept.
    fake_conveyour.script(status=503, body="still warming up", times=2)
    replay = await client.post("/v1/dead-letters/replay", json={"all": True}, headers=admin)
    assert await replay.json() == {"replayed": 1}
    await drain(settings, redis)
    view = await EventStore(redis, retention_s=60, partitions=16).get(event_id)
    assert view is not None
    assert view.status == "delivered"
    attempts = view.destinations[0].attempts
    assert [a["status"] for a in attempts] == [503, 503, 503, 503, 503, 200]
    assert [c["traits"]["email"] for c in fake_conveyour.contacts] == ["ann@example.com"]
    assert await (await client.get("/v1/dead-letters", headers=admin)).json() == []
    assert len([r for r in subscriber.requests if r.path == "/failed"]) == 1


async def test_rejected_credentials_retry_past_the_end_of_the_schedule(
    app_client: Any,
    make_settings: Callable[..., Settings],
    make_key: Any,
    redis: Redis,
    fake_convertr: FakeConvertr,
    subscriber: FakeReceiver,
) -> None:
    settings = make_settings(convertr_toml(fake_convertr, api_key="wrong-key-123"))
    client = await app_client(settings)
    await subscribe(client, await make_key("webhooks"), f"{subscriber.url}/failed")
    event_id = await post(client, await make_key("write:leads"), "/v1/leads", {"email": "b@x.io"})
    worker = Worker(settings, redis=redis, concurrency=4)
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(500):  # the schedule allows 3 attempts; the long end goes on
            if len(fake_convertr.requests) >= 6:
                break
            await asyncio.sleep(0.02)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
    assert len(fake_convertr.requests) >= 6
    assert {r.query["apikey"] for r in fake_convertr.requests} == {"wrong-key-123"}
    queue = DeliveryQueue(redis, retention_s=60, partitions=16)
    found = (await counts(redis, ["convertr"], partitions=16))["convertr"]
    assert (found.retrying, found.dead) == (1, 0), found
    assert "401" in (await queue.health())["convertr"]["problem"]
    view = await EventStore(redis, retention_s=60, partitions=16).get(event_id)
    assert view is not None
    assert view.status == "retrying"
    assert {a["outcome"] for a in view.destinations[0].attempts} == {"credentials"}
    assert [r.path for r in subscriber.requests] == []  # never event.failed


async def test_credentials_rejections_do_not_spend_the_schedule(
    make_settings: Callable[..., Settings],
    redis: Redis,
    fake_convertr: FakeConvertr,
) -> None:
    # Rejected for longer than the schedule, then fixed: a 503 after that still gets
    # the schedule's retries.
    settings = make_settings(convertr_toml(fake_convertr))
    fake_convertr.script(status=401, body={"code": 401, "message": "Access denied."}, times=4)
    fake_convertr.script(status=503, body="busy", times=2)
    lead = new_lead("cy@example.com", "convertr")
    await EventStore(redis, retention_s=60, partitions=16).enqueue([lead])
    await drain(settings, redis)
    view = await EventStore(redis, retention_s=60, partitions=16).get(lead.id)
    assert view is not None
    assert [a["status"] for a in view.destinations[0].attempts] == [401] * 4 + [503, 503, 201]
    assert view.status == "delivered"


async def test_a_contact_whose_event_ran_out_of_retries_is_not_held_up(
    make_settings: Callable[..., Settings],
    redis: Redis,
    fake_convertr: FakeConvertr,
) -> None:
    # Per-contact order keeps a contact's later events behind its first until that one
    # is settled: dead-lettered after its schedule counts as settled.
    settings = make_settings(convertr_toml(fake_convertr))
    fake_convertr.script(status=503, body="busy", times=3)
    first, second = new_lead("eve@example.com", "convertr"), new_lead("eve@example.com", "convertr")
    await EventStore(redis, retention_s=60, partitions=16).enqueue([first, second])
    await drain(settings, redis)
    store = EventStore(redis, retention_s=60, partitions=16)
    views = [await store.get(e.id) for e in (first, second)]
    assert [v.status if v else None for v in views] == ["dead", "delivered"]
    assert len(fake_convertr.requests) == 4  # the first three times, then the second


async def test_notifications_end_in_the_dead_letters_too(
    app_client: Any,
    make_settings: Callable[..., Settings],
    make_key: Any,
    redis: Redis,
    fake_convertr: FakeConvertr,
    subscriber: FakeReceiver,
) -> None:
    settings = make_settings(convertr_toml(fake_convertr))
    client = await app_client(settings)
    await subscribe(client, await make_key("webhooks"), f"{subscriber.url}/r", "lead.received")
    subscriber.script(status=503, body="down", times=100)
    await post(client, await make_key("write:leads"), "/v1/leads", {"email": "d@x.io"})
    await drain(settings, redis)  # returns: the notification's schedule ended
    assert len(subscriber.requests) == 3
    assert (
        await total(redis, "ZCARD", functools.partial(redis_keys.dead, redis_keys.NOTIFICATIONS))
        == 1
    )
    assert len(fake_convertr.leads) == 1  # the lead itself went


async def test_a_dead_letter_whose_event_expired_is_listed_without_an_answer(
    make_settings: Callable[..., Settings],
    redis: Redis,
    fake_convertr: FakeConvertr,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(convertr_toml(fake_convertr))
    await redis.zadd(redis_keys.dead("convertr", 0), {"evt_gone": 1_700_000_000_000})
    [row] = json.loads(await cli_list(settings, capsys, as_json=True))
    assert row == {
        "destination": "convertr",
        "event_id": "evt_gone",
        "dead_at": 1_700_000_000.0,
        "attempts": 0,
        "status_code": None,
        "error": None,
        "excerpt": None,
        "note": None,
    }
    table = await cli_list(settings, capsys, as_json=False)
    assert "convertr     evt_gone  2023-11-14 22:13:20  -       -      -" in table


@pytest.mark.parametrize(
    ("text", "width", "shown"),
    [
        ("plain", 20, "plain"),
        ("a\r\n\tb   c\u2028d", 20, "a b c d"),  # every run of whitespace: one space
        ("\x1b[31mred\x1b[0m", 30, "\\x1b[31mred\\x1b[0m"),
        ("\x9b2J\x07\x00\x7f", 30, "\\x9b2J\\x07\\x00\\x7f"),  # C1 CSI, BEL, NUL, DEL
        ("ab\u202ecd\u200b", 30, "ab\\u202ecd\\u200b"),  # bidi override, zero-width space
        ("x" * 30, 10, "x" * 9 + "…"),
        ("\x1b\x1b\x1b", 9, "\\x1b\\x1b…"),  # an escape is never cut in half
        ("日本語のテキスト", 9, "日本語の…"),  # wide characters take two columns
        ("  padded  ", 20, "padded"),
    ],
)
def test_one_line(text: str, width: int, shown: str) -> None:
    assert one_line(text, width) == shown
    assert width_of(one_line(text, width)) <= width


def test_terminal_json_is_the_same_document_without_raw_controls() -> None:
    doc = {"excerpt": "\x1b[2J\x9b6n \u202eevil\U000e0001 日本 é \x7f", "n": 1}
    text = terminal_json(orjson.dumps(doc).decode())
    assert json.loads(text) == doc
    assert "日本 é" in text  # letters stay as they are: only controls are escaped
    assert all(unicodedata.category(ch) not in ("Cc", "Cf") for ch in text)
    assert "\\u202e" in text
    assert "\\udb40\\udc01" in text  # beyond the BMP: a surrogate pair, as JSON writes it
