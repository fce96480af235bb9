"""API keys in Redis, with an in-process cache that revocation empties at once.

Every API process keeps the keys it has seen in memory, but only while its
subscription to :data:`~relay.redis_keys.KEYS_CHANGED_CHANNEL` is up: a
revocation writes the key's hash, then publishes its digest, and every
process drops it before it can answer another request with it. While the
subscription is down the cache is empty and every lookup asks Redis.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import cast

from redis.asyncio import Redis

from relay import redis_keys
from relay.apikeys import (
    KEY_RE,
    PREFIX_LENGTH,
    KeyMode,
    KeyRecord,
    digest,
    new_key,
    new_signing_secret,
)
from relay.availability import RedisWatch
from relay.errors import NotFound
from relay.ids import random_base62
from relay.invalidation import listen
from relay.replicas import Replicas, write

__all__ = ["KeyStore"]

#: Upper bound of cached keys; past it the cache is simply emptied.
_CACHE_MAX = 10_000
#: What a key id looks like (``key_`` + 16 base62 characters; a little looser here).
_KEY_ID = re.compile(r"key_[0-9A-Za-z]{1,32}")


class KeyStore:
    """Create, list, revoke and look up keys.

    ``lookup`` is on every request's path; the rest is rare. Expects a client
    made with ``decode_responses=True`` (see :mod:`relay.connect`).
    """

    __slots__ = ("_cache", "_generation", "_redis", "_replicas", "_trusted")

    def __init__(self, redis: Redis, *, replicas: Replicas | None = None) -> None:
        self._redis = redis
        #: Replicas that must have a creation or a revocation before it returns: a
        #: revocation lost in a failover would bring a revoked key back (relay.replicas).
        self._replicas = replicas
        self._cache: dict[str, KeyRecord] = {}
        #: Bumped on every invalidation, so a lookup that raced one is not cached.
        self._generation = 0
        #: True only while the invalidation subscription is live.
        self._trusted = False

    def __repr__(self) -> str:
        state = "live" if self._trusted else "uncached"
        return f"<KeyStore cached={len(self._cache)} {state}>"

    async def create(
        self,
        *,
        name: str,
        scopes: list[str],
        mode: KeyMode = "live",
        expires_at: datetime | None = None,
        destinations: list[str] | None = None,
        rate_limit: str | None = None,
        signing: bool = False,
    ) -> tuple[KeyRecord, str]:
        """Store a new key; returns its record and the key, which is never seen again."""
        key = new_key(mode)
        record = KeyRecord(
            id="key_" + random_base62(16),
            digest=digest(key),
            name=name,
            prefix=key[:PREFIX_LENGTH],
            scopes=tuple(scopes),
            destinations=tuple(destinations or ()),
            mode=mode,
            created_at=datetime.now(UTC).replace(microsecond=0),
            expires_at=expires_at,
            rate_limit=rate_limit,
            signing_secret=new_signing_secret() if signing else None,
        )
        hashed = redis_keys.key(record.digest)
        fields = [word for pair in record.to_hash().items() for word in pair]
        writes = [
            ("HSET", hashed, *fields),
            ("HSET", redis_keys.KEYS_INDEX, record.id, record.digest),
        ]
        await write(self._redis, hashed, writes, self._replicas, transaction=True)
        if self._replicas is not None:  # else no one need hear of a key no one has used
            await self._announce(record.digest)
        return record, key

    async def list(self) -> list[KeyRecord]:
        """Every key, revoked ones included, oldest first."""
        digests = await self._redis.hvals(redis_keys.KEYS_INDEX)
        async with self._redis.pipeline(transaction=False) as pipe:
            for d in digests:
                pipe.hgetall(redis_keys.key(cast(str, d)))
            rows = await pipe.execute()
        records = [KeyRecord.from_hash(r) for r in rows if r]
        return sorted(records, key=lambda r: (r.created_at, r.id))

    async def get(self, key_id: str) -> KeyRecord:
        """One key by id; NotFound when there is none."""
        d = await self._redis.hget(redis_keys.KEYS_INDEX, key_id)
        raw = await self._redis.hgetall(redis_keys.key(cast(str, d))) if d else None
        if not raw:
            # Only what looks like an id is echoed: never a key given by mistake.
            shown = f" {key_id!r}" if _KEY_ID.fullmatch(key_id) else ""
            raise NotFound(f"no key with id{shown} (ids look like key_…)")
        return KeyRecord.from_hash(raw)

    async def revoke(self, key_id: str) -> KeyRecord:
        """Revoke a key on every API process at once; revoking twice keeps the first time."""
        record = await self.get(key_id)
        if record.revoked_at is None or self._replicas is not None:
            # Again when already revoked if replicas must confirm: a revocation answered
            # 503 (NotReplicated) is on the master, and its retry must wait for them too.
            now = datetime.now(UTC).replace(microsecond=0)
            hashed = redis_keys.key(record.digest)
            await self._redis.hsetnx(hashed, "revoked_at", now.isoformat())
            if self._replicas is not None:
                # The revocation in force, written again as it is (it never changes
                # once set), so that WAIT has a write of its connection to count even
                # when this one was already in force: relay.replicas.
                revoked_at = await self._redis.hget(hashed, "revoked_at")
                writes = [("HSET", hashed, "revoked_at", cast(str, revoked_at))]
                await write(self._redis, hashed, writes, self._replicas)
            await self._announce(record.digest)
            record = await self.get(key_id)
        self._forget(record.digest)
        return record

    async def lookup(self, presented: str) -> KeyRecord | None:
        """The record of a presented key, or None when no such key was ever made.

        Revoked and expired keys are returned too; the caller decides (and
        says why). Malformed keys never reach Redis.
        """
        if not KEY_RE.match(presented):
            return None
        d = digest(presented)
        cached = self._cache.get(d)
        if cached is not None:
            return cached
        generation = self._generation
        raw = await self._redis.hgetall(redis_keys.key(d))
        if not raw:
            return None
        record = KeyRecord.from_hash(raw)
        if self._trusted and generation == self._generation:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[d] = record
        return record

    async def listen(self, *, watch: RedisWatch | None = None) -> None:
        """Keep the invalidation subscription up until cancelled (run as a task); a lost
        connection is told to ``watch`` (the process's; default: one of its own)."""
        await listen(
            self._redis,
            redis_keys.KEYS_CHANGED_CHANNEL,
            on_message=self._forget,
            on_up=self._trust,
            on_down=self._distrust,
            watch=watch or RedisWatch(),
        )

    async def _announce(self, d: str) -> None:
        """Tell every API process that the key of digest ``d`` changed."""
        await self._redis.publish(redis_keys.KEYS_CHANGED_CHANNEL, d)

    def _trust(self) -> None:
        self._trusted = True

    def _forget(self, d: str) -> None:
        self._generation += 1
        self._cache.pop(d, None)

    def _distrust(self) -> None:
        self._trusted = False
        self._generation += 1
        self._cache.clear()
