"""Check the ``events`` list a contact or lead may carry (ConveYour track events).

Kept apart from :mod:`relay.normalize` (fields and traits): ``events`` is not a
field of the contact but things it did, each sent to ConveYour's
``/api/analytics/track`` after its identify. Every problem is named by its place,
``events[i].field``, so that a client can fix the one item (in a batch, only that
item is refused).

Forms and Zapier's flattened keys cannot send a list: ``events__0__event=applied``
(or ``events[0][event]``, ``events.0.event``) unflattens to an object keyed by
``"0"``, ``"1"``... Such an object is read as the list in the order of its numbers
(gaps allowed; errors name the number as sent). Form values are text, so a
``timestamp`` of digits only is read as epoch seconds and stored as a number.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

from relay.errors import FieldError
from relay.models import MAX_TRACK_EVENTS

__all__ = ["EVENTS_FIELD", "MAX_EVENT_NAME_CHARS", "TRACKING_TYPES", "check_events"]

#: The top-level name of the list in an ingest item.
EVENTS_FIELD = "events"
MAX_EVENT_NAME_CHARS = 200
#: Destination types that track the events (relay.adapters.conveyour). A webhook
#: sends them within the payload; Convertr leaves them out.
TRACKING_TYPES = ("conveyour",)
#: Epoch seconds written as text (a form sends nothing else): digits, maybe a fraction.
_DIGITS = re.compile(r"[0-9]{1,11}(\.[0-9]{1,9})?")


def check_events(raw: Any) -> tuple[list[dict[str, Any]], list[FieldError]]:
    """The track events of an item, and the problems found (``loc`` from the item).

    ``event``: a non-empty string; ``properties``: an object (optional);
    ``timestamp``: ISO 8601 text or epoch seconds (optional, kept as given but for
    digits in text, which become a number).

    >>> check_events({"1": {"event": "hired"}, "0": {"event": "sent", "timestamp": "60"}})[0]
    [{'event': 'sent', 'properties': {}, 'timestamp': 60}, {'event': 'hired', 'properties': {}}]
    """
    numbered = _numbered(raw)
    if numbered is None:
        msg = "expected a list of track events (or, flattened, events__0__event, ...)"
        return [], [{"loc": [EVENTS_FIELD], "msg": msg}]
    if len(numbered) > MAX_TRACK_EVENTS:
        msg = f"too many track events: {len(numbered)} given, at most {MAX_TRACK_EVENTS}"
        return [], [{"loc": [EVENTS_FIELD], "msg": msg}]
    out: list[dict[str, Any]] = []
    errors: list[FieldError] = []
    for i, item in numbered:
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
        stamp = _epoch_text(item.get("timestamp"))
        if stamp is not None and not _timestamp_ok(stamp):
            msg = "expected ISO 8601 text (2026-01-31T12:00:00Z) or epoch seconds"
            errors.append({"loc": [*loc, "timestamp"], "msg": msg})
        one: dict[str, Any] = {"event": name, "properties": props}
        if stamp is not None:
            one["timestamp"] = stamp
        out.append(one)
    return out, errors


def _numbered(raw: Any) -> list[tuple[int, Any]] | None:
    """A list with each item's index, from a list or from an object keyed by numbers
    (what a form's ``events__0__event`` unflattens to); ``None`` if it is neither."""
    if isinstance(raw, list):
        return list(enumerate(raw))
    if not isinstance(raw, dict) or not raw:
        return None
    if not all(isinstance(k, str) and k.isascii() and k.isdigit() and len(k) < 6 for k in raw):
        return None
    return sorted((int(k), v) for k, v in raw.items())


def _epoch_text(value: Any) -> Any:
    """``"1767225600"`` (a form's epoch seconds) as the number; anything else as given."""
    if isinstance(value, str) and value.isascii() and _DIGITS.fullmatch(value):
        return float(value) if "." in value else int(value)
    return value


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
