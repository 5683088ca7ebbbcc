-- KEYS: generation, state. ARGV: writer generation, then field/value pairs.
local refused = fence(KEYS[1], ARGV[1])
if refused then
  return refused
end
hset_fields(KEYS[2], 2, #ARGV, ARGV[1])
return {'ok', tonumber(ARGV[1])}
