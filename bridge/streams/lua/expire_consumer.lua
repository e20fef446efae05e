-- KEYS: stream. ARGV: group, consumer, least idle time in ms.
-- Deletes one consumer of the group, but only if, now, it holds no pending entry and has been
-- idle at least ARGV[3] ms. The caller picked it from an earlier XINFO CONSUMERS; checking
-- again here, in the script that deletes, keeps a consumer that was handed an entry (a claim,
-- a takeover) or that acted in between: XGROUP DELCONSUMER would drop its pending entries.
-- The checks write nothing; the delete is the script's one write, and last.
-- Returns 1 when the consumer was deleted, 0 when it was kept or is gone already.
local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, consumer in ipairs(consumers) do
  local fields = {}
  for i = 1, #consumer, 2 do
    fields[consumer[i]] = consumer[i + 1]
  end
  if fields['name'] == ARGV[2] then
    if fields['pending'] ~= 0 or fields['idle'] < tonumber(ARGV[3]) then
      return 0
    end
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
    return 1
  end
end
return 0
