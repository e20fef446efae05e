-- KEYS: stream, dead-letter stream [, the shard's lease]. ARGV: group, entry id, field, value,
-- field, value ... [, lease value]. With the lease key (strict ordering), first of all: unless the
-- lease holds exactly the value given last, write nothing and return -1 (fenced).
-- XACK the entry, then XADD it with its reason to the dead-letter stream. The key's type is
-- checked first, so a WRONGTYPE dead-letter key acks nothing; an entry someone else already
-- acked gets no second dead letter. Returns 1 when written, 0 when it was no longer pending.
local last = #ARGV
if KEYS[3] then
  if redis.call('GET', KEYS[3]) ~= ARGV[last] then
    return -1
  end
  last = last - 1
end
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'none' and kind ~= 'stream' then
  return redis.error_reply('WRONGTYPE dead-letter key ' .. KEYS[2] .. ' is a ' .. kind)
end
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3, last))
return 1
