-- Connection discipline: heartbeat (ping/pong timeout), idle timeout, close timeout,
-- abrupt disconnects, slow consumers (max_buffered), many connections, max_connections.
-- Close events are observed through a second connection to spec/apps/probe.lua.

local server = require "spec.support.server"
local ws = require "spec.support.ws"
local probe = require "spec.support.probe"
local socket = require "socket"

local PROBE = "spec/apps/probe.lua"
local now = socket.gettime

local one_close = probe.one_close

describe("discipline", function()
  after_each(function()
    server.stop_all()
  end)

  describe("heartbeat", function()
    local srv
    before_each(function()
      srv = server.start(PROBE, { flags = { "--ping-interval", "1", "--pong-timeout", "1" } })
    end)

    it("pings a quiet client, which stays connected for > 3 s by answering pongs", function()
      local c = probe.open(srv)
      local t0, pings = now(), 0
      while now() - t0 < 3.5 do
        local f, err = c:recv_frame(math.max(0.01, 3.5 - (now() - t0)))
        if f then
          assert.are.equal("ping", f.op, "unexpected frame " .. ws.describe(f))
          assert.is_false(f.masked)
          pings = pings + 1
          c:pong(f.payload)
        else
          assert.are.equal("timeout", err, "connection lost: " .. tostring(err))
        end
      end
      assert.is_true(pings >= 2, "expected at least 2 pings in 3.5 s, got " .. pings)
      c.auto_pong = true
      c:send_text("still alive")
      c:expect_text("still alive")
      c:close_handshake(1000)
    end)

    it("drops a client that never answers (pong timeout) in about 2 s; on_close gets 1006", function()
      local c = probe.open(srv)
      local t0 = now()
      local ping = c:next_frame(2, "ping")
      assert.are.equal("ping", ping.op)
      local ping_at = now() - t0
      assert.is_true(ping_at > 0.7 and ping_at < 1.8, "first ping after " .. ping_at .. " s (interval 1)")
      -- Best effort close 1001 "pong timeout", then TCP close.
      local f = c:recv_frame(3)
      if f then
        assert.are.equal("close", f.op, "expected close, got " .. ws.describe(f))
        assert.are.equal(1001, f.code)
        assert.are.equal("pong timeout", f.reason)
      end
      assert.is_true(c:wait_closed(1), "server did not close TCP after the pong timeout")
      local closed_at = now() - t0
      assert.is_true(closed_at > 1.6 and closed_at < 3.2, "dropped after " .. closed_at .. " s (want ~2)")
      -- A fresh observer (an idle one would be dropped too) asks what on_close saw.
      local obs = probe.observer(srv)
      local code, reason = one_close(obs, c.id)
      assert.are.equal(1006, code)
      assert.are.equal("pong timeout", reason)
    end)

    it("keeps a client that sends data regularly even if it never answers pings", function()
      local c = probe.open(srv)
      local t0 = now()
      local n = 0
      while now() - t0 < 3 do
        n = n + 1
        c:send_text("tick " .. n)
        -- Skip pings (unanswered on purpose); expect the echo.
        local msg = c:recv_message(2, "echo", function(f)
          assert.are.equal("ping", f.op, "unexpected control frame " .. ws.describe(f))
        end)
        assert.are.equal("tick " .. n, msg)
        socket.sleep(0.4)
      end
      c.auto_pong = true
      c:close_handshake(1000)
    end)

    it("counts any frame (a client ping) as a sign of life", function()
      local c = probe.open(srv)
      local t0 = now()
      while now() - t0 < 3 do
        c:ping("mine")
        local f = c:next_frame(1, "pong")
        while f.op == "ping" do f = c:next_frame(1, "pong") end
        assert.are.equal("pong", f.op, "expected pong, got " .. ws.describe(f))
        socket.sleep(0.4)
      end
      c:send_text("alive")
      local msg = c:recv_message(2, "echo", function() end)
      assert.are.equal("alive", msg)
    end)

    it("keeps heartbeating a connection whose handler sleeps longer than ping + pong timeout", function()
      local c = probe.open(srv)
      c:send_text("sleep 3 long")
      local t0, pings = now(), 0
      local msg = c:recv_message(5, "slept long", function(f)
        assert.are.equal("ping", f.op, "unexpected control frame " .. ws.describe(f))
        pings = pings + 1
        c:pong(f.payload)
      end)
      assert.are.equal("slept long", msg)
      assert.is_true(now() - t0 > 2.5)
      assert.is_true(pings >= 1, "no ping during a 3 s handler sleep")
      c.auto_pong = true
      c:close_handshake(1000)
    end)

    it("--ping-interval 0 disables pings", function()
      local quiet = server.start(PROBE, { flags = { "--ping-interval", "0", "--pong-timeout", "1" } })
      local c = probe.open(quiet)
      c:expect_silence(2.5)
      c:send_text("x")
      c:expect_text("x")
    end)
  end)

  describe("idle timeout", function()
    local srv
    before_each(function()
      srv = server.start(PROBE, { flags = { "--idle-timeout", "1", "--ping-interval", "0" } })
    end)

    it("closes an idle connection with 1001; on_close gets 1001", function()
      local c = probe.open(srv)
      local t0 = now()
      local _, why = c:expect_close(1001, 3)
      assert.are.equal("idle timeout", why)
      local elapsed = now() - t0
      assert.is_true(elapsed > 0.7 and elapsed < 2.5, "idle close after " .. elapsed .. " s")
      c:send_close(1001)
      assert.is_true(c:wait_closed(2))
      local code = one_close(probe.observer(srv), c.id)   -- opened now: it would idle out too
      assert.are.equal(1001, code)
    end)

    it("pings from the client do not count as data", function()
      local c = probe.open(srv)
      local t0 = now()
      local got
      while now() - t0 < 3 do
        c:ping("not data")
        local f = c:next_frame(1, "pong or close")
        if f.op == "close" then
          got = f
          break
        end
        assert.are.equal("pong", f.op)
        socket.sleep(0.2)
      end
      assert.is_table(got, "no idle close although only pings were sent")
      assert.are.equal(1001, got.code)
      local elapsed = now() - t0
      assert.is_true(elapsed < 2.5, "idle close only after " .. elapsed .. " s")
    end)

    it("data messages keep the connection open", function()
      local c = probe.open(srv)
      local t0 = now()
      while now() - t0 < 2.5 do
        c:send_text("data")
        c:expect_text("data")
        socket.sleep(0.3)
      end
      c:close_handshake(1000)
    end)
  end)

  describe("close timeout", function()
    local srv
    before_each(function()
      srv = server.start(PROBE, { flags = { "--close-timeout", "1" } })
    end)

    it("drops TCP about 1 s after its close when the client never answers", function()
      local obs = probe.observer(srv)
      local c = probe.open(srv)
      c:send_text("close 4000 bye")
      local t0 = now()
      c:expect_close(4000, 2)
      assert.is_true(c:wait_closed(3), "TCP not closed after the close timeout")
      local elapsed = now() - t0
      assert.is_true(elapsed > 0.7 and elapsed < 2.5, "TCP closed after " .. elapsed .. " s (timeout 1 s)")
      one_close(obs, c.id)
    end)

    it("closes TCP promptly once the client answers the close", function()
      local obs = probe.observer(srv)
      local c = probe.open(srv)
      c:send_text("close 4001 done")
      c:expect_close(4001, 2)
      local t0 = now()
      c:send_close(4001)
      assert.is_true(c:wait_closed(1))
      assert.is_true(now() - t0 < 0.5, "TCP closed only after " .. (now() - t0) .. " s")
      local code, reason = one_close(obs, c.id)
      assert.are.equal(4001, code)
      assert.are.equal("done", reason)
    end)

    it("drops TCP after the close timeout also after a protocol error", function()
      local c = probe.open(srv)
      c:send_frame({ opcode = 1, payload = "x", mask = false })
      local t0 = now()
      c:expect_close(1002, 2)
      assert.is_true(c:wait_closed(3), "TCP not closed")
      assert.is_true(now() - t0 < 2.5)
    end)
  end)

  describe("abrupt disconnect", function()
    local srv, obs
    before_each(function()
      srv = server.start(PROBE)
      obs = probe.observer(srv)
    end)

    -- Ways a client vanishes without a close frame: each gives one on_close, 1006, no reason.
    local vanishings = {
      { "after a TCP reset", function(c) c:reset() end },
      { "after a TCP close without a close frame", function(c) c:close_tcp() end },
      { "when the client vanishes in the middle of a frame", function(c)
        c:send_raw(ws.frame({ opcode = 1, payload = string.rep("x", 1000) }):sub(1, 500))
        socket.sleep(0.05)
        c:reset()
      end },
      { "when the client vanishes in a fragmented message", function(c)
        c:send_frame({ opcode = 1, fin = false, payload = "part" })
        socket.sleep(0.05)
        c:close_tcp()
      end },
    }
    for _, case in ipairs(vanishings) do
      local how, vanish = case[1], case[2]
      it("runs on_close once with 1006 " .. how, function()
        local c = probe.open(srv)
        vanish(c)
        local code, reason = one_close(obs, c.id)
        assert.are.equal(1006, code)
        assert.are.equal("", reason)
      end)
    end

    it("runs on_close once with 1006 when the client vanishes while its handler sleeps", function()
      local c = probe.open(srv)
      c:send_text("sleep 0.3 x")
      c:send_text("queued")
      socket.sleep(0.05)
      c:reset()
      local code = one_close(obs, c.id, 3)
      assert.are.equal(1006, code)
      -- The sleeping handler resumed; the server is fine.
      obs:send_text("fine")
      obs:expect_text("fine")
    end)

    it("survives 50 connections dropped right after the handshake", function()
      local ids = {}
      for i = 1, 50 do
        local c = probe.open(srv)
        ids[i] = c.id
        if i % 2 == 0 then c:reset() else c:close_tcp() end
      end
      for _, id in ipairs(ids) do
        local code = one_close(obs, id, 3)
        assert.are.equal(1006, code)
      end
      obs:send_text("fine")
      obs:expect_text("fine")
    end)
  end)

  describe("slow consumer", function()
    it("closes a client that stops reading (1008, logged) without growing; others keep working", function()
      local srv = server.start(PROBE, { flags = { "--max-buffered", "262144" } })
      local obs = probe.observer(srv)
      local slow = probe.open(srv)
      local rss0 = srv:rss_kb()
      -- 4,000 x 16 KiB = 64 MiB queued for a client that does not read (the server allows
      -- max_buffered beyond one message of the route's max_message_size, 16 MiB here).
      slow:send_text("flood 4000 16384")
      local logged = srv:wait_log("[^\n]*slow consumer[^\n]*", 5)
      assert.is_not_nil(logged, "no 'slow consumer' log line; log:\n" .. srv:log())
      -- Others keep working.
      obs:send_text("meanwhile")
      obs:expect_text("meanwhile")
      -- The app saw send() fail instead of queueing 64 MiB.
      obs:send_text("flood_result " .. slow.id)
      local result = probe.decode(obs:expect_text())
      assert.is_false(result.ok, "all 4000 sends succeeded")
      assert.are.equal("closed", result.err)
      assert.is_true(result.sent < 4000)
      local rss1 = srv:rss_kb()
      if rss0 and rss1 then
        assert.is_true(rss1 - rss0 < 32 * 1024,
          ("server grew by %d KiB while flooding a slow consumer"):format(rss1 - rss0))
      end
      -- The slow client, reading now, finds a close 1008 (if it got through) and a closed socket.
      local close_frame
      local deadline = now() + 5
      while now() < deadline do
        local f, err = slow:recv_frame(math.max(0.01, deadline - now()))
        if not f then
          assert.are_not.equal("timeout", err, "slow consumer still connected")
          break
        end
        if f.op == "close" then
          close_frame = f
          break
        end
      end
      if close_frame then
        assert.are.equal(1008, close_frame.code)
        slow:send_close(1008)      -- complete the handshake, as a client that reads again would
      end
      assert.is_true(slow:wait_closed(3), "slow consumer's TCP connection not closed")
      local code = one_close(obs, slow.id)
      assert.is_true(code == 1006 or code == 1008, "on_close code " .. tostring(code))
    end)

    -- on_close reports why the server ended it (README, "on_close gets"): the
    -- code it sent, 1008, also when the client never answered the close.
    it("drops a slow consumer that never answers the close after close_timeout; on_close 1008", function()
      local srv = server.start(PROBE, { flags = { "--max-buffered", "262144", "--close-timeout", "1" } })
      local slow = probe.open(srv)
      slow:send_text("flood 4000 16384")   -- 64 MiB, far beyond max_buffered + one 16 MiB message
      assert.is_not_nil(srv:wait_log("slow consumer", 5), "no 'slow consumer' log line:\n" .. srv:log())
      local t0 = now()
      -- Read nothing, answer nothing: the server must give up on its own.
      local obs = probe.observer(srv)
      local code = one_close(obs, slow.id, 4)
      assert.is_true(now() - t0 < 3, "on_close only after " .. (now() - t0) .. " s")
      assert.are.equal(1008, code)
      assert.is_true(slow:wait_closed(3), "slow consumer's TCP connection not closed")
    end)

    it("applies max_buffered from moonwire.app{} (spec/apps/limits.lua: 64 KiB)", function()
      local srv = server.start("spec/apps/limits.lua")
      local obs = ws.open(srv, "/small")
      local slow = ws.open(srv, "/small")
      slow:send_text("id")
      local id = slow:expect_text()
      slow:send_text("flood 2000 8192")   -- 16 MiB
      assert.is_not_nil(srv:wait_log("slow consumer", 5), "no 'slow consumer' log line:\n" .. srv:log())
      obs:send_text("flood_result " .. id)
      local reply = obs:expect_text()
      local sent, err = reply:match("^(%d+) (%S+)$")
      assert.are.equal("closed", err, reply)
      assert.is_true(tonumber(sent) < 2000, reply)
    end)

    it("stays bounded when a client floods pings and never reads the pongs", function()
      local srv = server.start(PROBE, { flags = { "--max-buffered", "262144" } })
      local obs = probe.observer(srv)
      local flooder = probe.open(srv)
      local rss0 = srv:rss_kb()
      local ping = ws.frame({ opcode = 9, payload = string.rep("p", 125) })
      local burst = string.rep(ping, 1000)               -- ~135 KB per burst
      local t0, sent = now(), 0
      while now() - t0 < 2 do
        flooder.sock:settimeout(0.05)
        local last, err = flooder.sock:send(burst)
        if last then sent = sent + #burst elseif err ~= "timeout" then break end
      end
      obs:send_text("during ping flood")
      obs:expect_text("during ping flood")
      local rss1 = srv:rss_kb()
      if rss0 and rss1 then
        assert.is_true(rss1 - rss0 < 32 * 1024,
          ("server grew by %d KiB under a ping flood (%d bytes sent)"):format(rss1 - rss0, sent))
      end
      flooder:reset()
      assert.is_true(srv:alive())
    end)

    -- ws:send queues a large string where it is (no copy) and keeps it alive
    -- until written: here 200 x 64 KiB wait for a client that reads only
    -- after a pause, while the app collects garbage after every send.
    it("writes large queued sends intact after collections, then lets their strings go", function()
      local srv = server.start(PROBE, { flags = { "--max-buffered", "67108864" } })
      local c = probe.open(srv)
      local n, size = 200, 65536
      c:send_text(("bigsend %d %d"):format(n, size))
      socket.sleep(0.5)
      for i = 1, n do
        local msg = c:expect_binary(nil, 5)
        local head = i .. ":"
        local want = (head .. string.rep(string.char(65 + i % 26, 97 + i % 26),
          math.ceil((size - #head) / 2))):sub(1, size)
        if msg ~= want then
          local at = 1
          while msg:byte(at) == want:byte(at) do at = at + 1 end
          error(("message %d (%d bytes) differs from byte %d: %q"):format(i, #msg, at,
            msg:sub(at, at + 15)))
        end
      end
      c:expect_text("bigsend " .. n)
      -- All written: nothing holds the 12.5 MiB any more.
      c:send_text("luamem")
      local kib = tonumber(c:expect_text():match("^luamem (%d+)$"))
      assert.is_true(kib < 4096, ("the app's Lua heap still holds %d KiB"):format(kib))
      c:close_handshake(1000)
    end)

    it("queues one large string sent many times without a copy per send", function()
      local srv = server.start(PROBE, { flags = { "--max-buffered", "134217728" } })
      local obs = probe.observer(srv)
      local slow = probe.open(srv)
      local rss0 = srv:rss_kb()
      -- One 256 KiB string sent 256 times (64 MiB) to a client that does not read.
      slow:send_text("flood 256 262144")
      local result, deadline
      deadline = now() + 5
      while true do   -- the observer may ask before the flood ran
        obs:send_text("flood_result " .. slow.id)
        result = probe.decode(obs:expect_text()) or {}
        if result.sent == 256 or now() > deadline then break end
        socket.sleep(0.05)
      end
      assert.are.same({ ok = true, sent = 256 }, result)
      local grown = srv:rss_kb() - rss0
      assert.is_true(grown < 16 * 1024, ("the server grew by %d KiB for 64 MiB queued"):format(grown))
      slow:reset()
    end)

    it("does not close a client that reads while a moderate burst is sent", function()
      local srv = server.start(PROBE, { flags = { "--max-buffered", "4194304" } })
      local c = probe.open(srv)
      c:send_text("flood 100 16384")       -- 1.6 MiB < 4 MiB
      for _ = 1, 100 do
        local msg = c:expect_text(nil, 5)
        assert.are.equal(16384, #msg)
      end
      c:send_text("after burst")
      c:expect_text("after burst")
      c:close_handshake(1000)
    end)
  end)

  describe("many connections", function()
    it("echoes correctly on 200 connections in parallel", function()
      local srv = server.start(PROBE)
      local conns = {}
      for i = 1, 200 do conns[i] = ws.open(srv, "/probe") end
      for i, c in ipairs(conns) do c:send_text("conn " .. i) end
      for i, c in ipairs(conns) do c:send_binary("bin " .. i) end
      for i, c in ipairs(conns) do
        c:expect_text("conn " .. i)
        c:expect_binary("bin " .. i)
      end
      for _, c in ipairs(conns) do c:send_close(1000) end
      for _, c in ipairs(conns) do
        c:expect_close(1000)
        assert.is_true(c:wait_closed(2))
        c:close_tcp()
      end
    end)

    it("gives each connection a distinct id", function()
      local srv = server.start(PROBE)
      local seen = {}
      for _ = 1, 20 do
        local c = probe.open(srv)
        assert.is_nil(seen[c.id], "duplicate id " .. c.id)
        seen[c.id] = true
        c:close_tcp()
      end
    end)
  end)

  describe("max_connections", function()
    local function expect_503(srv)
      local c = assert(ws.connect(srv))
      local res, err = c:handshake("/probe")
      if not res then
        -- A server may refuse before reading the request; it must still answer 503.
        error("no 503 response: " .. tostring(err))
      end
      assert.are.equal(503, res.status, res.head)
      assert.truthy((res.headers.connection or ""):lower():find("close", 1, true))
      assert.is_true(c:wait_closed(2))
      c:close_tcp()
    end

    it("answers 503 beyond --max-connections and accepts again after a close", function()
      local srv = server.start(PROBE, { flags = { "--max-connections", "3" } })
      local conns = { ws.open(srv, "/probe"), ws.open(srv, "/probe"), ws.open(srv, "/probe") }
      expect_503(srv)
      -- The three are unaffected.
      for i, c in ipairs(conns) do
        c:send_text("still " .. i)
        c:expect_text("still " .. i)
      end
      conns[1]:close_handshake(1000)
      local again = server.poll(2, function()
        local c = assert(ws.connect(srv))
        local res = c:handshake("/probe")
        if res and res.status == 101 then return c end
        c:close_tcp()
      end, 0.05)
      assert.is_table(again, "no new connection accepted after one closed")
      again:send_text("welcome back")
      again:expect_text("welcome back")
    end)

    it("applies max_connections from moonwire.app{} (spec/apps/limits.lua: 8)", function()
      local srv = server.start("spec/apps/limits.lua")
      local conns = {}
      for i = 1, 8 do conns[i] = ws.open(srv, "/small") end
      local c = assert(ws.connect(srv))
      local res = c:handshake("/small")
      assert.is_table(res)
      assert.are.equal(503, res.status)
      conns[8]:send_text("eighth")
      conns[8]:expect_text("eighth")
    end)
  end)
end)
