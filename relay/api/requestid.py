"""``X-Request-ID``: the client's id for a request (or one relay makes), echoed on the
answer, stored on the events the request queues, and on every log line about it.

An id of at most 128 characters of ``A-Z a-z 0-9 . _ : -`` is kept as sent; anything
else (empty, too long, other characters: it would go into logs and headers) is
replaced by a new one, ``req_`` and a ULID.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from relay import logs
from relay.api.routing import QueryParam
from relay.api.state import REQUEST_ID
from relay.ids import new_event_id

__all__ = [
    "REQUEST_ID_HEADER",
    "REQUEST_ID_PARAMETER",
    "echo_request_id",
    "request_id_for",
    "request_id_middleware",
]

REQUEST_ID_HEADER = "X-Request-ID"
#: What a client's id may be.
_VALID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

#: The header as /openapi.json documents it on every operation.
REQUEST_ID_PARAMETER = QueryParam(
    REQUEST_ID_HEADER,
    "Your id for this request, at most 128 of A-Z a-z 0-9 . _ : - (anything else is "
    "replaced; none: relay makes one). Echoed in the answer's X-Request-ID, stored on the "
    "events the request queues (request_id) and named in every log line about the request "
    "and those events' delivery attempts.",
    {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9._:-]+$"},
    location="header",
)


def request_id_for(sent: str | None) -> str:
    """The id a request goes by: the one it sent when valid, else a new one."""
    if sent is not None and _VALID.fullmatch(sent):
        return sent
    return new_event_id(prefix="req_")


@web.middleware
async def request_id_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """The outermost middleware: every line logged while the request is handled names it."""
    request_id = request_id_for(request.headers.get(REQUEST_ID_HEADER))
    request[REQUEST_ID] = request_id
    bound = logs.CONTEXT["request_id"].set(request_id)
    try:
        response: web.StreamResponse = await handler(request)
    finally:
        logs.CONTEXT["request_id"].reset(bound)
    return response


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the id on every answer, however it was made (a route, a
    problem, an exception aiohttp answers itself)."""
    if (request_id := request.get(REQUEST_ID)) is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
