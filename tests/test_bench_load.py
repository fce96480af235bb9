"""bench's closed-loop load: a template body gives every request a number of its own
(a new contact for every lead), in the bundled generator and in wrk's script."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.load import _generate, wrk_script
from tests.ci import missing

TEMPLATE = b'{"email":"lead{n}@example.com"}'
NUMBERED = re.compile(rb'\{"email":"lead(\d+)@example.com"\}')


@contextlib.asynccontextmanager
async def recorder() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A loopback server answering 202 to POST /v1/leads: its URL and the bodies it got."""
    bodies: list[bytes] = []

    async def keep(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/v1/leads", keep)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("/v1/leads")), bodies


def numbers(bodies: list[bytes]) -> set[bytes]:
    """The numbers the template bodies carry (each body must be one)."""
    found = [NUMBERED.fullmatch(b) for b in bodies]
    assert all(found), bodies[:3]
    return {m.group(1) for m in found if m}


async def test_the_bundled_generator_numbers_each_request_of_a_template() -> None:
    async with recorder() as (url, bodies):
        result = await _generate(url, TEMPLATE, {}, connections=4, duration_s=None, requests=40)
        again = await _generate(url, TEMPLATE, {}, connections=4, duration_s=None, requests=10)
        plain = await _generate(url, b"{}", {}, connections=2, duration_s=None, requests=5)
    assert (result["requests"], again["requests"], plain["requests"]) == (40, 10, 5)
    assert len(numbers(bodies[:50])) == 50  # none repeated, across runs too
    assert bodies[50:] == [b"{}"] * 5  # a body with no {n} is sent as it is


async def test_wrk_numbers_each_request_of_a_template(tmp_path: Path) -> None:
    """wrk (what the bench loads with where it is installed; .ci/run installs it) sends
    the template with a number of its own each request."""
    wrk = shutil.which("wrk")
    if wrk is None:
        missing("wrk", hint="apt-get install wrk")
    assert "request = function()" not in wrk_script(b"{}", {})  # a plain body as it is
    script = tmp_path / "post.lua"
    script.write_text(wrk_script(TEMPLATE, {"X-API-Key": "rly_x"}))
    async with recorder() as (url, bodies):
        wrk_run = await asyncio.create_subprocess_exec(
            wrk, "-t1", "-c2", "-d1s", "-s", str(script), url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(wrk_run.communicate(), 60)
    assert wrk_run.returncode == 0, out
    assert b"BENCH_JSON" in out
    assert len(bodies) > 10
    assert len(numbers(bodies)) == len(bodies)
