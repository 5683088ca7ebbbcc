-- One step of an MC's start-up recovery, a few hundred meetings long so that
-- Redis keeps answering every MC meanwhile.
-- KEYS: the MC's index, its lost meetings, its marker.
-- ARGV: its mc_id, the SSCAN cursor ('0' to begin), the step's COUNT, the
-- marker's value, the TTL (seconds) of the MC's own keys.
-- Replies {'ok', the next cursor ('0': done), {id, generation, mh JSON,
-- the state's mh_grpc_endpoints JSON or '', ...}}:
-- the meetings the MC still owns (the state hash names it at the stored
-- generation, with no claim pending and not ended, and the mh JSON exists;
-- an id may come twice). Every other id
-- leaves the index; its keys are left alone. On the first step, the news of
-- lost meetings is dropped (it is of the MC's previous life: recovery reads
-- the truth) and the marker is set (Redis holds what this MC wrote).
if ARGV[2] == '0' then
  redis.call('DEL', KEYS[2])
  raise_marker(KEYS[3], ARGV[4], ARGV[5])
end
local scan = redis.call('SSCAN', KEYS[1], ARGV[2], 'COUNT', ARGV[3])
local owned = {}
for _, id in ipairs(scan[2]) do
  local prefix = 'meeting:' .. id
  local generation = redis.pcall('GET', prefix .. ':generation')
  local state = redis.pcall('HMGET', prefix .. ':state', 'mc_id', 'generation', 'pending',
                            'ended', 'mh_grpc_endpoints')
  local mh = redis.pcall('GET', prefix .. ':mh')
  if type(generation) == 'string' and type(state) == 'table' and type(mh) == 'string'
      and state[1] == ARGV[1] and state[2] == generation and not state[3] and not state[4]
      and stored_generation(prefix .. ':generation') ~= CORRUPT then
    owned[#owned + 1] = id
    owned[#owned + 1] = generation
    owned[#owned + 1] = mh
    owned[#owned + 1] = state[5] or ''
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return {'ok', scan[1], owned}
