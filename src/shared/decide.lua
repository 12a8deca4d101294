-- Decide-and-reserve for one manifest push, atomically on the server.
-- KEYS: 1 confirmed set, 2 meta hash, 3 reservations zset (tag|lease -> expiry ms),
--       4 doubts zset (tag|lease -> since ms), 5 re-reads zset (lease -> due ms),
--       6 rewrites zset (tag -> expiry ms of the latest push re-writing it)
-- ARGV: 1 now ms, 2 oldest trusted read ms, 3 cache ttl ms, 4 doubt grace ms, 5 epoch,
--       6 limit, 7 lease expiry ms, 8 lease id, 9 take (1: reserve slots, 0: judge only,
--       w: guard rewrites only), 10 key ttl ms, 11.. counted tags
-- Returns {'cold', reads} when the tag list must be read first (reads: how many reads were
-- installed so far, so that only one replica reads for a given state), {'later'} when take is
-- 'w' and a tag is not confirmed (the push must be decided with its slots), else
-- {'allow'|'deny', count, #new, new..., reserved...}.
local now = tonumber(ARGV[1])
local meta = redis.call('HMGET', KEYS[2], 'fetched_at', 'epoch', 'stale', 'reads')
local cold = {'cold', meta[4] or '0'}
local fetched = tonumber(meta[1])
if not fetched or meta[2] ~= ARGV[5] or meta[3] or fetched < tonumber(ARGV[2])
    or now - fetched >= tonumber(ARGV[3]) then
  return cold
end
-- Most decisions meet no lease, doubt or re-read in flight: one call says so.
local busy = redis.call('EXISTS', KEYS[3], KEYS[4], KEYS[5]) > 0
-- A lease that ran out unsettled, or a doubt past its grace, may hide a stored tag.
if busy and #redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 1) > 0 then
  return cold
end
if busy and #redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[4]), 'LIMIT', 0, 1) > 0 then
  return cold
end
local known = {}
local function counted(tag)
  if known[tag] == nil then known[tag] = redis.call('SISMEMBER', KEYS[1], tag) == 1 end
  return known[tag]
end
-- Started before the manifest arrived, a decision may guard rewrites but takes no slot: a
-- manifest refused later must not have held one.
if ARGV[9] == 'w' then
  for i = 11, #ARGV do
    if not counted(ARGV[i]) then return {'later'} end
  end
end
local pending, npending = {}, 0
if busy then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  for _, key in ipairs({KEYS[3], KEYS[4]}) do
    for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
      local tag = string.match(member, '^(.*)|[^|]*$')
      if tag and not pending[tag] and not counted(tag) then
        pending[tag] = true
        npending = npending + 1
      end
    end
  end
end
local count = redis.call('SCARD', KEYS[1]) + npending
local new, unconfirmed, confirmed = {}, {}, {}
for i = 11, #ARGV do
  local tag = ARGV[i]
  if not counted(tag) then
    table.insert(unconfirmed, tag)
    if not pending[tag] then table.insert(new, tag) end
  else
    table.insert(confirmed, tag)
  end
end
local out = {'allow', count, #new}
if #new > 0 and count + #new > tonumber(ARGV[6]) then out[1] = 'deny' end
for _, tag in ipairs(new) do table.insert(out, tag) end
if out[1] == 'allow' and ARGV[9] == '1' and #unconfirmed > 0 then
  for _, tag in ipairs(unconfirmed) do
    redis.call('ZADD', KEYS[3], ARGV[7], tag .. '|' .. ARGV[8])
    table.insert(out, tag)
  end
  -- Should this lease's owner die, its expiry is also when the list must be read again.
  redis.call('ZADD', KEYS[5], ARGV[7], ARGV[8])
  redis.call('PEXPIRE', KEYS[3], ARGV[10])
  redis.call('PEXPIRE', KEYS[5], ARGV[10])
end
-- A push that re-writes counted tags settles nothing when it lands, so its owner sends nothing;
-- until its lease would run out, a delete of one of these tags must not uncount it (settle.lua).
if out[1] == 'allow' and ARGV[9] ~= '0' and #confirmed > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
  for _, tag in ipairs(confirmed) do
    redis.call('ZADD', KEYS[6], 'GT', ARGV[7], tag)
  end
  redis.call('PEXPIRE', KEYS[6], ARGV[10])
end
return out
