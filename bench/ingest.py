"""Ingest: relay's ``POST /v1/leads`` against a bare aiohttp server, in alternating rounds.

Both answer the same leads with the same headers at the same concurrency:
baseline, relay, baseline, relay… so a slow moment of the machine hits both. Each
lead is a new contact (an email of its own), as a form or an ad sends them: relay
spreads them over its partitions by contact, so one contact for all would leave out
what spreading costs.
Requests/s add up over the rounds; p50 is the rounds' median, p99 the worst round's.
With ``api_workers`` > 1, a second ``relay serve --workers N --no-worker`` (N API
processes on one port) takes its turn in each round too: the figure all cores
reach, beside the one-process figure the target is about.
With ``min_replicas`` > 0, that many replicas of the stack's Redis run during the
rounds, and a ``relay serve --no-worker`` with ``RELAY_REDIS_MIN_REPLICAS`` set
takes its turn too: the cost of waiting for them (one WAIT per group commit),
beside relay on the same master and replicas without waiting.
A ``relay serve --no-worker`` with ``RELAY_PARTITIONS=1`` on a database of its own
(the same Redis) takes its turn in each round too: the cost of the default partitions
on one Redis.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.apps import event_loop_name
from bench.load import LoadResult, run_load
from bench.profile import Profiler
from bench.servers import Procs, Stack, free_port, rss_kib

__all__ = ["LEAD", "IngestResult", "run_ingest"]

#: The lead both servers are sent, a new contact each time (``{n}``: bench.load).
LEAD = b'{"email":"lead{n}@example.com","first_name":"Ann","phone":"+14155550100"}'


@dataclass(frozen=True)
class Side:
    """One server's rounds, summed up."""

    rounds: list[LoadResult]

    @property
    def rps(self) -> float:
        return sum(r.requests for r in self.rounds) / sum(r.duration_s for r in self.rounds)

    @property
    def p50_ms(self) -> float:
        return statistics.median(r.p50_ms for r in self.rounds)

    @property
    def p99_ms(self) -> float:
        return max(r.p99_ms for r in self.rounds)

    @property
    def non_2xx(self) -> int:
        return sum(r.non_2xx for r in self.rounds)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.rounds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "non_2xx": self.non_2xx,
            "errors": self.errors,
            "rounds": [r.to_dict() for r in self.rounds],
        }


@dataclass(frozen=True)
class IngestResult:
    generator: str
    loop: str
    connections: int
    round_s: float
    baseline: Side
    relay: Side
    #: relay serve's RSS (KiB) before and after the rounds
    rss_kib: tuple[int, int]
    #: relay serve --workers N (N, its rounds), when measured
    multi: tuple[int, Side] | None = None
    #: relay serve with RELAY_REDIS_MIN_REPLICAS=N (N, its rounds), when measured
    waiting: tuple[int, Side] | None = None
    #: relay serve with RELAY_PARTITIONS=1 (its rounds), beside the default's
    one_partition: Side | None = None

    @property
    def partition_ratio(self) -> float | None:
        """req/s with the default partitions / with one partition (the same Redis)."""
        return None if self.one_partition is None else self.relay.rps / self.one_partition.rps

    @property
    def wait_ratio(self) -> float | None:
        """req/s waiting for replicas / without (the same master and replicas)."""
        return None if self.waiting is None else self.waiting[1].rps / self.relay.rps

    @property
    def ratio(self) -> float:
        return self.relay.rps / self.baseline.rps

    def to_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator,
            "loop": self.loop,
            "connections": self.connections,
            "round_s": self.round_s,
            "baseline": self.baseline.to_dict(),
            "relay": self.relay.to_dict(),
            "ratio": round(self.ratio, 3),
            "relay_rss_kib": list(self.rss_kib),
            **(
                {}
                if self.multi is None
                else {"relay_api_workers": self.multi[0], "relay_multi": self.multi[1].to_dict()}
            ),
            **(
                {}
                if self.one_partition is None or self.partition_ratio is None
                else {
                    "relay_one_partition": self.one_partition.to_dict(),
                    "partition_ratio": round(self.partition_ratio, 3),
                }
            ),
            **(
                {}
                if self.waiting is None or self.wait_ratio is None
                else {
                    "relay_min_replicas": self.waiting[0],
                    "relay_waiting": self.waiting[1].to_dict(),
                    "wait_ratio": round(self.wait_ratio, 3),
                }
            ),
        }


def run_ingest(
    procs: Procs,
    stack: Stack,
    *,
    connections: int,
    round_s: float,
    rounds: int,
    warmup_s: float,
    use_wrk: bool,
    profiler: Profiler,
    api_workers: int,
    min_replicas: int = 0,
) -> IngestResult:
    port = free_port()
    base = procs.python("baseline", "bench.apps", "ingest", "--port", str(port))
    procs.wait_http(base, f"http://127.0.0.1:{port}/healthz")
    apis = {"relay": stack.api}
    if api_workers > 1:
        apis["multi"] = stack.start_api("relay-serve-multi", "--workers", str(api_workers))
    one = {"RELAY_PARTITIONS": "1"}  # a database of its own: the count is kept in Redis
    apis["one_partition"] = stack.start_api("relay-serve-p1", db=1, extra_env=one)
    replicas = [stack.start_replica() for _ in range(min_replicas)]
    if min_replicas:
        waits = {"RELAY_REDIS_MIN_REPLICAS": str(min_replicas)}
        apis["waiting"] = stack.start_api("relay-serve-wait", extra_env=waits)
    # The baseline gets relay's headers too: the same bytes on the wire.
    targets = {
        "baseline": (f"http://127.0.0.1:{port}/v1/leads", stack.auth),
        **{name: (api.url("/v1/leads"), api.auth) for name, api in apis.items()},
    }

    def load(target: tuple[str, dict[str, str]], seconds: float) -> LoadResult:
        url, headers = target
        return run_load(
            procs, url, LEAD, headers, connections=connections, duration_s=seconds,
            use_wrk=use_wrk,
        )  # fmt: skip

    rss_before = rss_kib(stack.serve.pid)
    for target in targets.values():
        if warmup_s > 0:
            load(target, warmup_s)
    measured: dict[str, list[LoadResult]] = {name: [] for name in targets}
    with profiler.attach(stack.serve, "ingest"):  # idle in the others' rounds: not sampled
        for _ in range(rounds):
            for name, target in targets.items():
                measured[name].append(load(target, round_s))
                for api in apis.values():
                    api.proc.check_alive()
    rss_after = rss_kib(stack.serve.pid)
    procs.stop(base)
    for name in ("multi", "waiting", "one_partition"):
        if name in apis:
            procs.stop(apis[name].proc)
    for replica in replicas:  # the next sections run on a Redis without replicas
        procs.stop(replica)
    return IngestResult(
        generator=measured["relay"][0].generator,
        loop=event_loop_name(),
        connections=connections,
        round_s=round_s,
        baseline=Side(measured["baseline"]),
        relay=Side(measured["relay"]),
        rss_kib=(rss_before, rss_after),
        multi=(api_workers, Side(measured["multi"])) if "multi" in apis else None,
        waiting=(min_replicas, Side(measured["waiting"])) if "waiting" in apis else None,
        one_partition=Side(measured["one_partition"]),
    )
