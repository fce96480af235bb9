"""Dead letters over HTTP: ``GET /v1/dead-letters``, ``POST /v1/dead-letters/replay`` (admin)."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from relay.api.body import read_model
from relay.api.problems import json_response
from relay.api.routing import QueryParam, routes
from relay.api.state import REDIS, SETTINGS
from relay.errors import ValidationFailed
from relay.models import Problem, destination_name_schema
from relay.queue import DeliveryQueue

__all__: list[str] = []


class DeadLetter(BaseModel):
    destination: str
    event_id: str
    dead_at: float = Field(description="Unix seconds when it was dead-lettered")


class ReplayRequest(BaseModel):
    """Replay ``event_ids`` (or every dead letter with ``all``), of one destination or all."""

    model_config = ConfigDict(
        extra="forbid",
        # What the handler checks: all, or at least one id.
        json_schema_extra={
            "anyOf": [
                {"required": ["all"], "properties": {"all": {"const": True}}},
                {"required": ["event_ids"], "properties": {"event_ids": {"minItems": 1}}},
            ]
        },
    )

    event_ids: list[str] = Field(
        default_factory=list, description="Ids that are not dead letters are skipped"
    )
    all: bool = False
    destination: str | None = Field(
        default=None,
        description="Only this destination (null or empty: every one)",
        json_schema_extra={"anyOf": [destination_name_schema(empty=True), {"type": "null"}]},
    )


class Replayed(BaseModel):
    replayed: int


_AUTH = {
    401: ("Missing, unknown, expired or revoked key", Problem),
    403: ("The key lacks the admin scope", Problem),
}


def _destinations(request: web.Request, only: str | None) -> list[str]:
    known = list(request.app[SETTINGS].destinations)
    if not only:  # absent or empty (?destination=): every destination
        return known
    if only not in known:
        raise ValidationFailed(
            f"unknown destination {only!r}",
            errors=[{"loc": ["destination"], "msg": f"configured: {', '.join(known) or 'none'}"}],
        )
    return [only]


@routes.route(
    "GET",
    "/v1/dead-letters",
    summary="Events an upstream rejected, oldest first (see each with GET /v1/events/{id})",
    scope="admin",
    query=(
        QueryParam(
            "destination",
            "Only this destination (empty: every one)",
            destination_name_schema(empty=True),
        ),
    ),
    responses={
        200: ("Dead letters", list[DeadLetter]),
        **_AUTH,
        422: ("Unknown destination", Problem),
    },
    tag="dead-letters",
)
async def list_dead_letters(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    queue = DeliveryQueue(request.app[REDIS], retention_s=settings.retention_s)
    rows = [
        DeadLetter(destination=dest, event_id=event_id, dead_at=at).model_dump()
        for dest in _destinations(request, request.query.get("destination"))
        for event_id, at in await queue.dead_letters(dest)
    ]
    return json_response(rows)


@routes.route(
    "POST",
    "/v1/dead-letters/replay",
    summary="Queue dead letters again; their earlier attempts stay on the event",
    scope="admin",
    body=ReplayRequest,
    responses={
        200: ("How many were queued again", Replayed),
        400: ("Malformed JSON", Problem),
        **_AUTH,
        422: ("Neither event_ids nor all, or an unknown destination", Problem),
    },
    tag="dead-letters",
)
async def replay_dead_letters(request: web.Request) -> web.Response:
    body = await read_model(request, ReplayRequest)
    if not body.all and not body.event_ids:
        raise ValidationFailed(
            "name event_ids to replay, or set all",
            errors=[{"loc": ["body", "event_ids"], "msg": "empty, and all is false"}],
        )
    settings = request.app[SETTINGS]
    queue = DeliveryQueue(request.app[REDIS], retention_s=settings.retention_s)
    total = 0
    for dest in _destinations(request, body.destination):
        total += await queue.replay(dest, None if body.all else body.event_ids)
    return json_response(Replayed(replayed=total).model_dump())
