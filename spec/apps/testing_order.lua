-- Test app for spec/testing_spec.lua (moonwire.testing): the per-connection
-- order guarantee, closing, errors and on_close. Every handler call appends to
-- the connection's ws.data.events; state "testing_order" keeps every
-- connection's events by id after it closed, and how often on_close ran.
--
--   on_open          sleeps 1 s, then sends "open"
--   "slow"           sleeps 2 s, then sends "slow done"
--   "boom"           raises (-> 1011)
--   "yield"          coroutine.yield() outside moonwire (-> 1011)
--   "close"          ws:close(4000, "bye"), then tries to send (recorded)
--   "close sleep"    ws:close(4001), then sleeps 1 s (on_close waits for it)
--   "readonly"       assigns ws.path (an error)
--   "fields"         sends the ws fields as "k=v" lines
--   "ping"           ws:ping("p")
--   "badclose"       ws:close(1006) (an argument error)
--   "kill N"         closes connection N with 4002 "killed" (state.log shows the order)
--   anything else    echoed as "got <msg>" (binary stays binary)
-- on_close sleeps 0.5 s when ws.data.slow_close is set ("slow close" sets it).

local moonwire = require "moonwire"

local app = moonwire.app {}

local state = moonwire.state("testing_order")
state.events = state.events or {}
state.closes = state.closes or {}
state.live = state.live or {}   -- id -> ws of open connections
state.log = state.log or {}     -- one line per cross-connection step, in order

local function note(ws, what)
  local ev = ws.data.events
  if not ev then
    ev = {}
    ws.data.events = ev
  end
  ev[#ev + 1] = what
end

app:websocket("/order", {
  max_message_size = 16,
  on_open = function(ws)
    state.live[ws.id] = ws
    note(ws, "open start")
    moonwire.sleep(1)
    note(ws, "open end")
    ws:send("open")
  end,
  on_message = function(ws, msg, is_binary)
    note(ws, "msg " .. msg)
    if msg == "slow" then
      moonwire.sleep(2)
      note(ws, "slow end")
      ws:send("slow done")
    elseif msg == "boom" then
      error("boom from a handler")
    elseif msg == "yield" then
      coroutine.yield()
    elseif msg == "close" then
      ws:close(4000, "bye")
      local ok, err = ws:send("after close")
      note(ws, "send after close " .. tostring(ok) .. " " .. tostring(err))
      note(ws, "closed field " .. tostring(ws.closed))
    elseif msg == "close sleep" then
      ws:close(4001)
      moonwire.sleep(1)
      note(ws, "slept after close")
    elseif msg == "readonly" then
      ws.path = "/elsewhere"
    elseif msg == "fields" then
      local lines = {}
      for _, k in ipairs { "id", "path", "query_string", "remote_addr", "remote_port", "buffered",
        "dropped", "closed" } do
        lines[#lines + 1] = k .. "=" .. tostring(ws[k])
      end
      lines[#lines + 1] = "query.a=" .. tostring(ws.query.a)
      lines[#lines + 1] = "header=" .. tostring(ws.headers["x-custom"])
      ws:send(table.concat(lines, "\n"))
    elseif msg == "ping" then
      ws:ping("p")
    elseif msg == "badclose" then
      ws:close(1006)
    elseif msg:match("^kill ") then
      local id = tonumber(msg:match("%d+"))
      local ok = state.live[id]:close(4002, "killed")
      state.log[#state.log + 1] = ws.id .. " kills " .. id .. ": " .. tostring(ok)
      state.log[#state.log + 1] = ws.id .. " done"
    elseif msg == "slow close" then
      ws.data.slow_close = true
    else
      ws:send("got " .. msg, is_binary)
    end
  end,
  on_close = function(ws, code, reason)
    note(ws, "close " .. code .. " " .. reason)
    state.live[ws.id] = nil
    state.log[#state.log + 1] = ws.id .. " on_close " .. code
    state.closes[ws.id] = (state.closes[ws.id] or 0) + 1
    if ws.data.slow_close then
      moonwire.sleep(0.5)
      note(ws, "close end")
    end
    state.events[ws.id] = ws.data.events
    state.after_close = { path = tostring(ws.path), send = select(2, ws:send("x")),
      closed = tostring(ws.closed) }
  end,
})

return app
