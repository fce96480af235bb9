"""The delivery worker: read each destination's stream and deliver what it holds.

Any number of workers, in any number of processes and hosts, share the work
through one consumer group per destination stream. Each request goes the one way
of :mod:`relay.delivery` (take, send, settle). ``stop()`` (SIGTERM) stops reading
and lets in-flight deliveries finish; ``run(drain=True)`` returns once nothing is
waiting, pending or scheduled (for tests and one-off catch-ups).

A worker holds no more than it can send within the visibility window (the window
times the rate limit, and its free delivery slots), reads nothing for a paused
destination, and keeps what it holds claimed (entries and leases: relay/lua/keep.lua)
until it is settled, so a healthy worker's events are never claimed and sent again
by another.

Delivery never silently stops: a Redis that does not answer (at start or later) is
waited for, each loop telling the process's RedisWatch, which logs the outage; a loop
that dies of anything else is logged and restarted by its Supervisor
(relay.availability). The worker beats in Redis (relay.heartbeat) so ``relay status``
can tell pending events with no live worker behind them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
import orjson
from redis.asyncio import Redis

from relay import redis_keys
from relay.adapters import make_adapter
from relay.availability import RedisWatch, Supervisor
from relay.delivery import MAX_WAIT_S, Deliverer, Sender
from relay.errors import StoreUnavailable
from relay.heartbeat import Heartbeat
from relay.hooks import HookStore
from relay.ids import random_base62
from relay.notify import Notifier, guarded_session
from relay.queue import DeliveryQueue, Entry
from relay.ratelimit import RateLimiter, local_limiter
from relay.settings import DeliverySettings, Settings
from relay.store import EventStore
from relay.tracing import Tracing

__all__ = ["Worker"]

log = logging.getLogger("relay.worker")

#: How long one XREADGROUP waits for new entries before the loop looks around again.
_BLOCK_MS = 500
#: How often due retries are moved back into their streams, and stale entries claimed.
_HOUSEKEEPING_S = 0.25
#: How long stop() waits for the loops to end once cancelled.
_STOP_S = 2.0


class Worker:
    """Deliver queued events of every enabled destination.

    >>> await Worker(settings, redis=redis).run(drain=True)  # doctest: +SKIP
    """

    __slots__ = (
        "_consumer",
        "_deliverer",
        "_free",
        "_heartbeat",
        "_held",
        "_holders",
        "_hooks",
        "_in_flight",
        "_limiter",
        "_loops",
        "_queue",
        "_redis",
        "_requests",
        "_running",
        "_session",
        "_settings",
        "_sizes",
        "_stopping",
        "_tracing",
        "_waiting",
        "_watch",
        "concurrency",
    )

    def __init__(
        self,
        settings: Settings,
        *,
        redis: Redis,
        session: aiohttp.ClientSession | None = None,
        concurrency: int = 16,
        consumer: str | None = None,
        watch: RedisWatch | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._settings = settings
        #: Spans of deliveries (relay.tracing): sessions made here get its trace config.
        self._tracing = tracing or Tracing()
        self._redis = redis
        self._session = session
        #: Requests this process has under way at once, across destinations.
        self.concurrency = concurrency
        host, pid = socket.gethostname(), os.getpid()
        self._consumer = consumer or f"{host}-{pid}-{random_base62(6)}"
        self._heartbeat = Heartbeat(redis, self._consumer, host=host, pid=pid)
        #: The process's one voice about Redis outages (shared with the API in `relay serve`).
        self._watch = watch or RedisWatch()
        self._loops: list[Supervisor] = []
        self._queue = DeliveryQueue(
            redis, retention_s=settings.retention_s, partitions=settings.partitions
        )
        self._limiter = RateLimiter(redis)
        self._hooks = HookStore(redis)
        self._deliverer: Deliverer | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        #: Set whenever a delivery ends: a slot may be free.
        self._free = asyncio.Event()
        #: Per destination, the stream entries and the request holders this worker has
        #: not settled: kept claimed (relay/lua/keep.lua) until then, so no other worker
        #: claims them while they wait for a slot, a rate limit or a pause.
        self._held: dict[str, set[Entry]] = {name: set() for name in self.destinations}
        self._holders: dict[str, set[str]] = {name: set() for name in self.destinations}
        #: Per destination, the requests read and not started yet (oldest first), and how
        #: many are under way.
        self._waiting: dict[str, deque[tuple[str, Sequence[Entry]]]] = {
            name: deque() for name in self.destinations
        }
        self._running = dict.fromkeys(self.destinations, 0)
        #: Per destination, how many entries go in one request (ConveYour's batch_size).
        self._sizes = {
            name: getattr(self._config(name), "batch_size", 1) for name in self.destinations
        }
        #: Numbers this worker's requests (their holders, with its consumer name).
        self._requests = itertools.count(1)
        self._stopping = asyncio.Event()

    def __repr__(self) -> str:
        counts = self._deliverer.counts if self._deliverer is not None else {}
        done = " ".join(f"{k}={v}" for k, v in counts.items())
        return f"<Worker {self._consumer} {done} in_flight={len(self._in_flight)}>"

    @property
    def destinations(self) -> list[str]:
        """Streams this worker reads: enabled destinations, and hook notifications."""
        enabled = [name for name, d in self._settings.destinations.items() if d.enabled]
        return [*enabled, redis_keys.NOTIFICATIONS]

    def _config(self, name: str) -> DeliverySettings:
        if name == redis_keys.NOTIFICATIONS:
            return self._settings.hooks
        return self._settings.destinations[name]

    @property
    def alive(self) -> bool:
        """Every loop is running (none is dead, waiting to be restarted)."""
        return bool(self._loops) and all(loop.running for loop in self._loops)

    def stop(self) -> None:
        """Stop taking new work; ``run`` returns once in-flight deliveries are done."""
        self._stopping.set()

    async def run(self, *, drain: bool = False) -> None:
        """Deliver until ``stop()``, or with ``drain`` until there is nothing left to do.

        Needs no Redis to start: each loop waits for it (and makes its consumer group)."""
        async with contextlib.AsyncExitStack() as stack:
            session = self._session
            if session is None:
                session = await stack.enter_async_context(
                    aiohttp.ClientSession(
                        json_serialize=lambda o: orjson.dumps(o).decode(),
                        trace_configs=self._tracing.trace_configs(),
                    )
                )
            adapters: dict[str, Sender] = {
                name: make_adapter(name, self._settings.destinations[name], session)
                for name in self.destinations
                if name != redis_keys.NOTIFICATIONS
            }
            adapters[redis_keys.NOTIFICATIONS] = Notifier(
                self._settings.hooks,
                hooks=self._hooks,
                events=EventStore(
                    self._redis,
                    retention_s=self._settings.retention_s,
                    partitions=self._settings.partitions,
                ),
                session=await stack.enter_async_context(
                    guarded_session(
                        self._settings.hooks, trace_configs=self._tracing.trace_configs()
                    )
                ),
            )
            configs = {name: self._config(name) for name in self.destinations}
            self._deliverer = Deliverer(
                self._queue,
                configs=configs,
                adapters=adapters,
                hooks=self._hooks,
                watch=self._watch,
                claim_after_s=self._settings.claim_after_s,
                limiter=self._limiter,
                # Made here, in the running loop (aiolimiter binds to the first it sees).
                local={
                    name: local_limiter(config.rate_limit)
                    for name, config in configs.items()
                    if config.rate_limit is not None
                },
                stopping=self._stopping,
                tracing=self._tracing,
            )
            repeat = self._watch.repeat
            loops: dict[str, Callable[[], Awaitable[None]]] = {
                f"reading {name}": functools.partial(repeat, functools.partial(self._read, name))
                for name in self.destinations
            }
            loops["hook subscriptions"] = functools.partial(self._hooks.listen, watch=self._watch)
            loops["housekeeping"] = functools.partial(
                repeat, self._housekeeping, every_s=_HOUSEKEEPING_S
            )
            loops["heartbeat"] = functools.partial(
                repeat, self._heartbeat.beat, every_s=redis_keys.WORKER_BEAT_S
            )
            if drain:
                loops["drain"] = functools.partial(repeat, self._stop_if_idle, every_s=0.05)
            self._loops = [Supervisor(f"worker loop {what!r}") for what in loops]
            tasks = [
                asyncio.create_task(loop.run(target, stopping=self._stopping))
                for loop, target in zip(self._loops, loops.values(), strict=True)
            ]
            # Its own loop (housekeeping may wait for a delivery slot), at a third of the
            # shortest window, and on until the last delivery is done (stop() included).
            keeping = Supervisor("worker loop 'keeping held entries claimed'")
            self._loops.append(keeping)
            every_s = min(map(self._deliverer.lease_ms, self.destinations)) / 3000
            keeper = asyncio.create_task(
                keeping.run(functools.partial(repeat, self._keep_held, every_s=every_s))
            )
            try:
                await self._stopping.wait()
            finally:
                for task in tasks:
                    task.cancel()
                # A loop stuck in a Redis call that swallowed its cancellation is left
                # behind (closing the client ends it) rather than keeping the worker up.
                _, stuck = await asyncio.wait(tasks, timeout=_STOP_S)
                if stuck:
                    log.warning("%d worker loops did not stop within %s s", len(stuck), _STOP_S)
                self._let_go()
                if self._in_flight:
                    await asyncio.gather(*self._in_flight, return_exceptions=True)
                keeper.cancel()
                await asyncio.wait([keeper], timeout=_STOP_S)
                with contextlib.suppress(StoreUnavailable):
                    await self._heartbeat.forget()
        log.info("worker stopped: %r", self)

    async def _stop_if_idle(self) -> None:
        waiting = any(self._waiting.values())
        if not self._in_flight and not waiting and await self._queue.idle(self.destinations):
            self._stopping.set()

    def _cap(self, destination: str) -> int:
        """Requests of one destination this worker runs at once: no more than its leases."""
        return min(self.concurrency, self._config(destination).max_in_flight)

    def _most(self, destination: str) -> int:
        """Entries of one destination this worker holds at most (read, waiting or under
        way): twice what it may run at once, so that the next request is ready when one
        ends, and no more than the rate limit lets go within the visibility window."""
        assert self._deliverer is not None
        most = 2 * self._cap(destination) * self._sizes[destination]
        if (limit := self._config(destination).rate_limit) is not None:
            window_s = self._deliverer.lease_ms(destination) / 1000
            most = max(1, min(most, int(limit.count * window_s / limit.period_s)))
        return most

    async def _read(self, destination: str) -> None:
        """Read what the stream has new (the first read makes the group), and start it:
        in chunks, up to what the worker may hold (:meth:`_most`), and nothing while the
        destination is paused (an upstream 429)."""
        most = self._most(destination)
        room = most - len(self._held[destination])
        if room < max(1, most // 2):  # read in chunks: wait for deliveries to end
            self._free.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._free.wait(), MAX_WAIT_S)
            return
        paused_s = await self._limiter.paused_for(destination)
        if paused_s > 0:
            await asyncio.sleep(min(paused_s, MAX_WAIT_S))
            return
        entries = await self._queue.read(
            destination, self._consumer, count=room, block_ms=_BLOCK_MS
        )
        self._queue_up(destination, entries)

    async def _keep_held(self) -> None:
        """Keep every entry and lease this worker holds and has not settled."""
        assert self._deliverer is not None
        for name, held in self._held.items():
            if held:
                await self._queue.keep(
                    name,
                    self._consumer,
                    sorted(held),
                    sorted(self._holders[name]),
                    lease_ms=self._deliverer.lease_ms(name),
                )

    async def _housekeeping(self) -> None:
        """Due retries back into their streams, and entries another worker left (it died)
        claimed to be delivered here."""
        assert self._deliverer is not None
        await self._queue.move_due_retries(self.destinations)
        for name in self.destinations:
            room = self._most(name) - len(self._held[name])
            if room <= 0:
                continue
            claimed = await self._queue.claim_stale(
                name, self._consumer, min_idle_ms=self._deliverer.lease_ms(name), count=room
            )
            self._queue_up(name, claimed)

    def _queue_up(self, destination: str, entries: Sequence[Entry]) -> None:
        """Hold these entries (kept claimed until settled) and start them as slots allow,
        a request per ``batch_size``. An entry this worker holds already (claimed back
        from itself when keeping it was late) is not queued twice."""
        held = self._held[destination]
        entries = [e for e in entries if e not in held]
        if not entries:
            return
        held.update(entries)
        size = self._sizes[destination]
        waiting = self._waiting[destination]
        for i in range(0, len(entries), size):
            # Each request its own holder: a second request for an entry (another
            # worker's, or this one's) is refused while the first one's hold lives.
            holder = f"{self._consumer}:{next(self._requests)}"
            waiting.append((holder, entries[i : i + size]))
        self._dispatch()

    def _dispatch(self) -> None:
        """Start waiting requests while this worker has slots free, in turn across the
        destinations, each no more at once than its leases allow (stopped: none)."""
        started = True
        while started and not self._stopping.is_set():
            started = False
            for name, waiting in self._waiting.items():
                if sum(self._running.values()) >= self.concurrency:
                    return
                if waiting and self._running[name] < self._cap(name):
                    holder, entries = waiting.popleft()
                    self._spawn(name, holder, entries)
                    started = True

    def _spawn(self, destination: str, holder: str, entries: Sequence[Entry]) -> None:
        assert self._deliverer is not None
        holders = self._holders[destination]
        holders.add(holder)
        self._running[destination] += 1
        running = True

        def free() -> None:
            """The request's slot goes to the next one as soon as its events are settled
            in their partitions: that one's take then shares the control step's call
            (scripts.CONTROL) with this one's settle, which gives its lease back first."""
            nonlocal running
            if running:
                running = False
                self._running[destination] -= 1
                self._dispatch()

        task = asyncio.create_task(
            self._deliverer.deliver(destination, holder, entries, settled=free)
        )
        self._in_flight.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._in_flight.discard(t)
            holders.discard(holder)
            self._held[destination].difference_update(entries)
            self._free.set()
            free()

        task.add_done_callback(done)

    def _let_go(self) -> None:
        """Forget the requests read and never started (at stop): they stay pending in
        Redis, for another worker to claim after the visibility window."""
        for name, waiting in self._waiting.items():
            for _, entries in waiting:
                self._held[name].difference_update(entries)
            waiting.clear()
