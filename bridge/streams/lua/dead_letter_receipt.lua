-- KEYS: stream, dead-letter stream, receipts stream [, the shard's lease]. ARGV: group, entry id,
-- n, n field/value pairs of the letter, receipts maxlen, receipts max age in ms (0: none), the
-- receipt's field/value pairs as one JSON array [, lease value].
-- dead_letter.lua with a receipt (BRIDGE_RECEIPTS): the letter and the receipt are written
-- first, the ack last, so whatever fails leaves the entry pending (Redis does not roll back a
-- script's earlier writes; a letter and receipt whose ack did not take are deleted again). The
-- checks come first and write nothing. With the lease key (strict ordering) the first check is
-- that the lease holds exactly the value given last: if not, nothing is written and -1 (fenced).
-- Returns 1 when the letter and the receipt are in their streams and the entry acked, 0 when
-- the entry was no longer pending (nothing written); an error reply when nothing could be done.
local group, id = ARGV[1], ARGV[2]
local last = 3 + 2 * tonumber(ARGV[3])
local maxlen, age = ARGV[last + 1], tonumber(ARGV[last + 2])

-- checks: nothing is written before they pass
if KEYS[4] and redis.call('GET', KEYS[4]) ~= ARGV[last + 4] then
  return -1
end
for i = 2, 3 do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'none' and kind ~= 'stream' then
    local what = i == 2 and 'dead-letter' or 'receipts'
    return redis.error_reply('WRONGTYPE ' .. what .. ' key ' .. KEYS[i] .. ' is a ' .. kind)
  end
end
if #redis.call('XPENDING', KEYS[1], group, id, id, 1) == 0 then
  return 0
end
local pairs_of_receipt = cjson.decode(ARGV[last + 3])

-- the letter and the receipt, then the ack; an ack that does not take removes both again.
-- Out of memory (noeviction), Redis refuses a command that needs memory only as a script's
-- first write: acking the id 0-0 (never pending) writes nothing but lets the writes through.
redis.call('XACK', KEYS[1], group, '0-0')
local letter = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4, last))
local receipt = redis.pcall('XADD', KEYS[3], '*', unpack(pairs_of_receipt))
if type(receipt) == 'table' then
  redis.call('XDEL', KEYS[2], letter)
  return receipt
end
local acked = redis.pcall('XACK', KEYS[1], group, id)
if acked ~= 1 then
  redis.call('XDEL', KEYS[2], letter)
  redis.call('XDEL', KEYS[3], receipt)
  if type(acked) == 'table' then
    return acked
  end
  return 0
end
redis.call('XTRIM', KEYS[3], 'MAXLEN', '~', maxlen)
if age > 0 then
  local t = redis.call('TIME')
  local floor = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - age
  if floor > 0 then
    redis.call('XTRIM', KEYS[3], 'MINID', '~', string.format('%d', floor))
  end
end
return 1
