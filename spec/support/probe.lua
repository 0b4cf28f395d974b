-- Helpers for specs that run spec/apps/probe.lua: asking the app (through an observer
-- connection) what happened to another connection.

local luassert = require "luassert"
local socket = require "socket"
local ws = require "spec.support.ws"

local M = {}

-- Loads a Lua table literal sent by the probe app.
function M.decode(s)
  local fn = assert(loadstring("return " .. s, "=probe reply"))
  setfenv(fn, {})
  return fn()
end

-- Opens a /probe connection and returns it with its server-side ws.id.
function M.open(srv, path, opts)
  local c = ws.open(srv, path or "/probe", opts)
  c:send_text("id")
  c.id = tonumber(c:expect_text())
  return c
end

-- Opens an observer connection: it answers server pings by itself, so it survives
-- heartbeat tests while it waits.
function M.observer(srv)
  local c = M.open(srv)
  c.auto_pong = true
  return c
end

-- The event list ("open", "msg:...", "close:CODE:REASON") of connection `id`.
function M.events(observer, id)
  observer:send_text("events " .. id)
  return M.decode(observer:expect_text())
end

-- Close events of `id` (strings "close:CODE:REASON").
function M.closes(observer, id)
  local out = {}
  for _, e in ipairs(M.events(observer, id)) do
    if e:sub(1, 6) == "close:" then out[#out + 1] = e end
  end
  return out
end

-- Waits (up to `timeout`) until on_close ran for `id`, then waits `settle` more seconds
-- to catch a second call. Returns the list of close events and all events.
function M.wait_closed(observer, id, timeout, settle)
  local deadline = socket.gettime() + (timeout or 3)
  local closes
  repeat
    closes = M.closes(observer, id)
    if #closes > 0 then break end
    socket.sleep(0.02)
  until socket.gettime() > deadline
  if #closes > 0 and (settle or 0.2) > 0 then
    socket.sleep(settle or 0.2)
    closes = M.closes(observer, id)
  end
  return closes, M.events(observer, id)
end

-- Parses "close:CODE:REASON" into code (number or nil) and reason.
function M.parse_close(e)
  local code, reason = e:match("^close:([^:]*):(.*)$")
  return tonumber(code), reason
end

-- Asserts exactly one on_close for `id` (a busted assertion) and returns its
-- code and reason.
function M.one_close(observer, id, timeout)
  local closes, events = M.wait_closed(observer, id, timeout)
  luassert.are.equal(1, #closes, "on_close calls for " .. id .. ": " .. table.concat(events, " | "))
  return M.parse_close(closes[1])
end

return M
