"""Zapier REST hooks over HTTP: ``POST/GET /v1/hooks``, ``DELETE /v1/hooks/{id}``.

A subscription belongs to the key that made it: a key lists and deletes only
its own. Targets must be public http(s) URLs (see :mod:`relay.targets`).
"""

from __future__ import annotations

from aiohttp import web

from relay.api.body import read_model
from relay.api.problems import json_response
from relay.api.routing import routes
from relay.api.state import API_KEY, HOOKS, SETTINGS
from relay.errors import NotFound, ValidationFailed
from relay.models import CreatedHook, HookCreate, HookInfo, Problem
from relay.targets import TargetRefused, check_target

__all__: list[str] = []

_AUTH = {
    401: ("Missing, unknown, expired or revoked key", Problem),
    403: ("The key lacks the webhooks scope", Problem),
}


@routes.route(
    "POST",
    "/v1/hooks",
    summary="Subscribe a URL to an event (Zapier's REST hook subscribe); the secret is "
    "shown only here",
    scope="webhooks",
    body=HookCreate,
    responses={
        201: ("The subscription, with its whsec_ secret", CreatedHook),
        400: ("Malformed JSON", Problem),
        **_AUTH,
        422: ("Unknown event, or a target that is not a public http(s) URL", Problem),
    },
    tag="hooks",
)
async def post_hook(request: web.Request) -> web.Response:
    body = await read_model(request, HookCreate)
    allow_private = request.app[SETTINGS].hooks.allow_private_targets
    try:
        await check_target(body.target_url, allow_private=allow_private)
    except TargetRefused as exc:
        msg = str(exc)
        if not allow_private and "refused" in msg:
            msg += " (set [hooks] allow_private_targets = true in relay.toml to allow it)"
        raise ValidationFailed(msg, errors=[{"loc": ["body", "target_url"], "msg": msg}]) from None
    sub = await request.app[HOOKS].create(
        key_id=request[API_KEY].id, event=body.event, target_url=body.target_url
    )
    return json_response(sub.created().model_dump(mode="json"), status=201)


@routes.route(
    "GET",
    "/v1/hooks",
    summary="This key's subscriptions, oldest first (never their secrets), each with its "
    "last notification's outcome",
    scope="webhooks",
    responses={200: ("The subscriptions", list[HookInfo]), **_AUTH},
    tag="hooks",
)
async def list_hooks(request: web.Request) -> web.Response:
    key_id = request[API_KEY].id
    hooks = request.app[HOOKS]
    subs = [s for s in await hooks.all() if s.key_id == key_id]
    last = await hooks.last_outcomes() if subs else {}
    return json_response([s.info(last.get(s.id)).model_dump(mode="json") for s in subs])


@routes.route(
    "DELETE",
    "/v1/hooks/{id}",
    summary="Unsubscribe (Zapier's REST hook unsubscribe): no notification is sent after this",
    scope="webhooks",
    responses={204: ("Deleted", None), **_AUTH, 404: ("No such subscription of this key", Problem)},
    tag="hooks",
)
async def delete_hook(request: web.Request) -> web.Response:
    hook_id = request.match_info["id"]
    sub = await request.app[HOOKS].get(hook_id)
    if sub is None or sub.key_id != request[API_KEY].id:
        raise NotFound(f"no subscription with id {hook_id!r} for this key")
    await request.app[HOOKS].delete(hook_id)
    return web.Response(status=204)
