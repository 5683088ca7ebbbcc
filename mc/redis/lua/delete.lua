-- KEYS: generation, mh, state. ARGV: writer generation, writer mc_id, meeting id.
-- The generation key stays: generations never go backwards.
local refused = fence(KEYS[1], KEYS[3], ARGV[1], ARGV[2])
if refused then
  return refused
end
unindex(KEYS[3], ARGV[3])
redis.call('DEL', KEYS[2], KEYS[3])
return {'ok', tonumber(ARGV[1])}
