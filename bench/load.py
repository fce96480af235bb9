"""Closed-loop HTTP load: ``wrk`` when it is on PATH, else a bundled aiohttp generator.

Both run in a process of their own, so they never share a server's event loop.
The bundled one is also ``python -m bench.load`` (it writes its result as JSON
to ``--out``); :func:`run_load` picks one and returns a :class:`LoadResult`.
Every connection sends the next request as soon as the previous answer is read.
A body with ``{n}`` in it is a template: each request gets its own number there (from a
random start, so that no two runs repeat one), e.g. a new contact for every lead.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.apps import run_on_uvloop
from bench.servers import BenchError, Procs

__all__ = ["LoadResult", "generator_name", "percentile", "run_load", "wrk_script"]

#: A request unanswered this long counts as an error.
_TIMEOUT_S = 10.0
#: In a template body, what each request's number replaces.
NUMBER = b"{n}"
_WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"status_errors":%d,"errors":%d,'
    .. '"p50_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured."""

    generator: str
    requests: int  #: answered requests (any status)
    duration_s: float
    non_2xx: int  #: answered with a status outside 200-299 (wrk: 400 and above)
    errors: int  #: connection errors and timeouts
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"rps": round(self.rps, 1)}


def generator_name() -> str:
    return "wrk" if shutil.which("wrk") else "bundled"


def run_load(
    procs: Procs,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    connections: int,
    duration_s: float | None = None,
    requests: int | None = None,
    use_wrk: bool = True,
) -> LoadResult:
    """Load ``url`` with POSTs of ``body`` for ``duration_s`` or ``requests`` in all
    (``body`` may be a template: see the module docstring)."""
    if use_wrk and duration_s is not None and shutil.which("wrk"):
        return _run_wrk(procs, url, body, headers, connections=connections, duration_s=duration_s)
    return _run_bundled(
        procs,
        url,
        body,
        headers,
        connections=connections,
        duration_s=duration_s,
        requests=requests,
    )


def _lua_string(text: str) -> str:
    level = "="
    while f"]{level}]" in text:
        level += "="
    return f"[{level}[{text}]{level}]"


def _first_number() -> int:
    """Where a run's request numbers start: at random, below 10^12 (Lua prints every
    integer up to 10^14 in full), so that runs do not repeat each other's."""
    return secrets.randbelow(10**12)


def wrk_script(body: bytes, headers: dict[str, str]) -> str:
    """The Lua that makes wrk POST ``body`` (a template: a number of its own each
    request) with ``headers``, and print its result as one JSON line."""
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(body.decode())}"]
    lines += [f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in headers.items()]
    if NUMBER in body:  # one thread (wrk -t1): one counter numbers every request
        head, _, tail = body.decode().partition(NUMBER.decode())
        lines += [
            f"local n = {_first_number()}",
            "request = function()",
            "  n = n + 1",
            f"  return wrk.format(nil, nil, nil, {_lua_string(head)} .. n .. {_lua_string(tail)})",
            "end",
        ]
    return "\n".join(lines) + "\n" + _WRK_DONE


def _run_wrk(
    procs: Procs,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    connections: int,
    duration_s: float,
) -> LoadResult:
    script = procs.workdir / "post.lua"
    script.write_text(wrk_script(body, headers))
    # One thread: like the bundled generator, the load takes at most one of the cores.
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--latency"]
    argv += [f"--timeout={_TIMEOUT_S:.0f}s", "-s", str(script), url]
    proc = procs.start("wrk", argv)
    procs.wait(proc, timeout_s=duration_s + 30)
    out = proc.log_path.read_text(errors="replace")
    proc.log_path.unlink()
    found = [line for line in out.splitlines() if line.startswith("BENCH_JSON ")]
    if proc.popen.returncode != 0 or not found:
        raise BenchError(f"wrk failed ({proc.popen.returncode}):\n{out[-2000:]}")
    doc = orjson.loads(found[-1].removeprefix("BENCH_JSON "))
    return LoadResult(
        generator="wrk",
        requests=doc["requests"],
        duration_s=doc["duration_us"] / 1e6,
        non_2xx=doc["status_errors"],
        errors=doc["errors"],
        p50_ms=doc["p50_us"] / 1000,
        p99_ms=doc["p99_us"] / 1000,
        max_ms=doc["max_us"] / 1000,
    )


def _run_bundled(
    procs: Procs,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    connections: int,
    duration_s: float | None,
    requests: int | None,
) -> LoadResult:
    stem = f"load-{time.monotonic_ns()}"
    body_file = procs.workdir / f"{stem}.body"
    out_file = procs.workdir / f"{stem}.json"
    body_file.write_bytes(body)
    args = ["bench.load", "--url", url, "--body-file", str(body_file), "--out", str(out_file)]
    args += ["--connections", str(connections)]
    for name, value in headers.items():
        args += ["--header", f"{name}: {value}"]
    if duration_s is not None:
        args += ["--duration", str(duration_s)]
    if requests is not None:
        args += ["--requests", str(requests)]
    proc = procs.python("load", *args)
    limit_s = (duration_s or 0) + (requests or 0) / 50 + 60
    code = procs.wait(proc, timeout_s=limit_s)
    if code != 0 or not out_file.exists():
        raise BenchError(f"the load generator failed ({code}):\n{proc.log_tail()}")
    doc = orjson.loads(out_file.read_bytes())
    for path in (body_file, out_file, proc.log_path):
        path.unlink(missing_ok=True)
    return LoadResult(generator="bundled", **doc)


# --- the bundled generator, in its own process -----------------------------------


def percentile(ordered: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile of sorted values (0.0 for none)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, math.ceil(pct / 100 * len(ordered)) - 1)]


async def _generate(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    connections: int,
    duration_s: float | None,
    requests: int | None,
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors = 0
    left = requests if requests is not None else math.inf
    timeout = aiohttp.ClientTimeout(total=_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        deadline = start + duration_s if duration_s is not None else math.inf

        number, template = _first_number(), NUMBER in body

        async def one_connection() -> None:
            nonlocal errors, left, number
            while left > 0 and time.perf_counter() < deadline:
                left -= 1
                data = body
                if template:
                    number += 1
                    data = body.replace(NUMBER, str(number).encode())
                sent = time.perf_counter()
                try:
                    async with session.post(url, data=data, headers=headers) as resp:
                        await resp.read()
                except (aiohttp.ClientError, OSError, TimeoutError):
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - sent)
                statuses[resp.status] += 1

        await asyncio.gather(*(one_connection() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": len(latencies),
        "duration_s": elapsed,
        "non_2xx": sum(n for status, n in statuses.items() if not 200 <= status < 300),
        "errors": errors,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": (latencies[-1] if latencies else 0.0) * 1000,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description="Closed-loop POST load (the bundled generator)."
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, help="seconds to run")
    parser.add_argument("--requests", type=int, help="requests to send in all")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    args = parser.parse_args(argv)
    if (args.duration is None) == (args.requests is None):
        parser.error("give --duration or --requests")
    if not args.url.startswith("http://127.0.0.1:"):
        parser.error("the bench loads 127.0.0.1 only")
    headers = dict(h.split(": ", 1) for h in args.header)
    coro = _generate(
        args.url,
        args.body_file.read_bytes(),
        headers,
        connections=args.connections,
        duration_s=args.duration,
        requests=args.requests,
    )
    args.out.write_bytes(orjson.dumps(run_on_uvloop(coro)))


if __name__ == "__main__":
    main()
