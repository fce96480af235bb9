-- enqueue: store accepted events and queue them, in one step (the API's group commit).
--
-- KEYS: then the items' keys
-- ARGV: items, cutoff_ms, retention_s
--
-- On a Redis Cluster one call writes one partition's events (all its keys share the
-- partition's hash tag: one slot); on one Redis, a call may write several partitions'.
--
-- items      JSON array, in order, of:
--   {"event": k, "index": k, "id", "data", "at": ms, "fields": [name, value, ...],
--    "who": [k, ...], "queue": [q, ...]}
--       an event record (hash KEYS[k]: "data" and one status field per destination), its
--       place in its partition's time index (zset KEYS[index], event id -> received ms,
--       for listings) and in the search zset of its email and of its phone ("who",
--       omitted when neither; trimmed to the retention and expiring with it), and for
--       each q of "queue" (its destinations, live events only):
--       {"stream": k} an entry in that stream; or, for an event with a contact,
--       {"stream": k, "heads": k, "list": k, "contact": digest} its place in that contact's
--       order: the head (with a stream entry that names the contact) if the contact has no
--       undelivered event there, else parked last in the contact's list (no stream entry;
--       settle.lua gives it one when its turn comes)
--   {"notify": k, "stream": k, "id", "data"}
--       a hook notification: its record KEYS[k], and its entry in its partition's stream
--       of notifications ("_hooks")
-- cutoff_ms  events received at or before this leave the time index of the call's first
--            event (on one Redis, of one of its partitions: the next calls trim the others)
--            and the search zsets of its events
-- retention_s how long records live
--
-- Returns 1 for each item.
local items, cutoff_ms, retention_s = cjson.decode(ARGV[1]), ARGV[2], ARGV[3]

local written, trimmed, found = {}, nil, {}
for i, item in ipairs(items) do
  written[i] = 1
  if item.event then
    local key = KEYS[item.event]
    redis.call('HSET', key, DATA, item.data, unpack(item.fields))
    redis.call('EXPIRE', key, retention_s)
    redis.call('ZADD', KEYS[item.index], item.at, item.id)
    trimmed = trimmed or item.index
    for _, k in ipairs(item.who or {}) do
      redis.call('ZADD', KEYS[k], item.at, item.id)
      found[k] = true
    end
    for _, q in ipairs(item.queue) do
      local stream = KEYS[q.stream]
      if not q.contact then
        redis.call('XADD', stream, '*', ENTRY_EVENT, item.id)
      else
        local heads = KEYS[q.heads]
        if redis.call('HEXISTS', heads, q.contact) == 1 then
          redis.call('RPUSH', KEYS[q.list], item.id)
          redis.call('HINCRBY', heads, PARKED, 1)
        else
          redis.call('HSET', heads, q.contact, item.id)
          redis.call('XADD', stream, '*', ENTRY_EVENT, item.id, ENTRY_CONTACT, q.contact)
        end
      end
    end
  elseif item.notify then
    local key = KEYS[item.notify]
    redis.call('HSET', key, DATA, item.data, STATUS .. NOTIFICATIONS, PENDING)
    redis.call('EXPIRE', key, retention_s)
    redis.call('XADD', KEYS[item.stream], '*', ENTRY_EVENT, item.id)
  end
end
if trimmed then  -- the first event's partition's: each has its turn, a call's work stays flat
  redis.call('ZREMRANGEBYSCORE', KEYS[trimmed], '-inf', cutoff_ms)
end
for k in pairs(found) do  -- once per email or phone, however many of its events came
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', cutoff_ms)
  redis.call('EXPIRE', KEYS[k], retention_s)
end
return written
