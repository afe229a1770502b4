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
--   per step: kind (r rate, w rate whose refunds come back whole, q quota, c concurrency), a, b,
--   c, amount, extra.
--   rate: a = emission_ns, b = tolerance_ns, c = burst; quota: a = limit, b = period (0 day,
--   1 week, 2 month, 3 every c ns); concurrency: a = max.
--   extra: acquire: 1 when the step may wait (rate limits of layer 0); settle: the charge's
--   mark (a rate charge's end instant, a quota charge's period index).
-- Modes:
--   acquire  -> "1 delay_ns now_s now_ns" then " remaining reset_ns quota_index" per step,
--               or "0 retry_ns step" (one string: the client reads it in one piece and splits
--               it only when asked, where an array costs a parse per element)
--   peek     -> the same, charging nothing
--   settle   -> amount > 0 charges it unconditionally, < 0 refunds it (against extra),
--               a concurrency step releases the holder; 1, or 2 when the operation was
--               already applied (a replay)
--   status   -> {remaining, used, reset_ns, ...per step}
--   extend   -> concurrency steps: the hold of the holder in extra is extended by holder_ttl_ms
--
-- Speed: a decision is a few redis.call()s (TIME, GET, SET) and as little Lua between them as
-- can be: only the arguments a step uses are converted, no table per step, one formatted reply.
-- The helpers are defined once above the entry point, which script.py closes with the EVAL
-- call (tried as a Redis 7 FUNCTION library too: see script.py for the figures).

local floor, format, find, sub, tonum = math.floor, string.format, string.find, string.sub, tonumber
local call = redis.call
local now_s, now_ns = 0, 0 -- the decision's instant, set first by every entry

-- A cell's "a:b" value as two numbers; a value llmthrottle did not write stops the script (the
-- caller sees a StateError naming the cell). A decision reads every cell before it writes one,
-- so a damaged cell denies nothing else and charges nothing.
local function pair(text, key)
  local i = find(text, ':', 1, true)
  local a = i and tonum(sub(text, 1, i - 1))
  local b = i and tonum(sub(text, i + 1))
  if not (a and b) then
    error({err = 'llmthrottle: cell ' .. tostring(key) .. ' holds a value llmthrottle did not write'})
  end
  return a, b
end

-- A stored instant as nanoseconds from now.
local function rel(text, key)
  local seconds, nanos = pair(text, key)
  return (seconds - now_s) * 1e9 + nanos - now_ns
end

-- The instant `r` nanoseconds from now, as stored.
local function instant(r)
  local total = now_ns + r
  local seconds = floor(total / 1e9)
  local nanos = total - seconds * 1e9
  if nanos < 0 then nanos = 0 elseif nanos > 999999999 then nanos = 999999999 end
  return format('%d:%d', now_s + seconds, nanos)
end

-- A rate cell's TAT relative to now, never before now.
local function tat_of(key)
  local value = call('GET', key)
  if not value then return 0 end
  local tat = rel(value, key)
  if tat < 0 then return 0 end
  return tat
end

local function store_tat(key, tat)
  if tat <= 0 then
    call('DEL', key)
  else
    call('SET', key, instant(tat), 'PX', floor(tat / 1e6) + 1)
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
  local value = call('GET', key)
  if not value then return 0 end
  local stored, used = pair(value, key)
  if stored ~= index then return 0 end
  return used
end

local MAX_QUOTA = 281474976710654 -- quota.rs: a cell holds at most 2^48 - 2

local function now_ms()
  return now_s * 1000 + floor(now_ns / 1e6)
end

local function holders(key)
  call('ZREMRANGEBYSCORE', key, '-inf', now_ms())
  return call('ZCARD', key)
end

-- The reply's format for `steps` admitted steps.
local formats = {}
local function admitted_format(steps)
  local text = formats[steps]
  if not text then
    text = '1 %d %d %d' .. string.rep(' %d %d %d', steps)
    formats[steps] = text
  end
  return text
end

-- acquire and peek: a rate charge's mark (its end, now + cost) is left to the caller, who has
-- the amount and the instant returned here.
local function acquire(keys, argv, steps, charging)
  local max_wait = charging and tonum(argv[4]) or 0
  local worst, worst_step, delay, denied = -1, 0, 0, false
  local values, fields = {}, {} -- per step: what to write; per step: remaining, reset, mark
  -- (a quota's reset is the time left in its period, which is also its cell's expiry)
  local n = 0
  for i = 1, steps do
    local base = i * 6
    local kind, key = argv[base + 1], keys[i]
    local a, amount = tonum(argv[base + 2]), tonum(argv[base + 5])
    local left, reset, mark, retry
    if kind == 'r' or kind == 'w' then
      local b = tonum(argv[base + 3])
      local tat = tat_of(key)
      local new = tat + amount * a
      local allow_at = new - b
      local wait = 0
      if charging and argv[base + 6] == '1' then wait = max_wait end
      if allow_at <= wait then
        if charging then
          left = b - new
          left = left > 0 and floor(left / a) or 0
        else
          left = b - tat
          left = (left > 0 and floor(left / a) or 0) - amount
          if left < 0 then left = 0 end
        end
        values[i], reset, mark = new, new, 0
        if allow_at > 0 then
          retry = allow_at
          if allow_at > delay then delay = allow_at end
        end
      else
        denied, retry = true, allow_at
      end
    elseif kind == 'q' then
      local index, left_ns = period(tonum(argv[base + 3]), tonum(argv[base + 4]))
      local used = quota_of(key, index)
      if used + amount <= a then
        values[i], left, reset, mark = format('%d:%d', index, used + amount), a - used - amount, left_ns, index
        if not charging and used == 0 then reset = 0 end
      else
        denied, retry = true, left_ns
      end
    else
      local count = holders(key)
      if count < a then
        values[i], left, reset, mark = count + 1, a - count - 1, 0, 0
      else
        denied, retry = true, 0
      end
    end
    if retry and retry > worst then worst, worst_step = retry, i end
    fields[n + 1], fields[n + 2], fields[n + 3] = left, reset, mark
    n = n + 3
  end
  if denied then
    return format('0 %d %d', worst, worst_step)
  end
  if charging then
    for i = 1, steps do
      local base = i * 6
      local kind, key = argv[base + 1], keys[i]
      if kind == 'r' or kind == 'w' then
        store_tat(key, values[i])
      elseif kind == 'q' then
        call('SET', key, values[i], 'PX', floor(fields[i * 3 - 1] / 1e6) + 60000)
      else
        local ttl = tonum(argv[6])
        call('ZADD', key, now_ms() + ttl, argv[5])
        call('PEXPIRE', key, ttl + 1000)
      end
    end
  end
  return format(admitted_format(steps), delay, now_s, now_ns, unpack(fields, 1, n))
end

local function settle(keys, argv, steps)
  for i = 1, steps do
    local base = i * 6
    local kind, key, amount = argv[base + 1], keys[i], tonum(argv[base + 5])
    if kind == 'c' then
      call('ZREM', key, argv[5])
    elseif kind == 'r' or kind == 'w' then
      local a = tonum(argv[base + 2])
      if amount > 0 then
        store_tat(key, tat_of(key) + amount * a)
      elseif call('EXISTS', key) == 1 then
        -- Only the part of the charge that has not drained yet comes back, or with whole
        -- refunds as much as the bucket has room for (gcra.rs: refund).
        local undrained = -amount * a
        local tat = rel(call('GET', key), key)
        local bound = kind == 'w' and tat or rel(argv[base + 6], 'mark')
        if bound < undrained then undrained = bound end
        if undrained > 0 then store_tat(key, tat - undrained) end
      end
    else
      local index, left_ns = period(tonum(argv[base + 3]), tonum(argv[base + 4]))
      local used = quota_of(key, index)
      if amount > 0 then
        local total = used + amount
        if total > MAX_QUOTA then total = MAX_QUOTA end
        call('SET', key, format('%d:%d', index, total), 'PX', floor(left_ns / 1e6) + 60000)
      elseif index == tonum(argv[base + 6]) and used > 0 then
        -- A refund after the period rolled over is a no-op (quota.rs: refund).
        local total = used + amount
        if total < 0 then total = 0 end
        call('SET', key, format('%d:%d', index, total), 'KEEPTTL')
      end
    end
  end
  return 1
end

local function status(keys, argv, steps)
  local reply = {}
  for i = 1, steps do
    local base = i * 6
    local kind, key, a = argv[base + 1], keys[i], tonum(argv[base + 2])
    local remaining, used, reset
    if kind == 'r' or kind == 'w' then
      local b, c = tonum(argv[base + 3]), tonum(argv[base + 4])
      local tat = tat_of(key)
      remaining = floor(math.max(b - tat, 0) / a)
      used, reset = c - remaining, tat
    elseif kind == 'q' then
      local index, left_ns = period(tonum(argv[base + 3]), tonum(argv[base + 4]))
      used = quota_of(key, index)
      remaining, reset = math.max(a - used, 0), used > 0 and left_ns or 0
    else
      used = holders(key)
      remaining, reset = math.max(a - used, 0), 0
    end
    reply[#reply + 1] = format('%d', remaining)
    reply[#reply + 1] = format('%d', used)
    reply[#reply + 1] = format('%d', reset)
  end
  return reply
end

local function extend(keys, argv, steps)
  local ttl = tonum(argv[6])
  for i = 1, steps do
    local key = keys[i]
    if call('ZADD', key, 'XX', 'CH', now_ms() + ttl, argv[i * 6 + 6]) == 1 then
      call('PEXPIRE', key, ttl + 1000)
    end
  end
  return 1
end

-- The entry point: the instant, the replay marker, then the mode.
local function decide(keys, argv)
  local given_now = argv[3]
  if given_now == '' then
    local t = call('TIME')
    now_s, now_ns = tonum(t[1]), tonum(t[2]) * 1000
  else
    now_s, now_ns = pair(given_now, 'now')
  end
  local steps = (#argv - 6) / 6
  if argv[2] ~= '' and not call('SET', keys[steps + 1], '1', 'NX', 'PX', 86400000) then
    return 2
  end
  local mode = argv[1]
  if mode == 'acquire' then return acquire(keys, argv, steps, true) end
  if mode == 'peek' then return acquire(keys, argv, steps, false) end
  if mode == 'settle' then return settle(keys, argv, steps) end
  if mode == 'status' then return status(keys, argv, steps) end
  if mode == 'extend' then return extend(keys, argv, steps) end
  return redis.error_reply('llmthrottle: unknown mode ' .. tostring(mode))
end
