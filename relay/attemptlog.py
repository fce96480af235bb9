"""The delivery log: one INFO line per attempt at delivering an event, successes included.

Each line names the destination, the event, what became of the attempt (as
``relay_deliveries_total`` counts it: ``delivered``, ``retry``, ``dead``,
``credentials``), the upstream's status, how long it took, and the
``X-Request-ID`` the event came in with, so one id leads from a request's access
line to every attempt at delivering its events. In JSON (relay.logs) those are
fields::

    crm: evt_01… delivered (200) in 6 ms
    {..., "request_id": "zap-1", "event_id": "evt_01…", "destination": "crm",
     "outcome": "delivered", "status": 200, "duration_ms": 6.4}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from relay.adapters.base import Attempt, Outcome
from relay.models import DeliveryStatus
from relay.queue import Result

__all__ = ["log_attempts", "outcome_word", "request_ids"]

log = logging.getLogger("relay.worker")

#: An attempt's outcome in words, by what it led to (rejected credentials aside).
_OUTCOMES = {
    DeliveryStatus.delivered: "delivered",
    DeliveryStatus.retrying: "retry",
    DeliveryStatus.dead: "dead",
}


def request_ids(events: list[dict[str, Any]]) -> str | None:
    """The X-Request-ID each event came with (a batch's, comma-separated), if any."""
    found = dict.fromkeys(e["request_id"] for e in events if e.get("request_id"))
    return ",".join(found) or None


def outcome_word(attempt: Attempt, result: Result) -> str:
    """What became of an attempt, as ``relay_deliveries_total`` counts it."""
    if attempt.outcome is Outcome.credentials:
        return "credentials"
    return _OUTCOMES[result.status]


def log_attempts(
    destination: str,
    events: list[dict[str, Any]],
    attempts: list[Attempt],
    results: Sequence[Result],
) -> None:
    """One INFO line per event of a request: its attempt and the result judged from it."""
    for event, attempt, result in zip(events, attempts, results, strict=True):
        outcome = outcome_word(attempt, result)
        fields = {
            "request_id": event.get("request_id"),
            "event_id": event["id"],
            "destination": destination,
            "outcome": outcome,
            "status": attempt.status,
            "duration_ms": round(attempt.duration_ms, 1),
            "error": attempt.error,
        }
        answer = str(attempt.status) if attempt.status is not None else "no answer"
        if attempt.error and attempt.status is None:
            answer += f": {attempt.error}"
        log.info(
            "%s: %s %s (%s) in %.0f ms",
            destination,
            event["id"],
            outcome,
            answer,
            attempt.duration_ms,
            extra={k: v for k, v in fields.items() if v is not None},
        )
