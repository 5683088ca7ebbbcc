-- KEYS: generation, mh, state, the claimer's index. ARGV: mh JSON, meeting id,
-- then state field/value pairs (mc_id first).
-- The accept hot path in one round trip. The state hash is replaced, not
-- merged: a new owner's epoch must not inherit the previous owner's fields.
-- The meeting moves from the previous owner's index to the claimer's.
-- Replies {'ok', generation, replicas}.
if stored_generation(KEYS[1]) == CORRUPT then
  return {'corrupt'}
end
local generation = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1])
unindex(KEYS[3], ARGV[2])
redis.call('DEL', KEYS[3])
hset_fields(KEYS[3], 3, generation)
redis.call('SADD', KEYS[4], ARGV[2])
return {'ok', generation, replicas()}
