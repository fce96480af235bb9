"""Writes that replicas confirm before the API answers 2xx (``RELAY_REDIS_MIN_REPLICAS``).

Redis replicates asynchronously: a master that dies right after answering takes
its last writes with it, and the replica promoted in its place never had them.
``WAIT numreplicas timeout`` holds the answer until that many replicas have
acknowledged every write *of its own connection* (Redis compares each replica's
offset with the offset of that connection's last write), so it must travel on
the connection that wrote, right behind the writes: :func:`write` sends the
writes and WAIT together (one connection, one round trip). At ingest that is once
per group commit (:mod:`relay.groupcommit`), not once per request.

Which connection: on one Redis (or the master a Sentinel names) any of the
client's; on a Redis Cluster, one to the master that owns the slot of the key
written (:meth:`relay.connect.RelayCluster.on_master`), found from that key: each
master has replicas and a replication stream of its own, and redis-py's cluster
pipeline cannot carry a WAIT (it would route it to any node).

A write that must be confirmed is always a write Redis propagates, so WAIT has an
offset to wait for: a retry whose write would change nothing (a revocation already
in force, a hook already deleted) writes the same value again, or inside MULTI
makes and removes what it deletes (see :mod:`relay.keystore`, :mod:`relay.hooks`).
The replication stream of a master is one, in order, so a replica that has that
write has every write the master took before it, from any connection: the earlier
attempt's too. (PUBLISH, which once did this job, is replicated on one Redis but
travels over the cluster bus on a cluster, where WAIT behind it confirms nothing.)

WAIT undoes nothing: when fewer replicas confirm in time the write stays on the
master, and may survive and be delivered, or be lost in a failover.
:class:`~relay.errors.NotReplicated` says so; the API answers 503 and reports
nothing as queued, and an Idempotency-Key's retry never makes a second event
(:mod:`relay.api.idempotency`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.typing import EncodableT

from relay.connect import RelayCluster
from relay.errors import NotReplicated
from relay.settings import Settings

__all__ = ["Command", "Replicas", "write"]

#: One Redis command as its words: ``("HSET", key, field, value)``.
Command = tuple[EncodableT, ...]


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

    def check(self, acked: Any) -> None:
        """NotReplicated unless WAIT's answer ``acked`` counts enough replicas."""
        if int(acked) < self.count:
            raise NotReplicated(
                f"the write was confirmed by {acked} Redis replica(s) of the "
                f"{self.count} required within {self.timeout_ms} ms"
            )


async def write(
    redis: Redis,
    key: str,
    commands: Sequence[Command],
    replicas: Replicas | None,
    *,
    transaction: bool = False,
) -> list[Any]:
    """The answers to ``commands`` (writes of ``key``, or of keys in its slot), sent in
    one round trip, inside MULTI/EXEC with ``transaction``; with ``replicas``, once they
    have the writes (NotReplicated when they do not confirm in time).

    A command's error reply is raised (the first one), as a pipeline raises it.
    """
    sent: list[Command] = [("MULTI",), *commands, ("EXEC",)] if transaction else [*commands]
    if replicas is not None:
        # Outside MULTI: Redis answers a WAIT inside one at once, without waiting.
        sent.append(("WAIT", replicas.count, replicas.timeout_ms))
    if isinstance(redis, RelayCluster):
        answers = await redis.on_master(key, sent)
    else:
        async with redis.pipeline(transaction=False) as pipe:
            for command in sent:
                pipe.execute_command(*command)
            answers = await pipe.execute()
    if replicas is not None:
        *answers, acked = answers
        replicas.check(acked)
    if not transaction:
        return answers
    exec_answers: list[Any] = answers[-1]
    for answer in exec_answers:  # EXEC answers a command's error in its list
        if isinstance(answer, Exception):
            raise answer
    return exec_answers
