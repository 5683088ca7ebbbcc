-- KEYS: generation, mh, state. ARGV: writer generation, meeting id.
-- The generation key stays: generations never go backwards.
local refused = fence(KEYS[1], ARGV[1])
if refused then
  return refused
end
unindex(KEYS[3], ARGV[2])
redis.call('DEL', KEYS[2], KEYS[3])
return {'ok', tonumber(ARGV[1])}
