-- Benchmark broadcast with permessage-deflate: bench/apps/broadcast.lua with
-- compression on and no threshold. A publish is compressed once for all the
-- subscribers that share a window size and level (no context takeover).
local moonwire = require "moonwire"

local app = moonwire.app {}
local TOPIC = "bench"

app:websocket("/sub", {
  compression = true,
  compression_threshold = 0,
  on_open = function(ws)
    ws:subscribe(TOPIC)
  end,
})

app:websocket("/pub", {
  compression = true,
  compression_threshold = 0,
  on_message = function(_, msg, is_binary)
    app:publish(TOPIC, msg, is_binary)
  end,
})

return app
