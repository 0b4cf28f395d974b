-- App used by the independent-client suites (spec/clients/test_*.py,
-- spec/clients/node/test_*.js). Written against the contract's Lua API only.
--
--   /watch    a "watcher": gets "ready" once registered, then one line
--             "closed <id> <code> <reason>" for every /subject connection that
--             ends (reported from that connection's on_close).
--   /subject  sends "id <ws.id>" on open, then for text messages:
--               "close <code> <reason>"  -> ws:close(code, reason)
--               "sleep <secs>"           -> moonwire.sleep(secs); send "woke <secs>"
--               "boom"                   -> raises a Lua error (-> close 1011)
--               "info"                   -> "path=<path> qs=<query_string> name=<query.name>"
--               anything else            -> echoed; binary is echoed as binary.
--   /slow     sleeps 20 ms in every on_message, then echoes (text/binary kept).
--   /small    echo with a per-route max_message_size of 1024 bytes.
local moonwire = require "moonwire"

local app = moonwire.app {}

local watchers = {}

local function report(line)
  for _, w in pairs(watchers) do
    w:send(line)
  end
end

app:websocket("/watch", {
  on_open = function(ws)
    watchers[ws.id] = ws
    ws:send("ready")
  end,
  on_close = function(ws)
    watchers[ws.id] = nil
  end,
})

app:websocket("/subject", {
  on_open = function(ws)
    ws:send("id " .. ws.id)
  end,
  on_message = function(ws, msg, is_binary)
    if is_binary then
      ws:send(msg, true)
      return
    end
    local code, reason = msg:match("^close (%d+) ?(.*)$")
    if code then
      ws:close(tonumber(code), reason)
      return
    end
    local secs = msg:match("^sleep ([%d%.]+)$")
    if secs then
      moonwire.sleep(tonumber(secs))
      ws:send("woke " .. secs)
      return
    end
    if msg == "boom" then
      error("kaboom from harness app")
    end
    if msg == "info" then
      ws:send("path=" .. tostring(ws.path) .. " qs=" .. tostring(ws.query_string)
              .. " name=" .. tostring(ws.query and ws.query.name))
      return
    end
    ws:send(msg)
  end,
  on_close = function(ws, code, reason)
    report("closed " .. ws.id .. " " .. tostring(code) .. " " .. tostring(reason))
  end,
})

app:websocket("/slow", {
  on_message = function(ws, msg, is_binary)
    moonwire.sleep(0.02)
    ws:send(msg, is_binary)
  end,
})

app:websocket("/small", {
  max_message_size = 1024,
  on_message = function(ws, msg, is_binary)
    ws:send(msg, is_binary)
  end,
})

return app
