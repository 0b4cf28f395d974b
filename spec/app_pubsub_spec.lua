-- Pub/sub (fan-out, counts, unsubscribe, cleanup), backpressure (slow_consumer
-- "close" and "drop", on_drain, ws.buffered) and timers, seen from the wire with our
-- raw client. Runs spec/apps/pubsub.lua and spec/apps/timers.lua.

local server = require "spec.support.server"
local ws = require "spec.support.ws"
local http = require "spec.support.http"
local probe = require "spec.support.probe"
local socket = require "socket"

local APP = "spec/apps/pubsub.lua"
local TIMERS = "spec/apps/timers.lua"
local now = socket.gettime

-- Opens `path` and checks the "ready ..." greeting.
local function open(srv, path, ready)
  local c = ws.open(srv, path)
  c:expect_text(ready or (path:find("topic=", 1, true) and "ready true" or "ready none"))
  return c
end

-- Sends a command and returns its one-line answer.
local function ask(c, cmd)
  c:send_text(cmd)
  return c:expect_text()
end

local function count(c, topic)
  return tonumber(ask(c, "count " .. topic):match("^count (%d+)$"))
end

-- Reads frames until a close arrives; returns the data messages before it and the close.
local function until_close(c, timeout)
  local msgs = {}
  while true do
    local f = c:next_frame(timeout or 3, "messages, then a close")
    if f.op == "close" then return msgs, f end
    assert.is_true(f.fin, "fragmented message: " .. ws.describe(f))
    msgs[#msgs + 1] = f.payload
  end
end

-- Checks that `msgs` are whole "<topic> <i> xxx" messages of `size` bytes with
-- strictly increasing i (consecutive from 1 when `consecutive`); returns the count.
local function check_sequence(msgs, topic, size, consecutive)
  local last = 0
  for k, m in ipairs(msgs) do
    local i = tonumber(m:match("^" .. topic .. " (%d+) x*$"))
    assert.is_number(i, ("message %d is not whole: %q"):format(k, m:sub(1, 40)))
    assert.are.equal(size, #m, ("message %d has %d bytes"):format(k, #m))
    assert.is_true(i > last, ("message %d out of order: %d after %d"):format(k, i, last))
    if consecutive then assert.are.equal(last + 1, i, "a message is missing before " .. i) end
    last = i
  end
  return #msgs
end

describe("app pub/sub", function()
  local srv, pub
  setup(function()
    srv = server.start(APP)
  end)
  before_each(function()
    assert.is_true(srv:alive(), "server died; log:\n" .. srv:log())
    pub = open(srv, "/sub")
  end)
  after_each(function()
    pub:close_tcp()
  end)
  teardown(function()
    server.stop_all()
  end)

  describe("fan-out", function()
    it("delivers every message once and in order to 1,000 subscribers", function()
      local N, M = 1000, 20
      local t0 = now()
      local subs = {}
      for i = 1, N do subs[i] = open(srv, "/sub?topic=fan") end
      local opened = now() - t0
      assert.are.equal(N, count(pub, "fan"))
      assert.are.equal("burst " .. N * M, ask(pub, "burst fan " .. M))
      assert.are.equal("pub " .. N, ask(pub, "pub fan end"))
      for i, c in ipairs(subs) do
        for j = 1, M do
          local msg = c:expect_text(nil, 5)
          if msg ~= "fan " .. j .. " " then
            error(("subscriber %d: message %d is %q"):format(i, j, msg))
          end
        end
        -- "end" right after the last one: nothing duplicated, nothing extra.
        c:expect_text("end", 5)
      end
      local took = now() - t0
      for _, c in ipairs(subs) do c:close_tcp() end
      assert.is_true(took < 20, ("1,000 subscribers took %.1f s (%.1f s to open)"):format(took, opened))
      -- Every one of them goes away.
      assert.is_truthy(server.poll(5, function() return count(pub, "fan") == 0 end),
        "subscribers left: " .. count(pub, "fan"))
    end)
  end)

  describe("subscriptions", function()
    it("counts subscribers; subscribe and unsubscribe report whether anything changed", function()
      local a = open(srv, "/sub?topic=t1")
      local b = open(srv, "/sub")
      assert.are.equal(1, count(pub, "t1"))
      assert.are.equal("sub true", ask(b, "sub t1"))
      assert.are.equal("sub false", ask(b, "sub t1"))
      assert.are.equal(2, count(pub, "t1"))
      assert.are.equal("pub 2", ask(pub, "pub t1 both"))
      a:expect_text("both")
      b:expect_text("both")
      assert.are.equal("unsub true", ask(b, "unsub t1"))
      assert.are.equal("unsub false", ask(b, "unsub t1"))
      assert.are.equal("unsub false", ask(b, "unsub never-joined"))
      assert.are.equal(1, count(pub, "t1"))
      assert.are.equal("pub 1", ask(pub, "pub t1 only-a"))
      a:expect_text("only-a")
      -- b is not subscribed any more: its next message is the echo, not "only-a".
      b:send_text("echo me")
      b:expect_text("echo me")
      a:close_handshake(1000)
      b:close_handshake(1000)
    end)

    it("keeps topics apart and lets one connection follow several", function()
      local a = open(srv, "/sub?topic=red")
      assert.are.equal("sub true", ask(a, "sub blue"))
      local b = open(srv, "/sub?topic=blue")
      assert.are.equal("pub 1", ask(pub, "pub red r1"))
      assert.are.equal("pub 2", ask(pub, "pub blue b1"))
      a:expect_text("r1")
      a:expect_text("b1")
      b:expect_text("b1")
      a:close_tcp()
      b:close_tcp()
    end)

    it("ends subscriptions when connections go (close handshake, FIN, RST)", function()
      local conns = {}
      for i = 1, 4 do conns[i] = open(srv, "/sub?topic=gone") end
      assert.are.equal(4, count(pub, "gone"))
      conns[1]:close_handshake(1000)
      conns[2]:close_tcp()
      conns[3]:reset()
      assert.is_truthy(server.poll(3, function() return count(pub, "gone") == 1 end),
        "count after 3 disconnects: " .. count(pub, "gone"))
      assert.are.equal("pub 1", ask(pub, "pub gone still"))
      conns[4]:expect_text("still")
      conns[4]:close_handshake(1000)
      assert.is_truthy(server.poll(3, function() return count(pub, "gone") == 0 end))
    end)

    it("publishing to a topic nobody follows returns 0", function()
      assert.are.equal("pub 0", ask(pub, "pub nobody-here hello"))
      assert.are.equal(0, count(pub, "nobody-here"))
    end)

    it("publishes binary messages as binary frames, byte for byte", function()
      local a = open(srv, "/sub?topic=bin")
      assert.are.equal("pubbin 1", ask(pub, "pubbin bin 00ff80fe0d0a41"))
      a:expect_binary("\0\255\128\254\r\nA")
      assert.are.equal("pub 1", ask(pub, "pub bin text"))
      a:expect_text("text")
      a:close_tcp()
    end)

    it("refuses to publish while the app file loads", function()
      local bad = server.temp_file(table.concat({
        'local app = require("moonwire").app {}',
        'app:publish("t", "too early")',
        "return app", "" }, "\n"), ".lua")
      local r = server.run({ bad, "--listen", "127.0.0.1:0" })
      os.remove(bad)
      assert.are_not.equal(0, r.code, r.stderr)
      assert.are.equal("exited", r.how, r.stderr)
      assert.is_truthy(r.stderr:find(bad:match("[^/]+$") .. ":2", 1, true), r.stderr)
    end)
  end)

  describe("backpressure", function()
    it('"close" closes a slow consumer with 1008; other subscribers get everything', function()
      local fine = open(srv, "/sub?topic=bp")
      local slow = open(srv, "/small?topic=bp")
      -- 100 x 1000 bytes published without yielding: far over /small's 16 KiB bound.
      local total = tonumber(ask(pub, "burst bp 100 1000"):match("^burst (%d+)$"))
      assert.is_true(total >= 100 and total < 200, "queued " .. tostring(total))
      local msgs, close = until_close(slow)
      assert.are.equal(1008, close.code)
      assert.are.equal("slow consumer", close.reason)
      local got = check_sequence(msgs, "bp", 1000, true)
      assert.are.equal(total - 100, got, "the slow consumer got messages that were not counted")
      slow:send_close(1008)
      assert.is_true(slow:wait_closed(2))
      assert.is_not_nil(srv:wait_log("slow consumer", 2), "no slow consumer warning:\n" .. srv:log())
      assert.is_not_nil(srv:wait_log("CLOSED /small %d+ 1008 slow consumer", 2), srv:log())
      -- The other subscriber got all 100, whole and in order, and stays connected.
      local all = {}
      for i = 1, 100 do all[i] = fine:expect_text(nil, 3) end
      check_sequence(all, "bp", 1000, true)
      assert.are.equal(1, count(pub, "bp"))
      fine:send_text("still here")
      fine:expect_text("still here")
      fine:close_handshake(1000)
    end)

    it("closes a subscriber that stops reading while a reading one keeps up (10 MB trickle)", function()
      local N = 10000
      local fine = open(srv, "/sub?topic=tr")
      local slow = open(srv, "/small?topic=tr")   -- never read until the end
      local rss0 = srv:rss_kb()
      pub:send_text("trickle tr " .. N .. " 1000")
      local got, reply = {}, nil
      local deadline = now() + 20
      while not (reply and #got == N) do
        assert.is_true(now() < deadline, ("timed out: %d of %d, reply %s"):format(#got, N, tostring(reply)))
        local f = fine:recv_frame(0.02)
        while f do
          assert.are.equal("text", f.op, ws.describe(f))
          got[#got + 1] = f.payload
          f = fine:recv_frame(0)
        end
        if not reply then
          local r = pub:recv_frame(0)
          if r then reply = r.payload end
        end
      end
      local rss1 = srv:rss_kb()
      check_sequence(got, "tr", 1000, true)
      local total = tonumber(reply:match("^trickle (%d+)$"))
      assert.is_true(total > N and total < 2 * N, reply)
      local msgs, close = until_close(slow, 5)
      assert.are.equal(1008, close.code)
      assert.are.equal("slow consumer", close.reason)
      assert.are.equal(total - N, check_sequence(msgs, "tr", 1000, true))
      slow:close_tcp()
      if rss0 and rss1 then
        assert.is_true(rss1 - rss0 < 32 * 1024, ("server grew by %d KiB"):format(rss1 - rss0))
      end
      -- The slow consumer's subscription ends once its connection is gone.
      assert.is_truthy(server.poll(3, function() return count(pub, "tr") == 1 end),
        "subscribers of tr: " .. count(pub, "tr"))
      fine:close_handshake(1000)
    end)

    it('"drop" skips messages (nil, "dropped", ws.dropped), keeps the connection and whole messages',
      function()
        local d = open(srv, "/drop?topic=dp")
        local queued = tonumber(ask(pub, "burst dp 100 1000"):match("^burst (%d+)$"))
        assert.is_true(queued > 0 and queued < 100, "queued " .. tostring(queued))
        local msgs = {}
        local drained
        while true do
          local m = d:expect_text(nil, 3)
          if m:match("^drained") then
            drained = m
            break
          end
          msgs[#msgs + 1] = m
        end
        -- on_drain ran once the queue emptied below the low water mark.
        assert.is_truthy(drained:match("^drained buffered=%d+ dropped=" .. (100 - queued) .. "$"), drained)
        assert.are.equal(queued, check_sequence(msgs, "dp", 1000, true))
        assert.are.equal("stats buffered=0 dropped=" .. (100 - queued), ask(d, "stats"))
        -- Still subscribed and open: new messages arrive.
        assert.are.equal("pub 1", ask(pub, "pub dp after"))
        d:expect_text("after")
        d:close_handshake(1000)
      end)

    -- 6000 bytes: large sends are queued without a copy (MW_PIN_MIN), small ones copied.
    for _, size in ipairs({ 1000, 6000 }) do
      local title = '"drop" on ws:send returns nil, "dropped"; later sends go through again (%d B)'
      it(title:format(size), function()
        local d = open(srv, "/drop")
        d:send_text("flood 200 " .. size)
        local msgs, result, drained = {}, nil, nil
        while not (result and drained) do
          local m = d:expect_text(nil, 3)
          if m:match("^flood ") then
            result = m
          elseif m:match("^drained ") then
            drained = m
          else
            msgs[#msgs + 1] = m
          end
        end
        local ok, dropped = result:match("^flood ok=(%d+) dropped=(%d+) closed=0 wsdropped=(%d+)$")
        ok, dropped = tonumber(ok), tonumber(dropped)
        assert.is_number(ok, result)
        assert.are.equal(200, ok + dropped)
        assert.is_true(dropped > 0, result)
        assert.are.equal(("flood ok=%d dropped=%d closed=0 wsdropped=%d"):format(ok, dropped, dropped),
          result)
        assert.are.equal(ok, check_sequence(msgs, "f", size, true))
        d:send_text("echo")
        d:expect_text("echo")
        d:close_handshake(1000)
      end)
    end

    it("ws.buffered counts queued bytes and falls to 0 once written", function()
      local c = open(srv, "/sub")
      c:send_text("buffered 5 1000")
      for i = 1, 5 do
        local m = c:expect_text()
        assert.are.equal(1000, #m)
        assert.are.equal("b " .. i .. " ", m:sub(1, #("b " .. i .. " ")))
      end
      local a, b = c:expect_text(nil, 2):match("^buffered (%d+) (%d+)$")
      a, b = tonumber(a), tonumber(b)
      assert.is_true(a >= 5000 and a <= 5100, "buffered right after 5 sends of 1000: " .. tostring(a))
      assert.are.equal(0, b)
      c:close_handshake(1000)
    end)
  end)
end)

describe("app timers", function()
  local srv
  local function state()
    return probe.decode(http.get(srv, "/state").body)
  end

  setup(function()
    srv = server.start(TIMERS)
  end)
  teardown(function()
    server.stop_all()
  end)

  it("every, after, cancel while loading, an erroring timer, a sleeping timer, self-cancel", function()
    local t0 = now()
    socket.sleep(1.05)
    local s = state()
    local elapsed = now() - t0
    -- every(0.05): about 20 runs in 1 s.
    assert.is_true(s.ticks >= 12 and s.ticks <= elapsed / 0.05 + 3, "ticks " .. s.ticks)
    assert.are.equal(1, s.after_fired)
    assert.are.equal(0, s.cancelled_fired)
    assert.are.equal("true", s.cancel_result)
    assert.are.equal("false", s.cancel_again)
    -- The erroring timer keeps firing and each error names the app file and line.
    assert.is_true(s.boom_runs >= 10, "boom runs " .. s.boom_runs)
    local line = server.line_of(TIMERS, "TIMER_ERROR_LINE")
    assert.is_not_nil(srv:log():match("timer error: [^\n]*timers%.lua:" .. line .. ": timer boom"),
      "log lacks timer error with timers.lua:" .. line .. ":\n" .. srv:log():sub(1, 2000))
    -- The sleeping every-timer (0.05 s interval, 0.2 s sleep) never overlaps itself.
    assert.are.equal(1, s.sleepy_max_running)
    assert.is_true(s.sleepy_runs >= 3 and s.sleepy_runs <= 6, "sleepy runs " .. s.sleepy_runs)
    assert.are.equal(3, s.self_cancel_runs)
    assert.are.equal("true", s.self_cancel_result)
    socket.sleep(0.3)
    s = state()
    assert.are.equal(1, s.after_fired)
    assert.are.equal(3, s.self_cancel_runs)
    assert.are.equal(1, s.sleepy_max_running)
  end)

  it("arms and cancels timers at run time", function()
    assert.are.equal("armed", http.get(srv, "/arm?s=0.3").body)
    assert.are.equal("true", http.get(srv, "/cancel").body)
    assert.are.equal("false", http.get(srv, "/cancel").body)
    socket.sleep(0.45)
    assert.are.equal(0, state().runtime_fired)
    assert.are.equal("armed", http.get(srv, "/arm?s=0.1").body)
    assert.is_truthy(server.poll(1, function() return state().runtime_fired == 1 end))
    assert.are.equal("false", http.get(srv, "/cancel").body, "cancel() of a timer that fired")
    assert.are.equal("armed", http.get(srv, "/arm_every").body)
    assert.is_truthy(server.poll(1, function() return state().every_fired >= 3 end))
    assert.are.equal("true", http.get(srv, "/cancel_every").body)
    local n = state().every_fired
    socket.sleep(0.2)
    assert.are.equal(n, state().every_fired)
  end)
end)
