-- Chat rooms kept in this worker's Lua state (moonwire.state("chat"), so
-- they survive hot reloads): the default, for one worker. See store_redis.lua
-- for rooms shared by every worker and process.
local moonwire = require "moonwire"

local M = {}

local state = moonwire.state("chat")
state.rooms = state.rooms or {}    -- name -> { nicks = {nick -> connections}, history = {} }
state.nrooms = state.nrooms or 0
state.seq = state.seq or 0         -- message ids, unique within this server process

local function members(room)
  local list = {}
  for nick in pairs(room.nicks) do list[#list + 1] = nick end
  table.sort(list)
  return list
end

function M.room_allowed(name, max_rooms)
  return state.rooms[name] ~= nil or state.nrooms < max_rooms
end

-- Returns whether nick is new in the room, and the member list.
function M.join(name, nick)
  local room = state.rooms[name]
  if not room then
    room = { nicks = {}, history = {} }
    state.rooms[name] = room
    state.nrooms = state.nrooms + 1
  end
  local first = not room.nicks[nick]
  room.nicks[nick] = (room.nicks[nick] or 0) + 1
  return first, members(room)
end

-- Returns whether nick has left the room (no connection of it is left), and
-- the member list.
function M.leave(name, nick)
  local room = state.rooms[name]
  if not (room and room.nicks[nick]) then return false, {} end
  room.nicks[nick] = room.nicks[nick] - 1
  if room.nicks[nick] > 0 then return false, members(room) end  -- still here on another tab
  room.nicks[nick] = nil
  local list = members(room)
  if #list == 0 and #room.history == 0 then
    state.rooms[name] = nil
    state.nrooms = state.nrooms - 1
  end
  return true, list
end

function M.history(name)
  local room = state.rooms[name]
  return room and room.history or {}
end

-- Gives msg its id and keeps it in the room's last `keep` messages.
function M.add(name, msg, keep)
  state.seq = state.seq + 1
  msg.id = state.seq
  local h = state.rooms[name].history
  h[#h + 1] = msg
  if #h > keep then table.remove(h, 1) end
  return msg
end

-- { {room = NAME, members = N}, ... }
function M.rooms()
  local list = {}
  for name, room in pairs(state.rooms) do list[#list + 1] = { room = name, members = #members(room) } end
  return list
end

return M
