"""Mount the console on the API's application (same port, under ``/console``).

Its routes go on the app's router directly, never into the API's route table
(:data:`relay.api.routing.routes`), so ``/openapi.json`` and the API's auth
middleware do not see them; :func:`relay.console.guard.console_middleware` guards them.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

# Importing actions registers the POST handlers in console_routes too.
from relay.console import actions  # noqa: F401
from relay.console.guard import PREFIX, security_headers
from relay.console.pages import console_routes

__all__ = ["setup_console"]

_HERE = Path(__file__).parent


def setup_console(app: web.Application) -> None:
    """Templates (autoescaped), pages and actions, static files, security headers."""
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
    )
    app.router.add_routes(console_routes)
    app.router.add_static(PREFIX + "/static/", _HERE / "static", append_version=False)
    app.on_response_prepare.append(security_headers)
