"""The route table: each handler declared once with what OpenAPI and auth need to know.

``app.py`` mounts every :class:`RouteSpec`, the auth middleware reads its
``scope``, and ``openapi.py`` writes the document from the same specs, so the
three cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

__all__ = ["ANY_KEY", "QueryParam", "RouteSpec", "Routes", "routes"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: ``scope`` of a route that any valid key may call.
ANY_KEY = "*"


@dataclass(frozen=True, slots=True)
class QueryParam:
    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    repeated: bool = False
    #: "query" or "header" (the ``in`` of the OpenAPI parameter)
    location: Literal["query", "header"] = "query"


@dataclass(frozen=True, slots=True)
class RouteSpec:
    method: str
    path: str
    handler: Handler
    summary: str
    #: None: public; ANY_KEY: any valid key; else the scope a key needs.
    scope: str | None
    #: Model of the JSON body, or a raw JSON schema for bodies models cannot say.
    body: type[BaseModel] | dict[str, Any] | None = None
    #: status -> (description, model or None)
    responses: dict[int, tuple[str, type[BaseModel] | dict[str, Any] | None]] = field(
        default_factory=dict
    )
    query: tuple[QueryParam, ...] = ()
    #: status -> headers an answer may carry besides X-Request-ID (name -> OpenAPI
    #: header object).
    headers: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: Media types of the body besides JSON (for ingest).
    body_media_types: tuple[str, ...] = ("application/json",)
    #: Schema of the non-JSON media types (forms), when it is not ``body``'s.
    form_body: dict[str, Any] | None = None
    #: Media type of the answers that are not problems.
    media_type: str = "application/json"
    tag: str = "relay"


class Routes:
    """Collects specs with a decorator; iterable; finds a spec by method and path."""

    __slots__ = ("_by_key", "_specs")

    def __init__(self) -> None:
        self._specs: list[RouteSpec] = []
        self._by_key: dict[tuple[str, str], RouteSpec] = {}

    def __iter__(self) -> Iterator[RouteSpec]:
        return iter(self._specs)

    def __repr__(self) -> str:
        return f"<Routes {len(self._specs)}>"

    def route(self, method: str, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            spec = RouteSpec(method=method, path=path, handler=handler, **kw)
            self._specs.append(spec)
            self._by_key[(method, path)] = spec
            return handler

        return register

    def find(self, method: str, path: str) -> RouteSpec | None:
        return self._by_key.get((method, path))


#: The one table every API module registers into.
routes = Routes()
