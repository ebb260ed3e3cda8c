-- The shared state machine of a circuit breaker: one script dispatched on a command name, so
-- that every read-decide-write of a breaker is a single atomic call. The calling protocol (keys,
-- arguments, reply) is documented in redis_backend.py; local.py is its Python copy.
--
-- Cost: the closed state is read with one HMGET (plus TIME unless a clock is given); the rolling
-- window is written only when outcomes are recorded; the state hash is rewritten only when the
-- state changes; EXPIRE is sent only when a key is created, when the state changes, or once the
-- keys' remaining TTL fell below the refresh threshold (see redis_backend.py), never per call.
local STATE, CALLS, FAILURES, PROBES = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local command = ARGV[1]
-- ARGV[3]: the configuration, numbers separated by spaces (one argument is cheaper to send).
local config = {}
for value in string.gmatch(ARGV[3], '%S+') do
  table.insert(config, tonumber(value))
end
local failure_threshold, window_seconds, failure_rate_threshold, minimum_calls, open_seconds,
  max_open_seconds, backoff_multiplier, half_open_max_calls, probe_lease_seconds,
  key_ttl_seconds = unpack(config)
-- ARGV[4..6]: the command's own arguments (empty strings when unused).
-- ARGV[7]: generation of the buffered successes that follow ('' when none), ARGV[8..]: their
-- ages in seconds (how long before this call each of them completed).

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

local saved = redis.call('HMGET', STATE, 'state', 'gen', 'open_until', 'reopens', 'since', 'seq',
                        'last_call', 'last_failure', 'ttl_at')
local exists = saved[2] ~= false
if command == 'flush' and ARGV[4] == 'exit' and not exists then
  -- The process exits and the keys expired or were deleted: nothing to write, nothing to create.
  return {'closed', '0', '0', '', '0', '1'}
end
local state = saved[1] or 'closed'
local gen = tonumber(saved[2]) or 0
local open_until = tonumber(saved[3]) or 0
local reopens = tonumber(saved[4]) or 0
local since = tonumber(saved[5]) or now
local seq = tonumber(saved[6]) or 0
-- Completion times of the newest call and the newest failure in the closed window (0: none).
local last_call = tonumber(saved[7]) or 0
local last_failure = tonumber(saved[8]) or 0
local ttl_at = tonumber(saved[9]) or 0
local horizon = now - window_seconds
-- changed: the state fields must be written (and every TTL set); created: keys other than the
-- state hash that may have just been created and need a TTL.
local changed = false
local created = {}
local transitions = {}

-- Expired outcomes are counted out with ZCOUNT; they are removed from the window sets once per
-- TRIM_EVERY outcomes (and with every transition), which bounds what the sets hold.
local TRIM_EVERY = 64

local function next_id()
  seq = seq + 1
  return tostring(seq)
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
  last_call = 0
  last_failure = 0
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

-- Add closed-state outcomes to the rolling window: the buffered successes (completion times) and
-- at most one outcome of this call (failed: true | false | nil). The rules are checked once, after
-- all of them, and only if the window holds a failure: successes alone never open a window
-- without failures. Scores are the times as numbers (sent exactly, with 17 digits).
local function record_closed(success_times, failed)
  local args = {}
  for _, at in ipairs(success_times) do
    if at > horizon then
      table.insert(args, at)
      table.insert(args, next_id())
    end
  end
  local failure_id
  if failed ~= nil then
    table.insert(args, now)
    failure_id = next_id()
    table.insert(args, failure_id)
  end
  if #args == 0 then
    return
  end
  if last_call <= horizon then table.insert(created, CALLS) end
  if math.floor(seq / TRIM_EVERY) ~= math.floor((seq - #args / 2) / TRIM_EVERY) then
    redis.call('ZREMRANGEBYSCORE', CALLS, '-inf', horizon)
    redis.call('ZREMRANGEBYSCORE', FAILURES, '-inf', horizon)
  end
  -- ZADD in slices: Lua's unpack takes a few thousand values at most.
  for i = 1, #args, 1000 do
    redis.call('ZADD', CALLS, unpack(args, i, math.min(i + 999, #args)))
  end
  last_call = math.max(last_call, args[#args - 1])
  if failed then
    if last_failure <= horizon then table.insert(created, FAILURES) end
    redis.call('ZADD', FAILURES, now, failure_id)
    last_failure = now
  elseif last_failure <= horizon then
    return
  end
  local window = '(' .. string.format('%.17g', horizon)
  local calls = redis.call('ZCOUNT', CALLS, window, '+inf')
  local failures = redis.call('ZCOUNT', FAILURES, window, '+inf')
  if failure_threshold > 0 and failures >= failure_threshold then
    open_for(backoff_seconds(), 'failure_threshold')
  elseif calls >= minimum_calls and failures / calls >= failure_rate_threshold then
    open_for(backoff_seconds(), 'failure_rate')
  end
end

local function acquire()
  if state == 'closed' then
    return {'1', '', '0'}
  end
  if state == 'open' then
    return {'0', '', fmt(open_until - now)}
  end
  local held = redis.call('ZCARD', PROBES)
  if held < half_open_max_calls then
    local probe_id = gen .. ':' .. next_id()
    redis.call('ZADD', PROBES, fmt(now + probe_lease_seconds), probe_id)
    if held == 0 then table.insert(created, PROBES) end
    return {'1', probe_id, '0'}
  end
  local earliest = redis.call('ZRANGE', PROBES, 0, 0, 'WITHSCORES')
  return {'0', '', fmt(tonumber(earliest[2]) - now)}
end

local function record(call_gen, probe_id, outcome, buffered)
  if call_gen ~= gen or outcome == 'ignored' then
    if probe_id ~= '' then
      redis.call('ZREM', PROBES, probe_id)
    end
    if state == 'closed' then record_closed(buffered, nil) end
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
    record_closed(buffered, outcome == 'failure')
  end
end

-- 'flush' only writes buffered successes: it performs no transition, not even a due one (it may
-- run where nobody listens, e.g. when the process exits).
if command ~= 'flush' then advance() end
-- Successes buffered by the caller in the closed state of generation ARGV[7]: stale (dropped)
-- unless the breaker is still in that closed state (and its keys did not expire meanwhile).
local buffered = {}
if ARGV[7] ~= '' and exists and tonumber(ARGV[7]) == gen and state == 'closed' then
  for i = 8, #ARGV do
    table.insert(buffered, now - tonumber(ARGV[i]))
  end
end

local decision = {'0', '', '0'}
if command == 'record' then
  record(tonumber(ARGV[4]), ARGV[5], ARGV[6], buffered)
else
  if #buffered > 0 then record_closed(buffered, nil) end
  if command == 'acquire' then
    decision = acquire()
  elseif command == 'force_open' then
    open_for(tonumber(ARGV[4]), 'forced_open')
  elseif command == 'reset' then
    reopens = 0
    if state == 'closed' then
      redis.call('DEL', CALLS, FAILURES)
      last_call = 0
      last_failure = 0
    else
      move('closed', 'reset')
    end
  elseif command == 'probe_now' then
    -- A person cleared the waiting task: half-open now, so the usual probe admission lets
    -- half_open_max_calls probes through across all workers; the re-open count is kept.
    if state == 'open' then
      move('half_open', 'probe_requested')
    end
  elseif command ~= 'peek' and command ~= 'flush' then
    return redis.error_reply('unknown circuit breaker command: ' .. tostring(command))
  end
end

-- TTLs only collect garbage. Every key gets one when it is created; all of them get a fresh one
-- when the state changes or once the remaining one fell below (key_ttl + longest deadline) / 2,
-- so a key in use always outlives the deadlines it holds and an idle breaker's keys expire. The
-- state hash is written as soon as a breaker is first used, so that it shows in Redis.
local longest = math.max(window_seconds, max_open_seconds, probe_lease_seconds)
if changed or not exists or ttl_at - now < (key_ttl_seconds + longest) / 2 then
  local ttl = math.ceil(key_ttl_seconds + math.max(0, open_until - now))
  ttl_at = now + ttl
  redis.call('HSET', STATE, 'state', state, 'gen', tostring(gen), 'open_until', fmt(open_until),
             'reopens', tostring(reopens), 'since', fmt(since), 'seq', tostring(seq),
             'last_call', string.format('%.17g', last_call), 'last_failure', string.format('%.17g', last_failure),
             'ttl_at', fmt(ttl_at))
  for _, key in ipairs(KEYS) do
    redis.call('EXPIRE', key, ttl)
  end
else
  if seq ~= (tonumber(saved[6]) or 0) or last_call ~= (tonumber(saved[7]) or 0)
      or last_failure ~= (tonumber(saved[8]) or 0) then
    redis.call('HSET', STATE, 'seq', tostring(seq), 'last_call', string.format('%.17g', last_call),
               'last_failure', string.format('%.17g', last_failure))
  end
  for _, key in ipairs(created) do
    redis.call('EXPIRE', key, math.max(1, math.ceil(ttl_at - now)))
  end
end

-- quiet: closed with no failure in the window, so that successes alone cannot open it.
local quiet = '0'
if state == 'closed' and last_failure <= horizon then quiet = '1' end
local reply = {state, tostring(gen), decision[1], decision[2], decision[3], quiet}
for _, transition in ipairs(transitions) do
  for _, field in ipairs(transition) do
    table.insert(reply, field)
  end
end
return reply
