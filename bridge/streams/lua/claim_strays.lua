-- KEYS: stream, the shard's lease. ARGV: group, consumer, lease value, most entries to move.
-- Strict ordering: move to the lease holder's consumer every entry of the shard pending for
-- another consumer (XCLAIM at idle 0, JUSTID: no delivery counted), only while the lease holds
-- exactly that value. A dead owner's last XREADGROUP that reached Redis after the takeover handed
-- it entries nobody would deliver until the claim idle time; this hands them to the owner.
-- Returns the number of entries moved, or -1 (nothing moved) when the lease is not ours.
if redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return -1
end
local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
if summary[1] == 0 or not summary[4] then
  return 0
end
local budget = tonumber(ARGV[4])
local moved = 0
for _, row in ipairs(summary[4]) do
  local name = row[1]
  if name ~= ARGV[2] and budget > 0 then
    local entries = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', budget, name)
    if #entries > 0 then
      -- unpack() only expands as the last argument: build the whole argument list.
      local args = {KEYS[1], ARGV[1], ARGV[2], 0}
      for _, entry in ipairs(entries) do
        args[#args + 1] = entry[1]
      end
      args[#args + 1] = 'JUSTID'
      moved = moved + #redis.call('XCLAIM', unpack(args))
      budget = budget - #entries
    end
  end
end
return moved
