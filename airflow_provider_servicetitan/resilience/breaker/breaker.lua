-- The shared state machine of a circuit breaker: one script dispatched on a command name, so
-- that every read-decide-write of a breaker is a single atomic call. The calling protocol (keys,
-- arguments, reply) is documented in redis_backend.py; local.py is its Python copy.
local STATE, CALLS, FAILURES, PROBES = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local command = ARGV[1]
local failure_threshold = tonumber(ARGV[3])
local window_seconds = tonumber(ARGV[4])
local failure_rate_threshold = tonumber(ARGV[5])
local minimum_calls = tonumber(ARGV[6])
local open_seconds = tonumber(ARGV[7])
local max_open_seconds = tonumber(ARGV[8])
local backoff_multiplier = tonumber(ARGV[9])
local half_open_max_calls = tonumber(ARGV[10])
local probe_lease_seconds = tonumber(ARGV[11])
local key_ttl_seconds = tonumber(ARGV[12])

local now
if ARGV[2] == '' then
  local clock = redis.call('TIME')
  now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
else
  now = tonumber(ARGV[2])
end

local function fmt(x)
  return string.format('%.6f', x)
end

local saved = redis.call('HMGET', STATE, 'state', 'gen', 'open_until', 'reopens', 'since')
local state = saved[1] or 'closed'
local gen = tonumber(saved[2]) or 0
local open_until = tonumber(saved[3]) or 0
local reopens = tonumber(saved[4]) or 0
local since = tonumber(saved[5]) or now
local changed = false
local transitions = {}

local function next_id()
  changed = true
  return tostring(redis.call('HINCRBY', STATE, 'seq', 1))
end

-- A transition starts a new generation: outcomes of calls admitted before it are stale, the
-- window and the probe leases belong to the previous state and are dropped.
local function move(to, reason)
  local until_text = ''
  if to == 'open' then until_text = fmt(open_until) end
  table.insert(transitions, {state, to, reason, fmt(now), until_text})
  state = to
  gen = gen + 1
  since = now
  changed = true
  redis.call('DEL', CALLS, FAILURES, PROBES)
end

local function open_for(seconds, reason)
  open_until = now + seconds
  move('open', reason)
end

local function backoff_seconds()
  return math.min(max_open_seconds, open_seconds * backoff_multiplier ^ reopens)
end

-- Time-driven changes, applied whenever the breaker is touched.
local function advance()
  if state == 'open' and now >= open_until then
    move('half_open', 'open_timeout')
  elseif state == 'half_open' then
    redis.call('ZREMRANGEBYSCORE', PROBES, '-inf', fmt(now))
  end
end

local function acquire()
  if state == 'closed' then
    return {'1', '', '0'}
  end
  if state == 'open' then
    return {'0', '', fmt(open_until - now)}
  end
  if redis.call('ZCARD', PROBES) < half_open_max_calls then
    local probe_id = gen .. ':' .. next_id()
    redis.call('ZADD', PROBES, fmt(now + probe_lease_seconds), probe_id)
    return {'1', probe_id, '0'}
  end
  local earliest = redis.call('ZRANGE', PROBES, 0, 0, 'WITHSCORES')
  return {'0', '', fmt(tonumber(earliest[2]) - now)}
end

local function record(call_gen, probe_id, outcome)
  if call_gen ~= gen or outcome == 'ignored' then
    if probe_id ~= '' then
      redis.call('ZREM', PROBES, probe_id)
    end
    return
  end
  if state == 'half_open' then
    if outcome == 'success' then
      reopens = 0
      move('closed', 'probe_succeeded')
    else
      reopens = reopens + 1
      open_for(backoff_seconds(), 'probe_failed')
    end
  elseif state == 'closed' then
    local id = next_id()
    local horizon = fmt(now - window_seconds)
    redis.call('ZREMRANGEBYSCORE', CALLS, '-inf', horizon)
    redis.call('ZREMRANGEBYSCORE', FAILURES, '-inf', horizon)
    redis.call('ZADD', CALLS, fmt(now), id)
    if outcome == 'failure' then
      redis.call('ZADD', FAILURES, fmt(now), id)
    end
    local calls = redis.call('ZCARD', CALLS)
    local failures = redis.call('ZCARD', FAILURES)
    if failures >= failure_threshold then
      open_for(backoff_seconds(), 'failure_threshold')
    elseif calls >= minimum_calls and failures / calls >= failure_rate_threshold then
      open_for(backoff_seconds(), 'failure_rate')
    end
  end
end

advance()
local decision = {'0', '', '0'}
if command == 'acquire' then
  decision = acquire()
elseif command == 'record' then
  record(tonumber(ARGV[13]), ARGV[14], ARGV[15])
elseif command == 'force_open' then
  open_for(tonumber(ARGV[13]), 'forced_open')
elseif command == 'reset' then
  reopens = 0
  if state == 'closed' then
    redis.call('DEL', CALLS, FAILURES)
  else
    move('closed', 'reset')
  end
elseif command == 'probe_now' then
  -- A person cleared the waiting task: half-open now, so the usual probe admission lets
  -- half_open_max_calls probes through across all workers; the re-open count is kept.
  if state == 'open' then
    move('half_open', 'probe_requested')
  end
elseif command ~= 'peek' then
  return redis.error_reply('unknown circuit breaker command: ' .. tostring(command))
end

if changed then
  redis.call('HSET', STATE, 'state', state, 'gen', tostring(gen), 'open_until', fmt(open_until),
             'reopens', tostring(reopens), 'since', fmt(since))
  local ttl = math.ceil(key_ttl_seconds + math.max(0, open_until - now))
  for _, key in ipairs(KEYS) do
    redis.call('EXPIRE', key, ttl)
  end
end

local reply = {state, tostring(gen), decision[1], decision[2], decision[3]}
for _, transition in ipairs(transitions) do
  for _, field in ipairs(transition) do
    table.insert(reply, field)
  end
end
return reply
