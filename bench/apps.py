"""The bare servers relay is compared with, each run in a process of its own.

``python -m bench.apps ingest --port P``
    The ingest baseline: read the body, parse it with orjson, answer 202 with
    a small JSON document. What relay's ingest would cost with nothing to do.
``python -m bench.apps upstream --port P``
    A fake upstream: answers every POST with 200 at once and records when it
    arrived (``time.time()``), how many distinct ``webhook-id`` it saw and one
    sample request. ``GET /_stats`` returns that, ``GET /_arrivals`` when each
    ``webhook-id`` first arrived (:func:`host_clock`), ``DELETE /_stats`` forgets both.

Both run on uvloop when it can be imported, without an access log.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import orjson
from aiohttp import web

__all__ = ["event_loop_name", "host_clock", "ingest_app", "main", "run_on_uvloop", "upstream_app"]

T = TypeVar("T")

_QUEUED = orjson.dumps({"status": "queued", "id": "evt_baseline", "destinations": []})
#: Request headers kept in the upstream's sample (what a baseline client must send too).
_SAMPLE_HEADERS = ("Content-Type", "webhook-id", "webhook-timestamp", "webhook-signature")


def host_clock() -> float:
    """Seconds on CLOCK_MONOTONIC: one clock for every process of this host.

    Times taken in different processes (a 202 at the load generator, a request at
    the upstream) are compared on it. Linux keeps one CLOCK_MONOTONIC per boot,
    the same in every process (of one time namespace: the bench's children share
    the bench's), never stepped (NTP only slews it, for every reader alike);
    ``time.time()`` (CLOCK_REALTIME) can be stepped by NTP or by hand in
    the middle of a run, and ``time.monotonic()``/``perf_counter()`` are the same
    clock on Linux, but Python promises their differences only within a process.
    """
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def event_loop_name() -> str:
    """``uvloop`` when it is importable, else ``asyncio``."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_on_uvloop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end on uvloop when it is importable, else on asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _ingest(request: web.Request) -> web.Response:
    doc: Any = orjson.loads(await request.read())
    if not isinstance(doc, dict | list):
        return web.Response(status=400)
    return web.Response(status=202, body=_QUEUED, content_type="application/json")


def ingest_app() -> web.Application:
    """The ingest baseline: ``POST /v1/leads`` and ``POST /v1/contacts``."""
    app = web.Application()
    app.router.add_post("/v1/leads", _ingest)
    app.router.add_post("/v1/contacts", _ingest)
    app.router.add_get("/healthz", _healthz)
    return app


class _Recorder:
    """What the fake upstream saw since the last reset."""

    __slots__ = ("arrivals", "ids", "repeats", "sample", "times")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.ids: set[str] = set()
        self.sample: dict[str, Any] | None = None
        #: webhook-id -> when it first arrived (host_clock)
        self.arrivals: dict[str, float] = {}
        #: requests whose webhook-id had arrived before
        self.repeats = 0

    async def post(self, request: web.Request) -> web.Response:
        arrived = host_clock()
        self.times.append(time.time())
        body = await request.read()
        if (msg_id := request.headers.get("webhook-id")) is not None:
            self.ids.add(msg_id)
            if msg_id in self.arrivals:
                self.repeats += 1
            else:
                self.arrivals[msg_id] = arrived
        if self.sample is None:
            headers = {h: request.headers[h] for h in _SAMPLE_HEADERS if h in request.headers}
            self.sample = {"body": body.decode(), "headers": headers}
        return web.Response(text="ok")

    async def stats(self, request: web.Request) -> web.Response:
        doc = {
            "count": len(self.times),
            "unique": len(self.ids),
            "times": self.times,
            "sample": self.sample,
        }
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async def arrived(self, request: web.Request) -> web.Response:
        doc = {"arrivals": self.arrivals, "repeats": self.repeats}
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async def reset(self, request: web.Request) -> web.Response:
        self.times, self.ids, self.sample = [], set(), None
        self.arrivals, self.repeats = {}, 0
        return web.Response(text="reset")


def upstream_app() -> web.Application:
    """The fake upstream: any ``POST`` is 200; ``GET``/``DELETE /_stats``, ``GET /_arrivals``."""
    recorder = _Recorder()
    app = web.Application()
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/_stats", recorder.stats)
    app.router.add_delete("/_stats", recorder.reset)
    app.router.add_get("/_arrivals", recorder.arrived)
    app.router.add_post("/{tail:.*}", recorder.post)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.apps", description=__doc__)
    parser.add_argument("app", choices=("ingest", "upstream"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = ingest_app() if args.app == "ingest" else upstream_app()
    loop: asyncio.AbstractEventLoop | None = None
    if event_loop_name() == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
