'use strict';
// apps/chat over TLS in headless Chromium: the page, loaded over https://,
// opens its WebSocket over wss:// (issue 6's browser check). The certificate
// is self-signed, made here with the openssl CLI.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { startServer } = require('./mwserver');
const { launch, closeAll, screenshot } = require('./browser');

let dir, server, tlsPort;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-chat-wss-'));
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
    '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=127.0.0.1',
    '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
  server = await startServer('apps/chat/app.lua',
    ['--tls-listen', '127.0.0.1:0', '--tls-cert', cert, '--tls-key', key]);
  const line = await server.waitForLog(/TLS listening on [\d.]+:(\d+)/);
  tlsPort = Number(line.match(/TLS listening on [\d.]+:(\d+)/)[1]);
});

after(async () => {
  await closeAll();
  if (server) await server.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function join(page, nick) {
  await page.fill('#nick', nick);
  await page.fill('#room', 'tls');
  await page.click('#join');
  await page.waitForSelector('#status[data-state="open"]');
}

test('two pages chat over wss:// from an https:// page', async () => {
  const url = `https://127.0.0.1:${tlsPort}/`;
  const alice = await launch(url, { ignoreHTTPSErrors: true });
  const bob = await launch(url, { ignoreHTTPSErrors: true });
  await join(alice.page, 'alice');
  await join(bob.page, 'bob');
  // The page chose wss:// because it was loaded over https://.
  assert.match(await alice.page.evaluate(() => window.chat.ws.url), /^wss:\/\/127\.0\.0\.1:\d+\//);
  await bob.page.fill('#text', 'over tls');
  await bob.page.click('#send');
  await alice.page.waitForFunction(() => [...document.querySelectorAll('#messages .message .text')]
    .some((e) => e.textContent === 'over tls'), null, { timeout: 5000 });
  await screenshot(alice.page, 'chat-wss');
  assert.deepEqual(alice.errors.filter((e) => !/WebSocket/.test(e)), []);
});
