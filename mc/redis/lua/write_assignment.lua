-- KEYS: generation, mh. ARGV: writer generation, mh JSON.
local refused = fence(KEYS[1], ARGV[1])
if refused then
  return refused
end
redis.call('SET', KEYS[2], ARGV[2])
return {'ok', tonumber(ARGV[1])}
