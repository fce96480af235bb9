"""Latency: accepted -> delivered under a steady open-loop load, on one worker.

``relay serve`` as a user first runs it (the API and its in-process delivery
worker in one process), with a relay.toml of one webhook destination, ``steady``:
leads, no rate limit, on the bench's fake upstream. It keeps its data in a Redis
database of its own. The open-loop generator (:mod:`bench.openloop`, its own
process) POSTs one lead a request, each a different contact, at a fixed rate;
the first ``warmup_s`` of them (connections, caches) are left out of the figures.

For each event, matched by id (the 202's ``id`` is the webhook's ``webhook-id``):

* accepted: when its 202 was read at the generator;
* delivered: when the upstream's handler got the request (its first arrival);

both on CLOCK_MONOTONIC (:func:`bench.apps.host_clock`: the same clock in every
process of the host, never stepped). Delivered minus accepted is the figure the
target is about; it is negative when the worker delivered before the 202 reached
the client (the event is queued before the answer is written), and such events
are counted. Sent -> 202 (ingest under this load) and sent -> delivered are
printed beside it, and what relay serve cost over the load: its CPU a lead (in and
out) and how long it waited, ready, for a core (Linux's schedstat). On a machine
busy with other work that wait, not relay's code, is where a tail comes from.

The anchor is Redis Streams' own test (the Redis docs' "Redis Streams" page,
"Latency tests results": 99.9 % of messages within 2 ms from XADD to the blocked
XREADGROUP consumer, Ruby programs on a slow machine): one stream hop with no
HTTP on either side, the least a queue in Redis can add.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.load import percentile
from bench.openloop import Send, run_openloop
from bench.profile import Profiler
from bench.servers import BenchError, Procs, Stack, cpu_s, runqueue_wait_s

__all__ = ["LatencyResult", "Spread", "Usage", "measure", "run_latency"]

#: The lead posted, one contact per request (``{n}``: the request's number).
TEMPLATE = b'{"email":"steady{n}@example.com","first_name":"Ann","phone":"+14155550100"}'
#: The destination delivered to (bench.servers.Stack: leads, no rate limit).
DESTINATION = "steady"
#: The Redis database of the section's relay serve: a keyspace of its own (what the
#: earlier sections queued stays out of its way); bench.memory uses 1.
_DB = 2
#: A request sent more than this behind its schedule is late (the generator did not
#: hold the rate: the load was lighter than asked, and then burstier).
LATE_S = 0.010
#: After the last answer, how long the upstream may go without a new arrival before
#: the events still missing count as lost.
_GRACE_S = 5.0


@dataclass(frozen=True)
class Spread:
    """Percentiles of one span over the measured events, in milliseconds."""

    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Spread:
        ordered = sorted(seconds)
        return cls(
            p50_ms=percentile(ordered, 50) * 1000,
            p99_ms=percentile(ordered, 99) * 1000,
            p999_ms=percentile(ordered, 99.9) * 1000,
            max_ms=(ordered[-1] if ordered else 0.0) * 1000,
        )

    def to_dict(self) -> dict[str, float]:
        return {
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "p999_ms": round(self.p999_ms, 3),
            "max_ms": round(self.max_ms, 3),
        }


@dataclass(frozen=True)
class Usage:
    """What relay serve's process cost over the load (warm-up included)."""

    events: int  #: leads sent, warm-up included
    span_s: float  #: how long they took to send at the rate asked
    cpu_s: float  #: user + system, every thread
    wait_s: float | None  #: ready to run but waiting for a core (None: not on this OS)

    @property
    def cpu_ms_per_event(self) -> float:
        return self.cpu_s / self.events * 1000

    @property
    def core_share(self) -> float:
        return self.cpu_s / self.span_s

    @property
    def wait_share(self) -> float | None:
        return None if self.wait_s is None else self.wait_s / self.span_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpu_ms_per_event": round(self.cpu_ms_per_event, 3),
            "core_share": round(self.core_share, 3),
            "runqueue_wait_share": None if self.wait_share is None else round(self.wait_share, 3),
        }


@dataclass(frozen=True)
class LatencyResult:
    rate: float  #: asked, events/s
    duration_s: float  #: measured part of the run
    warmup_s: float
    sent: int  #: measured requests
    sent_rate: float  #: requests/s, first to last send
    late: int  #: sent more than LATE_S behind schedule
    worst_lag_ms: float
    accepted: int  #: answered 202 with an id
    refused: int  #: answered anything else
    unanswered: int  #: connection errors and timeouts
    delivered: int  #: accepted and arrived at the upstream
    delivered_rate: float  #: events/s at the upstream, first to last arrival
    lost: int  #: accepted and never arrived
    repeats: int  #: requests the upstream saw again, warm-up included (at least once)
    early: int  #: delivered before their 202 reached the generator
    ingest: Spread  #: sent -> 202
    latency: Spread  #: 202 -> delivered
    end_to_end: Spread  #: sent -> delivered
    usage: Usage | None = None  #: relay serve's CPU over the load

    def to_dict(self) -> dict[str, Any]:
        return {
            "setup": "relay serve (API + in-process worker), one webhook destination",
            "clock": "CLOCK_MONOTONIC",
            "rate": self.rate,
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "sent": self.sent,
            "sent_per_s": round(self.sent_rate, 1),
            "late": self.late,
            "late_ms": LATE_S * 1000,
            "worst_lag_ms": round(self.worst_lag_ms, 3),
            "accepted": self.accepted,
            "refused": self.refused,
            "unanswered": self.unanswered,
            "delivered": self.delivered,
            "delivered_per_s": round(self.delivered_rate, 1),
            "lost": self.lost,
            "repeats": self.repeats,
            "delivered_before_202": self.early,
            "sent_to_202": self.ingest.to_dict(),
            "accepted_to_delivered": self.latency.to_dict(),
            "sent_to_delivered": self.end_to_end.to_dict(),
            "relay_serve": None if self.usage is None else self.usage.to_dict(),
        }


def _rate(times: Sequence[float]) -> float:
    span = max(times, default=0.0) - min(times, default=0.0)
    return (len(times) - 1) / span if span > 0 else 0.0


def measure(
    sends: Sequence[Send],
    arrivals: dict[str, float],
    *,
    rate: float,
    duration_s: float,
    warmup_s: float,
    repeats: int = 0,
    usage: Usage | None = None,
) -> LatencyResult:
    """The figures of the measured sends (the warm-up ones left out by the caller)."""
    accepted = [s for s in sends if s.status == 202 and s.event_id is not None]
    delivered = [(s, arrivals[s.event_id]) for s in accepted if s.event_id in arrivals]
    lags = [s.lag_s for s in sends]
    unanswered = sum(s.status == 0 for s in sends)
    return LatencyResult(
        rate=rate,
        duration_s=duration_s,
        warmup_s=warmup_s,
        sent=len(sends),
        sent_rate=_rate([s.sent for s in sends]),
        late=sum(lag > LATE_S for lag in lags),
        worst_lag_ms=max(lags, default=0.0) * 1000,
        accepted=len(accepted),
        refused=len(sends) - len(accepted) - unanswered,
        unanswered=unanswered,
        delivered=len(delivered),
        delivered_rate=_rate([at for _, at in delivered]),
        lost=len(accepted) - len(delivered),
        repeats=repeats,
        early=sum(at < s.answered for s, at in delivered if s.answered is not None),
        ingest=Spread.of([s.answered - s.sent for s in accepted if s.answered is not None]),
        latency=Spread.of([at - s.answered for s, at in delivered if s.answered is not None]),
        end_to_end=Spread.of([at - s.sent for s, at in delivered]),
        usage=usage,
    )


def _arrivals(stack: Stack, expected: set[str]) -> tuple[dict[str, float], int]:
    """The upstream's first arrival of each id, once every expected id has come or none
    came for _GRACE_S; and how many requests it saw again."""
    seen, quiet_since = -1, time.monotonic()
    while True:
        doc = stack.upstream_arrivals()
        arrivals: dict[str, float] = doc["arrivals"]
        if expected <= arrivals.keys():
            return arrivals, doc["repeats"]
        if len(arrivals) != seen:
            seen, quiet_since = len(arrivals), time.monotonic()
        elif time.monotonic() - quiet_since > _GRACE_S:
            return arrivals, doc["repeats"]
        time.sleep(0.1)


def run_latency(
    procs: Procs,
    stack: Stack,
    *,
    rate: float,
    duration_s: float,
    warmup_s: float,
    profiler: Profiler,
) -> LatencyResult:
    stack.reset_upstream()
    api = stack.start_api("relay-serve-latency", db=_DB, worker_for=DESTINATION)
    warm = round(rate * warmup_s)
    count = warm + max(1, round(rate * duration_s))
    try:
        pid = api.proc.pid
        cpu, wait = cpu_s(pid), runqueue_wait_s(pid)
        with profiler.attach(api.proc, "latency"):
            sends = run_openloop(
                procs, api.url("/v1/leads"), TEMPLATE, api.auth, rate=rate, count=count
            )
        waited = runqueue_wait_s(pid)
        usage = Usage(
            events=count,
            span_s=count / rate,
            cpu_s=cpu_s(pid) - cpu,
            wait_s=None if wait is None or waited is None else waited - wait,
        )
        api.proc.check_alive()
        expected = {s.event_id for s in sends if s.status == 202 and s.event_id is not None}
        arrivals, repeats = _arrivals(stack, expected)
    finally:
        procs.stop(api.proc)
    if not expected:
        raise BenchError(f"relay accepted none of {len(sends)} leads:\n{api.proc.log_tail()}")
    return measure(
        sends[warm:],
        arrivals,
        rate=rate,
        duration_s=duration_s,
        warmup_s=warmup_s,
        repeats=repeats,
        usage=usage,
    )
