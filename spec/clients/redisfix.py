"""A real redis-server for tests, and a small RESP client to talk to it.

RedisServer starts Debian's redis-server on a free loopback port in a
temporary directory (no persistence), and can stop, restart on the same
port, pause (SIGSTOP: a Redis that hangs without closing) and resume it.
Redis.command() sends one command and reads one reply (RESP2), enough for
PUBLISH, PUBSUB NUMSUB, CLIENT LIST and CONFIG SET in tests.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import mwserver

REDIS_BIN = shutil.which("redis-server") or "/usr/bin/redis-server"


class Redis:
    """One connection, one command at a time."""

    def __init__(self, port, password=None, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        if password:
            self.command("AUTH", password)

    def close(self):
        self.sock.close()

    def command(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, str):
                a = a.encode()
            elif isinstance(a, int):
                a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._reply()

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RuntimeError("bad RESP line %r" % line)


class RedisServer:
    def __init__(self, port=None, password=None):
        self.port = port or mwserver.free_port()
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="mw-redis-")
        self.proc = None

    def url(self, password=None):
        pw = password if password is not None else self.password
        auth = (":%s@" % pw) if pw else ""
        return "redis://%s127.0.0.1:%d" % (auth, self.port)

    def start(self, timeout=10.0):
        argv = [REDIS_BIN, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--logfile",
                os.path.join(self.dir, "redis.log")]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                r = Redis(self.port, self.password, timeout=1.0)
                r.command("PING")
                r.close()
                return self
            except (OSError, ConnectionError, RuntimeError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start on port %d:\n%s"
                                       % (self.port, self.log()))
                time.sleep(0.05)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def client(self):
        return Redis(self.port, self.password)

    def numsub(self, channel):
        r = self.client()
        try:
            return r.command("PUBSUB", "NUMSUB", channel)[1]
        finally:
            r.close()

    def publish(self, channel, data):
        r = self.client()
        try:
            return r.command("PUBLISH", channel, data)
        finally:
            r.close()

    def log(self):
        try:
            with open(os.path.join(self.dir, "redis.log")) as f:
                return f.read()[-4000:]
        except OSError:
            return "(no redis log)"

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
