"""The Redis boundary for events: enqueue atomically, read back.

An accepted event is written in one atomic script call (``relay/lua/enqueue.lua``, a
group commit shared with concurrent requests; see :mod:`relay.groupcommit`) with
everything that makes it deliverable: its record (JSON plus a status per
destination), its place in the time index, and its place in each destination's
queue: a stream entry, or a place in its contact's order behind an earlier event.
Either all of it is in Redis when ``enqueue`` returns, or none of it and
StoreUnavailable is raised when Redis cannot take it now (the API's error
middleware answers 503, so that Zapier and n8n retry).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

import orjson
from redis.asyncio import Redis

from relay import redis_keys
from relay.errors import StoreUnavailable
from relay.groupcommit import GroupCommit
from relay.hooks import Subscription, notification_items, notification_records
from relay.models import Contact, DeliveryStatus, DestinationView, EventKind, EventView
from relay.scripts import ENQUEUE, Batch

__all__ = ["EventStore", "NewEvent", "contact_key", "overall_status"]


def contact_key(payload: Mapping[str, Any]) -> str | None:
    """Who an event is about, for per-contact ordering: a digest of the email, else the phone."""
    who = payload.get("email") or payload.get("phone")
    return hashlib.sha256(str(who).encode()).hexdigest()[:20] if who else None


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An accepted, normalized event on its way into Redis."""

    id: str
    type: EventKind
    mode: Literal["live", "test"]
    key_id: str
    received_at: datetime
    payload: Contact
    destinations: tuple[str, ...]
    #: X-Request-ID of the request that sent it (every API request has one).
    request_id: str | None = None
    #: W3C traceparent of the span that accepted it (tracing on): delivery spans link to it.
    traceparent: str | None = None

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "mode": self.mode,
            "key_id": self.key_id,
            "received_at": self.received_at.isoformat(),
            "payload": self.payload.model_dump(exclude_none=True, exclude_defaults=True),
            "destinations": self.destinations,
            "request_id": self.request_id,
            # Made as the write leaves for Redis; the 202 follows its answer at once
            # (relay_event_delivery_latency_seconds counts from here).
            "accepted_ms": time.time_ns() // 1_000_000,
        }
        if self.traceparent is not None:
            doc["traceparent"] = self.traceparent
        return orjson.dumps(doc)


def overall_status(mode: str, statuses: list[DeliveryStatus]) -> str:
    """One word for an event from its destinations' statuses."""
    if not statuses:
        return "no_destination"
    if mode == "test":
        return "test"
    s = set(statuses)
    for word in (DeliveryStatus.delivering, DeliveryStatus.retrying, DeliveryStatus.pending):
        if word in s:
            return word.value
    return DeliveryStatus.dead.value if DeliveryStatus.dead in s else DeliveryStatus.delivered.value


class EventStore:
    """Events in Redis: written once at ingest, their statuses changed by workers.

    Expects a client made with ``decode_responses=True`` (see :mod:`relay.connect`).
    """

    __slots__ = ("_commit", "_redis", "_retention_s")

    def __init__(self, redis: Redis, *, retention_s: int) -> None:
        self._redis = redis
        self._retention_s = retention_s
        #: Concurrent enqueues share one script call and one round trip (relay.groupcommit).
        self._commit = GroupCommit(ENQUEUE.bind(redis), self._fixed)

    def __repr__(self) -> str:
        return f"<EventStore retention_s={self._retention_s}>"

    async def enqueue(
        self,
        events: list[NewEvent],
        *,
        remember: tuple[str, bytes] | None = None,
        subscribers: Sequence[Subscription] = (),
    ) -> None:
        """Store and queue events in one transaction; returns once Redis has them all.

        The transaction may hold other requests' events too (group commit): it
        is sent at once when Redis is idle, else as soon as the one in flight returns.

        ``remember`` (key, answer) stores an Idempotency-Key's answer in the same
        transaction, so a repeat finds the answer exactly when the events exist.
        ``subscribers`` are the hook subscriptions to the events' ``<type>.received``:
        their notifications are queued in the same transaction too.
        """
        if not events:
            return
        notifications = [
            record
            for ev in events
            if subscribers
            for record in notification_records(
                subscribers, f"{ev.type}.received", ev.id, mode=ev.mode
            )
        ]

        def writes(batch: Batch) -> None:
            for ev in events:
                initial = DeliveryStatus.test if ev.mode == "test" else DeliveryStatus.pending
                fields: list[str] = []
                for dest in ev.destinations:
                    fields += (redis_keys.STATUS_FIELD_PREFIX + dest, initial.value)
                queue: list[dict[str, Any]] = []
                if ev.mode == "live":
                    contact = contact_key({"email": ev.payload.email, "phone": ev.payload.phone})
                    for dest in ev.destinations:
                        place: dict[str, Any] = {"stream": batch.key(redis_keys.queue(dest))}
                        if contact is not None:  # its stream entry when it heads the order
                            place["heads"] = batch.key(redis_keys.heads(dest))
                            place["list"] = batch.key(redis_keys.order(dest, contact))
                            place["contact"] = contact
                        queue.append(place)
                batch.add(
                    {
                        "event": batch.key(redis_keys.event(ev.id)),
                        "id": ev.id,
                        "data": ev.to_json().decode(),
                        "at": int(ev.received_at.timestamp() * 1000),
                        "fields": fields,
                        "queue": queue,
                    }
                )
            for item in notification_items(batch, notifications):
                batch.add(item)
            if remember is not None:
                batch.add({"answer": batch.key(remember[0]), "value": remember[1].decode()})

        await self._commit.submit(writes)

    def _fixed(self) -> tuple[dict[str, str], dict[str, str | int | float]]:
        """The script's own keys and arguments: events past the retention leave the index."""
        cutoff_ms = int(time.time() * 1000) - self._retention_s * 1000
        keys = {
            "index": redis_keys.EVENTS_INDEX,
            "notifications": redis_keys.queue(redis_keys.NOTIFICATIONS),
        }
        return keys, {"cutoff_ms": cutoff_ms, "retention_s": self._retention_s}

    async def get(self, event_id: str) -> EventView | None:
        """One event with its destinations' statuses, or None (unknown or expired)."""
        views = await self._views([event_id])
        return views[0]

    async def recent(
        self,
        *,
        limit: int,
        kind: str | None = None,
        status: str | None = None,
        destination: str | None = None,
        mode: str | None = None,
        before: str | None = None,
    ) -> list[EventView]:
        """Newest first, filtered; ``before`` (an event id) continues a previous page.

        Filters are applied to the events as they are read, a page of the time
        index at a time, so a rare filter reads further back but never more than
        the retention holds.
        """
        out: list[EventView] = []
        top: str | float = "+inf"
        if before is not None:
            score = await self._redis.zscore(redis_keys.EVENTS_INDEX, before)
            if score is None:
                return out
            # Inclusive: events of the same millisecond sort by id, and the ones at or
            # after the cursor (already on an earlier page) are skipped below.
            top = score
        offset = 0
        while len(out) < limit:
            found = await self._redis.zrevrangebyscore(
                redis_keys.EVENTS_INDEX, top, "-inf", start=offset, num=_LIST_PAGE
            )
            ids = cast(list[str], found)
            if not ids:
                break
            offset += len(ids)
            if before is not None:
                ids = [i for i in ids if i < before]
            for view in await self._views(ids):
                if view is None or (kind and view.type != kind):
                    continue
                if status and view.status != status:
                    continue
                if mode and view.mode != mode:
                    continue
                if destination and destination not in {d.name for d in view.destinations}:
                    continue
                out.append(view)
                if len(out) == limit:
                    break
        return out

    async def find(self, text: str, *, limit: int) -> list[EventView]:
        """The events ``text`` names, newest first: for now an event id only (the
        console's and ``GET /v1/events``'s search; email and phone come with their index)."""
        view = await self.get(text.strip()) if text.strip() else None
        return [view][:limit] if view is not None else []

    async def _views(self, event_ids: list[str]) -> list[EventView | None]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for event_id in event_ids:
                pipe.hgetall(redis_keys.event(event_id))
            return [_view(raw) for raw in await pipe.execute()]

    async def ping(self) -> bool:
        """Whether Redis answers right now."""
        try:
            return bool(await self._redis.ping())
        except StoreUnavailable:
            return False


#: Events read from the time index per round trip when listing.
_LIST_PAGE = 200


def _view(raw: dict[str, str]) -> EventView | None:
    """An event as the API shows it, from its hash."""
    if not raw or redis_keys.EVENT_DATA_FIELD not in raw:
        return None
    data = orjson.loads(raw[redis_keys.EVENT_DATA_FIELD])
    if "payload" not in data:
        return None  # a notification's record (relay.hooks), not an event
    by_dest: dict[str, list[dict[str, Any]]] = {}
    numbered = []
    for field, value in raw.items():
        if field.startswith(redis_keys.ATTEMPT_RECORD_PREFIX):
            dest, _, n = field.removeprefix(redis_keys.ATTEMPT_RECORD_PREFIX).rpartition(":")
            numbered.append((dest, int(n), value))
    for dest, _, value in sorted(numbered):
        by_dest.setdefault(dest, []).append(orjson.loads(value))
    views = [
        DestinationView(
            name=dest,
            status=DeliveryStatus(raw.get(redis_keys.STATUS_FIELD_PREFIX + dest, "pending")),
            attempts=by_dest.get(dest, []),
        )
        for dest in data["destinations"]
    ]
    return EventView(
        id=data["id"],
        type=data["type"],
        status=overall_status(data["mode"], [v.status for v in views]),
        mode=data["mode"],
        received_at=datetime.fromisoformat(data["received_at"]),
        key_id=data["key_id"],
        request_id=data.get("request_id"),  # none on events stored before request ids
        payload=Contact.model_validate(data["payload"]),
        destinations=views,
    )
