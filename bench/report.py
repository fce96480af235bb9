"""Tables for people, and the targets each figure is held against (printed, never asserted)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.cluster import ClusterResult
from bench.delivery import DeliveryResult
from bench.ingest import IngestResult
from bench.latency import LATE_S, LatencyResult, Spread
from bench.memory import MemoryResult
from bench.profile import Profile
from bench.ratelimit import RateLimitResult

__all__ = [
    "Target",
    "cluster",
    "delivery",
    "ingest",
    "latency",
    "memory",
    "profile",
    "ratelimit",
    "table",
    "targets",
]


@dataclass(frozen=True)
class Target:
    """One figure and the target it is held against."""

    name: str
    value: str
    goal: str
    met: bool


def table(rows: Sequence[Sequence[str]], *, indent: str = "  ") -> list[str]:
    """Columns padded to their widest cell; the first column left-aligned, the rest right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        indent
        + "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def ingest(r: IngestResult) -> tuple[list[str], list[Target]]:
    rounds = len(r.relay.rounds)
    multi = [] if r.multi is None else [(f"relay --workers {r.multi[0]}", r.multi[1])]  # N cores
    waiting = []
    if r.waiting is not None:
        waiting = [(f"relay, WAIT {r.waiting[0]} replica(s)", r.waiting[1])]
    one = [] if r.one_partition is None else [("relay, RELAY_PARTITIONS=1", r.one_partition)]
    lines = [
        f"Ingest: POST /v1/leads, {r.connections} connections, {rounds} x {r.round_s:g} s "
        f"rounds each, alternating; load by {r.generator}; baseline on {r.loop}"
        + ("" if r.loop == "uvloop" else " (uvloop not importable)"),
        *table(
            [
                ("", "req/s", "p50 ms", "p99 ms", "non-2xx", "errors"),
                *(
                    (
                        name,
                        f"{s.rps:,.0f}",
                        f"{s.p50_ms:.2f}",
                        f"{s.p99_ms:.2f}",
                        str(s.non_2xx),
                        str(s.errors),
                    )
                    for name, s in (
                        ("bare aiohttp", r.baseline),
                        ("relay", r.relay),
                        *multi,
                        *waiting,
                        *one,
                    )
                ),
                ("relay/baseline", f"{r.ratio:.2f}", "", "", "", ""),
                *(
                    [("relay/relay 1 partition", f"{r.partition_ratio:.2f}", "", "", "", "")]
                    if r.partition_ratio is not None
                    else []
                ),
                *(
                    [("relay WAIT/relay", f"{r.wait_ratio:.2f}", "", "", "", "")]
                    if r.wait_ratio is not None
                    else []
                ),
            ]
        ),
        f"  p50 = median of the rounds, p99 = worst round; relay RSS {_mib(r.rss_kib[0])} -> "
        f"{_mib(r.rss_kib[1])} MiB over the rounds",
    ]
    if r.waiting is not None:
        lines.append(
            f"  {r.waiting[0]} replica(s) of Redis ran during every round, relay's too; "
            f"relay, WAIT: RELAY_REDIS_MIN_REPLICAS={r.waiting[0]} (one WAIT per group commit)"
        )
    if r.generator == "bundled":
        lines.append(
            "  (bundled generator: a Python client; the baseline's figure may be its own "
            "limit, which flatters the ratio. Install wrk for a sharper one.)"
        )
    return lines, [
        Target("ingest req/s relay/baseline", f"{r.ratio:.2f}", ">= 0.80", r.ratio >= 0.8),
        Target("ingest p99 (relay)", f"{r.relay.p99_ms:.1f} ms", "<= 25 ms", r.relay.p99_ms <= 25),
        Target(
            "ingest non-2xx + errors (relay)",
            str(r.relay.non_2xx + r.relay.errors),
            "0",
            r.relay.non_2xx + r.relay.errors == 0,
        ),
    ]


def delivery(r: DeliveryResult) -> tuple[list[str], list[Target]]:
    lines = [
        f"Delivery: {r.events:,} queued events to a local upstream, concurrency {r.concurrency}",
        *table(
            [
                ("", "events/s"),
                ("bare aiohttp ClientSession loop", f"{r.baseline_rate:,.0f}"),
                ("relay worker --drain (1 process)", f"{r.relay_rate:,.0f}"),
                *(
                    [("the same, RELAY_PARTITIONS=1", f"{r.one_partition_rate:,.0f}")]
                    if r.one_partition_rate is not None
                    else []
                ),
                ("relay/baseline", f"{r.ratio:.2f}"),
                *(
                    [("relay/relay 1 partition", f"{r.partition_ratio:.2f}")]
                    if r.partition_ratio is not None
                    else []
                ),
            ]
        ),
        f"  rates from the upstream's clock, first to last arrival; the worker process "
        f"took {r.worker_wall_s:.1f} s from start to exit",
    ]
    return lines, [
        Target("delivery events/s relay/baseline", f"{r.ratio:.2f}", ">= 0.70", r.ratio >= 0.7)
    ]


def _waiting_row(r: ClusterResult) -> list[tuple[str, str, str, str]]:
    if r.waiting is None or r.wait_ratio is None:
        return []
    name = f"ingest req/s, cluster with RELAY_REDIS_MIN_REPLICAS={r.waiting[0]}"
    return [(name, "", f"{r.waiting[1].rps:,.0f}", f"{r.wait_ratio:.2f} of cluster")]


def cluster(r: ClusterResult) -> tuple[list[str], list[Target]]:
    lines = [
        f"Cluster: relay on a Redis Cluster of {r.masters} masters "
        f"({r.waiting[0] if r.waiting else 'no'} replica(s) each) vs one "
        f"Redis, in the same run; relay's data ended on {r.masters_used} of the masters",
        *table(
            [
                ("", "one Redis", "cluster", "cluster/one"),
                (
                    f"ingest req/s ({r.connections} connections)",
                    f"{r.single.rps:,.0f}",
                    f"{r.cluster.rps:,.0f}",
                    f"{r.ingest_ratio:.2f}",
                ),
                ("ingest p99 ms", f"{r.single.p99_ms:.1f}", f"{r.cluster.p99_ms:.1f}", ""),
                *_waiting_row(r),
                (
                    f"delivery events/s (1 worker, concurrency {r.concurrency})",
                    f"{r.single_rate:,.0f}",
                    f"{r.cluster_rate:,.0f}",
                    f"{r.delivery_ratio:.2f}",
                ),
            ]
        ),
        f"  ingest: {len(r.single.rounds)} alternating round(s) of {r.round_s:g} s each; "
        f"delivery: {r.events:,} queued contacts each, rates from the upstream's clock",
    ]
    return lines, []


def _spread(name: str, s: Spread) -> tuple[str, ...]:
    return (name, f"{s.p50_ms:.2f}", f"{s.p99_ms:.2f}", f"{s.p999_ms:.2f}", f"{s.max_ms:.1f}")


def latency(r: LatencyResult) -> tuple[list[str], list[Target]]:
    lines = [
        f"Latency: relay serve (API + in-process worker) to an unlimited webhook destination, "
        f"{r.rate:g} leads/s open loop (one a POST) for {r.duration_s:g} s after "
        f"{r.warmup_s:g} s of warm-up",
        *table(
            [
                ("", "p50 ms", "p99 ms", "p99.9 ms", "max ms"),
                _spread("accepted -> delivered (202 -> upstream)", r.latency),
                _spread("sent -> 202 (ingest)", r.ingest),
                _spread("sent -> delivered", r.end_to_end),
                ("anchor: Redis Streams' own test (XADD -> consumer)", "", "", "<= 2", ""),
                ("target", "", "<= 25", "", ""),
            ]
        ),
        f"  sent {r.sent:,} at {r.sent_rate:,.1f}/s ({r.late} more than {LATE_S * 1000:g} ms "
        f"behind schedule, worst {r.worst_lag_ms:.1f} ms); accepted {r.accepted:,} "
        f"({r.refused} refused, {r.unanswered} unanswered)",
        f"  delivered {r.delivered:,} at {r.delivered_rate:,.1f}/s, lost {r.lost}, "
        f"sent twice {r.repeats}; {r.early:,} delivered before their 202 was read",
        "  times on CLOCK_MONOTONIC (one clock for every process of the host), matched by "
        "event id = webhook-id",
    ]
    if (u := r.usage) is not None:
        waited = (
            "" if u.wait_share is None else f"; ready but waiting for a core {u.wait_share:.0%}"
        )
        lines.append(
            f"  relay serve over the load: {u.cpu_ms_per_event:.2f} ms of CPU a lead (in and "
            f"out), {u.core_share:.0%} of a core{waited} of the time"
        )
    return lines, [
        Target(
            "latency p99 accepted -> delivered",
            f"{r.latency.p99_ms:.1f} ms",
            "<= 25 ms",
            r.latency.p99_ms <= 25,
        ),
        Target("latency events lost", str(r.lost), "0", r.lost == 0),
    ]


def ratelimit(r: RateLimitResult) -> tuple[list[str], list[Target]]:
    window = f"{r.period_s:g} s"
    lines = [
        f"Rate limit: {r.workers} relay worker processes, limit {r.limit}, "
        f"run {r.run_s:g} s, {r.arrivals} arrivals",
        *table(
            [
                ("", "value"),
                (f"mean per {window} window (steady part)", f"{r.mean:.2f} of {r.count}"),
                ("share of the limit reached", f"{r.share:.1%}"),
                (f"worst {window} window", f"{r.worst} of {r.count}"),
            ]
        ),
    ]
    return lines, [
        Target("rate limit share reached", f"{r.share:.1%}", ">= 98 %", r.share >= 0.98),
        Target(
            f"rate limit worst {window} window", str(r.worst), f"<= {r.count}", r.worst <= r.count
        ),
    ]


def memory(r: MemoryResult) -> tuple[list[str], list[Target]]:
    aof = "n/a (rewritten)" if r.aof_bytes is None else f"{r.aof_bytes:,.0f}"
    rss = r.rss_kib
    lines = [
        f"Memory: {r.events:,} leads queued through the API (batches of 500, one contact each) "
        f"in {r.ingest_s:.1f} s = {r.events / r.ingest_s:,.0f} events/s",
        *table(
            [
                ("", "bytes/event"),
                ("lead JSON as posted", f"{r.payload_bytes:,.0f}"),
                ("Redis used_memory", f"{r.redis_bytes:,.0f}"),
                ("Redis / payload", f"{r.ratio:.1f}x"),
                ("append-only file", aof),
                ("Redis keys per event", f"{r.keys_per_event:.2f}"),
            ]
        ),
        f"  relay serve RSS: start {_mib(rss[0])}, mid {_mib(rss[1])}, end {_mib(rss[2])}, "
        f"peak {_mib(r.rss_peak_kib)} MiB",
    ]
    growth = rss[2] - rss[1]
    return lines, [
        Target("Redis bytes per event / payload", f"{r.ratio:.1f}x", "<= 2x", r.ratio <= 2),
        Target(
            "relay RSS mid -> end",
            f"{growth / 1024:+.1f} MiB",
            "flat (< +10 %)",
            growth <= rss[1] * 0.1,
        ),
    ]


def targets(found: Sequence[Target]) -> list[str]:
    rows = [("target", "measured", "goal", "")]
    rows += [(t.name, t.value, t.goal, "met" if t.met else "MISSED") for t in found]
    return table(rows)


def _shares(rows: Sequence[tuple[str, float]]) -> list[tuple[str, str]]:
    return [(name, f"{share:.1%}") for name, share in rows]


def profile(p: Profile, *, rows: int = 8) -> list[str]:
    """Where a profiled process spent its time: self time by module, then by function."""
    return [
        f"  py-spy, {p.process}: {p.samples:,} samples; stacks in {p.path}",
        "  (C code counts toward its Python caller: uvloop's loop shows as run_app/Runner.run)",
        *table([("self time, module", "share"), *_shares(p.modules[:rows])]),
        *table([("self time, function", "share"), *_shares(p.functions[:rows])]),
        *table([("relay function, inclusive", "share"), *_shares(p.inclusive[:rows])]),
    ]
