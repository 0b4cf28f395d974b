-- Test app for --broker (spec/clients/test_python_broker.py): a connection
-- to /t/TOPIC follows TOPIC and says which worker serves it; messages
-- publish on request; GET /broker shows moonwire.stats().broker.
local moonwire = require "moonwire"

-- The broker may also come from the app's options (here from the environment).
local app = moonwire.app { broker = os.getenv("MW_TEST_BROKER") }

app:websocket("/t/:topic", {
  on_open = function(ws)
    ws:subscribe(ws.params.topic)
    ws:send("hello " .. moonwire.worker)
  end,
  on_message = function(ws, msg, binary)
    -- "pub TOPIC N TAG": N publishes "TAG i" on TOPIC
    local topic, n, tag = msg:match("^pub (%S+) (%d+) (%S+)$")
    if topic then
      for i = 1, tonumber(n) do app:publish(topic, tag .. " " .. i) end
      ws:send("done")
      return
    end
    -- "bin TOPIC": publishes the bytes 0..255 as a binary message
    topic = msg:match("^bin (%S+)$")
    if topic then
      local bytes = {}
      for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
      app:publish(topic, table.concat(bytes), true)
      ws:send("done")
      return
    end
    topic = msg:match("^unsub (%S+)$")
    if topic then
      ws:unsubscribe(topic)
      ws:send("done")
      return
    end
    ws:send("? " .. tostring(msg) .. tostring(binary))
  end,
})

app:get("/broker", function(_, res)
  local b = moonwire.stats().broker
  if not b then return res:send("no broker") end
  res:send(string.format("connected=%s published=%d received=%d dropped_disconnected=%d "
    .. "dropped_max_pending=%d reconnects=%d subscriptions=%d", tostring(b.connected),
    b.published, b.received, b.dropped_disconnected, b.dropped_max_pending, b.reconnects,
    b.subscriptions))
end)

return app
