/* conn.c: the generator's connections and their epoll loop: connecting
 * (optionally from several source addresses), the WebSocket upgrade, the
 * client side of RFC 6455 framing, and writes batched per loop iteration.
 * What the messages mean is the mode's business (w->on_payload,
 * w->on_message); TLS and deflate come from tls_deflate.c.
 *
 * Design: one epoll loop per worker, non-blocking sockets, level-triggered.
 * Frames are parsed where they land in one read buffer per worker; payload
 * bytes are verified in place by the mode, so no receive buffer is kept per
 * connection. Sends made while one batch of events is handled are appended
 * to the connection's output buffer and flushed once per batch. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loadgen.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define RBUF_SIZE  (256 * 1024)
#define MAX_EVENTS 512
#define HS_MAX     2048

/* ---- connections ------------------------------------------------------ */

void conn_error(struct conn *c, const char *fmt, ...)
{
    struct worker *w = c->w;
    w->errors++;
    if (!w->first_error[0]) {
        va_list ap;
        va_start(ap, fmt);
        int n = snprintf(w->first_error, sizeof w->first_error, "conn %d: ", c->id);
        vsnprintf(w->first_error + n, sizeof w->first_error - (size_t)n, fmt, ap);
        va_end(ap);
    }
}

static void conn_close(struct conn *c)
{
    if (c->state == ST_CLOSED)
        return;
    if (c->state == ST_OPEN)
        c->w->closed_count++;
    epoll_ctl(c->w->ep, EPOLL_CTL_DEL, c->fd, NULL);
    if (c->ssl)
        tls_free(c);
    close(c->fd);
    c->fd = -1;
    c->state = ST_CLOSED;
    free(c->hs);
    c->hs = NULL;
    free(c->zin);
    c->zin = NULL;
    c->zin_len = c->zin_cap = 0;
}

static void out_reserve(struct conn *c, size_t more)
{
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_len + more <= c->out_cap)
        return;
    if (c->out_off > 0) { /* compact before growing */
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
        if (c->out_len + more <= c->out_cap)
            return;
    }
    c->out = grow(c->out, &c->out_cap, c->out_len + more);
}

static void mark_dirty(struct conn *c)
{
    if (!c->dirty) {
        c->dirty = 1;
        c->w->dirty[c->w->ndirty++] = c;
    }
}

static uint32_t rng_next(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

/* Appends one masked client frame (RFC 6455 5.2, 5.3). Masks 8 bytes at a
 * time so that the generator's own cost stays small next to the server's. */
void queue_frame(struct conn *c, int opcode, const uint8_t *data, size_t len)
{
    int rsv1 = 0;
    if (c->w->cfg->deflate && opcode < 8) {
        len = deflate_msg(c->w, data, len);
        data = c->w->zbuf;
        rsv1 = 0x40;
    }
    out_reserve(c, len + 14);
    uint8_t *p = c->out + c->out_len;
    size_t h = 0;
    p[h++] = (uint8_t)(0x80 | rsv1 | opcode);
    if (len < 126) {
        p[h++] = (uint8_t)(0x80 | len);
    } else if (len < 65536) {
        p[h++] = 0x80 | 126;
        p[h++] = (uint8_t)(len >> 8);
        p[h++] = (uint8_t)len;
    } else {
        p[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            p[h++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    uint32_t key = rng_next(&c->w->rng);
    memcpy(p + h, &key, 4);
    h += 4;
    uint8_t *dst = p + h;
    uint64_t key8 = (uint64_t)key | ((uint64_t)key << 32);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v;
        memcpy(&v, data + i, 8);
        v ^= key8;
        memcpy(dst + i, &v, 8);
    }
    const uint8_t *k = (const uint8_t *)&key;
    for (; i < len; i++)
        dst[i] = data[i] ^ k[i & 3];
    c->out_len += h + len;
    mark_dirty(c);
}

void queue_raw(struct conn *c, const uint8_t *data, size_t len)
{
    out_reserve(c, len);
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    mark_dirty(c);
}

static void set_out_interest(struct conn *c, int want)
{
    if (c->out_armed == want || c->state == ST_CLOSED)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(c->w->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->out_armed = (uint8_t)want;
}

static void flush_conn(struct conn *c)
{
    c->dirty = 0;
    if (c->state == ST_CLOSED)
        return;
    while (c->out_off < c->out_len) {
        ssize_t n = io_write(c, c->out + c->out_off, c->out_len - c->out_off);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            set_out_interest(c, 1); /* the kernel pushes back: wait for room */
            return;
        }
        conn_error(c, "write: %s", strerror(errno));
        conn_close(c);
        return;
    }
    c->out_off = c->out_len = 0;
    set_out_interest(c, 0);
}

void flush_dirty(struct worker *w)
{
    for (int i = 0; i < w->ndirty; i++)
        flush_conn(w->dirty[i]);
    w->ndirty = 0;
}

/* ---- frame parsing ---------------------------------------------------- */

static void on_control(struct conn *c)
{
    if (c->opcode == 9) { /* ping: answer with the same payload */
        c->w->pings++;
        queue_frame(c, 10, c->ctl, c->ctl_len);
    } else if (c->opcode == 8) {
        unsigned code = c->ctl_len >= 2 ? (unsigned)(c->ctl[0] << 8 | c->ctl[1]) : 1005;
        conn_error(c, "server closed the connection (code %u)", code);
        conn_close(c);
    }
}

/* Parses server frames (unmasked, RFC 6455 5.2) from bytes as they arrive;
 * only a split header and a control payload are kept between reads. */
static void ws_input(struct conn *c, const uint8_t *p, size_t n)
{
    const struct config *cfg = c->w->cfg;
    while (n > 0 && c->state == ST_OPEN) {
        if (c->frame_left == 0) {
            /* assembling a header (a zero-length frame ends right here) */
            size_t need = 2;
            if (c->hdr_len >= 2) {
                uint8_t l7 = c->hdr[1] & 0x7f;
                need = l7 == 126 ? 4 : l7 == 127 ? 10 : 2;
            }
            while (c->hdr_len < need && n > 0) {
                c->hdr[c->hdr_len++] = *p++;
                n--;
                if (c->hdr_len == 2) {
                    uint8_t l7 = c->hdr[1] & 0x7f;
                    need = l7 == 126 ? 4 : l7 == 127 ? 10 : 2;
                }
            }
            if (c->hdr_len < need)
                return;
            if (c->hdr[1] & 0x80) {
                conn_error(c, "masked frame from the server");
                conn_close(c);
                return;
            }
            uint64_t len = c->hdr[1] & 0x7f;
            if (len == 126)
                len = (uint64_t)c->hdr[2] << 8 | c->hdr[3];
            else if (len == 127)
                for (int i = 0; i < 8; i++)
                    len = (i ? len << 8 : 0) | c->hdr[2 + i];
            c->opcode = c->hdr[0] & 0x0f;
            c->fin = c->hdr[0] >> 7;
            if (c->opcode >= 1 && c->opcode <= 2 && (c->hdr[0] & 0x40)) {
                if (!cfg->deflate) {
                    conn_error(c, "compressed frame without permessage-deflate");
                    conn_close(c);
                    return;
                }
                c->zmsg = 1;
                c->zin_len = 0;
            }
            c->hdr_len = 0;
            c->frame_left = len;
            if (c->opcode >= 8) {
                if (len > 125) {
                    conn_error(c, "control frame of %" PRIu64 " bytes", len);
                    conn_close(c);
                    return;
                }
                c->ctl_len = 0;
            } else if (c->opcode == 0) {
                if (!c->in_msg) {
                    conn_error(c, "continuation without a message");
                    conn_close(c);
                    return;
                }
            } else {
                if (c->in_msg) {
                    conn_error(c, "new message inside a fragmented one");
                    conn_close(c);
                    return;
                }
                if (c->opcode != (cfg->binary ? 2 : 1)) {
                    conn_error(c, "opcode %d, expected %d", c->opcode, cfg->binary ? 2 : 1);
                    c->w->verify_errors++;
                }
                c->in_msg = 1;
            }
            if (len == 0)
                goto frame_end;
            if (n == 0)
                return;
        }
        {
            size_t take = n < c->frame_left ? n : (size_t)c->frame_left;
            if (c->opcode >= 8) {
                memcpy(c->ctl + c->ctl_len, p, take);
                c->ctl_len = (uint8_t)(c->ctl_len + take);
            } else if (c->zmsg) {
                zin_append(c, p, take);
            } else {
                c->w->on_payload(c, p, take);
            }
            p += take;
            n -= take;
            c->frame_left -= take;
            if (c->frame_left > 0)
                return;
        }
    frame_end:
        if (c->opcode >= 8) {
            on_control(c);
        } else if (c->fin) {
            c->in_msg = 0;
            if (c->zmsg) {
                c->zmsg = 0;
                long z = inflate_msg(c->w, c);
                if (z < 0) {
                    conn_error(c, "bad compressed data from the server");
                    c->w->verify_errors++;
                    conn_close(c);
                    return;
                }
                c->w->on_payload(c, c->w->zbuf, (size_t)z);
            }
            c->w->on_message(c);
        }
    }
}

/* Plain TCP: the stream is the concatenation of the messages sent. */
static void raw_input(struct conn *c, const uint8_t *p, size_t n)
{
    struct worker *w = c->w;
    while (n > 0) {
        size_t take = w->cfg->size - (size_t)c->rx_off;
        if (take > n)
            take = n;
        w->on_payload(c, p, take);
        p += take;
        n -= take;
        if (c->rx_off == w->cfg->size)
            w->on_message(c);
    }
}

/* ---- connecting and the handshake ------------------------------------- */

static const char *const hs_key = "dGhlIHNhbXBsZSBub25jZQ==";
static const char *const hs_accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="; /* RFC 6455 1.3 */

/* The port a connection in this role connects to (and names in Host:):
 * broadcast's publisher may talk to another server (--pub-port). */
static int role_port(const struct config *cfg, enum role role)
{
    return role == R_PUB && cfg->pub_port ? cfg->pub_port : cfg->port;
}

void build_request(struct worker *w, const char *path, enum role role)
{
    const struct config *cfg = w->cfg;
    w->hs_request_len =
        (size_t)snprintf(w->hs_request, sizeof w->hs_request,
                         "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                         "Sec-WebSocket-Version: 13\r\n%s\r\n",
                         path, cfg->host, role_port(cfg, role), hs_key,
                         cfg->deflate ? "Sec-WebSocket-Extensions: permessage-deflate; "
                                        "client_no_context_takeover; server_no_context_takeover\r\n"
                                      : "");
}

/* conn_start's failure after `call` set errno: counted, the socket (if
 * any) closed and c->fd cleared, so that nothing later closes the number
 * again once another socket has it. c is left closed; returns -1. */
static int start_failed(struct conn *c, const char *call)
{
    conn_error(c, "%s: %s", call, strerror(errno));
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->state = ST_CLOSED;
    c->w->conn_failed++;
    return -1;
}

int conn_start(struct worker *w, struct conn *c)
{
    const struct config *cfg = w->cfg;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return start_failed(c, "socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (cfg->src_addrs > 0) {
        /* Several source addresses multiply the ephemeral ports available
         * towards one server address; the port is picked at connect time. */
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(c->id % cfg->src_addrs));
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(c->fd, (struct sockaddr *)&src, sizeof src) != 0)
            return start_failed(c, "bind");
    }
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)role_port(cfg, c->role))};
    inet_pton(AF_INET, cfg->host, &sa.sin_addr);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS)
        return start_failed(c, "connect");
    c->state = ST_CONNECTING;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    c->out_armed = 1;
    epoll_ctl(w->ep, EPOLL_CTL_ADD, c->fd, &ev);
    return 0;
}

static void conn_opened(struct conn *c)
{
    c->state = ST_OPEN;
    c->w->open_count++;
    free(c->hs);
    c->hs = NULL;
}

void conn_fail(struct conn *c, const char *what)
{
    conn_error(c, "%s", what);
    c->w->conn_failed++;
    conn_close(c);
}

static void handshake_input(struct conn *c, const uint8_t *p, size_t n)
{
    if (!c->hs)
        c->hs = malloc(HS_MAX + 1);
    size_t take = n < HS_MAX - c->hs_len ? n : HS_MAX - c->hs_len;
    memcpy(c->hs + c->hs_len, p, take);
    c->hs_len += take;
    c->hs[c->hs_len] = 0;
    char *end = strstr(c->hs, "\r\n\r\n");
    if (!end) {
        if (c->hs_len == HS_MAX)
            conn_fail(c, "handshake response too long");
        return;
    }
    size_t head = (size_t)(end + 4 - c->hs);
    if (strncmp(c->hs, "HTTP/1.1 101", 12) != 0) {
        char *eol = strstr(c->hs, "\r\n");
        *eol = 0;
        char msg[160];
        snprintf(msg, sizeof msg, "handshake refused: %.120s", c->hs);
        conn_fail(c, msg);
        return;
    }
    int ok = 0, pmd = 0;
    for (char *l = strstr(c->hs, "\r\n"); l && l < end; l = strstr(l + 2, "\r\n")) {
        if (strncasecmp(l + 2, "sec-websocket-accept:", 21) == 0) {
            /* the value alone: optional whitespace around exactly the
             * expected 28 characters */
            char *v = l + 23;
            while (*v == ' ' || *v == '\t')
                v++;
            char *t = v + strnlen(v, 28);
            while (*t == ' ' || *t == '\t')
                t++;
            ok = strncmp(v, hs_accept, 28) == 0 && t[0] == '\r' && t[1] == '\n';
        } else if (strncasecmp(l + 2, "sec-websocket-extensions:", 25) == 0) {
            /* this header line only (it ends by `end`), not the headers or
             * the frames after it: a token permessage-deflate, followed by
             * parameters or the end, not a longer name containing it */
            char *eol = strstr(l + 2, "\r\n");
            for (char *t = l + 27; t < eol && !pmd; t++) {
                size_t left = (size_t)(eol - t);
                int starts =
                    t == l + 27 || t[-1] == ' ' || t[-1] == '\t' || t[-1] == ',' || t[-1] == ':';
                pmd = starts && left >= 18 && strncasecmp(t, "permessage-deflate", 18) == 0 &&
                      (left == 18 || t[18] == ';' || t[18] == ',' || t[18] == ' ' || t[18] == '\t');
            }
        }
    }
    if (!ok) {
        conn_fail(c, "bad Sec-WebSocket-Accept");
        return;
    }
    if (c->w->cfg->deflate && !pmd) {
        conn_fail(c, "the server declined permessage-deflate (is compression on for the route?)");
        return;
    }
    /* frames that came in the same read as the end of the head */
    size_t rest = c->hs_len - head;
    uint8_t tmp[HS_MAX];
    memcpy(tmp, c->hs + head, rest);
    conn_opened(c);
    if (rest)
        ws_input(c, tmp, rest);
    /* and those of this read that did not fit the head's buffer */
    if (take < n && c->state != ST_CLOSED)
        ws_input(c, p + take, n - take);
}

static void send_request(struct conn *c)
{
    struct worker *w = c->w;
    ssize_t n = io_write(c, w->hs_request, w->hs_request_len);
    if (n != (ssize_t)w->hs_request_len) {
        conn_fail(c, "handshake request not written in one piece");
        return;
    }
    set_out_interest(c, 0);
}

static void conn_event(struct conn *c, uint32_t events)
{
    struct worker *w = c->w;
    if (c->state == ST_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            conn_fail(c, strerror(err));
            return;
        }
        if (!(events & (EPOLLOUT | EPOLLIN)))
            return;
        if (w->cfg->tcp) {
            conn_opened(c);
            set_out_interest(c, 0);
            return;
        }
        if (w->cfg->tls) {
            if (tls_start(c, w->cfg->tls_ctx) != 0) {
                conn_fail(c, "SSL_new failed");
                return;
            }
            c->state = ST_TLS;
        } else {
            c->state = ST_HANDSHAKE;
            send_request(c);
            return;
        }
    }
    if (c->state == ST_TLS) {
        int want_write = 0;
        const char *why = NULL;
        int r = tls_handshake(c, &want_write, &why);
        if (r > 0) {
            c->state = ST_HANDSHAKE;
            send_request(c);
            return;
        }
        if (r == 0) {
            set_out_interest(c, want_write);
            return;
        }
        char msg[160];
        snprintf(msg, sizeof msg, "TLS handshake failed: %s", why);
        conn_fail(c, msg);
        return;
    }
    if ((events & EPOLLOUT) && c->out_off < c->out_len)
        flush_conn(c);
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)) || c->state == ST_CLOSED)
        return;
    /* TLS may hold bytes (decrypted, or records read ahead) the socket no
     * longer signals: read while OpenSSL holds any (plain sockets: one read
     * per event, level-triggered). A partial record held ends in EAGAIN. */
    do {
        ssize_t n = io_read(c, w->rbuf, RBUF_SIZE);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) {
            if (c->state == ST_HANDSHAKE) {
                conn_fail(c, n == 0 ? "closed during the handshake" : strerror(errno));
            } else {
                w->dropped++;
                conn_error(c, "%s", n == 0 ? "closed by the server" : strerror(errno));
                conn_close(c);
            }
            return;
        }
        if (c->state == ST_HANDSHAKE)
            handshake_input(c, w->rbuf, (size_t)n);
        else if (w->cfg->tcp)
            raw_input(c, w->rbuf, (size_t)n);
        else
            ws_input(c, w->rbuf, (size_t)n);
    } while (c->ssl && c->state != ST_CLOSED && tls_pending(c));
}

void worker_poll(struct worker *w, int timeout_ms)
{
    struct epoll_event ev[MAX_EVENTS];
    int n = epoll_wait(w->ep, ev, MAX_EVENTS, timeout_ms);
    w->now = now_ns();
    for (int i = 0; i < n; i++) {
        if (ev[i].data.ptr == NULL) {
            char b[16];
            if (read(w->ctl_fd, b, sizeof b) <= 0)
                w->ctl_eof = 1;
            continue;
        }
        conn_event(ev[i].data.ptr, ev[i].events);
    }
    flush_dirty(w);
}

static int worker_unsettled(struct worker *w)
{
    return (int)((uint64_t)w->nconns - w->open_count - w->conn_failed);
}

/* Opens all of the worker's connections, at most `pending` attempts at a
 * time, and waits for their handshakes. Returns the seconds it took. */
double worker_connect(struct worker *w, int pending, double timeout)
{
    uint64_t t0 = now_ns(), deadline = t0 + (uint64_t)(timeout * 1e9);
    int next = 0;
    for (;;) {
        while (next < w->nconns && (int)((uint64_t)next - w->open_count - w->conn_failed) < pending)
            conn_start(w, &w->conns[next++]);
        if (next == w->nconns && worker_unsettled(w) == 0)
            break;
        if (now_ns() > deadline) {
            for (int i = 0; i < w->nconns; i++)
                if (w->conns[i].state != ST_OPEN && w->conns[i].state != ST_CLOSED)
                    conn_fail(&w->conns[i], "connect/handshake timed out");
            break;
        }
        worker_poll(w, 100);
    }
    return (double)(now_ns() - t0) / 1e9;
}

void worker_init(struct worker *w, const struct config *cfg, int index, int nconns, int first_id)
{
    memset(w, 0, sizeof *w);
    w->cfg = cfg;
    w->index = index;
    w->ep = epoll_create1(EPOLL_CLOEXEC);
    w->nconns = nconns;
    w->conns = calloc((size_t)nconns + 1, sizeof *w->conns);
    w->dirty = calloc((size_t)nconns + 1, sizeof *w->dirty);
    w->rbuf = malloc(RBUF_SIZE);
    w->rng = 2166136261u ^ (uint32_t)(index * 7919 + getpid());
    w->ctl_fd = -1;
    if (cfg->deflate)
        deflate_init(w);
    for (int i = 0; i < nconns; i++) {
        w->conns[i].id = first_id + i;
        w->conns[i].w = w;
        w->conns[i].fd = -1;
        w->conns[i].role = R_ECHO;
    }
    build_request(w, cfg->path, R_ECHO);
}
