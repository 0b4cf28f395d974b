-- App for the observability tests (spec/clients/test_python_observability.py and
-- spec/observability_spec.lua): a known sequence of connections and messages
-- is driven through these routes, then /metrics and moonwire.stats() are
-- checked against it. No route has on_close (and only /sub has on_open), so
-- the handler-call count of a sequence is exact.
--
--   /echo     on_message echoes (text/binary kept); "log" -> moonwire.log.info
--             ("OBS LOG from handler") and answers "logged"
--   /auth     upgrade hook: refuses 401 when the query has deny=1; then echo
--   /boom     on_message: "boom" raises a Lua error (-> close 1011), else echo
--   /sub      on_open subscribes to "news" (no message is sent)
--   /pub      on_message "TOPIC DATA" -> app:publish(TOPIC, DATA), answers
--             "delivered <n>"
--   /slow     max_buffered 4096, max_message_size 1024, slow_consumer "drop";
--             "flood N SIZE" sends N text messages of SIZE bytes in one run
--             (nothing is written meanwhile) and logs
--             "OBS FLOOD sent=<ok> dropped=<n> wsdropped=<ws.dropped>"
--   /stall    max_buffered 64 MiB: "fill N SIZE" sends N binary messages of
--             SIZE bytes (for a reader that never reads: the write queue)
--   /nap      on_message "sleep S": moonwire.sleep(S), then "woke"
--   GET /hello      "hello"
--   GET /stats      moonwire.stats() as JSON (lua-cjson)
--   GET /nap        sleeps 0.5 s, then "rested" (a suspended HTTP handler)
local moonwire = require "moonwire"
local cjson = require "cjson"

local app = moonwire.app {}

local function echo(ws, msg, is_binary)
  ws:send(msg, is_binary)
end

app:websocket("/echo", {
  on_message = function(ws, msg, is_binary)
    if msg == "log" then
      moonwire.log.info("OBS LOG from handler")
      ws:send("logged")
      return
    end
    echo(ws, msg, is_binary)
  end,
})

app:websocket("/auth", {
  upgrade = function(req)
    if req.query and req.query.deny == "1" then return 401, "denied" end
  end,
  on_message = echo,
})

app:websocket("/boom", {
  on_message = function(ws, msg, is_binary)
    if msg == "boom" then error("OBS boom from handler") end
    echo(ws, msg, is_binary)
  end,
})

app:websocket("/sub", {
  on_open = function(ws) ws:subscribe("news") end,
})

app:websocket("/pub", {
  on_message = function(ws, msg)
    local topic, data = msg:match("^(%S+) (.*)$")
    ws:send("delivered " .. tostring(app:publish(topic or "news", data or msg)))
  end,
})

app:websocket("/slow", {
  max_buffered = 4096,
  max_message_size = 1024,
  slow_consumer = "drop",
  on_message = function(ws, msg)
    local n, size = msg:match("^flood (%d+) (%d+)$")
    if not n then return end
    local sent, dropped = 0, 0
    local payload = string.rep("x", tonumber(size))
    for _ = 1, tonumber(n) do
      local ok, err = ws:send(payload)
      if ok then
        sent = sent + 1
      elseif err == "dropped" then
        dropped = dropped + 1
      end
    end
    moonwire.log.info(string.format("OBS FLOOD sent=%d dropped=%d wsdropped=%s", sent, dropped,
      tostring(ws.dropped)))
  end,
})

app:websocket("/stall", {
  max_buffered = 64 * 1024 * 1024,
  on_message = function(ws, msg)
    local n, size = msg:match("^fill (%d+) (%d+)$")
    if not n then return end
    local payload = string.rep("y", tonumber(size))
    for _ = 1, tonumber(n) do ws:send(payload, true) end
  end,
})

app:websocket("/nap", {
  on_message = function(ws, msg)
    local s = msg:match("^sleep ([%d%.]+)$")
    if s then moonwire.sleep(tonumber(s)) end
    ws:send("woke")
  end,
})

app:get("/hello", function(_, res)
  res:send("hello")
end)

app:get("/stats", function(_, res)
  res:header("Content-Type", "application/json")
  res:send(cjson.encode(moonwire.stats()))
end)

app:get("/nap", function(_, res)
  moonwire.sleep(0.5)
  res:send("rested")
end)

return app
