"""TLS (wss://, https://) and permessage-deflate (RFC 7692), independent clients.

Clients: Debian's python3-websockets (10.x) with Python's ssl module, a raw
WebSocket client in this file (any frame, RSV1 and the deflate bytes in full
view), and the openssl command line (s_client, certificate generation).

    /usr/bin/python3 spec/clients/test_python_tls_deflate.py            # from the repo root
    MOONWIRE_BIN=/path/to/moonwire /usr/bin/python3 spec/clients/test_python_tls_deflate.py -k Deflate

Each test class makes its own self-signed certificates (and a second pair and
a mismatched key) with `openssl` in a temporary directory; each test starts
its own moonwire (``--listen 127.0.0.1:0 --tls-listen 127.0.0.1:0``) and stops
it in cleanup. A sanitizer report in the server's stderr fails the test.
"""

import asyncio
import base64
import hashlib
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import zlib

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    import websockets
    from websockets.exceptions import ConnectionClosed
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
except ImportError as e:  # pragma: no cover
    sys.stderr.write("cannot import websockets (%s): run with /usr/bin/python3\n" % e)
    sys.exit(2)

import mwserver

APP = os.path.join(mwserver.clients_dir(), "apps", "app_tls_deflate.lua")
ECHO_APP = "apps/echo/app.lua"

KiB = 1024
MiB = 1024 * 1024
T = 15.0  # per-operation timeout: a hang fails instead of blocking ctest

TAIL = b"\x00\x00\xff\xff"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10

# The plain listener's line; the TLS listener logs "TLS listening on ..." (first).
PLAIN_RE = re.compile(r"(?<!TLS )listening on ([\d.]+):(\d+)")
TLS_RE = r"TLS listening on ([\d.]+):(\d+)"


# ---------------------------------------------------------------------------
# certificates
def openssl(*args, cwd=None):
    r = subprocess.run(["openssl"] + list(args), cwd=cwd, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed:\n%s" % (" ".join(args), r.stdout.decode()))
    return r.stdout.decode()


def make_cert(d, name, cn):
    """A self-signed RSA certificate for 127.0.0.1/localhost: d/name.crt, d/name.key."""
    crt, key = os.path.join(d, name + ".crt"), os.path.join(d, name + ".key")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
            "-days", "2", "-subj", "/CN=" + cn,
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")
    return crt, key


def der_sha256(pem_path):
    with open(pem_path) as f:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()


class Certs:
    """Two certificate/key pairs (A, B), an unrelated key, a non-PEM file."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="mw-tls-")
        self.a_crt, self.a_key = make_cert(self.dir, "a", "moonwire-test-a")
        self.b_crt, self.b_key = make_cert(self.dir, "b", "moonwire-test-b")
        self.other_key = os.path.join(self.dir, "other.key")
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                "-out", self.other_key)
        self.garbage = os.path.join(self.dir, "garbage.pem")
        with open(self.garbage, "wb") as f:
            f.write(b"this is not a certificate\n" + os.urandom(64))
        self.bundle = os.path.join(self.dir, "ab.crt")
        with open(self.bundle, "w") as out:
            for p in (self.a_crt, self.b_crt):
                with open(p) as f:
                    out.write(f.read())
        self.a_fp, self.b_fp = der_sha256(self.a_crt), der_sha256(self.b_crt)

    def client_ctx(self, cafile=None):
        ctx = ssl.create_default_context(cafile=cafile or self.a_crt)
        ctx.check_hostname = True  # the certificates name IP:127.0.0.1
        return ctx

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------
# server
class TlsServer(mwserver.MoonwireServer):
    """mwserver.MoonwireServer that tells the plain and the TLS listen lines apart."""

    def __init__(self, app, *flags, tls=True, **kw):
        super().__init__(app, *flags, **kw)
        self.tls = tls
        self.tls_port = None

    def _find_listen(self):
        for line in self._lines:
            m = PLAIN_RE.search(line)
            if m:
                return m
        return None

    def start(self):
        super().start()
        if self.tls:
            m = self.wait_for_log(TLS_RE, 5.0)
            if not m:
                self.stop()
                raise mwserver.ServerStartError("no 'TLS listening on' line:\n" + self.log())
            self.tls_port = int(m.group(2))
        return self

    def wss(self, path="/"):
        return "wss://127.0.0.1:%d%s" % (self.tls_port, path)

    def count_log(self, pattern):
        rx = re.compile(pattern)
        with self._lock:
            return sum(1 for line in self._lines if rx.search(line))

    def wait_count(self, pattern, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count_log(pattern) >= n:
                return True
            time.sleep(0.02)
        return False

    def rss_kib(self, field="VmRSS"):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return None


# ---------------------------------------------------------------------------
# raw WebSocket client
class Frame:
    __slots__ = ("fin", "rsv1", "rsv2", "rsv3", "opcode", "payload")

    def __init__(self, fin, rsv1, rsv2, rsv3, opcode, payload):
        self.fin, self.rsv1, self.rsv2, self.rsv3 = fin, rsv1, rsv2, rsv3
        self.opcode, self.payload = opcode, payload

    def __repr__(self):
        return "Frame(fin=%d rsv1=%d op=%d len=%d)" % (self.fin, self.rsv1, self.opcode,
                                                      len(self.payload))


class RawClosed(Exception):
    pass


class RawWS:
    """Blocking raw client: any request, any frame, frames read strictly."""

    def __init__(self, port, tls_ctx=None, timeout=T):
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls_ctx is not None:
            s = tls_ctx.wrap_socket(s, server_hostname="127.0.0.1")
        self.sock = s
        self.buf = b""
        self.status = None
        self.headers = {}
        self.pmd = None  # negotiated parameters (dict) or None
        self.deflater = None
        self.inflater = None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # -- bytes ----------------------------------------------------------------
    def _fill(self):
        data = self.sock.recv(262144)
        if not data:
            raise RawClosed("server closed the TCP connection")
        self.buf += data

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    # -- handshake ------------------------------------------------------------
    def handshake(self, path="/z", extensions=(), extra=()):
        """extensions: header values, one Sec-WebSocket-Extensions line each."""
        if isinstance(extensions, str):
            extensions = [extensions]
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET %s HTTP/1.1" % path, "Host: 127.0.0.1", "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: " + key,
                 "Sec-WebSocket-Version: 13"]
        lines += ["Sec-WebSocket-Extensions: " + e for e in extensions]
        lines += list(extra)
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        head = head.decode("latin-1").split("\r\n")
        self.status = int(head[0].split()[1])
        for line in head[1:]:
            name, _, value = line.partition(":")
            self.headers.setdefault(name.strip().lower(), []).append(value.strip())
        if self.status == 101:
            want = base64.b64encode(hashlib.sha1(
                (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            assert self.headers.get("sec-websocket-accept") == [want], self.headers
            ext = self.headers.get("sec-websocket-extensions")
            if ext:
                self.pmd = parse_pmd_response(ext)
        return self.status

    def extension_header(self):
        """The response's Sec-WebSocket-Extensions (None when absent; joined if repeated)."""
        v = self.headers.get("sec-websocket-extensions")
        return None if v is None else ", ".join(v)

    # -- frames ---------------------------------------------------------------
    def send_frame(self, opcode, payload=b"", fin=True, rsv1=False, rsv2=False, rsv3=False):
        b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (0x20 if rsv2 else 0) \
            | (0x10 if rsv3 else 0) | opcode
        n = len(payload)
        if n < 126:
            hdr = struct.pack("!BB", b0, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", b0, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", b0, 0x80 | 127, n)
        mask = os.urandom(4)
        self.sock.sendall(hdr + mask + mask_bytes(payload, mask))

    def recv_frame(self):
        b0, b1 = self._take(2)
        if b1 & 0x80:
            raise AssertionError("server frame is masked")
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._take(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._take(8))
        return Frame(b0 >> 7, (b0 >> 6) & 1, (b0 >> 5) & 1, (b0 >> 4) & 1, b0 & 0x0F,
                     self._take(n))

    # -- messages with permessage-deflate --------------------------------------
    def compress(self, data, level=6):
        """Compresses one message as the negotiated client side must (RFC 7692 7.2.1)."""
        no_ctx = bool(self.pmd and self.pmd.get("client_no_context_takeover"))
        if self.deflater is None or no_ctx:
            self.deflater = zlib.compressobj(level, zlib.DEFLATED, -15)
        out = self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(TAIL)
        return out[:-4]

    def send_msg(self, data, binary=False, compress=True, fragments=1):
        payload = self.compress(data) if compress else data
        op = OP_BINARY if binary else OP_TEXT
        if fragments <= 1:
            self.send_frame(op, payload, rsv1=compress)
            return
        step = max(1, -(-len(payload) // fragments))
        parts = [payload[i:i + step] for i in range(0, len(payload), step)] or [b""]
        for i, p in enumerate(parts):
            self.send_frame(op if i == 0 else OP_CONT, p, fin=(i == len(parts) - 1),
                            rsv1=(compress and i == 0))

    def recv_msg(self):
        """(opcode, data, rsv1, wire_len) of the next data message; answers nothing."""
        frames = []
        while True:
            f = self.recv_frame()
            if f.opcode == OP_CLOSE:
                raise RawClosed("close frame: %r" % (close_code(f.payload),))
            if f.opcode in (OP_PING, OP_PONG):
                continue
            if f.rsv2 or f.rsv3:
                raise AssertionError("server set RSV2/RSV3: %r" % f)
            if frames and f.rsv1:
                raise AssertionError("RSV1 on a continuation frame from the server")
            if not frames and f.opcode == OP_CONT:
                raise AssertionError("continuation without a message")
            frames.append(f)
            if f.fin:
                break
        payload = b"".join(f.payload for f in frames)
        rsv1 = frames[0].rsv1
        if rsv1:
            if self.pmd is None:
                raise AssertionError("RSV1 without a negotiated extension")
            bits = self.pmd.get("server_max_window_bits", 15)
            if self.inflater is None or self.pmd.get("server_no_context_takeover"):
                self.inflater = zlib.decompressobj(-bits)
            data = self.inflater.decompress(payload + TAIL)
        else:
            data = payload
        return frames[0].opcode, data, rsv1, len(payload)

    def expect_close(self, timeout=T):
        """Reads until the server's close frame; returns its code (None: no payload)."""
        self.sock.settimeout(timeout)
        while True:
            f = self.recv_frame()
            if f.opcode == OP_CLOSE:
                return close_code(f.payload)

    def is_closed_by_server(self, timeout=T):
        """True once the server ends the TCP connection (EOF or reset)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return True
        except socket.timeout:
            return False


def mask_bytes(data, mask):
    if not data:
        return b""
    n = len(data)
    m = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ m).to_bytes(n, "big")


def close_code(payload):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


def parse_pmd_response(values):
    """Parses the server's permessage-deflate answer into a dict."""
    assert len(values) == 1, values
    parts = [p.strip() for p in values[0].split(";")]
    assert parts[0] == "permessage-deflate", values
    out = {}
    for p in parts[1:]:
        name, _, val = p.partition("=")
        out[name.strip()] = int(val.strip('"')) if val else True
    return out


def similar_message(i):
    """Messages that look alike (what context takeover is for)."""
    return ('{"seq": %d, "user": "alice", "room": "lobby", "text": "the quick brown fox jumps '
            'over the lazy dog, message number %d", "tags": ["a", "b", "c"]}' % (i, i))


# ---------------------------------------------------------------------------
class Base(unittest.IsolatedAsyncioTestCase):
    """Certificates per class; a server per test (stopped, and checked for sanitizer reports)."""

    app = APP
    flags = ()
    tls = True

    @classmethod
    def setUpClass(cls):
        cls.certs = Certs()

    @classmethod
    def tearDownClass(cls):
        cls.certs.cleanup()

    def setUp(self):
        self.servers = []
        self._problems_before = self._problem_count()
        self.server = self.start_server(*self.flags) if self.app else None

    async def asyncSetUp(self):
        asyncio.get_running_loop().set_debug(False)

    def _problem_count(self):
        result = getattr(getattr(self, "_outcome", None), "result", None)
        if result is None:
            return 0
        return len(getattr(result, "failures", ())) + len(getattr(result, "errors", ()))

    def tls_flags(self, crt=None, key=None):
        return ["--tls-listen", "127.0.0.1:0", "--tls-cert", crt or self.certs.a_crt,
                "--tls-key", key or self.certs.a_key]

    def start_server(self, *flags, app=None, tls=None, env=None):
        tls = self.tls if tls is None else tls
        allflags = (self.tls_flags() if tls else []) + list(flags)
        srv = TlsServer(app or self.app, *allflags, tls=tls, env=env)
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
            self.fail("moonwire ignored SIGTERM and was killed")

    def tearDown(self):
        failed = self._problem_count() > self._problems_before
        crashed = [s for s in self.servers if not s.alive()]
        if failed or crashed:
            for s in self.servers:
                sys.stderr.write("\n---- moonwire stderr (%s, exit=%r) ----\n%s\n----\n"
                                 % (" ".join(s.argv[1:]), s.proc.poll(), s.log_tail(60)))
        if crashed:
            self.fail("moonwire exited during the test (exit code %r)" % crashed[0].proc.poll())

    # -- clients ----------------------------------------------------------------
    def ctx(self):
        return self.certs.client_ctx()

    async def connect(self, path="/z", tls=True, srv=None, compression="deflate", **kw):
        srv = srv or self.server
        kw.setdefault("max_size", None)
        kw.setdefault("ping_interval", None)
        kw.setdefault("close_timeout", 3)
        kw.setdefault("open_timeout", T)
        if tls:
            url = srv.wss(path)
            kw.setdefault("ssl", self.ctx())
        else:
            url = srv.url(path)
        ws = await websockets.connect(url, compression=compression, **kw)
        self.addAsyncCleanup(self._close_quietly, ws)
        return ws

    @staticmethod
    async def _close_quietly(ws):
        try:
            await asyncio.wait_for(ws.close(), 5)
        except Exception:
            ws.transport.abort()

    def raw(self, path="/z", extensions=(), tls=False, srv=None, expect=101):
        srv = srv or self.server
        c = RawWS(srv.tls_port if tls else srv.port, self.ctx() if tls else None)
        self.addCleanup(c.close)
        status = c.handshake(path, extensions)
        self.assertEqual(status, expect, "handshake status (headers %r)" % (c.headers,))
        return c

    async def assert_echo(self, ws, msg, timeout=T):
        await asyncio.wait_for(ws.send(msg), timeout)
        got = await asyncio.wait_for(ws.recv(), timeout)
        self.assertTrue(got == msg and type(got) is type(msg),
                        "echo mismatch: got %s %d, sent %s %d" % (type(got).__name__, len(got),
                                                                  type(msg).__name__, len(msg)))

    async def expect_close(self, ws, code, timeout=T):
        try:
            while True:
                got = await asyncio.wait_for(ws.recv(), timeout)
                self.fail("expected close %d, got a message of %d bytes" % (code, len(got)))
        except ConnectionClosed:
            pass
        self.assertEqual(ws.close_code, code, "close reason %r" % (ws.close_reason,))

    def negotiated(self, ws):
        return ws.response_headers.get("Sec-WebSocket-Extensions")


def text_of(n, seed=0):
    unit = "".join(chr(0x61 + ((i * 7 + seed) % 26)) for i in range(4096))
    return (unit * (n // 4096 + 1))[:n]


SIZES = [0, 1, 125, 126, 65535, 65536, 1 * MiB, 16 * MiB]


# ---------------------------------------------------------------------------
class WssEchoTests(Base):
    """wss:// with a verifying client; compression on and off."""

    async def test_wss_echo_text_sizes_uncompressed(self):
        ws = await self.connect("/plain", compression=None)
        self.assertIsNone(self.negotiated(ws))
        for n in SIZES:
            with self.subTest(size=n):
                await self.assert_echo(ws, text_of(n), timeout=60)

    async def test_wss_echo_binary_sizes_uncompressed(self):
        ws = await self.connect("/plain", compression=None)
        for n in SIZES:
            with self.subTest(size=n):
                await self.assert_echo(ws, os.urandom(n), timeout=60)

    async def test_wss_echo_sizes_compressed(self):
        ws = await self.connect("/z")
        self.assertEqual(self.negotiated(ws), "permessage-deflate")
        for n in SIZES:
            with self.subTest(size=n, kind="text"):
                await self.assert_echo(ws, text_of(n, n), timeout=60)
        for n in SIZES[:-1]:
            with self.subTest(size=n, kind="binary"):
                await self.assert_echo(ws, os.urandom(n), timeout=60)
        with self.subTest(size=16 * MiB, kind="binary, compressible"):
            await self.assert_echo(ws, b"\x00\x01\x02" * (16 * MiB // 3), timeout=60)

    def test_wss_frame_sizes_around_the_read_buffer(self):
        # One frame per fresh connection, written at once: frames that end at
        # every kind of offset in TLS records and in the server's read buffer
        # (max_header_bytes + 64 KiB = 73728 bytes by default). Bytes OpenSSL
        # has already decrypted must never wait for another EV_READ.
        sizes = sorted(set([16 * KiB - 1, 16 * KiB, 16 * KiB + 1]
                           + list(range(73700, 73760, 3))
                           + list(range(60 * KiB, 150 * KiB, 4093))))
        stalled = []
        for n in sizes:
            c = RawWS(self.server.tls_port, self.ctx(), timeout=2)
            self.assertEqual(c.handshake("/plain"), 101)
            msg = os.urandom(n)
            c.send_frame(OP_BINARY, msg)
            try:
                op, data, _, _ = c.recv_msg()
                self.assertEqual((op, data), (OP_BINARY, msg), "size %d" % n)
            except socket.timeout:
                stalled.append(n)
            c.close()
            if len(stalled) >= 4:
                break
        self.assertEqual(stalled, [], "no echo within 2 s for these payload sizes over TLS")

    def test_wss_bursts_larger_than_the_read_buffer(self):
        # Bursts of small frames, one TLS record each, larger than the
        # server's read buffer: every message comes back, however the bytes
        # split between the kernel, OpenSSL's read-ahead buffer and ours.
        # (Whether our buffer fills while OpenSSL holds whole records and the
        # socket is empty depends on timing here; WssOneByteReadTests makes
        # that case certain.)
        stalled = []
        for total in (74 * KiB, 100 * KiB, 150 * KiB, 220 * KiB, 300 * KiB):
            for size in (700, 1500, 4000):
                c = RawWS(self.server.tls_port, self.ctx(), timeout=2)
                self.assertEqual(c.handshake("/plain"), 101)
                msgs = [os.urandom(size) for _ in range(total // size)]
                for m in msgs:  # a TLS record each: many whole records per read
                    mask = os.urandom(4)
                    c.sock.sendall(struct.pack("!BBH", 0x82, 0x80 | 126, size) + mask
                                   + mask_bytes(m, mask))
                try:
                    for i, m in enumerate(msgs):
                        f = c.recv_frame()
                        self.assertEqual((f.opcode, f.payload), (OP_BINARY, m),
                                         "burst %d, message %d" % (total, i))
                except socket.timeout:
                    stalled.append((total, size))
                c.close()
        self.assertEqual(stalled, [], "echoes stopped within these bursts (total, frame size)")

    async def test_wss_many_small_messages_pipelined(self):
        ws = await self.connect("/z")
        msgs = [similar_message(i) if i % 3 else os.urandom(i % 200) for i in range(2000)]
        for m in msgs:
            await ws.send(m)
        for i, m in enumerate(msgs):
            got = await asyncio.wait_for(ws.recv(), T)
            self.assertEqual(got, m, "message %d" % i)

    async def test_wss_paused_reads_with_sleeping_handler(self):
        # The handler sleeps on every message, so the inbox fills and the server
        # stops reading (--max-inbox-bytes): decrypted bytes OpenSSL still holds
        # must be processed when reading resumes.
        srv = self.start_server("--max-inbox-bytes", "32768")
        ws = await self.connect("/slowz", srv=srv, compression=None)
        msgs = [os.urandom(1000 + (i * 577) % 9000) for i in range(300)]

        async def sender():
            for m in msgs:
                await ws.send(m)

        task = asyncio.ensure_future(sender())
        for i, m in enumerate(msgs):
            got = await asyncio.wait_for(ws.recv(), T)
            self.assertEqual(got, m, "message %d" % i)
        await task

    async def test_ws_and_wss_side_by_side_with_and_without_compression(self):
        for tls in (False, True):
            for comp in ("deflate", None):
                with self.subTest(tls=tls, compression=comp):
                    ws = await self.connect("/z", tls=tls, compression=comp)
                    self.assertEqual(self.negotiated(ws),
                                     "permessage-deflate" if comp else None)
                    for m in ["", "x", similar_message(1) * 10, os.urandom(70000), text_of(MiB)]:
                        await self.assert_echo(ws, m)
                    ws2 = await self.connect("/plain", tls=tls, compression=comp)
                    self.assertIsNone(self.negotiated(ws2), "route without compression")
                    await self.assert_echo(ws2, similar_message(2) * 10)

    async def test_echo_app_negotiates_compression(self):
        srv = self.start_server(app=ECHO_APP)
        for tls in (False, True):
            ws = await self.connect("/echo", tls=tls, srv=srv)
            self.assertEqual(self.negotiated(ws), "permessage-deflate")
            await self.assert_echo(ws, similar_message(3) * 100)
            await self.assert_echo(ws, os.urandom(MiB))

    async def test_unverified_client_is_refused_by_the_client(self):
        # Sanity check of the test setup: without the CA the client refuses.
        with self.assertRaises(ssl.SSLCertVerificationError):
            await websockets.connect(self.server.wss("/z"), ssl=ssl.create_default_context(),
                                     open_timeout=T)

    async def test_plain_http_to_the_tls_port_does_not_break_it(self):
        s = socket.create_connection(("127.0.0.1", self.server.tls_port), timeout=T)
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass
        s.close()
        ws = await self.connect("/z")
        await self.assert_echo(ws, "still serving")


# ---------------------------------------------------------------------------
class WssOneByteReadTests(Base):
    """MOONWIRE_TEST_SHORT_IO=1 makes the server ask OpenSSL for one byte per
    read: each read fills its buffer while OpenSSL holds the rest of the record
    (and records it read ahead), bytes no EV_READ will announce. The server must
    read on at once, or these echoes stall."""

    def setUp(self):
        self.servers = []
        self._problems_before = self._problem_count()
        self.server = self.start_server(env={"MOONWIRE_TEST_SHORT_IO": "1"})

    async def test_wss_echo_with_one_byte_reads(self):
        ws = await self.connect("/plain", compression=None)
        for n in (0, 1, 125, 126, 5000, 70000):
            with self.subTest(size=n):
                await self.assert_echo(ws, os.urandom(n), timeout=10)

    async def test_wss_pipelined_with_one_byte_reads(self):
        ws = await self.connect("/plain", compression=None)
        msgs = [os.urandom(i * 37 % 900) for i in range(200)]
        for m in msgs:
            await ws.send(m)
        for i, m in enumerate(msgs):
            self.assertEqual(await asyncio.wait_for(ws.recv(), 10), m, "message %d" % i)


class NegotiationTests(Base):
    """Sec-WebSocket-Extensions offers and the exact answers (raw handshakes)."""

    tls = False

    CASES = [
        # (route, offer header values, expected answer or None)
        ("/z", [], None),
        ("/z", ["permessage-deflate"], "permessage-deflate"),
        ("/z", ["permessage-deflate; client_max_window_bits"], "permessage-deflate"),
        ("/z", ["permessage-deflate; client_max_window_bits=10"], "permessage-deflate"),
        ("/z", ["permessage-deflate; client_max_window_bits=\"12\""], "permessage-deflate"),
        ("/z", ["permessage-deflate; server_max_window_bits=10"],
         "permessage-deflate; server_max_window_bits=10"),
        ("/z", ["permessage-deflate; server_max_window_bits=15"],
         "permessage-deflate; server_max_window_bits=15"),
        ("/z", ["permessage-deflate; server_max_window_bits=9"],
         "permessage-deflate; server_max_window_bits=9"),
        ("/z", ["permessage-deflate; server_max_window_bits=\"11\""],
         "permessage-deflate; server_max_window_bits=11"),
        ("/z", ["permessage-deflate; server_no_context_takeover"],
         "permessage-deflate; server_no_context_takeover"),
        ("/z", ["permessage-deflate; client_no_context_takeover"],
         "permessage-deflate; client_no_context_takeover"),
        ("/z", ["permessage-deflate; server_no_context_takeover; client_no_context_takeover"],
         "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        ("/z", ["permessage-deflate;client_no_context_takeover;server_no_context_takeover"],
         "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        ("/z", ["permessage-deflate; server_no_context_takeover; server_max_window_bits=12; "
                "client_max_window_bits=9; client_no_context_takeover"],
         "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
         "server_max_window_bits=12"),
        # declined offers: the connection opens without the extension
        ("/z", ["permessage-deflate; server_max_window_bits=8"], None),
        ("/z", ["permessage-deflate; server_max_window_bits=16"], None),
        ("/z", ["permessage-deflate; server_max_window_bits=7"], None),
        ("/z", ["permessage-deflate; server_max_window_bits=010"], None),
        ("/z", ["permessage-deflate; server_max_window_bits=abc"], None),
        ("/z", ["permessage-deflate; server_max_window_bits"], None),
        ("/z", ["permessage-deflate; client_max_window_bits=16"], None),
        ("/z", ["permessage-deflate; client_max_window_bits=7"], None),
        ("/z", ["permessage-deflate; server_no_context_takeover=1"], None),
        ("/z", ["permessage-deflate; client_no_context_takeover=true"], None),
        ("/z", ["permessage-deflate; foo"], None),
        ("/z", ["permessage-deflate; foo=1"], None),
        ("/z", ["permessage-deflate; server_no_context_takeover; server_no_context_takeover"], None),
        ("/z", ["permessage-deflate; client_no_context_takeover; client_no_context_takeover"], None),
        ("/z", ["permessage-deflate; server_max_window_bits=10; server_max_window_bits=11"], None),
        ("/z", ["permessage-deflate; client_max_window_bits; client_max_window_bits=10"], None),
        ("/z", ["x-webkit-deflate-frame"], None),
        ("/z", ["permessage-foo"], None),
        # the first acceptable offer wins
        ("/z", ["permessage-deflate; server_max_window_bits=8, permessage-deflate"],
         "permessage-deflate"),
        ("/z", ["permessage-deflate; foo, permessage-deflate; server_no_context_takeover"],
         "permessage-deflate; server_no_context_takeover"),
        ("/z", ["x-webkit-deflate-frame, permessage-deflate; client_max_window_bits"],
         "permessage-deflate"),
        ("/z", ["permessage-deflate; server_max_window_bits=10, permessage-deflate"],
         "permessage-deflate; server_max_window_bits=10"),
        ("/z", ["foo", "permessage-deflate; client_no_context_takeover"],
         "permessage-deflate; client_no_context_takeover"),
        ("/z", ["permessage-deflate; bar", "permessage-deflate"], "permessage-deflate"),
        # routes
        ("/plain", ["permessage-deflate"], None),
        ("/plain", ["permessage-deflate; server_no_context_takeover"], None),
        ("/noctx", ["permessage-deflate"],
         "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        ("/noctx", ["permessage-deflate; server_max_window_bits=11"],
         "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
         "server_max_window_bits=11"),
        ("/w9", ["permessage-deflate"], "permessage-deflate"),
        ("/w9", ["permessage-deflate; server_max_window_bits=12"],
         "permessage-deflate; server_max_window_bits=9"),
        ("/w9", ["permessage-deflate; server_max_window_bits=8"], None),
    ]

    def test_offers_and_answers(self):
        for path, offers, want in self.CASES:
            with self.subTest(path=path, offers=offers):
                c = self.raw(path, offers)
                self.assertEqual(c.extension_header(), want)
                # The connection works either way (compressed when agreed).
                msg = similar_message(7) * 3
                c.send_msg(msg.encode(), compress=want is not None)
                op, data, rsv1, _ = c.recv_msg()
                self.assertEqual((op, data), (OP_TEXT, msg.encode()))
                self.assertEqual(bool(rsv1), want is not None)
                c.close()

    async def test_websockets_client_parameters(self):
        if True:
            cases = [
                (dict(), "permessage-deflate"),
                (dict(server_no_context_takeover=True),
                 "permessage-deflate; server_no_context_takeover"),
                (dict(client_no_context_takeover=True),
                 "permessage-deflate; client_no_context_takeover"),
                (dict(server_max_window_bits=10), "permessage-deflate; server_max_window_bits=10"),
                (dict(client_max_window_bits=9), "permessage-deflate"),
                (dict(server_max_window_bits=9, client_max_window_bits=9,
                      server_no_context_takeover=True, client_no_context_takeover=True),
                 "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                 "server_max_window_bits=9"),
            ]
            for kw, want in cases:
                with self.subTest(**kw):
                    ws = await self.connect("/z", tls=False, compression=None,
                                            extensions=[ClientPerMessageDeflateFactory(**kw)])
                    self.assertEqual(self.negotiated(ws), want)
                    for i in range(50):
                        await self.assert_echo(ws, similar_message(i) * (1 + i % 5))
                    await self.assert_echo(ws, os.urandom(300000))
                    await self.assert_echo(ws, text_of(MiB, 3))
                    await ws.close()

    def test_server_window_bits_is_honoured(self):
        # Data with repeats at distances > 2^bits: a server that used a larger
        # window than agreed makes zlib.decompressobj(-bits) fail.
        pattern = os.urandom(20000)
        msg = pattern + pattern + pattern
        for bits in (9, 10, 12, 15):
            with self.subTest(bits=bits):
                c = self.raw("/z", "permessage-deflate; server_max_window_bits=%d" % bits)
                self.assertEqual(c.pmd.get("server_max_window_bits"), bits)
                for _ in range(3):
                    c.send_msg(msg, binary=True)
                    op, data, rsv1, wire = c.recv_msg()
                    self.assertTrue(rsv1)
                    self.assertEqual(data, msg)
                    if bits == 15:
                        self.assertLess(wire, len(msg) // 2, "15-bit window finds the repeats")
                c.close()
        # The /w9 route uses 9 bits whatever the client allows.
        c = self.raw("/w9", "permessage-deflate")
        c.pmd["server_max_window_bits"] = 9  # not announced: a smaller window needs no answer
        for _ in range(3):
            c.send_msg(msg, binary=True)
            op, data, rsv1, wire = c.recv_msg()
            self.assertEqual(data, msg)


# ---------------------------------------------------------------------------
class DeflateFrameTests(Base):
    """What the server sends and accepts on the wire (raw client)."""

    tls = False

    def test_rsv1_only_at_or_above_threshold(self):
        for path, threshold in (("/z", 64), ("/t0", 0), ("/t1k", 1024), ("/noctx", 64)):
            for tls in (False, True):
                with self.subTest(path=path, tls=tls):
                    srv = self.server if not tls else self.tls_server()
                    c = self.raw(path, "permessage-deflate", tls=tls, srv=srv)
                    # (empty messages after others: test_empty_and_tiny_compressed_messages)
                    for n in sorted({1, 10, 62, 63, 64, 65, 100, 1023, 1024, 1025, 5000}):
                        for binary in (False, True):
                            msg = (b"y" * n) if binary else text_of(n).encode()
                            c.send_msg(msg, binary=binary, compress=n % 2 == 0)
                            op, data, rsv1, wire = c.recv_msg()
                            self.assertEqual(data, msg, "size %d" % n)
                            self.assertEqual(op, OP_BINARY if binary else OP_TEXT)
                            self.assertEqual(bool(rsv1), n >= threshold,
                                             "RSV1 for a %d-byte message (threshold %d)"
                                             % (n, threshold))
                    c.close()

    def tls_server(self):
        if not hasattr(self, "_tls_srv"):
            self._tls_srv = self.start_server(tls=True)
        return self._tls_srv

    def _run_similar(self, path, offer, n=500):
        """500 similar messages each way; returns the server's compressed sizes."""
        c = self.raw(path, offer)
        sizes = []
        for i in range(n):
            msg = similar_message(i).encode()
            c.send_msg(msg)
            op, data, rsv1, wire = c.recv_msg()
            self.assertEqual(data, msg, "message %d" % i)
            self.assertTrue(rsv1, "message %d not compressed" % i)
            sizes.append(wire)
        c.close()
        return c, sizes

    def test_context_takeover_on_and_off(self):
        c_on, on = self._run_similar("/z", "permessage-deflate")
        self.assertEqual(c_on.pmd, {})
        c_off, off = self._run_similar("/z", "permessage-deflate; server_no_context_takeover; "
                                             "client_no_context_takeover")
        self.assertEqual(c_off.pmd, {"server_no_context_takeover": True,
                                     "client_no_context_takeover": True})
        c_route, route = self._run_similar("/noctx", "permessage-deflate")
        # Without context every message compresses alike (and inflates with a
        # fresh inflater, which recv_msg used); with it, later ones shrink.
        self.assertLess(sum(on[10:]), 0.6 * sum(off[10:]),
                        "context takeover should make similar messages much smaller")
        self.assertLess(sum(on[10:]), 0.6 * sum(route[10:]))
        self.assertLess(max(on[100:]), min(off[100:]))

    def test_no_context_frames_inflate_alone(self):
        # Every frame of a server_no_context_takeover connection must inflate
        # with a fresh inflater, also interleaved with another connection.
        a = self.raw("/z", "permessage-deflate; server_no_context_takeover")
        b = self.raw("/noctx", "permessage-deflate")
        ctx = self.raw("/z", "permessage-deflate")
        for i in range(200):
            for c in (a, b, ctx):
                msg = (similar_message(i) * (1 + i % 4)).encode()
                c.send_msg(msg)
            for c in (a, b, ctx):
                op, data, rsv1, wire = c.recv_msg()
                self.assertEqual(data, (similar_message(i) * (1 + i % 4)).encode())
                self.assertTrue(rsv1)
        for c in (a, b):
            for i in range(3):
                msg = similar_message(1000 + i).encode()
                c.send_msg(msg)
                f = c.recv_frame()
                self.assertTrue(f.rsv1)
                self.assertEqual(zlib.decompressobj(-15).decompress(f.payload + TAIL), msg)

    def test_client_context_is_kept_by_the_server(self):
        # The client compresses with context takeover; the server must keep its
        # inflater across messages, also when uncompressed messages come between.
        c = self.raw("/z", "permessage-deflate; client_max_window_bits")
        for i in range(300):
            msg = similar_message(i).encode()
            c.send_msg(msg, compress=(i % 5 != 4))
            op, data, rsv1, wire = c.recv_msg()
            self.assertEqual(data, msg, "message %d" % i)

    def test_client_final_block_then_more_messages(self):
        # RFC 7692 7.2.3.4: a sender may end a message with BFINAL set; the
        # receiver then starts over for the next one.
        c = self.raw("/z", "permessage-deflate")
        for i in range(20):
            msg = similar_message(i).encode() * 3
            z = zlib.compressobj(6, zlib.DEFLATED, -15)
            payload = z.compress(msg) + z.flush(zlib.Z_FINISH)
            c.send_frame(OP_TEXT, payload, rsv1=True)
            op, data, rsv1, _ = c.recv_msg()
            self.assertEqual(data, msg)
            # and a context-takeover message in between (the client starts a
            # new stream after its final block; it may not refer back past it)
            c.deflater = None
            msg2 = similar_message(100 + i).encode()
            c.send_msg(msg2)
            self.assertEqual(c.recv_msg()[1], msg2)

    def test_empty_and_tiny_compressed_messages(self):
        # compression_threshold = 0: every message is compressed, empty ones
        # too. A compressed empty message must still be valid deflate data once
        # 00 00 FF FF is appended (RFC 7692 7.2.1, 7.2.3.6), also after other
        # messages on a context-takeover connection.
        for path, offer in (("/t0", "permessage-deflate"),
                            ("/t0", "permessage-deflate; server_no_context_takeover")):
            with self.subTest(offer=offer):
                c = self.raw(path, offer)
                for i, msg in enumerate([b"", b"a", b"", b"", b"\x00",
                                         similar_message(1).encode(), b"", b"after"]):
                    c.send_msg(msg)
                    f = c.recv_frame()
                    self.assertTrue(f.rsv1, "message %d" % i)
                    self.assertNotEqual(f.payload, b"", "message %d (%r): RSV1 with an empty "
                                        "payload is not a deflate block" % (i, msg))
                    if c.inflater is None or offer.endswith("takeover"):
                        c.inflater = zlib.decompressobj(-15)
                    self.assertEqual(c.inflater.decompress(f.payload + TAIL), msg, "message %d" % i)
        c = self.raw("/t0", "permessage-deflate")
        # A compressed empty message may be the single octet 0x00 (RFC 7692 7.2.3.6).
        c.send_frame(OP_TEXT, b"\x00", rsv1=True)
        self.assertEqual(c.recv_msg()[1], b"")
        c.send_msg(b"after")
        self.assertEqual(c.recv_msg()[1], b"after")

    def test_fragmented_compressed_messages(self):
        for path in ("/z", "/noctx"):
            with self.subTest(path=path):
                c = self.raw(path, "permessage-deflate")
                for i, frags in enumerate([2, 3, 7, 50]):
                    msg = (similar_message(i) * 200).encode()
                    c.send_msg(msg, fragments=frags)
                    self.assertEqual(c.recv_msg()[1], msg)
                    bmsg = os.urandom(100000)
                    c.send_msg(bmsg, binary=True, fragments=frags)
                    op, data, _, _ = c.recv_msg()
                    self.assertEqual((op, data), (OP_BINARY, bmsg))
                # a ping between the fragments of a compressed message
                msg = (similar_message(9) * 50).encode()
                payload = c.compress(msg)
                c.send_frame(OP_TEXT, payload[:10], fin=False, rsv1=True)
                c.send_frame(OP_PING, b"in the middle")
                c.send_frame(OP_CONT, payload[10:], fin=True)
                f = c.recv_frame()
                self.assertEqual((f.opcode, f.payload), (OP_PONG, b"in the middle"))
                self.assertEqual(c.recv_msg()[1], msg)

    async def test_fragmented_compressed_with_websockets(self):
        for tls in (False, True):
            srv = self.server if not tls else self.tls_server()
            ws = await self.connect("/z", tls=tls, srv=srv)
            parts = ["Hel", "lo, ", "w\u00f6rld " * 1000, "\u20ac\U0001F680", ""]
            await ws.send(parts)
            self.assertEqual(await asyncio.wait_for(ws.recv(), T), "".join(parts))
            bparts = [os.urandom(n) for n in (1, 0, 125, 126, 65536, 3)]
            await ws.send(bparts)
            self.assertEqual(await asyncio.wait_for(ws.recv(), T), b"".join(bparts))

    def test_corrupt_deflate_data_closes_1007(self):
        # (Not a random first byte: about 3% of them make a valid final
        # fixed-Huffman block out of the 0xff bytes that follow.)
        for payload in (b"\xff\xff\xff\xff", b"\x07\x00garbage", b"\x06" + b"\xff" * 40):
            with self.subTest(payload=payload[:8]):
                c = self.raw("/z", "permessage-deflate")
                c.send_frame(OP_BINARY, payload, rsv1=True)
                self.assertEqual(c.expect_close(), 1007)
        # corrupt data after good messages (context in use)
        c = self.raw("/z", "permessage-deflate")
        for i in range(5):
            c.send_msg(similar_message(i).encode())
            c.recv_msg()
        c.send_frame(OP_TEXT, b"\xfe\xfe\xfe\xfe\xfe", rsv1=True)
        self.assertEqual(c.expect_close(), 1007)

    def test_invalid_utf8_after_inflation_closes_1007(self):
        for bad in (b"\xff\xfe", b"abc\xc0\xaf", b"ok " * 100 + b"\xed\xa0\x80", b"\xe2\x82"):
            for frags in (1, 3):
                with self.subTest(bad=bad[-4:], fragments=frags):
                    c = self.raw("/z", "permessage-deflate")
                    c.send_msg(bad, fragments=frags)
                    self.assertEqual(c.expect_close(), 1007)
        # The same bytes as binary are fine.
        c = self.raw("/z", "permessage-deflate")
        c.send_msg(b"\xff\xfe" * 100, binary=True)
        self.assertEqual(c.recv_msg()[1], b"\xff\xfe" * 100)

    def test_rsv1_where_not_allowed_closes_1002(self):
        cases = [
            ("route without compression", "/plain", "permessage-deflate",
             lambda c: c.send_frame(OP_TEXT, zlib_raw(b"hello"), rsv1=True)),
            ("no extension negotiated", "/z", (),
             lambda c: c.send_frame(OP_TEXT, zlib_raw(b"hello"), rsv1=True)),
            ("declined offer", "/z", "permessage-deflate; foo",
             lambda c: c.send_frame(OP_TEXT, zlib_raw(b"hello"), rsv1=True)),
            ("continuation", "/z", "permessage-deflate",
             lambda c: (c.send_frame(OP_TEXT, zlib_raw(b"hel"), fin=False, rsv1=True),
                        c.send_frame(OP_CONT, b"", fin=True, rsv1=True))),
            ("continuation of uncompressed", "/z", "permessage-deflate",
             lambda c: (c.send_frame(OP_TEXT, b"hel", fin=False),
                        c.send_frame(OP_CONT, b"lo", fin=True, rsv1=True))),
            ("ping", "/z", "permessage-deflate",
             lambda c: c.send_frame(OP_PING, b"x", rsv1=True)),
            ("pong", "/z", "permessage-deflate",
             lambda c: c.send_frame(OP_PONG, b"x", rsv1=True)),
            ("close", "/z", "permessage-deflate",
             lambda c: c.send_frame(OP_CLOSE, struct.pack("!H", 1000), rsv1=True)),
            ("rsv2", "/z", "permessage-deflate",
             lambda c: c.send_frame(OP_TEXT, b"x", rsv2=True)),
            ("rsv3 with rsv1", "/z", "permessage-deflate",
             lambda c: c.send_frame(OP_TEXT, zlib_raw(b"x"), rsv1=True, rsv3=True)),
        ]
        for name, path, offer, act in cases:
            with self.subTest(case=name):
                c = self.raw(path, offer)
                act(c)
                self.assertEqual(c.expect_close(), 1002)

    def test_max_message_size_after_inflation(self):
        c = self.raw("/small", "permessage-deflate")
        exact = b"a" * MiB
        c.send_msg(exact, binary=True)
        op, data, rsv1, wire = c.recv_msg()
        self.assertEqual(len(data), MiB)
        c.send_msg(b"a" * (MiB + 1), binary=True)
        self.assertEqual(c.expect_close(), 1009)
        # fragmented: the inflated total counts
        c = self.raw("/small", "permessage-deflate")
        c.send_msg(b"b" * (MiB + 100), binary=True, fragments=5)
        self.assertEqual(c.expect_close(), 1009)

    def test_decompression_bomb_closes_1009_without_memory_growth(self):
        srv = self.start_server(tls=False)
        time.sleep(0.2)
        rss0 = srv.rss_kib()
        # A few KB of deflate that inflate to 10 MiB; then ~300 KB that inflate
        # to 300 MiB (under the route's 1 MiB frame limit).
        for zeros, name in ((10 * MiB, "few KB"), (300 * MiB, "300 MiB")):
            with self.subTest(bomb=name):
                z = zlib.compressobj(9, zlib.DEFLATED, -15)
                payload = b"".join(z.compress(b"\x00" * MiB) for _ in range(zeros // MiB))
                payload += z.flush(zlib.Z_SYNC_FLUSH)
                payload = payload[:-4]
                self.assertLess(len(payload), MiB)
                c = self.raw("/small", "permessage-deflate", srv=srv)
                t0 = time.monotonic()
                c.send_frame(OP_BINARY, payload, rsv1=True)
                self.assertEqual(c.expect_close(), 1009)
                self.assertLess(time.monotonic() - t0, 5.0)
        # Many bombs at once on the 16 MiB route must not add up either.
        z = zlib.compressobj(9, zlib.DEFLATED, -15)
        payload = b"".join(z.compress(b"\x00" * MiB) for _ in range(64)) + z.flush(zlib.Z_SYNC_FLUSH)
        conns = [self.raw("/small", "permessage-deflate", srv=srv) for _ in range(20)]
        for c in conns:
            c.send_frame(OP_BINARY, payload[:-4], rsv1=True)
        for c in conns:
            self.assertEqual(c.expect_close(), 1009)
        hwm = srv.rss_kib("VmHWM")
        growth = (hwm - rss0) / 1024.0
        self.assertLess(growth, 48, "peak RSS grew by %.1f MiB (from %d KiB)" % (growth, rss0))
        # and the server still serves
        c = self.raw("/z", "permessage-deflate", srv=srv)
        c.send_msg(b"alive")
        self.assertEqual(c.recv_msg()[1], b"alive")


def zlib_raw(data):
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH))[:-4]


# ---------------------------------------------------------------------------
class PubSubTests(Base):
    """Mixed compressed / uncompressed subscribers get identical streams in order."""

    async def _subs_count(self, n, srv=None):
        srv = srv or self.server
        deadline = time.monotonic() + T
        while time.monotonic() < deadline:
            body = await asyncio.to_thread(http_get, srv.port, "/subs")
            if int(body) >= n:
                return int(body)
            await asyncio.sleep(0.05)
        self.fail("only %s subscribers" % body)

    async def test_mixed_subscribers_identical_streams(self):
        groups = []  # (name, [connection])
        groups.append(("ws deflate", [await self.connect("/sub", tls=False) for _ in range(50)]))
        groups.append(("ws plain", [await self.connect("/sub", tls=False, compression=None)
                                    for _ in range(50)]))
        groups.append(("ws no-ctx offer", [await self.connect(
            "/sub", tls=False, compression=None,
            extensions=[ClientPerMessageDeflateFactory(server_no_context_takeover=True,
                                                       client_no_context_takeover=True)])
            for _ in range(10)]))
        groups.append(("ws no-ctx route", [await self.connect("/sub_noctx", tls=False)
                                           for _ in range(10)]))
        groups.append(("ws plain route", [await self.connect("/sub_plain", tls=False)
                                          for _ in range(5)]))
        groups.append(("wss deflate", [await self.connect("/sub") for _ in range(10)]))
        groups.append(("wss plain", [await self.connect("/sub", compression=None)
                                     for _ in range(10)]))
        for name, conns in groups:
            for ws in conns:
                want = None if "plain" in name else "permessage-deflate"
                got = self.negotiated(ws)
                self.assertEqual(got is not None, want is not None, name)
        # Raw subscribers with no context takeover at 7 window sizes (more
        # (window, level) combinations than the server shares per publish).
        raws = []
        for bits in range(9, 16):
            c = self.raw("/sub", "permessage-deflate; server_no_context_takeover; "
                                 "server_max_window_bits=%d" % bits)
            raws.append(c)
        raw_ctx = self.raw("/sub", "permessage-deflate; server_max_window_bits=10")
        raws.append(raw_ctx)
        total = sum(len(c) for _, c in groups) + len(raws)
        self.assertEqual(await self._subs_count(total), total)

        msgs = []
        for i in range(200):
            kind = i % 8
            if kind == 0:
                msgs.append(os.urandom(1 + i * 13))
            elif kind == 1:
                msgs.append("s%d" % i)  # below the threshold
            elif kind == 2:
                msgs.append(text_of(63, i))
            elif kind == 3:
                msgs.append(text_of(64, i))
            elif kind == 4:
                msgs.append(similar_message(i) * (1 + i % 30))
            else:
                msgs.append(similar_message(i))
        pub = await self.connect("/pub", tls=False)
        for m in msgs:
            await pub.send(m)

        async def drain(ws):
            return [await asyncio.wait_for(ws.recv(), T) for _ in msgs]

        def drain_raw(c):
            out = []
            for _ in msgs:
                op, data, rsv1, wire = c.recv_msg()
                out.append((op, data, rsv1))
            return out

        raw_results = [asyncio.to_thread(drain_raw, c) for c in raws]
        results = await asyncio.gather(*[drain(ws) for _, conns in groups for ws in conns],
                                       *raw_results)
        k = 0
        for name, conns in groups:
            for j, _ in enumerate(conns):
                got = results[k]
                k += 1
                for i, (g, m) in enumerate(zip(got, msgs)):
                    if g != m or type(g) is not type(m):
                        self.fail("%s #%d: message %d differs (%r... vs %r...)"
                                  % (name, j, i, g[:20], m[:20]))
        for c, got in zip(raws, results[k:]):
            for i, ((op, data, rsv1), m) in enumerate(zip(got, msgs)):
                want = m if isinstance(m, bytes) else m.encode()
                self.assertEqual(data, want, "raw subscriber %r, message %d" % (c.pmd, i))
                self.assertEqual(op, OP_BINARY if isinstance(m, bytes) else OP_TEXT)
                self.assertEqual(bool(rsv1), len(want) >= 64,
                                 "RSV1 of a %d-byte publish" % len(want))


def http_get(port, path, ctx=None):
    conn = (http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=T) if ctx
            else http.client.HTTPConnection("127.0.0.1", port, timeout=T))
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read().decode()
    conn.close()
    return body


# ---------------------------------------------------------------------------
class TlsProtocolTests(Base):
    """openssl s_client: versions, suites, ALPN; https routes."""

    def s_client(self, *args, stdin=b""):
        r = subprocess.run(["openssl", "s_client", "-connect",
                            "127.0.0.1:%d" % self.server.tls_port, "-CAfile", self.certs.a_crt,
                            "-verify_return_error"] + list(args),
                           input=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=20)
        return r.returncode, r.stdout.decode("utf-8", "replace")

    def assert_protocol(self, out, version):
        m = re.search(r"Protocol\s*:\s*(TLSv[\d.]+)", out) or \
            re.search(r"New, (TLSv[\d.]+), Cipher", out)
        self.assertTrue(m, out)
        self.assertEqual(m.group(1), version, out)

    def test_tls12_and_tls13(self):
        rc, out = self.s_client("-tls1_2")
        self.assertEqual(rc, 0, out)
        self.assert_protocol(out, "TLSv1.2")
        self.assertIn("Verify return code: 0 (ok)", out)
        m = re.search(r"Cipher is (\S+)", out)
        self.assertRegex(m.group(1), r"^ECDHE-RSA-(AES\d+-GCM-SHA\d+|CHACHA20-POLY1305)$")
        self.assertRegex(out, r"Compression: NONE")
        rc, out = self.s_client("-tls1_3")
        self.assertEqual(rc, 0, out)
        self.assert_protocol(out, "TLSv1.3")

    def test_tls10_and_tls11_refused_with_protocol_version_alert(self):
        for flag in ("-tls1_1", "-tls1"):
            with self.subTest(flag=flag):
                rc, out = self.s_client(flag, "-cipher", "DEFAULT:@SECLEVEL=0")
                self.assertNotEqual(rc, 0, out)
                self.assertRegex(out, r"alert protocol version|SSL alert number 70", out)
        # The server still works afterwards.
        rc, out = self.s_client("-tls1_3")
        self.assertEqual(rc, 0, out)

    def test_tls12_suites_are_ecdhe_aead_only(self):
        ok = ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
              "ECDHE-RSA-CHACHA20-POLY1305"]
        refused = ["AES128-GCM-SHA256", "AES256-SHA", "ECDHE-RSA-AES128-SHA",
                   "ECDHE-RSA-AES256-SHA384", "DHE-RSA-AES128-GCM-SHA256",
                   "DHE-RSA-CHACHA20-POLY1305"]
        for suite in ok:
            with self.subTest(suite=suite):
                rc, out = self.s_client("-tls1_2", "-cipher", suite)
                self.assertEqual(rc, 0, out)
                self.assertIn("Cipher is " + suite, out)
        for suite in refused:
            with self.subTest(suite=suite):
                rc, out = self.s_client("-tls1_2", "-cipher", suite + ":@SECLEVEL=0")
                self.assertNotEqual(rc, 0, out)
                self.assertRegex(out, r"handshake failure|alert number 40|no shared cipher", out)

    def test_alpn(self):
        cases = [("http/1.1", "http/1.1"), ("h2", None), ("h2,http/1.1", "http/1.1"),
                 ("spdy/3,foo", None)]
        for offer, want in cases:
            for ver in ("-tls1_2", "-tls1_3"):
                with self.subTest(alpn=offer, version=ver):
                    rc, out = self.s_client(ver, "-alpn", offer)
                    self.assertEqual(rc, 0, out)
                    if want:
                        self.assertIn("ALPN protocol: " + want, out)
                    else:
                        self.assertIn("No ALPN negotiated", out)
        # Python's ssl as well
        ctx = self.ctx()
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.server.tls_port)),
                            server_hostname="127.0.0.1")
        self.assertEqual(s.selected_alpn_protocol(), "http/1.1")
        s.close()

    def test_renegotiation_refused(self):
        # s_client's "R" asks for a TLS 1.2 renegotiation; the server must not
        # perform one (and must not crash). The connection may end; either way
        # it still serves new clients.
        rc, out = self.s_client("-tls1_2", stdin=b"R\n")
        self.assertNotRegex(out, r"(?s)RENEGOTIATING.*Verify return code.*Verify return code")
        rc, out = self.s_client("-tls1_2")
        self.assertEqual(rc, 0, out)

    def test_https_routes(self):
        ctx = self.ctx()
        conn = http.client.HTTPSConnection("127.0.0.1", self.server.tls_port, context=ctx,
                                           timeout=T)
        conn.request("GET", "/hello")
        r = conn.getresponse()
        self.assertEqual((r.status, r.read()), (200, b"hello"))
        # keep-alive: more requests on the same TLS connection
        body = os.urandom(200 * KiB)
        conn.request("POST", "/body", body=body)
        r = conn.getresponse()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.read(), body)
        conn.request("HEAD", "/hello")
        r = conn.getresponse()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.read(), b"")
        conn.request("GET", "/nope")
        r = conn.getresponse()
        r.read()
        self.assertEqual(r.status, 404)
        conn.request("GET", "/z")
        r = conn.getresponse()
        r.read()
        self.assertEqual(r.status, 426)
        conn.close()
        # pipelined requests over TLS
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.server.tls_port),
                                                     timeout=T), server_hostname="127.0.0.1")
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n" * 20)
        data = b""
        while data.count(b"hello") < 20:
            chunk = s.recv(65536)
            self.assertTrue(chunk, "connection ended after %d answers" % data.count(b"hello"))
            data += chunk
        self.assertEqual(data.count(b"HTTP/1.1 200"), 20)
        s.close()

    async def test_websocket_upgrade_after_alpn(self):
        ctx = self.ctx()
        ctx.set_alpn_protocols(["http/1.1"])
        ws = await self.connect("/z", ssl=ctx)
        await self.assert_echo(ws, "alpn ok" * 100)


# ---------------------------------------------------------------------------
class HandshakeTimeoutTests(Base):
    flags = ("--handshake-timeout", "1")

    def _client_hello(self):
        ctx = self.ctx()
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, out, server_hostname="127.0.0.1")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return out.read()

    def _time_to_drop(self, send, limit=8.0):
        s = socket.create_connection(("127.0.0.1", self.server.tls_port), timeout=limit)
        if send:
            s.sendall(send)
        t0 = time.monotonic()
        try:
            while s.recv(65536):
                pass
        except ConnectionResetError:
            pass
        except socket.timeout:
            return None
        finally:
            s.close()
        return time.monotonic() - t0

    async def test_stalled_tls_clients_are_dropped_while_others_are_served(self):
        hello = self._client_hello()
        stalls = {"silent": b"", "5 bytes of a ClientHello": hello[:5],
                  "half a ClientHello": hello[:len(hello) // 2],
                  "a whole ClientHello, no Finished": hello}
        results = {}

        def run(name, data):
            results[name] = self._time_to_drop(data)

        threads = [threading.Thread(target=run, args=kv) for kv in stalls.items()]
        for t in threads:
            t.start()
        # meanwhile a normal client is served
        ws = await self.connect("/z")
        for i in range(20):
            await self.assert_echo(ws, similar_message(i))
            await asyncio.sleep(0.02)
        for t in threads:
            await asyncio.to_thread(t.join)
        for name, took in results.items():
            with self.subTest(stall=name):
                self.assertIsNotNone(took, "still connected after 8 s")
                self.assertGreater(took, 0.7)
                self.assertLess(took, 2.5, "dropped only after %.1f s (--handshake-timeout 1)"
                                % took)
        await self.assert_echo(ws, "still here")

    def test_tls_done_but_no_request_gets_408(self):
        s = self.ctx().wrap_socket(socket.create_connection(("127.0.0.1", self.server.tls_port),
                                                            timeout=8),
                                   server_hostname="127.0.0.1")
        t0 = time.monotonic()
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, ssl.SSLError):
            pass
        took = time.monotonic() - t0
        s.close()
        self.assertTrue(data.startswith(b"HTTP/1.1 408 "), data)
        self.assertLess(took, 2.5)


# ---------------------------------------------------------------------------
class StartupErrorTests(Base):
    app = None

    def run_fail(self, *flags, app=APP):
        r = subprocess.run([mwserver.moonwire_bin(), app, "--listen", "127.0.0.1:0"] + list(flags),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, cwd=mwserver.repo_root(), timeout=20)
        err = r.stderr.decode("utf-8", "replace")
        lines = [line for line in err.splitlines() if line.strip()]
        return r.returncode, lines, err

    def check(self, flags, code, pattern):
        rc, lines, err = self.run_fail(*flags)
        self.assertEqual(rc, code, err)
        self.assertEqual(len(lines), 1, "one line expected:\n" + err)
        self.assertRegex(lines[0], pattern)

    def test_missing_files(self):
        c = self.certs
        missing = os.path.join(c.dir, "missing.pem")
        self.check(["--tls-listen", "127.0.0.1:0", "--tls-cert", missing, "--tls-key", c.a_key],
                   1, r"TLS certificate %s: No such file or directory" % re.escape(missing))
        self.check(["--tls-listen", "127.0.0.1:0", "--tls-cert", c.a_crt, "--tls-key", missing],
                   1, r"TLS key %s: No such file or directory" % re.escape(missing))

    def test_non_pem_certificate(self):
        c = self.certs
        self.check(["--tls-listen", "127.0.0.1:0", "--tls-cert", c.garbage, "--tls-key", c.a_key],
                   1, r"TLS certificate %s is not a PEM file" % re.escape(c.garbage))
        # a key file given as the certificate
        self.check(["--tls-listen", "127.0.0.1:0", "--tls-cert", c.a_key, "--tls-key", c.a_key],
                   1, r"TLS certificate %s is not a PEM file" % re.escape(c.a_key))

    def test_non_pem_key(self):
        c = self.certs
        self.check(["--tls-listen", "127.0.0.1:0", "--tls-cert", c.a_crt, "--tls-key", c.garbage],
                   1, r"TLS key %s is not a PEM file" % re.escape(c.garbage))

    def test_key_does_not_match(self):
        c = self.certs
        for key in (c.other_key, c.b_key):
            with self.subTest(key=os.path.basename(key)):
                self.check(["--tls-listen", "127.0.0.1:0", "--tls-cert", c.a_crt, "--tls-key", key],
                           1, r"TLS key %s does not match the certificate" % re.escape(key))

    def test_tls_listen_without_cert_or_key(self):
        c = self.certs
        for extra in ([], ["--tls-cert", c.a_crt], ["--tls-key", c.a_key]):
            with self.subTest(extra=extra):
                self.check(["--tls-listen", "127.0.0.1:0"] + extra, 2,
                           r"needs tls_cert and tls_key")

    def test_tls_port_in_use(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        try:
            rc, lines, err = self.run_fail("--tls-listen", "127.0.0.1:%d" % port,
                                           "--tls-cert", self.certs.a_crt,
                                           "--tls-key", self.certs.a_key)
        finally:
            s.close()
        self.assertNotEqual(rc, 0, err)
        self.assertEqual(len(lines), 1, err)
        self.assertIn("127.0.0.1:%d" % port, lines[0])
        self.assertIn("in use", lines[0])

    def test_bad_tls_listen_value(self):
        rc, lines, err = self.run_fail("--tls-listen", "nonsense", "--tls-cert", self.certs.a_crt,
                                       "--tls-key", self.certs.a_key)
        self.assertNotEqual(rc, 0, err)
        self.assertEqual(len(lines), 1, err)
        self.assertIn("--tls-listen", lines[0])


# ---------------------------------------------------------------------------
class AppOptionsTests(Base):
    """tls_listen / tls_cert / tls_key as app options, paths relative to the app file."""

    app = None

    def write_app(self, d, options):
        os.makedirs(os.path.join(d, "public"), exist_ok=True)
        with open(os.path.join(d, "public", "big.bin"), "wb") as f:
            f.write(self.big)
        path = os.path.join(d, "app.lua")
        with open(path, "w") as f:
            f.write("""
local moonwire = require "moonwire"
local app = moonwire.app { %s }
app:websocket("/echo", { compression = true, on_message = function(ws, m, b) ws:send(m, b) end })
app:get("/hello", function(req, res) res:send(200, "hello from app options") end)
app:static("/s", "public")
return app
""" % options)
        return path

    def setUp(self):
        self.big = os.urandom(3 * MiB + 17)
        self.appdir = tempfile.mkdtemp(prefix="mw-tlsapp-")
        self.addCleanup(shutil.rmtree, self.appdir, True)
        shutil.copy(self.certs.a_crt, os.path.join(self.appdir, "cert.pem"))
        shutil.copy(self.certs.a_key, os.path.join(self.appdir, "key.pem"))
        super().setUp()

    async def test_app_options_relative_paths(self):
        app = self.write_app(self.appdir, 'tls_listen = "127.0.0.1:0", tls_cert = "cert.pem", '
                                          'tls_key = "key.pem"')
        srv = self.start_server(app=app, tls=False)
        m = srv.wait_for_log(TLS_RE, 5)
        self.assertTrue(m, srv.log())
        srv.tls_port = int(m.group(2))
        self.assertEqual(fingerprint(srv.tls_port), self.certs.a_fp)
        body = await asyncio.to_thread(http_get, srv.tls_port, "/hello", self.ctx())
        self.assertEqual(body, "hello from app options")
        ws = await self.connect("/echo", srv=srv)
        self.assertEqual(self.negotiated(ws), "permessage-deflate")
        await self.assert_echo(ws, "over wss" * 1000)
        # a static file larger than any buffer, streamed over TLS
        conn = http.client.HTTPSConnection("127.0.0.1", srv.tls_port, context=self.ctx(),
                                           timeout=T)
        conn.request("GET", "/s/big.bin")
        r = conn.getresponse()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.read(), self.big)
        conn.close()

    async def test_flags_override_app_options(self):
        app = self.write_app(self.appdir, 'tls_listen = "127.0.0.1:0", tls_cert = "cert.pem", '
                                          'tls_key = "key.pem"')
        srv = self.start_server("--tls-cert", self.certs.b_crt, "--tls-key", self.certs.b_key,
                                app=app, tls=False)
        m = srv.wait_for_log(TLS_RE, 5)
        self.assertTrue(m, srv.log())
        self.assertEqual(fingerprint(int(m.group(2))), self.certs.b_fp)

    def test_app_option_missing_relative_file(self):
        app = self.write_app(self.appdir, 'tls_listen = "127.0.0.1:0", tls_cert = "nope.pem", '
                                          'tls_key = "key.pem"')
        r = subprocess.run([mwserver.moonwire_bin(), app, "--listen", "127.0.0.1:0"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, cwd=mwserver.repo_root(), timeout=20)
        err = r.stderr.decode()
        self.assertEqual(r.returncode, 1, err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn(os.path.join(self.appdir, "nope.pem") + ": No such file or directory", err)


def fingerprint(port):
    """sha256 of the DER certificate the TLS listener serves now (no verification)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=T) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()


def subject_cn(port, cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=T) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            return dict(x[0] for x in s.getpeercert()["subject"])["commonName"]


# ---------------------------------------------------------------------------
class ReloadTests(Base):
    """Certificates are re-read on SIGHUP; live connections go on."""

    app = None

    def setUp(self):
        self.d = tempfile.mkdtemp(prefix="mw-tlsreload-")
        self.addCleanup(shutil.rmtree, self.d, True)
        self.crt, self.key = os.path.join(self.d, "cert.pem"), os.path.join(self.d, "key.pem")
        self.install(self.certs.a_crt, self.certs.a_key)
        super().setUp()

    def install(self, crt, key):
        for src, dst in ((crt, self.crt), (key, self.key)):
            tmp = dst + ".tmp"
            shutil.copy(src, tmp)
            os.replace(tmp, dst)

    def hup(self, srv, pattern, n):
        os.kill(srv.proc.pid, signal.SIGHUP)
        self.assertTrue(srv.wait_count(pattern, n, 5.0),
                        "no %d-th log line matching %r" % (n, pattern))

    async def test_sighup_swaps_certificate_live_connections_continue(self):
        srv = self.start_server(*self.tls_flags(self.crt, self.key), app=APP, tls=False)
        m = srv.wait_for_log(TLS_RE, 5)
        self.assertTrue(m, srv.log())
        srv.tls_port = int(m.group(2))
        bundle = self.certs.bundle
        self.assertEqual(fingerprint(srv.tls_port), self.certs.a_fp)
        self.assertEqual(subject_cn(srv.tls_port, bundle), "moonwire-test-a")

        live = await self.connect("/z", srv=srv, ssl=self.certs.client_ctx(bundle))
        live_plain = await self.connect("/plain", srv=srv, ssl=self.certs.client_ctx(bundle),
                                        compression=None)
        await self.assert_echo(live, "before")

        # 1. new certificate B
        self.install(self.certs.b_crt, self.certs.b_key)
        self.hup(srv, r"reloaded", 1)
        self.assertEqual(fingerprint(srv.tls_port), self.certs.b_fp)
        self.assertEqual(subject_cn(srv.tls_port, bundle), "moonwire-test-b")
        await self.assert_echo(live, "after reload " * 100)
        await self.assert_echo(live_plain, os.urandom(200000))
        ws_b = await self.connect("/z", srv=srv, ssl=self.certs.client_ctx(self.certs.b_crt))
        await self.assert_echo(ws_b, "new cert")

        # 2. a broken certificate: B keeps serving, logged
        with open(self.crt, "wb") as f:
            f.write(b"garbage")
        self.hup(srv, r"keeping the previous TLS certificate", 1)
        self.assertEqual(fingerprint(srv.tls_port), self.certs.b_fp)
        await self.assert_echo(live, "after a bad reload")

        # 3. a key that does not match: B keeps serving
        self.install(self.certs.a_crt, self.certs.b_key)
        self.hup(srv, r"keeping the previous TLS certificate", 2)
        self.assertEqual(fingerprint(srv.tls_port), self.certs.b_fp)

        # 4. a missing file: B keeps serving
        os.remove(self.crt)
        self.hup(srv, r"keeping the previous TLS certificate", 3)
        self.assertEqual(fingerprint(srv.tls_port), self.certs.b_fp)

        # 5. back to A
        self.install(self.certs.a_crt, self.certs.a_key)
        n = srv.count_log(r"reloaded")
        self.hup(srv, r"reloaded", n + 1)
        self.assertEqual(srv.count_log(r"keeping the previous TLS certificate"), 3)
        self.assertEqual(fingerprint(srv.tls_port), self.certs.a_fp)
        await self.assert_echo(live, "end")
        await self.assert_echo(ws_b, "end")
        await self.assert_echo(live_plain, "end")

    async def test_reload_during_traffic(self):
        srv = self.start_server(*self.tls_flags(self.crt, self.key), app=APP, tls=False)
        m = srv.wait_for_log(TLS_RE, 5)
        srv.tls_port = int(m.group(2))
        ctx = self.certs.client_ctx(self.certs.bundle)
        conns = [await self.connect("/z", srv=srv, ssl=ctx) for _ in range(5)]
        stop = False

        async def traffic(ws, k):
            i = 0
            while not stop:
                await self.assert_echo(ws, similar_message(i * 10 + k) * (1 + i % 20))
                i += 1
            return i

        tasks = [asyncio.ensure_future(traffic(ws, k)) for k, ws in enumerate(conns)]
        for i in range(6):
            self.install(*((self.certs.b_crt, self.certs.b_key) if i % 2 == 0
                           else (self.certs.a_crt, self.certs.a_key)))
            os.kill(srv.proc.pid, signal.SIGHUP)
            self.assertTrue(await asyncio.to_thread(srv.wait_count, r"reloaded", i + 1))
            # a fresh handshake each time
            fp = await asyncio.to_thread(fingerprint, srv.tls_port)
            self.assertEqual(fp, self.certs.b_fp if i % 2 == 0 else self.certs.a_fp)
        stop = True
        counts = await asyncio.gather(*tasks)
        self.assertTrue(all(c > 0 for c in counts), counts)


if __name__ == "__main__":
    unittest.main(verbosity=2)
