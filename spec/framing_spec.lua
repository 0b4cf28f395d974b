-- RFC 6455 framing against apps/echo/app.lua, following the territory of the Autobahn
-- testsuite: 1 payload lengths, 2 ping/pong, 3 reserved bits, 4 reserved opcodes,
-- 5 fragmentation, 6 UTF-8, 7 close handling, 9 limits and volume, 10 many frames;
-- plus length encodings, masking and --max-message-size.

local server = require "spec.support.server"
local ws = require "spec.support.ws"
local socket = require "socket"

local ECHO = "apps/echo/app.lua"
local MiB = 1024 * 1024

local function utf8_text(n)
  -- Valid UTF-8 mixing 1- to 4-byte sequences, cut to exactly n bytes on a character boundary
  -- (padded with ASCII).
  local unit = "a\xce\xba\xe1\xbd\xb9\xf0\x9f\x98\x80z"   -- a κ ό 😀 z = 11 bytes
  local s = string.rep(unit, math.floor(n / #unit))
  return s .. string.rep("x", n - #s)
end

describe("framing", function()
  local srv
  setup(function()
    srv = server.start(ECHO)
  end)
  teardown(function()
    server.stop_all()
  end)

  local function open() return ws.open(srv, "/echo") end

  -- The server must answer with close `code`, then close TCP once we reply with a close.
  local function fails_with(c, code, timeout)
    c:expect_close(code, timeout)
    c:send_close(1000)   -- may fail if the server already closed; that is fine
    assert.is_true(c:wait_closed(2), "server did not close TCP after the close handshake")
    c:close_tcp()
  end

  -- A clean close handshake from the client side.
  local function finish(c)
    c:close_handshake(1000)
  end

  describe("1: payload lengths", function()
    for _, n in ipairs({ 0, 125, 126, 127, 128, 65535, 65536 }) do
      it("text of " .. n .. " bytes is echoed", function()
        local c = open()
        local s = utf8_text(n)
        c:send_text(s)
        c:expect_text(s)
        finish(c)
      end)

      it("binary of " .. n .. " bytes is echoed, frame sent in 997-byte chunks", function()
        local c = open()
        local s = ws.random_bytes(n, n)
        c:send_pieces(ws.frame({ opcode = 2, payload = s }), 997)
        c:expect_binary(s)
        finish(c)
      end)
    end

    it("text of 125 bytes sent one byte at a time", function()
      local c = open()
      local s = utf8_text(125)
      c:send_pieces(ws.frame({ opcode = 1, payload = s }), 1)
      c:expect_text(s)
      finish(c)
    end)

    it("16 MiB text in one frame", function()
      local c = open()
      local s = utf8_text(16 * MiB)
      c:send_text(s)
      c:expect_text(s, 15)
      finish(c)
    end)

    it("16 MiB binary in one frame, sent in 64 KiB chunks", function()
      local c = open()
      local s = ws.random_bytes(16 * MiB, 7)
      c:send_pieces(ws.frame({ opcode = 2, payload = s }), 65536)
      c:expect_binary(s, 15)
      finish(c)
    end)
  end)

  describe("2: ping and pong", function()
    it("answers an empty ping with an empty pong", function()
      local c = open()
      c:ping("")
      c:expect_pong("")
      finish(c)
    end)

    for _, n in ipairs({ 1, 64, 125 }) do
      it("answers a ping with a " .. n .. "-byte payload with the same payload", function()
        local c = open()
        local p = string.rep("P", n)
        c:ping(p)
        c:expect_pong(p)
        finish(c)
      end)
    end

    it("answers a ping with a binary payload (all byte values)", function()
      local c = open()
      local p = {}
      for i = 0, 124 do p[#p + 1] = string.char((i * 53 + 0xFF) % 256) end
      p = table.concat(p)
      c:ping(p)
      c:expect_pong(p)
      finish(c)
    end)

    it("answers a 125-byte ping sent one byte at a time", function()
      local c = open()
      local p = string.rep("\xfe", 125)
      c:send_pieces(ws.frame({ opcode = 9, payload = p }), 1)
      c:expect_pong(p)
      finish(c)
    end)

    it("closes with 1002 for a ping with a 126-byte payload", function()
      local c = open()
      c:ping(string.rep("x", 126))
      fails_with(c, 1002)
    end)

    it("ignores unsolicited pongs (empty and with payload)", function()
      local c = open()
      c:pong("")
      c:pong("unsolicited")
      c:send_text("after pongs")
      c:expect_text("after pongs")
      finish(c)
    end)

    it("ignores an unsolicited pong and then answers a ping", function()
      local c = open()
      c:send_raw(ws.frame({ opcode = 10, payload = "x" }) .. ws.frame({ opcode = 9, payload = "y" }))
      c:expect_pong("y")
      finish(c)
    end)

    it("answers 10 pings in a row, in order", function()
      local c = open()
      local parts = {}
      for i = 1, 10 do parts[i] = ws.frame({ opcode = 9, payload = "ping" .. i }) end
      c:send_raw(table.concat(parts))
      for i = 1, 10 do c:expect_pong("ping" .. i) end
      finish(c)
    end)

    it("answers 10 pings sent with small delays, in order", function()
      local c = open()
      for i = 1, 10 do
        c:ping("d" .. i)
        socket.sleep(0.005)
      end
      for i = 1, 10 do c:expect_pong("d" .. i) end
      finish(c)
    end)
  end)

  describe("3: reserved bits", function()
    local cases = {
      { "RSV1 on text", { opcode = 1, payload = "x", rsv1 = true } },
      { "RSV2 on text", { opcode = 1, payload = "x", rsv2 = true } },
      { "RSV3 on text", { opcode = 1, payload = "x", rsv3 = true } },
      { "RSV1+RSV3 on binary", { opcode = 2, payload = "\1\2", rsv1 = true, rsv3 = true } },
      { "RSV2+RSV3 on ping", { opcode = 9, payload = "p", rsv2 = true, rsv3 = true } },
      { "all RSV bits on close", { opcode = 8, payload = ws.close_payload(1000), rsv1 = true,
                                   rsv2 = true, rsv3 = true } },
    }
    for _, case in ipairs(cases) do
      it("closes with 1002 for " .. case[1], function()
        local c = open()
        c:send_frame(case[2])
        fails_with(c, 1002)
      end)
    end

    it("echoes a valid text sent in the same packet, then closes 1002 (and answers no later ping)", function()
      local c = open()
      c:send_raw(ws.frame({ opcode = 1, payload = "valid" })
        .. ws.frame({ opcode = 1, payload = "bad", rsv2 = true })
        .. ws.frame({ opcode = 9, payload = "never" }))
      c:expect_text("valid")
      fails_with(c, 1002)
    end)

    it("echoes a valid text, then closes 1002 when the RSV frame comes later", function()
      local c = open()
      c:send_text("valid")
      c:expect_text("valid")
      socket.sleep(0.05)
      c:send_frame({ opcode = 1, payload = "bad", rsv3 = true })
      fails_with(c, 1002)
    end)
  end)

  describe("4: reserved opcodes", function()
    for _, op in ipairs({ 3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF }) do
      it(("closes with 1002 for opcode 0x%X"):format(op), function()
        local c = open()
        c:send_frame({ opcode = op, payload = op % 2 == 0 and "" or "reserved" })
        fails_with(c, 1002)
      end)
    end

    it("echoes a valid text sent with a reserved-opcode frame, then closes 1002", function()
      local c = open()
      c:send_raw(ws.frame({ opcode = 1, payload = "before" }) .. ws.frame({ opcode = 5, payload = "" })
        .. ws.frame({ opcode = 9, payload = "never" }))
      c:expect_text("before")
      fails_with(c, 1002)
    end)
  end)

  describe("5: fragmentation", function()
    it("closes with 1002 for a fragmented ping", function()
      local c = open()
      c:send_raw(ws.frame({ opcode = 9, fin = false, payload = "frag" })
        .. ws.frame({ opcode = 0, payload = "ment" }))
      fails_with(c, 1002)
    end)

    it("closes with 1002 for a fragmented pong", function()
      local c = open()
      c:send_raw(ws.frame({ opcode = 10, fin = false, payload = "frag" })
        .. ws.frame({ opcode = 0, payload = "ment" }))
      fails_with(c, 1002)
    end)

    it("closes with 1002 for a fragmented close", function()
      local c = open()
      c:send_frame({ opcode = 8, fin = false, payload = ws.close_payload(1000) })
      fails_with(c, 1002)
    end)

    it("echoes a text message in 2 fragments", function()
      local c = open()
      c:send_raw(ws.frame({ opcode = 1, fin = false, payload = "fragment1" })
        .. ws.frame({ opcode = 0, payload = "fragment2" }))
      c:expect_text("fragment1fragment2")
      finish(c)
    end)

    it("echoes a text message in 2 fragments sent separately", function()
      local c = open()
      c:send_frame({ opcode = 1, fin = false, payload = "fragment1" })
      c:expect_silence(0.05)
      c:send_frame({ opcode = 0, payload = "fragment2" })
      c:expect_text("fragment1fragment2")
      finish(c)
    end)

    it("echoes a binary message in 3 fragments", function()
      local c = open()
      c:send_raw(ws.frame({ opcode = 2, fin = false, payload = "\0\1" })
        .. ws.frame({ opcode = 0, fin = false, payload = "\2\3" })
        .. ws.frame({ opcode = 0, payload = "\255" }))
      c:expect_binary("\0\1\2\3\255")
      finish(c)
    end)

    it("echoes a message made of empty fragments", function()
      local c = open()
      c:send_raw(ws.frame({ opcode = 1, fin = false, payload = "" })
        .. ws.frame({ opcode = 0, fin = false, payload = "" })
        .. ws.frame({ opcode = 0, payload = "" }))
      c:expect_text("")
      finish(c)
    end)

    it("answers a ping between fragments before delivering the message", function()
      local c = open()
      c:send_raw(ws.frame({ opcode = 1, fin = false, payload = "frag1" })
        .. ws.frame({ opcode = 9, payload = "in between" })
        .. ws.frame({ opcode = 0, payload = "frag2" }))
      c:expect_pong("in between")
      c:expect_text("frag1frag2")
      finish(c)
    end)

    it("handles fragments and an interleaved ping sent one byte at a time", function()
      local c = open()
      local bytes = ws.frame({ opcode = 1, fin = false, payload = "one" })
        .. ws.frame({ opcode = 9, payload = "mid" })
        .. ws.frame({ opcode = 0, fin = false, payload = "two" })
        .. ws.frame({ opcode = 10, payload = "unsolicited" })
        .. ws.frame({ opcode = 0, payload = "three" })
      c:send_pieces(bytes, 1)
      c:expect_pong("mid")
      c:expect_text("onetwothree")
      finish(c)
    end)

    it("handles 5 fragments with 2 pings in between, sent with delays", function()
      local c = open()
      local frames = {
        { opcode = 1, fin = false, payload = "a" }, { opcode = 9, payload = "p1" },
        { opcode = 0, fin = false, payload = "b" }, { opcode = 0, fin = false, payload = "c" },
        { opcode = 9, payload = "p2" }, { opcode = 0, fin = false, payload = "d" },
        { opcode = 0, payload = "e" },
      }
      for _, f in ipairs(frames) do
        c:send_frame(f)
        socket.sleep(0.01)
      end
      c:expect_pong("p1")
      c:expect_pong("p2")
      c:expect_text("abcde")
      finish(c)
    end)

    it("closes with 1002 for a continuation (fin=1) without a start", function()
      local c = open()
      c:send_frame({ opcode = 0, payload = "orphan" })
      fails_with(c, 1002)
    end)

    it("closes with 1002 for a continuation (fin=0) without a start", function()
      local c = open()
      c:send_raw(ws.frame({ opcode = 0, fin = false, payload = "orphan" })
        .. ws.frame({ opcode = 1, payload = "text" }))
      fails_with(c, 1002)
    end)

    it("closes with 1002 for a new text frame inside a fragmented message", function()
      local c = open()
      c:send_raw(ws.frame({ opcode = 1, fin = false, payload = "start" })
        .. ws.frame({ opcode = 1, payload = "again" }))
      fails_with(c, 1002)
    end)

    it("closes with 1002 for a binary frame inside a fragmented text message", function()
      local c = open()
      c:send_raw(ws.frame({ opcode = 1, fin = false, payload = "start" })
        .. ws.frame({ opcode = 2, fin = false, payload = "bin" }))
      fails_with(c, 1002)
    end)

    it("echoes a complete fragmented message, then closes 1002 for a stray continuation", function()
      local c = open()
      c:send_raw(ws.frame({ opcode = 1, fin = false, payload = "ok1" })
        .. ws.frame({ opcode = 0, payload = "ok2" })
        .. ws.frame({ opcode = 0, payload = "stray" }))
      c:expect_text("ok1ok2")
      fails_with(c, 1002)
    end)

    it("echoes a 65536-byte message sent as 65536 one-byte fragments", function()
      local c = open()
      local s = ws.random_bytes(65536, 3)
      local parts = { ws.frame({ opcode = 2, fin = false, payload = s:sub(1, 1) }) }
      for i = 2, 65535 do parts[i] = ws.frame({ opcode = 0, fin = false, payload = s:sub(i, i) }) end
      parts[65536] = ws.frame({ opcode = 0, payload = s:sub(65536) })
      c:send_raw(table.concat(parts))
      c:expect_binary(s, 10)
      finish(c)
    end)

    it("echoes a 65536-byte text sent in 1-byte fragments (UTF-8 split everywhere)", function()
      local c = open()
      local s = utf8_text(65536)
      local parts = { ws.frame({ opcode = 1, fin = false, payload = s:sub(1, 1) }) }
      for i = 2, #s - 1 do parts[i] = ws.frame({ opcode = 0, fin = false, payload = s:sub(i, i) }) end
      parts[#s] = ws.frame({ opcode = 0, payload = s:sub(#s) })
      c:send_raw(table.concat(parts))
      c:expect_text(s, 10)
      finish(c)
    end)
  end)

  describe("6: UTF-8", function()
    local valid = {
      { "Greek", "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5" },
      { "NUL and DEL", "a\0b\127" },
      { "U+0080 and U+07FF", "\xc2\x80\xdf\xbf" },
      { "U+0800 and U+FFFF", "\xe0\xa0\x80\xef\xbf\xbf" },
      { "U+D7FF and U+E000 (around surrogates)", "\xed\x9f\xbf\xee\x80\x80" },
      { "U+FFFD and U+FFFE", "\xef\xbf\xbd\xef\xbf\xbe" },
      { "U+10000", "\xf0\x90\x80\x80" },
      { "U+10FFFF", "\xf4\x8f\xbf\xbf" },
      { "emoji", "\xf0\x9f\x98\x80\xf0\x9f\x8e\x89" },
    }
    for _, case in ipairs(valid) do
      it("echoes valid text exactly: " .. case[1], function()
        local c = open()
        c:send_text(case[2])
        c:expect_text(case[2])
        finish(c)
      end)

      it("echoes valid text split into 1-byte fragments: " .. case[1], function()
        local c = open()
        local s = case[2]
        local parts = {}
        for i = 1, #s do
          parts[i] = ws.frame({ opcode = i == 1 and 1 or 0, fin = i == #s, payload = s:sub(i, i) })
        end
        c:send_raw(table.concat(parts))
        c:expect_text(s)
        finish(c)
      end)
    end

    local invalid = {
      { "lone continuation 0x80", "a\x80b" },
      { "lone continuation 0xBF", "\xbf" },
      { "0xC0", "\xc0" },
      { "0xC1 0xBF (overlong)", "\xc1\xbf" },
      { "overlong '/' C0 AF", "\xc0\xaf" },
      { "overlong E0 80 AF", "\xe0\x80\xaf" },
      { "overlong E0 9F BF", "\xe0\x9f\xbf" },
      { "overlong F0 80 80 AF", "\xf0\x80\x80\xaf" },
      { "overlong F0 8F BF BF", "\xf0\x8f\xbf\xbf" },
      { "surrogate U+D800", "\xed\xa0\x80" },
      { "surrogate U+DFFF", "\xed\xbf\xbf" },
      { "surrogate pair", "\xed\xa1\x8c\xed\xbe\xb4" },
      { "above U+10FFFF", "\xf4\x90\x80\x80" },
      { "0xF5", "\xf5\x80\x80\x80" },
      { "0xF8 (5-byte form)", "\xf8\x88\x80\x80\x80" },
      { "0xFE", "\xfe" },
      { "0xFF", "\xff" },
      { "truncated 2-byte at end", "abc\xce" },
      { "truncated 3-byte at end", "abc\xe0\xa0" },
      { "truncated 4-byte at end", "abc\xf0\x90\x80" },
      { "truncated sequence followed by ASCII", "\xe1\x80a" },
      { "Autobahn 6.3.1", "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited" },
    }
    for _, case in ipairs(invalid) do
      it("closes with 1007 for invalid UTF-8: " .. case[1], function()
        local c = open()
        c:send_text(case[2])
        fails_with(c, 1007)
      end)
    end

    it("echoes invalid UTF-8 in a binary message unchanged", function()
      local c = open()
      c:send_binary("\xff\xfe\xc0\xed\xa0\x80")
      c:expect_binary("\xff\xfe\xc0\xed\xa0\x80")
      finish(c)
    end)

    it("closes with 1007 for invalid UTF-8 split across a fragment boundary", function()
      local c = open()
      c:send_raw(ws.frame({ opcode = 1, fin = false, payload = "\xce\xba\xce" })
        .. ws.frame({ opcode = 0, payload = "A" }))
      fails_with(c, 1007)
    end)

    it("closes with 1007 for a message that ends inside a sequence across fragments", function()
      local c = open()
      c:send_raw(ws.frame({ opcode = 1, fin = false, payload = "ok" })
        .. ws.frame({ opcode = 0, payload = "\xf0\x90" }))
      fails_with(c, 1007)
    end)

    it("fails fast: an invalid byte early in a large frame gets 1007 before the rest is sent", function()
      local c = open()
      local payload = "good start \xff" .. string.rep("x", MiB)
      local frame = ws.frame({ opcode = 1, payload = payload })
      c:send_raw(frame:sub(1, 14 + 1000))     -- header (2+8+4) + 1000 payload bytes
      c:expect_close(1007, 2)
      c:send_close(1000)
      assert.is_true(c:wait_closed(2))
      c:close_tcp()
    end)

    it("fails fast: an invalid first fragment gets 1007 before the final fragment", function()
      local c = open()
      c:send_frame({ opcode = 1, fin = false, payload = "abc\xc0\xafdef" })
      fails_with(c, 1007, 2)
    end)

    it("fails fast: an invalid sequence completed by a later fragment, message not finished", function()
      local c = open()
      c:send_frame({ opcode = 1, fin = false, payload = "abc\xed" })
      c:send_frame({ opcode = 0, fin = false, payload = "\xa0\x80more" })   -- U+D800
      fails_with(c, 1007, 2)
    end)
  end)

  describe("7: close handling", function()
    it("replies to close 1000 and closes TCP", function()
      local c = open()
      c:send_text("hello")
      c:expect_text("hello")
      c:send_close(1000)
      c:expect_close(1000)
      c:expect_tcp_close(2)
      c:close_tcp()
    end)

    it("replies to a close without payload (empty or 1000) and closes TCP", function()
      local c = open()
      c:send_frame({ opcode = 8, payload = "" })
      local code = c:expect_close(nil)
      assert.is_true(code == nil or code == 1000, "close reply code " .. tostring(code))
      c:expect_tcp_close(2)
      c:close_tcp()
    end)

    it("closes with 1002 for a close with a 1-byte payload", function()
      local c = open()
      c:send_frame({ opcode = 8, payload = "\3" })
      fails_with(c, 1002)
    end)

    it("echoes close 1000 with a reason", function()
      local c = open()
      c:send_close(1000, "bye bye")
      c:expect_close(1000)
      c:expect_tcp_close(2)
    end)

    it("accepts a close reason in multi-byte UTF-8", function()
      local c = open()
      c:send_close(1000, "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5 \xf4\x8f\xbf\xbf")
      c:expect_close(1000)
      c:expect_tcp_close(2)
    end)

    it("accepts a close with the longest reason (123 bytes)", function()
      local c = open()
      c:send_close(1000, string.rep("r", 123))
      c:expect_close(1000)
      c:expect_tcp_close(2)
    end)

    it("closes with 1002 for a close with a 124-byte reason (payload 126 > 125)", function()
      local c = open()
      c:send_close(1000, string.rep("r", 124))
      fails_with(c, 1002)
    end)

    it("closes with 1007 for a close reason that is not UTF-8", function()
      local c = open()
      c:send_close(1000, "bad \xff reason")
      fails_with(c, 1007)
    end)

    for _, code in ipairs({ 1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999 }) do
      it("echoes the valid close code " .. code, function()
        local c = open()
        c:send_close(code, "reason")
        c:expect_close(code)
        c:expect_tcp_close(2)
      end)
    end

    for _, code in ipairs({ 0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535 }) do
      it("closes with 1002 for the invalid close code " .. code, function()
        local c = open()
        c:send_close(code)
        fails_with(c, 1002)
      end)
    end

    it("ignores data sent after the close", function()
      local c = open()
      c:send_raw(ws.frame({ opcode = 8, payload = ws.close_payload(1000) })
        .. ws.frame({ opcode = 1, payload = "after close" })
        .. ws.frame({ opcode = 9, payload = "after close" }))
      c:expect_close(1000)
      c:expect_tcp_close(2)
    end)

    it("ignores a second close", function()
      local c = open()
      c:send_raw(ws.frame({ opcode = 8, payload = ws.close_payload(1000) })
        .. ws.frame({ opcode = 8, payload = ws.close_payload(1001) }))
      c:expect_close(1000)
      c:expect_tcp_close(2)
    end)

    it("drops a fragmented message that a close interrupts", function()
      local c = open()
      c:send_raw(ws.frame({ opcode = 1, fin = false, payload = "unfinished" })
        .. ws.frame({ opcode = 8, payload = ws.close_payload(1000) }))
      c:expect_close(1000)
      c:expect_tcp_close(2)
    end)

    it("echoes a 256 KiB message sent just before the close, then closes", function()
      local c = open()
      local s = ws.random_bytes(256 * 1024, 11)
      c:send_raw(ws.frame({ opcode = 2, payload = s })
        .. ws.frame({ opcode = 8, payload = ws.close_payload(1000) }))
      c:expect_binary(s)
      c:expect_close(1000)
      c:expect_tcp_close(2)
    end)

    it("replies to a close from a client that half-closed right after it", function()
      local c = open()
      c:send_close(1000, "half")
      c.sock:shutdown("send")
      c:expect_close(1000)
      c:expect_tcp_close(2)
    end)

    it("accepts a close sent one byte at a time", function()
      local c = open()
      c:send_pieces(ws.frame({ opcode = 8, payload = ws.close_payload(1000, "slow") }), 1)
      c:expect_close(1000)
      c:expect_tcp_close(2)
    end)
  end)

  describe("9: limits and volume", function()
    for _, size in ipairs({ 64 * 1024, MiB, 4 * MiB }) do
      it(("echoes a %d KiB text and binary message"):format(size / 1024), function()
        local c = open()
        local t = utf8_text(size)
        local b = ws.random_bytes(size, size % 97)
        c:send_text(t)
        c:expect_text(t, 10)
        c:send_binary(b)
        c:expect_binary(b, 10)
        finish(c)
      end)
    end

    it("echoes a 16 MiB text sent in 64 KiB fragments", function()
      local c = open()
      local s = utf8_text(16 * MiB)
      local frames, chunk = {}, 65536
      local n = #s / chunk
      for i = 1, n do
        frames[i] = ws.frame({ opcode = i == 1 and 1 or 0, fin = i == n,
                               payload = s:sub((i - 1) * chunk + 1, i * chunk) })
      end
      c:send_raw(table.concat(frames))
      c:expect_text(s, 15)
      finish(c)
    end)

    it("echoes a 16 MiB binary sent in 64 KiB fragments", function()
      local c = open()
      local s = ws.random_bytes(16 * MiB, 5)
      local chunk = 65536
      local n = #s / chunk
      for i = 1, n do
        c:send_frame({ opcode = i == 1 and 2 or 0, fin = i == n,
                       payload = s:sub((i - 1) * chunk + 1, i * chunk) })
      end
      c:expect_binary(s, 15)
      finish(c)
    end)

    it("closes with 1009 for a 16 MiB + 1 byte frame, before the payload is sent", function()
      local c = open()
      c:send_frame({ opcode = 2, len = 16 * MiB + 1, payload = "" })   -- header only
      c:expect_close(1009, 2)
      c:send_close(1000)
      assert.is_true(c:wait_closed(2))
    end)

    it("closes with 1009 when 64 KiB fragments add up to more than 16 MiB", function()
      local c = open()
      local chunk = string.rep("z", 65536)
      for i = 1, 256 do       -- exactly 16 MiB, not finished
        assert(c:send_frame({ opcode = i == 1 and 2 or 0, fin = false, payload = chunk }))
      end
      c:send_frame({ opcode = 0, len = 1, payload = "" })   -- header of one byte more
      c:expect_close(1009, 5)
      c:send_close(1000)
      assert.is_true(c:wait_closed(2))
    end)

    it("echoes 1,000 pipelined small messages in order", function()
      local c = open()
      local parts = {}
      for i = 1, 1000 do parts[i] = ws.frame({ opcode = 1, payload = "message " .. i }) end
      c:send_raw(table.concat(parts))
      for i = 1, 1000 do c:expect_text("message " .. i) end
      finish(c)
    end)

    it("echoes 2,000 messages one at a time (request/response)", function()
      local c = open()
      local t0 = socket.gettime()
      for i = 1, 2000 do
        c:send_text("m" .. i)
        c:expect_text("m" .. i)
      end
      assert.is_true(socket.gettime() - t0 < 8, "2,000 round trips took too long")
      finish(c)
    end)

    it("echoes 10,000 pipelined tiny binary messages in order", function()
      local c = open()
      local parts = {}
      for i = 1, 10000 do parts[i] = ws.frame({ opcode = 2, payload = ws.be_bytes(i, 2) }) end
      c:send_raw(table.concat(parts))
      for i = 1, 10000 do c:expect_binary(ws.be_bytes(i, 2)) end
      finish(c)
    end)
  end)

  describe("randomized streams", function()
    -- Random messages (text/binary, 0..70000 bytes), random fragmentation, pings
    -- between and inside messages, and the byte stream cut at random points. Echoes
    -- must come back in order, and every ping must get its pong, in order.
    for _, seed in ipairs({ 1, 2, 3 }) do
      it("echoes a random fragmented stream with interleaved pings (seed " .. seed .. ")", function()
        math.randomseed(seed)
        local c = open()
        local stream, messages, pings = {}, {}, {}
        local function ping()
          local p = "ping-" .. #pings + 1
          pings[#pings + 1] = p
          stream[#stream + 1] = ws.frame({ opcode = 9, payload = p })
        end
        for m = 1, 60 do
          local binary = math.random() < 0.5
          local size = ({ 0, 1, 125, 126, 1000, 65535, 65536, 70000 })[math.random(1, 8)]
          local body = binary and ws.random_bytes(size) or utf8_text(size)
          messages[m] = { binary = binary, body = body }
          local nfrag = math.random(1, 6)
          local pos = 1
          for f = 1, nfrag do
            local last = f == nfrag
            local step = math.random(0, math.floor(#body / nfrag) + 1)
            local stop = last and #body or math.min(#body, pos + step)
            stream[#stream + 1] = ws.frame({ opcode = f == 1 and (binary and 2 or 1) or 0, fin = last,
                                             payload = body:sub(pos, stop) })
            pos = stop + 1
            if not last and math.random() < 0.3 then ping() end
          end
          if math.random() < 0.3 then ping() end
        end
        local bytes = table.concat(stream)
        local i = 1
        while i <= #bytes do
          local n = math.random(1, 20000)
          assert(c:send_raw(bytes:sub(i, i + n - 1)))
          i = i + n
        end
        local got_pongs, got = {}, 0
        while got < #messages do
          local msg, op = c:recv_message(10, "echo", function(f)
            assert.are.equal("pong", f.op, "unexpected " .. ws.describe(f))
            got_pongs[#got_pongs + 1] = f.payload
          end)
          got = got + 1
          local want = messages[got]
          assert.are.equal(want.binary and "binary" or "text", op, "message " .. got)
          assert.is_true(msg == want.body,
            ("message %d differs (%d vs %d bytes)"):format(got, #msg, #want.body))
        end
        while #got_pongs < #pings do
          got_pongs[#got_pongs + 1] = c:expect_pong(nil)
        end
        assert.are.same(pings, got_pongs)
        finish(c)
      end)
    end
  end)

  describe("lengths and masking", function()
    it("closes with 1002 for an unmasked client frame", function()
      local c = open()
      c:send_frame({ opcode = 1, payload = "unmasked", mask = false })
      fails_with(c, 1002)
    end)

    it("closes with 1002 for an unmasked ping and an unmasked close", function()
      local c = open()
      c:send_frame({ opcode = 9, payload = "p", mask = false })
      fails_with(c, 1002)
      c = open()
      c:send_frame({ opcode = 8, payload = ws.close_payload(1000), mask = false })
      fails_with(c, 1002)
    end)

    it("unmasks with the key given (a zero key, a key with 0xFF bytes)", function()
      local c = open()
      c:send_text("zero key", { key = "\0\0\0\0" })
      c:expect_text("zero key")
      c:send_text("ff key", { key = "\255\255\255\255" })
      c:expect_text("ff key")
      c:send_binary(string.rep("\0", 13), { key = "\1\2\3\4" })
      c:expect_binary(string.rep("\0", 13))
      finish(c)
    end)

    it("closes with 1002 for a 64-bit length with the most significant bit set", function()
      local c = open()
      c:send_frame({ opcode = 2, len_form = 64, len_bytes = "\128\0\0\0\0\0\0\5", payload = "" })
      fails_with(c, 1002)
    end)

    local nonminimal = {
      { "16-bit form for 5 bytes", 16, 5 },
      { "16-bit form for 125 bytes", 16, 125 },
      { "64-bit form for 200 bytes", 64, 200 },
      { "64-bit form for 65535 bytes", 64, 65535 },
    }
    for _, case in ipairs(nonminimal) do
      it("closes with 1002 for a non-minimal length: " .. case[1], function()
        local c = open()
        c:send_frame({ opcode = 2, len_form = case[2], payload = string.rep("n", case[3]) })
        fails_with(c, 1002)
      end)
    end

    it("accepts the minimal encodings at the boundaries (125, 126, 65535, 65536)", function()
      local c = open()
      for _, n in ipairs({ 125, 126, 65535, 65536 }) do
        local s = string.rep("m", n)
        c:send_binary(s)
        c:expect_binary(s)
      end
      finish(c)
    end)

    it("waits for the rest of a frame whose payload arrives late", function()
      local c = open()
      local frame = ws.frame({ opcode = 1, payload = "0123456789" })
      c:send_raw(frame:sub(1, #frame - 5))
      c:expect_silence(0.3)
      c:send_raw(frame:sub(#frame - 4))
      c:expect_text("0123456789")
      finish(c)
    end)

    it("reads a 64-bit length spread over several packets", function()
      local c = open()
      local s = string.rep("L", 70000)
      local frame = ws.frame({ opcode = 1, payload = s })
      c:send_pieces(frame:sub(1, 16), 1, 0.005)
      c:send_raw(frame:sub(17))
      c:expect_text(s)
      finish(c)
    end)
  end)

  describe("--max-message-size", function()
    local small
    setup(function()
      small = server.start(ECHO, { flags = { "--max-message-size", "1000" } })
    end)

    local function open_small() return ws.open(small, "/echo") end

    it("echoes a message of exactly the limit", function()
      local c = open_small()
      local s = string.rep("e", 1000)
      c:send_text(s)
      c:expect_text(s)
      c:close_handshake(1000)
    end)

    it("closes with 1009 for one byte more, before the payload is sent", function()
      local c = open_small()
      c:send_frame({ opcode = 1, len = 1001, payload = "" })
      c:expect_close(1009, 2)
      c:send_close(1000)
      assert.is_true(c:wait_closed(2))
    end)

    it("closes with 1009 when fragments add up to more than the limit", function()
      local c = open_small()
      c:send_frame({ opcode = 2, fin = false, payload = string.rep("a", 600) })
      c:send_frame({ opcode = 0, fin = false, len = 600, payload = "" })   -- header of the 2nd only
      c:expect_close(1009, 2)
      c:send_close(1000)
      assert.is_true(c:wait_closed(2))
    end)

    it("accepts fragments that add up to exactly the limit", function()
      local c = open_small()
      c:send_frame({ opcode = 1, fin = false, payload = string.rep("a", 500) })
      c:send_frame({ opcode = 0, payload = string.rep("b", 500) })
      c:expect_text(string.rep("a", 500) .. string.rep("b", 500))
      c:close_handshake(1000)
    end)

    it("still allows control frames up to 125 bytes", function()
      local c = open_small()
      c:ping(string.rep("p", 125))
      c:expect_pong(string.rep("p", 125))
      c:close_handshake(1000)
    end)
  end)
  describe("max_message_size from the app, the route and the flag (spec/apps/limits.lua)", function()
    local function check(target, path, ok_size, bad_size)
      local c = ws.open(target, path)
      local s = string.rep("s", ok_size)
      c:send_binary(s)
      c:expect_binary(s)
      c:send_frame({ opcode = 2, len = bad_size, payload = "" })
      c:expect_close(1009, 2)
      c:send_close(1000)
      assert.is_true(c:wait_closed(2))
    end

    it("applies the app option (1000) and the route option (5000)", function()
      local limits = server.start("spec/apps/limits.lua")
      check(limits, "/small", 1000, 1001)
      check(limits, "/big", 5000, 5001)
      limits:stop()
    end)

    it("lets --max-message-size override both", function()
      local limits = server.start("spec/apps/limits.lua", { flags = { "--max-message-size", "2000" } })
      check(limits, "/small", 2000, 2001)
      check(limits, "/big", 2000, 2001)
      limits:stop()
    end)
  end)
end)
