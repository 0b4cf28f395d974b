"""An HTTP/1.1 upstream for the client specs (spec/clients_spec.lua).

Python's http.server on 127.0.0.1 (port from argv, 0 = any); prints
"listening on PORT" once it accepts. Routes:
  /hello            200 "hello" with Content-Length, keep-alive
  /slow?s=N         sleeps N seconds, then 200 "slow N"
  /chunked          Transfer-Encoding: chunked, "a" "bb" "ccc"
  /close            no length: the body ends when the connection closes
  /big?n=N          N bytes of "x"
  /longline         a body of 100000 "x" with no newline
  /status?code=N    status N, body "status N"
  /echo (POST)      the request body back, x-method and x-length headers
  /drop-second      200 "first" on a connection's first request; its second
                    request (GET or POST) gets no answer, the connection closes
"""
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, headers=()):
        body = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    # One handler object serves one connection: it counts its requests.
    def second_dropped(self):
        self.seen = getattr(self, "seen", 0) + 1
        if urlsplit(self.path).path != "/drop-second":
            return False
        if self.seen >= 2:
            self.close_connection = True
            return True
        self.reply(200, "first")
        return True

    def do_GET(self):
        if self.second_dropped():
            return
        u = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        if u.path == "/hello":
            self.reply(200, "hello", [("X-Test", "a"), ("X-Test", "b")])
        elif u.path == "/slow":
            s = float(q.get("s", "2"))
            time.sleep(s)
            self.reply(200, "slow %g" % s)
        elif u.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"a", b"bb", b"ccc"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\nX-Trailer: t\r\n\r\n")
        elif u.path == "/close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until the close")
            self.close_connection = True
        elif u.path == "/big":
            self.reply(200, b"x" * int(q.get("n", "1000")))
        elif u.path == "/longline":
            self.reply(200, b"x" * 100000)
        elif u.path == "/status":
            code = int(q.get("code", "200"))
            self.reply(code, "status %d" % code)
        else:
            self.reply(404, "not found")

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        if self.second_dropped():
            return
        self.reply(200, body, [("X-Method", "POST"), ("X-Length", str(n))])


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    srv.daemon_threads = True
    print("listening on %d" % srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
