"""Read an ingest body, whatever form it came in, as a list of raw items.

JSON (an object, or an array as a batch), ``application/x-www-form-urlencoded``
and ``multipart/form-data`` are accepted; form keys written flat
(``traits[city]``) are unflattened here, JSON keys by the normalizer.
Every body, on every route, must arrive within ``body_timeout_s`` of its
headers (:func:`body_guard_middleware`).
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from relay.api.state import SETTINGS
from relay.errors import (
    BodyTimeout,
    BodyTooLarge,
    FieldError,
    MalformedBody,
    UnsupportedMediaType,
    ValidationFailed,
)
from relay.normalize import unflatten

__all__ = ["body_guard_middleware", "read_items", "read_model"]

M = TypeVar("M", bound=BaseModel)


@web.middleware
async def body_guard_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """408 when the body is not all there ``body_timeout_s`` after the headers (a
    client that announces 1000 bytes and sends 10, or trickles them); and after a
    body that timed out or could not be decoded, the connection closed.

    One deadline for the whole body, whoever reads it (auth's signature check, the
    idempotency claim, the parsers): when it passes, every read of the body raises
    :class:`BodyTimeout`, which the error middleware answers. Sits outside it.
    """
    payload = request.content
    timeout_s = request.app[SETTINGS].body_timeout_s

    def expire() -> None:
        if not payload.is_eof():
            payload.set_exception(
                BodyTimeout(
                    f"the body did not arrive within {timeout_s:g} s "
                    "(Content-Length announced more than was sent?)",
                    errors=[{"loc": ["body"], "msg": f"incomplete after {timeout_s:g} s"}],
                )
            )

    timer = None if payload.is_eof() else asyncio.get_running_loop().call_later(timeout_s, expire)
    try:
        response: web.StreamResponse = await handler(request)
    finally:
        if timer is not None:
            timer.cancel()
        broken = payload.exception() is not None
        if broken:
            # aiohttp reads what is left of an unread body before it reuses the connection
            # ("lingering"); it would raise this error again, with a traceback. On a
            # TimeoutError it gives up quietly and closes the connection.
            payload.set_exception(TimeoutError())
    if broken:
        response.force_close()
    return response


async def read_model(request: web.Request, model: type[M]) -> M:
    """A JSON body as ``model``: 400 when it is not JSON, 422 naming each bad field."""
    try:
        return model.model_validate_json(await request.read())
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise MalformedBody("the body is not valid JSON") from None
        errors: list[FieldError] = [
            {"loc": ["body", *e["loc"]], "msg": e["msg"]} for e in exc.errors()
        ]
        first = errors[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "body"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ValidationFailed(
            f"{request.method} {request.path}: {where}: {first['msg']}{more}", errors=errors
        ) from None


_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_ACCEPTED = "application/json, application/x-www-form-urlencoded or multipart/form-data"


async def read_items(request: web.Request, *, max_batch: int) -> tuple[list[Any], bool]:
    """The body's items and whether it was a batch (a JSON array)."""
    ctype = request.content_type
    if ctype == "application/json" or ctype.endswith("+json"):
        doc = await _read_json(request)
    elif ctype in _FORM_TYPES:
        doc = await _read_form(request, ctype)
    else:
        sent = request.headers.get("Content-Type") or "no Content-Type"
        raise UnsupportedMediaType(f"{sent} is not accepted; send {_ACCEPTED}")
    if not isinstance(doc, list):
        return [doc], False
    if not doc:
        raise ValidationFailed(
            "the batch is empty; send at least one item",
            errors=[{"loc": ["body"], "msg": "empty array"}],
        )
    if len(doc) > max_batch:
        raise BodyTooLarge(
            f"the batch has {len(doc)} items; at most {max_batch} are accepted in one request",
            errors=[{"loc": ["body"], "msg": f"more than {max_batch} items"}],
        )
    return doc, True


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        raise MalformedBody(
            "the body is empty; send a JSON object or an array of them",
            errors=[{"loc": ["body"], "msg": "empty body"}],
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(
            f"the body is not valid JSON: {exc}", errors=[{"loc": ["body"], "msg": str(exc)}]
        ) from None


async def _read_form(request: web.Request, ctype: str) -> dict[str, Any]:
    if ctype == _FORM_TYPES[0]:
        peek = (await request.read()).lstrip()[:1]
        if peek in (b"{", b"["):
            raise UnsupportedMediaType(
                "the body looks like JSON but was sent as application/x-www-form-urlencoded "
                "(curl -d does that); add the header Content-Type: application/json"
            )
    try:
        form = await request.post()
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedBody(
            f"the form body cannot be parsed: {exc}", errors=[{"loc": ["body"], "msg": str(exc)}]
        ) from None
    files = [name for name, value in form.items() if isinstance(value, web.FileField)]
    if files:
        raise ValidationFailed(
            "file uploads are not accepted; send text fields only",
            errors=[{"loc": ["body", name], "msg": "a file, not a text field"} for name in files],
        )
    return unflatten((name, value) for name, value in form.items())
