-- llm-router global limits: token buckets in Redis (docs/global-limits.md).
--
-- KEYS: one hash per bucket, `llm_router:q:{<tenant>}:<limit>`, fields `lvl` (level in units
-- of 1/60000 of a whole request or token) and `ts` (Redis TIME in ms at the last update).
-- A missing key is a full bucket.
--
-- ARGV[1] = op, then per key:
--   take:   per_minute, capacity, want, min     -> ok, retry_after_ms, (granted, level)...
--   give:   per_minute, capacity, amount        -> level...
--   charge: per_minute, capacity, amount        -> level...
-- Amounts, rates and levels in the answers are whole units; levels are floored.
--
-- All numbers are integers below 2^53 (the caller bounds capacity and per_minute so that
-- 5 x capacity x 60000 stays below 2^52), so double arithmetic is exact. `per_minute` whole
-- units a minute are `per_minute` units a millisecond.
--
-- The only clock is Redis TIME. Time that went backwards (failover to a replica whose clock is
-- behind) refills nothing: the elapsed time counts as zero and `ts` takes the new clock, so
-- nothing is credited twice once the clock moves forward again.

local U = 60000
local op = ARGV[1]
local per_key = (op == 'take') and 4 or 3
if op ~= 'take' and op ~= 'give' and op ~= 'charge' then
  return redis.error_reply('llm_router bucket: unknown op')
end
if #ARGV ~= 1 + per_key * #KEYS or #KEYS == 0 then
  return redis.error_reply('llm_router bucket: wrong number of arguments')
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- floor(x / U) for integer x, exact.
local function whole(x)
  local w = math.floor(x / U)
  if w * U > x then
    w = w - 1
  elseif (w + 1) * U <= x then
    w = w + 1
  end
  return w
end

-- ceil(a / b) for integers a >= 0, b > 0, exact.
local function ceil_div(a, b)
  local q = math.floor(a / b)
  if q * b < a then
    q = q + 1
  elseif q > 0 and (q - 1) * b >= a then
    q = q - 1
  end
  return q
end

local function arg(i, j)
  return tonumber(ARGV[1 + (i - 1) * per_key + j])
end

-- Level now, in units, after refill.
local function refilled(key, rate, cap_u)
  local state = redis.call('HMGET', key, 'lvl', 'ts')
  local lvl, ts = tonumber(state[1]), tonumber(state[2])
  if lvl == nil or ts == nil then
    return cap_u
  end
  if lvl > cap_u then
    lvl = cap_u
  end
  local elapsed = now - ts
  if elapsed > 0 and lvl < cap_u then
    local need = cap_u - lvl
    if elapsed >= ceil_div(need, rate) then
      lvl = cap_u
    else
      lvl = lvl + elapsed * rate
    end
  end
  return lvl
end

local function store(key, lvl, rate, cap_u)
  -- '%.0f': Lua's own number-to-string keeps only 14 digits.
  redis.call('HSET', key, 'lvl', string.format('%.0f', lvl), 'ts', string.format('%.0f', now))
  local until_full = 0
  if lvl < cap_u then
    until_full = ceil_div(cap_u - lvl, rate)
  end
  redis.call('PEXPIRE', key, until_full + 60000)
end

local out = {}
if op == 'take' then
  local levels, retry = {}, 0
  for i, key in ipairs(KEYS) do
    local rate, cap_u, min = arg(i, 1), arg(i, 2) * U, arg(i, 4)
    local lvl = refilled(key, rate, cap_u)
    levels[i] = lvl
    if lvl < min * U then
      local wait
      if min * U > cap_u then
        -- Never fits: not sooner than the bucket is full plus a whole refill of it, so a
        -- caller that retries anyway does not spin.
        wait = ceil_div(cap_u - lvl, rate) + ceil_div(cap_u, rate)
      else
        wait = ceil_div(min * U - lvl, rate)
      end
      if wait < 1 then
        wait = 1
      end
      if wait > retry then
        retry = wait
      end
    end
  end
  out[1], out[2] = (retry == 0) and 1 or 0, retry
  for i, key in ipairs(KEYS) do
    local rate, cap_u, want, min = arg(i, 1), arg(i, 2) * U, arg(i, 3), arg(i, 4)
    local lvl, granted = levels[i], 0
    if retry == 0 then
      local w = whole(lvl)
      granted = want
      if granted < min then
        granted = min
      end
      if granted > w then
        granted = w
      end
      lvl = lvl - granted * U
      store(key, lvl, rate, cap_u)
    end
    out[2 * i + 1], out[2 * i + 2] = granted, whole(lvl)
  end
else
  for i, key in ipairs(KEYS) do
    local rate, cap_u, amount = arg(i, 1), arg(i, 2) * U, arg(i, 3)
    local lvl = refilled(key, rate, cap_u)
    if op == 'give' then
      lvl = lvl + amount * U
      if lvl > cap_u then
        lvl = cap_u
      end
    else
      lvl = lvl - amount * U
      if lvl < -4 * cap_u then
        lvl = -4 * cap_u
      end
    end
    store(key, lvl, rate, cap_u)
    out[i] = whole(lvl)
  end
end
return out
