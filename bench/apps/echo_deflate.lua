-- Benchmark echo with permessage-deflate: the echo app with compression on
-- and no size threshold, so every message is compressed both ways.
local moonwire = require "moonwire"

local app = moonwire.app {}

app:websocket("/echo", {
  max_message_size = 16 * 1024 * 1024,
  compression = true,
  compression_threshold = 0,
  on_message = function(ws, msg, is_binary)
    ws:send(msg, is_binary)
  end,
})

return app
