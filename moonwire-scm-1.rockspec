-- LuaRocks package for moonwire: `luarocks make` (also with --local or
-- --tree DIR) builds the server with CMake and installs the `moonwire`
-- executable and the `moonwire` Lua modules into the tree. Offline: the
-- build needs Debian's -dev packages (scripts/install-deps.sh build).
rockspec_format = "3.0"
package = "moonwire"
version = "scm-1"
source = {
  url = "git+file:///moonwire", -- `luarocks make` builds the checkout it runs in
}
description = {
  summary = "A Lua-scriptable realtime (WebSocket) application server written in C",
  detailed = [[
    A libev core does the per-byte work (HTTP/1.1 upgrade, RFC 6455 framing,
    TLS, permessage-deflate, write queues, heartbeats); apps are Lua scripts
    with per-route on_open / on_message / on_close handlers on LuaJIT
    coroutines, hot-reloaded without dropping connections.
  ]],
  license = "MIT",
  labels = { "websocket", "server", "realtime", "libev", "luajit" },
}
dependencies = {
  "lua >= 5.1, < 5.2",
}
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "RelWithDebInfo",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    -- Where the rock's Lua modules go (LuaRocks deploys them into the
    -- tree's share/lua/5.1, beside which the installed binary looks).
    MW_LUADIR = "$(LUADIR)",
    MW_BUILD_TESTS = "OFF",
  },
}
