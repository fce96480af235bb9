"""Keys over HTTP: ``/v1/me`` for any key, ``/v1/keys`` for admin keys."""

from __future__ import annotations

from aiohttp import web

from relay.api.body import read_model
from relay.api.problems import json_response
from relay.api.routing import ANY_KEY, routes
from relay.api.state import API_KEY, KEYS, SETTINGS
from relay.apikeys import check_key_request
from relay.models import ApiKeyInfo, CreatedKey, KeyCreate, Me, Problem

__all__: list[str] = []

_AUTH_ERRORS = {
    401: ("Missing, unknown, expired or revoked key", Problem),
    403: ("The key lacks the admin scope", Problem),
}


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
        **_AUTH_ERRORS,
        422: ("Invalid name, scope, expiry, destination or rate limit", Problem),
    },
    tag="keys",
)
async def post_key(request: web.Request) -> web.Response:
    body = await read_model(request, KeyCreate)
    args = check_key_request(body, known_destinations=request.app[SETTINGS].destinations)
    record, key = await request.app[KEYS].create(**args)
    return json_response(record.created(key).model_dump(mode="json"), status=201)


@routes.route(
    "GET",
    "/v1/keys",
    summary="Every key (never the key itself), revoked ones included",
    scope="admin",
    responses={200: ("The keys, oldest first", list[ApiKeyInfo]), **_AUTH_ERRORS},
    tag="keys",
)
async def list_keys(request: web.Request) -> web.Response:
    records = await request.app[KEYS].list()
    return json_response([r.info().model_dump(mode="json") for r in records])


@routes.route(
    "DELETE",
    "/v1/keys/{id}",
    summary="Revoke a key: it answers 401 at once, on every API process",
    scope="admin",
    responses={204: ("Revoked", None), **_AUTH_ERRORS, 404: ("No such key", Problem)},
    tag="keys",
)
async def delete_key(request: web.Request) -> web.Response:
    await request.app[KEYS].revoke(request.match_info["id"])
    return web.Response(status=204)
