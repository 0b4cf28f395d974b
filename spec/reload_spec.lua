-- Hot reload (issue 5) with our own raw client: SIGHUP with a live connection
-- (ws.data kept, local module picked up), failed reloads that keep the old
-- code and log FILE:LINE, --watch within one second, timers not doubled.
--
-- Every test writes its app (app.lua + the app-local module helper.lua) into
-- a fresh temporary directory, so edits never touch the repository.

local server = require "spec.support.server"
local ws = require "spec.support.ws"
local socket = require "socket"
local signal = require "posix.signal"
local stdlib = require "posix.stdlib"
local unistd = require "posix.unistd"
local dirent = require "posix.dirent"

local APP = [=[
local moonwire = require "moonwire"
local helper = require "helper"
local VERSION = "@VERSION@"
local app = moonwire.app {}

app:websocket("/ws", {
  on_message = function(ws, msg)
    local cmd, arg = msg:match("^(%S+) ?(.*)$")
    if cmd == "set" then
      ws.data.tag = arg
      ws:send("ok")
    elseif cmd == "sub" then
      ws:subscribe(arg)
      ws:send("subscribed " .. arg)
    elseif cmd == "slow" then
      moonwire.sleep(tonumber(arg))
      ws:send(VERSION .. " slow")
    else
      ws:send(VERSION .. " " .. helper.tag() .. " " .. tostring(ws.data.tag) .. " " .. msg)
    end
  end,
})
@EXTRA@
return app
]=]

local HELPER = 'return { tag = function() return "@TAG@" end }\n'

local function app_source(version, extra)
  return (APP:gsub("@VERSION@", function() return version end)
             :gsub("@EXTRA@", function() return extra or "" end))
end

local function helper_source(tag)
  return (HELPER:gsub("@TAG@", function() return tag end))
end

local function line_of(text, needle)
  local n = 0
  for line in (text .. "\n"):gmatch("(.-)\n") do
    n = n + 1
    if line:find(needle, 1, true) then return n end
  end
  error("no line containing " .. needle)
end

local function count(haystack, pattern)
  local n = 0
  for _ in haystack:gmatch(pattern) do n = n + 1 end
  return n
end

local function rm_tree(path)
  for name in dirent.files(path) do
    if name ~= "." and name ~= ".." then
      local p = path .. "/" .. name
      if not os.remove(p) then rm_tree(p) end
    end
  end
  unistd.rmdir(path)
end

describe("hot reload", function()
  local dir, app_path

  local function write(name, text)
    local f = assert(io.open(dir .. "/" .. name, "wb"))
    f:write(text)
    f:close()
  end

  -- Sends msg on client c and returns the next text message.
  local function ask(c, msg, timeout)
    assert(c:send_text(msg))
    return c:expect_text(nil, timeout)
  end

  -- A connection to /ws whose ws.data.tag is set before any reload.
  local function tagged(srv, tag)
    local c = ws.open(srv, "/ws")
    assert.equal("ok", ask(c, "set " .. tag))
    assert.equal("v1 h1 " .. tag .. " hello", ask(c, "hello"))
    return c
  end

  -- Sends SIGHUP and waits until the log has one more reload outcome line.
  local function outcomes(srv)
    local log = srv:log()
    return count(log, "reloaded ") + count(log, "reload failed ")
  end

  local function sighup(srv)
    local before = outcomes(srv)
    signal.kill(srv.pid, signal.SIGHUP)
    local ok = server.poll(5, function() return outcomes(srv) > before end)
    assert(ok, "no reload outcome logged after SIGHUP; log:\n" .. srv:log())
  end

  before_each(function()
    dir = assert(stdlib.mkdtemp("/tmp/mw-reload-spec-XXXXXX"))
    app_path = dir .. "/app.lua"
    write("helper.lua", helper_source("h1"))
    write("app.lua", app_source("v1"))
  end)

  after_each(function()
    server.stop_all()
    if dir then rm_tree(dir) end
  end)

  it("SIGHUP: a live connection's next message runs the new handler with the same ws.data", function()
    local srv = server.start(app_path)
    local c = tagged(srv, "A")
    write("app.lua", app_source("v2"))
    sighup(srv)
    assert.truthy(srv:log():find("reloaded " .. app_path .. " (SIGHUP)", 1, true), srv:log())
    assert.equal("v2 h1 A again", ask(c, "again"))
    -- An app-local module is loaded afresh too.
    write("helper.lua", helper_source("h2"))
    sighup(srv)
    assert.equal("v2 h2 A more", ask(c, "more"))
    local fresh = ws.open(srv, "/ws")
    assert.equal("v2 h2 nil new", ask(fresh, "new"))
    c:close_handshake(1000)
    fresh:close_handshake(1000)
  end)

  it("SIGHUP: a call suspended in moonwire.sleep finishes on the old code", function()
    local srv = server.start(app_path)
    local c = tagged(srv, "S")
    assert(c:send_text("slow 0.5"))
    server.sleep(0.15)
    write("app.lua", app_source("v2"))
    sighup(srv)
    assert(c:send_text("next"))
    assert.equal("v1 slow", c:expect_text(nil, 3))
    assert.equal("v2 h1 S next", c:expect_text(nil, 3))
  end)

  it("a syntax error keeps the old code and logs FILE:LINE", function()
    local srv = server.start(app_path)
    local c = tagged(srv, "B")
    local broken = app_source("v2"):gsub('local VERSION = "v2"', 'local VERSION = = "v2"')
    write("app.lua", broken)
    sighup(srv)
    local file, line = srv:log():match("reload failed %(SIGHUP%); still serving the previous version: "
                                       .. "([^\n]-):(%d+):")
    assert.equal(app_path, file, srv:log())
    assert.equal(line_of(broken, "local VERSION = ="), tonumber(line))
    assert.equal("v1 h1 B still", ask(c, "still"))
    local fresh = ws.open(srv, "/ws")
    assert.equal("v1 h1 nil fresh", ask(fresh, "fresh"))
    -- Fixing it reloads normally.
    write("app.lua", app_source("v3"))
    sighup(srv)
    assert.equal("v3 h1 B fixed", ask(c, "fixed"))
  end)

  it("a runtime error while loading keeps the old code; its timers never start", function()
    local srv = server.start(app_path)
    local c = tagged(srv, "R")
    local extra = 'app:every(0.05, function() moonwire.log.info("FAILED-LOAD-TIMER") end)\n'
      .. 'error("boom while loading")'
    local broken = app_source("v2", extra)
    write("app.lua", broken)
    sighup(srv)
    local log = srv:log()
    local file, line = log:match("reload failed %(SIGHUP%); still serving the previous version: "
                                 .. "([^\n]-):(%d+): boom while loading")
    assert.equal(app_path, file, log)
    assert.equal(line_of(broken, 'error("boom while loading")'), tonumber(line))
    assert.equal("v1 h1 R still", ask(c, "still"))
    server.sleep(0.4)
    assert.falsy(srv:log():find("FAILED-LOAD-TIMER", 1, true), srv:log())
  end)

  it("--watch serves a saved edit within one second", function()
    local srv = server.start(app_path, { flags = { "--watch" } })
    local c = tagged(srv, "W")
    local t0 = socket.gettime()
    write("app.lua", app_source("v2"))
    local reply
    repeat
      reply = ask(c, "poll")
      if reply:sub(1, 3) ~= "v2 " then
        assert.equal("v1 h1 W poll", reply)
        assert(socket.gettime() - t0 < 5, "--watch did not reload within 5 s; log:\n" .. srv:log())
        server.sleep(0.01)
      end
    until reply:sub(1, 3) == "v2 "
    local took = socket.gettime() - t0
    assert.equal("v2 h1 W poll", reply)
    assert(took < 1.0, ("first v2 reply %.3f s after the save"):format(took))
    assert.equal(1, count(srv:log(), "reloaded [^\n]- %(%-%-watch%)"))
  end)

  it("timers are not doubled after 5 reloads", function()
    local extra = 'app:every(0.1, function() app:publish("tick", VERSION) end)'
    write("app.lua", app_source("v1", extra))
    local srv = server.start(app_path)
    local sub = ws.open(srv, "/ws")
    assert.equal("subscribed tick", ask(sub, "sub tick"))

    local function ticks_in(seconds)
      local seen = {}
      local deadline = socket.gettime() + seconds
      while true do
        local left = deadline - socket.gettime()
        if left <= 0 then return seen end
        local f, err = sub:recv_frame(left)
        if not f then
          assert.equal("timeout", err)
          return seen
        end
        assert.equal("text", f.op)
        seen[f.payload] = (seen[f.payload] or 0) + 1
      end
    end

    local before = ticks_in(1.0)
    assert(before.v1 and before.v1 >= 7 and before.v1 <= 13, "ticks before: " .. tostring(before.v1))
    for i = 2, 6 do
      write("app.lua", app_source("v" .. i, extra))
      sighup(srv)
      server.sleep(0.05)
    end
    server.sleep(0.2)
    ticks_in(0.2)                 -- whatever was in flight around the last swap
    local after = ticks_in(2.0)
    for k in pairs(after) do
      assert.equal("v6", k, "a tick from an old app after the reloads")
    end
    local n = after.v6 or 0
    assert(n >= 14 and n <= 26, ("%d ticks in 2 s from a 0.1 s timer (doubled?)"):format(n))
    assert.equal(5, count(srv:log(), "reloaded [^\n]- %(SIGHUP%)"))
  end)
end)
