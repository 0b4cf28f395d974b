'use strict';
// Start, reload and stop a real moonwire server for the Node client tests and
// the browser tests (spec/browser/mwserver.js re-exports this): an address to
// listen on (a restarted server can take the same port), ws:// and http://
// URLs, and SIGHUP reloads.
// Binary: MOONWIRE_BIN (default: build/moonwire under the repo root); repo
// root: MOONWIRE_ROOT (default: three levels above this file). Listens on
// 127.0.0.1:0 unless told otherwise and parses "listening on HOST:PORT".

const { spawn } = require('node:child_process');
const path = require('node:path');

const LISTEN_RE = /listening on ([\d.]+):(\d+)/;
// Reports from -DMW_SANITIZE=ON builds (ASan/LSan/UBSan); any of these is a bug.
const SANITIZER_RE = /ERROR: (AddressSanitizer|LeakSanitizer)|runtime error: |SUMMARY: \w+Sanitizer/;
const START_TIMEOUT_MS = 10000;
const TERM_GRACE_MS = 3000;

const live = new Set();
process.on('exit', () => {
  for (const child of live) {
    try { child.kill('SIGKILL'); } catch (_) { /* already gone */ }
  }
});

function repoRoot() {
  return process.env.MOONWIRE_ROOT || path.resolve(__dirname, '..', '..', '..');
}

function moonwireBin() {
  return process.env.MOONWIRE_BIN || path.join(repoRoot(), 'build', 'moonwire');
}

// opts.listen: HOST:PORT (default 127.0.0.1:0).
function startServer(app, flags = [], { timeoutMs = START_TIMEOUT_MS, listen = '127.0.0.1:0' } = {}) {
  const root = repoRoot();
  const appPath = path.isAbsolute(app) ? app : path.join(root, app);
  // Stop at once on SIGTERM unless a test asks for a graceful shutdown
  // (its own --shutdown-timeout comes later and wins).
  const argv = [appPath, '--listen', listen, '--shutdown-timeout', '0', ...flags.map(String)];
  const child = spawn(moonwireBin(), argv, { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] });
  live.add(child);

  const lines = [];
  let partial = '';
  let exited = false;
  const exitPromise = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      exited = true;
      live.delete(child);
      resolve({ code, signal });
    });
    // spawn failure (e.g. ENOENT): there will be no 'exit' event
    child.on('error', (err) => {
      if (child.pid !== undefined) return;
      exited = true;
      live.delete(child);
      resolve({ code: null, signal: null, error: err });
    });
  });

  const server = {
    child,
    host: null,
    port: null,
    argv,
    url: (p = '/') => `ws://${server.host}:${server.port}${p}`,
    httpUrl: (p = '/') => `http://${server.host}:${server.port}${p}`,
    log: () => lines.concat(partial ? [partial] : []).join('\n'),
    alive: () => !exited,
    neededSigkill: false,
    sanitizerReport() {
      const all = server.log().split('\n');
      const i = all.findIndex((l) => SANITIZER_RE.test(l));
      return i < 0 ? null : all.slice(Math.max(0, i - 2), i + 60).join('\n');
    },
    async waitForLog(re, ms = 5000) {
      const deadline = Date.now() + ms;
      for (;;) {
        const hit = lines.find((l) => re.test(l));
        if (hit) return hit;
        if (Date.now() > deadline) return null;
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    // SIGHUP, then waits for the reload's outcome line; returns it.
    async reload(ms = 5000) {
      const outcomes = () => lines.filter((l) => /reloaded |reload failed /.test(l)).length;
      const before = outcomes();
      child.kill('SIGHUP');
      const deadline = Date.now() + ms;
      while (outcomes() === before) {
        if (Date.now() > deadline) throw new Error(`no reload outcome logged after SIGHUP; log:\n${server.log()}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      return lines.filter((l) => /reloaded |reload failed /.test(l)).pop();
    },
    async stop() {
      if (!exited) {
        child.kill('SIGTERM');
        let t;
        const timer = new Promise((r) => { t = setTimeout(r, TERM_GRACE_MS, 'timeout'); });
        const winner = await Promise.race([exitPromise, timer]);
        clearTimeout(t);
        if (winner === 'timeout') {
          server.neededSigkill = true;
          child.kill('SIGKILL');
        }
      }
      return exitPromise;
    },
  };

  return new Promise((resolve, reject) => {
    let done = false;
    const fail = async (why) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      await server.stop();
      reject(new Error(`moonwire did not start (${why})\ncommand: ${moonwireBin()} ${argv.join(' ')}\nstderr:\n${server.log()}`));
    };
    const timer = setTimeout(() => fail(`no 'listening on' line within ${timeoutMs} ms`), timeoutMs);
    child.on('error', (err) => fail(String(err)));
    child.on('exit', (code, signal) => fail(`exited early: code=${code} signal=${signal}`));
    child.stderr.on('end', () => { if (partial) { lines.push(partial); partial = ''; } });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      partial += chunk;
      const parts = partial.split('\n');
      partial = parts.pop();
      for (const line of parts) {
        lines.push(line);
        const m = LISTEN_RE.exec(line);
        if (m && !done) {
          done = true;
          clearTimeout(timer);
          server.host = m[1];
          server.port = Number(m[2]);
          resolve(server);
        }
      }
    });
  });
}

module.exports = { startServer, repoRoot, moonwireBin };
