"""Reading events back: ``GET /v1/events/{id}``."""

from __future__ import annotations

import re

from aiohttp import web

from relay.api.problems import json_response
from relay.api.routing import routes
from relay.api.state import EVENTS
from relay.errors import NotFound
from relay.models import EventView, Problem

__all__: list[str] = []

_EVENT_ID = re.compile(r"^evt_[0-9A-HJKMNP-TV-Z]{26}$")


@routes.route(
    "GET",
    "/v1/events/{id}",
    summary="One event: its normalized payload, destinations and their status",
    scope="read:events",
    responses={
        200: ("The event", EventView),
        401: ("Missing, unknown, expired or revoked key", Problem),
        403: ("The key lacks read:events", Problem),
        404: ("No such event (or it expired)", Problem),
    },
    tag="events",
)
async def get_event(request: web.Request) -> web.Response:
    event_id = request.match_info["id"]
    view = await request.app[EVENTS].get(event_id) if _EVENT_ID.match(event_id) else None
    if view is None:
        raise NotFound(f"no event {event_id!r} (unknown, or older than the retention)")
    return json_response(view.model_dump(mode="json", exclude_none=True))
