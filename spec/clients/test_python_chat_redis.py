#!/usr/bin/env python3
"""apps/chat with CHAT_REDIS: rooms shared by every worker and process.

Two moonwire processes (one with two workers) serve apps/chat with its
members and history in a real redis-server and its messages through the
broker: people on different processes see each other join, talk and leave,
and a newcomer anywhere gets the room's history.
Run: /usr/bin/python3 spec/clients/test_python_chat_redis.py
"""
import asyncio
import json
import os
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import redisfix  # noqa: E402
from test_python_websockets import MoonwireCase  # noqa: E402

import websockets  # noqa: E402

APP = "apps/chat/app.lua"


class ChatRedisTest(MoonwireCase):
    app = APP

    def setUp(self):
        self.redis = redisfix.RedisServer().start()
        self.addCleanup(self.redis.cleanup)
        self.env = {"CHAT_REDIS": self.redis.url()}
        super().setUp()

    async def join(self, srv, nick, room="lobby"):
        ws = await websockets.connect(srv.url("/chat/%s?nick=%s" % (room, nick)),
                                      compression=None, open_timeout=5)
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
        self.assertEqual("welcome", welcome["type"])
        return ws, welcome

    async def next_of(self, ws, kind):
        while True:
            m = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if m["type"] == kind:
                return m

    async def wait_followed(self, n):
        for _ in range(100):
            if self.redis.numsub("moonwire:room:lobby") == n:
                return
            await asyncio.sleep(0.05)
        self.fail("room:lobby not followed by %d processes in Redis" % n)

    async def test_rooms_span_processes(self):
        a = self.server
        b = self.start_server(APP, "--workers", "2", env=self.env)
        ann, w1 = await self.join(a, "ann")
        self.assertEqual(["ann"], w1["members"])
        # the broker subscribes asynchronously: a publish before A's SUBSCRIBE
        # reached Redis would not reach ann (at most once, as documented)
        await self.wait_followed(1)
        bob, w2 = await self.join(b, "bob")
        self.assertEqual(["ann", "bob"], w2["members"], "bob sees ann, who is on another process")
        joined = await self.next_of(ann, "join")
        self.assertEqual(("bob", ["ann", "bob"]), (joined["nick"], joined["members"]))

        await self.wait_followed(2)
        await bob.send(json.dumps({"type": "message", "text": "hello from b"}))
        got = await self.next_of(ann, "message")
        self.assertEqual(("bob", "hello from b"), (got["nick"], got["text"]))
        mine = await self.next_of(bob, "message")
        self.assertEqual(got["id"], mine["id"])
        with self.assertRaises(asyncio.TimeoutError):  # once, not once per process
            await asyncio.wait_for(ann.recv(), 0.3)

        # A newcomer on the first process gets the history written on the second.
        carl, w3 = await self.join(a, "carl")
        self.assertEqual(["hello from b"], [m["text"] for m in w3["history"]])
        self.assertEqual(["ann", "bob", "carl"], w3["members"])

        await bob.close()
        left = await self.next_of(ann, "leave")
        self.assertEqual(("bob", ["ann", "carl"]), (left["nick"], left["members"]))
        with urllib.request.urlopen(b.url("/api/rooms").replace("ws://", "http://"),
                                    timeout=5) as r:
            self.assertEqual([{"room": "lobby", "members": 2}], json.loads(r.read()))
        await ann.close()
        await carl.close()

    async def test_a_redis_outage_fails_the_upgrade_clearly(self):
        self.redis.stop()
        with self.assertRaises(websockets.exceptions.InvalidStatusCode) as cm:
            await websockets.connect(self.server.url("/chat/lobby?nick=ann"), open_timeout=5)
        self.assertEqual(500, cm.exception.status_code)
        self.assertIn("chat store: redis connection refused", self.server.log())


if __name__ == "__main__":
    import unittest
    unittest.main(verbosity=2)
