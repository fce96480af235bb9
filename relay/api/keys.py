"""Keys over HTTP: ``/v1/me`` for any key, ``/v1/keys`` for admin keys.

An admin key creates, lists and revokes only keys within its reach
(:func:`relay.apikeys.broader_fields`): a key restricted to some destinations,
in test mode, expiring or rate-limited cannot make or remove a broader one.
"""

from __future__ import annotations

from aiohttp import web

from relay.api.body import read_model
from relay.api.problems import json_response
from relay.api.routing import ANY_KEY, routes
from relay.api.state import API_KEY, KEYS, SETTINGS
from relay.apikeys import KeyRecord, check_key_request, check_reach
from relay.errors import Forbidden
from relay.models import ApiKeyInfo, CreatedKey, KeyCreate, Me, Problem

__all__ = ["create_within_reach", "revoke_within_reach", "within_reach"]

_AUTH_ERRORS = {
    401: ("Missing, unknown, expired or revoked key", Problem),
    403: ("The key lacks the admin scope", Problem),
}
_BROADER = "; or the key asked for, or named, is broader than the calling key"


@routes.route(
    "GET",
    "/v1/me",
    summary="The calling key (Zapier's connection test)",
    scope=ANY_KEY,
    responses={200: ("The key", Me), 401: _AUTH_ERRORS[401]},
    tag="keys",
)
async def get_me(request: web.Request) -> web.Response:
    return json_response(request[API_KEY].me().model_dump())


@routes.route(
    "POST",
    "/v1/keys",
    summary="Create a key; the answer is the only time the key is shown",
    scope="admin",
    body=KeyCreate,
    responses={
        201: ("The new key", CreatedKey),
        400: ("Malformed JSON", Problem),
        401: _AUTH_ERRORS[401],
        403: (_AUTH_ERRORS[403][0] + _BROADER, Problem),
        422: ("Invalid name, scope, expiry, destination or rate limit", Problem),
    },
    tag="keys",
)
async def post_key(request: web.Request) -> web.Response:
    """A key never creates a key broader than itself: the new key's scopes are
    among the caller's (``admin`` counts as all of them); a caller restricted to
    destinations must name some of its own (an empty list, meaning all, is
    broader); a test-mode caller makes only test-mode keys; an expiring caller
    makes keys that expire no later than it does; a rate-limited caller makes
    keys whose limit allows no more requests per period, nor a faster rate.
    Otherwise 403, naming each field (``loc: ["body", "destinations"]``, ...).
    """
    body = await read_model(request, KeyCreate)
    record, key = await create_within_reach(request, body)
    return json_response(record.created(key).model_dump(mode="json"), status=201)


@routes.route(
    "GET",
    "/v1/keys",
    summary="Every key within the calling key's reach (never the key itself), revoked ones "
    "included",
    scope="admin",
    responses={200: ("The keys, oldest first", list[ApiKeyInfo]), **_AUTH_ERRORS},
    tag="keys",
)
async def list_keys(request: web.Request) -> web.Response:
    """An unrestricted admin key sees every key; a restricted one (destinations,
    test mode, expiry, rate limit) sees only the keys it could have created."""
    records = within_reach(request, await request.app[KEYS].list())
    return json_response([r.info().model_dump(mode="json") for r in records])


@routes.route(
    "DELETE",
    "/v1/keys/{id}",
    summary="Revoke a key: it answers 401 at once, on every API process",
    scope="admin",
    responses={
        204: ("Revoked", None),
        401: _AUTH_ERRORS[401],
        403: (_AUTH_ERRORS[403][0] + _BROADER, Problem),
        404: ("No such key", Problem),
    },
    tag="keys",
)
async def delete_key(request: web.Request) -> web.Response:
    """A key revokes only keys within its reach (those it could have created, itself
    included): a restricted admin cannot revoke an unrestricted admin's key (403)."""
    await revoke_within_reach(request, request.match_info["id"])
    return web.Response(status=204)


async def create_within_reach(request: web.Request, body: KeyCreate) -> tuple[KeyRecord, str]:
    """Create the key ``body`` asks for if the request's key may (the API's and the
    console's one path): ValidationFailed or Forbidden naming each field otherwise."""
    args = check_key_request(body, known_destinations=request.app[SETTINGS].destinations)
    check_reach(request[API_KEY], args)
    return await request.app[KEYS].create(**args)


def within_reach(request: web.Request, records: list[KeyRecord]) -> list[KeyRecord]:
    """The keys the request's key may see (those it could have created)."""
    caller = request[API_KEY]
    return [r for r in records if caller.reaches(r)]


async def revoke_within_reach(request: web.Request, key_id: str) -> KeyRecord:
    """Revoke a key if the request's key reaches it; Forbidden or NotFound otherwise."""
    caller, keys = request[API_KEY], request.app[KEYS]
    target = await keys.get(key_id)
    if broader := caller.broader_fields_of(target):
        msg = (
            f"key {target.id} is broader than this key ({', '.join(f for f, _ in broader)}), "
            "so this key may not revoke it"
        )
        raise Forbidden(msg, errors=[{"loc": ["path", "id"], "msg": msg}])
    return await keys.revoke(target.id)
