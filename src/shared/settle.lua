-- What the registry's answer (or its absence) does to a push's lease, and deletes seen.
-- KEYS: 1 confirmed set, 2 meta hash, 3 reservations zset, 4 doubts zset, 5 re-reads zset,
--       6 journal list, 7 read lock (not used), 8 rewrites zset
-- ARGV: 1 op (commit | release | doubt | remove | stale), 2 lease id, 3 now ms, 4 key ttl ms,
--       5 number of reserved tags n, 6..5+n reserved tags, then tags created (commit) or
--       removed (remove)
local op, lease, n, now = ARGV[1], ARGV[2], tonumber(ARGV[5]), tonumber(ARGV[3])
local fetching = redis.call('HEXISTS', KEYS[2], 'fetching') == 1
for i = 6, 5 + n do
  redis.call('ZREM', KEYS[3], ARGV[i] .. '|' .. lease)
  if op == 'doubt' then
    redis.call('ZADD', KEYS[4], ARGV[3], ARGV[i] .. '|' .. lease)
    redis.call('PEXPIRE', KEYS[4], ARGV[4])
  end
end
-- Settled either way: its expiry no longer calls for a read (a doubt asks for its own).
if n > 0 then redis.call('ZREM', KEYS[5], lease) end
for i = 6 + n, #ARGV do
  local tag = ARGV[i]
  if op == 'commit' then
    redis.call('SADD', KEYS[1], tag)
    if fetching then
      redis.call('RPUSH', KEYS[6], '+' .. tag)
      redis.call('PEXPIRE', KEYS[6], ARGV[4])
    end
  elseif op == 'remove' then
    local rewrite = tonumber(redis.call('ZSCORE', KEYS[8], tag) or '0')
    if rewrite > now then
      -- A push re-writing the tag is in flight and may land after this delete: keep counting
      -- it, and read the list again once that push is over.
      redis.call('ZADD', KEYS[5], 'GT', rewrite, 'w:' .. tag)
      redis.call('PEXPIRE', KEYS[5], math.max(tonumber(ARGV[4]), rewrite - now + 60000))
      if fetching then redis.call('RPUSH', KEYS[6], '+' .. tag) end
    else
      redis.call('SREM', KEYS[1], tag)
      if fetching then redis.call('RPUSH', KEYS[6], '-' .. tag) end
    end
  end
end
if op == 'stale' then
  redis.call('HSET', KEYS[2], 'stale', '1')
  if fetching then redis.call('RPUSH', KEYS[6], '!') end
end
return 1
