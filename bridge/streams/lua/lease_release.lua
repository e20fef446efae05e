-- KEYS: lease. ARGV: value. Only the holder of exactly this value releases.
-- Returns 1 when released, 0 when the lease holds another value or none.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
