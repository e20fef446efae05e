-- KEYS: stream, the shard's lease. ARGV: group, consumer, cursor, count, lease value.
-- XAUTOCLAIM at idle 0 with JUSTID (no delivery counted), only while the lease holds exactly that
-- value: a paused process that wakes up mid-takeover cannot pull entries from the new owner.
-- Returns {next cursor, claimed count, deleted ids}, or {false} when the lease is not ours.
if redis.call('GET', KEYS[2]) ~= ARGV[5] then
  return {false}
end
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3],
                    'COUNT', ARGV[4], 'JUSTID')
return {r[1], #r[2], r[3] or {}}
