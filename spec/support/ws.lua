-- A raw WebSocket client on luasocket for the integration specs.
--
-- Unlike a normal client it gives full control over the bytes: the opening request
-- can be built with any headers (or sent raw, or one byte at a time), frames can carry
-- any fin/rsv/opcode/mask/length combination (including lies and non-minimal length
-- encodings), and every server frame is decoded strictly (a masked server frame is an
-- error). Reads use deadlines so a misbehaving server fails a test instead of hanging it.

local socket = require "socket"
local bit = require "bit"
local ffi = require "ffi"
local sha1 = require "spec.support.sha1"

local band, bor, bxor = bit.band, bit.bor, bit.bxor
local byte, char, concat = string.byte, string.char, table.concat
local floor = math.floor
local gettime = socket.gettime

local M = {}

M.OP = { cont = 0, text = 1, binary = 2, close = 8, ping = 9, pong = 10 }
local OPNAME = { [0] = "cont", "text", "binary", [8] = "close", [9] = "ping", [10] = "pong" }

M.DEFAULT_TIMEOUT = 3

---------------------------------------------------------------------------
-- Encoding
---------------------------------------------------------------------------

-- XORs `payload` with the 4-byte `key` (RFC 6455 5.3). FFI keeps 16 MiB payloads fast.
function M.mask(payload, key)
  local n = #payload
  if n == 0 then return payload end
  local buf = ffi.new("uint8_t[?]", n)
  ffi.copy(buf, payload, n)
  local k0, k1, k2, k3 = byte(key, 1, 4)
  local k = ffi.new("uint8_t[4]", k0, k1, k2, k3)
  for i = 0, n - 1 do buf[i] = bxor(buf[i], k[band(i, 3)]) end
  return ffi.string(buf, n)
end

local function be_bytes(n, count)
  local out = {}
  for i = count - 1, 0, -1 do
    out[#out + 1] = char(floor(n / 2 ^ (8 * i)) % 256)
  end
  return concat(out)
end
M.be_bytes = be_bytes

local function random_key()
  return char(math.random(0, 255), math.random(0, 255), math.random(0, 255), math.random(0, 255))
end

-- Builds one frame. Fields of `f` (all optional):
--   fin (default true), rsv1/rsv2/rsv3 (booleans), opcode (number or name, default text),
--   payload (string, default ""), mask (default true), key (4 bytes, default random),
--   len (declared payload length, default #payload), len_form (7, 16 or 64: force that
--   length encoding even when not minimal), len_bytes (raw extended length bytes, used
--   verbatim after a 7-bit length of len_form's marker).
function M.frame(f)
  local payload = f.payload or ""
  local opcode = f.opcode or 1
  if type(opcode) == "string" then opcode = assert(M.OP[opcode], "bad opcode name") end
  local b0 = opcode
  if f.fin ~= false then b0 = bor(b0, 0x80) end
  if f.rsv1 then b0 = bor(b0, 0x40) end
  if f.rsv2 then b0 = bor(b0, 0x20) end
  if f.rsv3 then b0 = bor(b0, 0x10) end
  local masked = f.mask ~= false
  local len = f.len or #payload
  local form = f.len_form or (len < 126 and 7 or len < 65536 and 16 or 64)
  local head
  local mbit = masked and 0x80 or 0
  if form == 7 then
    head = char(b0, bor(mbit, len))
  elseif form == 16 then
    head = char(b0, bor(mbit, 126)) .. (f.len_bytes or be_bytes(len, 2))
  else
    head = char(b0, bor(mbit, 127)) .. (f.len_bytes or be_bytes(len, 8))
  end
  if masked then
    local key = f.key or random_key()
    return head .. key .. M.mask(payload, key)
  end
  return head .. payload
end

-- Close frame payload: 2-byte code + reason (code nil -> empty payload).
function M.close_payload(code, reason)
  if not code then return "" end
  return be_bytes(code, 2) .. (reason or "")
end

---------------------------------------------------------------------------
-- Opening handshake
---------------------------------------------------------------------------

function M.new_key()
  local raw = {}
  for i = 1, 16 do raw[i] = char(math.random(0, 255)) end
  return sha1.base64(concat(raw))
end

M.accept_key = sha1.accept_key

-- Builds an upgrade request. opts: method, version ("HTTP/1.1"), host, key,
-- headers (name -> value; false removes a default header; names match
-- case-insensitively; new names are appended), extra (list of raw header lines
-- appended as-is), eol (line ending, default "\r\n").
function M.request(path, opts)
  opts = opts or {}
  local eol = opts.eol or "\r\n"
  local list = {
    { "Host", opts.host or "127.0.0.1" },
    { "Upgrade", "websocket" },
    { "Connection", "Upgrade" },
    { "Sec-WebSocket-Key", opts.key or M.new_key() },
    { "Sec-WebSocket-Version", "13" },
  }
  for name, value in pairs(opts.headers or {}) do
    local found = false
    for i, h in ipairs(list) do
      if h[1]:lower() == name:lower() then
        found = true
        if value == false then table.remove(list, i) else h[1], h[2] = name, value end
        break
      end
    end
    if not found and value ~= false then list[#list + 1] = { name, value } end
  end
  local lines = { (opts.method or "GET") .. " " .. path .. " " .. (opts.version or "HTTP/1.1") }
  for _, h in ipairs(list) do lines[#lines + 1] = h[1] .. ": " .. h[2] end
  for _, raw in ipairs(opts.extra or {}) do lines[#lines + 1] = raw end
  local key
  for _, h in ipairs(list) do
    if h[1]:lower() == "sec-websocket-key" then key = h[2] end
  end
  return concat(lines, eol) .. eol .. eol, key
end

---------------------------------------------------------------------------
-- Client
---------------------------------------------------------------------------

local Client = {}
Client.__index = Client

-- Opens a TCP connection. `target` is a server object (host, port) or a host string.
function M.connect(target, port, timeout)
  local host = target
  if type(target) == "table" then host, port = target.host, target.port end
  local sock = socket.tcp()
  sock:settimeout(timeout or M.DEFAULT_TIMEOUT)
  local ok, err = sock:connect(host, port)
  if not ok then
    sock:close()
    return nil, err
  end
  sock:setoption("tcp-nodelay", true)
  return setmetatable({ sock = sock, buf = "", pos = 1, eof = nil }, Client)
end

-- Local port of the client socket (what the server sees as remote_port).
function Client:local_port()
  local _, port = self.sock:getsockname()
  return tonumber(port)
end

-- Sends all of `data` (bounded by `timeout`); returns true or nil, err.
function Client:send_raw(data, timeout)
  local deadline = gettime() + (timeout or 10)
  local i = 1
  while i <= #data do
    local remaining = deadline - gettime()
    if remaining <= 0 then return nil, "timeout" end
    self.sock:settimeout(remaining)
    local last, err, partial = self.sock:send(data, i)
    if last then
      i = last + 1
    else
      if err ~= "timeout" then return nil, err end
      i = partial + 1
    end
  end
  return true
end

-- Sends `data` in pieces of `size` bytes (default 1) with `delay` seconds between them.
function Client:send_pieces(data, size, delay)
  size = size or 1
  for i = 1, #data, size do
    local ok, err = self:send_raw(data:sub(i, i + size - 1))
    if not ok then return nil, err end
    if delay and delay > 0 then socket.sleep(delay) end
  end
  return true
end

-- Reads whatever is available before `deadline` into the buffer.
-- Returns true when bytes arrived, or nil, "timeout" / "closed".
function Client:_read_more(deadline)
  if self.eof then return nil, "closed" end
  while true do
    local remaining = deadline - gettime()
    if remaining < 0 then remaining = 0 end
    local readable = socket.select({ self.sock }, nil, remaining)
    if not readable or #readable == 0 then
      if gettime() >= deadline then return nil, "timeout" end
    else
      self.sock:settimeout(0)
      local data, err, partial = self.sock:receive(65536)
      data = data or partial
      if err and err ~= "timeout" then
        self.eof = err         -- "closed" or e.g. "connection reset by peer"
      end
      if data and #data > 0 then
        if self.pos > #self.buf then
          self.buf, self.pos = data, 1
        else
          self.buf = self.buf:sub(self.pos) .. data
          self.pos = 1
        end
        return true
      end
      if self.eof then return nil, "closed" end
      if gettime() >= deadline then return nil, "timeout" end
    end
  end
end

function Client:_available()
  return #self.buf - self.pos + 1
end

-- Ensures `n` buffered bytes; returns true or nil, err.
function Client:_need(n, deadline)
  local have = self:_available()
  if have >= n then return true end
  -- Collect chunks in a table so a 16 MiB payload is concatenated once.
  local parts = { self.buf:sub(self.pos) }
  self.buf, self.pos = "", 1
  while have < n do
    local ok, err = self:_read_more(deadline)
    if not ok then
      self.buf = concat(parts) .. self.buf:sub(self.pos)
      self.pos = 1
      return nil, err
    end
    parts[#parts + 1] = self.buf:sub(self.pos)
    have = have + self:_available()
    self.buf, self.pos = "", 1
  end
  self.buf, self.pos = concat(parts), 1
  return true
end

function Client:_take(n)
  local s = self.buf:sub(self.pos, self.pos + n - 1)
  self.pos = self.pos + n
  return s
end

-- Reads one HTTP response head (+ body when Content-Length is given).
-- Returns { status, reason, version, headers (lowercase -> value, repeats joined ", "),
-- header_list, head, body } or nil, err.
function Client:read_response(timeout)
  local deadline = gettime() + (timeout or M.DEFAULT_TIMEOUT)
  local e
  while true do
    e = self.buf:find("\r\n\r\n", self.pos, true)
    if e then break end
    local ok, err = self:_read_more(deadline)
    if not ok then
      return nil, err .. " (before end of response head; got " .. ("%q"):format(self.buf:sub(self.pos)) .. ")"
    end
  end
  local head = self.buf:sub(self.pos, e - 1)
  self.pos = e + 4
  local status_line, rest = head:match("^([^\r\n]*)\r\n(.*)$")
  status_line = status_line or head
  local version, status, reason = status_line:match("^(HTTP/%d%.%d) (%d%d%d) ?(.*)$")
  local res = { head = head, version = version, status = tonumber(status), reason = reason,
                headers = {}, header_list = {} }
  for line in ((rest or "") .. "\r\n"):gmatch("(.-)\r\n") do
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if name then
      name = name:lower()
      res.header_list[#res.header_list + 1] = { name, value }
      res.headers[name] = res.headers[name] and (res.headers[name] .. ", " .. value) or value
    end
  end
  local clen = tonumber(res.headers["content-length"])
  if clen and res.status ~= 101 then
    local ok, err = self:_need(clen, deadline)
    if not ok then return nil, err .. " (reading body)" end
    res.body = self:_take(clen)
  end
  return res
end

-- Sends an upgrade request for `path` (see M.request for opts; opts.raw sends those
-- bytes instead; opts.append adds bytes, e.g. frames, to the same send; opts.pieces
-- sends the request that many bytes at a time with opts.delay between pieces) and reads
-- the response. Returns the response table (with .key, the key sent) or nil, err.
function Client:handshake(path, opts)
  opts = opts or {}
  local req, key
  if opts.raw then
    req = opts.raw
  else
    req, key = M.request(path, opts)
  end
  req = req .. (opts.append or "")
  local ok, err
  if opts.pieces then
    ok, err = self:send_pieces(req, opts.pieces, opts.delay)
  else
    ok, err = self:send_raw(req)
  end
  if not ok then return nil, "send: " .. tostring(err) end
  local res, rerr = self:read_response(opts.timeout)
  if not res then return nil, rerr end
  res.key = key
  return res
end

-- Checks a 101 response: status, Upgrade, Connection and Sec-WebSocket-Accept.
function M.check_101(res)
  if not res then return nil, "no response" end
  if res.status ~= 101 then
    return nil, ("expected 101, got %s: %s %s"):format(tostring(res.status), res.head, res.body or "")
  end
  local h = res.headers
  if not (h.upgrade and h.upgrade:lower() == "websocket") then
    return nil, "101 without Upgrade: websocket: " .. res.head
  end
  local has_upgrade_token = false
  for tok in (h.connection or ""):gmatch("[^,%s]+") do
    if tok:lower() == "upgrade" then has_upgrade_token = true end
  end
  if not has_upgrade_token then return nil, "101 without Connection: Upgrade: " .. res.head end
  if res.key and h["sec-websocket-accept"] ~= M.accept_key(res.key) then
    return nil, ("bad Sec-WebSocket-Accept %s (want %s)"):format(tostring(h["sec-websocket-accept"]),
      M.accept_key(res.key))
  end
  return true
end

-- Sends an upgrade request for `path`; returns the response and the client.
function M.attempt(srv, path, opts)
  local c = assert(M.connect(srv))
  local res = assert(c:handshake(path, opts))
  return res, c
end

-- Expects the upgrade of `path` to be refused with `status` (a response with
-- Content-Length and without Sec-WebSocket-Accept), then the TCP close.
-- Returns the response.
function M.refused(srv, path, status, opts)
  local res, c = M.attempt(srv, path, opts)
  if res.status ~= status then
    c:close_tcp()
    error(("expected %d, got %s:\n%s\n%s"):format(status, tostring(res.status), res.head,
      tostring(res.body)), 2)
  end
  local why = not res.headers["content-length"] and "without Content-Length"
    or res.headers["sec-websocket-accept"] and "with Sec-WebSocket-Accept"
  if why then
    c:close_tcp()
    error(("refusal %s: %s"):format(why, res.head), 2)
  end
  c:expect_tcp_close(2)
  return res
end

-- Connects and completes a handshake on `path`; raises unless it got a valid 101.
function M.open(srv, path, opts)
  local c = assert(M.connect(srv))
  local res, err = c:handshake(path or "/echo", opts)
  if not res then
    c:close_tcp()
    error("handshake failed: " .. tostring(err), 2)
  end
  local ok, why = M.check_101(res)
  if not ok then
    c:close_tcp()
    error(why, 2)
  end
  c.response = res
  return c
end

-- Sends one frame (see M.frame).
function Client:send_frame(f)
  return self:send_raw(M.frame(f))
end

function Client:send_text(s, f)
  f = f or {}
  f.opcode, f.payload = 1, s
  return self:send_frame(f)
end

function Client:send_binary(s, f)
  f = f or {}
  f.opcode, f.payload = 2, s
  return self:send_frame(f)
end

function Client:ping(s) return self:send_frame({ opcode = 9, payload = s or "" }) end
function Client:pong(s) return self:send_frame({ opcode = 10, payload = s or "" }) end

function Client:send_close(code, reason)
  return self:send_frame({ opcode = 8, payload = M.close_payload(code, reason) })
end

-- Reads one frame. Returns { fin, rsv1, rsv2, rsv3, opcode, op (name), masked, payload,
-- code, reason (for close) } or nil, "timeout" | "closed" | "protocol: ...".
function Client:recv_frame(timeout)
  local deadline = gettime() + (timeout or M.DEFAULT_TIMEOUT)
  local ok, err = self:_need(2, deadline)
  if not ok then return nil, err end
  local b0, b1 = byte(self.buf, self.pos, self.pos + 1)
  local len = band(b1, 0x7f)
  local hlen = 2
  if len == 126 then hlen = 4 elseif len == 127 then hlen = 10 end
  local masked = band(b1, 0x80) ~= 0
  if masked then hlen = hlen + 4 end
  ok, err = self:_need(hlen, deadline)
  if not ok then return nil, err end
  local p = self.pos
  if len == 126 then
    local x, y = byte(self.buf, p + 2, p + 3)
    len = x * 256 + y
  elseif len == 127 then
    len = 0
    for i = 2, 9 do len = len * 256 + byte(self.buf, p + i) end
  end
  local key = masked and self.buf:sub(p + hlen - 4, p + hlen - 1) or nil
  ok, err = self:_need(hlen + len, deadline)
  if not ok then return nil, err end
  self.pos = self.pos + hlen
  local payload = self:_take(len)
  if masked then payload = M.mask(payload, key) end
  local f = {
    fin = band(b0, 0x80) ~= 0, rsv1 = band(b0, 0x40) ~= 0, rsv2 = band(b0, 0x20) ~= 0,
    rsv3 = band(b0, 0x10) ~= 0, opcode = band(b0, 0x0f), masked = masked, payload = payload,
  }
  f.op = OPNAME[f.opcode] or ("op" .. f.opcode)
  if f.opcode == 8 then
    if #payload >= 2 then
      f.code = byte(payload, 1) * 256 + byte(payload, 2)
      f.reason = payload:sub(3)
    end
  end
  if masked then
    f.error = "server frame is masked (RFC 6455 5.1)"
  elseif f.rsv1 or f.rsv2 or f.rsv3 then
    f.error = "server frame has RSV bits set"
  end
  return f
end

local function describe(f)
  if not f then return "nothing" end
  if f.op == "close" then
    return ("close %s %q"):format(tostring(f.code), f.reason or "")
  end
  local p = f.payload
  if #p > 60 then p = p:sub(1, 60) .. ("...(%d bytes)"):format(#f.payload) end
  return ("%s%s %q"):format(f.op, f.fin and "" or "(fin=0)", p)
end
M.describe = describe

-- Reads the next frame and raises unless it is sound (unmasked, no RSV).
function Client:next_frame(timeout, what)
  local f, err = self:recv_frame(timeout)
  if not f then error(("expected %s, got %s"):format(what or "a frame", err), 3) end
  if f.error then error(f.error .. ": " .. describe(f), 3) end
  return f
end

-- Reads one complete data message (reassembling fragments). Control frames in between
-- raise unless on_control(frame) is given (it may answer pings, etc.) or the client has
-- auto_pong set (pings are answered, pongs skipped).
-- Returns payload, opname ("text"/"binary"), frames count; or raises.
function Client:recv_message(timeout, what, on_control)
  local deadline = gettime() + (timeout or M.DEFAULT_TIMEOUT)
  local parts, op, frames = {}, nil, 0
  while true do
    local f = self:next_frame(math.max(0, deadline - gettime()), what or "a message")
    if f.opcode >= 8 then
      if on_control then
        on_control(f)
      elseif self.auto_pong and f.op == "ping" then
        self:pong(f.payload)
      elseif not (self.auto_pong and f.op == "pong") then
        error(("expected %s, got %s"):format(what or "a message", describe(f)), 2)
      end
    else
      frames = frames + 1
      if op == nil then
        if f.opcode == 0 then error("server sent continuation without a start", 2) end
        op = f.op
      elseif f.opcode ~= 0 then
        error("server started a new message inside a fragmented one: " .. describe(f), 2)
      end
      parts[#parts + 1] = f.payload
      if f.fin then return concat(parts), op, frames end
    end
  end
end

local function short(s)
  if #s > 80 then return ("%q...(%d bytes)"):format(s:sub(1, 80), #s) end
  return ("%q"):format(s)
end

-- Expects the next message to be text (and equal to `expected` when given). Returns it.
function Client:expect_text(expected, timeout)
  local msg, op = self:recv_message(timeout, "text " .. (expected and short(expected) or ""))
  if op ~= "text" then error(("expected text, got %s %s"):format(op, short(msg)), 2) end
  if expected ~= nil and msg ~= expected then
    error(("expected text %s, got %s"):format(short(expected), short(msg)), 2)
  end
  return msg
end

function Client:expect_binary(expected, timeout)
  local msg, op = self:recv_message(timeout, "binary " .. (expected and short(expected) or ""))
  if op ~= "binary" then error(("expected binary, got %s %s"):format(op, short(msg)), 2) end
  if expected ~= nil and msg ~= expected then
    error(("expected binary %s, got %s"):format(short(expected), short(msg)), 2)
  end
  return msg
end

local function expect_control(self, op, expected, timeout)
  local f = self:next_frame(timeout, op)
  if f.op ~= op then error(("expected %s, got %s"):format(op, describe(f)), 3) end
  if not f.fin then error(op .. " frame with fin=0", 3) end
  if expected ~= nil and f.payload ~= expected then
    error(("expected %s %s, got %s"):format(op, short(expected), short(f.payload)), 3)
  end
  return f.payload
end

function Client:expect_pong(expected, timeout) return expect_control(self, "pong", expected, timeout) end
function Client:expect_ping(expected, timeout) return expect_control(self, "ping", expected, timeout) end

-- Expects the next frame to be a close (with auto_pong set, pings before it are
-- answered and pongs skipped). `code`: a number (must match), "none" (empty payload),
-- or nil (anything). Returns code, reason.
function Client:expect_close(code, timeout)
  local f = self:next_frame(timeout, "close " .. tostring(code))
  while self.auto_pong and (f.op == "ping" or f.op == "pong") do
    if f.op == "ping" then self:pong(f.payload) end
    f = self:next_frame(timeout, "close " .. tostring(code))
  end
  if f.op ~= "close" then error(("expected close %s, got %s"):format(tostring(code), describe(f)), 2) end
  if #f.payload == 1 then error("server close frame with a 1-byte payload", 2) end
  if code == "none" then
    if #f.payload ~= 0 then error("expected close without payload, got " .. describe(f), 2) end
  elseif code ~= nil and f.code ~= code then
    error(("expected close %s, got %s"):format(tostring(code), describe(f)), 2)
  end
  self.got_close = f
  return f.code, f.reason
end

-- Waits until the server closes TCP, discarding any bytes; returns true, or false on
-- timeout. Like any real client, it then closes its own side (the server may wait for
-- our FIN before it frees the connection).
function Client:wait_closed(timeout)
  local deadline = gettime() + (timeout or M.DEFAULT_TIMEOUT)
  while true do
    local ok, err = self:_read_more(deadline)
    if not ok then
      if err == "closed" then
        self:close_tcp()
        return true
      end
      return false
    end
    self.buf, self.pos = "", 1
  end
end

-- Expects TCP close with no further bytes before it (then closes our side too);
-- raises otherwise.
function Client:expect_tcp_close(timeout)
  local deadline = gettime() + (timeout or M.DEFAULT_TIMEOUT)
  while true do
    if self:_available() > 0 then
      error("expected TCP close, got more bytes: " .. short(self.buf:sub(self.pos)), 2)
    end
    local ok, err = self:_read_more(deadline)
    if not ok then
      if err == "closed" then
        self:close_tcp()       -- as a real client does on EOF
        return true
      end
      error("expected TCP close, but the connection is still open after the timeout", 2)
    end
  end
end

-- Expects nothing to arrive for `seconds`; raises if a frame (or close) arrives.
function Client:expect_silence(seconds)
  if self:_available() > 0 then error("expected silence, got " .. short(self.buf:sub(self.pos)), 2) end
  local ok, err = self:_read_more(gettime() + seconds)
  if ok then error("expected silence, got " .. short(self.buf:sub(self.pos)), 2) end
  if err == "closed" then error("expected silence, but the server closed the connection", 2) end
  return true
end

-- Sends a close (code/reason), expects the server's close reply (same code unless
-- `reply_code` says otherwise) and the TCP close.
function Client:close_handshake(code, reason, reply_code, timeout)
  self:send_close(code or 1000, reason)
  local rc, rr = self:expect_close(reply_code or code or 1000, timeout)
  self:expect_tcp_close(timeout)
  self:close_tcp()
  return rc, rr
end

-- Closes the socket without a close frame (FIN).
function Client:close_tcp()
  if not self.closed then
    self.closed = true
    self.sock:close()
  end
end

-- Aborts the connection with RST (SO_LINGER 0).
function Client:reset()
  if not self.closed then
    self.sock:setoption("linger", { on = true, timeout = 0 })
    self:close_tcp()
  end
end

-- Bytes still buffered but not yet parsed (for raw checks).
function Client:pending()
  return self.buf:sub(self.pos)
end

M.Client = Client

-- Makes `n` random bytes (deterministic per seed) for binary payloads.
function M.random_bytes(n, seed)
  if seed then math.randomseed(seed) end
  local buf = ffi.new("uint8_t[?]", math.max(n, 1))
  for i = 0, n - 1 do buf[i] = math.random(0, 255) end
  return ffi.string(buf, n)
end

return M
