-- KEYS: members sorted set, standby sorted set, send times hash. ARGV: member, ttl ms,
-- assignable (1 or 0), when the member sent it (ms on its own clock).
-- Scores are expiry times on the Redis clock, so replicas with skewed clocks agree on who is
-- live. A member that cannot keep its leases (its Redis commands are slow or failing) says it
-- is not assignable: it stays live but goes in the standby set for ttl ms, and is given no
-- shard while any assignable member is live. A heartbeat sent before one already applied for
-- the same member (a late one, overtaken on another connection) changes nothing, so a stale
-- "assignable" cannot undo a newer "not assignable". Returns the members to assign shards to:
-- the live assignable ones, or every live member when none is assignable.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expires = now + tonumber(ARGV[2])
local last = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if tonumber(ARGV[4]) >= last then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
  redis.call('ZADD', KEYS[1], expires, ARGV[1])
  if ARGV[3] == '0' then
    redis.call('ZADD', KEYS[2], expires, ARGV[1])
  end
end
for i = 1, 2 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
end
for _, key in ipairs(KEYS) do
  redis.call('PEXPIRE', key, tonumber(ARGV[2]) * 2)
end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
local assignable = {}
for _, member in ipairs(live) do
  if not redis.call('ZSCORE', KEYS[2], member) then
    assignable[#assignable + 1] = member
  end
end
if #assignable == 0 then
  return live
end
return assignable
