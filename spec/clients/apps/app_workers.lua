-- Test app for --workers: reports which worker serves a connection, keeps
-- every connection subscribed to "all", and publishes on request.
local moonwire = require "moonwire"

local app = moonwire.app {}

local VERSION = "v1"

app:websocket("/w", {
  on_open = function(ws)
    ws:subscribe("all")
    ws:send("hello " .. moonwire.worker .. " " .. moonwire.workers .. " " .. ws.id)
  end,
  on_message = function(ws, msg)
    local n = msg:match("^pub (%d+)$")
    if n then
      for i = 1, tonumber(n) do app:publish("all", "msg " .. moonwire.worker .. " " .. i) end
    elseif msg == "version" then
      ws:send(VERSION .. " " .. moonwire.worker)
    else
      ws:send(msg)
    end
  end,
})

return app
