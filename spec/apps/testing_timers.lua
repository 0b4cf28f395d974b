-- Test app for spec/testing_spec.lua (moonwire.testing): timers, sleep and the
-- clock. State "testing_timers" holds what ran and when (moonwire.now()).
--
--   every(1)     counts ticks, publishes "tick N" to "clock"
--   after(2.5)   runs once, records the time
--   after(5)     cancelled while loading: must never run
--   every(3)     raises on every run (the timer goes on)
--   every(1)     sleeps 2.5 s per run (ticks that come while it sleeps skip)
--   /clock       subscribes to "clock"; a message "N" sleeps N s and answers the time
--   /arm         a message "N" arms app:after(N) that sends "fired" to this connection;
--                "cancel" cancels it and answers what cancel() returned

local moonwire = require "moonwire"

local app = moonwire.app {}

local s = moonwire.state("testing_timers")
s.ticks, s.once_at, s.cancelled_runs, s.boom_runs = 0, nil, 0, 0
s.sleepy_runs, s.sleepy_running, s.sleepy_max = 0, 0, 0
s.loaded_at = moonwire.now()

app:every(1, function()
  s.ticks = s.ticks + 1
  app:publish("clock", "tick " .. s.ticks)
end)

app:after(2.5, function() s.once_at = moonwire.now() end)

local doomed = app:after(5, function() s.cancelled_runs = s.cancelled_runs + 1 end)
s.cancel_result = doomed:cancel()
s.cancel_again = doomed:cancel()

app:every(3, function()
  s.boom_runs = s.boom_runs + 1
  error("timer boom " .. s.boom_runs)
end)

app:every(1, function()
  s.sleepy_runs = s.sleepy_runs + 1
  s.sleepy_running = s.sleepy_running + 1
  if s.sleepy_running > s.sleepy_max then s.sleepy_max = s.sleepy_running end
  moonwire.sleep(2.5)
  s.sleepy_running = s.sleepy_running - 1
end)

app:websocket("/clock", {
  on_open = function(ws) ws:subscribe("clock") end,
  on_message = function(ws, msg)
    moonwire.sleep(tonumber(msg))
    ws:send(string.format("%.3f", moonwire.now()))
  end,
})

app:websocket("/arm", {
  on_message = function(ws, msg)
    if msg == "cancel" then
      ws:send("cancel " .. tostring(ws.data.timer:cancel()))
    else
      ws.data.timer = app:after(tonumber(msg), function() ws:send("fired " .. moonwire.now()) end)
    end
  end,
})

return app
