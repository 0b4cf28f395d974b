// Peer reference for moonwire's benchmark: Node's ws (one process, one core).
//   /echo  every message comes back with its type
//   /sub   subscribes to the one topic
//   /pub   every message is sent to every subscriber
// Usage: node server.js --listen HOST:PORT. Logs "listening on HOST:PORT".
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const arg = process.argv.indexOf('--listen');
const [host, port] = (arg > 0 ? process.argv[arg + 1] : '127.0.0.1:0').split(':');

const server = http.createServer((req, res) => {
  res.writeHead(404);
  res.end();
});
const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 16 << 20 });
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
