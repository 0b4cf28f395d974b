-- Dashboard: a timer takes one sample twice a second and publishes it to the
-- "metrics" topic; every browser on the page (public/) gets the same sample,
-- with the same sequence number, and draws it on a live chart.
--
-- Protocol (JSON text messages) on ws://HOST/live, server -> client only:
--   {"type":"hello","server":ID,"interval":0.5,"history":[sample...]}   on connect
--   {"type":"sample","seq":N,"ts":MS,"rps":..,"latency":..,"load":..,"rss_mb":..,"lua_kb":..,"viewers":..}
-- rps and latency are simulated; load (1-minute load average), rss_mb (this
-- process's resident memory), lua_kb (Lua heap) and viewers (subscribers of
-- "metrics") are real. The sequence and the last samples live in
-- moonwire.state("dashboard"), so they go on across hot reloads.
local moonwire = require "moonwire"
local cjson = require "cjson"

local INTERVAL = 0.5   -- seconds between samples
local KEEP = 120       -- samples sent to a new page (one minute)
local TOPIC = "metrics"

local state = moonwire.state("dashboard")
state.seq = state.seq or 0
state.history = state.history or {}
state.rps = state.rps or 1200        -- random walks for the simulated metrics
state.latency = state.latency or 18
if not state.server then
  local f = io.open("/dev/urandom", "rb")
  local raw = f and f:read(6) or tostring(os.time())
  if f then f:close() end
  state.server = raw:gsub(".", function(c) return ("%02x"):format(c:byte()) end)
end

local app = moonwire.app {}

local function read_number(path, pattern)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("*l")
  f:close()
  return tonumber(s and s:match(pattern))
end

local PAGE_KB = 4  -- /proc/self/statm counts pages; 4 KiB on the machines we run on

local function round(x, digits)
  local m = 10 ^ (digits or 0)
  return math.floor(x * m + 0.5) / m
end

-- A random walk pulled back towards `mid`, kept within [lo, hi].
local function walk(x, mid, step, lo, hi)
  x = x + (math.random() - 0.5) * 2 * step + (mid - x) * 0.05
  return math.max(lo, math.min(hi, x))
end

local function sample()
  state.seq = state.seq + 1
  state.rps = walk(state.rps, 1200 + 400 * math.sin(state.seq / 40), 90, 50, 5000)
  state.latency = walk(state.latency, 12 + state.rps / 150, 2.5, 1, 500)
  local rss_pages = read_number("/proc/self/statm", "^%d+%s+(%d+)")
  return {
    type = "sample",
    seq = state.seq,
    ts = math.floor(moonwire.now() * 1000),
    rps = round(state.rps),
    latency = round(state.latency, 1),
    load = read_number("/proc/loadavg", "^(%S+)"),
    rss_mb = rss_pages and round(rss_pages * PAGE_KB / 1024, 1),
    lua_kb = round(collectgarbage("count")),
    viewers = app:subscribers(TOPIC),
  }
end

-- Timers run in every worker (--workers): one of them samples, and the
-- topic carries each sample to the viewers on all of them. (History for a
-- new page is kept by that worker; pages on others start with live data.)
if moonwire.worker == 1 then
  app:every(INTERVAL, function()
    local s = sample()
    local h = state.history
    h[#h + 1] = s
    if #h > KEEP then table.remove(h, 1) end
    app:publish(TOPIC, cjson.encode(s))
  end)
end

app:websocket("/live", {
  compression = true,
  slow_consumer = "drop",            -- a stalled tab misses samples instead of holding memory
  on_open = function(ws)
    ws:subscribe(TOPIC)
    ws:send(cjson.encode { type = "hello", server = state.server, interval = INTERVAL,
      history = #state.history > 0 and state.history or nil })
  end,
  -- The page only listens; anything it sends is ignored.
})

app:get("/health", function(_, res) res:send(200, "ok\n") end)
app:static("/", "public")

return app
