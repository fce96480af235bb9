"""Prometheus metrics: what the API and the workers count, and the text ``/metrics`` serves.

Counters and histograms are kept by the process that counts (prometheus-client). Under
``relay serve --workers N`` each process writes them to files of its own in a directory
made for the run (prometheus-client's multiprocess mode, :func:`shared_between_processes`),
so a scrape of any of them shows the sum of all. Queue gauges are not counted anywhere:
:func:`exposition` reads them from Redis at scrape time (relay.backlog), so every
process, API or worker, reports the same values.

Recording is on the hot path: the label children are looked up once and kept.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from pydantic import SecretStr
from redis.asyncio import Redis

from relay import __version__
from relay.backlog import Backlog, Overview, overview
from relay.errors import StoreUnavailable
from relay.models import DeliveryStatus
from relay.settings import Settings

if TYPE_CHECKING:  # the API imports this module too, and never the adapters
    from relay.adapters.base import Attempt
    from relay.queue import Result

__all__ = [
    "CONTENT_TYPE",
    "UNMATCHED",
    "authorized",
    "exposition",
    "http_request",
    "ingested",
    "settled",
    "shared_between_processes",
]

#: What ``/metrics`` answers with: the Prometheus text format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The ``route`` of requests that matched no route (404, 405, malformed requests).
UNMATCHED = "unmatched"
#: Where prometheus-client's multiprocess mode keeps each process's files.
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Methods counted under their own name; any other is "other" (label values stay bounded).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

#: An upstream answers in milliseconds, or within its timeout_s (at most 120 s).
_UPSTREAM_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
#: From the 202 to the upstream's success: milliseconds when all is well, minutes behind a
#: rate limit, hours through the retry schedule (its last step waits 24 h).
_LATENCY_BUCKETS_S = (
    *(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    *(60, 300, 900, 3600, 3 * 3600, 12 * 3600, 86400, 3 * 86400),
)

# A *_created series per label set doubles what Prometheus stores, and multiprocess mode
# has none: the same text whether one process answers or several.
disable_created_metrics()  # type: ignore[no-untyped-call]
#: This process's counters and histograms (not prometheus-client's global registry).
_REGISTRY = CollectorRegistry()
_HTTP = Counter(
    "relay_http_requests",
    "HTTP requests answered, by route template (unmatched: no route), method and status",
    ["route", "method", "status"],
    registry=_REGISTRY,
)
_ACCEPTED = Counter(
    "relay_events_accepted",
    "Events queued, one per event (a batch counts its items; a repeated Idempotency-Key "
    "none), by event type and key mode (live, test)",
    ["type", "mode"],
    registry=_REGISTRY,
)
_REJECTED = Counter(
    "relay_events_rejected",
    "Items refused as invalid (422 for a lone event, a batch's rejected items); a request "
    "refused as a whole (400, 401, 413, 415) is counted only in relay_http_requests_total",
    ["type"],
    registry=_REGISTRY,
)
_DELIVERIES = Counter(
    "relay_deliveries",
    "Delivery attempts settled, by destination (_hooks: notifications) and outcome: "
    "delivered, retry (scheduled), dead (dead-lettered), credentials (refused by the "
    "upstream; retried on the long schedule)",
    ["destination", "outcome"],
    registry=_REGISTRY,
)
_UPSTREAM = Histogram(
    "relay_upstream_request_seconds",
    "Duration of each request to an upstream (a ConveYour batch is one; an identify and its"
    " track calls are one), answered or not",
    ["destination"],
    buckets=_UPSTREAM_BUCKETS_S,
    registry=_REGISTRY,
)
_LATENCY = Histogram(
    "relay_event_delivery_latency_seconds",
    "From the 202 to the upstream's success answer, retries included: from the time the "
    "event was written to Redis (stored in the event at enqueue; the 202 follows within "
    "a millisecond); for _hooks, from the time the notification was queued",
    ["destination"],
    buckets=_LATENCY_BUCKETS_S,
    registry=_REGISTRY,
)

#: Label children by label values, looked up once (``labels()`` costs microseconds);
#: requests' by (route, method, status) as given, the one lookup of every request.
_children: dict[tuple[object, ...], Any] = {}
_requests: dict[tuple[str | None, str, int], Any] = {}
#: The directory of ``relay serve --workers N``'s processes, while they run.
_shared: Path | None = None


def _child(metric: Counter | Histogram, *labels: str) -> Any:
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def http_request(route: str | None, method: str, status: int) -> None:
    """Count one answered request; ``route`` is the route's template, None: unmatched."""
    if method not in _METHODS:
        method = "other"
    key = (route, method, status)
    child = _requests.get(key)
    if child is None:
        child = _requests[key] = _HTTP.labels(route or UNMATCHED, method, str(status))
    child.inc()


def ingested(kind: str, mode: str, *, accepted: int, rejected: int) -> None:
    """Count an ingest request's queued events and refused items."""
    if accepted:
        _child(_ACCEPTED, kind, mode).inc(accepted)
    if rejected:
        _child(_REJECTED, kind).inc(rejected)


def settled(
    destination: str,
    results: Sequence[Result],
    words: Sequence[str],
    events: Sequence[dict[str, Any]],
    attempts: Sequence[Attempt],
) -> None:
    """Count what one settle settled (``words``: settle's answer for each result; only
    "settled" counts, so an event is counted once whichever worker settles it), the
    request's duration, and the latency of each event delivered.

    ``events`` and ``attempts`` are the request's, in the order of ``results``."""
    for attempt in {id(a): a for a in attempts}.values():  # a batch's events share one
        if attempt.duration_ms > 0:  # 0: refused before anything was sent
            _child(_UPSTREAM, destination).observe(attempt.duration_ms / 1000)
    for result, word, event in zip(results, words, events, strict=True):
        if word != "settled":
            continue
        _child(_DELIVERIES, destination, _outcome(result)).inc()
        if result.status is DeliveryStatus.delivered:
            since_s = _accepted_s(event)
            if since_s is not None:
                answered_s: float = orjson.loads(result.record)["at"]
                _child(_LATENCY, destination).observe(max(0.0, answered_s - since_s))


def _outcome(result: Result) -> str:
    if result.status is DeliveryStatus.retrying:
        return "retry" if result.spends_step else "credentials"
    return "delivered" if result.status is DeliveryStatus.delivered else "dead"


def _accepted_s(event: dict[str, Any]) -> float | None:
    """When the event was written to Redis (``accepted_ms``, relay.store), or when a
    notification was queued (``created_at``); None for events stored before either."""
    if (accepted_ms := event.get("accepted_ms")) is not None:
        return float(accepted_ms) / 1000
    if (created := event.get("created_at")) is not None:
        return datetime.fromisoformat(created).timestamp()
    return None


def authorized(authorization: str | None, token: SecretStr | None) -> bool:
    """Whether ``/metrics`` may answer: always without a token, else only to
    ``Authorization: Bearer <token>`` (compared in constant time)."""
    if token is None:
        return True
    scheme, _, presented = (authorization or "").partition(" ")
    expected = token.get_secret_value().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), expected)


@contextlib.contextmanager
def shared_between_processes() -> Iterator[Path]:
    """While inside, this process and those it forks count into files of their own in a
    new directory, and :func:`exposition` sums every process's; removed on the way out.

    Enter before forking, and before anything is counted. No gauge is kept in the files
    (the queue gauges are read from Redis at scrape time), so a process that ended leaves
    only its counts, which stay in the sum as counters must (prometheus-client's
    ``mark_process_dead`` has nothing to do)."""
    global _shared
    path = Path(tempfile.mkdtemp(prefix="relay-metrics-"))
    before = os.environ.pop(_MULTIPROC_ENV, None)
    _forget_children()  # (prometheus-client warns of this in multiprocess mode)
    # prometheus-client's files are named by pid and placed by this variable.
    os.environ[_MULTIPROC_ENV] = str(path)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    _shared = path
    try:
        yield path
    finally:
        _shared = None
        values.ValueClass = values.MutexValue
        os.environ.pop(_MULTIPROC_ENV, None)
        _forget_children()
        if before is not None:
            os.environ[_MULTIPROC_ENV] = before
        shutil.rmtree(path, ignore_errors=True)


def _forget_children() -> None:
    """Drop every label child, so the next is made with the value class now in force."""
    _children.clear()
    _requests.clear()
    for metric in (_HTTP, _ACCEPTED, _REJECTED, _DELIVERIES, _UPSTREAM, _LATENCY):
        metric.clear()


async def exposition(redis: Redis, settings: Settings) -> bytes:
    """The whole text of ``/metrics``: the counters and histograms (every process's under
    ``--workers N``), then the gauges read from Redis now. With Redis away the gauges are
    left out and ``relay_redis_up`` is 0."""
    counted: Iterable[Metric]
    if _shared is not None:
        collector = MultiProcessCollector(None, path=str(_shared))  # type: ignore[no-untyped-call]
        counted = collector.collect()  # type: ignore[no-untyped-call]
    else:
        counted = _REGISTRY.collect()
    try:
        seen: Overview | None = await overview(redis, settings)
    except StoreUnavailable:
        seen = None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*counted, *_gauges(seen)]))
    return generate_latest(registry)


class _Families:
    """A collector of families already made (registries collect synchronously; the
    gauges are read from Redis before)."""

    __slots__ = ("_families",)

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


#: The gauges read per destination: name, help, the figure.
_PER_DESTINATION: tuple[tuple[str, str, Callable[[Backlog], float]], ...] = (
    (
        "relay_queue_pending",
        "Events waiting to be sent (being sent included) and events parked behind an "
        "earlier event of their contact, read from Redis",
        lambda row: row["pending"],
    ),
    (
        "relay_queue_retrying",
        "Events scheduled for a retry, read from Redis",
        lambda row: row["retrying"],
    ),
    (
        "relay_queue_dead",
        "Dead letters kept (until replayed), read from Redis",
        lambda row: row["dead"],
    ),
    (
        "relay_queue_oldest_pending_seconds",
        "Seconds the front of the queue has waited to be sent: its first stream entry, or "
        "a due retry no worker moved yet; 0 when nothing waits (README: Metrics)",
        lambda row: row["oldest_pending_s"],
    ),
    (
        "relay_destination_healthy",
        "1 unless relay status calls the destination unhealthy: its upstream refuses our "
        "credentials, or events wait and no worker is live",
        lambda row: 0 if row["health"] == "unhealthy" else 1,
    ),
)


def _gauges(seen: Overview | None) -> list[Metric]:
    build = GaugeMetricFamily(
        "relay_build_info", "The running relay's version (always 1)", labels=["version"]
    )
    build.add_metric([__version__], 1)
    up = GaugeMetricFamily("relay_redis_up", "1 when Redis answered this scrape, else 0")
    up.add_metric([], 0 if seen is None else 1)
    if seen is None:
        return [build, up]
    families: list[Metric] = [build, up]
    for name, help_text, figure in _PER_DESTINATION:
        family = GaugeMetricFamily(name, help_text, labels=["destination"])
        for row in seen.destinations:
            family.add_metric([row["destination"]], figure(row))
        families.append(family)
    live = GaugeMetricFamily(
        "relay_workers_live", "Workers whose heartbeat is recent (relay status lists them)"
    )
    live.add_metric([], len(seen.workers))
    return [*families, live]
