-- The accept hot path: a batch of meetings, each claimed and written in one
-- atomic step, the whole batch in one round trip.
-- KEYS, four per meeting: generation, mh, state, the claimer's index.
-- ARGV, per meeting: the count n of its values, then n values: mh JSON,
-- meeting id, state field/value pairs (mc_id first).
-- The state hash is replaced, not merged: a new owner's epoch must not inherit
-- the previous owner's fields. The meeting moves from the previous owner's
-- index to the claimer's, and a previous owner that is another MC is told.
-- Replies {'ok', {status, generation, ...} per meeting in order, replicas};
-- a meeting whose stored generation is corrupt gets {'corrupt', 0} and is left
-- unchanged.
local results = {}
local a = 1
for k = 1, #KEYS, 4 do
  local n = tonumber(ARGV[a])
  local meeting_id = ARGV[a + 2]
  if stored_generation(KEYS[k]) == CORRUPT then
    results[#results + 1] = 'corrupt'
    results[#results + 1] = 0
  else
    local generation = redis.call('INCR', KEYS[k])
    redis.call('SET', KEYS[k + 1], ARGV[a + 1])
    take_over(KEYS[k + 2], meeting_id, ARGV[a + 4], generation)
    redis.call('DEL', KEYS[k + 2])
    hset_fields(KEYS[k + 2], a + 3, a + n, generation)
    redis.call('SADD', KEYS[k + 3], meeting_id)
    results[#results + 1] = 'ok'
    results[#results + 1] = generation
  end
  a = a + n + 1
end
return {'ok', results, replicas()}
