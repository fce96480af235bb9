"""``create_app(settings, *, redis=None)``: the API (and the web console) as an aiohttp
application."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from redis.asyncio import Redis

# Importing the route modules registers their handlers in ``routes``.
from relay.api import dead_letters, events, fields, health, hooks, ingest, keys, openapi  # noqa: F401
from relay.api.accesslog import AccessLogger
from relay.api.auth import auth_middleware
from relay.api.body import body_guard_middleware
from relay.api.metrics import count_requests
from relay.api.problems import error_middleware
from relay.api.requestid import echo_request_id, request_id_middleware
from relay.api.routing import routes
from relay.api.spans import trace_requests
from relay.api.state import EVENTS, HOOKS, KEYS, LIMITER, REDIS, SETTINGS, TRACING, WATCH
from relay.availability import RedisWatch, Supervisor
from relay.connect import redis_for
from relay.console import console_middleware, setup_console
from relay.hooks import HookStore
from relay.keystore import KeyStore
from relay.ratelimit import RateLimiter
from relay.replicas import Replicas
from relay.settings import Settings
from relay.store import EventStore
from relay.tracing import Tracing

__all__ = ["AccessLogger", "create_app"]

#: How long shutdown waits for the invalidation listeners to notice their cancellation.
_LISTENER_STOP_S = 2.0


def create_app(
    settings: Settings, *, redis: Redis | None = None, tracing: Tracing | None = None
) -> web.Application:
    """The API. ``redis`` (a ``decode_responses=True`` client) is used as given and not
    closed; without it the app opens the Redis that settings name, embedded or not.
    ``tracing`` (relay.tracing; default off) is the process's: the caller shuts it down."""
    tracing = tracing or Tracing()
    # With tracing off the span middleware is not there at all.
    spans = [trace_requests] if tracing.enabled else []
    app = web.Application(
        middlewares=[
            count_requests,
            request_id_middleware,
            *spans,
            body_guard_middleware,
            error_middleware,
            auth_middleware,
            console_middleware,
        ],
        client_max_size=settings.max_body_bytes,
    )
    app[TRACING] = tracing
    app.on_response_prepare.append(echo_request_id)
    app[SETTINGS] = settings
    app[WATCH] = RedisWatch()
    app.cleanup_ctx.append(_redis_context(settings, redis))
    app.cleanup_ctx.append(_invalidation_listeners)
    for spec in routes:
        app.router.add_route(spec.method, spec.path, spec.handler)
    setup_console(app)
    return app


def _redis_context(
    settings: Settings, given: Redis | None
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def context(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            redis = (
                given if given is not None else await stack.enter_async_context(redis_for(settings))
            )
            app[REDIS] = redis
            app[EVENTS] = EventStore(
                redis,
                retention_s=settings.retention_s,
                partitions=settings.partitions,
                default_region=settings.default_region,
                replicas=Replicas.of(settings),
            )
            app[KEYS] = KeyStore(redis, replicas=Replicas.of(settings))
            app[HOOKS] = HookStore(redis, replicas=Replicas.of(settings))
            app[LIMITER] = RateLimiter(redis)
            yield

    return context


async def _invalidation_listeners(app: web.Application) -> AsyncIterator[None]:
    watch = app[WATCH]
    tasks = {
        asyncio.create_task(
            Supervisor(f"{what} invalidation listener").run(functools.partial(listen, watch=watch)),
            name=f"relay-{what}-invalidation",
        )
        for what, listen in (("key", app[KEYS].listen), ("hook", app[HOOKS].listen))
    }
    yield
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks, timeout=_LISTENER_STOP_S)
