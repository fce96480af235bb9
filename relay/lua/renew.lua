-- renew: a worker renews the live leases of its requests to one destination while they
-- wait (the control half of keep.lua).
--
-- KEYS: leases
-- ARGV: holders, now_ms, lease_ms
--
-- leases     zset: holder -> lease expiry ms (see admit.lua)
-- holders    JSON array of its requests under way: each lease still live is renewed
--            until now + lease_ms (a lapsed one may be another's place now: left alone)
-- now_ms     the time, or "" for the server's clock (tests pass one)
--
-- Returns how many leases were renewed.
local leases = KEYS[1]
local holders, lease_ms = cjson.decode(ARGV[1]), tonumber(ARGV[3])
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local renewed = 0
for _, holder in ipairs(holders) do
  if tonumber(redis.call('ZSCORE', leases, holder) or 0) > now then
    redis.call('ZADD', leases, 'XX', now + lease_ms, holder)
    renewed = renewed + 1
  end
end
if renewed > 0 then redis.call('PEXPIRE', leases, lease_ms) end
return renewed
