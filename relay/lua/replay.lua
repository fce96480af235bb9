-- replay: dead letters of one destination go back into its stream, each with a fresh
-- retry schedule (its earlier attempts stay on the event).
--
-- KEYS: dead, stream, then the items' keys
-- ARGV: items, destination
--
-- dead         zset: the destination's dead letters (event id -> ms)
-- stream       its stream
-- items        JSON array: {"id", "event": k}: an event id, its hash KEYS[k]
-- destination  whose status and retry count fields change
--
-- An id that is not a dead letter here is skipped, and so is one whose event expired
-- (it stays listed: nothing is left to send). A replayed event is in no contact's order:
-- it goes at once. Returns how many were queued.
local dead, stream = KEYS[1], KEYS[2]
local items, dest = cjson.decode(ARGV[1]), ARGV[2]
local queued = 0
for _, item in ipairs(items) do
  local key = KEYS[item.event]
  if redis.call('ZSCORE', dead, item.id) and redis.call('EXISTS', key) == 1 then
    -- HSET first: a Redis out of memory refuses it before anything is written (once a
    -- script has written, Redis lets the rest of it write too)
    redis.call('HSET', key, STATUS .. dest, PENDING)
    redis.call('ZREM', dead, item.id)
    redis.call('HDEL', key, RETRIES .. dest)
    redis.call('XADD', stream, '*', ENTRY_EVENT, item.id)
    queued = queued + 1
  end
end
return queued
