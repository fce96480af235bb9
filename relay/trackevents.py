"""Check the ``events`` list a contact or lead may carry (ConveYour track events).

Kept apart from :mod:`relay.normalize` (fields and traits): ``events`` is not a
field of the contact but things it did, each sent to ConveYour's
``/api/analytics/track`` after its identify. Every problem is named by its place,
``events[i].field``, so that a client can fix the one item (in a batch, only that
item is refused).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from relay.errors import FieldError
from relay.models import MAX_TRACK_EVENTS

__all__ = ["EVENTS_FIELD", "MAX_EVENT_NAME_CHARS", "check_events"]

#: The top-level name of the list in an ingest item.
EVENTS_FIELD = "events"
MAX_EVENT_NAME_CHARS = 200


def check_events(raw: Any) -> tuple[list[dict[str, Any]], list[FieldError]]:
    """The track events of an item, and the problems found (``loc`` from the item).

    ``event``: a non-empty string; ``properties``: an object (optional);
    ``timestamp``: ISO 8601 text or epoch seconds (optional, kept as given).
    """
    if not isinstance(raw, list):
        return [], [{"loc": [EVENTS_FIELD], "msg": "expected a list of track events"}]
    if len(raw) > MAX_TRACK_EVENTS:
        msg = f"too many track events: {len(raw)} given, at most {MAX_TRACK_EVENTS}"
        return [], [{"loc": [EVENTS_FIELD], "msg": msg}]
    out: list[dict[str, Any]] = []
    errors: list[FieldError] = []
    for i, item in enumerate(raw):
        loc: list[str | int] = [EVENTS_FIELD, i]
        if not isinstance(item, dict):
            errors.append({"loc": loc, "msg": "expected an object with an event name"})
            continue
        for key in item.keys() - {"event", "properties", "timestamp"}:
            errors.append({"loc": [*loc, str(key)], "msg": "unknown field of a track event"})
        name = item.get("event")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_EVENT_NAME_CHARS:
            msg = f"required: the event's name, text of 1 to {MAX_EVENT_NAME_CHARS} characters"
            errors.append({"loc": [*loc, "event"], "msg": msg})
        props = item.get("properties", {})
        if not isinstance(props, dict):
            errors.append({"loc": [*loc, "properties"], "msg": "expected an object"})
        stamp = item.get("timestamp")
        if stamp is not None and not _timestamp_ok(stamp):
            msg = "expected ISO 8601 text (2026-01-31T12:00:00Z) or epoch seconds"
            errors.append({"loc": [*loc, "timestamp"], "msg": msg})
        one: dict[str, Any] = {"event": name, "properties": props}
        if stamp is not None:
            one["timestamp"] = stamp
        out.append(one)
    return out, errors


def _timestamp_ok(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return math.isfinite(value) and 0 <= value < 1e11
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return False
        return True
    return False
