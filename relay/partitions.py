"""The partitioned keyspace: which partition an event goes to, and the count kept in Redis.

Events spread over ``RELAY_PARTITIONS`` partitions, each with keys of its own hash tag
(:func:`relay.redis_keys.partition_tag`), so that a Redis Cluster spreads them over
every master while each script call still touches one slot. An event's partition comes
from its contact (the digest of its email, else its phone): one contact's events share
a partition, so their order (``heads``/``order`` keys) needs no cross-slot work. An
event with neither goes to a random partition. The partition is written into the
event's id (:func:`relay.ids.new_event_id`), so it is found again with no search.

Changing the count would move contacts to other partitions and break their order, so
the count is recorded in Redis at the first start, and a process started with another
refuses to start (:func:`ensure_partitions`).
"""

from __future__ import annotations

import secrets

from redis.asyncio import Redis

from relay import redis_keys
from relay.errors import ConfigError

__all__ = ["DEFAULT_PARTITIONS", "contact_partition", "ensure_partitions"]

#: 16 tags ``{relay:0}``..``{relay:15}`` fall 5, 5 and 6 on the masters of a standard
#: 3-master cluster. On one Redis, delivery with 16 ran on par with 1 partition (bench:
#: `python -m bench --only delivery`; README, "Partitions", for the figures and for what
#: the split steps cost against the layout before partitions).
DEFAULT_PARTITIONS = 16


def contact_partition(contact: str | None, count: int) -> int:
    """The partition of an event whose contact digest (``store.contact_key``) is
    ``contact``; a random one for an event with no contact."""
    if contact is None:
        return secrets.randbelow(count)
    return int(contact, 16) % count


async def ensure_partitions(redis: Redis, count: int) -> None:
    """Record ``count`` as the data's partition count if none is; raise ConfigError if
    another one is recorded (the process must not start: see the module docstring)."""
    await redis.set(redis_keys.PARTITIONS, count, nx=True)
    recorded = await redis.get(redis_keys.PARTITIONS)
    if recorded is not None and int(recorded) != count:
        raise ConfigError(
            f"RELAY_PARTITIONS is {count} but this Redis holds data written with "
            f"{int(recorded)} partitions; start with RELAY_PARTITIONS={int(recorded)}, or, "
            f"to change it, stop relay, let the queues drain, and delete the key "
            f"{redis_keys.PARTITIONS!r} (changing it moves contacts to other partitions "
            f"and would break their order)"
        )
