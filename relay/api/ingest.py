"""``POST /v1/contacts`` and ``POST /v1/leads``: validate, normalize, route, enqueue.

The answer is sent only after Redis has acknowledged the write of every
accepted item. A bad item in a batch never holds back the good ones.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from relay import metrics
from relay.api.body import read_items
from relay.api.body_schema import form_body, json_body
from relay.api.bounds import (
    MAX_BODY_VALUES,
    MAX_FORM_FIELDS,
    MAX_ITEM_DEPTH,
    MAX_ITEM_KEYS,
    MAX_ITEM_VALUES,
    Slicer,
)
from relay.api.health import no_delivery
from relay.api.idempotency import MAX_KEY_LENGTH, Claim, claim, idempotency_key, release
from relay.api.problems import problem
from relay.api.routing import QueryParam, routes
from relay.api.state import API_KEY, EVENTS, HOOKS, REDIS, REQUEST_ID, SETTINGS, TRACING
from relay.apikeys import KeyRecord
from relay.errors import FieldError, Forbidden, NotReplicated, ValidationFailed
from relay.models import (
    BatchAccepted,
    BatchRejected,
    BatchResult,
    EventKind,
    Problem,
    ProblemError,
    Queued,
    destination_name_schema,
)
from relay.normalize import normalize_item
from relay.replicas import Replicas
from relay.settings import Settings
from relay.store import NewEvent, contact_key

__all__ = ["choose_destinations"]

_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


def _destination_param(kind: EventKind) -> QueryParam:
    return QueryParam(
        "destination",
        f"Send only to these destinations (repeat or comma-separate; empty: the default): "
        f"every enabled destination taking {kind}s that the key may use",
        destination_name_schema(kind, empty=True),
        repeated=True,
    )


_IDEMPOTENCY_HEADER = QueryParam(
    "Idempotency-Key",
    "A repeat within 24 h (same API key) gets the first answer and queues nothing; "
    "the same key with another body is 422. webhook-id is read the same way.",
    # Non-blank: at least one visible character.
    {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": "[!-~]"},
    location="header",
)
#: The default batch limit (RELAY_MAX_BATCH).
_MAX_BATCH: int = Settings.model_fields["max_batch"].default
_RESPONSES: dict[int, tuple[str, Any]] = {
    202: (
        "Queued: one event, or a batch whose every item was queued",
        Queued | BatchResult,
    ),
    207: ("A batch of which some items were rejected (the rest are queued)", BatchResult),
    400: ("Malformed JSON or form", Problem),
    401: ("Missing, unknown, expired or revoked key", Problem),
    403: ("The key lacks the scope, or may not use a named destination", Problem),
    408: ("The body did not all arrive within RELAY_BODY_TIMEOUT_S (then closed)", Problem),
    409: ("A request with the same Idempotency-Key is still being handled", Problem),
    413: (
        "Body over the size limit, a batch over the item limit, a JSON body over "
        f"{MAX_BODY_VALUES} values in all, or a form over {MAX_FORM_FIELDS} fields",
        Problem,
    ),
    415: ("Unsupported Content-Type", Problem),
    422: (
        "Nothing valid to queue (for a batch: with accepted and rejected); also an item over "
        f"{MAX_ITEM_KEYS} keys in one object, {MAX_ITEM_DEPTH} levels or {MAX_ITEM_VALUES} "
        "values, and any value relay cannot keep exactly (NUL, an integer beyond 64 bits, a "
        "number a 64-bit float cannot hold, bytes not valid in the charset, a name sent both "
        "as a value and as fields): each named in errors",
        Problem,
    ),
    429: ("The key's own rate limit is spent (Retry-After, RateLimit-*)", Problem),
    503: (
        "Redis cannot take the event now, fewer replicas than RELAY_REDIS_MIN_REPLICAS "
        "confirmed it in time, or the delivery worker of `relay serve` is restarting; "
        "nothing is reported as queued, retry (with the same Idempotency-Key: never a "
        "duplicate)",
        Problem,
    ),
}


def choose_destinations(
    settings: Settings, kind: EventKind, key: KeyRecord, requested: list[str]
) -> tuple[str, ...]:
    """Where an event of this kind goes: the named destinations, else every one that fits."""
    if not requested:
        return tuple(d for d in settings.destinations_for(kind) if key.may_use(d))
    errors: list[FieldError] = []
    for name in requested:
        dest = settings.destinations.get(name)
        if dest is None:
            known = ", ".join(settings.destinations) or "none are configured"
            errors.append(
                {
                    "loc": ["query", "destination"],
                    "msg": f"unknown destination {name!r} (configured: {known})",
                }
            )
        elif not key.may_use(name):
            raise Forbidden(f"API key {key.prefix}… may not send to destination {name!r}")
        elif kind not in dest.events or not dest.enabled:
            why = "is disabled" if not dest.enabled else f"does not take {kind}s"
            errors.append({"loc": ["query", "destination"], "msg": f"destination {name!r} {why}"})
    if errors:
        raise ValidationFailed(errors[0]["msg"], errors=errors)
    return tuple(dict.fromkeys(requested))


async def _ingest(request: web.Request, kind: EventKind) -> web.Response:
    if (refused := no_delivery(request.app)) is not None:
        return refused  # never a 202 with no live delivery behind it
    idem = idempotency_key(request)
    if idem is None:
        return await _accept(request, kind, None)
    replicas = Replicas.of(request.app[SETTINGS])
    redis, body = request.app[REDIS], await request.read()
    got = await claim(redis, request[API_KEY].id, idem, body, replicas=replicas)
    if isinstance(got, web.Response):
        return got  # a repeat: the first answer, byte for byte
    try:
        response = await _accept(request, kind, got)
    except NotReplicated:
        # 503, but the events and their answer are on the master: keep the key, so a
        # retry gets that answer once replicas confirm it, never a second event.
        raise
    except BaseException:
        await release(request.app[REDIS], got)
        raise
    if response.status >= 300:
        await release(request.app[REDIS], got)  # nothing was queued: nothing to repeat
    return response


async def _accept(request: web.Request, kind: EventKind, claimed: Claim | None) -> web.Response:
    settings = request.app[SETTINGS]
    key = request[API_KEY]
    requested = [
        name.strip()
        for value in request.query.getall("destination", [])
        for name in value.split(",")
        if name.strip()
    ]
    destinations = choose_destinations(settings, kind, key, requested)
    items, is_batch = await read_items(request, max_batch=settings.max_batch)

    received_at = datetime.now(UTC)
    tracing = request.app[TRACING]
    traceparent = tracing.traceparent()  # the request's span: deliveries link to it
    events: list[NewEvent] = []
    accepted: list[BatchAccepted] = []  # only for a batch's answer
    rejected: list[BatchRejected] = []
    slicer = Slicer()  # a big batch lets other requests in between its items
    for index, raw in enumerate(items):
        if index:
            await slicer.tick()
        try:
            if isinstance(raw, ValidationFailed):
                raise raw  # out of bounds (relay.api.bounds): never normalized
            record = normalize_item(raw, kind=kind, default_region=settings.default_region)
        except ValidationFailed as exc:
            where: list[str | int] = ["body", index] if is_batch else ["body"]
            rejected.append(
                BatchRejected(
                    index=index,
                    errors=[ProblemError(loc=where + e["loc"], msg=e["msg"]) for e in exc.errors],
                )
            )
            continue
        contact = contact_key(record)
        event_id = request.app[EVENTS].new_id(contact)
        events.append(
            NewEvent(
                id=event_id,
                type=kind,
                mode=key.mode,
                key_id=key.id,
                received_at=received_at,
                payload=record,
                destinations=destinations,
                request_id=request[REQUEST_ID],
                traceparent=traceparent,
                contact=contact,
            )
        )
        if is_batch:
            accepted.append(BatchAccepted(index=index, id=event_id))

    if not events:
        metrics.ingested(kind, key.mode, accepted=0, rejected=len(rejected))
        errors = [e for r in rejected for e in r.errors]
        if not is_batch:
            return _invalid(f"the {kind} is invalid: " + _summary(errors), errors)
        return _invalid(
            f"none of the {len(items)} items was queued: " + _summary(errors),
            errors,
            accepted=[],
            rejected=[r.model_dump() for r in rejected],
        )
    if is_batch:
        result = BatchResult(
            status="partial" if rejected else "queued", accepted=accepted, rejected=rejected
        )
        status, body = (207 if rejected else 202), orjson.dumps(result.model_dump())
    else:
        # What Queued.model_dump() gives, without building the model on the hot path.
        answer = {"status": "queued", "id": events[0].id, "destinations": destinations}
        status, body = 202, orjson.dumps(answer)
    remember = None if claimed is None else (claimed.redis_key, claimed.answer(status, body))
    subscribers = await request.app[HOOKS].matching(f"{kind}.received")
    with tracing.enqueue(events, destinations):
        await request.app[EVENTS].enqueue(events, remember=remember, subscribers=subscribers)
    metrics.ingested(kind, key.mode, accepted=len(events), rejected=len(rejected))
    return web.Response(body=body, status=status, content_type="application/json")


def _summary(errors: list[ProblemError]) -> str:
    first = errors[0]
    where = ".".join(str(p) for p in first.loc[1:]) or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.msg}{more}"


def _invalid(detail: str, errors: list[ProblemError], **extra: Any) -> web.Response:
    return problem(
        422,
        ValidationFailed.title,
        detail,
        slug=ValidationFailed.slug,
        errors=[{"loc": e.loc, "msg": e.msg} for e in errors],
        **extra,
    )


@routes.route(
    "POST",
    "/v1/contacts",
    summary="Accept a contact or a batch of contacts (ConveYour identify)",
    scope="write:contacts",
    body=json_body(max_batch=_MAX_BATCH),
    form_body=form_body(),
    body_media_types=("application/json", *_FORMS),
    responses=_RESPONSES,
    query=(_destination_param("contact"), _IDEMPOTENCY_HEADER),
    tag="ingest",
)
async def post_contacts(request: web.Request) -> web.Response:
    return await _ingest(request, "contact")


@routes.route(
    "POST",
    "/v1/leads",
    summary="Accept a lead or a batch of leads (Convertr, and ConveYour when routed)",
    scope="write:leads",
    body=json_body(max_batch=_MAX_BATCH),
    form_body=form_body(),
    body_media_types=("application/json", *_FORMS),
    responses=_RESPONSES,
    query=(_destination_param("lead"), _IDEMPOTENCY_HEADER),
    tag="ingest",
)
async def post_leads(request: web.Request) -> web.Response:
    return await _ingest(request, "lead")
