"""The console's page times with many stored events: ``python -m bench.console [N]``.

Fills a redis-server of its own with N events (default 100 000) through
``EventStore.enqueue`` (in batches, as the API's group commit does), a few hundred of
them dead letters with an attempt each, then serves ``create_app`` on a loopback port
and times each page's GET (the server's whole answer: session check, Redis reads,
rendering), a few times each, printing the median and the worst; then follows the
``status=dead`` listing's "Search older" links to its first match (one scan budget,
``relay.store.SCAN_BUDGET``, per page). Not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import asyncio
import html
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from bench.servers import Procs, start_redis
from relay import redis_keys
from relay.api import create_app
from relay.connect import redis_client
from relay.ids import new_event_id
from relay.keystore import KeyStore
from relay.models import Lead
from relay.settings import load_settings
from relay.store import EventStore, NewEvent

#: Events written per enqueue call.
_BATCH = 500
#: Of them, dead letters (with an attempt record each), as a bad day leaves them.
_DEAD = 300
_RUNS = 7

_TOML = """
[destinations.conveyour]
type = "conveyour"
base_url = "http://127.0.0.1:9"
token = "bench-token"
events = ["contact", "lead"]
"""


async def _fill(redis_url: str, n: int) -> str:
    redis = redis_client(redis_url)
    store = EventStore(redis, retention_s=7 * 86400, partitions=16)
    dead_ids: list[str] = []
    for start in range(0, n, _BATCH):
        events = [
            NewEvent(
                id=new_event_id(),
                type="lead",
                mode="live",
                key_id="key_bench",
                received_at=datetime.now(UTC),
                payload=Lead(email=f"lead{i}@example.com", first_name=f"Lead {i}"),
                destinations=("conveyour",),
            )
            for i in range(start, min(n, start + _BATCH))
        ]
        await store.enqueue(events)
        dead_ids += [e.id for e in events[: max(0, _DEAD - len(dead_ids))]]
    # Dead letters as settle leaves them: the status, an attempt, a place in the dead set.
    attempt = {"at": time.time(), "outcome": "rejected", "status": 400, "duration_ms": 40.0}
    attempt["excerpt"] = '{"status": "error", "message": "Missing trait email"}'
    async with redis.pipeline(transaction=False) as pipe:
        for event_id in dead_ids:
            key = redis_keys.event(event_id)
            pipe.hset(key, redis_keys.STATUS_FIELD_PREFIX + "conveyour", "dead")
            pipe.hset(key, redis_keys.ATTEMPTS_FIELD_PREFIX + "conveyour", 1)
            pipe.hset(key, f"{redis_keys.ATTEMPT_RECORD_PREFIX}conveyour:1", orjson.dumps(attempt))
            pipe.zadd(redis_keys.dead("conveyour", 0), {event_id: time.time() * 1000})
        await pipe.execute()
    _, key = await KeyStore(redis).create(name="bench", scopes=["admin"])
    await redis.aclose()
    return key


async def _walk(http: aiohttp.ClientSession, base: str, path: str) -> None:
    """Follow a rare filter's "Search older" links until its first match (the dead
    letters are the oldest events): how many pages a person clicks through, and the
    time of them all."""
    began, pages = time.perf_counter(), 0
    while True:
        pages += 1
        async with http.get(base + path) as answer:
            page = await answer.text()
        older = re.search(r'<a href="([^"]+)">Search older</a>', page)
        if 'href="/console/events/evt_' in page or older is None:
            break
        path = html.unescape(older.group(1))
    took = (time.perf_counter() - began) * 1000
    print(f"{'  ... Search older to the 1st match':<34} {took:>10.1f} {'':>9} {pages:>6} pp")


async def _time_pages(redis_url: str, workdir: Path, key: str, n: int) -> None:
    toml = workdir / "relay.toml"
    toml.write_text(_TOML)
    settings = load_settings(env={"RELAY_REDIS_URL": redis_url, "RELAY_CONFIG": str(toml)})
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://127.0.0.1:{port}"
    try:
        # unsafe: the jar keeps cookies of an IP address (127.0.0.1) too
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.post(base + "/console/sign-in", data={"api_key": key}) as answer:
                assert answer.url.path == "/console/overview", answer.url
            async with http.get(base + "/console/events") as answer:
                page = await answer.text()
            event_id = page.split('href="/console/events/', 2)[1].split('"', 1)[0]
            pages = {
                "Overview": "/console/overview",
                "Events (first page, 50)": "/console/events",
                "Events, filtered status=dead": "/console/events?status=dead",
                "Event detail": f"/console/events/{event_id}",
                "Search by event id": f"/console/events?q={event_id}",
                "Search by email": f"/console/events?q=Lead{n - 1}@Example.com",
                f"Dead letters ({_DEAD})": "/console/dead-letters",
                "Hooks": "/console/hooks",
            }
            print(f"{'page':<34} {'median ms':>10} {'worst ms':>9} {'bytes':>8}")
            for name, path in pages.items():
                times = []
                for _ in range(_RUNS):
                    began = time.perf_counter()
                    async with http.get(base + path) as answer:
                        body = await answer.read()
                        assert answer.status == 200, (path, answer.status)
                    times.append((time.perf_counter() - began) * 1000)
                print(
                    f"{name:<34} {statistics.median(times):>10.1f} {max(times):>9.1f} "
                    f"{len(body):>8}"
                )
            await _walk(http, base, "/console/events?status=dead")
    finally:
        await runner.cleanup()


def main() -> None:
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        procs = Procs(Path(tmp))
        try:
            _, port = start_redis(procs)
            url = f"redis://127.0.0.1:{port}/0"
            began = time.perf_counter()
            key = asyncio.run(_fill(url, n))
            print(f"{n} events stored in {time.perf_counter() - began:.1f} s")
            asyncio.run(_time_pages(url, Path(tmp), key, n))
        finally:
            procs.stop_all()


if __name__ == "__main__":
    main()
