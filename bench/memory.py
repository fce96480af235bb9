"""Memory: Redis bytes per queued event, and relay's RSS under sustained ingest.

N leads, each a different contact, are posted to ``/v1/leads`` in batches of
500 by a few concurrent connections, to a relay serve of the section's own
that keeps its data in a Redis database of its own (as a fresh Redis would);
nothing delivers them (``sink`` has no worker), so every one stays queued.
Redis ``used_memory`` after minus before, divided by N, is compared with the
bytes of one lead's JSON. That relay serve's VmRSS is read before the load,
when half the events are in, and at the end.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from redis import Redis

from bench.servers import BATCH, Api, BenchError, Stack, rss_kib

__all__ = ["MemoryResult", "run_memory"]

#: Connections posting batches at once.
_POSTERS = 4
_PHONE = "+14155550100"
#: How often relay's RSS is read during the load.
_SAMPLE_S = 0.2
#: The Redis database the section's own relay serve uses: a keyspace of its own, so the
#: figure does not depend on how many keys the earlier sections left (the keyspace's
#: hash tables double as it grows, and one doubling more or less in the measured
#: window moved the figure by 100 bytes an event). Not 1 (the RELAY_PARTITIONS=1 sides
#: of ingest and delivery: the count is kept in Redis) nor 2 (latency).
_DB = 3


@dataclass(frozen=True)
class MemoryResult:
    events: int
    payload_bytes: float  #: mean bytes of one lead's JSON as posted
    redis_bytes: float  #: used_memory growth per event
    keys_per_event: float
    aof_bytes: float | None  #: append-only file growth per event (None: it was rewritten)
    ingest_s: float
    rss_kib: tuple[int, int, int]  #: before the load, at half, at the end
    rss_peak_kib: int

    @property
    def ratio(self) -> float:
        return self.redis_bytes / self.payload_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "payload_bytes": round(self.payload_bytes, 1),
            "redis_bytes_per_event": round(self.redis_bytes, 1),
            "ratio": round(self.ratio, 2),
            "keys_per_event": round(self.keys_per_event, 2),
            "aof_bytes_per_event": None if self.aof_bytes is None else round(self.aof_bytes, 1),
            "ingest_events_per_s": round(self.events / self.ingest_s, 1),
            "relay_rss_kib": {
                "start": self.rss_kib[0],
                "mid": self.rss_kib[1],
                "end": self.rss_kib[2],
                "peak": self.rss_peak_kib,
            },
        }


def _snapshot(redis: Redis) -> tuple[int, int, int | None, int]:
    """used_memory, keys, the append-only file's size, and the forks so far."""
    memory, persistence, stats = (
        redis.info("memory"),
        redis.info("persistence"),
        redis.info("stats"),
    )
    aof = persistence.get("aof_current_size")
    return (
        int(memory["used_memory"]),
        int(redis.dbsize()),
        None if aof is None else int(aof),
        int(stats["total_forks"]),
    )


def _per_event(before: int | None, after: int | None, events: int) -> float | None:
    return None if before is None or after is None else (after - before) / events


def run_memory(stack: Stack, *, events: int) -> MemoryResult:
    api = stack.start_api("relay-serve-memory", db=_DB)
    redis = Redis(host="127.0.0.1", port=stack.redis_port, db=_DB)
    try:
        return _measure(stack, api, redis, events)
    finally:
        redis.close()
        stack.procs.stop(api.proc)


def _measure(stack: Stack, api: Api, redis: Redis, events: int) -> MemoryResult:
    pid = api.proc.pid
    tag = f"m{time.monotonic_ns()}-"
    done = 0
    payload = 0
    lock = threading.Lock()
    samples: list[tuple[int, int]] = []  # (events in, rss KiB)
    finished = threading.Event()

    def post(start: int) -> None:
        nonlocal done, payload
        items = [
            orjson.dumps({"email": f"{tag}{i}@example.com", "first_name": "Ann", "phone": _PHONE})
            for i in range(start, min(events, start + BATCH))
        ]
        answer = api.post("/v1/leads", b"[" + b",".join(items) + b"]")
        if len(answer.get("accepted", ())) != len(items):
            raise BenchError(f"relay did not queue every lead: {str(answer)[:300]}")
        with lock:
            done += len(items)
            payload += sum(len(item) for item in items)

    def sample() -> None:
        while not finished.wait(_SAMPLE_S):
            samples.append((done, rss_kib(pid)))

    before = _snapshot(redis)
    rss_start = rss_kib(pid)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(_POSTERS) as pool:
            for _ in pool.map(post, range(0, events, BATCH)):
                api.proc.check_alive()
    finally:
        finished.set()
        sampler.join()
    ingest_s = time.monotonic() - started
    rss_end = rss_kib(pid)
    stack.wait_quiet()  # a rewrite's buffer would count as the events' memory
    after = _snapshot(redis)
    mid = next((rss for n, rss in samples if n >= events / 2), rss_end)
    return MemoryResult(
        events=events,
        payload_bytes=payload / events,
        redis_bytes=(after[0] - before[0]) / events,
        keys_per_event=(after[1] - before[1]) / events,
        # A rewrite of the append-only file (a fork) shrinks it: its growth means nothing then.
        aof_bytes=_per_event(before[2], after[2], events) if before[3] == after[3] else None,
        ingest_s=ingest_s,
        rss_kib=(rss_start, mid, rss_end),
        rss_peak_kib=max([rss_start, rss_end, *(rss for _, rss in samples)]),
    )
