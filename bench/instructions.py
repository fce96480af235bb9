"""``python -m bench.instructions [TREE ...]``: the instructions an ingest request costs,
counted rather than timed, for one or more checkouts of relay side by side.

Timed figures on a shared machine move by 10 to 20 % from one round to the next, too much
to tell a change of 1 % apart. Instructions do not move with the machine: valgrind's
callgrind counts those that each tree's ``relay serve --no-worker`` and the Redis
behind it execute, turned on for exactly ``--requests`` requests (after ``--warmup``
more, which fill the queues as a running relay's are: a fresh Redis keeps small hashes
and zsets as listpacks, whose look-ups cost more the fuller they are) and off again.
Each tree has a Redis database of its own on one redis-server; the load is the
ingest section's (each lead a new contact, ``bench.load``), closed loop, in a process
of its own. Under callgrind both processes run some 50 times slower, so group commits
gather more requests than at full speed: compare trees with each other, not with
timed figures.

Needs ``valgrind`` on PATH (Debian: ``apt-get install valgrind``). Everything runs on
127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.ingest import LEAD
from bench.load import run_load
from bench.servers import BenchError, Proc, Procs, create_key, free_port, start_redis

__all__ = ["Count", "count_trees"]

#: This checkout (the default tree).
_HERE = Path(__file__).resolve().parent.parent
#: Under callgrind a start takes seconds rather than a fraction of one.
_START_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Count:
    """One tree's instructions a request."""

    tree: Path
    requests: int
    api: float  #: relay serve's
    redis: float  #: Redis's

    @property
    def both(self) -> float:
        return self.api + self.redis


def _callgrind(out: Path) -> list[str]:
    """What runs a command under callgrind, counting nothing until told to (``_control``)."""
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]


def _control(proc: Proc, *args: str) -> None:
    """``callgrind_control ARGS`` for ``proc``: ``-i on``/``-i off`` (count or not), ``-d``
    (write what was counted since the last dump)."""
    control = ["callgrind_control", *args, str(proc.popen.pid)]
    subprocess.run(control, check=True, capture_output=True, timeout=60)


def _dump(proc: Proc, out: Path) -> int:
    """Write what ``proc`` counted since its last dump; the instructions in it."""
    before = set(out.parent.glob(out.name + ".*"))
    _control(proc, "-d")
    deadline = time.monotonic() + 60
    while True:
        for path in set(out.parent.glob(out.name + ".*")) - before:
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("totals:"):
                    return int(line.split()[1])
        if time.monotonic() > deadline:
            raise BenchError(f"callgrind wrote no dump for {proc.name}")
        time.sleep(0.1)


@dataclass(frozen=True)
class _Redis:
    """The one redis-server, under callgrind, every tree's relay serve uses."""

    proc: Proc
    port: int
    out: Path


def count_trees(
    trees: Sequence[Path], *, requests: int, warmup: int, connections: int, lead: bytes
) -> list[Count]:
    """Each tree's instructions a request (see the module docstring), in order."""
    workdir = Path(tempfile.mkdtemp(prefix="relay-instructions-"))
    procs = Procs(workdir)
    try:
        out = workdir / "callgrind.redis"
        redis = _Redis(*start_redis(procs, under=_callgrind(out)), out)
        toml = workdir / "relay.toml"
        toml.write_text(
            '[destinations.sink]\ntype = "webhook"\nurl = "http://127.0.0.1:9/hook"\n'
            'events = ["lead"]\nsecret = "whsec_YmVuY2htYXJrLXNpZ25pbmcta2V5LTAxMjM0NTY3"\n'
        )
        return [
            _count(procs, redis, toml, tree, db, requests, warmup, connections, lead)
            for db, tree in enumerate(trees, start=1)
        ]
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def _count(
    procs: Procs,
    redis: _Redis,
    toml: Path,
    tree: Path,
    db: int,
    requests: int,
    warmup: int,
    connections: int,
    lead: bytes,
) -> Count:
    """One tree's relay serve (on Redis database ``db``), counted."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env |= {
        "PYTHONPATH": str(tree),  # that tree's relay, whatever the venv has installed
        "RELAY_REDIS_URL": f"redis://127.0.0.1:{redis.port}/{db}",
        "RELAY_CONFIG": str(toml),
        "RELAY_DATA_DIR": str(procs.workdir / f"data-{db}"),
    }
    auth = {
        "Authorization": f"Bearer {create_key(procs, env)}",
        "Content-Type": "application/json",
    }
    port, out = free_port(), procs.workdir / f"callgrind.api-{db}"
    argv = [sys.executable, "-m", "relay", "serve", "--no-worker"]
    api = procs.start(
        f"relay-serve-{db}",
        [*_callgrind(out), *argv, "--host", "127.0.0.1", "--port", str(port)],
        env=env,
    )
    procs.wait_http(api, f"http://127.0.0.1:{port}/readyz", timeout_s=_START_TIMEOUT_S)
    url = f"http://127.0.0.1:{port}/v1/leads"

    def load(n: int) -> int:
        result = run_load(
            procs, url, lead, auth, connections=connections, requests=n, use_wrk=False
        )
        if result.non_2xx or result.errors:
            raise BenchError(f"{tree}: {result.non_2xx} non-2xx answers, {result.errors} errors")
        return result.requests

    if warmup:
        load(warmup)
    _control(redis.proc, "-i", "on")
    _control(api, "-i", "on")
    answered = load(requests)
    _control(api, "-i", "off")
    _control(redis.proc, "-i", "off")
    api_total, redis_total = _dump(api, out), _dump(redis.proc, redis.out)
    procs.stop(api, timeout_s=120)
    return Count(tree, answered, api_total / answered, redis_total / answered)


def _report(counts: list[Count], *, connections: int, warmup: int) -> str:
    first = counts[0]
    lines = [
        f"Instructions an ingest request (callgrind): POST /v1/leads, {connections} "
        f"connections, {first.requests:,} requests counted after {warmup:,}",
        f"  {'tree':40} {'relay serve':>12} {'Redis':>10} {'both':>10}  vs the first",
    ]
    for c in counts:
        lines.append(
            f"  {str(c.tree)[-40:]:40} {c.api:12,.0f} {c.redis:10,.0f} {c.both:10,.0f}  "
            f"{c.api / first.api:.3f} / {c.redis / first.redis:.3f} / {c.both / first.both:.3f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.instructions",
        description="Instructions (valgrind's callgrind) an ingest request costs relay serve "
        "and Redis, for each checkout given, side by side; see the module docstring.",
        epilog="example: git worktree add /tmp/before HEAD~1 && "
        "python -m bench.instructions /tmp/before .",
    )
    parser.add_argument(
        "trees", nargs="*", type=Path, help="relay checkouts (default: this one); the first is "
        "the one the others are compared with"
    )  # fmt: skip
    parser.add_argument("--requests", type=int, default=3000, help="counted (default 3000)")
    parser.add_argument(
        "--warmup", type=int, default=12000, help="sent before counting (default 12000)"
    )
    parser.add_argument("--connections", type=int, default=64, help="(default 64)")
    parser.add_argument(
        "--lead", default=LEAD.decode(), help="the body, {n} a number of its own each request "
        "(default: the ingest section's lead)"
    )  # fmt: skip
    args = parser.parse_args(argv)
    trees = [t.resolve() for t in args.trees] or [_HERE]
    for tree in trees:
        if not (tree / "relay" / "__init__.py").is_file():
            parser.error(f"{tree} is not a relay checkout (no relay/__init__.py)")
    if args.requests < 1 or args.warmup < 0 or args.connections < 1:
        parser.error("--requests and --connections must be at least 1, --warmup at least 0")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        parser.error("needs valgrind and callgrind_control on PATH (apt-get install valgrind)")
    counts = count_trees(
        trees,
        requests=args.requests,
        warmup=args.warmup,
        connections=args.connections,
        lead=args.lead.encode(),
    )
    print(_report(counts, connections=args.connections, warmup=args.warmup))


if __name__ == "__main__":
    main()
