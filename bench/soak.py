#!/usr/bin/python3
"""Soak test for moonwire (not part of ctest).

Starts a moonwire process on spec/apps/hardening.lua and, for --duration
seconds, keeps thousands of WebSocket connections busy: long-lived echo
connections that talk, subscribers on a topic that one client publishes to,
and a stream of short-lived connections (echo, a queue-and-log route, the
pub/sub route, plain HTTP) that end politely, abruptly (RST) or by just going
away. It prints the server's RSS, open descriptors and Lua memory before,
every --interval seconds during, and after the run, and exits non-zero when
the descriptors, RSS or Lua memory do not come back near the baseline, when
on_close did not run exactly once per connection, or when the server died.

    /usr/bin/python3 bench/soak.py                     # 120 s, from the repo root
    /usr/bin/python3 bench/soak.py --duration 60 --conns 3000
    MOONWIRE_BIN=/path/to/moonwire /usr/bin/python3 bench/soak.py

Needs Debian's python3-websockets (run with /usr/bin/python3).
"""

import argparse
import asyncio
import os
import random
import re
import socket
import struct
import sys
import time

sys.dont_write_bytecode = True
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "spec", "clients"))

import websockets  # noqa: E402
import mwserver  # noqa: E402

APP = os.path.join(ROOT, "spec", "apps", "hardening.lua")


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s*(\d+)", f.read()).group(1))


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def settled_fds(pid, timeout=1.0):
    """Lowest descriptor count seen within `timeout`: lets the connection of
    our last /stats request go away first."""
    low = fd_count(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        low = min(low, fd_count(pid))
    return low


def src(i):
    return ("127.0.0.%d" % (2 + i % 8), 0)


class Soak:
    def __init__(self, args, srv):
        self.a = args
        self.srv = srv
        self.pid = srv.proc.pid
        self.stop = False
        self.n = dict(echo=0, pub_sent=0, pub_recv=0, churned=0, resets=0, http=0, errors=0,
                      refused=0)
        self.err_samples = []
        self.long = []
        self.seq = 0

    def error(self, what, e):
        self.n["errors"] += 1
        if len(self.err_samples) < 5:
            self.err_samples.append("%s: %r" % (what, e))

    async def http(self, path):
        r, w = await asyncio.open_connection(self.srv.host, self.srv.port)
        try:
            w.write(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode())
            data = await asyncio.wait_for(r.read(), 10)
        finally:
            w.close()
        self.n["http"] += 1
        body = data.split(b"\r\n\r\n", 1)[1].decode()
        return {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", body)}

    async def connect(self, path, i):
        self.seq += 1
        return await websockets.connect(self.srv.url(path), ping_interval=None, close_timeout=5,
                                        open_timeout=15, max_size=None, local_addr=src(i))

    # -- long-lived connections -------------------------------------------
    async def talker(self, ws, rate):
        """Sends a message and awaits its echo, `rate` times a second."""
        try:
            while not self.stop:
                msg = "m%d" % random.randrange(1 << 30)
                await ws.send(msg)
                got = await asyncio.wait_for(ws.recv(), 15)
                if got != msg:
                    self.error("echo", "%r != %r" % (got, msg))
                self.n["echo"] += 1
                await asyncio.sleep(random.expovariate(rate))
        except Exception as e:  # noqa: BLE001
            if not self.stop:
                self.error("talker", e)

    async def subscriber(self, ws):
        try:
            async for _ in ws:
                self.n["pub_recv"] += 1
        except Exception as e:  # noqa: BLE001
            if not self.stop:
                self.error("subscriber", e)

    async def publisher(self):
        ws = await self.connect("/pub", 0)
        self.long.append(ws)
        asyncio.ensure_future(self.subscriber(ws))
        k = 0
        while not self.stop:
            k += 1
            await ws.send("pub news %d %s" % (k, "x" * random.randrange(1000)))
            self.n["pub_sent"] += 1
            await asyncio.sleep(1.0 / self.a.pub_rate)

    # -- churn ----------------------------------------------------------------
    async def one_churn(self, i):
        kind = random.random()
        try:
            if kind < 0.1:
                await self.http("/stats")
                return
            path = random.choice(["/echo", "/count?sleep=0.01", "/pub", "/small"])
            ws = await self.connect(path, i)
            for _ in range(random.randrange(4)):
                msg = "seq churn %d" % i if path.startswith("/count") else "hello %d" % i
                await ws.send(msg)
                if not path.startswith("/count") and path != "/pub":
                    await asyncio.wait_for(ws.recv(), 15)
            end = random.random()
            if end < 0.4:
                await ws.close()
            elif end < 0.7:
                sock = ws.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                ws.transport.abort()
                self.n["resets"] += 1
            elif end < 0.85 and path == "/small":
                await ws.send("x" * 5000)          # over the route limit: 1009
                await asyncio.wait_for(ws.wait_closed(), 10)
            else:
                ws.transport.close()               # FIN without a close frame
            self.n["churned"] += 1
        except websockets.exceptions.InvalidStatusCode as e:
            if e.status_code == 503:
                self.n["refused"] += 1
            else:
                self.error("churn", e)
        except Exception as e:  # noqa: BLE001
            if not self.stop:
                self.error("churn", e)

    async def churner(self):
        pending = set()
        i = 0
        while not self.stop:
            i += 1
            t = asyncio.ensure_future(self.one_churn(i))
            pending.add(t)
            t.add_done_callback(pending.discard)
            await asyncio.sleep(random.expovariate(self.a.churn_rate))
        if pending:
            await asyncio.wait(pending, timeout=20)

    # -- figures ----------------------------------------------------------------
    async def figures(self, label, gc=False):
        st = await self.http("/gc" if gc else "/stats")
        line = ("%-8s rss=%6d KiB fds=%5d lua=%5d KiB%s open=%d opened=%d closed=%d dup=%d | "
                "echo=%d pub_sent=%d pub_recv=%d churned=%d resets=%d http=%d refused=%d errors=%d"
                % (label, rss_kb(self.pid), fd_count(self.pid), st["lua_kb"], " (gc)" if gc else "     ",
                   st["open"], st["opened"], st["closed"], st["dup"], self.n["echo"], self.n["pub_sent"],
                   self.n["pub_recv"], self.n["churned"], self.n["resets"], self.n["http"],
                   self.n["refused"], self.n["errors"]))
        print(line, flush=True)
        return st

    async def run(self):
        a = self.a
        await asyncio.sleep(0.2)
        fd0, rss0 = fd_count(self.pid), rss_kb(self.pid)
        st0 = await self.figures("before", gc=True)
        fd0 = settled_fds(self.pid)       # once the /gc request's connection has gone
        t0 = time.monotonic()
        # Long-lived connections, opened in batches.
        tasks = []
        for i in range(a.conns):
            path = "/pub" if i < a.subscribers else "/echo"
            try:
                ws = await self.connect(path, i)
            except Exception as e:  # noqa: BLE001
                self.error("open", e)
                continue
            self.long.append(ws)
            if path == "/pub":
                tasks.append(asyncio.ensure_future(self.subscriber(ws)))
            elif i < a.subscribers + a.talkers:
                tasks.append(asyncio.ensure_future(self.talker(ws, a.msg_rate / a.talkers)))
        print("opened %d long-lived connections in %.1f s" % (len(self.long), time.monotonic() - t0),
              flush=True)
        tasks.append(asyncio.ensure_future(self.publisher()))
        churn = asyncio.ensure_future(self.churner())
        next_report = time.monotonic() + a.interval
        end = t0 + a.duration
        while time.monotonic() < end:
            await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
            if not self.srv.alive():
                print("moonwire died (exit %r)" % self.srv.proc.poll())
                return 1
            if time.monotonic() >= next_report:
                next_report += a.interval
                await self.figures("%5.0fs" % (time.monotonic() - t0))
        self.stop = True
        await churn
        # Half of the long-lived ones close politely, half reset.
        for k, ws in enumerate(self.long):
            if k % 2:
                sock = ws.transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                ws.transport.abort()
        await asyncio.gather(*(asyncio.wait_for(ws.close(), 10) for k, ws in enumerate(self.long)
                               if k % 2 == 0), return_exceptions=True)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Wait for the server to let go of everything.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            st = await self.http("/stats")
            if st["open"] == 0 and fd_count(self.pid) <= fd0 + 1:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        st = await self.figures("after", gc=True)
        fd1, rss1 = settled_fds(self.pid), rss_kb(self.pid)
        problems = []
        if fd1 > fd0:
            problems.append("descriptors: %d after, %d before" % (fd1, fd0))
        if rss1 - rss0 > a.rss_slack_mib * 1024:
            problems.append("RSS: %d KiB after, %d KiB before (slack %d MiB)" % (rss1, rss0, a.rss_slack_mib))
        if st["lua_kb"] - st0["lua_kb"] > a.lua_slack_kib:
            problems.append("Lua memory: %d KiB after GC, %d KiB before" % (st["lua_kb"], st0["lua_kb"]))
        if st["open"] != 0 or st["opened"] != st["closed"]:
            problems.append("on_close: opened %d, closed %d, still open %d"
                            % (st["opened"], st["closed"], st["open"]))
        if st["dup"]:
            problems.append("on_close ran %d extra times" % st["dup"])
        if self.n["echo"] == 0 or self.n["pub_recv"] == 0 or self.n["churned"] == 0:
            problems.append("no traffic: %r" % self.n)
        err_rate = self.n["errors"] / max(1, self.n["churned"] + self.n["echo"])
        if err_rate > 0.01:
            problems.append("client errors: %d (%s)" % (self.n["errors"], "; ".join(self.err_samples)))
        print("summary: fds %d -> %d, RSS %d -> %d KiB, Lua %d -> %d KiB, %d connections opened"
              % (fd0, fd1, rss0, rss1, st0["lua_kb"], st["lua_kb"], st["opened"] - st0["opened"]))
        if self.err_samples:
            print("client errors (samples): " + "; ".join(self.err_samples))
        for line in self.srv.log().splitlines():
            if " ERROR " in line or "Sanitizer" in line or "runtime error" in line:
                problems.append("server log: " + line)
                break
        if problems:
            print("FAIL:\n  " + "\n  ".join(problems))
            return 1
        print("OK")
        return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=120.0, help="seconds of load (default 120)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between reports (default 10)")
    p.add_argument("--conns", type=int, default=3000, help="long-lived connections (default 3000)")
    p.add_argument("--subscribers", type=int, default=300, help="of which subscribed to the topic (300)")
    p.add_argument("--talkers", type=int, default=300, help="of which send messages (300)")
    p.add_argument("--msg-rate", type=float, default=1500.0, help="echo messages per second (1500)")
    p.add_argument("--pub-rate", type=float, default=10.0, help="publishes per second (10)")
    p.add_argument("--churn-rate", type=float, default=150.0, help="short connections per second (150)")
    p.add_argument("--rss-slack-mib", type=int, default=48, help="allowed RSS growth (48 MiB)")
    p.add_argument("--lua-slack-kib", type=int, default=2048, help="allowed Lua growth (2048 KiB)")
    p.add_argument("--app", default=APP)
    a = p.parse_args()
    os.environ.setdefault("MOONWIRE_BIN", os.path.join(ROOT, "build", "moonwire"))
    os.environ.setdefault("MOONWIRE_ROOT", ROOT)
    srv = mwserver.MoonwireServer(a.app, "--max-connections", str(a.conns + 2000))
    srv.start()
    print("moonwire pid %d on %s:%d (%s)" % (srv.proc.pid, srv.host, srv.port, srv.argv[0]), flush=True)
    try:
        code = asyncio.run(Soak(a, srv).run())
    finally:
        srv.stop()
    sys.exit(code)


if __name__ == "__main__":
    main()
