-- Test app for the hardening tests (issue 7): spec/hardening_spec.lua,
-- spec/clients/test_python_hardening.py and bench/soak.py.
--
--   /echo     echo (text as text, binary as binary); counts opens and closes.
--   /small    echo with a route max_message_size of 4096 bytes.
--   /medium   echo with a route max_message_size of 65536 bytes.
--   /count    counts opens and closes; messages "seq <client> <n>" are logged
--             as "got <client> <n>" after an optional per-message sleep
--             (query ?sleep=SECONDS); every on_close is logged as
--             "on_close <id> <code> <reason>".
--   /pub      subscribes to topic "t" (for the soak script); a text message
--             "pub <data>" publishes <data> to "t", anything else is echoed.
--   GET /stats       "opened=N closed=N open=N dup=N lua_kb=N" (no collection)
--   GET /gc          the same, after two full garbage collections
--   GET /slow        sleeps 0.5 s, then answers "slept"
--   POST /body       answers the length of the request body
local moonwire = require "moonwire"

local app = moonwire.app {}

-- Survives hot reloads; the tests never reload, but this is what an app
-- would use, and the brief asks for it.
local st = moonwire.state("hardening")
st.opened = st.opened or 0
st.closed = st.closed or 0
st.dup = st.dup or 0          -- on_close calls for a connection that was not open
st.live = st.live or {}        -- ws.id -> true while open (emptied by on_close)
st.nlive = st.nlive or 0

local function opened(ws)
  st.opened = st.opened + 1
  st.live[ws.id] = true
  st.nlive = st.nlive + 1
end

local function closed(ws)
  st.closed = st.closed + 1
  if st.live[ws.id] then
    st.live[ws.id] = nil
    st.nlive = st.nlive - 1
  else
    st.dup = st.dup + 1
  end
end

local function echo(ws, msg, is_binary)
  ws:send(msg, is_binary)
end

local function counted_echo(limit)
  return {
    max_message_size = limit,
    on_open = opened,
    on_message = echo,
    on_close = closed,
  }
end

app:websocket("/echo", counted_echo(nil))
app:websocket("/small", counted_echo(4096))
app:websocket("/medium", counted_echo(65536))

app:websocket("/count", {
  on_open = function(ws)
    opened(ws)
    ws.data.sleep = tonumber(ws.query.sleep) or 0
  end,
  on_message = function(ws, msg)
    if ws.data.sleep > 0 then moonwire.sleep(ws.data.sleep) end
    local who, n = msg:match("^seq (%S+) (%d+)$")
    if who then
      moonwire.log.info("got " .. who .. " " .. n)
    else
      ws:send(msg)
    end
  end,
  on_close = function(ws, code, reason)
    closed(ws)
    moonwire.log.info(("on_close %d %s %s"):format(ws.id, tostring(code), tostring(reason)))
  end,
})

app:websocket("/pub", {
  on_open = function(ws)
    opened(ws)
    ws:subscribe("t")
  end,
  on_message = function(ws, msg, is_binary)
    local data = msg:match("^pub (.*)$")
    if data then
      app:publish("t", data)
    else
      ws:send(msg, is_binary)
    end
  end,
  on_close = closed,
})

local function stats()
  return ("opened=%d closed=%d open=%d dup=%d lua_kb=%d"):format(st.opened, st.closed, st.nlive,
    st.dup, math.floor(collectgarbage("count")))
end

app:get("/stats", function(_, res)
  res:send(200, stats())
end)

app:get("/gc", function(_, res)
  collectgarbage("collect")
  collectgarbage("collect")
  res:send(200, stats())
end)

app:get("/slow", function(_, res)
  moonwire.sleep(0.5)
  res:send(200, "slept")
end)

app:post("/body", function(req, res)
  res:send(200, tostring(#(req.body or "")))
end)

return app
