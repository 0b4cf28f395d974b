--- moonwire.testing: a test kit for moonwire apps, usable from busted.
--
--   local testing = require "moonwire.testing"
--   local t = testing.load("apps/echo/app.lua")      -- or a function returning an app
--   local c = t:connect("/echo")
--   c:send("hi")
--   assert.equal("hi", c:next())
--   t:advance(5)                                      -- virtual clock: timers, sleeps
--   t:close()
--
-- The app runs in the calling Lua state, with the real moonwire library
-- (lua/moonwire/init.lua) over a simulated `moonwire.core`: handlers run on
-- coroutines exactly as the server runs them (one call at a time per
-- connection, messages queued while a handler sleeps, on_close last and
-- once, errors close with 1011), against simulated connections that record
-- what they were sent and how they were closed, and a virtual clock that
-- moves only when the test says so. Nothing touches the network.
-- See docs/testing.md.

local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local setmetatable, getmetatable, error, pcall, rawget = setmetatable, getmetatable, error, pcall, rawget
local concat, remove, sort = table.concat, table.remove, table.sort
local create, resume, yield, status, running =
  coroutine.create, coroutine.resume, coroutine.yield, coroutine.status, coroutine.running
local traceback = debug.traceback

local M = { _VERSION = "scm" }

-- Log levels, as the server numbers them (core/src/log.h).
local DEBUG, INFO, WARN, ERROR = 0, 1, 2, 3
local LEVEL_NAMES = { [DEBUG] = "debug", [INFO] = "info", [WARN] = "warn", [ERROR] = "error" }
local LEVELS = { debug = DEBUG, info = INFO, warn = WARN, error = ERROR }

-- The reason phrases the server uses (core/src/http.c).
local REASONS = {
  [200] = "OK", [201] = "Created", [202] = "Accepted", [204] = "No Content",
  [206] = "Partial Content", [301] = "Moved Permanently", [302] = "Found", [303] = "See Other",
  [304] = "Not Modified", [307] = "Temporary Redirect", [308] = "Permanent Redirect",
  [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Method Not Allowed", [406] = "Not Acceptable", [408] = "Request Timeout",
  [409] = "Conflict", [410] = "Gone", [411] = "Length Required", [412] = "Precondition Failed",
  [413] = "Content Too Large", [414] = "URI Too Long", [415] = "Unsupported Media Type",
  [416] = "Range Not Satisfiable", [417] = "Expectation Failed", [421] = "Misdirected Request",
  [422] = "Unprocessable Content", [426] = "Upgrade Required", [428] = "Precondition Required",
  [429] = "Too Many Requests", [431] = "Request Header Fields Too Large",
  [500] = "Internal Server Error", [501] = "Not Implemented", [502] = "Bad Gateway",
  [503] = "Service Unavailable", [504] = "Gateway Timeout", [505] = "HTTP Version Not Supported",
}

local DEFAULT_MAX_MESSAGE = 1048576
local DEFAULT_MAX_BODY = 1048576
local DEFAULT_HANDSHAKE_TIMEOUT = 10
local SETTLE_LIMIT = 100000 -- steps at one instant before the kit calls it a livelock

-- The token a handler yields through moonwire.sleep; any other yield is the
-- app's own coroutine.yield, which the server treats as an error.
local SLEEP = setmetatable({}, { __tostring = function() return "moonwire.sleep" end })

-- The directory of this file: the kit loads the init.lua beside it, so the
-- library under test is the one the kit was written for.
local THIS_DIR = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$")

-------------------------------------------------------------------------------
-- Small helpers

local function kit_error(msg, level)
  error("moonwire.testing: " .. msg, (level or 1) + 1)
end

local function http_error_body(status_code, why)
  return status_code .. " " .. (REASONS[status_code] or "") .. (why and ": " .. why or "") .. "\n"
end

-- Percent-decoding with '+' as space, as the server decodes queries.
local function decode(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function parse_query(qs)
  local q = {}
  for part in qs:gmatch("[^&]+") do
    local k, v = part:match("^([^=]*)=(.*)$")
    if k then q[decode(k)] = decode(v) else q[decode(part)] = "" end
  end
  return q
end

local function split_target(target, what)
  if type(target) ~= "string" or target:sub(1, 1) ~= "/" then
    kit_error(what .. ": the target must be a path starting with '/', got " .. tostring(target), 3)
  end
  local path, qs = target:match("^([^?#]*)%??([^#]*)")
  return path, qs
end

-- Request headers by lowercase name; a list value is a repeated header,
-- joined with ", " as the server joins them.
local function lower_headers(h, defaults)
  local out = {}
  for k, v in pairs(defaults or {}) do out[k] = v end
  for k, v in pairs(h or {}) do
    if type(k) ~= "string" then kit_error("header names must be strings", 4) end
    if type(v) == "table" then v = concat(v, ", ") end
    out[k:lower()] = tostring(v)
  end
  return out
end

-- Response headers looked up in any case (res.headers["content-type"]).
local HEADERS_MT = {
  __index = function(t, k)
    if type(k) ~= "string" then return nil end
    local lk = k:lower()
    for name, v in pairs(t) do
      if name:lower() == lk then return v end
    end
    return nil
  end,
}

-- The checks the server makes on headers an app adds (core/bind/routes.c).
local FRAMING = { ["content-length"] = true, ["transfer-encoding"] = true, connection = true }
local function check_headers(h, fn, argn)
  local out = setmetatable({}, HEADERS_MT)
  if h == nil then return out end
  if type(h) ~= "table" then
    error("bad argument #" .. argn .. " to '" .. fn .. "' (table expected, got " .. type(h) .. ")", 3)
  end
  for name, value in pairs(h) do
    if type(name) ~= "string" or (type(value) ~= "string" and type(value) ~= "number") then
      error("response headers must map names to strings", 3)
    end
    value = tostring(value)
    if name == "" then error("response header names must not be empty", 3) end
    if name:find("[^%w!#$%%&'*+%-.^_`|~]") then
      error("response header name '" .. name .. "' is not a token", 3)
    end
    if value:find("[%z\1-\8\10-\31]") then
      error("response header '" .. name .. "' has a control character in its value", 3)
    end
    if FRAMING[name:lower()] then
      error("response header '" .. name .. "' is set by the server, not by the app", 3)
    end
    out[name] = value
  end
  return out
end

local function has_header(h, name)
  name = name:lower()
  for k in pairs(h) do if k:lower() == name then return true end end
  return false
end

-- RFC 3629 UTF-8, as strict as the server's validator (no overlongs, no
-- surrogates, nothing above U+10FFFF).
local function valid_utf8(s)
  if not s:find("[\128-\255]") then return true end
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    if c < 0x80 then
      i = i + 1
    else
      local len, lo, hi
      if c >= 0xC2 and c <= 0xDF then len, lo, hi = 2, 0x80, 0xBF
      elseif c == 0xE0 then len, lo, hi = 3, 0xA0, 0xBF
      elseif (c >= 0xE1 and c <= 0xEC) or c == 0xEE or c == 0xEF then len, lo, hi = 3, 0x80, 0xBF
      elseif c == 0xED then len, lo, hi = 3, 0x80, 0x9F
      elseif c == 0xF0 then len, lo, hi = 4, 0x90, 0xBF
      elseif c >= 0xF1 and c <= 0xF3 then len, lo, hi = 4, 0x80, 0xBF
      elseif c == 0xF4 then len, lo, hi = 4, 0x80, 0x8F
      else return false end
      if i + len - 1 > n then return false end
      local c2 = s:byte(i + 1)
      if c2 < lo or c2 > hi then return false end
      for j = i + 2, i + len - 1 do
        local b = s:byte(j)
        if b < 0x80 or b > 0xBF then return false end
      end
      i = i + len
    end
  end
  return true
end

local function close_code_valid(code)
  return (code >= 1000 and code <= 1003) or (code >= 1007 and code <= 1014)
    or (code >= 3000 and code <= 4999)
end

-- luaL_checklstring: strings, and numbers as strings.
local function check_string(v, argn, fn)
  local tv = type(v)
  if tv == "string" then return v end
  if tv == "number" then return tostring(v) end
  error("bad argument #" .. argn .. " to '" .. fn .. "' (string expected, got "
    .. (v == nil and "no value" or tv) .. ")", 3)
end

-------------------------------------------------------------------------------
-- The server side of a connection: the `ws` object handlers get.
--
-- A ws is a proxy; its state lives in `boxes` (weak keys), so a handler can
-- read and assign only what the real userdata allows.

local boxes = setmetatable({}, { __mode = "k" })

local WS = {}   -- methods

local function check_ws(ws, fn)
  local c = boxes[ws]
  if not c or c.kind ~= "ws" then
    error("bad argument #1 to '" .. fn .. "' (moonwire.ws expected, got "
      .. (ws == nil and "no value" or type(ws)) .. ")", 3)
  end
  return c
end

local WS_MT = { __name = "moonwire.ws" }

WS_MT.__index = function(ws, k)
  local m = WS[k]
  if m ~= nil then return m end
  local c = boxes[ws]
  if k == "id" then return c.id end
  if k == "data" then
    if c.ws_data == nil then c.ws_data = {} end
    return c.ws_data
  end
  if c.finished then return nil end
  if k == "remote_addr" then return c.remote_addr end
  if k == "remote_port" then return c.remote_port end
  if k == "path" then return c.path end
  if k == "query_string" then return c.query_string end
  if k == "query" then return c.query end
  if k == "headers" then return c.request_headers end
  if k == "params" then return c.params end
  if k == "closed" then return c.state ~= "open" end
  if k == "buffered" then return 0 end
  if k == "dropped" then return 0 end
  return nil
end

WS_MT.__newindex = function(ws, k, v)
  local c = boxes[ws]
  if k ~= "data" then
    error("ws." .. tostring(k) .. " is read-only; keep per-connection state in ws.data", 2)
  end
  c.ws_data = v
end

WS_MT.__tostring = function(ws)
  local c = boxes[ws]
  return "moonwire.ws(" .. c.id .. (c.finished and ", finished" or "") .. ")"
end

function WS.send(ws, data, binary)
  local c = check_ws(ws, "send")
  data = check_string(data, 2, "send")
  if c.finished or c.state ~= "open" then return nil, "closed" end
  c.sent[#c.sent + 1] = { data = data, binary = binary and true or false }
  return true
end

function WS.close(ws, code, reason)
  local c = check_ws(ws, "close")
  if code == nil then code = 1000 end
  if type(code) ~= "number" then
    error("bad argument #2 to 'close' (number expected, got " .. type(code) .. ")", 2)
  end
  reason = reason == nil and "" or check_string(reason, 3, "close")
  if not close_code_valid(code) then
    error("bad argument #2 to 'close' (close code must be 1000-1003, 1007-1014 or 3000-4999)", 2)
  end
  if #reason > 123 then
    error("bad argument #3 to 'close' (close reason is longer than 123 bytes)", 2)
  end
  if c.finished or c.state ~= "open" then return nil, "closed" end
  c.kit:_server_close(c, code, reason)
  return true
end

function WS.ping(ws, data)
  local c = check_ws(ws, "ping")
  data = data == nil and "" or check_string(data, 2, "ping")
  if #data > 125 then error("bad argument #2 to 'ping' (ping payload is longer than 125 bytes)", 2) end
  if c.finished or c.state ~= "open" then return nil, "closed" end
  c.pings[#c.pings + 1] = data
  return true
end

function WS.subscribe(ws, topic)
  local c = check_ws(ws, "subscribe")
  topic = check_string(topic, 2, "subscribe")
  if c.finished or c.state ~= "open" then return nil, "closed" end
  return c.kit:_subscribe(c, topic)
end

function WS.unsubscribe(ws, topic)
  local c = check_ws(ws, "unsubscribe")
  topic = check_string(topic, 2, "unsubscribe")
  if c.finished then return false end
  return c.kit:_unsubscribe(c, topic)
end

-------------------------------------------------------------------------------
-- The client side of a connection: what the test holds.

local Conn = {}
local CONN_MT = { __name = "moonwire.testing.connection" }
CONN_MT.__index = function(c, k)
  if k == "data" then return c.ws.data end -- ws.data, live
  return Conn[k]
end
CONN_MT.__tostring = function(c)
  return "moonwire.testing.connection(" .. c.id .. " " .. c.target .. ", " .. c.state .. ")"
end

--- c:send(data [, binary]): the client sends a message. Returns true, or
-- nil, "closed" when the server no longer reads messages from it.
function Conn:send(data, binary)
  local kit = self.kit
  kit:_check_open()
  if type(data) ~= "string" then kit_error("c:send(data): data must be a string, got " .. type(data), 2) end
  binary = binary and true or false
  if self.state == "upgrading" then
    -- Frames right behind the request wait until the hook has decided.
    self.inbox[#self.inbox + 1] = { kind = "message", data = data, binary = binary }
    return true
  end
  if self.state ~= "open" then return nil, "closed" end
  if #data > self.max_message_size then
    kit:_server_close(self, 1009, "message too big")
  elseif not binary and not valid_utf8(data) then
    kit:_server_close(self, 1007, "text message is not UTF-8")
  else
    self.inbox[#self.inbox + 1] = { kind = "message", data = data, binary = binary }
    kit:_pump(self)
  end
  kit:_settle()
  return true
end

--- c:send_binary(data): the client sends a binary message.
function Conn:send_binary(data)
  return self:send(data, true)
end

--- c:close([code [, reason]]): the client starts the close handshake; the
-- server answers it and on_close gets the client's code (1005 without one).
function Conn:close(code, reason)
  local kit = self.kit
  kit:_check_open()
  if code ~= nil and (type(code) ~= "number" or not close_code_valid(code)) then
    kit_error("c:close(code): a client may send 1000-1003, 1007-1014 or 3000-4999, got "
      .. tostring(code), 2)
  end
  if reason ~= nil and code == nil then kit_error("c:close(code, reason): a reason needs a code", 2) end
  if self.state == "open" then
    self.closed = { code = code or 1005, reason = reason or "", by = "client" }
    kit:_teardown(self)
  elseif self.state == "upgrading" then
    self:drop()
    return
  end
  kit:_settle()
end

--- c:drop(): the TCP connection goes away without a close frame; on_close
-- gets 1006.
function Conn:drop()
  local kit = self.kit
  kit:_check_open()
  if self.state == "upgrading" then
    -- No response ever reaches it: the hook's accept or refuse answers nil, "closed".
    self.state = "closed"
    self.closed = { code = 1006, reason = "", by = "drop" }
    self.inbox = {}
  elseif self.state == "open" or self.state == "closing" then
    if not self.closed then self.closed = { code = 1006, reason = "", by = "drop" } end
    kit:_teardown(self)
  end
  kit:_settle()
end

--- c:next(): the oldest message sent to the client that c:next has not
-- returned yet: data, is_binary; or nil.
function Conn:next()
  local m = self.sent[self.read + 1]
  if not m then return nil end
  self.read = self.read + 1
  return m.data, m.binary
end

--- c:last(): the latest message sent to the client: data, is_binary; or nil.
function Conn:last()
  local m = self.sent[#self.sent]
  if not m then return nil end
  return m.data, m.binary
end

--- c:messages(): the data of every message sent to the client so far.
function Conn:messages()
  local out = {}
  for i, m in ipairs(self.sent) do out[i] = m.data end
  return out
end

--- c:subscribed(topic): is the connection subscribed to topic?
function Conn:subscribed(topic)
  return self.subscriptions[topic] == true
end

-------------------------------------------------------------------------------
-- The kit

local Kit = {}
Kit.__index = Kit
Kit.__name = "moonwire.testing"

function Kit:_check_open()
  if self.finished then kit_error("this test kit was closed (t:close())", 3) end
end

function Kit:_log(level, msg)
  self.logs[#self.logs + 1] = { level = LEVEL_NAMES[level] or tostring(level), message = msg }
  if self.print_logs then
    io.stderr:write("[", LEVEL_NAMES[level] or tostring(level), "] ", msg, "\n")
  end
end

-- Events on the virtual clock: timer ticks, sleeps that end, deadlines.
function Kit:_at(due, ev)
  self.seq = self.seq + 1
  ev.due, ev.seq = due, self.seq
  self.events[#self.events + 1] = ev
  return ev
end

function Kit:_unschedule(ev)
  for i, e in ipairs(self.events) do
    if e == ev then remove(self.events, i); return true end
  end
  return false
end

-- Takes the earliest event due at or before `limit` (ties: first scheduled).
function Kit:_take_event(limit)
  local best, bi
  for i, e in ipairs(self.events) do
    if e.due <= limit and (not best or e.due < best.due or (e.due == best.due and e.seq < best.seq)) then
      best, bi = e, i
    end
  end
  if best then remove(self.events, bi) end
  return best
end

-- Runs fn(...) as a handler call on a fresh coroutine. `call` holds conn,
-- kind and on_done(failed). Returns true if the call is now suspended.
function Kit:_run(call, fn, ...)
  call.co = create(fn)
  return self:_resume(call, ...)
end

function Kit:_resume(call, ...)
  local prev = self.running
  self.running = call
  local ok, a, b = resume(call.co, ...)
  self.running = prev
  if not ok then
    local msg = a
    if type(msg) == "number" then msg = tostring(msg) end
    if type(msg) ~= "string" then msg = "(error is not a string)" end
    self:_handler_error(call, traceback(call.co, msg), msg)
    call.on_done(true)
    return false
  end
  if status(call.co) == "dead" then
    call.on_done(false)
    return false
  end
  if a == SLEEP then
    self:_at(self.clock + b, { kind = "wake", call = call })
    return true
  end
  local msg = "a handler yielded outside a moonwire call (coroutine.yield in a "
    .. "handler suspends it forever; use moonwire.sleep)"
  self:_handler_error(call, msg, msg)
  call.on_done(true)
  return false
end

-- A handler failed: recorded and logged; the connection closes with 1011
-- (an upgrade hook answers 500), as the server does.
function Kit:_handler_error(call, trace, msg)
  local c = call.conn
  local kind = call.kind
  self.errors[#self.errors + 1] = { kind = kind, message = msg, traceback = trace,
    connection = c and c.id }
  if c then
    self:_log(ERROR, kind .. " error (connection " .. c.id .. "): " .. trace)
  else
    self:_log(ERROR, "timer error: " .. trace)
  end
  if c and c.kind == "ws" then
    if c.state == "open" then
      self:_server_close(c, 1011, "internal error")
    elseif c.state == "upgrading" then
      self:_refuse(c, 500, nil, nil, "the upgrade hook failed")
    end
  end
end

-- Runs what is ready now: deferred steps (the client's answers to closes,
-- on_open), then events due at the current instant, until nothing is left.
function Kit:_settle()
  if self.settling then return end
  self.settling = true
  local ok, err = pcall(function()
    local steps = 0
    while true do
      local step = remove(self.ready, 1)
      if step then
        step()
      else
        local ev = self:_take_event(self.clock)
        if not ev then break end
        self:_fire(ev)
      end
      steps = steps + 1
      if steps > SETTLE_LIMIT then
        kit_error("the app keeps scheduling work at the same instant (a loop of moonwire.sleep(0)?)")
      end
    end
  end)
  self.settling = false
  if not ok then error(err, 0) end
end

function Kit:_defer(fn)
  self.ready[#self.ready + 1] = fn
end

function Kit:_fire(ev)
  if ev.kind == "wake" then
    self:_resume(ev.call)
  elseif ev.kind == "timer" then
    self:_tick(ev.timer, ev.due)
  else
    ev.fn()
  end
end

-------------------------------------------------------------------------------
-- Timers (app:every, app:after)

local Timer = {}
local TIMER_MT = { __index = Timer, __name = "moonwire.timer" }
TIMER_MT.__tostring = function(tm)
  return ("moonwire.timer(%s %f s%s)"):format(tm.repeating and "every" or "after", tm.after,
    tm.armed and "" or ", cancelled or done")
end

--- timer:cancel() -> true if it was armed
function Timer:cancel()
  if getmetatable(self) ~= TIMER_MT then
    error("bad argument #1 to 'cancel' (moonwire.timer expected, got " .. type(self) .. ")", 2)
  end
  local armed = self.armed
  if armed then
    self.armed = false
    if self.event then self.kit:_unschedule(self.event); self.event = nil end
  end
  return armed
end

function Kit:_start_timer(tm)
  tm.event = self:_at(self.clock + tm.after, { kind = "timer", timer = tm })
end

function Kit:_tick(tm, due)
  tm.event = nil
  if not tm.armed then return end
  if tm.repeating then
    tm.event = self:_at(due + tm.after, { kind = "timer", timer = tm })
    -- A run that still sleeps makes the tick skip, as in the server.
    if tm.running then return end
  else
    tm.armed = false
  end
  tm.runs = tm.runs + 1
  local call = { kind = "timer", on_done = function() tm.running = false end }
  if self:_run(call, tm.fn) then tm.running = true end
end

-------------------------------------------------------------------------------
-- Pub/sub

function Kit:_subscribe(c, topic)
  if c.subscriptions[topic] then return false end
  local subs = self.topics[topic]
  if not subs then
    subs = {}
    self.topics[topic] = subs
  end
  subs[#subs + 1] = c
  c.subscriptions[topic] = true
  return true
end

function Kit:_unsubscribe(c, topic)
  if not c.subscriptions[topic] then return false end
  c.subscriptions[topic] = nil
  local subs = self.topics[topic]
  for i, s in ipairs(subs) do
    if s == c then remove(subs, i); break end
  end
  if #subs == 0 then self.topics[topic] = nil end
  return true
end

function Kit:_publish(topic, data, binary)
  local n = 0
  for _, c in ipairs(self.topics[topic] or {}) do
    if c.state == "open" then
      c.sent[#c.sent + 1] = { data = data, binary = binary and true or false }
      n = n + 1
    end
  end
  return n
end

-------------------------------------------------------------------------------
-- Connections: the order guarantee, closing, on_close once.

-- Runs what waits in c's inbox while no handler of c runs or sleeps.
function Kit:_pump(c)
  if c.pumping then return end
  c.pumping = true
  while not c.busy and c.inbox[1] do
    local ev = remove(c.inbox, 1)
    if ev.kind == "message" then
      local fn = c.route.on_message
      if fn then
        c.busy = true
        self:_run(c.calls.handler, fn, c.ws, ev.data, ev.binary)
      end
    elseif ev.kind == "open" then
      local fn = c.route.on_open
      if fn then
        c.busy = true
        self:_run(c.calls.handler, fn, c.ws)
      end
    else -- close
      local fn = c.route.on_close
      c.on_close_runs = c.on_close_runs + 1
      if fn then
        c.busy = true
        self:_run(c.calls.close, fn, c.ws, ev.code, ev.reason)
      else
        c.finished = true
      end
    end
  end
  c.pumping = false
end

-- The server closes c (ws:close, a handler error, a protocol error): its
-- close frame goes out now, the simulated client answers it on the next
-- turn of the loop, and then the connection ends.
function Kit:_server_close(c, code, reason)
  if c.state ~= "open" then return end
  c.state = "closing"
  c.closed = { code = code, reason = reason, by = "server" }
  self:_defer(function() self:_teardown(c) end)
end

-- The one teardown path: subscriptions end, on_close is owed (after the
-- messages already in the inbox).
function Kit:_teardown(c)
  if c.state == "closed" then return end
  c.state = "closed"
  for topic in pairs(c.subscriptions) do self:_unsubscribe(c, topic) end
  if not c.closed then c.closed = { code = 1006, reason = "", by = "drop" } end
  if c.opened and not c.close_owed then
    c.close_owed = true
    c.inbox[#c.inbox + 1] = { kind = "close", code = c.closed.code, reason = c.closed.reason }
    self:_pump(c)
  end
end

function Kit:_refuse(c, code, body, headers, why) -- luacheck: ignore self
  c.state = "refused"
  c.accepted = false
  c.status = code
  c.body = body or http_error_body(code, why)
  c.headers = headers or setmetatable({}, HEADERS_MT)
  if not has_header(c.headers, "Content-Type") then
    c.headers["Content-Type"] = "text/plain; charset=utf-8"
  end
  c.inbox = {}
end

-- Request fields the server drops once a connection is upgraded.
local SPENT_HEADERS = { "upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
  "sec-websocket-extensions" }

function Kit:_accept(c, protocol, headers)
  c.state = "open"
  c.accepted = true
  c.opened = true
  c.status = 101
  c.protocol = protocol
  c.headers = headers or setmetatable({}, HEADERS_MT)
  if protocol then c.headers["Sec-WebSocket-Protocol"] = protocol end
  -- As the server: the handshake's own fields are gone from ws.headers.
  for _, spent in ipairs(SPENT_HEADERS) do c.request_headers[spent] = nil end
  -- on_open before anything the client sent behind its request.
  local early = c.inbox
  c.inbox = { { kind = "open" } }
  for _, ev in ipairs(early) do c.inbox[#c.inbox + 1] = ev end
  self:_defer(function() self:_pump(c) end)
end

-------------------------------------------------------------------------------
-- The simulated moonwire.core

local function make_core(kit)
  local core = {
    DEBUG = DEBUG, INFO = INFO, WARN = WARN, ERROR = ERROR,
    version = "moonwire.testing",
    worker = kit.worker, workers = kit.workers,
  }

  function core.sleep(s)
    if type(s) == "string" then s = tonumber(s) end
    if type(s) ~= "number" then
      error("bad argument #1 to 'sleep' (number expected, got " .. type(s) .. ")", 2)
    end
    if (s ~= s or s < 0) then error("bad argument #1 to 'sleep' (seconds must be a number >= 0)", 2) end
    local call = kit.running
    if not call or call.co ~= running() then
      error("moonwire.sleep can only be called inside a handler (on_open, on_message, on_close), "
        .. "not while the app file loads or from a coroutine of your own", 2)
    end
    yield(SLEEP, s)
  end

  function core.now() return kit.clock end

  -- Outbound sockets need the server's loop; the kit has no network.
  function core.tcp()
    error("moonwire.tcp is not available in moonwire.testing (the kit simulates connections "
      .. "but has no event loop for outbound sockets); test outbound I/O against the real "
      .. "server (docs/clients.md), or pass a fake client to your handlers", 2)
  end

  function core.log(level, msg) if level >= kit.log_level then kit:_log(level, msg) end end

  function core.log_enabled(level) return level >= kit.log_level end

  function core.timer(seconds, repeating, fn)
    if type(seconds) ~= "number" or seconds ~= seconds or seconds < 0 or (repeating and seconds <= 0) then
      error("bad argument #1 to 'timer' (seconds out of range)", 2)
    end
    if type(fn) ~= "function" then
      error("bad argument #3 to 'timer' (function expected, got " .. type(fn) .. ")", 2)
    end
    local tm = setmetatable({ kit = kit, after = seconds, repeating = repeating and true or false,
      fn = fn, armed = true, runs = 0 }, TIMER_MT)
    kit.timers[#kit.timers + 1] = tm
    -- Timers made while the app file loads start with the server.
    if kit.loading then kit.pending_timers[#kit.pending_timers + 1] = tm else kit:_start_timer(tm) end
    return tm
  end

  local function running_only(what)
    if kit.loading then
      error(what .. " works only while the server runs (in a handler or a timer), not while "
        .. "the app file loads", 3)
    end
  end

  function core.publish(topic, data, binary)
    topic = check_string(topic, 1, "publish")
    data = check_string(data, 2, "publish")
    running_only("app:publish")
    return kit:_publish(topic, data, binary)
  end

  function core.subscribers(topic)
    topic = check_string(topic, 1, "subscribers")
    running_only("app:subscribers")
    return #(kit.topics[topic] or {})
  end

  local function pending(c)
    return c and c.kind == "ws" and c.state == "upgrading"
  end

  function core.accept(ws, protocol, headers)
    local c = check_ws(ws, "accept")
    local h = check_headers(headers, "accept", 3)
    if not pending(c) then return nil, "closed" end
    if protocol ~= nil then
      local offered = false
      for _, p in ipairs(c.offered) do offered = offered or p == protocol end
      if not offered then
        error("req.protocol '" .. tostring(protocol) .. "' was not offered by the client "
          .. "(pick one of req.protocols, or leave it nil)", 2)
      end
    end
    kit:_accept(c, protocol, h)
    return true
  end

  function core.refuse(ws, code, body, headers)
    local c = check_ws(ws, "refuse")
    if type(code) ~= "number" or code < 300 or code > 599 then
      error("bad argument #2 to 'refuse' (an upgrade hook refuses with a status from 300 to 599)", 2)
    end
    if body ~= nil then body = check_string(body, 3, "refuse") end
    local h = check_headers(headers, "refuse", 4)
    if not pending(c) then return nil, "closed" end
    kit:_refuse(c, code, body, h)
    return true
  end

  function core.respond(conn, code, headers, body)
    local r = boxes[conn]
    if not r or r.kind ~= "http" then
      error("bad argument #1 to 'respond' (moonwire.ws expected)", 2)
    end
    if type(code) ~= "number" or code < 200 or code > 599 then
      error("bad argument #2 to 'respond' (status must be from 200 to 599)", 2)
    end
    body = check_string(body, 4, "respond")
    local h = check_headers(headers, "respond", 3)
    if r.responded then return nil, "closed" end
    kit:_http_answer(r, code, h, body)
    return true
  end

  function core.realpath(dir)
    local ok, lfs = pcall(require, "lfs")
    if ok and type(lfs) == "table" and lfs.attributes then
      local mode = lfs.attributes(dir, "mode")
      if not mode then return nil, "No such file or directory" end
      if mode ~= "directory" then return nil, "not a directory" end
    end
    return dir
  end

  return core
end

-------------------------------------------------------------------------------
-- HTTP

function Kit:_http_answer(r, code, headers, body) -- luacheck: ignore self
  r.responded = true
  local res = r.response
  local bodiless = code == 204 or code == 304
  res.status = code
  res.headers = headers
  if not bodiless then headers["Content-Length"] = tostring(#body) end
  res.body = (bodiless or r.head) and "" or body
  res.pending = nil
end

--- t:request(method, target [, opts]) -> { status, headers, body }
-- Runs a plain HTTP request through the app's routes. opts: body, headers,
-- remote_addr, remote_port. When the handler sleeps, the response fills in
-- as the clock advances (res.pending is true until then).
function Kit:request(method, target, opts)
  self:_check_open()
  if type(method) ~= "string" then kit_error("t:request(method, target): method must be a string", 2) end
  opts = opts or {}
  method = method:upper()
  local path, qs = split_target(target, "t:request")
  local body = opts.body or ""
  if type(body) ~= "string" then kit_error("t:request: opts.body must be a string", 2) end
  local res = { headers = setmetatable({}, HEADERS_MT), pending = true }
  local r = { kind = "http", response = res, head = method == "HEAD" }
  local function fail(code, extra, why)
    local h = setmetatable({ ["Content-Type"] = "text/plain; charset=utf-8" }, HEADERS_MT)
    for k, v in pairs(extra or {}) do h[k] = v end
    self:_http_answer(r, code, h, http_error_body(code, why))
    return res
  end
  local max_body = self.app.options.max_body_size or DEFAULT_MAX_BODY
  if #body > max_body then return fail(413, nil, "request body larger than max_body_size") end
  local ok, index, params = pcall(self.app._match_http, self.app, method, path)
  if not ok then
    self:_log(ERROR, "HTTP route lookup failed: " .. tostring(index))
    return fail(500)
  end
  if not index then
    if type(params) == "string" then
      return fail(405, { Allow = params }, "method not allowed for this path")
    elseif self.app:_match(path) then
      return fail(426, { Upgrade = "websocket", ["Sec-WebSocket-Version"] = "13" },
        "this path speaks WebSocket")
    end
    return fail(404, nil, "no route for this path")
  end
  local route = self.app.http_routes[index]
  if route.root then
    kit_error("static routes are not simulated: " .. method .. " " .. path .. " is served by "
      .. "app:static('" .. route.prefix .. "', ...) from " .. route.root
      .. "; test static files against the real server", 2)
  end
  self.next_port = self.next_port + 1
  local req = {
    method = method, path = path, query_string = qs, query = parse_query(qs),
    headers = lower_headers(opts.headers, { host = "localhost" }),
    params = type(params) == "table" and params or {},
    remote_addr = opts.remote_addr or "127.0.0.1", remote_port = opts.remote_port or self.next_port,
    route = route.path, body = body,
  }
  local conn = setmetatable({}, WS_MT)
  self.next_id = self.next_id + 1
  r.id = self.next_id
  boxes[conn] = r
  local call = { kind = "http handler", conn = r, on_done = function(failed)
    r.finished = true
    if not r.responded then
      local code = failed and 500 or 204
      self:_http_answer(r, code, setmetatable({ ["Content-Type"] = "text/plain; charset=utf-8" },
        HEADERS_MT), http_error_body(code))
    end
  end }
  self:_run(call, self.moonwire._http, route.handler, req, conn)
  self:_settle()
  return res
end

-------------------------------------------------------------------------------
-- WebSocket connections

local function origin_allowed(route, headers)
  local o = headers.origin
  if not o then return true end
  local allowed = route.origins
  if allowed == "*" then return true end
  if type(allowed) == "table" then
    for _, a in ipairs(allowed) do
      if type(a) == "string" and a:lower() == o:lower() then return true end
    end
    return false
  end
  local hostport = o:match("^[^:]*://(.+)$")
  return hostport ~= nil and headers.host ~= nil and hostport:lower() == headers.host:lower()
end

local function offered_protocols(headers)
  local list = {}
  for p in (headers["sec-websocket-protocol"] or ""):gmatch("[^%s,]+") do list[#list + 1] = p end
  return list
end

--- t:connect(target [, opts]) -> connection
-- Opens a simulated WebSocket: route matching, the origin policy,
-- middleware and the upgrade hook, then on_open. opts: headers (names in
-- any case), remote_addr, remote_port, protocols (a list, sent as
-- Sec-WebSocket-Protocol). A refused upgrade returns a connection with
-- accepted == false and status, body, headers of the response.
function Kit:connect(target, opts)
  self:_check_open()
  opts = opts or {}
  local path, qs = split_target(target, "t:connect")
  self.next_id = self.next_id + 1
  self.next_port = self.next_port + 1
  local defaults = {
    host = "localhost", upgrade = "websocket", connection = "Upgrade",
    ["sec-websocket-version"] = "13", ["sec-websocket-key"] = "dGhlIHNhbXBsZSBub25jZQ==",
  }
  if opts.protocols then defaults["sec-websocket-protocol"] = concat(opts.protocols, ", ") end
  local c = setmetatable({
    kit = self, kind = "ws", id = self.next_id, target = target, state = "handshake",
    path = path, query_string = qs, query = parse_query(qs),
    request_headers = lower_headers(opts.headers, defaults),
    remote_addr = opts.remote_addr or "127.0.0.1", remote_port = opts.remote_port or self.next_port,
    sent = {}, read = 0, pings = {}, subscriptions = {}, inbox = {},
    on_close_runs = 0, accepted = nil,
  }, CONN_MT)
  c.offered = offered_protocols(c.request_headers)
  c.ws = setmetatable({}, WS_MT)
  boxes[c.ws] = c
  -- Two reusable call records: handlers, and on_close (which finishes the ws).
  c.calls = {
    handler = { kind = "handler", conn = c, on_done = function()
      c.busy = false
      self:_pump(c)
    end },
    close = { kind = "on_close", conn = c, on_done = function()
      c.finished = true
      c.busy = false
      self:_pump(c)
    end },
  }
  self.connections[#self.connections + 1] = c

  local ok, index, params = pcall(self.app._match, self.app, path)
  if not ok then self:_log(ERROR, "route lookup failed: " .. tostring(index)) end
  if not ok or not index then
    self:_refuse(c, 404, nil, nil, "no route for this path")
    c.finished = true
    return c
  end
  local route = self.app.routes[index]
  c.route = route
  c.max_message_size = route.max_message_size or self.app.options.max_message_size
    or DEFAULT_MAX_MESSAGE
  if not origin_allowed(route, c.request_headers) then
    self:_refuse(c, 403, nil, nil, "origin not allowed")
    c.finished = true
    return c
  end
  local chosen
  for _, p in ipairs(route.protocols or {}) do
    for _, o in ipairs(c.offered) do
      if p == o and not chosen then chosen = p end
    end
  end
  c.params = type(params) == "table" and params or {}
  c.state = "upgrading"
  if not route.upgrade and #self.app.middleware == 0 then
    self:_accept(c, chosen, nil)
    self:_settle()
    return c
  end
  local req = {
    method = "GET", path = path, query_string = qs, query = parse_query(qs),
    headers = lower_headers(c.request_headers), params = c.params,
    remote_addr = c.remote_addr, remote_port = c.remote_port,
    protocols = c.offered, protocol = chosen, response_headers = {},
    route = route.path, origin = c.request_headers.origin, route_index = index,
  }
  local call = { kind = "upgrade hook", conn = c, on_done = function()
    if not c.opened then c.finished = true end
  end }
  if self:_run(call, self.moonwire._upgrade, self.app, req, c.ws) then
    local limit = self.app.options.handshake_timeout or DEFAULT_HANDSHAKE_TIMEOUT
    self:_at(self.clock + limit, { kind = "fn", fn = function()
      if c.state == "upgrading" then
        self:_refuse(c, 408, nil, nil, "the upgrade request did not arrive in time")
      end
    end })
  end
  self:_settle()
  return c
end

-------------------------------------------------------------------------------
-- The clock

--- t:now(): the virtual clock (what moonwire.now() returns).
function Kit:now()
  return self.clock
end

--- t:advance(seconds): moves the clock forward, running every timer tick
-- and waking every sleeping handler that falls due, in time order, each at
-- its own instant.
function Kit:advance(seconds)
  self:_check_open()
  if type(seconds) ~= "number" or seconds ~= seconds or seconds < 0 then
    kit_error("t:advance(seconds): seconds must be a number >= 0, got " .. tostring(seconds), 2)
  end
  local target = self.clock + seconds
  self:_settle()
  while true do
    local ev = self:_take_event(target)
    if not ev then break end
    if ev.due > self.clock then self.clock = ev.due end
    self:_fire(ev)
    self:_settle()
  end
  self.clock = target
  self:_settle()
end

--- t:next_due(): when the next timer tick or wake-up is due, or nil.
function Kit:next_due()
  local due
  for _, e in ipairs(self.events) do
    if not due or e.due < due then due = e.due end
  end
  return due
end

-------------------------------------------------------------------------------
-- Pub/sub, logs, errors, state

--- t:publish(topic, data [, binary]): what app:publish does; returns how
-- many connections it was queued for.
function Kit:publish(topic, data, binary)
  self:_check_open()
  if type(topic) ~= "string" or type(data) ~= "string" then
    kit_error("t:publish(topic, data): both must be strings", 2)
  end
  local n = self:_publish(topic, data, binary)
  self:_settle()
  return n
end

--- t:subscribers(topic): how many connections are subscribed to topic.
function Kit:subscribers(topic)
  return #(self.topics[topic] or {})
end

--- t:logged(text [, level]): the first log line containing text (plain),
-- at level if given ("debug", "info", "warn", "error"); or nil.
function Kit:logged(text, level)
  for _, l in ipairs(self.logs) do
    if (not level or l.level == level) and l.message:find(text, 1, true) then return l.message end
  end
  return nil
end

--- t:assert_no_errors(): raises with the first recorded handler error.
function Kit:assert_no_errors()
  local e = self.errors[1]
  if e then
    error("moonwire.testing: " .. #self.errors .. " handler error(s); the first, in "
      .. (e.connection and ("the " .. e.kind .. " of connection " .. e.connection) or "a timer")
      .. ":\n" .. e.traceback, 2)
  end
end

--- t:state(name): moonwire.state(name) of the app under test.
function Kit:state(name)
  return self.moonwire.state(name)
end

--- t:shutdown(): what SIGTERM does to open connections: close 1001
-- "server shutting down", then every on_close runs.
function Kit:shutdown()
  self:_check_open()
  for _, c in ipairs(self.connections) do
    if c.state == "open" then self:_server_close(c, 1001, "server shutting down") end
  end
  self:_settle()
end

--- t:close(): cancels every timer and sleeping call (nothing more runs) and
-- puts package.loaded and package.path back as they were before load.
function Kit:close()
  if self.finished then return end
  self.finished = true
  for _, tm in ipairs(self.timers) do tm.armed = false end
  self.events, self.ready = {}, {}
  local loaded = package.loaded
  for name in pairs(self.saved.added) do loaded[name] = nil end
  loaded["moonwire"] = self.saved.moonwire
  loaded["moonwire.core"] = self.saved.core
  package.path = self.saved.path
end

-------------------------------------------------------------------------------
-- Loading an app

local function load_moonwire()
  local chunk = THIS_DIR and loadfile(THIS_DIR .. "/init.lua")
  if chunk then
    local mod = chunk("moonwire")
    package.loaded["moonwire"] = mod
    return mod
  end
  return require "moonwire"
end

--- testing.load(app [, options]) -> kit
-- app: the path of an app file, or a function that builds and returns an
-- app (it runs with the simulated core in place, so it may require
-- "moonwire"). options:
--   start_time  the virtual clock at the start (default 1700000000)
--   log_level   "debug" (default: every line is kept), "info", "warn", "error"
--   print_logs  also write log lines to stderr
--   worker, workers  what moonwire.worker and moonwire.workers say
--               (default 1 and 1: the app runs as the only worker)
function M.load(app, options)
  options = options or {}
  if type(app) ~= "string" and type(app) ~= "function" then
    kit_error("testing.load(app): app must be an app file path or a function returning an app, got "
      .. type(app), 2)
  end
  local level = LEVELS[options.log_level or "debug"]
  if not level then kit_error("testing.load: log_level must be debug, info, warn or error", 2) end
  local workers = options.workers or 1
  local worker = options.worker or 1
  if type(workers) ~= "number" or workers < 1 or workers % 1 ~= 0
      or type(worker) ~= "number" or worker < 1 or worker > workers or worker % 1 ~= 0 then
    kit_error("testing.load: worker and workers must be whole numbers with 1 <= worker <= workers", 2)
  end
  local kit = setmetatable({
    clock = options.start_time or 1700000000,
    log_level = level, print_logs = options.print_logs,
    worker = worker, workers = workers,
    events = {}, seq = 0, ready = {}, timers = {}, pending_timers = {},
    topics = {}, connections = {}, errors = {}, logs = {},
    next_id = 0, next_port = 40000,
  }, Kit)

  -- The app sees a fresh moonwire over the simulated core: init.lua keeps
  -- `core` from its first require, so both leave package.loaded first.
  local before = {}
  for name in pairs(package.loaded) do before[name] = true end
  kit.saved = { added = {}, moonwire = package.loaded["moonwire"],
    core = package.loaded["moonwire.core"], path = package.path }
  local core = make_core(kit)
  if type(app) == "string" then
    core.app_path = app
    local dir = app:match("^(.*)/[^/]*$") or "."
    package.path = dir .. "/?.lua;" .. dir .. "/?/init.lua;" .. package.path
  end
  package.loaded["moonwire"] = nil
  package.loaded["moonwire.core"] = core
  kit.core = core

  kit.loading = true
  local ok, result = pcall(function()
    kit.moonwire = load_moonwire()
    if type(app) == "string" then
      local chunk, err = loadfile(app)
      if not chunk then error(err, 0) end
      return chunk()
    end
    return app()
  end)
  kit.loading = false
  if ok and (type(result) ~= "table" or not rawget(result, "_moonwire_app")) then
    ok, result = false, (type(app) == "string" and app or "the app function")
      .. " did not return an app (end the app file with `return app`)"
  end
  -- What the load added to package.loaded (the app's modules, the rocks it
  -- uses) leaves again with t:close(), so the next load starts afresh.
  for name in pairs(package.loaded) do
    if not before[name] then kit.saved.added[name] = true end
  end
  if not ok then
    kit:close()
    error(type(result) == "string" and result or tostring(result), 0)
  end
  kit.app = result
  for _, tm in ipairs(kit.pending_timers) do
    if tm.armed then kit:_start_timer(tm) end
  end
  kit.pending_timers = {}
  kit:_settle()
  return kit
end

M.REASONS = REASONS

-- Internals, exposed for the kit's own spec.
M._valid_utf8 = valid_utf8

-- Sorted copy of a set's keys: handy for asserting on c.subscriptions.
function M.keys(set)
  local out = {}
  for k in pairs(set) do out[#out + 1] = k end
  sort(out, function(a, b) return tostring(a) < tostring(b) end)
  return out
end

return M
