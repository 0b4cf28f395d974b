'use strict';
// Headless Chromium for the browser tests: Debian's chromium driven by
// playwright-core (which downloads no browser of its own). Each browser gets a
// fresh profile in a temp dir; screenshots go to spec/artifacts/browser/.

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');
const { repoRoot } = require('./mwserver');

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const ARTIFACTS = path.join(repoRoot(), 'spec', 'artifacts', 'browser');

const open = new Set();

// Launches one browser and opens one page at `url`. Returns { page, errors, close }:
// `errors` collects uncaught page errors and console errors.
// `ignoreHTTPSErrors` accepts a test's self-signed certificate (wss://).
async function launch(url, { width = 1100, height = 700, ignoreHTTPSErrors = false } = {}) {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: install Debian's chromium (apt-get install chromium) or set CHROMIUM_BIN`);
  }
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, args: ARGS, viewport: { width, height }, ignoreHTTPSErrors,
  });
  const page = context.pages()[0] || await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  const b = {
    page, errors, context,
    async close() {
      open.delete(b);
      await context.close().catch(() => {});
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
  open.add(b);
  if (url) await page.goto(url);
  return b;
}

async function closeAll() {
  await Promise.all([...open].map((b) => b.close()));
}

async function screenshot(page, name) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file });
  return file;
}

module.exports = { launch, closeAll, screenshot, ARTIFACTS };
