-- The HTTP/1.1 upgrade (RFC 6455 4, RFC 9112): the 101 response and its accept key,
-- requests in pieces and with frames attached, header spelling, and every rejection
-- status of the contract (404, 405, 426, 400, 431, 505, 408).

local server = require "spec.support.server"
local ws = require "spec.support.ws"
local socket = require "socket"

local APP = "spec/apps/probe.lua"

-- Checks an error response: status, Connection: close, a Content-Length that matches a
-- non-empty body; then the server must close the connection.
local function assert_rejected(c, res, status, err)
  assert.is_table(res, "no response: " .. tostring(err))
  assert.are.equal(status, res.status, "response was:\n" .. tostring(res.head) .. "\n" .. tostring(res.body))
  local conn = (res.headers.connection or ""):lower()
  assert.truthy(conn:find("close", 1, true), "no Connection: close in:\n" .. res.head)
  assert.is_not_nil(res.headers["content-length"], "no Content-Length in:\n" .. res.head)
  assert.is_true(#res.body > 0, "empty body")
  assert.is_true(c:wait_closed(2), "server did not close the connection after " .. status)
  c:close_tcp()
end

describe("handshake", function()
  local srv
  setup(function()
    srv = server.start(APP)
  end)
  teardown(function()
    server.stop_all()
  end)

  local function try(path, opts)
    local c = assert(ws.connect(srv))
    local res, err = c:handshake(path, opts)
    return c, res, err
  end

  -- Sends the request text `build(key)` as it is and expects a 101 whose accept
  -- key answers `key`. Returns the client.
  local function accepted_raw(build)
    local key = ws.new_key()
    local c, res, err = try("/probe", { raw = build(key) })
    res.key = key
    assert(ws.check_101(res), err)
    return c
  end

  describe("valid upgrade", function()
    it("answers 101 with Upgrade, Connection and a correct Sec-WebSocket-Accept", function()
      local c, res, err = try("/probe")
      assert(ws.check_101(res), err)
      assert.are.equal(ws.accept_key(res.key), res.headers["sec-websocket-accept"])
      assert.are.equal("HTTP/1.1", res.version)
      c:send_text("after upgrade")
      c:expect_text("after upgrade")
      c:close_handshake(1000)
    end)

    it("computes the accept key of the RFC 6455 example", function()
      local key = "dGhlIHNhbXBsZSBub25jZQ=="
      local _, res = try("/probe", { key = key })
      assert.are.equal(101, res.status)
      assert.are.equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", res.headers["sec-websocket-accept"])
    end)

    it("sends nothing after the 101 head until there is something to say", function()
      local c, res = try("/probe")
      assert.are.equal(101, res.status)
      assert.is_nil(res.headers["content-length"] and tonumber(res.headers["content-length"]) > 0 or nil,
        "101 must not carry a body")
      c:expect_silence(0.2)
      c:close_tcp()
    end)

    it("accepts a request that arrives one byte at a time", function()
      local c, res, err = try("/probe", { pieces = 1, delay = 0.001 })
      assert(ws.check_101(res), err)
      c:send_text("slow")
      c:expect_text("slow")
      c:close_tcp()
    end)

    it("processes frames sent in the same packet as the request", function()
      local frames = ws.frame({ opcode = 1, payload = "first" })
        .. ws.frame({ opcode = 2, payload = "\0second" })
        .. ws.frame({ opcode = 9, payload = "p" })
      local c, res, err = try("/probe", { append = frames })
      assert(ws.check_101(res), err)
      c:expect_text("first")
      c:expect_binary("\0second")
      c:expect_pong("p")
      c:close_handshake(1000)
    end)

    it("processes a frame whose first bytes arrive with the end of the request", function()
      local req = ws.request("/probe")
      local frame = ws.frame({ opcode = 1, payload = "split frame" })
      local c = assert(ws.connect(srv))
      c:send_raw(req:sub(1, 10))
      server.sleep(0.05)
      c:send_raw(req:sub(11) .. frame:sub(1, 3))
      local res = assert(c:read_response())
      assert.are.equal(101, res.status)
      server.sleep(0.05)
      c:send_raw(frame:sub(4))
      c:expect_text("split frame")
      c:close_tcp()
    end)

    local connection_values = { "keep-alive, Upgrade", "Upgrade, keep-alive", "keep-alive,upgrade",
                                "UPGRADE", "upgrade" }
    for _, value in ipairs(connection_values) do
      it("accepts Connection: " .. value, function()
        local c, res, err = try("/probe", { headers = { Connection = value } })
        assert(ws.check_101(res), err)
        c:close_tcp()
      end)
    end

    it("treats header names and the Upgrade value case-insensitively", function()
      local c = accepted_raw(function(key)
        return "GET /probe HTTP/1.1\r\nhOsT: 127.0.0.1\r\nUPGRADE: WebSocket\r\nconnection: upgrade\r\n"
          .. "SEC-WEBSOCKET-KEY: " .. key .. "\r\nsec-websocket-version: 13\r\n\r\n"
      end)
      c:send_text("ci")
      c:expect_text("ci")
      c:close_tcp()
    end)

    it("does not select a subprotocol the app never offered", function()
      local c, res, err = try("/probe", { headers = { ["Sec-WebSocket-Protocol"] = "chat, superchat" } })
      assert(ws.check_101(res), err)
      assert.is_nil(res.headers["sec-websocket-protocol"], "server picked a subprotocol:\n" .. res.head)
      c:close_tcp()
    end)

    local odd_but_valid = {
      { "obs-text (bytes >= 0x80) in a value", { "X-Name: caf\xe9 \xce\xba" } },
      { "an underscore and digits in a name", { "X_Under_9: 1" } },
      { "a tab inside a value", { "X-Tab: a\tb" } },
      { "an empty value", { "X-Empty:" } },
      { "Connection split over two lines", { "Connection: keep-alive" } },
    }
    for _, case in ipairs(odd_but_valid) do
      it("accepts " .. case[1], function()
        local c, res, err = try("/probe", { extra = case[2] })
        assert(ws.check_101(res), err)
        c:close_tcp()
      end)
    end

    it("accepts Connection: Upgrade when another Connection line comes first", function()
      local c = accepted_raw(function(key)
        return "GET /probe HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\nUpgrade: websocket\r\n"
          .. "Connection: Upgrade\r\nSec-WebSocket-Key: " .. key .. "\r\nSec-WebSocket-Version: 13\r\n\r\n"
      end)
      c:close_tcp()
    end)

    it("accepts an IPv6 Host with a port", function()
      local c, res, err = try("/probe", { host = "[::1]:8080" })
      assert(ws.check_101(res), err)
      c:close_tcp()
    end)

    it("ignores the query string when routing", function()
      local c, res, err = try("/probe?x=1&y=two")
      assert(ws.check_101(res), err)
      c:close_tcp()
    end)

    it("accepts unrelated extra headers (a same-origin Origin, User-Agent, Cookie)", function()
      local origin = "http://127.0.0.1" -- the Host the test client sends
      local c, res, err = try("/probe", { headers = { Origin = origin, ["User-Agent"] = "spec",
                                                      Cookie = "a=b" } })
      assert(ws.check_101(res), err)
      c:close_tcp()
    end)

    it("refuses a cross-origin browser request with 403 (the default origin policy)", function()
      local c, res = try("/probe", { headers = { Origin = "http://example.com" } })
      assert.are.equal(403, res.status)
      c:close_tcp()
    end)

    it("accepts optional whitespace around header values", function()
      local c = accepted_raw(function(key)
        return "GET /probe HTTP/1.1\r\nHost:127.0.0.1\r\nUpgrade: \t websocket \t\r\n"
          .. "Connection:Upgrade\r\nSec-WebSocket-Key:  " .. key .. "  \r\nSec-WebSocket-Version: 13\r\n\r\n"
      end)
      c:close_tcp()
    end)
  end)

  describe("rejections", function()
    it("404 for an unknown path", function()
      local c, res, err = try("/nope")
      assert_rejected(c, res, 404, err)
    end)

    it("404 for paths that only resemble a route (exact match)", function()
      for _, path in ipairs({ "/probe/", "/PROBE", "/probe/x", "/prob" }) do
        local c, res, err = try(path)
        assert_rejected(c, res, 404, err)
      end
    end)

    it("405 for POST and PUT on a websocket route", function()
      for _, method in ipairs({ "POST", "PUT" }) do
        local c, res, err = try("/probe", { method = method, headers = { ["Content-Length"] = "0" } })
        assert_rejected(c, res, 405, err)
      end
    end)

    it("426 with Upgrade: websocket when Upgrade is missing", function()
      local c, res, err = try("/probe", { headers = { Upgrade = false } })
      assert_rejected(c, res, 426, err)
      assert.are.equal("websocket", (res.headers.upgrade or ""):lower())
    end)

    it("426 when Upgrade names another protocol", function()
      local c, res, err = try("/probe", { headers = { Upgrade = "h2c" } })
      assert_rejected(c, res, 426, err)
      assert.are.equal("websocket", (res.headers.upgrade or ""):lower())
    end)

    it("426 when Connection is missing or lacks the upgrade token", function()
      for _, value in ipairs({ false, "keep-alive", "close", "upgraded" }) do
        local c, res, err = try("/probe", { headers = { Connection = value } })
        assert_rejected(c, res, 426, err)
        assert.are.equal("websocket", (res.headers.upgrade or ""):lower())
      end
    end)

    it("426 with Sec-WebSocket-Version: 13 when the version is missing or not 13", function()
      for _, value in ipairs({ false, "8", "12", "14", "abc" }) do
        local c, res, err = try("/probe", { headers = { ["Sec-WebSocket-Version"] = value } })
        assert_rejected(c, res, 426, err)
        assert.are.equal("13", res.headers["sec-websocket-version"],
          "version " .. tostring(value) .. ": no Sec-WebSocket-Version: 13 in\n" .. res.head)
      end
    end)

    it("400 when Host is missing", function()
      local c, res, err = try("/probe", { headers = { Host = false } })
      assert_rejected(c, res, 400, err)
    end)

    local bad_keys = {
      { "missing", false },
      { "empty", "" },
      { "too short", "abc" },
      { "15 bytes", "AAAAAAAAAAAAAAAAAAAA" },           -- base64 of 15 bytes
      { "17 bytes", "AAAAAAAAAAAAAAAAAAAAAAA=" },       -- base64 of 17 bytes
      { "not base64", "!!!!!!!!!!!!!!!!!!!!!!==" },
    }
    for _, case in ipairs(bad_keys) do
      it("400 for a bad Sec-WebSocket-Key (" .. case[1] .. ")", function()
        local c, res, err = try("/probe", { headers = { ["Sec-WebSocket-Key"] = case[2] } })
        assert_rejected(c, res, 400, err)
      end)
    end

    local duplicates = {
      { "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==" },
      { "Sec-WebSocket-Version", "13" },
      { "Host", "127.0.0.1" },
      { "Upgrade", "websocket" },
    }
    for _, dup in ipairs(duplicates) do
      it("400 for a duplicate " .. dup[1] .. " header", function()
        local c, res, err = try("/probe", { extra = { dup[1] .. ": " .. dup[2] } })
        assert_rejected(c, res, 400, err)
      end)
    end

    local function valid_headers()
      return "Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        .. "Sec-WebSocket-Key: " .. ws.new_key() .. "\r\nSec-WebSocket-Version: 13\r\n"
    end

    local malformed = {
      { "request line without version", function() return "GET /probe\r\n" .. valid_headers() .. "\r\n" end },
      { "request line with extra token",
        function() return "GET /probe HTTP/1.1 extra\r\n" .. valid_headers() .. "\r\n" end },
      { "double space in request line",
        function() return "GET  /probe HTTP/1.1\r\n" .. valid_headers() .. "\r\n" end },
      { "garbage version", function() return "GET /probe HTTX/1.1\r\n" .. valid_headers() .. "\r\n" end },
      { "header without colon",
        function() return "GET /probe HTTP/1.1\r\n" .. valid_headers() .. "NoColonHere\r\n\r\n" end },
      { "space before colon",
        function() return "GET /probe HTTP/1.1\r\n" .. valid_headers() .. "X-Bad : 1\r\n\r\n" end },
      { "empty header name",
        function() return "GET /probe HTTP/1.1\r\n" .. valid_headers() .. ": v\r\n\r\n" end },
      { "bare LF line endings", function()
          return ("GET /probe HTTP/1.1\r\n" .. valid_headers() .. "\r\n"):gsub("\r\n", "\n")
        end },
      { "bare CR inside a header value",
        function() return "GET /probe HTTP/1.1\r\n" .. valid_headers() .. "X-A: a\rb\r\n\r\n" end },
      { "bare LF inside the headers",
        function() return "GET /probe HTTP/1.1\r\n" .. valid_headers() .. "X-A: a\nX-B: b\r\n\r\n" end },
      { "obs-fold continuation line",
        function() return "GET /probe HTTP/1.1\r\n" .. valid_headers() .. "X-A: a\r\n  folded\r\n\r\n" end },
      { "NUL in a header value",
        function() return "GET /probe HTTP/1.1\r\n" .. valid_headers() .. "X-A: a\0b\r\n\r\n" end },
    }
    for _, case in ipairs(malformed) do
      it("400 for a malformed request: " .. case[1], function()
        local c, res, err = try("/probe", { raw = case[2]() })
        assert_rejected(c, res, 400, err)
      end)
    end

    it("400 for an HTTP/1.0 upgrade", function()
      local c, res, err = try("/probe", { version = "HTTP/1.0" })
      assert_rejected(c, res, 400, err)
    end)

    it("505 for HTTP versions other than 1.0 and 1.1", function()
      for _, version in ipairs({ "HTTP/2.0", "HTTP/3.0", "HTTP/0.9" }) do
        local c, res, err = try("/probe", { version = version })
        assert_rejected(c, res, 505, err)
      end
    end)

    it("431 when the headers exceed 8192 bytes", function()
      local c, res, err = try("/probe", { headers = { ["X-Big"] = string.rep("b", 9000) } })
      assert_rejected(c, res, 431, err)
    end)

    it("431 when there are more than 64 headers", function()
      local extra = {}
      for i = 1, 70 do extra[i] = "X-H" .. i .. ": " .. i end
      local c, res, err = try("/probe", { extra = extra })
      assert_rejected(c, res, 431, err)
    end)

    it("accepts a request just under the default limits (60 headers, ~7 KB)", function()
      local extra = {}
      for i = 1, 50 do extra[i] = "X-H" .. i .. ": " .. string.rep("v", 100) end
      local c, res, err = try("/probe", { extra = extra })
      assert(ws.check_101(res), err)
      c:close_tcp()
    end)

    it("accepts exactly 64 headers and answers 431 to 65", function()
      local extra = {}
      for i = 1, 59 do extra[i] = "X-H" .. i .. ": " .. i end     -- + 5 standard headers = 64
      local c, res, err = try("/probe", { extra = extra })
      assert(ws.check_101(res), err)
      c:close_tcp()
      extra[60] = "X-H60: 60"
      c, res, err = try("/probe", { extra = extra })
      assert_rejected(c, res, 431, err)
    end)

    it("431 when the headers arrive in pieces and never end", function()
      local c = assert(ws.connect(srv))
      c:send_raw("GET /probe HTTP/1.1\r\nHost: 127.0.0.1\r\n")
      for _ = 1, 20 do
        local ok = c:send_raw("X-Filler: " .. string.rep("z", 1000) .. "\r\n")
        if not ok then break end
      end
      local res, err = c:read_response()
      assert_rejected(c, res, 431, err)
    end)
  end)

  describe("configured limits", function()
    it("--max-header-bytes and --max-headers are honoured", function()
      local small = server.start(APP, { flags = { "--max-header-bytes", "1024", "--max-headers", "8" } })
      local function try_small(opts)
        local c = assert(ws.connect(small))
        local res, err = c:handshake("/probe", opts)
        return c, res, err
      end
      local c, res, err = try_small({ headers = { ["X-Big"] = string.rep("b", 1200) } })
      assert_rejected(c, res, 431, err)
      c, res, err = try_small({ headers = { ["X-Ok"] = string.rep("b", 500) } })
      assert(ws.check_101(res), err)
      c:close_tcp()
      c, res, err = try_small({ extra = { "A: 1", "B: 2", "C: 3", "D: 4" } })
      assert_rejected(c, res, 431, err)
      c, res, err = try_small({ extra = { "A: 1", "B: 2" } })
      assert(ws.check_101(res), err)
      c:close_tcp()
      small:stop()
    end)
  end)

  describe("handshake timeout", function()
    local quick
    before_each(function()
      quick = quick or server.start(APP, { flags = { "--handshake-timeout", "1" } })
    end)

    it("answers 408 to a connection that sends an incomplete request", function()
      local c = assert(ws.connect(quick))
      local t0 = socket.gettime()
      c:send_raw("GET /probe HTTP/1.1\r\nHost: 127.0.0.1\r\n")
      local res, err = c:read_response(3)
      local elapsed = socket.gettime() - t0
      assert_rejected(c, res, 408, err)
      assert.is_true(elapsed > 0.7 and elapsed < 2.5, "408 after " .. elapsed .. " s (timeout 1 s)")
    end)

    it("408 also for a client that keeps trickling bytes", function()
      local c = assert(ws.connect(quick))
      local t0 = socket.gettime()
      local req = ws.request("/probe")
      for i = 1, #req do
        if not c:send_raw(req:sub(i, i)) then break end
        local readable = socket.select({ c.sock }, nil, 0.25)
        if #readable > 0 or socket.gettime() - t0 > 3 then break end
      end
      local res, err = c:read_response(3)
      local elapsed = socket.gettime() - t0
      assert_rejected(c, res, 408, err)
      assert.is_true(elapsed < 2.5, "408 only after " .. elapsed .. " s")
    end)

    it("answers 408 to a connection that sends nothing", function()
      local c = assert(ws.connect(quick))
      local res, err = c:read_response(3)
      assert_rejected(c, res, 408, err)
    end)

    it("applies handshake_timeout from moonwire.app{} (spec/apps/limits.lua: 1 s)", function()
      local limits = server.start("spec/apps/limits.lua")
      local c = assert(ws.connect(limits))
      local t0 = socket.gettime()
      c:send_raw("GET /small HTTP/1.1\r\n")
      local res, err = c:read_response(3)
      local elapsed = socket.gettime() - t0
      assert_rejected(c, res, 408, err)
      assert.is_true(elapsed > 0.7 and elapsed < 2.5, "408 after " .. elapsed .. " s")
      limits:stop()
    end)

    it("does not time out a completed upgrade", function()
      local c = ws.open(quick, "/probe")
      server.sleep(1.5)
      c:send_text("still here")
      c:expect_text("still here")
      c:close_tcp()
    end)
  end)
end)
