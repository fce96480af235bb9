"""The Overview's chart: events accepted and delivered per minute, drawn as SVG here.

Accepted per minute is counted from the events' time index (``ZCOUNT`` of each
minute's score range: O(log n) each, 120 of them in one pipeline), not from a counter
written at ingest: the ingest path stays as it is, and the index already holds every
event of the retention, test mode included. Delivered per minute is the counters
that settle writes (:func:`relay.redis_keys.delivered_minute`, kept two hours).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape
from redis.asyncio import Redis

from relay import redis_keys

__all__ = ["Chart", "per_minute"]

#: Minutes shown (the delivered counters live two hours).
MINUTES = redis_keys.DELIVERED_MINUTE_TTL_S // 60
_W, _H, _PAD = 720, 180, 30


@dataclass(frozen=True, slots=True)
class Chart:
    """Two series of per-minute counts, oldest first, ending with the current minute."""

    first_minute: int
    accepted: list[int]
    delivered: list[int]

    @property
    def accepted_total(self) -> int:
        return sum(self.accepted)

    @property
    def delivered_total(self) -> int:
        return sum(self.delivered)

    @property
    def svg(self) -> Markup:
        """The chart as inline SVG (no script, no style attribute: classes only)."""
        top = max([1, *self.accepted, *self.delivered])
        n = len(self.accepted)

        def points(series: Sequence[int]) -> str:
            step = (_W - 2 * _PAD) / max(1, n - 1)
            return " ".join(
                f"{_PAD + i * step:.1f},{_H - _PAD - v * (_H - 2 * _PAD) / top:.1f}"
                for i, v in enumerate(series)
            )

        label = time.strftime("%H:%M", time.gmtime(self.first_minute * 60))
        parts = [
            f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" '
            f'aria-label="Accepted and delivered per minute">',
            f'<line class="grid" x1="{_PAD}" y1="{_PAD}" x2="{_W - _PAD}" y2="{_PAD}"/>',
            f'<line class="grid" x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}"/>',
            f'<text x="2" y="{_PAD + 4}">{top}</text>',
            f'<text x="2" y="{_H - _PAD + 4}">0</text>',
            f'<text x="{_PAD}" y="{_H - 8}">{escape(label)} UTC</text>',
            f'<text x="{_W - _PAD - 24}" y="{_H - 8}">now</text>',
            f'<polyline class="accepted" points="{points(self.accepted)}"/>',
            f'<polyline class="delivered" points="{points(self.delivered)}"/>',
            "</svg>",
        ]
        return Markup("".join(parts))  # noqa: S704 (numbers and an escaped label only)


async def per_minute(redis: Redis, destinations: Sequence[str], *, partitions: int) -> Chart:
    """The last :data:`MINUTES` minutes' counts (accepted: summed over the partitions'
    indexes), in one round trip."""
    now_minute = int(time.time() // 60)
    minutes = range(now_minute - MINUTES + 1, now_minute + 1)
    async with redis.pipeline(transaction=False) as pipe:
        for m in minutes:
            for partition in range(partitions):
                # Scores are received ms; "(" excludes the next minute's first ms.
                index = redis_keys.events_index(partition)
                pipe.zcount(index, m * 60_000, f"({(m + 1) * 60_000}")
        for dest in destinations:
            # By name: a cluster pipeline refuses mget() (these keys share one slot).
            pipe.execute_command("MGET", *[redis_keys.delivered_minute(dest, m) for m in minutes])
        replies = await pipe.execute()
    head = MINUTES * partitions
    accepted = [sum(map(int, replies[i : i + partitions])) for i in range(0, head, partitions)]
    delivered = [0] * MINUTES
    for counts in replies[head:]:
        for i, v in enumerate(counts):
            delivered[i] += int(v or 0)
    return Chart(first_minute=minutes[0], accepted=accepted, delivered=delivered)
