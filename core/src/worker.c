/* The worker: listener and accept loop, the flush pass that writes corked
 * output before the loop sleeps, the expiry actions of the timer lists, and
 * orderly stop. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"
#include "pubsub.h"
#include "tls.h"

/* --- timeouts --------------------------------------------------------------- */

static void handshake_expired(mw_conn_t *c)
{
    if (c->ssl && !SSL_is_init_finished(c->ssl)) {
        /* No TLS yet: a 408 could never be sent. Drop it now. */
        mw__conn_teardown(c, MW_WS_CLOSE_ABNORMAL, NULL);
        return;
    }
    if (c->state == MW_CONN_HTTP || c->state == MW_CONN_UPGRADING || c->state == MW_CONN_HTTP_BODY)
        mw__conn_http_error(c, 408, NULL, "the upgrade request did not arrive in time");
}

static void heartbeat_due(mw_conn_t *c)
{
    /* Silence for ping_interval: ask for a sign of life. */
    if (c->state != MW_CONN_OPEN)
        return;
    static const char payload[] = "moonwire";
    uint8_t frame[MW_WS_MAX_HEADER + sizeof payload];
    size_t hlen = mw__ws_header(frame, 1, 0, MW_WS_OP_PING, sizeof payload - 1);
    memcpy(frame + hlen, payload, sizeof payload - 1);
    mw__conn_send_now(c, frame, hlen + sizeof payload - 1);
    mw__tl_move(c, MW_TL_PING);
}

static void pong_overdue(mw_conn_t *c)
{
    /* No byte since our ping: the peer or the path is gone. Tell it why if
     * the socket still takes bytes, then drop it without waiting. */
    mw_debug("conn %llu: no pong within %.3gs; dropping", (unsigned long long)c->id,
             c->w->cfg.pong_timeout);
    if (c->state == MW_CONN_OPEN)
        mw__conn_close(c, MW_WS_CLOSE_GOING_AWAY, "pong timeout", 12);
    mw__conn_flush(c);
    c->close_code = 0; /* report an abnormal end, not our close */
    mw__conn_teardown(c, MW_WS_CLOSE_ABNORMAL, "pong timeout");
}

static void close_overdue(mw_conn_t *c)
{
    mw_debug("conn %llu: peer did not finish the close in time", (unsigned long long)c->id);
    mw__conn_teardown(c, MW_WS_CLOSE_ABNORMAL, NULL);
}

static void idle_expired(mw_conn_t *c)
{
    if (c->state == MW_CONN_OPEN)
        mw__conn_close(c, MW_WS_CLOSE_GOING_AWAY, "idle timeout", 12);
}

/* --- flush pass ------------------------------------------------------------- */

/* Runs before the loop blocks: every send made while this iteration's events
 * were handled goes out now, one writev per connection (DESIGN.md
 * principle 2). */
static void flush_pass(struct ev_loop *loop, ev_prepare *p, int revents)
{
    (void)loop;
    (void)revents;
    mw_worker_t *w = (mw_worker_t *)((char *)p - offsetof(mw_worker_t, flush_prep));
    /* Connections that started closing leave their topics (see leave_open
     * in conn_ws.c: never in the middle of a publish). */
    while (w->leave_head) {
        mw_conn_t *c = w->leave_head;
        w->leave_head = c->leave_next;
        c->leave_next = NULL;
        c->leave_due = 0;
        mw__pubsub_leave_all(w->pubsub, c);
        mw__conn_release(c);
    }
    /* Held input first (pipelined requests after an answer): parsing it
     * may queue more writes, which this same pass then flushes. */
    while (w->input_head) {
        mw_conn_t *c = w->input_head;
        w->input_head = c->input_next;
        c->input_next = NULL;
        c->input_due = 0;
        mw__conn_resume_input(c);
        mw__conn_release(c);
    }
    while (w->flush_head) {
        mw_conn_t *c = w->flush_head;
        w->flush_head = c->flush_next;
        c->flush_next = NULL;
        c->in_flush = 0;
        if (c->state != MW_CONN_DEAD && !c->writing)
            mw__conn_flush(c);
        mw__conn_release(c); /* the flush list's reference */
    }
    /* Payloads written (or dropped) from where the app keeps them, here or
     * since the last pass: the app may let them go. */
    if (w->pool.n_released) {
        w->ops->pins_released(w->ops_ud, w->pool.pins_released, w->pool.n_released);
        mw__pool_pins_reuse(&w->pool);
    }
}

/* --- accept ------------------------------------------------------------------- */

static void refuse_busy(int fd)
{
    static const char body[] = "503 Service Unavailable: too many connections (max_connections)\n";
    char resp[256];
    int len = snprintf(resp, sizeof resp,
                       "HTTP/1.1 503 Service Unavailable\r\n"
                       "Connection: close\r\n"
                       "Content-Type: text/plain; charset=utf-8\r\n"
                       "Retry-After: 1\r\n"
                       "Content-Length: %zu\r\n\r\n%s",
                       sizeof body - 1, body);
    /* One best-effort write to a fresh socket: its send buffer is empty. */
    ssize_t n = write(fd, resp, (size_t)len);
    (void)n;
    shutdown(fd, SHUT_WR);
    close(fd);
}

static void accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)revents;
    mw_worker_t *w = (mw_worker_t *)((char *)io - offsetof(mw_worker_t, accept_io));
    /* A bounded batch per wakeup keeps a connection storm from starving the
     * connections we already have. */
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(w->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: stop accepting briefly instead of
                 * spinning on a listener that stays readable. */
                mw_warn("accept: %s; pausing accepts for 100 ms", strerror(errno));
                ev_io_stop(loop, &w->accept_io);
                ev_timer_set(&w->accept_pause, 0.1, 0.);
                ev_timer_start(loop, &w->accept_pause);
            }
            return;
        }
        if (w->nconns - w->nservice >= w->cfg.max_connections) {
            mw_warn("refusing a connection: max_connections (%zu) reached", w->cfg.max_connections);
            refuse_busy(fd);
            continue;
        }
        int one = 1;
        /* Corked writes already batch small frames; Nagle would only add delay. */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        mw__conn_new(w, fd, (struct sockaddr *)&ss, sl);
        w->stats.accepted++;
    }
}

static void accept_resume(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    mw_worker_t *w = (mw_worker_t *)((char *)t - offsetof(mw_worker_t, accept_pause));
    if (!w->stopping)
        ev_io_start(loop, &w->accept_io);
}

/* --- setup and teardown ------------------------------------------------------- */

void mw__worker_init(mw_worker_t *w, struct ev_loop *loop, const mw_config_t *cfg,
                     const mw_app_ops_t *ops, void *ud)
{
    memset(w, 0, sizeof *w);
    w->loop = loop;
    w->cfg = *cfg;
    w->ops = ops;
    w->ops_ud = ud;
    w->listen_fd = -1;
    w->share_fd = w->share_tls_fd = -1;
    w->admin_fd = -1;
    w->metrics_fd = -1;
    w->tls_fd = -1;
    w->hdrs = mw__xcalloc(cfg->max_headers, sizeof *w->hdrs);
    w->rbuf_cap = cfg->max_header_bytes + 65536;
    w->rbuf = mw__xmalloc(w->rbuf_cap);
    mw__chunk_pool_init(&w->pool, 256);
    w->pubsub = mw__pubsub_new();
    const char *sio = getenv("MOONWIRE_TEST_SHORT_IO");
    w->short_io = sio && *sio && strcmp(sio, "0") != 0;

    mw__tlist_init(&w->tl[MW_TL_HANDSHAKE], w, cfg->handshake_timeout, handshake_expired);
    mw__tlist_init(&w->tl[MW_TL_ACTIVE], w, cfg->ping_interval, heartbeat_due);
    mw__tlist_init(&w->tl[MW_TL_PING], w, cfg->ping_interval > 0 ? cfg->pong_timeout : 0,
                   pong_overdue);
    mw__tlist_init(&w->tl[MW_TL_CLOSING], w, cfg->close_timeout, close_overdue);
    mw__tlist_init(&w->idle, w, cfg->idle_timeout, idle_expired);

    ev_prepare_init(&w->flush_prep, flush_pass);
    ev_prepare_start(loop, &w->flush_prep);
    ev_timer_init(&w->accept_pause, accept_resume, 0.1, 0.);
}

/* Whether SO_REUSEPORT works here (asked once). Without it, workers share
 * worker 1's listening socket: each loop watches it and the kernel wakes
 * them all per connection, one accept wins. MOONWIRE_TEST_NO_REUSEPORT=1
 * takes that path on purpose (tests). */
static int reuseport_available(void)
{
    static int known = -1;
    if (known >= 0)
        return known;
    const char *off = getenv("MOONWIRE_TEST_NO_REUSEPORT");
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    known = !(off && off[0] == '1') && fd >= 0 &&
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) == 0;
    if (fd >= 0)
        close(fd);
    return known;
}

/* For workers 2..N without SO_REUSEPORT: their own descriptor for worker 1's
 * socket. */
static int share_listener(int fd, char *err, size_t errlen)
{
    int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0)
        snprintf(err, errlen, "cannot share the listening socket: %s", strerror(errno));
    return dup;
}

/* Binds and listens on host:port; returns the socket or -1 with err set. */
static int listen_on(const char *host, int port, int reuseport, int backlog, char *err,
                     size_t errlen)
{
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", host, port, gai_strerror(rc));
        return -1;
    }
    int fd = -1, saved = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        /* Workers each bind the port; the kernel spreads connections over
         * them. Only then: otherwise a second server would share the port
         * silently instead of failing with "address already in use". */
        if (reuseport)
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, backlog) == 0)
            break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        snprintf(err, errlen, "cannot listen on %s:%d: %s", host, port,
                 saved == EADDRINUSE ? "address already in use" : strerror(saved));
    return fd;
}

int mw__worker_listen(mw_worker_t *w, char *err, size_t errlen)
{
    int shared = w->cfg.workers > 1 && !reuseport_available();
    if (shared && w->index == 0)
        mw_warn("SO_REUSEPORT is not available: the %d workers share one listening socket",
                w->cfg.workers);
    int fd = shared && w->share_fd >= 0
                 ? share_listener(w->share_fd, err, errlen)
                 : listen_on(w->cfg.listen_host, w->cfg.listen_port, w->cfg.workers > 1 && !shared,
                             (int)w->cfg.listen_backlog, err, errlen);
    if (fd < 0)
        return -1;
    w->listen_fd = fd;
    ev_io_init(&w->accept_io, accept_cb, fd, EV_READ);
    return 0;
}

static void tls_accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    mw_worker_t *w = (mw_worker_t *)((char *)io - offsetof(mw_worker_t, tls_io));
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(w->tls_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        if (w->nconns - w->nservice >= w->cfg.max_connections) {
            /* No TLS yet: a plain refusal would be noise to a TLS client. */
            mw_warn("refusing a TLS connection: max_connections (%zu) reached",
                    w->cfg.max_connections);
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        mw_conn_t *c = mw__conn_new(w, fd, (struct sockaddr *)&ss, sl);
        w->stats.accepted++;
        mw__tls_attach(c, w->tls_ctx);
    }
}

int mw__worker_listen_tls(mw_worker_t *w, char *err, size_t errlen)
{
    if (!w->cfg.tls_listen_host[0])
        return 0;
    w->tls_ctx = mw__tls_ctx_new(w->cfg.tls_cert, w->cfg.tls_key, err, errlen);
    if (!w->tls_ctx)
        return -1;
    int shared = w->cfg.workers > 1 && !reuseport_available();
    int fd =
        shared && w->share_tls_fd >= 0
            ? share_listener(w->share_tls_fd, err, errlen)
            : listen_on(w->cfg.tls_listen_host, w->cfg.tls_listen_port,
                        w->cfg.workers > 1 && !shared, (int)w->cfg.listen_backlog, err, errlen);
    if (fd < 0)
        return -1;
    w->tls_fd = fd;
    w->tls_wbuf_cap = 65536;
    w->tls_wbuf = mw__xmalloc(w->tls_wbuf_cap);
    ev_io_init(&w->tls_io, tls_accept_cb, fd, EV_READ);
    ev_io_start(w->loop, &w->tls_io);
    return 0;
}

int mw__worker_reload_tls(mw_worker_t *w, char *err, size_t errlen)
{
    if (!w->tls_ctx)
        return 0;
    SSL_CTX *ctx = mw__tls_ctx_new(w->cfg.tls_cert, w->cfg.tls_key, err, errlen);
    if (!ctx)
        return -1;
    /* Live connections hold references to the old context. */
    SSL_CTX_free(w->tls_ctx);
    w->tls_ctx = ctx;
    return 0;
}

int mw__worker_tls_port(const mw_worker_t *w)
{
    return mw__fd_port(w->tls_fd);
}

/* Admin and metrics connections: plain HTTP answered by admin_request. */
static void accept_service(mw_worker_t *w, int lfd, int metrics_only)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return;
    /* Their own bound, apart from max_connections: whoever reaches these
     * listeners cannot take the app's connection slots. */
    if (w->nservice >= w->cfg.max_admin_connections) {
        close(fd);
        if (ev_now(w->loop) - w->service_warned >= 1.0) {
            w->service_warned = ev_now(w->loop);
            mw_warn("refusing %s connections: max_admin_connections (%zu) reached",
                    metrics_only ? "metrics" : "admin", w->cfg.max_admin_connections);
        }
        return;
    }
    mw_conn_t *c = mw__conn_new(w, fd, (struct sockaddr *)&ss, sl);
    c->admin = 1;
    c->metrics_only = (uint8_t)metrics_only;
    w->nservice++;
}

static void admin_accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    mw_worker_t *w = (mw_worker_t *)((char *)io - offsetof(mw_worker_t, admin_io));
    accept_service(w, w->admin_fd, 0);
}

static void metrics_accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    mw_worker_t *w = (mw_worker_t *)((char *)io - offsetof(mw_worker_t, metrics_io));
    accept_service(w, w->metrics_fd, 1);
}

static int listen_service(mw_worker_t *w, const char *host, int port, int *fdp, ev_io *io,
                          void (*cb)(struct ev_loop *, ev_io *, int),
                          void (*fn)(void *ud, mw_conn_t *c, const mw_http_request_t *req),
                          void *ud, char *err, size_t errlen)
{
    int fd = listen_on(host, port, 0, 64, err, errlen); /* admin and metrics: few clients */
    if (fd < 0)
        return -1;
    *fdp = fd;
    w->admin_request = fn;
    w->admin_ud = ud;
    ev_io_init(io, cb, fd, EV_READ);
    ev_io_start(w->loop, io);
    return 0;
}

int mw__worker_listen_metrics(mw_worker_t *w, const char *host, int port,
                              void (*fn)(void *ud, mw_conn_t *c, const mw_http_request_t *req),
                              void *ud, char *err, size_t errlen)
{
    return listen_service(w, host, port, &w->metrics_fd, &w->metrics_io, metrics_accept_cb, fn, ud,
                          err, errlen);
}

int mw__worker_listen_admin(mw_worker_t *w, const char *host, int port,
                            void (*fn)(void *ud, mw_conn_t *c, const mw_http_request_t *req),
                            void *ud, char *err, size_t errlen)
{
    return listen_service(w, host, port, &w->admin_fd, &w->admin_io, admin_accept_cb, fn, ud, err,
                          errlen);
}

int mw__fd_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (fd < 0 || getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
        return -1;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

int mw__fd_is_loopback(int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (fd < 0 || getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
        return 0;
    if (ss.ss_family == AF_INET)
        return (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127;
    if (ss.ss_family == AF_INET6) {
        const struct in6_addr *a = &((struct sockaddr_in6 *)&ss)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a))
            return 1;
        /* ::ffff:127.x.y.z */
        return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
    }
    return 0;
}

int mw__worker_port(const mw_worker_t *w)
{
    return mw__fd_port(w->listen_fd);
}

void mw__worker_start(mw_worker_t *w)
{
    ev_io_start(w->loop, &w->accept_io);
}

static void close_listeners(mw_worker_t *w)
{
    ev_io_stop(w->loop, &w->accept_io);
    ev_timer_stop(w->loop, &w->accept_pause);
    if (w->listen_fd >= 0) {
        close(w->listen_fd);
        w->listen_fd = -1;
    }
    if (w->tls_fd >= 0) {
        ev_io_stop(w->loop, &w->tls_io);
        close(w->tls_fd);
        w->tls_fd = -1;
    }
}

size_t mw__worker_drain(mw_worker_t *w)
{
    w->stopping = 1;
    close_listeners(w);
    for (mw_conn_t *c = w->all_head; c;) {
        mw__conn_retain(c);
        switch (c->state) {
        case MW_CONN_OPEN:
            /* RFC 6455 7.4.1: 1001, going away. Messages the client sent
             * before it saw this close are still delivered. */
            mw__conn_close(c, MW_WS_CLOSE_GOING_AWAY, "server shutting down", 20);
            break;
        case MW_CONN_HTTP:
            /* Between requests: nothing is lost by closing now. */
            if (c->in_len == 0)
                mw__conn_teardown(c, MW_WS_CLOSE_GOING_AWAY, NULL);
            break;
        case MW_CONN_HTTP_BODY:
        case MW_CONN_REQUEST:
            c->keepalive = 0; /* answer this request, then close */
            break;
        default:
            break;
        }
        mw_conn_t *next = c->all_next;
        mw__conn_release(c);
        c = next;
    }
    return w->nconns;
}

void mw__worker_stop(mw_worker_t *w)
{
    w->stopping = 1;
    ev_io_stop(w->loop, &w->accept_io);
    ev_timer_stop(w->loop, &w->accept_pause);
    if (w->listen_fd >= 0) {
        close(w->listen_fd);
        w->listen_fd = -1;
    }
    if (w->admin_fd >= 0) {
        ev_io_stop(w->loop, &w->admin_io);
        close(w->admin_fd);
        w->admin_fd = -1;
    }
    if (w->metrics_fd >= 0) {
        ev_io_stop(w->loop, &w->metrics_io);
        close(w->metrics_fd);
        w->metrics_fd = -1;
    }
    if (w->tls_fd >= 0) {
        ev_io_stop(w->loop, &w->tls_io);
        close(w->tls_fd);
        w->tls_fd = -1;
    }
    mw_conn_t *c = w->all_head;
    while (c) {
        mw__conn_retain(c);
        if (c->state == MW_CONN_OPEN) {
            mw__conn_close(c, MW_WS_CLOSE_GOING_AWAY, "server shutting down", 20);
            mw__conn_flush(c);
        }
        if (c->state != MW_CONN_DEAD)
            mw__conn_teardown(c, MW_WS_CLOSE_GOING_AWAY, "server shutting down");
        mw_conn_t *next = c->all_next;
        mw__conn_release(c);
        c = next;
    }
}

void mw__worker_free(mw_worker_t *w)
{
    flush_pass(w->loop, &w->flush_prep, 0);
    ev_prepare_stop(w->loop, &w->flush_prep);
    for (int i = 1; i < MW_TL_COUNT; i++)
        mw__tlist_free(&w->tl[i]);
    mw__tlist_free(&w->idle);
    mw__chunk_pool_free(&w->pool);
    mw__pubsub_free(w->pubsub);
    free(w->rbuf);
    free(w->hdrs);
    free(w->tls_wbuf);
    mw__pmd_shared_free(&w->pmd);
    if (w->tls_ctx)
        SSL_CTX_free(w->tls_ctx);
}
