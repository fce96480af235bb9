"""The delivery worker: read each destination's stream, deliver, then ack, retry or dead-letter.

Any number of workers, in any number of processes and hosts, share the work
through one consumer group per destination stream. A delivery counts against
the destination's global rate limit and in-flight cap (both in Redis) before
its request is made. ``stop()`` (SIGTERM) stops reading and lets in-flight
deliveries finish; ``run(drain=True)`` returns once nothing is waiting,
pending or scheduled (for tests and one-off catch-ups).

Delivery never silently stops: a Redis that does not answer (at start or
later) is waited for, each loop telling the process's RedisWatch, which logs
the outage; a loop that dies of anything else is logged and restarted by its
Supervisor (relay.availability). The worker beats in Redis (relay.heartbeat)
so ``relay status`` can tell pending events with no live worker behind them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import aiohttp
import orjson
from redis.asyncio import Redis

from relay import redis_keys
from relay.adapters import make_adapter
from relay.adapters.base import Attempt, Outcome
from relay.availability import RedisWatch, Supervisor
from relay.errors import StoreUnavailable
from relay.gate import MAX_WAIT_S, Gate
from relay.heartbeat import Heartbeat
from relay.hooks import HookStore, notification_records
from relay.ids import random_base62
from relay.models import DeliveryStatus
from relay.notify import Notifier, guarded_session
from relay.order import ContactOrder
from relay.queue import DeliveryQueue, Entry
from relay.ratelimit import FULL_POLL_S, RateLimiter
from relay.retry import next_delay_s
from relay.settings import DeliverySettings, Settings
from relay.store import EventStore, contact_key

__all__ = ["Worker"]

log = logging.getLogger("relay.worker")

#: How long one XREADGROUP waits for new entries before the loop looks around again.
_BLOCK_MS = 500
#: How often due retries are moved back into their streams, and stale entries claimed.
_HOUSEKEEPING_S = 0.25
#: Every this many housekeeping passes (5 s), a slice of each heads hash is swept for
#: heads that expired unsent (or that an older release settled), so the next one goes.
_SWEEP_EVERY = 20
#: Times a delivery interrupted by a Redis error is resumed here before it is left
#: pending for another worker to claim.
_LOCAL_RETRIES = 3
#: How long stop() waits for the loops to end once cancelled.
_STOP_S = 2.0
#: How long an event waits when an earlier event of its contact is still on its way.
_ORDER_WAIT_MS = 200


class Worker:
    """Deliver queued events of every enabled destination.

    >>> await Worker(settings, redis=redis).run(drain=True)  # doctest: +SKIP
    """

    __slots__ = (
        "_adapters",
        "_consumer",
        "_counts",
        "_gate",
        "_heartbeat",
        "_held",
        "_hooks",
        "_in_flight",
        "_limiter",
        "_loops",
        "_order",
        "_queue",
        "_redis",
        "_session",
        "_settings",
        "_slots",
        "_stopping",
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
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._session = session
        #: Deliveries this process runs at once, across destinations.
        self.concurrency = concurrency
        host, pid = socket.gethostname(), os.getpid()
        self._consumer = consumer or f"{host}-{pid}-{random_base62(6)}"
        self._heartbeat = Heartbeat(redis, self._consumer, host=host, pid=pid)
        #: The process's one voice about Redis outages (shared with the API in `relay serve`).
        self._watch = watch or RedisWatch()
        self._loops: list[Supervisor] = []
        self._queue = DeliveryQueue(redis, retention_s=settings.retention_s)
        self._order = ContactOrder(redis)
        self._limiter = RateLimiter(redis)
        self._hooks = HookStore(redis)
        self._adapters: dict[str, Any] = {}
        self._gate = Gate(self._limiter, claim_after_s=settings.claim_after_s)
        self._counts = {"delivered": 0, "retrying": 0, "dead": 0}
        self._in_flight: set[asyncio.Task[None]] = set()
        #: Stream entries this worker's tasks hold, per destination: kept claimed (their
        #: idle time refreshed) until settled, so no other worker claims them meanwhile.
        self._held: dict[str, set[str]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._stopping = asyncio.Event()

    def __repr__(self) -> str:
        c = self._counts
        return (
            f"<Worker {self._consumer} delivered={c['delivered']} retrying={c['retrying']} "
            f"dead={c['dead']} in_flight={len(self._in_flight)}>"
        )

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
        self._slots = asyncio.Semaphore(self.concurrency)
        async with contextlib.AsyncExitStack() as stack:
            session = self._session
            if session is None:
                session = await stack.enter_async_context(
                    aiohttp.ClientSession(json_serialize=lambda o: orjson.dumps(o).decode())
                )
            self._gate.start(
                {
                    name: limit
                    for name in self.destinations
                    if (limit := self._config(name).rate_limit) is not None
                }
            )
            self._adapters = {
                name: make_adapter(name, self._settings.destinations[name], session)
                for name in self.destinations
                if name != redis_keys.NOTIFICATIONS
            }
            self._adapters[redis_keys.NOTIFICATIONS] = Notifier(
                self._settings.hooks,
                hooks=self._hooks,
                events=EventStore(self._redis, retention_s=self._settings.retention_s),
                session=await stack.enter_async_context(guarded_session(self._settings.hooks)),
            )
            repeat = self._watch.repeat
            loops: dict[str, Callable[[], Awaitable[None]]] = {
                f"reading {name}": functools.partial(repeat, functools.partial(self._read, name))
                for name in self.destinations
            }
            loops["hook subscriptions"] = functools.partial(self._hooks.listen, watch=self._watch)
            loops["housekeeping"] = functools.partial(
                repeat, self._housekeeping_pass(), every_s=_HOUSEKEEPING_S
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
            every_s = min(map(self._window_s, self.destinations)) / 3
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
                if self._in_flight:
                    await asyncio.gather(*self._in_flight, return_exceptions=True)
                keeper.cancel()
                await asyncio.wait([keeper], timeout=_STOP_S)
                with contextlib.suppress(StoreUnavailable):
                    await self._heartbeat.forget()
        log.info("worker stopped: %r", self)

    async def _stop_if_idle(self) -> None:
        if not self._in_flight and await self._queue.idle(self.destinations):
            self._stopping.set()

    def _window_s(self, destination: str) -> float:
        """The visibility window: idle this long, an entry is claimed by another worker."""
        return self._config(destination).timeout_s + self._settings.claim_after_s

    async def _read(self, destination: str) -> None:
        """Start delivering what the stream has new (the first read makes the group).

        Nothing is read while the destination is paused (an upstream 429), nor more
        than its rate limit lets go within the visibility window."""
        config = self._config(destination)
        paused_s = await self._limiter.paused_for(destination)
        if paused_s > 0:
            await asyncio.sleep(min(paused_s, MAX_WAIT_S))
            return
        size = getattr(config, "batch_size", 1)
        count = self.concurrency * size
        if (limit := config.rate_limit) is not None:
            per_window = limit.count * self._window_s(destination) / limit.period_s
            count = max(1, min(count, int(per_window)))
        entries = await self._queue.read(
            destination, self._consumer, count=count, block_ms=_BLOCK_MS
        )
        self._held.setdefault(destination, set()).update(e.id for e in entries)
        for i in range(0, len(entries), size):
            await self._start(destination, entries[i : i + size])

    async def _keep_held(self) -> None:
        """Reset the idle time of every entry this worker holds and has not settled."""
        for name, held in self._held.items():
            if held:
                await self._queue.keep(name, self._consumer, sorted(held))

    def _housekeeping_pass(self) -> Callable[[], Awaitable[None]]:
        """One pass: due retries back into their streams, stale entries claimed, and every
        _SWEEP_EVERY passes a slice of each heads hash swept."""
        sweeps = dict.fromkeys(self.destinations, "0")  # heads-hash cursors (relay.order)
        passes = 0

        async def one_pass() -> None:
            nonlocal passes
            await self._queue.move_due_retries(self.destinations)
            if passes % _SWEEP_EVERY == 0:
                for name, cursor in sweeps.items():
                    sweeps[name] = await self._order.sweep(name, cursor)
            passes += 1
            for name in self.destinations:
                timeout_s = self._config(name).timeout_s
                idle_ms = int((timeout_s + self._settings.claim_after_s) * 1000)
                for entry in await self._queue.claim_stale(
                    name, self._consumer, min_idle_ms=idle_ms, count=self.concurrency
                ):
                    await self._start(name, [entry])

        return one_pass

    async def _start(self, destination: str, entries: list[Entry]) -> None:
        assert self._slots is not None
        held = self._held.setdefault(destination, set())
        held.update(e.id for e in entries)  # kept claimed while waiting for a slot too
        await self._slots.acquire()
        task = asyncio.create_task(self._deliver(destination, entries))
        self._in_flight.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._in_flight.discard(t)
            held.difference_update(e.id for e in entries)
            assert self._slots is not None
            self._slots.release()

        task.add_done_callback(done)

    async def _deliver(self, destination: str, entries: list[Entry]) -> None:
        # The entry stays pending with this consumer until finished, so after a Redis
        # hiccup (a restart leaves the pool's connections stale) the worker picks it
        # up again itself rather than waiting out the visibility timeout. At worst the
        # upstream sees the event twice: at-least-once.
        for attempt in range(_LOCAL_RETRIES + 1):
            try:
                await self._deliver_entries(destination, entries)
                return
            except StoreUnavailable as exc:
                pause_s = self._watch.failed(exc)  # the watch logs the outage, once
                if attempt == _LOCAL_RETRIES:
                    log.warning(
                        "delivery of %s to %s interrupted (%s); left pending, to be claimed again",
                        ", ".join(e.event for e in entries),
                        destination,
                        exc,
                    )
                    return
                await asyncio.sleep(max(pause_s, 0.2 * 2**attempt))
            except Exception:
                # A bug, not trouble: the entry stays pending and is claimed again after
                # the visibility timeout; say so loudly rather than lose the traceback.
                log.exception("delivery of %s to %s failed", entries, destination)
                return

    async def _deliver_entries(self, destination: str, entries: list[Entry]) -> None:
        """Deliver one entry, or several in one call (ConveYour's ``batch_size``)."""
        config = self._config(destination)
        one = entries[0]
        known = one.contact is not None or destination == redis_keys.NOTIFICATIONS
        if len(entries) == 1 and config.rate_limit is None and known:
            await self._deliver_taken(destination, config, one)
            return
        ready: list[tuple[Entry, dict[str, Any], _Tries, str | None]] = []
        for entry in entries:
            fields = await self._queue.load(entry[1])
            if fields is None or redis_keys.EVENT_DATA_FIELD not in fields:
                await self._queue.drop(destination, entry)  # expired: nothing to send
                continue
            event = orjson.loads(fields[redis_keys.EVENT_DATA_FIELD])
            if await self._queue.stray(destination, entry, fields, mine=self._consumer):
                continue  # a copy: acked, or settled by the one sending it
            contact = contact_key(event.get("payload") or {})  # notifications: None
            turn = await self._order.check(destination, contact, entry[1])
            if turn.state != "ok":
                await self._not_yet(destination, entry, turn.state, turn.ms)
                continue
            ready.append((entry, event, _tries(fields, destination), contact))
        if not ready:
            return
        holder = self._consumer + ready[0][0][0]
        sent: list[str] = []  # the requests counted against the rate limit
        if config.rate_limit is not None:
            await self._gate.rate(destination, config, sent)
        try:
            await self._gate.begin(
                destination, config, holder, [redis_keys.event(e[1]) for e, *_ in ready]
            )
            adapter = self._adapters[destination]
            if len(ready) == 1:
                try:
                    attempts = [await adapter.deliver(ready[0][1])]
                except BaseException:
                    await self._limiter.release(destination, holder)
                    raise
                release: str | None = holder  # given back in the write that settles it
            else:
                try:
                    attempts = await adapter.deliver_batch(
                        [event for _, event, _, _ in ready],
                        before_each=lambda: self._gate.rate(destination, config, sent),
                    )
                finally:
                    await self._limiter.release(destination, holder)
                release = None
        finally:
            await self._gate.answered(destination, sent)
        for (entry, event, tries, contact), attempt in zip(ready, attempts, strict=True):
            await self._settle(destination, entry, event, attempt, tries, contact, release)

    async def _deliver_taken(
        self, destination: str, config: DeliverySettings, entry: Entry
    ) -> None:
        """The short way for one entry whose contact the stream entry names, to a
        destination without a rate limit: one round trip before the request
        (:meth:`DeliveryQueue.take`), one after it (settling, shared with others)."""
        holder = self._consumer + entry.id
        ttl_ms = self._gate.hold_ms(config)
        while True:
            taken = await self._queue.take(
                destination, entry, max_in_flight=config.max_in_flight, holder=holder, ttl_ms=ttl_ms
            )
            if taken.state == "ok":
                break
            if taken.state == "stray":
                return  # a copy: acked by the script, or settled by the one sending it
            if taken.state == "gone":
                await self._queue.drop(destination, entry)  # expired: nothing to send
                return
            if taken.state in ("parked", "blocked"):
                await self._not_yet(destination, entry, taken.state, taken.ms)
                return
            wait_s = taken.ms / 1000 if taken.state == "paused" else FULL_POLL_S
            await asyncio.sleep(min(wait_s, MAX_WAIT_S))
        fields = taken.fields or {}
        if redis_keys.EVENT_DATA_FIELD not in fields:
            await self._limiter.release(destination, holder)
            await self._queue.drop(destination, entry)
            return
        event = orjson.loads(fields[redis_keys.EVENT_DATA_FIELD])
        tries = _tries(fields, destination)
        try:
            attempt = await self._adapters[destination].deliver(event)
        except BaseException:
            await self._limiter.release(destination, holder)
            raise
        await self._settle(destination, entry, event, attempt, tries, entry.contact, holder)

    async def _not_yet(self, destination: str, entry: Entry, state: str, head_due_ms: int) -> None:
        """An earlier event of this contact is still on its way. Parked: the event comes
        back by itself when that one is settled. Blocked (a contact ordered the old way,
        relay.order): look again just after that one's next try (0: shortly)."""
        if state == "parked":
            await self._order.park(destination, entry.id)
            return
        soon = int(time.time() * 1000) + _ORDER_WAIT_MS
        await self._queue.defer(destination, entry, until_ms=max(soon, head_due_ms + 1))

    async def _notifications(
        self, destination: str, event: dict[str, Any], *, delivered: bool
    ) -> list[tuple[str, bytes]]:
        """Notifications of an event's delivery or failure (none about notifications)."""
        if destination == redis_keys.NOTIFICATIONS:
            return []
        topic = f"{event['type']}.delivered" if delivered else "event.failed"
        return notification_records(
            await self._hooks.matching(topic),
            topic,
            event["id"],
            mode=event["mode"],
            destination=destination,
        )

    async def _settle(
        self,
        destination: str,
        entry: Entry,
        event: dict[str, Any],
        attempt: Attempt,
        tries: _Tries,
        contact: str | None,
        release: str | None = None,
    ) -> None:
        """Record the attempt and what follows; ``release``: the lease to give back with it."""
        config = self._config(destination)
        credentials = attempt.outcome is Outcome.credentials
        delay_s: float | None = None
        if credentials or attempt.outcome is Outcome.retry:
            if credentials:
                await self._queue.set_health(
                    destination, f"upstream answered {attempt.status}: credentials or configuration"
                )
            if attempt.status == 429 and attempt.retry_after_s:
                await self._limiter.pause(destination, attempt.retry_after_s)
            # Rejected credentials walk the long end by every attempt made, and never end;
            # other failures spend the schedule, which a replay starts afresh.
            delay_s = next_delay_s(
                tries.made if credentials else tries.retried + 1,
                config.retry_schedule,
                retry_after_s=attempt.retry_after_s,
                credentials=credentials,
            )
        if delay_s is not None:
            await self._queue.finish(
                destination,
                entry,
                attempt.to_dict(),
                status=DeliveryStatus.retrying,
                retry_at_ms=int((time.time() + delay_s) * 1000),
                contact=contact,
                release=release,
                spends_step=not credentials,
            )
            self._counts["retrying"] += 1
            return
        delivered = attempt.outcome is Outcome.delivered
        await self._queue.finish(
            destination,
            entry,
            attempt.to_dict(),
            status=DeliveryStatus.delivered if delivered else DeliveryStatus.dead,
            contact=contact,
            notifications=await self._notifications(destination, event, delivered=delivered),
            release=release,
        )
        self._counts["delivered" if delivered else "dead"] += 1
        if not delivered:
            why = attempt.error or attempt.status
            if attempt.outcome is Outcome.rejected:
                log.warning("%s rejected %s: %s", destination, entry.event, why)
            else:
                log.warning(
                    "%s: %s dead-lettered after %d attempts, the retry schedule spent (last: %s)",
                    destination,
                    entry.event,
                    tries.made,
                    why,
                )


class _Tries(NamedTuple):
    """How far an event's delivery to one destination has gone, this attempt included."""

    #: Attempts made (this one too): numbers the records, walks the credentials wait.
    made: int
    #: Retryable failures before this attempt since the schedule began (or was replayed).
    retried: int


def _tries(fields: dict[str, str], destination: str) -> _Tries:
    """The counts kept in an event's hash (see :mod:`relay.redis_keys`)."""
    made = int(fields.get(redis_keys.ATTEMPTS_FIELD_PREFIX + destination, "0")) + 1
    return _Tries(made, int(fields.get(redis_keys.RETRIES_FIELD_PREFIX + destination, "0")))
