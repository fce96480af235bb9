"""Field metadata for integrations: ``GET /v1/fields?type=lead|contact`` (any key).

Zapier's dynamic fields and the n8n node's options load from it, so a user picks
fields instead of typing names. Everything comes from the tables ingest itself
uses (:data:`relay.models.CANONICAL_FIELDS`, :data:`relay.normalize.ALIASES`,
:data:`relay.normalize.REQUIRE_ONE_OF`, :func:`relay.api.ingest.choose_destinations`),
so what this answers cannot drift from what ingest accepts.
"""

from __future__ import annotations

from functools import cache
from typing import Any, get_args

from aiohttp import web

from relay.api.ingest import choose_destinations
from relay.api.problems import json_response
from relay.api.routing import ANY_KEY, QueryParam, routes
from relay.api.state import API_KEY, SETTINGS
from relay.errors import ValidationFailed
from relay.models import (
    CANONICAL_FIELDS,
    MAX_TRACK_EVENTS,
    Contact,
    EventKind,
    FieldInfo,
    FieldsDestination,
    FieldsInfo,
    Problem,
    TrackEventField,
    TrackEventsInfo,
)
from relay.normalize import ALIASES, REQUIRE_ONE_OF
from relay.trackevents import EVENTS_FIELD, TRACKING_TYPES

__all__ = ["canonical_fields"]

_KINDS: tuple[EventKind, ...] = get_args(EventKind)


@cache
def canonical_fields() -> tuple[FieldInfo, ...]:
    """Every canonical field with its label (the model's title) and the aliases ingest takes."""
    titles = Contact.model_json_schema()["properties"]
    return tuple(
        FieldInfo(
            name=name,
            label=str(titles[name].get("title", name)),
            type="email" if name == "email" else "phone" if name == "phone" else "string",
            required=False,
            aliases=list(ALIASES.get(name, ())),
        )
        for name in CANONICAL_FIELDS
    )


#: Each item of ``events`` (what :func:`relay.trackevents.check_events` takes).
_TRACK_EVENT_FIELDS = (
    TrackEventField(name="event", label="Event", type="string", required=True),
    TrackEventField(name="properties", label="Properties", type="object", required=False),
    TrackEventField(name="timestamp", label="Timestamp", type="datetime", required=False),
)


@routes.route(
    "GET",
    "/v1/fields",
    summary="The fields ingest understands (with their aliases) and the destinations the "
    "calling key may send this type to (Zapier's dynamic fields, n8n's options)",
    scope=ANY_KEY,
    query=(
        QueryParam(
            "type",
            "lead or contact (absent: lead)",
            {"type": "string", "enum": list(_KINDS), "default": "lead"},
        ),
    ),
    responses={
        200: ("Fields and destinations", FieldsInfo),
        401: ("Missing, unknown, expired or revoked key", Problem),
        422: ("type is neither lead nor contact", Problem),
    },
    tag="integrations",
)
async def get_fields(request: web.Request) -> web.Response:
    """A missing ``type`` means lead (what most integrations send); any other value is 422.
    ``destinations`` are those an event of this type from this key would go to by default
    (enabled, taking the type, allowed for the key): exactly what ``?destination=`` takes.
    ``track_events`` is a key of its own, not an entry of ``fields``: it is a list of
    objects, which a client reading ``fields`` as flat values could not send."""
    kind = request.query.get("type", "lead")
    if kind not in _KINDS:
        msg = f"expected one of {', '.join(_KINDS)}, got {kind[:40]!r}"
        raise ValidationFailed(msg, errors=[{"loc": ["query", "type"], "msg": msg}])
    settings = request.app[SETTINGS]
    dests = choose_destinations(settings, kind, request[API_KEY], [])
    body: dict[str, Any] = FieldsInfo(
        type=kind,
        fields=list(canonical_fields()),
        require_one_of=list(REQUIRE_ONE_OF),
        destinations=[
            FieldsDestination(
                name=name,
                type=settings.destinations[name].type,
                events=list(settings.destinations[name].events),
            )
            for name in dests
        ],
        track_events=TrackEventsInfo(
            name=EVENTS_FIELD,
            label="Track Events",
            max_items=MAX_TRACK_EVENTS,
            fields=list(_TRACK_EVENT_FIELDS),
            destinations=[
                name for name in dests if settings.destinations[name].type in TRACKING_TYPES
            ],
        ),
    ).model_dump()
    return json_response(body)
