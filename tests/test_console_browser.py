"""The console in a real browser: Debian's chromium driven by Playwright, against
``relay serve`` (this tree, in a subprocess: API, console and worker) and a fake
ConveYour on 127.0.0.1. Labels and roles are the contract's (ARCHITECTURE.md,
"Console"). Screenshots of every page go to ``$RELAY_SCREENSHOTS`` or the test's tmp
directory (printed).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Dialog, Page, async_playwright, expect
from redis.asyncio import Redis

from relay.keystore import KeyStore
from tests import ci
from tests.fakes import CONVEYOUR_TOKEN, FakeConveyour
from tests.procs import Serve, clean_env
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XSS_NAME = "<img src=x onerror=alert(1)>"
XSS_LAST = "</script><script>alert(1)</script>"
ANSWER = '<html><body><h1>Rejected</h1><script>alert("upstream")</script></body></html>'
#: How long the browser waits for what a worker does (delivery after a replay).
SLOW_MS = 20_000


@pytest.fixture
def chromium() -> str:
    """Debian's chromium: skipped without it, but failed under CI (.ci/run installs it)."""
    if not Path(CHROMIUM).exists():
        ci.missing(CHROMIUM, hint="apt-get install chromium")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=chromium, args=ARGS)
        yield launched
        await launched.close()


@pytest.fixture
def screens(tmp_path: Path) -> Path:
    where = Path(os.environ.get("RELAY_SCREENSHOTS") or tmp_path / "screens")
    where.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {where}")
    return where


async def post_lead(serve: Serve, key: str, lead: dict[str, Any]) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(serve.url("/v1/leads"), json=lead, headers={"X-API-Key": key}) as answer,
    ):
        assert answer.status == 202, await answer.text()
        event_id: str = (await answer.json())["id"]
        return event_id


async def wait_status(serve: Serve, key: str, event_id: str, status: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            async with http.get(
                serve.url(f"/v1/events/{event_id}"), headers={"X-API-Key": key}
            ) as answer:
                if (await answer.json())["status"] == status:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError(f"{event_id} never became {status}")


async def sign_in(page: Page, serve: Serve, key: str) -> None:
    await page.goto(serve.url("/console"))
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()


async def test_an_operator_finds_replays_and_manages_keys(
    browser: Browser,
    redis: Redis,
    redis_server: RedisServer,
    tmp_path: Path,
    screens: Path,
) -> None:
    async with FakeConveyour() as fake:
        toml = tmp_path / "relay.toml"
        toml.write_text(
            "[destinations.conveyour]\n"
            'type = "conveyour"\n'
            f'base_url = "{fake.url}"\n'
            f'token = "{CONVEYOUR_TOKEN}"\n'
            'events = ["contact", "lead"]\n'
        )
        env = clean_env(RELAY_REDIS_URL=redis_server.url, RELAY_CONFIG=str(toml))
        keys = KeyStore(redis)
        _, admin = await keys.create(name="ops", scopes=["admin"])
        _, reader = await keys.create(name="viewer", scopes=["read:events"])
        _, writer = await keys.create(name="zapier", scopes=["write:leads", "read:events"])
        serve = await asyncio.to_thread(Serve, cwd=tmp_path, env=env)
        try:
            # The upstream rejects the first two leads with an HTML page: dead letters.
            fake.script(status=400, body=ANSWER, headers={"Content-Type": "text/html"}, times=2)
            ada = await post_lead(serve, writer, {"email": "ada@example.com", "first_name": "Ada"})
            xss = await post_lead(
                serve,
                writer,
                {"email": "x@example.com", "first_name": XSS_NAME, "last_name": XSS_LAST},
            )
            for event_id in (ada, xss):
                await wait_status(serve, writer, event_id, "dead")
            await _as_admin(browser, serve, admin, ada, xss, screens)
            await _as_reader(browser, serve, reader, ada)
        finally:
            await asyncio.to_thread(serve.stop)


async def _as_admin(
    browser: Browser, serve: Serve, admin: str, ada: str, xss: str, screens: Path
) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    dialogs: list[str] = []

    async def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.accept()

    page.on("dialog", on_dialog)
    # The browser reports what the CSP blocked (an inline style htmx injected, ...).
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security" in m.text else None)
    await page.goto(serve.url("/console"))
    await page.screenshot(path=screens / "sign-in.png")
    await page.get_by_label("API key").fill("rly_live_" + "0" * 32)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_text("Invalid key")).to_be_visible()
    await sign_in(page, serve, admin)
    for name in ("Overview", "Events", "Dead letters", "Keys", "Hooks", "Destinations"):
        await expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
    await page.screenshot(path=screens / "overview.png", full_page=True)

    # Find the lead by its email, typed as a person might; see its row; open it.
    await page.get_by_role("link", name="Events", exact=True).click()
    await expect(page.get_by_role("table")).to_be_visible()
    await page.screenshot(path=screens / "events.png", full_page=True)
    await page.get_by_label("Search").fill("Ada@Example.com")
    await page.get_by_label("Search").press("Enter")
    rows = page.get_by_role("table").get_by_role("row").filter(has_text="ada@example.com")
    await expect(rows).to_have_count(1)
    await expect(page.get_by_role("table").get_by_role("link", name=xss)).to_have_count(0)
    await rows.get_by_role("link", name=ada).click()
    await expect(page.get_by_role("heading", name=f"Event {ada}")).to_be_visible()

    # And by its event id; see what the upstream answered.
    await page.get_by_role("link", name="Events", exact=True).click()
    await page.get_by_label("Search").fill(ada)
    await page.get_by_label("Search").press("Enter")
    await page.get_by_role("table").get_by_role("link", name=ada).click()
    await expect(page.get_by_role("heading", name=f"Event {ada}")).to_be_visible()
    for header in ("Time", "Status", "Duration", "Answer"):
        await expect(page.get_by_role("columnheader", name=header, exact=True)).to_be_visible()
    await expect(page.get_by_role("cell", name="400 rejected")).to_be_visible()
    await expect(page.get_by_role("cell", name=ANSWER)).to_be_visible()  # as text
    await expect(page.get_by_role("button", name="Replay")).to_be_visible()
    await page.screenshot(path=screens / "event.png", full_page=True)

    # The XSS lead: its names are shown as text, and nothing ran.
    await page.goto(serve.url(f"/console/events/{xss}"))
    await expect(page.get_by_text(XSS_NAME)).to_be_visible()
    await expect(page.get_by_text(XSS_LAST)).to_be_visible()
    await page.goto(serve.url("/console/events"))
    await expect(page.get_by_role("cell", name=XSS_NAME, exact=False)).to_be_visible()

    # Replay Ada's dead letter from Dead letters, and watch it become delivered.
    await page.get_by_role("link", name="Dead letters", exact=True).click()
    await expect(page.get_by_role("checkbox")).to_have_count(2)
    await page.screenshot(path=screens / "dead-letters.png", full_page=True)
    await page.get_by_role("row").filter(has_text=ada).get_by_role("checkbox").check()
    await page.get_by_role("button", name="Replay selected").click()
    await expect(page.get_by_text("Replayed 1 of 1")).to_be_visible()
    await expect(page.get_by_role("checkbox")).to_have_count(1)
    await page.get_by_role("status").get_by_role("link", name=ada).click()
    await expect(page.get_by_role("listitem").filter(has_text="conveyour:")).to_contain_text(
        "delivered", timeout=SLOW_MS
    )
    await expect(page.get_by_role("cell", name="200 delivered")).to_be_visible()
    await expect(page.get_by_role("button", name="Replay")).to_have_count(0)

    # A key: created (shown once), then revoked after a confirmation.
    await page.get_by_role("link", name="Keys", exact=True).click()
    await page.get_by_label("Name").fill("crm-sync")
    await page.get_by_label("write:leads", exact=True).check()
    await page.get_by_label("read:events", exact=True).check()
    await page.get_by_role("button", name="Create key").click()
    shown = (await page.locator("#new-key").inner_text()).strip()
    assert re.fullmatch(r"rly_live_[0-9A-Za-z]{32}", shown)
    await page.screenshot(path=screens / "keys.png", full_page=True)
    await page.get_by_role("link", name="Keys", exact=True).click()
    assert shown not in await page.content()
    assert dialogs == []  # nothing so far opened a dialog (the XSS pages included)
    row = page.get_by_role("row").filter(has_text="crm-sync")
    await row.get_by_role("button", name="Revoke").click()
    await expect(page.get_by_role("row").filter(has_text="crm-sync")).to_contain_text("revoked")
    assert len(dialogs) == 1
    assert dialogs[0].startswith("Revoke the key crm-sync")

    for name, shot in (("Hooks", "hooks"), ("Destinations", "destinations")):
        await page.get_by_role("link", name=name, exact=True).click()
        await page.screenshot(path=screens / f"{shot}.png", full_page=True)
    destinations = await page.content()
    assert CONVEYOUR_TOKEN not in destinations

    # A post without the CSRF token is refused, though the session cookie goes along.
    refused = await page.request.post(
        serve.url("/console/dead-letters/replay"), form={"pick": f"conveyour {xss}"}
    )
    assert refused.status == 403
    assert blocked == []
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("API key")).to_be_visible()
    assert admin not in await page.content()
    for cookie in await context.cookies():
        assert admin not in cookie["value"]
    await context.close()


async def _as_reader(browser: Browser, serve: Serve, reader: str, ada: str) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await sign_in(page, serve, reader)
    await page.get_by_role("link", name="Dead letters", exact=True).click()
    await expect(page.get_by_role("table")).to_be_visible()
    await expect(page.get_by_role("button", name="Replay selected")).to_have_count(0)
    await expect(page.get_by_role("checkbox")).to_have_count(0)
    await page.goto(serve.url(f"/console/events/{ada}"))
    await expect(page.get_by_role("columnheader", name="Answer")).to_be_visible()
    await expect(page.get_by_role("button", name="Replay")).to_have_count(0)
    token = await page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert token
    # Posting anyway, with a valid token: 403.
    for path, form in (
        (f"/console/events/{ada}/replay", {"destination": "conveyour"}),
        ("/console/keys", {"name": "sneaky", "scope": "admin"}),
    ):
        answer = await page.request.post(serve.url(path), form={**form, "csrf": token})
        assert answer.status == 403, path
    await context.close()
