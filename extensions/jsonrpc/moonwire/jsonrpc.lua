--- moonwire.jsonrpc: JSON-RPC 2.0 over WebSocket for moonwire apps.
--
--   local jsonrpc = require "moonwire.jsonrpc"
--   app:websocket("/rpc", jsonrpc.route {
--     methods = {
--       add = function(params) return params[1] + params[2] end,
--       whoami = function(params, ws) return ws.data.user end,
--     },
--     on_open = function(ws) ... end,     -- any other route option passes through
--   })
--
-- A method gets (params, ws, id) and returns its result. It runs in the
-- connection's handler coroutine, so it may wait (moonwire.sleep, outbound
-- I/O) without blocking other connections. To answer with a JSON-RPC error
-- it raises jsonrpc.error(code, message [, data]); jsonrpc.invalid_params(msg)
-- is the common case. Any other error becomes -32603 "internal error" for
-- the client (no details leak) and is logged with its traceback.
--
-- Supported: requests, notifications (no id: no answer), batches (answered
-- as one array, in order, without the notifications), the standard errors
-- -32700, -32600, -32601, -32602, -32603. jsonrpc.notify(ws, method, params)
-- sends a notification to the client. The module keeps no state, so a hot
-- reload of the app swaps the methods with the rest of the app.

local moonwire = require "moonwire"

local type, pairs, ipairs, pcall, xpcall = type, pairs, ipairs, pcall, xpcall
local setmetatable, getmetatable, error, tostring = setmetatable, getmetatable, error, tostring
local traceback = debug.traceback

-- lua-cjson (Debian lua-cjson, or the rock) when present; dkjson otherwise.
local json, null, decode, encode
do
  local ok, cjson = pcall(require, "cjson.safe")
  if ok then
    json, null = cjson, cjson.null
    decode = function(s)
      local v, err = cjson.decode(s)
      return v, err
    end
    encode = cjson.encode
    cjson.encode_sparse_array(true)
  else
    local dk = require "dkjson"
    json, null = dk, dk.null
    -- Mark what was decoded, so that an object with an "n" member is not
    -- taken for an array when it is encoded again.
    local objmeta, arrmeta = { __jsontype = "object" }, { __jsontype = "array" }
    decode = function(s)
      local v, _, err = dk.decode(s, 1, dk.null, objmeta, arrmeta)
      return v, err
    end
    -- dkjson's encoder takes any table with a numeric "n" member for an
    -- array; this one follows the decoded shape (__jsontype) and otherwise
    -- the usual rule (a non-empty sequence is an array).
    local function is_array(t)
      local mt = getmetatable(t)
      if mt and mt.__jsontype then return mt.__jsontype == "array" end
      local n = #t
      if n == 0 then return false end
      local count = 0
      for _ in pairs(t) do count = count + 1 end
      return count == n
    end
    local enc
    enc = function(v, out)
      local t = type(v)
      if v == nil or v == null then
        out[#out + 1] = "null"
      elseif t == "table" then
        if is_array(v) then
          out[#out + 1] = "["
          for i = 1, #v do
            if i > 1 then out[#out + 1] = "," end
            enc(v[i], out)
          end
          out[#out + 1] = "]"
        else
          out[#out + 1] = "{"
          local first = true
          for k, x in pairs(v) do
            if type(k) ~= "string" then error("cannot encode a table with a non-string key") end
            if not first then out[#out + 1] = "," end
            first = false
            out[#out + 1] = dk.quotestring(k)
            out[#out + 1] = ":"
            enc(x, out)
          end
          out[#out + 1] = "}"
        end
      elseif t == "string" then
        out[#out + 1] = dk.quotestring(v)
      elseif t == "number" then
        if v ~= v or v == math.huge or v == -math.huge then error("cannot encode " .. tostring(v)) end
        out[#out + 1] = string.format("%.17g", v)
      elseif t == "boolean" then
        out[#out + 1] = tostring(v)
      else
        error("cannot encode a " .. t)
      end
    end
    encode = function(v)
      local out = {}
      local done, err = pcall(enc, v, out)
      if not done then return nil, err end
      return table.concat(out)
    end
  end
end

local M = { _VERSION = "scm", null = null, json = json }

local RpcError = {}
RpcError.__index = RpcError
RpcError.__tostring = function(e) return "JSON-RPC error " .. e.code .. ": " .. e.message end

--- An error a method raises to answer the call with it.
function M.error(code, message, data)
  if type(code) ~= "number" or type(message) ~= "string" then
    error("jsonrpc.error(code, message [, data]): code must be a number, message a string", 2)
  end
  error(setmetatable({ code = code, message = message, data = data }, RpcError), 2)
end

function M.invalid_params(message)
  error(setmetatable({ code = -32602, message = message or "invalid params" }, RpcError), 2)
end

local function err_obj(code, message, data)
  return { code = code, message = message, data = data }
end

local function response(id, result, err)
  if err then return { jsonrpc = "2.0", id = id == nil and null or id, error = err } end
  if result == nil then result = null end
  return { jsonrpc = "2.0", id = id, result = result }
end

local function valid_id(id)
  local t = type(id)
  return id == nil or id == null or t == "string" or t == "number"
end

-- Calls one request object; returns a response table, or nil for a
-- notification.
local function call_one(methods, req, ws)
  if type(req) ~= "table" or req.jsonrpc ~= "2.0" or type(req.method) ~= "string"
    or not valid_id(req.id) or (req.params ~= nil and type(req.params) ~= "table") then
    return response(type(req) == "table" and valid_id(req.id) and req.id or nil, nil,
      err_obj(-32600, "invalid request"))
  end
  local id, notification = req.id, req.id == nil
  local fn = methods[req.method]
  if type(fn) ~= "function" then
    if notification then return nil end
    return response(id, nil, err_obj(-32601, "method not found", req.method))
  end
  local ok, result = xpcall(fn, function(e)
    if getmetatable(e) == RpcError then return e end
    return { internal = true, trace = traceback(tostring(e), 2) }
  end, req.params or {}, ws, id)
  if ok then
    if notification then return nil end
    return response(id, result)
  end
  if result.internal then
    moonwire.log.error("jsonrpc method '" .. req.method .. "' failed: " .. result.trace)
    if notification then return nil end
    return response(id, nil, err_obj(-32603, "internal error"))
  end
  if notification then return nil end
  return response(id, nil, err_obj(result.code, result.message, result.data))
end

local floor, abs, format = math.floor, math.abs, string.format

-- Encodes one response. Integer ids are written exactly (the JSON
-- libraries print numbers with 14 significant digits); a result that
-- cannot be encoded (a function, infinity) becomes -32603, logged.
local function encode_response(resp)
  local id = resp.id
  local exact = type(id) == "number" and id == floor(id) and abs(id) < 2 ^ 53
  if exact then resp.id = "\0mwid\0" end
  local out, err = encode(resp)
  if not out then
    moonwire.log.error("jsonrpc: cannot encode the answer to id " .. tostring(id) .. ": "
      .. tostring(err))
    resp = response(resp.id, nil, err_obj(-32603, "internal error"))
    out = encode(resp)
  end
  if exact then out = out:gsub('"\\u0000mwid\\u0000"', format("%d", id), 1) end
  return out
end

--- Handles one WebSocket message as JSON-RPC; returns the text to send
-- back, or nil when nothing is to be sent (notifications only).
function M.handle(methods, msg, ws)
  local req, perr = decode(msg)
  if req == nil and perr then
    return encode_response(response(nil, nil, err_obj(-32700, "parse error")))
  end
  if type(req) == "table" and req[1] ~= nil and req.jsonrpc == nil then
    local out = {}
    for _, r in ipairs(req) do
      local resp = call_one(methods, r, ws)
      if resp then out[#out + 1] = encode_response(resp) end
    end
    if #out == 0 then return nil end
    return "[" .. table.concat(out, ",") .. "]"
  end
  if type(req) == "table" and next(req) == nil then
    -- [] and {} are both invalid: an empty batch, an empty request.
    return encode_response(response(nil, nil, err_obj(-32600, "invalid request")))
  end
  local resp = call_one(methods, req, ws)
  return resp and encode_response(resp) or nil
end

--- Sends a notification (a call without id) to the client.
function M.notify(ws, method, params)
  if type(method) ~= "string" then error("jsonrpc.notify(ws, method, params): method must be a string", 2) end
  return ws:send(encode({ jsonrpc = "2.0", method = method, params = params }))
end

--- Builds a websocket route table that speaks JSON-RPC: opts.methods maps
-- names to functions; every other field of opts (on_open, on_close,
-- upgrade, limits...) is kept. on_message is the extension's.
function M.route(opts)
  if type(opts) ~= "table" or type(opts.methods) ~= "table" then
    error("jsonrpc.route{ methods = { name = function(params, ws, id) ... end } }", 2)
  end
  local methods = opts.methods
  local route = {}
  for k, v in pairs(opts) do
    if k ~= "methods" then route[k] = v end
  end
  if route.on_message then
    error("jsonrpc.route: on_message is the extension's; put your calls in methods", 2)
  end
  route.on_message = function(ws, msg)
    local out = M.handle(methods, msg, ws)
    if out then ws:send(out) end
  end
  return route
end

return M
