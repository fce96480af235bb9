"""/metrics from real processes: `relay serve --workers 2` (one scrape, every process's
counts) and `relay worker --metrics-port`."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.fakes import FakeConvertr
from tests.procs import Serve, assert_tree_under_test, clean_env, http, relay
from tests.redis_server import RedisServer, free_port
from tests.scrape import Scrape
from tests.test_delivery_processes import convertr_toml, enqueue, start_worker, statuses

pytestmark = pytest.mark.slow

TOKEN = "metrics-token-5d1b7a93e0"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def scrape(url: str) -> Scrape:
    status, body = http("GET", url, headers=BEARER)
    assert status == 200, body
    return Scrape(body.decode())


async def test_serve_with_two_processes_shows_the_sum_in_one_scrape(
    tmp_path: Path, redis_server: RedisServer, redis: Redis
) -> None:
    """The ``redis`` fixture empties the database first: the gauges read all of it."""
    tmp = tmp_path / "tmp"  # where the run's metrics directory goes (TMPDIR)
    tmp.mkdir()
    env = clean_env(RELAY_REDIS_URL=redis_server.url, RELAY_METRICS_TOKEN=TOKEN, TMPDIR=str(tmp))
    async with FakeConvertr() as fake:
        (tmp_path / "relay.toml").write_text(convertr_toml(fake))
        key = json.loads(
            (await asyncio.to_thread(
                relay, "keys", "create", "--name", "m", "--scope", "write:leads", "--json",
                cwd=tmp_path, env=env,
            )).stdout
        )["key"]  # fmt: skip
        serve = await asyncio.to_thread(Serve, cwd=tmp_path, env=env, args=("--workers", "2"))
        try:
            assert http("GET", serve.url("/metrics"))[0] == 401
            headers = {"X-API-Key": key, "Content-Type": "application/json"}
            for i in range(20):  # a connection each: the kernel spreads them over both
                body = json.dumps({"email": f"p{i}@example.com"}).encode()
                status, _ = await asyncio.to_thread(
                    http, "POST", serve.url("/v1/leads"), body=body, headers=headers
                )
                assert status == 202
            body = b'[{"email": "q@example.com"}, {"first_name": "no one"}]'
            status, _ = await asyncio.to_thread(
                http, "POST", serve.url("/v1/leads"), body=body, headers=headers
            )
            assert status == 207
            for _ in range(500):
                if len(fake.leads) == 21:
                    break
                await asyncio.sleep(0.02)
            assert len(fake.leads) == 21
            (run,) = tmp.glob("relay-metrics-*")
            pids = {f.name.split("_")[-1] for f in run.glob("counter_*.db")}
            assert len(pids) == 2, "both processes counted"
            await asyncio.sleep(0.3)  # the last settles' counts are written after the answer
            for _ in range(4):  # each scrape a connection of its own: either process answers
                got = await asyncio.to_thread(scrape, serve.url("/metrics"))
                assert got["relay_events_accepted_total", {"type": "lead"}] == 21
                assert got["relay_events_rejected_total"] == 1
                posts = {"route": "/v1/leads", "method": "POST"}
                assert got["relay_http_requests_total", {**posts, "status": "202"}] == 20
                cv = {"destination": "convertr"}
                outcome = {**cv, "outcome": "delivered"}
                assert got["relay_deliveries_total", outcome] == 21
                assert got["relay_event_delivery_latency_seconds_count", cv] == 21
                assert got["relay_upstream_request_seconds_count", cv] == 21
                assert got["relay_workers_live"] == 2
                assert got["relay_queue_pending", cv] == 0
            code = serve.stop()
            assert code == 0, serve.log()
            assert TOKEN not in serve.log()
            assert not run.exists(), "the run's metrics directory is removed"
        finally:
            await asyncio.to_thread(serve.stop)


async def _wait_for(url: str, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if (await asyncio.to_thread(http, "GET", url))[0] == 200:
                return
        except OSError:
            pass
        assert proc.returncode is None, "the worker exited"
        assert time.monotonic() < deadline, f"{url} did not answer"
        await asyncio.sleep(0.05)


async def test_worker_metrics_port_serves_metrics_and_healthz(
    tmp_path: Path, redis_server: RedisServer, redis: Redis
) -> None:
    env = clean_env(RELAY_REDIS_URL=redis_server.url, RELAY_METRICS_TOKEN=TOKEN)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with FakeConvertr() as fake:
        (tmp_path / "relay.toml").write_text(convertr_toml(fake))
        fake.script(status=400, body={"code": 400, "message": "no", "data": []})
        ids = await enqueue(redis, 5)
        worker = await start_worker(tmp_path, env, "--metrics-port", str(port))
        try:
            await _wait_for(f"{base}/healthz", worker)
            for _ in range(500):
                if sorted(await statuses(redis, ids)) == ["dead"] + ["delivered"] * 4:
                    break
                await asyncio.sleep(0.02)
            assert sorted(await statuses(redis, ids)) == ["dead"] + ["delivered"] * 4
            assert (await asyncio.to_thread(http, "GET", f"{base}/metrics"))[0] == 401
            got = await asyncio.to_thread(scrape, f"{base}/metrics")
            cv = {"destination": "convertr"}
            assert got["relay_deliveries_total", {**cv, "outcome": "delivered"}] == 4
            assert got["relay_deliveries_total", {**cv, "outcome": "dead"}] == 1
            assert got["relay_queue_dead", cv] == 1
            assert got["relay_workers_live"] == 1
            assert got["relay_redis_up"] == 1
            assert got.labels("relay_http_requests_total", "route") == set()  # no API here
        finally:
            worker.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(worker.communicate(), 30)
        assert worker.returncode == 0, err
        assert TOKEN.encode() not in err


def test_worker_metrics_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    env = clean_env(RELAY_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert_tree_under_test(env, tmp_path)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        for given in (str(port), "70000"):
            done = subprocess.run(
                [sys.executable, "-m", "relay", "worker", "--metrics-port", given],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            assert done.returncode == 1, done.stderr
            (line,) = done.stderr.splitlines()
            assert line.startswith("relay worker: "), line
            assert ("in use" if given == str(port) else "1-65535") in line
