-- Test app for spec/app_pubsub_spec.lua: pub/sub and backpressure.
--
-- Routes (each subscribes to ?topic=T in on_open when given, then sends
-- "ready <what ws:subscribe returned>" or "ready none"):
--   /sub     default limits
--   /small   max_buffered 16384, max_message_size 1024, slow_consumer "close"
--   /drop    the same limits with slow_consumer "drop"; on_drain sends
--            "drained buffered=<ws.buffered> dropped=<ws.dropped>" (and logs DRAINED)
-- Text commands on every route (anything else is echoed, binary as binary):
--   sub T / unsub T         -> "sub <result>" / "unsub <result>"
--   count T                 -> "count <app:subscribers(T)>"
--   pub T DATA              -> "pub <app:publish(T, DATA)>"
--   pubbin T HEX            -> "pubbin <n>" (publishes the decoded bytes as binary)
--   burst T N [SIZE]        -> publishes "T <i> " (padded with x to SIZE bytes) for i = 1..N
--                              without yielding, -> "burst <sum of the counts>"
--   trickle T N [SIZE]      -> the same, but yields (sleeps 1 ms) after every 16 publishes
--   flood N SIZE            -> ws:send of N messages "f <i> xxx" (SIZE bytes) without yielding,
--                              then sleeps 0.3 s and sends
--                              "flood ok=<n> dropped=<n> closed=<n> wsdropped=<ws.dropped>"
--   buffered N SIZE         -> N sends of SIZE bytes; "buffered <ws.buffered right after>
--                              <ws.buffered 0.3 s later>"
--   stats                   -> "stats buffered=<ws.buffered> dropped=<ws.dropped>"
-- on_close of /small and /drop logs "CLOSED <route> <code> <reason>".

local moonwire = require "moonwire"

local app = moonwire.app {}

local function unhex(h)
  return (h:gsub("%x%x", function(b) return string.char(tonumber(b, 16)) end))
end

local function padded(head, size)
  size = tonumber(size)
  if not size or size <= #head then return head end
  return head .. string.rep("x", size - #head)
end

local commands = {}

function commands.sub(ws, topic) ws:send("sub " .. tostring(ws:subscribe(topic))) end
function commands.unsub(ws, topic) ws:send("unsub " .. tostring(ws:unsubscribe(topic))) end
function commands.count(ws, topic) ws:send("count " .. tostring(app:subscribers(topic))) end

function commands.pub(ws, topic, ...)
  ws:send("pub " .. tostring(app:publish(topic, table.concat({ ... }, " "))))
end

function commands.pubbin(ws, topic, hex)
  ws:send("pubbin " .. tostring(app:publish(topic, unhex(hex or ""), true)))
end

function commands.burst(ws, topic, n, size)
  local total = 0
  for i = 1, tonumber(n) do
    total = total + app:publish(topic, padded(topic .. " " .. i .. " ", size))
  end
  ws:send("burst " .. total)
end

function commands.trickle(ws, topic, n, size)
  local total = 0
  for i = 1, tonumber(n) do
    total = total + app:publish(topic, padded(topic .. " " .. i .. " ", size))
    if i % 16 == 0 then moonwire.sleep(0.001) end
  end
  ws:send("trickle " .. total)
end

function commands.flood(ws, n, size)
  local r = { ok = 0, dropped = 0, closed = 0 }
  for i = 1, tonumber(n) do
    local ok, err = ws:send(padded("f " .. i .. " ", size))
    if ok then
      r.ok = r.ok + 1
    else
      r[err] = (r[err] or 0) + 1
    end
  end
  moonwire.sleep(0.3)
  ws:send(("flood ok=%d dropped=%d closed=%d wsdropped=%s"):format(r.ok, r.dropped, r.closed,
    tostring(ws.dropped)))
end

function commands.buffered(ws, n, size)
  for i = 1, tonumber(n) do ws:send(padded("b " .. i .. " ", size)) end
  local right_after = ws.buffered
  moonwire.sleep(0.3)
  ws:send("buffered " .. tostring(right_after) .. " " .. tostring(ws.buffered))
end

function commands.stats(ws)
  ws:send("stats buffered=" .. tostring(ws.buffered) .. " dropped=" .. tostring(ws.dropped))
end

local function on_open(ws)
  local topic = ws.query.topic
  ws:send("ready " .. (topic and tostring(ws:subscribe(topic)) or "none"))
end

local function on_message(ws, msg, is_binary)
  if not is_binary then
    local words = {}
    for w in msg:gmatch("%S+") do words[#words + 1] = w end
    local cmd = commands[words[1] or ""]
    if cmd then return cmd(ws, unpack(words, 2)) end
  end
  ws:send(msg, is_binary)
end

local function logged_close(route)
  return function(ws, code, reason)
    moonwire.log.info(("CLOSED %s %d %s %s"):format(route, ws.id, tostring(code), tostring(reason)))
  end
end

app:websocket("/sub", { on_open = on_open, on_message = on_message })

app:websocket("/small", {
  max_buffered = 16384, max_message_size = 1024,
  on_open = on_open, on_message = on_message, on_close = logged_close("/small"),
})

app:websocket("/drop", {
  max_buffered = 16384, max_message_size = 1024, slow_consumer = "drop",
  on_open = on_open, on_message = on_message, on_close = logged_close("/drop"),
  on_drain = function(ws)
    moonwire.log.info("DRAINED " .. ws.id)
    ws:send("drained buffered=" .. tostring(ws.buffered) .. " dropped=" .. tostring(ws.dropped))
  end,
})

return app
