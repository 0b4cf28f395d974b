-- The key behaviours again with MOONWIRE_TEST_SHORT_IO=1: the server reads and writes
-- one byte per syscall, so every partial read and write path of the HTTP parser, the
-- frame parser, the UTF-8 validator and the write queue runs.

local server = require "spec.support.server"
local ws = require "spec.support.ws"
local probe = require "spec.support.probe"
local socket = require "socket"

local SHORT = { MOONWIRE_TEST_SHORT_IO = "1" }

describe("short I/O (one byte per syscall)", function()
  local echo, prb
  setup(function()
    echo = server.start("apps/echo/app.lua", { env = SHORT })
    prb = server.start("spec/apps/probe.lua", { env = SHORT })
  end)
  teardown(function()
    server.stop_all()
  end)

  it("completes the handshake with a correct accept key", function()
    local c = assert(ws.connect(echo))
    local res, err = c:handshake("/echo")
    assert(ws.check_101(res), err)
    c:close_handshake(1000)
  end)

  it("completes a handshake sent one byte at a time, with a frame attached", function()
    local c = assert(ws.connect(echo))
    local res, err = c:handshake("/echo", { pieces = 1, append = ws.frame({ opcode = 1, payload = "tail" }) })
    assert(ws.check_101(res), err)
    c:expect_text("tail")
    c:close_handshake(1000)
  end)

  it("rejects a bad handshake with a complete response", function()
    local c = assert(ws.connect(echo))
    local res = assert(c:handshake("/echo", { headers = { ["Sec-WebSocket-Version"] = "8" } }))
    assert.are.equal(426, res.status)
    assert.are.equal("13", res.headers["sec-websocket-version"])
    assert.are.equal(tonumber(res.headers["content-length"]), #res.body)
    assert.is_true(c:wait_closed(2))
  end)

  for _, n in ipairs({ 0, 1, 125, 126, 65535, 65536, 200000 }) do
    it("echoes text and binary of " .. n .. " bytes", function()
      local c = ws.open(echo, "/echo")
      local t = string.rep("\xce\xba", math.floor(n / 2)) .. string.rep("a", n % 2)
      local b = ws.random_bytes(n, n)
      c:send_text(t)
      c:expect_text(t, 10)
      c:send_binary(b)
      c:expect_binary(b, 10)
      c:close_handshake(1000)
    end)
  end

  it("echoes 200 pipelined messages in order", function()
    local c = ws.open(echo, "/echo")
    local parts = {}
    for i = 1, 200 do parts[i] = ws.frame({ opcode = 1, payload = "n" .. i }) end
    c:send_raw(table.concat(parts))
    for i = 1, 200 do c:expect_text("n" .. i) end
    c:close_handshake(1000)
  end)

  it("reassembles fragments with a ping interleaved", function()
    local c = ws.open(echo, "/echo")
    c:send_raw(ws.frame({ opcode = 1, fin = false, payload = "frag\xce" })
      .. ws.frame({ opcode = 9, payload = "ping in the middle" })
      .. ws.frame({ opcode = 0, fin = false, payload = "\xbament" })
      .. ws.frame({ opcode = 0, payload = "ed" }))
    c:expect_pong("ping in the middle")
    c:expect_text("frag\xce\xbamented")
    c:close_handshake(1000)
  end)

  it("handles frames sent to it one byte at a time", function()
    local c = ws.open(echo, "/echo")
    local bytes = ws.frame({ opcode = 2, fin = false, payload = "\1\2" })
      .. ws.frame({ opcode = 9, payload = "p" })
      .. ws.frame({ opcode = 0, payload = "\3" })
    c:send_pieces(bytes, 1, 0.001)
    c:expect_pong("p")
    c:expect_binary("\1\2\3")
    c:close_handshake(1000)
  end)

  it("echoes the close code and closes TCP", function()
    local c = ws.open(echo, "/echo")
    c:send_close(4000, "short")
    c:expect_close(4000)
    c:expect_tcp_close(2)
  end)

  it("closes with 1002 for a protocol error and 1007 for bad UTF-8", function()
    local c = ws.open(echo, "/echo")
    c:send_frame({ opcode = 1, payload = "x", mask = false })
    c:expect_close(1002)
    c:send_close(1000)
    assert.is_true(c:wait_closed(2))
    c = ws.open(echo, "/echo")
    c:send_raw(ws.frame({ opcode = 1, fin = false, payload = "ok\xe0" })
      .. ws.frame({ opcode = 0, payload = "\x80" }))
    c:expect_close(1007)
    c:send_close(1000)
    assert.is_true(c:wait_closed(2))
  end)

  it("closes with 1009 for a message over the limit before its payload", function()
    local c = ws.open(echo, "/echo")
    c:send_frame({ opcode = 2, len = 16 * 1024 * 1024 + 1, payload = "" })
    c:expect_close(1009, 3)
    c:send_close(1000)
    assert.is_true(c:wait_closed(2))
  end)

  it("keeps per-connection order across a sleeping handler", function()
    local c = probe.open(prb)
    c:send_text("sleep 0.2 a")
    c:send_text("after")
    c:expect_text("slept a", 2)
    c:expect_text("after")
    c:close_handshake(1000)
  end)

  it("sends from one connection's handler to another and runs on_close once", function()
    local a = probe.open(prb)
    local b = probe.open(prb)
    a:send_text("send_to " .. b.id .. " across")
    b:expect_text("across")
    a:expect_text("send_to true nil")
    b:reset()
    local closes = probe.wait_closed(a, b.id)
    assert.are.equal(1, #closes)
    assert.are.equal(1006, (probe.parse_close(closes[1])))
    a:close_handshake(1000)
  end)

  it("server ping and close reach the client intact", function()
    local c = probe.open(prb)
    c:send_text("ping hello")
    c:expect_ping("hello")
    c:send_text("close 4000 bye")
    local code, reason = c:expect_close(4000)
    assert.are.equal(4000, code)
    assert.are.equal("bye", reason)
    c:send_close(4000)
    assert.is_true(c:wait_closed(2))
  end)

  it("still answers 20 connections at once", function()
    local conns = {}
    for i = 1, 20 do conns[i] = ws.open(echo, "/echo") end
    for i, c in ipairs(conns) do c:send_text(("c%d "):format(i) .. string.rep("z", 1000)) end
    for i, c in ipairs(conns) do c:expect_text(("c%d "):format(i) .. string.rep("z", 1000), 5) end
    for _, c in ipairs(conns) do c:close_tcp() end
    socket.sleep(0.05)
    assert.is_true(echo:alive())
  end)
end)
