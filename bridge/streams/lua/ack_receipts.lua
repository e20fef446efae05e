-- KEYS: stream, receipts stream [, the shard's lease]. ARGV: group, receipts maxlen, receipts
-- max age in ms (0: none), the burst as JSON: [[entry id, [field, value, ...]], ...]
-- [, lease value].
-- Acks a burst of entries, each with its receipt: the receipt is written first, the XACK second,
-- and a receipt whose ack did not take (the entry was no longer pending: acked before, by this
-- or another consumer) is deleted again, so a receipt exists exactly when its entry left the
-- pending list (Redis does not roll back a script's earlier writes: a failure midway leaves the
-- rest pending without receipts, and the retried burst gives each of them exactly one).
-- The burst is one JSON argument, not thousands of arguments: encoding them is the client's cost.
-- With the lease key (strict ordering) the lease must hold exactly the value given last, else
-- nothing is written and -1 (fenced). The receipts are then trimmed (MAXLEN ~, MINID ~ by age).
-- Returns how many entries were acked; an error reply when an XACK failed (its receipt removed).
local group = ARGV[1]
if KEYS[3] and redis.call('GET', KEYS[3]) ~= ARGV[5] then
  return -1
end
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'none' and kind ~= 'stream' then
  return redis.error_reply('WRONGTYPE receipts key ' .. KEYS[2] .. ' is a ' .. kind)
end
local burst = cjson.decode(ARGV[4])

-- Out of memory (noeviction) Redis refuses a command that needs memory only as a script's
-- first write: acking the id 0-0 (never pending) writes nothing but lets the receipts through.
redis.call('XACK', KEYS[1], group, '0-0')
local acked = 0
for _, item in ipairs(burst) do
  local receipt = redis.call('XADD', KEYS[2], '*', unpack(item[2]))
  local done = redis.pcall('XACK', KEYS[1], group, item[1])
  if done == 1 then
    acked = acked + 1
  else
    redis.call('XDEL', KEYS[2], receipt)
    if type(done) == 'table' then
      return done
    end
  end
end
redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', ARGV[2])
local age = tonumber(ARGV[3])
if age > 0 then
  local t = redis.call('TIME')
  local floor = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - age
  if floor > 0 then
    redis.call('XTRIM', KEYS[2], 'MINID', '~', string.format('%d', floor))
  end
end
return acked
