-- KEYS: generation, mh, state. ARGV: writer generation, writer mc_id, mh JSON.
local refused = fence(KEYS[1], KEYS[3], ARGV[1], ARGV[2])
if refused then
  return refused
end
redis.call('SET', KEYS[2], ARGV[3])
return {'ok', tonumber(ARGV[1])}
