-- The full flow, per iteration: incoming payment (replayed from REPLAY_REQUESTS, signed
-- before the run) -> quote for it -> outgoing payment from the quote -> GETs of the incoming
-- payment until it is completed (settled). The quote, the payment and the GETs name ids the
-- server just returned, so they are signed here, when sent (sign.lua).
--
-- wrk's request() and response() do not say which connection they serve, so a flow is not
-- tied to one: each answer says what it is (the id's path), and puts the flow's next
-- request in a queue that the next free connection takes before it starts a new flow.
-- GETs wait REPLAY_POLL_MS between them (wrk's delay()). Past the window no flow starts,
-- the flows under way finish, then the thread stops.
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
local replay = require("common")
local sign = require("sign")

local creates = replay.read_requests(os.getenv("REPLAY_REQUESTS"))
local sender = os.getenv("REPLAY_SENDER")
local public = os.getenv("REPLAY_PUBLIC")
local quote_token = os.getenv("REPLAY_QUOTE_TOKEN")
local outgoing_token = os.getenv("REPLAY_OUTGOING_TOKEN")
local incoming_token = os.getenv("REPLAY_INCOMING_TOKEN")
local poll_s = tonumber(os.getenv("REPLAY_POLL_MS") or "10") / 1000
local max_polls = tonumber(os.getenv("REPLAY_MAX_POLLS") or "500")
local signed = nil -- made in init(): the key is only needed by the threads

replay_unsettled = 0 -- flows whose GETs gave up (REPLAY_MAX_POLLS) before it completed

local function queue()
  return { first = 1, last = 0 }
end
local function push(q, item)
  q.last = q.last + 1
  q[q.last] = item
end
local function pop(q)
  local item = q[q.first]
  q[q.first] = nil
  q.first = q.first + 1
  return item
end
local function size(q)
  return q.last - q.first + 1
end

local followups = queue() -- {kind, url or id}: sent as soon as a connection is free
local polls = queue() -- {due, url}: in due order, as each is due `poll_s` after its push
local created_at, paid_at, polled = {}, {}, {}
local claimed = 0 -- past the window: queued requests a connection has been promised
local next_create = 0

setup = replay.setup
done = replay.done

function init()
  signed = sign.signer(os.getenv("REPLAY_KEY"), os.getenv("REPLAY_KEYID"))
end

local function drained()
  return size(followups) == 0 and size(polls) == 0 and claimed == 0
end

function delay()
  if replay.open() then
    return 0
  end
  if size(followups) + size(polls) > claimed then
    claimed = claimed + 1
    if size(followups) > 0 then
      return 0
    end
    return math.max(0, math.ceil((polls[polls.first].due - replay.now()) * 1000))
  end
  replay.stop_if_drained(drained())
  return replay.WAIT_MS
end

function request()
  if not replay_started then
    return creates[1] -- wrk's own look at the request before the run: not sent
  end
  local promised = claimed > 0
  if promised then
    claimed = claimed - 1
  end
  if size(followups) > 0 then
    local item = pop(followups)
    replay.sent(item.kind)
    if item.kind == "quote" then
      return signed("POST", public .. "/quotes", quote_token,
        '{"walletAddress":"' .. sender .. '","receiver":"' .. item.id .. '","method":"ilp"}')
    end
    return signed("POST", public .. "/outgoing-payments", outgoing_token,
      '{"walletAddress":"' .. sender .. '","quoteId":"' .. item.id .. '"}')
  end
  if size(polls) > 0 and (promised or polls[polls.first].due <= replay.now()) then
    local item = pop(polls)
    replay.sent("get")
    return signed("GET", item.url, incoming_token, nil)
  end
  next_create = next_create % #creates + 1
  replay.sent("incoming")
  return creates[next_create]
end

function response(status, _, body)
  replay.answered(status)
  local now = replay.now()
  if status == 201 then
    local id, kind = body:match('^{"id":"([^"]*/([a-z-]+)/[^"/]*)"')
    if kind == "incoming-payments" then
      replay.ok("incoming")
      created_at[id] = now
      push(followups, { kind = "quote", id = id })
    elseif kind == "quotes" then
      replay.ok("quote")
      push(followups, { kind = "outgoing", id = id })
    elseif kind == "outgoing-payments" then
      replay.ok("outgoing")
      local receiver = body:match('"receiver":"([^"]+)"')
      paid_at[receiver] = now
      polled[receiver] = 0
      push(polls, { due = now, url = receiver })
    end
  elseif status == 200 then
    replay.ok("get")
    local id = body:match('^{"id":"([^"]+)"')
    if body:find('"completed":true', 1, true) then
      -- settle_ms: the outgoing payment's 201 -> a GET shows the incoming payment completed;
      -- flow_ms: the incoming payment's 201 -> that GET.
      replay.record("settle_ms", (now - paid_at[id]) * 1000)
      replay.record("flow_ms", (now - created_at[id]) * 1000)
      created_at[id], paid_at[id], polled[id] = nil, nil, nil
    elseif polled[id] + 1 < max_polls then
      polled[id] = polled[id] + 1
      push(polls, { due = now + poll_s, url = id })
    else
      replay_unsettled = replay_unsettled + 1
      created_at[id], paid_at[id], polled[id] = nil, nil, nil
    end
  end
  replay.stop_if_drained(replay.past_window() and drained())
end
