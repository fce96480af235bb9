"""Liveness and readiness; and the refusal to queue with no live delivery behind it."""

from __future__ import annotations

from aiohttp import web

from relay.api.problems import RETRY_AFTER_UNAVAILABLE_S, json_response, problem
from relay.api.routing import routes
from relay.api.state import DELIVERY_ALIVE, EVENTS, REDIS, SETTINGS
from relay.heartbeat import live_workers
from relay.queue import DeliveryQueue

__all__ = ["no_delivery"]

_WORKERS_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "host": {"type": "string"},
            "pid": {"type": "integer"},
            "last_seen": {"type": "string", "format": "date-time"},
        },
    },
}


def no_delivery(app: web.Application) -> web.Response | None:
    """A 503 while this process's own delivery worker is dead (waiting to be restarted);
    None when it runs, or when delivery is left to `relay worker` processes."""
    alive = app.get(DELIVERY_ALIVE)
    if alive is None or alive():
        return None
    return problem(
        503,
        "Service unavailable",
        "the delivery worker of this process is restarting after a failure; nothing was "
        "queued, retry later",
        slug="unavailable",
        headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)},
        delivery="restarting",
    )


@routes.route(
    "GET",
    "/healthz",
    summary="200 while the process runs",
    scope=None,
    responses={200: ("Alive", {"type": "object", "properties": {"status": {"type": "string"}}})},
    tag="health",
)
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.route(
    "GET",
    "/readyz",
    summary="200 when Redis answers, else 503",
    scope=None,
    responses={
        200: (
            "Ready; with each destination's health",
            {
                "type": "object",
                "properties": {
                    "status": {"type": "string"},
                    "redis": {"type": "string"},
                    "destinations": {"type": "object"},
                    "workers": _WORKERS_SCHEMA,
                },
            },
        ),
        503: ("Redis does not answer, or this process's delivery worker is restarting", None),
    },
    tag="health",
)
async def readyz(request: web.Request) -> web.Response:
    """Ready means Redis answers (and the in-process delivery worker, if any, runs).
    ``destinations`` tells which upstreams refuse our credentials (their events are kept
    and retried), ``workers`` the live workers; neither makes relay unready."""
    if await request.app[EVENTS].ping():
        if (refused := no_delivery(request.app)) is not None:
            return refused
        settings = request.app[SETTINGS]
        queue = DeliveryQueue(request.app[REDIS], retention_s=settings.retention_s)
        unhealthy = await queue.health()
        destinations = {
            name: {"healthy": name not in unhealthy, **unhealthy.get(name, {})}
            for name in settings.destinations
        }
        return json_response(
            {
                "status": "ready",
                "redis": "ok",
                "destinations": destinations,
                "workers": await live_workers(request.app[REDIS]),
            }
        )
    return problem(
        503,
        "Not ready",
        "Redis does not answer",
        slug="not-ready",
        headers={"Retry-After": "5"},
        redis="unavailable",
    )
