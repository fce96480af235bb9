"""Events as the API hands them to the store, for tests that write Redis directly."""

from __future__ import annotations

from datetime import UTC, datetime

from relay.ids import new_event_id
from relay.models import Contact, Lead
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
