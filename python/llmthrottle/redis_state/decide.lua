-- llmthrottle's decisions in Redis: the engine's rules (crates/llmthrottle-core/src/gcra.rs,
-- quota.rs, calendar.rs) applied to the cells of one request at once, so that the request is
-- all or nothing and racing hosts can never together pass a limit. A script runs alone on its
-- shard: every cell is read, the request is judged against all of them, and only then are the
-- admitted charges written, so a denial writes nothing.
--
-- Time is the server's (TIME), so the hosts' clocks do not matter; tests pass a fake instant.
-- Instants are stored as "seconds:nanoseconds" and computed as nanoseconds relative to now:
-- Lua's numbers are doubles, exact to 2^53, so arithmetic stays exact to the nanosecond for
-- anything within 104 days of now (a burst longer than that is rounded to a few ns).
--
-- Cells: a rate limit's is a string holding its theoretical arrival time (TAT), expiring when
-- the bucket is full again; a quota's is "period_index:used", expiring after its period; a
-- concurrency cap's is a sorted set of holders scored by the millisecond their hold lapses
-- (extended by the holder's heartbeat, so the holders of a dead process lapse on their own).
--
-- KEYS: one cell per step, then (with an operation id) the operation's marker.
-- ARGV: mode, operation id, now ('' for TIME), max_wait_ns, holder, holder_ttl_ms, then six
--   per step: kind (r rate, q quota, c concurrency), a, b, c, amount, extra.
--   rate: a = emission_ns, b = tolerance_ns, c = burst; quota: a = limit, b = period (0 day,
--   1 week, 2 month, 3 every c ns); concurrency: a = max.
--   extra: acquire: 1 when the step may wait (rate limits of layer 0); settle: the charge's
--   mark (a rate charge's end instant, a quota charge's period index).
-- Modes:
--   acquire  -> {1, delay_ns, 0, now_s, now_ns, remaining, reset_ns, quota_index, ...per step}
--               or {0, retry_ns, step}
--   peek     -> the same, charging nothing
--   settle   -> amount > 0 charges it unconditionally, < 0 refunds it (against extra),
--               a concurrency step releases the holder; {1}, or {2} when the operation was
--               already applied (a replay)
--   status   -> {remaining, used, reset_ns, ...per step}
--   extend   -> concurrency steps: the hold of the holder in extra is extended by holder_ttl_ms
pcall(redis.replicate_commands) -- Redis < 5 needs it for TIME before writes; later ones ignore it

-- A cell's "a:b" value as two numbers; a value llmthrottle did not write stops the script (the
-- caller sees a StateError naming the cell). A decision reads every cell before it writes one,
-- so a damaged cell denies nothing else and charges nothing.
local function pair(text, key)
  local i = string.find(text, ':', 1, true)
  local a = i and tonumber(string.sub(text, 1, i - 1))
  local b = i and tonumber(string.sub(text, i + 1))
  if not (a and b) then
    error({err = 'llmthrottle: cell ' .. tostring(key) .. ' holds a value llmthrottle did not write'})
  end
  return a, b
end

local mode, operation, given_now = ARGV[1], ARGV[2], ARGV[3]
local max_wait = tonumber(ARGV[4])
local holder, holder_ttl = ARGV[5], tonumber(ARGV[6])

local now_s, now_ns
if given_now == '' then
  local t = redis.call('TIME')
  now_s, now_ns = tonumber(t[1]), tonumber(t[2]) * 1000
else
  now_s, now_ns = pair(given_now, 'now')
end
local now_ms = now_s * 1000 + math.floor(now_ns / 1e6)
local floor = math.floor

-- A stored instant as nanoseconds from now.
local function rel(text, key)
  local seconds, nanos = pair(text, key)
  return (seconds - now_s) * 1e9 + nanos - now_ns
end

-- The instant `r` nanoseconds from now, as stored.
local function instant(r)
  local total = now_ns + r
  local seconds = floor(total / 1e9)
  local nanos = math.min(math.max(total - seconds * 1e9, 0), 999999999)
  return string.format('%d:%d', now_s + seconds, nanos)
end

-- A rate cell's TAT relative to now, never before now.
local function tat_of(key)
  local value = redis.call('GET', key)
  if not value then return 0 end
  local tat = rel(value, key)
  if tat < 0 then return 0 end
  return tat
end

local function store_tat(key, tat)
  if tat <= 0 then
    redis.call('DEL', key)
  else
    redis.call('SET', key, instant(tat), 'PX', floor(tat / 1e6) + 1)
  end
end

-- Howard Hinnant's civil calendar conversions, for days since 1970 (as calendar.rs).
local function civil_from_days(days)
  local z = days + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400
  if month <= 2 then year = year + 1 end
  return year, month
end

local function days_from_civil(year, month)
  if month <= 2 then year = year - 1 end
  local era = floor(year / 400)
  local yoe = year - era * 400
  local mp = (month + 9) % 12
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + floor((153 * mp + 2) / 5)
  return era * 146097 + doe - 719468
end

-- The index of the current period and the nanoseconds left in it.
local function period(code, fixed_ns)
  local next_start_s
  local index
  if code == 0 then
    index = floor(now_s / 86400)
    next_start_s = (index + 1) * 86400
  elseif code == 1 then
    index = floor((floor(now_s / 86400) + 3) / 7)
    next_start_s = ((index + 1) * 7 - 3) * 86400
  elseif code == 2 then
    local year, month = civil_from_days(floor(now_s / 86400))
    index = year * 12 + month - 1
    next_start_s = days_from_civil(floor((index + 1) / 12), (index + 1) % 12 + 1) * 86400
  else
    local seconds = fixed_ns / 1e9
    index = floor((now_s + now_ns / 1e9) / seconds)
    next_start_s = (index + 1) * seconds
  end
  return index, (next_start_s - now_s) * 1e9 - now_ns
end

local function quota_of(key, index)
  local value = redis.call('GET', key)
  if not value then return 0, nil end
  local stored, used = pair(value, key)
  if stored ~= index then return 0, stored end
  return used, stored
end

local MAX_QUOTA = 281474976710654 -- quota.rs: a cell holds at most 2^48 - 2

local function holders(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
  return redis.call('ZCARD', key)
end

local steps = (#ARGV - 6) / 6
local function step(i)
  local base = 6 + (i - 1) * 6
  return ARGV[base + 1], tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4]),
    tonumber(ARGV[base + 5]), ARGV[base + 6]
end

if operation ~= '' then
  if not redis.call('SET', KEYS[steps + 1], '1', 'NX', 'PX', 86400000) then
    return {2}
  end
end

if mode == 'acquire' or mode == 'peek' then
  -- Numbers go back as integer replies (exact: all below 2^53); a rate charge's mark (its
  -- end, now + cost) is left to the caller, who has the amount and the instant returned here.
  local charging = mode == 'acquire'
  local verdicts = {}
  local denied, worst, worst_step = false, -1, 0
  local delay = 0
  for i = 1, steps do
    local kind, a, b, c, amount, extra = step(i)
    local key = KEYS[i]
    -- verdict: {admitted, retry_ns when denied at no wait, state to write, remaining, reset,
    --           mark, kind, ns left in a quota's period}
    local v
    if kind == 'r' then
      local tat = tat_of(key)
      local new = tat + amount * a
      local allow_at = new - b
      local wait = 0
      if charging and extra == '1' then wait = max_wait end
      if allow_at <= wait then
        local left
        if charging then left = floor(math.max(b - new, 0) / a)
        else left = math.max(floor(math.max(b - tat, 0) / a) - amount, 0) end
        v = {true, allow_at > 0 and allow_at or nil, new, left, new, 0, kind}
        if allow_at > delay then delay = allow_at end
      else
        v = {false, allow_at}
      end
    elseif kind == 'q' then
      local index, left_ns = period(b, c)
      local used = quota_of(key, index)
      if used + amount <= a then
        local reset = left_ns
        if not charging and used == 0 then reset = 0 end
        v = {true, nil, used + amount, a - used - amount, reset, index, kind, left_ns}
      else
        v = {false, left_ns}
      end
    else
      local count = holders(key)
      if count < a then
        v = {true, nil, count + 1, a - count - 1, 0, 0, kind}
      else
        v = {false, 0}
      end
    end
    verdicts[i] = v
    if not v[1] then denied = true end
    if v[2] ~= nil and v[2] > worst then worst, worst_step = v[2], i end
  end
  if denied then
    return {0, worst, worst_step}
  end
  local reply = {1, delay, 0, now_s, now_ns}
  for i = 1, steps do
    local v = verdicts[i]
    if charging then
      local key, kind = KEYS[i], v[7]
      if kind == 'r' then
        store_tat(key, v[3])
      elseif kind == 'q' then
        redis.call('SET', key, string.format('%d:%d', v[6], v[3]), 'PX', floor(v[8] / 1e6) + 60000)
      else
        redis.call('ZADD', key, now_ms + holder_ttl, holder)
        redis.call('PEXPIRE', key, holder_ttl + 1000)
      end
    end
    reply[#reply + 1] = v[4]
    reply[#reply + 1] = v[5]
    reply[#reply + 1] = v[6]
  end
  return reply
end

if mode == 'settle' then
  for i = 1, steps do
    local kind, a, b, c, amount, extra = step(i)
    local key = KEYS[i]
    if kind == 'c' then
      redis.call('ZREM', key, holder)
    elseif kind == 'r' then
      if amount > 0 then
        store_tat(key, tat_of(key) + amount * a)
      elseif redis.call('EXISTS', key) == 1 then
        -- Only the part of the charge that has not drained yet comes back (gcra.rs: refund).
        local undrained = math.min(-amount * a, rel(extra, 'mark'))
        if undrained > 0 then store_tat(key, rel(redis.call('GET', key), key) - undrained) end
      end
    else
      local index, left_ns = period(b, c)
      local used = quota_of(key, index)
      if amount > 0 then
        redis.call('SET', key, string.format('%d:%d', index, math.min(used + amount, MAX_QUOTA)),
          'PX', floor(left_ns / 1e6) + 60000)
      elseif index == tonumber(extra) and used > 0 then
        -- A refund after the period rolled over is a no-op (quota.rs: refund).
        redis.call('SET', key, string.format('%d:%d', index, math.max(used + amount, 0)), 'KEEPTTL')
      end
    end
  end
  return {1}
end

if mode == 'status' then
  local reply = {}
  for i = 1, steps do
    local kind, a, b, c, amount, extra = step(i)
    local key = KEYS[i]
    local remaining, used, reset
    if kind == 'r' then
      local tat = tat_of(key)
      remaining = floor(math.max(b - tat, 0) / a)
      used, reset = c - remaining, tat
    elseif kind == 'q' then
      local index, left_ns = period(b, c)
      used = quota_of(key, index)
      remaining, reset = math.max(a - used, 0), used > 0 and left_ns or 0
    else
      used = holders(key)
      remaining, reset = math.max(a - used, 0), 0
    end
    reply[#reply + 1] = string.format('%d', remaining)
    reply[#reply + 1] = string.format('%d', used)
    reply[#reply + 1] = string.format('%d', reset)
  end
  return reply
end

if mode == 'extend' then
  for i = 1, steps do
    local key = KEYS[i]
    local kind, a, b, c, amount, extra = step(i)
    if redis.call('ZADD', key, 'XX', 'CH', now_ms + holder_ttl, extra) == 1 then
      redis.call('PEXPIRE', key, holder_ttl + 1000)
    end
  end
  return {1}
end

return redis.error_reply('llmthrottle: unknown mode ' .. tostring(mode))
