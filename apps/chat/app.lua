-- Chat: rooms over pub/sub, a nickname from the upgrade request, join and
-- leave notices, the member list of each room (presence) and its last 50
-- messages (history), and the browser page that uses them (public/).
--
-- Protocol (JSON text messages) on ws://HOST/chat/ROOM?nick=NICK:
--   server -> client
--     {"type":"welcome","server":ID,"room":R,"nick":N,"members":[...],"history":[msg...],
--      "limits":{"text":500,"nick":20}}
--     {"type":"message","id":SEQ,"server":ID,"nick":N,"text":T,"ts":SECONDS}
--     {"type":"join"|"leave","nick":N,"ts":SECONDS,"members":[...]}
--     {"type":"error","error":REASON}
--   client -> server
--     {"type":"message","text":T}
-- Rooms, members and history live in this worker's Lua state
-- (store_local.lua, kept across hot reloads) or, with
-- CHAT_REDIS=redis://HOST:PORT in the environment, in Redis (store_redis.lua),
-- with messages published through the broker on the same Redis: then any
-- number of workers and processes serve the same rooms.
local moonwire = require "moonwire"
local cjson = require "cjson"

local REDIS = os.getenv("CHAT_REDIS")
local store = require(REDIS and "store_redis" or "store_local")

local HISTORY = 50                 -- messages kept per room
local MAX_TEXT = 500               -- characters per message
local MAX_NICK = 20
local MAX_ROOMS = 1000
local NICK_CHARS = "^[%w_%.%-]+$"  -- ASCII letters, digits, '_', '.', '-'
local ROOM_CHARS = "^[%w_%-]+$"

local state = moonwire.state("chat")
if not state.server then           -- tells a client whether the server restarted
  local f = io.open("/dev/urandom", "rb")
  local raw = f and f:read(6) or tostring(os.time())
  if f then f:close() end
  state.server = raw:gsub(".", function(c) return ("%02x"):format(c:byte()) end)
end

local app = moonwire.app { broker = REDIS }

local function utf8_len(s)
  return select(2, s:gsub("[^\128-\191]", ""))
end

local function topic(room) return "room:" .. room end

local function send(ws, msg) ws:send(cjson.encode(msg)) end

local function refuse(why) return 400, why .. "\n", { ["Content-Type"] = "text/plain; charset=utf-8" } end

app:websocket("/chat/:room", {
  max_message_size = 8 * 1024,     -- a 500-character message, JSON-escaped, fits easily
  compression = true,              -- browsers offer permessage-deflate
  upgrade = function(req)
    local nick, room = req.query.nick, req.params.room
    if type(nick) ~= "string" or nick == "" then return refuse("nick required") end
    if #nick > MAX_NICK or not nick:find(NICK_CHARS) then
      return refuse(("nick must be 1-%d characters: letters, digits, '_', '.' or '-'"):format(MAX_NICK))
    end
    if #room > 32 or not room:find(ROOM_CHARS) then
      return refuse("room must be 1-32 characters: letters, digits, '_' or '-'")
    end
    if not store.room_allowed(room, MAX_ROOMS) then return 503, "too many rooms\n" end
    return { nick = nick, room = room }
  end,

  on_open = function(ws)
    local name, nick = ws.data.room, ws.data.nick
    local first, list = store.join(name, nick)
    ws.data.joined = true
    -- Notify the others before subscribing: the newcomer learns everything from its welcome.
    if first then
      app:publish(topic(name), cjson.encode { type = "join", nick = nick, ts = os.time(), members = list })
    end
    ws:subscribe(topic(name))
    send(ws, { type = "welcome", server = state.server, room = name, nick = nick,
      members = list, history = store.history(name), limits = { text = MAX_TEXT, nick = MAX_NICK } })
  end,

  on_message = function(ws, data, is_binary)
    if is_binary then return send(ws, { type = "error", error = "binary messages are not accepted" }) end
    local ok, msg = pcall(cjson.decode, data)
    if not ok or type(msg) ~= "table" or msg.type ~= "message" then
      return send(ws, { type = "error", error = 'expected {"type":"message","text":"..."}' })
    end
    local text = type(msg.text) == "string" and msg.text:match("^%s*(.-)%s*$") or ""
    if text == "" then return send(ws, { type = "error", error = "empty message" }) end
    if utf8_len(text) > MAX_TEXT then
      return send(ws, { type = "error",
        error = ("message too long (at most %d characters)"):format(MAX_TEXT) })
    end
    local out = store.add(ws.data.room, { type = "message", server = state.server,
      nick = ws.data.nick, text = text, ts = os.time() }, HISTORY)
    app:publish(topic(ws.data.room), cjson.encode(out))
  end,

  on_close = function(ws)
    local name, nick = ws.data.room, ws.data.nick
    if not ws.data.joined then return end
    ws.data.joined = nil
    local left, list = store.leave(name, nick)
    if left and #list > 0 then
      app:publish(topic(name), cjson.encode { type = "leave", nick = nick, ts = os.time(), members = list })
    end
  end,
})

-- The rooms and how many are in each, for the page's room picker.
app:get("/api/rooms", function(_, res)
  local list = store.rooms()
  table.sort(list, function(a, b)
    return a.members > b.members or (a.members == b.members and a.room < b.room)
  end)
  res:header("Content-Type", "application/json")
  res:send(200, #list == 0 and "[]" or cjson.encode(list))
end)

app:get("/health", function(_, res) res:send(200, "ok\n") end)
app:static("/", "public")

return app
