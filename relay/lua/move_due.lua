-- move_due: scheduled retries whose time has come go back into their streams.
--
-- KEYS: then the items' keys
-- ARGV: items, now_ms, limit
--
-- items      JSON array, one per destination: {"retries": k, "stream": k}
--            retries: zset KEYS[k], member -> due ms; a member is the event id, or the
--            event id, RETRY_SEP and its contact digest when the event heads its
--            contact's order (settle.lua), which its new entry in KEYS[stream] names again
-- now_ms     what is due by then goes
-- limit      at most this many per destination in one call
--
-- Each retry is removed and re-added in this one step: never lost, never doubled by two
-- workers moving at once. Returns how many moved.
local items, now_ms, limit = cjson.decode(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local moved = 0
for _, item in ipairs(items) do
  local retries, stream = KEYS[item.retries], KEYS[item.stream]
  local due = redis.call('ZRANGEBYSCORE', retries, '-inf', now_ms, 'LIMIT', 0, limit)
  for _, member in ipairs(due) do
    local at = string.find(member, RETRY_SEP, 1, true)
    if at then
      redis.call('XADD', stream, '*', ENTRY_EVENT, string.sub(member, 1, at - 1),
        ENTRY_CONTACT, string.sub(member, at + #RETRY_SEP))
    else
      redis.call('XADD', stream, '*', ENTRY_EVENT, member)
    end
    redis.call('ZREM', retries, member)
  end
  moved = moved + #due
end
return moved
