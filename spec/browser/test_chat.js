'use strict';
// apps/chat in headless Chromium: two pages join a room, exchange messages and
// see each other in the member list; a third page gets the history on join;
// leaving is announced; the pages stay connected through a hot reload (SIGHUP,
// with an edited app) and reconnect and rejoin after the server is restarted on
// the same port. Screenshots: spec/artifacts/browser/chat-*.png.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { startServer, repoRoot } = require('./mwserver');
const { launch, closeAll, screenshot } = require('./browser');

const ROOM = 'lobby';
let dir, appFile, server, port, alice, bob;

// The app runs from a temp copy, so the hot reload test can edit it.
before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-chat-'));
  fs.cpSync(path.join(repoRoot(), 'apps', 'chat'), dir, { recursive: true });
  appFile = path.join(dir, 'app.lua');
  server = await startServer(appFile);
  port = server.port;
});

after(async () => {
  await closeAll();
  if (server) await server.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function join(page, nick, room = ROOM) {
  await page.fill('#nick', nick);
  await page.fill('#room', room);
  await page.click('#join');
  await page.waitForSelector('#status[data-state="open"]');
  await waitMembersInclude(page, [nick]);
}

const members = (page) => page.$$eval('#members li', (els) => els.map((e) => e.firstChild.textContent));
const texts = (page) => page.$$eval('#messages .message .text', (els) => els.map((e) => e.textContent));
const notices = (page) => page.$$eval('#messages .notice', (els) => els.map((e) => e.textContent));

async function waitMembers(page, want) {
  await page.waitForFunction((w) => JSON.stringify([...document.querySelectorAll('#members li')]
    .map((e) => e.firstChild.textContent)) === JSON.stringify(w), want, { timeout: 5000 })
    .catch(async () => assert.fail(`members: want ${JSON.stringify(want)}, have ${JSON.stringify(await members(page))}`));
}
async function waitMembersInclude(page, want) {
  await page.waitForFunction((w) => {
    const have = [...document.querySelectorAll('#members li')].map((e) => e.firstChild.textContent);
    return w.every((n) => have.includes(n));
  }, want, { timeout: 5000 });
}
async function waitText(page, text, timeout = 5000) {
  await page.waitForFunction((t) => [...document.querySelectorAll('#messages .message .text')]
    .some((e) => e.textContent === t), text, { timeout })
    .catch(async () => assert.fail(`no message ${JSON.stringify(text)}; have ${JSON.stringify(await texts(page))}`));
}
async function waitNotice(page, text, timeout = 5000) {
  await page.waitForFunction((t) => [...document.querySelectorAll('#messages .notice')]
    .some((e) => e.textContent.includes(t)), text, { timeout })
    .catch(async () => assert.fail(`no notice ${JSON.stringify(text)}; have ${JSON.stringify(await notices(page))}`));
}
async function say(page, text) {
  await page.fill('#text', text);
  await page.click('#send');
}

test('two pages join a room, see each other and exchange messages', async () => {
  alice = await launch(server.httpUrl('/'));
  await screenshot(alice.page, 'chat-join-form');
  await join(alice.page, 'alice');
  await waitMembers(alice.page, ['alice']);

  bob = await launch(server.httpUrl('/'));
  await join(bob.page, 'bob');
  await waitMembers(bob.page, ['alice', 'bob']);
  await waitMembers(alice.page, ['alice', 'bob']);
  await waitNotice(alice.page, 'bob joined');

  await say(alice.page, 'hello from alice');
  await waitText(bob.page, 'hello from alice');
  await waitText(alice.page, 'hello from alice');
  await say(bob.page, 'hi alice, bob here');
  await waitText(alice.page, 'hi alice, bob here');

  // Markup in a message is shown as text, never run.
  const evil = '<img src=x onerror="window.__xss=1"><b>bold</b>';
  await say(bob.page, evil);
  await waitText(alice.page, evil);
  assert.equal(await alice.page.evaluate(() => window.__xss), undefined);
  assert.equal(await alice.page.$$eval('#messages b, #messages img', (e) => e.length), 0);

  // The server refuses a message over 500 characters; the page says why.
  await alice.page.evaluate(() => window.chat.ws.send(JSON.stringify({ type: 'message', text: 'x'.repeat(501) })));
  await alice.page.waitForSelector('#send-error:not([hidden])');
  assert.match(await alice.page.textContent('#send-error'), /too long/);

  await screenshot(alice.page, 'chat-alice');
  await screenshot(bob.page, 'chat-bob');
  assert.deepEqual(alice.errors.filter((e) => !/WebSocket/.test(e)), []);
});

test('a third page gets the history on join, and its leaving is announced', async () => {
  const carol = await launch(server.httpUrl(`/?room=${ROOM}&nick=carol`));
  assert.equal(await carol.page.inputValue('#nick'), 'carol');
  await carol.page.click('#join');
  await carol.page.waitForSelector('#status[data-state="open"]');
  await waitText(carol.page, 'hello from alice');
  await waitText(carol.page, 'hi alice, bob here');
  assert.deepEqual((await texts(carol.page)).slice(0, 2), ['hello from alice', 'hi alice, bob here']);
  await waitMembers(carol.page, ['alice', 'bob', 'carol']);
  await waitMembers(alice.page, ['alice', 'bob', 'carol']);
  await screenshot(carol.page, 'chat-history-carol');

  await carol.page.click('#leave');
  await waitNotice(alice.page, 'carol left');
  await waitMembers(alice.page, ['alice', 'bob']);
  await waitMembers(bob.page, ['alice', 'bob']);
  await carol.close();
});

test('hot reload: the pages stay connected and run the new code', async () => {
  await alice.page.evaluate(() => { window.__ws = window.chat.ws; });
  await bob.page.evaluate(() => { window.__ws = window.chat.ws; });
  // The edit: messages may now have at most 40 characters.
  const src = fs.readFileSync(appFile, 'utf8');
  assert.match(src, /local MAX_TEXT = 500/);
  fs.writeFileSync(appFile, src.replace('local MAX_TEXT = 500', 'local MAX_TEXT = 40'));
  assert.match(await server.reload(), /reloaded .* \(SIGHUP\)/);

  await say(alice.page, 'after the reload');
  await waitText(bob.page, 'after the reload');
  await say(bob.page, 'this message is longer than forty characters, so it is refused');
  await bob.page.waitForSelector('#send-error:not([hidden])');
  assert.match(await bob.page.textContent('#send-error'), /at most 40 characters/);
  // Same sockets, same room state.
  assert.equal(await alice.page.evaluate(() => window.chat.ws === window.__ws), true);
  assert.equal(await bob.page.evaluate(() => window.chat.ws === window.__ws), true);
  await waitMembers(alice.page, ['alice', 'bob']);
  await screenshot(bob.page, 'chat-after-reload');
});

test('server restart: the pages reconnect, rejoin and chat on', async () => {
  await server.stop();
  await alice.page.waitForSelector('#status:not([data-state="open"])');
  await waitNotice(alice.page, 'Connection lost');
  server = await startServer(appFile, [], { listen: `127.0.0.1:${port}` });

  for (const b of [alice, bob]) {
    await b.page.waitForSelector('#status[data-state="open"]', { timeout: 10000 });
    await waitNotice(b.page, 'The server restarted', 10000);
    await waitMembers(b.page, ['alice', 'bob']);
  }
  // Messages from before the restart stay on the page.
  await waitText(bob.page, 'hello from alice');
  await say(bob.page, 'bob is back');
  await waitText(alice.page, 'bob is back');
  await say(alice.page, 'so is alice');
  await waitText(bob.page, 'so is alice');
  await screenshot(alice.page, 'chat-after-restart');
  assert.deepEqual(alice.errors.filter((e) => !/WebSocket|ERR_CONNECTION_REFUSED/.test(e)), []);
});
