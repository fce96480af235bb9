"""Every Redis key name relay uses, and every TTL, in one place.

Keys come in two kinds, by hash tag (the part in braces that Redis Cluster hashes to
a slot), so that on a cluster every script call touches one slot (on one Redis an
enqueue takes several partitions' events at once: relay.store) and a cluster spreads
the events over every master:

* **control keys**, tagged ``{relay}`` (one slot): API keys, hook subscriptions,
  workers, health, console sessions, idempotency answers, the partition count, and
  per destination its rate log, pause, in-flight leases and delivered-minute counters.
  These make limits, pauses and caps global across partitions and workers.
* **partition keys**, tagged ``{relay:<p>}`` for partition p of ``RELAY_PARTITIONS``
  (:mod:`relay.partitions`): events, their time and search indexes, and per
  destination its stream, retries, dead letters and contact order, and
  the hook notifications' stream. An event's partition is in its id
  (:func:`relay.ids.partition_of`), so :func:`event` needs nothing else; the other
  partition keys take the partition, always (no default that could hide a wrong one).
  With the default 16 partitions, the tags ``{relay:0}`` .. ``{relay:15}`` fall 5, 5
  and 6 on the three masters of a standard 3-master cluster (slots 0-5460,
  5461-10922, 10923-16383; tests/test_partitions.py checks it).

Layout (``{p}`` = ``{relay:<p>}``)::

    {relay}:key:<sha256 hex>        hash   one API key (digest only, never the key)
    {relay}:keys                    hash   key id -> digest, for list and revoke by id
    {relay}:keys:changed            pubsub digest of a key that changed (cache invalidation)
    {relay}:partitions              string RELAY_PARTITIONS this data was written with
    {p}:evt:<event id>              hash   one event: "data" (JSON), and per destination:
                                           "st:<dest>" status, "h:<dest>" who is sending it
                                           and "u:<dest>" until when (ms) it holds it,
                                           "n:<dest>" attempts made, "a:<dest>:<n>" attempt n,
                                           "r:<dest>" retries spent of the current schedule
    {p}:events                      zset   the partition's event ids by received time (ms)
    {p}:who:<digest>                zset   one email's or phone's event ids by received ms
                                           (search); the digest, never the address or number
    {p}:q:<destination>             stream deliveries waiting: "e" event id, and "c" the
                                           contact digest when the event heads its contact
    {relay}:rate:<destination>      zset   sliding-window log: request id -> answered ms
                                           (in flight: admitted ms + hold)
    {relay}:paused:<destination>    string upstream asked us to wait (429); PX = the wait
    {relay}:inflight:<destination>  zset   in-flight leases: holder -> lease expiry ms (the
                                           global max_in_flight cap)
    {p}:retry:<destination>         zset   scheduled retries: event id[/contact] -> due ms
    {p}:dead:<destination>          zset   dead letters: event id -> dead-lettered ms
    {relay}:done:<dest>:<minute>    string deliveries in that minute (for `relay status`)
    {relay}:health                  hash   destination -> why it is unhealthy (JSON)
    {p}:heads:<dest>                hash   contact digest -> its undelivered event that goes
                                           first (the only one with a stream entry);
                                           "#parked" -> how many wait behind heads
    {p}:order:<dest>:<contact>      list   that contact's later events, parked, in accepted order
    {relay}:idem:<key id>:<digest>  string the first answer to an Idempotency-Key (24 h)
    {relay}:hooks                   hash   hook id -> subscription JSON (with its secret)
    {relay}:hooks:changed           pubsub a subscription was added or deleted (cache invalidation)
    {relay}:hooks:last              hash   hook id -> its last notification's outcome (JSON:
                                           "at", "result", "status_code", "error", "notification")
    {relay}:workers                 zset   live workers: JSON {"id", "host", "pid"} -> last beat ms
    {relay}:console:<sha256 hex>    hash   one console session (digest of its cookie, never the
                                           cookie): key id, role, CSRF token, absolute expiry;
                                           EXPIRE = the idle timeout, renewed on each page

Outbound notifications are queued like deliveries, under the pseudo-destination
``_hooks`` (:data:`NOTIFICATIONS`, a name no configured destination can have):
each is a record ``{p}:evt:ntf_…`` in the partition of the event it tells of, with
its stream entry, retries, dead letters and attempts in that partition's keys above.

The Lua scripts (``relay/lua``) are given every key they touch, and use the names
below that they share with Python (fields, words, TTLs) from here (relay.scripts).
"""

from __future__ import annotations

import hashlib
from typing import Literal

from relay.ids import MAX_PARTITIONS, partition_of

__all__ = [
    "ATTEMPTS_FIELD_PREFIX",
    "ATTEMPT_RECORD_PREFIX",
    "CONSOLE_SESSION_IDLE_S",
    "CONSOLE_SESSION_MAX_S",
    "CONSUMER_GROUP",
    "DELIVERED_MINUTE_TTL_S",
    "ENTRY_CONTACT_FIELD",
    "ENTRY_EVENT_FIELD",
    "EVENT_DATA_FIELD",
    "HEALTH",
    "HOLDER_FIELD_PREFIX",
    "HOLD_UNTIL_FIELD_PREFIX",
    "HOOKS_CHANGED_CHANNEL",
    "HOOKS_INDEX",
    "HOOKS_LAST",
    "IDEMPOTENCY_PENDING_MS",
    "IDEMPOTENCY_TTL_S",
    "KEYS_CHANGED_CHANNEL",
    "KEYS_INDEX",
    "NOTIFICATIONS",
    "PARKED_FIELD",
    "PARTITIONS",
    "RETRIES_FIELD_PREFIX",
    "RETRY_CONTACT_SEP",
    "STATUS_FIELD_PREFIX",
    "WORKERS",
    "WORKER_BEAT_S",
    "WORKER_FORGET_S",
    "WORKER_LIVE_S",
    "console_session",
    "dead",
    "delivered_minute",
    "event",
    "events_index",
    "heads",
    "idempotency",
    "inflight",
    "key",
    "order",
    "partition_tag",
    "paused",
    "queue",
    "rate",
    "retries",
    "who",
]

_TAG = "{relay}"

#: hash: key id -> digest of every key ever created (revoked ones included).
KEYS_INDEX = f"{_TAG}:keys"
#: pub/sub channel: the digest of a key that was revoked or changed. Every API
#: process drops that key from its in-memory cache when it hears it.
KEYS_CHANGED_CHANNEL = f"{_TAG}:keys:changed"
#: string: the RELAY_PARTITIONS the data was written with (relay.partitions): set at the
#: first start, and a process started with another count refuses to start.
PARTITIONS = f"{_TAG}:partitions"
#: hash: hook id -> JSON of one REST-hook subscription.
HOOKS_INDEX = f"{_TAG}:hooks"
#: hash: hook id -> JSON of the outcome of the last attempt to notify that subscription
#: (written by relay/lua/settle.lua while the subscription exists; deleted with it).
HOOKS_LAST = f"{_TAG}:hooks:last"
#: pub/sub channel: a subscription was created or deleted; processes reload their list.
HOOKS_CHANGED_CHANNEL = f"{_TAG}:hooks:changed"
#: The pseudo-destination notifications are queued under (not a valid destination name).
NOTIFICATIONS = "_hooks"
#: Consumer group that every worker of every destination stream joins.
CONSUMER_GROUP = "workers"
#: A stream entry's field naming its event.
ENTRY_EVENT_FIELD = "e"
#: A stream entry's field naming its event's contact (the digest), present exactly when
#: the event heads that contact's order (see :func:`heads`): settling it lets the next go.
ENTRY_CONTACT_FIELD = "c"
#: Between a scheduled retry's event id and its contact, in its retry zset member.
RETRY_CONTACT_SEP = "/"
#: Field of a heads hash counting the events parked in the destination's lists
#: (contact fields are hex digests, so it cannot clash with one).
PARKED_FIELD = "#parked"

#: Field of an event hash holding the event's JSON (written once, never changed).
EVENT_DATA_FIELD = "data"
#: Prefix of an event hash's per-destination status fields: ``st:<destination>``.
STATUS_FIELD_PREFIX = "st:"
#: Prefix of an event hash's per-destination attempt counters: ``n:<destination>``.
ATTEMPTS_FIELD_PREFIX = "n:"
#: Prefix of an event hash's attempt records: ``a:<destination>:<n>`` (JSON), n from 1.
#: In the event's own hash, they cost no key of their own and expire with it.
ATTEMPT_RECORD_PREFIX = "a:"
#: Prefix of an event hash's per-destination count of retryable failures since its
#: schedule began: ``r:<destination>``. A replay deletes it (a fresh schedule), while
#: ``n:`` and the attempt records go on; rejected credentials do not count here.
RETRIES_FIELD_PREFIX = "r:"
#: Prefix of an event hash's per-destination holder: ``h:<destination>``, the request it
#: is being sent in (set with the "delivering" mark), so that a take refuses a copy while
#: that holder's hold lives (``HOLD_UNTIL_FIELD_PREFIX``), and only that holder settles it.
HOLDER_FIELD_PREFIX = "h:"
#: Prefix of an event hash's per-destination hold: ``u:<destination>``, until when (unix
#: ms) its holder holds it (set with the holder, renewed while its worker keeps it, gone
#: at settle). A take refuses the event to another holder until then, and no longer: a
#: holder whose worker died lets go by itself. The global cap on requests under way is
#: :func:`inflight`'s, in the control slot.
HOLD_UNTIL_FIELD_PREFIX = "u:"
#: hash: destination -> JSON {"problem", "since"} while its upstream refuses our credentials.
HEALTH = f"{_TAG}:health"
#: A repeated Idempotency-Key within this long gets the first answer back.
IDEMPOTENCY_TTL_S = 24 * 3600
#: While the first request with a key is being handled, its marker lives this long:
#: if that process dies, a retry may go ahead after it (the answer was never sent).
IDEMPOTENCY_PENDING_MS = 30_000
#: zset: every worker process's heartbeat, JSON {"id", "host", "pid"} -> ms of its last beat.
WORKERS = f"{_TAG}:workers"
#: A worker beats this often; one not heard from in WORKER_LIVE_S is not live (three
#: beats missed); one silent for WORKER_FORGET_S is dropped from the set by the next beat.
WORKER_BEAT_S = 5.0
WORKER_LIVE_S = 15.0
WORKER_FORGET_S = 24 * 3600
#: Per-minute delivery counters live two hours: `relay status` sums the last 60 minutes.
DELIVERED_MINUTE_TTL_S = 2 * 3600
#: A console session unused this long ends (its key's EXPIRE, renewed on every request).
CONSOLE_SESSION_IDLE_S = 8 * 3600
#: However busy, a console session ends this long after its sign-in (a working day and a
#: half), so a stolen session cookie is worth a bounded time.
CONSOLE_SESSION_MAX_S = 12 * 3600


def console_session(digest: str) -> str:
    """Hash of one console session, found by the SHA-256 hex digest of its cookie's value."""
    return f"{_TAG}:console:{digest}"


def partition_tag(partition: int) -> str:
    """The hash tag of one partition's keys, braces included."""
    return _TAGS[partition]


#: Every partition's tag, made once: the key functions below index it in place.
_TAGS = tuple(f"{{relay:{p}}}" for p in range(MAX_PARTITIONS))


def events_index(partition: int) -> str:
    """Zset of one partition's event ids by received ms (listings merge the partitions);
    trimmed to the retention by the enqueue script."""
    return f"{_TAGS[partition]}:events"


def retries(destination: str, partition: int) -> str:
    """Zset of a destination's scheduled retries (event id, or event id
    ``RETRY_CONTACT_SEP`` contact for the head of a contact's order -> due ms); moved back
    to the stream when due, by a script that removes and re-adds in one step."""
    return f"{_TAGS[partition]}:retry:{destination}"


def dead(destination: str, partition: int) -> str:
    """Zset of a destination's dead letters in one partition (event id -> ms); kept
    until replayed."""
    return f"{_TAGS[partition]}:dead:{destination}"


def delivered_minute(destination: str, minute: int) -> str:
    """Counter of deliveries to a destination in one minute (unix time // 60)."""
    return f"{_TAG}:done:{destination}:{minute}"


def key(digest: str) -> str:
    """Hash of one API key, found by the SHA-256 hex digest of the presented key."""
    return f"{_TAG}:key:{digest}"


def who(partition: int, kind: Literal["email", "phone"], value: str) -> str:
    """Zset of the events about one email or phone (as normalized at ingest), event id ->
    received ms, for search (``EventStore.find``).

    Named by a digest (the first 80 bits of SHA-256 of kind and value), so no lead data
    sits in key names (``SCAN``, ``MONITOR``, slow logs); a search checks each event's own
    email or phone, so two values sharing a digest would never mix. Written in the
    enqueue script with the event: members older than the retention are trimmed there,
    and the key expires a retention after its newest event, as that event's record does.
    One per partition: an event with an email and a phone is in the partition of its
    email, so a search by phone reads every partition's.
    """
    digest = hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()[:20]
    return f"{_TAGS[partition]}:who:{digest}"


def event(event_id: str) -> str:
    """Hash of one event (or notification), in the partition its id names; expires after
    ``Settings.retention_s``."""
    return f"{_TAGS[partition_of(event_id)]}:evt:{event_id}"


def queue(destination: str, partition: int) -> str:
    """Stream of deliveries pending for one destination in one partition."""
    return f"{_TAGS[partition]}:q:{destination}"


def rate(destination: str) -> str:
    """Zset of one destination's requests of the last period (score: ms of the answer;
    of admission plus the hold while a request is in flight, see relay.ratelimit).

    Expires when its newest entry has aged out, so an idle destination leaves nothing.
    """
    return f"{_TAG}:rate:{destination}"


def paused(destination: str) -> str:
    """Marker that one destination is paused (an upstream 429's Retry-After).

    Its PX expiry is the pause itself: when it is gone, sending resumes.
    """
    return f"{_TAG}:paused:{destination}"


def inflight(destination: str) -> str:
    """Zset of the requests under way to one destination (holder -> lease expiry ms),
    at most its ``max_in_flight``. A lease lives the destination's visibility window,
    renewed while its worker lives; a crashed worker's lapses, and the key expires with
    the last lease."""
    return f"{_TAG}:inflight:{destination}"


def heads(destination: str, partition: int) -> str:
    """Hash of the contacts with an undelivered event to one destination: contact digest
    (of the email, else phone) -> the event that goes first, the only one of that contact
    with a stream entry; and :data:`PARKED_FIELD` -> how many wait behind heads.

    A contact's events thus reach the upstream in the order they were accepted: the next
    one gets its stream entry only when its head is settled delivered or dead, in the
    script that settles it (relay/lua/settle.lua), so a contact with a thousand queued
    events moves as fast as the upstream answers, with nothing polling for it. A
    contact's events all share one partition (relay.partitions)."""
    return f"{_TAGS[partition]}:heads:{destination}"


def order(destination: str, partition: int, contact: str) -> str:
    """List of one contact's events after its head (see :func:`heads`), oldest first,
    parked: each gets its stream entry when the one before it is settled."""
    return f"{_TAGS[partition]}:order:{destination}:{contact}"


def idempotency(key_id: str, idempotency_key: str) -> str:
    """The first answer given to ``idempotency_key`` for one API key (digest of the header).

    The header's bytes are digested as sent: aiohttp keeps bytes that are not UTF-8
    as surrogates, and they are a key like any other."""
    digest = hashlib.sha256(idempotency_key.encode(errors="surrogateescape")).hexdigest()[:32]
    return f"{_TAG}:idem:{key_id}:{digest}"
