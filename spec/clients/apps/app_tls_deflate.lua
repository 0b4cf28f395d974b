-- App for the TLS and permessage-deflate tests
-- (spec/clients/test_python_tls_deflate.py, node/test_node_tls_deflate.js).
--
-- Echo routes (text stays text, binary stays binary), max_message_size 16 MiB
-- unless noted:
--   /z        compression = true (defaults: threshold 64, level 1, context takeover, 15 bits)
--   /plain    no compression
--   /noctx    compression, compression_context_takeover = false
--   /w9       compression, compression_window_bits = 9, compression_level = 9
--   /t0       compression, compression_threshold = 0 (every message compressed)
--   /t1k      compression, compression_threshold = 1024
--   /small    compression, max_message_size = 1 MiB (decompression bombs)
--   /slowz    compression; every on_message sleeps 2 ms first (inbox / paused reads)
-- Pub/sub (topic "feed"): /sub (compression), /sub_noctx (compression without
--   context takeover), /sub_plain (none) subscribe in on_open; /pub publishes
--   every message it gets to "feed" (text/binary kept) and answers nothing.
-- HTTP: GET /hello -> "hello", GET /subs -> app:subscribers("feed"),
--       POST /body -> the request body.
local moonwire = require "moonwire"

local app = moonwire.app {}

local MiB = 1024 * 1024

local function echo(ws, msg, is_binary)
  ws:send(msg, is_binary)
end

local function route(opts)
  opts.on_message = opts.on_message or echo
  opts.max_message_size = opts.max_message_size or 16 * MiB
  return opts
end

app:websocket("/z", route { compression = true })
app:websocket("/plain", route {})
app:websocket("/noctx", route { compression = true, compression_context_takeover = false })
app:websocket("/w9", route { compression = true, compression_window_bits = 9, compression_level = 9 })
app:websocket("/t0", route { compression = true, compression_threshold = 0 })
app:websocket("/t1k", route { compression = true, compression_threshold = 1024 })
app:websocket("/small", route { compression = true, max_message_size = MiB })
app:websocket("/slowz", route {
  compression = true,
  on_message = function(ws, msg, is_binary)
    moonwire.sleep(0.002)
    ws:send(msg, is_binary)
  end,
})

local function subscriber(opts)
  opts.on_open = function(ws) ws:subscribe("feed") end
  opts.on_message = function() end
  return opts
end

app:websocket("/sub", subscriber { compression = true })
app:websocket("/sub_noctx", subscriber { compression = true, compression_context_takeover = false })
app:websocket("/sub_plain", subscriber {})
app:websocket("/pub", {
  compression = true,
  max_message_size = 16 * MiB,
  on_message = function(ws, msg, is_binary)
    app:publish("feed", msg, is_binary)
  end,
})

app:get("/hello", function(req, res) res:send(200, "hello") end)
app:get("/subs", function(req, res) res:send(200, tostring(app:subscribers("feed"))) end)
app:post("/body", function(req, res) res:send(200, req.body) end)

return app
