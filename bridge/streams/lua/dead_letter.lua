-- KEYS: stream, dead-letter stream [, the shard's lease]. ARGV: group, entry id, n, then n
-- field/value pairs [, lease value].
-- Moves one pending entry to the dead-letter stream: the letter is written first, the ack
-- second, so whatever fails leaves the entry pending (Redis does not roll back a script's
-- earlier writes; a letter whose ack did not take is deleted again). The checks come first
-- and write nothing. With the lease key (strict ordering) the first check is that the lease
-- holds exactly the value given after the pairs: if not, nothing is written and -1 (fenced).
-- Returns 1 when the letter is in the stream and the entry acked, 0 when the entry was no
-- longer pending (nothing written); an error reply when nothing could be done.
local group, id = ARGV[1], ARGV[2]
local last = 3 + 2 * tonumber(ARGV[3])

-- checks: nothing is written before they pass
if KEYS[3] and redis.call('GET', KEYS[3]) ~= ARGV[last + 1] then
  return -1
end
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'none' and kind ~= 'stream' then
  return redis.error_reply('WRONGTYPE dead-letter key ' .. KEYS[2] .. ' is a ' .. kind)
end
if #redis.call('XPENDING', KEYS[1], group, id, id, 1) == 0 then
  return 0
end

-- the letter, then the ack; an ack that does not take removes the letter again. Out of
-- memory (noeviction), Redis refuses a command that needs memory only as a script's first
-- write: acking the id 0-0 (never pending) writes nothing but lets the small letter through.
redis.call('XACK', KEYS[1], group, '0-0')
local letter = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4, last))
local acked = redis.pcall('XACK', KEYS[1], group, id)
if acked ~= 1 then
  redis.call('XDEL', KEYS[2], letter)
  if type(acked) == 'table' then
    return acked
  end
  return 0
end
return 1
