-- Echo: every message comes back as it went out, text as text and binary as
-- binary. Accepts messages up to 16 MiB in any number of fragments (what the
-- Autobahn conformance suite sends), while the server-wide default stays 1 MiB.
-- GET /stats shows the server's own figures (moonwire.stats()).
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

-- moonwire.stats() flattened to "messages.received 42" lines, sorted.
local function flatten(t, prefix, out)
  for k, v in pairs(t) do
    local name = prefix .. tostring(k)
    if type(v) == "table" then flatten(v, name .. ".", out) else out[#out + 1] = name .. " " .. v end
  end
  return out
end

app:get("/stats", function(req, res)
  local lines = flatten(moonwire.stats(), "", {})
  table.sort(lines)
  res:send(table.concat(lines, "\n") .. "\n")
end)

return app
