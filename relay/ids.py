"""Identifiers: time-sortable event ids and random base62 strings.

>>> new_event_id(partition=3)  # doctest: +SKIP
'evt_01JD6Q9W5S3ZK8M2R4T7V9XB03'

An event's (and a notification's) id names its partition of the keyspace
(``RELAY_PARTITIONS``, :mod:`relay.partitions`) in its last two characters: the low
10 bits of the random part. Whatever reads an event by id (the API, replay, the CLI,
the console) finds its keys with no search (:func:`partition_of`).
"""

from __future__ import annotations

import os
import secrets
import string
import time

__all__ = ["BASE62", "MAX_PARTITIONS", "new_event_id", "partition_of", "random_base62"]

#: Alphabet of key secrets and key ids.
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
#: Crockford's base32: no I, L, O, U, so ids read aloud and compare as text in time order.
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: Partitions an id can name: its last two characters, 10 bits.
MAX_PARTITIONS = 1024


def random_base62(length: int) -> str:
    """``length`` characters from ``secrets``: about 5.95 bits each."""
    return "".join(secrets.choice(BASE62) for _ in range(length))


def new_event_id(*, now_ms: int | None = None, prefix: str = "evt_", partition: int = 0) -> str:
    """``evt_`` (or ``prefix``) + a ULID: 48 bits of ms then 80 random bits, 26 characters,
    the last 10 of them ``partition``.

    Ids sort as text in the order they were made: within one millisecond the
    random part above the partition's bits is incremented rather than drawn again
    (a monotonic ULID), so the newest-first listing matches the order in which this
    process accepted events, whatever their partitions.
    """
    global _last, _ms_text
    if not 0 <= partition < MAX_PARTITIONS:
        raise ValueError(f"partition {partition} is not in 0..{MAX_PARTITIONS - 1}")
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    last_ms, last_rand = _last
    if ms <= last_ms and now_ms is None:
        ms, rand = last_ms, ((last_rand | 1023) + 1) & _RAND_MASK
    else:
        rand = int.from_bytes(os.urandom(10), "big")
    rand = (rand & ~1023) | partition
    _last = (ms, rand)
    # 26 characters of 5 bits (130 bits, the top 2 zero), taken 10 bits at a time: 10
    # of the ms (made once a ms: several ids share it under load), 16 of the rest.
    if _ms_text[0] != ms:
        _ms_text = (ms, "".join([_PAIRS[(ms >> shift) & 1023] for shift in _MS_SHIFTS]))
    c = _PAIRS  # the 8 pairs of the rest written out: a third faster than a join of a loop
    return (
        f"{prefix}{_ms_text[1]}{c[rand >> 70]}{c[(rand >> 60) & 1023]}{c[(rand >> 50) & 1023]}"
        f"{c[(rand >> 40) & 1023]}{c[(rand >> 30) & 1023]}{c[(rand >> 20) & 1023]}"
        f"{c[(rand >> 10) & 1023]}{c[rand & 1023]}"
    )


def partition_of(event_id: str) -> int:
    """The partition an event's (or a notification's) id names (see :func:`new_event_id`).

    Raises ValueError for a string that does not end in two Crockford characters."""
    index = _PAIR_INDEX.get(event_id[-2:])
    if index is None or len(event_id) < 26:
        raise ValueError(f"not an event id: {event_id[:40]!r}")
    return index


_RAND_MASK = (1 << 80) - 1
#: Every two-character Crockford string, indexed by the 10 bits it encodes.
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_PAIR_INDEX = {pair: i for i, pair in enumerate(_PAIRS)}
_MS_SHIFTS = range(40, -1, -10)
#: (ms, random part) of the last id made by this process.
_last: tuple[int, int] = (0, 0)
#: (ms, its 10 characters) of the last id made by this process.
_ms_text: tuple[int, str] = (-1, "")
