-- acquire: one request's slot under a sliding-window rate limit, unless paused.
--
-- KEYS: log, pause
-- ARGV: now_ms, count, period_ms, request, hold_ms, poll_ms
--
-- log        zset: request id -> ms it counts from (see relay.ratelimit): at most count
--            of them newer than now - period_ms admit another
-- pause      marker set by an upstream 429 (settle.lua); while it lasts, nothing goes
-- now_ms     the time, or "" for the server's clock (tests pass one)
-- request    the id the admitted request is logged under
-- hold_ms    it is dated that far ahead until its answer dates it (settle.lua): a
--            request in flight counts in every window until then
-- poll_ms    the wait to give while the slot that frees next is still in flight
--
-- Returns 0 or less when admitted (minus the slots left in the window, minus one), else
-- the ms to wait (nothing is logged).
local log, pause = KEYS[1], KEYS[2]
local count, period, hold = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local paused = redis.call('PTTL', pause)
if paused > 0 then return paused end
redis.call('ZREMRANGEBYSCORE', log, '-inf', now - period)
local n = redis.call('ZCARD', log)
if n < count then
  redis.call('ZADD', log, now + hold, ARGV[4])
  local last = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', log, math.max(1, tonumber(last[2]) + period - now))
  return n - count
end
-- Full: a slot frees when the entry that would leave it over the limit ages out
-- (n > count only after the limit was lowered); an entry still in flight ages out
-- a period after its answer, which is not known yet: ask again shortly.
local freeing = redis.call('ZRANGE', log, n - count, n - count, 'WITHSCORES')
local at = tonumber(freeing[2])
if at > now then return tonumber(ARGV[6]) end
return math.max(1, at + period - now)
