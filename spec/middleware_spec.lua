-- Upgrade middleware (app:use) seen from the wire with our raw client: order,
-- merging into ws.data, refusals that stop the chain (the route's hook never
-- runs), sleeping middleware, errors -> 500 with FILE:LINE in the log, every
-- websocket route (with and without its own hook) and no plain HTTP route,
-- and hot reload (SIGHUP) replacing the middleware. Runs
-- spec/apps/middleware.lua; the reload part writes its app to a temp dir.

local server = require "spec.support.server"
local ws = require "spec.support.ws"
local http = require "spec.support.http"
local socket = require "socket"
local signal = require "posix.signal"
local stdlib = require "posix.stdlib"
local unistd = require "posix.unistd"
local dirent = require "posix.dirent"

local APP = "spec/apps/middleware.lua"
local now = socket.gettime

-- "k=v;k=v" -> table
local function parse(s)
  local t = {}
  for k, v in s:gmatch("([^=;]+)=([^;]*)") do t[k] = v end
  return t
end

local function runs(srv)
  local t = parse(http.get(srv, "/runs").body)
  for k, v in pairs(t) do t[k] = tonumber(v) end
  return t
end

-- Opens path and returns the ws.data the connection reports, and the client.
local function data_of(srv, path, opts)
  local c = ws.open(srv, path, opts)
  return parse(c:expect_text()), c
end

local refused = ws.refused

local function delta(before, after)
  local d = {}
  for k, v in pairs(after) do d[k] = v - (before[k] or 0) end
  return d
end

describe("app:use middleware", function()
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

  describe("order and ws.data", function()
    it("runs every middleware in the order added, then the route's hook; later fields win", function()
      local before = runs(srv)
      local data, c = data_of(srv, "/a?name=ann")
      assert.are.same({ m1 = "yes", m2 = "yes", hook = "yes", both = "m1", who = "hook",
        trail = "m1,m2,m3,hook", name = "ann" }, data)
      assert.are.same({ m1 = 1, m2 = 1, m3 = 1, hook = 1 }, delta(before, runs(srv)))
      -- ws.data stays what the chain made.
      assert(c:send_text("data"))
      assert.are.same(data, parse(c:expect_text()))
      c:close_handshake(1000)
    end)

    it("applies to a route without its own hook", function()
      local before = runs(srv)
      local data, c = data_of(srv, "/b")
      assert.are.same({ m1 = "yes", m2 = "yes", both = "m1", who = "m2" }, data)
      assert.are.same({ m1 = 1, m2 = 1, m3 = 1, hook = 0 }, delta(before, runs(srv)))
      c:close_handshake(1000)
    end)

    it("applies to a route with params; a hook that returns nothing keeps the middleware's data", function()
      local data, c = data_of(srv, "/c/xyz")
      assert.are.same({ m1 = "yes", m2 = "yes", both = "m1", who = "m2", param = "xyz" }, data)
      c:close_handshake(1000)
    end)

    it("does not run for plain HTTP requests", function()
      local before = runs(srv)
      for _ = 1, 3 do http.get(srv, "/runs") end
      assert.are.same({ m1 = 0, m2 = 0, m3 = 0, hook = 0 }, delta(before, runs(srv)))
    end)

    it("does not run for a websocket request that matches no route", function()
      local before = runs(srv)
      refused(srv, "/nowhere", 404)
      assert.are.same({ m1 = 0, m2 = 0, m3 = 0, hook = 0 }, delta(before, runs(srv)))
    end)

    -- Merging must not write into a table a middleware returned: a module-
    -- level table returned by every call would carry one connection's fields
    -- into the next connection's ws.data.
    it("does not write into the table a middleware returned", function()
      local first, c1 = data_of(srv, "/a?shared=1&name=bob")
      assert.are.equal("bob", first.name)
      assert.are.equal("yes", first.shared)
      local second, c2 = data_of(srv, "/a?shared=1")
      assert.is_nil(second.name, "ws.data of the second connection has the first one's name")
      assert.are.equal("shared=yes", http.get(srv, "/shared").body,
        "the middleware's own table was modified")
      c1:close_handshake(1000)
      c2:close_handshake(1000)
    end)
  end)

  describe("refusals", function()
    it("a status with body and headers from the first middleware stops the chain", function()
      local before = runs(srv)
      local res = refused(srv, "/a?deny=m1", 401)
      assert.are.equal("m1 says no\n", res.body)
      assert.are.equal("m1", res.headers["x-denied-by"])
      assert.are.equal("Bearer", res.headers["www-authenticate"])
      assert.are.same({ m1 = 1, m2 = 0, m3 = 0, hook = 0 }, delta(before, runs(srv)))
    end)

    it("false from a later middleware refuses with 403; the rest and the hook do not run", function()
      local before = runs(srv)
      refused(srv, "/a?deny=m2", 403)
      assert.are.same({ m1 = 1, m2 = 1, m3 = 0, hook = 0 }, delta(before, runs(srv)))
      before = runs(srv)
      refused(srv, "/b?deny=m2", 403)
      assert.are.same({ m1 = 1, m2 = 1, m3 = 0, hook = 0 }, delta(before, runs(srv)))
    end)

    it("the route's hook can still refuse after all middleware accepted", function()
      local before = runs(srv)
      local res = refused(srv, "/a?deny=hook", 403)
      assert.are.equal("hook says no\n", res.body)
      assert.are.same({ m1 = 1, m2 = 1, m3 = 1, hook = 1 }, delta(before, runs(srv)))
    end)
  end)

  describe("errors", function()
    it("an error in middleware answers 500 and logs FILE:LINE; the hook does not run", function()
      local line = server.line_of(APP, "MW_ERROR_LINE")
      local before = runs(srv)
      local res = refused(srv, "/a?boom=m1", 500)
      assert.is_falsy((res.body or ""):find("middleware boom", 1, true), "error details sent to the client")
      assert.is_not_nil(srv:wait_log("middleware%.lua:" .. line .. ": middleware boom", 2),
        "log lacks middleware.lua:" .. line .. ":\n" .. srv:log())
      assert.are.same({ m1 = 1, m2 = 0, m3 = 0, hook = 0 }, delta(before, runs(srv)))
      -- The server goes on.
      local data, c = data_of(srv, "/b")
      assert.are.equal("m2", data.who)
      c:close_handshake(1000)
    end)

    it("a middleware answer that is neither table, status nor false answers 500 and names it", function()
      local before = runs(srv)
      refused(srv, "/b?bad=m2", 500)
      assert.is_not_nil(srv:wait_log("middleware 2 %(app:use%) returned a string", 2), srv:log())
      assert.are.same({ m1 = 1, m2 = 1, m3 = 0, hook = 0 }, delta(before, runs(srv)))
    end)
  end)

  describe("sleeping middleware", function()
    it("waits without holding up other clients; two sleepers overlap", function()
      local a, b = assert(ws.connect(srv)), assert(ws.connect(srv))
      local t0 = now()
      assert(a:send_raw((ws.request("/a?sleep=0.5&name=a"))))
      assert(b:send_raw((ws.request("/b?sleep=0.5"))))
      socket.sleep(0.05)
      local t1 = now()
      local data, quick = data_of(srv, "/b")
      assert.are.equal("m2", data.who)
      assert.is_true(now() - t1 < 0.3, "a client waited " .. (now() - t1) .. " s behind sleeping middleware")
      for _, c in ipairs({ a, b }) do
        assert(ws.check_101(assert(c:read_response(3))))
      end
      local total = now() - t0
      assert.is_true(total >= 0.45, "the middleware did not sleep")
      assert.is_true(total < 0.9, "two 0.5 s sleeps took " .. total .. " s (not concurrent)")
      -- The chain went on after the sleep, in the same upgrade.
      local da = parse(a:expect_text())
      assert.are.same({ m1 = "yes", m2 = "yes", hook = "yes", both = "m1", who = "hook",
        trail = "m1,m2,m3,hook", name = "a" }, da)
      assert.are.equal("m2", parse(b:expect_text()).who)
      for _, c in ipairs({ a, b, quick }) do c:close_handshake(1000) end
    end)

    it("frames sent right behind the request wait for the middleware", function()
      local c = assert(ws.connect(srv))
      local frame = ws.frame({ opcode = ws.OP.text, payload = "early" })
      assert(c:send_raw(ws.request("/b?sleep=0.3") .. frame))
      assert(ws.check_101(assert(c:read_response(3))))
      assert.are.equal("m2", parse(c:expect_text()).who)
      c:expect_text("early")
      c:close_handshake(1000)
    end)
  end)
end)

-- Hot reload: the middleware is part of the app and is replaced with it.
local RELOAD_APP = [=[
local moonwire = require "moonwire"
local app = moonwire.app {}
local VERSION = "@VERSION@"
@USE@
app:websocket("/ws", {
  on_open = function(ws) ws:send("open " .. tostring(ws.data.mw) .. " " .. tostring(ws.data.user)) end,
  on_message = function(ws, msg)
    ws:send(VERSION .. " " .. msg .. " " .. tostring(ws.data.mw) .. " " .. tostring(ws.data.user))
  end,
})
return app
]=]

local USE_V1 = [=[
app:use(function(req) return { mw = "v1", user = req.query.user } end)
]=]

-- v2: another middleware that refuses without a user, and a second one.
local USE_V2 = [=[
app:use(function(req)
  if not req.query.user then return 401, "v2 wants a user\n" end
  return { mw = "v2", user = req.query.user }
end)
app:use(function(req)
  if req.query.user == "mallory" then return false end
end)
]=]

local function rm_tree(path)
  for name in dirent.files(path) do
    if name ~= "." and name ~= ".." then
      local p = path .. "/" .. name
      if not os.remove(p) then rm_tree(p) end
    end
  end
  unistd.rmdir(path)
end

describe("app:use across a hot reload", function()
  local dir, app_path

  local function write(version, use)
    local text = RELOAD_APP:gsub("@VERSION@", version):gsub("@USE@", function() return use end)
    local f = assert(io.open(app_path, "wb"))
    f:write(text)
    f:close()
  end

  local function count(s, pat)
    local n = 0
    for _ in s:gmatch(pat) do n = n + 1 end
    return n
  end

  local function sighup(srv)
    local before = count(srv:log(), "reloaded ") + count(srv:log(), "reload failed ")
    signal.kill(srv.pid, signal.SIGHUP)
    assert(server.poll(5, function()
      return count(srv:log(), "reloaded ") + count(srv:log(), "reload failed ") > before
    end), "no reload outcome after SIGHUP:\n" .. srv:log())
    assert.is_truthy(srv:log():find("reloaded " .. app_path, 1, true), srv:log())
  end

  before_each(function()
    dir = assert(stdlib.mkdtemp("/tmp/mw-middleware-spec-XXXXXX"))
    app_path = dir .. "/app.lua"
  end)
  after_each(function()
    server.stop_all()
    if dir then rm_tree(dir) end
  end)

  it("SIGHUP replaces the middleware; open connections keep their ws.data", function()
    write("v1", USE_V1)
    local srv = server.start(app_path)
    local old = ws.open(srv, "/ws?user=ann")
    old:expect_text("open v1 ann")
    local anon = ws.open(srv, "/ws")
    anon:expect_text("open v1 nil")

    write("v2", USE_V2)
    sighup(srv)
    -- Live connections stay, with the data the old middleware gave them,
    -- and run the new handlers.
    assert(old:send_text("hi"))
    old:expect_text("v2 hi v1 ann")
    assert(anon:send_text("hi"))
    anon:expect_text("v2 hi v1 nil")
    -- New connections go through the new chain only.
    local res = assert(ws.connect(srv))
    local r = assert(res:handshake("/ws"))
    assert.are.equal(401, r.status, r.head)
    assert.are.equal("v2 wants a user\n", r.body)
    res:close_tcp()
    local m = assert(ws.connect(srv))
    r = assert(m:handshake("/ws?user=mallory"))
    assert.are.equal(403, r.status, r.head)
    m:close_tcp()
    local fresh = ws.open(srv, "/ws?user=bob")
    fresh:expect_text("open v2 bob")

    -- Back to v1: the middleware is not doubled nor kept from v2.
    write("v3", USE_V1)
    sighup(srv)
    local again = ws.open(srv, "/ws")
    again:expect_text("open v1 nil")
    for _, c in ipairs({ old, anon, fresh, again }) do c:close_handshake(1000) end
  end)

  it("a reload that fails keeps the old middleware", function()
    write("v1", USE_V1)
    local srv = server.start(app_path)
    write("v2", USE_V2 .. "\nerror('broken on purpose')\n")
    local before = count(srv:log(), "reload failed ")
    signal.kill(srv.pid, signal.SIGHUP)
    assert(server.poll(5, function() return count(srv:log(), "reload failed ") > before end),
      "no failed reload logged:\n" .. srv:log())
    local c = ws.open(srv, "/ws")
    c:expect_text("open v1 nil")
    c:close_handshake(1000)
  end)
end)
