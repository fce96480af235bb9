"""Dead letters over HTTP: ``GET /v1/dead-letters``, ``POST /v1/dead-letters/replay`` (admin).

An admin key restricted to some destinations sees and replays only theirs.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from relay import deadletters
from relay.api.body import read_model
from relay.api.problems import json_response
from relay.api.routing import QueryParam, routes
from relay.api.state import API_KEY, REDIS, SETTINGS
from relay.errors import Forbidden, ValidationFailed
from relay.models import DeadLetter, Problem, destination_name_schema

__all__ = ["allowed_destinations"]


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
    403: ("The key lacks the admin scope, or may not use the destination named", Problem),
}


def allowed_destinations(request: web.Request, only: str | None, *, where: str) -> list[str]:
    """The destinations to act on: ``only`` or every one, among those the key may use."""
    known = list(request.app[SETTINGS].destinations)
    key = request[API_KEY]
    if not only:  # absent or empty (?destination=): every destination the key may use
        return [d for d in known if key.may_use(d)]
    if only not in known:
        raise ValidationFailed(
            f"unknown destination {only!r}",
            errors=[
                {"loc": [where, "destination"], "msg": f"configured: {', '.join(known) or 'none'}"}
            ],
        )
    if not key.may_use(only):
        msg = (
            f"API key {key.prefix}… may not use destination {only!r} "
            f"(it may use: {', '.join(key.destinations)})"
        )
        raise Forbidden(msg, errors=[{"loc": [where, "destination"], "msg": msg}])
    return [only]


@routes.route(
    "GET",
    "/v1/dead-letters",
    summary="Events an upstream rejected or that ran out of retries, oldest first, each with "
    "its last attempt (every attempt: GET /v1/events/{id})",
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
    """A key restricted to some destinations lists only their dead letters; naming
    another destination is 403."""
    rows = [
        letter.model_dump()
        for dest in allowed_destinations(request, request.query.get("destination"), where="query")
        for letter in await deadletters.list_dead_letters(
            request.app[REDIS], dest, partitions=request.app[SETTINGS].partitions
        )
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
    """``all`` or ``event_ids``, of ``destination`` or of every destination. A key
    restricted to some destinations replays only their dead letters: without
    ``destination`` (``all`` or ``event_ids``) the replay is limited to them, and
    an event that is dead only at another destination is not replayed (``replayed``
    counts what was); naming a destination it may not use is 403.
    """
    body = await read_model(request, ReplayRequest)
    if not body.all and not body.event_ids:
        raise ValidationFailed(
            "name event_ids to replay, or set all",
            errors=[{"loc": ["body", "event_ids"], "msg": "empty, and all is false"}],
        )
    total = 0
    for dest in allowed_destinations(request, body.destination, where="body"):
        ids = None if body.all else body.event_ids
        total += await deadletters.replay_dead_letters(
            request.app[REDIS], dest, ids, partitions=request.app[SETTINGS].partitions
        )
    return json_response(Replayed(replayed=total).model_dump())
