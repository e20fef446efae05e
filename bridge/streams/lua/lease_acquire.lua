-- KEYS: lease, fencing counter. ARGV: owner ("<consumer> <instance>"), ttl ms.
-- Takes a free lease with the next fencing token.
-- Returns {token, value} when taken, {0, current value} when someone holds it.
local current = redis.call('GET', KEYS[1])
if current then
  return {0, current}
end
local token = redis.call('INCR', KEYS[2])
local value = token .. ' ' .. ARGV[1]
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return {token, value}
