-- Prepended by mc/scripts.py to every fencing script: the one definition of
-- how a stored generation is read and of the fencing rule in the contract.
--
-- Every script answers a table whose first element is the status:
--   {'ok', generation}       done; generation is the meeting's one afterwards
--   {'fenced', stored}       the writer's generation is below the stored one
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

-- nil when the writer may write, else the reply to return. A missing or lower
-- stored generation is raised to the writer's, so later claims continue above it.
-- `writer` is the decimal string the store validated.
local function fence(key, writer)
  local stored = stored_generation(key)
  if stored == CORRUPT then
    return {'corrupt'}
  end
  local mine = tonumber(writer)
  if stored ~= nil and mine < stored then
    return {'fenced', stored}
  end
  if stored == nil or mine > stored then
    redis.call('SET', key, writer)
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

-- The restart-recovery index of an MC (mc/keys.py: meetings_index_key).
local function index_key(mc_id)
  return 'mc:' .. mc_id .. ':meetings'
end

-- Drop the meeting from the index of the MC its state hash names, if any.
local function unindex(state_key, meeting_id)
  local owner = redis.call('HGET', state_key, 'mc_id')
  if owner then
    redis.call('SREM', index_key(owner), meeting_id)
  end
end

-- Replicas connected to this primary: a claim answered with more than none is
-- made durable on one of them (WAIT, which cannot run in a script) by the store.
local function replicas()
  local info = redis.call('INFO', 'replication')
  return tonumber(string.match(info, 'connected_slaves:(%d+)')) or 0
end
