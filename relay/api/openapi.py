"""``GET /openapi.json``: OpenAPI 3.1 written from the route table and the models.

The document is as strict as the server: every request it admits is served
(schemathesis checks that in CI, see ``.ci/schemathesis``). Names of
destinations are listed from relay.toml, so the document is per configuration.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, TypeAdapter

from relay.api.requestid import REQUEST_ID_HEADER, REQUEST_ID_PARAMETER
from relay.api.routing import ANY_KEY, RouteSpec, routes
from relay.api.state import SETTINGS
from relay.models import DESTINATIONS_KEY, Notification, Problem

__all__ = ["build_openapi"]

_REF = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"{(\w+)}")
_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKeyHeader": []}, {"apiKeyQuery": []}]
#: On every answer: the request's id.
_ECHOED = {
    REQUEST_ID_HEADER: {
        "description": "The request's X-Request-ID as sent, or the one relay made for it",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 128},
    }
}


class _Schemas:
    """Component schemas collected while the paths are written."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def of(self, thing: type[BaseModel] | dict[str, Any] | Any) -> dict[str, Any]:
        if isinstance(thing, dict):
            schema = dict(thing)
        elif isinstance(thing, type) and issubclass(thing, BaseModel):
            schema = thing.model_json_schema(ref_template=_REF)
            self.components.update(schema.pop("$defs", {}))
            self.components[thing.__name__] = schema
            return {"$ref": _REF.format(model=thing.__name__)}
        else:
            schema = TypeAdapter(thing).json_schema(ref_template=_REF)
        self.components.update(schema.pop("$defs", {}))
        return schema


def _operation(spec: RouteSpec, schemas: _Schemas) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": spec.summary,
        "operationId": spec.handler.__name__,
        "tags": [spec.tag],
    }
    if spec.handler.__doc__:
        op["description"] = inspect.cleandoc(spec.handler.__doc__)
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(spec.path)
    ]
    for q in (*spec.query, REQUEST_ID_PARAMETER):
        schema = {"type": "array", "items": q.schema} if q.repeated else q.schema
        param: dict[str, Any] = {
            "name": q.name,
            "in": q.location,
            "description": q.description,
            "schema": schema,
        }
        if q.location == "query":
            param["explode"] = True
        params.append(param)
    op["parameters"] = params
    if spec.body is not None:
        body = schemas.of(spec.body)
        form = body if spec.form_body is None else schemas.of(spec.form_body)
        op["requestBody"] = {
            "required": True,
            "content": {
                media: {"schema": body if media == "application/json" else form}
                for media in spec.body_media_types
            },
        }
    if spec.scope is not None:
        op["security"] = _SECURITY
        need = "any valid key" if spec.scope == ANY_KEY else f"a key with the scope `{spec.scope}`"
        op["description"] = (op.get("description", "") + f"\n\nNeeds {need}.").strip()
    responses: dict[str, Any] = {}
    for status, (description, model) in sorted(spec.responses.items()):
        headers = {**_ECHOED, **spec.headers.get(status, {})}
        answer: dict[str, Any] = {"description": description, "headers": headers}
        if model is not None:
            media = "application/problem+json" if model is Problem else spec.media_type
            answer["content"] = {media: {"schema": schemas.of(model)}}
        responses[str(status)] = answer
    op["responses"] = responses
    return op


def _notification(schemas: _Schemas) -> dict[str, Any]:
    """What relay POSTs to a REST-hook subscription's target_url."""
    headers = {
        "webhook-id": "Notification id (ntf_…), the same on every retry: drop repeats",
        "webhook-timestamp": "Unix seconds of this attempt",
        "webhook-signature": "v1,<base64 HMAC-SHA256> with the subscription's whsec_ secret",
    }
    return {
        "post": {
            "summary": "A notification to a REST-hook subscription (Standard Webhooks signed)",
            "description": "Sent for the subscription's event through the delivery queue, "
            "with retries. Answer 2xx to acknowledge; 410 deletes the subscription; "
            "redirects are not followed.",
            "parameters": [
                {
                    "name": n,
                    "in": "header",
                    "required": True,
                    "description": d,
                    "schema": {"type": "string"},
                }
                for n, d in headers.items()
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": schemas.of(Notification)}},
            },
            "responses": {
                "200": {"description": "Received"},
                "410": {"description": "Gone: relay deletes the subscription"},
            },
        }
    }


def _with_destinations(node: Any, takes: Mapping[str, Sequence[str]]) -> Any:
    """``node`` with each destination-name schema's ``enum`` listing the configured ones."""
    if isinstance(node, list):
        return [_with_destinations(v, takes) for v in node]
    if not isinstance(node, dict):
        return node
    kind = node.get(DESTINATIONS_KEY)
    if kind is None:
        return {k: _with_destinations(v, takes) for k, v in node.items()}
    names = [n for n, kinds in takes.items() if kind == "*" or kind in kinds]
    rest = {k: v for k, v in node.items() if k != DESTINATIONS_KEY}
    return {**rest, "enum": [*node.get("enum", []), *names]}


def build_openapi(
    *,
    version: str,
    destinations: Mapping[str, Sequence[str]] | None = None,
    metrics_token: bool = False,
) -> dict[str, Any]:
    """The whole document, from every registered route. ``destinations``: each configured
    destination's name and the event types it takes (none when disabled);
    ``metrics_token``: RELAY_METRICS_TOKEN is set, so GET /metrics needs it."""
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for spec in routes:
        paths.setdefault(spec.path, {})[spec.method.lower()] = _operation(spec, schemas)
    if metrics_token and "/metrics" in paths:
        paths["/metrics"]["get"]["security"] = [{"metricsToken": []}]
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "relay",
            "version": version,
            "description": "Webhook relay for leads and contacts: scoped API keys in, a durable "
            "Redis queue, rate-limited delivery to ConveYour, Convertr and signed webhooks. "
            "Errors are RFC 9457 problem JSON.",
        },
        "paths": paths,
        "webhooks": {"notification": _notification(schemas)},
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "rly_live_… key"},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "apiKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key"},
                "metricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "RELAY_METRICS_TOKEN, for GET /metrics when it is set",
                },
            },
        },
    }
    result: dict[str, Any] = _with_destinations(document, destinations or {})
    return result


@routes.route(
    "GET",
    "/openapi.json",
    summary="This document",
    scope=None,
    responses={200: ("OpenAPI 3.1", {"type": "object"})},
    tag="health",
)
async def openapi_json(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    configured = settings.destinations
    takes = tuple((n, tuple(d.events) if d.enabled else ()) for n, d in configured.items())
    body = _document(takes, metrics_token=settings.metrics_token is not None)
    return web.Response(body=body, content_type="application/json")


@functools.cache
def _document(takes: tuple[tuple[str, tuple[str, ...]], ...], *, metrics_token: bool) -> bytes:
    """Built once per configuration: the routes and models do not change while the process
    runs."""
    from relay import __version__

    document = build_openapi(
        version=__version__, destinations=dict(takes), metrics_token=metrics_token
    )
    return orjson.dumps(document)
