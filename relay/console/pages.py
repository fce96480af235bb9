"""The console's pages (GET): each reads through the same code as the JSON API.

Events come from :class:`relay.store.EventStore` (``page``, ``get``, ``find``), dead
letters from :mod:`relay.deadletters`, keys from :class:`relay.keystore.KeyStore`
(filtered by :func:`relay.api.keys.within_reach`), figures from
:func:`relay.backlog.overview`, the Convertr check from :mod:`relay.configcheck`.
Every value reaches the page through Jinja2's autoescape.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
import orjson
from aiohttp import web

from relay import backlog, deadletters
from relay.api.dead_letters import allowed_destinations
from relay.api.events import MAX_LIMIT, STATUSES
from relay.api.keys import within_reach
from relay.api.state import EVENTS, HOOKS, KEYS, LIMITER, REDIS, SETTINGS
from relay.configcheck import check_convertr_forms
from relay.console.chart import per_minute
from relay.console.guard import SESSION, error_page
from relay.console.session import COOKIE, SessionStore
from relay.errors import NotFound
from relay.models import SCOPES, EventView
from relay.settings import ConvertrDestination
from relay.store import Page

__all__ = ["console_routes"]

console_routes = web.RouteTableDef()
#: Events per page of the Events table.
PAGE = 50
#: Dead letters shown on one page (the oldest first, as ``relay dlq list``).
DEAD_SHOWN = 500
#: While an event has one of these, its page refreshes itself.
_UNSETTLED = {"pending", "delivering", "retrying"}


def _context(request: web.Request, active: str, **more: Any) -> dict[str, Any]:
    session = request[SESSION]
    return {"session": session, "active": active, "admin": session.role == "admin", **more}


@console_routes.get("/console")
@console_routes.get("/console/")
async def sign_in_form(request: web.Request) -> web.StreamResponse:
    sessions = SessionStore(request.app[REDIS], request.app[KEYS])
    if await sessions.load(request.cookies.get(COOKIE)) is not None:
        raise web.HTTPSeeOther("/console/overview")
    return aiohttp_jinja2.render_template("signin.html", request, {"session": None})


@console_routes.get("/console/overview")
async def overview(request: web.Request) -> web.Response:
    settings, redis = request.app[SETTINGS], request.app[REDIS]
    found = await backlog.overview(redis, settings)
    limits = {}
    for row in found.destinations:
        dest = settings.destinations.get(row["destination"])
        limit = dest.rate_limit if dest is not None else settings.hooks.rate_limit
        if limit:
            limits[row["destination"]] = limit
    used = await request.app[LIMITER].in_use(limits)
    rows = []
    for row in found.destinations:
        limit = limits.get(row["destination"])
        rows.append(
            {**row, "limit": str(limit) if limit else None, "used": used.get(row["destination"])}
        )
    chart = await per_minute(
        redis, [r["destination"] for r in found.destinations], partitions=settings.partitions
    )
    context = _context(request, "overview", rows=rows, workers=found.workers, chart=chart)
    return aiohttp_jinja2.render_template("overview.html", request, context)


@console_routes.get("/console/events")
async def events(request: web.Request) -> web.Response:
    q = request.query
    text = q.get("q", "").strip()
    filters = {
        "type": q.get("type") if q.get("type") in ("contact", "lead") else None,
        "status": q.get("status") if q.get("status") in STATUSES else None,
        "destination": q.get("destination") or None,
        "mode": q.get("mode") if q.get("mode") in ("live", "test") else None,
    }
    before = q.get("before") or None
    store = request.app[EVENTS]
    if text:
        found = Page(await store.find(text, limit=MAX_LIMIT))
    else:
        found = await store.page(
            limit=PAGE,
            kind=filters["type"],
            status=filters["status"],
            destination=filters["destination"],
            mode=filters["mode"],
            before=before,
        )
    shown = {k: v for k, v in filters.items() if v}
    # New events appear by themselves on the first page of the unfiltered listing. Not
    # under a filter: a rare one reads far back in the time index (EventStore.page),
    # which is fine once, not every few seconds.
    poll_url = None if text or before or shown else "/console/events?rows=1"
    rows = found.events
    next_before = rows[-1].id if not text and len(rows) == PAGE else None
    stopped = None
    if found.stopped_at is not None and found.stopped_ms is not None:
        stopped = {
            "time": datetime.fromtimestamp(found.stopped_ms / 1000, UTC).strftime(
                "%Y-%m-%d %H:%M:%S"
            ),
            "url": "/console/events?" + urlencode({**shown, "before": found.stopped_at}),
        }
    context = _context(
        request,
        "events",
        events=rows,
        stopped=stopped,
        q=text,
        filters=filters,
        statuses=STATUSES,
        destinations=list(request.app[SETTINGS].destinations),
        poll_url=poll_url,
        next_before=next_before,
        next_url="/console/events?" + urlencode({**shown, "before": next_before or ""}),
    )
    if q.get("rows") and request.headers.get("HX-Request"):
        return aiohttp_jinja2.render_template("event_rows.html", request, context)
    return aiohttp_jinja2.render_template("events.html", request, context)


@console_routes.get("/console/events/{id}")
async def event(request: web.Request) -> web.Response:
    view = await request.app[EVENTS].get(request.match_info["id"])
    if view is None:
        raise NotFound("No such event (unknown, or older than the retention).")
    return event_page(request, view)


def event_page(request: web.Request, view: EventView, *, notice: str | None = None) -> web.Response:
    """An event, its destinations and every attempt, oldest first."""
    attempts = sorted(
        (
            {
                "at": float(a.get("at", 0)),
                "time": datetime.fromtimestamp(float(a.get("at", 0)), UTC).strftime(
                    "%Y-%m-%d %H:%M:%S"
                ),
                "destination": d.name,
                "status": a.get("status"),
                "outcome": a.get("outcome", ""),
                "duration": f"{float(a.get('duration_ms', 0)):.0f} ms",
                "excerpt": a.get("excerpt") or "",
                "error": a.get("error") or "",
                "note": a.get("note"),
            }
            for d in view.destinations
            for a in d.attempts
        ),
        key=lambda a: a["at"],
    )
    payload = view.payload.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    context = _context(
        request,
        "events",
        event=view,
        attempts=attempts,
        payload=orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode(),
        polling=view.status in _UNSETTLED,
        notice=notice,
    )
    return aiohttp_jinja2.render_template("event.html", request, context)


@console_routes.get("/console/dead-letters")
async def dead_letters(request: web.Request) -> web.Response:
    return await dead_letters_page(request)


async def dead_letters_page(
    request: web.Request, *, notice: str | None = None, replayed: list[str] | None = None
) -> web.Response:
    """Every dead letter of the destinations the key may use (or of one)."""
    only = request.query.get("destination") or None
    redis = request.app[REDIS]
    letters = [
        letter
        for dest in allowed_destinations(request, only, where="query")
        for letter in await deadletters.list_dead_letters(
            redis, dest, partitions=request.app[SETTINGS].partitions
        )
    ]
    shown = [
        {
            **letter.model_dump(),
            "dead_at_text": datetime.fromtimestamp(letter.dead_at, UTC).strftime("%Y-%m-%d %H:%M"),
        }
        for letter in letters[:DEAD_SHOWN]
    ]
    context = _context(
        request,
        "dead-letters",
        letters=shown,
        more=max(0, len(letters) - DEAD_SHOWN),
        only=only,
        destinations=list(request.app[SETTINGS].destinations),
        notice=notice,
        replayed=replayed or [],
    )
    return aiohttp_jinja2.render_template("dead_letters.html", request, context)


@console_routes.get("/console/keys")
async def keys(request: web.Request) -> web.Response:
    return await keys_page(request)


async def keys_page(
    request: web.Request,
    *,
    created: dict[str, str] | None = None,
    error: str | None = None,
    notice: str | None = None,
    status: int = 200,
) -> web.Response:
    """The keys within the session key's reach, and the form that creates one."""
    if request[SESSION].role != "admin":
        return error_page(request, 403, "Forbidden", "Keys are shown to admin keys only.")
    context = _context(
        request,
        "keys",
        keys=within_reach(request, await request.app[KEYS].list()),
        scopes=SCOPES,
        destinations=list(request.app[SETTINGS].destinations),
        created=created,
        error=error,
        notice=notice,
    )
    return aiohttp_jinja2.render_template("keys.html", request, context, status=status)


@console_routes.get("/console/hooks")
async def hooks(request: web.Request) -> web.Response:
    return await hooks_page(request)


async def hooks_page(request: web.Request, *, notice: str | None = None) -> web.Response:
    """Every REST-hook subscription (never its secret), with its last notification's
    outcome (as ``GET /v1/hooks`` gives them)."""
    store = request.app[HOOKS]
    last = await store.last_outcomes()
    subs = [(s, last.get(s.id)) for s in await store.all()]
    context = _context(request, "hooks", hooks=subs, notice=notice)
    return aiohttp_jinja2.render_template("hooks.html", request, context)


@console_routes.get("/console/destinations")
async def destinations(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    shown = [
        (name, orjson.dumps(d.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode())
        for name, d in settings.destinations.items()
    ]
    context = _context(
        request,
        "destinations",
        destinations=shown,
        source=str(settings.config) if settings.config else "defaults and RELAY_*",
        has_convertr=any(
            isinstance(d, ConvertrDestination) for d in settings.destinations.values()
        ),
    )
    return aiohttp_jinja2.render_template("destinations.html", request, context)


@console_routes.get("/console/destinations/check")
async def destinations_check(request: web.Request) -> web.Response:
    """``relay config check``'s Convertr findings (a fragment: it asks Convertr)."""
    findings = await check_convertr_forms(request.app[SETTINGS])
    return aiohttp_jinja2.render_template("check.html", request, {"findings": findings})
