"""Start and stop a real moonwire server for the independent-client tests.

The binary comes from MOONWIRE_BIN (default /work/main/build/moonwire), the repo
root from MOONWIRE_ROOT (default: the current directory). The server is started
with ``--listen 127.0.0.1:0`` and the port is parsed from the
``listening on HOST:PORT`` line it writes to stderr.

stderr is drained by a thread for the whole life of the process (so a chatty
server never blocks on a full pipe) and kept in memory so tests can assert on
log lines and print the log when they fail.
"""

import atexit
import ctypes
import os
import re
import signal
import socket
import subprocess
import threading
import time

LISTEN_RE = re.compile(r"listening on ([\d.]+):(\d+)")
# Reports from -DMW_SANITIZE=ON builds (ASan/LSan/UBSan); any of these is a bug.
SANITIZER_RE = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error: |SUMMARY: \w+Sanitizer")

DEFAULT_BIN = "/work/main/build/moonwire"
START_TIMEOUT = 10.0
TERM_GRACE = 3.0

_live = set()
_live_lock = threading.Lock()


def repo_root():
    return os.environ.get("MOONWIRE_ROOT") or os.getcwd()


def moonwire_bin():
    return os.environ.get("MOONWIRE_BIN") or DEFAULT_BIN


def clients_dir():
    return os.path.dirname(os.path.abspath(__file__))


def _die_with_parent():
    # Runs in the child between fork and exec: if the test runner dies hard
    # (SIGKILL, ctest timeout) the kernel kills the server too.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


def free_port():
    """A loopback port nobody listens on now (for --admin, --metrics, Redis)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class ServerStartError(RuntimeError):
    pass


class MoonwireServer:
    """One moonwire process. Use start()/stop(), or as a context manager."""

    def __init__(self, app, *flags, env=None, start_timeout=START_TIMEOUT):
        root = repo_root()
        self.app = app if os.path.isabs(app) else os.path.join(root, app)
        self.flags = [str(f) for f in flags]
        self.env = dict(os.environ)
        if env:
            self.env.update(env)
        self.start_timeout = start_timeout
        self.proc = None
        self.needed_sigkill = False
        self.host = None
        self.port = None
        self._lines = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._eof = False
        self._reader = None

    # -- lifecycle ---------------------------------------------------------
    def start(self):
        binary = moonwire_bin()
        if not os.path.exists(binary):
            raise ServerStartError("moonwire binary not found: %s (set MOONWIRE_BIN)" % binary)
        # Stop at once on SIGTERM unless a test asks for a graceful shutdown
        # (its own --shutdown-timeout comes later and wins).
        argv = [binary, self.app, "--listen", "127.0.0.1:0", "--shutdown-timeout", "0"] + self.flags
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=repo_root(),
            env=self.env,
            preexec_fn=_die_with_parent,
        )
        with _live_lock:
            _live.add(self)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

        deadline = time.monotonic() + self.start_timeout
        with self._cond:
            while True:
                m = self._find_listen()
                if m:
                    self.host, self.port = m.group(1), int(m.group(2))
                    return self
                if self._eof:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.1))
        # Failed: collect what we know, kill, and report.
        self.stop()
        raise ServerStartError(
            "moonwire did not report 'listening on HOST:PORT' within %.1fs "
            "(exit code %r)\ncommand: %s\nstderr:\n%s"
            % (self.start_timeout, self.proc.returncode, " ".join(argv), self.log())
        )

    def _find_listen(self):
        for line in self._lines:
            m = LISTEN_RE.search(line)
            if m:
                return m
        return None

    def _read_stderr(self):
        stream = self.proc.stderr
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                with self._cond:
                    self._lines.append(line)
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM, then SIGKILL after a grace period. Returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(TERM_GRACE)
            except subprocess.TimeoutExpired:
                self.needed_sigkill = True
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                pass
        if self._reader is not None:
            self._reader.join(2.0)
        try:
            proc.stderr.close()
        except Exception:
            pass
        with _live_lock:
            _live.discard(self)
        return proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # -- helpers -----------------------------------------------------------
    def url(self, path="/"):
        return "ws://%s:%d%s" % (self.host, self.port, path)

    def log(self):
        with self._lock:
            return "\n".join(self._lines)

    def sanitizer_report(self):
        """The stderr text from the first sanitizer report, or None."""
        with self._lock:
            for i, line in enumerate(self._lines):
                if SANITIZER_RE.search(line):
                    return "\n".join(self._lines[max(0, i - 2):i + 60])
        return None

    def log_tail(self, n=60):
        with self._lock:
            return "\n".join(self._lines[-n:])

    def wait_for_log(self, pattern, timeout=5.0):
        """Block until a stderr line matches pattern; returns the match or None."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._lines:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    # one last look after EOF
                    for line in self._lines:
                        m = rx.search(line)
                        if m:
                            return m
                    return None
                self._cond.wait(min(left, 0.1))


def _kill_all():
    with _live_lock:
        servers = list(_live)
    for s in servers:
        try:
            s.stop()
        except Exception:
            pass


atexit.register(_kill_all)
