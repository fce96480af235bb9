"""The console's actions (POST): sign in and out, replay, create and revoke keys,
delete subscriptions. The guard (:mod:`.guard`) has checked the session, the CSRF
token and the role before any of these runs; each then calls the code the JSON API
calls (:func:`relay.api.auth.live_key`, :func:`relay.deadletters.replay_dead_letters`
within :func:`relay.api.dead_letters.allowed_destinations`,
:func:`relay.api.keys.create_within_reach` and ``revoke_within_reach``,
:meth:`relay.hooks.HookStore.delete`).
"""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web
from pydantic import ValidationError

from relay import deadletters
from relay.api.auth import live_key
from relay.api.dead_letters import allowed_destinations
from relay.api.keys import create_within_reach, revoke_within_reach
from relay.api.state import EVENTS, HOOKS, KEYS, REDIS, SETTINGS
from relay.console.guard import PREFIX, SESSION, over_https
from relay.console.pages import (
    console_routes,
    dead_letters_page,
    event_page,
    hooks_page,
    keys_page,
)
from relay.console.session import COOKIE, SessionStore, role_of
from relay.errors import Forbidden, NotFound, Unauthorized, ValidationFailed
from relay.models import KeyCreate

__all__: list[str] = []

_BAD_KEY = "Invalid key"


def see_other(location: str) -> web.Response:
    """A 303 to return (not raise), so that it can carry a cookie."""
    return web.Response(status=303, headers={"Location": location})


def _sessions(request: web.Request) -> SessionStore:
    return SessionStore(request.app[REDIS], request.app[KEYS])


@console_routes.post("/console/sign-in")
async def sign_in(request: web.Request) -> web.StreamResponse:
    """A live key with ``read:events`` or ``admin`` becomes a session; anything else is
    "Invalid key" (which of unknown, revoked, expired or unscoped is not said)."""
    form = await request.post()
    presented = form.get("api_key")
    record = None
    if isinstance(presented, str) and presented.strip():
        try:
            record = await live_key(request.app[KEYS], presented.strip())
        except Unauthorized:
            record = None
    role = role_of(record) if record is not None else None
    if record is None or role is None:
        context = {"session": None, "error": _BAD_KEY}
        return aiohttp_jinja2.render_template("signin.html", request, context, status=401)
    session_id = await _sessions(request).create(record, role)
    response = see_other(PREFIX + "/overview")
    response.set_cookie(
        COOKIE,
        session_id,
        path=PREFIX,
        httponly=True,
        samesite="Strict",
        secure=over_https(request),
    )
    return response


@console_routes.post("/console/sign-out")
async def sign_out(request: web.Request) -> web.StreamResponse:
    await _sessions(request).end(request[SESSION])
    response = see_other(PREFIX)
    response.del_cookie(COOKIE, path=PREFIX)
    return response


@console_routes.post("/console/events/{id}/replay")
async def replay_event(request: web.Request) -> web.Response:
    """Replay one event's dead delivery to one destination (the event page's Replay)."""
    event_id = request.match_info["id"]
    form = await request.post()
    dest = str(form.get("destination", ""))
    (only,) = allowed_destinations(request, dest or "?", where="body")
    done = await deadletters.replay_dead_letters(
        request.app[REDIS], only, [event_id], partitions=request.app[SETTINGS].partitions
    )
    view = await request.app[EVENTS].get(event_id)
    if view is None:
        raise NotFound("No such event (unknown, or older than the retention).")
    return event_page(request, view, notice=f"Replayed {done} of 1 to {only}.")


@console_routes.post("/console/dead-letters/replay")
async def replay_selected(request: web.Request) -> web.Response:
    """Replay the ticked dead letters (``pick`` = "<destination> <event id>")."""
    form = await request.post()
    picked: dict[str, list[str]] = {}
    for value in form.getall("pick", []):
        dest, _, event_id = str(value).partition(" ")
        picked.setdefault(dest, []).append(event_id)
    total = sum(len(ids) for ids in picked.values())
    if not total:
        return await dead_letters_page(request, notice="Nothing selected: tick some rows first.")
    done = 0
    for dest, ids in picked.items():
        (only,) = allowed_destinations(request, dest, where="body")
        done += await deadletters.replay_dead_letters(
            request.app[REDIS], only, ids, partitions=request.app[SETTINGS].partitions
        )
    replayed = [i for ids in picked.values() for i in ids]
    return await dead_letters_page(
        request, notice=f"Replayed {done} of {total}; each is queued again:", replayed=replayed
    )


@console_routes.post("/console/keys")
async def create_key(request: web.Request) -> web.Response:
    """A new key, shown once in this answer (never in a URL: no redirect)."""
    form = await request.post()
    try:
        body = KeyCreate.model_validate(
            {
                "name": str(form.get("name", "")),
                "scopes": [str(s) for s in form.getall("scope", [])],
                "destinations": [str(d) for d in form.getall("destination", [])],
                "expires": str(form.get("expires", "")).strip() or None,
            }
        )
        record, key = await create_within_reach(request, body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return await keys_page(request, error=f"{where}: {first['msg']}", status=422)
    except (ValidationFailed, Forbidden) as exc:
        return await keys_page(request, error=exc.detail, status=exc.status)
    created = {"name": record.name, "prefix": record.prefix, "key": key}
    return await keys_page(request, created=created, status=201)


@console_routes.post("/console/keys/{id}/revoke")
async def revoke_key(request: web.Request) -> web.StreamResponse:
    record = await revoke_within_reach(request, request.match_info["id"])
    if record.id == request[SESSION].key.id:  # revoked the session's own key: it is over
        raise web.HTTPSeeOther(PREFIX)
    return await keys_page(request, notice=f"Revoked {record.name} ({record.prefix}…).")


@console_routes.post("/console/hooks/{id}/delete")
async def delete_hook(request: web.Request) -> web.Response:
    hook_id = request.match_info["id"]
    if not await request.app[HOOKS].delete(hook_id):
        raise NotFound("No such subscription.")
    return await hooks_page(request, notice=f"Deleted the subscription {hook_id}.")
