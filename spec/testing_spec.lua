-- moonwire.testing, the test kit for app authors: simulated connections, a
-- virtual clock, pub/sub, HTTP, errors and the per-connection order guarantee,
-- checked against apps/echo/app.lua and spec/apps/testing_*.lua. No server runs:
-- the apps load in this Lua state over the kit's simulated moonwire.core.

package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local testing = require "moonwire.testing"

local ECHO = "apps/echo/app.lua"
local CHAT = "spec/apps/testing_chat.lua"
local ORDER = "spec/apps/testing_order.lua"
local TIMERS = "spec/apps/testing_timers.lua"
local T0 = 1700000000 -- the kit's default start time

-- Loads `app`, which must fail, and returns the error. `app` is a function, or the
-- source of an app file (written to a temporary "*_app.lua" file, removed afterwards).
local function load_error(app)
  local path
  if type(app) == "string" then
    path = os.tmpname() .. "_app.lua"
    local f = assert(io.open(path, "w"))
    f:write(app)
    f:close()
  end
  local ok, err = pcall(testing.load, path or app)
  if path then os.remove(path) end
  assert.is_false(ok, "the app loaded")
  return err
end

describe("moonwire.testing", function()
  local t
  after_each(function()
    if t then t:close() end
    t = nil
  end)

  describe("loading", function()
    it("loads an app file with the real library over a simulated core", function()
      t = testing.load(ECHO)
      assert.is_true(t.app._moonwire_app)
      assert.equal("moonwire.testing", t.moonwire._VERSION)
      assert.equal(t.core, package.loaded["moonwire.core"])
      assert.equal(t.moonwire, package.loaded["moonwire"])
    end)

    it("loads an app from a function", function()
      t = testing.load(function()
        local moonwire = require "moonwire"
        local app = moonwire.app {}
        app:websocket("/hi", { on_open = function(ws) ws:send("hi " .. ws.id) end })
        return app
      end)
      local c = t:connect("/hi")
      assert.equal("hi " .. c.id, c:next())
    end)

    it("puts package.loaded and package.path back on close, also a moonwire loaded before", function()
      local sentinel, core_sentinel = { fake = true }, { fake_core = true }
      package.loaded["moonwire"], package.loaded["moonwire.core"] = sentinel, core_sentinel
      local path = package.path
      local kit = testing.load(CHAT)
      assert.are_not.equal(sentinel, package.loaded["moonwire"])
      assert.are_not.equal(path, package.path) -- the app's directory is searched first
      kit:close()
      assert.equal(sentinel, package.loaded["moonwire"])
      assert.equal(core_sentinel, package.loaded["moonwire.core"])
      assert.equal(path, package.path)
      package.loaded["moonwire"], package.loaded["moonwire.core"] = nil, nil
      kit = testing.load(ECHO)
      kit:close()
      assert.is_nil(package.loaded["moonwire"])
      assert.is_nil(package.loaded["moonwire.core"])
    end)

    it("gives every load a fresh moonwire, so moonwire.state does not leak between tests", function()
      local a = testing.load(ORDER)
      local c = a:connect("/order")
      a:advance(1)
      c:close(1000)
      assert.equal(1, a:state("testing_order").closes[c.id])
      a:close()
      t = testing.load(ORDER)
      assert.same({}, t:state("testing_order").closes)
    end)

    it("raises the app's own error with its file and line", function()
      assert.matches("_app.lua:2:", load_error("local x = 1\nlocal y = = 2\nreturn x\n"), 1, true)
      assert.is_nil(package.loaded["moonwire"])

      local err = load_error("local moonwire = require 'moonwire'\nlocal app = moonwire.app {}\n"
        .. "app:websocket('/x', { on_mesage = function() end })\nreturn app\n")
      assert.matches("_app.lua:3: unknown websocket route option 'on_mesage' (did you mean 'on_message'?)",
        err, 1, true)
    end)

    it("refuses a file that returns no app", function()
      assert.matches("did not return an app", load_error("return 42\n"), 1, true)
      assert.has_error(function() testing.load(42) end)
    end)

    it("says that outbound sockets need the real server", function()
      local err = load_error(function()
        local moonwire = require "moonwire"
        moonwire.tcp()
      end)
      assert.matches("moonwire.tcp is not available in moonwire.testing", err, 1, true)
    end)

    it("rejects what the server rejects while the app file loads", function()
      local err = load_error(function()
        local moonwire = require "moonwire"
        moonwire.sleep(1)
      end)
      assert.matches("moonwire.sleep can only be called inside a handler", err, 1, true)
      err = load_error(function()
        local moonwire = require "moonwire"
        local app = moonwire.app {}
        app:publish("t", "x")
        return app
      end)
      assert.matches("app:publish works only while the server runs", err, 1, true)
    end)

    it("is closed after t:close()", function()
      local kit = testing.load(ECHO)
      kit:close()
      kit:close() -- twice is fine
      assert.has_error(function() kit:connect("/echo") end,
        "moonwire.testing: this test kit was closed (t:close())")
    end)
  end)

  describe("the echo app", function()
    before_each(function() t = testing.load(ECHO) end)

    it("echoes text as text and binary as binary", function()
      local c = t:connect("/echo")
      assert.is_true(c.accepted)
      assert.equal(101, c.status)
      assert.equal("open", c.state)
      assert.is_true(c:send("hello"))
      assert.is_true(c:send_binary("\0\1\2"))
      assert.same({ "hello", "\0\1\2" }, c:messages())
      assert.same({ "hello", false }, { c:next() })
      assert.same({ "\0\1\2", true }, { c:next() })
      assert.is_nil(c:next())
      assert.same({ "\0\1\2", true }, { c:last() })
      assert.same({ data = "hello", binary = false }, c.sent[1])
    end)

    it("keeps each connection's messages to itself", function()
      local a, b = t:connect("/echo"), t:connect("/echo")
      a:send("for a")
      b:send("for b")
      assert.same({ "for a" }, a:messages())
      assert.same({ "for b" }, b:messages())
      assert.are_not.equal(a.id, b.id)
    end)

    it("closes when the client closes, and then reads nothing more", function()
      local c = t:connect("/echo")
      c:close(1000, "bye")
      assert.same({ code = 1000, reason = "bye", by = "client" }, c.closed)
      assert.equal("closed", c.state)
      assert.same({ nil, "closed" }, { c:send("late") })
      assert.same({}, c:messages())
    end)

    it("answers 404 for a path without a route, like the server", function()
      local c = t:connect("/nope")
      assert.is_false(c.accepted)
      assert.equal(404, c.status)
      assert.equal("404 Not Found: no route for this path\n", c.body)
      assert.equal("text/plain; charset=utf-8", c.headers["content-type"])
      assert.same({ nil, "closed" }, { c:send("x") })
    end)

    it("answers 426 to plain HTTP on the WebSocket path", function()
      local res = t:request("GET", "/echo")
      assert.equal(426, res.status)
      assert.equal("websocket", res.headers.Upgrade)
    end)
  end)

  describe("the order guarantee", function()
    local state
    before_each(function()
      t = testing.load(ORDER)
      state = t:state("testing_order")
    end)

    it("holds messages back until a sleeping on_open has finished", function()
      local c = t:connect("/order")
      c:send("a")
      c:send("b")
      assert.same({}, c:messages())
      assert.same({ "open start" }, c.data.events)
      t:advance(0.999)
      assert.same({}, c:messages())
      t:advance(0.001)
      assert.same({ "open", "got a", "got b" }, c:messages())
      assert.same({ "open start", "open end", "msg a", "msg b" }, c.data.events)
    end)

    it("runs one handler at a time per connection, in arrival order", function()
      local c = t:connect("/order")
      t:advance(1)
      c:send("slow")
      c:send("x")
      c:send("y")
      assert.same({ "open" }, c:messages())
      t:advance(1.9)
      assert.same({ "open" }, c:messages())
      t:advance(0.1)
      assert.same({ "open", "slow done", "got x", "got y" }, c:messages())
      assert.same({ "open start", "open end", "msg slow", "slow end", "msg x", "msg y" },
        c.data.events)
    end)

    it("lets other connections run while one handler sleeps", function()
      local a, b = t:connect("/order"), t:connect("/order")
      t:advance(1)
      a:send("slow")
      b:send("quick")
      assert.same({ "open", "got quick" }, b:messages())
      assert.same({ "open" }, a:messages())
    end)

    it("runs on_close after the messages that wait, and exactly once", function()
      local c = t:connect("/order")
      t:advance(1)
      c:send("slow")
      c:send("queued")
      c:close(1000, "done")
      assert.is_nil(state.closes[c.id]) -- the sleeping handler comes first
      t:advance(2)
      assert.same({ "open start", "open end", "msg slow", "slow end", "msg queued", "close 1000 done" },
        state.events[c.id])
      assert.equal(1, state.closes[c.id])
      assert.equal(1, c.on_close_runs)
      -- nothing the client does now runs on_close again
      c:close(1000)
      c:drop()
      t:advance(10)
      assert.equal(1, state.closes[c.id])
    end)

    it("reports 1005 for a close without a code and 1006 for a dropped connection", function()
      local a, b = t:connect("/order"), t:connect("/order")
      t:advance(1)
      a:close()
      b:drop()
      assert.same({ code = 1005, reason = "", by = "client" }, a.closed)
      assert.same({ code = 1006, reason = "", by = "drop" }, b.closed)
      assert.equal("close 1005 ", state.events[a.id][#state.events[a.id]])
      assert.equal("close 1006 ", state.events[b.id][#state.events[b.id]])
    end)

    it("records a close by the server, which stops sends at once", function()
      local c = t:connect("/order")
      t:advance(1)
      c:send("close")
      assert.same({ code = 4000, reason = "bye", by = "server" }, c.closed)
      assert.equal("closed", c.state)
      assert.same({ "open" }, c:messages())
      assert.same({ "msg close", "send after close nil closed", "closed field true", "close 4000 bye" },
        { select(3, unpack(state.events[c.id])) })
      assert.equal(1, state.closes[c.id])
      assert.same({ nil, "closed" }, { c:send("ignored") })
    end)

    it("runs the on_close of a connection another one closed after that handler, not inside it", function()
      local a, b = t:connect("/order"), t:connect("/order")
      t:advance(1)
      a:send("kill " .. b.id)
      assert.same({ code = 4002, reason = "killed", by = "server" }, b.closed)
      assert.same({ a.id .. " kills " .. b.id .. ": true", a.id .. " done", b.id .. " on_close 4002" },
        state.log)
      assert.is_nil(a.closed)
    end)

    it("delivers on_close only after a handler that sleeps past its own ws:close", function()
      local c = t:connect("/order")
      t:advance(1)
      c:send("close sleep")
      assert.equal(4001, c.closed.code)
      assert.is_nil(state.closes[c.id])
      t:advance(1)
      assert.same({ "msg close sleep", "slept after close", "close 4001 " },
        { select(3, unpack(state.events[c.id])) })
    end)

    it("finishes the ws after on_close, which may sleep", function()
      local c = t:connect("/order?a=1")
      t:advance(1)
      c:send("slow close")
      c:close(3000, "x")
      assert.equal("/order", c.ws.path) -- on_close sleeps: still readable
      t:advance(0.5)
      assert.equal("close end", state.events[c.id][#state.events[c.id]])
      -- inside on_close the request fields were readable, sends failed
      assert.same({ path = "/order", send = "closed", closed = "true" }, state.after_close)
      -- after on_close only id and data stay
      assert.is_nil(c.ws.path)
      assert.is_nil(c.ws.query)
      assert.equal(c.id, c.ws.id)
      assert.equal("close end", c.data.events[#c.data.events])
      assert.same({ nil, "closed" }, { c.ws:send("x") })
      assert.same({ nil, "closed" }, { c.ws:ping() })
      assert.is_false(c.ws:unsubscribe("t"))
      assert.matches("finished", tostring(c.ws), 1, true)
    end)
  end)

  describe("handler errors", function()
    local state
    before_each(function()
      t = testing.load(ORDER)
      state = t:state("testing_order")
    end)

    it("close that connection with 1011, record the traceback and run on_close once", function()
      local c, other = t:connect("/order"), t:connect("/order")
      t:advance(1)
      c:send("boom")
      assert.same({ code = 1011, reason = "internal error", by = "server" }, c.closed)
      assert.equal(1, #t.errors)
      local e = t.errors[1]
      assert.equal("handler", e.kind)
      assert.equal(c.id, e.connection)
      assert.matches("testing_order.lua:%d+: boom from a handler", e.message)
      assert.matches("stack traceback:", e.traceback, 1, true)
      assert.truthy(t:logged("handler error (connection " .. c.id .. "): ", "error"))
      assert.equal("close 1011 internal error", state.events[c.id][#state.events[c.id]])
      assert.equal(1, state.closes[c.id])
      -- the other connection runs on
      other:send("still here")
      assert.equal("got still here", other:last())
    end)

    it("fail t:assert_no_errors() with the traceback", function()
      local c = t:connect("/order")
      t:advance(1)
      t:assert_no_errors()
      c:send("boom")
      local ok, err = pcall(t.assert_no_errors, t)
      assert.is_false(ok)
      assert.matches("1 handler error(s); the first, in the handler of connection " .. c.id, err, 1, true)
      assert.matches("boom from a handler", err, 1, true)
    end)

    it("treat a coroutine.yield of the app's own as an error", function()
      local c = t:connect("/order")
      t:advance(1)
      c:send("yield")
      assert.equal(1011, c.closed.code)
      assert.matches("coroutine.yield in a handler suspends it forever", t.errors[1].message, 1, true)
    end)

    it("come from misusing ws like the real one", function()
      local a, b = t:connect("/order"), t:connect("/order")
      t:advance(1)
      a:send("readonly")
      b:send("badclose")
      assert.equal(1011, a.closed.code)
      assert.equal(1011, b.closed.code)
      assert.matches("ws.path is read-only; keep per-connection state in ws.data", t.errors[1].message,
        1, true)
      assert.matches("close code must be 1000-1003, 1007-1014 or 3000-4999", t.errors[2].message, 1, true)
    end)

    it("close with 1009 and 1007 what the server would not accept", function()
      local a, b = t:connect("/order"), t:connect("/order")
      t:advance(1)
      a:send(string.rep("x", 17)) -- max_message_size = 16
      b:send("\255 not utf-8")
      assert.same({ code = 1009, reason = "message too big", by = "server" }, a.closed)
      assert.same({ code = 1007, reason = "text message is not UTF-8", by = "server" }, b.closed)
      assert.equal("close 1009 message too big", state.events[a.id][#state.events[a.id]])
      local c = t:connect("/order")
      t:advance(1)
      c:send_binary("\255\254")
      c:send("h\195\169 \240\159\145\141") -- valid UTF-8
      assert.same({ "open", "got \255\254", "got h\195\169 \240\159\145\141" }, c:messages())
      assert.is_true(c.sent[2].binary)
      assert.equal(0, #t.errors)
    end)
  end)

  describe("the ws object", function()
    before_each(function() t = testing.load(ORDER) end)

    it("has the request's fields", function()
      local c = t:connect("/order?a=x%20y&b", { headers = { ["X-Custom"] = "yes" },
        remote_addr = "10.0.0.7", remote_port = 5555 })
      t:advance(1)
      c:send("fields")
      assert.equal(table.concat({ "id=" .. c.id, "path=/order", "query_string=a=x%20y&b",
        "remote_addr=10.0.0.7", "remote_port=5555", "buffered=0", "dropped=0", "closed=false",
        "query.a=x y", "header=yes" }, "\n"), c:last())
      assert.equal("", c.ws.query.b)
      assert.equal("localhost", c.ws.headers.host)
      assert.is_nil(c.ws.headers.upgrade, "spent once upgraded, as in the server")
    end)

    it("records pings", function()
      local c = t:connect("/order")
      t:advance(1)
      c:send("ping")
      assert.same({ "p" }, c.pings)
    end)
  end)

  describe("timers and the clock", function()
    local s
    before_each(function()
      t = testing.load(TIMERS)
      s = t:state("testing_timers")
    end)

    it("starts at a fixed time that moves only with t:advance", function()
      assert.equal(T0, t:now())
      assert.equal(T0, s.loaded_at)
      assert.equal(0, s.ticks)
      t:advance(0.5)
      assert.equal(T0 + 0.5, t:now())
      assert.equal(0, s.ticks)
      t:advance(0.5)
      assert.equal(1, s.ticks)
      t:advance(10)
      assert.equal(11, s.ticks)
      assert.equal(T0 + 11, t:now())
      local kit = testing.load(TIMERS, { start_time = 0 })
      assert.equal(0, kit:now())
      kit:close()
    end)

    it("runs app:after once at its time and never a timer cancelled while loading", function()
      assert.is_true(s.cancel_result)
      assert.is_false(s.cancel_again)
      t:advance(2.4)
      assert.is_nil(s.once_at)
      t:advance(0.1)
      assert.equal(T0 + 2.5, s.once_at)
      t:advance(100)
      assert.equal(T0 + 2.5, s.once_at)
      assert.equal(0, s.cancelled_runs)
    end)

    it("records timer errors and keeps the timer going", function()
      t:advance(9)
      assert.equal(3, s.boom_runs)
      local n = 0
      for _, e in ipairs(t.errors) do
        assert.equal("timer", e.kind)
        assert.is_nil(e.connection)
        n = n + 1
        assert.matches("timer boom " .. n, e.message, 1, true)
      end
      assert.equal(3, n)
      assert.truthy(t:logged("timer error: ", "error"))
    end)

    it("skips the ticks of a repeating timer whose last run still sleeps", function()
      t:advance(10)
      assert.equal(4, s.sleepy_runs) -- at 1, 4, 7 and 10
      assert.equal(1, s.sleepy_max)
    end)

    it("wakes a sleeping handler at exactly its time, between timer ticks", function()
      local c = t:connect("/clock")
      c:send("1.5")
      t:advance(1.4)
      assert.same({ "tick 1" }, c:messages())
      t:advance(0.6)
      assert.same({ "tick 1", string.format("%.3f", T0 + 1.5), "tick 2" }, c:messages())
    end)

    it("runs what falls due at the same instant in the order it was scheduled", function()
      local c = t:connect("/clock")
      c:send("1") -- wakes at T0 + 1, as the every(1) made at load ticks
      t:advance(1)
      assert.same({ "tick 1", string.format("%.3f", T0 + 1) }, c:messages())
    end)

    it("runs timers armed by handlers, and cancels them", function()
      local c = t:connect("/arm")
      c:send("2")
      t:advance(1.9)
      assert.is_nil(c:next())
      assert.equal(T0 + 2, t:next_due())
      t:advance(0.1)
      assert.equal("fired " .. (T0 + 2), c:next())
      c:send("5")
      c:send("cancel")
      assert.equal("cancel true", c:next())
      t:advance(10)
      c:send("cancel")
      assert.equal("cancel false", c:next())
      assert.is_nil(c:next())
    end)

    it("tells when the next event is due", function()
      assert.equal(T0 + 1, t:next_due())
      t:advance(1)
      assert.equal(T0 + 2, t:next_due())
    end)

    it("runs app:after(0) without the clock moving", function()
      t:close()
      local ran
      t = testing.load(function()
        local moonwire = require "moonwire"
        local app = moonwire.app {}
        app:after(0, function() ran = moonwire.now() end)
        return app
      end)
      assert.equal(T0, ran)
    end)

    it("rejects bad arguments", function()
      assert.has_error(function() t:advance(-1) end)
      assert.has_error(function() t:advance("1") end)
    end)
  end)

  describe("pub/sub", function()
    before_each(function() t = testing.load(CHAT) end)

    it("delivers published messages to the subscribers of a topic only", function()
      local ann = t:connect("/chat/lobby?name=ann")
      local bob = t:connect("/chat/lobby?name=bob")
      local cat = t:connect("/chat/attic?name=cat")
      assert.same({ "ann joined", "bob joined" }, ann:messages())
      assert.same({ "bob joined" }, bob:messages())
      assert.same({ "cat joined" }, cat:messages())
      ann:send("hi all")
      assert.equal("ann: hi all", bob:last())
      assert.equal("ann: hi all", ann:last())
      assert.equal("cat joined", cat:last())
      assert.equal(2, t:publish("room:lobby", "from the test"))
      assert.equal("from the test", bob:last())
      assert.equal(0, t:publish("room:nobody", "x"))
      assert.equal(1, t:publish("room:attic", "\1\2", true))
      assert.same({ "\1\2", true }, { cat:last() })
    end)

    it("counts subscribers and ends subscriptions with the connection", function()
      local ann = t:connect("/chat/lobby?name=ann")
      local bob = t:connect("/chat/lobby?name=bob")
      assert.equal(2, t:subscribers("room:lobby"))
      assert.is_true(ann:subscribed("room:lobby"))
      assert.same({ "room:lobby" }, testing.keys(ann.subscriptions))
      ann:send("/who")
      assert.equal("who 2", ann:last())
      assert.equal("2", t:request("GET", "/rooms/lobby").body)
      ann:close(1000)
      assert.equal(1, t:subscribers("room:lobby"))
      assert.same({}, ann.subscriptions)
      assert.equal("ann left (1000)", bob:last())
      assert.equal(1, t:state("testing_chat").closes.ann)
    end)

    it("unsubscribes", function()
      local ann = t:connect("/chat/lobby?name=ann")
      ann:send("/leave")
      assert.equal("left true false", ann:last())
      assert.is_false(ann:subscribed("room:lobby"))
      assert.equal(0, t:publish("room:lobby", "x"))
    end)
  end)

  describe("upgrades and middleware", function()
    before_each(function() t = testing.load(CHAT) end)

    it("records a refusal by the upgrade hook, and nothing opens", function()
      local watcher = t:connect("/chat/lobby?name=w")
      local c = t:connect("/chat/lobby")
      assert.is_false(c.accepted)
      assert.equal("refused", c.state)
      assert.equal(401, c.status)
      assert.equal("name required\n", c.body)
      assert.equal("Name", c.headers["WWW-Authenticate"])
      assert.equal("text/plain; charset=utf-8", c.headers["Content-Type"])
      assert.same({ "w joined" }, watcher:messages())
      assert.same({ nil, "closed" }, { c:send("x") })
      local ghost = t:connect("/chat/lobby?name=ghost")
      assert.equal(403, ghost.status)
      assert.equal("403 Forbidden\n", ghost.body)
      assert.same({}, t.errors)
    end)

    it("runs middleware before the hook; its refusal ends the upgrade", function()
      local c = t:connect("/chat/lobby?name=ann&token=bad")
      assert.equal(403, c.status)
      assert.equal("bad token\n", c.body)
    end)

    it("merges middleware and hook tables into ws.data", function()
      local c = t:connect("/chat/lobby?name=ann")
      assert.same({ via = "middleware", name = "ann" }, c.data)
      assert.equal("lobby", c.ws.params.room)
      assert.equal("lobby", c.headers["X-Room"])
    end)

    it("holds messages sent behind the request until a sleeping middleware decided", function()
      local c = t:connect("/chat/lobby?name=ann&token=slow")
      assert.equal("upgrading", c.state)
      assert.is_nil(c.accepted)
      assert.is_true(c:send("early"))
      assert.same({}, c:messages())
      t:advance(1)
      assert.is_true(c.accepted)
      assert.same({ "ann joined", "ann: early" }, c:messages())
    end)

    it("answers 408 when the hook takes longer than handshake_timeout", function()
      t:close()
      local opened, answer = false, nil
      t = testing.load(function()
        local moonwire = require "moonwire"
        local app = moonwire.app { handshake_timeout = 0.5 }
        app:use(function()
          moonwire.sleep(1)
          answer = "woke"
        end)
        app:websocket("/x", { on_open = function() opened = true end })
        return app
      end)
      local c = t:connect("/x")
      t:advance(0.5)
      assert.equal(408, c.status)
      t:advance(1)
      assert.equal("woke", answer)
      assert.is_false(opened)
      assert.equal("refused", c.state)
    end)

    it("answers 500 when the hook fails, and records it", function()
      local c = t:connect("/proto?pick=v3", { protocols = { "v1", "v2" } })
      assert.equal(500, c.status)
      assert.equal("500 Internal Server Error: the upgrade hook failed\n", c.body)
      assert.equal("upgrade hook", t.errors[1].kind)
      assert.matches("which the client did not offer", t.errors[1].message, 1, true)
    end)

    it("chooses the route's preferred subprotocol, or the hook's pick", function()
      local c = t:connect("/proto", { protocols = { "v1", "v2" } })
      assert.equal("v2", c.protocol)
      assert.equal("v2", c.headers["Sec-WebSocket-Protocol"])
      assert.equal("hello", c:next())
      c = t:connect("/proto?pick=v1", { protocols = { "v1", "v2" } })
      assert.equal("v1", c.protocol)
      c = t:connect("/proto")
      assert.is_nil(c.protocol)
      assert.is_true(c.accepted)
    end)

    it("applies the origin policy", function()
      assert.is_true(t:connect("/strict", { headers = { Origin = "https://good.example" } }).accepted)
      local bad = t:connect("/strict", { headers = { Origin = "https://evil.example" } })
      assert.equal(403, bad.status)
      assert.equal("403 Forbidden: origin not allowed\n", bad.body)
      assert.is_true(t:connect("/strict").accepted) -- no Origin: not a browser
      assert.is_true(t:connect("/chat/lobby?name=a", { headers = { Origin = "http://localhost" } }).accepted)
      assert.equal(403, t:connect("/chat/lobby?name=a", { headers = { Origin = "http://evil" } }).status)
    end)
  end)

  describe("plain HTTP", function()
    before_each(function() t = testing.load(CHAT) end)

    it("runs a route and builds the response", function()
      local res = t:request("GET", "/health")
      assert.equal(200, res.status)
      assert.equal("ok", res.body)
      assert.equal("text/plain; charset=utf-8", res.headers["content-type"])
      assert.equal("2", res.headers["Content-Length"])
      res = t:request("GET", "/headers", { headers = { ["X-In"] = "v" } })
      assert.equal(201, res.status)
      assert.equal("v", res.headers["X-Test"])
      assert.equal("made", res.body)
    end)

    it("passes the body, and refuses one over max_body_size", function()
      local res = t:request("POST", "/echo", { body = "payload" })
      assert.equal("payload", res.body)
      assert.equal("application/octet-stream", res.headers["Content-Type"])
      res = t:request("POST", "/echo", { body = string.rep("x", 65) })
      assert.equal(413, res.status)
    end)

    it("answers 404, 405 with Allow, and HEAD without the body", function()
      assert.equal(404, t:request("GET", "/missing").status)
      local res = t:request("GET", "/echo")
      assert.equal(405, res.status)
      assert.equal("POST", res.headers.Allow)
      res = t:request("HEAD", "/health")
      assert.equal(200, res.status)
      assert.equal("", res.body)
      assert.equal("2", res.headers["content-length"])
    end)

    it("answers 204 when the handler sends nothing and 500 when it fails", function()
      local res = t:request("GET", "/nothing")
      assert.equal(204, res.status)
      assert.equal("", res.body)
      res = t:request("GET", "/boom")
      assert.equal(500, res.status)
      assert.equal("500 Internal Server Error\n", res.body)
      assert.equal("http handler", t.errors[1].kind)
      assert.matches("http boom", t.errors[1].message, 1, true)
    end)

    it("fills in the response of a sleeping handler as the clock moves", function()
      local res = t:request("GET", "/slow")
      assert.is_true(res.pending)
      assert.is_nil(res.status)
      t:advance(2)
      assert.is_nil(res.pending)
      assert.equal(200, res.status)
      assert.equal("slept until " .. (T0 + 2), res.body)
    end)

    it("says clearly that static routes are not simulated", function()
      t:close()
      t = testing.load(function()
        local moonwire = require "moonwire"
        local app = moonwire.app {}
        app:static("/files", "/tmp")
        return app
      end)
      assert.has_error(function() t:request("GET", "/files/x") end)
      local ok, err = pcall(t.request, t, "GET", "/files/x")
      assert.is_false(ok)
      assert.matches("static routes are not simulated", err, 1, true)
    end)
  end)

  describe("shutdown and logs", function()
    it("closes every connection with 1001 on shutdown and runs on_close", function()
      t = testing.load(ORDER)
      local a, b = t:connect("/order"), t:connect("/order")
      t:advance(1)
      t:shutdown()
      for _, c in ipairs { a, b } do
        assert.same({ code = 1001, reason = "server shutting down", by = "server" }, c.closed)
        assert.equal(1, t:state("testing_order").closes[c.id])
      end
    end)

    it("captures moonwire.log lines with the app's file and line, by level", function()
      local function app()
        local moonwire = require "moonwire"
        local a = moonwire.app {}
        a:websocket("/log", { on_open = function() moonwire.log.info("opened", 42) end })
        a:websocket("/warn", { on_open = function() moonwire.log.warn("careful") end })
        return a
      end
      t = testing.load(app)
      t:connect("/log")
      assert.matches("testing_spec.lua:%d+: opened 42", t:logged("opened 42", "info"))
      assert.is_nil(t:logged("opened 42", "error"))
      t:close()
      t = testing.load(app, { log_level = "warn" })
      t:connect("/log")
      t:connect("/warn")
      assert.is_nil(t:logged("opened"))
      assert.truthy(t:logged("careful", "warn"))
    end)
  end)

  describe("internals", function()
    it("validates UTF-8 as strictly as the server", function()
      local v = testing._valid_utf8
      assert.is_true(v("plain"))
      assert.is_true(v("\226\130\172"))         -- U+20AC
      assert.is_true(v("\244\143\191\191"))     -- U+10FFFF
      assert.is_false(v("\192\128"))            -- overlong
      assert.is_false(v("\237\160\128"))        -- surrogate
      assert.is_false(v("\244\144\128\128"))    -- above U+10FFFF
      assert.is_false(v("\226\130"))            -- truncated
    end)
  end)
end)
