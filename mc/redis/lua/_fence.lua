-- Prepended by mc/redis/scripts.py to every script: the one definition of how
-- a stored generation is read and of the fencing rule in the contract.
--
-- Every fencing script answers a table whose first element is the status:
--   {'ok', generation}       done; generation is the meeting's one afterwards
--   {'fenced', stored}       the stored generation is above the writer's, or
--                            the state hash names another MC (stored may be
--                            0: no generation key)
--   {'corrupt'}              the stored generation is not an integer
-- and changes nothing unless the status is 'ok'.

local CORRUPT = {}
local MAX_GENERATION = 9007199254740991  -- 2^53 - 1

-- nil for a missing key, CORRUPT for anything but a canonical decimal below
-- 2^53 (Lua numbers are doubles: exact only up to there), else the number.
local function stored_generation(key)
  local v = redis.pcall('GET', key)
  if v == false then
    return nil
  end
  if type(v) ~= 'string' or #v > 16
      or not (v == '0' or string.match(v, '^[1-9]%d*$')) or tonumber(v) > MAX_GENERATION then
    return CORRUPT
  end
  return tonumber(v)
end

-- nil when `mc_id` may write at generation `writer` (the decimal string the
-- store validated), else the reply to return. The writer must hold at least
-- the stored generation and, when the state hash names an owner, be it: after
-- Redis lost its data, a claim by another MC starts again at 1, and only the
-- owner check keeps an MC with a higher, older generation from overwriting it.
-- A missing or lower stored generation is raised to the writer's, so later
-- claims continue above it.
local function fence(generation_key, state_key, writer, mc_id)
  local stored = stored_generation(generation_key)
  if stored == CORRUPT then
    return {'corrupt'}
  end
  local mine = tonumber(writer)
  if stored ~= nil and mine < stored then
    return {'fenced', stored}
  end
  local owner = redis.call('HGET', state_key, 'mc_id')
  if owner and owner ~= mc_id then
    return {'fenced', stored or 0}
  end
  if stored == nil or mine > stored then
    redis.call('SET', generation_key, writer)
  end
  return nil
end

-- One meeting's part of a batch, appended to `results` as status, value:
-- `fn` returns them; a Redis error (a key of the wrong type) fails that
-- meeting alone, as 'error' with the message (what it wrote before stays).
local function each(results, fn)
  local ok, status, value = pcall(fn)
  if not ok then
    local e = status
    status = 'error'
    value = type(e) == 'table' and e.err or tostring(e)
  end
  results[#results + 1] = status
  results[#results + 1] = value
end

-- HSET of ARGV[first..last] (field, value pairs) plus the generation.
local function hset_fields(key, first, last, generation)
  local args = {'HSET', key}
  for i = first, last do
    args[#args + 1] = ARGV[i]
  end
  args[#args + 1] = 'generation'
  args[#args + 1] = generation
  redis.call(unpack(args))
end

-- An MC's restart-recovery index and its news of lost meetings (mc/redis/keys.py).
local function index_key(mc_id)
  return 'mc:' .. mc_id .. ':meetings'
end

local function lost_key(mc_id)
  return 'mc:' .. mc_id .. ':lost'
end

-- Drop the meeting from the index of the MC its state hash names, if any.
local function unindex(state_key, meeting_id)
  local owner = redis.call('HGET', state_key, 'mc_id')
  if owner then
    redis.call('SREM', index_key(owner), meeting_id)
  end
end

-- Redis's clock: milliseconds and microseconds.
local function now()
  local t = redis.call('TIME')
  local s, us = tonumber(t[1]), tonumber(t[2])
  return s * 1000 + math.floor(us / 1000), s * 1000000 + us
end

-- A claim's generation, as a decimal string (redis.call would print a Lua
-- number with 14 digits): above the stored one and at least Redis's clock in
-- microseconds, so it is above every generation handed out before even when
-- the stored one went back (a restart from an older snapshot, a failover
-- that lost writes, an evicted key): "highest wins" is enough, and none
-- repeats unless Redis's clock goes back. No script runs in under a
-- microsecond, so stored + 1 never runs ahead of the clock.
local function next_generation(stored, now_us)
  local g = now_us
  if stored ~= nil and stored >= now_us then
    g = stored + 1
  end
  return string.format('%.0f', g)
end

-- Replicas that are online (a replica still in its initial sync counts as
-- connected but acknowledges nothing): what WAIT can count on.
local function online_replicas()
  local info = redis.call('INFO', 'replication')
  local n = 0
  for _ in string.gmatch(info, 'slave%d+:[^\r\n]*state=online') do
    n = n + 1
  end
  return n
end

-- `owner` lost the meeting to a claim at `generation`: it leaves the owner's
-- index, and the owner is told in its hash of lost meetings (read at every
-- ownership check) and on its channel (heard at once).
local function tell(owner, meeting_id, generation)
  redis.call('SREM', index_key(owner), meeting_id)
  redis.call('HSET', lost_key(owner), meeting_id, generation)
  redis.call('PUBLISH', lost_key(owner), meeting_id)
end

-- An MC's marker only grows: each reply that carries a value acknowledges
-- it, and a marker found below an acknowledged value (or gone) means Redis
-- lost writes (a rollback) or all its data.
local function raise_marker(key, value, ttl)
  local old = redis.call('GET', key)
  if not old or tonumber(old) == nil or tonumber(old) < tonumber(value) then
    redis.call('SET', key, value, 'EX', ttl)
  else
    redis.call('EXPIRE', key, ttl)
  end
  return old
end
