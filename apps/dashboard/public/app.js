// moonwire dashboard page: plain JavaScript and <canvas>, no libraries, no build step.
'use strict';

(function () {
  const KEEP = 120; // samples on the charts (one minute at 2 per second)
  const $ = (id) => document.getElementById(id);
  const charts = [...document.querySelectorAll('canvas[data-key]')];

  // Everything the page knows, also for the console and the browser tests.
  const dash = { samples: [], received: 0, lastSeq: 0, server: null, ws: null, attempts: 0, interval: 0.5 };
  window.dashboard = dash;

  function setStatus(state, text) {
    const s = $('status');
    s.dataset.state = state;
    s.textContent = text;
  }

  const fmt = (x, digits = 0) => (x === null || x === undefined ? '–'
    : Number(x).toLocaleString(undefined, { minimumFractionDigits: digits, maximumFractionDigits: digits }));

  function showLast() {
    const s = dash.samples[dash.samples.length - 1];
    if (!s) return;
    $('seq').textContent = '#' + s.seq;
    $('received').textContent = dash.received + ' received';
    $('viewers').textContent = fmt(s.viewers);
    $('rps').textContent = fmt(s.rps);
    $('latency').textContent = fmt(s.latency, 1);
    $('load').textContent = fmt(s.load, 2);
    $('rss').textContent = s.rss_mb === undefined ? '–' : fmt(s.rss_mb, 1) + ' MB';
    $('lua').textContent = 'resident · Lua ' + fmt(s.lua_kb) + ' KB';
  }

  // Picks 3-5 round gridline values covering [lo, hi].
  function ticks(lo, hi) {
    const span = hi - lo || 1;
    const raw = span / 4;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(v);
    return { out, step };
  }

  function draw(canvas) {
    const key = canvas.dataset.key;
    const color = canvas.dataset.color;
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const g = canvas.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);

    const pts = dash.samples.filter((s) => typeof s[key] === 'number');
    const pad = { l: 46, r: 12, t: 10, b: 22 };
    const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
    g.font = '11px system-ui, sans-serif';
    g.fillStyle = '#8a93a6';
    if (pts.length < 2) {
      g.fillText('waiting for data…', pad.l, pad.t + ph / 2);
      return;
    }
    let lo = Math.min(...pts.map((s) => s[key]));
    let hi = Math.max(...pts.map((s) => s[key]));
    const margin = (hi - lo) * 0.15 || Math.abs(hi) * 0.1 || 1;
    lo = Math.max(0, lo - margin);
    hi += margin;
    const { out: grid, step } = ticks(lo, hi);
    lo = Math.min(lo, grid[0]);
    hi = Math.max(hi, grid[grid.length - 1]);
    // The x axis spans the last KEEP samples; while fewer have arrived, it
    // grows with them (from 20), so a fresh page shows a line, not a sliver.
    const span = Math.min(KEEP, Math.max(20, pts.length)) - 1;
    const last = pts[pts.length - 1].seq;
    const x = (seq) => pad.l + pw * (1 - (last - seq) / span);
    const y = (v) => pad.t + ph * (1 - (v - lo) / (hi - lo));

    // Gridlines and their values.
    g.strokeStyle = '#eceef3';
    g.lineWidth = 1;
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    for (const v of grid) {
      const yy = Math.round(y(v)) + 0.5;
      g.beginPath(); g.moveTo(pad.l, yy); g.lineTo(w - pad.r, yy); g.stroke();
      g.fillText(v.toFixed(step < 1 ? (step < 0.1 ? 2 : 1) : 0), pad.l - 6, yy);
    }
    g.textAlign = 'left';
    g.textBaseline = 'alphabetic';
    g.fillText('−' + Math.round(span * dash.interval) + ' s', pad.l, h - 6);
    g.textAlign = 'right';
    g.fillText('now', w - pad.r, h - 6);

    // The area under the line, then the line, then the last point.
    g.save();
    g.beginPath(); g.rect(pad.l, pad.t, pw, ph); g.clip();
    g.beginPath();
    pts.forEach((s, i) => (i ? g.lineTo(x(s.seq), y(s[key])) : g.moveTo(x(s.seq), y(s[key]))));
    g.lineWidth = 2;
    g.lineJoin = 'round';
    g.strokeStyle = color;
    g.stroke();
    g.lineTo(x(last), pad.t + ph);
    g.lineTo(x(pts[0].seq), pad.t + ph);
    g.closePath();
    const fill = g.createLinearGradient(0, pad.t, 0, pad.t + ph);
    fill.addColorStop(0, color + '40');
    fill.addColorStop(1, color + '05');
    g.fillStyle = fill;
    g.fill();
    g.restore();
    g.beginPath();
    g.arc(x(last), y(pts[pts.length - 1][key]), 3.5, 0, 2 * Math.PI);
    g.fillStyle = color;
    g.fill();
  }

  let pending = false;
  function redraw() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; showLast(); charts.forEach(draw); });
  }

  function add(s) {
    if (s.seq <= dash.lastSeq) return; // already have it (history after a reconnect)
    dash.samples.push(s);
    if (dash.samples.length > KEEP) dash.samples.splice(0, dash.samples.length - KEEP);
    dash.lastSeq = s.seq;
    dash.received += 1;
  }

  function onData(ev) {
    let m;
    try { m = JSON.parse(ev.data); } catch (_) { return; }
    if (m.type === 'hello') {
      if (dash.server && m.server !== dash.server) { dash.samples = []; dash.lastSeq = 0; } // a new server
      dash.server = m.server;
      if (m.interval > 0) dash.interval = m.interval;
      (Array.isArray(m.history) ? m.history : []).forEach(add);
    } else if (m.type === 'sample') {
      add(m);
    }
    redraw();
  }

  function connect() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    setStatus('connecting', dash.attempts ? 'reconnecting…' : 'connecting…');
    const ws = new WebSocket(proto + '//' + location.host + '/live');
    dash.ws = ws;
    ws.onopen = () => { dash.attempts = 0; setStatus('open', 'live'); };
    ws.onmessage = onData;
    ws.onclose = () => {
      if (dash.ws !== ws) return;
      dash.ws = null;
      // Exponential backoff with jitter: 0.25 s, 0.5 s, 1 s, ... up to 5 s.
      const base = Math.min(5000, 250 * 2 ** dash.attempts);
      const delay = Math.round(base / 2 + Math.random() * base / 2);
      dash.attempts += 1;
      setStatus('waiting', 'reconnecting in ' + (delay / 1000).toFixed(1) + ' s');
      setTimeout(connect, delay);
    };
  }

  window.addEventListener('resize', redraw);
  charts.forEach(draw);
  connect();
}());
