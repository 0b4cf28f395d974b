-- Plain HTTP routes (keep-alive, pipelining, HEAD, 404/405/426/413/501/500/204,
-- Connection: close, HTTP/1.0) and static files (types, lengths, index.html, ETag and
-- If-None-Match, If-Modified-Since, traversal and symlinks, bad escapes, a 3 MB file)
-- over raw luasocket. Runs spec/apps/http.lua on a temp directory of files.

local server = require "spec.support.server"
local ws = require "spec.support.ws"
local http = require "spec.support.http"
local socket = require "socket"
local stat = require "posix.sys.stat"
local unistd = require "posix.unistd"
local utime = require "posix.utime"

local APP = "spec/apps/http.lua"
local now = socket.gettime

local function write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

-- A temp tree: <base>/www (served) and <base>/secret.txt (outside it).
local function make_tree()
  local base = os.tmpname()
  os.remove(base)
  assert(stat.mkdir(base, 448))
  local www = base .. "/www"
  assert(stat.mkdir(www, 493))
  assert(stat.mkdir(www .. "/sub", 493))
  local files = {
    ["index.html"] = "<h1>home</h1>\n",
    ["style.css"] = "body { color: red }\n",
    ["app.js"] = "console.log(1)\n",
    ["data.json"] = '{"a":1}\n',
    ["pic.svg"] = "<svg xmlns='http://www.w3.org/2000/svg'/>\n",
    ["pic.png"] = "\137PNG\r\n\26\n\0\0\0\rIHDR",
    ["blob.xyz"] = "\0\1\2\3",
    ["sub/index.html"] = "<p>sub</p>\n",
    ["sub/a b.txt"] = "spaced\n",
    ["big.bin"] = ws.random_bytes(3 * 1024 * 1024, 42),
  }
  for name, data in pairs(files) do write(www .. "/" .. name, data) end
  write(base .. "/secret.txt", "TOP SECRET\n")
  assert(unistd.link("../secret.txt", www .. "/out.txt", true))
  assert(unistd.link(base, www .. "/outdir", true))
  assert(unistd.link("style.css", www .. "/in.css", true))
  -- A fixed, old mtime for style.css (If-Modified-Since checks).
  assert(utime.utime(www .. "/style.css", 1500000000, 1500000000))
  return base, www, files
end

local function remove_tree(base)
  for _, rel in ipairs({ "www/out.txt", "www/outdir", "www/in.css", "www/index.html", "www/style.css",
                         "www/app.js", "www/data.json", "www/pic.svg", "www/pic.png", "www/blob.xyz",
                         "www/sub/index.html", "www/sub/a b.txt", "www/big.bin", "www/sub", "www",
                         "secret.txt", "" }) do
    os.remove(base .. "/" .. rel)
  end
end

describe("app http", function()
  local srv, base, files
  setup(function()
    local www
    base, www, files = make_tree()
    srv = server.start(APP, { env = { MW_STATIC_DIR = www } })
  end)
  before_each(function()
    assert.is_true(srv:alive(), "server died; log:\n" .. srv:log())
  end)
  teardown(function()
    server.stop_all()
    if base then remove_tree(base) end
  end)

  describe("routes", function()
    it("GET with query and route params", function()
      local res = http.get(srv, "/hello?name=bob%20x&z=1")
      assert.are.equal(200, res.status)
      assert.are.equal("hello bob x qs=name=bob%20x&z=1", res.body)
      assert.are.equal("text/plain; charset=utf-8", res.headers["content-type"])
      assert.are.equal(#res.body, tonumber(res.headers["content-length"]))
      res = http.get(srv, "/users/42/posts/a%20b")
      assert.are.equal("user=42 post=a b", res.body)
    end)

    it("gives the handler method, path, headers and peer", function()
      local c = http.connect(srv)
      local res = http.exchange(c, "GET", "/info?x=1", { headers = { "X-Tag: t-9" } })
      assert.are.equal("method=GET;path=/info;addr=127.0.0.1;port=" .. c:local_port() .. ";tag=t-9;body=0",
        res.body)
      c:close_tcp()
    end)

    it("custom status and headers; res:send(status, body)", function()
      local res = http.get(srv, "/custom")
      assert.are.equal(201, res.status)
      assert.are.equal("yes", res.headers["x-custom"])
      assert.are.equal("application/json", res.headers["content-type"])
      assert.are.equal('{"made":true}', res.body)
      res = http.get(srv, "/status_arg")
      assert.are.equal(418, res.status)
      assert.are.equal("teapot", res.body)
    end)

    it("POST bodies arrive whole (also binary); PUT through app:route", function()
      local body = ws.random_bytes(60000, 7)
      local res = http.fetch(srv, "POST", "/echo",
        { body = body, headers = { "Content-Type: application/x-test" } })
      assert.are.equal(200, res.status)
      assert.are.equal("60000", res.headers["x-body-length"])
      assert.are.equal("application/x-test", res.headers["content-type"])
      assert.is_true(res.body == body, "echoed body differs")
      res = http.fetch(srv, "PUT", "/putonly", { body = "payload" })
      assert.are.equal("put payload", res.body)
    end)

    it("413 for a body over max_body_size; 501 for a coding other than chunked", function()
      -- each on a fresh connection: the answer, which closes it
      local function refused(raw, status, reason)
        local c = http.connect(srv)
        assert(c:send_raw(raw))
        local res = assert(http.read(c, "POST"))
        c:close_tcp()
        assert.are.equal(status, res.status, res.body)
        if reason then assert.truthy(res.body:find(reason, 1, true), res.body) end
      end
      local chunked = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      refused("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n", 413)
      refused("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        .. "3\r\nabc\r\n0\r\n\r\n", 501)
      -- a chunk announcing more than max_body_size: 413 before its data
      refused(chunked .. "8000\r\n" .. ("x"):rep(0x8000) .. "\r\n8001\r\n", 413) -- 65537 > 65536
      -- a malformed chunk: 400 naming it
      refused(chunked .. "3\r\nabcd\r\n0\r\n\r\n", 400, "chunk data not followed by CRLF")
    end)

    it("chunked bodies arrive whole, across reads, with extensions and trailers", function()
      local body = ws.random_bytes(40000, 11)
      -- chunks of varied sizes, one with extensions; sent in small pieces
      local parts, off = {}, 1
      for _, n in ipairs { 1, 15, 16, 4095, 4096, 10000, 21777 } do
        local ext = n == 15 and ";name=value;flag" or ""
        parts[#parts + 1] = ("%x%s\r\n"):format(n, ext) .. body:sub(off, off + n - 1) .. "\r\n"
        off = off + n
      end
      assert.are.equal(#body + 1, off)
      local raw = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        .. "Content-Type: application/x-test\r\n\r\n" .. table.concat(parts)
        .. "0\r\nX-Checksum: 1\r\nX-Other: two\r\n\r\n"
      local c = http.connect(srv)
      for i = 1, #raw, 997 do
        assert(c:send_raw(raw:sub(i, i + 996)))
      end
      -- a pipelined request right behind the body on the same connection
      assert(c:send_raw("GET /users/7/posts/9 HTTP/1.1\r\nHost: x\r\n\r\n"))
      local res = assert(http.read(c, "POST"))
      assert.are.equal(200, res.status)
      assert.are.equal(tostring(#body), res.headers["x-body-length"])
      assert.is_true(res.body == body, "echoed body differs")
      res = assert(http.read(c, "GET"))
      assert.are.equal("user=7 post=9", res.body)
      -- an empty chunked body
      assert(c:send_raw("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
      res = assert(http.read(c, "POST"))
      assert.are.equal("0", res.headers["x-body-length"])
      c:close_tcp()
    end)

    it("404, 405 with the exact Allow, 426 on a WebSocket path", function()
      assert.are.equal(404, http.get(srv, "/nope").status)
      assert.are.equal(404, http.get(srv, "/users/1/posts").status)
      local res = http.fetch(srv, "PUT", "/multi", { body = "x" })
      assert.are.equal(405, res.status)
      assert.are.equal("GET, HEAD, POST", res.headers.allow)
      res = http.fetch(srv, "DELETE", "/hello")
      assert.are.equal(405, res.status)
      assert.are.equal("GET, HEAD", res.headers.allow)
      res = http.get(srv, "/putonly")
      assert.are.equal(405, res.status)
      assert.are.equal("PUT", res.headers.allow)
      res = http.get(srv, "/ws")
      assert.are.equal(426, res.status)
      assert.are.equal("websocket", (res.headers.upgrade or ""):lower())
      -- The same path still upgrades.
      local c = ws.open(srv, "/ws")
      c:send_text("hi")
      c:expect_text("hi")
      c:close_handshake(1000)
    end)

    it("500 when the handler raises, logged with FILE:LINE; the connection goes on", function()
      local line = server.line_of(APP, "HTTP_ERROR_LINE")
      local c = http.connect(srv)
      local res = http.exchange(c, "GET", "/error")
      assert.are.equal(500, res.status)
      assert.is_nil(res.body:find("boom", 1, true), "the error leaked to the client: " .. res.body)
      assert.is_not_nil(srv:wait_log("http%.lua:" .. line .. ":", 2), "log lacks http.lua:" .. line)
      res = http.exchange(c, "GET", "/hello?name=after")
      assert.are.equal("hello after qs=name=after", res.body)
      c:close_tcp()
    end)

    it("204 when the handler sends nothing", function()
      local c = http.connect(srv)
      local res = http.exchange(c, "GET", "/nothing")
      assert.are.equal(204, res.status)
      assert.are.equal("hello a qs=name=a", http.exchange(c, "GET", "/hello?name=a").body)
      c:close_tcp()
    end)
  end)

  describe("connections", function()
    it("keeps a connection alive across requests", function()
      local c = http.connect(srv)
      for i = 1, 5 do
        local res = http.exchange(c, "GET", "/n/" .. i)
        assert.are.equal("n=" .. i, res.body)
      end
      c:close_tcp()
    end)

    it("answers pipelined requests in order, also behind a sleeping handler", function()
      local c = http.connect(srv)
      local batch = http.request("GET", "/n/1") .. http.request("GET", "/n/2?sleep=0.3")
        .. http.request("POST", "/echo", { body = "fourth" }) .. http.request("GET", "/n/3")
        .. http.request("HEAD", "/hello?name=h") .. http.request("GET", "/n/5")
      local t0 = now()
      assert(c:send_raw(batch))
      assert.are.equal("n=1", assert(http.read(c, "GET")).body)
      assert.are.equal("n=2", assert(http.read(c, "GET")).body)
      assert.is_true(now() - t0 >= 0.28, "the sleeping handler did not sleep")
      assert.are.equal("fourth", assert(http.read(c, "POST")).body)
      assert.are.equal("n=3", assert(http.read(c, "GET")).body)
      local head = assert(http.read(c, "HEAD"))
      assert.are.equal(200, head.status)
      assert.are.equal("n=5", assert(http.read(c, "GET")).body)
      c:close_tcp()
    end)

    it("parses pipelined requests sent one byte at a time", function()
      local c = http.connect(srv)
      assert(c:send_pieces(http.request("GET", "/n/1") .. http.request("POST", "/echo", { body = "ab" }), 1))
      assert.are.equal("n=1", assert(http.read(c, "GET")).body)
      assert.are.equal("ab", assert(http.read(c, "POST")).body)
      c:close_tcp()
    end)

    it("HEAD: the GET's Content-Length, no body", function()
      local c = http.connect(srv)
      local get = http.exchange(c, "GET", "/hello?name=h")
      local head = http.exchange(c, "HEAD", "/hello?name=h")
      assert.are.equal(200, head.status)
      assert.are.equal(get.headers["content-length"], head.headers["content-length"])
      -- No body bytes were sent: the next answer starts right away.
      assert.are.equal("n=9", http.exchange(c, "GET", "/n/9").body)
      c:close_tcp()
    end)

    it("Connection: close ends the connection after the answer", function()
      local c = http.connect(srv)
      local res = http.exchange(c, "GET", "/n/1", { headers = { "Connection: close" } })
      assert.are.equal("n=1", res.body)
      c:expect_tcp_close(2)
    end)

    it("HTTP/1.0 closes after the answer unless it asks for keep-alive", function()
      local c = http.connect(srv)
      local res = http.exchange(c, "GET", "/n/1", { version = "HTTP/1.0" })
      assert.are.equal("n=1", res.body)
      c:expect_tcp_close(2)
      c = http.connect(srv)
      res = http.exchange(c, "GET", "/n/2", { version = "HTTP/1.0", headers = { "Connection: keep-alive" } })
      assert.are.equal("n=2", res.body)
      res = http.exchange(c, "GET", "/n/3", { version = "HTTP/1.0", headers = { "Connection: keep-alive" } })
      assert.are.equal("n=3", res.body)
      c:close_tcp()
    end)

    it("closes an idle keep-alive connection after handshake_timeout with 408", function()
      local quick = server.start(APP, { flags = { "--handshake-timeout", "0.5" } })
      local c = http.connect(quick)
      assert.are.equal("n=1", http.exchange(c, "GET", "/n/1").body)
      local t0 = now()
      local res = assert(http.read(c, "GET", 3))
      local took = now() - t0
      assert.are.equal(408, res.status)
      assert.is_true(took > 0.35 and took < 1.2, "closed after " .. took .. " s")
      c:expect_tcp_close(2)
      quick:stop()
    end)
  end)

  describe("static files", function()
    it("serves files with their type and length", function()
      local want = {
        ["index.html"] = "text/html", ["style.css"] = "text/css", ["app.js"] = "javascript",
        ["data.json"] = "application/json", ["pic.svg"] = "image/svg+xml", ["pic.png"] = "image/png",
        ["blob.xyz"] = "application/octet-stream",
      }
      for name, ctype in pairs(want) do
        local res = http.get(srv, "/static/" .. name)
        assert.are.equal(200, res.status, name)
        assert.is_truthy((res.headers["content-type"] or ""):find(ctype, 1, true),
          name .. ": " .. tostring(res.headers["content-type"]))
        assert.are.equal(#files[name], tonumber(res.headers["content-length"]), name)
        assert.are.equal(files[name], res.body, name)
        assert.are.equal("no-cache", res.headers["cache-control"], name)
        assert.is_truthy(res.headers["last-modified"], name)
      end
      assert.are.equal("spaced\n", http.get(srv, "/static/sub/a%20b.txt").body)
    end)

    it("serves index.html for a directory", function()
      assert.are.equal(files["index.html"], http.get(srv, "/static/").body)
      assert.are.equal(files["sub/index.html"], http.get(srv, "/static/sub/").body)
    end)

    it("HEAD on a file: same length, no body", function()
      local c = http.connect(srv)
      local res = http.exchange(c, "HEAD", "/static/style.css")
      assert.are.equal(200, res.status)
      assert.are.equal(#files["style.css"], tonumber(res.headers["content-length"]))
      assert.are.equal(files["app.js"], http.exchange(c, "GET", "/static/app.js").body)
      c:close_tcp()
    end)

    it("ETag and If-None-Match -> 304", function()
      local res = http.get(srv, "/static/style.css")
      local etag = res.headers.etag
      assert.is_truthy(etag and etag:match('^W/"%x+%-%x+"$'), "ETag " .. tostring(etag))
      local c = http.connect(srv)
      local again = http.exchange(c, "GET", "/static/style.css", { headers = { "If-None-Match: " .. etag } })
      assert.are.equal(304, again.status)
      assert.are.equal(etag, again.headers.etag)
      -- No body: the next answer follows at once.
      res = http.exchange(c, "GET", "/static/style.css", { headers = { 'If-None-Match: W/"0-0"' } })
      assert.are.equal(200, res.status)
      assert.are.equal(files["style.css"], res.body)
      c:close_tcp()
    end)

    it("If-Modified-Since -> 304 unless the file is newer", function()
      local lm = http.get(srv, "/static/style.css").headers["last-modified"]
      assert.are.equal("Fri, 14 Jul 2017 02:40:00 GMT", lm)
      assert.are.equal(304, http.get(srv, "/static/style.css",
        { headers = { "If-Modified-Since: " .. lm } }).status)
      assert.are.equal(304, http.get(srv, "/static/style.css",
        { headers = { "If-Modified-Since: Sat, 15 Jul 2017 00:00:00 GMT" } }).status)
      local res = http.get(srv, "/static/style.css",
        { headers = { "If-Modified-Since: Thu, 01 Jan 1998 00:00:00 GMT" } })
      assert.are.equal(200, res.status)
      assert.are.equal(files["style.css"], res.body)
    end)

    it("refuses .. segments (also percent-encoded, any case) with 403", function()
      for _, path in ipairs({ "/static/../secret.txt", "/static/%2e%2e/secret.txt",
                              "/static/%2E%2E/secret.txt", "/static/%2e%2E/secret.txt",
                              "/static/.%2e/secret.txt",
                              "/static/sub/../../secret.txt", "/static/sub/%2E%2e/%2e%2E/secret.txt",
                              "/static/sub/../index.html" }) do
        local res = http.get(srv, path)
        assert.are.equal(403, res.status, path .. " -> " .. tostring(res.status))
        assert.is_nil(res.body:find("SECRET", 1, true), path)
      end
      -- Encoded slashes never lead out either.
      for _, path in ipairs({ "/static/..%2fsecret.txt", "/static/sub%2f..%2f..%2fsecret.txt" }) do
        local res = http.get(srv, path)
        assert.is_true(res.status == 403 or res.status == 404 or res.status == 400,
          path .. " -> " .. tostring(res.status))
        assert.is_nil(res.body:find("SECRET", 1, true), path)
      end
    end)

    it("refuses symlinks leading outside (403), follows those inside", function()
      assert.are.equal(403, http.get(srv, "/static/out.txt").status)
      assert.are.equal(403, http.get(srv, "/static/outdir/secret.txt").status)
      assert.are.equal(files["style.css"], http.get(srv, "/static/in.css").body)
    end)

    it("404 for a missing file, 400 for a bad escape, 405 for POST", function()
      assert.are.equal(404, http.get(srv, "/static/missing.txt").status)
      assert.are.equal(404, http.get(srv, "/static/sub/missing/").status)
      for _, path in ipairs({ "/static/%zz", "/static/abc%4", "/static/%G1.txt", "/static/%" }) do
        assert.are.equal(400, http.get(srv, path).status, path)
      end
      local res = http.fetch(srv, "POST", "/static/style.css", { body = "x" })
      assert.are.equal(405, res.status)
    end)

    it("streams a 3 MB file intact", function()
      local res = http.get(srv, "/static/big.bin", { timeout = 10 })
      assert.are.equal(200, res.status)
      assert.are.equal(3 * 1024 * 1024, tonumber(res.headers["content-length"]))
      assert.is_true(res.body == files["big.bin"], "the 3 MB file differs")
    end)
  end)
end)
