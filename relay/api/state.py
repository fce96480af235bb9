"""Typed keys of the application's and the request's state."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from redis.asyncio import Redis

from relay.apikeys import KeyRecord
from relay.availability import RedisWatch
from relay.hooks import HookStore
from relay.keystore import KeyStore
from relay.ratelimit import RateLimiter
from relay.settings import Settings
from relay.store import EventStore
from relay.tracing import Tracing

__all__ = [
    "API_KEY",
    "DELIVERY_ALIVE",
    "EVENTS",
    "HOOKS",
    "KEYS",
    "LIMITER",
    "REDIS",
    "REQUEST_ID",
    "SETTINGS",
    "TRACING",
    "WATCH",
]

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
KEYS = web.AppKey("keys", KeyStore)
#: Keys' own rate limits (the same Redis sliding window as destinations').
LIMITER = web.AppKey("limiter", RateLimiter)
EVENTS = web.AppKey("events", EventStore)
#: REST-hook subscriptions (cached; invalidated over pub/sub).
HOOKS = web.AppKey("hooks", HookStore)
#: The process's one voice about Redis outages (shared with an in-process worker).
WATCH = web.AppKey("redis_watch", RedisWatch)
#: Set when a delivery worker runs in this process (`relay serve`): is it alive now?
DELIVERY_ALIVE = web.AppKey[Callable[[], bool]]("delivery_alive")
#: Spans of requests and of the events they queue (relay.tracing; off: no-op calls).
TRACING = web.AppKey("tracing", Tracing)
#: The authenticated key of a request (set by the auth middleware).
API_KEY = web.RequestKey("api_key", KeyRecord)
#: The request's X-Request-ID, sent or made (set by relay.api.requestid).
REQUEST_ID = web.RequestKey("request_id", str)
