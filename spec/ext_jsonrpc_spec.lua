-- The moonwire.jsonrpc extension (extensions/jsonrpc) on the build-tree
-- binary, seen from the wire with our raw client: every standard error code,
-- id types, params shapes, notifications, batches (order, notifications left
-- out, all-notification batches), invalid JSON, binary and fragmented frames,
-- jsonrpc.notify, methods that sleep, route options kept by jsonrpc.route,
-- and startup errors for misuse. Runs spec/apps/jsonrpc.lua.
--
-- The whole protocol part runs twice: with lua-cjson (Debian's lua-cjson,
-- found on LuaJIT's default cpath) and with dkjson (LUA_CPATH pointed away
-- from cjson.so, so the extension falls back).
--
-- Requests are written as literal JSON text (not encoded by a library), so
-- ids such as 9007199254740991 reach the server exactly as written.

local server = require "spec.support.server"
local ws = require "spec.support.ws"
local socket = require "socket"
local cjson = require "cjson"

local APP = "spec/apps/jsonrpc.lua"
local null = cjson.null
local now = socket.gettime

-- moonwire.jsonrpc lives in extensions/jsonrpc (not installed here).
local LUA_PATH = server.path("extensions/jsonrpc") .. "/?.lua;;"

local BACKENDS = {
  { name = "cjson", env = { LUA_PATH = LUA_PATH } },
  -- No cjson.so on the cpath: the extension must use dkjson.
  { name = "dkjson", env = { LUA_PATH = LUA_PATH, LUA_CPATH = "/nonexistent/?.so" } },
}

-- One request as JSON text. id: a JSON literal ("1", '"abc"', "null") or nil
-- (a notification); params: a JSON literal or nil (absent).
local function rq(id, method, params)
  local parts = { '"jsonrpc":"2.0"', '"method":' .. cjson.encode(method) }
  if params then parts[#parts + 1] = '"params":' .. params end
  if id then parts[#parts + 1] = '"id":' .. id end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function decode(text)
  local ok, v = pcall(cjson.decode, text)
  assert(ok, "server sent invalid JSON: " .. text)
  return v
end

-- The members of an answer must be exactly jsonrpc, id and result or error.
local function check_shape(resp, text)
  assert.are.equal("table", type(resp), text)
  assert.are.equal("2.0", resp.jsonrpc, text)
  assert.is_true(resp.id ~= nil, "answer without an id member: " .. text)
  assert.is_true((resp.result ~= nil) ~= (resp.error ~= nil),
    "answer must have exactly one of result and error: " .. text)
  for k in pairs(resp) do
    assert.is_truthy(k == "jsonrpc" or k == "id" or k == "result" or k == "error",
      "unexpected member " .. tostring(k) .. " in " .. text)
  end
  if resp.error then
    assert.are.equal("number", type(resp.error.code), text)
    assert.are.equal("string", type(resp.error.message), text)
    assert.is_true(#resp.error.message > 0, text)
  end
end

-- Sends text and returns the decoded answer (and its text).
local function call(c, text, timeout)
  assert(c:send_text(text))
  local out = c:expect_text(nil, timeout or 3)
  local resp = decode(out)
  if resp[1] == nil then check_shape(resp, out) end
  return resp, out
end

local function expect_error(resp, code, id, text)
  assert.is_not_nil(resp.error, "expected error " .. code .. ", got " .. tostring(text))
  assert.are.equal(code, resp.error.code, text)
  assert.are.equal(id, resp.id, text)
end

-- The next message must be the answer to a fresh probe call, i.e. nothing was
-- sent for what came before it.
local function nothing_before_probe(c, id)
  local resp, text = call(c, rq(tostring(id), "add", "[40,2]"))
  assert.are.same({ jsonrpc = "2.0", id = id, result = 42 }, resp, text)
end

for _, backend in ipairs(BACKENDS) do
  describe("moonwire.jsonrpc (" .. backend.name .. ")", function()
    local srv

    setup(function()
      srv = server.start(APP, { env = backend.env })
    end)
    before_each(function()
      assert.is_true(srv:alive(), "server died; log:\n" .. srv:log())
    end)
    teardown(function()
      server.stop_all()
    end)

    local function open(path, opts)
      return ws.open(srv, path or "/rpc", opts)
    end

    it("uses the expected JSON library", function()
      local c = open()
      local resp = call(c, rq("1", "backend"))
      assert.are.equal(backend.name, resp.result)
      c:close_handshake(1000)
    end)

    describe("calls", function()
      it("answers a call with its result, positional or named params", function()
        local c = open()
        local resp, text = call(c, rq("1", "add", "[1,2]"))
        assert.are.same({ jsonrpc = "2.0", id = 1, result = 3 }, resp, text)
        resp = call(c, rq("2", "add", '{"a":20,"b":22}'))
        assert.are.same({ jsonrpc = "2.0", id = 2, result = 42 }, resp)
        c:close_handshake(1000)
      end)

      it("passes params through: absent -> empty table, array, object", function()
        local c = open()
        assert.are.equal("empty", call(c, rq("1", "kind")).result)
        assert.are.equal("array 3", call(c, rq("2", "kind", "[1,2,3]")).result)
        assert.are.equal("object a,b", call(c, rq("3", "kind", '{"a":1,"b":[2]}')).result)
        local resp = call(c, rq("4", "echo", '{"s":"h\\u00e9llo \\"q\\"","n":-1.5,"t":true,"f":false,'
          .. '"l":[1,"two",{"three":3}],"o":{"deep":{"er":["x"]}}}'))
        assert.are.same({ s = 'h\195\169llo "q"', n = -1.5, t = true, f = false,
          l = { 1, "two", { three = 3 } }, o = { deep = { er = { "x" } } } }, resp.result)
        c:close_handshake(1000)
      end)

      -- Objects whose members look like Lua conventions ("n" of table.pack)
      -- must come back as the same objects.
      it("round-trips objects with an \"n\" member", function()
        local c = open()
        local resp, text = call(c, rq("1", "echo", '{"n":2,"x":"y"}'))
        assert.are.same({ n = 2, x = "y" }, resp.result, text)
        resp, text = call(c, rq("2", "echo", '[{"n":3}]'))
        assert.are.same({ { n = 3 } }, resp.result, text)
        c:close_handshake(1000)
      end)

      it("a method that returns nothing answers result null", function()
        local c = open()
        local resp, text = call(c, rq("1", "nothing"))
        assert.are.same({ jsonrpc = "2.0", id = 1, result = null }, resp, text)
        assert.is_truthy(text:find('"result":null', 1, true), text)
        c:close_handshake(1000)
      end)

      it("answers pipelined calls in order", function()
        local c = open()
        for i = 1, 20 do assert(c:send_text(rq(tostring(i), "add", "[" .. i .. ",1000]"))) end
        for i = 1, 20 do
          local resp = decode(c:expect_text())
          assert.are.same({ jsonrpc = "2.0", id = i, result = i + 1000 }, resp)
        end
        c:close_handshake(1000)
      end)
    end)

    describe("ids", function()
      -- JSON literal sent, the value the answer must carry.
      local cases = {
        { "1", 1 }, { "0", 0 }, { "-7", -7 }, { "1.5", 1.5 },
        { '"abc"', "abc" }, { '""', "" }, { '"1"', "1" },
        { '"\\u00fc\\u2713"', "\195\188\226\156\147" },
        { "null", null },
      }
      for _, case in ipairs(cases) do
        it("echoes id " .. case[1] .. " with its type, and passes it to the method", function()
          local c = open()
          local resp, text = call(c, rq(case[1], "id"))
          assert.are.equal(case[2], resp.id, text)
          assert.are.equal(type(case[2]), type(resp.id), text)
          if case[2] == null then
            assert.are.equal("null", resp.result.lua_type, text)
            assert.is_truthy(text:find('"id":null', 1, true), text)
          else
            assert.are.equal(case[2], resp.result.id, text)
            assert.are.equal(type(case[2]), resp.result.lua_type, text)
          end
          -- The same id on an error answer.
          resp, text = call(c, rq(case[1], "no_such_method"))
          expect_error(resp, -32601, case[2], text)
          c:close_handshake(1000)
        end)
      end

      -- JSON-RPC 2.0: the answer's id MUST be the same value as the request's.
      -- Integers up to 2^53 are exact in a double, so they must come back exactly.
      for _, big in ipairs({ "123456789012345", "9007199254740991" }) do
        it("echoes the integer id " .. big .. " exactly", function()
          local c = open()
          assert(c:send_text(rq(big, "add", "[1,1]")))
          local text = c:expect_text()
          assert.is_truthy(text:find('"id":' .. big, 1, true),
            "the id " .. big .. " came back as: " .. text)
          c:close_handshake(1000)
        end)
      end

      it("an id of another type (true, object, array) is an invalid request with id null", function()
        local c = open()
        for _, id in ipairs({ "true", "false", '{"a":1}', "[1]" }) do
          local resp, text = call(c, rq(id, "add", "[1,2]"))
          expect_error(resp, -32600, null, text)
        end
        c:close_handshake(1000)
      end)
    end)

    describe("errors", function()
      it("-32700 parse error with id null for invalid JSON", function()
        local c = open()
        for _, bad in ipairs({
          '{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',
          "{", "not json", '{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1',
          '[{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1},{"jsonrpc":"2.0","method"]',
        }) do
          local resp, text = call(c, bad)
          assert.is_nil(resp[1], "a parse error is one object, not a batch: " .. text)
          expect_error(resp, -32700, null, text)
          assert.is_truthy(text:find('"id":null', 1, true), text)
        end
        -- The connection goes on.
        nothing_before_probe(c, 99)
        c:close_handshake(1000)
      end)

      it("-32600 invalid request: not an object, wrong version, bad method, bad params", function()
        local c = open()
        local cases = {
          { '{"jsonrpc":"2.0","method":1,"params":"bar"}', null },
          { '{"method":"add","params":[1,2],"id":1}', 1 },                  -- no "jsonrpc"
          { '{"jsonrpc":"1.0","method":"add","params":[1,2],"id":2}', 2 },  -- wrong version
          { '{"jsonrpc":2.0,"method":"add","params":[1,2],"id":3}', 3 },    -- version not a string
          { '{"jsonrpc":"2.0","params":[1,2],"id":4}', 4 },                 -- no method
          { '{"jsonrpc":"2.0","method":"add","params":"1,2","id":5}', 5 },  -- params not structured
          { '{"jsonrpc":"2.0","method":"add","params":3,"id":6}', 6 },
          { '"just a string"', null }, { "42", null }, { "true", null }, { "null", null },
          { "{}", null }, { "[]", null },
        }
        for _, case in ipairs(cases) do
          local resp, text = call(c, case[1])
          assert.is_nil(resp[1], case[1] .. " must get one object, not an array: " .. text)
          expect_error(resp, -32600, case[2], case[1] .. " -> " .. text)
        end
        nothing_before_probe(c, 99)
        c:close_handshake(1000)
      end)

      it("-32601 method not found, with the method name as data", function()
        local c = open()
        local resp, text = call(c, rq('"m"', "no.such"))
        expect_error(resp, -32601, "m", text)
        assert.are.equal("no.such", resp.error.data, text)
        -- Names that exist on Lua tables are not methods.
        for _, name in ipairs({ "__index", "rpc.discover", "" }) do
          resp, text = call(c, rq("1", name))
          expect_error(resp, -32601, 1, text)
        end
        c:close_handshake(1000)
      end)

      it("-32602 invalid params from jsonrpc.invalid_params", function()
        local c = open()
        local resp, text = call(c, rq("1", "bad_params"))
        expect_error(resp, -32602, 1, text)
        assert.are.equal("need two numbers", resp.error.message)
        resp, text = call(c, rq("2", "add", '["x"]'))
        expect_error(resp, -32602, 2, text)
        assert.are.equal("add needs two numbers", resp.error.message)
        resp, text = call(c, rq("3", "bad_params_default"))
        expect_error(resp, -32602, 3, text)
        c:close_handshake(1000)
      end)

      it("-32603 internal error for a plain error: no details to the client, traceback in the log", function()
        local line = server.line_of(APP, "FAIL_LINE")
        local c = open()
        local resp, text = call(c, rq("1", "fail"))
        expect_error(resp, -32603, 1, text)
        assert.is_nil(resp.error.data, text)
        assert.is_falsy(text:find("secret", 1, true), "details leaked to the client: " .. text)
        assert.is_falsy(text:find("jsonrpc.lua", 1, true), "details leaked to the client: " .. text)
        assert.is_not_nil(srv:wait_log("jsonrpc%.lua:" .. line .. ": secret detail 42", 2),
          "log lacks jsonrpc.lua:" .. line .. ":\n" .. srv:log())
        assert.is_truthy(srv:log():find("stack traceback", 1, true), srv:log())
        assert.is_truthy(srv:log():find("'fail'", 1, true), "log does not name the method:\n" .. srv:log())
        -- A table error that is not jsonrpc.error's is internal too.
        resp, text = call(c, rq("2", "fail_table"))
        expect_error(resp, -32603, 2, text)
        assert.is_falsy(text:find("looks like", 1, true), text)
        -- The connection and the server go on.
        nothing_before_probe(c, 3)
        c:close_handshake(1000)
      end)

      it("jsonrpc.error(code, message, data) answers with exactly that", function()
        local c = open()
        local resp, text = call(c, rq('"x"', "custom", "[7]"))
        assert.are.same({ jsonrpc = "2.0", id = "x", error = { code = -32001, message = "custom failure",
          data = { why = "because", n = 7 } } }, resp, text)
        resp, text = call(c, rq("2", "custom_nodata"))
        assert.are.same({ jsonrpc = "2.0", id = 2, error = { code = 4242, message = "no data" } }, resp, text)
        c:close_handshake(1000)
      end)

      -- A result JSON cannot represent is the method's fault; the caller must
      -- still get an answer (-32603), not silence, and the connection go on.
      -- (dkjson writes infinity as null, also a valid answer.)
      for _, method in ipairs({ "unencodable", "infinite" }) do
        it("answers when the result of '" .. method .. "' cannot be encoded", function()
          local c = open()
          assert(c:send_text(rq("1", method)))
          local msg, op = c:recv_message(2, "an answer to '" .. method .. "'")
          assert.are.equal("text", op, "got " .. tostring(op) .. " " .. tostring(msg))
          local resp = decode(msg)
          if not (method == "infinite" and resp.result == null) then
            expect_error(resp, -32603, 1, msg)
          end
          nothing_before_probe(c, 2)
          c:close_handshake(1000)
        end)
      end
    end)

    describe("notifications", function()
      it("runs notifications and answers none of them", function()
        local c = open()
        local tag = "n" .. math.random(1e9)
        assert(c:send_text(rq(nil, "note", '["' .. tag .. '"]')))
        assert(c:send_text(rq(nil, "note", '["' .. tag .. '"]')))
        -- Not even errors are answered for notifications.
        assert(c:send_text(rq(nil, "no_such_method")))
        assert(c:send_text(rq(nil, "bad_params")))
        assert(c:send_text(rq(nil, "fail")))
        assert(c:send_text(rq(nil, "custom", "[1]")))
        local resp, text = call(c, rq("5", "notes", '["' .. tag .. '"]'))
        assert.are.same({ jsonrpc = "2.0", id = 5, result = 2 }, resp, text)
        c:expect_silence(0.2)
        c:close_handshake(1000)
      end)

      it('"id": null is a call, not a notification', function()
        local c = open()
        local resp, text = call(c, rq("null", "add", "[1,2]"))
        assert.are.same({ jsonrpc = "2.0", id = null, result = 3 }, resp, text)
        c:close_handshake(1000)
      end)

      it("jsonrpc.notify sends notifications (no id) before the call's answer", function()
        local c = open()
        assert(c:send_text(rq("1", "push", '{"k":5}')))
        local tick = decode(c:expect_text())
        assert.are.same({ jsonrpc = "2.0", method = "tick", params = { k = 5 } }, tick)
        local tock = decode(c:expect_text())
        assert.are.equal("tock", tock.method)
        assert.is_nil(tock.id)
        assert.are.equal("2.0", tock.jsonrpc)
        assert.are.same({ jsonrpc = "2.0", id = 1, result = "pushed" }, decode(c:expect_text()))
        c:close_handshake(1000)
      end)
    end)

    describe("batches", function()
      it("answers a mixed batch as one array, in order, without the notifications", function()
        local c = open()
        local batch = "[" .. table.concat({
          rq("1", "add", "[1,2]"),
          rq(nil, "note", '["batch"]'),
          rq('"b"', "no_such_method"),
          "1",
          rq("4", "fail"),
          rq("5", "bad_params"),
          rq("6", "custom", "[6]"),
          '{"jsonrpc":"2.0","method":"add","params":"bad","id":7}',
          rq("null", "add", "[2,2]"),
        }, ",") .. "]"
        local resp, text = call(c, batch)
        assert.are.equal(8, #resp, text)
        assert.are.same({ jsonrpc = "2.0", id = 1, result = 3 }, resp[1], text)
        expect_error(resp[2], -32601, "b", text)
        expect_error(resp[3], -32600, null, text)
        expect_error(resp[4], -32603, 4, text)
        expect_error(resp[5], -32602, 5, text)
        expect_error(resp[6], -32001, 6, text)
        expect_error(resp[7], -32600, 7, text)
        assert.are.same({ jsonrpc = "2.0", id = null, result = 4 }, resp[8], text)
        for _, r in ipairs(resp) do check_shape(r, text) end
        assert.are.equal(1, call(c, rq("9", "notes", '["batch"]')).result)
        c:close_handshake(1000)
      end)

      it("keeps the order when an earlier call sleeps", function()
        local c = open()
        local batch = "[" .. rq('"slow"', "sleep", "[0.3]") .. "," .. rq('"fast"', "add", "[1,1]") .. "]"
        local resp, text = call(c, batch, 3)
        assert.are.same({ { jsonrpc = "2.0", id = "slow", result = "slept 0.3" },
          { jsonrpc = "2.0", id = "fast", result = 2 } }, resp, text)
        c:close_handshake(1000)
      end)

      it("a batch of one is answered with an array of one", function()
        local c = open()
        local resp, text = call(c, "[" .. rq("1", "add", "[1,2]") .. "]")
        assert.are.same({ { jsonrpc = "2.0", id = 1, result = 3 } }, resp, text)
        c:close_handshake(1000)
      end)

      it("a batch of notifications gets no answer at all", function()
        local c = open()
        local tag = "b" .. math.random(1e9)
        local n = '{"jsonrpc":"2.0","method":"note","params":["' .. tag .. '"]}'
        assert(c:send_text("[" .. n .. "," .. n .. "," .. n .. "]"))
        nothing_before_probe(c, 1)
        assert.are.equal(3, call(c, rq("2", "notes", '["' .. tag .. '"]')).result)
        c:close_handshake(1000)
      end)

      it("a batch of non-requests is answered with one -32600 per element", function()
        local c = open()
        local resp, text = call(c, "[1,2,3]")
        assert.are.equal(3, #resp, text)
        for i = 1, 3 do expect_error(resp[i], -32600, null, text) end
        resp, text = call(c, "[{}]")
        assert.are.equal(1, #resp, text)
        expect_error(resp[1], -32600, null, text)
        c:close_handshake(1000)
      end)
    end)

    describe("frames", function()
      it("answers JSON sent in a binary frame", function()
        local c = open()
        assert(c:send_binary(rq("1", "add", "[2,3]")))
        local msg, op = c:recv_message(3, "answer to a binary request")
        assert.are.equal("text", op)
        assert.are.same({ jsonrpc = "2.0", id = 1, result = 5 }, decode(msg))
        -- Invalid JSON (not even UTF-8) in a binary frame is a parse error.
        assert(c:send_binary("\255\254{"))
        msg, op = c:recv_message(3, "answer to binary garbage")
        assert.are.equal("text", op)
        expect_error(decode(msg), -32700, null, msg)
        c:close_handshake(1000)
      end)

      it("answers a request sent in fragments", function()
        local c = open()
        local text = rq("1", "add", "[20,22]")
        assert(c:send_frame({ fin = false, opcode = ws.OP.text, payload = text:sub(1, 10) }))
        assert(c:send_frame({ fin = false, opcode = ws.OP.cont, payload = text:sub(11, 20) }))
        assert(c:send_frame({ fin = true, opcode = ws.OP.cont, payload = text:sub(21) }))
        assert.are.same({ jsonrpc = "2.0", id = 1, result = 42 }, decode(c:expect_text()))
        c:close_handshake(1000)
      end)
    end)

    describe("methods that sleep", function()
      it("serve other connections meanwhile; the sleeper's later calls wait their turn", function()
        local a, b = open(), open()
        local t0 = now()
        assert(a:send_text(rq("1", "sleep", "[0.6]")))
        assert(a:send_text(rq("2", "add", "[1,1]")))
        socket.sleep(0.05)
        local t1 = now()
        local resp = call(b, rq("7", "add", "[3,4]"))
        assert.are.equal(7, resp.result)
        assert.is_true(now() - t1 < 0.3, "b waited " .. (now() - t1) .. " s behind a sleeping method")
        assert.are.same({ jsonrpc = "2.0", id = 1, result = "slept 0.6" }, decode(a:expect_text(nil, 3)))
        assert.is_true(now() - t0 >= 0.55, "the sleep was too short")
        assert.are.same({ jsonrpc = "2.0", id = 2, result = 2 }, decode(a:expect_text()))
        a:close_handshake(1000)
        b:close_handshake(1000)
      end)
    end)

    describe("route options", function()
      it("keeps the upgrade hook, on_open and ws.data", function()
        local c = assert(ws.connect(srv))
        local res = assert(c:handshake("/rpc_opts"))
        assert.are.equal(401, res.status, res.head)
        assert.are.equal("token required\n", res.body)
        c:close_tcp()
        c = open("/rpc_opts?token=t0k&user=ann")
        assert.are.same({ jsonrpc = "2.0", method = "hello", params = { "ann" } }, decode(c:expect_text()))
        assert.are.equal("ann", call(c, rq("1", "whoami")).result)
        c:close_handshake(1000)
      end)

      it("keeps max_message_size and on_close", function()
        local c = open("/rpc_opts?token=t0k&user=bo")
        c:expect_text()
        local other = open()
        local before = call(other, rq("1", "closed")).result
        assert(c:send_text(rq("1", "echo", '["' .. string.rep("x", 300) .. '"]')))
        c:expect_close(1009)
        c:expect_tcp_close()
        local after = server.poll(2, function()
          local n = call(other, rq("2", "closed")).result
          return n > before and n
        end)
        assert.are.equal(before + 1, after)
        other:close_handshake(1000)
      end)
    end)
  end)
end

describe("moonwire.jsonrpc misuse", function()
  local files = {}
  local function app_file(text)
    local path = server.temp_file(text, ".lua")
    files[#files + 1] = path
    return path
  end
  after_each(function()
    server.stop_all()
    for _, p in ipairs(files) do os.remove(p) end
    files = {}
  end)

  -- The app fails to load; the one error line names the app's own line.
  local function fails_at(text, needle, message)
    local path = app_file(text)
    local res = server.run({ path, "--listen", "127.0.0.1:0" }, { env = { LUA_PATH = LUA_PATH } })
    assert.are.equal("exited", res.how, "moonwire did not exit: " .. res.stderr)
    assert.are_not.equal(0, res.code)
    local line
    local n = 0
    for l in (text .. "\n"):gmatch("(.-)\n") do
      n = n + 1
      if l:find(needle, 1, true) then line = n end
    end
    local base = path:match("([^/]+)$")
    assert.is_truthy(res.stderr:find(base .. ":" .. line .. ":", 1, true),
      "stderr does not point at " .. base .. ":" .. line .. ":\n" .. res.stderr)
    assert.is_truthy(res.stderr:find(message, 1, true), res.stderr)
  end

  it("jsonrpc.route without methods is an error at the app's line", function()
    fails_at([[
local moonwire = require "moonwire"
local jsonrpc = require "moonwire.jsonrpc"
local app = moonwire.app {}
app:websocket("/rpc", jsonrpc.route { on_open = function() end }) -- HERE
return app
]], "-- HERE", "methods")
  end)

  it("jsonrpc.route with its own on_message is an error at the app's line", function()
    fails_at([[
local moonwire = require "moonwire"
local jsonrpc = require "moonwire.jsonrpc"
local app = moonwire.app {}
app:websocket("/rpc", jsonrpc.route { methods = {}, on_message = function() end }) -- HERE
return app
]], "-- HERE", "on_message")
  end)

  it("jsonrpc.error with a bad code: -32603 to the client, the method's line in the log", function()
    local path = app_file([[
local moonwire = require "moonwire"
local jsonrpc = require "moonwire.jsonrpc"
local app = moonwire.app {}
app:websocket("/rpc", jsonrpc.route { methods = {
  oops = function() jsonrpc.error("not a number", "msg") end, -- HERE
} })
return app
]])
    local srv = server.start(path, { env = { LUA_PATH = LUA_PATH } })
    local c = ws.open(srv, "/rpc")
    local resp, text = call(c, rq("1", "oops"))
    expect_error(resp, -32603, 1, text)
    local base = path:match("([^/]+)$")
    assert.is_not_nil(srv:wait_log(base:gsub("%p", "%%%0") .. ":5: jsonrpc%.error", 2), srv:log())
    c:close_handshake(1000)
  end)
end)
