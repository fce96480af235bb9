"""Read an ingest body, whatever form it came in, as a list of raw items.

JSON (an object, or an array as a batch), ``application/x-www-form-urlencoded``
and ``multipart/form-data`` are accepted; form keys written flat
(``traits[city]``) are unflattened here, JSON keys by the normalizer.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import orjson
from aiohttp import BodyPartReader, MultipartReader, StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ValidationError

from relay.errors import (
    BodyTooLarge,
    FieldError,
    MalformedBody,
    UnsupportedMediaType,
    ValidationFailed,
)
from relay.normalize import unflatten

__all__ = ["read_items", "read_model"]

M = TypeVar("M", bound=BaseModel)


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


#: Buffer size of the stream a multipart body is parsed from (it is all in memory already).
_CHUNK = 2**16
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
        fields: list[tuple[str, str | None]]
        if ctype == _FORM_TYPES[0]:  # text only: parsed from the body's bytes
            fields = [
                (k, v if isinstance(v, str) else None) for k, v in (await request.post()).items()
            ]
        else:
            fields = await _multipart_fields(request)
    except (ValueError, UnicodeDecodeError, HttpProcessingError) as exc:
        why = " ".join(str(exc.message if isinstance(exc, HttpProcessingError) else exc).split())
        raise MalformedBody(
            f"the form body cannot be parsed: {why}", errors=[{"loc": ["body"], "msg": why}]
        ) from None
    files = [name for name, value in fields if value is None]
    if files:
        raise ValidationFailed(
            "file uploads are not accepted; send text fields only",
            errors=[{"loc": ["body", name], "msg": "a file, not a text field"} for name in files],
        )
    return unflatten((name, value) for name, value in fields)


async def _multipart_fields(request: web.Request) -> list[tuple[str, str | None]]:
    """``(name, text)`` of each part; None for a file. Parsed from the body's bytes, not
    with ``request.post()``: that reads the stream, which is already empty when the body
    was read before (for an Idempotency-Key's digest, or a signature)."""
    stream = StreamReader(request.protocol, _CHUNK, loop=asyncio.get_running_loop())
    stream.feed_data(await request.read())
    stream.feed_eof()
    fields: list[tuple[str, str | None]] = []
    reader = MultipartReader(request.headers, stream)
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or not part.name:
            raise ValueError("every part needs a name (nested multipart is not accepted)")
        if part.filename:
            fields.append((part.name, None))
        else:
            fields.append((part.name, await part.text()))
    return fields
