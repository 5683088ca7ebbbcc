-- KEYS: generation. A new meeting starts at 1. Replies {'ok', generation, replicas}.
if stored_generation(KEYS[1]) == CORRUPT then
  return {'corrupt'}
end
return {'ok', redis.call('INCR', KEYS[1]), replicas()}
