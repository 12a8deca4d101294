-- Give up a tag-list read that failed, so that the next decision reads at once and meets the
-- registry's real answer rather than waiting out the lock.
-- KEYS: 1 meta hash, 2 journal list, 3 read lock
-- ARGV: 1 owner
-- Commits and deletes seen while it ran were written to the confirmed set too: the journal
-- only replays them onto a read, and there is none.
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[3], KEYS[2])
redis.call('HDEL', KEYS[1], 'fetching')
return 1
