-- The outbound clients suite (spec/support/clients_suite.lua) again with
-- MOONWIRE_TEST_SHORT_IO=1: outbound sockets read and write one byte per
-- call, with a wait between bytes on plain TCP, so every partial read and
-- write path of moonwire.tcp and every split point of the Redis, HTTP and
-- WebSocket parsers runs.

require("spec.support.clients_suite")({ short_io = true })
