-- admit: leases for requests to one destination, unless it is paused or every lease is
-- taken (the control step of a take, sent beside take.lua, which marks their events).
--
-- KEYS: leases, pause, then the items' keys
-- ARGV: items, now_ms, lease_ms, max_in_flight
--
-- leases       zset: holder -> lease expiry ms, one per request under way, across every
--              partition and worker (max_in_flight)
-- pause        marker set by an upstream 429 (release.lua); its PTTL is the wait
-- items        JSON array: {"holder"}: the requests that would go (they bring no keys)
-- now_ms       the time, or "" for the server's clock (tests pass one)
-- lease_ms     how long a lease lasts unless renewed (renew.lua) or given back
--              (release.lua, or at once when take.lua leaves the request nothing to send)
-- max_in_flight  leases the destination may have at once
--
-- Returns, for each item: {'ok'} (leased: a holder that had a lease renews it),
-- {'paused', ms left} or {'full'}; nothing changes for those refused.
local leases, pause = KEYS[1], KEYS[2]
local items = cjson.decode(ARGV[1])
local lease_ms, cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local out = {}
local paused = redis.call('PTTL', pause)
if paused > 0 then
  for i in ipairs(items) do out[i] = {'paused', paused} end
  return out
end
redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
local count = redis.call('ZCARD', leases)
for i, item in ipairs(items) do
  if count < cap then  -- ZADD counts 1 for a new holder, 0 for one renewing its lease
    count = count + redis.call('ZADD', leases, now + lease_ms, item.holder)
    out[i] = {'ok'}
  elseif redis.call('ZSCORE', leases, item.holder) then
    redis.call('ZADD', leases, now + lease_ms, item.holder)
    out[i] = {'ok'}
  else
    out[i] = {'full'}
  end
end
redis.call('PEXPIRE', leases, lease_ms)
return out
