-- Test app with tiny limits set through moonwire.app{} and a route option, so the
-- specs can check that app options take effect and that CLI flags override them.
--   /small: inherits max_message_size = 1000 from the app
--   /big:   route option max_message_size = 5000
-- Both echo; "flood N SIZE" sends N messages of SIZE bytes and records the result,
-- "flood_result ID" and "id" report it.

local moonwire = require "moonwire"

local app = moonwire.app {
  max_message_size = 1000,
  max_buffered = 65536,
  max_connections = 8,
  handshake_timeout = 1,
}

local floods = {}

local function handle(ws, msg, is_binary)
  local cmd, a, b = msg:match("^(%S+) ?(%S*) ?(%S*)$")
  if is_binary or not cmd then
    ws:send(msg, is_binary)
  elseif cmd == "id" then
    ws:send(tostring(ws.id))
  elseif cmd == "flood" then
    local chunk = string.rep("f", tonumber(b))
    local result = { sent = 0 }
    floods[ws.id] = result
    for _ = 1, tonumber(a) do
      local ok, err = ws:send(chunk)
      if not ok then
        result.err = tostring(err)
        break
      end
      result.sent = result.sent + 1
    end
  elseif cmd == "flood_result" then
    local r = floods[tonumber(a)]
    ws:send(r and (r.sent .. " " .. tostring(r.err)) or "none")
  else
    ws:send(msg)
  end
end

app:websocket("/small", { on_message = handle })
app:websocket("/big", { max_message_size = 5000, on_message = handle })

return app
