"""Observability (issue 12): metric values after a known sequence, Prometheus
text conventions, moonwire.stats() against /metrics, reload counters, and both
log formats (text and --log-format json, with --access-log).

    /usr/bin/python3 spec/clients/test_python_observability.py      # from the repo root
    MOONWIRE_BIN=/path/to/moonwire /usr/bin/python3 spec/clients/test_python_observability.py -k Logs

The exact-sequence test drives the server with a raw client (below) that
counts every byte it sends and receives, so the byte counters are checked
exactly too; the log tests use python3-websockets (Debian, 10.x).
App: spec/clients/apps/app_observability.lua.
"""

import asyncio
import base64
import json
import math
import os
import re
import shutil
import socket
import struct
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
from test_python_websockets import MoonwireCase

APP = os.path.join(mwserver.clients_dir(), "apps", "app_observability.lua")
T = 10.0

CLOSE_CODES = ["1000", "1001", "1002", "1003", "1005", "1006", "1007", "1008", "1009",
               "1011", "4000", "other"]
REFUSAL_STATUSES = ["400", "401", "403", "404", "405", "408", "426", "429", "431", "500",
                    "503", "other"]


# ---------------------------------------------------------------------------
# Prometheus text format (version 0.0.4)
SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')


def parse_labels(text):
    labels, pos = {}, 0
    while pos < len(text):
        m = LABEL_RE.match(text, pos)
        if not m:
            raise ValueError("bad label set %r" % text)
        labels[m.group(1)] = m.group(2)
        pos = m.end()
    return tuple(sorted(labels.items()))


class Exposition:
    """A parsed /metrics body: families (help, type, order) and samples."""

    def __init__(self, text):
        self.text = text
        self.help, self.type, self.samples, self.order = {}, {}, {}, []
        self.problems = []
        for n, line in enumerate(text.split("\n"), 1):
            if line == "":
                continue
            if line.startswith("# HELP "):
                name, _, doc = line[7:].partition(" ")
                if name in self.help:
                    self.problems.append("line %d: second HELP for %s" % (n, name))
                if not doc.strip():
                    self.problems.append("line %d: empty HELP for %s" % (n, name))
                self.help[name] = doc
                continue
            if line.startswith("# TYPE "):
                name, _, typ = line[7:].partition(" ")
                if name in self.type:
                    self.problems.append("line %d: second TYPE for %s" % (n, name))
                if typ not in ("counter", "gauge", "histogram", "summary", "untyped"):
                    self.problems.append("line %d: bad TYPE %r" % (n, typ))
                if any(s[0] == name for s in self.samples):
                    self.problems.append("line %d: TYPE for %s after its samples" % (n, name))
                self.type[name] = typ
                continue
            if line.startswith("#"):
                continue
            m = SAMPLE_RE.match(line)
            if not m:
                self.problems.append("line %d: not a sample: %r" % (n, line))
                continue
            name, labels, value = m.group(1), parse_labels(m.group(2) or ""), m.group(3)
            try:
                v = float(value)
            except ValueError:
                self.problems.append("line %d: bad value %r" % (n, value))
                continue
            key = (name, labels)
            if key in self.samples:
                self.problems.append("line %d: duplicate series %s%s" % (n, name, dict(labels)))
            if name not in self.type:
                self.problems.append("line %d: sample of %s before (or without) its TYPE"
                                     % (n, name))
            self.samples[key] = v
            if name not in self.order:
                self.order.append(name)

    def get(self, name, **labels):
        key = (name, tuple(sorted(labels.items())))
        if key not in self.samples:
            raise KeyError("no series %s%s in /metrics" % (name, labels or ""))
        return self.samples[key]

    def by_label(self, name, label):
        return {dict(k[1])[label]: v for k, v in self.samples.items() if k[0] == name}

    def flat(self):
        """Every series as 'name{l="v"}' -> value (for whole-table comparisons)."""
        out = {}
        for (name, labels), v in self.samples.items():
            lab = ",".join('%s="%s"' % kv for kv in labels)
            out[name + ("{%s}" % lab if lab else "")] = v
        return out


def http_get(port, path, method="GET", extra=""):
    """One request with Connection: close; returns (status, headers, body, request_bytes,
    response_bytes)."""
    req = ("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s\r\n"
           % (method, path, extra)).encode()
    with socket.create_connection(("127.0.0.1", port), T) as s:
        s.settimeout(T)
        s.sendall(req)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for h in lines[1:]:
        k, _, v = h.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body, len(req), len(data)


def scrape(port, path="/metrics"):
    status, headers, body, _, _ = http_get(port, path)
    if status != 200:
        raise AssertionError("GET %s on port %d: %d %r" % (path, port, status, body[:200]))
    return Exposition(body.decode()), headers


# ---------------------------------------------------------------------------
class RawWS:
    """A minimal blocking WebSocket client that counts the bytes it moves."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), T)
        self.sock.settimeout(T)
        self.sent = 0
        self.received = 0
        self.buf = b""
        self.status = None

    def _send(self, data):
        self.sock.sendall(data)
        self.sent += len(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("server closed the connection")
        self.received += len(chunk)
        self.buf += chunk

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def handshake(self, path):
        key = base64.b64encode(os.urandom(16)).decode()
        self._send(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n" % (path, key)).encode())
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ")[1])
        return self.status

    def send_frame(self, opcode, payload=b""):
        if isinstance(payload, str):
            payload = payload.encode()
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            hdr = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._send(hdr + mask + body)

    def send_text(self, s):
        self.send_frame(1, s)

    def recv_frame(self):
        b0, b1 = self._take(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._take(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._take(8))[0]
        if b1 & 0x80:
            raise AssertionError("server frame is masked")
        return b0 & 0x0F, self._take(n)

    def recv_text(self):
        op, payload = self.recv_frame()
        if op != 1:
            raise AssertionError("expected a text frame, got opcode %d %r" % (op, payload[:60]))
        return payload.decode()

    def close(self, code=1000):
        """Close handshake started by the client; reads to EOF."""
        self.send_frame(8, struct.pack("!H", code))
        while True:
            op, payload = self.recv_frame()
            if op == 8:
                break
        self.read_to_eof()
        return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None

    def answer_close(self):
        """The server closed first: read its close frame, echo it, read to EOF."""
        while True:
            op, payload = self.recv_frame()
            if op == 8:
                break
        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        self.send_frame(8, payload[:2])
        self.read_to_eof()
        return code

    def read_to_eof(self):
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.received += len(chunk)
            self.buf += chunk
        self.sock.close()

    def drop(self):
        """Abrupt end: no close frame, just the TCP close."""
        self.sock.close()


class ObservabilityCase(MoonwireCase):
    app = APP

    def setUp(self):
        self.servers = []
        self._problems_before = self._problem_count()
        self.server = None

    def start_with(self, *flags, metrics=True, admin=False, app=None):
        for attempt in range(5):
            extra = []
            self.metrics_port = self.admin_port = None
            if metrics:
                self.metrics_port = mwserver.free_port()
                extra += ["--metrics", "127.0.0.1:%d" % self.metrics_port]
            if admin:
                self.admin_port = mwserver.free_port()
                extra += ["--admin", "127.0.0.1:%d" % self.admin_port]
            try:
                self.server = self.start_server(app or self.app, *(list(flags) + extra))
                return self.server
            except mwserver.ServerStartError as e:
                if "in use" in str(e) and attempt < 4:
                    continue
                raise
        raise AssertionError("unreachable")

    async def metrics(self, port=None):
        return await asyncio.to_thread(scrape, port or self.metrics_port)

    async def get(self, path, port=None):
        return await asyncio.to_thread(http_get, port or self.server.port, path)

    async def poll_metrics(self, pred, what, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            m, _ = await self.metrics()
            if pred(m):
                return m
            if time.monotonic() > deadline:
                self.fail("metrics never showed %s:\n%s" % (what, m.text))
            await asyncio.sleep(0.05)


def expected_zero():
    """Every counter series of a fresh server, at 0."""
    e = {
        "moonwire_connections_accepted_total": 0,
        "moonwire_websocket_upgrades_total": 0,
        "moonwire_http_requests_total": 0,
        "moonwire_messages_received_total": 0,
        "moonwire_messages_sent_total": 0,
        "moonwire_received_bytes_total": 0,
        "moonwire_sent_bytes_total": 0,
        "moonwire_publishes_total": 0,
        "moonwire_publish_deliveries_total": 0,
        "moonwire_handler_calls_total": 0,
        "moonwire_handler_errors_total": 0,
        "moonwire_slow_consumer_closed_total": 0,
        "moonwire_slow_consumer_dropped_total": 0,
        'moonwire_reloads_total{result="ok"}': 0,
        'moonwire_reloads_total{result="failed"}': 0,
    }
    for s in REFUSAL_STATUSES:
        e['moonwire_websocket_upgrades_refused_total{status="%s"}' % s] = 0
    for c in CLOSE_CODES:
        e['moonwire_websocket_closed_total{code="%s"}' % c] = 0
    return e


COUNTERS_WITHOUT_EXACT_VALUE = ("moonwire_handler_seconds_total",)
GAUGES = ("moonwire_connections_open", "moonwire_handlers_suspended",
          "moonwire_write_queue_bytes", "moonwire_lua_memory_bytes")


def counters_of(m):
    return {k: v for k, v in m.flat().items()
            if not k.startswith(COUNTERS_WITHOUT_EXACT_VALUE) and not k.startswith(GAUGES)}


def mismatches(got, want):
    """The series whose values differ, one line each (empty when all agree)."""
    out = []
    for k in sorted(set(got) | set(want)):
        g, w = got.get(k), want.get(k)
        if g != w:
            out.append("%s: got %s, want %s" % (k, g, w))
    return out


# ---------------------------------------------------------------------------
class MetricsFormatTests(ObservabilityCase):
    async def test_exposition_follows_prometheus_conventions(self):
        self.start_with()
        m, headers = await self.metrics()
        self.assertEqual(m.problems, [], m.text)
        self.assertTrue(headers.get("content-type", "").startswith("text/plain; version=0.0.4"),
                        headers)
        self.assertTrue(m.text.endswith("\n"))
        for name in m.order:
            with self.subTest(metric=name):
                self.assertTrue(name.startswith("moonwire_"), name)
                self.assertIn(name, m.help, "no HELP")
                self.assertIn(name, m.type, "no TYPE")
                typ = m.type[name]
                if typ == "counter":
                    self.assertTrue(name.endswith("_total"), "a counter not ending in _total")
                else:
                    self.assertFalse(name.endswith("_total"), "a %s ending in _total" % typ)
                # Units in names (base units: bytes, seconds), at the end.
                base = name[:-len("_total")] if name.endswith("_total") else name
                for unit in ("bytes", "seconds"):
                    if unit in base.split("_"):
                        self.assertTrue(base.endswith("_" + unit), "unit %s not last" % unit)
                for bad in ("_ms", "_kb", "_milliseconds", "_kilobytes", "_mb"):
                    self.assertNotIn(bad, name)
        # Every family declared has samples; every value is finite and >= 0.
        for name in m.type:
            self.assertIn(name, m.order, "TYPE without samples: %s" % name)
        for key, v in m.samples.items():
            self.assertTrue(math.isfinite(v) and v >= 0, (key, v))
        # The figures the README promises.
        for name, typ in [
            ("moonwire_connections_accepted_total", "counter"),
            ("moonwire_connections_open", "gauge"),
            ("moonwire_websocket_upgrades_total", "counter"),
            ("moonwire_websocket_upgrades_refused_total", "counter"),
            ("moonwire_websocket_closed_total", "counter"),
            ("moonwire_http_requests_total", "counter"),
            ("moonwire_messages_received_total", "counter"),
            ("moonwire_messages_sent_total", "counter"),
            ("moonwire_received_bytes_total", "counter"),
            ("moonwire_sent_bytes_total", "counter"),
            ("moonwire_publishes_total", "counter"),
            ("moonwire_publish_deliveries_total", "counter"),
            ("moonwire_handler_calls_total", "counter"),
            ("moonwire_handler_errors_total", "counter"),
            ("moonwire_handler_seconds_total", "counter"),
            ("moonwire_handlers_suspended", "gauge"),
            ("moonwire_write_queue_bytes", "gauge"),
            ("moonwire_slow_consumer_closed_total", "counter"),
            ("moonwire_slow_consumer_dropped_total", "counter"),
            ("moonwire_reloads_total", "counter"),
            ("moonwire_lua_memory_bytes", "gauge"),
        ]:
            self.assertEqual(m.type.get(name), typ, name)
        self.assertEqual(sorted(m.by_label("moonwire_websocket_closed_total", "code")),
                         sorted(CLOSE_CODES))
        self.assertEqual(sorted(m.by_label("moonwire_websocket_upgrades_refused_total", "status")),
                         sorted(REFUSAL_STATUSES))
        self.assertEqual(sorted(m.by_label("moonwire_connections_open", "kind")),
                         ["http", "websocket"])
        self.assertEqual(sorted(m.by_label("moonwire_reloads_total", "result")), ["failed", "ok"])
        self.assertGreater(m.get("moonwire_lua_memory_bytes"), 0)

    async def test_fresh_server_counts_nothing_and_scrapes_are_not_traffic(self):
        # Scrapes are the monitoring system's, not the app's: the gauges leave
        # them out (like GET /status), and so must the counters, or an idle
        # server's request, connection and byte counts grow with every scrape.
        self.start_with()
        for _ in range(3):
            m, _ = await self.metrics()
        self.assertEqual(mismatches(counters_of(m), expected_zero()), [])
        self.assertEqual(m.get("moonwire_connections_open", kind="http"), 0)
        self.assertEqual(m.get("moonwire_connections_open", kind="websocket"), 0)

    async def test_metrics_listener_answers_404_for_other_paths(self):
        self.start_with()
        for path in ("/", "/status", "/reload", "/metricsx", "/stats"):
            with self.subTest(path=path):
                status, _, body, _, _ = await self.get(path, port=self.metrics_port)
                self.assertEqual(status, 404, body)
        # A WebSocket upgrade on the metrics listener is refused too.
        c = RawWS(self.metrics_port)
        self.assertEqual(await asyncio.to_thread(c.handshake, "/metrics"), 404)
        c.drop()
        # The app's listener has no /metrics of its own.
        status, _, _, _, _ = await self.get("/metrics")
        self.assertEqual(status, 404)

    async def test_metrics_listener_does_not_reload_the_app(self):
        # --metrics is "GET /metrics only"; POST /reload belongs to --admin,
        # which is usually bound more tightly than a scrape port.
        self.start_with()
        status, _, body, _, _ = await asyncio.to_thread(http_get, self.metrics_port, "/reload",
                                                        "POST", "Content-Length: 0\r\n")
        m, _ = await self.metrics()
        self.assertEqual((status, m.get("moonwire_reloads_total", result="ok")), (404, 0),
                         "POST /reload on the metrics listener answered %d %r" % (status, body))
        self.assertNotIn("reloaded", self.server.log())

    async def test_admin_listener_serves_metrics_too(self):
        self.start_with(metrics=False, admin=True)
        m, _ = await self.metrics(self.admin_port)
        self.assertEqual(m.problems, [])
        self.assertIn("moonwire_connections_accepted_total", m.type)


class PlainHttpCountTests(ObservabilityCase):
    async def test_every_answered_plain_request_counts_and_is_logged(self):
        # "plain HTTP requests answered" and "a line per HTTP request": the
        # server's own answers (404 no route, 405, 426) are answers too.
        self.start_with("--access-log")
        answers = []
        for path in ("/hello", "/nope", "/echo"):
            status, _, _, _, _ = await self.get(path)
            answers.append(status)
        status, _, _, _, _ = await asyncio.to_thread(http_get, self.server.port, "/hello",
                                                     "POST", "Content-Length: 0\r\n")
        answers.append(status)
        self.assertEqual(answers, [200, 404, 426, 405])
        m, _ = await self.metrics()
        problems = []
        if m.get("moonwire_http_requests_total") != 4:
            problems.append("moonwire_http_requests_total = %g, want 4"
                            % m.get("moonwire_http_requests_total"))
        await asyncio.sleep(0.1)
        lines = [ln for ln in self.server.log().split("\n") if " access http " in ln]
        for path, st in (("/hello", 200), ("/nope", 404), ("/echo", 426), ("/hello", 405)):
            if not any("path=%s " % path in ln and "status=%d " % st in ln for ln in lines):
                problems.append("no access line for %s -> %d" % (path, st))
        self.assertEqual(problems, [], "\n".join(lines))


# ---------------------------------------------------------------------------
class ExactSequenceTests(ObservabilityCase):
    async def test_counters_after_a_known_sequence(self):
        await asyncio.to_thread(self._sequence_sync_setup)
        srv = self.server
        port = srv.port
        run = asyncio.to_thread
        clients = []  # every RawWS, for the byte totals
        extra_in = extra_out = 0  # bytes of plain HTTP exchanges
        accepted = 0

        def ws(path):
            nonlocal accepted
            c = RawWS(port)
            accepted += 1
            clients.append(c)
            return c

        # 1. Three echo clients, ten messages each; they end with 1000, 4000
        #    and 4001 (counted as "other").
        echoes = []
        for i in range(3):
            c = ws("/echo")
            self.assertEqual(await run(c.handshake, "/echo"), 101)
            echoes.append(c)
        for i in range(10):
            for j, c in enumerate(echoes):
                msg = "m%d-%d-%s" % (j, i, "z" * (i * 13))
                await run(c.send_text, msg)
                self.assertEqual(await run(c.recv_text), msg)
        self.assertEqual(await run(echoes[0].close, 1000), 1000)
        self.assertEqual(await run(echoes[1].close, 4000), 4000)
        self.assertEqual(await run(echoes[2].close, 4001), 4001)

        # 2. Two refused upgrades: no route (404) and the hook's 401; one
        #    accepted through the hook, which ends with 1001.
        c = ws("/nope")
        self.assertEqual(await run(c.handshake, "/nope"), 404)
        await run(c.read_to_eof)
        c = ws("/auth")
        self.assertEqual(await run(c.handshake, "/auth?deny=1"), 401)
        await run(c.read_to_eof)
        c = ws("/auth")
        self.assertEqual(await run(c.handshake, "/auth?deny=0"), 101)
        await run(c.send_text, "through")
        self.assertEqual(await run(c.recv_text), "through")
        self.assertEqual(await run(c.close, 1001), 1001)

        # 3. A handler error: the server closes with 1011.
        c = ws("/boom")
        self.assertEqual(await run(c.handshake, "/boom"), 101)
        await run(c.send_text, "boom")
        self.assertEqual(await run(c.answer_close), 1011)

        # 4. An abrupt drop after one echo: on_close gets 1006.
        c = ws("/echo")
        self.assertEqual(await run(c.handshake, "/echo"), 101)
        await run(c.send_text, "bye")
        self.assertEqual(await run(c.recv_text), "bye")
        c.drop()
        self.assertIsNotNone(await self.wait_log(r"access ws_close id=\d+ .*code=1006"),
                             "no ws_close with 1006 for the dropped client")

        # 5. Two plain HTTP requests.
        for path, body in (("/hello", b"hello"), ("/hello", b"hello")):
            status, _, got, nin, nout = await self.get(path)
            accepted += 1
            self.assertEqual((status, got), (200, body))
            extra_in += nin
            extra_out += nout

        # 6. Pub/sub: three subscribers, five publishes -> 15 deliveries.
        subs = []
        for _ in range(3):
            c = ws("/sub")
            self.assertEqual(await run(c.handshake, "/sub"), 101)
            subs.append(c)
        pub = ws("/pub")
        self.assertEqual(await run(pub.handshake, "/pub"), 101)
        for i in range(5):
            await run(pub.send_text, "news item-%d" % i)
            self.assertEqual(await run(pub.recv_text), "delivered 3")
        for c in subs:
            self.assertEqual([await run(c.recv_text) for _ in range(5)],
                             ["item-%d" % i for i in range(5)])

        # 7. Slow consumer with "drop": one run sends 20 messages of 1000
        #    bytes while nothing is written; the queue takes 5 (an empty
        #    queue takes one, then up to max_buffered + max_message_size =
        #    5120 bytes of 1002-byte frames), the other 15 are dropped.
        slow = ws("/slow")
        self.assertEqual(await run(slow.handshake, "/slow"), 101)
        await run(slow.send_text, "flood 20 1000")
        flood = await self.wait_log(r"OBS FLOOD sent=(\d+) dropped=(\d+) wsdropped=(\d+)")
        self.assertIsNotNone(flood)
        sent, dropped = int(flood.group(1)), int(flood.group(2))
        self.assertEqual((sent, dropped, int(flood.group(3))), (5, 15, 15))
        for _ in range(sent):
            op, payload = await run(slow.recv_frame)
            self.assertEqual((op, len(payload)), (1, 1000))

        # End every open connection cleanly (1000).
        for c in subs + [pub, slow]:
            self.assertEqual(await run(c.close, 1000), 1000)
        upgrades = 3 + 1 + 1 + 1 + 3 + 1 + 1
        await self.wait_log_count(r"access ws_close ", upgrades)

        expected = expected_zero()
        expected.update({
            "moonwire_connections_accepted_total": accepted,
            "moonwire_websocket_upgrades_total": upgrades,
            'moonwire_websocket_upgrades_refused_total{status="404"}': 1,
            'moonwire_websocket_upgrades_refused_total{status="401"}': 1,
            'moonwire_websocket_closed_total{code="1000"}': 1 + 3 + 1 + 1,
            'moonwire_websocket_closed_total{code="1001"}': 1,
            'moonwire_websocket_closed_total{code="1006"}': 1,
            'moonwire_websocket_closed_total{code="1011"}': 1,
            'moonwire_websocket_closed_total{code="4000"}': 1,
            'moonwire_websocket_closed_total{code="other"}': 1,
            "moonwire_http_requests_total": 2,
            # echo 30, auth 1, boom 1, drop 1, pub 5, slow 1
            "moonwire_messages_received_total": 30 + 1 + 1 + 1 + 5 + 1,
            # echo 30, auth 1, drop 1, pub replies 5, deliveries 15, slow 5
            "moonwire_messages_sent_total": 30 + 1 + 1 + 5 + 15 + sent,
            "moonwire_received_bytes_total": sum(c.sent for c in clients) + extra_in,
            "moonwire_sent_bytes_total": sum(c.received for c in clients) + extra_out,
            "moonwire_publishes_total": 5,
            "moonwire_publish_deliveries_total": 15,
            # on_message: echo 30 + auth 1 + boom 1 + drop 1 + pub 5 + slow 1;
            # upgrade hooks 2; on_open (/sub) 3; HTTP handlers 2
            "moonwire_handler_calls_total": 39 + 2 + 3 + 2,
            "moonwire_handler_errors_total": 1,
            "moonwire_slow_consumer_dropped_total": dropped,
        })

        # moonwire.stats() from GET /stats: the same figures, before its own
        # response (its own connection and request bytes are counted).
        status, headers, body, nin, nout = await self.get("/stats")
        self.assertEqual(status, 200, body)
        self.assertTrue(headers["content-type"].startswith("application/json"))
        st = json.loads(body)
        want_stats = {
            "connections.accepted": accepted + 1,
            "connections.websocket": 0,
            "connections.http": 1,  # the /stats request itself
            "upgrades.accepted": upgrades,
            "upgrades.refused": {"404": 1, "401": 1},
            "closed": {"1000": 6, "1001": 1, "1006": 1, "1011": 1, "4000": 1, "other": 1},
            "http_requests": 2,
            "messages.received": expected["moonwire_messages_received_total"],
            "messages.sent": expected["moonwire_messages_sent_total"],
            "bytes.received": expected["moonwire_received_bytes_total"] + nin,
            "bytes.sent": expected["moonwire_sent_bytes_total"],
            "bytes.queued": 0,
            "pubsub.publishes": 5,
            "pubsub.deliveries": 15,
            "handlers.calls": expected["moonwire_handler_calls_total"],
            "handlers.errors": 1,
            "handlers.suspended": 0,
            "slow_consumers.closed": 0,
            "slow_consumers.dropped": dropped,
            "reloads.ok": 0,
            "reloads.failed": 0,
        }
        got_stats = {}
        for k in want_stats:
            v = st
            for part in k.split("."):
                v = v.get(part) if isinstance(v, dict) else None
            got_stats[k] = v
        self.assertEqual(got_stats, want_stats, json.dumps(st, indent=1))
        self.assertGreater(st["handlers"]["seconds"], 0)
        self.assertGreater(st["lua_memory_bytes"], 0)

        # /metrics after it: the /stats exchange is in, whole.
        expected["moonwire_connections_accepted_total"] += 1
        expected["moonwire_http_requests_total"] += 1
        expected["moonwire_received_bytes_total"] += nin
        expected["moonwire_sent_bytes_total"] += nout
        expected["moonwire_handler_calls_total"] += 1
        m, _ = await self.metrics()
        self.assertEqual(m.problems, [])
        self.assertEqual(mismatches(counters_of(m), expected), [])
        self.assertGreaterEqual(m.get("moonwire_handler_seconds_total"),
                                st["handlers"]["seconds"])
        for kind in ("websocket", "http"):
            self.assertEqual(m.get("moonwire_connections_open", kind=kind), 0)
        self.assertEqual(m.get("moonwire_handlers_suspended"), 0)
        self.assertEqual(m.get("moonwire_write_queue_bytes"), 0)

    def _sequence_sync_setup(self):
        self.start_with("--access-log")

    async def wait_log_count(self, pattern, n, timeout=5.0):
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for ln in self.server.log().split("\n") if rx.search(ln)) >= n:
                return
            await asyncio.sleep(0.02)
        self.fail("fewer than %d lines match %r:\n%s" % (n, pattern, self.server.log_tail(60)))


# ---------------------------------------------------------------------------
class GaugeTests(ObservabilityCase):
    async def test_open_connections_suspended_handlers_and_queued_bytes(self):
        self.start_with()
        port = self.server.port
        a = await self.connect("/echo")
        b = await self.connect("/nap")
        await a.send("x")
        self.assertEqual(await self.recv(a), "x")
        idle = socket.create_connection(("127.0.0.1", port), T)  # HTTP, nothing sent yet
        self.addCleanup(idle.close)
        m = await self.poll_metrics(lambda m: m.get("moonwire_connections_open", kind="http") == 1,
                                    "one open HTTP connection")
        self.assertEqual(m.get("moonwire_connections_open", kind="websocket"), 2)
        self.assertEqual(m.get("moonwire_handlers_suspended"), 0)

        # Suspended: a WebSocket handler and a plain HTTP handler asleep.
        await b.send("sleep 1.5")
        http_nap = asyncio.create_task(self.get("/nap"))
        m = await self.poll_metrics(lambda m: m.get("moonwire_handlers_suspended") == 2,
                                    "two suspended handlers")
        self.assertEqual(m.get("moonwire_connections_open", kind="http"), 2)
        status, _, body, _, _ = await asyncio.wait_for(http_nap, T)
        self.assertEqual((status, body), (200, b"rested"))
        self.assertEqual(await self.recv(b), "woke")
        m = await self.poll_metrics(lambda m: m.get("moonwire_handlers_suspended") == 0,
                                    "no suspended handler")

        # Queued bytes: a reader that never reads, with a small receive buffer.
        stall = socket.socket()
        stall.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stall.settimeout(T)
        stall.connect(("127.0.0.1", port))
        self.addCleanup(stall.close)
        raw = RawWS.__new__(RawWS)
        raw.sock, raw.sent, raw.received, raw.buf = stall, 0, 0, b""
        self.assertEqual(await asyncio.to_thread(raw.handshake, "/stall"), 101)
        total = 64 * 65536
        await asyncio.to_thread(raw.send_text, "fill 64 65536")
        m = await self.poll_metrics(lambda m: m.get("moonwire_write_queue_bytes") > 0,
                                    "bytes in the write queue")
        await asyncio.sleep(0.3)  # let the server write what the socket takes
        m, _ = await self.metrics()
        queued = m.get("moonwire_write_queue_bytes")
        self.assertGreater(queued, 0)
        self.assertLessEqual(queued, total + 64 * 10)
        status, _, body, _, _ = await self.get("/stats")
        st = json.loads(body)
        self.assertEqual(st["bytes"]["queued"], queued, "stats() and /metrics disagree")
        self.assertEqual(st["connections"]["websocket"], 3)
        self.assertGreater(m.get("moonwire_lua_memory_bytes"), 0)
        self.assertGreater(st["lua_memory_bytes"], 0)
        stall.close()
        await a.close()
        await b.close()
        idle.close()
        m = await self.poll_metrics(
            lambda m: (m.get("moonwire_connections_open", kind="websocket") == 0
                       and m.get("moonwire_connections_open", kind="http") == 0
                       and m.get("moonwire_write_queue_bytes") == 0),
            "no open connection and an empty write queue")


# ---------------------------------------------------------------------------
class ReloadCounterTests(ObservabilityCase):
    async def test_reload_counters_after_an_ok_and_a_failed_reload(self):
        d = tempfile.mkdtemp(prefix="mw-obs-")
        self.addCleanup(shutil.rmtree, d, True)
        app = os.path.join(d, "app.lua")
        shutil.copy(APP, app)
        self.start_with(admin=True, app=app)

        async def admin_reload():
            return await asyncio.to_thread(http_get, self.admin_port, "/reload", "POST",
                                           "Content-Length: 0\r\n")

        status, _, body, _, _ = await admin_reload()
        self.assertEqual(status, 200, body)
        with open(app, "a") as f:
            f.write("\nthis is not lua (\n")
        status, _, body, _, _ = await admin_reload()
        self.assertEqual(status, 500, body)
        for port in (self.metrics_port, self.admin_port):
            m, _ = await self.metrics(port)
            self.assertEqual(m.get("moonwire_reloads_total", result="ok"), 1)
            self.assertEqual(m.get("moonwire_reloads_total", result="failed"), 1)
        status, _, body, _, _ = await self.get("/stats")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["reloads"], {"ok": 1, "failed": 1})


# ---------------------------------------------------------------------------
ISO_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO |WARN |ERROR) \S")


def app_line(needle):
    with open(APP) as f:
        for i, line in enumerate(f, 1):
            if needle in line:
                return i
    raise AssertionError(needle)


class LogTests(ObservabilityCase):
    async def _traffic(self):
        status, _, body, _, _ = await self.get("/hello")
        self.assertEqual((status, body), (200, b"hello"))
        ws = await self.connect("/echo")
        await ws.send("log")
        self.assertEqual(await self.recv(ws), "logged")
        await ws.close()
        boom = await self.connect("/boom")
        await boom.send("boom")
        with self.assertRaises(ConnectionClosed):
            await self.recv(boom)
        self.assertEqual(boom.close_code, 1011)
        self.assertIsNotNone(await self.wait_log(r"OBS boom from handler"))
        self.servers.remove(self.server)  # stopped on purpose: not a crash
        self.server.stop()
        return self.server.log().split("\n")

    async def test_json_format_every_line_is_one_object(self):
        self.start_with("--log-format", "json", "--access-log", metrics=False)
        lines = [ln for ln in await self._traffic() if ln != ""]
        objs = []
        for ln in lines:
            try:
                o = json.loads(ln)
            except ValueError as e:
                self.fail("not a JSON line (%s): %r" % (e, ln))
            self.assertIsInstance(o, dict, ln)
            self.assertRegex(o.get("ts", ""), ISO_TS, ln)
            self.assertIn(o.get("level"), ("debug", "info", "warn", "error"), ln)
            self.assertTrue(isinstance(o.get("msg"), str) or isinstance(o.get("event"), str), ln)
            objs.append(o)

        http = [o for o in objs if o.get("event") == "http"]
        self.assertEqual(len(http), 1, lines)
        h = http[0]
        self.assertEqual((h["method"], h["path"], h["status"], h["bytes"]), ("GET", "/hello", 200, 5))
        self.assertIsInstance(h["status"], int)
        self.assertIsInstance(h["duration"], (int, float))
        self.assertGreaterEqual(h["duration"], 0)
        self.assertRegex(h["addr"], r"^127\.0\.0\.1:\d+$")

        opens = [o for o in objs if o.get("event") == "ws_open"]
        closes = [o for o in objs if o.get("event") == "ws_close"]
        self.assertEqual([o["path"] for o in opens], ["/echo", "/boom"])
        self.assertEqual([o["code"] for o in closes], [1000, 1011])
        for o, c in zip(opens, closes):
            self.assertIsInstance(o["id"], int)
            self.assertEqual(c["id"], o["id"])
            self.assertEqual(c["addr"], o["addr"])
            self.assertRegex(o["addr"], r"^127\.0\.0\.1:\d+$")
            self.assertIsInstance(c["code"], int)
            self.assertIsInstance(c["duration"], (int, float))
            self.assertGreaterEqual(c["duration"], 0)

        where = "app_observability.lua:%d:" % app_line('moonwire.log.info("OBS LOG from handler")')
        logged = [o for o in objs if "OBS LOG from handler" in o.get("msg", "")]
        self.assertEqual(len(logged), 1)
        self.assertIn(where, logged[0]["msg"])
        self.assertEqual(logged[0]["level"], "info")

        errors = [o for o in objs if "OBS boom from handler" in o.get("msg", "")]
        self.assertEqual(len(errors), 1, lines)
        e = errors[0]
        self.assertEqual(e["level"], "error")
        self.assertIn("app_observability.lua:%d:" % app_line('error("OBS boom from handler")'),
                      e["msg"])
        self.assertIn("\nstack traceback:\n", e["msg"])  # escaped newlines, one JSON line

    async def test_text_format_lines_and_access_lines(self):
        self.start_with("--access-log", metrics=False)
        lines = [ln for ln in await self._traffic() if ln != ""]
        prev_ok = False
        for ln in lines:
            if TEXT_LINE.match(ln):
                prev_ok = True
                continue
            # A Lua traceback continues the line before it.
            self.assertTrue(prev_ok and (ln.startswith("stack traceback:") or ln.startswith("\t")),
                            "not a log line: %r" % ln)
        access = [ln for ln in lines if " access " in ln]
        for ln in access:
            self.assertRegex(ln, r"^\S+ INFO  access (http|ws_open|ws_close)( [a-z_]+=\S*)+$")
        self.assertEqual(len([ln for ln in access if " access http " in ln]), 1, access)
        self.assertRegex(next(ln for ln in access if " access http " in ln),
                         r" access http addr=127\.0\.0\.1:\d+ method=GET path=/hello status=200 "
                         r"bytes=5 duration=\d+\.\d+$")
        opens = [ln for ln in access if " access ws_open " in ln]
        closes = [ln for ln in access if " access ws_close " in ln]
        self.assertEqual(len(opens), 2)
        self.assertRegex(opens[0], r" access ws_open id=\d+ addr=127\.0\.0\.1:\d+ path=/echo$")
        self.assertRegex(closes[0],
                         r" access ws_close id=\d+ addr=127\.0\.0\.1:\d+ code=1000 duration=[\d.]+$")
        self.assertRegex(closes[1], r" code=1011 ")
        where = "app_observability.lua:%d: OBS LOG from handler" % app_line(
            'moonwire.log.info("OBS LOG from handler")')
        self.assertTrue(any(TEXT_LINE.match(ln) and " INFO  " in ln and where in ln
                            for ln in lines), lines)

    async def test_access_lines_are_off_by_default(self):
        self.start_with("--log-format", "json", metrics=False)
        lines = [ln for ln in await self._traffic() if ln != ""]
        self.assertFalse([ln for ln in lines if '"event"' in ln])
        for ln in lines:
            json.loads(ln)


if __name__ == "__main__":
    unittest.main(verbosity=2)
