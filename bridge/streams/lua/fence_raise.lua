-- KEYS: the shard's fencing counter. ARGV: a token the ingest server has accepted for the shard.
-- Raise the counter to at least that token (never lower it), so the next acquisition's token is
-- above anything the server has seen: after Redis lost the counter (a restart without
-- persistence, a flush) the tokens would otherwise start again at 1 and every POST would be
-- refused as stale. Returns the counter's value.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local seen = tonumber(ARGV[1])
if current < seen then
  redis.call('SET', KEYS[1], seen)
  return seen
end
return current
