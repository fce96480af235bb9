-- keep: a worker keeps what it holds of one destination in one partition while its
-- deliveries wait (renew.lua renews their leases, in the control slot).
--
-- KEYS: stream, then the items' keys
-- ARGV: items, consumer, destination, holders, now_ms, lease_ms
--
-- stream       the destination's stream in this partition
-- items        JSON array: {"entry", "event": k}: a stream entry the worker holds, and
--              its event's hash KEYS[k]. Each entry still pending with this consumer
--              gets its idle time reset, so that no other worker claims it (one that
--              another worker claimed meanwhile is left to that one); each event one of
--              ``holders`` still holds is held until now + lease_ms (a lapsed hold may
--              be another's now: left alone)
-- consumer     the worker's name in the consumer group
-- destination  whose status, holder and hold fields these are
-- holders      JSON array of its requests under way
-- now_ms       the time, or "" for the server's clock (tests pass one)
--
-- Returns {entries kept, holds renewed}.
local stream = KEYS[1]
local items, consumer, dest = cjson.decode(ARGV[1]), ARGV[2], ARGV[3]
local lease_ms = tonumber(ARGV[6])
local now = tonumber(ARGV[5])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local mine = {}
for _, holder in ipairs(cjson.decode(ARGV[4])) do mine[holder] = true end
local holder_field, until_field = HOLDER .. dest, UNTIL .. dest

local kept, renewed = 0, 0
for _, item in ipairs(items) do
  if #redis.call('XPENDING', stream, GROUP, item.entry, item.entry, 1, consumer) > 0 then
    redis.call('XCLAIM', stream, GROUP, consumer, 0, item.entry, 'JUSTID')
    kept = kept + 1
  end
  local key = KEYS[item.event]
  local found = redis.call('HMGET', key, holder_field, until_field)
  if found[1] and mine[found[1]] and tonumber(found[2] or 0) > now then
    redis.call('HSET', key, until_field, now + lease_ms)
    renewed = renewed + 1
  end
end
return {kept, renewed}
