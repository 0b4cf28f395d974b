-- luacheck configuration for moonwire (Lua code runs on LuaJIT 2.1).
std = "luajit"
max_line_length = 110
include_files = { "spec/**/*.lua", "lua/**/*.lua", "apps/**/*.lua", "bench/**/*.lua", ".luacheckrc" }
exclude_files = { "build/**", "build-*/**", "**/node_modules/**" }

-- Specs and their helpers run under busted.
files["spec"] = { std = "+busted" }
-- Test apps run inside the server, like apps/: no busted globals there.
files["spec/apps"] = { std = "luajit" }
files["spec/clients/apps"] = { std = "luajit" }
files[".luacheckrc"] = { std = "min", globals = { "std", "max_line_length", "include_files",
                                                  "exclude_files", "files" } }
