-- KEYS: an MC's index. ARGV: its mc_id.
-- The meetings the MC still owns, as flat (id, generation, mh JSON) triples:
-- the state hash names it at the stored generation and the mh JSON exists.
-- Every other id leaves the index; its keys are left alone.
local owned = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local prefix = 'meeting:' .. id
  local generation = redis.pcall('GET', prefix .. ':generation')
  local state = redis.pcall('HMGET', prefix .. ':state', 'mc_id', 'generation')
  local mh = redis.pcall('GET', prefix .. ':mh')
  if type(generation) == 'string' and type(state) == 'table' and type(mh) == 'string'
      and state[1] == ARGV[1] and state[2] == generation
      and stored_generation(prefix .. ':generation') ~= CORRUPT then
    owned[#owned + 1] = id
    owned[#owned + 1] = generation
    owned[#owned + 1] = mh
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return {'ok', owned}
