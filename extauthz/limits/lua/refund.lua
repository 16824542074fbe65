-- Redis Cluster only: give back what one slot's call counted when another slot then denied
-- the decision (limiter.py, "Cluster"). KEYS: window counters; ARGV: the sub-bucket index each
-- one was counted in.
for j = 1, #KEYS do
  local n = redis.call('HINCRBY', KEYS[j], ARGV[j], -1)
  if n <= 0 then redis.call('HDEL', KEYS[j], ARGV[j]) end
end
return #KEYS
