-- luacheck configuration for moonwire (Lua code runs on LuaJIT 2.1).
std = "luajit"
max_line_length = 110
include_files = { "spec/**/*.lua", "lua/**/*.lua", "apps/**/*.lua", "bench/**/*.lua", "extensions/**/*.lua",
                  ".luacheckrc" }
exclude_files = { "build/**", "build-*/**", "**/node_modules/**" }

-- Specs and their helpers run under busted.
files["spec"] = { std = "+busted" }
-- Test apps run inside the server, like apps/: no busted globals there.
-- Handlers have fixed signatures (ws, msg, is_binary; req, res): an app need
-- not use every argument.
files["spec/apps"] = { std = "luajit", unused_args = false }
files["spec/clients/apps"] = { std = "luajit", unused_args = false }
files["apps"] = { unused_args = false }
files[".luacheckrc"] = { std = "min", globals = { "std", "max_line_length", "include_files",
                                                  "exclude_files", "files" } }
-- The nginx benchmark peer runs inside OpenResty.
files["bench/refs/nginx"] = { std = "ngx_lua" }
