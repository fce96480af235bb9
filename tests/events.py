"""Events as the API hands them to the store, and settled as a worker settles them, for
tests that write Redis directly."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from relay.ids import new_event_id
from relay.models import Contact, DeliveryStatus, Lead
from relay.queue import DeliveryQueue, Entry, Result, Settlement
from relay.store import NewEvent


def new_lead(email: str, *destinations: str, payload: Contact | None = None) -> NewEvent:
    """A live lead of ``email`` (or ``payload``) for ``destinations``, received now."""
    return NewEvent(
        id=new_event_id(),
        type="lead",
        mode="live",
        key_id="key_test",
        received_at=datetime.now(UTC),
        payload=payload or Lead(email=email),
        destinations=destinations,
    )


async def settle_next(
    redis: Redis,
    destination: str,
    status: DeliveryStatus,
    attempt: dict[str, Any],
    *,
    retry_at_ms: int = 0,
    consumer: str = "test",
) -> Entry:
    """Read the destination's next stream entry, take it and settle it with ``status``,
    as a worker would (``attempt`` is the record kept); the entry."""
    queue = DeliveryQueue(redis, retention_s=60)
    await queue.ensure_group(destination)
    (entry,) = await queue.read(destination, consumer, count=1, block_ms=1)
    holder = consumer + entry.id
    (taken,) = await queue.take(destination, [(holder, [entry])], lease_ms=10_000, max_in_flight=8)
    assert taken.state == "ok", taken
    result = Result(
        entry,
        status,
        orjson.dumps(attempt),
        spends_step=status is DeliveryStatus.retrying,
        retry_at_ms=retry_at_ms,
    )
    await queue.settle(Settlement(destination, holder, [result]))
    return entry
