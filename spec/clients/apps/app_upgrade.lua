-- App for spec/clients/test_python_app_layer.py and node/test_node_app_layer.js:
-- upgrade hooks, subprotocols, origin policy and route parameters.
-- Written against /tmp/api3.md (the application-layer API) only.
--
-- Every hook that runs logs "HOOK RAN <route> tag=<x-tag header>", so a test can
-- prove a hook did (or did not) run for its request.
local moonwire = require "moonwire"

local app = moonwire.app {}

local function note(req)
  moonwire.log.info("HOOK RAN " .. tostring(req.route) .. " tag=" .. tostring(req.headers["x-tag"]))
end

-- Sends one line describing the connection: what a test compares against.
local function describe(ws)
  local keys = {}
  for k in pairs(ws.data) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. tostring(ws.data[k]) end
  return table.concat(parts, ";")
end

local function echo(ws, msg, is_binary) ws:send(msg, is_binary) end

-- Refusals ---------------------------------------------------------------
app:websocket("/refuse401", {
  upgrade = function(req) note(req); return 401 end,
  on_open = function(ws) ws:send("should never open") end,
})

app:websocket("/refuse_body", {
  upgrade = function(req)
    note(req)
    return 429, "slow down, " .. tostring(req.query.who),
      { ["Retry-After"] = "7", ["X-Why"] = "rate-limited" }
  end,
})

app:websocket("/refuse_false", {
  upgrade = function(req) note(req); return false end,
})

-- Accept with a table: it becomes ws.data; on_open echoes it back.
app:websocket("/accept_table", {
  upgrade = function(req)
    note(req)
    return { user = req.query.user or "nobody", n = 42 }
  end,
  on_open = function(ws) ws:send(describe(ws)) end,
  on_message = function(ws, msg)
    -- ws.data is per connection and writable
    ws.data.last = msg
    ws:send(describe(ws))
  end,
})

-- Everything the hook sees, handed to the connection through ws.data.
app:websocket("/inspect/:id", {
  origins = "*",
  upgrade = function(req)
    note(req)
    return {
      method = req.method, path = req.path, route = req.route, id = req.params.id,
      q = req.query.q, qs = req.query_string, origin = req.origin,
      offered = table.concat(req.protocols or {}, ","), xtag = req.headers["x-tag"],
      addr = req.remote_addr, port_is_number = type(req.remote_port) == "number",
    }
  end,
  on_open = function(ws) ws:send(describe(ws)) end,
})

-- A hook that sleeps: other clients must be served meanwhile.
app:websocket("/slowhook", {
  upgrade = function(req)
    note(req)
    local t0 = moonwire.now()
    moonwire.sleep(0.3)
    return { slept = string.format("%.2f", moonwire.now() - t0) }
  end,
  on_open = function(ws) ws:send("slowhook open " .. ws.data.slept) end,
  on_message = echo,
})

-- Slower than a --handshake-timeout of 0.5 s: the client gets 408 meanwhile.
app:websocket("/veryslowhook", {
  upgrade = function(req)
    note(req)
    moonwire.sleep(1.2)
    moonwire.log.info("VERYSLOW WOKE")
    return { late = true }
  end,
  on_open = function(ws) ws:send("should never open") end,
})

app:websocket("/fast", { on_message = echo })

-- Hook errors ------------------------------------------------------------
app:websocket("/hookerror", {
  upgrade = function(req)
    note(req)
    error("hook exploded on purpose")
  end,
  on_open = function(ws) ws:send("should never open") end,
})

app:websocket("/badproto", {
  upgrade = function(req)
    note(req)
    req.protocol = "never-offered"
  end,
  on_open = function(ws) ws:send("should never open") end,
})

app:websocket("/respheaders", {
  upgrade = function(req)
    note(req)
    req.response_headers["X-Hello"] = "world"
    req.response_headers["X-Route"] = req.route
  end,
  on_open = function(ws) ws:send("open") end,
})

-- Subprotocols -----------------------------------------------------------
app:websocket("/proto", {
  protocols = { "chat.v2", "chat.v1" },
  on_open = function(ws) ws:send("open") end,
  on_message = echo,
})

-- The hook picks chat.v1 whenever the client offered it.
app:websocket("/proto_override", {
  protocols = { "chat.v2", "chat.v1" },
  upgrade = function(req)
    note(req)
    local preselected = tostring(req.protocol)
    for _, p in ipairs(req.protocols) do
      if p == "chat.v1" then req.protocol = "chat.v1" end
    end
    return { preselected_was = preselected }
  end,
  on_open = function(ws) ws:send(describe(ws)) end,
})

-- Origin policy ----------------------------------------------------------
app:websocket("/origin_default", {
  upgrade = function(req) note(req) end,
  on_open = function(ws) ws:send("open") end,
})

app:websocket("/origin_any", {
  origins = "*",
  upgrade = function(req) note(req) end,
  on_open = function(ws) ws:send("open") end,
})

app:websocket("/origin_list", {
  origins = { "https://a.example", "http://localhost:3000" },
  upgrade = function(req) note(req) end,
  on_open = function(ws) ws:send("open") end,
})

-- Route parameters -------------------------------------------------------
app:websocket("/chat/:room", {
  on_open = function(ws) ws:send("room=" .. tostring(ws.params.room)) end,
})

app:websocket("/a/:x/b/:y", {
  on_open = function(ws) ws:send("x=" .. tostring(ws.params.x) .. ";y=" .. tostring(ws.params.y)) end,
})

-- Defined after the parameter route on purpose: exact paths still win.
app:websocket("/chat/lobby", {
  on_open = function(ws)
    ws:send("exact lobby params=" .. tostring(ws.params and next(ws.params) or "none"))
  end,
})

return app
