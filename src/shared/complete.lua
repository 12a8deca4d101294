-- Install a tag list read from the registry, replaying what was seen while it was read.
-- KEYS: 1 confirmed set, 2 meta hash, 3 doubts zset, 4 re-reads zset, 5 journal list, 6 read lock
-- ARGV: 1 owner, 2 now ms, 3 read started ms, 4 doubt grace ms, 5 epoch, 6 key ttl ms, 7.. tags
if redis.call('GET', KEYS[6]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
for i = 7, #ARGV, 4000 do
  redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 3999, #ARGV)))
end
local stale = false
for _, entry in ipairs(redis.call('LRANGE', KEYS[5], 0, -1)) do
  local op, tag = string.sub(entry, 1, 1), string.sub(entry, 2)
  if op == '+' then redis.call('SADD', KEYS[1], tag)
  elseif op == '-' then redis.call('SREM', KEYS[1], tag)
  else stale = true end
end
redis.call('DEL', KEYS[5], KEYS[6])
redis.call('HSET', KEYS[2], 'fetched_at', ARGV[2], 'epoch', ARGV[5])
redis.call('HDEL', KEYS[2], 'fetching')
redis.call('HINCRBY', KEYS[2], 'reads', 1)
if stale then redis.call('HSET', KEYS[2], 'stale', '1') else redis.call('HDEL', KEYS[2], 'stale') end
local started = tonumber(ARGV[3])
-- A delete that raced a re-push left its tag counted until that push is over (settle.lua): a
-- list read before then may not show the tag the push is about to store.
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. started, '+inf')) do
  if string.sub(member, 1, 2) == 'w:' then redis.call('SADD', KEYS[1], string.sub(member, 3)) end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', started - tonumber(ARGV[4]))
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', started)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 1
