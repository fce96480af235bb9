-- take: admit stream entries of one destination for sending, or say why not.
--
-- KEYS: stream, leases, pause, then the items' keys
-- ARGV: items, destination, now_ms, lease_ms, max_in_flight
--
-- stream       the destination's stream (a refused copy is acked and deleted in it)
-- leases       zset: holder -> lease expiry ms, one per request under way (max_in_flight)
-- pause        marker set by an upstream 429 (settle.lua); its PTTL is the wait
-- items        JSON array: {"entry", "event": k, "holder"}: the stream entry's id, its
--              event's hash KEYS[k], and the request it would go in (entries with one
--              holder go together, in one request)
-- now_ms       the time, or "" for the server's clock (tests pass one)
-- lease_ms     how long a lease lasts unless renewed (keep.lua) or given back (settle.lua)
-- max_in_flight  leases the destination may have at once
--
-- Each entry is judged alone first; what is not to be sent is final:
--   {'gone'}   its event expired: nothing to send (settle.lua acks it and lets its
--              contact's next event go)
--   {'stray'}  a copy of an event already delivered or dead here: acked
--   {'busy'}   another holder is sending it under a live lease: left pending, for that
--              holder to ack when it settles (or to be claimed again if it dies)
-- The rest wait together for the end of a pause ({'paused', ms left}) and, per holder,
-- a lease ({'full'}: every one is taken); nothing of them is changed then. Otherwise
-- each is marked delivering by its holder: {'ok', data, attempts made, retries spent,
-- the last attempt's record or false} (a ConveYour retry resumes after its "steps").
--
-- The contact's order needs no check here: only the event that heads its contact has
-- a stream entry (enqueue.lua, settle.lua), and a replayed dead letter is in no order.
local stream, leases, pause = KEYS[1], KEYS[2], KEYS[3]
local items, dest = cjson.decode(ARGV[1]), ARGV[2]
local lease_ms, cap = tonumber(ARGV[4]), tonumber(ARGV[5])
local now = tonumber(ARGV[3])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local status_field, holder_field = STATUS .. dest, HOLDER .. dest

local out, going = {}, {}
for i, item in ipairs(items) do
  local key = KEYS[item.event]
  local found = redis.call('HMGET', key, DATA, status_field, holder_field,
    ATTEMPTS .. dest, RETRIES .. dest)
  local data, status, holder = found[1], found[2], found[3]
  if not data then
    out[i] = {'gone'}
  elseif status == DELIVERED or status == DEAD then
    redis.call('XACK', stream, GROUP, item.entry)
    redis.call('XDEL', stream, item.entry)
    out[i] = {'stray'}
  elseif status == DELIVERING and holder and holder ~= item.holder
      and tonumber(redis.call('ZSCORE', leases, holder) or 0) > now then
    out[i] = {'busy'}
  else
    local made = tonumber(found[4] or 0)
    local last = made > 0 and redis.call('HGET', key, RECORD .. dest .. ':' .. made)
    out[i] = {'ok', data, made, tonumber(found[5] or 0), last or false}
    going[#going + 1] = i
  end
end
if #going == 0 then return out end

local paused = redis.call('PTTL', pause)
if paused > 0 then
  for _, i in ipairs(going) do out[i] = {'paused', paused} end
  return out
end

redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
local count, leased = redis.call('ZCARD', leases), {}
for _, i in ipairs(going) do
  local holder = items[i].holder
  if leased[holder] == nil then
    -- A holder that has a lease renews it; a new one needs a free place.
    if count < cap then
      count = count + redis.call('ZADD', leases, now + lease_ms, holder)
      leased[holder] = true
    elseif redis.call('ZSCORE', leases, holder) then
      redis.call('ZADD', leases, now + lease_ms, holder)
      leased[holder] = true
    else
      leased[holder] = false
    end
  end
  if leased[holder] then
    redis.call('HSET', KEYS[items[i].event], status_field, DELIVERING, holder_field, holder)
  else
    out[i] = {'full'}
  end
end
redis.call('PEXPIRE', leases, lease_ms)
return out
