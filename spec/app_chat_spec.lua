-- apps/chat's protocol over real sockets with our raw client: welcome with
-- members and history, join and leave notices (presence), messages to the
-- room, the history limit, the nickname checks in the upgrade hook (400 with
-- a reason) and the message limits.

local server = require "spec.support.server"
local ws = require "spec.support.ws"
local http = require "spec.support.http"
local cjson = require "cjson"

local APP = "apps/chat/app.lua"

describe("apps/chat", function()
  local srv
  setup(function() srv = server.start(APP) end)
  teardown(function() server.stop_all() end)

  local function recv(c, want_type)
    local msg = cjson.decode(c:expect_text())
    if want_type then assert.are.equal(want_type, msg.type, cjson.encode(msg)) end
    return msg
  end

  -- Joins `room` as `nick`; returns the client and its welcome.
  local function join(room, nick)
    local c = ws.open(srv, "/chat/" .. room .. "?nick=" .. nick)
    return c, recv(c, "welcome")
  end

  local function say(c, text)
    c:send_text(cjson.encode { type = "message", text = text })
  end

  -- Closes cleanly, skipping the notices still on their way.
  local function bye(c)
    c:send_close(1000)
    while true do
      local f = c:next_frame(3, "the close reply")
      if f.op == "close" then break end
    end
    c:close_tcp()
  end

  local function refused(path)
    local c = assert(ws.connect(srv))
    local res = assert(c:handshake(path))
    c:close_tcp()
    return res
  end

  it("welcomes with the members, announces joins and sends messages to the room", function()
    local alice, w = join("r1", "alice")
    assert.are.same({ "alice" }, w.members)
    assert.are.equal("r1", w.room)
    assert.are.equal("alice", w.nick)
    assert.are.equal(0, #w.history)
    assert.is_string(w.server)

    local bob, wb = join("r1", "bob")
    assert.are.same({ "alice", "bob" }, wb.members)
    local j = recv(alice, "join")
    assert.are.equal("bob", j.nick)
    assert.are.same({ "alice", "bob" }, j.members)

    say(alice, "  hello bob  ")
    for _, c in ipairs { alice, bob } do
      local m = recv(c, "message")
      assert.are.equal("hello bob", m.text)
      assert.are.equal("alice", m.nick)
      assert.are.equal(w.server, m.server)
      assert.is_number(m.id)
      assert.is_number(m.ts)
    end
    -- Another room hears nothing of it.
    local other = join("r1-other", "carol")
    other:expect_silence(0.2)
    for _, c in ipairs { alice, bob, other } do bye(c) end
  end)

  it("sends the last 50 messages of the room on join, oldest first", function()
    local alice = join("r2", "alice")
    for i = 1, 55 do say(alice, "message " .. i) end
    for i = 1, 55 do assert.are.equal("message " .. i, recv(alice, "message").text) end
    local bob, w = join("r2", "bob")
    assert.are.equal(50, #w.history)
    assert.are.equal("message 6", w.history[1].text)
    assert.are.equal("message 55", w.history[50].text)
    for i = 2, 50 do assert.is_true(w.history[i].id > w.history[i - 1].id) end
    bye(alice)
    bye(bob)
  end)

  it("announces a leave with the new member list; a nick on two tabs leaves once", function()
    local alice = join("r3", "alice")
    local bob = join("r3", "bob")
    recv(alice, "join")
    local bob2, w = join("r3", "bob")       -- bob's second tab: no second join notice
    assert.are.same({ "alice", "bob" }, w.members)
    alice:expect_silence(0.2)
    bye(bob2)
    alice:expect_silence(0.2)               -- bob is still here
    bob:close_tcp()                         -- an abrupt drop counts as leaving too
    local l = recv(alice, "leave")
    assert.are.equal("bob", l.nick)
    assert.are.same({ "alice" }, l.members)
    bye(alice)
  end)

  it("refuses bad nicknames and rooms in the upgrade hook with 400 and a reason", function()
    for _, path in ipairs {
      "/chat/r4",                                   -- no nick
      "/chat/r4?nick=",                             -- empty
      "/chat/r4?nick=" .. ("x"):rep(21),            -- too long
      "/chat/r4?nick=a%20b",                        -- a space
      "/chat/r4?nick=%3Cscript%3E",                 -- markup
      "/chat/r4?nick=%C3%A9mile",                   -- not ASCII
      "/chat/" .. ("r"):rep(33) .. "?nick=alice",   -- room too long
      "/chat/r%2E4?nick=alice",                     -- '.' in a room
    } do
      local res = refused(path)
      assert.are.equal(400, res.status, path)
      assert.matches("^%w[^\n]+\n$", res.body, nil, false, path)
    end
    assert.matches("nick must be 1%-20 characters", refused("/chat/r4?nick=a%20b").body)
    local c = join("r4", ("x"):rep(20))            -- 20 is allowed
    bye(c)
  end)

  it("rejects too long, empty, binary and malformed messages without sending them to the room", function()
    local alice = join("r5", "alice")
    local bob = join("r5", "bob")
    recv(alice, "join")
    say(alice, ("x"):rep(501))
    assert.matches("too long", recv(alice, "error").error)
    say(alice, "   ")
    assert.matches("empty", recv(alice, "error").error)
    alice:send_text("not json")
    recv(alice, "error")
    alice:send_text('{"type":"shout","text":"hi"}')
    recv(alice, "error")
    alice:send_binary("\1\2\3")
    recv(alice, "error")
    bob:expect_silence(0.2)
    -- 500 characters are fine, counted as characters, not bytes.
    local long = ("é"):rep(500)
    say(alice, long)
    assert.are.equal(long, recv(bob, "message").text)
    assert.are.equal(long, recv(alice, "message").text)
    -- A message too big for the route's 8 KiB max_message_size closes with 1009.
    alice:send_text(("y"):rep(9000))
    alice:expect_close(1009)
    alice:close_tcp()
    bye(bob)
  end)

  it("serves the page and lists the rooms", function()
    local res = http.get(srv, "/")
    assert.are.equal(200, res.status)
    assert.matches("text/html", res.headers["content-type"])
    assert.matches('<script src="app.js">', res.body, nil, true)
    for _, f in ipairs { "/app.js", "/style.css", "/favicon.svg" } do
      assert.are.equal(200, http.get(srv, f).status, f)
    end
    local c = join("r6", "alice")
    local rooms = cjson.decode(http.get(srv, "/api/rooms").body)
    local found
    for _, r in ipairs(rooms) do if r.room == "r6" then found = r end end
    assert.are.same({ room = "r6", members = 1 }, found)
    bye(c)
  end)
end)
