-- Benchmark echo: every message comes back as it came, text as text and
-- binary as binary, through a Lua handler (never a C-only shortcut).
local moonwire = require "moonwire"

local app = moonwire.app {}

app:websocket("/echo", {
  max_message_size = 16 * 1024 * 1024,
  on_message = function(ws, msg, is_binary)
    ws:send(msg, is_binary)
  end,
})

return app
