-- The example apps' own specs, on moonwire.testing (no server, no sockets,
-- a virtual clock): the way an app author tests an app.
-- Run from the repository root (as ctest does): the kit lives in lua/.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local testing = require "moonwire.testing"
local cjson = require "cjson"

local function decode(m) return cjson.decode(m) end

-- Pops messages from c until one of `type` (skipping others); nil if none.
local function next_of(c, kind)
  while true do
    local m = c:next()
    if not m then return nil end
    local v = decode(m)
    if v.type == kind then return v end
  end
end

describe("apps/chat (moonwire.testing)", function()
  local t
  before_each(function() t = testing.load("apps/chat/app.lua") end)
  after_each(function() t:close() end)

  it("welcomes a newcomer with members and history; the others get a join", function()
    local ann = t:connect("/chat/lobby?nick=ann")
    assert.is_true(ann.accepted)
    local w = next_of(ann, "welcome")
    assert.same({ "ann" }, w.members)
    assert.same({}, w.history)
    ann:send(cjson.encode { type = "message", text = "hello" })
    assert.equal("hello", next_of(ann, "message").text)
    local bob = t:connect("/chat/lobby?nick=bob")
    local j = next_of(ann, "join")
    assert.equal("bob", j.nick)
    local wb = next_of(bob, "welcome")
    assert.same({ "ann", "bob" }, wb.members)
    assert.equal("hello", wb.history[1].text)
    t:assert_no_errors()
  end)

  it("announces a leave, also after an abrupt drop", function()
    local ann = t:connect("/chat/lobby?nick=ann")
    local bob = t:connect("/chat/lobby?nick=bob")
    bob:drop()
    local l = next_of(ann, "leave")
    assert.equal("bob", l.nick)
    assert.same({ "ann" }, l.members)
  end)

  it("refuses a bad nickname with 400 and a reason", function()
    local c = t:connect("/chat/lobby?nick=" .. ("x"):rep(40))
    assert.is_falsy(c.accepted)
    assert.equal(400, c.status)
    assert.truthy(tostring(c.body):find("nick"))
  end)

  it("rejects an over-long message without sending it to the room", function()
    local ann = t:connect("/chat/lobby?nick=ann")
    local bob = t:connect("/chat/lobby?nick=bob")
    next_of(ann, "join")
    ann:send(cjson.encode { type = "message", text = ("y"):rep(5000) })
    assert.truthy(next_of(ann, "error").error:find("too long"))
    assert.is_nil(next_of(bob, "message"))
  end)

  it("keeps rooms apart", function()
    local a = t:connect("/chat/one?nick=ann")
    local b = t:connect("/chat/two?nick=bob")
    a:send(cjson.encode { type = "message", text = "only in one" })
    assert.equal("only in one", next_of(a, "message").text)
    assert.is_nil(next_of(b, "message"))
  end)
end)

describe("apps/dashboard (moonwire.testing)", function()
  local t
  before_each(function() t = testing.load("apps/dashboard/app.lua") end)
  after_each(function() t:close() end)

  it("pushes the same samples to every viewer as the clock moves", function()
    local paths = {}
    for _, r in ipairs(t.app.routes) do paths[#paths + 1] = r.path end
    local a = t:connect(paths[1])
    local b = t:connect(paths[1])
    assert.is_true(a.accepted and b.accepted)
    t:advance(3)
    local sa, sb = {}, {}
    for _, m in ipairs(a:messages()) do
      local v = decode(m)
      if v.seq then sa[#sa + 1] = v.seq end
    end
    for _, m in ipairs(b:messages()) do
      local v = decode(m)
      if v.seq then sb[#sb + 1] = v.seq end
    end
    assert.is_true(#sa >= 5, "samples seen: " .. #sa)
    assert.same(sa, sb)
    for i = 2, #sa do assert.equal(sa[i - 1] + 1, sa[i]) end
    t:assert_no_errors()
  end)

  it("samples only on worker 1 when it runs as one of several workers", function()
    local path = t.app.routes[1].path
    t:close()
    -- after_each closes this one.
    t = testing.load("apps/dashboard/app.lua", { worker = 2, workers = 2 })
    local c = t:connect(path)
    assert.is_true(c.accepted)
    t:advance(3)
    assert.equal(2, t.moonwire.worker)
    assert.equal(2, t.moonwire.workers)
    local msgs = c:messages()
    assert.equal(1, #msgs)
    assert.equal("hello", decode(msgs[1]).type)
    t:assert_no_errors()
  end)
end)
