"""Per destination, a contact's events reach the upstream in the order they were accepted.

Each destination keeps, for every contact with an undelivered event, the event
that goes first (its *head*) in one hash, and the events after it in a list::

    {relay}:heads:<dest>             hash  contact digest -> head event id
    {relay}:order:<dest>:<contact>   list  the contact's later events, oldest first

Only the head may be sent; an event that is neither the head nor in the list
(a replayed dead letter) may go at once. When the head is delivered or dead,
the list's first event becomes the head. Most contacts have one undelivered
event at a time, so most cost one hash field (about 100 bytes) instead of a
list key with a TTL (about 280).

A head whose event record expired (retention) is skipped by the next check
of that contact, so it never blocks the contact's later events.

Lists written before the heads hash existed hold their head themselves: a
contact without a heads field is ordered by its list alone, and new events
join that list until it empties. No migration is needed.

Everything here is Lua, run inside the scripts that write an event
(:data:`PROCEDURES`, in the group commit) and that check it before sending
(:data:`LUA`'s ``order_may_go``, in the worker's take).
"""

from __future__ import annotations

from relay import redis_keys
from relay.groupcommit import Batch

__all__ = ["LUA", "PROCEDURES", "done", "push"]

#: Lua functions: order_push, order_done and order_may_go. Keys are passed in by
#: name: ``heads`` and ``list`` are the two keys above, ``retries`` the destination's
#: retry zset; ``evt`` is the event keys' prefix (``redis_keys.event("")``).
LUA = """
local function order_push(heads, list, contact, id, ttl)
  if redis.call('EXISTS', list) == 0 and redis.call('HSETNX', heads, contact, id) == 1 then
    return
  end
  redis.call('RPUSH', list, id)
  redis.call('EXPIRE', list, ttl)
end

local function order_done(heads, list, contact, id)
  if redis.call('HGET', heads, contact) == id then
    local next_id = redis.call('LPOP', list)
    if next_id then
      redis.call('HSET', heads, contact, next_id)
    else
      redis.call('HDEL', heads, contact)
    end
  else
    redis.call('LREM', list, 1, id)
  end
end

-- The contact's first event whose record still exists (expired ones are dropped).
local function order_head(heads, list, contact, evt)
  while true do
    local head = redis.call('HGET', heads, contact)
    if not head then head = redis.call('LINDEX', list, 0) end
    if not head then return nil end
    if redis.call('EXISTS', evt .. head) == 1 then return head end
    order_done(heads, list, contact, head)
  end
end

-- -1: the event may go; else when the head is due for its retry (ms), or 0 when
-- the head is under way.
local function order_may_go(heads, list, retries, contact, id, evt)
  local head = order_head(heads, list, contact, evt)
  if not head or head == id or not redis.call('LPOS', list, id) then return -1 end
  local due = redis.call('ZSCORE', retries, head)
  return due and tonumber(due) or 0
end
"""

#: For :class:`relay.groupcommit.GroupCommit`: the batch ops :func:`push` and :func:`done`.
PROCEDURES = (
    LUA
    + """
procedures.order_push = function(op)
  order_push(KEYS[op[2]], KEYS[op[3]], op[4], op[5], op[6])
end
procedures.order_done = function(op)
  order_done(KEYS[op[2]], KEYS[op[3]], op[4], op[5])
end
"""
)


def push(batch: Batch, destination: str, contact: str, event_id: str, *, ttl_s: int) -> None:
    """Queue ``event_id`` last in its contact's order (in a batch run with PROCEDURES)."""
    order = batch.key(redis_keys.order(destination, contact))
    batch.call("order_push", redis_keys.heads(destination), order, contact, event_id, ttl_s)


def done(batch: Batch, destination: str, contact: str, event_id: str) -> None:
    """``event_id`` is delivered or dead: the contact's next event may go."""
    order = batch.key(redis_keys.order(destination, contact))
    batch.call("order_done", redis_keys.heads(destination), order, contact, event_id)
