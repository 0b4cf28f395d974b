'use strict';
// moonwire's application layer driven by independent Node clients: `ws` (npm, ^8)
// and node:http. A smaller cross-check of test_python_app_layer.py: upgrade-hook
// refusals, subprotocol negotiation, pub/sub fan-out, HTTP keep-alive.
//
//   (cd spec/clients/node && npm ci)       # once; node_modules is gitignored
//   node --test spec/clients/node/test_node_app_layer.js      # from the repo root
//
// MOONWIRE_BIN / MOONWIRE_ROOT select the binary and repo root (see mwserver.js).

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const path = require('node:path');
const { startServer } = require('./mwserver');

let WebSocket;
try {
  WebSocket = require(path.join(__dirname, 'node_modules', 'ws'));
} catch (err) {
  throw new Error(`cannot load 'ws' (${err.message}); run \`npm ci\` in ${__dirname}`);
}

const APPS = path.join(__dirname, '..', 'apps');
const SPEC_APPS = path.join(__dirname, '..', '..', 'apps'); // shared with the busted specs
const UPGRADE_APP = path.join(SPEC_APPS, 'upgrade.lua');
const PUBSUB_APP = path.join(APPS, 'app_pubsub.lua');
const HTTP_APP = path.join(SPEC_APPS, 'http.lua');
const T = 10000;

// Stops a suite's server; fails if it crashed, needed SIGKILL or a sanitizer spoke.
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

function withTimeout(promise, ms, what) {
  let t;
  return Promise.race([
    promise.finally(() => clearTimeout(t)),
    new Promise((_, reject) => { t = setTimeout(() => reject(new Error(`${what}: timeout after ${ms} ms`)), ms); }),
  ]);
}

// A ws client whose messages are queued so none is lost between awaits.
function open(url, protocols, opts = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, protocols, { handshakeTimeout: T, perMessageDeflate: false, ...opts });
    const queue = [];
    const waiters = [];
    ws.on('message', (data, isBinary) => {
      const m = { text: isBinary ? null : data.toString('utf8'), data, isBinary };
      const w = waiters.shift();
      if (w) w(m); else queue.push(m);
    });
    ws.next = (ms = T) => withTimeout(new Promise((res) => {
      if (queue.length) res(queue.shift()); else waiters.push(res);
    }), ms, `message on ${url}`);
    ws.nextText = async (ms) => {
      const m = await ws.next(ms);
      assert.equal(m.isBinary, false, 'expected text');
      return m.text;
    };
    ws.once('open', () => { ws.removeListener('error', reject); ws.on('error', () => {}); resolve(ws); });
    ws.once('error', reject);
  });
}

// Opens a ws connection that the server refuses; resolves with status, headers and body.
function refused(url) {
  return withTimeout(new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { handshakeTimeout: T });
    ws.on('open', () => reject(new Error(`${url} was accepted`)));
    ws.on('error', () => {}); // ws emits an error after we abort below
    ws.on('unexpected-response', (req, res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') });
        req.destroy();
      });
    });
  }), T, `refusal of ${url}`);
}

function request(server, agent, method, urlPath, body) {
  return withTimeout(new Promise((resolve, reject) => {
    const req = http.request({ host: server.host, port: server.port, method, path: urlPath, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({
        status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8'),
        reusedSocket: req.reusedSocket, localPort: res.socket && res.socket.localPort,
      }));
    });
    req.on('error', reject);
    if (body !== undefined) req.end(body); else req.end();
  }), T, `${method} ${urlPath}`);
}

// ---------------------------------------------------------------------------
describe('upgrade hook and subprotocols', () => {
  let server;
  const sockets = [];
  before(async () => { server = await startServer(UPGRADE_APP); });
  after(async () => {
    for (const ws of sockets) ws.terminate();
    await stopAndCheck(server);
  });

  it('refuses with the hook status (unexpected-response)', async () => {
    const r = await refused(server.url('/refuse_status'));
    assert.equal(r.status, 401);
    assert.equal(r.headers.connection, 'close');
  });

  it('refuses with status, body and headers', async () => {
    const r = await refused(server.url('/refuse_full?who=node'));
    assert.equal(r.status, 429);
    assert.equal(r.body, 'slow down node\n');
    assert.equal(r.headers['retry-after'], '7');
    assert.equal(r.headers['x-why'], 'rate limited');
    assert.equal(r.headers['content-length'], String(Buffer.byteLength(r.body)));
  });

  it('false refuses with 403; an error in the hook gives 500', async () => {
    assert.equal((await refused(server.url('/refuse_false'))).status, 403);
    const r = await refused(server.url('/hook_error'));
    assert.equal(r.status, 500);
    assert.match(r.body, /upgrade hook failed/);
  });

  it('origin mismatch is refused with 403 before the hook', async () => {
    const r = await withTimeout(new Promise((resolve, reject) => {
      const ws = new WebSocket(server.url('/origin_default'),
        { origin: 'http://evil.example', headers: { 'X-Tag': 'node-evil' } });
      ws.on('open', () => reject(new Error('accepted')));
      ws.on('error', () => {});
      ws.on('unexpected-response', (req, res) => { resolve(res.statusCode); req.destroy(); });
    }), T, 'origin refusal');
    assert.equal(r, 403);
    const ok = await open(server.url('/origin_default'), undefined, { headers: { 'X-Tag': 'node-ok' } });
    sockets.push(ok);
    assert.equal(await ok.nextText(), 'open');
    assert.ok(await server.waitForLog(/HOOK RAN \/origin_default tag=node-ok/));
    assert.doesNotMatch(server.log(), /tag=node-evil/);
  });

  it('accepts with a table that becomes ws.data', async () => {
    const ws = await open(server.url('/accept_table?user=nodey'));
    sockets.push(ws);
    assert.equal(await ws.nextText(), '{["n"]=42,["user"]="nodey"}'); // a Lua literal, sorted keys
  });

  it('negotiates the server-preferred subprotocol', async () => {
    for (const [offered, chosen] of [[['chat.v1', 'chat.v2'], 'chat.v2'], [['x', 'chat.v1'], 'chat.v1']]) {
      const ws = await open(server.url('/proto'), offered);
      sockets.push(ws);
      assert.equal(ws.protocol, chosen, `offered ${offered}`);
      assert.equal(await ws.nextText(), 'open');
    }
    const none = await open(server.url('/proto'));
    sockets.push(none);
    assert.equal(none.protocol, '');
    // offered but none acceptable: the server sends no header, which ws rejects
    await assert.rejects(open(server.url('/proto'), ['other']), /Server sent no subprotocol/);
    // the hook overrides the route's choice
    const ov = await open(server.url('/proto_hook'), ['chat.v2', 'chat.v1']);
    sockets.push(ov);
    assert.equal(ov.protocol, 'chat.v1');
    assert.equal(await ov.nextText(), 'preselected=chat.v2');
  });

  it('route params are percent-decoded; exact paths win', async () => {
    const a = await open(server.url('/room/r%C3%B6om%201'));
    const b = await open(server.url('/room/lobby'));
    sockets.push(a, b);
    assert.equal(await a.nextText(), 'param {["name"]="r\u00f6om 1"}');
    assert.equal(await b.nextText(), 'exact {}');
    assert.equal((await refused(server.url('/room/a/b'))).status, 404);
  });
});

// ---------------------------------------------------------------------------
describe('pub/sub fan-out', () => {
  let server;
  const subs = [];
  before(async () => { server = await startServer(PUBSUB_APP); });
  after(async () => {
    for (const ws of subs) ws.terminate();
    await stopAndCheck(server);
  });

  it('delivers every publish to 200 subscribers, in order, exactly once', async () => {
    const N = 200;
    const M = 50;
    for (let i = 0; i < N; i += 50) {
      const batch = await Promise.all(Array.from({ length: 50 }, () => open(server.url('/sub?topic=nfan'))));
      subs.push(...batch);
    }
    const firsts = await Promise.all(subs.map((ws) => ws.nextText()));
    assert.deepEqual(new Set(firsts), new Set(['subscribed true']));
    const ctl = await open(server.url('/sub'));
    subs.push(ctl);
    assert.equal(await ctl.nextText(), 'subscribed none');
    ctl.send('count nfan');
    assert.equal(await ctl.nextText(), `count ${N}`);
    ctl.send(`burst nfan ${M}`);
    assert.equal(await ctl.nextText(), `burst ${N * M}`);
    const want = Array.from({ length: M }, (_, i) => `nfan ${i + 1}`);
    const got = await Promise.all(subs.slice(0, N).map(async (ws) => {
      const out = [];
      for (let i = 0; i < M; i++) out.push(await ws.nextText());
      return out;
    }));
    got.forEach((g, i) => assert.deepEqual(g, want, `subscriber ${i}`));
    // nothing extra: the next message each one sees answers its own command
    const tails = await Promise.all(subs.slice(0, N).map(async (ws) => {
      ws.send('count nfan');
      return ws.nextText();
    }));
    assert.deepEqual(new Set(tails), new Set([`count ${N}`]));
    // a binary publish arrives as binary
    ctl.send('pubbin nfan 00ff');
    assert.equal(await ctl.nextText(), `pubbin ${N}`);
    const bins = await Promise.all(subs.slice(0, N).map((ws) => ws.next()));
    for (const m of bins) {
      assert.equal(m.isBinary, true);
      assert.deepEqual([...m.data], [0, 255]);
    }
    // subscriptions end with the connections
    for (const ws of subs.slice(0, 100)) ws.terminate();
    const deadline = Date.now() + 5000;
    let count;
    for (;;) {
      ctl.send('count nfan');
      count = await ctl.nextText();
      if (count === 'count 100' || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(count, 'count 100');
  });
});

// ---------------------------------------------------------------------------
describe('plain HTTP', () => {
  let server;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  before(async () => { server = await startServer(HTTP_APP, ['--max-body-size', '1000']); });
  after(async () => {
    agent.destroy();
    await stopAndCheck(server);
  });

  it('keep-alive: GET and POST on one connection', async () => {
    const a = await request(server, agent, 'GET', '/hello?name=n%C3%B6de');
    assert.equal(a.status, 200);
    assert.equal(a.body, 'hello n\u00f6de qs=name=n%C3%B6de');
    assert.equal(a.headers['content-type'], 'text/plain; charset=utf-8');
    const fits = 'x'.repeat(998) + '\u00e9'; // 1000 bytes: exactly --max-body-size
    const over = 'x'.repeat(999) + '\u00e9'; // 1001 bytes
    const b = await request(server, agent, 'POST', '/echo', fits);
    assert.equal(b.status, 200);
    assert.equal(b.body, fits);
    assert.equal(b.headers['x-body-length'], '1000');
    assert.equal(b.reusedSocket, true, 'second request did not reuse the connection');
    assert.equal(b.localPort, a.localPort);
    const c = await request(server, agent, 'GET', '/users/7/posts/8');
    assert.equal(c.body, 'user=7 post=8');
    assert.equal(c.reusedSocket, true);
    const d = await request(server, agent, 'POST', '/echo', over);
    assert.equal(d.status, 413);
  });

  it('404, 405 with Allow, 426 on a websocket path, HEAD', async () => {
    const fresh = new http.Agent({ keepAlive: false });
    try {
      assert.equal((await request(server, fresh, 'GET', '/nope')).status, 404);
      const r = await request(server, fresh, 'DELETE', '/multi');
      assert.equal(r.status, 405);
      assert.equal(r.headers.allow, 'GET, HEAD, POST');
      assert.equal((await request(server, fresh, 'GET', '/ws')).status, 426);
      const h = await request(server, fresh, 'HEAD', '/hello?name=z');
      assert.equal(h.status, 200);
      assert.equal(h.body, '');
      assert.equal(h.headers['content-length'], String('hello z qs=name=z'.length));
    } finally {
      fresh.destroy();
    }
  });
});
