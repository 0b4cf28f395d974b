-- Test app for spec/ext_jsonrpc_spec.lua: the moonwire.jsonrpc extension
-- (extensions/jsonrpc) on two routes. The spec makes the module findable
-- (LUA_PATH=extensions/jsonrpc/?.lua;;) and may hide lua-cjson so that the
-- extension falls back to dkjson.
--
--   /rpc       every method below, nothing else
--   /rpc_opts  the same methods plus route options that jsonrpc.route must
--              keep: an upgrade hook (token), on_open (a "hello"
--              notification), on_close, max_message_size

local moonwire = require "moonwire"
local jsonrpc = require "moonwire.jsonrpc"

local app = moonwire.app {}

local notes = {}      -- name -> how many "note" notifications arrived
local closed = 0      -- on_close runs on /rpc_opts

-- What kind of params a method got (absent params arrive as an empty table).
local function kind(p)
  if type(p) ~= "table" then return type(p) end
  if next(p) == nil then return "empty" end
  if p[1] ~= nil then return "array " .. #p end
  local keys = {}
  for k in pairs(p) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  return "object " .. table.concat(keys, ",")
end

local methods = {
  add = function(p)
    if type(p[1]) == "number" and type(p[2]) == "number" then return p[1] + p[2] end
    if type(p.a) == "number" and type(p.b) == "number" then return p.a + p.b end
    jsonrpc.invalid_params("add needs two numbers")
  end,
  echo = function(p) return p end,
  kind = function(p) return kind(p) end,
  -- The id the method was called with, and its Lua type.
  id = function(_, _, id)
    return { id = id, lua_type = id == jsonrpc.null and "null" or type(id) }
  end,
  nothing = function() end,
  fail = function()
    error("secret detail 42") -- FAIL_LINE
  end,
  fail_table = function() error({ code = 1, message = "looks like an rpc error, is not" }) end,
  custom = function(p)
    jsonrpc.error(-32001, "custom failure", { why = "because", n = p[1] })
  end,
  custom_nodata = function() jsonrpc.error(4242, "no data") end,
  bad_params = function() jsonrpc.invalid_params("need two numbers") end,
  bad_params_default = function() jsonrpc.invalid_params() end,
  sleep = function(p)
    moonwire.sleep(p[1])
    return "slept " .. p[1]
  end,
  note = function(p) notes[p[1]] = (notes[p[1]] or 0) + 1 end,
  notes = function(p) return notes[p[1]] or 0 end,
  push = function(p, ws)
    jsonrpc.notify(ws, "tick", p)
    jsonrpc.notify(ws, "tock")
    return "pushed"
  end,
  whoami = function(_, ws) return ws.data.user end,
  closed = function() return closed end,
  backend = function()
    return jsonrpc.json == package.loaded["cjson.safe"] and "cjson" or "dkjson"
  end,
  -- Results JSON cannot carry: the client must still get an answer.
  unencodable = function() return function() end end,
  infinite = function() return math.huge end,
}

app:websocket("/rpc", jsonrpc.route { methods = methods })

app:websocket("/rpc_opts", jsonrpc.route {
  methods = methods,
  max_message_size = 256,
  upgrade = function(req)
    if req.query.token ~= "t0k" then return 401, "token required\n" end
    return { user = req.query.user }
  end,
  on_open = function(ws) jsonrpc.notify(ws, "hello", { ws.data.user }) end,
  on_close = function() closed = closed + 1 end,
})

return app
