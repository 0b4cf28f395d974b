-- Test app for the integration specs: one route, /probe, driven by text commands.
--
-- Every handler call is recorded per connection (events[id]) so that a second
-- "observer" connection can ask what happened to the first one (order of calls,
-- on_close code and reason, how often on_close ran). Query parameters on the
-- upgrade request tune the handlers: ?open_sleep=S, ?open_error=1, ?open_send=TEXT,
-- ?close_error=1 (on_close raises after recording).
--
-- Commands (anything else is echoed back, binary as binary):
--   id                    -> the connection's ws.id
--   fields                -> the ws fields as a Lua table literal
--   sleep S TAG           -> moonwire.sleep(S), then "slept TAG"
--   error                 -> raises (the spec looks for this file's line below)
--   error_table           -> raises a table instead of a string
--   sleep_error S         -> moonwire.sleep(S), then raises (after the call suspended)
--   sleep_close S CODE    -> moonwire.sleep(S), then ws:close(CODE)
--   close_send ID         -> what ws:send returned inside on_close of connection ID
--   flood N SIZE          -> N text messages of SIZE bytes; result kept in floods[id]
--   bigsend N SIZE        -> N binary messages "<i>:" padded with a pattern of i to SIZE
--                            bytes, each a fresh string collected after the send
--                            (collectgarbage between sends); replies "bigsend <n ok>"
--   luamem                -> after a full collection, "luamem <collectgarbage('count') KiB>"
--   close [CODE [REASON]] -> ws:close(CODE, REASON)
--   ping [DATA]           -> ws:ping(DATA)
--   send_to ID TEXT       -> sends TEXT on connection ID, replies "send_to RESULT ERR"
--   events ID             -> the event list of connection ID as a Lua table literal
--   flood_result ID       -> floods[ID] as a Lua table literal
--   data_set K V / data_get K / data_replace
--   failed_open           -> id of the last connection opened with ?open_error=1
--   q ...                 -> counted, no reply; qcount -> how many "q" messages arrived
--   log_info WORDS / log_warn WORDS -> moonwire.log.info / .warn, replies "logged"
--   binary TEXT           -> TEXT as a binary message

local moonwire = require "moonwire"

local app = moonwire.app {}

local all = {}        -- id -> ws, kept after close (to test send on a closed ws)
local events = {}     -- id -> list of "open", "msg:...", "close:CODE:REASON"
local floods = {}     -- id -> { sent = n, ok = bool, err = string }
local failed_open     -- id of the last connection whose on_open raised on purpose
local quiet = {}      -- id -> number of "q ..." messages received
local close_sends = {} -- id -> what ws:send returned inside on_close

local function record(ws, what)
  local list = events[ws.id]
  if not list then
    list = {}
    events[ws.id] = list
  end
  list[#list + 1] = what
end

-- Serializes plain data (tables, strings, numbers, booleans) as a Lua literal with
-- sorted keys, so the spec can load it back.
local function dump(v)
  local t = type(v)
  if t == "string" then return string.format("%q", v) end
  if t == "number" or t == "boolean" or t == "nil" then return tostring(v) end
  if t == "table" then
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    local out = {}
    for _, k in ipairs(keys) do
      out[#out + 1] = "[" .. dump(k) .. "]=" .. dump(v[k])
    end
    return "{" .. table.concat(out, ",") .. "}"
  end
  return string.format("%q", tostring(v))
end

local commands = {}

function commands.id(ws)
  ws:send(tostring(ws.id))
end

function commands.fields(ws)
  ws:send(dump({
    id = ws.id, id_type = type(ws.id), remote_addr = ws.remote_addr, remote_port = ws.remote_port,
    remote_port_type = type(ws.remote_port), path = ws.path, query = ws.query,
    query_string = ws.query_string, headers = ws.headers, data_type = type(ws.data),
  }))
end

function commands.sleep(ws, seconds, tag)
  moonwire.sleep(tonumber(seconds))
  ws:send("slept " .. (tag or ""))
end

function commands.error()
  error("probe boom") -- PROBE_ERROR_LINE
end

function commands.sleep_error(_, seconds)
  moonwire.sleep(tonumber(seconds))
  error("probe late boom") -- PROBE_LATE_ERROR_LINE
end

function commands.sleep_close(ws, seconds, code)
  moonwire.sleep(tonumber(seconds))
  ws:close(tonumber(code))
end

function commands.error_table()
  error({ "not a string" })
end

function commands.close_send(ws, id)
  ws:send(tostring(close_sends[tonumber(id)]))
end

function commands.flood(ws, n, size)
  local chunk = string.rep("f", tonumber(size))
  local result = { sent = 0, ok = true }
  floods[ws.id] = result
  for _ = 1, tonumber(n) do
    local ok, err = ws:send(chunk)
    if not ok then
      result.ok, result.err = false, tostring(err)
      break
    end
    result.sent = result.sent + 1
  end
end

-- Each message is a string of its own that nothing in Lua refers to once
-- sent, and a full collection runs before the next one is made: the server
-- queues large strings without a copy, so this is what keeps them alive.
function commands.bigsend(ws, n, size)
  local ok = 0
  for i = 1, tonumber(n) do
    local head = i .. ":"
    local fill = string.char(65 + i % 26, 97 + i % 26)
    local reps = math.ceil((tonumber(size) - #head) / 2)
    if ws:send((head .. string.rep(fill, reps)):sub(1, tonumber(size)), true) then
      ok = ok + 1
    end
    collectgarbage("collect")
  end
  ws:send("bigsend " .. ok)
end

function commands.luamem(ws)
  collectgarbage("collect")
  collectgarbage("collect")
  ws:send(("luamem %d"):format(collectgarbage("count")))
end

function commands.close(ws, code, ...)
  local reason = select("#", ...) > 0 and table.concat({ ... }, " ") or nil
  ws:close(tonumber(code), reason)
end

function commands.ping(ws, data)
  ws:ping(data)
end

function commands.send_to(ws, id, ...)
  local target = all[tonumber(id)]
  local ok, err = target:send(table.concat({ ... }, " "))
  ws:send("send_to " .. tostring(ok) .. " " .. tostring(err))
end

function commands.events(ws, id)
  ws:send(dump(events[tonumber(id)] or {}))
end

function commands.flood_result(ws, id)
  ws:send(dump(floods[tonumber(id)] or {}))
end

function commands.data_set(ws, k, v)
  ws.data[k] = v
  ws:send("ok")
end

function commands.data_get(ws, k)
  ws:send(tostring(ws.data[k]))
end

function commands.data_replace(ws)
  ws.data = { replaced = "yes" }
  ws:send("ok")
end

function commands.failed_open(ws)
  ws:send(tostring(failed_open))
end

function commands.q(ws)
  quiet[ws.id] = (quiet[ws.id] or 0) + 1
end

function commands.qcount(ws)
  ws:send(tostring(quiet[ws.id] or 0))
end

function commands.log_info(ws, ...)
  moonwire.log.info(...)
  ws:send("logged")
end

function commands.log_warn(ws, ...)
  moonwire.log.warn(...)
  ws:send("logged")
end

-- ws:send off its fast path: a number is sent as its text, a truthy
-- non-boolean asks for binary, and a wrong object or payload raises the
-- usual "bad argument" errors.
function commands.send_odd(ws)
  ws:send(42)
  ws:send("bin", 1)
  local ok1, e1 = pcall(ws.send, {}, "x")
  local ok2, e2 = pcall(ws.send, ws, {})
  local ok3, e3 = pcall(ws.send, io.stdout, "x")
  local ok4, e4 = pcall(function() ws:send({}) end) -- SEND_ODD_LINE
  ws:send(table.concat({ tostring(ok1), e1, tostring(ok2), e2, tostring(ok3), e3, tostring(ok4), e4 },
    "|"))
end

function commands.binary(ws, ...)
  ws:send(table.concat({ ... }, " "), true)
end

app:websocket("/probe", {
  max_message_size = 16 * 1024 * 1024,

  on_open = function(ws)
    all[ws.id] = ws
    local q = ws.query or {}
    if q.open_sleep then moonwire.sleep(tonumber(q.open_sleep)) end
    if q.open_error then
      failed_open = ws.id
      error("probe open boom") -- PROBE_OPEN_ERROR_LINE
    end
    record(ws, "open")
    if q.open_send then ws:send(q.open_send) end
  end,

  on_message = function(ws, msg, is_binary)
    record(ws, "msg:" .. (#msg > 40 and (msg:sub(1, 40) .. "...") or msg))
    if not is_binary then
      local words = {}
      for w in msg:gmatch("%S+") do words[#words + 1] = w end
      local cmd = commands[words[1] or ""]
      if cmd then
        cmd(ws, unpack(words, 2))
        return
      end
    end
    ws:send(msg, is_binary)
  end,

  on_close = function(ws, code, reason)
    record(ws, "close:" .. tostring(code) .. ":" .. tostring(reason))
    local ok, err = ws:send("too late")
    close_sends[ws.id] = tostring(ok) .. " " .. tostring(err)
    if (ws.query or {}).close_error then error("probe close boom") end
  end,
})

return app
