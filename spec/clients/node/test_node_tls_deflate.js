'use strict';
// wss:// and permessage-deflate with Node's `ws` (npm, ^8) against moonwire.
//
//   (cd spec/clients/node && npm ci)                          # once
//   node --test spec/clients/node/test_node_tls_deflate.js    # from the repo root
//
// A self-signed certificate is made with the `openssl` CLI in a temporary
// directory; the client trusts exactly it (`ca`, rejectUnauthorized). The
// server runs spec/clients/apps/app_tls_deflate.lua with --tls-listen.
// MOONWIRE_BIN / MOONWIRE_ROOT select the binary and repo root (mwserver.js).

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const https = require('node:https');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { startServer } = require('./mwserver');

let WebSocket;
try {
  WebSocket = require(path.join(__dirname, 'node_modules', 'ws'));
} catch (err) {
  throw new Error(`cannot load 'ws' (${err.message}); run \`npm ci\` in ${__dirname}`);
}

const APP = path.join(__dirname, '..', 'apps', 'app_tls_deflate.lua');
const MiB = 1024 * 1024;
const T = 15000;

// ---------------------------------------------------------------------------
function makeCert(dir) {
  const crt = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key,
    '-out', crt, '-days', '2', '-subj', '/CN=moonwire-node-test',
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'pipe' });
  return { crt, key, ca: fs.readFileSync(crt) };
}

// A ws client with a message queue so no message is lost between awaits.
class Client {
  static open(url, opts = {}) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { handshakeTimeout: T, maxPayload: 0, ...opts });
      const c = new Client(ws);
      ws.once('upgrade', (res) => { c.response = res; });
      ws.once('open', () => { ws.removeListener('error', reject); resolve(c); });
      ws.once('error', reject);
    });
  }

  constructor(ws) {
    this.ws = ws;
    this.queue = [];
    this.waiters = [];
    this.closeInfo = null;
    ws.on('message', (data, isBinary) => {
      const m = { data, isBinary };
      const w = this.waiters.shift();
      if (w) w.resolve(m); else this.queue.push(m);
    });
    ws.on('error', () => {});
    ws.on('close', (code, reason) => {
      this.closeInfo = { code, reason: reason.toString() };
      for (const w of this.waiters.splice(0)) w.reject(new Error(`closed ${code} ${this.closeInfo.reason}`));
    });
  }

  get extensionHeader() {
    return this.response ? this.response.headers['sec-websocket-extensions'] : undefined;
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

  send(data, opts = {}) {
    return new Promise((resolve, reject) => this.ws.send(data, opts, (err) => (err ? reject(err) : resolve())));
  }

  terminate() { this.ws.terminate(); }
}

function pool() {
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

function similar(i) {
  return JSON.stringify({ seq: i, user: 'alice', room: 'lobby',
    text: `the quick brown fox jumps over the lazy dog, message number ${i}`, tags: ['a', 'b', 'c'] });
}

// 100 messages each way (sent back to back, then all read back), text and binary.
async function hundredEachWay(c) {
  const msgs = [];
  for (let i = 0; i < 100; i++) {
    if (i % 4 === 3) msgs.push({ data: crypto.randomBytes(i * 37), binary: true });
    else if (i % 4 === 2) msgs.push({ data: 'x'.repeat(i % 70), binary: false }); // around the threshold
    else msgs.push({ data: similar(i).repeat(1 + (i % 9)), binary: false });
  }
  await Promise.all(msgs.map((m) => c.send(m.data, { binary: m.binary })));
  for (let i = 0; i < msgs.length; i++) {
    const got = await c.next();
    assert.equal(got.isBinary, msgs[i].binary, `message ${i}: type`);
    assert.ok(Buffer.from(msgs[i].data).equals(got.data), `message ${i}: content`);
  }
}

async function echoBig(c) {
  const text = similar(1).repeat(Math.ceil(MiB / similar(1).length)).slice(0, MiB);
  await c.send(text);
  const t = await c.next(30000);
  assert.equal(t.isBinary, false);
  assert.equal(t.data.length, MiB);
  assert.equal(t.data.toString('utf8'), text);
  const bin = crypto.randomBytes(MiB);
  await c.send(bin, { binary: true });
  const b = await c.next(30000);
  assert.equal(b.isBinary, true);
  assert.ok(bin.equals(b.data), '1 MiB binary echo');
}

async function stopAndCheck(server) {
  if (!server) return;
  const alive = server.alive();
  await server.stop();
  await new Promise((r) => setTimeout(r, 50));
  assert.ok(alive, `moonwire died during the suite:\n${server.log()}`);
  const report = server.sanitizerReport();
  assert.equal(report, null, `sanitizer report from moonwire:\n${report}`);
  assert.ok(!server.neededSigkill, 'moonwire ignored SIGTERM and was killed');
}

// ---------------------------------------------------------------------------
describe('wss:// and permessage-deflate with Node ws', () => {
  let server;
  let cert;
  let dir;
  let wssPort;
  let wsPort;
  const clients = pool();
  const wss = (p) => `wss://127.0.0.1:${wssPort}${p}`;
  const wsu = (p) => `ws://127.0.0.1:${wsPort}${p}`;
  const tls = (extra = {}) => ({ ca: cert.ca, rejectUnauthorized: true, ...extra });

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-node-tls-'));
    cert = makeCert(dir);
    server = await startServer(APP, ['--tls-listen', '127.0.0.1:0', '--tls-cert', cert.crt,
      '--tls-key', cert.key]);
    // The TLS line comes first; mwserver.js stops at the first "listening on".
    const tlsLine = await server.waitForLog(/TLS listening on [\d.]+:\d+/);
    const plainLine = await server.waitForLog(/(?<!TLS )listening on [\d.]+:\d+/);
    assert.ok(tlsLine && plainLine, server.log());
    wssPort = Number(/TLS listening on [\d.]+:(\d+)/.exec(tlsLine)[1]);
    wsPort = Number(/(?<!TLS )listening on [\d.]+:(\d+)/.exec(plainLine)[1]);
  });

  after(async () => {
    clients.closeAll();
    await stopAndCheck(server);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('refuses to connect without the test CA (client-side verification is on)', async () => {
    await assert.rejects(Client.open(wss('/z'), { rejectUnauthorized: true }),
      /self[- ]signed|unable to verify|certificate/i);
  });

  it('perMessageDeflate on: negotiated, 100 messages each way, 1 MiB', async () => {
    const c = await clients.open(wss('/z'), tls({ perMessageDeflate: true }));
    assert.equal(c.ws.extensions, 'permessage-deflate');
    assert.equal(c.extensionHeader, 'permessage-deflate');
    await hundredEachWay(c);
    await echoBig(c);
    await hundredEachWay(c);
  });

  it('perMessageDeflate off: no extension, 100 messages each way, 1 MiB', async () => {
    const c = await clients.open(wss('/z'), tls({ perMessageDeflate: false }));
    assert.equal(c.ws.extensions, '');
    assert.equal(c.extensionHeader, undefined);
    await hundredEachWay(c);
    await echoBig(c);
  });

  it('context takeover off (serverNoContextTakeover / clientNoContextTakeover)', async () => {
    const c = await clients.open(wss('/z'), tls({
      perMessageDeflate: { serverNoContextTakeover: true, clientNoContextTakeover: true, threshold: 0 },
    }));
    assert.equal(c.extensionHeader,
      'permessage-deflate; server_no_context_takeover; client_no_context_takeover');
    await hundredEachWay(c);
    await echoBig(c);
    await hundredEachWay(c);
  });

  it('a route without context takeover answers both parameters unasked', async () => {
    const c = await clients.open(wss('/noctx'), tls({ perMessageDeflate: { threshold: 0 } }));
    assert.equal(c.extensionHeader,
      'permessage-deflate; server_no_context_takeover; client_no_context_takeover');
    await hundredEachWay(c);
    await echoBig(c);
  });

  it('serverMaxWindowBits and clientMaxWindowBits', async () => {
    const c = await clients.open(wss('/z'), tls({
      perMessageDeflate: { serverMaxWindowBits: 10, clientMaxWindowBits: 9, threshold: 0 },
    }));
    assert.equal(c.extensionHeader, 'permessage-deflate; server_max_window_bits=10');
    await hundredEachWay(c);
    await echoBig(c);
  });

  it('compressed traffic is smaller on the wire (wss, similar messages)', async () => {
    const measure = async (perMessageDeflate) => {
      const c = await clients.open(wss('/z'), tls({ perMessageDeflate }));
      const before0 = c.ws._socket.bytesRead;
      for (let i = 0; i < 100; i++) await c.send(similar(i));
      for (let i = 0; i < 100; i++) assert.equal((await c.next()).data.toString(), similar(i));
      return c.ws._socket.bytesRead - before0;
    };
    const plain = await measure(false);
    const deflated = await measure({ threshold: 0 });
    assert.ok(deflated < plain / 2, `compressed replies took ${deflated} bytes, plain ${plain}`);
  });

  it('ws:// (plain listener) with and without compression beside wss://', async () => {
    const a = await clients.open(wsu('/z'), { perMessageDeflate: true });
    const b = await clients.open(wsu('/z'), { perMessageDeflate: false });
    const d = await clients.open(wss('/z'), tls({ perMessageDeflate: true }));
    assert.equal(a.extensionHeader, 'permessage-deflate');
    assert.equal(b.extensionHeader, undefined);
    await Promise.all([hundredEachWay(a), hundredEachWay(b), hundredEachWay(d)]);
  });

  it('a route without compression declines the offer', async () => {
    const c = await clients.open(wss('/plain'), tls({ perMessageDeflate: true }));
    assert.equal(c.extensionHeader, undefined);
    assert.equal(c.ws.extensions, '');
    await hundredEachWay(c);
  });

  it('pub/sub: compressed and uncompressed wss subscribers get the same stream', async () => {
    const subs = [];
    for (let i = 0; i < 10; i++) subs.push(await clients.open(wss('/sub'), tls({ perMessageDeflate: true })));
    for (let i = 0; i < 10; i++) subs.push(await clients.open(wss('/sub'), tls({ perMessageDeflate: false })));
    for (let i = 0; i < 5; i++) {
      subs.push(await clients.open(wss('/sub'), tls({
        perMessageDeflate: { serverNoContextTakeover: true, clientNoContextTakeover: true },
      })));
    }
    // all subscribed?
    for (let tries = 0; ; tries++) {
      const n = await httpsGet(wssPort, '/subs', cert.ca);
      if (Number(n.body) >= subs.length) break;
      assert.ok(tries < 100, `only ${n.body} subscribers`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const pub = await clients.open(wss('/pub'), tls({ perMessageDeflate: true }));
    const msgs = [];
    for (let i = 0; i < 100; i++) msgs.push(i % 5 === 0 ? `s${i}` : similar(i).repeat(1 + (i % 4)));
    for (const m of msgs) await pub.send(m);
    await Promise.all(subs.map(async (s, k) => {
      for (let i = 0; i < msgs.length; i++) {
        const got = await s.next();
        assert.equal(got.data.toString(), msgs[i], `subscriber ${k}, message ${i}`);
      }
    }));
  });

  it('binary messages of sizes around the server read buffer (~72 KiB), fresh connection each', async () => {
    // Each frame is written at once; its last bytes may be decrypted by OpenSSL
    // together with the bytes that filled the server's read buffer.
    const stalled = [];
    for (let n = 73690; n < 73760 && stalled.length < 4; n += 3) {
      const c = await clients.open(wss('/plain'), tls({ perMessageDeflate: false }));
      const msg = crypto.randomBytes(n);
      await c.send(msg, { binary: true });
      try {
        const got = await c.next(2000);
        assert.ok(msg.equals(got.data), `size ${n}: content`);
      } catch (err) {
        if (!/no message within/.test(err.message)) throw err;
        stalled.push(n);
      }
      c.terminate();
    }
    assert.deepEqual(stalled, [], 'no echo within 2 s for these sizes over wss');
  });

  it('https GET on an app route', async () => {
    const r = await httpsGet(wssPort, '/hello', cert.ca);
    assert.equal(r.status, 200);
    assert.equal(r.body, 'hello');
    assert.equal(r.alpn, 'http/1.1');
  });
});

function httpsGet(port, p, ca) {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port, path: p, ca, ALPNProtocols: ['http/1.1'],
      agent: false, timeout: T }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, body, alpn: res.socket.alpnProtocol }));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timeout')));
  });
}
