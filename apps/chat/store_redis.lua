-- Chat rooms kept in Redis (CHAT_REDIS=redis://[:PASSWORD@]HOST[:PORT]), so
-- every worker and every process behind a load balancer sees the same
-- members and history; messages travel between processes through the
-- broker (app.lua sets it to the same Redis). Each call borrows a pooled
-- connection (moonwire.redis) and waits without blocking the loop.
--
-- Keys: chat:rooms (set of names), chat:room:NAME:members (hash nick ->
-- connections), chat:room:NAME:history (list of JSON messages),
-- chat:seq (message ids). A process that dies with connections open leaves
-- their counts behind (a production app would expire them).
local redis = require "moonwire.redis"
local cjson = require "cjson"

local M = {}

local url = assert(os.getenv("CHAT_REDIS"), "CHAT_REDIS is not set")
local password, host, port = url:match("^redis://:?([^@]*)@([^:/]+):?(%d*)")
if not host then host, port = url:match("^redis://([^:/@]+):?(%d*)") end
assert(host, "CHAT_REDIS must be redis://[:PASSWORD@]HOST[:PORT], got " .. url)
local OPTS = { host = host, port = tonumber(port) or 6379, timeout = 2000,
  password = password ~= "" and password or nil }

local function key(name, what) return "chat:room:" .. name .. ":" .. what end

-- Runs fn(red) on a pooled connection; a Redis failure raises (the handler
-- then ends the connection with 1011, the upgrade hook with 500).
local function with_redis(fn)
  local red, err = redis.connect(OPTS)
  if not red then error("chat store: redis " .. tostring(err), 0) end
  local a, b = fn(red)
  red:set_keepalive()
  return a, b
end

local function check(v, err)
  if v == nil then error("chat store: redis " .. tostring(err), 0) end
  return v
end

local function sorted_keys(red, name)
  local list = check(red:hkeys(key(name, "members")))
  table.sort(list)
  return list
end

function M.room_allowed(name, max_rooms)
  return with_redis(function(red)
    return check(red:sismember("chat:rooms", name)) == 1 or check(red:scard("chat:rooms")) < max_rooms
  end)
end

function M.join(name, nick)
  return with_redis(function(red)
    red:sadd("chat:rooms", name)
    local n = check(red:hincrby(key(name, "members"), nick, 1))
    return n == 1, sorted_keys(red, name)
  end)
end

function M.leave(name, nick)
  return with_redis(function(red)
    local n = check(red:hincrby(key(name, "members"), nick, -1))
    if n > 0 then return false, sorted_keys(red, name) end
    red:hdel(key(name, "members"), nick)
    return true, sorted_keys(red, name)
  end)
end

function M.history(name)
  return with_redis(function(red)
    local list = check(red:lrange(key(name, "history"), 0, -1))
    for i, s in ipairs(list) do list[i] = cjson.decode(s) end
    return list
  end)
end

function M.add(name, msg, keep)
  return with_redis(function(red)
    msg.id = check(red:incr("chat:seq"))
    check(red:pipeline(function(p)
      p:rpush(key(name, "history"), cjson.encode(msg))
      p:ltrim(key(name, "history"), -keep, -1)
    end))
    return msg
  end)
end

function M.rooms()
  return with_redis(function(red)
    local list = {}
    for _, name in ipairs(check(red:smembers("chat:rooms"))) do
      local n = check(red:hlen(key(name, "members")))
      if n > 0 or check(red:llen(key(name, "history"))) > 0 then
        list[#list + 1] = { room = name, members = n }
      end
    end
    return list
  end)
end

return M
