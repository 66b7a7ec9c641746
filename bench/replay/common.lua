-- What every replay script shares: counting, the time window and the drain, and the report.
--
-- wrk calls delay() before every request() of a connection (the first one included), so
-- delay() is where a connection is told to stop sending: past the window (REPLAY_SECONDS)
-- or past REPLAY_MAX requests it waits an hour, and the thread stops once every request it
-- sent has its answer. The server then holds exactly what the answers say,
-- which is what bench/replay.py checks afterwards.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } replay_timespec;
int clock_gettime(int clock, replay_timespec *out);
]]

local M = {}
local CLOCK_MONOTONIC = 1
local spec = ffi.new("replay_timespec")

function M.now()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, spec)
  return tonumber(spec.tv_sec) + tonumber(spec.tv_nsec) * 1e-9
end

local window = tonumber(os.getenv("REPLAY_SECONDS") or "0")
local max_requests = tonumber(os.getenv("REPLAY_MAX") or "0") -- per thread; 0: no bound
local HOUR_MS = 3600 * 1000

-- Per-thread figures, each a global number: done() reads them with thread:get(), which
-- cannot copy tables (wrk 4.1's script_copy_value pops one value too many and crashes).
replay_sent, replay_answered, replay_first, replay_last, replay_matched = 0, 0, 0, 0, 0
replay_last_ok = 0 -- when the last 2xx came: a capped payment's credits stop being accepted there
replay_started = false -- false until the first delay(): wrk calls request() once before, to inspect it

M.KINDS = { "incoming", "quote", "outgoing", "get" } -- flow.lua's requests, counted apart
M.STATUSES = { first = 100, last = 599 }

local deadline = nil
local approved = 0

-- May this connection send one more new request? Counts it when it may.
function M.open()
  local now = M.now()
  if not deadline then
    replay_started = true
    replay_first = now
    deadline = now + window
  end
  if (window > 0 and now >= deadline) or (max_requests > 0 and approved >= max_requests) then
    return false
  end
  approved = approved + 1
  return true
end

function M.past_window()
  return deadline ~= nil and ((window > 0 and M.now() >= deadline) or (max_requests > 0 and approved >= max_requests))
end

M.WAIT_MS = HOUR_MS

local counted = {}
local function bump(name)
  _G[name] = (_G[name] or 0) + 1
end

function M.sent(kind)
  replay_sent = replay_sent + 1
  if kind then bump("replay_k_" .. kind .. "_sent") end
end

function M.ok(kind)
  bump("replay_k_" .. kind .. "_ok")
end

function M.answered(status)
  replay_answered = replay_answered + 1
  replay_last = M.now()
  if status >= 200 and status < 300 then replay_last_ok = replay_last end
  local name = counted[status]
  if not name then
    name = "replay_s_" .. status
    counted[status] = name
  end
  bump(name)
end

-- Long lists (flow.lua's latencies) go to a file per thread and list: REPLAY_OUT.<thread>.<name>.
local lists = {}
function M.record(name, value)
  local file = lists[name]
  if not file then
    file = assert(io.open(os.getenv("REPLAY_OUT") .. "." .. replay_thread .. "." .. name, "w"))
    lists[name] = file
  end
  file:write(string.format("%.3f\n", value))
end

-- Stop this thread once it sends no more and every request it sent is answered. wrk itself
-- sleeps out its -d; REPLAY_OUT.<thread>.stopped tells bench/replay.py to end it (SIGINT).
function M.stop_if_drained(idle)
  if idle and replay_answered >= replay_sent then
    for _, file in pairs(lists) do file:close() end
    lists = {}
    assert(io.open(os.getenv("REPLAY_OUT") .. "." .. replay_thread .. ".stopped", "w")):close()
    wrk.thread:stop()
  end
end

-- Simple scenarios: every request is new work until the window closes.
function M.delay()
  if M.open() then
    return 0
  end
  M.stop_if_drained(true)
  return HOUR_MS
end

function M.read_requests(path)
  -- "<length>\n<bytes>" repeated: raw HTTP requests as bench/replay.py signed them.
  local file = assert(io.open(path, "rb"))
  local data = file:read("*a")
  file:close()
  local out, pos = {}, 1
  while pos <= #data do
    local newline = data:find("\n", pos, true)
    local length = tonumber(data:sub(pos, newline - 1))
    out[#out + 1] = data:sub(newline + 1, newline + length)
    pos = newline + length + 1
  end
  assert(#out > 0, "no requests in " .. path)
  return out
end

function M.read_lines(path)
  local out = {}
  for line in io.lines(path) do
    if line ~= "" then out[#out + 1] = line end
  end
  assert(#out > 0, "no lines in " .. path)
  return out
end

-- setup() and done() run in wrk's main Lua state, which keeps the threads to read back.
local threads = {}

function M.setup(thread)
  thread:set("replay_thread", #threads)
  threads[#threads + 1] = thread
end

local function encode(value)
  local kind = type(value)
  if kind == "table" then
    local parts = {}
    for k, v in pairs(value) do parts[#parts + 1] = encode(tostring(k)) .. ":" .. encode(v) end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif kind == "string" then
    return '"' .. value:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
  elseif kind == "number" then
    return string.format("%.17g", value)
  end
  return tostring(value)
end

function M.done(summary, latency, _)
  local out = {
    duration_us = summary.duration,
    requests = summary.requests,
    errors = summary.errors,
    latency_us = { p50 = latency:percentile(50), p99 = latency:percentile(99), max = latency.max, mean = latency.mean },
    threads = {},
  }
  for index, thread in ipairs(threads) do
    local mine = { statuses = {}, kinds = {} }
    for _, name in ipairs({ "sent", "answered", "first", "last", "last_ok", "matched", "unsettled" }) do
      mine[name] = thread:get("replay_" .. name) or 0
    end
    for status = M.STATUSES.first, M.STATUSES.last do
      mine.statuses[tostring(status)] = thread:get("replay_s_" .. status)
    end
    for _, kind in ipairs(M.KINDS) do
      mine.kinds[kind] = { sent = thread:get("replay_k_" .. kind .. "_sent") or 0, ok = thread:get("replay_k_" .. kind .. "_ok") or 0 }
    end
    out.threads[tostring(index - 1)] = mine
  end
  local file = assert(io.open(os.getenv("REPLAY_OUT"), "w"))
  file:write(encode(out))
  file:close()
end

return M
