-- LuaRocks package for moonwire.jsonrpc, JSON-RPC 2.0 over WebSocket for
-- moonwire apps. Pure Lua: `luarocks make` in this directory installs it.
-- It uses lua-cjson when present (Debian's lua-cjson or the rock) and
-- falls back to dkjson (Debian's lua-dkjson), so it declares neither.
rockspec_format = "3.0"
package = "moonwire-jsonrpc"
version = "scm-1"
source = {
  url = "git+file:///moonwire", -- `luarocks make` builds the checkout it runs in
}
description = {
  summary = "JSON-RPC 2.0 over WebSocket for moonwire apps",
  license = "MIT",
  labels = { "moonwire", "jsonrpc", "websocket" },
}
dependencies = {
  "lua >= 5.1, < 5.2",
}
build = {
  type = "builtin",
  modules = {
    ["moonwire.jsonrpc"] = "moonwire/jsonrpc.lua",
  },
}
