-- KEYS: stream, dead-letter stream. ARGV: group, entry id, field, value, field, value ...
-- XACK the entry, then XADD it with its reason to the dead-letter stream. The key's type is
-- checked first, so a WRONGTYPE dead-letter key acks nothing; an entry someone else already
-- acked gets no second dead letter. Returns 1 when written, 0 when it was no longer pending.
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'none' and kind ~= 'stream' then
  return redis.error_reply('WRONGTYPE dead-letter key ' .. KEYS[2] .. ' is a ' .. kind)
end
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
return 1
