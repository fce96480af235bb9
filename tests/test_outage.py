"""Redis away at start and mid-run, with real processes: waited for, logged once, delivered after.

`relay serve` and `relay worker` are started with RELAY_REDIS_URL naming a port
where no Redis runs yet; redis-server is then started on that port (and later
stopped and started again, its AOF keeping the data).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from relay.connect import redis_client
from relay.settings import load_settings
from relay.worker import Worker
from tests.fakes import FakeConvertr
from tests.procs import Serve, clean_env, http, relay
from tests.redis_server import RedisServer
from tests.test_delivery_processes import convertr_toml, enqueue, start_worker, wait_delivered

pytestmark = pytest.mark.slow

#: How long each outage lasts: several of the worker's 250 ms housekeeping passes and of
#: the backoff's steps, far below the one-minute reminder.
OUTAGE_S = 3.0

WENT = "Redis went away"
BACK = re.compile(r"Redis is back after (\d+\.\d) s")


def outage_lines(log: str) -> tuple[int, list[float], int]:
    """(went-away lines, back-after seconds, tracebacks) in a process's log."""
    backs = [float(m.group(1)) for m in BACK.finditer(log)]
    return log.count(WENT), backs, log.count("Traceback")


def post_lead(serve: Serve, key: str, email: str) -> int:
    status, _ = http(
        "POST",
        serve.url("/v1/leads"),
        body=json.dumps({"email": email}).encode(),
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )
    return status


async def wait_ready(serve: Serve, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while (await asyncio.to_thread(http, "GET", serve.url("/readyz")))[0] != 200:
        assert time.monotonic() < deadline, serve.log()
        await asyncio.sleep(0.1)


async def test_serve_started_before_redis_then_redis_restarted(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")  # its port is chosen; nothing listens there yet
    env = clean_env(RELAY_REDIS_URL=server.url)
    redis: Redis | None = None
    async with FakeConvertr() as fake:
        (tmp_path / "relay.toml").write_text(convertr_toml(fake))
        serve = await asyncio.to_thread(Serve, cwd=tmp_path, env=env, until="/healthz")
        try:
            assert (await asyncio.to_thread(http, "GET", serve.url("/readyz")))[0] == 503
            key = "rly_live_" + "a" * 32  # no Redis to check it against: 503 before 401
            assert await asyncio.to_thread(post_lead, serve, key, "early@example.com") == 503
            await asyncio.sleep(OUTAGE_S)
            assert serve.proc.poll() is None
            server.start()
            await wait_ready(serve)
            created = await asyncio.to_thread(
                relay, "keys", "create", "--name", "t", "--scope", "write:leads", "--json",
                cwd=tmp_path, env=env,
            )  # fmt: skip
            key = json.loads(created.stdout)["key"]
            assert await asyncio.to_thread(post_lead, serve, key, "first@example.com") == 202
            redis = redis_client(server.url)
            await wait_for_leads(fake, {"first@example.com"}, serve)
            await wait_for_backs(serve, 1)
            # The in-process worker beats: `relay status` sees a live worker.
            done = await asyncio.to_thread(relay, "status", "--json", cwd=tmp_path, env=env)
            workers = json.loads(done.stdout)["workers"]
            assert [w["pid"] for w in workers] == [serve.proc.pid]

            server.stop()  # mid-run: SHUTDOWN, the AOF keeps keys, streams and groups
            assert await asyncio.to_thread(post_lead, serve, key, "lost@example.com") == 503
            await asyncio.sleep(OUTAGE_S)
            server.start()
            await wait_ready(serve)
            assert await asyncio.to_thread(post_lead, serve, key, "second@example.com") == 202
            await wait_for_leads(fake, {"first@example.com", "second@example.com"}, serve)
            await wait_for_backs(serve, 2)
        finally:
            await asyncio.to_thread(serve.stop)
            if redis is not None:
                await redis.aclose()
            server.stop()
    went, backs, tracebacks = outage_lines(serve.log())
    assert (went, len(backs), tracebacks) == (2, 2, 0), serve.log()
    assert all(OUTAGE_S * 0.9 <= s < OUTAGE_S * 10 for s in backs), backs


async def wait_for_backs(serve: Serve, count: int) -> None:
    """The "back" line comes once no call failed for a few seconds (RedisWatch)."""
    deadline = time.monotonic() + 30
    while len(BACK.findall(serve.log())) < count:
        assert time.monotonic() < deadline, serve.log()
        await asyncio.sleep(0.1)


async def wait_for_leads(fake: FakeConvertr, emails: set[str], serve: Serve) -> None:
    deadline = time.monotonic() + 30
    while {lead["fields"]["email"] for lead in fake.leads} != emails:
        assert time.monotonic() < deadline, (fake.leads, serve.log())
        await asyncio.sleep(0.05)


async def test_worker_started_before_redis_waits_for_it(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    env = clean_env(RELAY_REDIS_URL=server.url)
    redis: Redis | None = None
    worker = None
    try:
        async with FakeConvertr() as fake:
            (tmp_path / "relay.toml").write_text(convertr_toml(fake))
            worker = await start_worker(tmp_path, env)
            await asyncio.sleep(OUTAGE_S)
            assert worker.returncode is None, "relay worker gave up on a Redis not yet there"
            server.start()
            redis = redis_client(server.url)
            ids = await enqueue(redis, 3)
            await wait_delivered(redis, ids)
            assert worker.stderr is not None
            said: list[str] = []
            while not BACK.search(said[-1] if said else ""):
                try:
                    line = await asyncio.wait_for(worker.stderr.readline(), 30)
                except TimeoutError:
                    raise AssertionError("".join(said)) from None
                said.append(line.decode())
            worker.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(worker.communicate(), 30)
            assert worker.returncode == 0, err.decode()
    finally:
        if worker is not None and worker.returncode is None:
            worker.kill()
            await worker.wait()
        if redis is not None:
            await redis.aclose()
        server.stop()
    log = "".join(said) + err.decode()
    went, backs, tracebacks = outage_lines(log)
    assert (went, len(backs), tracebacks) == (1, 1, 0), log
    assert "did not stop" not in log
    # From the worker's first try (after its start-up) until Redis answered.
    assert 0 < backs[0] <= OUTAGE_S + 10, log


async def test_status_with_waiting_events_and_no_live_worker_exits_1(
    tmp_path: Path, redis_server: RedisServer, redis: Redis
) -> None:
    async with FakeConvertr() as fake:
        (tmp_path / "relay.toml").write_text(convertr_toml(fake))
        env = clean_env(RELAY_REDIS_URL=redis_server.url)

        async def status(*args: str) -> tuple[int, str]:
            done = await asyncio.to_thread(
                relay, "status", *args, cwd=tmp_path, env=env, check=False
            )
            return done.returncode, done.stdout

        code, out = await status()
        assert (code, "No live worker" in out) == (0, True)  # nothing waiting: fine
        ids = await enqueue(redis, 2)
        code, out = await status("--json")
        assert code == 1, out
        (row,) = json.loads(out)["destinations"]
        assert (row["pending"], row["health"]) == (2, "unhealthy")
        assert "no live worker" in row["why"]
        code, out = await status()
        assert code == 1
        assert "2 events waiting and no live worker" in out

        settings = load_settings(
            env={"RELAY_REDIS_URL": redis_server.url, "RELAY_CONFIG": str(tmp_path / "relay.toml")}
        )
        worker = Worker(settings, redis=redis)
        running = asyncio.create_task(worker.run())
        try:
            await wait_delivered(redis, ids)
            code, out = await status("--json")
            assert code == 0, out
            (seen,) = json.loads(out)["workers"]
            assert set(seen) == {"host", "pid", "last_seen"}
            assert seen["pid"] == os.getpid()
        finally:
            worker.stop()
            await running
        code, out = await status("--json")
        assert json.loads(out)["workers"] == []  # a worker that stops says so at once
