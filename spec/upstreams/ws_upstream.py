"""A WebSocket upstream for the client specs: python3-websockets on
127.0.0.1 (port from argv, 0 = any); prints "listening on PORT". It echoes
every message, except:
  "fragments"  answered with one text message sent in three fragments
  "ping me"    the server pings, then answers "pinged"
  "close me"   the server closes with 4000 "bye"
"""
import asyncio
import sys

import websockets


async def handler(ws, path=None):
    async for msg in ws:
        if msg == "fragments":
            await ws.send(["ab", "cd", "ef"])
        elif msg == "ping me":
            pong = await ws.ping(b"hi")
            await asyncio.wait_for(pong, 5)
            await ws.send("pinged")
        elif msg == "close me":
            await ws.close(4000, "bye")
        else:
            await ws.send(msg)


async def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    async with websockets.serve(handler, "127.0.0.1", port) as srv:
        print("listening on %d" % srv.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
