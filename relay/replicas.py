"""Writes that replicas confirm before the API answers 2xx (``RELAY_REDIS_MIN_REPLICAS``).

Redis replicates asynchronously: a master that dies right after answering takes
its last writes with it, and the replica promoted in its place never had them.
``WAIT numreplicas timeout`` holds the answer until that many replicas have
acknowledged every write *of its own connection* (Redis compares each replica's
offset with the offset of that connection's last write), so it must travel on
the connection that wrote, right behind the writes: :meth:`Replicas.execute`
appends it to a pipeline (one connection, one round trip). At ingest that is once
per group commit (:mod:`relay.groupcommit`), not once per request.

WAIT undoes nothing: when fewer replicas confirm in time the write stays on the
master, and may survive and be delivered, or be lost in a failover.
:class:`~relay.errors.NotReplicated` says so; the API answers 503 and reports
nothing as queued, and an Idempotency-Key's retry never makes a second event
(:mod:`relay.api.idempotency`).

The rare writes of keys and hook subscriptions are confirmed another way, by
:func:`publish`: their invalidation message, then WAIT on its connection.
PUBLISH is replicated like a write and the replication stream is one, in
order, so replicas that have it have every write Redis took before it, from any
connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from relay.errors import NotReplicated
from relay.settings import Settings

__all__ = ["Replicas", "publish"]


@dataclass(frozen=True, slots=True)
class Replicas:
    """How many replicas must confirm a write, and how long they have."""

    count: int
    timeout_ms: int

    @classmethod
    def of(cls, settings: Settings) -> Replicas | None:
        """What ``settings`` ask for; None when no replica need confirm (the default)."""
        if settings.redis_min_replicas == 0:
            return None
        return cls(settings.redis_min_replicas, settings.redis_min_replicas_timeout_ms)

    async def execute(self, pipe: Pipeline) -> list[Any]:
        """The answers to ``pipe``'s commands, once enough replicas have their writes;
        NotReplicated when they do not confirm in time."""
        pipe.wait(self.count, self.timeout_ms)
        *answers, acked = await pipe.execute()
        if int(acked) < self.count:
            raise NotReplicated(
                f"the write was confirmed by {acked} Redis replica(s) of the "
                f"{self.count} required within {self.timeout_ms} ms"
            )
        return answers


async def publish(redis: Redis, channel: str, message: str, replicas: Replicas | None) -> None:
    """PUBLISH an invalidation; with ``replicas``, return only once they have it, and so
    every write Redis took before it (NotReplicated when they do not confirm in time)."""
    if replicas is None:
        await redis.publish(channel, message)
        return
    async with redis.pipeline(transaction=False) as pipe:
        pipe.publish(channel, message)
        await replicas.execute(pipe)
