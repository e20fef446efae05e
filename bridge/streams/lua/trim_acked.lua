-- KEYS: stream. ARGV: most entries to remove. Finds the lowest id any consumer group of the
-- stream still needs and trims below it, in one script so no group can move back in between.
-- Per group: its oldest pending entry, else the entry after its last-delivered id; a group at
-- 0-0 needs everything. No group: no trim. Ids are compared as (length, text) pairs of their
-- decimal parts, exact for 64 bits. The trim is approximate (whole radix-tree nodes, never an
-- entry at or above MINID) with a LIMIT, so one call blocks Redis for a bounded time.
-- Returns {entries trimmed, the MINID used or ''}.
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return ms, seq
end
local function less(a, b)
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  if #ams ~= #bms then return #ams < #bms end
  if ams ~= bms then return ams < bms end
  if #aseq ~= #bseq then return #aseq < #bseq end
  return aseq < bseq
end
local function after(id)
  local ms, seq = parse(id)
  local n = tonumber(seq)
  if #seq > 15 or n == nil then
    return id
  end
  return ms .. '-' .. string.format('%d', n + 1)
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, ''}
end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then
  return {0, ''}
end
local floor = nil
for _, group in ipairs(groups) do
  local info = {}
  for i = 1, #group, 2 do
    info[group[i]] = group[i + 1]
  end
  if info['last-delivered-id'] == '0-0' then
    return {0, ''}
  end
  local need
  if tonumber(info['pending']) > 0 then
    need = redis.call('XPENDING', KEYS[1], info['name'])[2]
  else
    need = after(info['last-delivered-id'])
  end
  if floor == nil or less(need, floor) then
    floor = need
  end
end
return {redis.call('XTRIM', KEYS[1], 'MINID', '~', floor, 'LIMIT', ARGV[1]), floor}
