"""What every ``/console`` request goes through: security headers, the session, CSRF.

* Every answer under ``/console`` (pages, fragments, static files, errors) gets the
  CSP (no inline script or style, nothing from elsewhere, no framing) and its
  companions, and pages ``Cache-Control: no-store`` (:func:`security_headers`).
* A request other than the sign-in form needs a live session (:mod:`.session`); a page
  without one redirects to the sign-in form.
* A POST needs the session's CSRF token (form field ``csrf`` or header
  ``X-CSRF-Token``, sent by htmx from a meta tag) and, when the browser sends
  ``Origin``, our own origin; a read-only session may not POST any action. Else 403.
* A RequestError (or an unreachable Redis) from a console handler becomes an HTML
  error page, never a problem+json.
"""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from relay.api.state import API_KEY, KEYS, REDIS
from relay.console.session import COOKIE, Session, SessionStore
from relay.errors import RequestError, StoreUnavailable

__all__ = [
    "PREFIX",
    "SESSION",
    "console_middleware",
    "error_page",
    "over_https",
    "security_headers",
]

#: Where the console lives.
PREFIX = "/console"
#: The request's console session (set for every request but the sign-in form's).
SESSION = web.RequestKey("console_session", Session)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
#: Reachable without a session: the sign-in form, its POST, and the static files.
_PUBLIC = {("GET", PREFIX), ("GET", PREFIX + "/"), ("POST", PREFIX + "/sign-in")}
#: A POST a read-only session may make.
_READ_POSTS = {PREFIX + "/sign-out"}


def _ours(request: web.Request) -> bool:
    path = request.path
    return path == PREFIX or path.startswith(PREFIX + "/")


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the console's headers on everything under /console,
    whoever answered (a handler, the static route, a 404)."""
    if not _ours(request):
        return
    response.headers.update(_HEADERS)
    static = request.path.startswith(PREFIX + "/static/") and response.status == 200
    response.headers["Cache-Control"] = "no-cache" if static else "no-store"


def error_page(request: web.Request, status: int, title: str, detail: str) -> web.Response:
    """An HTML error page (the session's nav when there is one)."""
    context = {"session": request.get(SESSION), "status": status, "title": title, "detail": detail}
    return aiohttp_jinja2.render_template("error.html", request, context, status=status)


def over_https(request: web.Request) -> bool:
    """Whether the browser reached relay over https: directly, or through a proxy that
    ended TLS and says so in ``X-Forwarded-Proto``. Trusted for the session cookie's
    ``Secure`` flag (a forged header only makes the forger's own cookie https-only) and
    the origin check's scheme (the host must still be ours)."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0]
    return request.secure or forwarded.strip().lower() == "https"


def _same_origin(request: web.Request) -> bool:
    """False when the browser says the request came from another origin. ``Origin: null``
    says nothing (Chromium sends it for our own forms under ``Referrer-Policy:
    no-referrer``); the CSRF token and the SameSite=Strict cookie still hold then.
    Behind a proxy that ended TLS, our origin is https although this request is not."""
    origin = request.headers.get("Origin")
    schemes = {request.scheme, "https"} if over_https(request) else {request.scheme}
    return origin in (None, "null") or origin in {f"{s}://{request.host}" for s in schemes}


@web.middleware
async def console_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Session, CSRF and role checks for /console, and its errors as HTML pages."""
    if not _ours(request) or request.path.startswith(PREFIX + "/static/"):
        response: web.StreamResponse = await handler(request)
        return response
    try:
        return await _guarded(request, handler)
    except RequestError as exc:
        return error_page(request, exc.status, exc.title, exc.detail)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_page(request, exc.status, exc.reason, exc.reason)
    except StoreUnavailable:
        return error_page(request, 503, "Redis unavailable", "Redis does not answer; try again.")


async def _guarded(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD") and not _same_origin(request):
        return error_page(request, 403, "Forbidden", "This form came from another site.")
    if (request.method, request.path) in _PUBLIC:
        response: web.StreamResponse = await handler(request)
        return response
    sessions = SessionStore(request.app[REDIS], request.app[KEYS])
    session = await sessions.load(request.cookies.get(COOKIE))
    if session is None:
        if request.method in ("GET", "HEAD"):
            if request.headers.get("HX-Request"):  # a poll: send the whole page there
                return web.Response(status=401, headers={"HX-Redirect": PREFIX})
            raise web.HTTPSeeOther(PREFIX)
        return error_page(request, 403, "Forbidden", "Not signed in (or the session ended).")
    request[SESSION] = session
    # The API's own checks (reach, destinations) read the key from here.
    request[API_KEY] = session.key
    if request.method not in ("GET", "HEAD"):
        form = await request.post()
        token = request.headers.get("X-CSRF-Token") or form.get("csrf")
        if not session.csrf_ok(token if isinstance(token, str) else None):
            return error_page(request, 403, "Forbidden", "Missing or wrong CSRF token.")
        if session.role != "admin" and request.path not in _READ_POSTS:
            return error_page(request, 403, "Forbidden", "This needs a key with admin.")
    response = await handler(request)
    return response  # noqa: RET504 (typed: the handler is Any)
