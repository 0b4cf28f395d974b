-- Test app for the timer part of spec/app_pubsub_spec.lua. The state is read over
-- HTTP: GET /state answers a Lua table literal.
--   GET /arm?s=S      arms app:after(S) (counts runtime_fired) -> "armed"
--   GET /cancel       -> what cancel() of that timer returned
--   GET /arm_every    arms app:every(0.05) (counts every_fired) -> "armed"
--   GET /cancel_every -> what cancel() of that timer returned

local moonwire = require "moonwire"

local app = moonwire.app {}

local s = {
  ticks = 0,              -- every(0.05)
  after_fired = 0,        -- after(0.2)
  cancelled_fired = 0,    -- after(0.1), cancelled while loading: must stay 0
  boom_runs = 0,          -- every(0.05) that raises each time
  sleepy_runs = 0,        -- every(0.05) whose fn sleeps 0.2 s
  sleepy_running = 0,
  sleepy_max_running = 0,
  self_cancel_runs = 0,   -- every(0.05) that cancels itself on its 3rd run
  runtime_fired = 0,
  every_fired = 0,
}

app:every(0.05, function() s.ticks = s.ticks + 1 end)

app:after(0.2, function() s.after_fired = s.after_fired + 1 end)

local doomed = app:after(0.1, function() s.cancelled_fired = s.cancelled_fired + 1 end)
s.cancel_result = tostring(doomed:cancel())
s.cancel_again = tostring(doomed:cancel())

app:every(0.05, function()
  s.boom_runs = s.boom_runs + 1
  error("timer boom " .. s.boom_runs) -- TIMER_ERROR_LINE
end)

app:every(0.05, function()
  s.sleepy_runs = s.sleepy_runs + 1
  s.sleepy_running = s.sleepy_running + 1
  if s.sleepy_running > s.sleepy_max_running then s.sleepy_max_running = s.sleepy_running end
  moonwire.sleep(0.2)
  s.sleepy_running = s.sleepy_running - 1
end)

local selfish
selfish = app:every(0.05, function()
  s.self_cancel_runs = s.self_cancel_runs + 1
  if s.self_cancel_runs == 3 then s.self_cancel_result = tostring(selfish:cancel()) end
end)

local function dump(v)
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local x = v[k]
    out[#out + 1] = k .. "=" .. (type(x) == "string" and string.format("%q", x) or tostring(x))
  end
  return "{" .. table.concat(out, ",") .. "}"
end

app:get("/state", function(_, res) res:send(dump(s)) end)

local armed, armed_every
app:get("/arm", function(req, res)
  armed = app:after(tonumber(req.query.s or "0.3"), function() s.runtime_fired = s.runtime_fired + 1 end)
  res:send("armed")
end)
app:get("/cancel", function(_, res) res:send(tostring(armed:cancel())) end)
app:get("/arm_every", function(_, res)
  armed_every = app:every(0.05, function() s.every_fired = s.every_fired + 1 end)
  res:send("armed")
end)
app:get("/cancel_every", function(_, res) res:send(tostring(armed_every:cancel())) end)

return app
