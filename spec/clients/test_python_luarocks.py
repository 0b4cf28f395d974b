"""moonwire installed with LuaRocks (issue 8), driven by python3-websockets.

    /usr/bin/python3 spec/clients/test_python_luarocks.py        # from the repo root

Once per run (setUpClass, ~5-60 s) in a temporary directory:

- the tracked files of the repo are copied (so LuaRocks' build.luarocks/
  never appears in the real tree) and `luarocks make --tree T1` installs
  moonwire (CMake build) into T1; `luarocks make --tree T1` in
  extensions/jsonrpc installs moonwire.jsonrpc next to it, and again into a
  separate tree T2;
- a tiny pure-Lua rock `greet` (rockspec written here) is installed with
  `luarocks --tree APP/lua_modules make`, the project-local tree next to the
  app.

Every server is T1/bin/moonwire with LUA_PATH, LUA_CPATH, LUA_INIT and
MOONWIRE_LUA_DIR removed from the environment and HOME pointed at an empty
directory, so every module is found through moonwire's own search: its
library beside the binary, the app's lua_modules/, --rocks-tree, and
Debian's lua-cjson (cjson.so in /usr/lib/x86_64-linux-gnu/lua/5.1).

The tests run in name order: test_9_remove uninstalls everything and checks
that only LuaRocks' manifest is left, so it comes last.
"""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    import websockets
    from websockets.exceptions import ConnectionClosed
except ImportError as e:  # pragma: no cover
    sys.stderr.write(
        "cannot import websockets (%s): run with /usr/bin/python3 "
        "(Debian python3-websockets)\n" % e
    )
    sys.exit(2)

import mwserver

T = 10.0
BUILD_TIMEOUT = 100.0
CJSON_SO = "/usr/lib/x86_64-linux-gnu/lua/5.1/cjson.so"
MANIFEST = os.path.join("lib", "luarocks", "rocks-5.1", "manifest")

# The app. @VERSION@ and @METHODS@ are replaced (plain replace: Lua is full of %).
APP_TEMPLATE = r'''local moonwire = require "moonwire"
local jsonrpc = require "moonwire.jsonrpc"
local cjson = require "cjson"
local greet = require "greet"
local VERSION = "@VERSION@"
local app = moonwire.app {}
local notes = 0

local function src(f) return (debug.getinfo(f, "S").source:gsub("^@", "")) end

app:websocket("/rpc", jsonrpc.route {
  upgrade = function(req) return { user = req.query.user } end,
  on_open = function(ws) jsonrpc.notify(ws, "hello", { VERSION }) end,
  methods = {
    add = function(p) return p[1] + p[2] end,
    version = function() return VERSION end,
    div = function(p)
      if p[2] == 0 then jsonrpc.invalid_params("division by zero") end
      return p[1] / p[2]
    end,
    fail = function() error("kaboom in the method") end,
    sleep = function(p)
      moonwire.sleep(p[1])
      return "slept " .. p[1]
    end,
    note = function() notes = notes + 1 end,
    notes = function() return notes end,
    push = function(p, ws)
      jsonrpc.notify(ws, "tick", p)
      return "pushed"
    end,
    roundtrip = function(p) return cjson.decode(cjson.encode(p)) end,
    greet = function(p) return greet.hello(p[1]) end,
    whoami = function(_, ws) return ws.data.user end,
    where = function()
      return {
        moonwire = src(moonwire.app), jsonrpc = src(jsonrpc.route), greet = src(greet.hello),
        cjson = package.searchpath("cjson", package.cpath),
        backend = jsonrpc.json == package.loaded["cjson.safe"] and "cjson" or "dkjson",
        jsonrpc_id = tostring(jsonrpc), greet_id = tostring(greet),
      }
    end,
@METHODS@
  },
})
return app
'''

GREET_LUA = 'local M = {}\nfunction M.hello(who) return "@GREETING@, " .. tostring(who) end\nreturn M\n'

GREET_ROCKSPEC = '''rockspec_format = "3.0"
package = "greet"
version = "0.1-1"
source = { url = "git+file:///greet" }
description = { summary = "a tiny pure-Lua rock for moonwire's LuaRocks test", license = "MIT" }
dependencies = { "lua >= 5.1" }
build = { type = "builtin", modules = { greet = "greet.lua" } }
'''


def app_source(version, methods=""):
    return APP_TEMPLATE.replace("@VERSION@", version).replace("@METHODS@", methods)


def clean_env(home):
    env = dict(os.environ)
    for k in ("LUA_PATH", "LUA_CPATH", "LUA_PATH_5_1", "LUA_CPATH_5_1", "LUA_INIT", "LUA_INIT_5_1",
              "MOONWIRE_LUA_DIR"):
        env.pop(k, None)
    env["HOME"] = home
    return env


def run(argv, cwd, env, timeout=BUILD_TIMEOUT):
    """Runs a command; raises with its output when it fails."""
    p = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=timeout)
    out = p.stdout.decode("utf-8", "replace")
    if p.returncode != 0:
        raise AssertionError("%s (in %s) failed with %d:\n%s" % (" ".join(argv), cwd, p.returncode, out))
    return out


def files_under(root):
    out = []
    for d, _, names in os.walk(root):
        for n in names:
            out.append(os.path.relpath(os.path.join(d, n), root))
    return sorted(out)


def copy_tracked(root, dest):
    """Copies the files git tracks (as they are in the working tree) to dest."""
    listing = subprocess.run(["git", "-C", root, "ls-files", "-z"], stdout=subprocess.PIPE,
                             check=True).stdout.decode()
    for rel in filter(None, listing.split("\0")):
        src = os.path.join(root, rel)
        if not os.path.lexists(src):
            continue  # deleted in the working tree
        dst = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)


class TreeServer(mwserver.MoonwireServer):
    """A moonwire server from an installed tree, with an exact environment and cwd."""

    def __init__(self, binary, app, *flags, env, cwd):
        super().__init__(app, *flags)
        self.binary, self.env, self.cwd = binary, env, cwd

    def start(self):
        # mwserver takes the binary and the cwd from module functions.
        saved = mwserver.moonwire_bin, mwserver.repo_root
        mwserver.moonwire_bin, mwserver.repo_root = (lambda: self.binary), (lambda: self.cwd)
        try:
            return super().start()
        finally:
            mwserver.moonwire_bin, mwserver.repo_root = saved


class LuaRocksTest(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = os.path.abspath(mwserver.repo_root())
        real_build_dir = os.path.join(cls.root, "build.luarocks")
        cls.real_build_dir_before = (os.path.exists(real_build_dir)
                                     and os.stat(real_build_dir).st_mtime_ns)
        cls.tmp = os.path.realpath(tempfile.mkdtemp(prefix="mw-luarocks-test-"))
        try:
            cls._install()
        except BaseException:
            shutil.rmtree(cls.tmp, ignore_errors=True)
            raise

    @classmethod
    def _install(cls):
        tmp = cls.tmp
        cls.home = os.path.join(tmp, "home")
        os.mkdir(cls.home)
        cls.env = clean_env(cls.home)
        cls.src = os.path.join(tmp, "src")
        cls.t1 = os.path.join(tmp, "t1")
        cls.t2 = os.path.join(tmp, "t2")
        cls.bin = os.path.join(cls.t1, "bin", "moonwire")
        copy_tracked(cls.root, cls.src)
        t0 = time.monotonic()
        run(["luarocks", "make", "--tree", cls.t1, "moonwire-scm-1.rockspec"], cls.src, cls.env)
        cls.build_seconds = time.monotonic() - t0
        ext = os.path.join(cls.src, "extensions", "jsonrpc")
        run(["luarocks", "make", "--tree", cls.t1, "moonwire-jsonrpc-scm-1.rockspec"], ext, cls.env)
        run(["luarocks", "make", "--tree", cls.t2, "moonwire-jsonrpc-scm-1.rockspec"], ext, cls.env)
        # The app and its project-local tree, with the greet rock in it.
        cls.app_dir = os.path.join(tmp, "app")
        os.mkdir(cls.app_dir)
        greet_src = os.path.join(tmp, "greet")
        os.mkdir(greet_src)
        with open(os.path.join(greet_src, "greet.lua"), "w") as f:
            f.write(GREET_LUA.replace("@GREETING@", "hello"))
        with open(os.path.join(greet_src, "greet-0.1-1.rockspec"), "w") as f:
            f.write(GREET_ROCKSPEC)
        cls.lua_modules = os.path.join(cls.app_dir, "lua_modules")
        run(["luarocks", "--tree", cls.lua_modules, "make", "greet-0.1-1.rockspec"], greet_src, cls.env)
        cls.app = cls.write_app(cls.app_dir, "v1")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @staticmethod
    def write_app(app_dir, version, methods=""):
        path = os.path.join(app_dir, "app.lua")
        with open(path, "w") as f:
            f.write(app_source(version, methods))
        return path

    # -- per-test plumbing ---------------------------------------------------
    def setUp(self):
        self.servers = []
        self._problems_before = self._problem_count()

    async def asyncSetUp(self):
        asyncio.get_running_loop().set_debug(False)

    def _problem_count(self):
        result = getattr(getattr(self, "_outcome", None), "result", None)
        if result is None:
            return 0
        return len(getattr(result, "failures", ())) + len(getattr(result, "errors", ()))

    def tearDown(self):
        failed = self._problem_count() > self._problems_before
        crashed = [s for s in self.servers if not s.alive()]
        if failed or crashed:
            for s in self.servers:
                sys.stderr.write("\n---- moonwire stderr (%s, exit=%r) ----\n%s\n----\n"
                                 % (" ".join(s.argv[1:]), s.proc.poll(), s.log_tail(80)))
        if crashed:
            self.fail("moonwire exited during the test (exit code %r)" % crashed[0].proc.poll())

    def start_server(self, app, *flags):
        srv = TreeServer(self.bin, app, *flags, env=self.env, cwd=self.home)
        srv.start()
        self.servers.append(srv)
        self.addCleanup(self._stop_server, srv)
        return srv

    def _stop_server(self, srv):
        srv.stop()
        report = srv.sanitizer_report()
        if report:
            self.fail("sanitizer report from moonwire:\n" + report)

    async def connect(self, srv, path="/rpc"):
        ws = await websockets.connect(srv.url(path), max_size=None, ping_interval=None,
                                      close_timeout=3, open_timeout=T)
        self.addAsyncCleanup(self._close_quietly, ws)
        hello = json.loads(await self.recv(ws))  # on_open's notification
        self.assertEqual("hello", hello["method"], hello)
        return ws, hello["params"][0]

    @staticmethod
    async def _close_quietly(ws):
        try:
            await asyncio.wait_for(ws.close(), 5)
        except Exception:
            ws.transport.abort()

    async def recv(self, ws, timeout=T):
        return await asyncio.wait_for(ws.recv(), timeout)

    async def rpc(self, ws, method, params=None, id=1):
        msg = {"jsonrpc": "2.0", "method": method, "id": id}
        if params is not None:
            msg["params"] = params
        await ws.send(json.dumps(msg))
        return json.loads(await self.recv(ws))

    async def where(self, ws):
        """Where the app's modules came from (normalized paths)."""
        w = await self.result(ws, "where")
        for k in ("moonwire", "jsonrpc", "greet", "cjson"):
            w[k] = os.path.normpath(w[k])
        return w

    async def result(self, ws, method, params=None, id=1):
        resp = await self.rpc(ws, method, params, id)
        self.assertEqual({"jsonrpc": "2.0", "id": id, "result": resp.get("result")}, resp)
        return resp["result"]

    def ensure_ext_in_t1(self, present):
        """Installs or removes moonwire.jsonrpc in T1 (cheap: a pure-Lua rock)."""
        installed = os.path.exists(os.path.join(self.t1, "share/lua/5.1/moonwire/jsonrpc.lua"))
        if present and not installed:
            run(["luarocks", "make", "--tree", self.t1, "moonwire-jsonrpc-scm-1.rockspec"],
                os.path.join(self.src, "extensions", "jsonrpc"), self.env)
        elif installed and not present:
            run(["luarocks", "remove", "--tree", self.t1, "moonwire-jsonrpc"], self.src, self.env)

    def startup_error(self, *args):
        p = subprocess.run([self.bin, *args, "--listen", "127.0.0.1:0"], env=self.env, cwd=self.home,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=10)
        err = p.stderr.decode("utf-8", "replace")
        self.assertNotEqual(0, p.returncode, "moonwire started: " + err)
        return err

    # -- tests ----------------------------------------------------------------
    def test_1_installed_files_and_version(self):
        sys.stderr.write("(luarocks make of moonwire took %.1f s) " % self.build_seconds)
        files = files_under(self.t1)
        for want in ("bin/moonwire", "share/lua/5.1/moonwire/init.lua", "share/lua/5.1/moonwire/jsonrpc.lua",
                     "share/lua/5.1/moonwire/redis.lua", "share/lua/5.1/moonwire/http.lua",
                     "share/lua/5.1/moonwire/websocket.lua"):
            self.assertIn(want, files)
        self.assertTrue(os.access(self.bin, os.X_OK))
        self.assertIn("share/lua/5.1/moonwire/jsonrpc.lua", files_under(self.t2))
        self.assertNotIn("bin/moonwire", files_under(self.t2))
        self.assertIn("share/lua/5.1/greet.lua", files_under(self.lua_modules))
        p = subprocess.run([self.bin, "--version"], env=self.env, cwd=self.home, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=10)
        self.assertEqual(0, p.returncode, p.stderr)
        self.assertRegex(p.stdout.decode(), r"^moonwire \d+\.\d+")
        # The build happened in the copy: LuaRocks' build dir is there (and
        # gitignored), the real tree's is as it was.
        self.assertTrue(os.path.isdir(os.path.join(self.src, "build.luarocks")))
        ignored = subprocess.run(["git", "-C", self.root, "check-ignore", "-q", "build.luarocks"])
        self.assertEqual(0, ignored.returncode, "build.luarocks/ is not gitignored")
        real = os.path.join(self.root, "build.luarocks")
        now = os.path.exists(real) and os.stat(real).st_mtime_ns
        self.assertEqual(self.real_build_dir_before, now, "the test touched build.luarocks/ in the real tree")

    async def test_2_jsonrpc_app_from_the_tree(self):
        self.ensure_ext_in_t1(True)
        srv = self.start_server(self.app)
        ws, version = await self.connect(srv, "/rpc?user=ann")
        self.assertEqual("v1", version)
        # Every module came from where it should, with no LUA_PATH.
        where = await self.where(ws)
        self.assertEqual(os.path.join(self.t1, "share/lua/5.1/moonwire/init.lua"), where["moonwire"])
        self.assertEqual(os.path.join(self.t1, "share/lua/5.1/moonwire/jsonrpc.lua"), where["jsonrpc"])
        self.assertEqual(os.path.join(self.lua_modules, "share/lua/5.1/greet.lua"), where["greet"])
        self.assertEqual(CJSON_SO, where["cjson"])
        self.assertEqual("cjson", where["backend"])

        self.assertEqual(3, await self.result(ws, "add", [1, 2]))
        self.assertEqual("ann", await self.result(ws, "whoami", id="w"))
        self.assertEqual("hello, bob", await self.result(ws, "greet", ["bob"]))
        value = {"s": "h\u00e9llo", "n": 1.5, "l": [1, 2, {"x": None}], "b": True}
        self.assertEqual(value, await self.result(ws, "roundtrip", value))

        # Notifications: no answer; then a batch, in order, without them.
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "note"}))
        await ws.send(json.dumps([
            {"jsonrpc": "2.0", "method": "add", "params": [2, 2], "id": "a"},
            {"jsonrpc": "2.0", "method": "note"},
            {"jsonrpc": "2.0", "method": "nope", "id": "b"},
            {"jsonrpc": "2.0", "method": "div", "params": [1, 0], "id": "c"},
        ]))
        batch = json.loads(await self.recv(ws))
        self.assertEqual(["a", "b", "c"], [r["id"] for r in batch], batch)
        self.assertEqual(4, batch[0]["result"])
        self.assertEqual((-32601, "nope"), (batch[1]["error"]["code"], batch[1]["error"].get("data")))
        self.assertEqual(-32602, batch[2]["error"]["code"])
        self.assertEqual("division by zero", batch[2]["error"]["message"])
        await ws.send(json.dumps([{"jsonrpc": "2.0", "method": "note"}] * 2))  # no answer at all
        self.assertEqual(4, await self.result(ws, "notes", id=9))

        # The standard errors.
        await ws.send("{not json")
        resp = json.loads(await self.recv(ws))
        self.assertEqual((-32700, None), (resp["error"]["code"], resp["id"]))
        for bad in ("[]", "{}", '{"jsonrpc":"2.0","method":5,"id":1}'):
            await ws.send(bad)
            resp = json.loads(await self.recv(ws))
            self.assertEqual(-32600, resp["error"]["code"], (bad, resp))
        resp = await self.rpc(ws, "fail", id=5)
        self.assertEqual({"jsonrpc": "2.0", "id": 5, "error": {"code": -32603, "message": resp["error"]["message"]}},
                         resp)
        self.assertNotIn("kaboom", json.dumps(resp))
        self.assertIsNotNone(srv.wait_for_log(r"app\.lua:\d+: kaboom in the method", 3), srv.log_tail())

        # jsonrpc.notify from the server, before the call's answer.
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "push", "params": {"k": 1}, "id": 6}))
        self.assertEqual({"jsonrpc": "2.0", "method": "tick", "params": {"k": 1}}, json.loads(await self.recv(ws)))
        self.assertEqual({"jsonrpc": "2.0", "id": 6, "result": "pushed"}, json.loads(await self.recv(ws)))

    async def test_3_sleeping_method_does_not_block_others(self):
        self.ensure_ext_in_t1(True)
        srv = self.start_server(self.app)
        a, _ = await self.connect(srv)
        b, _ = await self.connect(srv)
        t0 = time.monotonic()
        await a.send(json.dumps({"jsonrpc": "2.0", "method": "sleep", "params": [0.6], "id": 1}))
        await asyncio.sleep(0.05)
        t1 = time.monotonic()
        self.assertEqual(5, await self.result(b, "add", [2, 3]))
        self.assertLess(time.monotonic() - t1, 0.3, "b waited behind a sleeping method")
        resp = json.loads(await self.recv(a))
        self.assertEqual({"jsonrpc": "2.0", "id": 1, "result": "slept 0.6"}, resp)
        self.assertGreaterEqual(time.monotonic() - t0, 0.55)

    async def test_4_extension_from_a_separate_tree(self):
        # T1 holds moonwire only; the extension is in T2.
        self.ensure_ext_in_t1(False)
        try:
            err = self.startup_error(self.app)
            self.assertIn("moonwire.jsonrpc", err)
            srv = self.start_server(self.app, "--rocks-tree", self.t2)
            ws, _ = await self.connect(srv)
            where = await self.where(ws)
            self.assertEqual(os.path.join(self.t2, "share/lua/5.1/moonwire/jsonrpc.lua"), where["jsonrpc"])
            self.assertEqual(os.path.join(self.t1, "share/lua/5.1/moonwire/init.lua"), where["moonwire"])
            self.assertEqual(os.path.join(self.lua_modules, "share/lua/5.1/greet.lua"), where["greet"])
            self.assertEqual(7, await self.result(ws, "add", [3, 4]))
            # --rocks-tree=DIR spelling, given twice (repeatable).
            other = os.path.join(self.tmp, "empty-tree")
            os.makedirs(other, exist_ok=True)
            srv2 = self.start_server(self.app, "--rocks-tree=" + other, "--rocks-tree=" + self.t2)
            ws2, _ = await self.connect(srv2)
            self.assertEqual(3, await self.result(ws2, "add", [1, 2]))
        finally:
            self.ensure_ext_in_t1(True)

    def test_5_missing_rock_is_a_clear_startup_error(self):
        d = os.path.join(self.tmp, "missing")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "app.lua")
        with open(path, "w") as f:
            f.write('local moonwire = require "moonwire"\nlocal x = require "moonwire.nosuchext"\n'
                    'return moonwire.app {}\n')
        err = self.startup_error(path)
        lines = [l for l in err.splitlines() if l.strip()]
        self.assertEqual(1, len(lines), err)
        self.assertIn("moonwire.nosuchext", err)
        self.assertIn("app.lua:2", err)
        # Where it looked: the app's lua_modules tree and the binary's own tree.
        self.assertIn(os.path.join(d, "lua_modules/share/lua/5.1"), err)
        self.assertIn(os.path.join(self.t1, "bin/../share/lua/5.1"), err)

    async def test_6_hot_reload_swaps_methods_and_keeps_connections(self):
        self.ensure_ext_in_t1(True)
        d = os.path.join(self.tmp, "reload")
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(self.app_dir, d, symlinks=True)
        app = self.write_app(d, "v1", 'only_v1 = function() return "old" end,')
        srv = self.start_server(app)
        ws, _ = await self.connect(srv, "/rpc?user=kim")
        before = await self.where(ws)
        self.assertEqual("old", await self.result(ws, "only_v1"))
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "note"}))

        # New methods; the rock in lua_modules changes on disk too, but a
        # reload never reloads rocks.
        self.write_app(d, "v2", 'only_v2 = function(p) return p[1] * 2 end,')
        with open(os.path.join(d, "lua_modules/share/lua/5.1/greet.lua"), "w") as f:
            f.write(GREET_LUA.replace("@GREETING@", "CHANGED"))
        n = srv.log().count("reloaded ")
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while srv.log().count("reloaded ") == n and "reload failed" not in srv.log():
            self.assertLess(time.monotonic(), deadline, "no reload logged")
            await asyncio.sleep(0.02)
        self.assertNotIn("reload failed", srv.log())

        # The same connection: new methods, old ones gone, ws.data kept.
        self.assertEqual("v2", await self.result(ws, "version"))
        self.assertEqual(42, await self.result(ws, "only_v2", [21]))
        resp = await self.rpc(ws, "only_v1", id=3)
        self.assertEqual(-32601, resp["error"]["code"], resp)
        self.assertEqual("kim", await self.result(ws, "whoami"))
        self.assertEqual(0, await self.result(ws, "notes"), "the app's locals start again")
        after = await self.where(ws)
        self.assertEqual(before["jsonrpc_id"], after["jsonrpc_id"], "moonwire.jsonrpc was reloaded")
        self.assertEqual(before["greet_id"], after["greet_id"], "the lua_modules rock was reloaded")
        self.assertEqual("hello, x", await self.result(ws, "greet", ["x"]))
        # A new connection gets the new app too.
        ws2, version = await self.connect(srv)
        self.assertEqual("v2", version)
        self.assertEqual(8, await self.result(ws2, "only_v2", [4]))
        # The old connection was never closed.
        self.assertIsNone(ws.close_code)

    def test_9_remove(self):
        # Runs last: uninstalls everything.
        run(["luarocks", "remove", "--tree", self.t1, "moonwire-jsonrpc"], self.src, self.env)
        run(["luarocks", "remove", "--tree", self.t1, "moonwire"], self.src, self.env)
        run(["luarocks", "remove", "--tree", self.t2, "moonwire-jsonrpc"], self.src, self.env)
        run(["luarocks", "--tree", self.lua_modules, "remove", "greet"], self.app_dir, self.env)
        for tree in (self.t1, self.t2, self.lua_modules):
            self.assertEqual([MANIFEST], files_under(tree), "left in " + tree)


if __name__ == "__main__":
    unittest.main(verbosity=2)
