"""Event ids sort in the order they were made, even within one millisecond."""

from __future__ import annotations

import re

from relay.ids import new_event_id


def test_ids_are_monotonic_and_unique() -> None:
    ids = [new_event_id() for _ in range(20_000)]  # many share a millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"evt_[0-9A-HJKMNP-TV-Z]{26}", i) for i in ids)


def test_ids_carry_their_time() -> None:
    early, late = new_event_id(now_ms=1_000), new_event_id(now_ms=2_000)
    assert early < late
