-- release: what requests' answers mean for their destinations, in the control slot: the
-- leases given back, the rate log dated, a pause, the destination's health, the
-- delivered-minute counters and hook subscriptions' last outcomes (the control step of
-- a settle, after settle.lua has settled the events in their partitions).
--
-- KEYS: health, then the items' keys
-- ARGV: items, now_ms
--
-- health         hash: destination -> why it is unhealthy (JSON), while it is
-- items          JSON array, one per request answered (or given up):
--   {"destination", "holder", "leases": k, "rate": k, "sent": [id, ...], "pause": k,
--    "pause_ms", "unhealthy", "minute": k, "delivered", "hooks": k, "last": k,
--    "outcomes": [[hook, outcome], ...]}
--     holder: whose lease the request went under (given back here); sent: its requests'
--     ids in the rate log KEYS[rate], dated now, their answers' time (see
--     relay.ratelimit); pause_ms: an upstream 429's Retry-After, set on KEYS[pause]
--     unless a longer pause is on; unhealthy: why the destination is (credentials);
--     delivered: how many of its events settle.lua settled delivered (counted in
--     KEYS[minute]; any makes the destination healthy, unless this answer says not);
--     outcomes: notifications' subscriptions and their last outcome, set in hash
--     KEYS[last] while the subscription is in KEYS[hooks]
-- now_ms         the time, or "" for the server's clock (tests pass one)
--
-- A worker that dies between settle.lua and this leaves its lease, which lapses by
-- itself, and its rate entries dated ahead (by the hold), which age out a little late:
-- both err on the safe side. Returns 1 for each item.
local health = KEYS[1]
local items = cjson.decode(ARGV[1])
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local releases, healthy, delivered, out = {}, {}, {}, {}
for i, item in ipairs(items) do
  out[i] = 1
  local dest = item.destination
  local list = releases[item.leases]
  if not list then list = {}; releases[item.leases] = list end
  list[#list + 1] = item.holder
  for _, id in ipairs(item.sent or {}) do
    redis.call('ZADD', KEYS[item.rate], 'XX', now, id)
  end
  if item.pause_ms and redis.call('PTTL', KEYS[item.pause]) < item.pause_ms then
    redis.call('SET', KEYS[item.pause], '1', 'PX', item.pause_ms)
  end
  if item.delivered then
    delivered[item.minute] = (delivered[item.minute] or 0) + item.delivered
    healthy[dest] = true
  end
  if item.unhealthy then
    redis.call('HSET', health, dest, item.unhealthy)
    healthy[dest] = nil  -- the later answer counts
  end
  for _, pair in ipairs(item.outcomes or {}) do
    if redis.call('HEXISTS', KEYS[item.hooks], pair[1]) == 1 then
      redis.call('HSET', KEYS[item.last], pair[1], pair[2])
    end
  end
end
for k, holders in pairs(releases) do redis.call('ZREM', KEYS[k], unpack(holders)) end
for k, count in pairs(delivered) do  -- once per counter, however many items count in it
  redis.call('INCRBY', KEYS[k], count)
  redis.call('EXPIRE', KEYS[k], DELIVERED_MINUTE_TTL_S)
end
for dest in pairs(healthy) do redis.call('HDEL', health, dest) end
return out
