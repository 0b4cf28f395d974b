/* tls_deflate.c: the client's two optional layers. TLS (--tls): OpenSSL
 * under each connection's reads and writes, no certificate check (a
 * benchmark, not a client). permessage-deflate (--deflate, RFC 7692)
 * without context takeover: every data message sent is compressed, and
 * compressed ones received are inflated before they are verified. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <zlib.h>

#include "loadgen.h"

/* ---- TLS -------------------------------------------------------------- */

SSL_CTX *tls_client_ctx(void)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        die("SSL_CTX_new failed");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    /* out is compacted and grown between retries of a write */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* one read() for what the socket has, not a record header, then its body */
    SSL_CTX_set_read_ahead(ctx, 1);
    return ctx;
}

int tls_start(struct conn *c, SSL_CTX *ctx)
{
    c->ssl = SSL_new(ctx);
    if (!c->ssl || !SSL_set_fd(c->ssl, c->fd))
        return -1;
    SSL_set_connect_state(c->ssl);
    return 0;
}

int tls_handshake(struct conn *c, int *want_write, const char **why)
{
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1)
        return 1;
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        *want_write = e == SSL_ERROR_WANT_WRITE;
        return 0;
    }
    const char *reason = ERR_reason_error_string(ERR_peek_error());
    *why = reason ? reason : "connection closed";
    return -1;
}

int tls_pending(struct conn *c)
{
    return SSL_has_pending(c->ssl);
}

void tls_free(struct conn *c)
{
    SSL_free(c->ssl);
    c->ssl = NULL;
}

/* SSL_read's or SSL_write's result r as read(2) or write(2) would give it:
 * > 0 as it is, the peer's close_notify as 0 (reads only: a write then
 * fails), -1 with errno EAGAIN while OpenSSL waits for the socket, else EIO. */
static ssize_t tls_io_result(struct conn *c, int r, int reading)
{
    if (r > 0)
        return r;
    int e = SSL_get_error(c->ssl, r);
    if (reading && e == SSL_ERROR_ZERO_RETURN)
        return 0;
    errno = e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? EAGAIN : EIO;
    return -1;
}

ssize_t io_write(struct conn *c, const void *p, size_t n)
{
    if (!c->ssl)
        return write(c->fd, p, n);
    ERR_clear_error();
    return tls_io_result(c, SSL_write(c->ssl, p, n > INT32_MAX ? INT32_MAX : (int)n), 0);
}

ssize_t io_read(struct conn *c, void *p, size_t n)
{
    if (!c->ssl)
        return read(c->fd, p, n);
    ERR_clear_error();
    return tls_io_result(c, SSL_read(c->ssl, p, n > INT32_MAX ? INT32_MAX : (int)n), 1);
}

/* ---- permessage-deflate ----------------------------------------------- */

void deflate_init(struct worker *w)
{
    /* raw deflate (no zlib header or trailer), the default 32 KB window */
    int z = deflateInit2(&w->zc, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY);
    if (z != Z_OK || inflateInit2(&w->zd, -15) != Z_OK)
        die("zlib init failed");
}

static uint8_t *zbuf_reserve(struct worker *w, size_t n)
{
    if (w->zbuf_cap < n)
        w->zbuf = grow(w->zbuf, &w->zbuf_cap, n);
    return w->zbuf;
}

/* Compresses one message into w->zbuf (RFC 7692 7.2.1: the final empty
 * block's 00 00 ff ff removed); returns its length. */
size_t deflate_msg(struct worker *w, const uint8_t *data, size_t len)
{
    uint8_t *out = zbuf_reserve(w, deflateBound(&w->zc, len) + 16);
    deflateReset(&w->zc);
    w->zc.next_in = (Bytef *)data;
    w->zc.avail_in = (uInt)len;
    w->zc.next_out = out;
    w->zc.avail_out = (uInt)w->zbuf_cap;
    if (deflate(&w->zc, Z_SYNC_FLUSH) != Z_OK)
        die("deflate failed");
    size_t n = w->zbuf_cap - w->zc.avail_out;
    return n >= 4 ? n - 4 : n;
}

/* Inflates the compressed message in c->zin into w->zbuf; returns its
 * length, or -1 for data zlib refuses. */
long inflate_msg(struct worker *w, struct conn *c)
{
    static const uint8_t tail[4] = {0, 0, 0xff, 0xff};
    size_t cap = w->cfg->size + 64;
    uint8_t *out = zbuf_reserve(w, cap);
    inflateReset(&w->zd);
    w->zd.next_out = out;
    w->zd.avail_out = (uInt)cap;
    w->zd.next_in = c->zin;
    w->zd.avail_in = (uInt)c->zin_len;
    int r = inflate(&w->zd, Z_SYNC_FLUSH);
    if (r != Z_OK && r != Z_STREAM_END && r != Z_BUF_ERROR)
        return -1;
    w->zd.next_in = (Bytef *)tail;
    w->zd.avail_in = 4;
    r = inflate(&w->zd, Z_SYNC_FLUSH);
    if (r != Z_OK && r != Z_STREAM_END && r != Z_BUF_ERROR)
        return -1;
    return (long)(cap - w->zd.avail_out);
}

void zin_append(struct conn *c, const uint8_t *p, size_t n)
{
    if (c->zin_len + n > c->zin_cap)
        c->zin = grow(c->zin, &c->zin_cap, c->zin_len + n);
    memcpy(c->zin + c->zin_len, p, n);
    c->zin_len += n;
}
