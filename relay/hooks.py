"""Zapier REST hooks: subscriptions, and the notifications queued for them.

A subscription (``POST /v1/hooks``) belongs to the API key that made it and
names one topic (:data:`~relay.models.HOOK_TOPICS`) and a target URL. Every
process keeps the list of subscriptions in memory while its invalidation
channel is up (as keys are cached), so routing an event to its subscribers
costs no extra round trip on the ingest path.

When something happens (an event received, delivered, dead-lettered), one
notification per matching subscription is written *in the same atomic write* as
the change itself (:func:`notification_items`, for ``relay/lua/enqueue.lua`` and
``settle.lua``): a record ``ntf_…`` and an entry in the ``_hooks`` stream. Workers
send them like deliveries (see :mod:`relay.notify`), with the same retries, limits
and dead letters. The script that settles a notification also keeps its
subscription's last outcome (:meth:`HookStore.last_outcomes`: one small hash, read in
one call by ``GET /v1/hooks`` and the console's Hooks page; the notifications' own
records are keyed by notification, not by subscription, and expire).

Every subscription hears of every event, whichever key sent it: one relay
serves one team (as ``GET /v1/events`` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from relay import redis_keys
from relay.apikeys import new_signing_secret
from relay.availability import RedisWatch
from relay.ids import new_event_id, partition_of, random_base62
from relay.invalidation import listen
from relay.models import CreatedHook, HookInfo, HookOutcome, HookTopic
from relay.replicas import Command, Replicas, write
from relay.scripts import Batch

__all__ = [
    "HookStore",
    "Subscription",
    "last_outcome",
    "notification_items",
    "notification_records",
]


@dataclass(frozen=True, slots=True)
class Subscription:
    """One REST-hook subscription."""

    id: str
    key_id: str
    event: HookTopic
    target_url: str
    created_at: datetime
    #: ``whsec_`` secret notifications are signed with; never in repr or lists.
    secret: str = field(repr=False)

    def to_json(self) -> str:
        data = {
            "id": self.id,
            "key_id": self.key_id,
            "event": self.event,
            "target_url": self.target_url,
            "created_at": self.created_at.isoformat(),
            "secret": self.secret,
        }
        return orjson.dumps(data).decode()

    @classmethod
    def from_json(cls, raw: str | bytes) -> Subscription:
        data = orjson.loads(raw)
        return cls(
            id=data["id"],
            key_id=data["key_id"],
            event=data["event"],
            target_url=data["target_url"],
            created_at=datetime.fromisoformat(data["created_at"]),
            secret=data["secret"],
        )

    def info(self, last: HookOutcome | None = None) -> HookInfo:
        return HookInfo(
            id=self.id,
            event=self.event,
            target_url=self.target_url,
            created_at=self.created_at,
            last_notification=last,
        )

    def created(self) -> CreatedHook:
        return CreatedHook(
            id=self.id,
            event=self.event,
            target_url=self.target_url,
            created_at=self.created_at,
            secret=self.secret,
        )


class HookStore:
    """Create, list and delete subscriptions; find those of a topic, from memory.

    Expects a client made with ``decode_responses=True``.
    """

    __slots__ = ("_cache", "_generation", "_redis", "_replicas", "_trusted")

    def __init__(self, redis: Redis, *, replicas: Replicas | None = None) -> None:
        self._redis = redis
        #: Replicas that must have a subscription or its deletion before the API's 2xx
        #: (relay.replicas); None: the master's word.
        self._replicas = replicas
        #: Every subscription, while the invalidation channel is up; else None.
        self._cache: list[Subscription] | None = None
        self._generation = 0
        self._trusted = False

    def __repr__(self) -> str:
        state = "live" if self._trusted else "uncached"
        count = "?" if self._cache is None else len(self._cache)
        return f"<HookStore cached={count} {state}>"

    async def create(self, *, key_id: str, event: HookTopic, target_url: str) -> Subscription:
        sub = Subscription(
            id="hook_" + random_base62(16),
            key_id=key_id,
            event=event,
            target_url=target_url,
            created_at=datetime.now(UTC).replace(microsecond=0),
            secret=new_signing_secret(),
        )
        index = redis_keys.HOOKS_INDEX
        await write(self._redis, index, [("HSET", index, sub.id, sub.to_json())], self._replicas)
        await self._redis.publish(redis_keys.HOOKS_CHANGED_CHANNEL, sub.id)
        self._invalidate(sub.id)
        return sub

    async def all(self) -> list[Subscription]:
        """Every subscription, oldest first (from memory while that is trusted)."""
        if self._cache is not None:
            return self._cache
        generation = self._generation
        raw = cast(dict[str, str], await self._redis.hgetall(redis_keys.HOOKS_INDEX))
        subs = sorted(
            (Subscription.from_json(v) for v in raw.values()), key=lambda s: (s.created_at, s.id)
        )
        if self._trusted and generation == self._generation:
            self._cache = subs
        return subs

    async def matching(self, topic: str) -> list[Subscription]:
        """The subscriptions to notify of ``topic``."""
        # From memory with no call of all(): every ingest request asks.
        subs = self._cache if self._cache is not None else await self.all()
        return [s for s in subs if s.event == topic]

    async def get(self, hook_id: str) -> Subscription | None:
        """One subscription, read from Redis (a deleted one is None at once)."""
        raw = await self._redis.hget(redis_keys.HOOKS_INDEX, hook_id)
        return None if raw is None else Subscription.from_json(cast(str, raw))

    async def last_outcomes(self) -> dict[str, HookOutcome]:
        """Hook id -> its last notification's outcome (subscriptions notified at least
        once). Kept by ``relay/lua/settle.lua`` as it settles each notification, so
        this is one read however many notifications there were."""
        raw = cast(dict[str, str], await self._redis.hgetall(redis_keys.HOOKS_LAST))
        return {hook_id: HookOutcome.model_validate_json(v) for hook_id, v in raw.items()}

    async def delete(self, hook_id: str) -> bool:
        """Delete a subscription everywhere; whether it existed."""
        index, last = redis_keys.HOOKS_INDEX, redis_keys.HOOKS_LAST
        if self._replicas is None:
            # Not a MULTI: Redis refuses to queue any command in one once out of memory,
            # and a delete must work then. Its outcome goes first, so a failure between
            # the two leaves a subscription without one, never an outcome without it.
            writes: list[Command] = [("HDEL", last, hook_id), ("HDEL", index, hook_id)]
            removed = int((await write(self._redis, index, writes, None))[1]) > 0
        else:
            # A delete that replicas confirm must be a write Redis propagates even when
            # the subscription is already gone (the retry of a delete answered 503), so
            # that WAIT has something to count (relay.replicas): the field is made if
            # missing, then deleted, unseen by anyone in a MULTI. HSETNX says whether
            # it was there.
            writes = [("HDEL", last, hook_id), ("HSETNX", index, hook_id, "{}"),
                      ("HDEL", index, hook_id)]  # fmt: skip
            answers = await write(self._redis, index, writes, self._replicas, transaction=True)
            removed = int(answers[1]) == 0
        await self._redis.publish(redis_keys.HOOKS_CHANGED_CHANNEL, hook_id)
        self._invalidate(hook_id)
        return removed

    async def listen(self, *, watch: RedisWatch | None = None) -> None:
        """Keep the invalidation subscription up until cancelled (run as a task); a lost
        connection is told to ``watch`` (the process's; default: one of its own)."""
        await listen(
            self._redis,
            redis_keys.HOOKS_CHANGED_CHANNEL,
            on_message=self._invalidate,
            on_up=self._trust,
            on_down=self._distrust,
            watch=watch or RedisWatch(),
        )

    def _trust(self) -> None:
        self._trusted = True

    def _invalidate(self, _hook_id: str) -> None:
        self._generation += 1
        self._cache = None

    def _distrust(self) -> None:
        self._trusted = False
        self._invalidate("")


def notification_records(
    subscriptions: Sequence[Subscription],
    topic: str,
    event_id: str,
    *,
    mode: str,
    destination: str | None = None,
) -> list[tuple[str, bytes]]:
    """``(notification id, record JSON)`` for each subscription to tell of ``topic``."""
    if not subscriptions:
        return []
    now = datetime.now(UTC).isoformat()
    records = []
    for sub in subscriptions:
        # In the partition of the event it tells of (relay.partitions).
        ntf_id = new_event_id(prefix="ntf_", partition=partition_of(event_id))
        data: dict[str, Any] = {
            "id": ntf_id,
            "hook": sub.id,
            "topic": topic,
            "event": event_id,
            "mode": mode,
            "destination": destination,
            "created_at": now,
        }
        records.append((ntf_id, orjson.dumps(data)))
    return records


def last_outcome(notification_id: str, result: str, record: bytes) -> str:
    """The JSON kept as a subscription's last outcome (:class:`HookOutcome`), from the
    record of a notification's attempt and what it came to (delivered, retrying, dead)."""
    attempt = orjson.loads(record)
    outcome = HookOutcome(
        at=datetime.fromtimestamp(float(attempt["at"]), UTC),
        result=cast(Any, result),
        status_code=attempt.get("status"),
        error=attempt.get("error"),
        notification=notification_id,
    )
    return outcome.model_dump_json()


def notification_items(batch: Batch, records: Sequence[tuple[str, bytes]]) -> list[dict[str, Any]]:
    """The items that queue these notifications in a script call being built (the
    ``notify`` items of ``relay/lua/enqueue.lua`` and ``settle.lua``)."""
    return [
        {"notify": batch.key(redis_keys.event(ntf_id)), "id": ntf_id, "data": data.decode()}
        for ntf_id, data in records
    ]
