-- Replays raw requests bench/replay.py signed just before the run (REPLAY_REQUESTS), in turn.
-- REPLAY_EXPECT: a string every 2xx body must hold (counted as `matched`).
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
local replay = require("common")

local requests = replay.read_requests(os.getenv("REPLAY_REQUESTS"))
local expect = os.getenv("REPLAY_EXPECT")
local next_index = 0

setup = replay.setup
delay = replay.delay
done = replay.done

function request()
  if not replay_started then
    return requests[1] -- wrk's own look at the request before the run: not sent
  end
  next_index = next_index % #requests + 1
  replay.sent()
  return requests[next_index]
end

function response(status, _, body)
  replay.answered(status)
  if expect and status < 300 and body:find(expect, 1, true) then
    replay_matched = replay_matched + 1
  end
  replay.stop_if_drained(replay.past_window())
end
