"""``relay worker --metrics-port``: ``GET /metrics`` and ``GET /healthz`` for a worker,
which has no API to serve them."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from redis.asyncio import Redis

from relay import metrics
from relay.errors import CannotListen
from relay.settings import Settings

__all__ = ["bind", "probe_app", "serving"]

_SETTINGS = web.AppKey("settings", Settings)
_REDIS = web.AppKey("redis", Redis)
#: Whether every loop of the worker runs (relay.worker.Worker.alive).
_ALIVE = web.AppKey[Callable[[], bool]]("alive")


def bind(host: str, port: int) -> list[socket.socket]:
    """The sockets to serve on, bound now so that a port in use is an error before the
    worker starts (:class:`CannotListen`, a port out of range too)."""
    from relay.api.server import listen  # the API's binding and its one-line errors

    if not 1 <= port <= 65535:
        raise CannotListen(f"--metrics-port must be 1-65535, got {port}")
    (sockets,) = listen(host, port)
    return sockets


@contextlib.asynccontextmanager
async def serving(
    settings: Settings,
    sockets: list[socket.socket],
    *,
    redis: Redis,
    alive: Callable[[], bool],
) -> AsyncIterator[None]:
    """:func:`probe_app` served on ``sockets`` (closed on the way out)."""
    from relay.api.server import running

    async with running(probe_app(settings, redis=redis, alive=alive), sockets):
        yield


def probe_app(settings: Settings, *, redis: Redis, alive: Callable[[], bool]) -> web.Application:
    """The worker's two routes; ``redis`` is the worker's, used as given."""
    app = web.Application()
    app[_SETTINGS], app[_REDIS], app[_ALIVE] = settings, redis, alive
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    return app


async def _metrics(request: web.Request) -> web.Response:
    """The same as the API's /metrics, under the same RELAY_METRICS_TOKEN rule."""
    settings = request.app[_SETTINGS]
    if not metrics.authorized(request.headers.get("Authorization"), settings.metrics_token):
        return web.json_response(
            {"status": 401, "detail": "/metrics needs Authorization: Bearer <RELAY_METRICS_TOKEN>"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="relay"'},
        )
    body = await metrics.exposition(request.app[_REDIS], settings)
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


async def _healthz(request: web.Request) -> web.Response:
    """200 while every loop of the worker runs; 503 while one is dead, waiting to be
    restarted (a Redis outage is waited out by running loops: still 200)."""
    if request.app[_ALIVE]():
        return web.json_response({"status": "ok"})
    return web.json_response(
        {"status": "unavailable", "detail": "a worker loop died and waits to be restarted"},
        status=503,
    )
