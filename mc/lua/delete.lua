-- KEYS: generation, mh, state. ARGV: writer generation.
-- The generation key stays: generations never go backwards.
local refused = fence(KEYS[1], ARGV[1])
if refused then
  return refused
end
redis.call('DEL', KEYS[2], KEYS[3])
return {'ok', tonumber(ARGV[1])}
