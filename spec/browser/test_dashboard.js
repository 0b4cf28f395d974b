'use strict';
// apps/dashboard in headless Chromium: the page draws the samples a timer
// publishes (the sample counter rises and the canvas pixels change), two
// pages get identical samples under the same sequence numbers, and a page
// reconnects after a server restart on the same port.
// Screenshots: spec/artifacts/browser/dashboard-*.png.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { startServer } = require('./mwserver');
const { launch, closeAll, screenshot } = require('./browser');

let server, one, two;

before(async () => { server = await startServer('apps/dashboard/app.lua'); });
after(async () => {
  await closeAll();
  if (server) await server.stop();
});

const lastSeq = (page) => page.evaluate(() => window.dashboard.lastSeq);
const pixels = (page, id) => page.evaluate((i) => document.getElementById(i).toDataURL(), id);
async function waitSeq(page, atLeast, timeout = 5000) {
  await page.waitForFunction((n) => window.dashboard.lastSeq >= n, atLeast, { timeout });
}

test('the page draws live samples', async () => {
  one = await launch(server.httpUrl('/'));
  await one.page.waitForSelector('#status[data-state="open"]');
  await waitSeq(one.page, 2);
  const seq0 = await lastSeq(one.page);
  const canvas0 = await pixels(one.page, 'chart-rps');
  await waitSeq(one.page, seq0 + 3);
  const text = await one.page.textContent('#seq');
  assert.match(text, /^#\d+$/);
  assert.ok(Number(text.slice(1)) >= seq0 + 3, `counter ${text} after ${seq0}`);
  assert.notEqual(await pixels(one.page, 'chart-rps'), canvas0, 'the chart did not change');
  // The chart has ink on it: some pixels are not transparent.
  const inked = await one.page.evaluate(() => {
    const c = document.getElementById('chart-latency');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
    return n;
  });
  assert.ok(inked > 500, `only ${inked} pixels drawn`);
  await screenshot(one.page, 'dashboard');
  assert.deepEqual(one.errors, []);
});

test('two pages get the same samples with the same sequence numbers', async () => {
  two = await launch(server.httpUrl('/'));
  await two.page.waitForSelector('#status[data-state="open"]');
  const start = await lastSeq(one.page);
  await waitSeq(one.page, start + 4);
  await waitSeq(two.page, start + 4);
  const a = await one.page.evaluate(() => window.dashboard.samples);
  const b = await two.page.evaluate(() => window.dashboard.samples);
  const bySeq = new Map(b.map((s) => [s.seq, s]));
  const common = a.filter((s) => bySeq.has(s.seq));
  assert.ok(common.length >= 4, `only ${common.length} samples in common`);
  for (const s of common) assert.deepEqual(bySeq.get(s.seq), s);
  // Sequence numbers are consecutive on both pages (the history fills the start).
  for (const list of [a, b]) {
    for (let i = 1; i < list.length; i++) assert.equal(list[i].seq, list[i - 1].seq + 1);
  }
  // Both pages count as viewers in the samples taken after the second one joined.
  await waitSeq(one.page, (await lastSeq(one.page)) + 1);
  assert.equal(await one.page.evaluate(() => window.dashboard.samples.at(-1).viewers), 2);
  assert.equal(await one.page.textContent('#viewers'), '2');
  await screenshot(two.page, 'dashboard-second-page');
});

test('a page reconnects after a server restart and draws on', async () => {
  const port = server.port;
  await server.stop();
  await one.page.waitForSelector('#status:not([data-state="open"])');
  server = await startServer('apps/dashboard/app.lua', [], { listen: `127.0.0.1:${port}` });
  await one.page.waitForSelector('#status[data-state="open"]', { timeout: 10000 });
  // The new server counts from 1 again; the page starts its charts afresh.
  await one.page.waitForFunction(() => window.dashboard.samples.length >= 3 && window.dashboard.lastSeq < 20,
    null, { timeout: 5000 });
  await screenshot(one.page, 'dashboard-after-restart');
});
