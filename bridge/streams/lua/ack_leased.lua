-- KEYS: stream, the shard's lease. ARGV: group, lease value, entry id, entry id ...
-- XACK the entries only while the lease holds exactly that value (strict ordering): a fenced
-- replica that wakes up between its fence check and this call acks nothing, so the shard's new
-- owner re-sends them (the server answers 409) and acks them itself.
-- Returns how many were still pending, or -1 (nothing written) when the lease is not ours.
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return -1
end
return redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 3))
