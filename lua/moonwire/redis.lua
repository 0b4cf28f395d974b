-- moonwire.redis: a Redis client for handlers, in Lua on moonwire.tcp.
--
--   local redis = require "moonwire.redis"
--   local red, err = redis.connect { host = "127.0.0.1", port = 6379, timeout = 1000 }
--   red:set("k", "v")                  -- any command, by name (or red:call("SET", ...))
--   local v = red:get("k")             -- "v"; a missing key gives redis.null
--   local res = red:pipeline(function(p) p:incr("n"); p:get("n") end)
--   red:set_keepalive()                -- back to the worker's pool
--
-- Every call waits without blocking the loop (it yields the handler) and
-- returns nil, err on failure: a Redis error reply reads "ERR ..." (or
-- "WRONGTYPE ..."), a transport error reads like moonwire.tcp's ("timeout",
-- "closed", "connection refused"). Replies follow RESP2: status and bulk
-- strings as strings, integers as numbers, arrays as tables, nil bulk and
-- nil arrays as redis.null, an error inside an array as { false, "ERR ..." }.
local tostring, tonumber, type, select, setmetatable = tostring, tonumber, type, select, setmetatable
local concat, error = table.concat, error
local sub, byte, upper = string.sub, string.byte, string.upper

local M = {}

-- The value of a nil bulk string or nil array (a key that does not exist).
M.null = setmetatable({}, { __tostring = function() return "redis.null" end })

local DEFAULTS = { host = "127.0.0.1", port = 6379, timeout = 1000 }

local Redis = {}
local mt = {
  __name = "moonwire.redis",
  __tostring = function(self) return "moonwire.redis(" .. self.addr .. ")" end,
}
-- red:get(k), red:hset(...): any other name is a command. (So every field
-- of an object is set at creation, false when unused: a nil field would
-- read as a command function.)
mt.__index = function(_, name)
  local m = Redis[name]
  if m then return m end
  local cmd = upper(name)
  return function(self, ...) return self:call(cmd, ...) end
end

-- RESP2 request: an array of bulk strings (the "unified request protocol").
local function encode(cmd, n, ...)
  local parts = { "*", n + 1, "\r\n$", #cmd, "\r\n", cmd, "\r\n" }
  for i = 1, n do
    local a = select(i, ...)
    local t = type(a)
    if t == "number" then
      a = tostring(a)
    elseif t ~= "string" then
      error("moonwire.redis: argument " .. i .. " of " .. cmd .. " is a " .. t
        .. " (strings and numbers only)", 3)
    end
    parts[#parts + 1] = "$" .. #a .. "\r\n"
    parts[#parts + 1] = a
    parts[#parts + 1] = "\r\n"
  end
  return concat(parts)
end
M._encode = function(cmd, ...) return encode(cmd, select("#", ...), ...) end

-- A timeout after part of a reply leaves the stream out of step.
local MID_REPLY = "timeout in the middle of a reply"

-- Reads one reply. Returns value; or false, "ERR ..." for an error reply;
-- or nil, transport error. Only a timeout before the first byte of a
-- top-level reply reads plain "timeout" (the stream is still in step).
local function read_reply(sock, nested)
  local line, err, partial = sock:receive("*l")
  if not line then
    if err == "timeout" and (nested or partial ~= "") then err = MID_REPLY end
    return nil, err
  end
  local kind, rest = byte(line, 1), sub(line, 2)
  if kind == 43 then                       -- "+" status
    return rest
  elseif kind == 45 then                   -- "-" error
    return false, rest
  elseif kind == 58 then                   -- ":" integer
    return tonumber(rest)
  elseif kind == 36 then                   -- "$" bulk string
    local n = tonumber(rest)
    if not n then return nil, "protocol error: bad bulk length" end
    if n < 0 then return M.null end
    local data, rerr = sock:receive(n + 2)
    if not data then return nil, rerr == "timeout" and MID_REPLY or rerr end
    return sub(data, 1, n)
  elseif kind == 42 then                   -- "*" array
    local n = tonumber(rest)
    if not n then return nil, "protocol error: bad array length" end
    if n < 0 then return M.null end
    local arr = {}
    for i = 1, n do
      local v, verr = read_reply(sock, true)
      if v == nil then return nil, verr end
      if v == false then v = { false, verr } end
      arr[i] = v
    end
    return arr
  end
  return nil, "protocol error: unexpected reply " .. line:sub(1, 40)
end

-- A transport error leaves the stream at an unknown place: close for good.
local function broken(self, err)
  self.sock:close()
  self.dead = err
  return nil, err
end

-- Reads one reply: value, or nil and an error ("ERR ..." or transport).
function Redis:read_reply()
  if self.dead then return nil, "closed" end
  local v, err = read_reply(self.sock)
  if v == nil then
    -- A read that timed out may be retried (a pub/sub loop waiting for a
    -- message); anything else broke the connection.
    if err == "timeout" then return nil, err end
    return broken(self, err)
  end
  if v == false then return nil, err end
  return v
end

-- red:call("SET", "k", "v") -> reply | nil, err. Inside a pipeline the
-- command is queued and call returns true.
function Redis:call(cmd, ...)
  if type(cmd) ~= "string" then error("moonwire.redis: call needs a command name", 2) end
  local req = encode(cmd, select("#", ...), ...)
  if self.pipe then
    self.pipe[#self.pipe + 1] = req
    return true
  end
  if self.dead then return nil, "closed" end
  local ok, err = self.sock:send(req)
  if not ok then return broken(self, err) end
  local v, rerr = read_reply(self.sock)
  if v == nil then return broken(self, rerr) end
  if v == false then return nil, rerr end
  return v
end

-- Pipelining: commands queue until commit_pipeline sends them in one write
-- and reads every reply. Results: an array with one reply per command (an
-- error reply as { false, "ERR ..." }), or nil, err on a transport error.
function Redis:init_pipeline()
  self.pipe = {}
end

function Redis:cancel_pipeline()
  self.pipe = false
end

function Redis:commit_pipeline()
  local pipe = self.pipe
  if not pipe then error("moonwire.redis: commit_pipeline without init_pipeline", 2) end
  self.pipe = false
  if self.dead then return nil, "closed" end
  if #pipe == 0 then return {} end
  local ok, err = self.sock:send(concat(pipe))
  if not ok then return broken(self, err) end
  local results = {}
  for i = 1, #pipe do
    local v, rerr = read_reply(self.sock)
    if v == nil then return broken(self, rerr) end
    if v == false then v = { false, rerr } end
    results[i] = v
  end
  return results
end

-- red:pipeline(function(p) p:set(...); p:get(...) end) -> results | nil, err
function Redis:pipeline(fn)
  self:init_pipeline()
  local ok, err = pcall(fn, self)
  if not ok then
    self.pipe = false
    error(err, 0)
  end
  return self:commit_pipeline()
end

-- Pub/sub: subscribe sends the command and reads one confirmation per
-- channel; then read_reply() returns each message as
-- { "message", channel, payload } (or "pmessage", pattern, channel,
-- payload for psubscribe). While subscribed only (p)(un)subscribe and ping
-- are valid commands, and the connection cannot go back to the pool.
local function subscribe(self, cmd, ...)
  local n = select("#", ...)
  if n == 0 then error("moonwire.redis: " .. cmd .. " needs at least one channel", 3) end
  if self.dead then return nil, "closed" end
  local ok, err = self.sock:send(encode(cmd, n, ...))
  if not ok then return broken(self, err) end
  self.subscribed = true
  local confirmations = {}
  for i = 1, n do
    local v, rerr = self:read_reply()
    if not v then return nil, rerr end
    confirmations[i] = v
  end
  return confirmations
end

function Redis:subscribe(...) return subscribe(self, "SUBSCRIBE", ...) end
function Redis:psubscribe(...) return subscribe(self, "PSUBSCRIBE", ...) end

-- red:set_keepalive([idle_ms [, pool_size]]): the connection goes back to
-- the worker's pool (the next redis.connect with the same host, port, db
-- and password takes it). A subscribed connection is closed instead.
function Redis:set_keepalive(idle_ms, pool_size)
  if self.dead then return nil, "closed" end
  if self.subscribed then
    self:close()
    return nil, "subscribed connections are not pooled (closed)"
  end
  self.dead = "closed"
  return self.sock:setkeepalive(idle_ms, pool_size)
end

function Redis:close()
  if self.dead then return nil, "closed" end
  self.dead = "closed"
  return self.sock:close()
end

-- How many times the connection came from the pool (0: a new connection).
function Redis:get_reused_times()
  return self.sock:getreusedtimes()
end

-- redis.connect{ host, port, password, db, timeout (ms, each operation),
-- tls, verify, server_name, ca_file, pool, max_receive (largest bulk
-- reply, default moonwire.tcp's 16 MiB) } -> red | nil, err
function M.connect(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("moonwire.redis: connect takes a table of options", 2) end
  local host = opts.host or DEFAULTS.host
  local port = opts.port or DEFAULTS.port
  local db = opts.db
  local sock = require("moonwire").tcp()
  sock:settimeout(opts.timeout or DEFAULTS.timeout)
  -- Pooled connections differ by database and credentials too.
  local pool = opts.pool or ("redis:" .. host .. ":" .. port .. ":" .. (db or 0) .. ":"
    .. (opts.password or "") .. (opts.tls and ":tls" or ""))
  local ok, err = sock:connect(host, port, { tls = opts.tls, verify = opts.verify,
    server_name = opts.server_name, ca_file = opts.ca_file, pool = pool,
    max_receive = opts.max_receive })
  if not ok then return nil, err end
  local self = setmetatable({ sock = sock, addr = host .. ":" .. port, dead = false,
    pipe = false, subscribed = false }, mt)
  if sock:getreusedtimes() == 0 then
    if opts.password then
      local res, aerr = self:call("AUTH", opts.password)
      if not res then self:close(); return nil, aerr end
    end
    if db and db ~= 0 then
      local res, serr = self:call("SELECT", db)
      if not res then self:close(); return nil, serr end
    end
  end
  return self
end

return M
