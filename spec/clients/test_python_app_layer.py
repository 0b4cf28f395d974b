"""moonwire's application layer driven by independent clients: python3-websockets
(Debian, 10.x), http.client and raw sockets.

Covers upgrade hooks, subprotocols, the origin policy, route parameters,
pub/sub, timers, backpressure (slow consumers), plain HTTP routes and static
files, as documented for issue 3 (the application-layer API).

    /usr/bin/python3 spec/clients/test_python_app_layer.py          # from the repo root
    MOONWIRE_BIN=/path/to/moonwire /usr/bin/python3 spec/clients/test_python_app_layer.py -k Static

Every test starts its own moonwire process (``--listen 127.0.0.1:0``) and
stops it in cleanup; a server that died during a test, or a sanitizer report
in its log, fails that test. Test apps: spec/apps/upgrade.lua and spec/apps/http.lua
(shared with the busted specs), spec/clients/apps/app_*.lua (the static-file app
is generated in a temporary directory).
"""

import asyncio
import email.utils
import hashlib
import http.client
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import base64

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    import websockets
    from websockets.exceptions import InvalidStatusCode
except ImportError as e:  # pragma: no cover
    sys.stderr.write(
        "cannot import websockets (%s): run with /usr/bin/python3 "
        "(Debian python3-websockets)\n" % e
    )
    sys.exit(2)

import mwserver
from test_python_websockets import MoonwireCase  # server lifecycle, log dumps, sanitizer check

APPS = os.path.join(mwserver.clients_dir(), "apps")
SPEC_APPS = os.path.join(os.path.dirname(mwserver.clients_dir()), "apps")
UPGRADE_APP = os.path.join(SPEC_APPS, "upgrade.lua")
PUBSUB_APP = os.path.join(APPS, "app_pubsub.lua")
TIMERS_APP = os.path.join(APPS, "app_timers.lua")
BACKPRESSURE_APP = os.path.join(APPS, "app_backpressure.lua")
HTTP_APP = os.path.join(SPEC_APPS, "http.lua")

KiB = 1024
MiB = 1024 * 1024
T = 10.0


def app_line(path, needle):
    """1-based line number of the first line of an app file containing needle."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if needle in line:
                return i
    raise AssertionError("%r not found in %s" % (needle, path))


# ---------------------------------------------------------------------------
# Raw HTTP / WebSocket over a plain socket (no library between us and the server)
class Response:
    def __init__(self, version, status, reason, headers, body, raw_head):
        self.version, self.status, self.reason = version, status, reason
        self.headers = headers          # list of (name, value), names as sent
        self.body = body
        self.raw_head = raw_head

    def header(self, name, default=None):
        vals = self.all(name)
        return vals[0] if vals else default

    def all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def __repr__(self):
        return "<Response %s %r %r body=%r>" % (self.status, self.reason, self.headers, self.body[:200])


class RawConn:
    """A blocking TCP connection with a read buffer; speaks HTTP/1.1 and RFC 6455 frames."""

    def __init__(self, port, host="127.0.0.1", rcvbuf=None, timeout=T):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            # must be set before connect() so the window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buf = b""
        self.eof = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            self.eof = True
            raise EOFError("connection closed by server (buffered %d bytes)" % len(self.buf))
        self.buf += chunk

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_until(self, sep):
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out, self.buf = self.buf[:i + len(sep)], self.buf[i + len(sep):]
                return out
            self._fill()

    def read_to_eof(self, limit=64 * MiB):
        try:
            while len(self.buf) < limit:
                self._fill()
        except EOFError:
            pass
        out, self.buf = self.buf, b""
        return out

    def at_eof(self, timeout=3.0):
        """True when the server closes the connection (nothing more arrives) within timeout."""
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            if self.buf:
                return False
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return True
            except socket.timeout:
                return False
            if chunk:
                self.buf += chunk
                return False
            return True
        finally:
            self.sock.settimeout(old)

    # -- HTTP --------------------------------------------------------------
    def read_response(self, head=False):
        raw_head = self.read_until(b"\r\n\r\n")
        lines = raw_head[:-4].decode("latin-1").split("\r\n")
        m = re.match(r"^(HTTP/\d\.\d) (\d{3}) ?(.*)$", lines[0])
        if not m:
            raise AssertionError("bad status line %r" % lines[0])
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.append((k.strip(), v.strip()))
        status = int(m.group(2))
        resp = Response(m.group(1), status, m.group(3), headers, b"", raw_head)
        if head or status in (101, 204, 304) or 100 <= status < 200:
            return resp
        cl = resp.header("Content-Length")
        if cl is not None:
            resp.body = self.read_exact(int(cl))
        else:
            resp.body = self.read_to_eof()
        return resp

    # -- WebSocket frames (client side: masked) ------------------------------
    def send_frame(self, opcode, payload=b"", fin=True):
        self.send(client_frame(opcode, payload, fin))

    def send_text(self, text):
        self.send_frame(0x1, text.encode())

    def read_frame(self):
        """-> (fin, opcode, payload); fails on anything a server must not send."""
        b0, b1 = self.read_exact(2)
        if b1 & 0x80:
            raise AssertionError("server frame is masked")
        if b0 & 0x70:
            raise AssertionError("server frame has RSV bits set: %#x" % b0)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.read_exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.read_exact(8))[0]
        return bool(b0 & 0x80), b0 & 0x0F, self.read_exact(n)

    def read_message(self):
        """-> (opcode, payload) of the next data or close message; answers pings."""
        parts, first = [], None
        while True:
            fin, op, payload = self.read_frame()
            if op == 0x9:
                self.send_frame(0xA, payload)
                continue
            if op == 0xA:
                continue
            if op == 0x8:
                if parts:
                    raise AssertionError("close frame inside a fragmented message")
                return op, payload
            if first is None:
                if op not in (0x1, 0x2):
                    raise AssertionError("unexpected opcode %#x at message start" % op)
                first = op
            elif op != 0x0:
                raise AssertionError("data frame opcode %#x inside a fragmented message" % op)
            parts.append(payload)
            if fin:
                return first, b"".join(parts)


def client_frame(opcode, payload=b"", fin=True):
    """One masked (client-to-server) frame."""
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload)
    hdr = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        hdr += bytes([0x80 | n])
    elif n < 65536:
        hdr += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        hdr += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_request(path, port, host=None, headers=(), key=None):
    key = key or base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET %s HTTP/1.1" % path,
        "Host: %s" % (host or "127.0.0.1:%d" % port),
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: %s" % key,
        "Sec-WebSocket-Version: 13",
    ]
    lines += ["%s: %s" % kv for kv in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def raw_upgrade(port, path, headers=(), host=None, rcvbuf=None):
    """Sends an upgrade request on a new RawConn; returns (conn, response)."""
    c = RawConn(port, rcvbuf=rcvbuf)
    key = base64.b64encode(os.urandom(16)).decode()
    c.send(ws_request(path, port, host=host, headers=headers, key=key))
    resp = c.read_response()
    if resp.status == 101:
        want = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        if resp.header("Sec-WebSocket-Accept") != want:
            raise AssertionError("bad Sec-WebSocket-Accept in %r" % resp)
    return c, resp


def http_get(port, path, method="GET", headers=None, body=None, timeout=T):
    """One request on a fresh http.client connection -> (status, headers (HTTPMessage), body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


class AppCase(MoonwireCase):
    """MoonwireCase with raw-socket helpers that are closed in cleanup."""

    def raw(self, *a, **kw):
        c = RawConn(self.server.port, *a, **kw)
        self.addCleanup(c.close)
        return c

    def upgrade(self, path, headers=(), host=None, rcvbuf=None, srv=None):
        c, resp = raw_upgrade((srv or self.server).port, path, headers=headers, host=host, rcvbuf=rcvbuf)
        self.addCleanup(c.close)
        return c, resp

    def assert_refused(self, resp, conn, status):
        self.assertEqual(resp.status, status, repr(resp))
        self.assertEqual((resp.header("Connection") or "").lower(), "close", repr(resp))
        self.assertEqual(int(resp.header("Content-Length", "-1")), len(resp.body), repr(resp))
        self.assertTrue(conn.at_eof(3.0), "server did not close after %d" % status)

    def assert_no_log(self, pattern):
        hit = re.search(pattern, self.server.log())
        self.assertIsNone(hit, "unexpected log line matching %r" % pattern)


# ---------------------------------------------------------------------------
class UpgradeHookTests(AppCase):
    app = UPGRADE_APP

    async def test_refuse_with_status_only(self):
        c, resp = self.upgrade("/refuse_status", headers=[("X-Tag", "r401")])
        self.assertEqual(resp.version + " " + str(resp.status), "HTTP/1.1 401")
        self.assert_refused(resp, c, 401)
        self.assertIsNotNone(await self.wait_log(r"HOOK RAN /refuse_status tag=r401"))
        # an independent client sees the same
        with self.assertRaises(InvalidStatusCode) as cm:
            await websockets.connect(self.url("/refuse_status"), open_timeout=T)
        self.assertEqual(cm.exception.status_code, 401)
        self.assert_no_log(r"MUST NOT OPEN")

    async def test_refuse_with_body_and_headers(self):
        c, resp = self.upgrade("/refuse_full?who=bob")
        self.assertTrue(resp.raw_head.startswith(b"HTTP/1.1 429 "), resp.raw_head[:40])
        self.assertEqual(resp.body, b"slow down bob\n")
        self.assertEqual(resp.header("Retry-After"), "7")
        self.assertEqual(resp.header("X-Why"), "rate limited")
        self.assert_refused(resp, c, 429)

    async def test_false_refuses_403(self):
        c, resp = self.upgrade("/refuse_false")
        self.assert_refused(resp, c, 403)
        with self.assertRaises(InvalidStatusCode) as cm:
            await websockets.connect(self.url("/refuse_false"), open_timeout=T)
        self.assertEqual(cm.exception.status_code, 403)

    async def test_accept_with_table_becomes_ws_data(self):
        # the app sends ws.data as a Lua table literal with sorted keys
        ws = await self.connect("/accept_table?user=alice")
        self.assertEqual(await self.recv(ws), '{["n"]=42,["user"]="alice"}')
        await ws.send("hi")
        self.assertEqual(await self.recv(ws), '{["last"]="hi",["n"]=42,["user"]="alice"}')
        # ws.data is per connection
        ws2 = await self.connect("/accept_table?user=carol")
        self.assertEqual(await self.recv(ws2), '{["n"]=42,["user"]="carol"}')
        await ws.send("again")
        self.assertEqual(await self.recv(ws), '{["last"]="again",["n"]=42,["user"]="alice"}')

    async def test_hook_sees_the_request(self):
        ws = await self.connect("/inspect/it%20em?q=a%20b", subprotocols=["x.one", "x.two"],
                                origin="http://elsewhere.example", extra_headers={"X-Tag": "insp"})
        self.assertIsNone(ws.subprotocol)  # the route has no `protocols`
        # one Lua table literal with sorted keys: every field, in order
        self.assertEqual(await self.recv(ws), "{" + ",".join([
            '["method"]="GET"',
            '["origin"]="http://elsewhere.example"',
            '["params"]={["id"]="it em"}',
            '["path"]="/inspect/it%20em"',
            '["protocols"]={[1]="x.one",[2]="x.two"}',
            '["query"]={["q"]="a b"}',
            '["query_string"]="q=a%20b"',
            '["remote_addr"]="127.0.0.1"',
            '["remote_port"]=%d' % ws.local_address[1],
            '["route"]="/inspect/:id"',
            '["xtag"]="insp"',
        ]) + "}")

    async def test_sleeping_hook_does_not_block_other_clients(self):
        t0 = time.monotonic()
        slow = asyncio.ensure_future(self.connect("/slow_hook?sleep=0.3"))
        await asyncio.sleep(0.05)
        self.assertFalse(slow.done(), "the sleeping hook answered at once")
        ws = await self.connect("/fast")
        await self.assert_echo(ws, "served meanwhile")
        fast_done = time.monotonic() - t0
        self.assertFalse(slow.done(), "fast client was served only after the slow hook (%.3fs)" % fast_done)
        self.assertLess(fast_done, 0.25)
        sws = await asyncio.wait_for(slow, T)
        msg = await self.recv(sws)
        self.assertTrue(msg.startswith("open after 0.3"), msg)
        self.assertGreaterEqual(time.monotonic() - t0, 0.29)

    async def test_frames_sent_with_the_request_wait_for_the_sleeping_hook(self):
        c = self.raw()
        early = b"".join(client_frame(0x1, b"early %d" % i) for i in range(3))
        early += client_frame(0x2, b"\x00\x01bin")
        c.send(ws_request("/slow_hook?sleep=0.3", self.server.port) + early)
        resp = c.read_response()
        self.assertEqual(resp.status, 101)
        op, msg = c.read_message()
        self.assertTrue(msg.startswith(b"open after 0.3"), msg)
        self.assertEqual([c.read_message() for _ in range(4)],
                         [(0x1, b"early 0"), (0x1, b"early 1"), (0x1, b"early 2"), (0x2, b"\x00\x01bin")])
        # refused: the early frames are never handled
        c2 = self.raw()
        c2.send(ws_request("/refuse_status", self.server.port) + early)
        r2 = c2.read_response()
        self.assert_refused(r2, c2, 401)

    async def test_client_leaves_while_hook_sleeps(self):
        for i in range(5):
            c = self.raw()
            c.send(ws_request("/slow_hook?sleep=0.3", self.server.port, headers=[("X-Tag", "gone%d" % i)]))
            await asyncio.sleep(0.02)
            if i % 2:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
            c.close()
        self.assertIsNotNone(await self.wait_log(r"HOOK RAN /slow_hook tag=gone4"))
        await asyncio.sleep(0.5)  # every hook has woken up by now
        ws = await self.connect("/fast")
        await self.assert_echo(ws, "still serving")
        self.assert_no_log(r"ERROR")

    async def test_hook_slower_than_handshake_timeout_is_408(self):
        srv = self.start_server(UPGRADE_APP, "--handshake-timeout", "0.5")
        t0 = time.monotonic()
        c, resp = self.upgrade("/very_slow_hook", srv=srv)
        took = time.monotonic() - t0
        self.assertEqual(resp.status, 408, repr(resp))
        self.assertTrue(c.at_eof(3))
        self.assertGreater(took, 0.4)
        self.assertLess(took, 1.15, "408 only after the hook finished")
        # the hook wakes up later: nothing opens, nothing breaks
        self.assertIsNotNone(await self.wait_log(r"VERY SLOW HOOK WOKE", srv=srv))
        await asyncio.sleep(0.1)
        self.assertNotIn("VERY SLOW HOOK OPENED", srv.log())
        ws = await self.connect("/fast", srv=srv)
        await self.assert_echo(ws, "after the 408")

    async def test_hook_error_is_500_and_logged_with_file_and_line(self):
        c, resp = self.upgrade("/hook_error")
        self.assert_refused(resp, c, 500)
        self.assertIn(b"upgrade hook failed", resp.body)
        line = app_line(UPGRADE_APP, "HOOK_ERROR_LINE")
        self.assertIsNotNone(
            await self.wait_log(r"upgrade\.lua:%d:.*upgrade hook boom" % line),
            "hook error not logged with upgrade.lua:%d" % line)
        # the server goes on
        ws = await self.connect("/fast")
        await self.assert_echo(ws, "after hook error")
        self.assert_no_log(r"MUST NOT OPEN")

    async def test_hook_setting_unoffered_protocol_is_500(self):
        for offered in ([("Sec-WebSocket-Protocol", "a, b")], []):
            with self.subTest(offered=offered):
                c, resp = self.upgrade("/bad_protocol", headers=offered)
                self.assert_refused(resp, c, 500)
                self.assertIsNone(resp.header("Sec-WebSocket-Protocol"))
        self.assertIsNotNone(await self.wait_log(r"ERROR.*never\.offered"),
                             "the refused protocol was not logged")
        self.assert_no_log(r"MUST NOT OPEN")

    async def test_response_headers_appear_on_101(self):
        c, resp = self.upgrade("/response_headers")
        self.assertEqual(resp.status, 101)
        self.assertEqual(resp.header("X-Hello"), "world")
        self.assertEqual(resp.header("X-Route"), "/response_headers")
        self.assertEqual(c.read_message(), (0x1, b"open"))
        ws = await self.connect("/response_headers")
        self.assertEqual(ws.response_headers.get("X-Hello"), "world")
        self.assertEqual(await self.recv(ws), "open")

    async def test_refusals_leave_no_connection_behind(self):
        # many refused upgrades, then normal service
        for i in range(50):
            c, resp = self.upgrade(["/refuse_status", "/refuse_false", "/hook_error", "/refuse_full"][i % 4])
            self.assertIn(resp.status, (401, 403, 500, 429))
            c.close()
        ws = await self.connect("/fast")
        await self.assert_echo(ws, "fine")


class SubprotocolTests(AppCase):
    app = UPGRADE_APP

    async def test_server_preference_among_offered(self):
        cases = [
            (["chat.v1", "chat.v2"], "chat.v2"),
            (["chat.v2", "chat.v1"], "chat.v2"),
            (["other", "chat.v1"], "chat.v1"),
            (["chat.v2"], "chat.v2"),
        ]
        for offered, chosen in cases:
            with self.subTest(offered=offered):
                ws = await self.connect("/proto", subprotocols=offered)
                self.assertEqual(ws.subprotocol, chosen)
                self.assertEqual(await self.recv(ws), "open")
                await self.assert_echo(ws, "x")
                await ws.close()

    async def test_raw_header_value(self):
        c, resp = self.upgrade("/proto", headers=[("Sec-WebSocket-Protocol", "zzz, chat.v1"),
                                                  ("Sec-WebSocket-Protocol", "chat.v2")])
        self.assertEqual(resp.status, 101)
        self.assertEqual(resp.all("Sec-WebSocket-Protocol"), ["chat.v2"])

    async def test_none_offered_or_none_acceptable_sends_no_header(self):
        for hdrs in ([], [("Sec-WebSocket-Protocol", "other, another")]):
            with self.subTest(headers=hdrs):
                c, resp = self.upgrade("/proto", headers=hdrs)
                self.assertEqual(resp.status, 101, repr(resp))
                self.assertEqual(resp.all("Sec-WebSocket-Protocol"), [])
                self.assertEqual(c.read_message(), (0x1, b"open"))
        ws = await self.connect("/proto")
        self.assertIsNone(ws.subprotocol)

    async def test_hook_overrides_protocol(self):
        ws = await self.connect("/proto_hook", subprotocols=["chat.v2", "chat.v1"])
        self.assertEqual(ws.subprotocol, "chat.v1")
        # the hook saw the route's preselection before changing it
        self.assertEqual(await self.recv(ws), "preselected=chat.v2")
        ws2 = await self.connect("/proto_hook", subprotocols=["chat.v2"])
        self.assertEqual(ws2.subprotocol, "chat.v2")
        self.assertEqual(await self.recv(ws2), "preselected=chat.v2")
        ws3 = await self.connect("/proto_hook")
        self.assertIsNone(ws3.subprotocol)
        self.assertEqual(await self.recv(ws3), "preselected=nil")


class OriginTests(AppCase):
    app = UPGRADE_APP

    def origin(self, path, origin, tag, host=None):
        headers = [("X-Tag", tag)]
        if origin is not None:
            headers.append(("Origin", origin))
        return self.upgrade(path, headers=headers, host=host)

    async def test_default_policy(self):
        port = self.server.port
        c, resp = self.origin("/origin_default", None, "none")
        self.assertEqual(resp.status, 101)
        c, resp = self.origin("/origin_default", "http://127.0.0.1:%d" % port, "same")
        self.assertEqual(resp.status, 101)
        self.assertEqual(c.read_message(), (0x1, b"open"))
        c, resp = self.origin("/origin_default", "http://localhost:%d" % port, "samehost",
                              host="localhost:%d" % port)
        self.assertEqual(resp.status, 101)
        for i, bad in enumerate(["http://evil.example", "http://127.0.0.1:%d" % (port + 1),
                                 "http://127.0.0.1", "https://evil.example:%d" % port, "null"]):
            with self.subTest(origin=bad):
                c, resp = self.origin("/origin_default", bad, "bad%d" % i)
                self.assert_refused(resp, c, 403)
                self.assertIn(b"origin not allowed", resp.body)
        # the hook ran for the accepted ones ...
        for tag in ("none", "same", "samehost"):
            self.assertIsNotNone(await self.wait_log(r"HOOK RAN /origin_default tag=%s$" % tag), tag)
        # ... and (after one more accepted request, logged after the refusals) never for refused ones
        c, resp = self.origin("/origin_default", None, "last")
        self.assertEqual(resp.status, 101)
        self.assertIsNotNone(await self.wait_log(r"HOOK RAN /origin_default tag=last"))
        self.assert_no_log(r"HOOK RAN /origin_default tag=bad")

    async def test_star_allows_any(self):
        for i, origin in enumerate([None, "http://evil.example", "https://x.y:1234", "null"]):
            with self.subTest(origin=origin):
                c, resp = self.origin("/origin_any", origin, "any%d" % i)
                self.assertEqual(resp.status, 101, repr(resp))
                self.assertEqual(c.read_message(), (0x1, b"open"))

    async def test_list_allows_exactly_those(self):
        port = self.server.port
        good = ["https://a.example", "http://localhost:3000", "HTTPS://A.EXAMPLE", "http://LocalHost:3000"]
        bad = ["https://b.example", "http://a.example", "https://a.example:8443", "http://localhost:3001",
               "http://localhost", "https://a.example.evil", "http://127.0.0.1:%d" % port]
        for i, origin in enumerate(good):
            with self.subTest(good=origin):
                c, resp = self.origin("/origin_list", origin, "good%d" % i)
                self.assertEqual(resp.status, 101, repr(resp))
        for i, origin in enumerate(bad):
            with self.subTest(bad=origin):
                c, resp = self.origin("/origin_list", origin, "bad%d" % i)
                self.assert_refused(resp, c, 403)
        c, resp = self.origin("/origin_list", "https://a.example", "last")
        self.assertEqual(resp.status, 101)
        self.assertIsNotNone(await self.wait_log(r"HOOK RAN /origin_list tag=last"))
        self.assert_no_log(r"HOOK RAN /origin_list tag=bad")

    async def test_websockets_client_with_origin(self):
        ws = await self.connect("/origin_default", origin="http://127.0.0.1:%d" % self.server.port)
        self.assertEqual(await self.recv(ws), "open")
        with self.assertRaises(InvalidStatusCode) as cm:
            await websockets.connect(self.url("/origin_default"), origin="http://evil.example",
                                     open_timeout=T)
        self.assertEqual(cm.exception.status_code, 403)


class RouteParamTests(AppCase):
    app = UPGRADE_APP

    async def test_params(self):
        cases = {
            "/room/general": 'param {["name"]="general"}',
            "/room/caf%C3%A9%20bar": 'param {["name"]="caf\u00e9 bar"}',
            "/room/general?x=1": 'param {["name"]="general"}',
            "/a/1/b/two": 'param {["x"]="1",["y"]="two"}',
            "/a/%2F/b/two%2Fthree": 'param {["x"]="/",["y"]="two/three"}',
            "/room/lobby": "exact {}",
            "/room/lobby?q=1": "exact {}",
            "/room/lobby2": 'param {["name"]="lobby2"}',
        }
        for path, want in cases.items():
            with self.subTest(path=path):
                ws = await self.connect(path)
                self.assertEqual(await self.recv(ws), want)
                await ws.close()

    async def test_unmatched_is_404(self):
        for path in ["/room", "/room/", "/room/a/b", "/a/1/b", "/a/1/b/", "/a//b/2", "/nope", "/a/1/c/2"]:
            with self.subTest(path=path):
                c, resp = self.upgrade(path)
                self.assert_refused(resp, c, 404)


# ---------------------------------------------------------------------------
class PubSubTests(AppCase):
    app = PUBSUB_APP

    async def cmd(self, ws, text):
        await ws.send(text)
        return await self.recv(ws)

    async def test_fanout_to_1000_subscribers_in_order_exactly_once(self):
        n_subs, n_msgs = 1000, 20
        subs = []

        async def open_one():
            ws = await websockets.connect(self.url("/sub?topic=fan"), ping_interval=None,
                                          close_timeout=3, open_timeout=30, compression=None)
            subs.append(ws)
            got = await asyncio.wait_for(ws.recv(), 20)
            if got != "subscribed true":
                raise AssertionError("subscriber got %r" % got)

        try:
            for start in range(0, n_subs, 100):  # batches keep the listen backlog happy
                await asyncio.wait_for(asyncio.gather(*[open_one() for _ in range(100)]), 30)
            self.assertEqual(len(subs), n_subs)
            ctl = await self.connect("/sub")
            self.assertEqual(await self.recv(ctl), "subscribed none")
            self.assertEqual(await self.cmd(ctl, "count fan"), "count %d" % n_subs)
            t0 = time.monotonic()
            self.assertEqual(await self.cmd(ctl, "burst fan %d" % n_msgs), "burst %d" % (n_subs * n_msgs))
            want = ["fan %d" % i for i in range(1, n_msgs + 1)]

            async def collect(ws):
                return [await asyncio.wait_for(ws.recv(), 20) for _ in range(n_msgs)]

            got = await asyncio.wait_for(asyncio.gather(*[collect(ws) for ws in subs]), 40)
            elapsed = time.monotonic() - t0
            bad = [i for i, g in enumerate(got) if g != want]
            self.assertEqual(bad, [], "subscriber %s got %r" % (bad[:1], got[bad[0]] if bad else None))

            # exactly once: the next thing each subscriber sees is the answer to its own command
            async def after(ws):
                await ws.send("count fan")
                return await asyncio.wait_for(ws.recv(), 20)

            tails = await asyncio.wait_for(asyncio.gather(*[after(ws) for ws in subs]), 40)
            self.assertEqual(set(tails), {"count %d" % n_subs}, "extra messages after the burst")
            self.assertLess(elapsed, 20)
        finally:
            await asyncio.gather(*[self._close_quietly(ws) for ws in subs], return_exceptions=True)
        # all gone: the subscriptions ended with the connections
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            st, _, body = await asyncio.to_thread(http_get, self.server.port, "/count?topic=fan")
            if body == b"0":
                break
            await asyncio.sleep(0.1)
        self.assertEqual(body, b"0")

    async def test_subscribe_unsubscribe_and_counts(self):
        ws = await self.connect("/sub")
        self.assertEqual(await self.recv(ws), "subscribed none")
        self.assertEqual(await self.cmd(ws, "count t"), "count 0")
        self.assertEqual(await self.cmd(ws, "sub t"), "sub true")
        self.assertEqual(await self.cmd(ws, "sub t"), "sub false")
        self.assertEqual(await self.cmd(ws, "count t"), "count 1")
        other = await self.connect("/sub?topic=t")
        self.assertEqual(await self.recv(other), "subscribed true")
        self.assertEqual(await self.cmd(ws, "count t"), "count 2")
        # the publisher is a subscriber too: the message comes before the answer
        await ws.send("pub t hello")
        self.assertEqual(await self.recv(ws), "hello")
        self.assertEqual(await self.recv(ws), "pub 2")
        self.assertEqual(await self.recv(other), "hello")
        self.assertEqual(await self.cmd(ws, "unsub t"), "unsub true")
        self.assertEqual(await self.cmd(ws, "unsub t"), "unsub false")
        self.assertEqual(await self.cmd(ws, "unsub never"), "unsub false")
        self.assertEqual(await self.cmd(ws, "count t"), "count 1")
        # unsubscribed: no more deliveries (the next message is the command's answer)
        self.assertEqual(await self.cmd(ws, "pub t again"), "pub 1")
        self.assertEqual(await self.recv(other), "again")
        self.assertEqual(await self.cmd(ws, "count t"), "count 1")
        # topics are independent
        self.assertEqual(await self.cmd(ws, "sub u"), "sub true")
        self.assertEqual(await self.cmd(ws, "pub u only-u"), "only-u")
        self.assertEqual(await self.recv(ws), "pub 1")
        self.assertEqual(await self.cmd(other, "echo-check"), "echo-check")

    async def test_publish_without_subscribers_returns_0(self):
        st, _, body = await asyncio.to_thread(http_get, self.server.port, "/publish?topic=nobody&data=x")
        self.assertEqual((st, body), (200, b"0"))
        ws = await self.connect("/sub")
        self.assertEqual(await self.recv(ws), "subscribed none")
        self.assertEqual(await self.cmd(ws, "pub empty-topic data"), "pub 0")
        self.assertEqual(await self.cmd(ws, "count empty-topic"), "count 0")

    async def test_binary_publish(self):
        a = await self.connect("/sub?topic=bin")
        b = await self.connect("/sub?topic=bin")
        for ws in (a, b):
            self.assertEqual(await self.recv(ws), "subscribed true")
        payload = bytes(range(256))
        await a.send("pubbin bin " + payload.hex())
        got_a = await self.recv(a)
        self.assertEqual(await self.recv(a), "pubbin 2")
        got_b = await self.recv(b)
        for got in (got_a, got_b):
            self.assertIsInstance(got, bytes, "binary publish arrived as text")
            self.assertEqual(got, payload)
        await a.send("pubbin bin ")
        self.assertEqual(await self.recv(a), b"")
        self.assertEqual(await self.recv(b), b"")

    async def test_publish_from_http_handler(self):
        ws = await self.connect("/sub?topic=web")
        self.assertEqual(await self.recv(ws), "subscribed true")
        st, _, body = await asyncio.to_thread(http_get, self.server.port, "/publish?topic=web&data=from%20http")
        self.assertEqual((st, body), (200, b"1"))
        self.assertEqual(await self.recv(ws), "from http")

    async def test_slow_subscribers_do_not_hold_up_the_others(self):
        # one non-reading subscriber per policy, 20 normal ones; 3000 x 1000 bytes published
        n, size = 3000, 1000
        closer, r1 = self.upgrade("/subsmall?topic=big", rcvbuf=4096)
        dropper, r2 = self.upgrade("/subdrop?topic=big", rcvbuf=4096)
        self.assertEqual((r1.status, r2.status), (101, 101))
        for c in (closer, dropper):
            self.assertEqual(c.read_message(), (0x1, b"subscribed true"))
        subs = []
        for _ in range(20):
            ws = await self.connect("/sub?topic=big", compression=None)
            self.assertEqual(await self.recv(ws), "subscribed true")
            subs.append(ws)

        def want(i):
            head = b"big %d " % i
            return head + b"x" * (size - len(head))

        async def collect(ws):
            for i in range(1, n + 1):
                got = await self.recv(ws, 20)
                if got != want(i).decode():
                    return "message %d: %r" % (i, got[:20])
            return "ok"

        readers = [asyncio.ensure_future(collect(ws)) for ws in subs]
        await subs[0].send("burstsize big %d %d" % (n, size))
        results = await asyncio.wait_for(asyncio.gather(*readers), 40)
        self.assertEqual(set(results), {"ok"}, results)
        total = int((await self.recv(subs[0])).split()[1])
        # publish counts the connections each message was queued for: all 20 healthy ones,
        # plus the slow ones until their queues were full
        self.assertGreaterEqual(total, n * 20, "publish skipped a healthy subscriber: %d" % total)
        self.assertLess(total, n * 21, "the slow subscribers' bound was not applied: %d" % total)
        # the "close" one was closed as a slow consumer; the "drop" one is still subscribed
        self.assertIsNotNone(await self.wait_log(r"SMALL CLOSED close 1008 slow consumer"))
        self.assertEqual(await self.cmd(subs[0], "count big"), "count 21")
        # the dropper gets whole messages, in order, then answers
        dropper.send_text("stats")
        prev = 0
        while True:
            op, payload = dropper.read_message()
            self.assertEqual(op, 0x1)
            if payload.startswith(b"stats"):
                break
            i = int(payload.split(b" ")[1])
            self.assertEqual(payload, want(i))
            self.assertGreater(i, prev)
            prev = i
        dropped = int(payload.split(b"=")[1])
        self.assertGreater(dropped, 0)
        self.assertLess(prev, n + 1)
        self.assert_no_log(r"SMALL CLOSED drop")

    async def test_timer_publishes_while_subscribers_come_and_go(self):
        stop_at = time.monotonic() + 3.0
        stats = {"conns": 0, "ticks": 0}

        async def churner(k):
            i = 0
            while time.monotonic() < stop_at:
                i += 1
                ws = await websockets.connect(self.url("/sub?topic=ticks"), ping_interval=None,
                                              close_timeout=2, open_timeout=T, compression=None)
                try:
                    self.assertEqual(await self.recv(ws), "subscribed true")
                    prev = 0
                    for _ in range(1 + (k + i) % 4):
                        n = int((await self.recv(ws, 5)).split()[1])
                        self.assertGreater(n, prev, "ticks out of order")
                        prev = n
                        stats["ticks"] += 1
                    if (k + i) % 3 == 0:
                        await ws.send("unsub ticks")
                finally:
                    if (k + i) % 2:
                        ws.transport.abort()
                    else:
                        await self._close_quietly(ws)
                stats["conns"] += 1

        await asyncio.wait_for(asyncio.gather(*[churner(k) for k in range(30)]), 30)
        self.assertGreater(stats["conns"], 100, stats)
        deadline = time.monotonic() + 5
        while True:
            st, _, body = await asyncio.to_thread(http_get, self.server.port, "/count?topic=ticks")
            if body == b"0" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        self.assertEqual(body, b"0", "subscriptions outlived their connections")
        self.assert_no_log(r"ERROR")

    def test_publish_while_loading_is_an_error(self):
        with tempfile.TemporaryDirectory(prefix="mw-loadpub-") as d:
            app = os.path.join(d, "loadpub.lua")
            with open(app, "w") as f:
                f.write('local moonwire = require "moonwire"\nlocal app = moonwire.app {}\n'
                        'app:publish("t", "x")\nreturn app\n')
            p = subprocess.run([mwserver.moonwire_bin(), app, "--listen", "127.0.0.1:0"],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        err = p.stderr.decode("utf-8", "replace")
        self.assertNotEqual(p.returncode, 0, err)
        self.assertRegex(err, r"loadpub\.lua:3:")
        self.assertNotIn("listening on", err)

    async def test_subscriptions_end_on_disconnect(self):
        subs = []
        for _ in range(10):
            ws = await self.connect("/sub?topic=gone", compression=None)
            self.assertEqual(await self.recv(ws), "subscribed true")
            subs.append(ws)
        ctl = await self.connect("/sub")
        self.assertEqual(await self.recv(ctl), "subscribed none")
        self.assertEqual(await self.cmd(ctl, "count gone"), "count 10")
        for ws in subs[:5]:
            await ws.close()
        for ws in subs[5:]:
            ws.transport.abort()  # abrupt TCP drop
        deadline = time.monotonic() + 5
        while True:
            got = await self.cmd(ctl, "count gone")
            if got == "count 0" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        self.assertEqual(got, "count 0")
        self.assertEqual(await self.cmd(ctl, "pub gone x"), "pub 0")
        # every subscriber's on_close ran, and nothing went wrong
        for _ in range(50):
            if len(re.findall(r"SUB CLOSED", self.server.log())) >= 10:
                break
            await asyncio.sleep(0.1)
        self.assertEqual(len(re.findall(r"SUB CLOSED", self.server.log())), 10)
        self.assert_no_log(r"ERROR|WARN")


# ---------------------------------------------------------------------------
class TimerTests(AppCase):
    app = TIMERS_APP

    def state(self):
        st, _, body = http_get(self.server.port, "/state")
        self.assertEqual(st, 200)
        return dict(line.split("=", 1) for line in body.decode().splitlines())

    def test_timers(self):
        time.sleep(1.0)
        s = self.state()
        # every(0.05): ~20 in 1 s; allow slack for slow (sanitizer) builds
        self.assertGreaterEqual(int(s["ticks"]), 8, s)
        self.assertLessEqual(int(s["ticks"]), 24, s)
        self.assertEqual(s["after_fired"], "1", s)
        self.assertEqual(s["cancel_result"], "true", s)
        self.assertEqual(s["cancelled_fired"], "0", s)
        # the sleeping timer slept without blocking the others
        self.assertGreaterEqual(float(s["sleeper_end"]) - float(s["sleeper_start"]), 0.29, s)
        self.assertGreaterEqual(int(s["ticks_during_sleep"]), 3, s)
        # a timer that cancels itself from its own fn
        self.assertEqual(s["self_cancel_runs"], "3", s)
        self.assertEqual(s.get("self_cancel_result"), "true", s)
        # a failing every-timer keeps going, each error logged with file:line
        boom_runs = int(s["boom_runs"])
        self.assertGreaterEqual(boom_runs, 8, s)
        line = app_line(TIMERS_APP, 'error("timer went boom "')
        logged = re.findall(r"timer error: \S*app_timers\.lua:%d: timer went boom (\d+)" % line,
                            self.server.log())
        self.assertGreaterEqual(len(logged), 8, "timer errors in log: %r" % logged)
        self.assertEqual(logged[:3], ["1", "2", "3"])
        time.sleep(0.3)
        s2 = self.state()
        self.assertGreater(int(s2["boom_runs"]), boom_runs)
        self.assertEqual(s2["after_fired"], "1")
        self.assertEqual(s2["self_cancel_runs"], "3")

    def test_cancel_at_runtime(self):
        self.assertEqual(http_get(self.server.port, "/arm?s=0.3")[2], b"armed")
        self.assertEqual(http_get(self.server.port, "/cancel")[2], b"true false")
        time.sleep(0.6)
        self.assertEqual(self.state()["runtime_fired"], "0")
        # armed and not cancelled: fires once
        self.assertEqual(http_get(self.server.port, "/arm?s=0.1")[2], b"armed")
        time.sleep(0.5)
        self.assertEqual(self.state()["runtime_fired"], "1")
        self.assertEqual(http_get(self.server.port, "/cancel")[2], b"false false")


# ---------------------------------------------------------------------------
class BackpressureTests(AppCase):
    app = BACKPRESSURE_APP
    flags = ("--close-timeout", "3")

    FLOOD_RE = (r"FLOOD DONE %s sent=(\d+) dropped=(\d+) err=(\S+) wsdropped=(\S+) "
                r"maxbuf=(\d+) minbuf=(\S+) last=(\d+)")

    def slow_client(self, path):
        # a small receive buffer: the kernel absorbs little, the server's queue fills
        c, resp = self.upgrade(path, rcvbuf=4096)
        self.assertEqual(resp.status, 101)
        return c

    async def test_close_policy_closes_slow_consumer_others_unaffected(self):
        slow = self.slow_client("/flood_close")
        slow.send_text("flood 200000 1000")  # 200 MB if never stopped
        ws = await self.connect("/echo")
        worst, rounds, t0 = 0.0, 0, time.monotonic()
        while not re.search(r"slow consumer", self.server.log()):
            if time.monotonic() - t0 > 20:
                self.fail("no 'slow consumer' in the log after 20 s")
            t = time.monotonic()
            await self.assert_echo(ws, "meanwhile %d" % rounds, timeout=5)
            worst = max(worst, time.monotonic() - t)
            rounds += 1
            await asyncio.sleep(0.01)
        self.assertLess(worst, 1.0, "echo took %.3fs during the flood" % worst)
        m = await self.wait_log(self.FLOOD_RE % "/flood_close")
        self.assertIsNotNone(m, "flood did not end")
        self.assertEqual(m.group(3), "closed", "ws:send after the close: %s" % m.group(0))
        self.assertEqual(m.group(2), "0")
        self.assertLessEqual(int(m.group(5)), 16384 + 1024 + 14, m.group(0))
        # the client now reads: whole messages in order, then close 1008 "slow consumer"
        seq, close = 0, None
        while True:
            try:
                op, payload = slow.read_message()
            except EOFError:
                break
            if op == 0x8:
                close = payload
                slow.send_frame(0x8, payload[:2])
                break
            self.assertEqual(op, 0x1)
            self.assertEqual(len(payload), 1000)
            got = int(payload.split(b" ")[1])
            self.assertEqual(got, seq + 1, "message lost or reordered before the close")
            seq = got
        self.assertIsNotNone(close, "no close frame (read %d messages)" % seq)
        self.assertEqual(struct.unpack("!H", close[:2])[0], 1008)
        self.assertEqual(close[2:], b"slow consumer")
        self.assertTrue(slow.at_eof(5))
        self.assertIsNotNone(await self.wait_log(r"FLOOD CLOSED /flood_close \d+"))
        await self.assert_echo(ws, "after")

    async def test_drop_policy_keeps_connection_and_whole_messages(self):
        slow = self.slow_client("/flood_drop")
        slow.send_text("flood 20000 1000")
        m = await self.wait_log(self.FLOOD_RE % "/flood_drop", timeout=30)
        self.assertIsNotNone(m, "flood did not finish")
        sent, dropped, err, wsdropped, maxbuf, minbuf, last = m.groups()
        sent, dropped, maxbuf, last = int(sent), int(dropped), int(maxbuf), int(last)
        self.assertEqual(sent + dropped, 20000, m.group(0))
        self.assertGreater(dropped, 0, "nothing was dropped: %s" % m.group(0))
        self.assertEqual(err, "dropped")
        self.assertEqual(wsdropped, str(dropped), "ws.dropped")
        # ws.buffered reflected the queue: non-zero, and within the documented bound
        self.assertGreater(maxbuf, 16384 - 1100, m.group(0))
        self.assertLessEqual(maxbuf, 16384 + 1024 + 14, m.group(0))
        self.assertNotEqual(minbuf, "none")
        # now read: only whole, valid messages in order, with gaps where sends were dropped.
        # on_drain calls that became due while the flood handler ran (the queue drained into
        # the kernel's buffers between its yields) run after it, in order; their "drained"
        # messages come after every flood message. Read until one reports a drained queue.
        got, prev, drained = 0, 0, []
        while True:
            op, payload = slow.read_message()
            self.assertEqual(op, 0x1, "unexpected opcode %#x" % op)
            if payload.startswith(b"drained"):
                m2 = re.match(rb"^drained buffered=(\d+) dropped=(\d+)$", payload)
                self.assertIsNotNone(m2, payload)
                drained.append((int(m2.group(1)), int(m2.group(2))))
                if drained[-1][0] < 8192:  # low-water mark: default min(64K, 16K/2)
                    break
                continue
            self.assertEqual(drained, [], "flood message after an on_drain message")
            self.assertEqual(len(payload), 1000, "partial message")
            i = int(payload.split(b" ")[1])
            self.assertEqual(payload, (b"seq %d " % i).ljust(1000, b"x"))
            self.assertGreater(i, prev, "reordered/duplicated")
            prev, got = i, got + 1
        self.assertEqual(got, sent, "messages accepted by ws:send but not delivered")
        self.assertEqual(prev, last)
        final_dropped = drained[-1][1]
        self.assertGreaterEqual(final_dropped, dropped)
        self.assertIsNotNone(await self.wait_log(r"DRAIN buffered=\d+ dropped=%d" % final_dropped))
        # still open and working; nothing queued now
        slow.send_text("stats")
        self.assertEqual(slow.read_message(), (0x1, b"stats buffered=0 dropped=%d" % final_dropped))
        slow.send_text("still here")
        self.assertEqual(slow.read_message(), (0x1, b"still here"))
        self.assert_no_log(r"FLOOD CLOSED|slow consumer")

    async def test_memory_bounded_while_flooding_non_reader(self):
        pid = self.server.proc.pid
        slow = self.slow_client("/flood_mem")
        ws = await self.connect("/echo")
        await self.assert_echo(ws, "warm up")
        before = rss_kib(pid)
        slow.send_text("flood 3000 65536")  # ~196 MB offered
        peak = before
        t0 = time.monotonic()
        pat = self.FLOOD_RE % "/flood_mem"
        while not re.search(pat, self.server.log()):
            peak = max(peak, rss_kib(pid))
            if time.monotonic() - t0 > 40:
                self.fail("flood did not finish in 40 s")
            await asyncio.sleep(0.01)
        peak = max(peak, rss_kib(pid))
        m = re.search(pat, self.server.log())
        sent, dropped = int(m.group(1)), int(m.group(2))
        self.assertEqual(sent + dropped, 3000, m.group(0))
        self.assertGreater(dropped, 2000, m.group(0))
        growth_mib = (peak - before) / 1024.0
        # queue bound is 256 KiB + 64 KiB; 196 MB were offered
        limit = float(os.environ.get("MW_TEST_RSS_LIMIT_MIB", "64"))
        self.assertLess(growth_mib, limit, "RSS grew %.1f MiB (before %d KiB, peak %d KiB; %s)"
                        % (growth_mib, before, peak, m.group(0)))
        await self.assert_echo(ws, "server fine")
        # and the non-reader can still read what was accepted
        op, payload = slow.read_message()
        self.assertEqual(op, 0x1)
        self.assertTrue(payload.startswith(b"seq 1 "), payload[:20])
        self.assertEqual(len(payload), 65536)


# ---------------------------------------------------------------------------
class HttpTests(AppCase):
    app = HTTP_APP
    flags = ("--max-body-size", "1000")

    def test_get_with_params(self):
        st, h, body = http_get(self.server.port, "/hello?name=bob%20x&y=1")
        self.assertEqual(st, 200)
        self.assertEqual(body, b"hello bob x qs=name=bob%20x&y=1")
        self.assertEqual(h["Content-Type"], "text/plain; charset=utf-8")
        self.assertEqual(h["Content-Length"], str(len(body)))
        st, h, body = http_get(self.server.port, "/users/42%2F7/posts/a%20b")
        self.assertEqual((st, body), (200, b"user=42/7 post=a b"))

    def test_request_fields(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=T)
        self.addCleanup(conn.close)
        conn.request("GET", "/info", headers={"X-Tag": "t1"})
        body = conn.getresponse().read()
        port = conn.sock.getsockname()[1]
        self.assertEqual(body, b"method=GET;path=/info;addr=127.0.0.1;port=%d;tag=t1;body=0" % port)

    def test_custom_status_and_headers(self):
        st, h, body = http_get(self.server.port, "/custom")
        self.assertEqual((st, body), (201, b'{"made":true}'))
        self.assertEqual(h["X-Custom"], "yes")
        self.assertEqual(h["Content-Type"], "application/json")

    def test_post_body_echoed_and_413(self):
        body = bytes(range(256)) * 3 + b"z" * (1000 - 768)
        st, h, got = http_get(self.server.port, "/echo", method="POST", body=body,
                              headers={"Content-Type": "application/x-test"})
        self.assertEqual((st, got), (200, body))
        self.assertEqual(h["X-Body-Length"], "1000")
        self.assertEqual(h["Content-Type"], "application/x-test")
        st, h, got = http_get(self.server.port, "/echo", method="POST", body=b"")
        self.assertEqual((st, got, h["X-Body-Length"]), (200, b"", "0"))
        # one byte over --max-body-size
        c = self.raw()
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n" + b"a" * 1001)
        r = c.read_response()
        self.assertEqual(r.status, 413, repr(r))
        # way over, and the body never sent: answered at once from the header
        c = self.raw()
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 413, repr(r))
        self.assertTrue(c.at_eof(3))

    def answer_to(self, data):
        """Sends data on a fresh connection; returns the response."""
        c = self.raw()
        c.send(data)
        return c.read_response()

    def test_transfer_coding_other_than_chunked_501(self):
        r = self.answer_to(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked"
                           b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        self.assertEqual(r.status, 501, repr(r))

    def test_expect_100_continue(self):
        for framing, body in (("Content-Length: 5", b"hello"),
                              ("Transfer-Encoding: chunked", b"5\r\nhello\r\n0\r\n\r\n")):
            c = self.raw()
            c.send(("POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n%s\r\n\r\n"
                    % framing).encode())
            # the interim answer comes before any body byte is sent
            self.assertEqual(c.read_until(b"\r\n\r\n"), b"HTTP/1.1 100 Continue\r\n\r\n",
                             framing)
            c.send(body)
            r = c.read_response()
            self.assertEqual((r.status, r.body), (200, b"hello"), framing)
        # over max_body_size: the 413, no 100
        r = self.answer_to(b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                           b"Content-Length: 5000\r\n\r\n")
        self.assertEqual(r.status, 413, repr(r))
        # no route: answered from the head, no 100, no body read
        for target, framing, status in (("/nope", "Content-Length: 500", 404),
                                         ("/nope", "Transfer-Encoding: chunked", 404),
                                         ("/hello", "Content-Length: 500", 405)):
            r = self.answer_to(("POST %s HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                                "%s\r\n\r\n" % (target, framing)).encode())
            self.assertEqual(r.status, status, "%s %s: %r" % (target, framing, r))
        self.assertIn("GET", r.header("allow", ""), repr(r))

    def test_chunked_body_from_http_client(self):
        # http.client sends an iterable body in the chunked coding, one chunk
        # per item, on a keep-alive connection
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=T)
        self.addCleanup(conn.close)
        pieces = [b"a" * 300, b"", b"\x00\xff binary", "caf\u00e9".encode()]
        conn.request("POST", "/echo", body=iter(pieces), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        r = conn.getresponse()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.read(), b"".join(pieces))
        # the connection stays usable
        conn.request("GET", "/hello?name=two")
        self.assertEqual(conn.getresponse().read(), b"hello two qs=name=two")
        # over --max-body-size (1000) in chunks: 413, and the connection closes
        conn2 = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=T)
        self.addCleanup(conn2.close)
        conn2.request("POST", "/echo", body=iter([b"b" * 600, b"c" * 600]), encode_chunked=True,
                      headers={"Transfer-Encoding": "chunked"})
        r = conn2.getresponse()
        self.assertEqual(r.status, 413)
        self.assertIn(b"max_body_size", r.read())

    def test_keep_alive_two_requests_one_connection(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=T)
        self.addCleanup(conn.close)
        conn.request("GET", "/hello?name=one")
        r = conn.getresponse()
        self.assertEqual(r.read(), b"hello one qs=name=one")
        sock1 = conn.sock
        self.assertIsNotNone(sock1, "server closed a keep-alive connection")
        local1 = sock1.getsockname()
        conn.request("POST", "/echo", body=b"second")
        r = conn.getresponse()
        self.assertEqual(r.read(), b"second")
        self.assertIs(conn.sock, sock1)
        self.assertEqual(conn.sock.getsockname(), local1)
        conn.request("GET", "/users/3/posts/4")
        self.assertEqual(conn.getresponse().read(), b"user=3 post=4")
        self.assertIs(conn.sock, sock1)

    def test_pipelining_in_order_with_a_sleeping_handler(self):
        c = self.raw()
        reqs = (b"GET /n/1 HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /n/2?sleep=0.3 HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                b"HEAD /n/4 HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /n/5 HTTP/1.1\r\nHost: x\r\n\r\n")
        t0 = time.monotonic()
        c.send(reqs)
        bodies = [c.read_response().body for _ in range(3)]
        head = c.read_response(head=True)
        last = c.read_response()
        self.assertEqual(bodies, [b"n=1", b"n=2", b"hello"])
        self.assertEqual((head.status, head.header("Content-Length")), (200, "3"))
        self.assertEqual(last.body, b"n=5")
        self.assertGreaterEqual(time.monotonic() - t0, 0.29)
        self.assertEqual(c.buf, b"")
        # other connections are served while /n/2 sleeps
        c2, c3 = self.raw(), self.raw()
        c2.send(b"GET /n/6?sleep=0.5 HTTP/1.1\r\nHost: x\r\n\r\n")
        t0 = time.monotonic()
        c3.send(b"GET /n/7 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(c3.read_response().body, b"n=7")
        self.assertLess(time.monotonic() - t0, 0.4)
        self.assertEqual(c2.read_response().body, b"n=6")

    def test_pipelined_requests_split_one_byte_at_a_time(self):
        c = self.raw()
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = b"GET /n/1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        for i in range(len(data)):
            c.send(data[i:i + 1])
        self.assertEqual(c.read_response().body, b"n=1")
        self.assertEqual(c.read_response().body, b"abc")

    def test_head_same_length_no_body(self):
        st, h, body = http_get(self.server.port, "/hello?name=h")
        c = self.raw()
        c.send(b"HEAD /hello?name=h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        r = c.read_response(head=True)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("Content-Length"), str(len(body)))
        self.assertEqual(r.header("Content-Type"), "text/plain; charset=utf-8")
        self.assertEqual(c.read_to_eof(), b"", "HEAD response carried a body")

    def test_404_405_426(self):
        st, h, body = http_get(self.server.port, "/nope")
        self.assertEqual(st, 404)
        st, h, body = http_get(self.server.port, "/multi", method="DELETE")
        self.assertEqual(st, 405)
        self.assertEqual(h["Allow"], "GET, HEAD, POST")
        st, h, body = http_get(self.server.port, "/hello", method="POST", body=b"x")
        self.assertEqual((st, h["Allow"]), (405, "GET, HEAD"))
        self.assertEqual(http_get(self.server.port, "/multi", method="POST", body=b"")[2], b"multi post")
        st, h, body = http_get(self.server.port, "/ws")
        self.assertEqual(st, 426)
        self.assertEqual((h["Upgrade"] or "").lower(), "websocket")

    def test_handler_error_500_and_logged(self):
        st, h, body = http_get(self.server.port, "/error")
        self.assertEqual(st, 500)
        line = app_line(HTTP_APP, "HTTP_ERROR_LINE")
        self.assertIsNotNone(self.server.wait_for_log(r"/http\.lua:%d:.*http handler boom" % line),
                             "handler error not logged with http.lua:%d" % line)
        self.assertEqual(http_get(self.server.port, "/hello?name=after")[0], 200)

    def test_handler_sending_nothing_is_204(self):
        c = self.raw()
        c.send(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\nGET /n/9 HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 204, repr(r))
        self.assertEqual(r.body, b"")
        self.assertEqual(c.read_response().body, b"n=9", "204 carried a body or broke the stream")

    def test_connection_close_honoured(self):
        c = self.raw()
        c.send(b"GET /n/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.body, b"n=1")
        self.assertEqual((r.header("Connection") or "").lower(), "close")
        self.assertTrue(c.at_eof(3), "server kept the connection open")

    def test_pipelined_connection_close_ends_the_connection(self):
        c = self.raw()
        c.send(b"GET /n/1 HTTP/1.1\r\nHost: x\r\n\r\n"
               b"GET /n/2?sleep=0.1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
               b"GET /n/3 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(c.read_response().body, b"n=1")
        r = c.read_response()
        self.assertEqual(r.body, b"n=2")
        self.assertEqual((r.header("Connection") or "").lower(), "close")
        self.assertTrue(c.at_eof(3), "request after 'Connection: close' was answered")

    def test_http10_closes_unless_keep_alive(self):
        c = self.raw()
        c.send(b"GET /n/1 HTTP/1.0\r\n\r\n")
        r = c.read_response()
        self.assertEqual((r.status, r.body), (200, b"n=1"))
        self.assertTrue(c.at_eof(3), "HTTP/1.0 connection left open")
        c = self.raw()
        c.send(b"GET /n/1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        self.assertEqual(c.read_response().body, b"n=1")
        c.send(b"GET /n/2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        self.assertEqual(c.read_response().body, b"n=2")

    def test_idle_keep_alive_closed_after_handshake_timeout(self):
        srv = self.start_server(HTTP_APP, "--handshake-timeout", "1")
        c = RawConn(srv.port)
        self.addCleanup(c.close)
        c.send(b"GET /n/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(c.read_response().body, b"n=1")
        t0 = time.monotonic()
        rest = c.read_to_eof()
        took = time.monotonic() - t0
        self.assertTrue(rest == b"" or rest.startswith(b"HTTP/1.1 408"), rest[:60])
        self.assertGreater(took, 0.7)
        self.assertLess(took, 4)


# ---------------------------------------------------------------------------
STATIC_FILES = {
    "index.html": b"<!doctype html><title>root index</title>",
    "style.css": b"body { color: red }\n",
    "app.js": b"console.log('hi');\n",
    "data.json": b'{"a": 1}',
    "pic.svg": b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    "img.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
    "blob.qqq": b"\x00unknown type\xff",
    "sub/index.html": b"<p>sub index</p>",
    "sub/deeper/file.json": b"[1,2,3]",
    "with space.css": b"a{}",
}
SECRET = b"TOP SECRET outside the static dir"


class StaticTests(AppCase):
    app = None  # generated per test
    big_size = 5 * MiB + 123

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mw-static-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        www = os.path.join(self.tmp, "www")
        for name, data in STATIC_FILES.items():
            p = os.path.join(www, name)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(data)
        self.big = os.urandom(self.big_size)
        with open(os.path.join(www, "big.bin"), "wb") as f:
            f.write(self.big)
        with open(os.path.join(self.tmp, "x"), "wb") as f:
            f.write(SECRET)
        os.makedirs(os.path.join(self.tmp, "outside"))
        with open(os.path.join(self.tmp, "outside", "secret.txt"), "wb") as f:
            f.write(SECRET)
        os.symlink(os.path.join(self.tmp, "outside", "secret.txt"), os.path.join(www, "link_out.txt"))
        os.symlink(os.path.join(self.tmp, "outside"), os.path.join(www, "dirlink"))
        os.symlink("style.css", os.path.join(www, "link_in.css"))
        self.www = www
        self.app = os.path.join(self.tmp, "static_app.lua")
        with open(self.app, "w") as f:
            f.write(
                'local moonwire = require "moonwire"\n'
                'local app = moonwire.app {}\n'
                'app:static("/static", "www")\n'                  # relative to this file
                'app:static("/abs/", %s)\n'                       # absolute
                'app:get("/hello", function(req, res) res:send("hi") end)\n'
                'return app\n' % lua_string(os.path.join(self.tmp, "outside"))
            )
        super().setUp()

    def get(self, path, method="GET", headers=None):
        return http_get(self.server.port, path, method=method, headers=headers)

    def raw_get(self, path, method="GET"):
        c = self.raw()
        c.send(("%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (method, path)).encode())
        return c.read_response(head=(method == "HEAD"))

    def test_content_types_and_lengths(self):
        types = {
            "index.html": "text/html", "style.css": "text/css", "data.json": "application/json",
            "pic.svg": "image/svg+xml", "img.png": "image/png", "blob.qqq": "application/octet-stream",
            "sub/deeper/file.json": "application/json",
        }
        for name, ctype in types.items():
            with self.subTest(file=name):
                st, h, body = self.get("/static/" + name)
                self.assertEqual(st, 200)
                self.assertEqual(body, STATIC_FILES[name])
                self.assertEqual(h["Content-Length"], str(len(STATIC_FILES[name])))
                self.assertEqual(h["Content-Type"].split(";")[0].strip(), ctype)
                self.assertEqual(h["Cache-Control"], "no-cache")
                self.assertIsNotNone(h["Last-Modified"])
                self.assertIsNotNone(h["ETag"])
        st, h, body = self.get("/static/app.js")
        self.assertIn(h["Content-Type"].split(";")[0], ("application/javascript", "text/javascript"))
        st, h, body = self.get("/static/with%20space.css")
        self.assertEqual((st, body), (200, b"a{}"))
        st, h, body = self.get("/abs/secret.txt")  # absolute dir
        self.assertEqual((st, body), (200, SECRET))

    def test_directory_serves_index_html(self):
        for path, name in (("/static/", "index.html"), ("/static/sub/", "sub/index.html")):
            with self.subTest(path=path):
                st, h, body = self.get(path)
                self.assertEqual(st, 200)
                self.assertEqual(body, STATIC_FILES[name])
                self.assertEqual(h["Content-Type"].split(";")[0], "text/html")

    def test_etag_and_if_none_match(self):
        st, h, body = self.get("/static/style.css")
        etag = h["ETag"]
        size = len(STATIC_FILES["style.css"])
        m = re.match(r'^W/"([0-9a-fA-F]+)-([0-9a-fA-F]+)"$', etag)
        self.assertIsNotNone(m, "ETag %r is not W/\"size-mtime\"" % etag)
        self.assertEqual(int(m.group(1), 16), size)
        self.assertEqual(int(m.group(2), 16), int(os.stat(os.path.join(self.www, "style.css")).st_mtime))
        st, h2, body = self.get("/static/style.css", headers={"If-None-Match": etag})
        self.assertEqual((st, body), (304, b""))
        st, h2, body = self.get("/static/style.css", headers={"If-None-Match": 'W/"1-1", ' + etag})
        self.assertEqual(st, 304)
        st, h2, body = self.get("/static/style.css", headers={"If-None-Match": 'W/"0-0"'})
        self.assertEqual((st, body), (200, STATIC_FILES["style.css"]))
        # the file changes -> new ETag -> 200 again
        p = os.path.join(self.www, "style.css")
        with open(p, "ab") as f:
            f.write(b"/* more */")
        os.utime(p, (time.time() + 5, time.time() + 5))
        st, h3, body = self.get("/static/style.css", headers={"If-None-Match": etag})
        self.assertEqual(st, 200)
        self.assertNotEqual(h3["ETag"], etag)
        self.assertTrue(body.endswith(b"/* more */"))

    def test_if_modified_since(self):
        st, h, body = self.get("/static/data.json")
        lm = h["Last-Modified"]
        self.assertIsNotNone(email.utils.parsedate_to_datetime(lm))
        st, _, body = self.get("/static/data.json", headers={"If-Modified-Since": lm})
        self.assertEqual((st, body), (304, b""))
        # RFC 9110 13.1.3: a date in the future is invalid and ignored.
        later = email.utils.formatdate(time.time() + 3600, usegmt=True)
        self.assertEqual(self.get("/static/data.json", headers={"If-Modified-Since": later})[0], 200)
        st, _, body = self.get("/static/data.json", headers={"If-Modified-Since": "Mon, 01 Jan 1990 00:00:00 GMT"})
        self.assertEqual((st, body), (200, STATIC_FILES["data.json"]))

    def test_traversal_is_refused(self):
        for path in ["/static/../x", "/static/%2e%2e/x", "/static/a/%2E%2E/%2e%2e/x", "/static/sub/../../x",
                     "/static/..%2fx", "/static/%2e%2e%2fx", "/static/sub/%2e%2e/%2e%2e/outside/secret.txt",
                     "/static/.."]:
            with self.subTest(path=path):
                r = self.raw_get(path)
                self.assertNotIn(SECRET, r.body)
                self.assertIn(r.status, (403,) if "%2f" not in path.lower() else (400, 403, 404), repr(r))

    def test_symlinks(self):
        for path in ("/static/link_out.txt", "/static/dirlink/secret.txt"):
            with self.subTest(path=path):
                r = self.raw_get(path)
                self.assertEqual(r.status, 403, repr(r))
                self.assertNotIn(SECRET, r.body)
        st, h, body = self.get("/static/link_in.css")
        self.assertEqual((st, body), (200, STATIC_FILES["style.css"]))

    def test_missing_and_bad_encoding_and_methods(self):
        self.assertEqual(self.get("/static/nope.html")[0], 404)
        self.assertEqual(self.get("/static/sub/nope/")[0], 404)
        self.assertEqual(self.raw_get("/static/%zz").status, 400)
        self.assertEqual(self.raw_get("/static/bad%2").status, 400)
        st, h, body = self.get("/static/style.css", method="POST")
        self.assertEqual(st, 405)
        self.assertEqual(h["Allow"], "GET, HEAD")

    def test_big_file_intact(self):  # 5 MB (200 KB with one-byte I/O)
        st, h, body = self.get("/static/big.bin")
        self.assertEqual(st, 200)
        self.assertEqual(h["Content-Length"], str(len(self.big)))
        self.assertEqual(h["Content-Type"].split(";")[0], "application/octet-stream")
        self.assertEqual(hashlib.sha256(body).hexdigest(), hashlib.sha256(self.big).hexdigest())
        # twice on one keep-alive connection, read slowly (the file is streamed)
        c = self.raw(rcvbuf=8192)
        c.send(b"GET /static/big.bin HTTP/1.1\r\nHost: x\r\n\r\nGET /static/style.css HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        r1 = c.read_response()
        r2 = c.read_response()
        self.assertTrue(r1.body == self.big, "streamed file differs")
        self.assertEqual(r2.body, STATIC_FILES["style.css"])

    def test_head_on_static_file(self):
        r = self.raw_get("/static/big.bin", method="HEAD")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("Content-Length"), str(len(self.big)))
        self.assertIsNotNone(r.header("ETag"))
        c = self.raw()
        c.send(b"HEAD /static/img.png HTTP/1.1\r\nHost: x\r\n\r\nGET /static/data.json HTTP/1.1\r\nHost: x\r\n\r\n")
        h = c.read_response(head=True)
        self.assertEqual(h.header("Content-Length"), str(len(STATIC_FILES["img.png"])))
        self.assertEqual(c.read_response().body, STATIC_FILES["data.json"], "HEAD sent a body")


# The same again with MOONWIRE_TEST_SHORT_IO=1: the server reads and writes one byte
# per syscall, so every partial read/write path is taken.
SHORT_IO = {"MOONWIRE_TEST_SHORT_IO": "1"}


class UpgradeHookShortIOTests(UpgradeHookTests):
    env = SHORT_IO


class HttpShortIOTests(HttpTests):
    env = SHORT_IO


class StaticShortIOTests(StaticTests):
    env = SHORT_IO
    big_size = 200 * KiB + 7  # one byte per write(): keep it small


def lua_string(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


if __name__ == "__main__":
    unittest.main(verbosity=2)
