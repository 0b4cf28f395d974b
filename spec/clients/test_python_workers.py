#!/usr/bin/env python3
"""--workers N: threads sharing the port, each with its own loop and Lua state.

Connections spread over the workers (SO_REUSEPORT); a publish on any worker
reaches every subscriber on every worker exactly once, in order per
publisher; ws.id stays unique; a reload reaches every worker; a graceful
shutdown closes every worker's clients with 1001 and exits 0.
Run: /usr/bin/python3 spec/clients/test_python_workers.py
"""
import asyncio
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mwserver  # noqa: E402
from test_python_websockets import MoonwireCase  # noqa: E402

import websockets  # noqa: E402

APP = "spec/clients/apps/app_workers.lua"


class WorkersTest(MoonwireCase):
    app = APP
    flags = ("--workers", "2")

    async def open_many(self, n, srv=None):
        """n connections, then more (8 at a time, at most 400) until both
        workers have some: which worker accepts is the kernel's choice, and
        with one shared listening socket (no SO_REUSEPORT) a busy machine
        can hand a long run of sequential connects to one of them."""
        url = (srv or self).url("/w")

        async def one():
            ws = await websockets.connect(url, compression=None, open_timeout=5)
            return ws, (await asyncio.wait_for(ws.recv(), 5)).split()

        conns, hello = [], []
        while len(conns) < n or (len({h[1] for h in hello}) < 2 and len(conns) < n + 400):
            batch = [await one()] if len(conns) < n else await asyncio.gather(
                *(one() for _ in range(8)))
            for ws, h in batch:
                conns.append(ws)
                hello.append(h)
        return conns, hello

    async def test_connections_spread_and_ids_are_unique(self):
        conns, hello = await self.open_many(100)
        workers = collections.Counter(h[1] for h in hello)
        self.assertEqual({"1", "2"}, set(workers), workers)
        self.assertTrue(all(h[2] == "2" for h in hello), "moonwire.workers is 2 everywhere")
        ids = [h[3] for h in hello]
        self.assertEqual(len(ids), len(set(ids)), "ws.id repeats across workers")
        for c in conns:
            await c.close()

    async def test_publish_reaches_every_worker_once_in_order(self):
        conns, hello = await self.open_many(60)
        by_worker = {}
        for c, h in zip(conns, hello):
            by_worker.setdefault(h[1], c)
        self.assertEqual({"1", "2"}, set(by_worker))
        # one publisher on each worker, 20 messages each
        for w in ("1", "2"):
            await by_worker[w].send("pub 20")
        for c in conns:
            got = collections.defaultdict(list)
            for _ in range(40):
                m = (await asyncio.wait_for(c.recv(), 5)).split()
                got[m[1]].append(int(m[2]))
            self.assertEqual({"1": list(range(1, 21)), "2": list(range(1, 21))}, dict(got))
        for c in conns:
            with self.assertRaises(asyncio.TimeoutError):
                await asyncio.wait_for(c.recv(), 0.05)  # nothing twice
            await c.close()

    async def test_reload_reaches_every_worker(self):
        admin = mwserver.free_port()
        tmp = tempfile.mkdtemp(prefix="mw-workers-")
        self.addCleanup(shutil.rmtree, tmp, True)
        app = os.path.join(tmp, "app.lua")
        src = open(os.path.join(mwserver.repo_root(), APP)).read()
        with open(app, "w") as f:
            f.write(src)
        srv = self.start_server(app, "--workers", "2", "--admin", "127.0.0.1:%d" % admin)
        conns, hello = await self.open_many(40, srv)
        self.assertEqual({"1", "2"}, {h[1] for h in hello})
        with open(app, "w") as f:
            f.write(src.replace('"v1"', '"v2"'))
        body = urllib.request.urlopen(urllib.request.Request(
            "http://127.0.0.1:%d/reload" % admin, method="POST"), timeout=5).read()
        self.assertIn(b'"ok":true', body)
        srv.wait_for_log(r"reloaded .* \(on every worker\)", timeout=5)
        versions = set()
        for c in conns:
            await c.send("version")
            versions.add(await asyncio.wait_for(c.recv(), 5))
        self.assertEqual({"v2 1", "v2 2"}, versions)
        for c in conns:
            await c.close()

    async def test_graceful_shutdown_closes_every_worker(self):
        srv = self.start_server(APP, "--workers", "2", "--shutdown-timeout", "5")
        conns, hello = await self.open_many(30, srv)
        self.assertEqual({"1", "2"}, {h[1] for h in hello})
        srv.proc.send_signal(signal.SIGTERM)
        for c in conns:
            with self.assertRaises(websockets.ConnectionClosed) as cm:
                while True:
                    await asyncio.wait_for(c.recv(), 5)
            self.assertEqual(1001, cm.exception.code)
        code = await asyncio.get_running_loop().run_in_executor(None, lambda: srv.proc.wait(5))
        self.assertEqual(0, code)
        self.servers.remove(srv)  # it was meant to exit


    async def test_metrics_show_every_worker_with_a_label(self):
        port = mwserver.free_port()
        srv = self.start_server(APP, "--workers", "2", "--metrics", "127.0.0.1:%d" % port)
        conns, opened = await self.open_many(40, srv)
        hello = collections.Counter(h[1] for h in opened)
        self.assertEqual({"1", "2"}, set(hello))

        def scrape():
            url = "http://127.0.0.1:%d/metrics" % port
            with urllib.request.urlopen(url, timeout=5) as r:
                text = r.read().decode()
            series = {}
            for line in text.splitlines():
                if line and not line.startswith("#"):
                    name, value = line.rsplit(" ", 1)
                    series[name] = float(value)
            return series

        want = {'moonwire_websocket_upgrades_total{worker="%s"}' % w: float(n)
                for w, n in hello.items()}
        want.update({'moonwire_connections_open{worker="%s",kind="websocket"}' % w: float(n)
                     for w, n in hello.items()})
        deadline = time.monotonic() + 5
        while True:  # worker 2's figures are at most a second old
            series = await asyncio.to_thread(scrape)
            got = {k: series.get(k) for k in want}
            if got == want or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        self.assertEqual(want, got)
        unlabelled = [k for k in series if k.startswith("moonwire_") and "worker=" not in k]
        self.assertEqual([], unlabelled, "every series names its worker")
        for c in conns:
            await c.close()


class WorkersSharedSocketTest(WorkersTest):
    """The same, where the kernel has no SO_REUSEPORT: workers 2..N accept from
    worker 1's listening socket (forced here with MOONWIRE_TEST_NO_REUSEPORT)."""
    env = {"MOONWIRE_TEST_NO_REUSEPORT": "1"}

    def start_server(self, app, *flags, env=None):
        return super().start_server(app, *flags, env=dict(self.env, **(env or {})))

    async def test_says_so_in_the_log(self):
        self.assertIn("SO_REUSEPORT is not available: the 2 workers share one listening socket",
                      self.server.log())


class WorkersFlagTest(unittest.TestCase):
    def test_bad_worker_counts_are_refused(self):
        binary = mwserver.moonwire_bin()
        for bad in ("0", "-1", "x", "999"):
            p = subprocess.run([binary, os.path.join(mwserver.repo_root(), APP), "--workers", bad],
                               capture_output=True, text=True, timeout=10)
            self.assertEqual(2, p.returncode, bad)
            self.assertIn("--workers", p.stderr)

    def test_auto_starts(self):
        srv = mwserver.MoonwireServer(APP, "--workers", "auto")
        srv.start()
        try:
            self.assertRegex(srv.log(), r"listening on")
        finally:
            srv.stop()
            self.assertIsNone(srv.sanitizer_report())


if __name__ == "__main__":
    unittest.main(verbosity=2)
