/* Outbound TCP for handlers: moonwire.tcp(), a cosocket in the manner of
 * OpenResty's ngx.socket.tcp. Every call that must wait (resolve, connect,
 * TLS handshake, send, receive) arms an ev_io and an ev_timer on the
 * worker's loop and yields the calling coroutine; the loop resumes it with
 * the answer, while every other connection runs on.
 *
 * A socket is a userdata ("moonwire.tcp") that embeds its watchers. While a
 * call waits, a registry ref anchors it so the collector never frees a
 * watcher libev holds; otherwise __gc closes the fd. Reads are buffered
 * here in C, bounded by max_line ("*l") and max_receive (n, "*a"), so a
 * peer cannot grow a worker's memory without limit. setkeepalive() hands
 * the fd (and its TLS session) to a per-worker pool keyed by host, port and
 * TLS settings; an idle pooled fd that turns readable (the peer closed it)
 * is dropped at once, and a last MSG_PEEK check runs on reuse.
 *
 * Host names are resolved on the worker's resolver thread (resolve.h); IP
 * literals are parsed on the spot. Errors are short stable strings:
 * "timeout", "closed", "connection refused", "no such host: NAME",
 * "tls: certificate verify failed: REASON", "line too long", ... */
#include <arpa/inet.h>
#include <errno.h>
#include <lauxlib.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bind.h"
#include "log.h"
#include "resolve.h"

#define TCP_MT "moonwire.tcp"

/* Defaults (docs/clients.md lists them). */
#define TCP_TIMEOUT_MS   60000       /* each of connect, send, read */
#define TCP_MAX_LINE     65536       /* receive("*l") */
#define TCP_MAX_RECEIVE  (16u << 20) /* receive(n), receive("*a") */
#define TCP_POOL_IDLE_MS 60000       /* setkeepalive() idle timeout */
#define TCP_POOL_SIZE    30          /* setkeepalive() per-key pool size */
#define TCP_READ_CHUNK   16384

enum { ST_NEW, ST_RESOLVING, ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_CLOSED };
enum { OP_NONE, OP_CONNECT, OP_SEND, OP_RECEIVE };
enum { RECV_LINE, RECV_ALL, RECV_BYTES };
enum { T_CONNECT, T_SEND, T_READ };

/* A connection resting in a pool between uses. */
typedef struct mw_pooled {
    struct mw_tcp_state *T;
    char *key;
    int fd;
    SSL *ssl;
    unsigned reused;
    ev_io io;      /* readable while idle: the peer closed it (or misbehaves) */
    ev_timer idle; /* closes it after the keepalive timeout */
    struct mw_pooled *prev, *next;
} mw_pooled_t;

typedef struct mw_tcp mw_tcp_t;

/* Per worker: the resolver, the default TLS context, the pool, every live
 * socket (so shutdown can disarm them all). */
typedef struct mw_tcp_state {
    mw_resolver_t *resolver;
    SSL_CTX *ctx; /* verification against the system's CA store */
    mw_pooled_t *pool;
    mw_tcp_t *live;
} mw_tcp_state_t;

struct mw_tcp {
    mw_lua_t *S;
    mw_tcp_state_t *T; /* NULL once the state closed (then only __gc comes) */
    int fd;
    SSL *ssl;
    int state, op;
    mw_co_t *waiter; /* the coroutine suspended in a call on this socket */
    int self_ref;    /* anchors the userdata while waiter is set */
    ev_io io;
    ev_timer timer;
    double timeout[3]; /* seconds: connect, send, read */
    /* connecting */
    mw_resolve_req_t *rq;
    struct addrinfo *ai_list, *ai_next;
    int gai_err, sys_err;
    char *host, *server_name, *pool_key;
    int tls, verify;
    SSL_CTX *ctx; /* a context of its own (ca_file), or NULL */
    /* reading: bytes rbuf[rstart..rend) are received and not yet returned */
    char *rbuf;
    size_t rstart, rend, rcap;
    size_t max_line, max_receive;
    int rmode;
    size_t rwant;
    /* sending: wbuf[wpos..wlen) is left to send */
    char *wbuf;
    size_t wlen, wpos, wtotal;
    unsigned reused;
    int want;         /* EV_READ / EV_WRITE the waiting call needs */
    int linked;       /* in T->live */
    char errbuf[192]; /* the text of the last error */
    mw_tcp_t *prev, *next;
};

/* --- small helpers ---------------------------------------------------------- */

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(mw__xmalloc(n), s, n);
}

/* Pushes "nil, msg" [-0, +2, m]. Returns 2. */
static int push_fail(lua_State *L, const char *msg)
{
    lua_pushnil(L);
    lua_pushstring(L, msg);
    return 2;
}

/* strerror with a lowercase first letter ("connection refused"). */
static const char *errno_text(int e, char *buf, size_t len)
{
    if (e == ETIMEDOUT)
        return "timeout";
    snprintf(buf, len, "%s", strerror(e));
    if (buf[0] >= 'A' && buf[0] <= 'Z')
        buf[0] = (char)(buf[0] - 'A' + 'a');
    return buf;
}

static const char *tls_reason(unsigned long e)
{
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "error";
}

static mw_tcp_state_t *tcp_state(mw_lua_t *S)
{
    if (!S->tcp) {
        S->tcp = mw__xcalloc(1, sizeof *S->tcp);
        S->tcp->resolver = mw__resolver_new(S->w->loop);
    }
    return S->tcp;
}

static void ssl_close(SSL *ssl)
{
    if (!ssl)
        return;
    /* One non-blocking close_notify, no waiting for the peer's. */
    SSL_set_quiet_shutdown(ssl, 0);
    (void)SSL_shutdown(ssl);
    ERR_clear_error();
    SSL_free(ssl);
}

/* --- the pool --------------------------------------------------------------- */

static void pooled_unlink(mw_pooled_t *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        p->T->pool = p->next;
    if (p->next)
        p->next->prev = p->prev;
    p->prev = p->next = NULL;
}

/* Takes p out of the pool; with close, also closes its connection. */
static void pooled_free(struct ev_loop *loop, mw_pooled_t *p, int close_it)
{
    ev_io_stop(loop, &p->io);
    ev_timer_stop(loop, &p->idle);
    pooled_unlink(p);
    if (close_it) {
        ssl_close(p->ssl);
        close(p->fd);
    }
    free(p->key);
    free(p);
}

static void pooled_readable(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    pooled_free(loop, (mw_pooled_t *)((char *)w - offsetof(mw_pooled_t, io)), 1);
}

static void pooled_expired(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    pooled_free(loop, (mw_pooled_t *)((char *)w - offsetof(mw_pooled_t, idle)), 1);
}

/* Takes the most recently pooled live connection for key into t. */
static int pool_take(mw_tcp_t *t)
{
    struct ev_loop *loop = t->S->w->loop;
    mw_pooled_t *p = t->T->pool;
    while (p) {
        mw_pooled_t *next = p->next;
        if (strcmp(p->key, t->pool_key) == 0) {
            /* Readable while idle means EOF or stray bytes: not reusable. */
            char c;
            ssize_t n = recv(p->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                t->fd = p->fd;
                t->ssl = p->ssl;
                t->reused = p->reused + 1;
                pooled_free(loop, p, 0);
                return 1;
            }
            pooled_free(loop, p, 1);
        }
        p = next;
    }
    return 0;
}

/* --- the life of a socket ----------------------------------------------------- */

static void stop_watchers(mw_tcp_t *t)
{
    if (t->T && t->S->w) {
        ev_io_stop(t->S->w->loop, &t->io);
        ev_timer_stop(t->S->w->loop, &t->timer);
    }
}

/* Closes the connection (not the userdata): the socket can connect again. */
static void tcp_close(mw_tcp_t *t)
{
    stop_watchers(t);
    if (t->rq) {
        if (t->T)
            mw__resolve_cancel(t->T->resolver, t->rq);
        t->rq = NULL;
    }
    if (t->ai_list)
        freeaddrinfo(t->ai_list);
    t->ai_list = t->ai_next = NULL;
    ssl_close(t->ssl);
    t->ssl = NULL;
    if (t->ctx)
        SSL_CTX_free(t->ctx);
    t->ctx = NULL;
    if (t->fd >= 0)
        close(t->fd);
    t->fd = -1;
    free(t->rbuf);
    t->rbuf = NULL;
    t->rstart = t->rend = t->rcap = 0;
    free(t->wbuf);
    t->wbuf = NULL;
    t->wlen = t->wpos = 0;
    t->state = ST_CLOSED;
}

/* Lists t in its worker's live sockets (at its first connect: a socket
 * made while the app file loads has no loop yet), so shutdown finds it. */
static void tcp_link(mw_tcp_t *t)
{
    if (t->linked)
        return;
    t->T = tcp_state(t->S);
    t->next = t->T->live;
    if (t->next)
        t->next->prev = t;
    t->T->live = t;
    t->linked = 1;
}

static void tcp_unlink(mw_tcp_t *t)
{
    if (!t->linked)
        return;
    t->linked = 0;
    if (t->prev)
        t->prev->next = t->next;
    else
        t->T->live = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->prev = t->next = NULL;
}

/* Ends the wait of the suspended caller (its results are already on its
 * stack) without resuming it yet. Returns the coroutine to resume. */
static mw_co_t *end_wait(mw_tcp_t *t)
{
    mw_co_t *k = t->waiter;
    stop_watchers(t);
    t->waiter = NULL;
    t->op = OP_NONE;
    luaL_unref(t->S->L, LUA_REGISTRYINDEX, t->self_ref);
    t->self_ref = LUA_NOREF;
    return k;
}

/* The call's coroutine ended while waiting (mw__lua_wait's on_cancel). */
static void wait_cancelled(void *arg)
{
    mw_tcp_t *t = arg;
    end_wait(t);
    tcp_close(t);
}

/* --- reading and writing, plain or TLS --------------------------------------- */

/* Reads what is there into rbuf. Returns bytes read (> 0), 0 at EOF, -1 to
 * wait (t->want set), -2 on error (msg set). */
static ssize_t read_some(mw_tcp_t *t, const char **msg)
{
    char *buf = t->errbuf;
    size_t bufsize = sizeof t->errbuf;
    if (t->rend == t->rcap) {
        if (t->rstart > 0) {
            memmove(t->rbuf, t->rbuf + t->rstart, t->rend - t->rstart);
            t->rend -= t->rstart;
            t->rstart = 0;
        }
        if (t->rend == t->rcap) {
            t->rcap = t->rcap ? t->rcap * 2 : TCP_READ_CHUNK;
            t->rbuf = mw__xrealloc(t->rbuf, t->rcap);
        }
    }
    size_t room = t->rcap - t->rend;
    if (!t->ssl) {
        ssize_t n = recv(t->fd, t->rbuf + t->rend, room, 0);
        if (n > 0) {
            t->rend += (size_t)n;
            return n;
        }
        if (n == 0)
            return 0;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            t->want = EV_READ;
            return -1;
        }
        *msg = errno_text(errno, buf, bufsize);
        return -2;
    }
    ERR_clear_error();
    int n = SSL_read(t->ssl, t->rbuf + t->rend, room > INT32_MAX ? INT32_MAX : (int)room);
    if (n > 0) {
        t->rend += (size_t)n;
        return n;
    }
    int e = SSL_get_error(t->ssl, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        t->want = e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE;
        return -1;
    }
    if (e == SSL_ERROR_ZERO_RETURN)
        return 0;
    /* A peer that closes without close_notify ends the stream too (HTTP
     * bodies delimited by the close do just that). */
    unsigned long err = ERR_peek_error();
    if ((e == SSL_ERROR_SYSCALL && errno == 0) ||
        (e == SSL_ERROR_SSL && ERR_GET_REASON(err) == SSL_R_UNEXPECTED_EOF_WHILE_READING)) {
        ERR_clear_error();
        return 0;
    }
    if (e == SSL_ERROR_SYSCALL) {
        *msg = errno_text(errno, buf, bufsize);
    } else {
        snprintf(buf, bufsize, "tls: %s", tls_reason(err));
        *msg = buf;
    }
    ERR_clear_error();
    return -2;
}

/* Writes from p. Returns bytes written (> 0), -1 to wait, -2 on error. */
static ssize_t write_some(mw_tcp_t *t, const char *p, size_t len, const char **msg)
{
    char *buf = t->errbuf;
    size_t bufsize = sizeof t->errbuf;
    if (!t->ssl) {
        ssize_t n = send(t->fd, p, len, MSG_NOSIGNAL);
        if (n >= 0)
            return n;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            t->want = EV_WRITE;
            return -1;
        }
        *msg = errno_text(errno, buf, bufsize);
        return -2;
    }
    ERR_clear_error();
    int n = SSL_write(t->ssl, p, len > INT32_MAX ? INT32_MAX : (int)len);
    if (n > 0)
        return n;
    int e = SSL_get_error(t->ssl, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        t->want = e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE;
        return -1;
    }
    if (e == SSL_ERROR_SYSCALL)
        *msg = errno ? errno_text(errno, buf, bufsize) : "closed";
    else {
        snprintf(buf, bufsize, "tls: %s", tls_reason(ERR_peek_error()));
        *msg = buf;
    }
    ERR_clear_error();
    return -2;
}

/* --- the operations: each step either pushes the call's results on L and
 * returns how many, or returns -1 to wait for t->want (or the resolver). --- */

static int fail_closed(mw_tcp_t *t, lua_State *L, const char *msg)
{
    tcp_close(t);
    return push_fail(L, msg);
}

/* Starts connecting to t->ai_next and on to the next address after a
 * failure. Returns 0 connected, 1 in progress, -1 all failed (sys_err). */
static int connect_next(mw_tcp_t *t)
{
    while (t->ai_next) {
        struct addrinfo *ai = t->ai_next;
        t->ai_next = ai->ai_next;
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            t->sys_err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            t->fd = fd;
            return 0;
        }
        if (errno == EINPROGRESS) {
            t->fd = fd;
            return 1;
        }
        t->sys_err = errno;
        close(fd);
    }
    return -1;
}

static int is_ip(const char *s)
{
    unsigned char a[16];
    return inet_pton(AF_INET, s, a) == 1 || inet_pton(AF_INET6, s, a) == 1;
}

static int tls_start(mw_tcp_t *t, lua_State *L)
{
    SSL_CTX *ctx = t->ctx ? t->ctx : t->T->ctx;
    if (!ctx) {
        ctx = t->T->ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
        SSL_CTX_set_default_verify_paths(ctx);
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
    t->ssl = SSL_new(ctx);
    SSL_set_fd(t->ssl, t->fd);
    SSL_set_connect_state(t->ssl);
    const char *name = t->server_name ? t->server_name : t->host;
    if (!is_ip(name))
        SSL_set_tlsext_host_name(t->ssl, name); /* SNI is for names only (RFC 6066 3) */
    if (t->verify) {
        SSL_set_verify(t->ssl, SSL_VERIFY_PEER, NULL);
        if (is_ip(name))
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), name);
        else
            SSL_set1_host(t->ssl, name);
    }
    (void)L;
    return 0;
}

static int step_connect(mw_tcp_t *t, lua_State *L)
{
    char *buf = t->errbuf, sys[96];
    for (;;) {
        switch (t->state) {
        case ST_RESOLVING:
            if (t->rq)
                return -1; /* the resolver calls back */
            if (!t->ai_list) {
                if (t->gai_err == EAI_NONAME || t->gai_err == EAI_NODATA ||
                    t->gai_err == EAI_FAIL || t->gai_err == EAI_AGAIN)
                    snprintf(buf, sizeof t->errbuf, "no such host: %s", t->host);
                else
                    snprintf(buf, sizeof t->errbuf, "cannot resolve %s: %s", t->host,
                             gai_strerror(t->gai_err));
                return fail_closed(t, L, buf);
            }
            t->ai_next = t->ai_list;
            t->state = ST_CONNECTING;
            if (connect_next(t) < 0)
                return fail_closed(t, L, errno_text(t->sys_err, sys, sizeof sys));
            /* Connected or in progress: writable tells either way. */
            t->want = EV_WRITE;
            return -1;
        case ST_CONNECTING: {
            int err = 0;
            socklen_t len = sizeof err;
            if (getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
                err = errno;
            if (err == EINPROGRESS || err == EALREADY) {
                t->want = EV_WRITE;
                return -1;
            }
            if (err) {
                t->sys_err = err;
                /* Stopped before close: the next socket may get the same fd. */
                ev_io_stop(t->S->w->loop, &t->io);
                close(t->fd);
                t->fd = -1;
                if (connect_next(t) < 0)
                    return fail_closed(t, L, errno_text(t->sys_err, sys, sizeof sys));
                t->want = EV_WRITE;
                return -1;
            }
            freeaddrinfo(t->ai_list);
            t->ai_list = t->ai_next = NULL;
            if (!t->tls) {
                t->state = ST_OPEN;
                lua_pushinteger(L, 1);
                return 1;
            }
            tls_start(t, L);
            t->state = ST_HANDSHAKE;
            break;
        }
        case ST_HANDSHAKE: {
            ERR_clear_error();
            int r = SSL_connect(t->ssl);
            if (r == 1) {
                t->state = ST_OPEN;
                lua_pushinteger(L, 1);
                return 1;
            }
            int e = SSL_get_error(t->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                t->want = e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE;
                return -1;
            }
            long v = SSL_get_verify_result(t->ssl);
            if (t->verify && v != X509_V_OK)
                snprintf(buf, sizeof t->errbuf, "tls: certificate verify failed: %s",
                         X509_verify_cert_error_string(v));
            else if (e == SSL_ERROR_SYSCALL || ERR_peek_error() == 0)
                snprintf(buf, sizeof t->errbuf, "tls: handshake failed: %s",
                         errno ? errno_text(errno, sys, sizeof sys) : "closed");
            else
                snprintf(buf, sizeof t->errbuf, "tls: handshake failed: %s",
                         tls_reason(ERR_peek_error()));
            ERR_clear_error();
            return fail_closed(t, L, buf);
        }
        default:
            return fail_closed(t, L, "closed");
        }
    }
}

static int step_send(mw_tcp_t *t, lua_State *L)
{
    const char *msg = NULL;
    while (t->wpos < t->wlen) {
        ssize_t n = write_some(t, t->wbuf + t->wpos, t->wlen - t->wpos, &msg);
        if (n == -1)
            return -1;
        if (n < 0)
            return fail_closed(t, L, msg);
        t->wpos += (size_t)n;
    }
    free(t->wbuf);
    t->wbuf = NULL;
    t->wlen = t->wpos = 0;
    lua_pushinteger(L, (lua_Integer)t->wtotal);
    return 1;
}

/* Returns "nil, err, partial" where partial is everything buffered. */
static int fail_partial(mw_tcp_t *t, lua_State *L, const char *msg, int close_it)
{
    lua_pushnil(L);
    lua_pushstring(L, msg);
    lua_pushlstring(L, t->rbuf ? t->rbuf + t->rstart : "", t->rend - t->rstart);
    t->rstart = t->rend = 0;
    if (close_it)
        tcp_close(t);
    return 3;
}

static int step_receive(mw_tcp_t *t, lua_State *L)
{
    for (;;) {
        size_t avail = t->rend - t->rstart;
        const char *p = t->rbuf ? t->rbuf + t->rstart : NULL;
        if (t->rmode == RECV_LINE && avail) {
            const char *nl = memchr(p, '\n', avail);
            if (nl) {
                size_t n = (size_t)(nl - p);
                size_t len = n > 0 && p[n - 1] == '\r' ? n - 1 : n;
                lua_pushlstring(L, p, len);
                t->rstart += n + 1;
                return 1;
            }
            if (avail > t->max_line)
                return fail_partial(t, L, "line too long", 1);
        } else if (t->rmode == RECV_BYTES && avail >= t->rwant) {
            lua_pushlstring(L, p, t->rwant);
            t->rstart += t->rwant;
            return 1;
        } else if (t->rmode == RECV_ALL && avail > t->max_receive) {
            return fail_partial(t, L, "too large", 1);
        }
        if (t->rstart == t->rend)
            t->rstart = t->rend = 0;
        const char *msg = NULL;
        ssize_t n = read_some(t, &msg);
        if (n == -1)
            return -1;
        if (n == -2)
            return fail_partial(t, L, msg, 1);
        if (n == 0) {
            if (t->rmode == RECV_ALL) {
                lua_pushlstring(L, t->rbuf ? t->rbuf + t->rstart : "", t->rend - t->rstart);
                tcp_close(t);
                return 1;
            }
            return fail_partial(t, L, "closed", 1);
        }
    }
}

static int step(mw_tcp_t *t, lua_State *L)
{
    switch (t->op) {
    case OP_CONNECT:
        return step_connect(t, L);
    case OP_SEND:
        return step_send(t, L);
    default:
        return step_receive(t, L);
    }
}

/* --- waiting ---------------------------------------------------------------- */

static void arm_io(mw_tcp_t *t)
{
    struct ev_loop *loop = t->S->w->loop;
    if (t->fd < 0 || !t->want) {
        ev_io_stop(loop, &t->io);
        return;
    }
    if (ev_is_active(&t->io) &&
        (t->io.fd != t->fd || (t->io.events & (EV_READ | EV_WRITE)) != t->want))
        ev_io_stop(loop, &t->io);
    if (!ev_is_active(&t->io)) {
        ev_io_set(&t->io, t->fd, t->want);
        ev_io_start(loop, &t->io);
    }
}

/* Runs the next step for the waiting call; resumes it if the call is over. */
static void kick(mw_tcp_t *t)
{
    lua_State *co = t->waiter->co;
    lua_settop(co, 0);
    t->want = 0;
    int n = step(t, co);
    if (n < 0) {
        arm_io(t);
        return;
    }
    mw__lua_wake(end_wait(t), n);
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    kick((mw_tcp_t *)((char *)w - offsetof(mw_tcp_t, io)));
}

static void on_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    mw_tcp_t *t = (mw_tcp_t *)((char *)w - offsetof(mw_tcp_t, timer));
    lua_State *co = t->waiter->co;
    lua_settop(co, 0);
    int n;
    if (t->op == OP_RECEIVE) {
        /* A read that timed out leaves the connection usable (OpenResty's
         * rule): the bytes so far are returned as partial. */
        n = fail_partial(t, co, "timeout", 0);
    } else {
        /* A connect or send cut short leaves nothing usable. */
        n = fail_closed(t, co, "timeout");
    }
    mw__lua_wake(end_wait(t), n);
}

static void resolved(void *arg, struct addrinfo *res, int gai_err)
{
    mw_tcp_t *t = arg;
    t->rq = NULL;
    t->ai_list = res;
    t->gai_err = gai_err;
    kick(t);
}

/* Runs op now; if it must wait, suspends the caller (socket at index 1). */
static int run(lua_State *L, mw_tcp_t *t, int op, mw_co_t *k)
{
    t->op = op;
    t->want = 0;
    int n = step(t, L);
    if (n >= 0) {
        t->op = OP_NONE;
        return n;
    }
    t->waiter = k;
    lua_pushvalue(L, 1);
    t->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    arm_io(t);
    int which = op == OP_CONNECT ? T_CONNECT : op == OP_SEND ? T_SEND : T_READ;
    ev_timer_set(&t->timer, t->timeout[which], 0.);
    ev_timer_start(t->S->w->loop, &t->timer);
    mw__lua_wait(k, wait_cancelled, t);
    return lua_yield(L, 0);
}

/* --- the Lua methods -------------------------------------------------------- */

static mw_tcp_t *check(lua_State *L)
{
    return luaL_checkudata(L, 1, TCP_MT);
}

/* A second coroutine may not use a socket another one waits on. */
static int busy(lua_State *L, mw_tcp_t *t)
{
    if (!t->waiter)
        return 0;
    push_fail(L, "socket busy");
    return 1;
}

static int get_opt_bool(lua_State *L, int idx, const char *name, int dflt)
{
    lua_getfield(L, idx, name);
    int v = lua_isnil(L, -1) ? dflt : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

static const char *get_opt_str(lua_State *L, int idx, const char *name)
{
    lua_getfield(L, idx, name);
    if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "moonwire.tcp: option %s must be a string", name);
    const char *s = lua_tostring(L, -1);
    lua_pop(L, 1); /* the table keeps the string alive */
    return s;
}

static size_t get_opt_size(lua_State *L, int idx, const char *name, size_t dflt)
{
    lua_getfield(L, idx, name);
    size_t v = dflt;
    if (!lua_isnil(L, -1)) {
        lua_Number n = lua_tonumber(L, -1);
        if (!lua_isnumber(L, -1) || n < 1)
            luaL_error(L, "moonwire.tcp: option %s must be a number >= 1", name);
        v = (size_t)n;
    }
    lua_pop(L, 1);
    return v;
}

/* sock:connect(host, port [, opts]) -> 1 | nil, err
 * opts: tls, verify (default true), server_name, ca_file, pool, max_line,
 * max_receive. */
static int l_connect(lua_State *L)
{
    mw_tcp_t *t = check(L);
    const char *host = luaL_checkstring(L, 2);
    lua_Integer port = luaL_checkinteger(L, 3);
    luaL_argcheck(L, port > 0 && port < 65536, 3, "port must be 1..65535");
    luaL_argcheck(L, *host, 2, "empty host");
    int has_opts = !lua_isnoneornil(L, 4);
    if (has_opts)
        luaL_checktype(L, 4, LUA_TTABLE);
    mw_co_t *k = mw__lua_waiter(L, t->S, "moonwire.tcp: connect");
    if (busy(L, t))
        return 2;
    int tls = has_opts ? get_opt_bool(L, 4, "tls", 0) : 0;
    int verify = has_opts ? get_opt_bool(L, 4, "verify", 1) : 1;
    const char *server_name = has_opts ? get_opt_str(L, 4, "server_name") : NULL;
    const char *ca_file = has_opts ? get_opt_str(L, 4, "ca_file") : NULL;
    const char *pool = has_opts ? get_opt_str(L, 4, "pool") : NULL;
    size_t max_line = has_opts ? get_opt_size(L, 4, "max_line", TCP_MAX_LINE) : TCP_MAX_LINE;
    size_t max_receive =
        has_opts ? get_opt_size(L, 4, "max_receive", TCP_MAX_RECEIVE) : TCP_MAX_RECEIVE;

    tcp_close(t); /* connecting again drops the old connection */
    tcp_link(t);
    free(t->host);
    free(t->server_name);
    free(t->pool_key);
    t->host = xstrdup(host);
    t->server_name = server_name ? xstrdup(server_name) : NULL;
    t->tls = tls;
    t->verify = verify;
    t->max_line = max_line;
    t->max_receive = max_receive;
    t->reused = 0;
    t->gai_err = t->sys_err = 0;
    if (pool) {
        t->pool_key = xstrdup(pool);
    } else {
        lua_pushfstring(L, "%s:%d", host, (int)port);
        if (tls)
            lua_pushfstring(L, ":tls:%s:%d:%s", server_name ? server_name : host, verify,
                            ca_file ? ca_file : "");
        else
            lua_pushliteral(L, "");
        lua_concat(L, 2);
        t->pool_key = xstrdup(lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    if (pool_take(t)) {
        t->state = ST_OPEN;
        lua_pushinteger(L, 1);
        return 1;
    }
    if (tls && ca_file) {
        t->ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
        SSL_CTX_set_mode(t->ctx,
                         SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        if (SSL_CTX_load_verify_locations(t->ctx, ca_file, NULL) != 1) {
            ERR_clear_error();
            snprintf(t->errbuf, sizeof t->errbuf, "tls: cannot load ca_file %s", ca_file);
            return fail_closed(t, L, t->errbuf);
        }
    }
    /* IP literals parse here, at once; names go to the resolver thread. */
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    char portstr[8];
    snprintf(portstr, sizeof portstr, "%d", (int)port);
    t->state = ST_RESOLVING;
    if (getaddrinfo(host, portstr, &hints, &t->ai_list) != 0) {
        t->ai_list = NULL;
        t->rq = mw__resolve(t->T->resolver, host, (int)port, resolved, t);
    }
    return run(L, t, OP_CONNECT, k);
}

/* sock:send(data) -> bytes | nil, err; data: a string or an array of strings. */
static int l_send(lua_State *L)
{
    mw_tcp_t *t = check(L);
    if (lua_istable(L, 2)) {
        /* Joined here: one write for the pieces, as OpenResty does. */
        luaL_Buffer b;
        size_t n = lua_objlen(L, 2);
        luaL_buffinit(L, &b);
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, 2, (int)i);
            if (!lua_isstring(L, -1))
                luaL_error(L, "sock:send: item %d of the table is not a string", (int)i);
            luaL_addvalue(&b);
        }
        luaL_pushresult(&b);
        lua_replace(L, 2);
    }
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    mw_co_t *k = mw__lua_waiter(L, t->S, "moonwire.tcp: send");
    if (busy(L, t))
        return 2;
    if (t->state != ST_OPEN)
        return push_fail(L, "closed");
    /* Straight from the Lua string; only what the kernel refuses is copied
     * (the string may not outlive the yield). */
    const char *msg = NULL;
    size_t done = 0;
    while (done < len) {
        ssize_t n = write_some(t, data + done, len - done, &msg);
        if (n == -1)
            break;
        if (n < 0)
            return fail_closed(t, L, msg);
        done += (size_t)n;
    }
    t->wtotal = len;
    if (done == len) {
        lua_pushinteger(L, (lua_Integer)len);
        return 1;
    }
    t->wlen = len - done;
    t->wpos = 0;
    t->wbuf = mw__xmalloc(t->wlen);
    memcpy(t->wbuf, data + done, t->wlen);
    return run(L, t, OP_SEND, k);
}

/* sock:receive(pattern) -> data | nil, err, partial; pattern: "*l" (a line
 * without its \r\n; the default), "*a" (all until the peer closes), or n. */
static int l_receive(lua_State *L)
{
    mw_tcp_t *t = check(L);
    int mode = RECV_LINE;
    size_t want = 0;
    if (lua_type(L, 2) == LUA_TNUMBER) {
        lua_Number n = lua_tonumber(L, 2);
        luaL_argcheck(L, n >= 0, 2, "size must be >= 0");
        mode = RECV_BYTES;
        want = (size_t)n;
    } else if (!lua_isnoneornil(L, 2)) {
        const char *p = luaL_checkstring(L, 2);
        if (strcmp(p, "*l") == 0 || strcmp(p, "l") == 0)
            mode = RECV_LINE;
        else if (strcmp(p, "*a") == 0 || strcmp(p, "a") == 0)
            mode = RECV_ALL;
        else
            luaL_argerror(L, 2, "pattern must be \"*l\", \"*a\" or a number of bytes");
    }
    mw_co_t *k = mw__lua_waiter(L, t->S, "moonwire.tcp: receive");
    if (busy(L, t))
        return 2;
    if (t->state != ST_OPEN) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        lua_pushliteral(L, "");
        return 3;
    }
    if (mode == RECV_BYTES && want > t->max_receive)
        return push_fail(L, "too large");
    t->rmode = mode;
    t->rwant = want;
    return run(L, t, OP_RECEIVE, k);
}

static double check_ms(lua_State *L, int idx)
{
    lua_Number ms = luaL_checknumber(L, idx);
    luaL_argcheck(L, ms > 0 && ms == ms, idx, "timeout must be a number of milliseconds > 0");
    return ms / 1000.0;
}

/* sock:settimeout(ms): the same timeout for connect, send and each receive. */
static int l_settimeout(lua_State *L)
{
    mw_tcp_t *t = check(L);
    double s = check_ms(L, 2);
    t->timeout[T_CONNECT] = t->timeout[T_SEND] = t->timeout[T_READ] = s;
    return 0;
}

/* sock:settimeouts(connect_ms, send_ms, read_ms) */
static int l_settimeouts(lua_State *L)
{
    mw_tcp_t *t = check(L);
    for (int i = 0; i < 3; i++)
        t->timeout[i] = check_ms(L, 2 + i);
    return 0;
}

/* sock:close() -> 1 | nil, err */
static int l_close(lua_State *L)
{
    mw_tcp_t *t = check(L);
    if (busy(L, t))
        return 2;
    if (t->state != ST_OPEN)
        return push_fail(L, "closed");
    tcp_close(t);
    lua_pushinteger(L, 1);
    return 1;
}

/* sock:setkeepalive([idle_ms [, pool_size]]) -> 1 | nil, err: the
 * connection goes to the worker's pool for the next connect to the same
 * host, port and TLS settings (or the same opts.pool name). */
static int l_setkeepalive(lua_State *L)
{
    mw_tcp_t *t = check(L);
    double idle = lua_isnoneornil(L, 2) ? TCP_POOL_IDLE_MS / 1000.0 : check_ms(L, 2);
    lua_Integer size = luaL_optinteger(L, 3, TCP_POOL_SIZE);
    luaL_argcheck(L, size >= 1, 3, "pool size must be >= 1");
    if (busy(L, t))
        return 2;
    if (t->state != ST_OPEN)
        return push_fail(L, "closed");
    if (t->rend > t->rstart) {
        /* Bytes nobody read would be handed to the next user. */
        tcp_close(t);
        return push_fail(L, "unread data in buffer");
    }
    mw_tcp_state_t *T = t->T;
    struct ev_loop *loop = t->S->w->loop;
    /* Full: the oldest connection of this key goes. */
    lua_Integer same = 0;
    mw_pooled_t *oldest = NULL;
    for (mw_pooled_t *p = T->pool; p; p = p->next)
        if (strcmp(p->key, t->pool_key) == 0) {
            same++;
            oldest = p;
        }
    if (same >= size && oldest)
        pooled_free(loop, oldest, 1);
    mw_pooled_t *p = mw__xcalloc(1, sizeof *p);
    p->T = T;
    p->key = xstrdup(t->pool_key);
    p->fd = t->fd;
    p->ssl = t->ssl;
    p->reused = t->reused;
    ev_io_init(&p->io, pooled_readable, p->fd, EV_READ);
    ev_io_start(loop, &p->io);
    ev_timer_init(&p->idle, pooled_expired, idle, 0.);
    ev_timer_start(loop, &p->idle);
    p->next = T->pool;
    if (T->pool)
        T->pool->prev = p;
    T->pool = p;
    t->fd = -1;
    t->ssl = NULL;
    tcp_close(t);
    lua_pushinteger(L, 1);
    return 1;
}

/* sock:getreusedtimes() -> how many times this connection came from the pool */
static int l_getreusedtimes(lua_State *L)
{
    mw_tcp_t *t = check(L);
    if (t->state != ST_OPEN)
        return push_fail(L, "closed");
    lua_pushinteger(L, t->reused);
    return 1;
}

static int l_gc(lua_State *L)
{
    mw_tcp_t *t = check(L);
    tcp_close(t);
    tcp_unlink(t);
    free(t->host);
    free(t->server_name);
    free(t->pool_key);
    t->host = t->server_name = t->pool_key = NULL;
    return 0;
}

static int l_tostring(lua_State *L)
{
    mw_tcp_t *t = check(L);
    static const char *const states[] = {"new",       "resolving", "connecting",
                                         "handshake", "open",      "closed"};
    lua_pushfstring(L, "moonwire.tcp(%s%s%s)", states[t->state], t->host ? " " : "",
                    t->host ? t->host : "");
    return 1;
}

/* moonwire.core.tcp() -> sock. Making one is fine anywhere; its calls that
 * wait need a handler, the upgrade hook or a timer. */
static int l_tcp(lua_State *L)
{
    mw_lua_t *S = lua_touserdata(L, lua_upvalueindex(1));
    mw_tcp_t *t = lua_newuserdata(L, sizeof *t);
    memset(t, 0, sizeof *t);
    t->S = S;
    t->fd = -1;
    t->self_ref = LUA_NOREF;
    t->state = ST_NEW;
    t->max_line = TCP_MAX_LINE;
    t->max_receive = TCP_MAX_RECEIVE;
    for (int i = 0; i < 3; i++)
        t->timeout[i] = TCP_TIMEOUT_MS / 1000.0;
    ev_init(&t->io, on_io);
    ev_init(&t->timer, on_timeout);
    luaL_getmetatable(L, TCP_MT);
    lua_setmetatable(L, -2);
    return 1;
}

void mw__tcp_register(lua_State *L, mw_lua_t *S)
{
    static const luaL_Reg methods[] = {{"connect", l_connect},
                                       {"send", l_send},
                                       {"receive", l_receive},
                                       {"settimeout", l_settimeout},
                                       {"settimeouts", l_settimeouts},
                                       {"close", l_close},
                                       {"setkeepalive", l_setkeepalive},
                                       {"getreusedtimes", l_getreusedtimes},
                                       {NULL, NULL}};
    luaL_newmetatable(L, TCP_MT);
    lua_newtable(L);
    luaL_register(L, NULL, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, TCP_MT);
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
    lua_pushlightuserdata(L, S);
    lua_pushcclosure(L, l_tcp, 1);
    lua_setfield(L, -2, "tcp");
}

void mw__tcp_close_all(mw_lua_t *S)
{
    mw_tcp_state_t *T = S->tcp;
    if (!T)
        return;
    /* Sockets stay as userdata until lua_close collects them; cut them
     * loose from the loop and from T first. */
    while (T->live) {
        mw_tcp_t *t = T->live;
        if (t->waiter)
            end_wait(t);
        tcp_close(t);
        tcp_unlink(t);
        t->T = NULL;
    }
    while (T->pool)
        pooled_free(S->w->loop, T->pool, 1);
    mw__resolver_free(T->resolver);
    if (T->ctx)
        SSL_CTX_free(T->ctx);
    free(T);
    S->tcp = NULL;
}
