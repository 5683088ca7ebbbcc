-- A batch of meetings the writer hosts, each written again at its generation
-- in one atomic step: on a re-assignment (the GC's fresh MH choice), and for
-- every hosted meeting after Redis lost its data (the keys and the index come
-- back as they were; a meeting another MC claimed meanwhile is fenced out).
-- KEYS, four per meeting: generation, mh, state, the writer's index.
-- ARGV, per meeting: the count n of its values, then n values: the writer
-- generation, mh JSON, meeting id, state field/value pairs (mc_id first).
-- Replies {'ok', {status, value, ...} per meeting in order}, as write_state.
local results = {}
local a = 1
for k = 1, #KEYS, 4 do
  local n = tonumber(ARGV[a])
  local writer = ARGV[a + 1]
  each(results, function()
    local refused = fence(KEYS[k], KEYS[k + 2], writer, ARGV[a + 5])
    if refused then
      return refused[1], refused[2] or 0
    end
    redis.call('SET', KEYS[k + 1], ARGV[a + 2])
    hset_fields(KEYS[k + 2], a + 4, a + n, writer)
    redis.call('SADD', KEYS[k + 3], ARGV[a + 3])
    return 'ok', tonumber(writer)
  end)
  a = a + n + 1
end
return {'ok', results}
