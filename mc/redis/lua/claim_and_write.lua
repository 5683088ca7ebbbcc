-- The accept hot path: a batch of meetings, each claimed and written in one
-- atomic step, the whole batch in one round trip.
-- KEYS, four per meeting: generation, mh, state, the claimer's index; then
-- the claimer's lost meetings and its marker.
-- ARGV: the replica acknowledgements required, the marker value, the key TTL
-- (seconds) of the claimer's keys, then per meeting the count n of its
-- values and n values: mh JSON, meeting id, claim id, not-after (Redis ms, 0
-- for none), issued-at (Redis ms, 0 for unknown), state field/value pairs
-- (mc_id first).
--
-- With fewer online replicas than required, nothing changes: {'noreplicas',
-- online}. Otherwise each meeting gets:
--   'ok', generation    claimed; the state hash is replaced (a new owner's
--                       epoch inherits nothing) and names the claim
--   'late', stored      Redis's clock is past the claim's not-after: the MC
--                       stopped waiting for it, so it changes nothing
--   'stale', stored     another MC claimed the meeting after this claim was
--                       issued (the GC moved on): it changes nothing
--   'corrupt', 0        the stored generation is not an integer
--   'error', message    Redis refused a command (a key of the wrong type):
--                       that meeting alone fails
-- With acknowledgements required, the previous owner is told only by
-- confirm.lua once the claim is durable; until then the state is 'pending'
-- and remembers whom to tell (the last confirmed owner, carried over a
-- pending claim that never was confirmed). Without, it is told here.
-- Replies {'ok', {status, value, ...} per meeting in order}.
local acks = tonumber(ARGV[1])
local online = online_replicas()
if online < acks then
  return {'noreplicas', online}
end
local nk = #KEYS - 2
local lost, marker = KEYS[nk + 1], KEYS[nk + 2]
local now, now_us = now()
local results = {}
local claimed = false
local a = 4
for k = 1, nk, 4 do
  local n = tonumber(ARGV[a])
  local meeting_id, claim_id = ARGV[a + 2], ARGV[a + 3]
  local not_after, issued = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local claimer = ARGV[a + 7]
  each(results, function()
    local stored = stored_generation(KEYS[k])
    if stored == CORRUPT then
      return 'corrupt', 0
    end
    if not_after > 0 and now > not_after then
      return 'late', stored or 0
    end
    local st = redis.call('HMGET', KEYS[k + 2], 'mc_id', 'claimed_at', 'pending', 'prev_mc_id')
    if issued > 0 and st[1] and st[1] ~= claimer and tonumber(st[2] or '') ~= nil
        and tonumber(st[2]) > issued then
      return 'stale', stored or 0
    end
    local generation = next_generation(stored, now_us)
    local previous = st[1]
    if st[3] == '1' then
      previous = st[4]
    end
    if previous == claimer then
      previous = false
    end
    redis.call('SET', KEYS[k], generation)
    redis.call('SET', KEYS[k + 1], ARGV[a + 1])
    redis.call('DEL', KEYS[k + 2])
    hset_fields(KEYS[k + 2], a + 6, a + n, generation)
    redis.call('HSET', KEYS[k + 2], 'claimed_at', now, 'claim_id', claim_id)
    if acks > 0 then
      redis.call('HSET', KEYS[k + 2], 'pending', '1')
      if previous then
        redis.call('HSET', KEYS[k + 2], 'prev_mc_id', previous)
      end
    elseif previous then
      tell(previous, meeting_id, generation)
    end
    redis.call('SADD', KEYS[k + 3], meeting_id)
    redis.call('EXPIRE', KEYS[k + 3], ARGV[3])
    redis.call('HDEL', lost, meeting_id)
    claimed = true
    return 'ok', generation
  end)
  a = a + n + 1
end
if claimed then
  raise_marker(marker, ARGV[2], ARGV[3])
end
return {'ok', results}
