"""One request to one destination: take its entries, send them, settle the answer.

Every delivery takes the same path (:meth:`Deliverer.deliver`), whatever it is: a
first try, a retry, a replayed dead letter, a ConveYour batch, a hook notification;
to a destination with a rate limit or without:

1. **take** (:meth:`relay.queue.DeliveryQueue.take`): with a rate limit, a slot of it
   first (this process's smoother, then the global log); then the entries are admitted
   under one lease, or refused (a copy, or expired), or wait for a 429 pause or a free
   lease (the rate slot is given back meanwhile, so it never ages out unused). A worker
   that reads several requests at once takes them in one call and passes them in.
2. **send**: the adapter makes the request (a ConveYour batch that is rejected is
   sent again one contact a call, each under a rate slot of its own).
3. **settle** (:meth:`relay.queue.DeliveryQueue.settle`): the attempts and all that
   follows from them, in one script call shared with the others settling then.

A Redis that fails on the way (``StoreUnavailable``) is waited for and the step tried
again, a few times; the request is never sent again for it. Past that, the entries
stay pending and are claimed again after the visibility window. A request still
waiting to be sent (for a rate slot, a pause or a free lease) when the worker stops
gives up waiting: its entries stay pending too, and nothing was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import orjson
from aiolimiter import AsyncLimiter

from relay import logs, metrics, redis_keys
from relay.adapters.base import Attempt, Outcome
from relay.attemptlog import log_attempts, request_ids
from relay.availability import RedisWatch
from relay.errors import StoreUnavailable
from relay.hooks import HookStore, notification_records
from relay.ids import random_base62
from relay.models import DeliveryStatus
from relay.queue import DeliveryQueue, Entry, Result, Settlement, Taken
from relay.ratelimit import FULL_POLL_S, RateLimiter
from relay.retry import next_delay_s
from relay.settings import DeliverySettings
from relay.tracing import DeliverySpan, Tracing

__all__ = ["MAX_WAIT_S", "Deliverer", "Sender"]

log = logging.getLogger("relay.worker")

T = TypeVar("T")

#: Longest single sleep while waiting for a slot or a pause (so that stop() is noticed).
MAX_WAIT_S = 1.0
#: Times a step that met a Redis error is tried again here before it is left to others.
_LOCAL_RETRIES = 3


class _Stopping(Exception):
    """The worker stops while a request waits to be sent: it gives up, sending nothing."""


class Sender(Protocol):
    """What the deliverer needs of an adapter (relay.adapters, relay.notify)."""

    async def deliver(self, event: dict[str, Any]) -> Attempt: ...


class _DeliverBatch(Protocol):
    """An adapter's ``deliver_batch``, where it has one (ConveYour)."""

    async def __call__(
        self,
        events: list[dict[str, Any]],
        *,
        before_each: Callable[[], Awaitable[None]] | None = None,
        done: Sequence[int] = (),
    ) -> list[Attempt]: ...


class Deliverer:
    """Takes, sends and settles requests for one worker (any number at once)."""

    __slots__ = (
        "_adapters",
        "_claim_after_s",
        "_configs",
        "_hooks",
        "_limiter",
        "_local",
        "_queue",
        "_stopping",
        "_tracing",
        "_watch",
        "counts",
    )

    def __init__(
        self,
        queue: DeliveryQueue,
        *,
        configs: dict[str, DeliverySettings],
        adapters: dict[str, Sender],
        hooks: HookStore,
        watch: RedisWatch,
        claim_after_s: float,
        limiter: RateLimiter,
        local: dict[str, AsyncLimiter],
        stopping: asyncio.Event,
        tracing: Tracing | None = None,
    ) -> None:
        self._queue = queue
        #: Spans of each delivery (relay.tracing; off: calls that do nothing).
        self._tracing = tracing or Tracing()
        #: Set when the worker stops: requests not sent yet stop waiting.
        self._stopping = stopping
        self._configs = configs
        self._adapters = adapters
        self._hooks = hooks
        self._watch = watch
        self._claim_after_s = claim_after_s
        self._limiter = limiter
        #: aiolimiter per rate-limited destination: spreads this process's requests
        #: over the period instead of spending the shared budget in bursts.
        self._local = local
        #: Events delivered, retrying and dead-lettered by this worker.
        self.counts = {"delivered": 0, "retrying": 0, "dead": 0}

    def __repr__(self) -> str:
        c = self.counts
        return f"<Deliverer delivered={c['delivered']} retrying={c['retrying']} dead={c['dead']}>"

    def lease_ms(self, destination: str) -> int:
        """The visibility window: a request's lease lasts this long unless renewed, and
        a stream entry idle this long is claimed by another worker."""
        return int((self._configs[destination].timeout_s + self._claim_after_s) * 1000)

    async def deliver(
        self,
        destination: str,
        holder: str,
        entries: Sequence[Entry],
        *,
        settled: Callable[[], None] | None = None,
    ) -> None:
        """Deliver one request: ``entries`` go together under ``holder``'s lease.
        ``settled`` is called once its events are settled in their partitions, before
        the settle's control step (relay.queue.DeliveryQueue.settle).

        Runs in a task of its own (relay.worker), whose log lines it binds to the request."""
        with self._tracing.deliver(destination, [e.event for e in entries]) as span:
            await self._deliver(destination, holder, entries, span, settled)

    async def _deliver(
        self,
        destination: str,
        holder: str,
        entries: Sequence[Entry],
        span: DeliverySpan,
        settled: Callable[[], None] | None,
    ) -> None:
        sent: list[str] = []  # its requests' ids in the rate log
        logs.bind(destination=destination, event_id=",".join(e.event for e in entries))
        events: list[dict[str, Any]] = []
        attempts: list[Attempt] = []
        try:
            with self._tracing.step("relay.take"):
                ready, gone = await self._admit(destination, holder, entries, sent)
            if ready:
                events = [orjson.loads(t.data) for t in ready]
                span.link(events)
                logs.bind(request_id=request_ids(events))
                attempts = await self._send(destination, events, sent, [t.steps for t in ready])
                settlement = await self._judge(destination, holder, ready, events, attempts, sent)
                # Said before the settle: a settle that fails leaves the attempt made.
                log_attempts(destination, events, attempts, settlement.results)
                span.settled(attempts, settlement.results)
            elif gone:  # nothing to send: their entries acked, their contacts' next go
                settlement = Settlement(destination, holder, ())
            else:
                return
            settlement = dataclasses.replace(settlement, expired=gone)
            with self._tracing.step("relay.settle"):
                words = await self._again(lambda: self._queue.settle(settlement, settled=settled))
            metrics.settled(destination, settlement.results, words[len(gone) :], events, attempts)
            for result, word in zip(settlement.results, words[len(gone) :], strict=True):
                if word == "settled":
                    self.counts[result.status] += 1
                elif word == "late":
                    log.warning(
                        "%s: the answer for %s came after this worker's lease on it had "
                        "lapsed and another worker took it over; recorded, left to that one",
                        destination,
                        result.entry.event,
                    )
        except _Stopping:
            with contextlib.suppress(StoreUnavailable):  # the slot would age out anyway
                await self._limiter.unused(destination, sent)
            log.info(
                "%s: %s not sent, the worker is stopping; left pending for another worker",
                destination,
                ", ".join(e.event for e in entries),
            )
        except StoreUnavailable as exc:
            log.warning(
                "delivery of %s to %s interrupted (%s); left pending, to be claimed again",
                ", ".join(e.event for e in entries),
                destination,
                exc,
            )
        except Exception:
            # A bug, not trouble: the entries stay pending and are claimed again after
            # the visibility window; say so loudly rather than lose the traceback.
            log.exception("delivery of %s to %s failed", list(entries), destination)

    async def _admit(
        self, destination: str, holder: str, entries: Sequence[Entry], sent: list[str]
    ) -> tuple[list[Taken], list[Entry]]:
        """The entries marked delivering under ``holder``'s lease (none: all refused),
        and those whose event expired (to be settled all the same)."""
        config = self._configs[destination]
        take = functools.partial(
            self._queue.take,
            destination,
            lease_ms=self.lease_ms(destination),
            max_in_flight=config.max_in_flight,
        )
        gone: list[Entry] = []
        while True:
            if config.rate_limit is not None:
                await self._rate(destination, sent, stoppable=True)
            elif self._stopping.is_set():
                raise _Stopping
            taken = await self._again(functools.partial(take, [(holder, entries)]))
            ready = [t for t in taken if t.state == "ok"]
            waiting = [t for t in taken if t.state in ("paused", "full")]
            gone += [t.entry for t in taken if t.state == "gone"]
            if ready or not waiting:
                if not ready:  # all refused: nothing to send under the rate slot
                    await self._again(lambda: self._limiter.unused(destination, sent))
                    sent.clear()
                return ready, gone
            # The rate slot is not held over the wait: it would age out unused.
            await self._again(lambda: self._limiter.unused(destination, sent))
            sent.clear()
            wait_s = max(t.wait_ms for t in waiting) / 1000 or FULL_POLL_S
            await self._wait(wait_s, stoppable=True)
            entries = [t.entry for t in waiting]

    async def _rate(self, destination: str, sent: list[str], *, stoppable: bool) -> None:
        """Wait for a slot under the destination's rate limit (and the end of a pause);
        the request counts as in flight until its settle dates it (its id in ``sent``).
        ``stoppable``: nothing of the request is sent yet, so a stop ends the wait."""
        limit = self._configs[destination].rate_limit
        assert limit is not None
        if destination in self._local:  # this process's smoother: may wait a while
            smoothed = self._local[destination].acquire
            await (self._unless_stopped(smoothed) if stoppable else smoothed())
        request_id, hold_ms = random_base62(16), self.lease_ms(destination)
        while True:
            wait_s = await self._again(
                lambda: self._limiter.acquire(
                    destination, limit, request_id=request_id, hold_ms=hold_ms
                )
            )
            if wait_s <= 0:
                sent.append(request_id)
                return
            await self._wait(wait_s, stoppable=stoppable)

    async def _send(
        self, destination: str, events: list[dict[str, Any]], sent: list[str], done: list[int]
    ) -> list[Attempt]:
        """One request with these events (a ConveYour batch when several); one attempt
        each. An adapter that raises (a bug) is an attempt to retry, with its error.

        A ConveYour request may grow into several (a rejected batch sent one contact a
        call, track events after an identify): each further call waits for a rate slot
        of its own; ``done`` says what earlier attempts of each event got taken."""
        adapter = self._adapters[destination]
        try:
            # Not isinstance with a runtime-checkable Protocol: its check of every
            # member, each request, was about 1% of the worker's time at full speed.
            deliver_batch: _DeliverBatch | None = getattr(adapter, "deliver_batch", None)
            if deliver_batch is None:
                assert len(events) == 1
                return [await adapter.deliver(events[0])]
            more = self._configs[destination].rate_limit is not None

            async def before_each() -> None:  # part of the request is sent: no stopping
                if more:  # the calls so far were answered: their slots age from now
                    await self._again(lambda: self._limiter.answered(destination, sent))
                    await self._rate(destination, sent, stoppable=False)

            return await deliver_batch(events, before_each=before_each, done=done)
        except Exception as exc:
            log.exception("relay failed to send %s to %s", [e["id"] for e in events], destination)
            note = f"relay could not send it ({type(exc).__name__}: {exc}); will retry"
            failed = Attempt(Outcome.retry, None, 0.0, error=type(exc).__name__, note=note[:500])
            return [failed] * len(events)

    async def _judge(
        self,
        destination: str,
        holder: str,
        ready: list[Taken],
        events: list[dict[str, Any]],
        attempts: list[Attempt],
        sent: list[str],
    ) -> Settlement:
        """What the answers mean: each event's result, and a pause or an unhealthy
        destination when the upstream says so."""
        config = self._configs[destination]
        results, pause_s, unhealthy = [], 0.0, None
        now = time.time()
        notifying = destination == redis_keys.NOTIFICATIONS
        for taken, event, attempt in zip(ready, events, attempts, strict=True):
            hook = event.get("hook") if notifying else None
            record = orjson.dumps({"at": now, **attempt.to_dict()})
            credentials = attempt.outcome is Outcome.credentials
            delay_s = None
            if credentials or attempt.outcome is Outcome.retry:
                if credentials:
                    unhealthy = f"upstream answered {attempt.status}: credentials or configuration"
                if attempt.status == 429 and attempt.retry_after_s:
                    pause_s = max(pause_s, attempt.retry_after_s)
                # Rejected credentials walk the long end by every attempt made, and never
                # end; other failures spend the schedule, which a replay starts afresh.
                delay_s = next_delay_s(
                    taken.made + 1 if credentials else taken.retried + 1,
                    config.retry_schedule,
                    retry_after_s=attempt.retry_after_s,
                    credentials=credentials,
                )
            if delay_s is not None:
                retry_at_ms = int((now + delay_s) * 1000)
                results.append(
                    Result(
                        taken.entry,
                        DeliveryStatus.retrying,
                        record,
                        spends_step=not credentials,
                        retry_at_ms=retry_at_ms,
                        hook=hook,
                    )
                )
                continue
            delivered = attempt.outcome is Outcome.delivered
            status = DeliveryStatus.delivered if delivered else DeliveryStatus.dead
            notifications = await self._notifications(destination, event, delivered=delivered)
            results.append(
                Result(taken.entry, status, record, notifications=notifications, hook=hook)
            )
            if not delivered:
                _log_dead(destination, taken, attempt)
        return Settlement(
            destination,
            holder,
            results,
            sent=sent,
            pause_ms=math.ceil(pause_s * 1000),
            unhealthy=unhealthy,
        )

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

    async def _wait(self, seconds: float, *, stoppable: bool) -> None:
        """Sleep ``seconds`` (at most MAX_WAIT_S: the caller looks again); raise
        ``_Stopping`` if the worker stops first and ``stoppable``."""
        sleep = functools.partial(asyncio.sleep, min(seconds, MAX_WAIT_S))
        await (self._unless_stopped(sleep) if stoppable else sleep())

    async def _unless_stopped(self, wait: Callable[[], Awaitable[object]]) -> None:
        """Await ``wait()``, unless the worker stops first: then it is cancelled and
        ``_Stopping`` raised. ``wait`` is called only while the worker runs: a coroutine
        made and never awaited is a RuntimeWarning when it is collected."""
        if self._stopping.is_set():
            raise _Stopping
        task = asyncio.ensure_future(wait())
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.cancelled():
            raise _Stopping
        task.result()

    async def _again(self, step: Callable[[], Awaitable[T]]) -> T:
        """``await step()``; a Redis error is waited out (the watch logs the outage, once)
        and the step tried again, up to _LOCAL_RETRIES times, then raised."""
        for attempt in range(_LOCAL_RETRIES):
            try:
                return await step()
            except StoreUnavailable as exc:
                pause_s = self._watch.failed(exc)
                await asyncio.sleep(max(pause_s, 0.2 * 2**attempt))
        return await step()


def _log_dead(destination: str, taken: Taken, attempt: Attempt) -> None:
    why = attempt.error or attempt.status
    if attempt.outcome is Outcome.rejected:
        log.warning("%s rejected %s: %s", destination, taken.entry.event, why)
    else:
        log.warning(
            "%s: %s dead-lettered after %d attempts, the retry schedule spent (last: %s)",
            destination,
            taken.entry.event,
            taken.made + 1,
            why,
        )
