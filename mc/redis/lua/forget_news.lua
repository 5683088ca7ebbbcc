-- KEYS: an MC's lost meetings. ARGV: meeting id, generation pairs it has acted on.
-- Each entry is removed only if it still holds that generation: a newer claim
-- of the same meeting, written since it was read, stays for the next check.
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    removed = removed + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return {'ok', removed}
