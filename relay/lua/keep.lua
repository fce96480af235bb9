-- keep: a worker keeps what it holds of one destination in one partition while its
-- deliveries wait (renew.lua renews their leases, in the control slot).
--
-- KEYS: stream, held
-- ARGV: consumer, entries, holders, now_ms, lease_ms
--
-- stream     the destination's stream in this partition
-- held       zset: holder -> expiry ms of the requests marking this partition's events
--            (see take.lua)
-- consumer   the worker's name in the consumer group
-- entries    JSON array of the stream entries it holds: each one still pending with this
--            consumer gets its idle time reset, so that no other worker claims it (one
--            that another worker claimed meanwhile is left to that one)
-- holders    JSON array of its requests under way: each one still held here is renewed
--            until now + lease_ms (a lapsed one may be another's now: left alone)
-- now_ms     the time, or "" for the server's clock (tests pass one)
--
-- Returns {entries kept, holders renewed}.
local stream, held = KEYS[1], KEYS[2]
local consumer, entries, holders = ARGV[1], cjson.decode(ARGV[2]), cjson.decode(ARGV[3])
local lease_ms = tonumber(ARGV[5])
local now = tonumber(ARGV[4])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local kept = 0
for _, entry in ipairs(entries) do
  if #redis.call('XPENDING', stream, GROUP, entry, entry, 1, consumer) > 0 then
    redis.call('XCLAIM', stream, GROUP, consumer, 0, entry, 'JUSTID')
    kept = kept + 1
  end
end
local renewed = 0
for _, holder in ipairs(holders) do
  if tonumber(redis.call('ZSCORE', held, holder) or 0) > now then
    redis.call('ZADD', held, 'XX', now + lease_ms, holder)
    renewed = renewed + 1
  end
end
if renewed > 0 then redis.call('PEXPIRE', held, lease_ms) end
return {kept, renewed}
