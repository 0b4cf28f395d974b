-- Test app for spec/middleware_spec.lua: three app:use middleware functions
-- in front of every websocket route, steered by the query string.
--
--   m1   ?deny=m1 refuses (401, body, headers); ?boom=m1 raises; ?sleep=S
--        waits S seconds; ?shared=1 returns one table shared by every call;
--        otherwise returns { m1 = "yes", who = "m1", both = "m1" }
--   m2   ?deny=m2 returns false (403); ?bad=m2 returns a string (not an
--        answer); otherwise { m2 = "yes", who = "m2" }
--   m3   returns nothing (goes on); on /c/:x it adds { param = x }
--
-- Every function counts its runs (GET /runs answers them as k=v lines) and
-- appends its name to req.trail. Opened connections send their ws.data as
-- sorted k=v pairs, and answer "data" with it again.

local moonwire = require "moonwire"

local app = moonwire.app {}

local runs = { m1 = 0, m2 = 0, m3 = 0, hook = 0 }
local SHARED = { shared = "yes" }

-- Plain data as sorted "k=v" pairs joined by ";".
local function dump(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do out[#out + 1] = k .. "=" .. tostring(t[k]) end
  return table.concat(out, ";")
end

local function trail(req, name)
  req.trail = (req.trail and (req.trail .. ",") or "") .. name
end

app:use(function(req)
  runs.m1 = runs.m1 + 1
  trail(req, "m1")
  local q = req.query
  if q.deny == "m1" then
    return 401, "m1 says no\n", { ["X-Denied-By"] = "m1", ["WWW-Authenticate"] = "Bearer" }
  end
  if q.boom == "m1" then
    error("middleware boom") -- MW_ERROR_LINE
  end
  if q.sleep then moonwire.sleep(tonumber(q.sleep)) end
  if q.shared then return SHARED end
  return { m1 = "yes", who = "m1", both = "m1" }
end)

app:use(function(req)
  runs.m2 = runs.m2 + 1
  trail(req, "m2")
  if req.query.deny == "m2" then return false end
  if req.query.bad == "m2" then return "a string" end
  return { m2 = "yes", who = "m2" }
end)

app:use(function(req)
  runs.m3 = runs.m3 + 1
  trail(req, "m3")
  if req.params.x then return { param = req.params.x } end
end)

local function show(ws) ws:send(dump(ws.data)) end
local function on_message(ws, msg)
  if msg == "data" then show(ws) else ws:send(msg) end
end

app:websocket("/a", {
  upgrade = function(req)
    runs.hook = runs.hook + 1
    trail(req, "hook")
    if req.query.deny == "hook" then return 403, "hook says no\n" end
    return { hook = "yes", who = "hook", trail = req.trail, name = req.query.name }
  end,
  on_open = show,
  on_message = on_message,
})

-- No upgrade hook of its own: the middleware still runs.
app:websocket("/b", { on_open = show, on_message = on_message })

-- A hook that returns nothing keeps what the middleware gave.
app:websocket("/c/:x", {
  upgrade = function(req)
    runs.hook = runs.hook + 1
    trail(req, "hook")
  end,
  on_open = show,
  on_message = on_message,
})

app:get("/runs", function(_, res) res:send(dump(runs)) end)
app:get("/shared", function(_, res) res:send(dump(SHARED)) end)

return app
