"""Event ids sort in the order they were made, even within one millisecond."""

from __future__ import annotations

import re

from relay.ids import new_event_id, partition_of


def test_ids_are_monotonic_and_unique() -> None:
    ids = [new_event_id() for _ in range(20_000)]  # many share a millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"evt_[0-9A-HJKMNP-TV-Z]{26}", i) for i in ids)


def test_ids_carry_their_time() -> None:
    early, late = new_event_id(now_ms=1_000), new_event_id(now_ms=2_000)
    assert early < late


def test_an_id_holds_its_millisecond_and_partition() -> None:
    # Decoded here digit by digit: a millisecond's characters made once and reused must
    # still be that millisecond's, whatever came before.
    crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    cases = [(1_000, 7), (1_000, 3), (0, 0), (2**48 - 1, 1023), (1_765_000_000_123, 512)]
    for ms, partition in cases:
        for prefix in ("evt_", "req_"):
            made = new_event_id(now_ms=ms, partition=partition, prefix=prefix)
            assert made.startswith(prefix)
            value = 0
            for ch in made.removeprefix(prefix):
                value = value * 32 + crockford.index(ch)
            assert (value >> 80, value & 1023) == (ms, partition)
            assert partition_of(made) == partition
