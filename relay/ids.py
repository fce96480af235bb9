"""Identifiers: time-sortable event ids and random base62 strings.

>>> new_event_id()  # doctest: +SKIP
'evt_01JD6Q9W5S3ZK8M2R4T7V9XB1C'
"""

from __future__ import annotations

import os
import secrets
import string
import time

__all__ = ["BASE62", "new_event_id", "random_base62"]

#: Alphabet of key secrets and key ids.
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
#: Crockford's base32: no I, L, O, U, so ids read aloud and compare as text in time order.
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def random_base62(length: int) -> str:
    """``length`` characters from ``secrets``: about 5.95 bits each."""
    return "".join(secrets.choice(BASE62) for _ in range(length))


def new_event_id(*, now_ms: int | None = None) -> str:
    """``evt_`` + a ULID: 48 bits of milliseconds then 80 random bits, 26 characters.

    Ids sort as text in the order they were made (to the millisecond), so the
    newest-first listing and Redis stream order agree with the id order.
    """
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "evt_" + "".join(reversed(chars))
