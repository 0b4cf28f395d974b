/* Connection lifecycle and I/O: accept-time setup, the read path into the
 * worker's shared buffer, corked writes flushed with writev, backpressure
 * on the socket, and the one teardown path that every close takes. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"
#include "pubsub.h"
#include "tls.h"

/* --- plain TCP transport ------------------------------------------------ */

static ssize_t tcp_read(mw_conn_t *c, void *buf, size_t len)
{
    return read(c->io.fd, buf, len);
}

static ssize_t tcp_writev(mw_conn_t *c, const struct iovec *iov, int n)
{
    return writev(c->io.fd, iov, n);
}

static const mw_transport_t tcp_transport = {tcp_read, tcp_writev};

/* Test transport: moves one byte per call, so every partial read and
 * partial write path runs (MOONWIRE_TEST_SHORT_IO=1). */
static ssize_t short_read(mw_conn_t *c, void *buf, size_t len)
{
    return read(c->io.fd, buf, len ? 1 : 0);
}

static ssize_t short_writev(mw_conn_t *c, const struct iovec *iov, int n)
{
    for (int i = 0; i < n; i++)
        if (iov[i].iov_len)
            return write(c->io.fd, iov[i].iov_base, 1);
    return 0;
}

static const mw_transport_t short_transport = {short_read, short_writev};

/* --- lifecycle ------------------------------------------------------------ */

static void conn_io_cb(struct ev_loop *loop, ev_io *io, int revents);

mw_conn_t *mw__conn_new(mw_worker_t *w, int fd, const struct sockaddr *sa, socklen_t salen)
{
    mw_conn_t *c = mw__xcalloc(1, sizeof *c);
    c->w = w;
    c->tp = w->short_io ? &short_transport : &tcp_transport;
    /* Unique in the process: worker i numbers i+1, i+1+N, i+1+2N... */
    c->id = (w->next_id += (uint64_t)(w->cfg.workers > 0 ? w->cfg.workers : 1)) - w->cfg.workers +
            (uint64_t)w->index + 1;
    c->refs = 1;
    c->state = MW_CONN_HTTP;
    c->app_ref = -2; /* LUA_NOREF */
    if (salen > sizeof c->peer)
        salen = sizeof c->peer;
    memcpy(&c->peer, sa, salen);
    ev_io_init(&c->io, conn_io_cb, fd, EV_READ);
    ev_io_start(w->loop, &c->io);

    c->all_next = w->all_head;
    if (w->all_head)
        w->all_head->all_prev = c;
    w->all_head = c;
    w->nconns++;
    c->t_open = ev_now(w->loop);
    mw__tl_move(c, MW_TL_HANDSHAKE);
    return c;
}

static void inbox_clear(mw_conn_t *c)
{
    while (c->inbox_head) {
        mw_inbox_ev_t *e = c->inbox_head;
        c->inbox_head = e->next;
        free(e);
    }
    c->inbox_tail = NULL;
    c->inbox_bytes = 0;
}

void mw__conn_release(mw_conn_t *c)
{
    if (--c->refs > 0)
        return;
    /* Dead connections stay on the worker's list until freed, so shutdown
     * can find the ones the app still holds. */
    mw_worker_t *w = c->w;
    if (c->all_prev)
        c->all_prev->all_next = c->all_next;
    else
        w->all_head = c->all_next;
    if (c->all_next)
        c->all_next->all_prev = c->all_prev;
    inbox_clear(c);
    free(c->close_reason);
    free(c->head);
    free(c);
}

void mw__conn_deliver_close(mw_conn_t *c)
{
    mw_worker_t *w = c->w;
    if (!c->opened || c->close_owed_delivered)
        return;
    c->close_owed_delivered = 1;
    w->stats.closes[mw__stats_code_index(c->close_code)]++;
    if (w->access_log) {
        char addr[64];
        int port = mw__conn_peer(c, addr, sizeof addr);
        mw__log_access("ws_close", "id=%llu addr=%s:%d code=%u duration=%.3f",
                       (unsigned long long)c->id, addr, port, c->close_code,
                       ev_now(w->loop) - c->t_open);
    }
    const char *r = c->close_reason ? c->close_reason : "";
    size_t rl = strlen(r);
    if (c->busy || c->inbox_head) {
        /* After the messages that wait for a busy handler: on_close is last. */
        mw_inbox_ev_t *e = mw__xmalloc(sizeof *e + rl + 1);
        e->next = NULL;
        e->kind = MW_INBOX_CLOSE;
        e->binary = 0;
        e->code = c->close_code;
        e->len = rl;
        memcpy(e->data, r, rl + 1);
        if (c->inbox_tail)
            c->inbox_tail->next = e;
        else
            c->inbox_head = e;
        c->inbox_tail = e;
        return;
    }
    mw__conn_retain(c);
    w->ops->on_close(w->ops_ud, c, c->close_code, r, rl);
    mw__conn_release(c);
}

void mw__conn_teardown(mw_conn_t *c, uint16_t code, const char *reason)
{
    mw_worker_t *w = c->w;
    if (c->state == MW_CONN_DEAD)
        return;
    mw__conn_retain(c);
    c->state = MW_CONN_DEAD;
    ev_io_stop(w->loop, &c->io);
    mw__tls_free(c);
    close(c->io.fd);
    mw__tl_move(c, MW_TL_NONE);
    mw__idle_remove(c);
    mw__pubsub_leave_all(w->pubsub, c); /* subscriptions end with the connection */
    mw__outq_clear(&w->pool, &c->out);
    free(c->in);
    c->in = NULL;
    c->in_len = 0;
    free(c->msg);
    c->msg = NULL;
    c->msg_len = c->msg_cap = 0;
    if (c->pmd) {
        mw__pmd_free(c->pmd);
        free(c->pmd);
        c->pmd = NULL;
    }

    w->nconns--;
    if (c->admin)
        w->nservice--;

    /* A close code was recorded when a close frame went either way; without
     * one the connection ended abnormally (RFC 6455 7.1.5: 1006). */
    if (!c->close_code) {
        c->close_code = code ? code : MW_WS_CLOSE_ABNORMAL;
        free(c->close_reason);
        c->close_reason = reason && *reason ? strdup(reason) : NULL;
    }
    mw__conn_deliver_close(c);
    /* Drop the transport's reference and our own in one step: the own one
     * keeps refs above zero here, and one release call lets the compiler
     * see that c is not used after it may be freed. */
    c->refs--;
    mw__conn_release(c);
}

/* --- writes --------------------------------------------------------------- */

void mw__conn_want_flush(mw_conn_t *c)
{
    if (c->in_flush || c->writing || c->state == MW_CONN_DEAD)
        return;
    /* The flush list holds a reference, so a connection torn down while on
     * it is simply skipped by the flush pass, with no unlinking here. */
    mw__conn_retain(c);
    c->in_flush = 1;
    c->flush_next = c->w->flush_head;
    c->w->flush_head = c;
}

static void update_events(mw_conn_t *c)
{
    int ev = (c->paused ? 0 : EV_READ) | (c->writing || c->tls_want_write ? EV_WRITE : 0);
    if (ev == (c->io.events & (EV_READ | EV_WRITE)) && ev_is_active(&c->io))
        return;
    ev_io_stop(c->w->loop, &c->io);
    ev_io_set(&c->io, c->io.fd, ev);
    if (ev)
        ev_io_start(c->w->loop, &c->io);
}

void mw__conn_send_now(mw_conn_t *c, const uint8_t *frame, size_t n)
{
    size_t done = 0;
    if (c->out.bytes == 0 && c->tp == &tcp_transport) {
        ssize_t k = write(c->io.fd, frame, n);
        if (k > 0) {
            done = (size_t)k;
            if (!c->admin)
                c->w->stats.bytes_out += (uint64_t)k;
        }
    }
    if (done < n) {
        mw__outq_append2(&c->w->pool, &c->out, frame + done, n - done, NULL, 0);
        mw__conn_want_flush(c);
    }
}

void mw__conn_flush(mw_conn_t *c)
{
    mw_worker_t *w = c->w;
    struct iovec iov[64];
    while (c->out.bytes > 0 && c->state != MW_CONN_DEAD) {
        int n = mw__outq_iov(&c->out, iov, 64);
        if (n == 0) {
            /* The next bytes are in a file (a static response). */
            if (mw__outq_fill(&w->pool, &c->out) < 0) {
                mw_warn("conn %llu: reading a static file failed: %s", (unsigned long long)c->id,
                        strerror(errno));
                mw__conn_teardown(c, MW_WS_CLOSE_ABNORMAL, NULL);
                return;
            }
            continue;
        }
        ssize_t k = c->tp->writev(c, iov, n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!c->writing) {
                    c->writing = 1;
                    update_events(c);
                }
                return;
            }
            mw_debug("conn %llu: write failed: %s", (unsigned long long)c->id, strerror(errno));
            mw__conn_teardown(c, MW_WS_CLOSE_ABNORMAL, NULL);
            return;
        }
        mw__outq_consume(&w->pool, &c->out, (size_t)k);
        if (!c->admin) /* scrapes and admin calls are not the app's traffic */
            w->stats.bytes_out += (uint64_t)k;
        if (c->above_low && c->out.bytes < w->routes[c->route].low_water_mark)
            mw__conn_drained(c);
        if (w->short_io && c->out.bytes > 0) {
            /* Let the loop turn between single bytes, as a congested socket would. */
            if (!c->writing) {
                c->writing = 1;
                update_events(c);
            }
            return;
        }
    }
    if (c->writing) {
        c->writing = 0;
        update_events(c);
    }
    /* After a reply to the peer's close, or an HTTP error, the server closes
     * the TCP connection first (RFC 6455 7.1.1) once everything is out. */
    if (c->state == MW_CONN_FLUSHCLOSE && c->out.bytes == 0 && !c->fin_sent) {
        /* Half-close and keep reading (and discarding) until the peer's
         * EOF or close_timeout: closing with unread input would make the
         * kernel send a reset that can destroy our last bytes in flight. */
        c->fin_sent = 1;
        mw__tls_shutdown(c);
        shutdown(c->io.fd, SHUT_WR);
        if (c->tl_list != MW_TL_CLOSING)
            mw__tl_move(c, MW_TL_CLOSING);
    }
}

void mw__conn_set_reading(mw_conn_t *c, int on)
{
    if (c->state == MW_CONN_DEAD || c->paused == !on)
        return;
    c->paused = !on;
    /* A connection we do not read cannot show us its pongs: no heartbeat
     * while paused, a fresh one when reading resumes. */
    if (c->state == MW_CONN_OPEN)
        mw__tl_move(c, on ? MW_TL_ACTIVE : MW_TL_NONE);
    update_events(c);
}

/* --- reads ---------------------------------------------------------------- */

size_t mw__conn_process(mw_conn_t *c, uint8_t *buf, size_t len)
{
    switch (c->state) {
    case MW_CONN_HTTP:
        return mw__conn_http_input(c, buf, len);
    case MW_CONN_OPEN:
    case MW_CONN_CLOSING:
        return mw__conn_ws_input(c, buf, len);
    case MW_CONN_HTTP_BODY:
        return mw__conn_http_body(c, buf, len);
    case MW_CONN_UPGRADING:
    case MW_CONN_REQUEST:
        return 0; /* held until the app decides */
    default:
        return len; /* nothing more is read once we are closing the socket */
    }
}

/* Keeps buf[off..len) as the connection's carried-over input. */
static void keep_rest(mw_conn_t *c, const uint8_t *buf, size_t off, size_t len)
{
    size_t rest = len - off;
    if (rest == 0 || c->state == MW_CONN_DEAD)
        return;
    /* Processing may itself have stashed input (a pending upgrade); what
     * is left here comes after it. */
    c->in = mw__xrealloc(c->in, c->in_len + rest);
    memcpy(c->in + c->in_len, buf + off, rest);
    c->in_len += (uint32_t)rest;
}

static void read_once(mw_conn_t *c)
{
    mw_worker_t *w = c->w;
    if (c->in_len + 4096 > w->rbuf_cap) {
        /* Held input this large means the app is behind: let it catch up
         * before reading more (it resumes through mw__conn_resume_input). */
        mw__conn_set_reading(c, 0);
        return;
    }
    /* Carried-over bytes go in front of the fresh ones, so the parsers
     * always see one contiguous buffer. The read buffer holds the largest
     * carry-over (a request head up to max_header_bytes) plus 64 KiB. */
    size_t have = c->in_len;
    if (have)
        memcpy(w->rbuf, c->in, have);
    size_t room = w->rbuf_cap - have;
    if (w->short_io && c->ssl)
        room = 1; /* tests: each TLS read fills its buffer, OpenSSL holding the rest */
    ssize_t n = c->tp->read(c, w->rbuf + have, room);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        mw_debug("conn %llu: read failed: %s", (unsigned long long)c->id, strerror(errno));
        mw__conn_teardown(c, MW_WS_CLOSE_ABNORMAL, NULL);
        return;
    }
    if (n == 0) {
        /* EOF. After a completed close handshake this is the normal end. */
        mw__conn_teardown(c, MW_WS_CLOSE_ABNORMAL, NULL);
        return;
    }
    free(c->in);
    c->in = NULL;
    c->in_len = 0;
    if (!c->admin)
        w->stats.bytes_in += (uint64_t)n;
    have += (size_t)n;
    size_t used = mw__conn_process(c, w->rbuf, have);
    keep_rest(c, w->rbuf, used, have);
}

static void on_readable(mw_conn_t *c)
{
    /* TLS may hold bytes beyond what fit in the read buffer (decrypted, or
     * records read ahead); the kernel will never announce them, so read on
     * while the last read filled the buffer and OpenSSL holds more. A
     * partial record held is not "more": it needs the socket's next bytes,
     * which the loop announces. */
    do {
        c->tls_more = 0;
        read_once(c);
    } while (c->ssl && c->state != MW_CONN_DEAD && !c->paused && c->tls_more);
}

static void conn_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    mw_conn_t *c = (mw_conn_t *)((char *)io - offsetof(mw_conn_t, io));
    mw__conn_retain(c);
    int retry_read = 0;
    if ((revents & EV_WRITE) && c->tls_want_write) {
        /* OpenSSL wanted to write to go on reading (a handshake flight). */
        c->tls_want_write = 0;
        retry_read = 1;
        update_events(c);
    }
    if ((revents & EV_WRITE) && c->state != MW_CONN_DEAD)
        mw__conn_flush(c);
    if (((revents & EV_READ) || retry_read) && c->state != MW_CONN_DEAD && !c->paused) {
        on_readable(c);
        if (c->tls_want_write && c->state != MW_CONN_DEAD)
            update_events(c);
    }
    mw__conn_release(c);
}

void mw__conn_input_due(mw_conn_t *c)
{
    if (c->input_due || c->state == MW_CONN_DEAD)
        return;
    mw__conn_retain(c); /* the list's reference */
    c->input_due = 1;
    c->input_next = c->w->input_head;
    c->w->input_head = c;
}

void mw__conn_resume_input(mw_conn_t *c)
{
    if (c->state == MW_CONN_DEAD)
        return;
    mw__conn_retain(c);
    c->paused = 0;
    if (c->in_len) {
        /* Parse from the carry-over itself: the parser unmasks in place and
         * what it leaves is carried over again. */
        uint8_t *buf = c->in;
        size_t len = c->in_len;
        c->in = NULL;
        c->in_len = 0;
        size_t used = mw__conn_process(c, buf, len);
        keep_rest(c, buf, used, len);
        free(buf);
    }
    if (c->state == MW_CONN_OPEN && c->tl_list == MW_TL_NONE && !c->paused)
        mw__tl_move(c, MW_TL_ACTIVE);
    if (c->state != MW_CONN_DEAD)
        update_events(c);
    /* Bytes OpenSSL held while we were paused: no event will come for them
     * (a partial record costs one read that finds the socket empty). */
    if (c->ssl && c->state != MW_CONN_DEAD && !c->paused && SSL_has_pending(c->ssl))
        on_readable(c);
    mw__conn_release(c);
}

int mw__conn_peer(const mw_conn_t *c, char *buf, size_t len)
{
    if (c->peer.sa.sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &c->peer.v6.sin6_addr, buf, (socklen_t)len);
        return ntohs(c->peer.v6.sin6_port);
    }
    inet_ntop(AF_INET, &c->peer.v4.sin_addr, buf, (socklen_t)len);
    return ntohs(c->peer.v4.sin_port);
}
