-- moonwire.websocket: an outbound WebSocket client (RFC 6455) for handlers,
-- in Lua on moonwire.tcp; also what our own specs use to reach a server.
--
--   local websocket = require "moonwire.websocket"
--   local c, err = websocket.connect("ws://127.0.0.1:9000/feed", { timeout = 2000 })
--   c:send("hello")                    -- text; c:send(data, true) sends binary
--   local msg, kind = c:receive()      -- kind "text" or "binary"; nil, err on failure
--   c:close(1000, "bye")
--
-- Frames are masked with a fresh random key each (RFC 6455 5.3); pings are
-- answered with pongs inside receive(); fragmented messages are joined up
-- to max_message_size. A close from the server is answered and ends
-- receive() with nil, "closed", code, reason. wss:// uses TLS with the
-- certificate verified (opts.verify, opts.ca_file as in moonwire.http).
local type, tostring, setmetatable, error = type, tostring, setmetatable, error
local byte, char, sub, lower, find = string.byte, string.char, string.sub, string.lower, string.find
local concat = table.concat
local http = require "moonwire.http"

local M = {}

M.MAX_MESSAGE_SIZE = 16 * 1024 * 1024  -- bytes of one (joined) message
M.DEFAULT_TIMEOUT = http.DEFAULT_TIMEOUT

local WS_SCHEMES = { ws = true, wss = true, _names = "ws:// or wss://" }
local OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10

local function core() return require "moonwire.core" end

local Client = {}
Client.__index = Client
Client.__name = "moonwire.websocket"
Client.__tostring = function(self) return "moonwire.websocket(" .. self.url .. ")" end

local function fail(self, err)
  if not self.closed then
    self.closed = true
    self.sock:close()
  end
  return nil, err
end

local function send_frame(self, op, payload)
  if self.closed then return nil, "closed" end
  local ok, err = self.sock:send(core().ws_client_frame(op, payload))
  if not ok then return fail(self, err) end
  return true
end

-- c:send(data [, binary]) -> true | nil, err
function Client:send(data, binary)
  if type(data) ~= "string" then error("moonwire.websocket: send takes a string", 2) end
  if self.close_sent then return nil, "closed" end
  return send_frame(self, binary and OP_BINARY or OP_TEXT, data)
end

-- c:ping([data]) -> true | nil, err (the pong is consumed by receive()).
function Client:ping(data)
  return send_frame(self, OP_PING, data or "")
end

-- Reads one frame: fin, opcode, payload; or nil, err.
local function read_frame(self)
  local sock = self.sock
  local h, err = sock:receive(2)
  if not h then return nil, err end
  local b1, b2 = byte(h, 1, 2)
  local fin, op = b1 >= 128, b1 % 16
  if b1 % 128 >= 16 then return nil, "protocol error: reserved bits set" end
  if b2 >= 128 then return nil, "protocol error: masked frame from the server" end
  local len = b2 % 128
  if len >= 126 then
    local ext, eerr = sock:receive(len == 126 and 2 or 8)
    if not ext then return nil, eerr end
    len = 0
    for i = 1, #ext do len = len * 256 + byte(ext, i) end
  end
  if op >= 8 and (len > 125 or not fin) then return nil, "protocol error: bad control frame" end
  if len > self.max_message_size then return nil, "message too big" end
  local payload = ""
  if len > 0 then
    payload, err = sock:receive(len)
    if not payload then return nil, err end
  end
  return fin, op, payload
end

-- c:receive() -> message, "text" | "binary"; or nil, err (nil, "closed",
-- code, reason once the server closed).
function Client:receive()
  if self.closed then return nil, "closed" end
  local parts, kind, size = nil, nil, 0
  while true do
    local fin, op, payload = read_frame(self)
    if fin == nil then
      if op == "timeout" then return nil, op end -- the connection stays usable
      return fail(self, op)
    end
    if op == OP_PING then
      if not self.close_sent then
        local ok, err = send_frame(self, OP_PONG, payload)
        if not ok then return nil, err end
      end
    elseif op == OP_PONG then -- luacheck: ignore 542
      -- an answer to our ping (or unsolicited): nothing to do
    elseif op == OP_CLOSE then
      local code, reason = 1005, ""
      if #payload >= 2 then
        code = byte(payload, 1) * 256 + byte(payload, 2)
        reason = sub(payload, 3)
      end
      if not self.close_sent then
        self.close_sent = true
        send_frame(self, OP_CLOSE, #payload >= 2 and sub(payload, 1, 2) or "")
      end
      fail(self, "closed")
      return nil, "closed", code, reason
    elseif op == OP_TEXT or op == OP_BINARY then
      if parts then return fail(self, "protocol error: new message inside a fragmented one") end
      kind = op == OP_TEXT and "text" or "binary"
      if fin then return payload, kind end
      parts, size = { payload }, #payload
    elseif op == OP_CONT then
      if not parts then return fail(self, "protocol error: continuation without a message") end
      size = size + #payload
      if size > self.max_message_size then return fail(self, "message too big") end
      parts[#parts + 1] = payload
      if fin then return concat(parts), kind end
    else
      return fail(self, "protocol error: unknown opcode " .. op)
    end
  end
end

-- c:close([code [, reason]]) -> true | nil, err: sends a close frame and
-- waits (up to the read timeout) for the server's, then closes the socket.
function Client:close(code, reason)
  if self.closed then return nil, "closed" end
  if not self.close_sent then
    self.close_sent = true
    code = code or 1000
    local payload = char(math.floor(code / 256), code % 256) .. (reason or "")
    local ok, err = send_frame(self, OP_CLOSE, payload)
    if not ok then return nil, err end
  end
  -- Drain until the server's close frame (or an error) ends the stream.
  while not self.closed do
    local fin, op = read_frame(self)
    if fin == nil or op == OP_CLOSE then break end
  end
  fail(self, "closed")
  return true
end

-- websocket.connect(url, opts) -> client | nil, err
-- opts: headers, protocols (list), origin, timeout (ms, each operation),
-- max_message_size, verify, ca_file, server_name.
function M.connect(url, opts)
  opts = opts or {}
  http._check_request("GET", opts.headers)
  local u, uerr = http._parse_url(url, WS_SCHEMES)
  if not u then return nil, uerr end
  local max = opts.max_message_size or M.MAX_MESSAGE_SIZE
  local sock, err = http._connect(u, { timeout = opts.timeout or M.DEFAULT_TIMEOUT, max_body_size = max,
    verify = opts.verify, ca_file = opts.ca_file, server_name = opts.server_name })
  if not sock then return nil, err end
  local key = core().random_base64(16)
  local extra = { Host = u.authority, Upgrade = "websocket", Connection = "Upgrade",
    ["Sec-WebSocket-Key"] = key, ["Sec-WebSocket-Version"] = "13" }
  if opts.protocols then
    local p = opts.protocols
    extra["Sec-WebSocket-Protocol"] = type(p) == "table" and concat(p, ", ") or tostring(p)
  end
  if opts.origin then extra.Origin = opts.origin end
  local ok, serr = sock:send(http._head("GET", u, opts.headers, extra))
  if not ok then sock:close(); return nil, serr end
  local status, reason, headers = http._read_head(sock)
  if not status then sock:close(); return nil, reason end
  -- RFC 6455 4.1: 101, Upgrade: websocket, the accept value for our key.
  local bad
  if status ~= 101 then
    bad = "handshake refused: " .. status .. " " .. reason
  elseif lower(headers.upgrade or "") ~= "websocket"
      or not find(lower(headers.connection or ""), "upgrade", 1, true) then
    bad = "handshake failed: no Upgrade: websocket in the response"
  elseif headers["sec-websocket-accept"] ~= core().ws_accept(key) then
    bad = "handshake failed: wrong Sec-WebSocket-Accept"
  end
  if bad then sock:close(); return nil, bad end
  return setmetatable({ sock = sock, url = url, protocol = headers["sec-websocket-protocol"],
    headers = headers, max_message_size = max }, Client)
end

return M
