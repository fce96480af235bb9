"""Console sessions: a signed-in key becomes a random cookie; Redis keeps the rest.

The browser holds only a random session id (256 bits, HttpOnly, ``SameSite=Strict``,
``Path=/console``, ``Secure`` over https, or behind a proxy that sends
``X-Forwarded-Proto: https``). Redis holds, under the id's SHA-256 digest
(:func:`relay.redis_keys.console_session`), the key's id, the role, the CSRF token and
the absolute expiry; the key itself is stored nowhere. Every request loads the session
and the key's record again (:meth:`SessionStore.load`), so revoking the key, or its
expiry, ends the session at once. The session's EXPIRE is the idle timeout.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Literal, cast

from redis.asyncio import Redis

from relay import redis_keys
from relay.apikeys import KeyRecord
from relay.errors import NotFound
from relay.keystore import KeyStore

__all__ = ["COOKIE", "Role", "Session", "SessionStore", "role_of"]

#: Name of the console's cookie (its value is the session id).
COOKIE = "relay_console"

Role = Literal["admin", "read"]


def role_of(record: KeyRecord) -> Role | None:
    """What a key may do in the console: ``admin`` acts, ``read:events`` looks."""
    if "admin" in record.scopes:
        return "admin"
    if "read:events" in record.scopes:
        return "read"
    return None


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    """A live session and the live key behind it."""

    #: Digest of the session id (the Redis key's suffix); the id itself is never kept.
    digest: str
    key: KeyRecord
    role: Role
    #: The token every state-changing request must carry (hidden field or header).
    csrf: str = ""

    def __repr__(self) -> str:
        return f"<Session key={self.key.id} role={self.role}>"

    def csrf_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented, self.csrf)


class SessionStore:
    """Create, load and end console sessions in Redis (``decode_responses=True``)."""

    __slots__ = ("_keys", "_redis")

    def __init__(self, redis: Redis, keys: KeyStore) -> None:
        self._redis = redis
        self._keys = keys

    def __repr__(self) -> str:
        return "<SessionStore>"

    async def create(self, record: KeyRecord, role: Role) -> str:
        """A new session for a live key; returns the session id for the cookie."""
        session_id = secrets.token_urlsafe(32)
        name = redis_keys.console_session(_digest(session_id))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                name,
                mapping={
                    "key_id": record.id,
                    "role": role,
                    "csrf": secrets.token_urlsafe(32),
                    "ends": int(time.time()) + redis_keys.CONSOLE_SESSION_MAX_S,
                },
            )
            pipe.expire(name, redis_keys.CONSOLE_SESSION_IDLE_S)
            await pipe.execute()
        return session_id

    async def load(self, session_id: str | None) -> Session | None:
        """The session of a cookie, if it is live and its key is still live (not revoked,
        not expired, still allowed its role); renews the idle timeout. None otherwise."""
        if not session_id or len(session_id) > 100:
            return None
        digest = _digest(session_id)
        name = redis_keys.console_session(digest)
        raw = cast(dict[str, str], await self._redis.hgetall(name))
        if not raw or int(raw.get("ends", 0)) <= time.time():
            return None
        try:
            record = await self._keys.get(raw["key_id"])
        except NotFound:
            return None
        role = role_of(record)
        if record.state() != "active" or role is None or role != raw["role"]:
            await self._redis.delete(name)
            return None
        await self._redis.expire(name, redis_keys.CONSOLE_SESSION_IDLE_S)
        return Session(digest=digest, key=record, role=role, csrf=raw["csrf"])

    async def end(self, session: Session) -> None:
        """Sign out: the cookie is worth nothing from now on."""
        await self._redis.delete(redis_keys.console_session(session.digest))
