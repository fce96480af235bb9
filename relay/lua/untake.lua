-- untake: undo what take.lua marked for requests that admit.lua refused a lease (a take
-- runs its two steps side by side: see relay.queue.DeliveryQueue.take).
--
-- KEYS: then the items' keys
-- ARGV: items, destination
--
-- items        JSON array: {"event": k, "holder", "status", "was", "until"}: the event's
--              hash KEYS[k], the refused request that marked it, and the event's status,
--              holder and hold for this destination before take.lua marked it (false:
--              none)
--
-- An event is put back only while the refused request still holds it (its hash may
-- have expired, or another holder taken it over since). Returns 1 for each event put
-- back, 0 for each left as it was.
local items, dest = cjson.decode(ARGV[1]), ARGV[2]
local status_field, holder_field, until_field = STATUS .. dest, HOLDER .. dest, UNTIL .. dest

local out = {}
for i, item in ipairs(items) do
  local key = KEYS[item.event]
  out[i] = 0
  if redis.call('HGET', key, holder_field) == item.holder then
    local was = {[status_field] = item.status, [holder_field] = item.was,
      [until_field] = item['until']}
    for field, value in pairs(was) do
      if value then redis.call('HSET', key, field, value) else redis.call('HDEL', key, field) end
    end
    out[i] = 1
  end
end
return out
