-- Test app for the upgrade hook, subprotocols, the origin policy and route
-- parameters. Three suites drive it: spec/app_upgrade_spec.lua (busted, raw
-- client), spec/clients/test_python_app_layer.py (python3-websockets, raw
-- sockets) and spec/clients/node/test_node_app_layer.js (Node's ws).
--
-- Every hook counts its runs per route (hook_runs[route]) and logs
-- "HOOK RAN <route> tag=<X-Tag header>": GET /hook_runs?route=R answers the
-- count, the log line names the request, so a test can prove that a hook did
-- (or did not) run. Routes whose connections open send one text line describing
-- what they got (a Lua table literal where noted), so a test reads the result
-- from the wire. Routes that must never open log "MUST NOT OPEN <path>" if they do.

local moonwire = require "moonwire"

local app = moonwire.app {}

local hook_runs = {}   -- route pattern -> number of hook runs

local function count(req)
  hook_runs[req.route] = (hook_runs[req.route] or 0) + 1
  moonwire.log.info("HOOK RAN " .. tostring(req.route) .. " tag=" .. tostring(req.headers["x-tag"]))
end

local function must_not_open(ws)
  moonwire.log.info("MUST NOT OPEN " .. ws.path)
  ws:send("must not open")
end

-- Serializes plain data as a Lua literal with sorted keys (the spec loads it back).
local function dump(v)
  local t = type(v)
  if t == "string" then return string.format("%q", v) end
  if t ~= "table" then return tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local out = {}
  for _, k in ipairs(keys) do out[#out + 1] = "[" .. dump(k) .. "]=" .. dump(v[k]) end
  return "{" .. table.concat(out, ",") .. "}"
end

local function echo(ws, msg, is_binary) ws:send(msg, is_binary) end

app:get("/hook_runs", function(req, res)
  res:send(tostring(hook_runs[req.query.route] or 0))
end)

-- Refusals ------------------------------------------------------------------
app:websocket("/refuse_status", {
  upgrade = function(req) count(req); return 401 end,
  on_open = must_not_open,
})

app:websocket("/refuse_full", {
  upgrade = function(req)
    count(req)
    return 429, "slow down " .. tostring(req.query.who) .. "\n",
      { ["Retry-After"] = "7", ["X-Why"] = "rate limited" }
  end,
  on_open = must_not_open,
})

app:websocket("/refuse_false", {
  upgrade = function(req) count(req); return false end,
  on_open = must_not_open,
})

app:websocket("/accept_true", {
  upgrade = function(req) count(req); return true end,
  on_open = function(ws) ws:send("open") end,
})

app:websocket("/accept_nil", {
  upgrade = function(req) count(req) end,
  on_open = function(ws) ws:send("open") end,
})

-- The table becomes ws.data (the same table, writable).
app:websocket("/accept_table", {
  upgrade = function(req)
    count(req)
    return { user = req.query.user, n = 42 }
  end,
  on_open = function(ws) ws:send(dump(ws.data)) end,
  on_message = function(ws, msg)
    ws.data.last = msg
    ws:send(dump(ws.data))
  end,
})

-- What the hook sees, handed over through ws.data. Any origin, so a test can
-- send one and read it back.
app:websocket("/inspect/:id", {
  origins = "*",
  upgrade = function(req)
    count(req)
    return {
      method = req.method, path = req.path, route = req.route, params = req.params,
      query = req.query, query_string = req.query_string, origin = req.origin or "none",
      protocols = req.protocols, xtag = req.headers["x-tag"], remote_addr = req.remote_addr,
      remote_port = req.remote_port,
    }
  end,
  on_open = function(ws) ws:send(dump(ws.data)) end,
})

-- Hooks that wait ------------------------------------------------------------
app:websocket("/slow_hook", {
  upgrade = function(req)
    count(req)
    local t0 = moonwire.now()
    moonwire.sleep(tonumber(req.query.sleep or "0.5"))
    return { slept = moonwire.now() - t0 }
  end,
  on_open = function(ws) ws:send(string.format("open after %.2f", ws.data.slept)) end,
  on_message = echo,
})

-- Slower than the --handshake-timeout the spec sets (0.5 s).
app:websocket("/very_slow_hook", {
  upgrade = function(req)
    count(req)
    moonwire.sleep(1.2)
    moonwire.log.info("VERY SLOW HOOK WOKE")
    return { late = true }
  end,
  on_open = function() moonwire.log.info("VERY SLOW HOOK OPENED") end,
})

app:websocket("/fast", { on_message = echo })

-- Hook failures ----------------------------------------------------------------
app:websocket("/hook_error", {
  upgrade = function(req)
    count(req)
    error("upgrade hook boom") -- HOOK_ERROR_LINE
  end,
  on_open = must_not_open,
})

app:websocket("/bad_protocol", {
  upgrade = function(req)
    count(req)
    req.protocol = "never.offered"
  end,
  on_open = must_not_open,
})

app:websocket("/response_headers", {
  upgrade = function(req)
    count(req)
    req.response_headers["X-Hello"] = "world"
    req.response_headers["X-Route"] = req.route
  end,
  on_open = function(ws) ws:send("open") end,
})

-- Subprotocols ---------------------------------------------------------------------
app:websocket("/proto", {
  protocols = { "chat.v2", "chat.v1" },
  on_open = function(ws) ws:send("open") end,
  on_message = echo,
})

-- The hook picks chat.v1 whenever it was offered, and reports the route's pick.
app:websocket("/proto_hook", {
  protocols = { "chat.v2", "chat.v1" },
  upgrade = function(req)
    count(req)
    local preselected = tostring(req.protocol)
    for _, p in ipairs(req.protocols) do
      if p == "chat.v1" then req.protocol = "chat.v1" end
    end
    return { preselected = preselected }
  end,
  on_open = function(ws) ws:send("preselected=" .. ws.data.preselected) end,
})

-- Origin policy --------------------------------------------------------------------
app:websocket("/origin_default", {
  upgrade = function(req) count(req) end,
  on_open = function(ws) ws:send("open") end,
})

app:websocket("/origin_any", {
  origins = "*",
  upgrade = function(req) count(req) end,
  on_open = function(ws) ws:send("open") end,
})

app:websocket("/origin_list", {
  origins = { "https://a.example", "http://localhost:3000" },
  upgrade = function(req) count(req) end,
  on_open = function(ws) ws:send("open") end,
})

-- Route parameters -------------------------------------------------------------------
app:websocket("/room/:name", {
  on_open = function(ws) ws:send("param " .. dump(ws.params)) end,
})

app:websocket("/a/:x/b/:y", {
  on_open = function(ws) ws:send("param " .. dump(ws.params)) end,
})

-- Defined after the parameter route on purpose: the exact path still wins.
app:websocket("/room/lobby", {
  on_open = function(ws) ws:send("exact " .. dump(ws.params or {})) end,
})

return app
