"""Delivery: one ``relay worker --drain`` against a bare aiohttp client loop, same upstream.

N contacts are queued for the ``fast`` webhook destination (no rate limit,
``max_in_flight`` = the concurrency). The worker delivers them; then the
bundled generator posts N copies of a request relay sent (same body, same
headers) with the same concurrency. Both rates come from the upstream's own
clock: (arrivals - 1) / (last arrival - first arrival), so process start-up
counts for neither. Then the same N go through a worker with ``RELAY_PARTITIONS=1``
(on a Redis database of its own, the same Redis): the cost of the default
partitions (a stream each per destination) on one Redis.
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
    one_partition_rate: float | None = None  #: events/s with RELAY_PARTITIONS=1

    @property
    def partition_ratio(self) -> float | None:
        """events/s with the default partitions / with one (the same Redis)."""
        if self.one_partition_rate is None:
            return None
        return self.relay_rate / self.one_partition_rate

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
            **(
                {}
                if self.one_partition_rate is None or self.partition_ratio is None
                else {
                    "relay_one_partition_events_per_s": round(self.one_partition_rate, 1),
                    "partition_ratio": round(self.partition_ratio, 3),
                }
            ),
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
        one_partition_rate=_one_partition(procs, stack, events=events, concurrency=concurrency),
    )


def _one_partition(procs: Procs, stack: Stack, *, events: int, concurrency: int) -> float:
    """The same delivery with RELAY_PARTITIONS=1, on a Redis database of its own (the
    count is kept in Redis): events/s."""
    one = {"RELAY_PARTITIONS": "1"}
    api = stack.start_api("relay-serve-p1", db=1, extra_env=one)
    stack.reset_upstream()
    stack.enqueue_contacts("fast", events, tag=f"p{time.monotonic_ns()}-", api=api)
    procs.stop(api.proc)
    env = stack.worker_env("fast") | one
    env["RELAY_REDIS_URL"] = f"redis://127.0.0.1:{stack.redis_port}/1"
    worker = procs.python(
        "relay-worker-p1", "relay", "worker", "--drain", "--concurrency", str(concurrency), env=env
    )
    code = procs.wait(worker, timeout_s=60 + events / 20)
    if code != 0:
        raise BenchError(
            f"relay worker --drain (1 partition) exited with {code}:\n{worker.log_tail()}"
        )
    found = stack.upstream_stats()
    if found["unique"] != events:
        raise BenchError(f"the upstream got {found['unique']} of {events} events (1 partition)")
    return _rate(found["times"])
