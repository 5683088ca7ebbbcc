-- The periodic ownership check of an MC, one command whatever it hosts.
-- KEYS: its lost meetings, its marker, its index.
-- ARGV: the marker's new value, the TTL (seconds) of the MC's own keys: a
-- retired MC's keys expire.
-- Replies {'ok', the marker before this call ('' if gone), {meeting id,
-- generation, ...}, Redis's clock in ms, online replicas}: the meetings other
-- MCs claimed from it, each with the winning claim's generation.
local old = raise_marker(KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[2])
return {'ok', old or '', redis.call('HGETALL', KEYS[1]), (now()), online_replicas()}
