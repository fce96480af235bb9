"""``python -m bench``: relay against bare aiohttp on this machine, printed as tables.

Exit status 0 unless something broke (a process that did not start or
failed, a non-2xx answer, a lost event, a rate limit exceeded); targets
missed are printed, never an error.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import orjson

from bench import report
from bench.cluster import run_cluster
from bench.delivery import run_delivery
from bench.ingest import run_ingest
from bench.latency import run_latency
from bench.load import generator_name
from bench.memory import run_memory
from bench.profile import Profiler
from bench.ratelimit import run_ratelimit
from bench.servers import BenchError, Procs, Stack
from relay.settings import parse_rate_limit

SECTIONS = ("ingest", "delivery", "latency", "ratelimit", "memory", "cluster")

_EPILOG = """\
sections:
  ingest     relay serve --no-worker vs a bare aiohttp server (orjson, 202), same leads
             (each a new contact), alternating rounds; req/s, p50, p99, non-2xx
             (targets: ratio >= 0.8, p99 <= 25 ms, 0 non-2xx). Load by wrk when on
             PATH, else a bundled aiohttp generator; either runs in its own process.
             relay serve --workers N (--api-workers) takes its turn too, for what all cores reach.
             With --min-replicas N, N Redis replicas run during the rounds and relay
             serve with RELAY_REDIS_MIN_REPLICAS=N takes its turn: relay WAIT/relay is
             the cost of a 202 only once replicas have the event. relay serve with
             RELAY_PARTITIONS=1 (a Redis database of its own) takes its turn too:
             relay/relay 1 partition is the cost of the default partitions.
  delivery   one relay worker --drain vs a bare aiohttp ClientSession loop, same
             upstream, same requests, same concurrency (target: ratio >= 0.7); then the
             same events through a worker with RELAY_PARTITIONS=1 (a database of its own)
  latency    relay serve (the API and its in-process worker, as a user first runs it) under
             a steady open-loop load: --latency-rate leads/s, one a POST, each a new
             contact, sent on schedule whatever the answers, to an unlimited webhook
             destination; for each event the time from its 202 reaching the client
             (accepted) to the upstream receiving it (delivered), matched by event id, on
             CLOCK_MONOTONIC: p50, p99, p99.9, max beside Redis Streams' own test (99.9 %
             <= 2 ms) and the target (p99 <= 25 ms); lost events are an error
  ratelimit  several relay worker processes on one rate-limited destination: share of
             the limit reached (target >= 98 %), worst window (never above the limit)
  memory     Redis bytes per queued event vs the lead's JSON (target <= 2x), and relay
             serve's RSS at the start, middle and end of sustained ingest (a relay serve
             of its own, on a Redis database of its own)
  cluster    relay on a Redis Cluster of 3 masters vs relay on the single Redis, same
             run: ingest in alternating rounds (req/s, p99) and one relay worker --drain
             each on the same number of queued contacts (events/s); cluster/one ratios.
             With --min-replicas N, each master has N replicas and relay serve with
             RELAY_REDIS_MIN_REPLICAS=N on the cluster takes its turn in the rounds

Everything runs on 127.0.0.1: a redis-server (append-only file, everysec) in a
temp dir, relay as subprocesses, the fake upstream and the baseline; all of it is
stopped and removed at the end, on error and on Ctrl-C.

examples:
  python -m bench                       # full run, a few minutes
  python -m bench --smoke               # about 30 s: does everything still run?
  python -m bench --only ingest --duration 10 --connections 128 --json
  python -m bench --only memory --events 1000000
  python -m bench --only ingest,delivery --deliveries 20000 --profile prof/
  python -m bench --only latency --latency-rate 1000 --latency-duration 30
  python -m bench --only ingest --min-replicas 1   # the cost of RELAY_REDIS_MIN_REPLICAS=1
  python -m bench --only cluster                   # a 3-master Redis Cluster vs one Redis
"""


@dataclass(frozen=True)
class Plan:
    """How long and how much, per section."""

    rounds: int
    round_s: float
    warmup_s: float
    connections: int
    deliveries: int
    concurrency: int
    ratelimit_s: float
    workers: int
    rate_limit: str
    events: int
    latency_rate: float
    latency_s: float
    use_wrk: bool
    profile_dir: Path | None
    api_workers: int
    min_replicas: int


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark relay against bare aiohttp on loopback: ingest, delivery, "
        "accepted -> delivered latency under a steady load, rate-limit precision, memory. "
        "Prints tables with ratios and the targets.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes (about 30 s): check that it all runs"
    )
    parser.add_argument(
        "--only",
        type=_sections,
        default=SECTIONS,
        metavar="LIST",
        help=f"comma-separated sections to run (default: all of {','.join(SECTIONS)})",
    )
    parser.add_argument(
        "--duration",
        type=_positive_float,
        metavar="S",
        help="seconds per ingest round (default 5; --smoke 1)",
    )
    parser.add_argument(
        "--rounds",
        type=_positive_int,
        metavar="N",
        help="ingest rounds per server (default 3; --smoke 1)",
    )
    parser.add_argument(
        "--connections",
        type=_positive_int,
        default=64,
        metavar="N",
        help="ingest connections (default 64)",
    )
    parser.add_argument(
        "--no-wrk", action="store_true", help="use the bundled load generator even if wrk is found"
    )
    parser.add_argument(
        "--api-workers",
        type=_positive_int,
        default=2,
        metavar="N",
        help="also load relay serve --workers N in the ingest rounds (default 2; 1: skip it)",
    )
    parser.add_argument(
        "--min-replicas",
        type=int,
        choices=range(4),
        default=0,
        metavar="N",
        help="start N Redis replicas for the ingest rounds (N per master in the cluster "
        "section) and add relay serve with RELAY_REDIS_MIN_REPLICAS=N to them (default 0: "
        "none; at most 3)",
    )
    parser.add_argument(
        "--deliveries",
        type=_positive_int,
        metavar="N",
        help="events queued for the delivery section (default 5000; --smoke 300)",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=16,
        metavar="N",
        help="relay worker --concurrency, and the baseline's connections (default 16)",
    )
    parser.add_argument(
        "--rate-limit",
        type=_rate_limit,
        default="20/s",
        metavar="N/PERIOD",
        help="the limited destination's rate_limit (default 20/s)",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=4,
        metavar="N",
        help="relay worker processes sharing the limit (default 4)",
    )
    parser.add_argument(
        "--ratelimit-duration",
        type=_positive_float,
        metavar="S",
        help="seconds the limited workers run (default 10; --smoke 3)",
    )
    parser.add_argument(
        "--events",
        type=_positive_int,
        metavar="N",
        help="leads queued for the memory section (default 200000; --smoke 2000)",
    )
    parser.add_argument(
        "--latency-rate",
        type=_positive_float,
        default=500.0,
        metavar="N",
        help="leads a second the latency section sends, open loop (default 500)",
    )
    parser.add_argument(
        "--latency-duration",
        type=_positive_float,
        metavar="S",
        help="seconds the latency section measures, after a warm-up of 1 s (default 10; "
        "--smoke 2, no warm-up)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record relay serve (ingest), relay worker (delivery) and relay serve with its "
        "worker (latency) with py-spy; write "
        "DIR/<section>.txt (collapsed stacks) and print where their time goes",
    )
    parser.add_argument(
        "--json", action="store_true", help="also print every figure as one JSON line at the end"
    )
    return parser


def _sections(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {','.join(SECTIONS)}, got {text!r}")
    return names


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return value


def _rate_limit(text: str) -> str:
    try:
        return str(parse_rate_limit(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _plan(args: argparse.Namespace) -> Plan:
    smoke = args.smoke

    def pick(given: Any, full: Any, small: Any) -> Any:
        return given if given is not None else (small if smoke else full)

    return Plan(
        rounds=pick(args.rounds, 3, 1),
        round_s=pick(args.duration, 5.0, 1.0),
        warmup_s=0.0 if smoke else 1.0,
        connections=args.connections,
        deliveries=pick(args.deliveries, 5000, 300),
        concurrency=args.concurrency,
        ratelimit_s=pick(args.ratelimit_duration, 10.0, 3.0),
        workers=args.workers,
        rate_limit=args.rate_limit,
        events=pick(args.events, 200_000, 2000),
        latency_rate=args.latency_rate,
        latency_s=pick(args.latency_duration, 10.0, 2.0),
        use_wrk=not args.no_wrk,
        profile_dir=args.profile,
        api_workers=args.api_workers,
        min_replicas=args.min_replicas,
    )


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def _step(text: str) -> None:
    print(f"... {text}", file=sys.stderr, flush=True)


def _run(
    plan: Plan, only: Sequence[str], procs: Procs, results: dict[str, Any]
) -> list[report.Target]:
    """Run the chosen sections in order, printing each table as it is done."""
    _step("starting redis-server, the fake upstream and relay serve --no-worker")
    profiler = Profiler(procs, plan.profile_dir)
    stack = Stack(procs, concurrency=plan.concurrency, rate_limit=plan.rate_limit)
    runs: dict[str, Callable[[], Any]] = {
        "ingest": lambda: run_ingest(
            procs,
            stack,
            connections=plan.connections,
            round_s=plan.round_s,
            rounds=plan.rounds,
            warmup_s=plan.warmup_s,
            use_wrk=plan.use_wrk,
            profiler=profiler,
            api_workers=plan.api_workers,
            min_replicas=plan.min_replicas,
        ),
        "delivery": lambda: run_delivery(
            procs, stack, events=plan.deliveries, concurrency=plan.concurrency, profiler=profiler
        ),
        "latency": lambda: run_latency(
            procs,
            stack,
            rate=plan.latency_rate,
            duration_s=plan.latency_s,
            warmup_s=plan.warmup_s,
            profiler=profiler,
        ),
        "ratelimit": lambda: run_ratelimit(
            procs,
            stack,
            workers=plan.workers,
            run_s=plan.ratelimit_s,
            concurrency=plan.concurrency,
        ),
        "memory": lambda: run_memory(stack, events=plan.events),
        "cluster": lambda: run_cluster(
            procs,
            stack,
            masters=3,
            connections=plan.connections,
            round_s=plan.round_s,
            rounds=plan.rounds,
            warmup_s=plan.warmup_s,
            use_wrk=plan.use_wrk,
            events=plan.deliveries,
            concurrency=plan.concurrency,
            min_replicas=plan.min_replicas,
        ),
    }
    render: dict[str, Callable[[Any], tuple[list[str], list[report.Target]]]] = {
        "ingest": report.ingest,
        "delivery": report.delivery,
        "latency": report.latency,
        "ratelimit": report.ratelimit,
        "memory": report.memory,
        "cluster": report.cluster,
    }
    found: list[report.Target] = []
    for name in SECTIONS:
        if name not in only:
            continue
        _step(f"{name}")
        stack.wait_quiet()
        started = time.monotonic()
        result = runs[name]()
        lines, targets = render[name](result)
        results[name] = result.to_dict() | {"seconds": round(time.monotonic() - started, 1)}
        if (profile := profiler.profiles.get(name)) is not None:
            lines += report.profile(profile)
            results[name]["profile"] = profile.to_dict()
        print("\n" + "\n".join(lines), flush=True)
        found += targets
    return found


def _broken(results: dict[str, Any]) -> list[str]:
    """What went wrong beyond a missed target: bad answers, a limit exceeded."""
    problems = []
    if (ingest := results.get("ingest")) is not None:
        for side in ("baseline", "relay", "relay_multi", "relay_waiting"):
            if side in ingest and (bad := ingest[side]["non_2xx"] + ingest[side]["errors"]):
                problems.append(f"ingest: {bad} {side} requests were not answered 2xx")
    if (cluster := results.get("cluster")) is not None:
        for side in ("ingest_single", "ingest_cluster", "ingest_cluster_waiting"):
            if side in cluster and (bad := cluster[side]["non_2xx"] + cluster[side]["errors"]):
                problems.append(f"cluster: {bad} {side} requests were not answered 2xx")
    if (steady := results.get("latency")) is not None:
        if steady["lost"]:
            problems.append(f"latency: {steady['lost']} accepted events never reached the upstream")
        if bad := steady["refused"] + steady["unanswered"]:
            problems.append(f"latency: {bad} leads were not answered 202")
    if (limited := results.get("ratelimit")) is not None:
        count = parse_rate_limit(limited["limit"]).count
        if limited["worst_window"] > count:
            problems.append(f"rate limit exceeded: {limited['worst_window']} in one window")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    plan = _plan(args)
    signal.signal(signal.SIGTERM, _on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    procs = Procs(workdir)
    started = time.monotonic()
    generator = generator_name() if plan.use_wrk else "bundled"
    print(
        f"relay benchmark ({'smoke' if args.smoke else 'full'}): {os.cpu_count()} cores, "
        f"sections {','.join(s for s in SECTIONS if s in args.only)}, load by {generator}",
        flush=True,
    )
    code = 0
    results: dict[str, Any] = {}
    try:
        found = _run(plan, args.only, procs, results)
        print("\nTargets (printed, not asserted):")
        print("\n".join(report.targets(found)))
        for problem in _broken(results):
            print(f"bench: BROKEN: {problem}", file=sys.stderr)
            code = 1
    except BenchError as exc:
        print(f"\nbench: error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping everything it started", file=sys.stderr)
        code = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    took = time.monotonic() - started
    print(f"\nTook {took:.1f} s.", flush=True)
    if args.json:
        print(
            orjson.dumps(
                {
                    "mode": "smoke" if args.smoke else "full",
                    "seconds": round(took, 1),
                    "ok": code == 0,
                    "results": results,
                }
            ).decode()
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
