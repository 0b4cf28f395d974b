-- Observability (issue 12), seen with our raw client: /metrics values after a
-- small known sequence, the Prometheus text layout, and --log-format json with
-- --access-log. The fuller check is spec/clients/test_python_observability.py;
-- both run spec/clients/apps/app_observability.lua.

local server = require "spec.support.server"
local ws = require "spec.support.ws"
local http = require "spec.support.http"
local cjson = require "cjson"

local APP = "spec/clients/apps/app_observability.lua"

-- Parses Prometheus text: returns samples ('name{labels}' -> number), the
-- HELP and TYPE of each family, and the names in order of appearance.
local function parse(text)
  local samples, help, types, names = {}, {}, {}, {}
  for line in text:gmatch("[^\n]+") do
    local kind, name, rest = line:match("^# (%u+) ([%w_:]+) (.*)$")
    if kind == "HELP" then
      help[name] = rest
    elseif kind == "TYPE" then
      types[name] = rest
    elseif line:sub(1, 1) ~= "#" then
      local n, labels, value = line:match("^([%w_:]+)(%b{}) (%S+)$")
      if not n then
        n, value = line:match("^([%w_:]+) (%S+)$")
        labels = ""
      end
      assert(n, "not a sample line: " .. line)
      local key = n .. labels
      assert(samples[key] == nil, "duplicate series " .. key)
      samples[key] = assert(tonumber(value), "bad value in " .. line)
      if not names[n] then
        names[n] = true
        names[#names + 1] = n
      end
    end
  end
  return samples, help, types, names
end

local function scrape(port)
  local res = http.fetch({ host = "127.0.0.1", port = port }, "GET", "/metrics")
  assert.are.equal(200, res.status, res.body)
  return parse(res.body)
end

-- The server's JSON log lines, decoded.
local function json_lines(srv)
  local out = {}
  for line in srv:log():gmatch("[^\n]+") do
    local ok, obj = pcall(cjson.decode, line)
    assert(ok and type(obj) == "table", "not a JSON log line: " .. line)
    out[#out + 1] = obj
  end
  return out
end

local function count_events(srv, event)
  local n = 0
  for _, o in ipairs(json_lines(srv)) do
    if o.event == event then n = n + 1 end
  end
  return n
end

describe("observability", function()
  local srv, mport
  setup(function()
    mport = server.free_port()
    srv = server.start(APP, { flags = { "--metrics", "127.0.0.1:" .. mport,
                                        "--log-format", "json", "--access-log" } })
    -- The sequence: two echo clients with 3 messages each, a refused upgrade
    -- (404), a handler error (1011), a clean close (1000), a dropped TCP
    -- connection (1006) and one plain HTTP request.
    local a, b = ws.open(srv, "/echo"), ws.open(srv, "/echo")
    for i = 1, 3 do
      a:send_text("a" .. i)
      a:expect_text("a" .. i)
      b:send_text("b" .. i)
      b:expect_text("b" .. i)
    end
    local c = assert(ws.connect(srv))
    local res = assert(c:handshake("/nope"))
    assert.are.equal(404, res.status)
    c:close_tcp()
    local d = ws.open(srv, "/boom")
    d:send_text("boom")
    d:expect_close(1011)
    d:send_close(1011)
    assert.is_true(d:wait_closed())
    a:close_handshake(1000)
    b:close_tcp()
    assert.are.equal(200, http.get(srv, "/hello").status)
    assert.is_truthy(server.poll(3, function() return count_events(srv, "ws_close") == 3 end),
      "three ws_close lines; log:\n" .. srv:log())
  end)
  teardown(function()
    server.stop_all()
  end)

  it("counts the sequence in /metrics", function()
    local m = scrape(mport)
    local want = {
      ["moonwire_websocket_upgrades_total"] = 3,
      ['moonwire_websocket_upgrades_refused_total{status="404"}'] = 1,
      ['moonwire_websocket_upgrades_refused_total{status="401"}'] = 0,
      ['moonwire_websocket_closed_total{code="1000"}'] = 1,
      ['moonwire_websocket_closed_total{code="1006"}'] = 1,
      ['moonwire_websocket_closed_total{code="1011"}'] = 1,
      ['moonwire_websocket_closed_total{code="other"}'] = 0,
      ["moonwire_http_requests_total"] = 1,
      ["moonwire_messages_received_total"] = 7,
      ["moonwire_messages_sent_total"] = 6,
      ["moonwire_publishes_total"] = 0,
      ["moonwire_handler_calls_total"] = 8, -- 7 on_message, 1 HTTP handler
      ["moonwire_handler_errors_total"] = 1,
      ["moonwire_slow_consumer_dropped_total"] = 0,
      ['moonwire_connections_open{kind="websocket"}'] = 0,
      ['moonwire_connections_open{kind="http"}'] = 0,
      ["moonwire_handlers_suspended"] = 0,
      ["moonwire_write_queue_bytes"] = 0,
      ['moonwire_reloads_total{result="ok"}'] = 0,
    }
    local got = {}
    for k in pairs(want) do got[k] = m[k] end
    assert.are.same(want, got)
    assert.is_true(m.moonwire_handler_seconds_total > 0)
    assert.is_true(m.moonwire_lua_memory_bytes > 0)
    assert.is_true(m.moonwire_received_bytes_total > 0)
    assert.is_true(m.moonwire_sent_bytes_total > 0)
  end)

  it("gives every family HELP and TYPE, and counters a _total name", function()
    local _, help, types, names = scrape(mport)
    assert.is_true(#names >= 20)
    for _, n in ipairs(names) do
      assert.is_truthy(help[n], "no HELP for " .. n)
      assert.is_truthy(types[n], "no TYPE for " .. n)
      assert.are.equal(types[n] == "counter", n:sub(-6) == "_total", n .. " is a " .. types[n])
    end
  end)

  it("does not count its own scrapes as traffic", function()
    local m1 = scrape(mport)
    local m2 = scrape(mport)
    for _, k in ipairs { "moonwire_connections_accepted_total", "moonwire_http_requests_total",
                         "moonwire_received_bytes_total", "moonwire_sent_bytes_total" } do
      assert.are.equal(m1[k], m2[k], k .. " grew with a scrape")
    end
  end)

  it("writes one JSON object per line with access events", function()
    local lines = json_lines(srv)
    local by = { http = {}, ws_open = {}, ws_close = {} }
    for _, o in ipairs(lines) do
      assert.is_truthy(o.ts:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"), o.ts)
      assert.is_truthy(({ debug = 1, info = 1, warn = 1, error = 1 })[o.level], o.level)
      assert.is_true(type(o.msg) == "string" or type(o.event) == "string")
      if by[o.event] then table.insert(by[o.event], o) end
    end
    local hello
    for _, h in ipairs(by.http) do
      if h.path == "/hello" then hello = h end
    end
    assert.is_table(hello)
    assert.are.same({ "GET", 200, 5 }, { hello.method, hello.status, hello.bytes })
    assert.is_true(type(hello.duration) == "number" and hello.duration >= 0)
    assert.are.equal(3, #by.ws_open)
    assert.are.same({ "/echo", "/echo", "/boom" },
      { by.ws_open[1].path, by.ws_open[2].path, by.ws_open[3].path })
    local codes = {}
    for _, o in ipairs(by.ws_close) do
      assert.are.equal("number", type(o.id))
      assert.is_true(type(o.duration) == "number" and o.duration >= 0)
      codes[#codes + 1] = o.code
    end
    table.sort(codes)
    assert.are.same({ 1000, 1006, 1011 }, codes)
    local traceback
    for _, o in ipairs(lines) do
      if o.level == "error" and (o.msg or ""):find("OBS boom from handler", 1, true) then
        traceback = o.msg
      end
    end
    assert.is_truthy(traceback and traceback:find("\nstack traceback:\n", 1, true),
      "handler error with its traceback in one line")
    assert.is_truthy(traceback:find("app_observability.lua:%d+: OBS boom"))
  end)
end)
