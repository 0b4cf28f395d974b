/* TLS (OpenSSL 3) as a transport under the connection layer: the
 * WebSocket and HTTP code never see an SSL object.
 *
 * Defaults (documented in README, "TLS"): TLS 1.2 and 1.3 only; OpenSSL's
 * TLS 1.3 suites; for TLS 1.2 only ECDHE key exchange with AES-GCM or
 * ChaCha20-Poly1305; server cipher preference; no compression, no
 * renegotiation; ALPN "http/1.1". */
#ifndef MW_TLS_H
#define MW_TLS_H

#include <openssl/ssl.h>
#include <stddef.h>

#include "conn.h"

/* Builds a server context from a PEM certificate chain file and a PEM
 * private key file. Returns the context (owned), or NULL with one line in
 * err naming the file and what is wrong (missing, unreadable, not PEM, key
 * does not match the certificate). */
SSL_CTX *mw__tls_ctx_new(const char *cert, const char *key, char *err, size_t errlen);

/* Makes c a TLS connection (server side) over its socket. */
void mw__tls_attach(mw_conn_t *c, SSL_CTX *ctx);

/* Sends close_notify (best effort, never blocks). */
void mw__tls_shutdown(mw_conn_t *c);

/* Frees c's TLS state (at teardown). */
void mw__tls_free(mw_conn_t *c);

extern const mw_transport_t mw__tls_transport;

#endif
