"""What a worker's request waits for before it is sent: its destination's limits.

:class:`Gate` takes :mod:`relay.ratelimit`'s limits in the order a delivery
meets them: this process's smoother, the global rate limit (the request then
counts as in flight until :meth:`Gate.answered`), an upstream 429's pause, and
a place under ``max_in_flight`` with the events marked delivering.
"""

from __future__ import annotations

import asyncio
import logging

from aiolimiter import AsyncLimiter

from relay import redis_keys
from relay.errors import StoreUnavailable
from relay.ids import random_base62
from relay.models import DeliveryStatus
from relay.ratelimit import RateLimiter, local_limiter
from relay.settings import DeliverySettings, RateLimit

__all__ = ["MAX_WAIT_S", "Gate"]

log = logging.getLogger("relay.worker")

#: Longest single sleep while waiting for a slot (so that a worker's stop() is noticed).
MAX_WAIT_S = 1.0


class Gate:
    """The limits between a worker and its destinations' upstreams."""

    __slots__ = ("_claim_after_s", "_limiter", "_local")

    def __init__(self, limiter: RateLimiter, *, claim_after_s: float) -> None:
        self._limiter = limiter
        self._claim_after_s = claim_after_s
        #: aiolimiter per rate-limited destination: spreads this process's requests
        #: over the period instead of spending the shared budget in bursts.
        self._local: dict[str, AsyncLimiter] = {}

    def __repr__(self) -> str:
        return f"<Gate smoothing={sorted(self._local)}>"

    def start(self, limits: dict[str, RateLimit]) -> None:
        """Make the per-process smoothers; inside the running loop (aiolimiter binds to it)."""
        self._local = {name: local_limiter(limit) for name, limit in limits.items()}

    def hold_ms(self, config: DeliverySettings) -> int:
        """How long a request may be under way before it counts as lost: the upstream
        timeout plus ``claim_after_s`` (the visibility timeout of its stream entry)."""
        return int((config.timeout_s + self._claim_after_s) * 1000)

    async def rate(self, destination: str, config: DeliverySettings, sent: list[str]) -> None:
        """Wait for a slot under the global rate limit (or the end of a 429 pause).

        The request counts as in flight until :meth:`answered` (its id is added to
        ``sent``): the upstream counts arrivals, which come after our admissions.
        """
        if destination in self._local:
            await self._local[destination].acquire()
        limit, request_id, hold_ms = config.rate_limit, random_base62(16), self.hold_ms(config)
        while True:
            if limit is not None:
                wait_s = await self._limiter.acquire(
                    destination, limit, request_id=request_id, hold_ms=hold_ms
                )
            else:
                wait_s = await self._limiter.paused_for(destination)
            if wait_s <= 0:
                if limit is not None:
                    sent.append(request_id)
                return
            await asyncio.sleep(min(wait_s, MAX_WAIT_S))

    async def answered(self, destination: str, sent: list[str]) -> None:
        """Date the requests in ``sent`` at their answers (now) in the rate log. Never
        raises: the delivery is done, and a request left undated only counts longer."""
        try:
            await self._limiter.answered(destination, sent)
        except StoreUnavailable as exc:
            log.warning(
                "could not date %d answered request(s) to %s in the rate log (%s); "
                "they count as in flight until their hold ends",
                len(sent),
                destination,
                exc,
            )

    async def begin(
        self, destination: str, config: DeliverySettings, holder: str, events: list[str]
    ) -> None:
        """Wait for the end of a pause (an upstream 429) and a place under
        ``max_in_flight`` (counted across every process), then mark the events
        delivering by ``holder``: one round trip when nothing is in the way."""
        status = redis_keys.STATUS_FIELD_PREFIX + destination
        while True:
            wait_s = await self._limiter.begin(
                destination,
                config.max_in_flight,
                holder,
                ttl_ms=self.hold_ms(config),
                mark=events,
                field=status,
                value=DeliveryStatus.delivering.value,
                holder_field=redis_keys.HOLDER_FIELD_PREFIX + destination,
            )
            if wait_s <= 0:
                return
            await asyncio.sleep(min(wait_s, MAX_WAIT_S))
