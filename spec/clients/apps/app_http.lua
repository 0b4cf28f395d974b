-- App for the plain-HTTP tests (spec/clients/test_python_app_layer.py,
-- node/test_node_app_layer.js). Written against /tmp/api3.md only.
local moonwire = require "moonwire"

local app = moonwire.app {}

app:get("/hello", function(req, res)
  res:send("hello " .. tostring(req.query.name) .. " qs=" .. tostring(req.query_string))
end)

app:get("/users/:id", function(req, res)
  res:header("X-Method", req.method)
  res:send("user " .. tostring(req.params.id))
end)

app:post("/echo", function(req, res)
  res:header("Content-Type", req.headers["content-type"] or "application/octet-stream")
  res:header("X-Body-Length", tostring(#req.body))
  res:send(req.body)
end)

app:get("/n/:i", function(req, res)
  if req.query.sleep then moonwire.sleep(tonumber(req.query.sleep)) end
  res:send("n=" .. req.params.i)
end)

app:get("/multi", function(req, res) res:send("multi get") end)
app:post("/multi", function(req, res) res:send("multi post") end)

app:get("/custom", function(req, res)
  res:status(201)
  res:header("X-Custom", "yes")
  res:header("Content-Type", "application/json")
  res:send('{"made":true}')
end)

app:get("/error", function(req, res)
  error("http handler exploded on purpose")
end)

app:get("/nothing", function(req, res) end)

app:get("/info", function(req, res)
  res:send(table.concat({
    "method=" .. req.method, "path=" .. req.path, "addr=" .. tostring(req.remote_addr),
    "port_is_number=" .. tostring(type(req.remote_port) == "number"),
    "xtag=" .. tostring(req.headers["x-tag"]),
  }, ";"))
end)

app:websocket("/ws", {
  on_message = function(ws, msg, is_binary) ws:send(msg, is_binary) end,
})

return app
