-- Take the repository's tag-list read, so one replica reads the registry for all.
-- KEYS: 1 meta hash, 2 journal list, 3 read lock
-- ARGV: 1 owner, 2 lock ms, 3 reads seen when the list was found cold
-- Returns 1 (read it), 0 (another replica is reading) or 2 (a read landed since: decide again).
if (redis.call('HGET', KEYS[1], 'reads') or '0') ~= ARGV[3] then return 2 end
if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'fetching', ARGV[1])
  return 1
end
return 0
