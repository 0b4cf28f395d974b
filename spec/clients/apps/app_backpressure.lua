-- App for the backpressure tests (spec/clients/test_python_app_layer.py).
-- Written against /tmp/api3.md only.
--
-- Every flood route understands the text command "flood N SIZE": it sends N
-- text messages "seq <i> xxxx..." of SIZE bytes, yielding (moonwire.sleep)
-- every 16 sends so the event loop can write, and stops at the first refused
-- send. When it ends it logs one line:
--   "FLOOD DONE <route> sent=<ok> dropped=<n> err=<first error> wsdropped=<ws.dropped>
--    maxbuf=<largest ws.buffered seen> minbuf=<smallest non-zero ws.buffered> last=<last ok seq>"
-- "stats" -> "stats buffered=<ws.buffered> dropped=<ws.dropped>"; anything else is echoed.
local moonwire = require "moonwire"

local app = moonwire.app {}

local function flood(ws, route, n, size, every)
  local ok_count, dropped, first_err, maxbuf, minbuf, last = 0, 0, "none", 0, math.huge, 0
  for i = 1, n do
    local head = "seq " .. i .. " "
    local ok, err = ws:send(head .. string.rep("x", size - #head))
    if ok then
      ok_count, last = ok_count + 1, i
    else
      if first_err == "none" then first_err = tostring(err) end
      if err == "dropped" then dropped = dropped + 1 else break end
    end
    local b = ws.buffered
    if b > maxbuf then maxbuf = b end
    if b > 0 and b < minbuf then minbuf = b end
    if i % every == 0 then moonwire.sleep(0.001) end
  end
  moonwire.log.info(string.format(
    "FLOOD DONE %s sent=%d dropped=%d err=%s wsdropped=%s maxbuf=%d minbuf=%s last=%d",
    route, ok_count, dropped, first_err, tostring(ws.dropped), maxbuf,
    minbuf == math.huge and "none" or tostring(minbuf), last))
end

local function handler(route, every)
  return function(ws, msg)
    local n, size = msg:match("^flood (%d+) (%d+)$")
    if n then
      flood(ws, route, tonumber(n), tonumber(size), every)
    elseif msg == "stats" then
      ws:send("stats buffered=" .. tostring(ws.buffered) .. " dropped=" .. tostring(ws.dropped))
    else
      ws:send(msg)
    end
  end
end

local function closed(route)
  return function(ws, code, reason)
    moonwire.log.info("FLOOD CLOSED " .. route .. " " .. tostring(code) .. " " .. tostring(reason))
  end
end

app:websocket("/flood_close", {
  max_buffered = 16384,
  max_message_size = 1024,
  on_message = handler("/flood_close", 16),
  on_close = closed("/flood_close"),
})

app:websocket("/flood_drop", {
  max_buffered = 16384,
  max_message_size = 1024,
  slow_consumer = "drop",
  on_message = handler("/flood_drop", 16),
  on_drain = function(ws)
    moonwire.log.info("DRAIN buffered=" .. tostring(ws.buffered) .. " dropped=" .. tostring(ws.dropped))
    ws:send("drained buffered=" .. tostring(ws.buffered) .. " dropped=" .. tostring(ws.dropped))
  end,
  on_close = closed("/flood_drop"),
})

-- Large messages and a larger bound, for the memory test.
app:websocket("/flood_mem", {
  max_buffered = 262144,
  max_message_size = 65536,
  slow_consumer = "drop",
  on_message = handler("/flood_mem", 8),
  on_close = closed("/flood_mem"),
})

app:websocket("/echo", {
  on_message = function(ws, msg, is_binary) ws:send(msg, is_binary) end,
})

return app
