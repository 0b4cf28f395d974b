-- App for the timer tests (spec/clients/test_python_app_layer.py).
-- Written against /tmp/api3.md only. State is read over HTTP: GET /state.
local moonwire = require "moonwire"

local app = moonwire.app {}

local s = {
  ticks = 0,             -- every(0.05)
  after_fired = 0,       -- after(0.2)
  cancelled_fired = 0,   -- after(0.1), cancelled while loading: must stay 0
  cancel_result = "?",   -- what that cancel() returned
  boom_runs = 0,         -- every(0.05) that raises each time
  sleeper_start = -1,    -- after(0.05) that sleeps 0.3 s
  sleeper_end = -1,
  ticks_during_sleep = -1,
  self_cancel_runs = 0,  -- every(0.05) that cancels itself on its 3rd run
  runtime_fired = 0,     -- after() armed from a handler, cancelled from another
}

app:every(0.05, function() s.ticks = s.ticks + 1 end)

app:after(0.2, function() s.after_fired = s.after_fired + 1 end)

local doomed = app:after(0.1, function() s.cancelled_fired = s.cancelled_fired + 1 end)
s.cancel_result = tostring(doomed:cancel())

app:every(0.05, function()
  s.boom_runs = s.boom_runs + 1
  error("timer went boom " .. s.boom_runs)
end)

app:after(0.05, function()
  s.sleeper_start = moonwire.now()
  local t0 = s.ticks
  moonwire.sleep(0.3)
  s.ticks_during_sleep = s.ticks - t0
  s.sleeper_end = moonwire.now()
end)

local selfish
selfish = app:every(0.05, function()
  s.self_cancel_runs = s.self_cancel_runs + 1
  if s.self_cancel_runs == 3 then s.self_cancel_result = tostring(selfish:cancel()) end
end)

local armed
app:get("/arm", function(req, res)
  armed = app:after(tonumber(req.query.s or "0.3"), function() s.runtime_fired = s.runtime_fired + 1 end)
  res:send("armed")
end)

app:get("/cancel", function(req, res)
  res:send(tostring(armed:cancel()) .. " " .. tostring(armed:cancel()))
end)

app:get("/state", function(req, res)
  local keys = {}
  for k in pairs(s) do keys[#keys + 1] = k end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do out[#out + 1] = k .. "=" .. tostring(s[k]) end
  res:send(table.concat(out, "\n"))
end)

return app
