-- App for the pub/sub tests (spec/clients/test_python_app_layer.py,
-- node/test_node_app_layer.js). Written against /tmp/api3.md only.
--
--   /sub?topic=T   subscribes to T in on_open, then sends "subscribed <true|false>".
--                  Text commands (each answered with one line):
--                    "sub T"            -> "sub <ws:subscribe(T)>"
--                    "unsub T"          -> "unsub <ws:unsubscribe(T)>"
--                    "count T"          -> "count <app:subscribers(T)>"
--                    "pub T DATA"       -> "pub <app:publish(T, DATA)>"
--                    "pubbin T HEX"     -> "pubbin <n>" (publishes the bytes, binary)
--                    "burst T N"        -> publishes "T 1" .. "T N"; -> "burst <sum of counts>"
--                    "burstsize T N S"  -> publishes N messages "T <i> xxx" of S bytes -> "burstsize <sum>"
--                  anything else is echoed.
--   /subsmall?topic=T, /subdrop?topic=T: subscribers with max_buffered 16384 and
--                  slow_consumer "close" / "drop"; "stats" -> "stats dropped=<ws.dropped>".
--   a timer publishes "tick <n>" to "ticks" every 10 ms.
--   HTTP GET /count?topic=T  -> "<app:subscribers(T)>"
--        GET /publish?topic=T&data=D -> "<app:publish(T, D)>"
local moonwire = require "moonwire"

local app = moonwire.app {}

local function unhex(h)
  return (h:gsub("%x%x", function(b) return string.char(tonumber(b, 16)) end))
end

app:websocket("/sub", {
  on_open = function(ws)
    local topic = ws.query.topic
    if topic then
      ws:send("subscribed " .. tostring(ws:subscribe(topic)))
    else
      ws:send("subscribed none")
    end
  end,
  on_message = function(ws, msg, is_binary)
    if is_binary then ws:send(msg, true); return end
    local cmd, rest = msg:match("^(%S+) ?(.*)$")
    if cmd == "sub" then
      ws:send("sub " .. tostring(ws:subscribe(rest)))
    elseif cmd == "unsub" then
      ws:send("unsub " .. tostring(ws:unsubscribe(rest)))
    elseif cmd == "count" then
      ws:send("count " .. tostring(app:subscribers(rest)))
    elseif cmd == "pub" then
      local topic, data = rest:match("^(%S+) (.*)$")
      ws:send("pub " .. tostring(app:publish(topic, data)))
    elseif cmd == "pubbin" then
      local topic, hex = rest:match("^(%S+) (%x*)$")
      ws:send("pubbin " .. tostring(app:publish(topic, unhex(hex), true)))
    elseif cmd == "burstsize" then
      -- "burstsize T N SIZE": N messages "T <i> xxx..." of SIZE bytes, no yield
      local topic, n, size = rest:match("^(%S+) (%d+) (%d+)$")
      local total = 0
      for i = 1, tonumber(n) do
        local head = topic .. " " .. i .. " "
        total = total + app:publish(topic, head .. string.rep("x", tonumber(size) - #head))
      end
      ws:send("burstsize " .. total)
    elseif cmd == "burst" then
      local topic, n = rest:match("^(%S+) (%d+)$")
      local total = 0
      for i = 1, tonumber(n) do
        total = total + app:publish(topic, topic .. " " .. i)
      end
      ws:send("burst " .. total)
    else
      ws:send(msg)
    end
  end,
  on_close = function(ws, code)
    moonwire.log.info("SUB CLOSED " .. ws.id .. " " .. tostring(code))
  end,
})

-- Subscribers with a small outbound bound, one per slow_consumer policy.
local function small_route(policy)
  return {
    max_buffered = 16384,
    max_message_size = 1024,
    slow_consumer = policy,
    on_open = function(ws) ws:send("subscribed " .. tostring(ws:subscribe(ws.query.topic))) end,
    on_message = function(ws, msg)
      ws:send(msg == "stats" and ("stats dropped=" .. tostring(ws.dropped)) or msg)
    end,
    on_close = function(ws, code, reason)
      moonwire.log.info("SMALL CLOSED " .. policy .. " " .. tostring(code) .. " " .. tostring(reason))
    end,
  }
end
app:websocket("/subsmall", small_route("close"))
app:websocket("/subdrop", small_route("drop"))

-- A timer publishes "tick <n>" to topic "ticks" every 10 ms (for the churn test).
local tick = 0
app:every(0.01, function()
  tick = tick + 1
  app:publish("ticks", "tick " .. tick)
end)

app:get("/count", function(req, res)
  res:send(tostring(app:subscribers(req.query.topic or "")))
end)

app:get("/publish", function(req, res)
  res:send(tostring(app:publish(req.query.topic or "", req.query.data or "")))
end)

return app
