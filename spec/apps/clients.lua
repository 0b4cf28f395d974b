-- Test app for spec/clients_spec.lua: outbound TCP, Redis, HTTP and
-- WebSocket calls made from handlers, the upgrade hook, HTTP routes and a
-- timer, against upstreams the spec starts.
--
-- On /c each text message is a JSON request { op = ..., ... }; the handler
-- runs ops[op] (which may wait on an upstream) and answers with one JSON
-- reply. Redis nil is "NULL" and an error inside an array "FALSE" on the wire.

local moonwire = require "moonwire"
local cjson = require "cjson"
local redis = require "moonwire.redis"
local http = require "moonwire.http"
local websocket = require "moonwire.websocket"

local app = moonwire.app {}

-- What a connect says while the app file loads (the spec reads it back).
local _, load_error = pcall(function() return moonwire.tcp():connect("127.0.0.1", 9) end)

local function rv(v)
  if v == redis.null then return "NULL" end
  if type(v) == "table" then
    local t = {}
    for i, x in ipairs(v) do t[i] = x == false and "FALSE" or rv(x) end
    return t
  end
  return v
end

local ops = {}

function ops.ping() return { pong = true } end

function ops.load_error() return { err = load_error } end

function ops.worker() return { worker = moonwire.worker } end

-- A socket driven step by step: { "send", data } { "receive", pattern }
-- { "close" } { "keepalive", ms, size }; each step's results come back.
function ops.tcp(r)
  local s = moonwire.tcp()
  if r.timeouts then s:settimeouts(unpack(r.timeouts)) elseif r.timeout then s:settimeout(r.timeout) end
  local ok, err = s:connect(r.host or "127.0.0.1", r.port, r.opts)
  local out = { ok = ok, err = err, steps = {} }
  if not ok then return out end
  out.reused = s:getreusedtimes()
  for i, st in ipairs(r.steps or {}) do
    local a, b, c
    if st[1] == "send" then a, b = s:send(st[2])
    elseif st[1] == "receive" then a, b, c = s:receive(st[2])
    elseif st[1] == "close" then a, b = s:close()
    elseif st[1] == "keepalive" then a, b = s:setkeepalive(st[2], st[3]) end
    out.steps[i] = { v = a, err = b, partial = c }
  end
  return out
end

function ops.http(r)
  local res, err = http.request(r.req)
  if not res then return { err = err } end
  return { status = res.status, body = res.body, headers = res.headers, reused = res.reused }
end

-- Misuse raises at the caller's line (the app's, here).
function ops.http_misuse(r)
  local ok, err = pcall(http.request, { url = r.url, headers = { ["X-A"] = "a\r\nEvil: 1" } })
  local ok2, err2 = pcall(websocket.connect, r.url, { headers = { ["Bad Name"] = "x" } })
  return { raised = not ok and err, raised2 = not ok2 and err2 }
end

-- Commands by method name (red:set, red:get: the __index path), or a pipeline.
function ops.redis(r)
  local red, err = redis.connect { port = r.port, db = r.db, timeout = r.timeout }
  if not red then return { err = err } end
  local out = { reused = red:get_reused_times(), results = {} }
  if r.pipeline then
    local res, perr = red:pipeline(function(p)
      for _, cmd in ipairs(r.pipeline) do p[cmd[1]](p, unpack(cmd, 2)) end
    end)
    out.pipeline, out.err = rv(res), perr
  end
  for i, cmd in ipairs(r.cmds or {}) do
    local v, cerr = red[cmd[1]](red, unpack(cmd, 2))
    out.results[i] = { v = rv(v), err = cerr }
  end
  if r.close then red:close() else red:set_keepalive() end
  return out
end

-- Subscribes, says "subscribed" on ws, then waits for `count` messages
-- (with idle_read, first reads once before anything is published).
function ops.redis_sub(r, ws)
  local red, err = redis.connect { port = r.port, timeout = r.timeout or 10000 }
  if not red then return { err = err } end
  local conf, serr = red:subscribe(r.channel)
  if not conf then return { err = serr } end
  local _, idle_err = nil, nil
  if r.idle_read then _, idle_err = red:read_reply() end -- nothing published yet
  ws:send("subscribed")
  local messages = {}
  for i = 1, r.count or 1 do
    local m, merr = red:read_reply()
    if not m then return { err = merr, messages = messages } end
    messages[i] = m
  end
  local _, kerr = red:set_keepalive()
  return { confirm = conf, messages = messages, keepalive_err = kerr, idle_err = idle_err }
end

function ops.ws(r)
  local c, err = websocket.connect(r.url, r.opts)
  if not c then return { err = err } end
  local out = { replies = {}, protocol = c.protocol }
  for i, m in ipairs(r.send or {}) do
    local ok, serr = c:send(m.data, m.binary)
    if not ok then out.err = serr break end
    local data, kind, code, reason = c:receive()
    out.replies[i] = { data = data, kind = kind, code = code, reason = reason }
  end
  if r.close then out.closed = { c:close(r.close[1], r.close[2]) } end
  return out
end

-- A wait from inside a C function (string.gsub's callback) cannot yield.
function ops.gsub_yield(r)
  local s = moonwire.tcp()
  local got
  ("x"):gsub("x", function() got = { s:connect("127.0.0.1", r.port) } end)
  return { got = got }
end

-- moonwire.sleep there too: its timer must not fire on a pooled coroutine.
function ops.gsub_sleep()
  ("x"):gsub("x", function() moonwire.sleep(0.2) end)
  return {}
end

-- Sockets dropped without close: the collector closes their fds.
function ops.drop(r)
  for _ = 1, r.n do
    local s = moonwire.tcp()
    s:connect("127.0.0.1", r.port)
  end
  collectgarbage("collect")
  collectgarbage("collect")
  return { dropped = r.n }
end

app:websocket("/c", {
  on_message = function(ws, msg)
    local r = cjson.decode(msg)
    ws:send(cjson.encode(ops[r.op](r, ws)))
  end,
})

-- An echo, as the upstream for our own WebSocket client.
app:websocket("/echo", {
  on_message = function(ws, msg, is_binary) ws:send(msg, is_binary) end,
})

-- Calls from the upgrade hook, on_open and on_close.
app:websocket("/ctx/upgrade", {
  upgrade = function(req)
    local res, err = http.request { url = req.query.url, timeout = 5000 }
    return { status = res and res.status, body = res and res.body, err = err }
  end,
  on_open = function(ws) ws:send(cjson.encode(ws.data)) end,
})

app:websocket("/ctx/open", {
  upgrade = function(req) return { url = req.query.url } end,
  on_open = function(ws)
    local res, err = http.request { url = ws.data.url, timeout = 5000 }
    ws:send(cjson.encode { status = res and res.status, body = res and res.body, err = err })
  end,
})

app:websocket("/ctx/close", {
  upgrade = function(req) return { port = tonumber(req.query.port), key = req.query.key } end,
  on_close = function(ws)
    local red = assert(redis.connect { port = ws.data.port })
    assert(red:set(ws.data.key, "set by on_close"))
    red:set_keepalive()
  end,
})

-- Our own HTTP routes: an upstream for the HTTP client, and a caller.
app:get("/hello", function(_, res) res:send(200, "hello from moonwire") end)
app:get("/fetch", function(req, res)
  local r, err = http.request { url = req.query.url, timeout = 5000 }
  res:send(200, r and ("fetched " .. r.status .. " " .. r.body) or ("error " .. err))
end)

-- A timer that calls out once (the upstream's url comes from the env).
local timer_result = { pending = true }
local timer_url = os.getenv("MW_TIMER_URL")
if timer_url then
  app:after(0.05, function()
    local res, err = http.request { url = timer_url, timeout = 5000 }
    timer_result = { status = res and res.status, body = res and res.body, err = err }
  end)
end
function ops.timer_result() return timer_result end

return app
