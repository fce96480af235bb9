"""Liveness and readiness."""

from __future__ import annotations

from aiohttp import web

from relay.api.problems import json_response, problem
from relay.api.routing import routes
from relay.api.state import EVENTS, REDIS, SETTINGS
from relay.queue import DeliveryQueue

__all__: list[str] = []


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
                },
            },
        ),
        503: ("Redis does not answer", None),
    },
    tag="health",
)
async def readyz(request: web.Request) -> web.Response:
    """Ready means Redis answers. ``destinations`` tells which upstreams refuse our
    credentials (their events are kept and retried); that does not make relay unready."""
    if await request.app[EVENTS].ping():
        settings = request.app[SETTINGS]
        queue = DeliveryQueue(request.app[REDIS], retention_s=settings.retention_s)
        unhealthy = await queue.health()
        destinations = {
            name: {"healthy": name not in unhealthy, **unhealthy.get(name, {})}
            for name in settings.destinations
        }
        return json_response({"status": "ready", "redis": "ok", "destinations": destinations})
    return problem(
        503,
        "Not ready",
        "Redis does not answer",
        slug="not-ready",
        headers={"Retry-After": "5"},
        redis="unavailable",
    )
