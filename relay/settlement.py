"""What a request's answer writes, built as the items of the two settle scripts.

A settle (:meth:`relay.queue.DeliveryQueue.settle`) is a ``relay/lua/settle.lua`` call
in each partition its events are in, then one ``release.lua`` call in the control slot
(:mod:`relay.redis_keys`): :func:`settle_item` builds one partition's part of a
request, :func:`release_item` its control part, from what the partition calls said.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from relay import redis_keys
from relay.hooks import last_outcome, notification_items
from relay.ids import partition_of
from relay.models import DeliveryStatus
from relay.scripts import Batch

__all__ = ["Entry", "Result", "Settlement", "release_item", "settle_item"]


class Entry(NamedTuple):
    """One stream entry: its id, its event's, the event's contact digest when the event
    heads that contact's order (see :func:`relay.redis_keys.heads`), and the partition of
    its event and stream. Made by :meth:`of`, which reads the partition from the id."""

    id: str
    event: str
    contact: str | None
    #: Named by the event's id (relay.ids.partition_of); a field, read once, because a
    #: delivery asks for it at every step.
    partition: int

    @classmethod
    def of(cls, entry_id: str, event_id: str, contact: str | None = None) -> Entry:
        """The entry ``entry_id`` of event ``event_id`` (ValueError: not an event id)."""
        return cls(entry_id, event_id, contact, partition_of(event_id))


@dataclass(frozen=True, slots=True)
class Result:
    """What one attempt means for one event (see ``relay/lua/settle.lua``)."""

    entry: Entry
    status: DeliveryStatus
    #: The attempt's record (JSON), kept on the event.
    record: bytes
    #: The retry uses up a step of the schedule (rejected credentials do not).
    spends_step: bool = False
    #: status retrying: when (unix ms).
    retry_at_ms: int = 0
    #: Hook notifications to queue with it (``hooks.notification_records``).
    notifications: Sequence[tuple[str, bytes]] = ()
    #: For a notification (destination ``_hooks``): its subscription, whose last
    #: outcome this result becomes (``redis_keys.HOOKS_LAST``).
    hook: str | None = None


@dataclass(frozen=True, slots=True)
class Settlement:
    """One request's answer, settled in one go: its events' results and what it means
    for its destination."""

    destination: str
    #: Whose lease the request went under (given back).
    holder: str
    results: Sequence[Result]
    #: The request's ids in the destination's rate log, dated at the answer.
    sent: Sequence[str] = ()
    #: An upstream 429's Retry-After: the destination pauses this long (ms).
    pause_ms: int = 0
    #: Why the destination is unhealthy now (its credentials were refused).
    unhealthy: str | None = None
    #: Entries whose event expired before it was sent (a take found it gone): acked,
    #: and their contacts' next events go.
    expired: Sequence[Entry] = ()


def settle_item(
    batch: Batch,
    settlement: Settlement,
    partition: int,
    expired: Sequence[Entry],
    results: Sequence[Result],
) -> None:
    """Add one settlement's events of one partition to a ``settle.lua`` call being built."""
    dest = settlement.destination
    stream = batch.key(redis_keys.queue(dest, partition))
    events = [_settle_event(batch, dest, entry) for entry in expired]
    for result in results:
        entry = result.entry
        event = _settle_event(batch, dest, entry)
        event["status"] = result.status.value
        event["record"] = result.record.decode()
        if result.spends_step:
            event["spend"] = True
        if result.status is DeliveryStatus.retrying:
            event["retry"] = batch.key(redis_keys.retries(dest, partition))
            event["at"] = result.retry_at_ms
            event["member"] = entry.event
            if entry.contact is not None:
                event["member"] += redis_keys.RETRY_CONTACT_SEP + entry.contact
        elif result.status is DeliveryStatus.dead:
            event["dead"] = batch.key(redis_keys.dead(dest, partition))
        if result.notifications:
            event["notify"] = notification_items(batch, result.notifications)
        events.append(event)
    batch.add(
        {
            "destination": dest,
            "holder": settlement.holder,
            "stream": stream,
            "events": events,
        }
    )


def release_item(batch: Batch, settlement: Settlement, settled: Sequence[Result]) -> None:
    """Add one settlement's control part to a ``release.lua`` call being built;
    ``settled``: its results that ``settle.lua`` settled (not late, not gone)."""
    dest = settlement.destination
    item: dict[str, Any] = {
        "destination": dest,
        "holder": settlement.holder,
        "leases": batch.key(redis_keys.inflight(dest)),
    }
    if settlement.sent:
        item["rate"] = batch.key(redis_keys.rate(dest))
        item["sent"] = list(settlement.sent)
    if settlement.pause_ms > 0:
        item["pause"] = batch.key(redis_keys.paused(dest))
        item["pause_ms"] = settlement.pause_ms
    if settlement.unhealthy is not None:
        problem = {"problem": settlement.unhealthy, "since": time.time()}
        item["unhealthy"] = orjson.dumps(problem).decode()
    delivered = sum(1 for r in settled if r.status is DeliveryStatus.delivered)
    if delivered:
        minute = int(time.time() // 60)
        item["minute"] = batch.key(redis_keys.delivered_minute(dest, minute))
        item["delivered"] = delivered
    outcomes = [
        [r.hook, last_outcome(r.entry.event, r.status.value, r.record)]
        for r in settled
        if r.hook is not None
    ]
    if outcomes:
        item["hooks"] = batch.key(redis_keys.HOOKS_INDEX)
        item["last"] = batch.key(redis_keys.HOOKS_LAST)
        item["outcomes"] = outcomes
    batch.add(item)


def _settle_event(batch: Batch, destination: str, entry: Entry) -> dict[str, Any]:
    """An event of a ``settle.lua`` item: its entry, and its contact's order when the
    entry names the contact (the order moves on when it is settled for good)."""
    partition = entry.partition
    event: dict[str, Any] = {
        "entry": entry.id,
        "id": entry.event,
        "event": batch.key(redis_keys.event(entry.event)),
    }
    if entry.contact is not None:
        event["contact"] = entry.contact
        event["heads"] = batch.key(redis_keys.heads(destination, partition))
        event["list"] = batch.key(redis_keys.order(destination, partition, entry.contact))
    return event
