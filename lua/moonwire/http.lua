-- moonwire.http: an HTTP/1.1 client for handlers, in Lua on moonwire.tcp.
--
--   local http = require "moonwire.http"
--   local res, err = http.request { url = "http://127.0.0.1:8080/check?token=" .. t,
--                                   method = "GET", headers = { accept = "text/plain" },
--                                   timeout = 2000 }
--   if res and res.status == 200 then ... res.body ... res.headers["content-type"] end
--
-- The call waits without blocking the loop. Bodies may come with
-- Content-Length, chunked, or delimited by the close; https:// uses TLS with
-- the certificate verified (opts.verify = false turns that off, opts.ca_file
-- names a CA bundle). Connections that allow it go back to the worker's
-- pool after the body is read (opts.keepalive = false closes them).
local tonumber, type, pairs, ipairs, tostring = tonumber, type, pairs, ipairs, tostring
local setmetatable = setmetatable
local concat, error = table.concat, error
local lower, find, sub, match, format = string.lower, string.find, string.sub, string.match,
  string.format

local M = {}

-- Limits (docs/clients.md).
M.DEFAULT_TIMEOUT = 10000           -- ms, for connect, send and each read
M.MAX_BODY_SIZE = 16 * 1024 * 1024  -- bytes of response body
M.MAX_HEADERS = 100                 -- response header lines
M.KEEPALIVE_IDLE = 60000            -- ms a pooled connection may idle
M.KEEPALIVE_POOL = 30               -- pooled connections per host

local DEFAULT_PORTS = { http = 80, https = 443, ws = 80, wss = 443 }
local TLS_SCHEMES = { https = true, wss = true }

-- Splits "scheme://host[:port][/path][?query]" (IPv6 hosts in brackets).
-- Returns { scheme, host, port, target, tls, authority } or nil, err.
function M._parse_url(url, schemes)
  if type(url) ~= "string" then return nil, "url must be a string" end
  -- Spaces and control characters would split the request line.
  if find(url, "[%c%s]") then return nil, "bad url (spaces or control characters): " .. url end
  local scheme, rest = match(url, "^(%a[%w+.-]*)://(.*)$")
  scheme = scheme and lower(scheme)
  if not scheme or not schemes[scheme] then
    return nil, "unsupported url (expected " .. schemes._names .. "): " .. url
  end
  local authority, target = match(rest, "^([^/?#]*)([^#]*)")
  if target == "" then target = "/" elseif sub(target, 1, 1) == "?" then target = "/" .. target end
  authority = authority:gsub("^.*@", "")  -- userinfo is not supported: dropped
  local host, port = match(authority, "^%[([^%]]+)%]:?(%d*)$")
  if not host then host, port = match(authority, "^([^:]+):?(%d*)$") end
  if not host or host == "" then return nil, "no host in url: " .. url end
  port = tonumber(port) or DEFAULT_PORTS[scheme]
  return { scheme = scheme, host = host, port = port, target = target,
           tls = TLS_SCHEMES[scheme] or false, authority = authority }
end
local HTTP_SCHEMES = { http = true, https = true, _names = "http:// or https://" }

-- Opens a socket to u (a parsed url) with the request options. Returns sock
-- or nil, err.
function M._connect(u, opts)
  local sock = require("moonwire").tcp()
  local t = opts.timeout or M.DEFAULT_TIMEOUT
  sock:settimeout(t)
  local ok, err = sock:connect(u.host, u.port, {
    tls = u.tls, verify = opts.verify, ca_file = opts.ca_file, server_name = opts.server_name,
    max_receive = opts.max_body_size or M.MAX_BODY_SIZE })
  if not ok then return nil, err end
  return sock
end

-- Reads a status line and headers. Returns status, reason, headers
-- (lowercase names; repeated ones joined with ", "), version; or nil, err.
function M._read_head(sock)
  local line, err = sock:receive("*l")
  if not line then return nil, err end
  local version, status, reason = match(line, "^HTTP/(%d%.%d) (%d%d%d) ?(.*)$")
  if not version then return nil, "bad status line: " .. sub(line, 1, 80) end
  local headers, n = {}, 0
  while true do
    local h, herr = sock:receive("*l")
    if not h then return nil, herr end
    if h == "" then break end
    n = n + 1
    if n > M.MAX_HEADERS then return nil, "too many headers" end
    local name, value = match(h, "^([^:%s]+):%s*(.-)%s*$")
    if not name then return nil, "bad header line: " .. sub(h, 1, 80) end
    name = lower(name)
    headers[name] = headers[name] and (headers[name] .. ", " .. value) or value
  end
  return tonumber(status), reason, headers, version
end

local TOKEN = "^[%w!#$%%&'*+.^_`|~-]+$" -- RFC 9110 5.6.2

-- Raises at the app's call unless the method and header names are tokens
-- and no value holds a line break: either would let a value inject
-- headers or split the request.
function M._check_request(method, headers)
  if type(method) ~= "string" or not match(method, TOKEN) then
    error("moonwire.http: bad method " .. tostring(method), 3)
  end
  for name, value in pairs(headers or {}) do
    if type(name) ~= "string" or not match(name, TOKEN) then
      error("moonwire.http: bad header name " .. format("%q", tostring(name)), 3)
    end
    for _, v in ipairs(type(value) == "table" and value or { value }) do
      if find(tostring(v), "[\r\n%z]") then
        error("moonwire.http: header " .. name .. " has a line break in its value", 3)
      end
    end
  end
end

-- Builds the request head. headers: name -> value (or a list of values),
-- checked by _check_request.
function M._head(method, u, headers, extra)
  local lines = { method .. " " .. u.target .. " HTTP/1.1\r\n" }
  local seen = {}
  for name, value in pairs(headers or {}) do
    seen[lower(name)] = true
    if type(value) == "table" then
      for _, v in ipairs(value) do lines[#lines + 1] = name .. ": " .. tostring(v) .. "\r\n" end
    else
      lines[#lines + 1] = name .. ": " .. tostring(value) .. "\r\n"
    end
  end
  for name, value in pairs(extra) do
    if not seen[lower(name)] then lines[#lines + 1] = name .. ": " .. value .. "\r\n" end
  end
  lines[#lines + 1] = "\r\n"
  return concat(lines)
end

-- RFC 9112 7.1: chunk-size [; ext] CRLF data CRLF ... 0 CRLF trailers CRLF
local function read_chunked(sock, max)
  local parts, total = {}, 0
  while true do
    local line, err = sock:receive("*l")
    if not line then return nil, err end
    local size = tonumber(match(line, "^%s*(%x+)"), 16)
    if not size then return nil, "bad chunk size: " .. sub(line, 1, 40) end
    if size == 0 then break end
    total = total + size
    if total > max then return nil, "body too large (max_body_size " .. max .. ")" end
    local data, derr = sock:receive(size + 2)
    if not data then return nil, derr end
    parts[#parts + 1] = sub(data, 1, size)
  end
  while true do -- trailer fields, ignored
    local line, err = sock:receive("*l")
    if not line then return nil, err end
    if line == "" then break end
  end
  return concat(parts)
end

-- RFC 9112 6.3: how the body of this response is delimited.
local function read_body(sock, method, status, headers, max)
  if method == "HEAD" or status == 204 or status == 304 or (status >= 100 and status < 200) then
    return "", true
  end
  local te = headers["transfer-encoding"]
  if te and find(lower(te), "chunked", 1, true) then
    local body, err = read_chunked(sock, max)
    return body, body ~= nil, err
  end
  local cl = headers["content-length"]
  if cl then
    local n = tonumber(cl)
    if not n or n < 0 then return nil, false, "bad content-length: " .. cl end
    if n > max then return nil, false, "body too large (max_body_size " .. max .. ")" end
    local body, err = sock:receive(n)
    return body, body ~= nil, err
  end
  local body, err = sock:receive("*a") -- until the close (bounded by max_receive)
  if not body and err == "too large" then err = "body too large (max_body_size " .. max .. ")" end
  return body, false, err
end

local function wants_close(version, headers)
  local conn = headers.connection and lower(headers.connection) or ""
  if find(conn, "close", 1, true) then return true end
  if version == "1.0" then return not find(conn, "keep-alive", 1, true) end
  return false
end

-- Methods that may be sent again (RFC 9110 9.2.2).
local IDEMPOTENT = { GET = true, HEAD = true, PUT = true, DELETE = true, OPTIONS = true,
                     TRACE = true }

-- One try on one connection. Returns res; or nil, err, stale where stale
-- says the failure came from a pooled connection before any byte of a
-- response (the server had closed it meanwhile): worth one more try.
local function attempt(u, opts, method, body, max)
  local sock, err = M._connect(u, opts)
  if not sock then return nil, err end
  local reused = sock:getreusedtimes()
  local extra = { Host = u.authority, ["User-Agent"] = "moonwire" }
  if body or method == "POST" or method == "PUT" or method == "PATCH" then
    extra["Content-Length"] = tostring(body and #body or 0)
  end
  if opts.keepalive == false then extra.Connection = "close" end
  local ok, serr = sock:send(M._head(method, u, opts.headers, extra) .. (body or ""))
  if not ok then sock:close(); return nil, serr, reused > 0 end
  local status, reason, headers, version
  local first = true
  repeat -- interim 1xx responses (100 Continue) come before the real one
    status, reason, headers, version = M._read_head(sock)
    if not status then
      sock:close()
      return nil, reason, first and reused > 0 and reason == "closed"
    end
    first = false
  until status >= 200 or status == 101
  local rbody, reusable, berr = read_body(sock, method, status, headers, max)
  if not rbody then sock:close(); return nil, berr end
  -- After a 101 the connection speaks another protocol: never pooled.
  if reusable and status ~= 101 and opts.keepalive ~= false and not wants_close(version, headers) then
    sock:setkeepalive(opts.keepalive_timeout or M.KEEPALIVE_IDLE,
      opts.keepalive_pool or M.KEEPALIVE_POOL)
  else
    sock:close()
  end
  -- reused: how many times the connection had served before (0: new).
  return { status = status, reason = reason, headers = headers, body = rbody, reused = reused }
end

-- http.request{ url, method = "GET", headers = {}, body = nil, timeout = ms,
--   max_body_size, keepalive = true, verify = true, ca_file, server_name }
-- -> res { status, reason, headers, body, reused } | nil, err
function M.request(opts)
  if type(opts) == "string" then opts = { url = opts } end
  if type(opts) ~= "table" then error("moonwire.http: request takes a table or a url", 2) end
  local u, uerr = M._parse_url(opts.url, HTTP_SCHEMES)
  if not u then return nil, uerr end
  local method = type(opts.method) == "string" and opts.method:upper() or opts.method or "GET"
  M._check_request(method, opts.headers)
  local body = opts.body
  if body ~= nil and type(body) ~= "string" then error("moonwire.http: body must be a string", 2) end
  local max = opts.max_body_size or M.MAX_BODY_SIZE
  -- A pooled connection the server closed while idle fails before any
  -- response: an idempotent request goes again, on another connection.
  for _ = 1, M.KEEPALIVE_POOL + 1 do
    local res, err, stale = attempt(u, opts, method, body, max)
    if res or not (stale and IDEMPOTENT[method]) then return res, err end
  end
  return nil, "closed"
end

-- Shorthands: http.get(url [, opts]), http.post(url, body [, opts]).
function M.get(url, opts)
  local o = setmetatable({ url = url, method = "GET" }, { __index = opts })
  return M.request(o)
end

function M.post(url, body, opts)
  local o = setmetatable({ url = url, method = "POST", body = body }, { __index = opts })
  return M.request(o)
end

return M
