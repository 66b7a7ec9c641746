-- Operator credits of amount 1, each with an idempotency key of its own, round-robin over
-- the incoming payments listed in REPLAY_PAYMENTS (one URL a line). Not signed: the
-- operator API takes a bearer token (REPLAY_TOKEN), so each body is built here.
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
local replay = require("common")

local payments = replay.read_lines(os.getenv("REPLAY_PAYMENTS"))
local host = os.getenv("REPLAY_HOST")
local key_prefix = os.getenv("REPLAY_KEY_PREFIX")
local head = "POST /credits HTTP/1.1\r\nHost: " .. host .. "\r\nAuthorization: Bearer " .. os.getenv("REPLAY_TOKEN")
  .. "\r\nContent-Type: application/json\r\nContent-Length: "
local n = 0

setup = replay.setup
delay = replay.delay
done = replay.done

local function credit(payment, key)
  local body = '{"incomingPayment":"' .. payment .. '","amount":"1","idempotencyKey":"' .. key .. '"}'
  return head .. #body .. "\r\n\r\n" .. body
end

function request()
  if not replay_started then
    return credit(payments[1], "not-sent") -- wrk's own look at the request before the run
  end
  n = n + 1
  replay.sent()
  -- Threads start at different payments and have keys of their own.
  return credit(payments[(n + replay_thread * 7919) % #payments + 1], key_prefix .. replay_thread .. "-" .. n)
end

function response(status)
  replay.answered(status)
  replay.stop_if_drained(replay.past_window())
end
