-- Compare-and-set upsert of the versioned items of one series (klineflow, DESIGN.md "Redis").
--
-- KEYS[1]  hash "{kind}:{series}": the newest item of the series
-- KEYS[2]  (optional) sorted set of recent items: score open_time, member JSON that starts
--          with {"version":N, ...}
-- ARGV[1]  cap: members the sorted set keeps (the highest scores)
-- ARGV[2]  ttl in seconds, 0 = keys never expire
-- ARGV[3]  pub/sub channel announcing applied updates ('' = none)
-- ARGV[4..] one group per item, applied in order:
--          open_time (decimal integer, epoch ms), version (decimal integer),
--          sorted-set member ('' = none), the message to publish, n (number of hash fields),
--          then field, value, ... (n pairs). The items come in (open_time, version) order,
--          so when any of them is applied the last one is too and only its fields reach the
--          hash: the caller may send n = 0 for the others.
--
-- Each item, in turn, is applied exactly as if it came alone: the hash takes it only when
-- (open_time, version) is newer than or equal to what it holds (open_time greater, or equal
-- with version >=; equal = idempotent rewrite), and in the sorted set the member of its
-- open_time is replaced only when its version is >= every stored member's at that score.
-- Integers are compared as decimal strings, so versions of any size compare exactly. A
-- message is published for every item that changed the hash, in order, so a subscriber sees
-- a series' updates in (open_time, version) order and never a stale one. The hash is written
-- once (with the newest applied item) and the sorted set trimmed to the cap once, at the end:
-- the same final state as applying the items one call each, with one round trip per series.
-- Returns which keys changed: 1 = the hash, 2 = the sorted set, 3 = both, 0 = neither.

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

local cap, ttl, channel = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local has_set = #KEYS > 1
local stored = redis.call('HMGET', KEYS[1], 'open_time', 'version')
local held_time, held_version = stored[1], stored[2]
local hash_changed, set_touched = false, false
local newest = nil -- {index of the first field, field count, open_time, version}
local added_members = {}

local i = 4
while i <= #ARGV do
  local open_time, version, member, message = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local field_count = tonumber(ARGV[i + 4])
  local first_field = i + 5

  local newer, same = true, false
  if held_time and held_version then
    local by_time = compare_int(open_time, held_time)
    local by_version = compare_int(version, held_version)
    newer = by_time > 0 or (by_time == 0 and by_version >= 0)
    same = by_time == 0 and by_version == 0
  end
  if newer then
    newest = {first_field, field_count, open_time, version}
    held_time, held_version = open_time, version
    if not same then
      hash_changed = true
      if channel ~= '' then
        redis.call('PUBLISH', channel, message)
      end
    end
  end

  if has_set and member ~= '' then
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
      set_touched = true
      -- Changed when the member is new (or replaced another) and survives the cap.
      if added == 1 or #same_time > 1 then
        added_members[#added_members + 1] = member
      end
    end
  end
  i = first_field + 2 * field_count
end

if newest then
  local fields = {}
  for f = newest[1], newest[1] + 2 * newest[2] - 1 do
    fields[#fields + 1] = ARGV[f]
  end
  fields[#fields + 1] = 'open_time'
  fields[#fields + 1] = newest[3]
  fields[#fields + 1] = 'version'
  fields[#fields + 1] = newest[4]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(fields))
  if ttl > 0 then
    redis.call('EXPIRE', KEYS[1], ttl)
  end
end

local set_changed = false
if set_touched then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(cap + 1))
  if ttl > 0 then
    redis.call('EXPIRE', KEYS[2], ttl)
  end
  for _, member in ipairs(added_members) do
    if redis.call('ZSCORE', KEYS[2], member) then
      set_changed = true
      break
    end
  end
end
return (hash_changed and 1 or 0) + (set_changed and 2 or 0)
