-- Confirms claims: once a claim is durable (acknowledged by the replicas
-- required), or to learn the outcome of a claim whose reply never came.
-- KEYS, two per meeting: generation, state. ARGV, three per meeting: meeting
-- id, claim id, claimer mc_id.
-- A meeting whose state still holds that claim gets 'ok' with its generation,
-- and the previous owner the claim left pending is told now; any other gets
-- 'fenced' with the stored generation (the claim never ran, or a newer one
-- replaced it) and nothing changes.
-- Replies {'ok', {status, value, ...} per meeting in order}.
local results = {}
for k = 1, #KEYS, 2 do
  local i = (k - 1) / 2 * 3 + 1
  local meeting_id, claim_id, claimer = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local st = redis.call('HMGET', KEYS[k + 1], 'mc_id', 'claim_id', 'pending', 'prev_mc_id',
                        'generation')
  if st[1] == claimer and st[2] == claim_id then
    if st[3] == '1' then
      if st[4] then
        tell(st[4], meeting_id, st[5])
      end
      redis.call('HDEL', KEYS[k + 1], 'pending', 'prev_mc_id')
    end
    results[#results + 1] = 'ok'
    results[#results + 1] = tonumber(st[5])
  else
    local stored = stored_generation(KEYS[k])
    if stored == CORRUPT then
      results[#results + 1] = 'corrupt'
      results[#results + 1] = 0
    else
      results[#results + 1] = 'fenced'
      results[#results + 1] = stored or 0
    end
  end
end
return {'ok', results}
