"""``Idempotency-Key`` (or ``webhook-id``): a repeat within 24 h gets the first answer.

The first request with a key claims it with ``SET NX`` (a short-lived marker
holding the body's digest); its answer is stored in the same MULTI that
queues its events, so either both happen or neither. A repeat with the same
body gets the stored answer byte for byte and queues nothing; one arriving
while the first is still being handled waits for it; one with a different
body is refused (422). Answers that queued nothing (errors) are not kept.

With ``RELAY_REDIS_MIN_REPLICAS`` a first request may answer 503 although its
events and its answer are on the master (too few replicas confirmed them:
NotReplicated). Its key is then kept, not released, so a retry never queues the
events twice: it gets the stored answer only once replicas confirm it (it writes
the record again and WAITs on that connection, which covers the first request's
writes, replicated before it), else 503 again. Were they lost with the master in
a failover, the record went with them and the retry queues the events afresh.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass

import orjson
from aiohttp import web
from redis.asyncio import Redis

from relay import redis_keys
from relay.errors import Conflict, ValidationFailed
from relay.replicas import Replicas, write

__all__ = ["Claim", "claim", "idempotency_key", "release"]

#: Longest Idempotency-Key accepted (Stripe's limit).
MAX_KEY_LENGTH = 255
#: How long a repeat waits for the first request with its key to finish.
_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class Claim:
    """This request holds the key: store ``answer(...)`` with its events, or ``release``."""

    redis_key: str
    body_digest: str

    def answer(self, status: int, body: bytes) -> bytes:
        """The record kept for repeats."""
        return orjson.dumps({"digest": self.body_digest, "status": status, "body": body.decode()})


def idempotency_key(request: web.Request) -> str | None:
    """The request's Idempotency-Key (or Standard Webhooks' webhook-id), if any."""
    value = request.headers.get("Idempotency-Key") or request.headers.get("webhook-id")
    if value is None:
        return None
    if not value.strip() or len(value) > MAX_KEY_LENGTH:
        raise ValidationFailed(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters",
            errors=[{"loc": ["header", "Idempotency-Key"], "msg": "empty or too long"}],
        )
    return value


async def claim(
    redis: Redis, key_id: str, idem: str, body: bytes, *, replicas: Replicas | None = None
) -> Claim | web.Response:
    """Claim ``idem`` for this request, or the first request's answer to send back (once
    ``replicas`` confirm it: NotReplicated when they do not)."""
    redis_key = redis_keys.idempotency(key_id, idem)
    digest = hashlib.sha256(body).hexdigest()
    marker = orjson.dumps({"digest": digest, "pending": True})
    deadline = time.monotonic() + _WAIT_S
    while True:
        if await redis.set(redis_key, marker, nx=True, px=redis_keys.IDEMPOTENCY_PENDING_MS):
            return Claim(redis_key, digest)
        stored = await redis.get(redis_key)
        if stored is None:
            continue  # expired between the two calls: try to claim again
        record = orjson.loads(stored)
        if record["digest"] != digest:
            raise ValidationFailed(
                "this Idempotency-Key was already used with a different body",
                errors=[{"loc": ["header", "Idempotency-Key"], "msg": "reused with another body"}],
            )
        if not record.get("pending"):
            if replicas is not None and not await _confirmed(redis, redis_key, stored, replicas):
                continue  # expired meanwhile: claim it afresh
            if not await _events_there(redis, record["body"]):
                await redis.delete(redis_key)  # an answer for events Redis lost: not given
                continue
            return web.Response(
                body=record["body"].encode(),
                status=record["status"],
                content_type="application/json",
                headers={"Idempotent-Replayed": "true"},
            )
        if time.monotonic() > deadline:
            raise Conflict(
                "a request with this Idempotency-Key is still being handled; retry shortly",
                errors=[{"loc": ["header", "Idempotency-Key"], "msg": "in progress"}],
            )
        await asyncio.sleep(0.02)


async def _confirmed(redis: Redis, redis_key: str, stored: str | bytes, replicas: Replicas) -> bool:
    """Whether the record is still there, once replicas have it; NotReplicated if they do
    not confirm. WAIT counts only its own connection's writes, so the record is written
    again (same value and TTL) on that connection first."""
    (written,) = await write(
        redis, redis_key, [("SET", redis_key, stored, "XX", "KEEPTTL")], replicas
    )
    return bool(written)


async def _events_there(redis: Redis, body: str) -> bool:
    """Whether every event an answer names is in Redis. The answer is written after its
    events, in a command of its own (they are in their partitions, it is a control key:
    relay.store), so a master that failed over between the two, or before its replica
    had the events, can leave an answer whose events are gone: a repeat then queues
    them again rather than be told they are queued."""
    doc = orjson.loads(body)
    ids = [doc["id"]] if "id" in doc else [a["id"] for a in doc.get("accepted", [])]
    keys = [redis_keys.event(i) for i in ids if isinstance(i, str) and i[:4] == "evt_"]
    if not keys:
        return True
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.exists(key)
        return all(await pipe.execute())


async def release(redis: Redis, claimed: Claim) -> None:
    """Give the key up: this request's answer queued nothing worth repeating."""
    await redis.delete(claimed.redis_key)
