-- Plain HTTP/1.1 over the raw client of spec/support/ws.lua, for the app-layer specs.
--
-- Requests are built byte for byte (so a spec can send anything: bad escapes, "..",
-- pipelined batches); responses are parsed strictly enough for tests: the head,
-- then a body of exactly Content-Length bytes, except for HEAD requests and 1xx/204/304
-- answers, which have no body whatever their Content-Length says (RFC 9112 6.3).

local socket = require "socket"
local ws = require "spec.support.ws"

local M = {}

-- Builds a request. opts: version ("HTTP/1.1"), headers (list of "Name: value"
-- lines; a Host line is added unless opts.no_host), body (adds Content-Length).
function M.request(method, target, opts)
  opts = opts or {}
  local lines = { method .. " " .. target .. " " .. (opts.version or "HTTP/1.1") }
  if not opts.no_host then lines[#lines + 1] = "Host: 127.0.0.1" end
  for _, h in ipairs(opts.headers or {}) do lines[#lines + 1] = h end
  if opts.body then lines[#lines + 1] = "Content-Length: " .. #opts.body end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. (opts.body or "")
end

-- Reads one response from client `c` (see spec/support/ws.lua). `method` decides
-- whether a body follows. Returns { status, reason, version, headers (lowercase),
-- head, body } or nil, err.
function M.read(c, method, timeout)
  local deadline = socket.gettime() + (timeout or 3)
  local e
  while true do
    e = c.buf:find("\r\n\r\n", c.pos, true)
    if e then break end
    local ok, err = c:_read_more(deadline)
    if not ok then
      return nil, err .. " (before the end of the head; got " .. ("%q"):format(c.buf:sub(c.pos)) .. ")"
    end
  end
  local head = c.buf:sub(c.pos, e - 1)
  c.pos = e + 4
  local version, status, reason = head:match("^(HTTP/%d%.%d) (%d%d%d) ?([^\r\n]*)")
  local res = { head = head, version = version, status = tonumber(status), reason = reason, headers = {} }
  for name, value in (head .. "\r\n"):gmatch("\r\n([^:\r\n]+):[ \t]*([^\r\n]-)[ \t]*%f[\r\n]") do
    name = name:lower()
    res.headers[name] = res.headers[name] and (res.headers[name] .. ", " .. value) or value
  end
  local clen = tonumber(res.headers["content-length"])
  local bodyless = method == "HEAD" or res.status == 204 or res.status == 304
    or (res.status and res.status < 200)
  if clen and not bodyless then
    local ok, err = c:_need(clen, deadline)
    if not ok then return nil, err .. " (reading the body)" end
    res.body = c:_take(clen)
  else
    res.body = ""
  end
  return res
end

-- Opens a connection to `srv`.
function M.connect(srv)
  return assert(ws.connect(srv))
end

-- Sends `method target` (see M.request for opts) on `c` and reads the answer.
function M.exchange(c, method, target, opts)
  assert(c:send_raw(M.request(method, target, opts)))
  return assert(M.read(c, method, opts and opts.timeout))
end

-- One request on a fresh connection (closed afterwards); returns the response.
function M.fetch(srv, method, target, opts)
  local c = M.connect(srv)
  local res = M.exchange(c, method, target, opts)
  c:close_tcp()
  return res
end

function M.get(srv, target, opts)
  return M.fetch(srv, "GET", target, opts)
end

return M
