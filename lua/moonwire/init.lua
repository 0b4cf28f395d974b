--- moonwire: the app builder.
-- An app file builds an app with `moonwire.app{options}`, adds routes with
-- `app:websocket(path, handlers)` and returns it; the server (C core) then
-- routes upgrades with `app:_match(path)` and calls the route's handlers.
-- Misuse raises with `error(msg, 2)`, so the message names the app's own line.

local core = require "moonwire.core"

local type, pairs, ipairs, setmetatable = type, pairs, ipairs, setmetatable
local tostring, select, concat = tostring, select, table.concat
local floor = math.floor

local M = {
  _VERSION = core.version,
  sleep = core.sleep,
  now = core.now,
}

-- Logging through the server's logger, so Lua lines and C lines share one
-- format and one level.
local function make_logger(level)
  return function(...)
    if not core.log_enabled(level) then return end
    local n = select("#", ...)
    local parts = {}
    for i = 1, n do parts[i] = tostring((select(i, ...))) end
    local info = debug.getinfo(2, "Sl")
    local where = info and (info.short_src .. ":" .. (info.currentline or 0) .. ": ") or ""
    core.log(level, where .. concat(parts, " "))
  end
end

M.log = {
  debug = make_logger(core.DEBUG),
  info = make_logger(core.INFO),
  warn = make_logger(core.WARN),
  error = make_logger(core.ERROR),
}

-- App options: name -> kind. Every limit the server enforces is here.
local APP_OPTIONS = {
  listen = "address",
  ping_interval = "seconds0",
  pong_timeout = "seconds",
  idle_timeout = "seconds0",
  handshake_timeout = "seconds",
  close_timeout = "seconds",
  max_message_size = "bytes",
  max_header_bytes = "bytes",
  max_headers = "count",
  max_connections = "count",
  max_buffered = "bytes",
  max_inbox_bytes = "bytes",
}

local ROUTE_OPTIONS = {
  max_message_size = "bytes",
  on_open = "function",
  on_message = "function",
  on_close = "function",
}

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

-- Levenshtein distance, for "did you mean" hints on misspelt options.
local function distance(a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

local function suggest(name, known)
  local best, bestd = nil, math.huge
  for _, k in ipairs(sorted_keys(known)) do
    local d = distance(name:lower(), k)
    if d < bestd then best, bestd = k, d end
  end
  if best and bestd <= 3 then return " (did you mean '" .. best .. "'?)" end
  return " (known: " .. concat(sorted_keys(known), ", ") .. ")"
end

-- Checks opts against a schema; level is the error level of the caller's caller.
local function check_options(what, opts, schema, level)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(what .. " must be a table, got " .. type(opts), level)
  end
  local out = {}
  for name, value in pairs(opts) do
    if type(name) ~= "string" or not schema[name] then
      error("unknown " .. what .. " '" .. tostring(name) .. "'" .. suggest(tostring(name), schema), level)
    end
    local kind = schema[name]
    if kind == "function" then
      if type(value) ~= "function" then
        error(what .. " '" .. name .. "' must be a function, got " .. type(value), level)
      end
    elseif kind == "address" then
      if type(value) ~= "string" or not value:match("^.+:%d+$") then
        error(what .. " '" .. name .. "' must be \"HOST:PORT\", got " .. tostring(value), level)
      end
    else
      if type(value) ~= "number" or value ~= value then
        error(what .. " '" .. name .. "' must be a number, got " .. type(value), level)
      end
      if kind == "seconds" and value <= 0 then
        error(what .. " '" .. name .. "' must be > 0 seconds, got " .. value, level)
      elseif kind == "seconds0" and value < 0 then
        error(what .. " '" .. name .. "' must be >= 0 seconds (0 turns it off), got " .. value, level)
      elseif (kind == "bytes" or kind == "count") and (value < 1 or floor(value) ~= value) then
        error(what .. " '" .. name .. "' must be a whole number >= 1, got " .. value, level)
      end
    end
    out[name] = value
  end
  return out
end

local App = {}
App.__index = App
App.__name = "moonwire.app"

--- Creates an app. `opts` holds server-wide limits (see README, "Limits").
function M.app(opts)
  local options = check_options("app option", opts, APP_OPTIONS, 3)
  return setmetatable({
    _moonwire_app = true,
    options = options,
    routes = {},      -- array of route tables; the core keeps indexes into it
    ws_paths = {},    -- path -> route index
  }, App)
end

--- Adds a WebSocket route at an exact path.
function App:websocket(path, handlers)
  if getmetatable(self) ~= App then
    error("use app:websocket(path, handlers), with a colon", 2)
  end
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" then
    error("websocket route path must be a string starting with '/', got " .. tostring(path), 2)
  end
  if path:find("[?#%s]") then
    error("websocket route path '" .. path .. "' must not contain '?', '#' or spaces", 2)
  end
  if self.ws_paths[path] then
    error("websocket route '" .. path .. "' is defined twice", 2)
  end
  local route = check_options("websocket route option", handlers, ROUTE_OPTIONS, 3)
  route.path = path
  self.routes[#self.routes + 1] = route
  self.ws_paths[path] = #self.routes
  return self
end

--- Returns the route index for a request path, or nil (404).
function App:_match(path)
  return self.ws_paths[path]
end

return M
