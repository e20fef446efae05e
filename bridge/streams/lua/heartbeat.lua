-- KEYS: members sorted set. ARGV: member, ttl ms. Scores are expiry times on the Redis clock,
-- so replicas with skewed clocks agree on who is live. Returns the live members.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
