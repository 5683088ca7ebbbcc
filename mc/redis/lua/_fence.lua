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

-- nil for a missing key, CORRUPT for anything but a canonical decimal of at
-- most 15 digits (Lua numbers are doubles: exact only below 2^53), else the number.
local function stored_generation(key)
  local v = redis.pcall('GET', key)
  if v == false then
    return nil
  end
  if type(v) ~= 'string' or #v > 15
      or not (v == '0' or string.match(v, '^[1-9]%d*$')) then
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

-- `claimer` takes the meeting at `generation`: it leaves the previous owner's
-- index, and a previous owner that is another MC is told, in its hash of lost
-- meetings (read once per interval) and on its channel (heard at once).
local function take_over(state_key, meeting_id, claimer, generation)
  local owner = redis.call('HGET', state_key, 'mc_id')
  if owner then
    redis.call('SREM', index_key(owner), meeting_id)
    if owner ~= claimer then
      redis.call('HSET', lost_key(owner), meeting_id, generation)
      redis.call('PUBLISH', lost_key(owner), meeting_id)
    end
  end
end

-- Replicas connected to this primary: a claim answered with more than none is
-- made durable on one of them (WAIT, which cannot run in a script) by the store.
local function replicas()
  local info = redis.call('INFO', 'replication')
  return tonumber(string.match(info, 'connected_slaves:(%d+)')) or 0
end
