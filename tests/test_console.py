"""The console over HTTP (aiohttp's test client): sign-in, sessions, headers, CSRF, roles,
escaping. The browser tests (tests/test_console_browser.py) drive the same pages."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from relay import redis_keys
from relay.console.guard import CSP
from relay.console.session import COOKIE
from relay.keystore import KeyStore
from relay.models import DeliveryStatus, Lead
from relay.settings import Settings
from relay.store import EventStore
from tests.events import new_lead, settle_next, total

Client = TestClient[Any, Any]
MakeKey = Callable[..., Awaitable[str]]

XSS_NAME = "<img src=x onerror=alert(1)>"
XSS_LAST = "</script><script>alert(1)</script>"
XSS_ANSWER = '<h1>Bad</h1><script>alert("upstream")</script>'

PAGES = ["overview", "events", "dead-letters", "keys", "hooks", "destinations"]


async def sign_in(client: Client, key: str) -> str:
    """Sign in; the CSRF token of the new session."""
    answer = await client.post("/console/sign-in", data={"api_key": key}, allow_redirects=False)
    assert answer.status == 303, await answer.text()
    page = await (await client.get("/console/overview")).text()
    found = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert found is not None
    return found.group(1)


async def dead_letter(redis: Redis, settings: Settings, payload: Lead | None = None) -> str:
    """A lead dead at conveyour, its upstream's answer an HTML page; its id."""
    ev = new_lead("ada@example.com", "conveyour", payload=payload)
    await EventStore(redis, retention_s=settings.retention_s, partitions=16).enqueue([ev])
    attempt = {
        "at": time.time(),
        "outcome": "dead",
        "status": 400,
        "duration_ms": 12.5,
        "excerpt": XSS_ANSWER,
        "error": "http_400",
    }
    await settle_next(redis, "conveyour", DeliveryStatus.dead, attempt)
    return ev.id


def assert_headers(answer: Any) -> None:
    h = answer.headers
    assert h["Content-Security-Policy"] == CSP
    assert "unsafe-inline" not in CSP
    assert "unsafe-eval" not in CSP
    assert "frame-ancestors 'none'" in CSP
    assert h["X-Frame-Options"] == "DENY"
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["Referrer-Policy"] == "no-referrer"


async def test_sign_in_form_and_a_bad_key(client: Client, make_key: MakeKey) -> None:
    form = await client.get("/console")
    assert form.status == 200
    assert_headers(form)
    assert form.headers["Cache-Control"] == "no-store"
    text = await form.text()
    assert '<label for="api-key">API key</label>' in text
    assert 'type="password" id="api-key"' in text
    unscoped = await make_key("write:leads")
    for bad in ("rly_live_" + "x" * 32, "nonsense", "", unscoped):
        answer = await client.post("/console/sign-in", data={"api_key": bad})
        assert answer.status == 401
        assert "Invalid key" in await answer.text()
        assert COOKIE not in answer.cookies
        assert_headers(answer)
    assert (await client.get("/console/overview", allow_redirects=False)).status == 303


async def test_a_session_cookie_and_nothing_else(
    client: Client, make_key: MakeKey, redis: Redis
) -> None:
    key = await make_key("read:events")
    answer = await client.post("/console/sign-in", data={"api_key": key}, allow_redirects=False)
    assert answer.status == 303
    assert answer.headers["Location"] == "/console/overview"
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith(COOKIE + "=")
    for flag in ("HttpOnly", "SameSite=Strict", "Path=/console"):
        assert flag in cookie
    assert "Secure" not in cookie  # plain http here; request.secure sets it behind https
    assert key not in cookie
    value = answer.cookies[COOKIE].value
    assert len(value) >= 32
    # Redis keeps the session under its digest, never the cookie nor the key.
    names = [n async for n in redis.scan_iter(redis_keys.console_session("*"))]
    assert len(names) == 1
    stored = await redis.hgetall(names[0])
    assert value not in names[0]
    assert value not in str(stored)
    assert key not in str(stored)
    assert set(stored) == {"key_id", "role", "csrf", "ends"}
    assert 0 < await redis.ttl(names[0]) <= redis_keys.CONSOLE_SESSION_IDLE_S


@pytest.mark.parametrize("scope", ["admin", "read:events"])
async def test_every_page_for_each_role(client: Client, make_key: MakeKey, scope: str) -> None:
    key = await make_key(scope)
    await sign_in(client, key)
    for page in PAGES:
        answer = await client.get(f"/console/{page}")
        text = await answer.text()
        expected = 403 if page == "keys" and scope != "admin" else 200
        assert answer.status == expected, (page, text[:300])
        assert_headers(answer)
        assert answer.headers["Cache-Control"] == "no-store"
        assert key not in text
        for name in ("Overview", "Events", "Dead letters", "Keys", "Hooks", "Destinations"):
            assert f">{name}</a>" in text
        assert ">Sign out</button>" in text
    for static in ("htmx.min.js", "console.js", "console.css"):
        answer = await client.get(f"/console/static/{static}")
        assert answer.status == 200
        assert_headers(answer)
    assert_headers(await client.get("/console/nothing-here"))


async def test_csrf_origin_and_role(
    client: Client, make_key: MakeKey, redis: Redis, settings: Settings
) -> None:
    event_id = await dead_letter(redis, settings)
    pick = {"pick": f"conveyour {event_id}"}
    admin = await make_key("admin")
    token = await sign_in(client, admin)
    for data, headers in (
        (pick, {}),  # no token
        ({**pick, "csrf": "x" * 43}, {}),  # a wrong one
        ({**pick, "csrf": token}, {"Origin": "https://evil.example"}),  # another site
    ):
        answer = await client.post("/console/dead-letters/replay", data=data, headers=headers)
        assert answer.status == 403
        assert_headers(answer)
    assert (
        await total(redis, "ZCARD", functools.partial(redis_keys.dead, "conveyour")) == 1
    )  # nothing was replayed
    # The token in the header (as htmx sends it) works as well as the form field.
    answer = await client.post(
        "/console/dead-letters/replay", data=pick, headers={"X-CSRF-Token": token}
    )
    assert answer.status == 200
    assert "Replayed 1 of 1" in await answer.text()
    assert await total(redis, "ZCARD", functools.partial(redis_keys.dead, "conveyour")) == 0

    client.session.cookie_jar.clear()
    event_id = await dead_letter(redis, settings)
    token = await sign_in(client, await make_key("read:events"))
    page = await (await client.get(f"/console/events/{event_id}")).text()
    assert ">Replay</button>" not in page
    assert "Replay selected" not in page
    for path, data in (
        (f"/console/events/{event_id}/replay", {"destination": "conveyour"}),
        ("/console/dead-letters/replay", {"pick": f"conveyour {event_id}"}),
        ("/console/keys", {"name": "x", "scope": "admin"}),
    ):
        answer = await client.post(path, data={**data, "csrf": token})
        assert answer.status == 403, path
    dead = functools.partial(redis_keys.dead, "conveyour")
    assert await total(redis, "ZCARD", dead) == 1
    assert len(await KeyStore(redis).list()) == 2


async def test_revoking_the_key_ends_the_session(
    client: Client, make_key: MakeKey, redis: Redis
) -> None:
    key = await make_key("read:events")
    await sign_in(client, key)
    assert (await client.get("/console/events", allow_redirects=False)).status == 200
    record = await KeyStore(redis).lookup(key)
    assert record is not None
    await KeyStore(redis).revoke(record.id)
    answer = await client.get("/console/events", allow_redirects=False)
    assert answer.status == 303
    assert answer.headers["Location"] == "/console"
    assert [n async for n in redis.scan_iter(redis_keys.console_session("*"))] == []


async def test_sign_out_ends_the_session(client: Client, make_key: MakeKey, redis: Redis) -> None:
    await sign_in(client, await make_key("admin"))
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/console/"))[COOKIE].value
    no_token = await client.post("/console/sign-out", allow_redirects=False)
    assert no_token.status == 403
    token = await sign_in(client, await make_key("admin"))
    answer = await client.post("/console/sign-out", data={"csrf": token}, allow_redirects=False)
    assert answer.status == 303
    # The first session still lives (it was never signed out); this one is gone.
    assert len([n async for n in redis.scan_iter(redis_keys.console_session("*"))]) == 1
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({COOKIE: cookie}, client.make_url("/console/"))
    assert (await client.get("/console/events", allow_redirects=False)).status == 200


async def test_lead_data_and_answers_are_escaped(
    client: Client, make_key: MakeKey, redis: Redis, settings: Settings
) -> None:
    payload = Lead(email="x@example.com", first_name=XSS_NAME, last_name=XSS_LAST)
    event_id = await dead_letter(redis, settings, payload)
    await sign_in(client, await make_key("admin"))
    for path in ("/console/events", f"/console/events/{event_id}", "/console/dead-letters"):
        text = await (await client.get(path)).text()
        for raw in (XSS_NAME, XSS_LAST, XSS_ANSWER, "<script>alert"):
            assert raw not in text, path
    detail = await (await client.get(f"/console/events/{event_id}")).text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in detail
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in detail
    assert "&lt;h1&gt;Bad&lt;/h1&gt;" in detail
    # Event page: Time, Status, Duration, Answer columns, and Replay for the dead one.
    for header in ("Time", "Status", "Duration", "Answer"):
        assert f"<th>{header}</th>" in detail or f'<th class="num">{header}</th>' in detail
    assert ">Replay</button>" in detail


async def test_keys_created_once_and_revoked(
    client: Client, make_key: MakeKey, redis: Redis
) -> None:
    token = await sign_in(client, await make_key("admin"))
    answer = await client.post(
        "/console/keys",
        data={"csrf": token, "name": "<b>zap</b>", "scope": ["write:leads", "read:events"]},
    )
    assert answer.status == 201
    text = await answer.text()
    new_key = re.search(r'<code id="new-key">(rly_live_\w+)</code>', text)
    assert new_key is not None
    assert "&lt;b&gt;zap&lt;/b&gt;" in text
    assert "<b>zap</b>" not in text
    record = await KeyStore(redis).lookup(new_key.group(1))
    assert record is not None
    assert record.scopes == ("write:leads", "read:events")
    listing = await (await client.get("/console/keys")).text()
    assert new_key.group(1) not in listing
    assert record.prefix in listing
    bad = await client.post("/console/keys", data={"csrf": token, "name": "n", "scope": "nope"})
    assert bad.status == 422
    answer = await client.post(f"/console/keys/{record.id}/revoke", data={"csrf": token})
    assert answer.status == 200
    assert "Revoked" in await answer.text()
    assert (await KeyStore(redis).get(record.id)).state() == "revoked"


async def test_search_chart_and_no_console_in_openapi(
    client: Client, make_key: MakeKey, redis: Redis, settings: Settings
) -> None:
    store = EventStore(redis, retention_s=settings.retention_s, partitions=16)
    events = [new_lead(f"p{i}@example.com", "conveyour") for i in range(3)]
    await store.enqueue(events)
    await sign_in(client, await make_key("read:events"))
    found = await (await client.get("/console/events", params={"q": events[1].id})).text()
    assert f'href="/console/events/{events[1].id}"' in found
    assert events[0].id not in found
    listing = await (await client.get("/console/events")).text()
    assert all(f'href="/console/events/{e.id}"' in listing for e in events)
    assert 'hx-trigger="every 3s"' in listing  # the first page refreshes itself
    rows = await client.get("/console/events", params={"rows": "1"}, headers={"HX-Request": "true"})
    assert (await rows.text()).startswith('<tbody id="event-rows"')
    overview = await (await client.get("/console/overview")).text()
    assert "(3)" in overview  # accepted in the last two hours
    assert "<polyline" in overview
    doc = await (await client.get("/openapi.json")).json()
    assert not [p for p in doc["paths"] if p.startswith("/console")]


async def test_destinations_masked_and_checked(client: Client, make_key: MakeKey) -> None:
    await sign_in(client, await make_key("read:events"))
    page = await (await client.get("/console/destinations")).text()
    assert "conveyour" in page
    assert "convertr" in page
    for secret in ("cy-token-secret-0001", "cv-apikey-secret-0002"):
        assert secret not in page
    assert "**********" in page
    assert 'hx-get="/console/destinations/check"' in page
    # relay config check's finding: this Convertr (port 9) cannot be read.
    check = await (await client.get("/console/destinations/check")).text()
    assert "convertr: cannot read the campaign form&#39;s fields" in check
    assert "could not reach Convertr" in check
    assert "cv-apikey-secret-0002" not in check


async def test_a_session_ends_after_its_absolute_lifetime(
    client: Client, make_key: MakeKey, redis: Redis
) -> None:
    await sign_in(client, await make_key("admin"))
    (name,) = [n async for n in redis.scan_iter(redis_keys.console_session("*"))]
    await redis.hset(name, "ends", int(time.time()) - 1)
    answer = await client.get("/console/overview", allow_redirects=False)
    assert answer.status == 303


async def test_secure_cookie_behind_a_proxy_that_ended_tls(
    client: Client, make_key: MakeKey
) -> None:
    key = await make_key("admin")
    for proto, secure in (("https", True), ("HTTPS, http", True), ("http", False)):
        answer = await client.post(
            "/console/sign-in",
            data={"api_key": key},
            headers={"X-Forwarded-Proto": proto},
            allow_redirects=False,
        )
        assert answer.status == 303
        assert ("; Secure" in answer.headers["Set-Cookie"]) is secure, proto
    # Behind that proxy the browser's Origin is https: the origin check accepts it.
    client.session.cookie_jar.clear()
    token = await sign_in(client, key)
    origin = {"Origin": f"https://{client.host}:{client.port}"}
    refused = await client.post("/console/sign-out", data={"csrf": token}, headers=origin)
    assert refused.status == 403  # plain http, and no proxy said otherwise
    answer = await client.post(
        "/console/sign-out",
        data={"csrf": token},
        headers={**origin, "X-Forwarded-Proto": "https"},
        allow_redirects=False,
    )
    assert answer.status == 303


async def test_search_by_email_and_by_phone(
    client: Client, make_key: MakeKey, redis: Redis, settings: Settings
) -> None:
    store = EventStore(redis, retention_s=settings.retention_s, partitions=16)
    ann = new_lead("", "conveyour", payload=Lead(email="ann@example.com", first_name="Ann"))
    bob = new_lead("", "conveyour", payload=Lead(phone="+14155550100", first_name="Bob"))
    others = [new_lead(f"o{i}@example.com", "conveyour") for i in range(3)]
    await store.enqueue([ann, bob, *others])
    await sign_in(client, await make_key("read:events"))
    for typed, found, missing in (
        ("Ann@Example.COM", ann, bob),
        ("(415) 555-0100", bob, ann),
        ("+1 415 555 0100", bob, ann),
    ):
        page = await (await client.get("/console/events", params={"q": typed})).text()
        assert f'href="/console/events/{found.id}"' in page, typed
        assert f'href="/console/events/{missing.id}"' not in page, typed
        assert not [o for o in others if o.id in page]
        assert "1 found for" in page
    nothing = await (await client.get("/console/events", params={"q": "no@example.com"})).text()
    assert "0 found for" in nothing
    assert "No events." in nothing
