/* The TLS transport (see tls.h): non-blocking OpenSSL on the libev loop.
 *
 * Reads run the handshake first, then decrypt as many records as fit.
 * Writes gather the queued iovecs into the worker's staging buffer and
 * encrypt them with one SSL_write: a corked flush becomes one run of
 * full-size records, not one record per message. After SSL_write wants to
 * wait, it is retried with the same length (the bytes are the same: the
 * queue keeps them until written), which OpenSSL requires. */
#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "tls.h"

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    /* RFC 7301: pick http/1.1 if offered; otherwise go on without ALPN. */
    for (unsigned int i = 0; i < inlen;) {
        unsigned int n = in[i];
        if (i + 1 + n > inlen)
            break;
        if (n == 8 && memcmp(in + i + 1, "http/1.1", 8) == 0) {
            *out = in + i + 1;
            *outlen = 8;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + n;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

static void ssl_error(char *err, size_t errlen, const char *what, const char *file)
{
    unsigned long e = ERR_get_error();
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    int lib = ERR_GET_LIB(e), reason = ERR_GET_REASON(e);
    /* Say the two common mistakes in words; OpenSSL's text otherwise. */
    if (lib == ERR_LIB_X509 && reason == X509_R_KEY_VALUES_MISMATCH)
        snprintf(err, errlen, "%s %s does not match the certificate", what, file);
    else if ((lib == ERR_LIB_PEM && reason == PEM_R_NO_START_LINE) ||
             (lib == ERR_LIB_OSSL_DECODER && reason == ERR_R_UNSUPPORTED))
        snprintf(err, errlen, "%s %s is not a PEM file of that kind (expected -----BEGIN ...-----)",
                 what, file);
    else
        snprintf(err, errlen, "%s %s: %s", what, file, e ? buf : strerror(errno));
    ERR_clear_error();
}

SSL_CTX *mw__tls_ctx_new(const char *cert, const char *key, char *err, size_t errlen)
{
    FILE *f = fopen(cert, "r");
    if (!f) {
        snprintf(err, errlen, "TLS certificate %s: %s", cert, strerror(errno));
        return NULL;
    }
    fclose(f);
    f = fopen(key, "r");
    if (!f) {
        snprintf(err, errlen, "TLS key %s: %s", key, strerror(errno));
        return NULL;
    }
    fclose(f);
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        ssl_error(err, errlen, "TLS:", "SSL_CTX_new");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20");
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    /* Read what the socket has in one read(), not a record header and then
     * its body: with small messages that was 3 reads per message (header,
     * body, and the EAGAIN that ended the loop); now it is one. Records it
     * read ahead are found with SSL_has_pending (see tls_read). */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        ssl_error(err, errlen, "TLS certificate", cert);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        ssl_error(err, errlen, "TLS key", key);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "TLS key %s does not match the certificate %s", key, cert);
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

void mw__tls_attach(mw_conn_t *c, SSL_CTX *ctx)
{
    c->ssl = SSL_new(ctx);
    if (!c->ssl) {
        mw_error("TLS: SSL_new failed");
        abort();
    }
    SSL_set_fd(c->ssl, c->io.fd);
    SSL_set_accept_state(c->ssl);
    c->tp = &mw__tls_transport;
}

void mw__tls_shutdown(mw_conn_t *c)
{
    if (c->ssl && !c->tls_failed && SSL_is_init_finished(c->ssl)) {
        ERR_clear_error();
        SSL_shutdown(c->ssl);
        ERR_clear_error();
    }
}

void mw__tls_free(mw_conn_t *c)
{
    if (!c->ssl)
        return;
    SSL_free(c->ssl);
    c->ssl = NULL;
}

/* Turns a failed SSL call into the transport's answer: -1 with errno
 * EAGAIN (wait; EV_WRITE armed if OpenSSL wants to write), 0 for a clean
 * end, or -1 with EPROTO. */
static ssize_t fail(mw_conn_t *c, int r)
{
    int e = SSL_get_error(c->ssl, r);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        c->tls_want_write = 1;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        c->tls_failed = 1;
        if (errno == 0)
            return 0;
        return -1;
    default: {
        c->tls_failed = 1;
        unsigned long err = ERR_peek_error();
        char buf[256];
        ERR_error_string_n(err, buf, sizeof buf);
        mw_debug("conn %llu: TLS: %s", (unsigned long long)c->id, buf);
        ERR_clear_error();
        errno = EPROTO;
        return -1;
    }
    }
}

static ssize_t tls_read(mw_conn_t *c, void *buf, size_t len)
{
    SSL *ssl = c->ssl;
    ERR_clear_error();
    if (!SSL_is_init_finished(ssl)) {
        int r = SSL_do_handshake(ssl);
        if (r != 1)
            return fail(c, r);
    }
    /* Decrypt as much as fits: OpenSSL may hold whole records the kernel
     * will never announce again. Stop when it holds nothing more instead
     * of asking until a read() says EAGAIN: the socket's next bytes are
     * announced by the loop. */
    size_t total = 0;
    c->tls_more = 0;
    while (total < len) {
        size_t got = 0;
        int r = SSL_read_ex(ssl, (char *)buf + total, len - total, &got);
        if (r == 1) {
            total += got;
            if (!SSL_has_pending(ssl))
                break;
            /* The buffer is full and more is held: the caller reads on. */
            c->tls_more = total == len;
            continue;
        }
        if (total > 0) {
            int e = SSL_get_error(ssl, r);
            if (e == SSL_ERROR_WANT_WRITE)
                c->tls_want_write = 1;
            ERR_clear_error();
            break;
        }
        return fail(c, r);
    }
    return (ssize_t)total;
}

static ssize_t tls_writev(mw_conn_t *c, const struct iovec *iov, int n)
{
    mw_worker_t *w = c->w;
    size_t cap = c->tls_pending ? c->tls_pending : w->tls_wbuf_cap;
    size_t len = 0;
    for (int i = 0; i < n && len < cap; i++) {
        size_t k = iov[i].iov_len < cap - len ? iov[i].iov_len : cap - len;
        memcpy(w->tls_wbuf + len, iov[i].iov_base, k);
        len += k;
    }
    ERR_clear_error();
    size_t written = 0;
    int r = SSL_write_ex(c->ssl, w->tls_wbuf, len, &written);
    if (r == 1) {
        c->tls_pending = 0;
        return (ssize_t)written;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
        c->tls_pending = (uint32_t)len;
        errno = EAGAIN;
        return -1;
    }
    fail(c, r);
    errno = EPIPE;
    return -1;
}

const mw_transport_t mw__tls_transport = {tls_read, tls_writev};
