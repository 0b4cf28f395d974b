-- Test app for plain HTTP routes and static files. Three suites drive it:
-- spec/app_http_spec.lua (busted), spec/clients/test_python_app_layer.py and
-- spec/clients/node/test_node_app_layer.js (both start it with --max-body-size 1000).
-- The static directory comes from the environment (MW_STATIC_DIR, an absolute
-- path the spec fills with files); without it no static route is added.

local moonwire = require "moonwire"

local app = moonwire.app { max_body_size = 65536 }

app:get("/hello", function(req, res)
  res:send("hello " .. tostring(req.query.name) .. " qs=" .. req.query_string)
end)

app:get("/users/:id/posts/:post", function(req, res)
  res:send("user=" .. req.params.id .. " post=" .. req.params.post)
end)

app:get("/info", function(req, res)
  res:send(table.concat({
    "method=" .. req.method, "path=" .. req.path, "addr=" .. tostring(req.remote_addr),
    "port=" .. tostring(req.remote_port), "tag=" .. tostring(req.headers["x-tag"]),
    "body=" .. #req.body,
  }, ";"))
end)

app:post("/echo", function(req, res)
  res:header("Content-Type", req.headers["content-type"] or "application/octet-stream")
  res:header("X-Body-Length", tostring(#req.body))
  res:send(req.body)
end)

-- "n=<i>" after sleeping ?sleep seconds (for pipelining).
app:get("/n/:i", function(req, res)
  if req.query.sleep then moonwire.sleep(tonumber(req.query.sleep)) end
  res:send("n=" .. req.params.i)
end)

app:get("/multi", function(_, res) res:send("multi get") end)
app:post("/multi", function(_, res) res:send("multi post") end)
app:route("PUT", "/putonly", function(req, res) res:send("put " .. req.body) end)

app:get("/custom", function(_, res)
  res:status(201)
  res:header("X-Custom", "yes")
  res:header("Content-Type", "application/json")
  res:send('{"made":true}')
end)

app:get("/status_arg", function(_, res) res:send(418, "teapot") end)

app:get("/error", function()
  error("http handler boom") -- HTTP_ERROR_LINE
end)

app:get("/nothing", function() end)

app:websocket("/ws", {
  on_message = function(ws, msg, is_binary) ws:send(msg, is_binary) end,
})

local dir = os.getenv("MW_STATIC_DIR")
if dir then app:static("/static", dir) end

return app
