-- The upgrade hook, subprotocols, the origin policy and route parameters, seen from
-- the wire with our raw client. Runs spec/apps/upgrade.lua.

local server = require "spec.support.server"
local ws = require "spec.support.ws"
local http = require "spec.support.http"
local probe = require "spec.support.probe"
local socket = require "socket"

local APP = "spec/apps/upgrade.lua"
local now = socket.gettime

local function hook_runs(srv, route)
  return tonumber(http.get(srv, "/hook_runs?route=" .. route).body)
end

-- ws.attempt sends an upgrade request (a refusal or a 101 comes back); ws.refused expects a refusal.
local attempt, refused = ws.attempt, ws.refused

-- Expects a 101 (accept key checked) and returns the response and the client.
local function accepted(srv, path, opts)
  local res, c = attempt(srv, path, opts)
  assert(ws.check_101(res))
  return res, c
end

describe("app upgrade", function()
  local srv
  setup(function()
    srv = server.start(APP)
  end)
  before_each(function()
    assert.is_true(srv:alive(), "server died; log:\n" .. srv:log())
  end)
  teardown(function()
    server.stop_all()
  end)

  describe("hook refusals", function()
    it("a status alone refuses with that status; on_open never runs", function()
      local res = refused(srv, "/refuse_status", 401)
      assert.are.equal("HTTP/1.1", res.version)
      assert.are.equal("close", res.headers.connection:lower())
      assert.are.equal(1, hook_runs(srv, "/refuse_status"))
    end)

    it("a status, a body and headers are all sent", function()
      local res = refused(srv, "/refuse_full?who=bob", 429)
      assert.are.equal("slow down bob\n", res.body)
      assert.are.equal(#res.body, tonumber(res.headers["content-length"]))
      assert.are.equal("7", res.headers["retry-after"])
      assert.are.equal("rate limited", res.headers["x-why"])
      assert.is_nil(res.headers["sec-websocket-accept"])
    end)

    it("false refuses with 403", function()
      refused(srv, "/refuse_false", 403)
    end)

    it("nil and true accept", function()
      for _, path in ipairs({ "/accept_nil", "/accept_true" }) do
        local _, c = accepted(srv, path)
        c:expect_text("open")
        c:close_handshake(1000)
      end
    end)
  end)

  describe("accepting with a table", function()
    it("makes the table ws.data, writable per connection", function()
      local _, a = accepted(srv, "/accept_table?user=ann")
      local _, b = accepted(srv, "/accept_table?user=ben")
      assert.are.same({ user = "ann", n = 42 }, probe.decode(a:expect_text()))
      assert.are.same({ user = "ben", n = 42 }, probe.decode(b:expect_text()))
      a:send_text("hi")
      assert.are.same({ user = "ann", n = 42, last = "hi" }, probe.decode(a:expect_text()))
      b:send_text("yo")
      assert.are.same({ user = "ben", n = 42, last = "yo" }, probe.decode(b:expect_text()))
      a:close_handshake(1000)
      b:close_handshake(1000)
    end)

    it("gives the hook the request: method, path, route, params, query, headers, peer", function()
      local res, c = accepted(srv, "/inspect/x%2Fy?q=a%20b&n=1", {
        headers = { ["X-Tag"] = "t-17", ["Sec-WebSocket-Protocol"] = "p1, p2" } })
      assert.is_nil(res.headers["sec-websocket-protocol"], "no route protocols: no header")
      local d = probe.decode(c:expect_text())
      assert.are.equal("GET", d.method)
      assert.are.equal("/inspect/x%2Fy", d.path)
      assert.are.equal("/inspect/:id", d.route)
      assert.are.same({ id = "x/y" }, d.params)
      assert.are.same({ q = "a b", n = "1" }, d.query)
      assert.are.equal("q=a%20b&n=1", d.query_string)
      assert.are.same({ "p1", "p2" }, d.protocols)
      assert.are.equal("t-17", d.xtag)
      assert.are.equal("none", d.origin)
      assert.are.equal("127.0.0.1", d.remote_addr)
      assert.are.equal(c:local_port(), d.remote_port)
      c:close_handshake(1000)
    end)
  end)

  describe("hooks that sleep", function()
    it("serve other clients at once while a hook sleeps; two sleeping hooks overlap", function()
      local t0 = now()
      local a = assert(ws.connect(srv))
      local b = assert(ws.connect(srv))
      local key_a, key_b = ws.new_key(), ws.new_key()
      assert(a:send_raw((ws.request("/slow_hook?sleep=0.6", { key = key_a }))))
      assert(b:send_raw((ws.request("/slow_hook?sleep=0.6", { key = key_b }))))
      socket.sleep(0.05)
      local t1 = now()
      local fast = ws.open(srv, "/fast")
      fast:send_text("quick")
      fast:expect_text("quick", 1)
      local took = now() - t1
      assert.is_true(took < 0.3, "a client waited " .. took .. " s for a sleeping hook")
      fast:close_handshake(1000)
      for _, pair in ipairs({ { a, key_a }, { b, key_b } }) do
        local res = assert(pair[1]:read_response(3))
        res.key = pair[2]
        assert(ws.check_101(res))
        local line = pair[1]:expect_text(nil, 2)
        local slept = tonumber(line:match("^open after ([%d%.]+)$"))
        assert.is_true(slept ~= nil and slept >= 0.55, line)
      end
      local total = now() - t0
      assert.is_true(total < 1.1, "two 0.6 s hooks took " .. total .. " s (not concurrent)")
      a:close_handshake(1000)
      b:close_handshake(1000)
    end)

    it("delivers frames sent in the request's packet after the hook accepts, in order", function()
      local frames = ws.frame({ opcode = 1, payload = "first" })
        .. ws.frame({ opcode = 2, payload = "second" })
        .. ws.frame({ opcode = 1, payload = "third" })
      local _, c = accepted(srv, "/slow_hook?sleep=0.3", { append = frames })
      local line = c:expect_text(nil, 2)
      assert.is_truthy(line:match("^open after 0%.[3-9]"), line)
      c:expect_text("first")
      c:expect_binary("second")
      c:expect_text("third")
      c:close_handshake(1000)
    end)

    it("survives a client that leaves while its hook sleeps", function()
      local c = assert(ws.connect(srv))
      assert(c:send_raw((ws.request("/slow_hook?sleep=0.3"))))
      socket.sleep(0.05)
      c:reset()
      socket.sleep(0.4)
      assert.is_true(srv:alive())
      local f = ws.open(srv, "/fast")
      f:send_text("still here")
      f:expect_text("still here")
      f:close_handshake(1000)
    end)
  end)

  describe("hook errors", function()
    it("answers 500 and logs the error with FILE:LINE", function()
      local line = server.line_of(APP, "HOOK_ERROR_LINE")
      local res = refused(srv, "/hook_error", 500)
      assert.is_truthy(res.body:find("upgrade hook failed", 1, true), res.body)
      assert.is_not_nil(srv:wait_log("upgrade%.lua:" .. line .. ":", 2),
        "log lacks upgrade.lua:" .. line .. ":\n" .. srv:log())
      assert.is_truthy(srv:log():find("upgrade hook boom", 1, true))
      -- The server goes on.
      local _, c = accepted(srv, "/accept_nil")
      c:expect_text("open")
      c:close_handshake(1000)
    end)

    it("answers 408 when the hook is slower than --handshake-timeout", function()
      local quick = server.start(APP, { flags = { "--handshake-timeout", "0.5" } })
      local c = assert(ws.connect(quick))
      local t0 = now()
      assert(c:send_raw((ws.request("/very_slow_hook"))))
      local res = assert(c:read_response(3))
      local took = now() - t0
      assert.are.equal(408, res.status, res.head)
      assert.is_true(took > 0.35 and took < 1.1, "408 after " .. took .. " s (timeout 0.5)")
      c:expect_tcp_close(2)
      -- The hook wakes later; its connection must not open, and the server goes on.
      assert.is_not_nil(quick:wait_log("VERY SLOW HOOK WOKE", 3), quick:log())
      socket.sleep(0.1)
      assert.is_nil(quick:log():find("VERY SLOW HOOK OPENED", 1, true), "a timed-out upgrade opened")
      assert.is_true(quick:alive())
      local f = ws.open(quick, "/fast")
      f:send_text("after")
      f:expect_text("after")
      f:close_handshake(1000)
      quick:stop()
    end)
  end)

  describe("response headers", function()
    it("adds req.response_headers to the 101", function()
      local res, c = accepted(srv, "/response_headers")
      assert.are.equal("world", res.headers["x-hello"])
      assert.are.equal("/response_headers", res.headers["x-route"])
      c:expect_text("open")
      c:close_handshake(1000)
    end)
  end)

  describe("subprotocols", function()
    local function proto(path, offered)
      local res, c = accepted(srv, path,
        { headers = { ["Sec-WebSocket-Protocol"] = offered or false } })
      return res.headers["sec-websocket-protocol"], c, res
    end

    it("chooses by the route's preference, not the client's order", function()
      local chosen, c = proto("/proto", "chat.v1, chat.v2")
      assert.are.equal("chat.v2", chosen)
      c:expect_text("open")
      c:close_handshake(1000)
      chosen, c = proto("/proto", "other, chat.v1")
      assert.are.equal("chat.v1", chosen)
      c:close_tcp()
    end)

    it("sends no Sec-WebSocket-Protocol when none is offered or none fits", function()
      local chosen, c, res = proto("/proto", nil)
      assert.is_nil(chosen, res.head)
      c:close_tcp()
      chosen, c, res = proto("/proto", "x.v9, y.v1")
      assert.is_nil(chosen, res.head)
      c:expect_text("open")
      c:close_handshake(1000)
    end)

    it("lets the hook override the route's pick", function()
      local chosen, c = proto("/proto_hook", "chat.v2, chat.v1")
      assert.are.equal("chat.v1", chosen)
      c:expect_text("preselected=chat.v2")
      c:close_handshake(1000)
      chosen, c = proto("/proto_hook", "chat.v2")
      assert.are.equal("chat.v2", chosen)
      c:expect_text("preselected=chat.v2")
      c:close_handshake(1000)
    end)

    it("answers 500 when the hook picks a protocol the client did not offer", function()
      refused(srv, "/bad_protocol", 500, { headers = { ["Sec-WebSocket-Protocol"] = "chat.v1" } })
      assert.are.equal(1, hook_runs(srv, "/bad_protocol"))
    end)
  end)

  describe("origin policy", function()
    local function with_origin(origin, host)
      return { host = host, headers = { Origin = origin } }
    end

    it("lets requests without Origin pass", function()
      local _, c = accepted(srv, "/origin_default")
      c:expect_text("open")
      c:close_handshake(1000)
    end)

    it("lets a same-origin request pass (host and port equal to Host)", function()
      local _, c = accepted(srv, "/origin_default", with_origin("http://127.0.0.1"))
      c:expect_text("open")
      c:close_handshake(1000)
      local hostport = "127.0.0.1:" .. srv.port
      _, c = accepted(srv, "/origin_default", with_origin("http://" .. hostport, hostport))
      c:expect_text("open")
      c:close_handshake(1000)
    end)

    it("refuses a cross-origin request with 403 before the hook runs", function()
      local before = hook_runs(srv, "/origin_default")
      local res = refused(srv, "/origin_default", 403, with_origin("http://evil.example"))
      assert.is_truthy(res.body:find("origin not allowed", 1, true), res.body)
      -- Same host, other port: another origin.
      refused(srv, "/origin_default", 403,
        with_origin("http://127.0.0.1:1", "127.0.0.1:" .. srv.port))
      assert.are.equal(before, hook_runs(srv, "/origin_default"), "the hook ran for a refused origin")
    end)

    it("allows any origin with origins = '*'", function()
      for _, o in ipairs({ "http://evil.example", "https://x.y:444", "null" }) do
        local _, c = accepted(srv, "/origin_any", with_origin(o))
        c:expect_text("open")
        c:close_handshake(1000)
      end
    end)

    it("allows exactly the listed origins, case-insensitively", function()
      for _, o in ipairs({ "https://a.example", "HTTPS://A.Example", "http://localhost:3000" }) do
        local _, c = accepted(srv, "/origin_list", with_origin(o))
        c:expect_text("open")
        c:close_handshake(1000)
      end
      local before = hook_runs(srv, "/origin_list")
      for _, o in ipairs({ "https://b.example", "http://a.example", "http://localhost:3001",
                           "http://127.0.0.1" }) do
        refused(srv, "/origin_list", 403, with_origin(o))
      end
      assert.are.equal(before, hook_runs(srv, "/origin_list"))
    end)
  end)

  describe("route parameters", function()
    local function opened(path)
      local _, c = accepted(srv, path)
      local line = c:expect_text()
      c:close_handshake(1000)
      return line
    end

    it("matches one segment each, percent-decoded", function()
      assert.are.equal('param {["name"]="kitchen"}', opened("/room/kitchen"))
      assert.are.equal('param {["name"]="hello world"}', opened("/room/hello%20world?x=1"))
      assert.are.equal('param {["name"]="caf\195\169"}', opened("/room/caf%C3%A9"))
      assert.are.equal('param {["x"]="1",["y"]="two"}', opened("/a/1/b/two"))
    end)

    it("prefers the exact path over a parameter route defined before it", function()
      assert.are.equal("exact {}", opened("/room/lobby"))
      assert.are.equal('param {["name"]="lobby2"}', opened("/room/lobby2"))
    end)

    it("answers 404 when no route matches", function()
      for _, path in ipairs({ "/room/", "/room", "/room/a/b", "/a/1/b", "/a/1/c/2", "/nope" }) do
        refused(srv, path, 404)
      end
    end)
  end)
end)
