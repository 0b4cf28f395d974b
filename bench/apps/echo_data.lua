-- Benchmark idle-10k-data: echo, plus a small ws.data set in on_open (the
-- "1 KiB with a small ws.data" case of the idle memory budget).
local moonwire = require "moonwire"
local app = moonwire.app {}
app:websocket("/echo", {
  on_open = function(ws) ws.data.user = "user" .. ws.id end,
  on_message = function(ws, msg, is_binary) ws:send(msg, is_binary) end,
})
return app
