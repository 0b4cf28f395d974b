-- Echo and broadcast handlers for nginx + lua-resty-websocket (Debian's
-- lua-nginx-websocket, module nginx.websocket.server). One worker process, so
-- the subscriber list below is shared by every request: each subscriber has a
-- queue and a semaphore; the publisher appends to every queue and posts, and
-- each subscriber's own handler writes its queue out. A second light thread
-- per subscriber reads, to answer pings and notice the close.
local server = require "nginx.websocket.server"
local semaphore = require "ngx.semaphore"

local M = {}
local subs = {} -- subscriber -> true

local function open()
  local wb, err = server:new { timeout = 3600000, max_payload_len = 16 * 1024 * 1024 }
  if not wb then
    ngx.log(ngx.ERR, "websocket: ", err)
    return ngx.exit(400)
  end
  return wb
end

function M.echo()
  local wb = open()
  while true do
    local data, typ = wb:recv_frame()
    if not data then return ngx.exit(444) end
    if typ == "text" then
      wb:send_text(data)
    elseif typ == "binary" then
      wb:send_binary(data)
    elseif typ == "ping" then
      wb:send_pong(data)
    elseif typ == "close" then
      wb:send_close()
      return ngx.exit(ngx.OK)
    end
  end
end

function M.sub()
  local wb = open()
  local me = { q = {}, n = 0, sema = semaphore.new(), closed = false }
  subs[me] = true
  local reader = ngx.thread.spawn(function()
    while true do
      local data, typ = wb:recv_frame()
      if not data or typ == "close" then break end
      if typ == "ping" then me.q[#me.q + 1] = { "pong", data }; me.sema:post(1) end
    end
    me.closed = true
    me.sema:post(1)
  end)
  while not me.closed do
    me.sema:wait(3600)
    local q = me.q
    me.q = {}
    for i = 1, #q do
      local m = q[i]
      local ok
      if m[1] == "text" then ok = wb:send_text(m[2])
      elseif m[1] == "binary" then ok = wb:send_binary(m[2])
      else ok = wb:send_pong(m[2]) end
      if not ok then me.closed = true break end
    end
  end
  subs[me] = nil
  ngx.thread.kill(reader)
  return ngx.exit(444)
end

function M.pub()
  local wb = open()
  while true do
    local data, typ = wb:recv_frame()
    if not data or typ == "close" then return ngx.exit(444) end
    if typ == "text" or typ == "binary" then
      local m = { typ, data }
      for s in pairs(subs) do
        local q = s.q
        q[#q + 1] = m
        if #q == 1 then s.sema:post(1) end
      end
    elseif typ == "ping" then
      wb:send_pong(data)
    end
  end
end

return M
