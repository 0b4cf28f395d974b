// Peer reference for moonwire's benchmark: Node's ws (one process, one core).
//   /echo  every message comes back with its type
//   /sub   subscribes to the one topic
//   /pub   every message is sent to every subscriber
// Usage: node server.js --listen HOST:PORT [--tls-cert PEM --tls-key PEM] [--deflate].
// Logs "listening on HOST:PORT". --deflate: permessage-deflate without context
// takeover on every message (threshold 0), as moonwire's deflate variant runs.
'use strict';
const fs = require('fs');
const http = require('http');
const https = require('https');
const { WebSocketServer } = require('ws');

const opt = (name) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const [host, port] = (opt('--listen') || '127.0.0.1:0').split(':');
const cert = opt('--tls-cert');

const notFound = (req, res) => {
  res.writeHead(404);
  res.end();
};
const server = cert
  ? https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(opt('--tls-key')) }, notFound)
  : http.createServer(notFound);
const perMessageDeflate = process.argv.includes('--deflate')
  ? { threshold: 0, serverNoContextTakeover: true, clientNoContextTakeover: true }
  : false;
const wss = new WebSocketServer({ server, perMessageDeflate, maxPayload: 16 << 20 });
const subs = new Set();

wss.on('connection', (ws, req) => {
  const path = req.url.split('?')[0];
  if (path === '/echo') {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  } else if (path === '/sub') {
    subs.add(ws);
    ws.on('close', () => subs.delete(ws));
  } else if (path === '/pub') {
    ws.on('message', (data, isBinary) => {
      for (const s of subs) s.send(data, { binary: isBinary });
    });
  } else {
    ws.close(1008, 'unknown path');
  }
});

server.listen(Number(port), host, () => {
  const a = server.address();
  process.stderr.write(`node-ws: listening on ${a.address}:${a.port}\n`);
});
