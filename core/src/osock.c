/* Outbound connections and their pool (see osock.h). Non-blocking OpenSSL
 * in client mode: a call that wants to wait reports which direction, and
 * the same call is repeated later with the same bytes (SSL_write requires
 * that; SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER lets them move). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "osock.h"

#define READ_CHUNK 16384 /* first read buffer; it doubles as needed */

void mw__osock_init(mw_osock_t *s)
{
    memset(s, 0, sizeof *s);
    s->fd = -1;
}

static void ssl_close(SSL *ssl)
{
    if (!ssl)
        return;
    /* One non-blocking close_notify; we do not wait for the peer's. */
    (void)SSL_shutdown(ssl);
    ERR_clear_error();
    SSL_free(ssl);
}

void mw__osock_close(mw_osock_t *s)
{
    ssl_close(s->ssl);
    s->ssl = NULL;
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    free(s->rbuf);
    s->rbuf = NULL;
    s->rstart = s->rend = s->rcap = 0;
}

const char *mw__osock_strerror(int e, char *buf, size_t len)
{
    if (e == ETIMEDOUT)
        return "timeout";
    snprintf(buf, len, "%s", strerror(e));
    if (buf[0] >= 'A' && buf[0] <= 'Z')
        buf[0] = (char)(buf[0] - 'A' + 'a');
    return buf;
}

static int fail_errno(mw_osock_t *s, int e)
{
    const char *t = mw__osock_strerror(e, s->err, sizeof s->err);
    if (t != s->err)
        snprintf(s->err, sizeof s->err, "%s", t);
    return MW_OSOCK_ERROR;
}

static const char *tls_reason(unsigned long e)
{
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "error";
}

/* --- connecting ----------------------------------------------------------- */

int mw__osock_connect(mw_osock_t *s, struct addrinfo **next)
{
    int last = ECONNREFUSED;
    while (*next) {
        struct addrinfo *ai = *next;
        *next = ai->ai_next;
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            last = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        /* Connected at once (loopback can) or in progress: writable says
         * which, through mw__osock_connected. */
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 || errno == EINPROGRESS) {
            s->fd = fd;
            s->want = EV_WRITE;
            return 0;
        }
        last = errno;
        close(fd);
    }
    return fail_errno(s, last);
}

int mw__osock_connected(mw_osock_t *s)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    if (err == EINPROGRESS || err == EALREADY) {
        s->want = EV_WRITE;
        return MW_OSOCK_AGAIN;
    }
    return err ? fail_errno(s, err) : 0;
}

/* --- TLS ------------------------------------------------------------------ */

SSL_CTX *mw__osock_tls_ctx(const char *ca_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(err, errlen, "tls: cannot create a context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    int ok = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                     : SSL_CTX_set_default_verify_paths(ctx);
    ERR_clear_error();
    if (ok != 1 && ca_file) {
        snprintf(err, errlen, "tls: cannot load ca_file %s", ca_file);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static int is_ip(const char *s)
{
    unsigned char a[16];
    return inet_pton(AF_INET, s, a) == 1 || inet_pton(AF_INET6, s, a) == 1;
}

void mw__osock_tls_start(mw_osock_t *s, SSL_CTX *ctx, const char *name, int verify)
{
    s->ssl = SSL_new(ctx);
    s->verify = verify;
    SSL_set_fd(s->ssl, s->fd);
    SSL_set_connect_state(s->ssl);
    int ip = is_ip(name);
    if (!ip)
        SSL_set_tlsext_host_name(s->ssl, name); /* RFC 6066 3: SNI carries names, not IPs */
    if (verify) {
        SSL_set_verify(s->ssl, SSL_VERIFY_PEER, NULL);
        if (ip)
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s->ssl), name);
        else
            SSL_set1_host(s->ssl, name);
    }
}

/* After an SSL call returned r <= 0: AGAIN with want set, or ERROR with
 * err. what ("handshake failed") prefixes TLS-level failures; socket-level
 * ones of reads and writes read like plain TCP's ("connection reset by
 * peer"), and an EOF mid-record like a close ("closed"). */
static int tls_fail(mw_osock_t *s, int r, const char *what)
{
    int e = SSL_get_error(s->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        s->want = e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE;
        return MW_OSOCK_AGAIN;
    }
    unsigned long err = ERR_peek_error();
    char sys[96];
    const char *why = e == SSL_ERROR_SSL && err ? tls_reason(err)
                      : errno                   ? mw__osock_strerror(errno, sys, sizeof sys)
                                                : "closed";
    if (*what)
        snprintf(s->err, sizeof s->err, "tls: %s: %s", what, why);
    else if (e == SSL_ERROR_SSL && err)
        snprintf(s->err, sizeof s->err, "tls: %s", why);
    else
        snprintf(s->err, sizeof s->err, "%s", why);
    ERR_clear_error();
    return MW_OSOCK_ERROR;
}

int mw__osock_tls_handshake(mw_osock_t *s)
{
    ERR_clear_error();
    errno = 0;
    int r = SSL_connect(s->ssl);
    if (r == 1)
        return 0;
    int e = SSL_get_error(s->ssl, r);
    long v = SSL_get_verify_result(s->ssl);
    if (s->verify && v != X509_V_OK && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        /* Name the reason: "self-signed certificate", "hostname mismatch". */
        snprintf(s->err, sizeof s->err, "tls: certificate verify failed: %s",
                 X509_verify_cert_error_string(v));
        ERR_clear_error();
        return MW_OSOCK_ERROR;
    }
    return tls_fail(s, r, "handshake failed");
}

/* --- reading and writing -------------------------------------------------- */

/* Short I/O test mode: every other call on plain TCP says "wait", as a
 * congested socket would (TLS may hold decrypted bytes the fd no longer
 * shows as readable, so it only gets the one-byte sizes). */
static int short_turn(mw_osock_t *s, int want)
{
    if (!s->short_io || s->ssl)
        return 0;
    s->short_turn ^= want; /* one toggle per direction */
    if (s->short_turn & want)
        return 0;
    s->want = want;
    return 1;
}

ssize_t mw__osock_read(mw_osock_t *s)
{
    if (short_turn(s, EV_READ))
        return MW_OSOCK_AGAIN;
    if (s->rend == s->rcap) {
        if (s->rstart > 0) {
            memmove(s->rbuf, s->rbuf + s->rstart, s->rend - s->rstart);
            s->rend -= s->rstart;
            s->rstart = 0;
        }
        if (s->rend == s->rcap) {
            s->rcap = s->rcap ? s->rcap * 2 : READ_CHUNK;
            s->rbuf = mw__xrealloc(s->rbuf, s->rcap);
        }
    }
    size_t room = s->short_io ? 1 : s->rcap - s->rend;
    if (!s->ssl) {
        ssize_t n = recv(s->fd, s->rbuf + s->rend, room, 0);
        if (n >= 0) {
            s->rend += (size_t)n;
            return n;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            s->want = EV_READ;
            return MW_OSOCK_AGAIN;
        }
        return fail_errno(s, errno);
    }
    ERR_clear_error();
    errno = 0;
    int n = SSL_read(s->ssl, s->rbuf + s->rend, room > INT32_MAX ? INT32_MAX : (int)room);
    if (n > 0) {
        s->rend += (size_t)n;
        return n;
    }
    int e = SSL_get_error(s->ssl, n);
    /* A peer that closes without close_notify ends the stream too: HTTP
     * bodies delimited by the close do just that. */
    if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && errno == 0) ||
        (e == SSL_ERROR_SSL &&
         ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING)) {
        ERR_clear_error();
        return 0;
    }
    return tls_fail(s, n, "");
}

ssize_t mw__osock_write(mw_osock_t *s, const char *p, size_t len)
{
    if (short_turn(s, EV_WRITE))
        return MW_OSOCK_AGAIN;
    if (s->short_io && len > 1)
        len = 1;
    if (!s->ssl) {
        ssize_t n = send(s->fd, p, len, MSG_NOSIGNAL);
        if (n >= 0)
            return n;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            s->want = EV_WRITE;
            return MW_OSOCK_AGAIN;
        }
        return fail_errno(s, errno);
    }
    ERR_clear_error();
    errno = 0;
    int n = SSL_write(s->ssl, p, len > INT32_MAX ? INT32_MAX : (int)len);
    return n > 0 ? n : tls_fail(s, n, "");
}

/* --- the pool ------------------------------------------------------------- */

/* A connection resting between uses. */
typedef struct pooled {
    mw_opool_t *pool;
    char *key;
    int fd;
    SSL *ssl;
    unsigned reused;
    ev_io io;      /* readable while idle: the peer closed it (or misbehaves) */
    ev_timer idle; /* the keepalive timeout */
    struct pooled *prev, *next;
} pooled_t;

struct mw_opool {
    struct ev_loop *loop;
    pooled_t *head; /* most recently pooled first */
    size_t n;
};

mw_opool_t *mw__opool_new(struct ev_loop *loop)
{
    mw_opool_t *p = mw__xcalloc(1, sizeof *p);
    p->loop = loop;
    return p;
}

/* Takes e out of the pool; with close_it also closes its connection. */
static void pooled_free(pooled_t *e, int close_it)
{
    mw_opool_t *p = e->pool;
    ev_io_stop(p->loop, &e->io);
    ev_timer_stop(p->loop, &e->idle);
    if (e->prev)
        e->prev->next = e->next;
    else
        p->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    p->n--;
    if (close_it) {
        ssl_close(e->ssl);
        close(e->fd);
    }
    free(e->key);
    free(e);
}

static void pooled_readable(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    pooled_free((pooled_t *)((char *)w - offsetof(pooled_t, io)), 1);
}

static void pooled_expired(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    pooled_free((pooled_t *)((char *)w - offsetof(pooled_t, idle)), 1);
}

void mw__opool_free(mw_opool_t *p)
{
    if (!p)
        return;
    while (p->head)
        pooled_free(p->head, 1);
    free(p);
}

void mw__opool_put(mw_opool_t *p, const char *key, mw_osock_t *s, unsigned reused, double idle,
                   size_t max)
{
    size_t same = 0;
    pooled_t *oldest = NULL;
    for (pooled_t *e = p->head; e; e = e->next)
        if (strcmp(e->key, key) == 0) {
            same++;
            oldest = e;
        }
    if (oldest && same >= max)
        pooled_free(oldest, 1);
    pooled_t *e = mw__xcalloc(1, sizeof *e);
    size_t klen = strlen(key) + 1;
    e->pool = p;
    e->key = memcpy(mw__xmalloc(klen), key, klen);
    e->fd = s->fd;
    e->ssl = s->ssl;
    e->reused = reused;
    ev_io_init(&e->io, pooled_readable, e->fd, EV_READ);
    ev_io_start(p->loop, &e->io);
    ev_timer_init(&e->idle, pooled_expired, idle, 0.);
    ev_timer_start(p->loop, &e->idle);
    e->next = p->head;
    if (p->head)
        p->head->prev = e;
    p->head = e;
    p->n++;
    s->fd = -1;
    s->ssl = NULL;
    mw__osock_close(s);
}

int mw__opool_take(mw_opool_t *p, const char *key, mw_osock_t *s, unsigned *reused)
{
    pooled_t *e = p->head;
    while (e) {
        pooled_t *next = e->next;
        if (strcmp(e->key, key) == 0) {
            /* The readable watcher may not have run yet this iteration:
             * a last look, since EOF or stray bytes make it unusable. */
            char c;
            ssize_t n = recv(e->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                s->fd = e->fd;
                s->ssl = e->ssl;
                s->verify = 0;
                *reused = e->reused + 1;
                pooled_free(e, 0);
                return 1;
            }
            pooled_free(e, 1);
        }
        e = next;
    }
    return 0;
}

size_t mw__opool_size(const mw_opool_t *p)
{
    return p->n;
}
