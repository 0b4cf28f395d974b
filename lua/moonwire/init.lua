--- moonwire: the app builder.
-- An app file builds an app with `moonwire.app{options}`, adds routes with
-- `app:websocket(path, handlers)` and returns it; the server (C core) then
-- routes upgrades with `app:_match(path)` and calls the route's handlers.
-- Misuse raises with `error(msg, 2)`, so the message names the app's own line.

local core = require "moonwire.core"

local type, pairs, ipairs, setmetatable = type, pairs, ipairs, setmetatable
local tostring, select, concat = tostring, select, table.concat
local floor = math.floor

local lua_error, getinfo = error, debug.getinfo
local THIS_FILE = getinfo(1, "S").source

-- Misuse raises at the app author's own line: the first calling frame, from
-- `level` up, that is Lua code outside this module. When the app file ends
-- in a tail call (`return moonwire.app{...}`) Lua keeps no frame for it,
-- and the message names the app file instead.
local function error(msg, level) -- luacheck: ignore 431
  level = level or 1
  if level == 0 then return lua_error(msg, 0) end
  for l = level + 1, level + 10 do
    local info = getinfo(l, "Sl")
    if not info then break end
    if info.what ~= "C" and info.source ~= THIS_FILE and (info.currentline or 0) > 0 then
      return lua_error(info.short_src .. ":" .. info.currentline .. ": " .. msg, 0)
    end
  end
  local app = core.app_path
  return lua_error((app and app .. ": " or "") .. msg, 0)
end

local M = {
  _VERSION = core.version,
  sleep = core.sleep,
  now = core.now,
  worker = core.worker,   -- this worker's number, 1..workers (--workers)
  workers = core.workers,
  stats = core.stats,
  -- Outbound TCP (and TLS) for handlers, the upgrade hook and timers; the
  -- Redis, HTTP and WebSocket clients (docs/clients.md) are built on it.
  tcp = core.tcp,
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
  shutdown_timeout = "seconds0",
  workers = "count",
  max_message_size = "message_bytes",
  max_header_bytes = "bytes",
  max_headers = "count",
  max_connections = "count",
  max_admin_connections = "count",
  max_buffered = "bytes",
  max_inbox_bytes = "bytes",
  max_body_size = "message_bytes",
  listen_backlog = "count",
  tls_listen = "address",
  tls_cert = "path",
  tls_key = "path",
  broker = "redis_url",
  broker_prefix = "string",
  broker_max_pending = "bytes",
  broker_timeout = "seconds",
}

local ROUTE_OPTIONS = {
  max_message_size = "message_bytes",
  max_buffered = "bytes",
  low_water_mark = "bytes0",
  slow_consumer = "policy",
  origins = "origins",
  protocols = "protocols",
  compression = "boolean",
  compression_threshold = "bytes0",
  compression_level = "level",
  compression_context_takeover = "boolean",
  compression_window_bits = "window",
  upgrade = "function",
  on_open = "function",
  on_message = "function",
  on_drain = "function",
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
    elseif kind == "policy" then
      if value ~= "close" and value ~= "drop" then
        error(what .. " '" .. name .. "' must be \"close\" or \"drop\", got " .. tostring(value), level)
      end
    elseif kind == "origins" then
      local ok = value == "*" or type(value) == "table"
      if type(value) == "table" then
        for _, o in ipairs(value) do
          if type(o) ~= "string" or not o:match("^%a[%w+.-]*://[^/]+$") then ok = false end
        end
      end
      if not ok then
        error(what .. " '" .. name .. "' must be \"*\" or a list of origins like "
          .. "\"https://example.com\" (scheme://host[:port], no path)", level)
      end
    elseif kind == "protocols" then
      local ok = type(value) == "table"
      for _, p in ipairs(ok and value or {}) do
        if type(p) ~= "string" or not p:match("^[!#$%%&'*+.^_`|~%w-]+$") then ok = false end
      end
      if not ok then
        error(what .. " '" .. name .. "' must be a list of subprotocol names (tokens)", level)
      end
    elseif kind == "boolean" then
      if type(value) ~= "boolean" then
        error(what .. " '" .. name .. "' must be true or false, got " .. tostring(value), level)
      end
    elseif kind == "level" or kind == "window" then
      local lo, hi = 1, 9
      if kind == "window" then lo, hi = 9, 15 end
      if type(value) ~= "number" or value < lo or value > hi or floor(value) ~= value then
        error(what .. " '" .. name .. "' must be a whole number from " .. lo .. " to " .. hi
          .. ", got " .. tostring(value), level)
      end
    elseif kind == "path" then
      if type(value) ~= "string" or value == "" then
        error(what .. " '" .. name .. "' must be a file path, got " .. tostring(value), level)
      end
      -- Relative to the app file, so an app and its certificate move together.
      if value:sub(1, 1) ~= "/" and core.app_path then
        value = (core.app_path:match("^(.*)/[^/]*$") or ".") .. "/" .. value
      end
    elseif kind == "redis_url" then
      if type(value) ~= "string" or not value:match("^redis://[^/]+") then
        error(what .. " '" .. name .. "' must be \"redis://HOST:PORT\", got " .. tostring(value), level)
      end
    elseif kind == "string" then
      if type(value) ~= "string" or #value > 255 then
        error(what .. " '" .. name .. "' must be a string of at most 255 bytes, got "
          .. tostring(value), level)
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
      elseif kind == "message_bytes" and (value < 1 or floor(value) ~= value or value > 2147483647) then
        -- A message is one Lua string, and LuaJIT's are below 2 GiB.
        error(what .. " '" .. name .. "' must be a whole number from 1 to 2147483647, got " .. value, level)
      elseif kind == "bytes0" and (value < 0 or floor(value) ~= value) then
        error(what .. " '" .. name .. "' must be a whole number >= 0, got " .. value, level)
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
    ws_paths = {},    -- exact path -> route index
    ws_patterns = {}, -- routes with :params, in the order they were added
    timers = {},      -- timers made while the app file loads, started with the server
    http_routes = {}, -- plain HTTP routes: { method, path, segs | prefix + root, handler }
    middleware = {},  -- app:use: run before every websocket route's upgrade hook
  }, App)
end

-- Splits "/chat/:room" into segments; returns nil when it has no parameter.
local function compile_path(path)
  if not path:find("/:", 1, true) then return nil end
  local segs, names = {}, {}
  for seg in path:gmatch("/([^/]*)") do
    local name = seg:match("^:([%a_][%w_]*)$")
    if seg:sub(1, 1) == ":" and not name then
      return nil, "parameter '" .. seg .. "' must be ':' followed by a name"
    end
    if name then
      if names[name] then return nil, "parameter ':" .. name .. "' appears twice" end
      names[name] = true
    end
    segs[#segs + 1] = name and { param = name } or seg
  end
  return segs
end

--- Adds a WebSocket route. `path` is exact ("/echo") or has parameters
-- ("/chat/:room", each matching one non-empty path segment, in ws.params).
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
  local segs, err = compile_path(path)
  if err then error("websocket route '" .. path .. "': " .. err, 2) end
  local route = check_options("websocket route option", handlers, ROUTE_OPTIONS, 3)
  route.path = path
  self.routes[#self.routes + 1] = route
  self.ws_paths[path] = #self.routes
  if segs then
    self.ws_patterns[#self.ws_patterns + 1] = { index = #self.routes, segs = segs }
  end
  return self
end

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- Returns the route index for a request path and its parameters, or nil.
-- Exact paths win over parameter routes; parameter routes are tried in the
-- order they were added.
function App:_match(path)
  local index = self.ws_paths[path]
  if index and not self.routes[index].path:find("/:", 1, true) then return index end
  local patterns = self.ws_patterns
  if #patterns == 0 then return nil end
  local parts = {}
  for seg in path:gmatch("/([^/]*)") do parts[#parts + 1] = seg end
  for _, p in ipairs(patterns) do
    local segs = p.segs
    if #segs == #parts then
      local params = {}
      for i = 1, #segs do
        local want, got = segs[i], parts[i]
        if type(want) == "table" then
          if got == "" then params = nil; break end
          params[want.param] = unescape(got)
        elseif want ~= got then
          params = nil
          break
        end
      end
      if params then return p.index, params end
    end
  end
  return nil
end

local METHODS = { GET = true, HEAD = true, POST = true, PUT = true, DELETE = true, PATCH = true,
  OPTIONS = true }

--- Adds a plain HTTP route: fn(req, res) runs in a coroutine like every
-- handler. `path` is exact or has :params, as for websocket routes.
function App:route(method, path, fn)
  if type(method) ~= "string" or not METHODS[method:upper()] then
    error("HTTP method must be one of GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS; got "
      .. tostring(method), 2)
  end
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" or path:find("[?#%s]") then
    error("HTTP route path must be a string starting with '/' without '?', '#' or spaces, got "
      .. tostring(path), 2)
  end
  if type(fn) ~= "function" then
    error("HTTP route handler must be a function(req, res), got " .. type(fn), 2)
  end
  method = method:upper()
  for _, r in ipairs(self.http_routes) do
    if r.method == method and r.path == path then
      error("HTTP route " .. method .. " " .. path .. " is defined twice", 2)
    end
  end
  local segs, err = compile_path(path)
  if err then error("HTTP route '" .. path .. "': " .. err, 2) end
  self.http_routes[#self.http_routes + 1] = { method = method, path = path, segs = segs, handler = fn }
  return self
end

for _, m in ipairs { "get", "post", "put", "delete", "patch", "head", "options" } do
  App[m] = function(self, path, fn)
    if getmetatable(self) ~= App then error("use app:" .. m .. "(path, fn), with a colon", 2) end
    local ok, err = pcall(App.route, self, m, path, fn)
    if not ok then error(err, 2) end
    return self
  end
end

--- Serves the files under dir (relative to the app file, or absolute) at
-- prefix: GET and HEAD, with content types, Last-Modified and ETag.
function App:static(prefix, dir)
  if type(prefix) ~= "string" or prefix:sub(1, 1) ~= "/" then
    error("static prefix must be a string starting with '/', got " .. tostring(prefix), 2)
  end
  if type(dir) ~= "string" then error("static dir must be a string, got " .. type(dir), 2) end
  local base = debug.getinfo(2, "S").source
  if dir:sub(1, 1) ~= "/" and base:sub(1, 1) == "@" then
    local appdir = base:sub(2):match("^(.*)/[^/]*$") or "."
    dir = appdir .. "/" .. dir
  end
  local root, err = core.realpath(dir)
  if not root then error("static dir '" .. dir .. "': " .. err, 2) end
  if prefix:sub(-1) ~= "/" then prefix = prefix .. "/" end
  self.http_routes[#self.http_routes + 1] = { method = "GET", prefix = prefix, root = root,
    path = prefix }
  return self
end

-- Does route r serve path? Returns true and the params (or the path below a
-- static prefix).
local function http_match(r, path, parts)
  if r.prefix then
    if path:sub(1, #r.prefix) == r.prefix then return true, path:sub(#r.prefix + 1) end
    if path .. "/" == r.prefix then return true, "" end
    return false
  end
  if not r.segs then return r.path == path end
  local segs = r.segs
  if #segs ~= #parts then return false end
  local params = {}
  for i = 1, #segs do
    local want, got = segs[i], parts[i]
    if type(want) == "table" then
      if got == "" then return false end
      params[want.param] = unescape(got)
    elseif want ~= got then
      return false
    end
  end
  return true, params
end

--- Finds the HTTP route for method and path: returns its index and params;
-- or nil and the Allow list when the path exists for other methods (405).
function App:_match_http(method, path)
  local parts = {}
  for seg in path:gmatch("/([^/]*)") do parts[#parts + 1] = seg end
  local allow, get_index, get_params = {}, nil, nil
  for i, r in ipairs(self.http_routes) do
    local ok, params = http_match(r, path, parts)
    if ok then
      if r.method == method then return i, params end
      if r.method == "GET" and not get_index then get_index, get_params = i, params end
      allow[#allow + 1] = r.method
    end
  end
  -- HEAD is GET without the body (RFC 9110 9.3.2).
  if method == "HEAD" and get_index then return get_index, get_params end
  if #allow == 0 then return nil end
  local seen, list = {}, {}
  for _, m in ipairs(allow) do
    if not seen[m] then seen[m] = true; list[#list + 1] = m end
    if m == "GET" and not seen.HEAD then seen.HEAD = true; list[#list + 1] = "HEAD" end
  end
  return nil, concat(list, ", ")
end

local Response = {}
Response.__index = Response
Response.__name = "moonwire.response"

--- res:status(code): sets the status of the response (default 200).
function Response:status(code)
  if type(code) ~= "number" or code < 200 or code > 599 or floor(code) ~= code then
    error("res:status(code): code must be a whole number from 200 to 599", 2)
  end
  self._status = code
  return self
end

--- res:header(name, value): sets a response header.
function Response:header(name, value)
  if type(name) ~= "string" or type(value) ~= "string" then
    error("res:header(name, value): both must be strings", 2)
  end
  self._headers[name] = value
  return self
end

--- res:send([status,] body): sends the response; once per request.
function Response:send(a, b)
  local status, body = self._status or 200, a
  if type(a) == "number" then status, body = a, b end
  body = body or ""
  if type(body) ~= "string" then error("res:send: body must be a string, got " .. type(body), 2) end
  if self.sent then error("res:send: this response was sent already", 2) end
  self.sent = true
  local h = self._headers
  local has_type = false
  for k in pairs(h) do if k:lower() == "content-type" then has_type = true end end
  if not has_type then h["Content-Type"] = "text/plain; charset=utf-8" end
  return core.respond(self._conn, status, h, body)
end

-- Runs a plain HTTP handler (inside a handler coroutine) with a response object.
function M._http(handler, req, conn)
  local res = setmetatable({ _conn = conn, _headers = {}, sent = false }, Response)
  handler(req, res)
end

--- Adds upgrade middleware (the extension point for rocks such as token
-- authentication or rate limiting). fn(req) runs before every websocket
-- route's own upgrade hook, in the order added, in the same coroutine (it
-- may wait). It returns nothing to go on, a table whose fields are added to
-- ws.data, or a refusal that ends the upgrade: a status (with an optional
-- body and headers table) or false (403).
function App:use(fn)
  if getmetatable(self) ~= App then error("use app:use(fn), with a colon", 2) end
  if type(fn) ~= "function" then
    error("app:use(fn): fn must be a function(req), got " .. type(fn), 2)
  end
  self.middleware[#self.middleware + 1] = fn
  return self
end

--- Publishes a message to every connection subscribed to topic; returns how
-- many it was queued for. The frame is encoded once for all of them.
function App:publish(topic, data, binary) -- luacheck: ignore self
  if type(topic) ~= "string" then error("topic must be a string, got " .. type(topic), 2) end
  if type(data) ~= "string" then error("data must be a string, got " .. type(data), 2) end
  return core.publish(topic, data, binary and true or false)
end

--- The number of connections subscribed to topic.
function App:subscribers(topic) -- luacheck: ignore self
  if type(topic) ~= "string" then error("topic must be a string, got " .. type(topic), 2) end
  return core.subscribers(topic)
end

local function add_timer(self, seconds, fn, repeating, name)
  if type(seconds) ~= "number" or seconds < 0 or (repeating and seconds <= 0) then
    error("app:" .. name .. "(seconds, fn): seconds must be a number " ..
      (repeating and "> 0" or ">= 0") .. ", got " .. tostring(seconds), 3)
  end
  if type(fn) ~= "function" then
    error("app:" .. name .. "(seconds, fn): fn must be a function, got " .. type(fn), 3)
  end
  local t = core.timer(seconds, repeating, fn)
  self.timers[#self.timers + 1] = t
  return t
end

--- Runs fn every `seconds` (in a coroutine, like a handler); returns a timer
-- with :cancel(). An error in fn is logged and the timer goes on.
function App:every(seconds, fn)
  return add_timer(self, seconds, fn, true, "every")
end

--- Runs fn once after `seconds`; returns a timer with :cancel().
function App:after(seconds, fn)
  return add_timer(self, seconds, fn, false, "after")
end

--- State that outlives hot reloads: the same table for the same name, for
-- the life of the server process (this module is never reloaded).
local states = {}
function M.state(name)
  if type(name) ~= "string" then error("moonwire.state(name): name must be a string", 2) end
  local t = states[name]
  if not t then
    t = {}
    states[name] = t
  end
  return t
end

-- Hot reload support (called by the core). App-local modules are those
-- that `require` finds in the app's own directory; they load afresh with
-- the app. Everything else (moonwire, rocks, the standard library) stays.
local function local_path(app_dir)
  return app_dir .. "/?.lua;" .. app_dir .. "/?/init.lua"
end

-- Modules present before the app first loaded (standard, LuaJIT's,
-- moonwire's) are never app-local, whatever files the app's directory has.
local system_modules = {}
function M._snapshot_system()
  for name in pairs(package.loaded) do system_modules[name] = true end
end

local function is_local(name, app_dir)
  return type(name) == "string" and not system_modules[name] and not package.preload[name]
    and package.searchpath(name, local_path(app_dir)) ~= nil
end

--- Takes the app-local modules out of package.loaded; returns them.
function M._take_local_modules(app_dir)
  local saved = {}
  for name, mod in pairs(package.loaded) do
    if is_local(name, app_dir) then saved[name] = mod end
  end
  for name in pairs(saved) do package.loaded[name] = nil end
  return saved
end

--- After a failed reload: drops what it loaded, puts the old modules back.
function M._restore_local_modules(app_dir, saved)
  local fresh = {}
  for name in pairs(package.loaded) do
    if is_local(name, app_dir) then fresh[#fresh + 1] = name end
  end
  for _, name in ipairs(fresh) do package.loaded[name] = nil end
  for name, mod in pairs(saved) do package.loaded[name] = mod end
end

--- After a successful reload: the old app's timers stop (the new app has
-- its own), so timers are replaced, never doubled.
function M._retire(old_app)
  for _, t in ipairs(old_app.timers) do t:cancel() end
end

-- Turns one answer of middleware or a hook into: "go" (with a table to
-- merge into ws.data, or nil) or "refuse" (status, body, headers).
local function verdict(r1, r2, r3, who)
  if r1 == nil or r1 == true then return "go" end
  if type(r1) == "table" then return "go", r1 end
  if r1 == false then return "refuse", 403, r2, r3 end
  if type(r1) == "number" then return "refuse", r1, r2, r3 end
  error(who .. " returned a " .. type(r1) .. "; return nothing or a table (ws.data) to accept, "
    .. "or an HTTP status to refuse", 0)
end

-- Runs the app's middleware, then the route's upgrade hook (inside a
-- handler coroutine), and turns their answers into the core's decision:
--   nil / true        go on (accept at the end)
--   a table           go on; its fields become ws.data
--   a status number   refuse with it (then an optional body and headers)
--   false             refuse with 403
function M._upgrade(app, req, ws)
  local data
  local hooks = {}
  for i, fn in ipairs(app.middleware) do hooks[i] = fn end
  local route = app.routes[req.route_index]
  if route.upgrade then hooks[#hooks + 1] = route.upgrade end
  for i, fn in ipairs(hooks) do
    local who = (route.upgrade and i == #hooks)
      and ("the upgrade hook of route '" .. req.route .. "'") or ("middleware " .. i .. " (app:use)")
    local r1, r2, r3 = fn(req)
    local what, a, b, c = verdict(r1, r2, r3, who)
    if what == "refuse" then return core.refuse(ws, a, b, c) end
    if a then
      -- Merge into a table of our own: middleware may return a shared one.
      data = data or {}
      for k, v in pairs(a) do data[k] = v end
    end
  end
  if data then ws.data = data end
  local p = req.protocol
  if p ~= nil then
    local offered = false
    for _, o in ipairs(req.protocols) do offered = offered or o == p end
    if not offered then
      error("the upgrade hook of route '" .. req.route .. "' set req.protocol to '" .. tostring(p)
        .. "', which the client did not offer (offered: " .. concat(req.protocols, ", ") .. ")", 0)
    end
  end
  return core.accept(ws, p, req.response_headers)
end

return M
