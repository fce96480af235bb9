"""Open-loop POST load at a fixed rate: ``python -m bench.openloop``, in a process of its own.

Request ``n`` is due at ``start + n / rate`` and is sent then, whether or not the
earlier ones were answered: a slow server gets more requests in flight, not fewer
requests, so its slowness shows in the figures instead of lowering the load (a
closed loop, like :mod:`bench.load`, waits for each answer and so hides it). The
connection pool has no limit for the same reason. Each body is the template with
``{n}`` replaced by ``n``: every request a different lead, so a different contact
(relay sends one contact's events one at a time, in order).

For each request the generator writes when it was due, sent and answered (on
:func:`bench.apps.host_clock`, to be compared with another process's times),
the status, and the ``id`` of a 202's JSON answer. :func:`run_openloop` runs it
and returns :class:`Send` rows in the order they were due.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.apps import host_clock, run_on_uvloop
from bench.servers import BenchError, Procs

__all__ = ["Send", "run_openloop"]

#: A request unanswered this long counts as unanswered.
_TIMEOUT_S = 10.0
#: Between the start of the run and the first request: the loop settles first.
_LEAD_S = 0.05


@dataclass(frozen=True)
class Send:
    """One request of the open loop, times on :func:`bench.apps.host_clock` (seconds)."""

    due: float
    sent: float
    answered: float | None  #: None: no answer (connection error, timeout)
    status: int  #: 0: no answer
    event_id: str | None  #: the ``id`` of a 202's answer

    @property
    def lag_s(self) -> float:
        """How far behind its schedule the request went out."""
        return self.sent - self.due


def run_openloop(
    procs: Procs,
    url: str,
    template: bytes,
    headers: dict[str, str],
    *,
    rate: float,
    count: int,
) -> list[Send]:
    """POST ``count`` bodies from ``template`` to ``url``, ``rate`` a second."""
    stem = f"openloop-{time.monotonic_ns()}"
    template_file = procs.workdir / f"{stem}.body"
    out_file = procs.workdir / f"{stem}.json"
    template_file.write_bytes(template)
    args = ["bench.openloop", "--url", url, "--template-file", str(template_file)]
    args += ["--rate", str(rate), "--count", str(count), "--out", str(out_file)]
    for name, value in headers.items():
        args += ["--header", f"{name}: {value}"]
    proc = procs.python("openloop", *args)
    code = procs.wait(proc, timeout_s=count / rate + _TIMEOUT_S + 60)
    if code != 0 or not out_file.exists():
        raise BenchError(f"the open-loop generator failed ({code}):\n{proc.log_tail()}")
    rows = orjson.loads(out_file.read_bytes())
    for path in (template_file, out_file, proc.log_path):
        path.unlink(missing_ok=True)
    return [Send(*row) for row in rows]


# --- the generator, in its own process ----------------------------------------------


async def _generate(
    url: str, template: bytes, headers: dict[str, str], *, rate: float, count: int
) -> list[list[Any]]:
    rows: list[list[Any]] = [[] for _ in range(count)]
    timeout = aiohttp.ClientTimeout(total=_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0)  # open loop: never wait for a connection
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(n: int, due: float) -> None:
            body = template.replace(b"{n}", str(n).encode())
            sent = host_clock()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    raw = await resp.read()
                    answered = host_clock()
            except (aiohttp.ClientError, OSError, TimeoutError):
                rows[n] = [due, sent, None, 0, None]
                return
            event_id = orjson.loads(raw).get("id") if resp.status == 202 else None
            rows[n] = [due, sent, answered, resp.status, event_id]

        tasks = []
        start = host_clock() + _LEAD_S
        for n in range(count):
            due = start + n / rate
            if (wait_s := due - host_clock()) > 0:
                await asyncio.sleep(wait_s)
            tasks.append(asyncio.create_task(one(n, due)))
        await asyncio.gather(*tasks)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.openloop", description="Open-loop POST load at a fixed rate."
    )
    parser.add_argument("--url", required=True)
    parser.add_argument(
        "--template-file", type=Path, required=True, help="the body; {n} is the request's number"
    )
    parser.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--count", type=int, required=True, help="requests to send in all")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON rows")
    args = parser.parse_args(argv)
    if not args.url.startswith("http://127.0.0.1:"):
        parser.error("the bench loads 127.0.0.1 only")
    if args.rate <= 0 or args.count < 1:
        parser.error("--rate must be above 0 and --count at least 1")
    headers = dict(h.split(": ", 1) for h in args.header)
    coro = _generate(
        args.url, args.template_file.read_bytes(), headers, rate=args.rate, count=args.count
    )
    # Nothing made so far is garbage: full collections then walk only the rows.
    gc.collect()
    gc.freeze()
    args.out.write_bytes(orjson.dumps(run_on_uvloop(coro)))


if __name__ == "__main__":
    main()
