-- Command line: --help, --version, and startup errors that must stop the server with
-- one clear line on stderr (file names, lines, option names, the address in use).

local server = require "spec.support.server"
local probe = require "spec.support.probe"

-- Non-empty lines of a string.
local function lines(s)
  local out = {}
  for l in s:gmatch("[^\n]+") do
    if l:match("%S") then out[#out + 1] = l end
  end
  return out
end

-- Runs moonwire expecting a startup failure; checks the common rules (non-zero exit,
-- exactly one stderr line) and returns that line.
local function fails(args)
  local res = server.run(args)
  assert.are_not.equal("timeout", res.how, "moonwire kept running with args: " .. table.concat(args, " ")
    .. "\nstderr: " .. res.stderr)
  assert.are.equal("exited", res.how, "moonwire died by signal " .. tostring(res.code)
    .. "\nstderr: " .. res.stderr)
  assert.are_not.equal(0, res.code, "expected a non-zero exit status; stderr: " .. res.stderr)
  local l = lines(res.stderr)
  assert.are.equal(1, #l, "expected exactly one line on stderr, got:\n" .. res.stderr)
  return l[1], res
end

local temp_files = {}
local function app_file(text)
  local path = server.temp_file(text, ".lua")
  temp_files[#temp_files + 1] = path
  return path
end

local function basename(path) return path:match("([^/]+)$") end

describe("moonwire CLI", function()
  after_each(function()
    server.stop_all()
    for _, p in ipairs(temp_files) do os.remove(p) end
    temp_files = {}
  end)

  it("prints usage for --help on stdout and exits 0", function()
    local res = server.run({ "--help" })
    assert.are.equal("exited", res.how)
    assert.are.equal(0, res.code)
    local out = res.stdout:lower()
    assert.truthy(out:find("usage", 1, true), "no 'usage' in: " .. res.stdout)
    -- The usage documents the flags the contract names.
    for _, flag in ipairs({ "--listen", "--ping-interval", "--max-message-size", "--help", "--version" }) do
      assert.truthy(res.stdout:find(flag, 1, true), "usage does not mention " .. flag)
    end
  end)

  it("prints the version for --version and exits 0", function()
    local res = server.run({ "--version" })
    assert.are.equal("exited", res.how)
    assert.are.equal(0, res.code)
    assert.are.equal("moonwire 0.1.0", res.stdout:match("^%s*(.-)%s*$"))
  end)

  it("fails without an app file argument", function()
    local res = server.run({})
    assert.are.equal("exited", res.how)
    assert.are_not.equal(0, res.code)
    assert.truthy(#res.stderr > 0, "no message on stderr")
  end)

  it("names a missing app file", function()
    local line = fails({ "/nonexistent/dir/no_such_app.lua", "--listen", "127.0.0.1:0" })
    assert.truthy(line:find("no_such_app.lua", 1, true), line)
  end)

  it("reports a syntax error as FILE:LINE", function()
    local path = app_file("local moonwire = require 'moonwire'\nlocal app = moonwire.app {}\n"
      .. "local x = = 1\nreturn app\n")
    local line = fails({ path, "--listen", "127.0.0.1:0" })
    assert.truthy(line:find(basename(path) .. ":3:", 1, true), "expected FILE:3: in " .. line)
  end)

  it("reports a runtime error while loading with FILE:LINE", function()
    local path = app_file("local moonwire = require 'moonwire'\nlocal app = moonwire.app {}\n\n"
      .. "local t = nil\nlocal y = t.field\nreturn app, y\n")
    local line = fails({ path, "--listen", "127.0.0.1:0" })
    assert.truthy(line:find(basename(path) .. ":5:", 1, true), "expected FILE:5: in " .. line)
  end)

  it("reports an explicit error() while loading with FILE:LINE and the message", function()
    local path = app_file("local moonwire = require 'moonwire'\nerror('config is broken')\n"
      .. "return moonwire.app {}\n")
    local line = fails({ path, "--listen", "127.0.0.1:0" })
    assert.truthy(line:find(basename(path) .. ":2:", 1, true), line)
    assert.truthy(line:find("config is broken", 1, true), line)
  end)

  it("says so when the app file returns nothing", function()
    local path = app_file("local moonwire = require 'moonwire'\nlocal app = moonwire.app {}\n"
      .. "app:websocket('/x', {})\n")
    local line = fails({ path, "--listen", "127.0.0.1:0" })
    assert.truthy(line:lower():find("return", 1, true), "does not say the app must be returned: " .. line)
  end)

  it("says so when the app file returns something that is not an app", function()
    local path = app_file("return 42\n")
    local line = fails({ path, "--listen", "127.0.0.1:0" })
    assert.truthy(line:lower():find("app", 1, true), line)
  end)

  it("names an unknown option in moonwire.app{} with FILE:LINE", function()
    local path = app_file("local moonwire = require 'moonwire'\n\nlocal app = moonwire.app {\n"
      .. "  ping_intervall = 3,\n}\nreturn app\n")
    local line = fails({ path, "--listen", "127.0.0.1:0" })
    assert.truthy(line:find("ping_intervall", 1, true), "option not named: " .. line)
    assert.truthy(line:find(basename(path) .. ":%d+"), "no FILE:LINE in: " .. line)
  end)

  it("names an unknown route option", function()
    local path = app_file("local moonwire = require 'moonwire'\nlocal app = moonwire.app {}\n"
      .. "app:websocket('/x', { max_mesage_size = 10 })\nreturn app\n")
    local line = fails({ path, "--listen", "127.0.0.1:0" })
    assert.truthy(line:find("max_mesage_size", 1, true), "option not named: " .. line)
  end)

  it("says the address is in use when the port is taken", function()
    local first = server.start("spec/apps/probe.lua")
    local addr = first.host .. ":" .. first.port
    local line = fails({ server.path("spec/apps/probe.lua"), "--listen", addr })
    assert.truthy(line:find(addr, 1, true), "address not named: " .. line)
    assert.truthy(line:lower():find("in use", 1, true), "no 'in use' in: " .. line)
    -- The first server is unaffected.
    assert.is_true(first:alive())
  end)

  it("names an unknown flag", function()
    local line = fails({ server.path("spec/apps/probe.lua"), "--frobnicate", "--listen", "127.0.0.1:0" })
    assert.truthy(line:find("--frobnicate", 1, true), line)
  end)

  local bad_values = {
    { "--ping-interval", "abc" },
    { "--max-connections", "-5" },
    { "--max-message-size", "12x" },
    { "--listen", "not-an-address" },
    { "--log-level", "chatty" },
  }
  for _, case in ipairs(bad_values) do
    it("names the flag for a bad value: " .. case[1] .. " " .. case[2], function()
      local args = { server.path("spec/apps/probe.lua"), "--listen", "127.0.0.1:0", case[1], case[2] }
      if case[1] == "--listen" then args = { server.path("spec/apps/probe.lua"), case[1], case[2] } end
      local line = fails(args)
      assert.truthy(line:find(case[1], 1, true), "flag not named: " .. line)
    end)
  end

  it("refuses limits out of range with the reason", function()
    for _, case in ipairs {
      { "--listen-backlog", "0", "listen_backlog must be from 1 to 65535" },
      { "--max-message-size", "3000000000", "max_message_size must be at most 2147483647" },
      { "--max-body-size", "3000000000", "max_body_size must be at most 2147483647" },
    } do
      local line = fails({ server.path("spec/apps/probe.lua"), "--listen", "127.0.0.1:0", case[1], case[2] })
      assert.truthy(line:find(case[3], 1, true), line)
    end
  end)

  it("serves with a small --listen-backlog", function()
    local srv = server.start("spec/apps/probe.lua", { flags = { "--listen-backlog", "8" } })
    local c = probe.open(srv)
    c:close_handshake(1000)
    local how, code = srv:stop()
    assert.are.same({ "exited", 0 }, { how, code })
  end)

  it("names the flag when its value is missing", function()
    local line = fails({ server.path("spec/apps/probe.lua"), "--listen", "127.0.0.1:0", "--ping-interval" })
    assert.truthy(line:find("--ping-interval", 1, true), line)
  end)

  describe("--admin-token-file", function()
    local probe_app = server.path("spec/apps/probe.lua")
    local function token_file(text)
      local path = server.temp_file(text, ".token")
      temp_files[#temp_files + 1] = path
      return path
    end

    it("needs --admin", function()
      local line = fails({ probe_app, "--listen", "127.0.0.1:0",
        "--admin-token-file", token_file(string.rep("a", 32)) })
      assert.truthy(line:find("--admin HOST:PORT", 1, true), line)
    end)

    it("names a missing file", function()
      local line = fails({ probe_app, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
        "--admin-token-file", "/nonexistent/moonwire.token" })
      assert.truthy(line:find("/nonexistent/moonwire.token", 1, true), line)
      assert.truthy(line:find("No such file", 1, true), line)
    end)

    it("refuses a short, empty or spaced token and says how to make one", function()
      for _, case in ipairs {
        { "short\n", "5 characters, too short" },
        { "\n", "0 characters, too short" },
        { "abcdefgh ijklmnopq\n", "space, control or non-ASCII byte at offset 8" },
        { string.rep("x", 1100), "longer than 1024" },
      } do
        local path = token_file(case[1])
        local line = fails({ probe_app, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
          "--admin-token-file", path })
        assert.truthy(line:find(path, 1, true), "file not named: " .. line)
        assert.truthy(line:find(case[2], 1, true), line)
        assert.truthy(line:find("openssl rand -hex 32", 1, true), "no fix given: " .. line)
      end
    end)

    it("is required for an admin listener off the loopback interface", function()
      local line, res = fails({ probe_app, "--listen", "127.0.0.1:0", "--admin", "0.0.0.0:0" })
      assert.are.equal(2, res.code)
      assert.truthy(line:find("'0.0.0.0:0' is not a loopback address", 1, true), line)
      assert.truthy(line:find("--admin-token-file", 1, true), line)
      -- with a token it serves (the listener's requests are checked in
      -- spec/clients/test_python_reload.py)
      local srv = server.start("spec/apps/probe.lua", { flags = { "--admin", "0.0.0.0:0",
        "--admin-token-file", token_file(string.rep("b", 40) .. "\n") } })
      assert.truthy(srv:wait_log("admin listener on 0%.0%.0%.0:%d+", 5), srv:log())
      local how, code = srv:stop()
      assert.are.same({ "exited", 0 }, { how, code })
    end)
  end)

  it("announces the address and exits on SIGTERM", function()
    local srv = server.start("spec/apps/probe.lua")
    assert.is_true(srv.port > 0)
    assert.are.equal("127.0.0.1", srv.host)
    local _, _, forced = srv:stop(3)
    assert.is_false(forced, "SIGTERM did not stop the server within 3 s")
  end)

  it("exits on SIGTERM with connections open", function()
    local srv = server.start("spec/apps/probe.lua")
    local ws = require "spec.support.ws"
    local conns = { ws.open(srv, "/probe"), ws.open(srv, "/probe") }
    conns[1]:send_text("sleep 10 never")   -- a handler suspended in moonwire.sleep
    local _, _, forced = srv:stop(3)
    assert.is_false(forced, "SIGTERM did not stop the server within 3 s")
    for _, c in ipairs(conns) do
      assert.is_true(c:wait_closed(1), "connection still open after the server exited")
    end
  end)

  it("exits on SIGINT", function()
    local srv = server.start("spec/apps/probe.lua")
    require("posix.signal").kill(srv.pid, require("posix.signal").SIGINT)
    assert.truthy(server.poll(3, function() return not srv:alive() end), "SIGINT did not stop the server")
  end)
end)
