"""Liveness and readiness; and the refusal to queue with no live delivery behind it."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay import redis_keys
from relay.api.problems import RETRY_AFTER_UNAVAILABLE_S, json_response, problem
from relay.api.routing import routes
from relay.api.state import DELIVERY_ALIVE, EVENTS, REDIS, SETTINGS
from relay.backlog import Backlog, overview

__all__ = ["no_delivery"]

_DESTINATION_SCHEMA = {
    "type": "object",
    "properties": {
        "healthy": {"type": "boolean"},
        "health": {"enum": ["healthy", "unhealthy", "disabled"]},
        "pending": {"type": "integer", "minimum": 0},
        "retrying": {"type": "integer", "minimum": 0},
        "dead": {"type": "integer", "minimum": 0},
        "oldest_pending_s": {
            "type": "number",
            "minimum": 0,
            "description": "seconds the front of its queue has waited (README: Metrics)",
        },
        "problem": {"type": "string", "description": "why it is unhealthy"},
        "since": {"type": "number", "description": "unix time its credentials were refused"},
    },
    "required": ["healthy", "health", "pending", "retrying", "dead", "oldest_pending_s"],
}
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
                    "destinations": {
                        "type": "object",
                        "additionalProperties": _DESTINATION_SCHEMA,
                    },
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
    ``destinations`` gives each one's backlog and health, as `relay status` does (an
    upstream that refuses our credentials, events waiting and no live worker);
    ``workers`` the live workers; neither makes relay unready."""
    if await request.app[EVENTS].ping():
        if (refused := no_delivery(request.app)) is not None:
            return refused
        seen = await overview(request.app[REDIS], request.app[SETTINGS])
        destinations = {
            row["destination"]: _destination(row)
            for row in seen.destinations
            if row["destination"] != redis_keys.NOTIFICATIONS
        }
        return json_response(
            {
                "status": "ready",
                "redis": "ok",
                "destinations": destinations,
                "workers": seen.workers,
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


def _destination(row: Backlog) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "healthy": row["health"] != "unhealthy",
        "health": row["health"],
        "pending": row["pending"],
        "retrying": row["retrying"],
        "dead": row["dead"],
        "oldest_pending_s": row["oldest_pending_s"],
    }
    if row["why"]:
        shown["problem"] = row["why"]
    if row["since"] is not None:
        shown["since"] = row["since"]
    return shown
