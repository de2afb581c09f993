-- Compare-and-set upsert of one versioned item (klineflow, DESIGN.md "Redis").
--
-- KEYS[1]  hash "{kind}:{exchange}:{symbol}:{timeframe}": the newest item of the series
-- KEYS[2]  (optional) sorted set of recent items: score open_time, member JSON that starts
--          with {"version":N, ...}
-- ARGV[1]  open_time (decimal integer, epoch ms)      ARGV[2]  version (decimal integer)
-- ARGV[3]  cap: members the sorted set keeps (the highest scores)
-- ARGV[4]  ttl in seconds, 0 = keys never expire       ARGV[5]  sorted-set member ('' = none)
-- ARGV[6]  pub/sub channel announcing applied updates ('' = none)
-- ARGV[7]  the message published there
-- ARGV[8..] field, value, field, value, ... of the hash
--
-- The hash is replaced only when (open_time, version) is newer than or equal to the stored
-- pair: open_time greater, or equal with version >= (equal = idempotent rewrite). In the
-- sorted set the member of this open_time is replaced only when the version is >= every
-- stored member's at that score. Integers are compared as decimal strings, so versions of
-- any size compare exactly. Returns which keys changed: 1 = the hash, 2 = the sorted set,
-- 3 = both, 0 = neither (an equal (open_time, version) rewrites the hash, no change).
-- The message is published only when the hash changed, so a subscriber sees each series'
-- updates in (open_time, version) order and never a stale one. A script may publish: the
-- message goes out when the script ends, atomically with the write.

-- -1, 0, 1 as a <, =, > b for canonical non-negative decimal strings (no leading zeros).
local function compare_int(a, b)
  if #a ~= #b then
    return (#a < #b) and -1 or 1
  end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return (x < y) and -1 or 1
    end
  end
  return 0
end

local open_time, version = ARGV[1], ARGV[2]
local cap, ttl, member = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local channel, message = ARGV[6], ARGV[7]
local changed = 0

local stored = redis.call('HMGET', KEYS[1], 'open_time', 'version')
local newer, same = true, false
if stored[1] and stored[2] then
  local by_time = compare_int(open_time, stored[1])
  local by_version = compare_int(version, stored[2])
  newer = by_time > 0 or (by_time == 0 and by_version >= 0)
  same = by_time == 0 and by_version == 0
end
if newer then
  local fields = {}
  for i = 8, #ARGV do
    fields[#fields + 1] = ARGV[i]
  end
  fields[#fields + 1] = 'open_time'
  fields[#fields + 1] = open_time
  fields[#fields + 1] = 'version'
  fields[#fields + 1] = version
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(fields))
  if ttl > 0 then
    redis.call('EXPIRE', KEYS[1], ttl)
  end
  if not same then
    changed = changed + 1
    if channel ~= '' then
      redis.call('PUBLISH', channel, message)
    end
  end
end

if #KEYS > 1 and member ~= '' then
  local same_time = redis.call('ZRANGEBYSCORE', KEYS[2], open_time, open_time)
  local replace = true
  for _, existing in ipairs(same_time) do
    local existing_version = string.match(existing, '^{"version":(%d+)')
    if existing_version and compare_int(version, existing_version) < 0 then
      replace = false
      break
    end
  end
  if replace then
    for _, existing in ipairs(same_time) do
      if existing ~= member then
        redis.call('ZREM', KEYS[2], existing)
      end
    end
    local added = redis.call('ZADD', KEYS[2], open_time, member)
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(cap + 1))
    if ttl > 0 then
      redis.call('EXPIRE', KEYS[2], ttl)
    end
    -- Changed when the member is new (or replaced another) and survived the cap.
    if (added == 1 or #same_time > 1) and redis.call('ZSCORE', KEYS[2], member) then
      changed = changed + 2
    end
  end
end
return changed
