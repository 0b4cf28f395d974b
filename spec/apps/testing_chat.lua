-- Test app for spec/testing_spec.lua (moonwire.testing): a chat room with an
-- upgrade hook, middleware, pub/sub and plain HTTP routes.
--
--   app:use          ?token=bad -> 403 "bad token"; ?token=slow sleeps 1 s first;
--                    every other request gets ws.data.via = "middleware"
--   /chat/:room      upgrade: no ?name -> 401 "name required" with WWW-Authenticate;
--                    name=ghost -> false (403); else { name = ... } merged into ws.data.
--                    on_open joins "room:<room>" and announces; messages are
--                    published as "<name>: <msg>"; "/who" answers the subscriber count;
--                    on_close announces the leave and counts it in state "testing_chat"
--   /proto           protocols = { "v2", "v1" }; answers what was chosen
--   /strict          origins = { "https://good.example" }
--   GET /health      "ok";  GET /rooms/:room -> subscriber count;  POST /echo -> the body
--   GET /slow        sleeps 2 s, then answers;  GET /boom raises;  GET /nothing sends nothing
--   GET /headers     sets X-Test and a 201

local moonwire = require "moonwire"

local app = moonwire.app { max_body_size = 64 }

local state = moonwire.state("testing_chat")
state.closes = state.closes or {}

app:use(function(req)
  if req.query.token == "bad" then return 403, "bad token\n" end
  if req.query.token == "slow" then moonwire.sleep(1) end
  return { via = "middleware" }
end)

app:websocket("/chat/:room", {
  upgrade = function(req)
    if not req.query.name then
      return 401, "name required\n", { ["WWW-Authenticate"] = "Name" }
    end
    if req.query.name == "ghost" then return false end
    req.response_headers["X-Room"] = req.params.room
    return { name = req.query.name }
  end,
  on_open = function(ws)
    local topic = "room:" .. ws.params.room
    ws:subscribe(topic)
    app:publish(topic, ws.data.name .. " joined")
  end,
  on_message = function(ws, msg)
    local topic = "room:" .. ws.params.room
    if msg == "/who" then
      ws:send("who " .. app:subscribers(topic))
    elseif msg == "/leave" then
      ws:send("left " .. tostring(ws:unsubscribe(topic)) .. " " .. tostring(ws:unsubscribe(topic)))
    else
      app:publish(topic, ws.data.name .. ": " .. msg)
    end
  end,
  on_close = function(ws, code)
    state.closes[ws.data.name] = (state.closes[ws.data.name] or 0) + 1
    app:publish("room:" .. ws.params.room, ws.data.name .. " left (" .. code .. ")")
  end,
})

app:websocket("/proto", {
  protocols = { "v2", "v1" },
  upgrade = function(req)
    if req.query.pick then req.protocol = req.query.pick end
  end,
  on_open = function(ws) ws:send("hello") end,
})

app:websocket("/strict", {
  origins = { "https://good.example" },
  on_open = function(ws) ws:send("welcome") end,
})

app:get("/health", function(req, res) res:send("ok") end)

app:get("/rooms/:room", function(req, res)
  res:send(tostring(app:subscribers("room:" .. req.params.room)))
end)

app:post("/echo", function(req, res)
  res:header("Content-Type", "application/octet-stream")
  res:send(req.body)
end)

app:get("/slow", function(req, res)
  moonwire.sleep(2)
  res:send("slept until " .. moonwire.now())
end)

app:get("/boom", function() error("http boom") end)

app:get("/nothing", function() end)

app:get("/headers", function(req, res)
  res:status(201):header("X-Test", req.headers["x-in"] or "none")
  res:send("made")
end)

return app
