"""``GET /metrics`` (Prometheus text), and the middleware that counts every request."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from relay import metrics
from relay.api.routing import routes
from relay.api.state import REDIS, SETTINGS
from relay.errors import Unauthorized
from relay.models import Problem

__all__ = ["count_requests"]


@web.middleware
async def count_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    """relay_http_requests_total by route template (never the raw path: its label values
    would be unbounded), method and the status answered. Outside every other middleware,
    so it sees the final status."""
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        _count(request, exc.status)
        raise
    except asyncio.CancelledError:  # the server is stopping: nothing is answered
        raise
    except Exception:
        _count(request, 500)  # what aiohttp answers for an error that gets this far
        raise
    _count(request, response.status)
    return response


def _count(request: web.Request, status: int) -> None:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None
    metrics.http_request(route, request.method, status)


@routes.route(
    "GET",
    "/metrics",
    summary="Prometheus metrics (text format), the sum of every process of this relay serve",
    scope=None,
    media_type="text/plain",
    responses={
        200: ("The metrics; README: Metrics", {"type": "string"}),
        401: ("RELAY_METRICS_TOKEN is set and the request does not carry it", Problem),
    },
    tag="health",
)
async def metrics_text(request: web.Request) -> web.Response:
    """Open, unless RELAY_METRICS_TOKEN is set: then `Authorization: Bearer <token>`.
    The queue gauges are read from Redis now (the same from every process); with Redis
    away they are left out and relay_redis_up is 0."""
    settings = request.app[SETTINGS]
    if not metrics.authorized(request.headers.get("Authorization"), settings.metrics_token):
        raise Unauthorized("/metrics needs Authorization: Bearer <RELAY_METRICS_TOKEN>")
    body = await metrics.exposition(request.app[REDIS], settings)
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})
