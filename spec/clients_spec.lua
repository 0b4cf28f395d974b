-- Outbound I/O from handlers (issue 11): moonwire.tcp, moonwire.redis,
-- moonwire.http and moonwire.websocket, all against real upstreams this
-- spec starts: redis-server, Python's http.server (spec/upstreams/
-- http_upstream.py), python3-websockets (spec/upstreams/ws_upstream.py) and
-- moonwire itself (its HTTP routes, a WebSocket echo, TLS). The app under
-- test is spec/apps/clients.lua: each JSON request on /c runs one client
-- call in a handler and answers with its results.
--
-- The tests live in spec/support/clients_suite.lua; clients_shortio_spec.lua
-- runs them again with one byte per read and write on outbound sockets.

require("spec.support.clients_suite")({})
