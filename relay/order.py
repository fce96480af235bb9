"""Per destination, a contact's events reach the upstream in the order they were accepted.

Each destination keeps, for every contact with an undelivered event, the event
that goes first (its *head*) in one hash, and the events after it in a list::

    {relay}:heads:<dest>             hash  contact digest -> head event id
                                           ("#parked" -> how many wait in the lists)
    {relay}:order:<dest>:<contact>   list  the contact's later events, oldest first

Only the head has a stream entry (or a scheduled retry, or is being sent). The
events after it are *parked*: they wait in the list, with no stream entry and
nothing polling for them. When the head is delivered or dead, in the same
script that settles it, the list's first event becomes the head and gets its
stream entry. A contact therefore moves as fast as its upstream answers, and
a contact with thousands of queued events costs no more work than one.

A lone undelivered event costs one hash field (about 100 bytes) instead of a
list key with a TTL (about 280).

Heads whose event record expired (an event still unsent at the end of the
retention) are dropped from the order when their entry comes up
(``DeliveryQueue.drop``) and by the workers' sweep of the heads hash
(:meth:`ContactOrder.sweep`), whichever comes first; the next event goes on
then. The sweep also moves on past heads already delivered or dead: a worker
of an earlier release (during a rolling upgrade) settles an event without
knowing of heads.

Lists written before the heads hash existed hold their head themselves and
all their events have stream entries: a contact without a heads field whose
list exists is ordered by that list alone, as before (its later events look
again shortly when they find an earlier one under way), and new events join
it until it empties. No migration is needed.

The rules are Lua (:data:`LUA`), run inside the scripts that write an event
and settle it (:data:`PROCEDURES`, in the group commit) and that check it before
sending (``order_check``, in the worker's take, and :meth:`ContactOrder.check`).
The check and the sweep name an event's key and a contact's list from their
prefixes inside Lua; every key carries the ``{relay}`` hash tag, so they are in
the script's slot on Redis Cluster too.
"""

from __future__ import annotations

from typing import NamedTuple

from redis.asyncio import Redis

from relay import redis_keys
from relay.groupcommit import Batch

__all__ = [
    "EVENT_PREFIX",
    "LUA",
    "PARKED_FIELD",
    "PROCEDURES",
    "ContactOrder",
    "Turn",
    "done",
    "push",
]

#: What every event key starts with, for the scripts that look an event up by id.
EVENT_PREFIX = redis_keys.event("")

#: Field of the heads hash counting the events parked in the destination's lists
#: (contact fields are hex digests, so it cannot clash with one).
PARKED_FIELD = "#parked"

#: Lua functions: order_push, order_done and order_check. ``heads`` and ``list`` are
#: the two keys above, ``stream`` the destination's queue, ``retries`` its retry zset;
#: ``evt`` is the event keys' prefix (``redis_keys.event("")``).
LUA = (
    f"local PARKED = '{PARKED_FIELD}'"
    + """
local function order_push(heads, list, stream, contact, id, ttl)
  if redis.call('HEXISTS', heads, contact) == 1 then
    redis.call('RPUSH', list, id)
    redis.call('HINCRBY', heads, PARKED, 1)
    return
  end
  if redis.call('EXISTS', list) == 1 then
    redis.call('RPUSH', list, id)  -- an old-style list: join it, with a stream entry
    redis.call('EXPIRE', list, ttl)
  else
    redis.call('HSET', heads, contact, id)
  end
  redis.call('XADD', stream, '*', 'e', id, 'c', contact)
end

local function order_done(heads, list, stream, contact, id)
  if redis.call('HGET', heads, contact) == id then
    local next_id = redis.call('LPOP', list)
    if next_id then
      redis.call('HSET', heads, contact, next_id)
      redis.call('HINCRBY', heads, PARKED, -1)
      redis.call('XADD', stream, '*', 'e', next_id, 'c', contact)
    else
      redis.call('HDEL', heads, contact)
    end
  elseif redis.call('LREM', list, 1, id) > 0 and redis.call('HEXISTS', heads, contact) == 1 then
    redis.call('HINCRBY', heads, PARKED, -1)
  end
end

-- -1: the event may go (it heads its contact's order, or is not in it: a replayed
-- dead letter); -2: it is parked, and gets a new stream entry when its turn comes;
-- else (an old-style list) when the head is due for its retry (ms), or 0 when the
-- head is under way.
local function order_check(heads, list, retries, contact, id, evt)
  local head = redis.call('HGET', heads, contact)
  if head then
    if head == id or not redis.call('LPOS', list, id) then return -1 end
    return -2
  end
  while true do
    head = redis.call('LINDEX', list, 0)
    if not head or head == id then return -1 end
    if redis.call('EXISTS', evt .. head) == 1 then break end
    redis.call('LPOP', list)  -- expired before it was sent: it holds nobody up
  end
  if not redis.call('LPOS', list, id) then return -1 end
  local due = redis.call('ZSCORE', retries, head)
  return due and tonumber(due) or 0
end
"""
)

#: For :class:`relay.groupcommit.GroupCommit`: the batch ops :func:`push` and :func:`done`.
PROCEDURES = (
    LUA
    + """
procedures.order_push = function(op)
  order_push(KEYS[op[2]], KEYS[op[3]], KEYS[op[4]], op[5], op[6], op[7])
end
procedures.order_done = function(op)
  order_done(KEYS[op[2]], KEYS[op[3]], KEYS[op[4]], op[5], op[6])
end
"""
)

# May this event go now? See order_check.
# KEYS: heads hash, order list, retry zset; ARGV: contact, event id, event key prefix.
_CHECK = (
    LUA
    + """
return order_check(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])
"""
)

#: A slice of the heads hash: heads whose event record is gone, or who are already
#: delivered or dead (settled by a worker of a release before the heads hash), are
#: done, so the next event goes. KEYS: heads hash, stream. ARGV: HSCAN cursor, count,
#: event key prefix, order list key prefix (+ contact: the contact's list), the
#: destination's status field. Returns the next cursor ("0": the sweep went round)
#: and how many heads it dropped.
_SWEEP = (
    LUA
    + """
local heads, stream = KEYS[1], KEYS[2]
local page = redis.call('HSCAN', heads, ARGV[1], 'COUNT', tonumber(ARGV[2]))
local dropped = 0
local fields = page[2]
for i = 1, #fields, 2 do
  local contact, id = fields[i], fields[i + 1]
  if contact ~= PARKED then
    local status = redis.call('HGET', ARGV[3] .. id, ARGV[5])
    if not status or status == 'delivered' or status == 'dead' then
      order_done(heads, ARGV[4] .. contact, stream, contact, id)
      dropped = dropped + 1
    end
  end
end
return {page[1], dropped}
"""
)


def push(batch: Batch, destination: str, contact: str, event_id: str, *, ttl_s: int) -> None:
    """Queue ``event_id`` last in its contact's order, with a stream entry if it heads
    it (in a batch run with :data:`PROCEDURES`)."""
    order = batch.key(redis_keys.order(destination, contact))
    stream = batch.key(redis_keys.queue(destination))
    batch.call("order_push", redis_keys.heads(destination), order, stream, contact, event_id, ttl_s)


def done(batch: Batch, destination: str, contact: str, event_id: str) -> None:
    """``event_id`` is delivered or dead: the contact's next event gets its stream entry."""
    order = batch.key(redis_keys.order(destination, contact))
    stream = batch.key(redis_keys.queue(destination))
    batch.call("order_done", redis_keys.heads(destination), order, stream, contact, event_id)


class Turn(NamedTuple):
    """Whether an event may go, as far as its contact's order goes."""

    #: "ok"; "parked" (it waits in its contact's list and gets a stream entry of its
    #: own when its turn comes: drop the one it has); "blocked" (a contact ordered the
    #: old way: look again, ``ms``: when the earlier event is due for its retry, or 0
    #: when it is under way)
    state: str
    ms: int = 0


class ContactOrder:
    """The worker's order operations beyond those inside its take and settle scripts."""

    __slots__ = ("_check", "_redis", "_sweep")

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._check = redis.register_script(_CHECK)
        self._sweep = redis.register_script(_SWEEP)

    def __repr__(self) -> str:
        return "<ContactOrder>"

    async def check(self, destination: str, contact: str | None, event_id: str) -> Turn:
        """May ``event_id`` go now (``contact``: its digest, None for no order)?"""
        if contact is None:
            return Turn("ok")
        keys = [
            redis_keys.heads(destination),
            redis_keys.order(destination, contact),
            redis_keys.retries(destination),
        ]
        answer = int(await self._check(keys=keys, args=[contact, event_id, EVENT_PREFIX]))
        if answer == -1:
            return Turn("ok")
        return Turn("parked") if answer == -2 else Turn("blocked", answer)

    async def park(self, destination: str, entry_id: str) -> None:
        """Ack and delete the stream entry of a parked event (see :class:`Turn`)."""
        stream = redis_keys.queue(destination)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(stream, redis_keys.CONSUMER_GROUP, entry_id)
            pipe.xdel(stream, entry_id)
            await pipe.execute()

    async def sweep(self, destination: str, cursor: str = "0", *, count: int = 500) -> str:
        """Drop from one slice of the destination's heads the events that are gone,
        delivered or dead, so the contacts' next events go; the cursor to go on from
        ("0": the sweep went round)."""
        keys = [redis_keys.heads(destination), redis_keys.queue(destination)]
        args: list[str | int] = [
            *(cursor, count, EVENT_PREFIX, redis_keys.order(destination, "")),
            redis_keys.STATUS_FIELD_PREFIX + destination,
        ]
        reply = await self._sweep(keys=keys, args=args)
        return str(reply[0])
