#!/usr/bin/env python3
"""--broker redis://HOST:PORT: topics shared by moonwire processes through a
real redis-server started here.

Two processes (one of them with two workers) share a topic: a publish on
either reaches every subscriber of both exactly once and in order; Redis
restarted (or hung) mid-test, and delivery resumes; local delivery goes on
during the outage; subscriptions in Redis follow the subscribers; the
channel prefix isolates apps; passwords; the pending-bytes bound; and
publishes from a backend with a plain PUBLISH.
Run: /usr/bin/python3 spec/clients/test_python_broker.py
"""
import asyncio
import collections
import os
import subprocess
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mwserver  # noqa: E402
import redisfix  # noqa: E402
from test_python_websockets import MoonwireCase  # noqa: E402

import websockets  # noqa: E402

APP = "spec/clients/apps/app_broker.lua"


def broker_stats(srv):
    with urllib.request.urlopen("http://127.0.0.1:%d/broker" % srv.port, timeout=5) as r:
        body = r.read().decode()
    return dict(kv.split("=", 1) for kv in body.split())


async def wait_until(what, cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        got = await asyncio.to_thread(cond)
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        await asyncio.sleep(0.05)


class BrokerCase(MoonwireCase):
    app = APP
    redis_password = None

    def setUp(self):
        self.redis = redisfix.RedisServer(password=self.redis_password).start()
        self.addCleanup(self.redis.cleanup)
        # MoonwireCase starts self.server with these flags.
        self.flags = ("--broker", self.redis.url())
        super().setUp()

    def tearDown(self):
        failed = self._problem_count() > self._problems_before
        if failed:
            sys.stderr.write("\n---- redis log ----\n%s\n----\n" % self.redis.log())
        super().tearDown()

    async def connect(self, srv, topic="room"):
        ws = await websockets.connect(srv.url("/t/" + topic), compression=None, open_timeout=5)
        hello = await asyncio.wait_for(ws.recv(), 5)
        return ws, hello.split()[1]

    async def wait_followed(self, channel, n):
        await wait_until("%d subscriptions to %s in Redis" % (n, channel),
                         lambda: self.redis.numsub(channel) == n)

    async def wait_connected(self, *servers):
        for srv in servers:
            await wait_until("the broker of :%d to connect" % srv.port,
                             lambda: broker_stats(srv)["connected"] == "true")

    async def recv_all(self, ws, n, timeout=5):
        return [await asyncio.wait_for(ws.recv(), timeout) for _ in range(n)]

    async def assert_quiet(self, *conns):
        for c in conns:
            with self.assertRaises(asyncio.TimeoutError):
                await asyncio.wait_for(c.recv(), 0.2)


class BrokerTest(BrokerCase):
    async def test_publish_reaches_every_subscriber_of_both_processes_once_in_order(self):
        a = self.server
        b = self.start_server(APP, "--workers", "2", "--broker", self.redis.url())
        on_a = [await self.connect(a) for _ in range(3)]
        on_b = [await self.connect(b) for _ in range(40)]
        self.assertEqual({"1", "2"}, {w for _, w in on_b}, "B's clients use both workers")
        await self.wait_followed("moonwire:room", 2)  # one per process, not per worker
        pa, pb = on_a[0][0], on_b[0][0]
        await pa.send("pub room 50 A")
        await pb.send("pub room 50 B")
        for ws, _ in on_a + on_b:
            got = collections.defaultdict(list)
            for m in await self.recv_all(ws, 100 + (ws is pa) + (ws is pb)):
                if m == "done":
                    continue
                tag, i = m.split()
                got[tag].append(int(i))
            self.assertEqual({"A": list(range(1, 51)), "B": list(range(1, 51))}, dict(got))
        await self.assert_quiet(*[ws for ws, _ in on_a + on_b])  # nothing twice
        sa, sb = broker_stats(a), broker_stats(b)
        self.assertEqual(("50", "50"), (sa["published"], sa["received"]))
        # B received A's 50 once for the process, then its hub gave it to both workers.
        self.assertEqual(("50", "50"), (sb["published"], sb["received"]))
        for ws, _ in on_a + on_b:
            await ws.close()

    async def test_binary_crosses_intact_and_a_backend_can_publish(self):
        b = self.start_server(APP, "--broker", self.redis.url())
        wa, _ = await self.connect(self.server)
        wb, _ = await self.connect(b)
        await self.wait_followed("moonwire:room", 2)
        await wa.send("bin room")
        self.assertEqual(bytes(range(256)), await asyncio.wait_for(wb.recv(), 5))
        # A plain PUBLISH from another program: text when UTF-8, else binary.
        self.assertEqual(2, self.redis.publish("moonwire:room", "h\u00e9llo"))
        self.assertEqual(2, self.redis.publish("moonwire:room", b"\xff\xfe"))
        for ws in (wb,):
            self.assertEqual("h\u00e9llo", await asyncio.wait_for(ws.recv(), 5))
            self.assertEqual(b"\xff\xfe", await asyncio.wait_for(ws.recv(), 5))
        rest = await self.recv_all(wa, 4)
        self.assertEqual([bytes(range(256)), "done", "h\u00e9llo", b"\xff\xfe"], rest)
        await wa.close()
        await wb.close()

    async def test_redis_subscriptions_follow_local_subscribers(self):
        ws1, _ = await self.connect(self.server, "t1")
        ws2, _ = await self.connect(self.server, "t1")
        await self.wait_followed("moonwire:t1", 1)
        await ws1.close()
        await asyncio.sleep(0.2)
        self.assertEqual(1, self.redis.numsub("moonwire:t1"), "one subscriber is left")
        await ws2.send("unsub t1")
        self.assertEqual("done", await asyncio.wait_for(ws2.recv(), 5))
        await self.wait_followed("moonwire:t1", 0)
        self.assertEqual("0", broker_stats(self.server)["subscriptions"])
        # Followed again at once, and delivered.
        ws3, _ = await self.connect(self.server, "t1")
        await self.wait_followed("moonwire:t1", 1)
        self.redis.publish("moonwire:t1", "again")
        self.assertEqual("again", await asyncio.wait_for(ws3.recv(), 5))
        # Subscribe/unsubscribe churn ends with Redis following exactly the live topics.
        conns = [await self.connect(self.server, "churn%d" % (i % 5)) for i in range(30)]
        for ws, _ in conns[::2]:
            await ws.close()
        await asyncio.sleep(0.3)
        for i in range(5):
            await self.wait_followed("moonwire:churn%d" % i, 1)
        for ws, _ in conns[1::2]:
            await ws.close()
        for i in range(5):
            await self.wait_followed("moonwire:churn%d" % i, 0)
        await ws2.close()
        await ws3.close()

    async def test_redis_restart_local_delivery_goes_on_and_remote_resumes(self):
        a = self.server
        b = self.start_server(APP, "--broker", self.redis.url())
        wa, _ = await self.connect(a)
        wb, _ = await self.connect(b)
        await self.wait_followed("moonwire:room", 2)
        self.redis.stop()
        await wait_until("A to see the loss", lambda: broker_stats(a)["connected"] == "false")
        await wa.send("pub room 3 during")
        self.assertEqual(["during 1", "during 2", "during 3", "done"], await self.recv_all(wa, 4))
        await self.assert_quiet(wb)  # at most once: not replayed later either
        self.assertEqual("3", broker_stats(a)["dropped_disconnected"])
        self.redis.start()
        await self.wait_connected(a, b)
        await self.wait_followed("moonwire:room", 2)
        await wa.send("pub room 2 after")
        self.assertEqual(["after 1", "after 2"], await self.recv_all(wb, 2))
        self.assertEqual(["after 1", "after 2", "done"], await self.recv_all(wa, 3))
        await self.assert_quiet(wa, wb)
        self.assertIn("redis broker: lost 127.0.0.1:%d" % self.redis.port, a.log())
        self.assertIn("redis broker: reconnected to", a.log())
        self.assertEqual("1", broker_stats(a)["reconnects"])
        await wa.close()
        await wb.close()

    async def test_a_hung_redis_is_found_by_ping_and_left(self):
        a = self.start_server(APP, "--broker", self.redis.url(), "--broker-timeout", "0.5")
        await self.wait_connected(a)
        self.redis.pause()
        try:
            await wait_until("the PING timeout", lambda: broker_stats(a)["connected"] == "false")
        finally:
            self.redis.resume()
        self.assertIn("no answer to PING within broker_timeout", a.log())
        await self.wait_connected(a)
        ws, _ = await self.connect(a, "hung")
        await self.wait_followed("moonwire:hung", 1)
        self.redis.publish("moonwire:hung", "alive")
        self.assertEqual("alive", await asyncio.wait_for(ws.recv(), 5))
        await ws.close()

    async def test_max_pending_bounds_what_waits_for_redis(self):
        a = self.start_server(APP, "--broker", self.redis.url(), "--broker-max-pending", "2048",
                              "--broker-timeout", "30")
        await self.wait_connected(a)
        ws, _ = await self.connect(a, "big")
        self.redis.pause()  # connected, but nothing is acknowledged
        try:
            await ws.send("pub big 200 " + "x" * 200)
            got = await self.recv_all(ws, 201)
            self.assertEqual("done", got[-1])  # local subscribers get every one
            stats = broker_stats(a)
            self.assertGreater(int(stats["dropped_max_pending"]), 150, stats)
            self.assertGreater(int(stats["published"]), 0, stats)
            self.assertIn("broker_max_pending", a.log())
        finally:
            self.redis.resume()
        await ws.close()

    async def test_the_broker_can_be_an_app_option(self):
        a = self.start_server(APP, env={"MW_TEST_BROKER": self.redis.url()})
        ws, _ = await self.connect(a, "opt")
        await self.wait_followed("moonwire:opt", 1)
        self.redis.publish("moonwire:opt", "via option")
        self.assertEqual("via option", await asyncio.wait_for(ws.recv(), 5))
        await ws.close()

    async def test_prefixes_keep_apps_apart(self):
        a = self.start_server(APP, "--broker", self.redis.url(), "--broker-prefix", "app1:")
        b = self.start_server(APP, "--broker", self.redis.url(), "--broker-prefix", "app2:")
        wa, _ = await self.connect(a)
        wb, _ = await self.connect(b)
        await self.wait_followed("app1:room", 1)
        await self.wait_followed("app2:room", 1)
        await wa.send("pub room 1 one")
        self.assertEqual(["one 1", "done"], await self.recv_all(wa, 2))
        await self.assert_quiet(wb)
        await wa.close()
        await wb.close()


class BrokerDownAtStartTest(MoonwireCase):
    app = APP

    def setUp(self):
        self.redis = redisfix.RedisServer()
        self.addCleanup(self.redis.cleanup)
        self.flags = ("--broker", self.redis.url())
        super().setUp()

    async def test_serves_without_redis_then_connects_when_it_comes(self):
        ws = await websockets.connect(self.url("/t/room"), compression=None, open_timeout=5)
        self.assertEqual("hello 1", await asyncio.wait_for(ws.recv(), 5))
        await ws.send("pub room 1 local")
        self.assertEqual("local 1", await asyncio.wait_for(ws.recv(), 5))
        self.assertIn("redis broker: cannot reach 127.0.0.1:%d" % self.redis.port,
                      self.server.log())
        self.redis.start()
        await wait_until("the broker to connect",
                         lambda: broker_stats(self.server)["connected"] == "true")
        await wait_until("the subscription", lambda: self.redis.numsub("moonwire:room") == 1)
        self.redis.publish("moonwire:room", "from redis")
        self.assertEqual("done", await asyncio.wait_for(ws.recv(), 5))
        self.assertEqual("from redis", await asyncio.wait_for(ws.recv(), 5))
        await ws.close()


class BrokerPasswordTest(BrokerCase):
    redis_password = "s3cret"

    async def test_password_in_the_url(self):
        ws, _ = await self.connect(self.server)
        await self.wait_connected(self.server)
        await self.wait_followed("moonwire:room", 1)
        self.redis.publish("moonwire:room", "authorized")
        self.assertEqual("authorized", await asyncio.wait_for(ws.recv(), 5))
        await ws.close()

    async def test_missing_or_wrong_password_is_named(self):
        none = self.start_server(APP, "--broker", self.redis.url(password=""))
        wrong = self.start_server(APP, "--broker", self.redis.url(password="nope"))
        await wait_until("the NOAUTH line", lambda: "NOAUTH" in none.log())
        await wait_until("the AUTH line", lambda: "AUTH failed" in wrong.log())
        self.assertIn("give the password in the broker URL", none.log())
        self.assertIn("check the password in the broker URL", wrong.log())
        self.assertEqual("false", broker_stats(none)["connected"])
        self.assertEqual("false", broker_stats(wrong)["connected"])


class BrokerConfigTest(unittest.TestCase):
    def run_bad(self, *args, env=None):
        p = subprocess.run([mwserver.moonwire_bin(), os.path.join(mwserver.repo_root(), APP),
                            "--listen", "127.0.0.1:0"] + list(args),
                           capture_output=True, text=True, timeout=10,
                           env=dict(os.environ, **(env or {})))
        return p.returncode, p.stderr

    def test_bad_urls_exit_2_and_say_what_to_write(self):
        for url, words in [("http://127.0.0.1:6379", "must start with redis://"),
                           ("redis://127.0.0.1:99999", "port must be a number"),
                           ("redis://", "has no host"),
                           ("redis://h/x", "database number")]:
            rc, err = self.run_bad("--broker", url)
            self.assertEqual(2, rc, err)
            self.assertIn(words, err)
        rc, err = self.run_bad("--broker", "redis://127.0.0.1:1", "--broker-timeout", "0")
        self.assertEqual(2, rc, err)
        self.assertIn("broker_timeout must be positive", err)

    def test_a_bad_broker_app_option_names_file_and_line(self):
        rc, err = self.run_bad(env={"MW_TEST_BROKER": "localhost:6379"})
        self.assertNotEqual(0, rc)
        self.assertIn("app_broker.lua:", err)
        self.assertIn("'broker' must be \"redis://HOST:PORT\"", err)


if __name__ == "__main__":
    unittest.main(verbosity=2)
