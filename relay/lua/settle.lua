-- settle: record what requests' answers mean for one partition's events, and ack their
-- stream entries, in one step (the partition step of a settle; release.lua follows it
-- in the control slot with what the answers mean for their destinations).
--
-- KEYS: notifications, then the items' keys
-- ARGV: items, now_ms, retention_s
--
-- notifications  the partition's stream of hook notifications ("_hooks")
-- items          JSON array, one per request answered (or given up), its events in
--                this partition:
--   {"destination", "holder", "stream": k, "events": [e, ...]}
--     holder: whose request it was (an event it holds is let go: "h:" and "u:" fields)
--   e = {"entry", "id", "event": k, "status", "record", "spend",  (an expired event:
--        "entry", "id", "event" and its contact's order only)
--        "retry": k, "at", "member",        status retrying: when, in zset KEYS[retry]
--        "dead": k,                         status dead: the dead letters' zset
--        "heads": k, "list": k, "contact",  the entry named its contact: its order
--        "notify": [{"notify": k, "id", "data"}, ...]}   hook notifications to queue
--     record: the attempt's JSON, kept as field "a:<destination>:<n>" of the event's
--     hash (n: attempts made, counted in "n:<destination>"); spend: it spends a step of
--     the retry schedule (counted in "r:<destination>")
-- now_ms         the time, or "" for the server's clock (tests pass one)
-- retention_s    how long a notification's record lives
--
-- An event settles only by its holder: if another worker took it over (the lease of
-- this one had lapsed), this attempt is recorded and the rest is left to that worker
-- ('late'). An event that expired meanwhile leaves nothing behind (a hash written now
-- would never expire): its entry is acked and its contact's next event goes ('gone').
-- Returns, for each item, a word for each of its events: 'settled', 'late' or 'gone'.
local notifications = KEYS[1]
local items, retention_s = cjson.decode(ARGV[1]), ARGV[3]
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The contact's next event heads its order now, and gets its stream entry.
local function next_of_contact(e, stream)
  local heads = KEYS[e.heads]
  if not e.contact or redis.call('HGET', heads, e.contact) ~= e.id then return end
  local next_id = redis.call('LPOP', KEYS[e.list])
  if next_id then
    redis.call('HSET', heads, e.contact, next_id)
    redis.call('HINCRBY', heads, PARKED, -1)
    redis.call('XADD', stream, '*', ENTRY_EVENT, next_id, ENTRY_CONTACT, e.contact)
  else
    redis.call('HDEL', heads, e.contact)
  end
end

-- Commands that take many arguments are sent once per key, at the end: acks per stream.
local acks = {}
local function add(tbl, key, value)
  local list = tbl[key]
  if not list then list = {}; tbl[key] = list end
  list[#list + 1] = value
end

local out = {}
for i, item in ipairs(items) do
  local dest, stream = item.destination, KEYS[item.stream]
  local words = {}
  out[i] = words
  for j, e in ipairs(item.events) do
    local key = KEYS[e.event]
    local holder = redis.call('HGET', key, HOLDER .. dest)
    if holder == item.holder then
      local n = redis.call('HINCRBY', key, ATTEMPTS .. dest, 1)
      redis.call('HSET', key, STATUS .. dest, e.status, RECORD .. dest .. ':' .. n, e.record)
      redis.call('HDEL', key, HOLDER .. dest, UNTIL .. dest)
      if e.spend then redis.call('HINCRBY', key, RETRIES .. dest, 1) end
      if e.status == RETRYING then
        redis.call('ZADD', KEYS[e.retry], e.at, e.member)
      else
        if e.status == DEAD then
          redis.call('ZADD', KEYS[e.dead], now, e.id)
        end
        next_of_contact(e, stream)
      end
      for _, ntf in ipairs(e.notify or {}) do
        local record = KEYS[ntf.notify]
        redis.call('HSET', record, DATA, ntf.data, STATUS .. NOTIFICATIONS, PENDING)
        redis.call('EXPIRE', record, retention_s)
        redis.call('XADD', notifications, '*', ENTRY_EVENT, ntf.id)
      end
      add(acks, item.stream, e.entry)
      words[j] = 'settled'
    elseif not holder and redis.call('EXISTS', key) == 0 then
      next_of_contact(e, stream)
      add(acks, item.stream, e.entry)
      words[j] = 'gone'
    else
      -- Not ours any more. An event take found expired has no attempt to record: a
      -- failover brought it back (a replica expires nothing itself), and another
      -- holder has it, with its stream entry.
      if e.record then
        local n = redis.call('HINCRBY', key, ATTEMPTS .. dest, 1)
        redis.call('HSET', key, RECORD .. dest .. ':' .. n, e.record)
      end
      words[j] = 'late'
    end
  end
end
for k, ids in pairs(acks) do
  redis.call('XACK', KEYS[k], GROUP, unpack(ids))
  redis.call('XDEL', KEYS[k], unpack(ids))
end
return out
