"""Reading events back: ``GET /v1/events/{id}``, and ``GET /v1/events`` (newest first,
filtered, or a search by ``q``)."""

from __future__ import annotations

import re

from aiohttp import web

from relay.api.problems import json_response
from relay.api.routing import QueryParam, routes
from relay.api.state import EVENTS
from relay.errors import FieldError, NotFound, ValidationFailed
from relay.models import EventView, Problem
from relay.store import SCAN_BUDGET

__all__ = ["CONTINUE_HEADER", "MAX_LIMIT", "STATUSES"]

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


STATUSES = ("pending", "delivering", "retrying", "delivered", "dead", "no_destination", "test")
#: Most events one page of ``GET /v1/events`` returns.
MAX_LIMIT = 100
#: The longest search text: an email is at most 254 characters.
MAX_Q_CHARS = 320
#: Set when a listing stopped reading before its page filled (see EventStore.page).
CONTINUE_HEADER = "Relay-Continue-Before"


@routes.route(
    "GET",
    "/v1/events",
    summary=(
        "Events newest first (Zapier polling): filter by type, status, destination; "
        "or search one contact's events by email, phone or event id (q)"
    ),
    scope="read:events",
    query=(
        QueryParam("type", "contact or lead", {"type": "string", "enum": ["contact", "lead"]}),
        QueryParam("status", "Overall status", {"type": "string", "enum": list(STATUSES)}),
        QueryParam("destination", "Only events routed to this destination"),
        QueryParam(
            "limit",
            f"How many (1 to {MAX_LIMIT}, default 50)",
            {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
        ),
        QueryParam("before", "An event id: the page after it (older events)"),
        QueryParam(
            "q",
            "Search: an email (any case), a phone (as typed: spaces, dashes, parentheses, "
            "+ or 00; without a country code, relay's default region) or an event id; "
            "the events of that email or phone, newest first; type, status, destination, "
            "limit and before apply to them as to the listing. Text that is none of the "
            f"three (blank included) finds nothing: 200, []. 1 to {MAX_Q_CHARS} characters",
            {"type": "string", "minLength": 1, "maxLength": MAX_Q_CHARS},
        ),
    ),
    responses={
        200: (
            "Events, newest first; each id is stable (Zapier deduplicates on it)",
            list[EventView],
        ),
        401: ("Missing, unknown, expired or revoked key", Problem),
        403: ("The key lacks read:events", Problem),
        422: ("A bad filter or limit, or an empty q", Problem),
    },
    headers={
        200: {
            CONTINUE_HEADER: {
                "description": (
                    f"Present when relay stopped reading before the page filled: one call "
                    f"reads at most {SCAN_BUDGET} stored events (newest first), so a rare "
                    "filter may return fewer than limit (even none) while older matches "
                    "exist. Its value is the last event id read: ask again with "
                    "before=<it> to go on. Absent: no older event was left unread (or "
                    "the page is full: continue with before=<the last id>)"
                ),
                "schema": {"type": "string"},
            }
        }
    },
    tag="events",
)
async def list_events(request: web.Request) -> web.Response:
    q = request.query
    errors: list[FieldError] = []
    if q.get("type") not in (None, "contact", "lead"):
        errors.append({"loc": ["query", "type"], "msg": "expected contact or lead"})
    if q.get("status") not in (None, *STATUSES):
        errors.append({"loc": ["query", "status"], "msg": f"expected one of {', '.join(STATUSES)}"})
    raw_limit = q.get("limit", "50")
    limit = int(raw_limit) if raw_limit.isdigit() else 0
    if not 1 <= limit <= MAX_LIMIT:
        errors.append(
            {"loc": ["query", "limit"], "msg": f"expected 1 to {MAX_LIMIT}, got {raw_limit!r}"}
        )
    text = q.get("q")
    if text is not None and not 1 <= len(text) <= MAX_Q_CHARS:
        msg = f"expected an email, a phone or an event id (1 to {MAX_Q_CHARS} characters)"
        errors.append({"loc": ["query", "q"], "msg": msg})
    if errors:
        raise ValidationFailed(errors[0]["msg"], errors=errors)
    found = await request.app[EVENTS].page(
        limit=limit,
        kind=q.get("type"),
        status=q.get("status"),
        destination=q.get("destination"),
        before=q.get("before"),
        search=text,
    )
    answer = json_response([v.model_dump(mode="json", exclude_none=True) for v in found.events])
    if found.stopped_at is not None:
        answer.headers[CONTINUE_HEADER] = found.stopped_at
    return answer
