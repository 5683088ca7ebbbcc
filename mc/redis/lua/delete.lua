-- KEYS: generation, mh, state. ARGV: writer generation, writer mc_id, meeting
-- id, tombstone TTL (seconds).
-- The meeting ends: its mh key goes, and its state hash becomes a tombstone
-- naming the last owner (a later claim still tells it). The tombstone and the
-- generation key expire: generations are seeded from Redis's clock, so a
-- claim after that does not repeat one.
local refused = fence(KEYS[1], KEYS[3], ARGV[1], ARGV[2])
if refused then
  return refused
end
unindex(KEYS[3], ARGV[3])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[3], 'mc_id', ARGV[2], 'generation', ARGV[1], 'ended', '1')
redis.call('EXPIRE', KEYS[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {'ok', tonumber(ARGV[1])}
