"""A server span per API request, when tracing is on (see :mod:`relay.tracing`).

Added to the app only then: with tracing off, requests pay nothing for it. Probes and
scrapes (``/healthz``, ``/readyz``, ``/metrics``), polled every few seconds, get none.
A ``traceparent`` header on the request makes its span a child of the caller's.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay.api.state import REQUEST_ID, TRACING

__all__ = ["trace_requests"]

#: Routes not traced: a probe's or a scraper's span every few seconds is noise.
_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


@web.middleware
async def trace_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    """Inside the X-Request-ID middleware, so the span names the request's id. The span
    is named by the route's template (``POST /v1/leads``), never by the path or query."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None
    if route in _UNTRACED:
        return await handler(request)  # type: ignore[no-any-return]
    with request.app[TRACING].server(request.method, route, request.headers) as span:
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            span.answered(exc.status, request_id=request.get(REQUEST_ID))
            raise
        except BaseException as exc:
            span.failed(exc)
            raise
        span.answered(response.status, request_id=request.get(REQUEST_ID))
        return response
