"""bench's latency section, piece by piece: the clock, the upstream's record, the open
loop, and the figures made of them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bench.apps import host_clock, upstream_app
from bench.latency import Usage, measure
from bench.openloop import Send, _generate
from bench.servers import cpu_s, runqueue_wait_s
from tests.procs import ROOT

AppClient = Callable[..., Awaitable[TestClient[Any, Any]]]


def test_the_clock_is_one_clock_for_every_process() -> None:
    """A time read in another process falls between two read here."""
    before = host_clock()
    child = subprocess.run(
        [sys.executable, "-c", "from bench.apps import host_clock; print(repr(host_clock()))"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    )
    after = host_clock()
    assert before < float(child.stdout) < after


def test_cpu_and_runqueue_wait_of_a_process() -> None:
    """cpu_s agrees with the process's own clock. /proc counts in ticks (10 ms), so the
    work is 0.2 s of CPU, measured, not a loop that may finish inside one tick."""
    pid = os.getpid()
    before, own_before = cpu_s(pid), time.process_time()
    while time.process_time() - own_before < 0.2:
        sum(i * i for i in range(10_000))
    used, own_used = cpu_s(pid) - before, time.process_time() - own_before
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert own_used - 2 * tick <= used <= own_used + 2 * tick
    waited = runqueue_wait_s(pid)
    assert waited is None or waited >= 0
    assert runqueue_wait_s(2**22 + 1) is None  # no such process


async def test_the_upstream_keeps_each_ids_first_arrival(
    aiohttp_client: AppClient,
) -> None:
    client = await aiohttp_client(upstream_app())
    before = host_clock()
    for msg_id in ("evt_a", "evt_b", "evt_a"):
        resp = await client.post("/hook", data=b"{}", headers={"webhook-id": msg_id})
        assert resp.status == 200
    doc = await (await client.get("/_arrivals")).json()
    assert sorted(doc["arrivals"]) == ["evt_a", "evt_b"]
    assert before < doc["arrivals"]["evt_a"] < doc["arrivals"]["evt_b"] < host_clock()
    assert doc["repeats"] == 1
    await client.delete("/_stats")
    assert await (await client.get("/_arrivals")).json() == {"arrivals": {}, "repeats": 0}


async def test_the_open_loop_keeps_its_schedule_while_answers_are_slow(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> None:
    """Every request goes out on time although the first answers take 300 ms: the load
    does not wait for the server (a closed loop would have sent 2 requests by then)."""
    seen: list[bytes] = []

    async def leads(request: web.Request) -> web.Response:
        seen.append(await request.read())
        if len(seen) <= 2:
            await asyncio.sleep(0.3)
        if len(seen) == 5:
            return web.json_response({"error": "no"}, status=503)
        return web.json_response({"id": f"evt_{len(seen)}"}, status=202)

    app = web.Application()
    app.router.add_post("/v1/leads", leads)
    server = await aiohttp_server(app)
    rows = await _generate(
        str(server.make_url("/v1/leads")), b'{"n": {n}}', {}, rate=100.0, count=20
    )
    sends = [Send(*row) for row in rows]
    assert sorted(seen) == sorted(b'{"n": %d}' % n for n in range(20))
    assert [round((s.due - sends[0].due) * 100) for s in sends] == list(range(20))
    assert max(s.lag_s for s in sends) < 0.1  # loose: the machine may be busy
    assert sends[5].sent < sends[0].answered  # type: ignore[operator]
    assert sum(s.status == 202 for s in sends) == 19
    assert [s.event_id for s in sends if s.status == 503] == [None]


def _send(n: int, *, lag: float = 0.0, answer_s: float = 0.002, status: int = 202) -> Send:
    due = 100.0 + n / 100
    return Send(
        due=due,
        sent=due + lag,
        answered=None if status == 0 else due + lag + answer_s,
        status=status,
        event_id=f"evt_{n}" if status == 202 else None,
    )


def test_figures_of_the_matched_events() -> None:
    sends = [_send(n) for n in range(100)]
    sends[7] = _send(7, lag=0.05)  # the generator fell behind once
    sends[8] = _send(8, status=503)
    sends[9] = _send(9, status=0)
    # Delivered 1 ms after the 202 was read; evt_3 30 ms after, evt_4 before it, evt_5 never.
    arrivals = {s.event_id: s.answered + 0.001 for s in sends if s.event_id and s.answered}
    arrivals["evt_3"] += 0.029
    arrivals["evt_4"] -= 0.0015
    del arrivals["evt_5"]
    usage = Usage(events=100, span_s=1.0, cpu_s=0.25, wait_s=0.1)
    r = measure(sends, arrivals, rate=100.0, duration_s=1.0, warmup_s=0.0, repeats=2, usage=usage)
    assert (r.sent, r.accepted, r.refused, r.unanswered) == (100, 98, 1, 1)
    assert (r.delivered, r.lost, r.early, r.repeats) == (97, 1, 1, 2)
    assert r.late == 1
    assert r.worst_lag_ms == pytest.approx(50.0)
    assert r.latency.p50_ms == pytest.approx(1.0)
    assert r.latency.p99_ms == pytest.approx(30.0)  # nearest rank: the 97th of 97
    assert r.latency.max_ms == pytest.approx(30.0)
    assert r.ingest.max_ms == pytest.approx(2.0)
    assert r.end_to_end.p50_ms == pytest.approx(3.0)
    assert r.sent_rate == pytest.approx(100.0, rel=0.01)
    doc = r.to_dict()
    assert doc["accepted_to_delivered"]["max_ms"] == pytest.approx(30.0)
    assert doc["lost"] == 1
    assert doc["clock"] == "CLOCK_MONOTONIC"
    assert doc["relay_serve"] == {
        "cpu_ms_per_event": 2.5,
        "core_share": 0.25,
        "runqueue_wait_share": 0.1,
    }


def test_nothing_delivered_is_all_lost_not_an_error() -> None:
    r = measure([_send(0), _send(1)], {}, rate=100.0, duration_s=1.0, warmup_s=0.0)
    assert (r.accepted, r.delivered, r.lost) == (2, 0, 2)
    assert r.latency.p99_ms == 0.0
    assert r.delivered_rate == 0.0
