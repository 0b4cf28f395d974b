'use strict';
// moonwire driven by an independent client: Node's `ws` (npm, ^8).
//
//   (cd spec/clients/node && npm ci)       # once; node_modules is gitignored
//   node --test spec/clients/node/test_node_ws.js      # from the repo root
//
// MOONWIRE_BIN / MOONWIRE_ROOT select the binary and repo root (see mwserver.js).

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const net = require('node:net');
const path = require('node:path');
const { startServer } = require('./mwserver');

let WebSocket;
try {
  // Resolved relative to this file, i.e. spec/clients/node/node_modules/ws,
  // whatever the working directory is.
  WebSocket = require(path.join(__dirname, 'node_modules', 'ws'));
} catch (err) {
  throw new Error(`cannot load 'ws' (${err.message}); run \`npm ci\` in ${__dirname}`);
}

const ECHO_APP = 'apps/echo/app.lua';
const HARNESS_APP = path.join(__dirname, '..', 'apps', 'harness.lua');
const MiB = 1024 * 1024;
const T = 10000;

// ---------------------------------------------------------------------------
// A ws client with a message queue so no message is lost between awaits.
class Client {
  static open(url, opts = {}) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { handshakeTimeout: T, ...opts });
      const c = new Client(ws);
      ws.once('open', () => { ws.removeListener('error', reject); resolve(c); });
      ws.once('error', reject);
    });
  }

  constructor(ws) {
    this.ws = ws;
    this.queue = [];
    this.waiters = [];
    this.closeInfo = null;
    this.closeWaiters = [];
    this.errors = [];
    ws.on('message', (data, isBinary) => {
      const m = { data, isBinary };
      const w = this.waiters.shift();
      if (w) w.resolve(m); else this.queue.push(m);
    });
    ws.on('error', (err) => this.errors.push(err));
    ws.on('close', (code, reason) => {
      this.closeInfo = { code, reason: reason.toString() };
      for (const w of this.waiters.splice(0)) w.reject(new Error(`closed ${code} ${this.closeInfo.reason}`));
      for (const w of this.closeWaiters.splice(0)) w(this.closeInfo);
    });
  }

  next(ms = T) {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    if (this.closeInfo) return Promise.reject(new Error(`closed ${this.closeInfo.code}`));
    return new Promise((resolve, reject) => {
      const w = { resolve, reject };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error(`no message within ${ms} ms`));
      }, ms);
      w.resolve = (m) => { clearTimeout(timer); resolve(m); };
      w.reject = (e) => { clearTimeout(timer); reject(e); };
      this.waiters.push(w);
    });
  }

  async text(ms = T) {
    const m = await this.next(ms);
    assert.equal(m.isBinary, false, 'expected a text message');
    return m.data.toString('utf8');
  }

  async binary(ms = T) {
    const m = await this.next(ms);
    assert.equal(m.isBinary, true, 'expected a binary message');
    return m.data;
  }

  closed(ms = T) {
    if (this.closeInfo) return Promise.resolve(this.closeInfo);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`connection not closed within ${ms} ms`)), ms);
      this.closeWaiters.push((info) => { clearTimeout(timer); resolve(info); });
    });
  }

  async send(data, opts = {}) {
    if (this.ws.readyState !== WebSocket.OPEN) {
      // say why: the close code the server sent is the interesting part
      const info = await this.closed(3000).catch(() => null);
      throw new Error(`cannot send, connection ${info ? `closed by server: ${info.code} ${JSON.stringify(info.reason)}` : 'closing'}`);
    }
    return new Promise((resolve, reject) => this.ws.send(data, opts, (err) => (err ? reject(err) : resolve())));
  }

  async close(code, reason) {
    if (this.ws.readyState === WebSocket.CLOSED) return this.closeInfo;
    this.ws.close(code, reason);
    return this.closed();
  }

  terminate() { this.ws.terminate(); }
}

// Tracks clients per suite so a failing test never leaks sockets.
function clientPool() {
  const all = new Set();
  return {
    async open(url, opts) {
      const c = await Client.open(url, opts);
      all.add(c);
      return c;
    },
    closeAll() {
      for (const c of all) c.terminate();
      all.clear();
    },
  };
}

// Stops a suite's server; fails if it crashed, needed SIGKILL or a sanitizer spoke.
async function stopAndCheck(server) {
  if (!server) return;
  const alive = server.alive();
  await server.stop();
  await new Promise((r) => setTimeout(r, 50)); // let the last stderr bytes arrive
  assert.ok(alive, `moonwire died during the suite:\n${server.log()}`);
  const report = server.sanitizerReport();
  assert.equal(report, null, `sanitizer report from moonwire:\n${report}`);
  assert.ok(!server.neededSigkill, 'moonwire ignored SIGTERM and was killed');
}

// ---------------------------------------------------------------------------
// Raw RFC 6455 client over net.Socket, for things ws will not do for us.
const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

function frame(opcode, payload, { fin = true } = {}) {
  payload = Buffer.from(payload);
  const len = payload.length;
  let header;
  if (len < 126) {
    header = Buffer.from([(fin ? 0x80 : 0) | opcode, 0x80 | len]);
  } else if (len < 65536) {
    header = Buffer.alloc(4);
    header[0] = (fin ? 0x80 : 0) | opcode; header[1] = 0x80 | 126; header.writeUInt16BE(len, 2);
  } else {
    header = Buffer.alloc(10);
    header[0] = (fin ? 0x80 : 0) | opcode; header[1] = 0x80 | 127; header.writeBigUInt64BE(BigInt(len), 2);
  }
  const mask = crypto.randomBytes(4);
  const masked = Buffer.alloc(len);
  for (let i = 0; i < len; i++) masked[i] = payload[i] ^ mask[i & 3];
  return Buffer.concat([header, mask, masked]);
}

class RawClient {
  // `extra` is written in the same write() as the HTTP request.
  static connect(server, urlPath, extra = Buffer.alloc(0)) {
    return new Promise((resolve, reject) => {
      const key = crypto.randomBytes(16).toString('base64');
      const sock = net.connect(server.port, server.host);
      const raw = new RawClient(sock);
      const timer = setTimeout(() => { sock.destroy(); reject(new Error('handshake timeout')); }, T);
      sock.once('error', (e) => { clearTimeout(timer); reject(e); });
      sock.once('connect', () => {
        const req = `GET ${urlPath} HTTP/1.1\r\nHost: ${server.host}:${server.port}\r\nUpgrade: websocket\r\n` +
          `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`;
        sock.write(Buffer.concat([Buffer.from(req), extra]));
      });
      raw.onHead = (head) => {
        clearTimeout(timer);
        const expected = crypto.createHash('sha1').update(key + GUID).digest('base64');
        if (!/^HTTP\/1\.1 101 /.test(head)) return reject(new Error(`no 101: ${head}`));
        const accept = /\r\nsec-websocket-accept:\s*(\S+)/i.exec(head);
        if (!accept || accept[1] !== expected) return reject(new Error(`bad Sec-WebSocket-Accept in ${head}`));
        resolve(raw);
      };
    });
  }

  constructor(sock) {
    this.sock = sock;
    this.buf = Buffer.alloc(0);
    this.head = null;
    this.frames = [];
    this.frameWaiters = [];
    this.ended = false;
    this.endWaiters = [];
    sock.on('data', (d) => { this.buf = Buffer.concat([this.buf, d]); this.parse(); });
    sock.on('close', () => {
      this.ended = true;
      for (const w of this.frameWaiters.splice(0)) w(null);
      for (const w of this.endWaiters.splice(0)) w();
    });
    sock.on('error', () => {});
  }

  parse() {
    if (this.head === null) {
      const i = this.buf.indexOf('\r\n\r\n');
      if (i < 0) return;
      this.head = this.buf.subarray(0, i).toString('latin1');
      this.buf = this.buf.subarray(i + 4);
      this.onHead(this.head);
    }
    for (;;) {
      if (this.buf.length < 2) return;
      const b0 = this.buf[0]; const b1 = this.buf[1];
      let len = b1 & 0x7f; let off = 2;
      if (len === 126) { if (this.buf.length < 4) return; len = this.buf.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (this.buf.length < 10) return; len = Number(this.buf.readBigUInt64BE(2)); off = 10; }
      assert.equal(b1 & 0x80, 0, 'server frames must not be masked');
      if (this.buf.length < off + len) return;
      const f = { fin: !!(b0 & 0x80), opcode: b0 & 0x0f, payload: this.buf.subarray(off, off + len) };
      this.buf = this.buf.subarray(off + len);
      const w = this.frameWaiters.shift();
      if (w) w(f); else this.frames.push(f);
    }
  }

  nextFrame(ms = T) {
    if (this.frames.length) return Promise.resolve(this.frames.shift());
    if (this.ended) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no frame within ${ms} ms`)), ms);
      this.frameWaiters.push((f) => { clearTimeout(timer); resolve(f); });
    });
  }

  waitEnd(ms = T) {
    if (this.ended) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`TCP not closed within ${ms} ms`)), ms);
      this.endWaiters.push(() => { clearTimeout(timer); resolve(); });
    });
  }

  write(buf) { this.sock.write(buf); }
  destroy() { this.sock.destroy(); }
}

function closeCode(f) {
  assert.ok(f, 'expected a close frame, got EOF');
  assert.equal(f.opcode, 8, `expected a close frame, got opcode ${f.opcode}`);
  return f.payload.length >= 2 ? f.payload.readUInt16BE(0) : 1005;
}

function assertBufEqual(got, want, what = 'message') {
  assert.equal(got.length, want.length, `${what} length`);
  assert.ok(Buffer.compare(got, want) === 0, `${what} content differs`);
}

// ---------------------------------------------------------------------------
describe('echo app (apps/echo/app.lua at /echo)', () => {
  let server;
  const pool = clientPool();
  before(async () => { server = await startServer(ECHO_APP); });
  after(async () => {
    pool.closeAll();
    await stopAndCheck(server);
  });

  it('echoes text, including multi-byte UTF-8', { timeout: T }, async () => {
    const c = await pool.open(server.url('/echo'));
    for (const s of ['hello', '', 'h\u00e9llo \u20ac \u65e5\u672c \u{1F680}\u{1D11E}', 'x'.repeat(126), '\u00e9'.repeat(40000)]) {
      await c.send(s);
      assert.equal(await c.text(), s);
    }
    await c.close(1000);
  });

  it('echoes binary of boundary sizes', { timeout: 20000 }, async () => {
    const c = await pool.open(server.url('/echo'));
    for (const n of [0, 1, 125, 126, 65535, 65536, 70000]) {
      const b = crypto.randomBytes(n);
      await c.send(b, { binary: true });
      assertBufEqual(await c.binary(), b, `binary ${n}`);
    }
    await c.close(1000);
  });

  it('echoes fragmented text (send with fin:false)', { timeout: T }, async () => {
    const c = await pool.open(server.url('/echo'));
    await c.send('Hel', { fin: false });
    await c.send('lo, ', { fin: false });
    await c.send('', { fin: false });
    await c.send('w\u00f6rld', { fin: true });
    assert.equal(await c.text(), 'Hello, w\u00f6rld');
    await c.send('unfragmented after');
    assert.equal(await c.text(), 'unfragmented after');
    await c.close(1000);
  });

  it('echoes fragmented text with a code point split across fragments', { timeout: T }, async () => {
    const c = await pool.open(server.url('/echo'));
    const bytes = Buffer.from('\u20ac\u{1F680}', 'utf8'); // 3 + 4 bytes
    await c.send(bytes.subarray(0, 1), { binary: false, fin: false });
    await c.send(bytes.subarray(1, 5), { binary: false, fin: false });
    await c.send(bytes.subarray(5), { binary: false, fin: true });
    assert.equal(await c.text(), '\u20ac\u{1F680}');
    await c.close(1000);
  });

  it('echoes fragmented binary', { timeout: T }, async () => {
    const c = await pool.open(server.url('/echo'));
    const parts = [crypto.randomBytes(10), crypto.randomBytes(0), crypto.randomBytes(70000), crypto.randomBytes(3)];
    for (let i = 0; i < parts.length; i++) {
      await c.send(parts[i], { binary: true, fin: i === parts.length - 1 });
    }
    assertBufEqual(await c.binary(), Buffer.concat(parts), 'fragmented binary');
    await c.close(1000);
  });

  it('echoes a 1 MiB message (text and binary)', { timeout: 20000 }, async () => {
    const c = await pool.open(server.url('/echo'));
    const b = crypto.randomBytes(MiB);
    await c.send(b, { binary: true });
    assertBufEqual(await c.binary(), b, '1 MiB binary');
    const s = 'abcdefghijklmnop'.repeat(MiB / 16);
    await c.send(s);
    assert.equal(await c.text(), s);
    await c.close(1000);
  });

  it('connection stays usable after a 5 MiB echo (> default max_buffered)', { timeout: 20000 }, async () => {
    const c = await pool.open(server.url('/echo'), { perMessageDeflate: false });
    const b = crypto.randomBytes(5 * MiB);
    await c.send(b, { binary: true });
    assertBufEqual(await c.binary(), b, '5 MiB binary');
    await c.send('after');
    assert.equal(await c.text(), 'after');
    await c.close(1000);
  });

  it('answers pings with the same payload', { timeout: T }, async () => {
    const c = await pool.open(server.url('/echo'));
    for (const payload of [Buffer.from('hello'), Buffer.alloc(0), crypto.randomBytes(125)]) {
      const pong = new Promise((resolve) => c.ws.once('pong', resolve));
      c.ws.ping(payload);
      const got = await pong;
      assertBufEqual(got, payload, 'pong payload');
    }
    await c.close(1000);
  });

  it('answers a ping sent between fragments of a message', { timeout: T }, async () => {
    const c = await pool.open(server.url('/echo'));
    await c.send('part one, ', { fin: false });
    const pong = new Promise((resolve) => c.ws.once('pong', resolve));
    c.ws.ping('mid');
    assert.equal((await pong).toString(), 'mid');
    await c.send('part two', { fin: true });
    assert.equal(await c.text(), 'part one, part two');
    await c.close(1000);
  });

  it('client close code is echoed', { timeout: T }, async () => {
    const c = await pool.open(server.url('/echo'));
    const info = await c.close(4001, 'bye');
    assert.equal(info.code, 4001);
  });

  it("unknown path -> 'Unexpected server response: 404'", { timeout: T }, async () => {
    await assert.rejects(Client.open(server.url('/nope')), { message: 'Unexpected server response: 404' });
  });

  it('invalid UTF-8 in a text frame -> close 1007', { timeout: T }, async () => {
    const c = await pool.open(server.url('/echo'));
    // ws does not validate outgoing data: a Buffer with binary:false goes out as a text frame.
    await c.send(Buffer.from([0x61, 0xff, 0xfe, 0x62]), { binary: false });
    const info = await c.closed();
    assert.equal(info.code, 1007);
  });

  it('invalid UTF-8 split across unfinished fragments -> 1007 without waiting for FIN (raw socket)', { timeout: T }, async () => {
    const raw = await RawClient.connect(server, '/echo');
    try {
      raw.write(frame(1, Buffer.from([0x6f, 0x6b, 0xc3]), { fin: false })); // "ok" + lead byte
      raw.write(frame(0, Buffer.from([0x28]), { fin: false }));             // invalid continuation
      const f = await raw.nextFrame(5000);
      assert.equal(closeCode(f), 1007);
      raw.write(frame(8, Buffer.from([0x03, 0xef]))); // reply 1007
      await raw.waitEnd(5000);
    } finally {
      raw.destroy();
    }
  });

  it('frames sent in the same packet as the upgrade request are processed (raw socket)', { timeout: T }, async () => {
    const extra = Buffer.concat([frame(1, 'first'), frame(2, Buffer.from([1, 2, 3])), frame(9, 'pp')]);
    const raw = await RawClient.connect(server, '/echo', extra);
    try {
      const got = [await raw.nextFrame(), await raw.nextFrame(), await raw.nextFrame()];
      const byOp = (op) => got.find((f) => f && f.opcode === op);
      assert.equal(byOp(1).payload.toString(), 'first');
      assertBufEqual(byOp(2).payload, Buffer.from([1, 2, 3]), 'binary');
      assert.equal(byOp(10).payload.toString(), 'pp');
      // text must come before binary (message order)
      assert.ok(got.indexOf(byOp(1)) < got.indexOf(byOp(2)));
      raw.write(frame(8, Buffer.from([0x03, 0xe8])));
      const f = await raw.nextFrame();
      assert.equal(closeCode(f), 1000);
      await raw.waitEnd(5000);
    } finally {
      raw.destroy();
    }
  });

  it('100 concurrent clients', { timeout: 45000 }, async () => {
    const N = 100; const M = 10;
    const one = async (i) => {
      const c = await Client.open(server.url('/echo'), { perMessageDeflate: false });
      try {
        for (let j = 0; j < M; j++) {
          if (j % 2) {
            const b = Buffer.from(`c${i}-m${j}-${'\u00e9'.repeat(j * 13)}`);
            await c.send(b, { binary: true });
            assertBufEqual(await c.binary(), b, `client ${i} msg ${j}`);
          } else {
            const s = `c${i}-m${j}-${'\u20ac'.repeat(j * 11)}`;
            await c.send(s);
            assert.equal(await c.text(), s);
          }
        }
        const info = await c.close(1000);
        assert.equal(info.code, 1000);
        return M;
      } finally {
        c.terminate();
      }
    };
    const results = await Promise.allSettled(Array.from({ length: N }, (_, i) => one(i)));
    const failed = results.filter((r) => r.status === 'rejected');
    assert.equal(failed.length, 0, `${failed.length}/${N} clients failed; first: ${failed[0] && failed[0].reason}`);
    const c = await pool.open(server.url('/echo'));
    await c.send('still serving');
    assert.equal(await c.text(), 'still serving');
  });
});

// ---------------------------------------------------------------------------
describe('harness app (spec/clients/apps/harness.lua)', () => {
  let server;
  const pool = clientPool();
  before(async () => { server = await startServer(HARNESS_APP); });
  after(async () => {
    pool.closeAll();
    await stopAndCheck(server);
  });

  async function watcher() {
    const w = await pool.open(server.url('/watch'));
    assert.equal(await w.text(), 'ready');
    return w;
  }

  async function subject() {
    const s = await pool.open(server.url('/subject'));
    const line = await s.text();
    const m = /^id (\d+)$/.exec(line);
    assert.ok(m, `expected 'id N', got ${JSON.stringify(line)}`);
    return { s, id: Number(m[1]) };
  }

  async function report(w, id) {
    for (;;) {
      const line = await w.text();
      if (line.startsWith(`closed ${id} `)) return line;
    }
  }

  it("client close 4001 'bye' reaches on_close", { timeout: T }, async () => {
    const w = await watcher();
    const { s, id } = await subject();
    const info = await s.close(4001, 'bye');
    assert.equal(info.code, 4001);
    assert.equal(await report(w, id), `closed ${id} 4001 bye`);
  });

  it('client close without a code -> on_close gets 1005', { timeout: T }, async () => {
    const w = await watcher();
    const { s, id } = await subject();
    await s.close(); // ws sends an empty close frame
    assert.equal(await report(w, id), `closed ${id} 1005 `);
  });

  it("server ws:close(4000, 'done') -> client sees 4000 'done'", { timeout: T }, async () => {
    const w = await watcher();
    const { s, id } = await subject();
    await s.send('close 4000 done');
    const info = await s.closed();
    assert.deepEqual(info, { code: 4000, reason: 'done' });
    assert.equal(await report(w, id), `closed ${id} 4000 done`);
  });

  it('abrupt TCP drop -> on_close gets 1006', { timeout: T }, async () => {
    const w = await watcher();
    const { s, id } = await subject();
    s.terminate();
    assert.equal(await report(w, id), `closed ${id} 1006 `);
  });

  it('handler error -> 1011 on that connection only', { timeout: T }, async () => {
    const w = await watcher();
    const other = await subject();
    const bad = await subject();
    await bad.s.send('boom');
    const info = await bad.s.closed();
    assert.equal(info.code, 1011);
    assert.match(await report(w, bad.id), new RegExp(`^closed ${bad.id} 1011`));
    await other.s.send('still here');
    assert.equal(await other.s.text(), 'still here');
    assert.ok(await server.waitForLog(/harness\.lua:\d+/), 'traceback should name harness.lua:LINE');
  });

  it('messages sent during a sleeping handler are answered in order', { timeout: T }, async () => {
    const c = await pool.open(server.url('/slow'));
    const msgs = Array.from({ length: 25 }, (_, i) => `n${i}`);
    for (const m of msgs) c.ws.send(m);
    const got = [];
    for (let i = 0; i < msgs.length; i++) got.push(await c.text());
    assert.deepEqual(got, msgs);
  });

  it('route max_message_size: fragmented message over 1024 bytes -> 1009', { timeout: T }, async () => {
    const c = await pool.open(server.url('/small'));
    await c.send(Buffer.alloc(1024, 0x41), { binary: true });
    assert.equal((await c.binary()).length, 1024);
    await c.send(Buffer.alloc(600, 0x42), { binary: true, fin: false });
    await c.send(Buffer.alloc(600, 0x43), { binary: true, fin: true });
    const info = await c.closed();
    assert.equal(info.code, 1009);
  });
});

// ---------------------------------------------------------------------------
describe('timeouts (--close-timeout 1 --handshake-timeout 1)', () => {
  let server;
  const pool = clientPool();
  before(async () => {
    server = await startServer(HARNESS_APP, ['--close-timeout', '1', '--handshake-timeout', '1']);
  });
  after(async () => {
    pool.closeAll();
    await stopAndCheck(server);
  });

  it('server close not answered by the client -> TCP dropped after close_timeout', { timeout: T }, async () => {
    const w = await pool.open(server.url('/watch'));
    assert.equal(await w.text(), 'ready');
    const raw = await RawClient.connect(server, '/subject');
    try {
      const hello = await raw.nextFrame();
      const id = Number(/^id (\d+)$/.exec(hello.payload.toString())[1]);
      raw.write(frame(1, 'close 4000 done'));
      const f = await raw.nextFrame();
      assert.equal(closeCode(f), 4000);
      assert.equal(f.payload.subarray(2).toString(), 'done');
      const t0 = Date.now();
      await raw.waitEnd(4000); // we never answer the close
      const waited = Date.now() - t0;
      assert.ok(waited >= 700, `TCP closed after ${waited} ms, before close_timeout`);
      let line;
      do { line = await w.text(); } while (!line.startsWith(`closed ${id} `));
      assert.match(line, new RegExp(`^closed ${id} \\d+`));
      await assert.rejects(w.next(500), /no message/, 'on_close must run exactly once');
    } finally {
      raw.destroy();
    }
  });

  it('no upgrade request within handshake_timeout -> 408', { timeout: T }, async () => {
    const sock = net.connect(server.port, server.host);
    let data = '';
    sock.setEncoding('latin1');
    sock.on('data', (d) => { data += d; });
    sock.on('error', () => {});
    const t0 = Date.now();
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`not closed within 4 s; got ${JSON.stringify(data)}`)), 4000);
      sock.on('close', () => { clearTimeout(timer); resolve(); });
    });
    const waited = Date.now() - t0;
    assert.match(data, /^HTTP\/1\.1 408 /);
    assert.ok(waited >= 700, `closed after ${waited} ms`);
  });

  it('partial upgrade request stalls -> 408', { timeout: T }, async () => {
    const sock = net.connect(server.port, server.host);
    let data = '';
    sock.setEncoding('latin1');
    sock.on('data', (d) => { data += d; });
    sock.on('error', () => {});
    sock.on('connect', () => sock.write('GET /subject HTTP/1.1\r\nHost: x\r\n'));
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`not closed within 4 s; got ${JSON.stringify(data)}`)), 4000);
      sock.on('close', () => { clearTimeout(timer); resolve(); });
    });
    assert.match(data, /^HTTP\/1\.1 408 /);
  });
});
