"""Every Redis key name relay uses, and every TTL, in one place.

All keys carry the hash tag ``{relay}`` so that a MULTI or a Lua script that
touches several of them stays in one slot: the same code runs on Redis
Cluster (in one slot, which is what the ordering and rate-limit scripts need).

Layout::

    {relay}:key:<sha256 hex>        hash   one API key (digest only, never the key)
    {relay}:keys                    hash   key id -> digest, for list and revoke by id
    {relay}:keys:changed            pubsub digest of a key that changed (cache invalidation)
    {relay}:evt:<event id>          hash   one event: "data" (JSON), "st:<dest>" statuses
    {relay}:events                  zset   event id by received time (ms), for listings
    {relay}:q:<destination>         stream deliveries waiting (field "e" = event id)
"""

from __future__ import annotations

__all__ = [
    "CONSUMER_GROUP",
    "EVENTS_INDEX",
    "EVENT_DATA_FIELD",
    "KEYS_CHANGED_CHANNEL",
    "KEYS_INDEX",
    "STATUS_FIELD_PREFIX",
    "event",
    "key",
    "queue",
]

_TAG = "{relay}"

#: hash: key id -> digest of every key ever created (revoked ones included).
KEYS_INDEX = f"{_TAG}:keys"
#: pub/sub channel: the digest of a key that was revoked or changed. Every API
#: process drops that key from its in-memory cache when it hears it.
KEYS_CHANGED_CHANNEL = f"{_TAG}:keys:changed"
#: zset: every event id, scored by its received time in ms; trimmed to the retention.
EVENTS_INDEX = f"{_TAG}:events"
#: Consumer group that every worker of every destination stream joins.
CONSUMER_GROUP = "workers"

#: Field of an event hash holding the event's JSON (written once, never changed).
EVENT_DATA_FIELD = "data"
#: Prefix of an event hash's per-destination status fields: ``st:<destination>``.
STATUS_FIELD_PREFIX = "st:"


def key(digest: str) -> str:
    """Hash of one API key, found by the SHA-256 hex digest of the presented key."""
    return f"{_TAG}:key:{digest}"


def event(event_id: str) -> str:
    """Hash of one event; expires after ``Settings.retention_s``."""
    return f"{_TAG}:evt:{event_id}"


def queue(destination: str) -> str:
    """Stream of deliveries pending for one destination."""
    return f"{_TAG}:q:{destination}"
