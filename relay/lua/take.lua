-- take: mark one partition's stream entries of one destination delivering, or say why not.
--
-- KEYS: stream, then the items' keys
-- ARGV: items, destination, now_ms, lease_ms
--
-- The partition step of a take. admit.lua gives each holder its lease (the global pause
-- and max_in_flight, in the control slot) in a call sent beside this one, so neither
-- waits for the other; a holder refused a lease has its marks undone by untake.lua.
--
-- stream       the destination's stream in this partition (a refused copy is acked and
--              deleted in it)
-- items        JSON array: {"entry", "event": k, "holder"}: the stream entry's id, its
--              event's hash KEYS[k], and the request it goes in
-- now_ms       the time, or "" for the server's clock (tests pass one)
-- lease_ms     how long a mark holds the event (its "u:<destination>" field) unless
--              renewed (keep.lua) or settled (settle.lua)
--
-- Each entry is judged alone:
--   {'gone'}   its event expired: nothing to send (settle.lua acks it and lets its
--              contact's next event go)
--   {'stray'}  a copy of an event already delivered or dead here: acked
--   {'busy'}   another holder is sending it and still holds it: left pending, for that
--              holder to ack when it settles (or to be taken over once its hold has
--              lapsed, if its worker dies)
--   {'ok', data, attempts made, retries spent, the last attempt's record or false,
--    its status, holder and hold before, each or false}:
--              marked delivering by its holder (a ConveYour retry resumes after its
--              "steps"; untake.lua puts the status, holder and hold back if admit.lua,
--              run side by side, refused the holder a lease)
--
-- The contact's order needs no check here: only the event that heads its contact has
-- a stream entry (enqueue.lua, settle.lua), and a replayed dead letter is in no order.
local stream = KEYS[1]
local items, dest = cjson.decode(ARGV[1]), ARGV[2]
local lease_ms = tonumber(ARGV[4])
local now = tonumber(ARGV[3])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local status_field, holder_field, until_field = STATUS .. dest, HOLDER .. dest, UNTIL .. dest

local out = {}
for i, item in ipairs(items) do
  local key = KEYS[item.event]
  local found = redis.call('HMGET', key, DATA, status_field, holder_field,
    ATTEMPTS .. dest, RETRIES .. dest, until_field)
  local data, status, holder = found[1], found[2], found[3]
  if not data then
    out[i] = {'gone'}
  elseif status == DELIVERED or status == DEAD then
    redis.call('XACK', stream, GROUP, item.entry)
    redis.call('XDEL', stream, item.entry)
    out[i] = {'stray'}
  elseif status == DELIVERING and holder and holder ~= item.holder
      and tonumber(found[6] or 0) > now then
    out[i] = {'busy'}
  else
    local made = tonumber(found[4] or 0)
    local last = made > 0 and redis.call('HGET', key, RECORD .. dest .. ':' .. made)
    out[i] = {'ok', data, made, tonumber(found[5] or 0), last or false, status or false,
      holder or false, found[6] or false}
    redis.call('HSET', key, status_field, DELIVERING, holder_field, item.holder,
      until_field, now + lease_ms)
  end
end
return out
