-- The periodic ownership check of an MC, one command whatever it hosts.
-- KEYS: its lost meetings, its marker.
-- Replies {'ok', marker present (1 or 0), {meeting id, generation, ...}}: the
-- meetings other MCs claimed from it, each with the claim's generation.
return {'ok', redis.call('EXISTS', KEYS[2]), redis.call('HGETALL', KEYS[1])}
