-- KEYS: generation, mh, state. ARGV: mh JSON, then state field/value pairs.
-- The accept hot path in one round trip. The state hash is replaced, not
-- merged: a new owner's epoch must not inherit the previous owner's fields.
if stored_generation(KEYS[1]) == CORRUPT then
  return {'corrupt'}
end
local generation = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
hset_fields(KEYS[3], 2, generation)
return {'ok', generation}
