"""moonwire driven by an independent client: python3-websockets (Debian, 10.x).

Run with the system interpreter (the Debian package lives there):

    /usr/bin/python3 spec/clients/test_python_websockets.py          # from the repo root
    MOONWIRE_BIN=/path/to/moonwire /usr/bin/python3 spec/clients/test_python_websockets.py -k Echo

Every test starts its own moonwire process (``--listen 127.0.0.1:0``) and
stops it in cleanup; a server that died during a test fails that test.
"""

import asyncio
import os
import signal
import re
import struct
import sys
import time
import unittest

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    import websockets
    from websockets.exceptions import ConnectionClosed, InvalidStatusCode
    from websockets.frames import OP_BINARY, OP_CONT, OP_PING, OP_TEXT
    from websockets.legacy.client import WebSocketClientProtocol
except ImportError as e:  # pragma: no cover
    sys.stderr.write(
        "cannot import websockets (%s): run with /usr/bin/python3 "
        "(Debian python3-websockets)\n" % e
    )
    sys.exit(2)

import mwserver

ECHO_APP = "apps/echo/app.lua"
HARNESS_APP = os.path.join(mwserver.clients_dir(), "apps", "harness.lua")

KiB = 1024
MiB = 1024 * 1024
T = 10.0  # generous per-operation timeout; a hang fails instead of blocking ctest


class RecordingClient(WebSocketClientProtocol):
    """Client protocol that records the opcode of every frame it reads."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.opcodes_seen = []

    async def read_frame(self, max_size):
        frame = await super().read_frame(max_size)
        self.opcodes_seen.append(frame.opcode)
        return frame


class NoPongClient(RecordingClient):
    """A client that never answers pings (to exercise --pong-timeout)."""

    async def pong(self, data=b""):
        return None


def describe(a, b):
    """Short description of how two (possibly huge) messages differ."""
    if type(a) is not type(b):
        return "type %s != %s" % (type(a).__name__, type(b).__name__)
    if len(a) != len(b):
        return "length %d != %d" % (len(a), len(b))
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return "first difference at index %d: %r != %r" % (i, a[i:i + 16], b[i:i + 16])
    return "equal"


class MoonwireCase(unittest.IsolatedAsyncioTestCase):
    app = ECHO_APP
    flags = ()
    env = None

    def setUp(self):
        self.servers = []
        self._problems_before = self._problem_count()
        self.server = self.start_server(self.app, *self.flags, env=self.env)

    def _problem_count(self):
        result = getattr(getattr(self, "_outcome", None), "result", None)
        if result is None:
            return 0
        return len(getattr(result, "failures", ())) + len(getattr(result, "errors", ()))

    async def asyncSetUp(self):
        # IsolatedAsyncioTestCase runs the loop in debug mode, which makes every
        # callback several times slower (and warns about 16 MiB masking).
        asyncio.get_running_loop().set_debug(False)

    def start_server(self, app, *flags, env=None):
        srv = mwserver.MoonwireServer(app, *flags, env=env)
        srv.start()
        self.servers.append(srv)
        self.addCleanup(self._stop_server, srv)
        return srv

    def _stop_server(self, srv):
        srv.stop()
        report = srv.sanitizer_report()
        if report:
            self.fail("sanitizer report from moonwire:\n" + report)
        if srv.needed_sigkill:
            self.fail("moonwire ignored SIGTERM for %.0f s and was killed" % mwserver.TERM_GRACE)

    def tearDown(self):
        # Runs before the cleanups (which stop the servers).
        failed = self._problem_count() > self._problems_before
        crashed = [s for s in self.servers if not s.alive()]
        if failed or crashed:
            for s in self.servers:
                sys.stderr.write(
                    "\n---- moonwire stderr (%s, exit=%r) ----\n%s\n----\n"
                    % (" ".join(s.argv[1:]), s.proc.poll(), s.log_tail(80))
                )
        if crashed:
            self.fail("moonwire exited during the test (exit code %r)" % crashed[0].proc.poll())

    # -- client helpers ----------------------------------------------------
    def url(self, path, srv=None):
        return (srv or self.server).url(path)

    async def connect(self, path="/echo", srv=None, **kw):
        kw.setdefault("max_size", None)
        kw.setdefault("ping_interval", None)
        kw.setdefault("close_timeout", 3)
        kw.setdefault("open_timeout", T)
        ws = await websockets.connect(self.url(path, srv), **kw)
        self.addAsyncCleanup(self._close_quietly, ws)
        return ws

    @staticmethod
    async def _close_quietly(ws):
        try:
            await asyncio.wait_for(ws.close(), 5)
        except Exception:
            ws.transport.abort()

    async def recv(self, ws, timeout=T):
        return await asyncio.wait_for(ws.recv(), timeout)

    async def assert_echo(self, ws, msg, timeout=T):
        await asyncio.wait_for(ws.send(msg), timeout)
        got = await self.recv(ws, timeout)
        self.assertTrue(got == msg and type(got) is type(msg),
                        "echo mismatch: %s" % describe(got, msg))

    async def assert_closed_with(self, ws, code, reason=None, timeout=T):
        """Wait for the connection to end; check the close code the server sent."""
        try:
            await asyncio.wait_for(ws.wait_closed(), timeout)
        except asyncio.TimeoutError:
            self.fail("connection still open after %.1fs (expected close %d)" % (timeout, code))
        self.assertEqual(ws.close_code, code,
                         "close code (reason %r)" % (ws.close_reason,))
        if reason is not None:
            self.assertEqual(ws.close_reason, reason)

    async def expect_close_after_recv(self, ws, code, timeout=T):
        """recv() must raise ConnectionClosed carrying the server's close code."""
        with self.assertRaises(ConnectionClosed):
            while True:
                got = await self.recv(ws, timeout)
                self.fail("expected close %d, got a message of length %d" % (code, len(got)))
        self.assertEqual(ws.close_code, code, "close reason %r" % (ws.close_reason,))

    async def wait_log(self, pattern, timeout=5.0, srv=None):
        srv = srv or self.server
        return await asyncio.to_thread(srv.wait_for_log, pattern, timeout)


# ---------------------------------------------------------------------------
class EchoTests(MoonwireCase):
    SIZES = [0, 1, 125, 126, 65535, 65536, 1 * MiB, 16 * MiB]

    async def test_echo_text_sizes(self):
        ws = await self.connect()
        for n in self.SIZES:
            with self.subTest(size=n):
                msg = "".join(chr(0x61 + (i % 26)) for i in range(min(n, 4096)))
                msg = (msg * (n // 4096 + 1))[:n] if n else ""
                self.assertEqual(len(msg.encode()), n)
                await self.assert_echo(ws, msg, timeout=30)

    async def test_echo_binary_sizes(self):
        ws = await self.connect()
        for n in self.SIZES:
            with self.subTest(size=n):
                await self.assert_echo(ws, os.urandom(n), timeout=30)

    async def test_echo_multibyte_utf8(self):
        ws = await self.connect()
        samples = [
            "h\u00e9llo w\u00f6rld",                       # 2-byte
            "\u20ac \u65e5\u672c\u8a9e \ud55c\uad6d\uc5b4",  # 3-byte
            "\U0001F680\U0001D11E\U0001F600",              # 4-byte
            "\u0000nul inside",                           # U+0000 is valid UTF-8
            "\ufeffBOM and \U0010FFFF max code point",
            "\u20ac" * (MiB // 3),                        # ~1 MiB of 3-byte chars
        ]
        for s in samples:
            with self.subTest(sample=s[:20]):
                await self.assert_echo(ws, s)

    async def test_text_and_binary_types_are_kept(self):
        ws = await self.connect()
        await ws.send("text")
        await ws.send(b"\x00\x01binary")
        await ws.send("")
        await ws.send(b"")
        self.assertEqual(await self.recv(ws), "text")
        self.assertEqual(await self.recv(ws), b"\x00\x01binary")
        self.assertEqual(await self.recv(ws), "")
        self.assertEqual(await self.recv(ws), b"")

    async def test_many_messages_pipelined_in_order(self):
        ws = await self.connect()
        msgs = ["msg %d %s" % (i, "x" * (i % 300)) for i in range(500)]
        for m in msgs:
            await ws.send(m)
        got = [await self.recv(ws) for _ in msgs]
        self.assertEqual(got, msgs)

    async def test_query_string_is_ignored_for_routing(self):
        ws = await self.connect("/echo?name=bob&x=%20y")
        await self.assert_echo(ws, "with query")

    async def test_fragmented_text_list(self):
        ws = await self.connect()
        await ws.send(["Hel", "lo, ", "w\u00f6rld ", "\u20ac\U0001F680", ""])
        self.assertEqual(await self.recv(ws), "Hello, w\u00f6rld \u20ac\U0001F680")

    async def test_fragmented_binary_list(self):
        ws = await self.connect()
        parts = [os.urandom(n) for n in (1, 0, 125, 126, 65536, 3)]
        await ws.send(parts)
        got = await self.recv(ws)
        self.assertTrue(got == b"".join(parts), describe(got, b"".join(parts)))

    async def test_fragmented_async_iterator_1mib(self):
        ws = await self.connect()
        parts = [os.urandom(16 * KiB) for _ in range(64)]

        async def gen():
            for p in parts:
                yield p
                await asyncio.sleep(0)  # let frames hit the wire separately

        await ws.send(gen())
        got = await self.recv(ws)
        self.assertTrue(got == b"".join(parts), describe(got, b"".join(parts)))

    async def test_fragmented_text_async_iterator_slow(self):
        ws = await self.connect()
        parts = ["one ", "two ", "three ", "\u00fcber"]

        async def gen():
            for p in parts:
                yield p
                await asyncio.sleep(0.05)

        await ws.send(gen())
        self.assertEqual(await self.recv(ws), "".join(parts))

    async def test_utf8_code_point_split_across_fragments(self):
        ws = await self.connect()
        data = "a\u20acb\U0001F680c".encode()  # split inside both multi-byte sequences
        await ws.write_frame(False, OP_TEXT, data[:2])   # 'a' + 1st byte of euro
        await ws.write_frame(False, OP_CONT, data[2:6])  # rest of euro, 'b', 1st byte of rocket
        await ws.write_frame(False, OP_CONT, data[6:8])
        await ws.write_frame(True, OP_CONT, data[8:])
        self.assertEqual(await self.recv(ws), "a\u20acb\U0001F680c")

    async def test_ping_interleaved_in_fragmented_message(self):
        ws = await self.connect()
        await ws.write_frame(False, OP_BINARY, b"frag-1|")
        pong = await ws.ping(b"in the middle")
        await ws.write_frame(False, OP_CONT, b"frag-2|")
        await asyncio.wait_for(pong, T)  # answered before the message is complete
        await ws.write_frame(True, OP_CONT, b"frag-3")
        self.assertEqual(await self.recv(ws), b"frag-1|frag-2|frag-3")
        await self.assert_echo(ws, "still fine")

    async def test_ping_pong(self):
        ws = await self.connect()
        for payload in (b"hello", b"", b"\x00\xff" * 62 + b"x", None):  # up to 125 bytes
            with self.subTest(payload=payload):
                waiter = await ws.ping(payload)
                # websockets resolves the waiter only for a pong with the SAME payload
                latency = await asyncio.wait_for(waiter, 5)
                self.assertGreaterEqual(latency, 0)
        await self.assert_echo(ws, "after pings")

    async def test_many_pings_in_flight(self):
        ws = await self.connect()
        waiters = [await ws.ping(b"p%03d" % i) for i in range(50)]
        await asyncio.wait_for(asyncio.gather(*waiters), T)

    async def test_unknown_path_404(self):
        with self.assertRaises(InvalidStatusCode) as cm:
            await websockets.connect(self.url("/nope"), open_timeout=T)
        self.assertEqual(cm.exception.status_code, 404)
        headers = cm.exception.headers
        self.assertEqual(headers.get("Connection", "").lower(), "close")
        self.assertIsNotNone(headers.get("Content-Length"), "error response without Content-Length")
        # and the server is fine afterwards
        ws = await self.connect()
        await self.assert_echo(ws, "ok")

    async def test_subprotocol_and_extension_offers_are_declined(self):
        # The echo route picks no subprotocol; it accepts permessage-deflate
        # (offered by default), and without the offer it negotiates nothing.
        ws = await self.connect(subprotocols=["chat", "superchat"],
                                extra_headers={"X-Test": "1"})
        self.assertIsNone(ws.subprotocol)
        self.assertEqual([e.name for e in ws.extensions], ["permessage-deflate"])
        await self.assert_echo(ws, "negotiated compression only")
        plain = await self.connect(compression=None)
        self.assertEqual(plain.extensions, [])
        await self.assert_echo(plain, "negotiated nothing")

    async def test_invalid_utf8_text_closes_1007(self):
        ws = await self.connect()
        await ws.write_frame(True, OP_TEXT, b"abc\xff\xfe")
        await self.assert_closed_with(ws, 1007)

    async def test_invalid_utf8_fails_fast_in_unfinished_fragment(self):
        # The message is never completed: the server must reject it on the bad byte.
        # Uncompressed: a compressed message can only be checked once inflated.
        ws = await self.connect(compression=None)
        await ws.write_frame(False, OP_TEXT, b"ok \xc3")   # valid prefix, incomplete char
        await ws.write_frame(False, OP_CONT, b"\x28 rest")  # 0xC3 0x28 is invalid
        await self.assert_closed_with(ws, 1007, timeout=5)

    async def test_16mib_is_allowed_but_one_more_byte_is_1009(self):
        ws = await self.connect()
        await self.assert_echo(ws, os.urandom(16 * MiB), timeout=30)
        ws2 = await self.connect()
        send = asyncio.ensure_future(ws2.send(os.urandom(16 * MiB + 1)))
        try:
            await self.assert_closed_with(ws2, 1009, timeout=20)
        finally:
            send.cancel()
            await asyncio.gather(send, return_exceptions=True)

    async def test_connection_stays_usable_after_messages_larger_than_max_buffered(self):
        # The echo route allows 16 MiB; echoing such a message to a client that
        # reads promptly is not a "slow consumer" (default --max-buffered is 4 MiB).
        ws = await self.connect(compression=None)
        for n in (5 * MiB, 16 * MiB, 5 * MiB):
            await self.assert_echo(ws, os.urandom(n), timeout=30)
        await self.assert_echo(ws, "small message after the big ones")
        waiter = await ws.ping(b"still there?")
        await asyncio.wait_for(waiter, T)

    async def test_ping_answered_while_server_sends_16mib(self):
        ws = await self.connect()
        big = os.urandom(16 * MiB)
        await ws.send(big)
        waiter = await ws.ping(b"during big echo")
        await asyncio.wait_for(waiter, 20)
        got = await self.recv(ws, 30)
        self.assertTrue(got == big, describe(got, big))

    async def test_16mib_in_4096_fragments(self):
        # reassembly must not be quadratic in the number of fragments
        ws = await self.connect()
        parts = [os.urandom(4 * KiB) for _ in range(4096)]
        t0 = time.monotonic()
        await asyncio.wait_for(ws.send(parts), 30)
        got = await self.recv(ws, 30)
        self.assertTrue(got == b"".join(parts), describe(got, b"".join(parts)))
        self.assertLess(time.monotonic() - t0, 20)

    async def test_10000_small_messages_pipelined(self):
        ws = await self.connect(compression=None)
        n = 10000

        async def reader():
            out = []
            for _ in range(n):
                out.append(await self.recv(ws))
            return out

        r = asyncio.ensure_future(reader())
        for i in range(n):
            await ws.send("%05d" % i)
        got = await asyncio.wait_for(r, 30)
        self.assertEqual(got, ["%05d" % i for i in range(n)])

    async def test_invalid_utf8_variants_close_1007(self):
        cases = {
            "lone continuation": b"\x80",
            "overlong slash": b"\xc0\xaf",
            "overlong 3-byte": b"\xe0\x80\xaf",
            "UTF-16 surrogate": b"\xed\xa0\x80",
            "above U+10FFFF": b"\xf4\x90\x80\x80",
            "0xFE": b"\xfe",
            "truncated at end": b"ok\xe2\x82",
        }
        for name, data in cases.items():
            with self.subTest(case=name):
                ws = await self.connect()
                await ws.write_frame(True, OP_TEXT, data)
                await self.assert_closed_with(ws, 1007, timeout=5)

    async def test_valid_edge_code_points_echo(self):
        ws = await self.connect()
        for s in ("\ud7ff", "\ue000", "\uffff", "\ufffe", "\U00010000", "\U0010ffff", "\u0000"):
            with self.subTest(cp=hex(ord(s))):
                await self.assert_echo(ws, s)

    async def test_bad_close_frames(self):
        cases = [
            ("1-byte payload", b"\x03", 1002),
            ("reason not UTF-8", b"\x03\xe8\xff\xfe", 1007),
        ] + [("code %d" % c, struct.pack("!H", c), 1002)
             for c in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000)]
        for name, payload, expected in cases:
            with self.subTest(case=name):
                ws = await self.connect()
                await ws.write_frame(True, 8, payload)  # raw close frame
                await self.assert_closed_with(ws, expected, timeout=5)

    async def test_valid_close_codes_are_echoed(self):
        for code in (1000, 1001, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999):
            with self.subTest(code=code):
                ws = await self.connect()
                await asyncio.wait_for(ws.close(code, "r%d" % code), T)
                self.assertEqual(ws.close_code, code)


# ---------------------------------------------------------------------------
class MaxMessageSizeFlagTests(MoonwireCase):
    # the flag overrides the echo route's own 16 MiB limit
    flags = ("--max-message-size", "1000")

    async def test_at_limit_ok_over_limit_1009(self):
        ws = await self.connect()
        await self.assert_echo(ws, b"x" * 1000)
        await self.assert_echo(ws, "y" * 1000)
        await ws.send(b"z" * 1001)
        await self.expect_close_after_recv(ws, 1009)

    async def test_text_over_limit_1009(self):
        ws = await self.connect()
        await ws.send("\u20ac" * 334)  # 1002 bytes
        await self.expect_close_after_recv(ws, 1009)

    async def test_fragments_add_up_past_limit_1009(self):
        ws = await self.connect()
        await ws.send([b"a" * 600, b"b" * 600])
        await self.expect_close_after_recv(ws, 1009)

    async def test_checked_at_frame_header(self):
        # Announce a 100 MiB frame and send none of the payload: the server must
        # refuse it from the header alone.
        ws = await self.connect()
        header = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 100 * MiB) + b"\x01\x02\x03\x04"
        ws.transport.write(header)
        await self.assert_closed_with(ws, 1009, timeout=5)

    async def test_other_connections_unaffected(self):
        bad = await self.connect()
        good = await self.connect()
        await bad.send(b"q" * 5000)
        await self.expect_close_after_recv(bad, 1009)
        await self.assert_echo(good, b"q" * 1000)


# ---------------------------------------------------------------------------
class HarnessCase(MoonwireCase):
    app = HARNESS_APP

    async def watcher(self):
        w = await self.connect("/watch")
        self.assertEqual(await self.recv(w), "ready")
        return w

    async def subject(self, **kw):
        s = await self.connect("/subject", **kw)
        line = await self.recv(s)
        m = re.fullmatch(r"id (\d+)", line)
        self.assertIsNotNone(m, "expected 'id N' from on_open, got %r" % (line,))
        return s, int(m.group(1))

    async def closed_report(self, watcher, sid, timeout=T):
        """Next 'closed <sid> ...' line the watcher receives (others skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.fail("no on_close report for connection %d" % sid)
            try:
                line = await self.recv(watcher, left)
            except asyncio.TimeoutError:
                self.fail("no on_close report for connection %d within %.1fs" % (sid, timeout))
            if line.startswith("closed %d " % sid):
                return line


class CloseAndRoutingTests(HarnessCase):
    async def test_client_close_code_and_reason_reach_on_close(self):
        w = await self.watcher()
        s, sid = await self.subject()
        await asyncio.wait_for(s.close(4001, "bye"), T)
        self.assertEqual(s.close_code, 4001, "server should echo the client's close code")
        self.assertEqual(await self.closed_report(w, sid), "closed %d 4001 bye" % sid)

    async def test_client_close_utf8_reason(self):
        w = await self.watcher()
        s, sid = await self.subject()
        await asyncio.wait_for(s.close(4999, "tsch\u00fcss \u20ac"), T)
        self.assertEqual(s.close_code, 4999)
        self.assertEqual(await self.closed_report(w, sid), "closed %d 4999 tsch\u00fcss \u20ac" % sid)

    async def test_server_close_code_and_reason_reach_client(self):
        w = await self.watcher()
        s, sid = await self.subject()
        await s.send("close 4000 done")
        with self.assertRaises(ConnectionClosed):
            await self.recv(s)
        self.assertEqual(s.close_code, 4000)
        self.assertEqual(s.close_reason, "done")
        await asyncio.wait_for(s.wait_closed(), T)
        self.assertEqual(await self.closed_report(w, sid), "closed %d 4000 done" % sid)

    async def test_server_default_close_is_1000(self):
        s, sid = await self.subject()
        await s.send("close 1000")
        await self.assert_closed_with(s, 1000)

    async def test_abrupt_drop_reports_1006(self):
        w = await self.watcher()
        s, sid = await self.subject()
        s.transport.abort()
        self.assertEqual(await self.closed_report(w, sid), "closed %d 1006 " % sid)

    async def test_each_connection_reports_once(self):
        w = await self.watcher()
        subs = [await self.subject() for _ in range(5)]
        for i, (s, sid) in enumerate(subs):
            await s.close(4100 + i, "n%d" % i)
        lines = []
        for _ in subs:
            lines.append(await self.recv(w))
        expected = ["closed %d %d n%d" % (sid, 4100 + i, i) for i, (s, sid) in enumerate(subs)]
        self.assertEqual(sorted(lines), sorted(expected))
        with self.assertRaises(asyncio.TimeoutError):  # no duplicate reports
            await asyncio.wait_for(w.recv(), 0.5)

    async def test_path_and_query_fields(self):
        s, _ = await self.subject_at("/subject?name=b%C3%B6b&x=1")
        await s.send("info")
        self.assertEqual(await self.recv(s), "path=/subject qs=name=b%C3%B6b&x=1 name=b\u00f6b")

    async def subject_at(self, path):
        s = await self.connect(path)
        line = await self.recv(s)
        self.assertRegex(line, r"^id \d+$")
        return s, int(line.split()[1])

    async def test_unknown_path_404(self):
        for path in ("/", "/subjec", "/subject/", "/SUBJECT", "/echo"):
            with self.subTest(path=path):
                with self.assertRaises(InvalidStatusCode) as cm:
                    await websockets.connect(self.url(path), open_timeout=T)
                self.assertEqual(cm.exception.status_code, 404)

    async def test_route_max_message_size(self):
        s = await self.connect("/small")
        await self.assert_echo(s, b"m" * 1024)
        await s.send(b"m" * 1025)
        await self.expect_close_after_recv(s, 1009)

    async def test_default_max_message_size_is_1mib(self):
        s, _ = await self.subject()
        await self.assert_echo(s, os.urandom(MiB))
        await s.send(os.urandom(MiB + 1))
        await self.expect_close_after_recv(s, 1009)


class HandlerTests(HarnessCase):
    async def test_sleeping_handler_answers_all_in_order(self):
        ws = await self.connect("/slow")
        msgs = []
        for i in range(30):
            msgs.append("t%02d" % i if i % 2 == 0 else b"b%02d" % i)
        t0 = time.monotonic()
        for m in msgs:
            await ws.send(m)  # all sent while the first handler is still sleeping
        got = [await self.recv(ws) for _ in msgs]
        elapsed = time.monotonic() - t0
        self.assertEqual(got, msgs)
        # one handler at a time per connection: 30 x 20 ms sleeps run serially
        self.assertGreaterEqual(elapsed, 0.5)

    async def test_sleep_does_not_block_other_connections(self):
        a, _ = await self.subject()
        b, _ = await self.subject()
        t0 = time.monotonic()
        await a.send("sleep 1")
        await a.send("after sleep")   # queued behind the sleeping handler
        await self.assert_echo(b, "not blocked")
        self.assertLess(time.monotonic() - t0, 0.8, "other connection was blocked by a sleep")
        self.assertEqual(await self.recv(a), "woke 1")
        self.assertGreaterEqual(time.monotonic() - t0, 0.9)
        self.assertEqual(await self.recv(a), "after sleep")

    async def test_handler_error_closes_1011_only_that_connection(self):
        w = await self.watcher()
        other, _ = await self.subject()
        bad, bad_id = await self.subject()
        await self.assert_echo(other, "before")
        await bad.send("boom")
        await self.expect_close_after_recv(bad, 1011)
        line = await self.closed_report(w, bad_id)
        self.assertTrue(line.startswith("closed %d 1011" % bad_id), line)
        await self.assert_echo(other, "after")
        fresh, _ = await self.subject()
        await self.assert_echo(fresh, "new connection ok")
        m = await self.wait_log(r"kaboom from harness app")
        self.assertIsNotNone(m, "the Lua error was not logged")
        self.assertIsNotNone(await self.wait_log(r"harness\.lua:\d+"),
                             "traceback should name the app file and line")


# ---------------------------------------------------------------------------
class HeartbeatTests(HarnessCase):
    flags = ("--ping-interval", "1", "--pong-timeout", "1")

    async def test_server_pings_are_answered_and_connection_survives(self):
        ws = await self.connect("/subject", create_protocol=RecordingClient)
        self.assertRegex(await self.recv(ws), r"^id \d+$")
        await asyncio.sleep(3.5)  # > ping interval + pong timeout, several times over
        self.assertTrue(ws.open, "connection closed: %r %r" % (ws.close_code, ws.close_reason))
        pings = ws.opcodes_seen.count(OP_PING)
        self.assertGreaterEqual(pings, 2, "server sent %d pings in 3.5s with --ping-interval 1" % pings)
        await self.assert_echo(ws, "alive")

    async def test_unanswered_ping_times_out(self):
        w = await self.watcher()
        t0 = time.monotonic()  # before connect: a robust lower bound for the server's timers
        ws = await self.connect("/subject", create_protocol=NoPongClient)
        sid = int((await self.recv(ws)).split()[1])
        try:
            await asyncio.wait_for(ws.wait_closed(), 6)
        except asyncio.TimeoutError:
            self.fail("server did not drop a client that never answers pings")
        elapsed = time.monotonic() - t0
        self.assertIn(OP_PING, ws.opcodes_seen)
        # ping after 1 s of silence, then 1 s pong timeout
        self.assertGreaterEqual(elapsed, 1.8, "closed too early: code %r reason %r frames %r"
                                % (ws.close_code, ws.close_reason, ws.opcodes_seen))
        # the close frame is best effort: either it arrived or TCP was just dropped
        self.assertIn(ws.close_code, (1001, 1006))
        if ws.close_code == 1001:
            self.assertEqual(ws.close_reason, "pong timeout")
        self.assertEqual(await self.closed_report(w, sid), "closed %d 1006 pong timeout" % sid)


class IdleTimeoutTests(MoonwireCase):
    flags = ("--idle-timeout", "1")

    async def test_data_keeps_alive_silence_closes_1001(self):
        ws = await self.connect()
        for i in range(6):  # 1.8 s of traffic every 0.3 s
            await self.assert_echo(ws, "keepalive %d" % i)
            await asyncio.sleep(0.3)
        self.assertTrue(ws.open)
        t0 = time.monotonic()
        await self.assert_closed_with(ws, 1001, "idle timeout", timeout=4)
        self.assertGreaterEqual(time.monotonic() - t0, 0.3)


# ---------------------------------------------------------------------------
class MaxConnectionsTests(MoonwireCase):
    flags = ("--max-connections", "3")

    async def test_503_beyond_limit_then_recovers(self):
        conns = [await self.connect() for _ in range(3)]
        with self.assertRaises(InvalidStatusCode) as cm:
            await websockets.connect(self.url("/echo"), open_timeout=T)
        self.assertEqual(cm.exception.status_code, 503)
        for c in conns:
            await self.assert_echo(c, "still served")
        await conns[0].close()
        deadline = time.monotonic() + 3
        while True:  # the slot frees once the server has closed its side
            try:
                ws = await self.connect()
                break
            except InvalidStatusCode as e:
                self.assertEqual(e.status_code, 503)
                if time.monotonic() > deadline:
                    self.fail("slot not freed within 3 s of a clean close")
                await asyncio.sleep(0.05)
        await self.assert_echo(ws, "got the freed slot")

    async def test_slots_are_freed_under_churn(self):
        # 120 short-lived connections through 3 slots: clean closes and aborts
        # must both give their slot back.
        for i in range(120):
            deadline = time.monotonic() + 3
            while True:
                try:
                    ws = await websockets.connect(self.url("/echo"), ping_interval=None,
                                                  compression=None, open_timeout=T, close_timeout=3)
                    break
                except InvalidStatusCode as e:
                    self.assertEqual(e.status_code, 503)
                    if time.monotonic() > deadline:
                        self.fail("connection %d: no free slot within 3 s (slot leak?)" % i)
                    await asyncio.sleep(0.02)
            await ws.send("churn %d" % i)
            self.assertEqual(await self.recv(ws), "churn %d" % i)
            if i % 2:
                ws.transport.abort()
            else:
                await ws.close()


class SlowConsumerTests(MoonwireCase):
    flags = ("--max-buffered", "1048576")

    async def test_client_that_never_reads_is_closed(self):
        # max_queue=1: websockets stops reading the socket once one message is
        # queued, so the server's outbound queue must grow past --max-buffered.
        ws = await self.connect(max_queue=1, compression=None)
        chunk = os.urandom(512 * KiB)
        sent = 0
        t0 = time.monotonic()
        try:
            for _ in range(128):  # 64 MiB, far beyond socket buffers + 1 MiB
                await asyncio.wait_for(ws.send(chunk), 10)
                sent += 1
        except (ConnectionClosed, ConnectionError, asyncio.TimeoutError):
            pass
        received = 0
        try:
            while True:
                await self.recv(ws, 10)
                received += 1
        except ConnectionClosed:
            pass
        self.assertLess(received, 128, "server buffered everything (sent %d)" % sent)
        self.assertIn(ws.close_code, (1008, 1006))
        if ws.close_code == 1008:
            self.assertEqual(ws.close_reason, "slow consumer")
        self.assertIsNotNone(await self.wait_log(r"slow consumer"), "slow consumer not logged")
        self.assertLess(time.monotonic() - t0, 30)
        other = await self.connect()
        await self.assert_echo(other, "server fine")


class InboxBackpressureTests(HarnessCase):
    flags = ("--max-inbox-bytes", "200000")

    async def test_nothing_lost_when_inbox_is_full(self):
        ws = await self.connect("/slow", compression=None)
        msgs = [bytes([i]) * (64 * KiB) for i in range(60)]  # ~3.8 MiB, 20 ms each

        async def reader():
            return [await self.recv(ws, 15) for _ in msgs]

        r = asyncio.ensure_future(reader())
        for m in msgs:
            await asyncio.wait_for(ws.send(m), 15)
        got = await asyncio.wait_for(r, 20)
        self.assertEqual([g[:1] for g in got], [m[:1] for m in msgs])
        self.assertTrue(all(g == m for g, m in zip(got, msgs)), "payload corrupted")


class SigtermTests(MoonwireCase):
    async def test_sigterm_with_open_connections(self):
        conns = [await self.connect() for _ in range(5)]
        for c in conns:
            await self.assert_echo(c, "hi")
        proc = self.server.proc
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        while proc.poll() is None and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.05)
        self.assertIsNotNone(proc.poll(), "moonwire still running 5 s after SIGTERM")
        self.assertNotEqual(proc.returncode, -9)
        for c in conns:
            await asyncio.wait_for(c.wait_closed(), 5)
            self.assertFalse(c.open)
        self.servers.remove(self.server)  # exited on purpose; not a crash


# ---------------------------------------------------------------------------
class ShortIOTests(MoonwireCase):
    """MOONWIRE_TEST_SHORT_IO=1: the server reads/writes one byte per syscall."""
    env = {"MOONWIRE_TEST_SHORT_IO": "1"}

    async def test_echo_boundary_sizes(self):
        ws = await self.connect()
        for n in (0, 1, 125, 126, 65535, 65536):
            with self.subTest(size=n):
                await self.assert_echo(ws, os.urandom(n), timeout=20)
        await self.assert_echo(ws, "\u20ac\U0001F680 text")

    async def test_fragments_pings_and_close(self):
        ws = await self.connect()
        await ws.send(["frag ", "\u00e9 ", "end"])
        pong = await ws.ping(b"short-io")
        await asyncio.wait_for(pong, T)
        self.assertEqual(await self.recv(ws), "frag \u00e9 end")
        await asyncio.wait_for(ws.close(4002, "short"), T)
        self.assertEqual(ws.close_code, 4002)

    async def test_several_clients(self):
        async def one(i):
            ws = await self.connect(compression=None)
            for j in range(5):
                await self.assert_echo(ws, "c%d m%d %s" % (i, j, "x" * (j * 50)))
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(10))), 30)


# ---------------------------------------------------------------------------
class ConcurrencyTests(MoonwireCase):
    CLIENTS = 200
    MESSAGES = 20

    async def test_200_clients_20_messages_each(self):
        async def client(i):
            ws = await websockets.connect(self.url("/echo"), ping_interval=None,
                                          compression=None, open_timeout=20, close_timeout=5)
            try:
                for j in range(self.MESSAGES):
                    msg = ("c%d-m%d-" % (i, j)) + "\u00e9" * (j * 7)
                    if j % 2:
                        msg = msg.encode()
                    await ws.send(msg)
                    got = await asyncio.wait_for(ws.recv(), T)
                    if got != msg:
                        raise AssertionError("client %d msg %d: %s" % (i, j, describe(got, msg)))
                return j + 1
            finally:
                await ws.close()

        t0 = time.monotonic()
        results = await asyncio.wait_for(
            asyncio.gather(*(client(i) for i in range(self.CLIENTS)), return_exceptions=True), 45)
        errors = [r for r in results if isinstance(r, BaseException)]
        self.assertEqual(errors, [], "%d of %d clients failed; first: %r"
                         % (len(errors), self.CLIENTS, errors[:1]))
        self.assertEqual(sum(results), self.CLIENTS * self.MESSAGES)
        sys.stderr.write(" [%d clients x %d msgs in %.2fs] "
                         % (self.CLIENTS, self.MESSAGES, time.monotonic() - t0))
        ws = await self.connect()
        await self.assert_echo(ws, "still serving")

    async def test_concurrent_pipelined_mixed_sizes(self):
        sizes = [0, 1, 125, 126, 4000, 65536, 70000]

        async def client(i):
            async with websockets.connect(self.url("/echo"), ping_interval=None, max_size=None,
                                          compression=None, open_timeout=20) as ws:
                msgs = [os.urandom(sizes[(i + k) % len(sizes)]) for k in range(10)]
                for m in msgs:
                    await ws.send(m)
                for m in msgs:
                    got = await asyncio.wait_for(ws.recv(), T)
                    if got != m:
                        raise AssertionError("client %d: %s" % (i, describe(got, m)))

        results = await asyncio.wait_for(
            asyncio.gather(*(client(i) for i in range(50)), return_exceptions=True), 45)
        errors = [r for r in results if isinstance(r, BaseException)]
        self.assertEqual(errors, [], "first: %r" % (errors[:1],))


if __name__ == "__main__":
    unittest.main(verbosity=2)
