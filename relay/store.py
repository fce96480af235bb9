"""The Redis boundary for events: enqueue atomically, read back.

An accepted event is written in one atomic script call (``relay/lua/enqueue.lua``, a
group commit shared with concurrent requests, on a Redis Cluster with those of its
partition; see :mod:`relay.groupcommit` and :mod:`relay.partitions`) with
everything that makes it deliverable and findable: its record (JSON plus a status
per destination), its place in the time index and in the search index of its email
and of its phone (``redis_keys.who``, read by :meth:`EventStore.find`), and its place
in each destination's queue: a stream entry, or a place in its contact's order
behind an earlier event.
Either all of an event is in Redis when ``enqueue`` returns, or none of it and
StoreUnavailable is raised when Redis cannot take it now (on a cluster, a request whose
events fall in several partitions makes a call per partition, all awaited before it
answers: if one fails, the others may have been written, and the client's retry queues
those again; with an Idempotency-Key, the answer is written after them all) (the API's error
middleware answers 503, so that Zapier and n8n retry). With
``RELAY_REDIS_MIN_REPLICAS``, "in Redis" means on that many replicas too, else
NotReplicated (a 503 as well: :mod:`relay.replicas`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from relay import redis_keys
from relay.errors import NotReplicated, StoreUnavailable
from relay.groupcommit import GroupCommit
from relay.hooks import Subscription, notification_items, notification_records
from relay.ids import new_event_id, partition_of
from relay.listing import MergedIndexes
from relay.models import Contact, DeliveryStatus, DestinationView, EventKind, EventView
from relay.normalize import normalize_email, normalize_phone
from relay.partitions import contact_partition
from relay.replicas import Replicas, write
from relay.scripts import ENQUEUE, Batch

__all__ = ["SCAN_BUDGET", "EventStore", "NewEvent", "Page", "contact_key", "overall_status"]


def contact_key(contact: Contact) -> str | None:
    """Who an event is about, for per-contact ordering and its partition
    (relay.partitions): a digest of the email, else the phone; None without either."""
    who = contact.email or contact.phone
    return hashlib.sha256(who.encode()).hexdigest()[:20] if who else None


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
    #: Who it is about (:func:`contact_key` of the payload: None without an email or a
    #: phone), as ingest worked it out for the event's partition; "" (the default): work
    #: it out from the payload here.
    contact: str | None = ""

    def __post_init__(self) -> None:
        if self.contact == "":
            object.__setattr__(self, "contact", contact_key(self.payload))

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "mode": self.mode,
            "key_id": self.key_id,
            "received_at": self.received_at.isoformat(),
            # Written by pydantic's serializer in place: a third of model_dump's time.
            "payload": orjson.Fragment(
                self.payload.__pydantic_serializer__.to_json(
                    self.payload, exclude_none=True, exclude_defaults=True
                )
            ),
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

    __slots__ = (
        "_commits",
        "_enqueue",
        "_one_call",
        "_partitions",
        "_redis",
        "_region",
        "_replicas",
        "_retention_s",
    )

    def __init__(
        self,
        redis: Redis,
        *,
        retention_s: int,
        partitions: int,
        default_region: str = "US",
        replicas: Replicas | None = None,
    ) -> None:
        self._redis = redis
        self._retention_s = retention_s
        #: RELAY_PARTITIONS: events spread over this many (relay.partitions).
        self._partitions = partitions
        #: Where a phone typed without a country code is (Settings.default_region, as ingest).
        self._region = default_region
        #: With ``replicas``, an enqueue returns once they have its writes, else raises
        #: NotReplicated (RELAY_REDIS_MIN_REPLICAS; one WAIT per group: relay.replicas).
        self._replicas = replicas
        self._enqueue = ENQUEUE.bind(redis)
        #: Concurrent enqueues share one script call and one round trip (relay.groupcommit):
        #: on one Redis, whatever their partitions; on a cluster, where a call touches one
        #: slot, those of a partition. With a call a partition on one Redis, leads of many
        #: contacts at once (the usual traffic) made several calls of an event or two
        #: where one would do: a third fewer requests a second (bench, 16 partitions).
        self._one_call = not isinstance(redis, RedisCluster)
        #: The group commits (0 on one Redis, else one a partition), made at first use.
        self._commits: dict[int, GroupCommit] = {}

    def __repr__(self) -> str:
        return f"<EventStore partitions={self._partitions} retention_s={self._retention_s}>"

    def new_id(self, contact: str | None) -> str:
        """A new event id, in the partition of ``contact`` (:func:`contact_key` of the
        event's payload: relay.partitions)."""
        return new_event_id(partition=contact_partition(contact, self._partitions))

    async def enqueue(
        self,
        events: list[NewEvent],
        *,
        remember: tuple[str, bytes] | None = None,
        subscribers: Sequence[Subscription] = (),
    ) -> None:
        """Store and queue events; returns once Redis has them all.

        The events are written in one transaction (on a cluster, one a partition, all
        sent at once), which may hold other requests' events too (group commit): it is
        sent at once when Redis is idle, else as soon as the one in flight returns.

        ``remember`` (key, answer) stores an Idempotency-Key's answer once every event
        is written, in a command of its own (it is a control key: another slot). A
        process that dies between the two leaves the pending marker, which lapses
        (``IDEMPOTENCY_PENDING_MS``): a retry after it queues the events again.
        ``subscribers`` are the hook subscriptions to the events' ``<type>.received``:
        their notifications are queued in each event's transaction, in its partition.
        """
        if not events:
            return
        if self._one_call:  # one Redis: all in one group, whatever their partitions
            calls = [self._commit(0).enter(functools.partial(_writes, events, subscribers))]
        else:  # a cluster: a group a partition (a script call touches one slot)
            by_partition: dict[int, list[NewEvent]] = {}
            for ev in events:
                by_partition.setdefault(partition_of(ev.id), []).append(ev)
            # Every partition's items join its group at once (enter, not submit).
            calls = [
                self._commit(p).enter(functools.partial(_writes, group, subscribers))
                for p, group in by_partition.items()
            ]
        failures: list[BaseException] = []
        if len(calls) == 1:  # one group, most often: gather would cost ~7 us a request
            try:
                await calls[0]
            except StoreUnavailable as exc:
                failures.append(exc)
        else:
            answers = await asyncio.gather(*calls, return_exceptions=True)
            failures = [a for a in answers if isinstance(a, BaseException)]
        if remember is not None and all(isinstance(f, NotReplicated) for f in failures):
            # Every event is on the master (too few replicas confirmed some): a retry
            # must find this answer, not queue them again (it is confirmed or refused
            # when found: relay.api.idempotency).
            await self._remember(*remember, confirmed=not failures)
        if failures:
            raise failures[0]

    async def _remember(self, key: str, answer: bytes, *, confirmed: bool) -> None:
        """Write an Idempotency-Key's answer; ``confirmed``: once replicas have it."""
        command = ("SET", key, answer, "EX", redis_keys.IDEMPOTENCY_TTL_S)
        await write(self._redis, key, [command], self._replicas if confirmed else None)

    def _commit(self, group: int) -> GroupCommit:
        """The group commit of a partition (on a cluster), or of all (group 0, one Redis)."""
        commit = self._commits.get(group)
        if commit is None:

            def fixed() -> tuple[dict[str, str], dict[str, str | int | float]]:
                """Events past the retention leave the index."""
                cutoff_ms = int(time.time() * 1000) - self._retention_s * 1000
                return {}, {"cutoff_ms": cutoff_ms, "retention_s": self._retention_s}

            commit = GroupCommit(self._enqueue, fixed, replicas=self._replicas)
            self._commits[group] = commit
        return commit

    async def get(self, event_id: str) -> EventView | None:
        """One event with its destinations' statuses, or None (unknown or expired)."""
        views = await self._views([event_id])
        return views[0]

    async def page(
        self,
        *,
        limit: int,
        kind: str | None = None,
        status: str | None = None,
        destination: str | None = None,
        mode: str | None = None,
        before: str | None = None,
        search: str | None = None,
        budget: int | None = None,
    ) -> Page:
        """Newest first, filtered; ``before`` (an event id) continues a previous page;
        ``search`` keeps the events it names (see :meth:`find`).

        Filters are applied to the events as they are read, a page of the time
        index at a time (of the email's or phone's index with ``search``). A rare
        filter would read far back, so one call reads at most ``budget`` index
        entries (default :data:`SCAN_BUDGET`): when that runs out before ``limit``
        matched, :attr:`Page.stopped_at` says where, to continue from with ``before``.
        """
        wanted = _Filter(kind, status, destination, mode)
        budget = SCAN_BUDGET if budget is None else budget
        if search is None:
            indexes = [redis_keys.events_index(p) for p in range(self._partitions)]
            return await self._scan(indexes, wanted, limit=limit, before=before, budget=budget)
        text = search.strip()
        if not text or limit < 1:
            return Page([])
        if text[:4].lower() == "evt_":
            view = await self.get("evt_" + text[4:].upper())
            ok = view is not None and wanted(view) and (before is None or view.id < before)
            return Page([view] if ok and view is not None else [])
        email = normalize_email(text) if "@" in text else None
        phone = None if email else normalize_phone(text, default_region=self._region)
        if email is None and phone is None:
            return Page([])
        # Every partition's: an event with an email and a phone is in its email's.
        keys = [_who_keys(p, email, phone)[0] for p in range(self._partitions)]
        # Another value's events, were two ever to share a digest (redis_keys.who), are
        # never shown: each event's own email or phone is checked.
        wanted = _Filter(kind, status, destination, mode, email=email, phone=phone)
        cutoff_ms = int(time.time() * 1000) - self._retention_s * 1000
        return await self._scan(
            keys, wanted, limit=limit, before=before, budget=budget, after_ms=cutoff_ms
        )

    async def find(self, text: str, *, limit: int) -> list[EventView]:
        """The events ``text`` names, newest first, at most ``limit``: an event id, or an
        email or phone as a person types it (normalized as ingest normalizes them, so
        ``Ann@Example.com`` and ``(415) 555-0100`` find what was sent as
        ``ann@example.com`` and ``+1 415 555 0100``). The console's and
        ``GET /v1/events?q=``'s search; events past the retention are never found.
        """
        return (await self.page(limit=limit, search=text)).events

    async def _scan(
        self,
        indexes: list[str],
        wanted: _Filter,
        *,
        limit: int,
        before: str | None,
        budget: int,
        after_ms: int | None = None,
    ) -> Page:
        """The events of zsets of event ids by received ms (one per partition, index i
        for partition i), merged newest first (by ms, then id), that are ``wanted``;
        ``before`` an event id in them; only those received after ``after_ms``; reading
        at most ``budget`` of their entries."""
        out: list[EventView] = []
        top: str | float = "+inf"
        cursor: tuple[float, str] | None = None
        if before is not None:
            try:
                at = partition_of(before)
            except ValueError:
                return Page(out)
            score = await self._redis.zscore(indexes[at], before) if at < len(indexes) else None
            if score is None:
                return Page(out)
            # Inclusive: events of the same millisecond sort by id, and the ones at or
            # after the cursor (already on an earlier page) are skipped below.
            top, cursor = score, (score, before)
        merged = MergedIndexes(
            self._redis, indexes, top, "-inf" if after_ms is None else f"({after_ms}"
        )
        read = 0
        last: tuple[str, float] | None = None  # the last entry read
        while len(out) < limit and read < budget:
            entries = await merged.take(min(_LIST_PAGE, budget - read, limit - len(out) + 20))
            if not entries:
                return Page(out)
            read += len(entries)
            last = entries[-1]
            ids = [i for i, ms in entries if cursor is None or (ms, i) < cursor]
            for view in await self._views(ids):
                if view is None or not wanted(view):
                    continue  # expired, or filtered out
                out.append(view)
                if len(out) == limit:
                    return Page(out)
        if last is None or len(out) >= limit:
            return Page(out)
        if not await merged.more():  # the budget ended with the index: nothing older
            return Page(out)
        return Page(out, stopped_at=last[0], stopped_ms=int(last[1]))

    async def _views(self, event_ids: list[str]) -> list[EventView | None]:
        """The events of these ids (None: unknown, expired, or not an event id at all)."""
        keys = [_event_key(event_id) for event_id in event_ids]
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                if key is not None:
                    pipe.hgetall(key)
            found = iter(await pipe.execute())
        return [None if key is None else _view(next(found)) for key in keys]

    async def ping(self) -> bool:
        """Whether Redis answers right now."""
        try:
            return bool(await self._redis.ping())
        except StoreUnavailable:
            return False


def _writes(events: Sequence[NewEvent], subscribers: Sequence[Subscription], batch: Batch) -> None:
    """Add events (and their notifications) to an enqueue call, each with the keys of
    its partition."""
    for ev in events:
        partition = partition_of(ev.id)
        initial = DeliveryStatus.test if ev.mode == "test" else DeliveryStatus.pending
        fields: list[str] = []
        for dest in ev.destinations:
            fields += (redis_keys.STATUS_FIELD_PREFIX + dest, initial.value)
        queue: list[dict[str, Any]] = []
        if ev.mode == "live":
            contact = ev.contact
            for dest in ev.destinations:
                place: dict[str, Any] = {"stream": batch.key(redis_keys.queue(dest, partition))}
                if contact is not None:  # its stream entry when it heads the order
                    place["heads"] = batch.key(redis_keys.heads(dest, partition))
                    place["list"] = batch.key(redis_keys.order(dest, partition, contact))
                    place["contact"] = contact
                queue.append(place)
        item: dict[str, Any] = {
            "event": batch.key(redis_keys.event(ev.id)),
            "index": batch.key(redis_keys.events_index(partition)),
            "id": ev.id,
            "data": ev.to_json().decode(),
            "at": int(ev.received_at.timestamp() * 1000),
            "fields": fields,
            "queue": queue,
        }
        who = _who_keys(partition, ev.payload.email, ev.payload.phone)
        if who:
            item["who"] = [batch.key(k) for k in who]
        batch.add(item)
        if subscribers:
            records = notification_records(subscribers, f"{ev.type}.received", ev.id, mode=ev.mode)
            stream = batch.key(redis_keys.queue(redis_keys.NOTIFICATIONS, partition))
            for ntf in notification_items(batch, records):
                batch.add(ntf | {"stream": stream})


@dataclass(frozen=True, slots=True)
class Page:
    """One listing call's events, and where it stopped reading if it stopped short."""

    events: list[EventView]
    #: Set when the call's scan budget ran out before its page filled: the last event
    #: id it read from the index (older matches may follow: ask again with ``before``
    #: set to it), and that event's received time (unix ms). None: nothing was left
    #: unread (or the page filled).
    stopped_at: str | None = None
    stopped_ms: int | None = None


@dataclass(frozen=True, slots=True)
class _Filter:
    """What a listing or a search keeps: an event of this type, overall status,
    destination, mode (each None: any), and with this email or phone (search only)."""

    kind: str | None = None
    status: str | None = None
    destination: str | None = None
    mode: str | None = None
    email: str | None = None
    phone: str | None = None

    def __call__(self, view: EventView) -> bool:
        return (
            (not self.kind or view.type == self.kind)
            and (not self.status or view.status == self.status)
            and (not self.mode or view.mode == self.mode)
            and (not self.destination or self.destination in {d.name for d in view.destinations})
            and (not self.email or view.payload.email == self.email)
            and (not self.phone or view.payload.phone == self.phone)
        )


def _who_keys(partition: int, email: str | None, phone: str | None) -> list[str]:
    """The search zsets an event of this partition with this (normalized) email and
    phone is in."""
    keys = [redis_keys.who(partition, "email", email)] if email else []
    return [*keys, redis_keys.who(partition, "phone", phone)] if phone else keys


#: Events read from the time index per round trip when listing.
_LIST_PAGE = 200
#: Index entries one listing call reads at most: a filter that matches none of 100k
#: events would otherwise read (and fetch) all of them, ~9 s. At 10 000 a call takes
#: ~0.6 s at worst (bench/console.py) and says where it stopped (Page.stopped_at).
SCAN_BUDGET = 10_000


def _event_key(event_id: str) -> str | None:
    """An event's hash, or None for text that names no partition (typed by a person)."""
    try:
        return redis_keys.event(event_id)
    except ValueError:
        return None


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
