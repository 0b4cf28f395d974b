"""Hot reload (issue 5) driven by an independent client: python3-websockets
(Debian, 10.x), raw HTTP to the admin listener and the `moonwire reload` command.

    /usr/bin/python3 spec/clients/test_python_reload.py          # from the repo root
    MOONWIRE_BIN=/path/to/moonwire /usr/bin/python3 spec/clients/test_python_reload.py -k Watch

Every test writes its app (app.lua plus the app-local module helper.lua) into
its own temporary directory, so edits never touch the repository, and starts
its own moonwire process on it. The triggers are SIGHUP, POST /reload on the
admin listener (--admin), `moonwire reload` and --watch (inotify).
"""

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    import websockets
    from websockets.exceptions import ConnectionClosed, InvalidStatusCode
except ImportError as e:  # pragma: no cover
    sys.stderr.write(
        "cannot import websockets (%s): run with /usr/bin/python3 "
        "(Debian python3-websockets)\n" % e
    )
    sys.exit(2)

import mwserver
from test_python_websockets import MoonwireCase, RecordingClient  # server lifecycle, log dumps, sanitizer check

T = 10.0

# ---------------------------------------------------------------------------
# The test app. @VERSION@, @ROUTES@ and @EXTRA@ are replaced per test (plain
# replace, not %-formatting: the Lua code is full of '%').
APP_TEMPLATE = r'''local moonwire = require "moonwire"
local helper = require "helper"
local VERSION = "@VERSION@"
local app = moonwire.app {}
local st = moonwire.state("reload-test")
local loads = 0 -- a plain upvalue: starts again with every load

app:websocket("/ws", {
  on_message = function(ws, msg)
    local cmd, arg = msg:match("^(%S+) ?(.*)$")
    if cmd == "set" then
      ws.data.tag = arg
      ws:send("ok")
    elseif cmd == "sub" then
      ws:subscribe(arg)
      ws:send("subscribed " .. arg)
    elseif cmd == "count" then
      st.n = (st.n or 0) + 1
      loads = loads + 1
      ws:send(VERSION .. " state " .. st.n .. " local " .. loads)
    elseif cmd == "slow" then
      moonwire.sleep(tonumber(arg))
      ws:send(VERSION .. " slow")
    else
      ws:send(VERSION .. " " .. helper.tag() .. " " .. tostring(ws.data.tag) .. " " .. msg)
    end
  end,
})

app:websocket("/seq", {
  on_message = function(ws, msg) ws:send(VERSION .. " " .. msg) end,
})
@ROUTES@
@EXTRA@
return app
'''

HELPER_TEMPLATE = 'return { tag = function() return "@TAG@" end }\n'


def app_source(version="v1", routes="", extra=""):
    return (APP_TEMPLATE.replace("@VERSION@", version)
            .replace("@ROUTES@", routes).replace("@EXTRA@", extra))


def helper_source(tag="h1"):
    return HELPER_TEMPLATE.replace("@TAG@", tag)


def line_of(text, needle):
    for i, line in enumerate(text.split("\n"), 1):
        if needle in line:
            return i
    raise AssertionError("no line containing %r" % needle)


def port_is_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
        return True
    except OSError:
        return False


class ReloadCase(MoonwireCase):
    """Per test: a temp app dir; servers started explicitly with start()."""

    def setUp(self):
        self.servers = []
        self._problems_before = self._problem_count()
        self.dir = tempfile.mkdtemp(prefix="mw-reload-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.app_path = os.path.join(self.dir, "app.lua")
        self.write("helper.lua", helper_source())
        self.write("app.lua", app_source())
        self.server = None
        self.admin_port = None

    # -- files ----------------------------------------------------------------
    def write(self, name, text):
        """Writes like most programs do: truncate, write, close."""
        path = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def write_by_rename(self, name, text):
        """Saves like many editors do: a temp file next to it, then rename."""
        path = os.path.join(self.dir, name)
        tmp = path + ".tmp%d" % os.getpid()
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
        return path

    # -- server ---------------------------------------------------------------
    def start(self, *flags, admin=True, watch=False, token=None):
        flags = list(flags)
        if watch:
            flags.append("--watch")
        if token is not None:
            flags += ["--admin-token-file", self.write("admin.token", token + "\n")]
        for attempt in range(5):
            extra = []
            if admin:
                self.admin_port = mwserver.free_port()
                extra = ["--admin", "127.0.0.1:%d" % self.admin_port]
            try:
                self.server = self.start_server(self.app_path, *(flags + extra))
                return self.server
            except mwserver.ServerStartError as e:
                # The free port may have been taken in between: try another one.
                if admin and "in use" in str(e) and attempt < 4:
                    continue
                raise
        raise AssertionError("unreachable")

    def log_count(self, pattern):
        rx = re.compile(pattern)
        return sum(1 for line in self.server.log().split("\n") if rx.search(line))

    async def wait_log_count(self, pattern, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_count(pattern) >= n:
                return True
            await asyncio.sleep(0.02)
        self.fail("log never had %d lines matching %r; log:\n%s"
                  % (n, pattern, self.server.log_tail(40)))

    async def admin(self, method, path, port=None, headers=()):
        """One request to the admin listener; returns (status, parsed JSON or
        text) and keeps the response head in self.last_head."""
        port = port or self.admin_port
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), T)
        w.write(("%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%sContent-Length: 0\r\n"
                 "Connection: close\r\n\r\n"
                 % (method, path, port, "".join(h + "\r\n" for h in headers))).encode())
        await w.drain()
        data = await asyncio.wait_for(r.read(), T)
        w.close()
        head, _, body = data.partition(b"\r\n\r\n")
        self.last_head = head.decode("latin-1")
        m = re.match(rb"HTTP/1\.1 (\d{3})", head)
        self.assertIsNotNone(m, "not an HTTP response: %r" % data[:200])
        status = int(m.group(1))
        ctype = re.search(rb"(?im)^content-type:\s*(\S+)", head)
        if ctype and ctype.group(1).startswith(b"application/json"):
            return status, json.loads(body.decode())
        return status, body.decode("utf-8", "replace")

    async def reload_admin(self, expect_ok=True):
        # The server logs the outcome before it answers, but its stderr
        # reaches us on a reader thread: wait for the line, as sighup() does,
        # so that log checks after this see it.
        n = self.log_count(r"reload(ed| failed)")
        status, body = await self.admin("POST", "/reload")
        await self.wait_log_count(r"reload(ed| failed)", n + 1)
        if expect_ok:
            self.assertEqual(status, 200, body)
            self.assertIs(body.get("ok"), True, body)
        else:
            self.assertEqual(status, 500, body)
            self.assertIs(body.get("ok"), False, body)
        return body

    async def reload_command(self, *args):
        """Runs `moonwire reload ARGS`; returns (exit code, stdout, stderr)."""
        argv = [mwserver.moonwire_bin(), "reload"] + list(args)
        p = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                    timeout=T, cwd=self.dir)
        return p.returncode, p.stdout, p.stderr

    async def sighup(self):
        n = self.log_count(r"reload(ed| failed)")
        self.server.proc.send_signal(signal.SIGHUP)
        await self.wait_log_count(r"reload(ed| failed)", n + 1)

    # -- clients --------------------------------------------------------------
    async def ask(self, ws, msg, timeout=T):
        await asyncio.wait_for(ws.send(msg), timeout)
        return await self.recv(ws, timeout)

    async def opened(self, path="/ws"):
        return await self.connect(path)

    async def tagged(self, tag="A", path="/ws"):
        """A connection whose ws.data.tag is set (before any reload)."""
        ws = await self.opened(path)
        self.assertEqual(await self.ask(ws, "set " + tag), "ok")
        self.assertEqual(await self.ask(ws, "hello"), "v1 h1 %s hello" % tag)
        return ws


# ---------------------------------------------------------------------------
class TriggerTests(ReloadCase):
    """Each trigger reloads the handlers of a live connection, which keeps ws.data."""

    async def test_sighup_live_connection_gets_new_handler_same_ws_data(self):
        self.start(admin=False)
        ws = await self.tagged("A")
        self.write("app.lua", app_source("v2"))
        await self.sighup()
        self.assertEqual(self.log_count(r"reloaded .*app\.lua \(SIGHUP\)"), 1, self.server.log())
        self.assertEqual(await self.ask(ws, "again"), "v2 h1 A again")
        other = await self.opened()
        self.assertEqual(await self.ask(other, "new"), "v2 h1 nil new")

    async def test_admin_reload_live_connection_gets_new_handler_same_ws_data(self):
        self.start()
        self.assertIsNotNone(self.server.wait_for_log(r"admin listener on 127\.0\.0\.1:%d"
                                                      % self.admin_port, 2))
        ws = await self.tagged("B")
        self.write("app.lua", app_source("v2"))
        body = await self.reload_admin()
        self.assertEqual(body, {"ok": True, "reloads": 1})
        self.assertEqual(await self.ask(ws, "x"), "v2 h1 B x")
        await self.wait_log_count(r"reloaded .*app\.lua \(admin request\)", 1, 3)
        self.write("app.lua", app_source("v3"))
        self.assertEqual(await self.reload_admin(), {"ok": True, "reloads": 2})
        self.assertEqual(await self.ask(ws, "y"), "v3 h1 B y")

    async def test_moonwire_reload_command(self):
        self.start()
        ws = await self.tagged("C")
        self.write("app.lua", app_source("v2"))
        code, out, err = await self.reload_command("--admin", "127.0.0.1:%d" % self.admin_port)
        self.assertEqual(code, 0, "stdout %r stderr %r" % (out, err))
        self.assertEqual(json.loads(out), {"ok": True, "reloads": 1})
        self.assertEqual(await self.ask(ws, "z"), "v2 h1 C z")
        code, out, err = await self.reload_command("--admin=127.0.0.1:%d" % self.admin_port)
        self.assertEqual(code, 0, "stdout %r stderr %r" % (out, err))
        self.assertEqual(json.loads(out)["reloads"], 2)

    async def test_watch_live_connection_gets_new_handler_same_ws_data(self):
        self.start(admin=False, watch=True)
        ws = await self.tagged("D")
        self.write("app.lua", app_source("v2"))
        await self.wait_log_count(r"reloaded .*app\.lua \(--watch\)", 1, 3)
        self.assertEqual(await self.ask(ws, "w"), "v2 h1 D w")

    async def test_local_module_change_is_picked_up(self):
        self.start()
        ws = await self.tagged("E")
        self.write("helper.lua", helper_source("h2"))
        await self.reload_admin()
        self.assertEqual(await self.ask(ws, "m"), "v1 h2 E m")
        # ...also through SIGHUP, with both files edited together.
        self.write("helper.lua", helper_source("h3"))
        self.write("app.lua", app_source("v2"))
        await self.sighup()
        self.assertEqual(await self.ask(ws, "n"), "v2 h3 E n")

    async def test_module_in_subdirectory_reloads_and_watch_covers_subdirectories(self):
        self.write("lib/util.lua", 'return { name = "u1" }\n')
        extra = 'app:websocket("/util", { on_message = function(ws) ws:send(require("lib.util").name) end })'
        self.write("app.lua", app_source("v1", extra=extra))
        self.start(admin=False, watch=True)
        ws = await self.opened("/util")
        self.assertEqual(await self.ask(ws, "?"), "u1")
        # Files --watch ignores: not .lua, or in hidden dirs, node_modules, lua_modules.
        self.write("notes.txt", "x")
        self.write(".hidden/x.lua", "return 1\n")
        self.write("node_modules/x.lua", "return 1\n")
        self.write("lua_modules/x.lua", "return 1\n")
        await asyncio.sleep(0.6)
        self.assertEqual(self.log_count(r"reloaded"), 0, self.server.log())
        self.write("lib/util.lua", 'return { name = "u2" }\n')
        await self.wait_log_count(r"reloaded .*\(--watch\)", 1, 3)
        self.assertEqual(await self.ask(ws, "?"), "u2")
        # A subdirectory created after start counts too.
        os.makedirs(os.path.join(self.dir, "later"))
        await asyncio.sleep(0.3)
        self.write("later/mod.lua", "return 2\n")
        await self.wait_log_count(r"reloaded .*\(--watch\)", 2, 3)


# ---------------------------------------------------------------------------
class WatchTests(ReloadCase):
    async def time_to_new_behaviour(self, save):
        ws = await self.tagged("W")
        t0 = time.monotonic()
        save("app.lua", app_source("v2"))
        while True:
            got = await self.ask(ws, "poll")
            if got.startswith("v2 "):
                self.assertEqual(got, "v2 h1 W poll")
                return time.monotonic() - t0
            self.assertEqual(got, "v1 h1 W poll")
            if time.monotonic() - t0 > 5:
                self.fail("--watch did not pick up the edit within 5 s; log:\n"
                          + self.server.log_tail(20))
            await asyncio.sleep(0.01)

    async def test_plain_save_is_served_within_one_second(self):
        self.start(admin=False, watch=True)
        took = await self.time_to_new_behaviour(self.write)
        self.assertLess(took, 1.0, "first v2 reply %.3f s after the save" % took)
        # the log line may still be in the pipe when the new code answers
        await self.wait_log_count(r"reloaded .*\(--watch\)", 1, 3)
        await asyncio.sleep(0.2)
        self.assertEqual(self.log_count(r"reloaded .*\(--watch\)"), 1)

    async def test_editor_save_temp_file_and_rename_within_one_second(self):
        self.start(admin=False, watch=True)
        took = await self.time_to_new_behaviour(self.write_by_rename)
        self.assertLess(took, 1.0, "first v2 reply %.3f s after the rename" % took)
        await asyncio.sleep(0.4)
        self.assertEqual(self.log_count(r"reloaded .*\(--watch\)"), 1, self.server.log())
        self.assertEqual(self.log_count(r"reload failed"), 0, self.server.log())

    async def test_backup_rename_then_write_save_causes_one_good_reload(self):
        # vim's default: rename app.lua to app.lua~, write a new app.lua.
        self.start(admin=False, watch=True)
        ws = await self.tagged("V")
        os.rename(self.app_path, self.app_path + "~")
        self.write("app.lua", app_source("v2"))
        os.remove(self.app_path + "~")
        await self.wait_log_count(r"reloaded .*\(--watch\)", 1, 3)
        await asyncio.sleep(0.4)
        self.assertEqual(self.log_count(r"reload failed"), 0, self.server.log())
        self.assertEqual(self.log_count(r"reloaded .*\(--watch\)"), 1, self.server.log())
        self.assertEqual(await self.ask(ws, "v"), "v2 h1 V v")

    async def test_quick_saves_cause_one_reload(self):
        self.start(admin=False, watch=True)
        ws = await self.tagged("Q")
        t0 = time.monotonic()
        for i in range(2, 7):   # five saves, 20 ms apart: all within 100 ms
            self.write("app.lua", app_source("v%d" % i))
            await asyncio.sleep(0.02)
        self.assertLess(time.monotonic() - t0, 0.15)
        await self.wait_log_count(r"reloaded .*\(--watch\)", 1, 3)
        await asyncio.sleep(0.6)
        self.assertEqual(self.log_count(r"reloaded .*\(--watch\)"), 1,
                         "expected one reload for a burst of saves:\n" + self.server.log())
        self.assertEqual(await self.ask(ws, "last"), "v6 h1 Q last")

    async def test_broken_save_then_fixed_save(self):
        self.start(admin=False, watch=True)
        ws = await self.tagged("F")
        broken = app_source("v2").replace('local VERSION = "v2"', 'local VERSION = = "v2"')
        self.write("app.lua", broken)
        await self.wait_log_count(r"reload failed \(--watch\)", 1, 3)
        line = line_of(broken, "local VERSION = =")
        self.assertEqual(self.log_count(r"reload failed \(--watch\); still serving the previous "
                                        r"version: .*app\.lua:%d:" % line), 1, self.server.log())
        self.assertEqual(await self.ask(ws, "still"), "v1 h1 F still")
        self.write("app.lua", app_source("v3"))
        await self.wait_log_count(r"reloaded .*\(--watch\)", 1, 3)
        self.assertEqual(await self.ask(ws, "fixed"), "v3 h1 F fixed")


# ---------------------------------------------------------------------------
class FailedReloadTests(ReloadCase):
    async def assert_still_v1(self, ws, tag):
        self.assertEqual(await self.ask(ws, "after"), "v1 h1 %s after" % tag)
        fresh = await self.opened()
        self.assertEqual(await self.ask(fresh, "fresh"), "v1 h1 nil fresh")
        await fresh.close()

    async def test_syntax_error_keeps_old_code_and_reports_file_and_line(self):
        self.start()
        ws = await self.tagged("S")
        broken = app_source("v2").replace("local loads = 0", "local loads = = 0")
        line = line_of(broken, "local loads = = 0")
        self.write("app.lua", broken)
        where = re.escape(self.app_path) + ":%d:" % line

        body = await self.reload_admin(expect_ok=False)
        self.assertRegex(body["error"], where)
        await self.assert_still_v1(ws, "S")
        self.assertEqual(self.log_count(r"reload failed \(admin request\); still serving the "
                                        r"previous version: " + where), 1, self.server.log())

        code, out, err = await self.reload_command("--admin", "127.0.0.1:%d" % self.admin_port)
        self.assertEqual(code, 1, "stdout %r stderr %r" % (out, err))
        self.assertRegex(err, where)
        self.assertEqual(out, "")

        await self.sighup()
        self.assertEqual(self.log_count(r"reload failed \(SIGHUP\); still serving the previous "
                                        r"version: " + where), 1, self.server.log())
        await self.assert_still_v1(ws, "S")

        status, st = await self.admin("GET", "/status")
        self.assertEqual((st["reloads"], st["reload_failures"]), (0, 3), st)

        self.write("app.lua", app_source("v2"))
        self.assertEqual(await self.reload_admin(), {"ok": True, "reloads": 1})
        self.assertEqual(await self.ask(ws, "ok now"), "v2 h1 S ok now")

    async def test_syntax_error_in_local_module_keeps_old_module(self):
        self.start()
        ws = await self.tagged("M")
        self.write("helper.lua", "return { tag = function() return 'h2' end\n")   # missing '}'
        body = await self.reload_admin(expect_ok=False)
        self.assertRegex(body["error"], re.escape(os.path.join(self.dir, "helper.lua")) + r":\d+:")
        self.assertEqual(await self.ask(ws, "m"), "v1 h1 M m")
        # The old module stays the one `require` answers: a later good reload of
        # app.lua alone must not meet a half-loaded helper.
        self.write("helper.lua", helper_source("h1"))
        self.write("app.lua", app_source("v2"))
        await self.reload_admin()
        self.assertEqual(await self.ask(ws, "m"), "v2 h1 M m")

    async def test_runtime_error_while_loading_keeps_old_code_and_its_timers_never_start(self):
        self.start()
        sub = await self.opened()
        self.assertEqual(await self.ask(sub, "sub t"), "subscribed t")
        ws = await self.tagged("R")
        extra = ('app:every(0.05, function() app:publish("t", "from the failed load") '
                 'moonwire.log.info("FAILED-LOAD-TIMER") end)\n'
                 'app:after(0.05, function() moonwire.log.info("FAILED-LOAD-TIMER") end)\n'
                 'error("boom while loading")')
        broken = app_source("v2", extra=extra)
        line = line_of(broken, 'error("boom while loading")')
        self.write("app.lua", broken)
        body = await self.reload_admin(expect_ok=False)
        self.assertRegex(body["error"], re.escape(self.app_path) + ":%d: boom while loading" % line)
        self.assertEqual(self.log_count(r"reload failed .*app\.lua:%d: boom while loading" % line), 1,
                         self.server.log())
        await self.assert_still_v1(ws, "R")
        with self.assertRaises(asyncio.TimeoutError):
            got = await self.recv(sub, 0.5)
            self.fail("a timer of the failed load ran: %r" % got)
        self.assertEqual(self.log_count("FAILED-LOAD-TIMER"), 0, self.server.log())

    async def test_unknown_route_option_keeps_old_code(self):
        self.start()
        ws = await self.tagged("U")
        routes = ('app:websocket("/typo", {\n'
                  '  on_mesage = function(ws, msg) ws:send(msg) end,\n'
                  '})')
        broken = app_source("v2", routes=routes)
        line = line_of(broken, 'app:websocket("/typo"')
        self.write("app.lua", broken)
        body = await self.reload_admin(expect_ok=False)
        self.assertIn("on_mesage", body["error"])
        self.assertRegex(body["error"], re.escape(self.app_path) + ":%d:" % line)
        await self.assert_still_v1(ws, "U")
        with self.assertRaises(InvalidStatusCode) as cm:
            await self.connect("/typo")
        self.assertEqual(cm.exception.status_code, 404)

    async def test_file_not_returning_an_app_keeps_old_code(self):
        self.start()
        ws = await self.tagged("N")
        self.write("app.lua", app_source("v2").replace("return app", "return nil"))
        body = await self.reload_admin(expect_ok=False)
        self.assertIn("return app", body["error"])
        self.assertIn(self.app_path, body["error"])
        await self.assert_still_v1(ws, "N")


# ---------------------------------------------------------------------------
class SemanticsTests(ReloadCase):
    async def test_state_survives_and_plain_locals_start_again(self):
        self.start()
        ws = await self.opened()
        self.assertEqual(await self.ask(ws, "count"), "v1 state 1 local 1")
        self.assertEqual(await self.ask(ws, "count"), "v1 state 2 local 2")
        self.write("app.lua", app_source("v2"))
        await self.reload_admin()
        self.assertEqual(await self.ask(ws, "count"), "v2 state 3 local 1")
        await self.sighup()
        other = await self.opened()
        self.assertEqual(await self.ask(other, "count"), "v2 state 4 local 1")

    async def test_suspended_call_finishes_on_old_code_next_message_on_new(self):
        self.start()
        ws = await self.tagged("Z")
        await ws.send("slow 0.5")
        await asyncio.sleep(0.15)      # the handler now sleeps in moonwire.sleep
        self.write("app.lua", app_source("v2"))
        t0 = time.monotonic()
        await self.reload_admin()
        self.assertLess(time.monotonic() - t0, 0.3, "the reload waited for the sleeping handler")
        await ws.send("next")          # waits in the inbox behind the sleeping call
        self.assertEqual(await self.recv(ws), "v1 slow")
        self.assertEqual(await self.recv(ws), "v2 h1 Z next")

    async def test_removed_route_keeps_live_connection_added_route_serves_new_clients(self):
        old_route = ('app:websocket("/old", {\n'
                     '  on_message = function(ws, msg) ws:send(VERSION .. " old " .. '
                     'tostring(ws.data.tag) .. " " .. msg) end,\n'
                     '})')
        new_route = ('app:websocket("/new", {\n'
                     '  on_message = function(ws, msg) ws:send(VERSION .. " new " .. msg) end,\n'
                     '})')
        self.write("app.lua", app_source("v1", routes=old_route))
        self.start()
        old = await self.opened("/old")
        await old.send("set-nothing")
        self.assertEqual(await self.recv(old), "v1 old nil set-nothing")
        with self.assertRaises(InvalidStatusCode) as cm:
            await self.connect("/new")
        self.assertEqual(cm.exception.status_code, 404)

        self.write("app.lua", app_source("v2", routes=new_route))
        await self.reload_admin()
        self.assertIsNotNone(self.server.wait_for_log(
            r"route /old is gone; its live connections keep the old handlers", 2), self.server.log())
        self.assertEqual(await self.ask(old, "still"), "v1 old nil still")
        with self.assertRaises(InvalidStatusCode) as cm:
            await self.connect("/old")
        self.assertEqual(cm.exception.status_code, 404)
        new = await self.opened("/new")
        self.assertEqual(await self.ask(new, "hi"), "v2 new hi")

        # Another reload while /old is still open: it keeps serving it.
        self.write("app.lua", app_source("v3", routes=new_route))
        await self.reload_admin()
        self.assertEqual(await self.ask(old, "again"), "v1 old nil again")
        self.assertEqual(await self.ask(new, "hi"), "v3 new hi")
        await old.close()
        self.assertEqual(old.close_code, 1000)

    async def test_timers_not_doubled_after_five_reloads(self):
        extra = 'app:every(0.1, function() app:publish("tick", VERSION) end)'
        self.write("app.lua", app_source("v1", extra=extra))
        self.start()
        sub = await self.opened()
        self.assertEqual(await self.ask(sub, "sub tick"), "subscribed tick")

        async def ticks_in(seconds):
            counts = {}
            deadline = time.monotonic() + seconds
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return counts
                try:
                    got = await asyncio.wait_for(sub.recv(), left)
                except asyncio.TimeoutError:
                    return counts
                counts[got] = counts.get(got, 0) + 1

        before = await ticks_in(1.0)
        self.assertTrue(7 <= before.get("v1", 0) <= 13, before)
        for i in range(2, 7):
            self.write("app.lua", app_source("v%d" % i, extra=extra))
            await self.reload_admin()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        await ticks_in(0.2)            # whatever was in flight around the last swap
        after = await ticks_in(2.0)
        self.assertEqual(set(after), {"v6"}, "ticks from old apps after the reloads: %r" % after)
        self.assertTrue(14 <= after["v6"] <= 26,
                        "%d ticks in 2 s from a 0.1 s timer (doubled?)" % after["v6"])

    async def test_timer_added_and_timer_removed_by_an_edit(self):
        timer_a = 'app:every(0.1, function() app:publish("tick", "A " .. VERSION) end)'
        timer_b = ('app:every(0.1, function() app:publish("tick", "B " .. VERSION) end)\n'
                   'app:after(0.2, function() app:publish("tick", "once " .. VERSION) end)')
        self.write("app.lua", app_source("v1", extra=timer_a))
        self.start()
        sub = await self.opened()
        self.assertEqual(await self.ask(sub, "sub tick"), "subscribed tick")
        self.assertEqual(await self.recv(sub, 2), "A v1")
        self.write("app.lua", app_source("v2", extra=timer_b))
        await self.reload_admin()
        # Everything after this marker's reply was sent after the swap.
        await sub.send("marker")
        while True:
            got = await self.recv(sub, 2)
            if got == "v2 h1 nil marker":
                break
            self.assertEqual(got, "A v1")
        seen = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                seen.append(await asyncio.wait_for(sub.recv(), deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
        self.assertNotIn("A v1", seen, seen)
        self.assertEqual(seen.count("once v2"), 1, seen)
        self.assertTrue(7 <= seen.count("B v2") <= 13, seen)
        self.assertEqual(set(seen), {"B v2", "once v2"}, seen)


class MoreSemanticsTests(ReloadCase):
    async def test_on_close_of_a_removed_route_runs_its_old_handler(self):
        old_route = ('app:websocket("/old", {\n'
                     '  on_message = function(ws, msg) ws:send(VERSION .. " old " .. msg) end,\n'
                     '  on_close = function(ws, code) app:publish("closes", VERSION .. " closed " .. code) end,\n'
                     '})')
        self.write("app.lua", app_source("v1", routes=old_route))
        self.start()
        watcher = await self.opened()
        self.assertEqual(await self.ask(watcher, "sub closes"), "subscribed closes")
        old = await self.opened("/old")
        self.assertEqual(await self.ask(old, "a"), "v1 old a")
        self.write("app.lua", app_source("v2"))
        await self.reload_admin()
        self.assertEqual(await self.ask(old, "b"), "v1 old b")
        await old.close(4001)
        self.assertEqual(await self.recv(watcher), "v1 closed 4001")
        # Once it is closed, the next reload forgets the old route.
        await self.reload_admin()
        self.assertEqual(self.log_count(r"route /old is gone"), 1, self.server.log())

    async def test_upgrade_hook_suspended_during_a_reload_that_removes_its_route(self):
        hook_route = ('app:websocket("/hook", {\n'
                      '  upgrade = function(req) moonwire.sleep(0.4) return { who = VERSION .. " hook" } end,\n'
                      '  on_open = function(ws) ws:send(VERSION .. " open " .. ws.data.who) end,\n'
                      '  on_message = function(ws, msg) ws:send(VERSION .. " hook " .. ws.data.who .. " " .. msg) end,\n'
                      '})')
        self.write("app.lua", app_source("v1", routes=hook_route))
        self.start()
        pending = asyncio.ensure_future(self.connect("/hook"))
        await asyncio.sleep(0.15)          # the hook now sleeps
        self.assertFalse(pending.done())
        self.write("app.lua", app_source("v2"))
        await self.reload_admin()
        ws = await asyncio.wait_for(pending, T)
        self.assertEqual(await self.recv(ws), "v1 open v1 hook")
        self.assertEqual(await self.ask(ws, "m"), "v1 hook v1 hook m")
        with self.assertRaises(InvalidStatusCode) as cm:
            await self.connect("/hook")
        self.assertEqual(cm.exception.status_code, 404)

    async def test_upgrade_hook_suspended_during_a_reload_that_keeps_its_route(self):
        hook_route = ('app:websocket("/hook", {\n'
                      '  upgrade = function(req) moonwire.sleep(0.4) return { who = VERSION .. " hook" } end,\n'
                      '  on_open = function(ws) ws:send(VERSION .. " open " .. ws.data.who) end,\n'
                      '  on_message = function(ws, msg) ws:send(VERSION .. " hook " .. ws.data.who .. " " .. msg) end,\n'
                      '})')
        self.write("app.lua", app_source("v1", routes=hook_route))
        self.start()
        pending = asyncio.ensure_future(self.connect("/hook"))
        await asyncio.sleep(0.15)
        self.write("app.lua", app_source("v2", routes=hook_route))
        await self.reload_admin()
        ws = await asyncio.wait_for(pending, T)
        # The hook finished on the old code; the events after it run the new handlers.
        self.assertEqual(await self.recv(ws), "v2 open v1 hook")
        self.assertEqual(await self.ask(ws, "m"), "v2 hook v1 hook m")

    async def test_timer_run_suspended_across_reloads(self):
        extra = ('app:every(0.1, function()\n'
                 '  app:publish("tick", "start " .. VERSION)\n'
                 '  moonwire.sleep(0.25)\n'
                 '  app:publish("tick", "end " .. VERSION)\n'
                 'end)')
        self.write("app.lua", app_source("v1", extra=extra))
        self.start()
        sub = await self.opened()
        self.assertEqual(await self.ask(sub, "sub tick"), "subscribed tick")
        self.assertEqual(await self.recv(sub, 2), "start v1")   # a run now sleeps
        self.write("app.lua", app_source("v2", extra=extra))
        await self.reload_admin()
        await sub.send("marker")
        got = []
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            try:
                got.append(await asyncio.wait_for(sub.recv(), deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
        after = got[got.index("v2 h1 nil marker") + 1:]
        # The sleeping v1 run finishes on its own code, once; no new v1 run starts.
        self.assertLessEqual(after.count("end v1"), 1, got)
        self.assertEqual(got.count("end v1"), 1, got)
        self.assertNotIn("start v1", after, got)
        self.assertIn("start v2", after, got)
        self.assertIn("end v2", after, got)
        for _ in range(3):
            await self.reload_admin()
            await asyncio.sleep(0.12)
        self.assertTrue(self.server.alive())

    async def test_modules_outside_the_app_dir_are_not_reloaded(self):
        outside = tempfile.mkdtemp(prefix="mw-outside-")
        self.addCleanup(shutil.rmtree, outside, True)
        with open(os.path.join(outside, "extmod.lua"), "w") as f:
            f.write('return { tag = "ext1" }\n')
        routes = 'app:websocket("/ext", { on_message = function(ws) ws:send(VERSION .. " " .. require("extmod").tag) end })'
        self.write("app.lua", app_source("v1", routes=routes))
        self.server = self.start_server(self.app_path, env={"LUA_PATH": outside + "/?.lua;;"})
        ws = await self.opened("/ext")
        self.assertEqual(await self.ask(ws, "?"), "v1 ext1")
        with open(os.path.join(outside, "extmod.lua"), "w") as f:
            f.write('return { tag = "ext2" }\n')
        self.write("app.lua", app_source("v2", routes=routes))
        await self.sighup()
        self.assertEqual(self.log_count(r"reloaded"), 1, self.server.log())
        self.assertEqual(await self.ask(ws, "?"), "v2 ext1")

    async def test_app_options_are_read_at_startup_only(self):
        self.start()
        ws = await self.connect("/ws", create_protocol=RecordingClient)
        self.write("app.lua", app_source("v2").replace(
            "moonwire.app {}", "moonwire.app { ping_interval = 0.2, pong_timeout = 0.2, idle_timeout = 0.3 }"))
        await self.reload_admin()
        self.assertEqual(await self.ask(ws, "x"), "v2 h1 nil x")
        await asyncio.sleep(1.0)
        self.assertNotIn(9, ws.opcodes_seen, "a ping came: the reload applied ping_interval")
        self.assertTrue(ws.open, "idle_timeout of the reloaded app closed the connection")
        self.assertEqual(await self.ask(ws, "y"), "v2 h1 nil y")

    async def test_live_connections_follow_their_route_when_routes_move(self):
        param = ('app:websocket("/room/:id", {\n'
                 '  on_message = function(ws, msg) ws:send(VERSION .. " room " .. ws.params.id .. " " .. msg) end,\n'
                 '})')
        self.write("app.lua", app_source("v1", routes=param))
        self.start()
        live_ws = await self.tagged("P")
        room = await self.opened("/room/42")
        self.assertEqual(await self.ask(room, "a"), "v1 room 42 a")
        seq = await self.opened("/seq")
        self.assertEqual(await self.ask(seq, "1"), "v1 1")
        # v2 puts two new routes in front: every old route moves to another index.
        front = ('app:websocket("/first", { on_message = function(ws, msg) ws:send("WRONG first " .. msg) end })\n'
                 'app:websocket("/second/:x", { on_message = function(ws, msg) ws:send("WRONG second " .. msg) end })\n'
                 'app:websocket("/ws", {')
        self.write("app.lua", app_source("v2", routes=param).replace('app:websocket("/ws", {', front, 1))
        await self.reload_admin()
        self.assertEqual(await self.ask(live_ws, "b"), "v2 h1 P b")
        self.assertEqual(await self.ask(room, "b"), "v2 room 42 b")
        self.assertEqual(await self.ask(seq, "2"), "v2 2")
        first = await self.opened("/first")
        self.assertEqual(await self.ask(first, "c"), "WRONG first c")

    async def test_http_routes_are_reloaded_also_on_a_keep_alive_connection(self):
        hello = 'app:get("/hello", function(req, res) res:send(200, VERSION) end)'
        self.write("app.lua", app_source("v1", routes=hello))
        self.start()
        r, w = await asyncio.open_connection(self.server.host, self.server.port)

        async def get(path):
            w.write(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode())
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), T)
            status = int(head.split(b" ")[1])
            clen = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
            body = await asyncio.wait_for(r.readexactly(clen), T)
            return status, body.decode()

        self.addCleanup(w.close)
        self.assertEqual(await get("/hello"), (200, "v1"))
        added = 'app:get("/added", function(req, res) res:send(200, "added " .. VERSION) end)'
        self.write("app.lua", app_source("v2", routes=hello + "\n" + added))
        await self.reload_admin()
        self.assertEqual(await get("/hello"), (200, "v2"))
        self.assertEqual(await get("/added"), (200, "added v2"))
        self.write("app.lua", app_source("v3", routes=hello))
        await self.reload_admin()
        self.assertEqual(await get("/hello"), (200, "v3"))
        self.assertEqual((await get("/added"))[0], 404)

    async def test_a_builtin_module_is_not_replaced_by_a_same_named_file_in_the_app_dir(self):
        # The app dir holds a file that happens to be named like a module that
        # came from elsewhere (here LuaJIT's built-in `bit`). Before the reload
        # `require "bit"` answers the built-in; a reload must not change that.
        self.write("bit.lua", 'return { note = "the app\'s own bit helpers" }\n')
        routes = ('app:websocket("/bit", { on_message = function(ws)\n'
                  '  ws:send(VERSION .. " " .. type(require("bit").band))\n'
                  'end })')
        self.write("app.lua", app_source("v1", routes=routes))
        self.start()
        ws = await self.opened("/bit")
        self.assertEqual(await self.ask(ws, "?"), "v1 function")
        self.write("app.lua", app_source("v2", routes=routes))
        await self.reload_admin()
        self.assertEqual(await self.ask(ws, "?"), "v2 function",
                         "after the reload require('bit') is the app dir's bit.lua")

    async def test_unknown_app_option_fails_the_reload(self):
        self.start()
        ws = await self.tagged("O")
        broken = app_source("v2").replace("moonwire.app {}", "moonwire.app { ping_intervall = 1 }")
        line = line_of(broken, "ping_intervall")
        self.write("app.lua", broken)
        body = await self.reload_admin(expect_ok=False)
        self.assertIn("ping_intervall", body["error"])
        self.assertRegex(body["error"], re.escape(self.app_path) + ":%d:" % line)
        self.assertEqual(await self.ask(ws, "still"), "v1 h1 O still")


# ---------------------------------------------------------------------------
class AdminTests(ReloadCase):
    async def test_moonwire_reload_without_admin_listener(self):
        port = mwserver.free_port()
        code, out, err = await self.reload_command("--admin", "127.0.0.1:%d" % port)
        self.assertEqual(code, 1, "stdout %r stderr %r" % (out, err))
        self.assertIn("no admin listener at 127.0.0.1:%d" % port, err)
        self.assertEqual(out, "")
        if port_is_open(9090):
            self.skipTest("something listens on 127.0.0.1:9090; default address not checked")
        code, out, err = await self.reload_command()
        self.assertEqual(code, 1, "stdout %r stderr %r" % (out, err))
        self.assertIn("no admin listener at 127.0.0.1:9090", err)

    async def test_moonwire_reload_to_a_server_without_admin(self):
        # A server started without --admin does not listen on the admin port.
        self.start(admin=False)
        port = mwserver.free_port()
        code, _, err = await self.reload_command("--admin", "127.0.0.1:%d" % port)
        self.assertEqual(code, 1)
        self.assertIn("no admin listener", err)
        self.assertEqual(self.log_count(r"reloaded|reload failed"), 0)

    async def test_status_counts(self):
        self.start()
        status, st = await self.admin("GET", "/status")
        self.assertEqual(status, 200)
        self.assertEqual(st, {"connections": 0, "reloads": 0, "reload_failures": 0},
                         "GET /status on an idle server")
        clients = [await self.opened() for _ in range(3)]
        status, st = await self.admin("GET", "/status")
        self.assertEqual(st["connections"], 3, st)
        await self.reload_admin()
        self.write("app.lua", "return 42\n")
        await self.reload_admin(expect_ok=False)
        await self.reload_admin(expect_ok=False)
        self.write("app.lua", app_source("v2"))
        await self.reload_admin()
        await clients[0].close()
        await asyncio.sleep(0.2)
        status, st = await self.admin("GET", "/status")
        self.assertEqual(st, {"connections": 2, "reloads": 2, "reload_failures": 2}, st)

    async def test_admin_token_guards_every_admin_request(self):
        token = secrets.token_hex(32)
        metrics_port = mwserver.free_port()
        self.start("--metrics", "127.0.0.1:%d" % metrics_port, token=token)
        bearer = "Authorization: Bearer " + token
        wrong = token[:-1] + ("0" if token[-1] != "0" else "1")
        for method, path in (("GET", "/status"), ("POST", "/reload"), ("GET", "/metrics")):
            for headers in ((), ("Authorization: Bearer " + wrong,),
                            ("Authorization: Bearer " + token[:-1],),
                            ("Authorization: Basic " + token,),
                            (bearer, bearer)):  # two of them: refused, not guessed at
                status, body = await self.admin(method, path, headers=headers)
                self.assertEqual(status, 401, "%s %s with %r: %r" % (method, path, headers, body))
                self.assertRegex(self.last_head,
                                 r'(?im)^WWW-Authenticate: Bearer realm="moonwire admin"\r?$')
                self.assertIn("--admin-token-file", body)
        self.assertEqual(self.log_count(r"reloaded|reload failed"), 0)
        # 15 refusals; the log has at most one line a second, each with how
        # many were refused since the line before (itself included)
        refused = (r"admin listener: refused \S+ \S+ from 127\.0\.0\.1 without the admin "
                   r"token \((\d+) refused since the last")
        await self.wait_log_count(refused, 1)
        await asyncio.sleep(1.1)
        lines = self.log_count(refused)
        self.assertLessEqual(lines, 3, self.server.log_tail(20))  # 15 requests took < 2 s
        status, _ = await self.admin("GET", "/status")
        self.assertEqual(status, 401)
        await self.wait_log_count(refused, lines + 1)
        counts = [int(m.group(1)) for m in re.finditer(refused, self.server.log())]
        self.assertEqual(sum(counts), 16, self.server.log_tail(20))
        self.assertEqual(counts[0], 1)  # the first refusal is logged at once
        status, st = await self.admin("GET", "/status", headers=(bearer,))
        self.assertEqual((status, st["reloads"]), (200, 0), st)
        # the separate metrics listener takes no token
        status, text = await self.admin("GET", "/metrics", port=metrics_port)
        self.assertEqual(status, 200)
        self.assertIn("moonwire_connections_accepted_total", text)
        # the scheme is case-insensitive (RFC 9110 11.1)
        status, _ = await self.admin("GET", "/metrics",
                                     headers=("authorization: bearer " + token,))
        self.assertEqual(status, 200)
        n = self.log_count(r"reload(ed| failed)")
        status, body = await self.admin("POST", "/reload", headers=(bearer,))
        self.assertEqual((status, body), (200, {"ok": True, "reloads": 1}))
        await self.wait_log_count(r"reloaded .*\(admin request\)", n + 1)

        # moonwire reload: refused without the token, with the server's answer
        addr = "127.0.0.1:%d" % self.admin_port
        code, out, err = await self.reload_command("--admin", addr)
        self.assertEqual((code, out), (1, ""), err)
        self.assertIn("401 Unauthorized", err)
        self.assertIn("--admin-token-file", err)
        code, out, err = await self.reload_command(
            "--admin", addr, "--admin-token-file", os.path.join(self.dir, "admin.token"))
        self.assertEqual(code, 0, "stdout %r stderr %r" % (out, err))
        self.assertEqual(json.loads(out), {"ok": True, "reloads": 2})
        code, out, err = await self.reload_command("--admin", addr, "--admin-token-file",
                                                   os.path.join(self.dir, "missing.token"))
        self.assertEqual(code, 2, err)
        self.assertIn("missing.token", err)

    async def test_admin_connections_have_their_own_bound(self):
        self.start("--max-admin-connections", "2", "--max-connections", "1")
        # two idle admin connections fill max_admin_connections ...
        held = [await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.admin_port), T)
                for _ in range(2)]
        await asyncio.sleep(0.2)
        # ... so a third is closed at once, without an answer
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.admin_port), T)
        self.assertEqual(await asyncio.wait_for(r.read(), T), b"")
        w.close()
        # (the log reaches us on a reader thread: wait for the line)
        refusing = r"refusing admin connections: max_admin_connections \(2\) reached"
        await self.wait_log_count(refusing, 1)
        self.assertEqual(self.log_count(refusing), 1)
        # and none of them took the app's one connection slot
        ws = await self.opened()
        self.assertEqual(await self.ask(ws, "hello"), "v1 h1 nil hello")
        await ws.close()
        for r, w in held:
            w.close()
        await asyncio.sleep(0.2)
        status, _ = await self.admin("GET", "/status")
        self.assertEqual(status, 200)
        # a request with a body is refused before any of it is buffered
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.admin_port), T)
        w.write(b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        await w.drain()
        data = await asyncio.wait_for(r.read(), T)
        w.close()
        self.assertTrue(data.startswith(b"HTTP/1.1 413 "), data[:100])
        self.assertIn(b"take no request body", data)
        self.assertEqual(self.log_count("reloaded"), 0)

    async def test_admin_methods_and_paths(self):
        self.start()
        status, _ = await self.admin("GET", "/reload")
        self.assertEqual(status, 405)
        status, _ = await self.admin("GET", "/nope")
        self.assertEqual(status, 404)
        self.assertEqual(self.log_count("reloaded"), 0)


# ---------------------------------------------------------------------------
class LoadTests(ReloadCase):
    CLIENTS = 1000
    RELOADS = 20
    WINDOW = 4          # messages each client keeps in flight

    async def test_1000_streaming_clients_through_20_admin_reloads(self):
        self.start()
        stop = asyncio.Event()
        problems = []
        final = "v%d" % (self.RELOADS + 1)

        async def open_one():
            return await websockets.connect(self.url("/seq"), ping_interval=None,
                                            close_timeout=3, open_timeout=30, max_queue=None)

        conns = []
        for i in range(0, self.CLIENTS, 100):
            conns += await asyncio.gather(*(open_one() for _ in range(100)))
        for ws in conns:
            self.addAsyncCleanup(self._close_quietly, ws)

        stats = {"sent": 0, "versions": set()}

        async def client(idx, ws):
            sent = 0         # messages sent: 1..sent
            got = 0          # replies checked: 1..got
            version = 1
            seen_final = False
            credit = asyncio.Semaphore(self.WINDOW)

            async def sender():
                nonlocal sent
                while not (stop.is_set() and seen_final):
                    await credit.acquire()
                    sent += 1
                    await ws.send("%d" % sent)

            task = asyncio.ensure_future(sender())
            try:
                while True:
                    reply = await asyncio.wait_for(ws.recv(), 20)
                    tag, _, num = reply.partition(" ")
                    got += 1
                    if num != str(got):
                        problems.append("client %d: expected reply %d, got %r" % (idx, got, reply))
                        return
                    v = int(tag[1:])
                    if v < version:
                        problems.append("client %d: version went back %d -> %d at %d"
                                        % (idx, version, v, got))
                        return
                    version = v
                    stats["versions"].add(v)
                    if stop.is_set() and tag == final:
                        seen_final = True
                    credit.release()
                    if seen_final and got == sent:
                        break
                    if got > sent:
                        problems.append("client %d: more replies than messages" % idx)
                        return
            except (ConnectionClosed, asyncio.TimeoutError) as e:
                problems.append("client %d: %r after %d replies" % (idx, e, got))
            finally:
                task.cancel()
                stats["sent"] += sent

        tasks = [asyncio.ensure_future(client(i, ws)) for i, ws in enumerate(conns)]
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        for n in range(2, self.RELOADS + 2):
            self.write("app.lua", app_source("v%d" % n))
            body = await self.reload_admin()
            self.assertEqual(body["reloads"], n - 1)
            await asyncio.sleep(max(0, t0 + 0.1 * (n - 1) - time.monotonic()))
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        self.assertEqual(problems[:10], [], "%d clients had problems" % len(problems))
        self.assertTrue(all(ws.open for ws in conns), "a connection was dropped")
        self.assertIn(self.RELOADS + 1, stats["versions"])
        self.assertGreaterEqual(len(stats["versions"]), self.RELOADS // 2,
                                "versions seen: %r" % sorted(stats["versions"]))
        self.assertGreater(stats["sent"], self.CLIENTS * 10)
        self.assertEqual(self.log_count(r"reloaded .*\(admin request\)"), self.RELOADS)
        status, st = await self.admin("GET", "/status")
        self.assertEqual(st["reloads"], self.RELOADS)
        sys.stderr.write("\n%d clients, %d messages, versions seen %d\n"
                         % (self.CLIENTS, stats["sent"], len(stats["versions"])))


if __name__ == "__main__":
    unittest.main(verbosity=2)
