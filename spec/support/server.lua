-- Starts and stops real moonwire processes for the integration specs.
--
-- Each server runs as a child process (fork + exec through luaposix) listening on
-- an ephemeral port (`--listen 127.0.0.1:0`); its stderr goes to a temp file, so the
-- log can be read at any time without a pipe that could fill up and block the server.
-- Every started process is remembered and killed by `stop_all()` (call it from
-- `after_each`) and, as a last resort, when the Lua state closes.

local unistd = require "posix.unistd"
local fcntl = require "posix.fcntl"
local wait = require "posix.sys.wait"
local signal = require "posix.signal"
local stdlib = require "posix.stdlib"
local socket = require "socket"

local M = {}

M.bin = os.getenv("MOONWIRE_BIN") or "/work/main/build/moonwire"
M.root = os.getenv("MOONWIRE_ROOT") or "."

local live = {}         -- pid -> server object, for cleanup
local unfinished = {}   -- servers whose temp log files stop() has not removed yet
local sanitizer_reports = {}  -- sanitizer errors found in the logs of stopped servers

-- AddressSanitizer and UndefinedBehaviorSanitizer reports (MW_SANITIZE=ON builds).
local SANITIZER_PATTERNS = { "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error: " }

-- Absolute path of a file under the repo root ("spec/apps/probe.lua").
function M.path(rel)
  if rel:sub(1, 1) == "/" then return rel end
  return M.root .. "/" .. rel
end

function M.sleep(seconds)
  socket.sleep(seconds)
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end
M.read_file = read_file

-- Polls `fn` every `step` seconds until it returns a truthy value or `timeout`
-- passes; returns that value, or nil after the deadline.
function M.poll(timeout, fn, step)
  local deadline = socket.gettime() + timeout
  while true do
    local v = fn()
    if v then return v end
    if socket.gettime() >= deadline then return nil end
    socket.sleep(step or 0.02)
  end
end

-- Forks and execs `argv` (argv[1] is the program) with stdout and stderr sent to
-- the given files and `env` (table name -> value) added to the environment.
local function spawn(argv, env, out_path, err_path)
  local pid, err = unistd.fork()
  assert(pid, err)
  if pid == 0 then
    local flags = fcntl.O_WRONLY + fcntl.O_CREAT + fcntl.O_TRUNC
    local out = fcntl.open(out_path, flags, 420)
    local errfd = fcntl.open(err_path, flags, 420)
    if out and errfd then
      unistd.dup2(out, 1)
      unistd.dup2(errfd, 2)
      local devnull = fcntl.open("/dev/null", fcntl.O_RDONLY)
      if devnull then unistd.dup2(devnull, 0) end
      for k, v in pairs(env or {}) do stdlib.setenv(k, v) end
      local args = { [0] = argv[1] }
      for i = 2, #argv do args[i - 1] = argv[i] end
      unistd.execp(argv[1], args)
    end
    unistd._exit(127)
  end
  return pid
end

-- Non-blocking reap: returns (how, code) once the child exited, nil while it runs.
local function try_reap(pid)
  local p, how, code = wait.wait(pid, wait.WNOHANG)
  if p == pid then return how, code end
  if p == nil then return "gone", -1 end   -- already reaped (ECHILD)
  return nil
end

-- Waits up to `timeout` for the child to exit; returns (how, code) or nil.
local function reap_within(pid, timeout)
  local how, code
  M.poll(timeout, function()
    how, code = try_reap(pid)
    return how
  end, 0.01)
  return how, code
end

local Server = {}
Server.__index = Server

-- All stderr output so far.
function Server:log()
  return self.final_log or read_file(self.err_path)
end

function Server:stdout()
  return read_file(self.out_path)
end

-- True while the process runs (reaps it if it has exited).
function Server:alive()
  if self.status then return false end
  local how, code = try_reap(self.pid)
  if how then
    self.status = { how = how, code = code }
    live[self.pid] = nil
    return false
  end
  return true
end

-- Waits until the log matches `pattern` (a Lua pattern); returns the capture(s) or nil.
function Server:wait_log(pattern, timeout)
  local caps
  M.poll(timeout or 3, function()
    caps = { self:log():match(pattern) }
    return caps[1] ~= nil
  end)
  return unpack(caps)
end

-- Resident memory of the server in KiB (Linux /proc), or nil.
function Server:rss_kb()
  local status = read_file("/proc/" .. self.pid .. "/status")
  return tonumber(status:match("VmRSS:%s*(%d+)"))
end

-- SIGTERM, wait up to `timeout` (default 3 s), then SIGKILL. Returns how the process
-- ended ("exited" or "killed") and its code or signal, plus whether SIGKILL was needed.
function Server:stop(timeout)
  if not self.status then
    local how, code = try_reap(self.pid)
    local forced = false
    if not how then
      signal.kill(self.pid, signal.SIGTERM)
      how, code = reap_within(self.pid, timeout or 3)
      if not how then
        forced = true
        signal.kill(self.pid, signal.SIGKILL)
        how, code = reap_within(self.pid, 5)
      end
    end
    self.status = { how = how, code = code, forced = forced }
    live[self.pid] = nil
  end
  if not self.final_log then
    unfinished[self] = nil
    self.final_log = read_file(self.err_path)
    for _, pat in ipairs(SANITIZER_PATTERNS) do
      local at = self.final_log:find(pat, 1, true)
      if at then
        sanitizer_reports[#sanitizer_reports + 1] = table.concat(self.argv, " ") .. "\n"
          .. self.final_log:sub(math.max(1, at - 200), at + 3000)
        break
      end
    end
    os.remove(self.out_path)
    os.remove(self.err_path)
  end
  return self.status.how, self.status.code, self.status.forced
end

local function build_argv(app, flags, listen)
  local argv = { M.bin, M.path(app) }
  if listen then
    argv[#argv + 1] = "--listen"
    argv[#argv + 1] = listen
  end
  -- Stop at once on SIGTERM unless a spec asks for a graceful shutdown (its
  -- own --shutdown-timeout comes later and wins).
  argv[#argv + 1] = "--shutdown-timeout"
  argv[#argv + 1] = "0"
  for _, f in ipairs(flags or {}) do argv[#argv + 1] = tostring(f) end
  return argv
end

-- A port that is free right now (bound and released), for servers that do not
-- announce their address (e.g. at --log-level warn).
function M.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function can_connect(host, port)
  local s = socket.tcp()
  s:settimeout(0.2)
  local ok = s:connect(host, port)
  s:close()
  return ok
end

-- Starts `moonwire APP --listen 127.0.0.1:0 FLAGS...`.
-- opts: flags (list), env (table), listen (default "127.0.0.1:0"), timeout (default 5),
-- announce (default true; false: listen on a free port chosen here and wait until it
-- accepts, for servers whose log level hides the `listening on` line).
-- Returns a server object; raises (with the log) when the server does not announce
-- `listening on HOST:PORT` in time.
function M.start(app, opts)
  opts = opts or {}
  local out_path, err_path = os.tmpname(), os.tmpname()
  local fixed_port
  if opts.announce == false then fixed_port = M.free_port() end
  local listen = opts.listen or (fixed_port and ("127.0.0.1:" .. fixed_port)) or "127.0.0.1:0"
  local argv = build_argv(app, opts.flags, listen)
  local pid = spawn(argv, opts.env, out_path, err_path)
  local srv = setmetatable({ pid = pid, out_path = out_path, err_path = err_path,
                             argv = argv, app = M.path(app) }, Server)
  live[pid] = srv
  unfinished[srv] = true
  local host, port
  M.poll(opts.timeout or 5, function()
    if fixed_port then
      if can_connect("127.0.0.1", fixed_port) then host, port = "127.0.0.1", fixed_port end
    else
      host, port = srv:log():match("listening on ([%d%.]+):(%d+)")
    end
    return host or not srv:alive()
  end, 0.01)
  if not host then
    local log = srv:log()
    srv:stop(1)
    error(("moonwire did not start (%s): %s\nlog:\n%s"):format(table.concat(argv, " "),
      srv.status and (srv.status.how .. " " .. tostring(srv.status.code)) or "timeout", log), 2)
  end
  srv.host, srv.port = host, tonumber(port)
  return srv
end

-- Starts another program (an upstream a spec talks to through the server:
-- redis-server, a Python server) with its output in temp files; stop_all()
-- stops it like a server. opts: env, timeout (default 5), ready = a function
-- (proc) -> truthy polled until the program is ready (default: its stdout
-- or stderr says "listening on PORT", which sets proc.port). Raises with the
-- program's output if it does not get ready in time.
function M.spawn(argv, opts)
  opts = opts or {}
  local out_path, err_path = os.tmpname(), os.tmpname()
  local pid = spawn(argv, opts.env, out_path, err_path)
  local proc = setmetatable({ pid = pid, out_path = out_path, err_path = err_path,
                              argv = argv }, Server)
  live[pid] = proc
  unfinished[proc] = true
  local ready = opts.ready or function(p)
    p.port = tonumber((p:stdout() .. p:log()):match("listening on (%d+)"))
    return p.port
  end
  if not M.poll(opts.timeout or 5, function() return ready(proc) or not proc:alive() end, 0.02)
      or not proc:alive() then
    local out = proc:stdout() .. proc:log()
    proc:stop(1)
    error(("%s did not start:\n%s"):format(table.concat(argv, " "), out), 2)
  end
  return proc
end

-- Runs moonwire with the raw argument list `args` (no --listen added) and waits up to
-- `timeout` seconds (default 5) for it to exit. For CLI tests that expect the process
-- to exit by itself. Returns { code = exit code or nil, how = "exited"/"killed"/nil
-- (still running: it was killed), stdout = ..., stderr = ... }.
function M.run(args, opts)
  opts = opts or {}
  local out_path, err_path = os.tmpname(), os.tmpname()
  local argv = { M.bin }
  for _, a in ipairs(args) do argv[#argv + 1] = tostring(a) end
  local pid = spawn(argv, opts.env, out_path, err_path)
  live[pid] = { pid = pid }
  local how, code = reap_within(pid, opts.timeout or 5)
  local res = {}
  if how then
    res.how, res.code = how, code
  else
    signal.kill(pid, signal.SIGKILL)
    reap_within(pid, 5)
    res.how = "timeout"
  end
  live[pid] = nil
  res.stdout, res.stderr = read_file(out_path), read_file(err_path)
  os.remove(out_path)
  os.remove(err_path)
  return res
end

-- Kills every server this process started and has not stopped yet; then raises if
-- any server stopped so far logged a sanitizer error (so an ASan/UBSan build fails
-- the spec that triggered it).
function M.stop_all()
  for pid, srv in pairs(live) do
    if srv.stop then
      srv:stop(1)
    else
      signal.kill(pid, signal.SIGKILL)
      reap_within(pid, 2)
    end
    live[pid] = nil
  end
  -- Servers that exited by themselves (e.g. on SIGINT) still have their temp files.
  for srv in pairs(unfinished) do srv:stop(1) end
  if #sanitizer_reports > 0 then
    local report = table.concat(sanitizer_reports, "\n----\n")
    sanitizer_reports = {}
    error("sanitizer report in the server log:\n" .. report, 2)
  end
end

-- Last resort: kill leftovers when the Lua state is closed (busted exits with
-- os.exit(code, true)), e.g. after an error outside any test.
if newproxy then
  local sentinel = newproxy(true)
  getmetatable(sentinel).__gc = function()
    for pid in pairs(live) do signal.kill(pid, signal.SIGKILL) end
  end
  M._sentinel = sentinel
end

-- Writes `text` to a fresh temp file with the given suffix and returns its path.
function M.temp_file(text, suffix)
  local base = os.tmpname()
  local path = base .. (suffix or "")
  os.remove(base)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

-- Returns the 1-based line number of the first line of file `rel` containing `needle`.
function M.line_of(rel, needle)
  local n = 0
  for line in io.lines(M.path(rel)) do
    n = n + 1
    if line:find(needle, 1, true) then return n end
  end
  error("no line containing " .. needle .. " in " .. rel, 2)
end

return M
