"""Rate-limit precision: several ``relay worker`` processes share one destination's limit.

A backlog larger than the run can deliver is queued for the ``limited``
destination; the workers run for a while and are stopped with SIGTERM. From
the upstream's arrival times:

* worst window: the most arrivals in any window of the limit's period
  (``[t, t + period)`` starting at each arrival); never above the limit.
* share: the mean arrivals per period-long window, sliding over the steady
  part of the run (one period after the first arrival until the workers were
  stopped), as a share of the limit.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass
from typing import Any

from bench.servers import BenchError, Procs, Stack
from relay.settings import parse_rate_limit

__all__ = ["RateLimitResult", "run_ratelimit", "sliding_counts"]

#: Step of the sliding window over the steady part of the run.
_STEP_S = 0.01


@dataclass(frozen=True)
class RateLimitResult:
    limit: str
    count: int  #: requests allowed per period
    period_s: float
    workers: int
    run_s: float
    arrivals: int
    worst: int  #: most arrivals in any window of one period
    mean: float  #: mean arrivals per window over the steady part

    @property
    def share(self) -> float:
        return self.mean / self.count

    def to_dict(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "workers": self.workers,
            "run_s": round(self.run_s, 2),
            "arrivals": self.arrivals,
            "worst_window": self.worst,
            "mean_window": round(self.mean, 2),
            "share": round(self.share, 4),
        }


def sliding_counts(times: list[float], period_s: float, starts: list[float]) -> list[int]:
    """Arrivals in ``[s, s + period_s)`` for each start ``s`` (``times`` sorted)."""
    return [bisect.bisect_left(times, s + period_s) - bisect.bisect_left(times, s) for s in starts]


def run_ratelimit(
    procs: Procs, stack: Stack, *, workers: int, run_s: float, concurrency: int
) -> RateLimitResult:
    limit = parse_rate_limit(stack.rate_limit)
    rate = limit.count / limit.period_s
    stack.reset_upstream()
    # More than the run can deliver, so the limit, not the backlog, sets the pace.
    backlog = int(rate * (run_s + limit.period_s) * 1.5) + limit.count
    stack.enqueue_contacts("limited", backlog, tag=f"r{time.monotonic_ns()}-")
    env = stack.worker_env("limited")
    running = [
        procs.python(
            f"relay-worker-{i}", "relay", "worker", "--concurrency", str(concurrency), env=env
        )
        for i in range(workers)
    ]
    deadline = time.monotonic() + 60
    while stack.upstream_stats()["count"] == 0:
        for proc in running:
            proc.check_alive()
        if time.monotonic() > deadline:
            raise BenchError("no delivery reached the upstream within 60 s")
        time.sleep(0.05)
    time.sleep(run_s)
    for proc in running:
        proc.check_alive()
    stopped_at = time.time()
    for proc in running:
        procs.signal(proc)
    for proc in running:
        if (code := procs.wait(proc, timeout_s=30)) != 0:
            raise BenchError(f"{proc.name} exited with {code}:\n{proc.log_tail()}")
    times = sorted(stack.upstream_stats()["times"])
    if len(times) >= backlog:
        raise BenchError(f"the backlog of {backlog} ran out: the limit was not the bottleneck")
    worst = max(sliding_counts(times, limit.period_s, times))
    first, end = times[0] + limit.period_s, stopped_at - limit.period_s
    steps = int((end - first) / _STEP_S)
    if steps < 1:
        raise BenchError(f"the run is too short for a steady window of {limit}")
    mean = sum(sliding_counts(times, limit.period_s, [first + i * _STEP_S for i in range(steps)]))
    return RateLimitResult(
        limit=str(limit),
        count=limit.count,
        period_s=limit.period_s,
        workers=workers,
        run_s=run_s,
        arrivals=len(times),
        worst=worst,
        mean=mean / steps,
    )
