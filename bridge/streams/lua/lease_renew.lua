-- KEYS: lease. ARGV: value, ttl ms. Only the holder of exactly this value renews.
-- Returns 1 when renewed, 0 when the lease holds another value or none.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
