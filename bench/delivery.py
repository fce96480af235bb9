"""Delivery: one ``relay worker --drain`` against a bare aiohttp client loop, same upstream.

N contacts are queued for the ``fast`` webhook destination (no rate limit,
``max_in_flight`` = the concurrency). The worker delivers them; then the
bundled generator posts N copies of a request relay sent (same body, same
headers) with the same concurrency. Both rates come from the upstream's own
clock: (arrivals - 1) / (last arrival - first arrival), so process start-up
counts for neither.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from bench.load import run_load
from bench.profile import Profiler
from bench.servers import Api, BenchError, Procs, Stack

__all__ = ["DeliveryResult", "relay_delivery", "run_delivery"]


@dataclass(frozen=True)
class DeliveryResult:
    events: int
    concurrency: int
    relay_rate: float  #: events/s
    baseline_rate: float  #: requests/s
    worker_wall_s: float  #: from starting the worker process to its exit

    @property
    def ratio(self) -> float:
        return self.relay_rate / self.baseline_rate

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "concurrency": self.concurrency,
            "relay_events_per_s": round(self.relay_rate, 1),
            "baseline_requests_per_s": round(self.baseline_rate, 1),
            "ratio": round(self.ratio, 3),
            "worker_wall_s": round(self.worker_wall_s, 2),
        }


def _rate(times: list[float]) -> float:
    if len(times) < 2 or times[-1] <= times[0]:
        raise BenchError(f"too few requests reached the upstream to time them ({len(times)})")
    return (len(times) - 1) / (times[-1] - times[0])


def relay_delivery(
    procs: Procs,
    stack: Stack,
    *,
    events: int,
    concurrency: int,
    profiler: Profiler | None = None,
    api: Api | None = None,
    redis_url: str | None = None,
) -> tuple[float, float, dict[str, Any]]:
    """``events`` contacts queued for ``fast`` through ``api`` (default the stack's) and
    delivered by one ``relay worker --drain`` on ``redis_url`` (default the stack's):
    events/s from the upstream's clock, the worker's wall time, a request it sent."""
    stack.reset_upstream()
    stack.enqueue_contacts("fast", events, tag=f"d{time.monotonic_ns()}-", api=api)
    env = stack.worker_env("fast") | ({"RELAY_REDIS_URL": redis_url} if redis_url else {})
    started = time.monotonic()
    worker = procs.python(
        "relay-worker", "relay", "worker", "--drain", "--concurrency", str(concurrency), env=env
    )
    with profiler.attach(worker, "delivery") if profiler else contextlib.nullcontext():
        code = procs.wait(worker, timeout_s=60 + events / 20)
    wall_s = time.monotonic() - started
    if code != 0:
        raise BenchError(f"relay worker --drain exited with {code}:\n{worker.log_tail()}")
    relay = stack.upstream_stats()
    if relay["unique"] != events:
        raise BenchError(f"the upstream got {relay['unique']} of {events} events")
    return _rate(relay["times"]), wall_s, relay["sample"]


def run_delivery(
    procs: Procs, stack: Stack, *, events: int, concurrency: int, profiler: Profiler
) -> DeliveryResult:
    relay_rate, wall_s, sample = relay_delivery(
        procs, stack, events=events, concurrency=concurrency, profiler=profiler
    )
    stack.reset_upstream()
    result = run_load(
        procs,
        stack.upstream_url("/hook"),
        sample["body"].encode(),
        sample["headers"],
        connections=concurrency,
        requests=events,
        use_wrk=False,
    )
    if result.non_2xx or result.errors:
        raise BenchError(f"baseline client: {result.non_2xx} non-2xx, {result.errors} errors")
    baseline = stack.upstream_stats()
    return DeliveryResult(
        events=events,
        concurrency=concurrency,
        relay_rate=relay_rate,
        baseline_rate=_rate(baseline["times"]),
        worker_wall_s=wall_s,
    )
