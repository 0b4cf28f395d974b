-- Limits under attack, request ambiguities and graceful shutdown (issue 7),
-- with our own raw client: a smaller set than spec/clients/test_python_hardening.py.
-- The app is spec/apps/hardening.lua (/echo, /small with a 4096-byte route
-- limit, /count logging "got ..." and "on_close ..." lines).

local server = require "spec.support.server"
local ws = require "spec.support.ws"
local socket = require "socket"
local signal = require "posix.signal"

local APP = "spec/apps/hardening.lua"
local now = socket.gettime

local function echo_ok(srv, text)
  local c = ws.open(srv, "/echo")
  c:send_text(text)
  c:expect_text(text)
  c:close_handshake(1000)
end

-- Waits for the process to exit by itself; returns its exit code, or nil.
local function exit_code(srv, timeout)
  local gone = server.poll(timeout, function() return not srv:alive() end, 0.01)
  if not gone then return nil end
  return srv.status.code, srv.status.how
end

describe("hardening", function()
  after_each(function() server.stop_all() end)

  describe("slowloris", function()
    it("drops handshakes that trickle in after handshake_timeout while others are served", function()
      local srv = server.start(APP, { flags = { "--handshake-timeout", "1" } })
      local req = ws.request("/echo")
      local slow, t0 = {}, now()
      for i = 1, 20 do slow[i] = assert(ws.connect(srv)) end
      -- One byte every 0.25 s per connection: the request would take ~40 s.
      local pos, worst = 1, 0
      while now() - t0 < 2.2 do
        for _, c in ipairs(slow) do c.sock:settimeout(0); c.sock:send(req, pos, pos) end
        pos = pos + 1
        local t = now()
        echo_ok(srv, "normal " .. pos)
        worst = math.max(worst, now() - t)
        socket.sleep(0.25)
      end
      assert.is_true(worst < 0.5, "a normal client took " .. worst .. " s")
      for i, c in ipairs(slow) do
        local res, err = c:read_response(1)
        if res then
          assert.are.equal(408, res.status, "connection " .. i)
        else
          assert.is_truthy(err:match("^closed"), "connection " .. i .. ": " .. err)
        end
        assert.is_true(c:wait_closed(1), "trickling connection " .. i .. " still open")
      end
    end)
  end)

  describe("frame lengths", function()
    local function stall(srv, path, len_bytes)
      local c = ws.open(srv, path)
      local t = now()
      -- A frame header announcing the length, a mask key, and nothing more.
      c:send_raw(ws.frame({ opcode = "binary", payload = "", len_form = 64, len_bytes = len_bytes }))
      local code = c:expect_close(nil, 2)
      local dt = now() - t
      c:send_close(code)
      assert.is_true(c:wait_closed(2), "no TCP close")
      return code, dt
    end

    it("closes 1009 at once on a 2^63-1 byte frame, also on a route with its own limit", function()
      local srv = server.start(APP)
      for _, path in ipairs({ "/echo", "/small" }) do
        local code, dt = stall(srv, path, "\127\255\255\255\255\255\255\255")
        assert.are.equal(1009, code, path)
        assert.is_true(dt < 1, path .. ": close after " .. dt .. " s")
      end
      echo_ok(srv, "still fine")
    end)

    it("closes 1002 on a 64-bit length with the top bit set", function()
      local srv = server.start(APP)
      assert.are.equal(1002, (stall(srv, "/echo", "\128\0\0\0\0\0\0\5")))
      assert.are.equal(1002, (stall(srv, "/echo", "\255\255\255\255\255\255\255\255")))
    end)
  end)

  describe("endless fragments", function()
    it("closes 1009 when a fragmented message passes the route's max_message_size", function()
      local srv = server.start(APP)
      local c = ws.open(srv, "/small")
      local chunk = ("f"):rep(100)
      c:send_text(chunk, { fin = false })
      for _ = 1, 39 do c:send_frame({ opcode = "cont", payload = chunk, fin = false }) end
      c:send_frame({ opcode = "cont", payload = ("f"):rep(96), fin = false })   -- 4096 so far
      c:expect_silence(0.3)
      c:send_frame({ opcode = "cont", payload = "f", fin = false })            -- 4097
      c:expect_close(1009, 1)
      c:send_close(1009)
      assert.is_true(c:wait_closed(2))
      echo_ok(srv, "others unaffected")
    end)
  end)

  describe("request ambiguities", function()
    local function up(extra)
      local lines = { "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
                      "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: " .. ws.new_key() }
      for _, h in ipairs(extra or {}) do lines[#lines + 1] = h end
      return lines
    end
    local function raw(line, headers, body)
      return line .. "\r\n" .. table.concat(headers, "\r\n") .. "\r\n\r\n" .. (body or "")
    end
    local cases = {
      { "duplicate Content-Length (POST)",
        raw("POST /body HTTP/1.1", { "Host: x", "Content-Length: 5", "Content-Length: 6" }, "hello!") },
      { "duplicate Content-Length (upgrade)",
        raw("GET /echo HTTP/1.1", up({ "Content-Length: 0", "Content-Length: 5" }), "hello") },
      { "Content-Length + Transfer-Encoding (POST)",
        raw("POST /body HTTP/1.1", { "Host: x", "Content-Length: 5", "Transfer-Encoding: chunked" },
          "0\r\n\r\n") },
      -- An upgrade has no body: a chunked one is refused like a Content-Length;
      -- a coding the server does not implement is 501.
      { "Transfer-Encoding on an upgrade",
        raw("GET /echo HTTP/1.1", up({ "Transfer-Encoding: chunked" }), "0\r\n\r\n") },
      { "a transfer coding other than chunked on an upgrade",
        raw("GET /echo HTTP/1.1", up({ "Transfer-Encoding: gzip, chunked" }), "0\r\n\r\n"), 501 },
      { "two Upgrade headers", raw("GET /echo HTTP/1.1", up({ "Upgrade: websocket" })) },
      { "two Sec-WebSocket-Key headers",
        raw("GET /echo HTTP/1.1", up({ "Sec-WebSocket-Key: " .. ws.new_key() })) },
      { "obsolete line folding", raw("GET /echo HTTP/1.1", up({ "X-Folded: a", " b" })) },
      { "bare CR in a header", raw("GET /echo HTTP/1.1", up({ "X-Bad: a\rb" })) },
      { "NUL in a header", raw("GET /echo HTTP/1.1", up({ "X-Bad: a\0b" })) },
      { "absolute-form target", raw("GET http://127.0.0.1/echo HTTP/1.1", up()) },
      { "request line with two spaces", raw("GET  /echo HTTP/1.1", up()) },
      { "space before the colon", raw("GET /echo HTTP/1.1", up({ "X-Spaced : yes" })) },
    }

    it("answers each with 400 (501 for a transfer coding), never 101", function()
      local srv = server.start(APP)
      local c = assert(ws.connect(srv))
      local res = assert(c:handshake(nil, { raw = raw("GET /echo HTTP/1.1", up()) }))
      assert.are.equal(101, res.status, "control request")
      c:close_tcp()
      local wrong = {}
      for _, case in ipairs(cases) do
        c = assert(ws.connect(srv))
        res = c:handshake(nil, { raw = case[2] })
        local status = res and res.status or "no answer"
        if status ~= (case[3] or 400) then wrong[#wrong + 1] = case[1] .. ": " .. tostring(status) end
        c:close_tcp()
      end
      assert.are.same({}, wrong)
    end)
  end)

  describe("graceful shutdown", function()
    it("closes every client with 1001, runs on_close, delivers queued messages, exits 0", function()
      local srv = server.start(APP, { flags = { "--shutdown-timeout", "5" } })
      local clients = {}
      for i = 1, 5 do clients[i] = ws.open(srv, "/count?sleep=0.01") end
      for i, c in ipairs(clients) do
        for n = 1, 10 do c:send_text(("seq c%d %d"):format(i, n)) end
      end
      socket.sleep(0.05)
      local t0 = now()
      signal.kill(srv.pid, signal.SIGTERM)
      for i, c in ipairs(clients) do
        local code, reason = c:expect_close(nil, 2)
        assert.are.same({ 1001, "server shutting down" }, { code, reason }, "client " .. i)
      end
      -- Refused while draining: the listener is closed.
      local late = ws.connect(srv, nil, 0.5)
      if late then
        local res = late:handshake("/echo", { timeout = 1 })
        assert.is_nil(res, "a new connection was answered during shutdown")
        late:close_tcp()
      end
      for _, c in ipairs(clients) do
        c:send_close(1001)
        assert.is_true(c:wait_closed(2))
      end
      local code = exit_code(srv, 3)
      local dt = now() - t0
      assert.are.equal(0, code)
      assert.is_true(dt < 2, "exit only after " .. dt .. " s")
      local log = srv:log()
      local closes = 0
      for c, r in log:gmatch("on_close %d+ (%d+) ([^\n]*)") do
        closes = closes + 1
        assert.are.same({ "1001", "server shutting down" }, { c, r })
      end
      assert.are.equal(5, closes)
      for i = 1, 5 do
        for n = 1, 10 do
          local line = ("got c%d %d\n"):format(i, n)
          assert.is_truthy(log:find(line, 1, true), "lost before shutdown: " .. line)
        end
      end
    end)

    it("waits for an unanswered close until shutdown_timeout; a second SIGTERM stops at once", function()
      local srv = server.start(APP, { flags = { "--shutdown-timeout", "1", "--close-timeout", "30" } })
      local mute = ws.open(srv, "/count")
      local t0 = now()
      signal.kill(srv.pid, signal.SIGTERM)
      socket.sleep(0.7)
      assert.is_true(srv:alive(), "exited with a client still closing")
      assert.are.equal(0, exit_code(srv, 1))
      local dt = now() - t0
      assert.is_true(dt > 0.9 and dt < 1.6, "exit after " .. dt .. " s")
      mute:close_tcp()

      srv = server.start(APP, { flags = { "--shutdown-timeout", "5", "--close-timeout", "30" } })
      mute = ws.open(srv, "/count")
      signal.kill(srv.pid, signal.SIGTERM)
      socket.sleep(0.2)
      assert.is_true(srv:alive())
      t0 = now()
      signal.kill(srv.pid, signal.SIGTERM)
      assert.are.equal(0, exit_code(srv, 1))
      assert.is_true(now() - t0 < 0.5)
      mute:close_tcp()
    end)
  end)
end)
