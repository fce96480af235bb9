"""Read an ingest body, whatever form it came in, as a list of raw items.

JSON (an object, or an array as a batch), ``application/x-www-form-urlencoded``
and ``multipart/form-data`` are accepted; form keys written flat
(``traits[city]``) are unflattened here, JSON keys by the normalizer. The work
is bounded before anything is parsed or normalized (see ``relay.api.bounds``),
and what cannot be kept exactly as sent is refused, never altered.
Every body, on every route, must arrive within ``body_timeout_s`` of its
headers (:func:`body_guard_middleware`).
"""

from __future__ import annotations

import asyncio
import codecs
import json
from decimal import Decimal
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from relay.api.bounds import (
    MAX_BODY_VALUES,
    Slicer,
    check_item,
    may_be_inexact,
    too_many_values,
)
from relay.api.forms import header_params, multipart_pairs, urlencoded_pairs
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

__all__ = ["body_guard_middleware", "json_items", "read_items", "read_model"]

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
    """The body's items and whether it was a batch (a JSON array).

    An item that fails the bounds is a :class:`ValidationFailed` in the list (its
    ``loc`` relative to the item), so that a batch's other items still queue.
    """
    ctype = request.content_type
    if ctype == "application/json" or ctype.endswith("+json"):
        return await json_items(await request.read(), max_batch=max_batch)
    if ctype in _FORM_TYPES:
        return [await _read_form(request, ctype)], False
    sent = request.headers.get("Content-Type") or "no Content-Type"
    raise UnsupportedMediaType(f"{sent} is not accepted; send {_ACCEPTED}")


async def json_items(raw: bytes, *, max_batch: int) -> tuple[list[Any], bool]:
    """:func:`read_items` for a JSON body."""
    doc = _parse_json(raw)
    is_batch = isinstance(doc, list)
    if not is_batch:
        doc = [doc]
    elif not doc:
        raise ValidationFailed(
            "the batch is empty; send at least one item",
            errors=[{"loc": ["body"], "msg": "empty array"}],
        )
    elif len(doc) > max_batch:
        raise BodyTooLarge(
            f"the batch has {len(doc)} items; at most {max_batch} are accepted in one request",
            errors=[{"loc": ["body"], "msg": f"more than {max_batch} items"}],
        )
    nul = b"\\u0000" in raw  # JSON can only write NUL so (orjson refuses a raw one)
    checks = await _check_all(doc, nul=nul)
    if any(floats for _, floats in checks) and may_be_inexact(raw):
        # orjson has turned any integer beyond 64 bits into a float and rounded any
        # number a float cannot hold: read the body again, exactly, to refuse those.
        exact = _parse_exact(raw)
        doc = exact if is_batch else [exact]
        doc = [float(item) if type(item) is Decimal else item for item in doc]
        checks = await _check_all(doc, nul=nul)
    return [
        ValidationFailed("the item is out of bounds", errors=errors) if errors else item
        for item, (errors, _) in zip(doc, checks, strict=True)
    ], is_batch


async def _check_all(items: list[Any], *, nul: bool) -> list[tuple[list[FieldError], bool]]:
    slicer, checks = Slicer(), []
    for index, item in enumerate(items):
        if index:
            await slicer.tick()
        checks.append(check_item(item, nul=nul))
    return checks


def _parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise MalformedBody(
            "the body is empty; send a JSON object or an array of them",
            errors=[{"loc": ["body"], "msg": "empty body"}],
        )
    if too_many_values(raw):
        msg = f"more than {MAX_BODY_VALUES} values"
        raise BodyTooLarge(
            f"the body has {msg} (fields, array elements and items counted together); "
            "send fewer fields or split the batch",
            errors=[{"loc": ["body"], "msg": msg}],
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(
            f"the body is not valid JSON: {exc}", errors=[{"loc": ["body"], "msg": str(exc)}]
        ) from None


def _parse_exact(raw: bytes) -> Any:
    """``raw`` (valid JSON: orjson read it) with every number exact: ints and Decimals."""
    try:
        return json.loads(raw, parse_float=Decimal)
    except ValueError as exc:  # an integer of more than 4,300 digits
        msg = f"a number cannot be read exactly: {exc}"
        raise ValidationFailed(msg, errors=[{"loc": ["body"], "msg": msg}]) from None


async def _read_form(request: web.Request, ctype: str) -> Any:
    """The form as one raw item, or the :class:`ValidationFailed` naming its bad fields."""
    raw = await request.read()
    charset = request.charset or "utf-8"
    try:
        codecs.lookup(charset)
    except LookupError:
        raise UnsupportedMediaType(f"charset {charset!r} is not supported; send UTF-8") from None
    if ctype == _FORM_TYPES[0]:
        if raw.lstrip()[:1] in (b"{", b"["):
            raise UnsupportedMediaType(
                "the body looks like JSON but was sent as application/x-www-form-urlencoded "
                "(curl -d does that); add the header Content-Type: application/json"
            )
        pairs, errors = urlencoded_pairs(raw, charset)
    else:
        boundary = header_params(request.headers.get("Content-Type", "")).get("boundary")
        if not boundary:
            raise MalformedBody(
                "multipart/form-data needs a boundary in its Content-Type",
                errors=[{"loc": ["body"], "msg": "no boundary"}],
            )
        pairs, errors = multipart_pairs(raw, boundary, charset)
    if errors:
        return ValidationFailed("the form has fields that cannot be read", errors=errors)
    try:
        item = unflatten(pairs)
    except ValidationFailed as exc:
        return exc
    errors, _ = check_item(item)
    return ValidationFailed("the form is out of bounds", errors=errors) if errors else item
