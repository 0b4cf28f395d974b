/* The server side of the WebSocket opening handshake (RFC 6455 4.2):
 * validating an upgrade request and computing Sec-WebSocket-Accept. */
#ifndef MW_WS_HANDSHAKE_H
#define MW_WS_HANDSHAKE_H

#include <stddef.h>

#include "http.h"

/* Checks that req is a valid WebSocket upgrade (RFC 6455 4.2.1): method GET,
 * HTTP/1.1 or later, a Host header, Upgrade containing the token
 * "websocket", Connection containing the token "upgrade",
 * Sec-WebSocket-Version 13 and Sec-WebSocket-Key the base64 encoding of 16
 * bytes; each of Host, Upgrade, Sec-WebSocket-Key and Sec-WebSocket-Version
 * must appear once.
 * Returns 0 and sets *key (borrowing req's buffer) when the request is valid.
 * Otherwise returns the HTTP status to answer and sets *why: 405 when the
 * method is not GET, 426 when Upgrade/Connection do not ask for websocket
 * (the response must carry "Upgrade: websocket") or when the version is not
 * 13 (the response must carry "Sec-WebSocket-Version: 13"), 400 for any
 * other fault. *why is a static string naming the fault. */
int mw__ws_handshake_check(const mw_http_request_t *req, mw_slice_t *key, const char **why);

/* True when the failed check with this status must advertise
 * "Sec-WebSocket-Version: 13" (a missing or unsupported version). */
int mw__ws_handshake_wants_version(const mw_http_request_t *req);

/* Writes base64(SHA-1(key || "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")), the
 * Sec-WebSocket-Accept value, into out as 28 characters and a NUL. */
void mw__ws_accept_key(const char *key, size_t keylen, char out[29]);

/* Decodes standard base64 (with padding, no whitespace) into out (capacity
 * outcap). Returns the decoded length, or -1 if src is not valid base64 or
 * does not fit. */
long mw__base64_decode(const char *src, size_t len, unsigned char *out, size_t outcap);

/* Encodes len bytes as standard base64 with padding into out, which must
 * hold 4 * ((len + 2) / 3) + 1 bytes. Returns the encoded length. */
size_t mw__base64_encode(const unsigned char *src, size_t len, char *out);

#endif
