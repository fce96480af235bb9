"""Typed keys of the application's and the request's state."""

from __future__ import annotations

from aiohttp import web
from redis.asyncio import Redis

from relay.apikeys import KeyRecord
from relay.hooks import HookStore
from relay.keystore import KeyStore
from relay.ratelimit import RateLimiter
from relay.settings import Settings
from relay.store import EventStore

__all__ = ["API_KEY", "EVENTS", "HOOKS", "KEYS", "LIMITER", "REDIS", "SETTINGS"]

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
KEYS = web.AppKey("keys", KeyStore)
#: Keys' own rate limits (the same Redis sliding window as destinations').
LIMITER = web.AppKey("limiter", RateLimiter)
EVENTS = web.AppKey("events", EventStore)
#: REST-hook subscriptions (cached; invalidated over pub/sub).
HOOKS = web.AppKey("hooks", HookStore)
#: The authenticated key of a request (set by the auth middleware).
API_KEY = web.RequestKey("api_key", KeyRecord)
