-- Benchmark broadcast: connections on /sub subscribe to one topic when they
-- open; every message that arrives on /pub is published to that topic by a
-- Lua handler. The generator embeds a sequence number and a send time in each
-- payload and checks order, loss and fan-out latency at every subscriber.
local moonwire = require "moonwire"

local app = moonwire.app {}
local TOPIC = "bench"

app:websocket("/sub", {
  on_open = function(ws)
    ws:subscribe(TOPIC)
  end,
})

app:websocket("/pub", {
  on_message = function(_, msg, is_binary)
    app:publish(TOPIC, msg, is_binary)
  end,
})

return app
