-- The app API seen from the wire: handler order, moonwire.sleep, errors in handlers,
-- on_close exactly once, the ws fields, ws:send across connections and on a closed
-- ws, ws:close and ws:ping from the server. Runs spec/apps/probe.lua.

local server = require "spec.support.server"
local ws = require "spec.support.ws"
local probe = require "spec.support.probe"
local socket = require "socket"

local PROBE = "spec/apps/probe.lua"
local now = socket.gettime

local one_close = probe.one_close

-- The id of the connection (opened after `observer`) whose second event is `second`.
-- Fails if the event list of a connection holds `event` (what: when).
local function assert_not_delivered(events, event, what)
  for _, e in ipairs(events) do
    assert.are_not.equal(event, e, "a message was delivered " .. what .. ": "
      .. table.concat(events, " | "))
  end
end

local function find_conn(observer, second, timeout)
  local deadline = now() + (timeout or 1)
  repeat
    for id = observer.id + 1, observer.id + 20 do
      if probe.events(observer, id)[2] == second then return id end
    end
    socket.sleep(0.05)
  until now() > deadline
end

describe("handlers", function()
  local srv, obs
  setup(function()
    srv = server.start(PROBE)
  end)
  before_each(function()
    assert.is_true(srv:alive(), "server died; log:\n" .. srv:log())
    obs = probe.observer(srv)
  end)
  after_each(function()
    obs:close_tcp()
  end)
  teardown(function()
    server.stop_all()
  end)

  describe("order", function()
    it("runs on_open (even a sleeping one) before the first message", function()
      local c = ws.open(srv, "/probe?open_sleep=0.3&open_send=opened",
        { append = ws.frame({ opcode = 1, payload = "early" }) })
      c:send_text("second")
      c:expect_text("opened", 2)
      c:expect_text("early")
      c:expect_text("second")
      c:send_text("id")
      local id = c:expect_text()
      local events = probe.events(obs, id)
      assert.are.same({ "open", "msg:early", "msg:second", "msg:id" }, events)
      c:close_handshake(1000)
    end)

    it("records open, messages and close in order, on_close last", function()
      local c = probe.open(srv)
      c:send_text("a")
      c:send_binary("b")
      c:send_text("c")
      c:expect_text("a")
      c:expect_binary("b")
      c:expect_text("c")
      c:close_handshake(1000, "done")
      local _, events = probe.wait_closed(obs, c.id)
      assert.are.same({ "open", "msg:id", "msg:a", "msg:b", "msg:c", "close:1000:done" }, events)
    end)

    it("delivers messages that arrive while a handler sleeps afterwards, in order", function()
      local c = probe.open(srv)
      local t0 = now()
      c:send_text("sleep 0.5 first")
      for i = 1, 5 do c:send_text("m" .. i) end
      c:expect_text("slept first", 3)
      local slept = now() - t0
      assert.is_true(slept >= 0.45, "sleep 0.5 returned after " .. slept .. " s")
      for i = 1, 5 do c:expect_text("m" .. i) end
      local events = probe.events(obs, c.id)
      assert.are.same({ "open", "msg:id", "msg:sleep 0.5 first", "msg:m1", "msg:m2", "msg:m3", "msg:m4",
                        "msg:m5" }, events)
      c:close_handshake(1000)
    end)

    it("delivers messages that arrived during a sleeping on_open before the client's close", function()
      local c = ws.open(srv, "/probe?open_sleep=0.3")
      c:send_raw(ws.frame({ opcode = 1, payload = "during-open-1" })
        .. ws.frame({ opcode = 1, payload = "during-open-2" })
        .. ws.frame({ opcode = 8, payload = ws.close_payload(1000, "bye") }))
      -- The echoes may or may not get out before the close reply; the close comes.
      local f = c:next_frame(2)
      while f.op ~= "close" do f = c:next_frame(2) end
      assert.are.equal(1000, f.code)
      assert.is_true(c:wait_closed(2))
      -- This connection never said "id"; it was opened after the observer.
      local id = find_conn(obs, "msg:during-open-1")
      assert.is_number(id, "connection not found")
      local _, events = probe.wait_closed(obs, id)
      assert.is_table(events, "connection not found")
      assert.are.same({ "open", "msg:during-open-1", "msg:during-open-2", "close:1000:bye" }, events)
    end)

    it("delivers messages that arrived during a sleeping on_open before a TCP drop", function()
      local c = ws.open(srv, "/probe?open_sleep=0.3&open_send=opened")
      c:send_text("before-drop-1")
      c:send_text("id")
      socket.sleep(0.05)
      c:close_tcp()
      local id = find_conn(obs, "msg:before-drop-1", 2)
      assert.is_number(id, "connection not found or its messages were lost")
      local closes, events = probe.wait_closed(obs, id)
      assert.are.equal(1, #closes)
      assert.is_table(events, "connection not found or its messages were lost")
      assert.are.same({ "open", "msg:before-drop-1", "msg:id", "close:1006:" }, events)
    end)

    it("keeps order across several sleeping messages", function()
      local c = probe.open(srv)
      c:send_text("sleep 0.1 a")
      c:send_text("x")
      c:send_text("sleep 0.05 b")
      c:send_text("y")
      c:expect_text("slept a", 2)
      c:expect_text("x")
      c:expect_text("slept b", 2)
      c:expect_text("y")
      c:close_handshake(1000)
    end)

    it("answers pings while a handler sleeps (control frames do not wait)", function()
      local c = probe.open(srv)
      c:send_text("sleep 0.5 z")
      socket.sleep(0.05)
      local t0 = now()
      c:ping("during sleep")
      c:expect_pong("during sleep", 1)
      assert.is_true(now() - t0 < 0.3, "pong waited for the sleeping handler")
      c:expect_text("slept z", 2)
      c:close_handshake(1000)
    end)

    it("answers another connection immediately while one sleeps", function()
      local sleeper = probe.open(srv)
      local other = probe.open(srv)
      sleeper:send_text("sleep 1 long")
      socket.sleep(0.05)
      local t0 = now()
      other:send_text("quick")
      other:expect_text("quick", 1)
      local took = now() - t0
      assert.is_true(took < 0.2, "the other connection waited " .. took .. " s")
      sleeper:expect_text("slept long", 3)
      sleeper:close_handshake(1000)
      other:close_handshake(1000)
    end)

    it("runs 50 concurrent sleeps of 0.3 s in about 0.3 s, not 15 s", function()
      local conns = {}
      for i = 1, 50 do conns[i] = ws.open(srv, "/probe") end
      local t0 = now()
      for i, c in ipairs(conns) do c:send_text("sleep 0.3 c" .. i) end
      for i, c in ipairs(conns) do c:expect_text("slept c" .. i, 3) end
      local took = now() - t0
      assert.is_true(took < 1.5, "50 sleeps took " .. took .. " s")
      for _, c in ipairs(conns) do c:close_tcp() end
    end)
  end)

  -- The messages of one read run in one handler run (a Lua loop over the
  -- batch); these pin down that nothing about order or failure changed.
  describe("many messages in one read", function()
    local function text(s) return ws.frame({ opcode = 1, payload = s }) end

    it("runs 200 messages of one write in order, each once", function()
      local c = probe.open(srv)
      local parts, want = {}, { "open", "msg:id" }
      for i = 1, 200 do
        parts[i] = text("m" .. i)
        want[#want + 1] = "msg:m" .. i
      end
      c:send_raw(table.concat(parts))
      for i = 1, 200 do c:expect_text("m" .. i) end
      assert.are.same(want, probe.events(obs, c.id))
      c:close_handshake(1000)
    end)

    it("queues the rest of the read when a handler sleeps in its middle", function()
      local c = probe.open(srv)
      c:send_raw(text("a") .. text("sleep 0.2 mid") .. text("b") .. text("c"))
      c:expect_text("a")
      c:expect_text("slept mid", 2)
      c:expect_text("b")
      c:expect_text("c")
      assert.are.same({ "open", "msg:id", "msg:a", "msg:sleep 0.2 mid", "msg:b", "msg:c" },
        probe.events(obs, c.id))
      c:close_handshake(1000)
    end)

    it("runs nothing of the read after a handler closes the connection", function()
      local c = probe.open(srv)
      c:send_raw(text("a") .. text("close 4001 done") .. text("b"))
      c:expect_text("a")
      c:expect_close(4001, 2)
      c:send_close(4001)
      assert.is_true(c:wait_closed(2))
      local _, events = probe.wait_closed(obs, c.id)
      assert.are.same({ "open", "msg:id", "msg:a", "msg:close 4001 done", "close:4001:done" }, events)
    end)

    it("keeps order around fragmented messages and control frames in the same read", function()
      local c = probe.open(srv)
      c:send_raw(text("a") .. ws.frame({ opcode = 1, payload = "b1", fin = false })
        .. ws.frame({ opcode = 0, payload = "b2" }) .. text("c")
        .. ws.frame({ opcode = 9, payload = "p" }) .. text("d"))
      local got = {}
      for _ = 1, 5 do
        local f = c:next_frame(2)
        got[#got + 1] = (f.op == "pong" and "pong:" or "") .. f.payload
      end
      assert.are.same({ "a", "b1b2", "c", "pong:p", "d" }, got)
      c:close_handshake(1000)
    end)
  end)

  describe("inbox", function()
    it("stops reading a sleeping connection beyond --max-inbox-bytes, then loses nothing", function()
      local small = server.start(PROBE, { flags = { "--max-inbox-bytes", "65536" } })
      local c = probe.open(small)
      c:send_text("sleep 1.2 s")
      local msg = ws.frame({ opcode = 1, payload = "q " .. string.rep("x", 65536) })
      local data = string.rep(msg, 256)              -- 256 messages, ~16 MiB
      local rss0 = small:rss_kb()
      -- Push for 0.8 s (the handler sleeps 1.2 s): the server must stop reading.
      local i, deadline = 1, now() + 0.8
      while i <= #data and now() < deadline do
        c.sock:settimeout(0.05)
        local last, err, partial = c.sock:send(data, i)
        if last then i = last + 1 else
          assert.are.equal("timeout", err)
          i = partial + 1
        end
      end
      local rss1 = small:rss_kb()
      assert.is_true(i <= #data, "the server read all 16 MiB while the handler slept (no backpressure)")
      if rss0 and rss1 then
        assert.is_true(rss1 - rss0 < 8 * 1024, ("server grew by %d KiB during the sleep"):format(rss1 - rss0))
      end
      assert(c:send_raw(data:sub(i), 15))
      c:expect_text("slept s", 5)
      c:send_text("qcount")
      c:expect_text("256", 10)
      c:close_handshake(1000)
      small:stop()
    end)
  end)

  describe("logging", function()
    it("moonwire.log.info and .warn write to stderr", function()
      local c = probe.open(srv)
      c:send_text("log_info marker-info-7731")
      c:expect_text("logged")
      c:send_text("log_warn marker-warn-7732")
      c:expect_text("logged")
      assert.is_not_nil(srv:wait_log("marker%-info%-7731", 2), "info line missing:\n" .. srv:log())
      assert.is_not_nil(srv:wait_log("marker%-warn%-7732", 2), "warn line missing:\n" .. srv:log())
      c:close_handshake(1000)
    end)

    it("--log-level warn hides info lines but keeps warnings", function()
      local quiet = server.start(PROBE, { flags = { "--log-level", "warn" }, announce = false })
      local c = probe.open(quiet)
      c:send_text("log_info hidden-8841")
      c:expect_text("logged")
      c:send_text("log_warn shown-8842")
      c:expect_text("logged")
      assert.is_not_nil(quiet:wait_log("shown%-8842", 2), "warn line missing:\n" .. quiet:log())
      assert.is_nil(quiet:log():find("hidden-8841", 1, true), "info line shown at --log-level warn")
      c:close_handshake(1000)
      quiet:stop()
    end)
  end)

  describe("errors", function()
    it("closes only the failing connection with 1011 and logs FILE:LINE", function()
      local line = server.line_of(PROBE, "PROBE_ERROR_LINE")
      local c = probe.open(srv)
      c:send_text("error")
      c:expect_close(1011, 2)
      c:send_close(1011)
      assert.is_true(c:wait_closed(2))
      assert.is_not_nil(srv:wait_log("probe%.lua:" .. line .. ":", 2),
        "log lacks probe.lua:" .. line .. ":\n" .. srv:log())
      assert.is_not_nil(srv:log():find("probe boom", 1, true), "log lacks the error message")
      local code = one_close(obs, c.id)
      assert.are.equal(1011, code)
      -- The server and other connections go on.
      obs:send_text("still serving")
      obs:expect_text("still serving")
      local fresh = probe.open(srv)
      fresh:close_handshake(1000)
    end)

    it("does not run messages that were queued behind the failing one", function()
      local c = probe.open(srv)
      c:send_raw(ws.frame({ opcode = 1, payload = "error" }) .. ws.frame({ opcode = 1, payload = "after" }))
      c:expect_close(1011, 2)
      c:send_close(1000)
      assert.is_true(c:wait_closed(2))
      local _, events = probe.wait_closed(obs, c.id)
      assert_not_delivered(events, "msg:after", "after the error")
    end)

    it("closes with 1011 and a traceback when a handler raises after it suspended", function()
      local line = server.line_of(PROBE, "PROBE_LATE_ERROR_LINE")
      local c = probe.open(srv)
      -- One read: the error comes from a call resumed by its timer, with a
      -- message of the same read waiting behind it.
      c:send_raw(ws.frame({ opcode = 1, payload = "sleep_error 0.05" })
        .. ws.frame({ opcode = 1, payload = "after" }))
      c:expect_close(1011, 2)
      c:send_close(1000)
      assert.is_true(c:wait_closed(2))
      assert.is_not_nil(srv:wait_log("probe%.lua:" .. line .. ": probe late boom", 2),
        "log lacks probe.lua:" .. line .. ":\n" .. srv:log())
      local at = srv:log():find("probe late boom", 1, true)
      assert.is_not_nil(srv:log():find("stack traceback:", at, true), "no traceback:\n" .. srv:log())
      local _, events = probe.wait_closed(obs, c.id)
      assert_not_delivered(events, "msg:after", "after the error")
      -- The worker goes on: a new connection's batches of many messages
      -- all come back, in order.
      local fresh = probe.open(srv)
      local burst = {}
      for i = 1, 100 do burst[i] = ws.frame({ opcode = 1, payload = "n" .. i }) end
      fresh:send_raw(table.concat(burst))
      for i = 1, 100 do fresh:expect_text("n" .. i) end
      fresh:close_handshake(1000)
    end)

    it("hands no waiting message on after a suspended handler called ws:close", function()
      local c = probe.open(srv)
      c:send_raw(ws.frame({ opcode = 1, payload = "sleep_close 0.05 4001" })
        .. ws.frame({ opcode = 1, payload = "after" }))
      c:expect_close(4001, 2)
      c:send_close(4001)
      assert.is_true(c:wait_closed(2))
      local closes, events = probe.wait_closed(obs, c.id)
      assert.are.equal(4001, (probe.parse_close(closes[1])))
      assert_not_delivered(events, "msg:after", "after ws:close")
    end)

    it("closes with 1011 when on_open raises; on_close still runs", function()
      local line = server.line_of(PROBE, "PROBE_OPEN_ERROR_LINE")
      local c = ws.open(srv, "/probe?open_error=1")
      c:expect_close(1011, 2)
      c:send_close(1000)
      assert.is_true(c:wait_closed(2))
      assert.is_not_nil(srv:wait_log("probe%.lua:" .. line .. ":", 2), "log lacks probe.lua:" .. line)
      obs:send_text("failed_open")
      local id = tonumber(obs:expect_text())
      assert.is_number(id)
      local closes, found = probe.wait_closed(obs, id)
      assert.are.equal(1, #closes)
      -- on_open raised before recording "open": the close is the only event, with 1011.
      assert.are.equal(1, #found, table.concat(found, " | "))
      assert.are.equal(1011, (probe.parse_close(closes[1])))
    end)
  end)

  describe("more failures", function()
    it("closes with 1011 when a handler raises a non-string error", function()
      local c = probe.open(srv)
      c:send_text("error_table")
      c:expect_close(1011, 2)
      c:send_close(1000)
      assert.is_true(c:wait_closed(2))
      assert.are.equal(1011, (one_close(obs, c.id)))
      obs:send_text("alive")
      obs:expect_text("alive")
    end)

    it("survives an error in on_close", function()
      local c = probe.open(srv, "/probe?close_error=1")
      c:close_handshake(1000)
      assert.are.equal(1000, (one_close(obs, c.id)))
      assert.is_not_nil(srv:wait_log("probe close boom", 2), "on_close error not logged")
      obs:send_text("alive")
      obs:expect_text("alive")
      local again = probe.open(srv)
      again:close_handshake(1000)
    end)

    it("ws:send inside on_close returns nil, 'closed'", function()
      local c = probe.open(srv)
      c:close_handshake(1000)
      one_close(obs, c.id)
      obs:send_text("close_send " .. c.id)
      obs:expect_text("nil closed")
    end)
  end)

  -- Abrupt drops (a TCP reset or close without a close frame, also in the middle of a
  -- frame or while a handler sleeps: 1006) are in discipline_spec.lua.
  describe("on_close exactly once", function()
    it("normal close: the client's code and reason", function()
      local c = probe.open(srv)
      c:close_handshake(4321, "see you")
      local code, reason = one_close(obs, c.id)
      assert.are.equal(4321, code)
      assert.are.equal("see you", reason)
    end)

    it("close without a code: 1005", function()
      local c = probe.open(srv)
      c:send_frame({ opcode = 8, payload = "" })
      c:expect_close(nil)
      assert.is_true(c:wait_closed(2))
      local code = one_close(obs, c.id)
      assert.are.equal(1005, code)
    end)

    it("half-close after a message: the message is delivered, then on_close 1006", function()
      local c = probe.open(srv)
      c:send_text("last words")
      c.sock:shutdown("send")
      local _, events = probe.wait_closed(obs, c.id)
      assert.are.same({ "open", "msg:id", "msg:last words", "close:1006:" }, events)
      c:close_tcp()
    end)

    it("protocol error: the code the server sent (1002)", function()
      local c = probe.open(srv)
      c:send_frame({ opcode = 1, payload = "x", rsv1 = true })
      c:expect_close(1002)
      c:send_close(1002)
      assert.is_true(c:wait_closed(2))
      local code = one_close(obs, c.id)
      assert.are.equal(1002, code)
    end)

    it("invalid UTF-8: the code the server sent (1007)", function()
      local c = probe.open(srv)
      c:send_text("\xff")
      c:expect_close(1007)
      c:close_tcp()
      local code = one_close(obs, c.id)
      assert.are.equal(1007, code)
    end)

    it("error close: 1011", function()
      local c = probe.open(srv)
      c:send_text("error")
      c:expect_close(1011)
      c:reset()
      local code = one_close(obs, c.id)
      assert.are.equal(1011, code)
    end)

    it("server-initiated ws:close(4000, 'bye'), answered by the client", function()
      local c = probe.open(srv)
      c:send_text("close 4000 bye")
      local code, reason = c:expect_close(4000)
      assert.are.equal("bye", reason)
      c:send_close(4000, "bye")
      assert.is_true(c:wait_closed(2))
      local ccode = one_close(obs, c.id)
      assert.are.equal(4000, ccode)
      assert.are.equal(4000, code)
    end)

    it("client close while a handler sleeps: on_close after the handler", function()
      local c = probe.open(srv)
      c:send_text("sleep 0.3 s")
      c:send_close(1000)
      -- The sleeping handler's reply may or may not get out before the close reply.
      local f = c:next_frame(2)
      if f.op == "text" then
        assert.are.equal("slept s", f.payload)
        f = c:next_frame(2)
      end
      assert.are.equal("close", f.op)
      assert.is_true(c:wait_closed(2))
      local _, events = probe.wait_closed(obs, c.id, 3)
      assert.are.equal("msg:sleep 0.3 s", events[#events - 1], table.concat(events, " | "))
      assert.is_truthy(events[#events]:match("^close:1000:"))
    end)
  end)

  describe("ws fields", function()
    it("exposes id, remote address and port, path, query, headers and data", function()
      local c = ws.open(srv, "/probe?name=bob&msg=hello%20world&empty=&x=%41%42",
        { headers = { ["X-Custom"] = "Value 1", ["User-Agent"] = "spec-agent" },
          extra = { "X-Multi: a", "X-Multi: b" } })
      c:send_text("fields")
      local f = probe.decode(c:expect_text())
      assert.are.equal("number", f.id_type)
      assert.are.equal(math.floor(f.id), f.id)
      assert.are.equal("127.0.0.1", f.remote_addr)
      assert.are.equal("number", f.remote_port_type)
      assert.are.equal(c:local_port(), f.remote_port)
      assert.are.equal("/probe", f.path)
      assert.are.equal("name=bob&msg=hello%20world&empty=&x=%41%42", f.query_string)
      assert.are.equal("bob", f.query.name)
      assert.are.equal("hello world", f.query.msg)
      assert.are.equal("", f.query.empty)
      assert.are.equal("AB", f.query.x)
      assert.are.equal("Value 1", f.headers["x-custom"])
      assert.are.equal("spec-agent", f.headers["user-agent"])
      assert.are.equal("a, b", f.headers["x-multi"])
      assert.matches("^127%.0%.0%.1", f.headers.host)
      -- The handshake's own fields are spent once upgraded (the hook sees them).
      for _, spent in ipairs { "upgrade", "connection", "sec-websocket-key", "sec-websocket-version" } do
        assert.is_nil(f.headers[spent], spent)
      end
      assert.is_nil(f.headers["X-Custom"], "header names must be lowercase")
      assert.are.equal("table", f.data_type)
      c:close_handshake(1000)
    end)

    it("has an empty query table and query string without a query", function()
      local c = ws.open(srv, "/probe")
      c:send_text("fields")
      local f = probe.decode(c:expect_text())
      assert.are.same({}, f.query)
      assert.are.equal("", f.query_string)
      c:close_handshake(1000)
    end)

    it("keeps ws.data per connection, writable and replaceable", function()
      local a = probe.open(srv)
      local b = probe.open(srv)
      a:send_text("data_set color blue")
      a:expect_text("ok")
      a:send_text("data_get color")
      a:expect_text("blue")
      b:send_text("data_get color")
      b:expect_text("nil")
      a:send_text("data_replace")
      a:expect_text("ok")
      a:send_text("data_get color")
      a:expect_text("nil")
      a:send_text("data_get replaced")
      a:expect_text("yes")
      a:close_handshake(1000)
      b:close_handshake(1000)
    end)
  end)

  describe("sending", function()
    it("ws:send from one connection's handler reaches another connection", function()
      local a = probe.open(srv)
      local b = probe.open(srv)
      a:send_text("send_to " .. b.id .. " hello from a")
      b:expect_text("hello from a")
      a:expect_text("send_to true nil")
      a:close_handshake(1000)
      b:close_handshake(1000)
    end)

    it("ws:send on a closed ws returns nil, 'closed'", function()
      local a = probe.open(srv)
      local b = probe.open(srv)
      b:close_handshake(1000)
      probe.wait_closed(obs, b.id)
      a:send_text("send_to " .. b.id .. " too late")
      a:expect_text("send_to nil closed")
      a:close_handshake(1000)
    end)

    it("ws:send on a ws dropped abruptly returns nil, 'closed'", function()
      local a = probe.open(srv)
      local b = probe.open(srv)
      b:reset()
      probe.wait_closed(obs, b.id)
      a:send_text("send_to " .. b.id .. " too late")
      a:expect_text("send_to nil closed")
      a:close_handshake(1000)
    end)

    it("sends binary frames when asked", function()
      local c = probe.open(srv)
      c:send_text("binary some bytes")
      c:expect_binary("some bytes")
      c:close_handshake(1000)
    end)

    it("ws:send takes numbers, truthy binary flags, and rejects wrong arguments", function()
      local c = probe.open(srv)
      c:send_text("send_odd")
      c:expect_text("42")
      c:expect_binary("bin")
      local f = c:expect_text()
      local ok1, e1, ok2, e2, ok3, e3, ok4, e4 =
        f:match("^(%a+)|([^|]*)|(%a+)|([^|]*)|(%a+)|([^|]*)|(%a+)|([^|]*)$")
      assert.are.equal("false", ok1, f)
      assert.matches("bad argument #1 to 'send' %(moonwire.ws expected, got table%)", e1)
      assert.are.equal("false", ok2, f)
      assert.matches("bad argument #2 to 'send' %(string expected, got table%)", e2)
      assert.are.equal("false", ok3, f)
      assert.matches("bad argument #1 to 'send' %(moonwire.ws expected, got userdata%)", e3)
      -- ws:send(x): the app's FILE:LINE, and x counted as argument #1
      assert.are.equal("false", ok4, f)
      local line = server.line_of(PROBE, "SEND_ODD_LINE")
      assert.matches("probe%.lua:" .. line .. ": bad argument #1 to 'send' %(string expected, got table%)",
        e4)
      c:close_handshake(1000)
    end)

    it("ws:close(4000, 'bye') from the server sends close 4000 'bye'", function()
      local c = probe.open(srv)
      c:send_text("close 4000 bye")
      local code, reason = c:expect_close(4000)
      assert.are.equal(4000, code)
      assert.are.equal("bye", reason)
      c:send_close(4000)
      c:expect_tcp_close(2)
    end)

    it("does not deliver data the client sends after the server's close", function()
      local c = probe.open(srv)
      c:send_text("close 4002 closing")
      c:expect_close(4002)
      c:send_text("late message")
      c:send_close(4002)
      assert.is_true(c:wait_closed(2))
      local _, events = probe.wait_closed(obs, c.id)
      for _, e in ipairs(events) do
        assert.are_not.equal("msg:late message", e, table.concat(events, " | "))
      end
    end)

    it("handles a simultaneous close (client close crosses the server's close)", function()
      local c = probe.open(srv)
      c:send_raw(ws.frame({ opcode = 1, payload = "close 4003 crossing" })
        .. ws.frame({ opcode = 8, payload = ws.close_payload(1000, "mine") }))
      local code = c:expect_close(nil, 2)
      assert.is_true(code == 4003 or code == 1000, "close code " .. tostring(code))
      c:expect_tcp_close(2)      -- exactly one close frame, then TCP close
      local closes = probe.wait_closed(obs, c.id)
      assert.are.equal(1, #closes)
    end)

    it("ws:close() without arguments sends 1000", function()
      local c = probe.open(srv)
      c:send_text("close")
      c:expect_close(1000)
      c:send_close(1000)
      c:expect_tcp_close(2)
    end)

    it("ws:ping('x') sends a ping 'x'", function()
      local c = probe.open(srv)
      c:send_text("ping x")
      c:expect_ping("x")
      c:pong("x")
      c:send_text("after ping")
      c:expect_text("after ping")
      c:close_handshake(1000)
    end)

    it("ws:ping() without data sends an empty ping", function()
      local c = probe.open(srv)
      c:send_text("ping")
      c:expect_ping("")
      c:close_handshake(1000)
    end)
  end)
end)
