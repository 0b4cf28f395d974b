-- The outbound clients suite (issue 11), run by spec/clients_spec.lua and,
-- with the server moving one byte per syscall on its outbound sockets, by
-- spec/clients_shortio_spec.lua. See spec/clients_spec.lua for what it covers.

local server = require "spec.support.server"
local ws = require "spec.support.ws"
local cjson = require "cjson"
local socket = require "socket"
local signal = require "posix.signal"
local stdlib = require "posix.stdlib"
local dirent = require "posix.dirent"

local APP = "spec/apps/clients.lua"
local PYTHON = "/usr/bin/python3"
local now = socket.gettime

-- One request on /c, its decoded reply.
local function ask(c, req, timeout)
  c:send_text(cjson.encode(req))
  return cjson.decode(c:expect_text(nil, timeout or 10))
end

local function start_redis(dir)
  local port = server.free_port()
  local p = server.spawn({ "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
    "--appendonly", "no", "--dir", dir }, {
    ready = function(p) return p:stdout():find("Ready to accept connections", 1, true) end })
  p.port = port
  return p
end

local function open_fds(pid)
  local n = 0
  for _ in dirent.files("/proc/" .. pid .. "/fd") do n = n + 1 end
  return n - 2 -- . and ..
end

-- mode: { short_io = true } runs every server with MOONWIRE_TEST_SHORT_IO=1.
return function(mode)
  -- describe, it, assert...: busted gives them to the spec file's
  -- environment, so the suite runs in its caller's.
  setfenv(1, getfenv(2))
  mode.title = mode.short_io and " (short I/O)" or ""
  local function start(app, opts)
    opts = opts or {}
    if mode.short_io then
      opts.env = opts.env or {}
      opts.env.MOONWIRE_TEST_SHORT_IO = "1"
    end
    return server.start(app, opts)
  end

  describe("outbound clients" .. mode.title, function()
    local srv, redis_srv, http_up, ws_up, c, tmp
    local function url(path) return "http://127.0.0.1:" .. http_up.port .. path end

    setup(function()
      tmp = assert(stdlib.mkdtemp("/tmp/mw-clients-spec-XXXXXX"))
      redis_srv = start_redis(tmp)
      http_up = server.spawn({ PYTHON, server.path("spec/upstreams/http_upstream.py"), "0" })
      ws_up = server.spawn({ PYTHON, server.path("spec/upstreams/ws_upstream.py"), "0" })
      srv = start(APP, { env = { MW_TIMER_URL = url("/hello") } })
    end)
    before_each(function()
      assert.is_true(srv:alive(), "server died; log:\n" .. srv:log())
      c = ws.open(srv, "/c")
    end)
    after_each(function()
      c:close_tcp()
    end)
    teardown(function()
      server.stop_all()
      os.execute("rm -rf " .. tmp)
    end)

    describe("moonwire.tcp", function()
      it("raises a clear error when used while the app file loads", function()
        local r = ask(c, { op = "load_error" })
        assert.matches("moonwire.tcp: connect can only be called inside a handler", r.err, 1, true)
      end)

      it("says connection refused for a closed port", function()
        local r = ask(c, { op = "tcp", port = server.free_port() })
        assert.equal("connection refused", r.err)
      end)

      it("says no such host for a name that does not resolve", function()
        local r = ask(c, { op = "tcp", host = "nonexistent.invalid", port = 80 })
        assert.equal("no such host: nonexistent.invalid", r.err)
      end)

      it("times out a connect that gets no answer", function()
        -- A listener with a full backlog drops further SYNs: the connect hangs.
        local l = assert(socket.bind("127.0.0.1", 0, 0))
        local _, port = l:getsockname()
        local filler = socket.tcp()
        filler:settimeout(1)
        assert(filler:connect("127.0.0.1", port))
        local t0 = now()
        local r = ask(c, { op = "tcp", port = tonumber(port), timeouts = { 300, 1000, 1000 } })
        assert.equal("timeout", r.err)
        assert.is_true(now() - t0 < 5)
        assert.is_true(ask(c, { op = "ping" }).pong)
        filler:close()
        l:close()
      end)

      it("resolves host names off the loop (localhost)", function()
        local r = ask(c, { op = "tcp", host = "localhost", port = redis_srv.port,
          steps = { { "send", "PING\r\n" }, { "receive", "*l" } } })
        assert.equal(1, r.ok)
        assert.equal("+PONG", r.steps[2].v)
      end)

      it("sends, receives n bytes and lines, and stays usable after a read timeout", function()
        local req = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
        local r = ask(c, { op = "tcp", port = http_up.port, timeout = 300, steps = {
          { "send", req },
          { "receive", 12 },
          { "receive", "*l" },
          { "receive", "*a" },                                    -- keep-alive: never ends
          { "send", { "GET /hello HTTP/1.1\r\n", "Host: x\r\n", "\r\n" } },
          { "receive", "*l" },
          { "close" },
          { "receive", "*l" },
        } })
        assert.equal(1, r.ok)
        local s = r.steps
        assert.equal(#req, s[1].v)
        assert.equal("HTTP/1.1 200", s[2].v)
        assert.equal(" OK", s[3].v)
        assert.equal("timeout", s[4].err)
        assert.matches("\r\n\r\nhello$", s[4].partial)
        assert.equal("HTTP/1.1 200 OK", s[6].v)
        assert.equal(1, s[7].v)
        assert.equal("closed", s[8].err)
      end)

      it("receives everything until the close with *a, then says closed", function()
        local r = ask(c, { op = "tcp", port = http_up.port, steps = {
          { "send", "GET /close HTTP/1.1\r\nHost: x\r\n\r\n" }, { "receive", "*a" }, { "receive", 1 } } })
        assert.matches("^HTTP/1.[01] 200 OK\r\n.*\r\n\r\nuntil the close$", r.steps[2].v)
        assert.equal("closed", r.steps[3].err)
      end)

      it("bounds a line with max_line", function()
        local steps = { { "send", "GET /longline HTTP/1.1\r\nHost: x\r\n\r\n" } }
        for i = 2, 9 do steps[i] = { "receive", "*l" } end
        local r = ask(c, { op = "tcp", port = http_up.port, opts = { max_line = 1024 }, steps = steps })
        local errs = {}
        for i = 2, 9 do if r.steps[i].err then errs[#errs + 1] = r.steps[i].err end end
        assert.equal("line too long", errs[1])
        assert.equal("closed", errs[2]) -- the socket closed with the error
      end)

      it("reuses pooled connections after setkeepalive", function()
        local steps = { { "send", "PING\r\n" }, { "receive", "*l" }, { "keepalive" } }
        local r1 = ask(c, { op = "tcp", port = redis_srv.port, opts = { pool = "spec-pool" }, steps = steps })
        local r2 = ask(c, { op = "tcp", port = redis_srv.port, opts = { pool = "spec-pool" }, steps = steps })
        assert.equal(0, r1.reused)
        assert.equal(1, r2.reused)
        assert.equal(1, r2.steps[3].v)
      end)

      it("never pools a socket with unread data", function()
        local r = ask(c, { op = "tcp", port = redis_srv.port, opts = { pool = "spec-unread" }, steps = {
          { "send", "PING\r\nPING\r\n" }, { "receive", "*l" }, { "receive", 1 }, { "keepalive" } } })
        if mode.short_io then
          -- One byte per read: the rest is still in the kernel, not our buffer,
          -- so setkeepalive accepts it; the pool's watcher sees it readable.
          assert.equal(1, r.steps[4].v)
        else
          assert.equal("unread data in buffer", r.steps[4].err)
        end
        socket.sleep(0.1)
        local r2 = ask(c, { op = "tcp", port = redis_srv.port, opts = { pool = "spec-unread" },
          steps = { { "send", "PING\r\n" }, { "receive", "*l" } } })
        assert.equal(0, r2.reused)
        assert.equal("+PONG", r2.steps[2].v)
      end)

      it("drops a pooled connection that the peer closed", function()
        local r1 = ask(c, { op = "tcp", port = redis_srv.port, opts = { pool = "spec-quit" }, steps = {
          { "send", "QUIT\r\n" }, { "receive", "*l" }, { "keepalive" } } })
        assert.equal("+OK", r1.steps[2].v)
        assert.equal(1, r1.steps[3].v)
        socket.sleep(0.2) -- redis closes after +OK
        local r2 = ask(c, { op = "tcp", port = redis_srv.port, opts = { pool = "spec-quit" },
          steps = { { "send", "PING\r\n" }, { "receive", "*l" } } })
        assert.equal(0, r2.reused)
        assert.equal("+PONG", r2.steps[2].v)
      end)

      it("closes the fds of sockets the collector takes", function()
        ask(c, { op = "drop", n = 1, port = redis_srv.port }) -- warm up (resolver state, pools)
        local before = open_fds(srv.pid)
        ask(c, { op = "drop", n = 50, port = redis_srv.port })
        local after = server.poll(2, function()
          local n = open_fds(srv.pid)
          return n <= before and n
        end)
        assert.is_truthy(after, ("fds before %d, after %d"):format(before, open_fds(srv.pid)))
      end)

      it("fails one handler, not the server, when a wait cannot yield (C boundary)", function()
        local before = open_fds(srv.pid)
        c:send_text(cjson.encode { op = "gsub_yield", port = redis_srv.port })
        c:expect_close(1011)
        assert.truthy(srv:wait_log("attempt to yield across C%-call boundary"))
        local c2 = ws.open(srv, "/c")
        assert.is_true(ask(c2, { op = "ping" }).pong)
        c2:close_tcp()
        assert.truthy(server.poll(2, function() return open_fds(srv.pid) <= before end))
      end)

      it("disarms a moonwire.sleep whose yield failed the same way", function()
        c:send_text(cjson.encode { op = "gsub_sleep" })
        c:expect_close(1011)
        local errors = select(2, srv:log():gsub("error", ""))
        socket.sleep(0.4) -- past the sleep's 0.2 s: its timer must not fire
        local c2 = ws.open(srv, "/c")
        for _ = 1, 3 do assert.is_true(ask(c2, { op = "ping" }).pong) end
        c2:close_tcp()
        assert.equal(errors, select(2, srv:log():gsub("error", "")), srv:log())
      end)
    end)

    describe("moonwire.http", function()
      it("GETs with Content-Length, lowercase headers and repeated ones joined", function()
        local r = ask(c, { op = "http", req = { url = url("/hello") } })
        assert.equal(200, r.status)
        assert.equal("hello", r.body)
        assert.equal("5", r.headers["content-length"])
        assert.equal("a, b", r.headers["x-test"])
      end)

      it("keeps connections alive through the pool", function()
        ask(c, { op = "http", req = { url = url("/hello") } })
        local r = ask(c, { op = "http", req = { url = url("/hello") } })
        assert.equal(200, r.status)
        assert.is_true(r.reused >= 1)
      end)

      it("sends an idempotent request again when a pooled connection turns out closed", function()
        local drop = url("/drop-second")
        assert.equal("first", ask(c, { op = "http", req = { url = drop } }).body)
        local r = ask(c, { op = "http", req = { url = drop } }) -- the pooled one: dropped, retried
        assert.equal("first", r.body)
        assert.equal(0, r.reused)
        -- The retry's connection went to the pool; a POST on it is dropped and
        -- not sent twice.
        r = ask(c, { op = "http", req = { url = drop, method = "POST", body = "x" } })
        assert.equal("closed", r.err)
      end)

      it("reads chunked and close-delimited bodies", function()
        assert.equal("abbccc", ask(c, { op = "http", req = { url = url("/chunked") } }).body)
        assert.equal("until the close", ask(c, { op = "http", req = { url = url("/close") } }).body)
      end)

      it("POSTs a body with headers", function()
        local r = ask(c, { op = "http", req = { url = url("/echo"), method = "POST", body = "ping=1",
          headers = { ["Content-Type"] = "text/plain" } } })
        assert.equal(200, r.status)
        assert.equal("ping=1", r.body)
        assert.equal("6", r.headers["x-length"])
      end)

      it("returns statuses as they are", function()
        local r = ask(c, { op = "http", req = { url = url("/status?code=404") } })
        assert.equal(404, r.status)
        assert.equal("status 404", r.body)
      end)

      it("times out on a slow upstream", function()
        local r = ask(c, { op = "http", req = { url = url("/slow?s=2"), timeout = 300 } })
        assert.equal("timeout", r.err)
      end)

      it("enforces max_body_size", function()
        local r = ask(c, { op = "http", req = { url = url("/big?n=100000"), max_body_size = 1000 } })
        assert.matches("^body too large", r.err)
        r = ask(c, { op = "http", req = { url = url("/big?n=100000") } })
        assert.equal(100000, #r.body)
      end)

      it("refuses header injection and request splitting", function()
        local r = ask(c, { op = "http_misuse", url = url("/hello") })
        assert.matches("moonwire.http: header X%-A has a line break in its value", r.raised)
        assert.matches('moonwire.http: bad header name "Bad Name"', r.raised2, 1, true)
        r = ask(c, { op = "http", req = { url = url("/hello HTTP/1.1\r\nX: y") } })
        assert.matches("^bad url", r.err)
      end)

      it("says connection refused and rejects bad urls", function()
        local r = ask(c, { op = "http", req = { url = "http://127.0.0.1:" .. server.free_port() .. "/" } })
        assert.equal("connection refused", r.err)
        r = ask(c, { op = "http", req = { url = "ftp://127.0.0.1/" } })
        assert.matches("^unsupported url", r.err)
      end)

      it("calls our own server's routes, and works inside an HTTP route", function()
        local self_url = "http://127.0.0.1:" .. srv.port .. "/hello"
        local r = ask(c, { op = "http", req = { url = self_url } })
        assert.equal("hello from moonwire", r.body)
        local body, code = require("socket.http").request("http://127.0.0.1:" .. srv.port
          .. "/fetch?url=" .. url("/hello"):gsub(":", "%%3A"):gsub("/", "%%2F"))
        assert.equal(200, code)
        assert.equal("fetched 200 hello", body)
      end)
    end)

    describe("moonwire.redis", function()
      it("runs commands by name: strings, integers, nil, errors", function()
        local r = ask(c, { op = "redis", port = redis_srv.port, cmds = {
          { "set", "k1", "v1" }, { "get", "k1" }, { "get", "missing" }, { "incr", "n1" },
          { "incr", "k1" }, { "rpush", "l1", "a", "b", "c" }, { "lrange", "l1", 0, -1 },
          { "del", "k1", "l1", "n1" } } })
        local res = r.results
        assert.equal("OK", res[1].v)
        assert.equal("v1", res[2].v)
        assert.equal("NULL", res[3].v)
        assert.equal(1, res[4].v)
        assert.matches("^ERR value is not an integer", res[5].err)
        assert.equal(3, res[6].v)
        assert.same({ "a", "b", "c" }, res[7].v)
        assert.equal(3, res[8].v)
      end)

      it("pipelines, with an error reply in its place", function()
        local r = ask(c, { op = "redis", port = redis_srv.port, pipeline = {
          { "set", "p1", "x" }, { "incr", "p2" }, { "incr", "p1" }, { "get", "p1" },
          { "del", "p1", "p2" } } })
        local p = r.pipeline
        assert.equal("OK", p[1])
        assert.equal(1, p[2])
        assert.equal("FALSE", p[3][1])
        assert.matches("^ERR", p[3][2])
        assert.equal("x", p[4])
        assert.equal(2, p[5])
      end)

      it("selects a database and reuses pooled connections", function()
        ask(c, { op = "redis", port = redis_srv.port, db = 2, cmds = { { "set", "dbk", "in 2" } } })
        local r2 = ask(c, { op = "redis", port = redis_srv.port, db = 2, cmds = { { "get", "dbk" } } })
        local r0 = ask(c, { op = "redis", port = redis_srv.port, cmds = { { "get", "dbk" } } })
        assert.equal("in 2", r2.results[1].v)
        assert.is_true(r2.reused >= 1)
        assert.equal("NULL", r0.results[1].v)
      end)

      it("subscribes and reads messages published from another connection", function()
        local sub = ws.open(srv, "/c")
        -- A read that times out before a message leaves the subscription usable.
        sub:send_text(cjson.encode { op = "redis_sub", port = redis_srv.port, channel = "news", count = 2,
          timeout = 300, idle_read = true })
        sub:expect_text("subscribed", 5)
        local r = ask(c, { op = "redis", port = redis_srv.port,
          cmds = { { "publish", "news", "m1" }, { "publish", "news", "m2" } } })
        assert.equal(1, r.results[1].v)
        local got = cjson.decode(sub:expect_text(nil, 5))
        assert.same({ "subscribe", "news", 1 }, got.confirm[1])
        assert.same({ { "message", "news", "m1" }, { "message", "news", "m2" } }, got.messages)
        assert.equal("timeout", got.idle_err)
        assert.matches("not pooled", got.keepalive_err)
        sub:close_tcp()
      end)
    end)

    describe("moonwire.websocket", function()
      local function py_url() return "ws://127.0.0.1:" .. ws_up.port .. "/" end

      it("talks to python websockets: text, binary, fragments, pings, the server's close", function()
        local r = ask(c, { op = "ws", url = py_url(), send = {
          { data = "hi" }, { data = "bin\0ary", binary = true }, { data = "fragments" },
          { data = "ping me" }, { data = "close me" } } })
        assert.is_nil(r.err)
        local rep = r.replies
        assert.same({ data = "hi", kind = "text" }, rep[1])
        assert.same({ data = "bin\0ary", kind = "binary" }, rep[2])
        assert.same({ data = "abcdef", kind = "text" }, rep[3])
        assert.same({ data = "pinged", kind = "text" }, rep[4])
        assert.same({ kind = "closed", code = 4000, reason = "bye" }, rep[5])
      end)

      it("talks to our own server and closes cleanly", function()
        local big = string.rep("0123456789", 20000)
        local r = ask(c, { op = "ws", url = "ws://127.0.0.1:" .. srv.port .. "/echo",
          send = { { data = "one" }, { data = big, binary = true } }, close = { 1000, "done" } })
        assert.same({ data = "one", kind = "text" }, r.replies[1])
        assert.equal(big, r.replies[2].data)
        assert.same({ true }, r.closed)
      end)

      it("reports a refused handshake", function()
        local r = ask(c, { op = "ws", url = "ws://127.0.0.1:" .. srv.port .. "/nope" })
        assert.matches("^handshake refused: 404", r.err)
      end)
    end)

    describe("works from", function()
      it("the upgrade hook", function()
        local c2 = ws.open(srv, "/ctx/upgrade?url=" .. url("/hello"))
        assert.same({ status = 200, body = "hello" }, cjson.decode(c2:expect_text(nil, 5)))
        c2:close_tcp()
      end)

      it("on_open", function()
        local c2 = ws.open(srv, "/ctx/open?url=" .. url("/chunked"))
        assert.same({ status = 200, body = "abbccc" }, cjson.decode(c2:expect_text(nil, 5)))
        c2:close_tcp()
      end)

      it("on_close", function()
        local c2 = ws.open(srv, "/ctx/close?port=" .. redis_srv.port .. "&key=closed1")
        c2:close_handshake(1000)
        local v = server.poll(5, function()
          local r = ask(c, { op = "redis", port = redis_srv.port, cmds = { { "get", "closed1" } } })
          return r.results[1].v ~= "NULL" and r.results[1].v
        end, 0.1)
        assert.equal("set by on_close", v)
      end)

      it("a timer", function()
        local r = server.poll(5, function()
          local t = ask(c, { op = "timer_result" })
          return not t.pending and t
        end, 0.1)
        assert.same({ status = 200, body = "hello" }, r)
      end)
    end)

    describe("concurrency", function()
      it("answers other connections at once while one handler waits seconds on an upstream", function()
        local t0 = now()
        c:send_text(cjson.encode { op = "http", req = { url = url("/slow?s=2") } })
        local other = ws.open(srv, "/c")
        for _ = 1, 5 do assert.is_true(ask(other, { op = "ping" }).pong) end
        local t_other = now() - t0
        other:close_tcp()
        local r = cjson.decode(c:expect_text(nil, 10))
        local t_slow = now() - t0
        assert.equal("slow 2", r.body)
        -- The other connection's five round trips ended before the slow call did.
        assert.is_true(t_other < t_slow, ("other %.2f s, slow %.2f s"):format(t_other, t_slow))
        assert.is_true(t_other < 1.5, ("other connection waited %.2f s"):format(t_other))
        assert.is_true(t_slow >= 1.9, ("slow call returned after %.2f s"):format(t_slow))
      end)

      it("survives a hot reload while a handler waits, and a client leaving meanwhile", function()
        c:send_text(cjson.encode { op = "http", req = { url = url("/slow?s=1") } })
        local gone = ws.open(srv, "/c")
        gone:send_text(cjson.encode { op = "http", req = { url = url("/slow?s=1") } })
        socket.sleep(0.2)
        gone:close_tcp()
        local before = select(2, srv:log():gsub("reloaded ", ""))
        signal.kill(srv.pid, signal.SIGHUP)
        local function reloads() return select(2, srv:log():gsub("reloaded ", "")) end
        -- generous: make test-valgrind runs this too, where a reload once
        -- took more than 5 s on a busy machine
        assert.truthy(server.poll(15, function() return reloads() > before end),
          "no reload logged:\n" .. srv:log())
        assert.equal("slow 1", cjson.decode(c:expect_text(nil, 10)).body)
        assert.is_true(ask(c, { op = "ping" }).pong)
      end)
    end)

    describe("workers", function()
      it("gives each worker its own sockets, pool and resolver", function()
        local s2 = start(APP, { flags = { "--workers", "2" } })
        local by_worker, conns = {}, {}
        for i = 1, 64 do -- SO_REUSEPORT spreads connections by hash: open until both are hit
          conns[i] = ws.open(s2, "/c")
          by_worker[ask(conns[i], { op = "worker" }).worker] = conns[i]
          if by_worker[1] and by_worker[2] then break end
        end
        for w = 1, 2 do
          local ci = assert(by_worker[w], "no connection reached worker " .. w)
          for _ = 1, 2 do -- the second time from the worker's pool
            local u = "http://localhost:" .. http_up.port .. "/hello"
            local r = ask(ci, { op = "http", req = { url = u } })
            assert.equal("hello", r.body)
            r = ask(ci, { op = "redis", port = redis_srv.port, cmds = { { "incr", "workers_n" } } })
            assert.is_number(r.results[1].v)
          end
        end
        for _, ci in ipairs(conns) do ci:close_tcp() end
        s2:stop()
      end)
    end)

    describe("shutdown", function()
      it("stops cleanly while handlers wait on upstreams and connections sit in the pool", function()
        local s2 = start(APP)
        local c2 = ws.open(s2, "/c")
        ask(c2, { op = "redis", port = redis_srv.port, cmds = { { "ping" } } }) -- one pooled
        c2:send_text(cjson.encode { op = "http", req = { url = url("/slow?s=3") } })
        local c3 = ws.open(s2, "/c")
        c3:send_text(cjson.encode { op = "tcp", host = "localhost", port = http_up.port,
          steps = { { "receive", "*l" } } })
        socket.sleep(0.3)
        local how, code, forced = s2:stop(5)
        assert.equal("exited", how)
        assert.equal(0, code)
        assert.is_false(forced)
        c2:close_tcp()
        c3:close_tcp()
      end)
    end)
  end)

  describe("outbound TLS" .. mode.title, function()
    local up, srv, c, tmp, cert
    setup(function()
      tmp = assert(stdlib.mkdtemp("/tmp/mw-clients-tls-XXXXXX"))
      cert = tmp .. "/cert.pem"
      local key = tmp .. "/key.pem"
      assert(os.execute(("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s -out %s -days 2 "
        .. "-subj /CN=moonwire-test -addext subjectAltName=DNS:localhost,IP:127.0.0.1 "
        .. ">/dev/null 2>&1"):format(key, cert)) == 0)
      up = start(APP, { flags = { "--tls-listen", "127.0.0.1:0", "--tls-cert", cert,
        "--tls-key", key } })
      up.tls_port = tonumber(up:wait_log("TLS listening on [%d.]+:(%d+)"))
      srv = start(APP)
    end)
    before_each(function() c = ws.open(srv, "/c") end)
    after_each(function() c:close_tcp() end)
    teardown(function()
      server.stop_all()
      os.execute("rm -rf " .. tmp)
    end)

    local get = "GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    it("verifies certificates by default", function()
      local r = ask(c, { op = "tcp", port = up.tls_port, opts = { tls = true } })
      assert.matches("^tls: certificate verify failed: self.signed certificate", r.err)
    end)

    it("connects with ca_file, and checks the name", function()
      local r = ask(c, { op = "tcp", port = up.tls_port, opts = { tls = true, ca_file = cert },
        steps = { { "send", get }, { "receive", "*l" } } })
      assert.equal(1, r.ok)
      assert.equal("HTTP/1.1 200 OK", r.steps[2].v)
      r = ask(c, { op = "tcp", port = up.tls_port,
        opts = { tls = true, ca_file = cert, server_name = "example.com" } })
      assert.matches("^tls: certificate verify failed: hostname mismatch", r.err)
      r = ask(c, { op = "tcp", host = "localhost", port = up.tls_port, opts = { tls = true, ca_file = cert },
        steps = { { "send", get }, { "receive", "*l" } } })
      assert.equal("HTTP/1.1 200 OK", r.steps[2].v)
    end)

    it("connects without verification when asked", function()
      local r = ask(c, { op = "tcp", port = up.tls_port, opts = { tls = true, verify = false },
        steps = { { "send", get }, { "receive", "*l" } } })
      assert.equal("HTTP/1.1 200 OK", r.steps[2].v)
    end)

    it("speaks https with pooled TLS connections", function()
      local u = "https://127.0.0.1:" .. up.tls_port .. "/hello"
      local r1 = ask(c, { op = "http", req = { url = u, ca_file = cert } })
      local r2 = ask(c, { op = "http", req = { url = u, ca_file = cert } })
      assert.equal("hello from moonwire", r1.body)
      assert.equal("hello from moonwire", r2.body)
      assert.is_true(r2.reused >= 1)
      assert.matches("^tls: certificate verify failed", ask(c, { op = "http", req = { url = u } }).err)
    end)

    it("speaks wss", function()
      local r = ask(c, { op = "ws", url = "wss://127.0.0.1:" .. up.tls_port .. "/echo",
        opts = { ca_file = cert }, send = { { data = "secure" } }, close = { 1000 } })
      assert.same({ data = "secure", kind = "text" }, r.replies[1])
      assert.same({ true }, r.closed)
    end)
  end)
end
