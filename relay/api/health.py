"""Liveness and readiness."""

from __future__ import annotations

from aiohttp import web

from relay.api.problems import json_response, problem
from relay.api.routing import routes
from relay.api.state import EVENTS

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
        200: ("Ready", {"type": "object", "properties": {"status": {"type": "string"}}}),
        503: ("Redis does not answer", None),
    },
    tag="health",
)
async def readyz(request: web.Request) -> web.Response:
    if await request.app[EVENTS].ping():
        return json_response({"status": "ready", "redis": "ok"})
    return problem(
        503,
        "Not ready",
        "Redis does not answer",
        slug="not-ready",
        headers={"Retry-After": "5"},
        redis="unavailable",
    )
