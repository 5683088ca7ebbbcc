-- Fenced HSET of a batch of meetings' state hashes, each on its own.
-- KEYS, two per meeting: generation, state.
-- ARGV, per meeting: the count n of its values, then n values: the writer
-- generation, the writer mc_id, and field/value pairs. The hash is left
-- naming the writer (a state hash a plain claim has not created yet gets it).
-- Replies {'ok', {status, value, ...} per meeting in order}: 'ok' with the
-- generation, 'fenced' with the stored one, 'corrupt' with 0, 'error' with
-- Redis's message; a refused meeting is left unchanged.
local results = {}
local a = 1
for k = 1, #KEYS, 2 do
  local n = tonumber(ARGV[a])
  local writer, mc_id = ARGV[a + 1], ARGV[a + 2]
  each(results, function()
    local refused = fence(KEYS[k], KEYS[k + 1], writer, mc_id)
    if refused then
      return refused[1], refused[2] or 0
    end
    hset_fields(KEYS[k + 1], a + 3, a + n, writer)
    redis.call('HSET', KEYS[k + 1], 'mc_id', mc_id)
    return 'ok', tonumber(writer)
  end)
  a = a + n + 1
end
return {'ok', results}
