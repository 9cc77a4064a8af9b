//! The Lua scripts. Each runs atomically inside Redis, so every append, read and session
//! update sees one consistent state of a stream's keys, without locks or `WATCH` retries.
//!
//! Numbers cross the Lua boundary as doubles: positions and times are exact up to 2^53, and
//! are always turned into text with `string.format('%d')` (Lua's own `tostring` would write
//! `1e+15`).

use std::sync::LazyLock;

use redis::Script;

/// Helpers shared by the stream scripts.
const COMMON: &str = r#"
local function pos(entry_id)
  return tonumber(string.match(entry_id, '^(%d+)'))
end

local function id(n)
  return string.format('%d', n)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- When an entry was appended: its first field is `t`.
local function born(entry)
  return tonumber(entry[2][2])
end

-- The position of the oldest entry of `log` not older than MAX_AGE at `now` (ms), or nil when
-- every entry is older (or there is none). Positions in a log are contiguous and appended in
-- time order, so the fresh entries are a suffix: check the ends, probe the next few (the
-- common case: one or two entries have just expired), then bisect. At most about
-- 8 + log2(length) entries are read.
local function first_fresh(log, now)
  local cutoff = now - MAX_AGE
  local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1]
  if not first then return nil, false end
  if born(first) >= cutoff then return pos(first[1]), false end
  local last = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)[1]
  if born(last) < cutoff then return nil, true end
  local lo, hi = pos(first[1]) + 1, pos(last[1])
  for _, e in ipairs(redis.call('XRANGE', log, id(lo), '+', 'COUNT', 4)) do
    if born(e) >= cutoff then return pos(e[1]), true end
    lo = pos(e[1]) + 1
  end
  -- The bound on iterations only guards against a log someone else edited.
  for _ = 1, 64 do
    if lo >= hi then break end
    local mid = math.floor((lo + hi) / 2)
    local e = redis.call('XRANGE', log, id(mid), '+', 'COUNT', 1)[1]
    local p = pos(e[1])
    if born(e) >= cutoff then hi = p else lo = p + 1 end
  end
  return hi, true
end
"#;

/// Appends a batch of events to one stream.
///
/// KEYS: meta, log, ids, sizes.
/// ARGV: epoch candidate, max_len, max_age (ms), meta TTL (ms), channel, stream name,
/// inline max (bytes per event), inline budget (bytes per message), max_bytes, then per event
/// its name, publisher id (empty for none) and data.
///
/// Returns `{epoch, p1, p2, …}`: a position per event, negative for a duplicate.
const APPEND: &str = r#"
local meta, log, ids, sizes = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local max_len = tonumber(ARGV[2])
local meta_ttl = tonumber(ARGV[4])
local channel, stream = ARGV[5], ARGV[6]
local inline_max, budget = tonumber(ARGV[7]), tonumber(ARGV[8])
local max_bytes = tonumber(ARGV[9])

local now = now_ms()
local state = redis.call('HMGET', meta, 'epoch', 'head', 'bytes')
local epoch, head = state[1], tonumber(state[2]) or 0
-- `bytes` is the sum of `sizes`: the data lengths of the retained entries, oldest first.
local bytes = tonumber(state[3]) or 0
local new = not epoch
if new then epoch, head, bytes = ARGV[1], 0, 0 end
-- The script's first write, and one Redis refuses when over `maxmemory` (`noeviction`):
-- Redis checks memory only before a script's first write, so with a `DEL` or `XTRIM` first
-- an append to a full Redis would go through. This way it fails with OOM, writing nothing.
redis.call('HSET', meta, 'epoch', epoch, 'head', id(head))
if new then
  -- A new incarnation of the stream (first append, or the meta was lost: Redis restarted
  -- without persistence, flushed, or the meta's idle TTL ran out). Whatever an earlier
  -- incarnation left must not leak into it.
  redis.call('DEL', log, ids, sizes)
end
-- The oldest retained position: entries are contiguous up to the head.
local oldest = head + 1
-- Age first, so that the publisher id of an expired event is not taken for a retained one.
local fresh, expired = first_fresh(log, now)
if not fresh then
  -- Nothing retained (all expired, or the log's TTL ran out while the meta lived on).
  redis.call('DEL', log, ids, sizes)
  bytes = 0
else
  local first = pos(redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1][1])
  if redis.call('LLEN', sizes) ~= head - first + 1 then
    -- A log written before sizes were kept: measured once.
    redis.call('DEL', sizes)
    bytes = 0
    for _, e in ipairs(redis.call('XRANGE', log, '-', '+')) do
      local n = #e[2][4]
      redis.call('RPUSH', sizes, n)
      bytes = bytes + n
    end
  end
  oldest = first
  if expired then
    redis.call('XTRIM', log, 'MINID', id(fresh))
    redis.call('ZREMRANGEBYSCORE', ids, '-inf', '(' .. id(fresh))
    for _, n in ipairs(redis.call('LPOP', sizes, fresh - first)) do
      bytes = bytes - tonumber(n)
    end
    oldest = fresh
  end
end

local time = id(now)
local first_head = head
local out = {epoch}
local notes = {}
local i = 10
while i + 2 <= #ARGV do
  local name, key, data = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  local dup = nil
  if key ~= '' then
    local at = tonumber(redis.call('ZSCORE', ids, key))
    -- Retained means at or after the oldest retained position (trimmed as the batch goes).
    if at and at >= oldest then dup = at end
  end
  if dup then
    out[#out + 1] = -dup
  else
    head = head + 1
    local args = {log, id(head) .. '-0', 't', time, 'd', data}
    if name ~= '' then
      args[#args + 1] = 'e'
      args[#args + 1] = name
    end
    if key ~= '' then
      args[#args + 1] = 'i'
      args[#args + 1] = key
      redis.call('ZADD', ids, id(head), key)
    end
    redis.call('XADD', unpack(args))
    redis.call('RPUSH', sizes, #data)
    bytes = bytes + #data
    -- Retention by count and by bytes; the newest event stays whatever its size. The log
    -- itself is trimmed once, after the batch.
    while head - oldest + 1 > max_len or (bytes > max_bytes and oldest < head) do
      bytes = bytes - tonumber(redis.call('LPOP', sizes))
      oldest = oldest + 1
    end
    out[#out + 1] = head
    local size = #name + #key + #data
    if size <= inline_max and size <= budget then
      budget = budget - size
      notes[#notes + 1] = id(head) .. ' ' .. (name == '' and -1 or #name) .. ' '
        .. (key == '' and -1 or #key) .. ' ' .. #data .. '\n' .. name .. key .. data
    else
      notes[#notes + 1] = id(head) .. ' -1 -1 -1\n'
    end
  end
end

redis.call('HSET', meta, 'bytes', id(bytes))
if head > first_head then
  redis.call('HSET', meta, 'head', id(head))
  redis.call('XTRIM', log, 'MINID', id(oldest))
  redis.call('ZREMRANGEBYSCORE', ids, '-inf', '(' .. id(oldest))
  redis.call('PUBLISH', channel, 'sse1 ' .. stream .. ' ' .. epoch .. ' ' .. time .. ' '
    .. #notes .. '\n' .. table.concat(notes))
end
-- The log, ids and sizes hold nothing visible once the newest event is max_age old; the
-- meta (epoch, head and bytes, a few dozen bytes) lives longer so that idle streams keep
-- their epoch.
redis.call('PEXPIRE', log, id(MAX_AGE))
redis.call('PEXPIRE', ids, id(MAX_AGE))
redis.call('PEXPIRE', sizes, id(MAX_AGE))
redis.call('PEXPIRE', meta, id(meta_ttl))
return out
"#;

/// Reads one page of a stream, with its epoch, head and oldest retained position, from one
/// snapshot.
///
/// KEYS: meta, log. ARGV: after, limit, max_len, max_age (ms).
///
/// Returns `{}` when the stream has no meta, else `{epoch, head, oldest, entries}`.
const READ: &str = r#"
local state = redis.call('HMGET', KEYS[1], 'epoch', 'head')
if not state[1] then return {} end
local head = tonumber(state[2]) or 0
local oldest = first_fresh(KEYS[2], now_ms()) or (head + 1)
-- Retention by count is enforced at append; this only matters if max_len was lowered.
local floor = head - tonumber(ARGV[3]) + 1
if oldest < floor then oldest = floor end
local from = math.max(tonumber(ARGV[1]) + 1, oldest)
local limit = tonumber(ARGV[2])
local entries = {}
if limit > 0 and from <= head then
  entries = redis.call('XRANGE', KEYS[2], id(from), id(head), 'COUNT', id(limit))
end
return {state[1], head, oldest, entries}
"#;

/// Stores a new session, replacing any record under the same key.
///
/// KEYS: session. ARGV: when Redis may drop it (ms since the Unix epoch), then field/value
/// pairs.
const SESSION_CREATE: &str = r#"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
return 1
"#;

/// Moves the expiry of a live session, and records its cursor when one is given.
///
/// KEYS: session. ARGV: now (ms, the caller's clock), the new expiry (ms), when Redis may
/// drop it (ms), and optionally the cursor.
///
/// Returns 1, or 0 when the session does not exist or has expired.
const SESSION_TOUCH: &str = r#"
local expires = tonumber(redis.call('HGET', KEYS[1], 'x'))
if not expires or expires <= tonumber(ARGV[1]) then return 0 end
if ARGV[4] then
  redis.call('HSET', KEYS[1], 'x', ARGV[2], 'k', ARGV[4])
else
  redis.call('HSET', KEYS[1], 'x', ARGV[2])
end
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1
"#;

/// `max_age` is a script argument like any other, bound once at the top of each stream
/// script so that `first_fresh` can see it.
fn stream_script(max_age_arg: usize, body: &str) -> Script {
    Script::new(&format!(
        "local MAX_AGE = tonumber(ARGV[{max_age_arg}])\n{COMMON}\n{body}"
    ))
}

pub(crate) static APPEND_SCRIPT: LazyLock<Script> = LazyLock::new(|| stream_script(3, APPEND));
pub(crate) static READ_SCRIPT: LazyLock<Script> = LazyLock::new(|| stream_script(4, READ));
pub(crate) static SESSION_CREATE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(SESSION_CREATE));
pub(crate) static SESSION_TOUCH_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(SESSION_TOUCH));
