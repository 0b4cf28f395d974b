-- Echo: every message comes back as it went out, text as text and binary as
-- binary. Accepts messages up to 16 MiB in any number of fragments (what the
-- Autobahn conformance suite sends), while the server-wide default stays 1 MiB.
local moonwire = require "moonwire"

local app = moonwire.app {}

app:websocket("/echo", {
  max_message_size = 16 * 1024 * 1024,
  -- permessage-deflate when the client offers it (browsers do).
  compression = true,
  on_message = function(ws, msg, is_binary)
    ws:send(msg, is_binary)
  end,
})

return app
