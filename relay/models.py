"""Wire and queue models: what clients send, what relay stores, what it answers.

Normalized records (:class:`Contact`, :class:`Lead`) are built by
:mod:`relay.normalize`; everything else is built by the store and the API.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, JsonValue

__all__ = [
    "CANONICAL_FIELDS",
    "DESTINATIONS_KEY",
    "HOOK_TOPICS",
    "MAX_TRACK_EVENTS",
    "SCOPES",
    "ApiKeyInfo",
    "BatchAccepted",
    "BatchRejected",
    "BatchResult",
    "Contact",
    "CreatedHook",
    "CreatedKey",
    "DeadLetter",
    "DeliveryStatus",
    "DestinationView",
    "EventKind",
    "EventView",
    "FieldInfo",
    "FieldsDestination",
    "FieldsInfo",
    "HookCreate",
    "HookInfo",
    "HookOutcome",
    "HookTopic",
    "KeyCreate",
    "Lead",
    "Me",
    "Notification",
    "Problem",
    "ProblemError",
    "Queued",
    "TrackEvent",
    "TrackEventField",
    "TrackEventsInfo",
    "destination_name_schema",
]

EventKind = Literal["contact", "lead"]
KeyMode = Literal["live", "test"]

#: Every scope a key may carry.
SCOPES: tuple[str, ...] = ("write:contacts", "write:leads", "read:events", "webhooks", "admin")

#: In a JSON schema, marks a string whose values are configured destinations: /openapi.json
#: fills in its ``enum`` from relay.toml (``"*"``: every one, else those taking that type).
DESTINATIONS_KEY = "x-relay-destinations"


def destination_name_schema(kind: str = "*", *, empty: bool = False) -> dict[str, Any]:
    """A destination's name; ``empty`` also admits "" (which means: the default)."""
    return {"type": "string", DESTINATIONS_KEY: kind, "enum": [""] if empty else []}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


#: Durations (30d, 12h, 2w) and instants after 2100: never in the past.
_EXPIRES = (
    r"^([1-9][0-9]{0,3}[smhdw]|2[1-9][0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z)$"
)
_RATE_LIMIT = r"^[1-9][0-9]{0,5}/([1-9][0-9]{0,3})?(s|m|h|d)$"
# An http(s) URL with a host and no credentials (relay.targets says which hosts may be used).
# Wide enough for the URLs tools really subscribe (n8n's: a hyphenated host, a 5-digit
# port, a 36-character id), narrow enough that every URL it admits is a valid one.
_LABEL = r"[a-z0-9]([a-z0-9-]{0,28}[a-z0-9])?"
_PORT = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_TARGET_URL = (
    rf"^https?://{_LABEL}(\.{_LABEL}){{0,4}}(:{_PORT})?"
    r"(/[A-Za-z0-9._~-]{0,64}){0,8}$"
)

#: Canonical field names of a normalized contact or lead, in display order.
CANONICAL_FIELDS: tuple[str, ...] = (
    "email",
    "phone",
    "first_name",
    "last_name",
    "name",
    "company",
    "job_title",
    "title",
    "address",
    "city",
    "state",
    "postcode",
    "country",
    "website",
)


#: Track events one contact or lead may carry (each is one upstream request, under the
#: destination's rate limit and the request's lease).
MAX_TRACK_EVENTS = 20


class TrackEvent(BaseModel):
    """One behaviour to record for the contact (ConveYour ``/api/analytics/track``).

    ``timestamp`` is kept as given: ISO 8601 text or epoch seconds (checked at ingest).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: str = Field(description="Event name, e.g. applied")
    properties: dict[str, JsonValue] = Field(default_factory=dict)
    timestamp: str | int | float | None = Field(
        default=None, description="ISO 8601 or epoch seconds"
    )


class Contact(BaseModel):
    """A normalized contact: canonical fields plus every other field as a custom trait.

    ``email`` is lower-cased and checked, ``phone`` is E.164; at least one of
    the two is present. Custom traits keep the client's names and values.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: str | None = None
    phone: str | None = Field(default=None, description="E.164, e.g. +447123456789")
    first_name: str | None = None
    last_name: str | None = None
    name: str | None = Field(default=None, description="Full name when sent as one field")
    company: str | None = None
    job_title: str | None = None
    title: str | None = Field(default=None, description="Salutation, e.g. Mr, Dr")
    address: str | None = None
    city: str | None = None
    state: str | None = None
    postcode: str | None = None
    country: str | None = None
    website: str | None = None
    traits: dict[str, JsonValue] = Field(default_factory=dict, description="Custom fields")
    events: list[TrackEvent] = Field(
        default_factory=list,
        max_length=MAX_TRACK_EVENTS,
        description="Track events, sent to ConveYour after the contact's identify, in order",
    )


class Lead(Contact):
    """A normalized lead: the same fields as a contact, routed to lead destinations."""


class DeliveryStatus(StrEnum):
    """Where one event stands with one destination."""

    pending = "pending"
    delivering = "delivering"
    retrying = "retrying"
    delivered = "delivered"
    dead = "dead"
    #: Sent with a test-mode key: stored and shown, never sent upstream.
    test = "test"


# --- answers ----------------------------------------------------------------


class Queued(BaseModel):
    """202 answer to one event: stored in Redis and queued for its destinations."""

    status: Literal["queued"] = "queued"
    id: str = Field(description="Event id, evt_ followed by 26 time-sortable characters")
    destinations: list[str]


class BatchAccepted(BaseModel):
    index: int
    id: str


class ProblemError(BaseModel):
    loc: list[str | int]
    msg: str


class BatchRejected(BaseModel):
    index: int
    errors: list[ProblemError]


class BatchResult(BaseModel):
    """Answer to a batch: 202 all queued, 207 some rejected (422 none queued is a Problem)."""

    status: Literal["queued", "partial", "rejected"]
    accepted: list[BatchAccepted]
    rejected: list[BatchRejected]


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every error answer."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    errors: list[ProblemError] = Field(default_factory=list)


class DestinationView(BaseModel):
    name: str
    status: DeliveryStatus
    attempts: list[dict[str, Any]] = Field(default_factory=list)


class EventView(BaseModel):
    """One stored event as ``GET /v1/events/{id}`` and ``relay events show`` give it."""

    id: str
    type: EventKind
    status: str = Field(
        description="pending, delivering, retrying, delivered, dead, or no_destination"
    )
    mode: KeyMode
    received_at: datetime
    key_id: str
    request_id: str | None = Field(
        default=None,
        description="X-Request-ID of the request that sent it (the client's, or one relay "
        "made); log lines about the request and the event's delivery attempts name it",
    )
    payload: Contact
    destinations: list[DestinationView]


# --- field metadata (GET /v1/fields) -----------------------------------------


class FieldInfo(BaseModel):
    """One canonical field as integrations (Zapier's dynamic fields, n8n's options) show it."""

    name: str
    label: str
    type: Literal["email", "phone", "string"] = Field(
        description="email (lower-cased, checked), phone (stored as E.164), or string"
    )
    required: bool = Field(description="False for every field: see require_one_of")
    aliases: list[str] = Field(
        description="Other names ingest takes for it (compared ignoring case and with "
        "camelCase, spaces and dashes read as underscores)"
    )


class FieldsDestination(BaseModel):
    """A destination the calling key may send this type to (never its settings)."""

    name: str
    type: str
    events: list[EventKind]


class TrackEventField(BaseModel):
    """One field of a track event (an item of ``events``)."""

    name: str
    label: str
    type: Literal["string", "object", "datetime"] = Field(
        description="string; object (names to values); datetime (ISO 8601 or epoch seconds)"
    )
    required: bool


class TrackEventsInfo(BaseModel):
    """The ``events`` list an item may carry, as integrations offer it (line items)."""

    name: str = Field(description="The item's key for the list: events")
    label: str
    max_items: int
    fields: list[TrackEventField] = Field(description="The fields of each item of the list")
    destinations: list[str] = Field(
        description="Those of ``destinations`` that track them (ConveYour: one track call "
        "each); a webhook gets them in the payload it is sent, Convertr never sees them"
    )


class FieldsInfo(BaseModel):
    """``GET /v1/fields``: what ingest understands for one event type, for this key."""

    type: EventKind
    fields: list[FieldInfo]
    require_one_of: list[str] = Field(description="At least one of these must be given")
    destinations: list[FieldsDestination]
    track_events: TrackEventsInfo = Field(
        description="A list of things the contact did, each sent to ConveYour after its identify"
    )


# --- keys ------------------------------------------------------------------


class ApiKeyInfo(BaseModel):
    """A key as lists show it: never the key itself."""

    id: str
    name: str
    prefix: str
    scopes: list[str]
    destinations: list[str] = Field(description="Destinations the key may use; empty = all")
    expires_at: datetime | None
    mode: KeyMode
    rate_limit: str | None = None
    signing: bool = Field(default=False, description="Requests must be signed (Standard Webhooks)")
    created_at: datetime
    revoked_at: datetime | None = None


class CreatedKey(BaseModel):
    """A new key, the only time its secret is shown."""

    id: str
    key: str
    prefix: str
    name: str
    scopes: list[str]
    destinations: list[str]
    expires_at: datetime | None
    mode: KeyMode
    signing_secret: str | None = Field(
        default=None,
        description="whsec_ secret to sign requests with (only for signing keys)",
        exclude_if=lambda v: v is None,
    )


class KeyCreate(BaseModel):
    """Body of ``POST /v1/keys``."""

    model_config = ConfigDict(extra="forbid")

    # The schemas say what the checks in relay.apikeys accept (a subset where they cannot
    # say it all), so that a client generated from /openapi.json is never refused.
    name: str = Field(min_length=1, max_length=100, json_schema_extra={"pattern": "[A-Za-z0-9]"})
    scopes: list[str] = Field(
        min_length=1, json_schema_extra={"items": {"type": "string", "enum": [*SCOPES]}}
    )
    expires: str | None = Field(
        default=None,
        description="A duration such as 30d, 12h, 2w, or an ISO 8601 instant in the future",
        json_schema_extra=_nullable({"type": "string", "pattern": _EXPIRES}),
    )
    destinations: list[str] = Field(
        default_factory=list,
        description="Destinations the key may use (configured ones); empty: all",
        json_schema_extra={"items": destination_name_schema()},
    )
    rate_limit: str | None = Field(
        default=None,
        description="COUNT/[N]UNIT, unit s, m, h or d: e.g. 100/m, 2000/5m",
        json_schema_extra=_nullable({"type": "string", "pattern": _RATE_LIMIT}),
    )
    mode: KeyMode = "live"
    signing: bool = Field(
        default=False, description="Require Standard Webhooks signatures; returns a whsec_ secret"
    )


class Me(BaseModel):
    """``GET /v1/me``: who the calling key is (Zapier's connection test)."""

    id: str
    name: str
    prefix: str
    scopes: list[str]
    destinations: list[str]
    mode: KeyMode


# --- hooks (Zapier REST hooks) --------------------------------------------------

#: What a subscription can be notified of.
HookTopic = Literal[
    "contact.received", "lead.received", "contact.delivered", "lead.delivered", "event.failed"
]
HOOK_TOPICS: tuple[str, ...] = get_args(HookTopic)


class HookCreate(BaseModel):
    """Body of ``POST /v1/hooks`` (what a Zapier app's subscribe step sends)."""

    model_config = ConfigDict(extra="forbid")

    target_url: str = Field(
        min_length=1,
        max_length=2048,
        description="Public http(s) URL notifications go to: loopback, private and "
        "link-local hosts (or names resolving to them) are refused unless relay.toml "
        "allows private targets",
        json_schema_extra={"pattern": _TARGET_URL},
    )
    event: HookTopic


class _Hook(BaseModel):
    id: str
    event: HookTopic
    target_url: str
    created_at: datetime


class HookOutcome(BaseModel):
    """What the last attempt to notify a subscription came to."""

    at: datetime = Field(description="When the subscriber answered (or the attempt failed)")
    result: Literal["delivered", "retrying", "dead"] = Field(
        description="delivered (2xx), retrying (will be sent again), dead (given up)"
    )
    status_code: int | None = Field(
        default=None, description="The subscriber's HTTP status; null when none came"
    )
    error: str | None = Field(
        default=None, description="Error class when there was one (a timeout, a refused target)"
    )
    notification: str = Field(description="The notification's id (its webhook-id header)")


class HookInfo(_Hook):
    """A subscription as lists show it (never its secret)."""

    last_notification: HookOutcome | None = Field(
        default=None, description="The last notification's outcome; null before the first"
    )


class CreatedHook(_Hook):
    """A new subscription, the only time its secret is shown."""

    secret: str = Field(
        description="whsec_ secret: verify each notification's webhook-signature with it"
    )


class Notification(EventView):
    """The JSON body of an outbound notification: the event as the polling list shows it,
    with what happened."""

    event: HookTopic = Field(description="What happened (the subscription's event)")
    test: bool = Field(description="True for events sent with a test-mode key")
    destination: str | None = Field(
        default=None, description="For *.delivered and event.failed: which destination"
    )


# --- dead letters --------------------------------------------------------------


class DeadLetter(BaseModel):
    """A dead letter as ``GET /v1/dead-letters`` and ``relay dlq list --json`` give it:
    what died where, and why (its last attempt; null where that record is gone with the
    event, past its retention)."""

    destination: str
    event_id: str
    dead_at: float = Field(description="Unix seconds when it was dead-lettered")
    attempts: int = Field(description="Attempts made to this destination")
    status_code: int | None = Field(
        description="HTTP status of the last attempt; null when no answer came"
    )
    error: str | None = Field(
        description="Error class of the last attempt (http_503, TimeoutError, ...)"
    )
    excerpt: str | None = Field(
        description="The start of the upstream's last answer (at most 500 characters, "
        "the destination's secrets replaced by ***)"
    )
    note: str | None = Field(
        default=None, description="relay's note on the last attempt (e.g. no answer within 10 s)"
    )
