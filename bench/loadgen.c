/* loadgen: the benchmark's load generator, a WebSocket (and plain TCP) client
 * built to measure a server rather than itself.
 *
 * Modes:
 *   echo       N connections, D messages in flight on each, every echoed byte
 *              compared with what was sent; msgs/s, MB/s, latency percentiles
 *   raw        the same payloads over plain TCP (no framing) against a byte
 *              echo server: the physical reference for "echo"
 *   broadcast  N subscribers and one publisher; each publish carries its
 *              sequence number and send time, so every subscriber checks order
 *              and loss and every delivery yields a fan-out latency
 *   idle       ramp to N connections (over several 127.0.0.x source addresses
 *              and several processes), hold, read the server's RSS from /proc,
 *              then check that every connection still echoes one message
 *
 * --tls speaks TLS (OpenSSL, no certificate check: a benchmark, not a
 * client); --deflate offers permessage-deflate without context takeover,
 * compresses every message it sends and inflates compressed ones before
 * verifying them.
 *
 * Design: one epoll loop per thread, non-blocking sockets, level-triggered.
 * Frames are parsed where they land in one read buffer per thread; payload
 * bytes are verified in place against a pattern, so no receive buffer is kept
 * per connection. Sends made while one batch of events is handled are
 * appended to the connection's output buffer and flushed once per batch.
 *
 * Output: human text on stderr, one JSON line on stdout. The generator also
 * reports its own idle CPU share (getrusage against wall time over the
 * measured window): near zero means the generator, not the server, was the
 * bottleneck, and the run says so. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <zlib.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum mode { MODE_ECHO, MODE_RAW, MODE_BROADCAST, MODE_IDLE };
enum cstate { ST_CONNECTING, ST_TLS, ST_HANDSHAKE, ST_OPEN, ST_CLOSED };
enum role { R_ECHO, R_SUB, R_PUB };

#define RBUF_SIZE  (256 * 1024)
#define MAX_EVENTS 512
#define HS_MAX     2048

/* ---- options ---------------------------------------------------------- */

static struct {
    enum mode mode;
    const char *host;
    int port;
    int pub_port; /* broadcast: the publisher's server (another process), 0 = port */
    const char *path, *sub_path, *pub_path;
    int conns;        /* echo/raw/idle connections, broadcast subscribers */
    int depth;        /* messages in flight per connection (broadcast: publishes) */
    size_t size;      /* payload bytes */
    int binary;       /* binary frames instead of text */
    double duration;  /* measured seconds */
    double warmup;    /* unmeasured seconds before */
    int threads;      /* echo/raw: epoll loops */
    int procs;        /* idle: processes */
    int src_addrs;    /* spread over 127.0.0.2 .. 127.0.0.(1+N); 0 = kernel's choice */
    double hold;      /* idle: seconds to hold before reading RSS */
    int ramp_pending; /* idle: connection attempts in flight */
    int server_pid;
    const char *label;
    int quiet;
    int tcp;     /* plain TCP, no WebSocket: mode raw, or --tcp for idle */
    int tls;     /* TLS on every connection */
    int deflate; /* permessage-deflate (RFC 7692), no context takeover */
} opt = {
    .mode = MODE_ECHO,
    .host = "127.0.0.1",
    .port = 8080,
    .path = "/echo",
    .sub_path = "/sub",
    .pub_path = "/pub",
    .conns = 100,
    .depth = 1,
    .size = 32,
    .duration = 5,
    .warmup = 1,
    .threads = 1,
    .procs = 1,
    .src_addrs = 0,
    .hold = 2,
    .ramp_pending = 256,
    .label = "",
};

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(int who)
{
    struct rusage ru;
    getrusage(who, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* Reads /proc/PID/NAME into buf (at most cap - 1 bytes, NUL-terminated);
 * -1 if it cannot be read. */
static long read_proc(int pid, const char *name, char *buf, size_t cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", pid, name);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = 0;
    return (long)n;
}

/* The server's CPU time (user + system), seconds; -1 if unreadable. */
static double read_cpu_s(int pid)
{
    char buf[1024];
    if (read_proc(pid, "stat", buf, sizeof buf) < 0)
        return -1;
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* The server's CPU share over a window (1 = one CPU busy), -1 unknown. */
static double server_share(double cpu0, double cpu1, double wall)
{
    return cpu0 >= 0 && cpu1 >= 0 && wall > 0 ? (cpu1 - cpu0) / wall : -1;
}

/* ---- histogram -------------------------------------------------------- */

/* HDR-style log buckets: values below 64 ns are exact; above, each power of
 * two is split into 64 linear sub-buckets, so any reported value is within
 * 1/64 (1.6%) of the truth. Values are nanoseconds, capped at 2^42 (73 min). */
#define H_SUB_BITS 6
#define H_SUB      (1 << H_SUB_BITS)
#define H_MAX_EXP  42
#define H_BUCKETS  (H_SUB + (H_MAX_EXP - H_SUB_BITS) * H_SUB)

struct hist {
    uint64_t b[H_BUCKETS];
    uint64_t n, max, sum;
};

static void hist_add(struct hist *h, uint64_t v)
{
    if (v >= ((uint64_t)1 << H_MAX_EXP))
        v = ((uint64_t)1 << H_MAX_EXP) - 1;
    int i;
    if (v < H_SUB) {
        i = (int)v;
    } else {
        int e = 63 - __builtin_clzll(v);
        i = H_SUB + (e - H_SUB_BITS) * H_SUB + (int)((v >> (e - H_SUB_BITS)) & (H_SUB - 1));
    }
    h->b[i]++;
    h->n++;
    h->sum += v;
    if (v > h->max)
        h->max = v;
}

static void hist_merge(struct hist *to, const struct hist *from)
{
    for (int i = 0; i < H_BUCKETS; i++)
        to->b[i] += from->b[i];
    to->n += from->n;
    to->sum += from->sum;
    if (from->max > to->max)
        to->max = from->max;
}

/* The value below which a fraction q of the samples lie (bucket midpoint). */
static double hist_pct(const struct hist *h, double q)
{
    if (h->n == 0)
        return 0;
    uint64_t want = (uint64_t)(q * (double)h->n + 0.999999);
    if (want < 1)
        want = 1;
    uint64_t seen = 0;
    for (int i = 0; i < H_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= want) {
            if (i < H_SUB)
                return i;
            int e = (i - H_SUB) / H_SUB + H_SUB_BITS, sub = (i - H_SUB) % H_SUB;
            double lo = (double)((uint64_t)(H_SUB + sub) << (e - H_SUB_BITS));
            double width = (double)((uint64_t)1 << (e - H_SUB_BITS));
            double mid = lo + width / 2;
            return mid > (double)h->max ? (double)h->max : mid;
        }
    }
    return (double)h->max;
}

/* ---- payload patterns ------------------------------------------------- */

/* Message k of connection id carries pattern[off .. off+size) with off
 * depending on both, so a byte from another message or connection fails the
 * comparison. Text patterns are printable ASCII (valid UTF-8). */
static uint8_t *pattern;

static void pattern_init(size_t size, int binary)
{
    pattern = malloc(size + 512);
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < size + 512; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        pattern[i] = binary ? (uint8_t)x : (uint8_t)('0' + x % 75); /* '0'..'z' */
    }
}

static const uint8_t *expect_of(int id, uint64_t k)
{
    return pattern + ((uint32_t)id * 37u + (uint32_t)k * 11u) % 256u;
}

/* ---- connections ------------------------------------------------------ */

struct worker;

struct conn {
    int fd, id;
    uint8_t state, role, out_armed, dirty;
    struct worker *w;
    /* output: frames appended here, flushed once per batch of events */
    uint8_t *out;
    size_t out_len, out_off, out_cap;
    /* handshake: bytes of the request sent, of the response received */
    char *hs;
    size_t hs_len, hs_sent;
    /* receive: frame header being assembled, the frame's remaining payload */
    uint8_t hdr[14], hdr_len, opcode, fin, in_msg, msg_opcode;
    uint8_t ctl_len, ctl[125];
    uint64_t frame_left, rx_off;
    /* echo: messages sent and received, send times of those in flight */
    uint64_t tx_k, rx_k;
    uint64_t *sent_ts;
    /* broadcast subscriber: next expected sequence, first 32 payload bytes */
    uint64_t expect_seq;
    uint8_t head[32];
    SSL *ssl; /* --tls */
    /* --deflate: the compressed message being received */
    uint8_t zmsg;
    uint8_t *zin;
    size_t zin_len, zin_cap;
};

/* A publish in flight (broadcast): retired when every subscriber has it. */
struct pubslot {
    uint64_t seq, ts;
    int remaining;
};

struct worker {
    int index, ep;
    struct conn *conns;
    int nconns, first_id;
    uint8_t *rbuf;
    struct conn **dirty;
    int ndirty;
    uint64_t now;
    uint64_t t_start, t_end; /* measured window */
    int sending;             /* new messages may be started */
    uint64_t msg_limit;      /* idle alive check: messages per connection */
    struct hist lat, fanout;
    uint64_t msgs, bytes; /* completed in the window */
    uint64_t msgs_total;  /* completed at all */
    uint64_t errors, verify_errors, conn_failed, dropped;
    uint64_t open_count, closed_count;
    char first_error[200];
    uint32_t rng;
    /* broadcast */
    struct conn *pub;
    struct pubslot *slots;
    uint64_t next_seq, oldest_seq;
    uint64_t published, lost, out_of_order, deliveries, deliveries_total;
    int nsubs;
    /* --deflate: one stream each way, reset per message */
    z_stream zc, zd;
    uint8_t *zbuf;
    size_t zbuf_cap;
    /* idle */
    int ctl_fd; /* control pipe from the parent: EOF = hold is over */
    int ctl_eof;
    uint64_t pings; /* server pings answered (idle: since the ramp ended) */
    pthread_t thread;
};

static void conn_error(struct conn *c, const char *fmt, ...)
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
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    close(c->fd);
    c->fd = -1;
    c->state = ST_CLOSED;
    free(c->hs);
    c->hs = NULL;
    free(c->zin);
    c->zin = NULL;
    c->zin_len = c->zin_cap = 0;
}

/* ---- TLS and deflate -------------------------------------------------- */

static SSL_CTX *tls_ctx;

static void tls_init(void)
{
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!tls_ctx)
        die("SSL_CTX_new failed");
    SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
    /* out is compacted and grown between retries of a write */
    SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* one read() for what the socket has, not a record header, then its body */
    SSL_CTX_set_read_ahead(tls_ctx, 1);
}

/* write(2) or SSL_write: > 0 written, or -1 with errno (EAGAIN: try later). */
static ssize_t io_write(struct conn *c, const void *p, size_t n)
{
    if (!c->ssl)
        return write(c->fd, p, n);
    ERR_clear_error();
    int r = SSL_write(c->ssl, p, n > INT32_MAX ? INT32_MAX : (int)n);
    if (r > 0)
        return r;
    int e = SSL_get_error(c->ssl, r);
    errno = e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ ? EAGAIN : EIO;
    return -1;
}

/* read(2) or SSL_read: > 0 read, 0 end of stream, -1 with errno. */
static ssize_t io_read(struct conn *c, void *p, size_t n)
{
    if (!c->ssl)
        return read(c->fd, p, n);
    ERR_clear_error();
    int r = SSL_read(c->ssl, p, n > INT32_MAX ? INT32_MAX : (int)n);
    if (r > 0)
        return r;
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_ZERO_RETURN)
        return 0;
    errno = e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? EAGAIN : EIO;
    return -1;
}

static uint8_t *zbuf_reserve(struct worker *w, size_t n)
{
    if (w->zbuf_cap < n) {
        w->zbuf_cap = n;
        w->zbuf = realloc(w->zbuf, n);
        if (!w->zbuf)
            die("out of memory");
    }
    return w->zbuf;
}

/* Compresses one message into w->zbuf (RFC 7692 7.2.1: the final empty
 * block's 00 00 ff ff removed); returns its length. */
static size_t deflate_msg(struct worker *w, const uint8_t *data, size_t len)
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
static long inflate_msg(struct worker *w, struct conn *c)
{
    static const uint8_t tail[4] = {0, 0, 0xff, 0xff};
    size_t cap = opt.size + 64;
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

static void zin_append(struct conn *c, const uint8_t *p, size_t n)
{
    if (c->zin_len + n > c->zin_cap) {
        size_t cap = c->zin_cap ? c->zin_cap * 2 : 256;
        while (cap < c->zin_len + n)
            cap *= 2;
        c->zin = realloc(c->zin, cap);
        if (!c->zin)
            die("out of memory");
        c->zin_cap = cap;
    }
    memcpy(c->zin + c->zin_len, p, n);
    c->zin_len += n;
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
    size_t cap = c->out_cap ? c->out_cap : 256;
    while (cap < c->out_len + more)
        cap *= 2;
    c->out = realloc(c->out, cap);
    if (!c->out)
        die("out of memory");
    c->out_cap = cap;
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
static void queue_frame(struct conn *c, int opcode, const uint8_t *data, size_t len)
{
    int rsv1 = 0;
    if (opt.deflate && opcode < 8) {
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

static void queue_raw(struct conn *c, const uint8_t *data, size_t len)
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

static void flush_dirty(struct worker *w)
{
    for (int i = 0; i < w->ndirty; i++)
        flush_conn(w->dirty[i]);
    w->ndirty = 0;
}

static int in_window(struct worker *w)
{
    return w->now >= w->t_start && w->now < w->t_end;
}

/* ---- echo ------------------------------------------------------------- */

static void echo_send(struct conn *c)
{
    struct worker *w = c->w;
    c->sent_ts[c->tx_k % (uint64_t)opt.depth] = w->now;
    const uint8_t *p = expect_of(c->id, c->tx_k);
    if (opt.tcp)
        queue_raw(c, p, opt.size);
    else
        queue_frame(c, opt.binary ? 2 : 1, p, opt.size);
    c->tx_k++;
}

static void echo_may_send(struct conn *c)
{
    struct worker *w = c->w;
    while (w->sending && c->state == ST_OPEN && c->tx_k - c->rx_k < (uint64_t)opt.depth &&
           (w->msg_limit == 0 || c->tx_k < w->msg_limit))
        echo_send(c);
}

static void echo_payload(struct conn *c, const uint8_t *p, size_t n)
{
    if (c->rx_k >= c->tx_k || c->rx_off + n > opt.size) {
        conn_error(c, "unexpected bytes (message %" PRIu64 ")", c->rx_k);
        c->w->verify_errors++;
        return;
    }
    if (memcmp(p, expect_of(c->id, c->rx_k) + c->rx_off, n) != 0) {
        conn_error(c, "echoed bytes differ (message %" PRIu64 ")", c->rx_k);
        c->w->verify_errors++;
    }
    c->rx_off += n;
}

static void echo_done(struct conn *c)
{
    struct worker *w = c->w;
    if (c->rx_off != opt.size) {
        conn_error(c, "echo of %" PRIu64 " bytes, sent %zu", c->rx_off, opt.size);
        w->verify_errors++;
    }
    uint64_t sent = c->sent_ts[c->rx_k % (uint64_t)opt.depth];
    if (in_window(w)) {
        hist_add(&w->lat, w->now - sent);
        w->msgs++;
        w->bytes += opt.size;
    }
    w->msgs_total++;
    c->rx_k++;
    c->rx_off = 0;
    echo_may_send(c);
}

/* ---- broadcast -------------------------------------------------------- */

static void put_hex(uint8_t *p, uint64_t v)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--, v >>= 4)
        p[i] = (uint8_t)hex[v & 15];
}

static int get_hex(const uint8_t *p, uint64_t *v)
{
    uint64_t r = 0;
    for (int i = 0; i < 16; i++) {
        int d;
        if (p[i] >= '0' && p[i] <= '9')
            d = p[i] - '0';
        else if (p[i] >= 'a' && p[i] <= 'f')
            d = p[i] - 'a' + 10;
        else
            return -1;
        r = r << 4 | (uint64_t)d;
    }
    *v = r;
    return 0;
}

static uint8_t *pub_msg;

static void pub_may_send(struct worker *w)
{
    struct conn *c = w->pub;
    while (w->sending && c->state == ST_OPEN && w->next_seq - w->oldest_seq < (uint64_t)opt.depth) {
        struct pubslot *s = &w->slots[w->next_seq % (uint64_t)opt.depth];
        s->seq = w->next_seq;
        s->ts = w->now;
        s->remaining = w->nsubs;
        put_hex(pub_msg, w->next_seq);
        put_hex(pub_msg + 16, w->now);
        memcpy(pub_msg + 32, expect_of(0, w->next_seq) + 32, opt.size - 32);
        queue_frame(c, opt.binary ? 2 : 1, pub_msg, opt.size);
        w->next_seq++;
        w->published++;
    }
}

static void pub_retire(struct worker *w)
{
    while (w->oldest_seq < w->next_seq) {
        struct pubslot *s = &w->slots[w->oldest_seq % (uint64_t)opt.depth];
        if (s->remaining > 0)
            break;
        if (in_window(w))
            hist_add(&w->fanout, w->now - s->ts);
        w->oldest_seq++;
    }
    pub_may_send(w);
}

static void sub_payload(struct conn *c, const uint8_t *p, size_t n)
{
    if (c->rx_off + n > opt.size) {
        conn_error(c, "broadcast message longer than %zu", opt.size);
        c->w->verify_errors++;
        return;
    }
    size_t off = (size_t)c->rx_off;
    if (off < 32) { /* sequence and timestamp, parsed when the message ends */
        size_t take = n < 32 - off ? n : 32 - off;
        memcpy(c->head + off, p, take);
        p += take;
        n -= take;
        off += take;
    }
    if (n > 0) { /* padding after the head: the publisher's pattern for seq */
        uint64_t seq;
        if (get_hex(c->head, &seq) != 0 || memcmp(p, expect_of(0, seq) + off, n) != 0) {
            conn_error(c, "broadcast payload differs");
            c->w->verify_errors++;
        }
        off += n;
    }
    c->rx_off = off;
}

static void sub_done(struct conn *c)
{
    struct worker *w = c->w;
    uint64_t seq, ts;
    if (c->rx_off != opt.size || get_hex(c->head, &seq) != 0 || get_hex(c->head + 16, &ts) != 0) {
        conn_error(c, "bad broadcast message");
        w->verify_errors++;
        c->rx_off = 0;
        return;
    }
    c->rx_off = 0;
    if (seq > c->expect_seq) {
        w->lost += seq - c->expect_seq;
    } else if (seq < c->expect_seq) {
        w->out_of_order++;
        return;
    }
    c->expect_seq = seq + 1;
    w->deliveries_total++;
    if (in_window(w)) {
        w->deliveries++;
        hist_add(&w->lat, w->now - ts);
    }
    if (seq >= w->oldest_seq && seq < w->next_seq) {
        struct pubslot *s = &w->slots[seq % (uint64_t)opt.depth];
        if (--s->remaining == 0 && seq == w->oldest_seq)
            pub_retire(w);
    }
}

/* ---- frame parsing ---------------------------------------------------- */

static void on_payload(struct conn *c, const uint8_t *p, size_t n)
{
    if (c->role == R_SUB)
        sub_payload(c, p, n);
    else
        echo_payload(c, p, n);
}

static void on_message_done(struct conn *c)
{
    if (c->role == R_SUB)
        sub_done(c);
    else if (c->role == R_ECHO)
        echo_done(c);
}

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
                if (!opt.deflate) {
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
                if (c->opcode != (opt.binary ? 2 : 1)) {
                    conn_error(c, "opcode %d, expected %d", c->opcode, opt.binary ? 2 : 1);
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
                on_payload(c, p, take);
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
                on_payload(c, c->w->zbuf, (size_t)z);
            }
            on_message_done(c);
        }
    }
}

/* Plain TCP: the stream is the concatenation of the messages sent. */
static void raw_input(struct conn *c, const uint8_t *p, size_t n)
{
    while (n > 0) {
        size_t take = opt.size - (size_t)c->rx_off;
        if (take > n)
            take = n;
        echo_payload(c, p, take);
        p += take;
        n -= take;
        if (c->rx_off == opt.size)
            echo_done(c);
    }
}

/* ---- connecting and the handshake ------------------------------------- */

static char hs_request[512];
static size_t hs_request_len;
static const char *const hs_key = "dGhlIHNhbXBsZSBub25jZQ==";
static const char *const hs_accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="; /* RFC 6455 1.3 */

static void build_request(const char *path)
{
    hs_request_len =
        (size_t)snprintf(hs_request, sizeof hs_request,
                         "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                         "Sec-WebSocket-Version: 13\r\n%s\r\n",
                         path, opt.host, opt.port, hs_key,
                         opt.deflate ? "Sec-WebSocket-Extensions: permessage-deflate; "
                                       "client_no_context_takeover; server_no_context_takeover\r\n"
                                     : "");
}

static int conn_start(struct worker *w, struct conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        conn_error(c, "socket: %s", strerror(errno));
        c->state = ST_CLOSED;
        w->conn_failed++;
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (opt.src_addrs > 0) {
        /* Several source addresses multiply the ephemeral ports available
         * towards one server address; the port is picked at connect time. */
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(c->id % opt.src_addrs));
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(c->fd, (struct sockaddr *)&src, sizeof src) != 0) {
            conn_error(c, "bind: %s", strerror(errno));
            close(c->fd);
            c->state = ST_CLOSED;
            w->conn_failed++;
            return -1;
        }
    }
    int port = c->role == R_PUB && opt.pub_port ? opt.pub_port : opt.port;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, opt.host, &sa.sin_addr);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS) {
        conn_error(c, "connect: %s", strerror(errno));
        close(c->fd);
        c->state = ST_CLOSED;
        w->conn_failed++;
        return -1;
    }
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

static void conn_fail(struct conn *c, const char *what)
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
            char *v = l + 23;
            while (*v == ' ' || *v == '\t')
                v++;
            ok = strncmp(v, hs_accept, 28) == 0;
        } else if (strncasecmp(l + 2, "sec-websocket-extensions:", 25) == 0) {
            pmd = strstr(l + 2, "permessage-deflate") != NULL;
        }
    }
    if (!ok) {
        conn_fail(c, "bad Sec-WebSocket-Accept");
        return;
    }
    if (opt.deflate && !pmd) {
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
}

static void send_request(struct conn *c)
{
    ssize_t n = io_write(c, hs_request, hs_request_len);
    if (n != (ssize_t)hs_request_len) {
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
        if (opt.tcp) {
            conn_opened(c);
            set_out_interest(c, 0);
            return;
        }
        if (opt.tls) {
            c->ssl = SSL_new(tls_ctx);
            if (!c->ssl || !SSL_set_fd(c->ssl, c->fd)) {
                conn_fail(c, "SSL_new failed");
                return;
            }
            SSL_set_connect_state(c->ssl);
            c->state = ST_TLS;
        } else {
            c->state = ST_HANDSHAKE;
            send_request(c);
            return;
        }
    }
    if (c->state == ST_TLS) {
        ERR_clear_error();
        int r = SSL_do_handshake(c->ssl);
        if (r == 1) {
            c->state = ST_HANDSHAKE;
            send_request(c);
            return;
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            set_out_interest(c, e == SSL_ERROR_WANT_WRITE);
            return;
        }
        char msg[160];
        snprintf(msg, sizeof msg, "TLS handshake failed: %s",
                 ERR_reason_error_string(ERR_peek_error())
                     ? ERR_reason_error_string(ERR_peek_error())
                     : "connection closed");
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
        else if (opt.tcp)
            raw_input(c, w->rbuf, (size_t)n);
        else
            ws_input(c, w->rbuf, (size_t)n);
    } while (c->ssl && c->state != ST_CLOSED && SSL_has_pending(c->ssl));
}

static void worker_poll(struct worker *w, int timeout_ms)
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
static double worker_connect(struct worker *w, int pending, double timeout)
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

static void worker_init(struct worker *w, int index, int nconns, int first_id)
{
    memset(w, 0, sizeof *w);
    w->index = index;
    w->ep = epoll_create1(EPOLL_CLOEXEC);
    w->nconns = nconns;
    w->first_id = first_id;
    w->conns = calloc((size_t)nconns + 1, sizeof *w->conns);
    w->dirty = calloc((size_t)nconns + 1, sizeof *w->dirty);
    w->rbuf = malloc(RBUF_SIZE);
    w->rng = 2166136261u ^ (uint32_t)(index * 7919 + getpid());
    w->ctl_fd = -1;
    if (opt.deflate && (deflateInit2(&w->zc, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8,
                                     Z_DEFAULT_STRATEGY) != Z_OK ||
                        inflateInit2(&w->zd, -15) != Z_OK))
        die("zlib init failed");
    for (int i = 0; i < nconns; i++) {
        w->conns[i].id = first_id + i;
        w->conns[i].w = w;
        w->conns[i].fd = -1;
        w->conns[i].role = R_ECHO;
    }
}

/* ---- echo and raw: threads -------------------------------------------- */

static pthread_barrier_t barrier;
static uint64_t g_start, g_end;
static double g_connect_s;
/* thread 0 samples the process's CPU time at the edges of the window */
static double g_cpu0, g_cpu1, g_scpu0 = -1, g_scpu1 = -1;
static uint64_t g_wall0, g_wall1;

static uint64_t worker_inflight(struct worker *w)
{
    uint64_t inflight = 0;
    for (int i = 0; i < w->nconns; i++)
        if (w->conns[i].state == ST_OPEN)
            inflight += w->conns[i].tx_k - w->conns[i].rx_k;
    return inflight;
}

static void *echo_thread(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < w->nconns; i++)
        w->conns[i].sent_ts = calloc((size_t)opt.depth, sizeof(uint64_t));
    double cs = worker_connect(w, 512, 30);
    if (pthread_barrier_wait(&barrier) == PTHREAD_BARRIER_SERIAL_THREAD) {
        uint64_t t = now_ns();
        g_start = t + (uint64_t)(opt.warmup * 1e9);
        g_end = g_start + (uint64_t)(opt.duration * 1e9);
    }
    if (w->index == 0)
        g_connect_s = cs;
    pthread_barrier_wait(&barrier);
    w->t_start = g_start;
    w->t_end = g_end;
    w->now = now_ns();
    w->sending = 1;
    for (int i = 0; i < w->nconns; i++)
        echo_may_send(&w->conns[i]);
    flush_dirty(w);
    int sampled = 0;
    while (w->now < g_end) {
        worker_poll(w, 20);
        if (w->index == 0 && !sampled && w->now >= g_start) {
            g_cpu0 = cpu_seconds(RUSAGE_SELF);
            g_scpu0 = opt.server_pid ? read_cpu_s(opt.server_pid) : -1;
            g_wall0 = w->now;
            sampled = 1;
        }
    }
    if (w->index == 0) {
        g_cpu1 = cpu_seconds(RUSAGE_SELF);
        g_scpu1 = opt.server_pid ? read_cpu_s(opt.server_pid) : -1;
        g_wall1 = now_ns();
        if (!sampled) {
            g_scpu0 = g_scpu1;
            g_cpu0 = g_cpu1;
            g_wall0 = g_wall1;
        }
    }
    /* stop starting messages; let those in flight come back and be checked */
    w->sending = 0;
    uint64_t drain_end = w->now + 2000000000u;
    while (worker_inflight(w) > 0 && w->now < drain_end)
        worker_poll(w, 50);
    return NULL;
}

static void print_json_common(FILE *f)
{
    fprintf(f, "\"label\":\"%s\",\"host\":\"%s\",\"port\":%d,\"tls\":%s,\"deflate\":%s", opt.label,
            opt.host, opt.port, opt.tls ? "true" : "false", opt.deflate ? "true" : "false");
}

static int run_echo(void)
{
    int T = opt.threads < 1 ? 1 : opt.threads;
    if (T > opt.conns)
        T = opt.conns;
    struct worker *ws = calloc((size_t)T, sizeof *ws);
    int per = opt.conns / T, extra = opt.conns % T, id = 0;
    for (int t = 0; t < T; t++) {
        int n = per + (t < extra);
        worker_init(&ws[t], t, n, id);
        id += n;
    }
    pthread_barrier_init(&barrier, NULL, (unsigned)T);
    for (int t = 1; t < T; t++)
        pthread_create(&ws[t].thread, NULL, echo_thread, &ws[t]);
    echo_thread(&ws[0]);
    for (int t = 1; t < T; t++)
        pthread_join(ws[t].thread, NULL);

    struct hist *lat = calloc(1, sizeof *lat);
    uint64_t msgs = 0, bytes = 0, errors = 0, verr = 0, failed = 0, dropped = 0, open = 0;
    uint64_t inflight = 0;
    const char *first = "";
    for (int t = 0; t < T; t++) {
        hist_merge(lat, &ws[t].lat);
        msgs += ws[t].msgs;
        bytes += ws[t].bytes;
        errors += ws[t].errors;
        verr += ws[t].verify_errors;
        failed += ws[t].conn_failed;
        dropped += ws[t].dropped;
        open += ws[t].open_count;
        inflight += worker_inflight(&ws[t]);
        if (!*first && ws[t].first_error[0])
            first = ws[t].first_error;
    }
    if (inflight) {
        errors++;
        if (!*first)
            first = "messages still unanswered 2 s after the end";
    }
    double secs = opt.duration;
    double wall = (double)(g_wall1 - g_wall0) / 1e9;
    int ncpu = 1;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        ncpu = CPU_COUNT(&set);
    int usable = T < ncpu ? T : ncpu;
    double busy = wall > 0 ? (g_cpu1 - g_cpu0) / (wall * usable) : 0;
    double idle = 1 - busy;
    if (idle < 0)
        idle = 0;
    int ok = errors == 0 && verr == 0 && failed == 0 && msgs > 0;
    double mps = (double)msgs / secs, mbs = (double)bytes / secs / 1e6;
    if (!opt.quiet) {
        fprintf(stderr,
                "%s %s: %d conns x depth %d, %zu B %s, %d thread(s), %.1f s (connect %.2f s)\n"
                "  %.0f msgs/s, %.2f MB/s echoed; latency p50 %.1f us, p99 %.1f us, p99.9 "
                "%.1f us, max %.1f us\n"
                "  verified: %s (%" PRIu64 " errors, %" PRIu64 " failed connections)%s%s\n"
                "  generator idle share %.0f%%%s\n",
                opt.tcp ? "raw" : "echo", opt.label, opt.conns, opt.depth, opt.size,
                opt.tcp      ? "tcp"
                : opt.binary ? "binary"
                             : "text",
                T, secs, g_connect_s, mps, mbs, hist_pct(lat, .5) / 1e3, hist_pct(lat, .99) / 1e3,
                hist_pct(lat, .999) / 1e3, (double)lat->max / 1e3, ok ? "ok" : "FAILED",
                errors + verr, failed, *first ? "; first: " : "", first, idle * 100,
                idle < 0.1 ? " -- the GENERATOR is the bottleneck, not the server" : "");
    }
    printf("{\"mode\":\"%s\",", opt.tcp ? "raw" : "echo");
    print_json_common(stdout);
    printf(",\"conns\":%d,\"depth\":%d,\"size\":%zu,\"binary\":%s,\"threads\":%d,"
           "\"duration\":%.3f,\"msgs\":%" PRIu64 ",\"msgs_per_s\":%.1f,\"mb_per_s\":%.3f,"
           "\"p50_us\":%.2f,\"p90_us\":%.2f,\"p99_us\":%.2f,\"p999_us\":%.2f,\"max_us\":%.2f,"
           "\"mean_us\":%.2f,\"errors\":%" PRIu64 ",\"verify_errors\":%" PRIu64
           ",\"conn_failed\":%" PRIu64 ",\"dropped\":%" PRIu64 ",\"open\":%" PRIu64
           ",\"verified\":%s,\"gen_cpu_s\":%.3f,\"gen_idle\":%.3f,\"gen_bottleneck\":%s,"
           "\"server_cpu\":%.3f,\"first_error\":\"%s\"}\n",
           opt.conns, opt.depth, opt.size, opt.binary ? "true" : "false", T, secs, msgs, mps, mbs,
           hist_pct(lat, .5) / 1e3, hist_pct(lat, .9) / 1e3, hist_pct(lat, .99) / 1e3,
           hist_pct(lat, .999) / 1e3, (double)lat->max / 1e3,
           lat->n ? (double)lat->sum / (double)lat->n / 1e3 : 0.0, errors, verr, failed, dropped,
           open, ok ? "true" : "false", g_cpu1 - g_cpu0, idle, idle < 0.1 ? "true" : "false",
           server_share(g_scpu0, g_scpu1, (double)(g_wall1 - g_wall0) / 1e9), first);
    fflush(stdout);
    return ok ? 0 : 1;
}

/* ---- broadcast -------------------------------------------------------- */

static int run_broadcast(void)
{
    if (opt.size < 32)
        die("broadcast needs --size >= 32 (sequence and timestamp)");
    struct worker *w = calloc(1, sizeof *w);
    worker_init(w, 0, opt.conns, 1);
    w->nsubs = opt.conns;
    w->slots = calloc((size_t)opt.depth, sizeof *w->slots);
    pub_msg = malloc(opt.size);
    for (int i = 0; i < opt.conns; i++)
        w->conns[i].role = R_SUB;
    /* subscribers first, then the publisher (conns[nconns], id 0) */
    build_request(opt.sub_path);
    double cs = worker_connect(w, 512, 30);
    struct conn *pub = &w->conns[opt.conns];
    pub->id = 0;
    pub->w = w;
    pub->fd = -1;
    pub->role = R_PUB;
    w->pub = pub;
    build_request(opt.pub_path);
    conn_start(w, pub);
    uint64_t deadline = now_ns() + 10000000000u;
    while (pub->state != ST_OPEN && pub->state != ST_CLOSED && now_ns() < deadline)
        worker_poll(w, 100);
    if (pub->state != ST_OPEN || w->open_count < (uint64_t)opt.conns + 1) {
        fprintf(stderr, "loadgen: broadcast: %" PRIu64 " of %d connections open; %s\n",
                w->open_count, opt.conns + 1, w->first_error);
        printf("{\"mode\":\"broadcast\",");
        print_json_common(stdout);
        printf(",\"subs\":%d,\"verified\":false,\"first_error\":\"connect failed\"}\n", opt.conns);
        return 1;
    }
    /* servers that subscribe after sending the 101 need a moment */
    uint64_t settle = now_ns() + 200000000u;
    while (now_ns() < settle)
        worker_poll(w, 20);
    w->now = now_ns();
    w->t_start = w->now + (uint64_t)(opt.warmup * 1e9);
    w->t_end = w->t_start + (uint64_t)(opt.duration * 1e9);
    w->sending = 1;
    pub_may_send(w);
    flush_dirty(w);
    double cpu0 = 0, cpu1, scpu0 = -1;
    uint64_t wall0 = 0, wall1, pub0 = 0, pub1 = 0;
    int sampled = 0;
    uint64_t stall_seq = UINT64_MAX, stall_since = 0;
    int stalled = 0;
    while (w->now < w->t_end) {
        worker_poll(w, 20);
        if (!sampled && w->now >= w->t_start) {
            cpu0 = cpu_seconds(RUSAGE_SELF);
            scpu0 = opt.server_pid ? read_cpu_s(opt.server_pid) : -1;
            wall0 = w->now;
            pub0 = w->published;
            sampled = 1;
        }
        /* a publish that some subscriber never gets would stall the window */
        if (w->oldest_seq != stall_seq) {
            stall_seq = w->oldest_seq;
            stall_since = w->now;
        } else if (w->oldest_seq < w->next_seq && w->now - stall_since > 5000000000u) {
            stalled = 1;
            break;
        }
    }
    cpu1 = cpu_seconds(RUSAGE_SELF);
    double scpu1 = opt.server_pid ? read_cpu_s(opt.server_pid) : -1;
    wall1 = now_ns();
    pub1 = w->published;
    w->sending = 0;
    uint64_t drain_end = now_ns() + 3000000000u;
    while (w->oldest_seq < w->next_seq && w->now < drain_end)
        worker_poll(w, 20);
    /* whatever a subscriber still misses of what was published is lost */
    uint64_t missing = 0;
    for (int i = 0; i < opt.conns; i++)
        if (w->conns[i].expect_seq < w->next_seq)
            missing += w->next_seq - w->conns[i].expect_seq;
    uint64_t lost = w->lost + missing;
    double secs = opt.duration;
    double wall = (double)(wall1 - wall0) / 1e9;
    double idle = 1 - (wall > 0 ? (cpu1 - cpu0) / wall : 0);
    if (idle < 0)
        idle = 0;
    int ok = w->errors == 0 && w->verify_errors == 0 && lost == 0 && w->out_of_order == 0 &&
             !stalled && w->deliveries > 0;
    double dps = (double)w->deliveries / secs;
    if (!opt.quiet) {
        fprintf(stderr,
                "broadcast %s: %d subscribers, %zu B %s, %d publishes in flight, %.1f s "
                "(connect %.2f s)\n"
                "  %.0f publishes/s, %.0f deliveries/s; delivery latency p50 %.1f us, p99 %.1f "
                "us, p99.9 %.1f us; full fan-out p50 %.1f us, p99 %.1f us\n"
                "  verified: %s (lost %" PRIu64 ", out of order %" PRIu64 ", errors %" PRIu64
                "%s)%s%s\n"
                "  generator idle share %.0f%%%s\n",
                opt.label, opt.conns, opt.size, opt.binary ? "binary" : "text", opt.depth, secs, cs,
                (double)(pub1 - pub0) / secs, dps, hist_pct(&w->lat, .5) / 1e3,
                hist_pct(&w->lat, .99) / 1e3, hist_pct(&w->lat, .999) / 1e3,
                hist_pct(&w->fanout, .5) / 1e3, hist_pct(&w->fanout, .99) / 1e3,
                ok ? "ok" : "FAILED", lost, w->out_of_order, w->errors + w->verify_errors,
                stalled ? ", STALLED" : "", w->first_error[0] ? "; first: " : "", w->first_error,
                idle * 100,
                idle < 0.1 ? " -- the GENERATOR is the bottleneck, not the server" : "");
    }
    printf("{\"mode\":\"broadcast\",");
    print_json_common(stdout);
    printf(",\"subs\":%d,\"depth\":%d,\"size\":%zu,\"binary\":%s,\"duration\":%.3f,"
           "\"published\":%" PRIu64 ",\"publishes_per_s\":%.1f,\"deliveries\":%" PRIu64
           ",\"deliveries_per_s\":%.1f,\"msgs_per_s\":%.1f,\"mb_per_s\":%.3f,"
           "\"p50_us\":%.2f,\"p99_us\":%.2f,\"p999_us\":%.2f,\"max_us\":%.2f,"
           "\"fanout_p50_us\":%.2f,\"fanout_p99_us\":%.2f,\"lost\":%" PRIu64
           ",\"out_of_order\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"stalled\":%s,\"verified\":%s,"
           "\"gen_cpu_s\":%.3f,\"gen_idle\":%.3f,\"gen_bottleneck\":%s,\"server_cpu\":%.3f,"
           "\"first_error\":\"%s\"}\n",
           opt.conns, opt.depth, opt.size, opt.binary ? "true" : "false", secs, w->published,
           (double)(pub1 - pub0) / secs, w->deliveries, dps, dps, dps * (double)opt.size / 1e6,
           hist_pct(&w->lat, .5) / 1e3, hist_pct(&w->lat, .99) / 1e3, hist_pct(&w->lat, .999) / 1e3,
           (double)w->lat.max / 1e3, hist_pct(&w->fanout, .5) / 1e3,
           hist_pct(&w->fanout, .99) / 1e3, lost, w->out_of_order, w->errors + w->verify_errors,
           stalled ? "true" : "false", ok ? "true" : "false", cpu1 - cpu0, idle,
           idle < 0.1 ? "true" : "false", server_share(scpu0, scpu1, wall), w->first_error);
    fflush(stdout);
    return ok ? 0 : 1;
}

/* ---- idle ------------------------------------------------------------- */

static long read_rss_kb(int pid)
{
    char buf[4096];
    if (read_proc(pid, "status", buf, sizeof buf) < 0)
        return -1;
    const char *p = strstr(buf, "\nVmRSS:");
    return p ? strtol(p + 7, NULL, 10) : -1;
}

/* One idle process: opens its share, reports, holds until the parent closes
 * the control pipe, then checks that each connection still echoes. */
static void idle_child(int nconns, int first_id, int ctl_fd, int out_fd)
{
    struct worker *w = calloc(1, sizeof *w);
    worker_init(w, 0, nconns, first_id);
    for (int i = 0; i < nconns; i++)
        w->conns[i].sent_ts = calloc(1, sizeof(uint64_t));
    double ramp = worker_connect(w, opt.ramp_pending, 60);
    dprintf(out_fd, "ramped %" PRIu64 " %" PRIu64 " %.3f\n", w->open_count, w->conn_failed, ramp);
    w->pings = 0; /* the heartbeats of the hold */
    w->ctl_fd = ctl_fd;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(w->ep, EPOLL_CTL_ADD, ctl_fd, &ev);
    while (!w->ctl_eof)
        worker_poll(w, 200);
    /* liveness: one 32-byte echo on every connection still open */
    uint64_t open_before = w->open_count - w->closed_count;
    uint64_t pings = w->pings;
    w->now = now_ns();
    w->t_start = w->now;
    w->t_end = UINT64_MAX;
    w->sending = 1;
    w->msg_limit = 1;
    for (int i = 0; i < nconns; i++)
        echo_may_send(&w->conns[i]);
    flush_dirty(w);
    uint64_t deadline = w->now + 20000000000u;
    while (w->msgs_total < open_before && w->now < deadline)
        worker_poll(w, 100);
    dprintf(out_fd,
            "done %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64
            " %.2f %s\n",
            open_before, w->msgs_total, w->dropped, w->errors, w->verify_errors, pings,
            hist_pct(&w->lat, .99) / 1e3, w->first_error[0] ? "error" : "-");
    if (w->first_error[0])
        fprintf(stderr, "loadgen: idle: %s\n", w->first_error);
    _exit(0);
}

/* Warm-up before the baseline: 64 connections that each echo once and go.
 * The first connections fault in code and tables a server touches once
 * (TLS and SHA-1 code, libc paths, allocator arenas): about 2 MB here,
 * which over 10,000 connections would read as 200 bytes each. */
static void idle_warmup(void)
{
    int ctl[2], res[2];
    if (pipe(ctl) != 0 || pipe(res) != 0)
        die("pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid == 0) {
        close(ctl[1]);
        close(res[0]);
        idle_child(opt.conns < 64 ? opt.conns : 64, 0, ctl[0], res[1]);
    }
    close(ctl[0]);
    close(ctl[1]); /* no hold: echo and leave */
    close(res[1]);
    char buf[512];
    while (read(res[0], buf, sizeof buf) > 0) {
    }
    close(res[0]);
    waitpid(pid, NULL, 0);
    struct timespec settle = {0, 200000000};
    nanosleep(&settle, NULL);
}

static int run_idle(void)
{
    int P = opt.procs < 1 ? 1 : opt.procs;
    if (opt.server_pid)
        idle_warmup();
    long base_kb = opt.server_pid ? read_rss_kb(opt.server_pid) : -1;
    int ctl[64][2], res[64][2];
    pid_t pids[64];
    if (P > 64)
        die("--procs at most 64");
    int per = opt.conns / P, extra = opt.conns % P, id = 0;
    uint64_t t0 = now_ns();
    for (int p = 0; p < P; p++) {
        int n = per + (p < extra);
        if (pipe(ctl[p]) != 0 || pipe(res[p]) != 0)
            die("pipe: %s", strerror(errno));
        pids[p] = fork();
        if (pids[p] == 0) {
            for (int q = 0; q <= p; q++) {
                close(ctl[q][1]);
                close(res[q][0]);
            }
            idle_child(n, id, ctl[p][0], res[p][1]);
        }
        close(ctl[p][0]);
        close(res[p][1]);
        id += n;
    }
    uint64_t open = 0, failed = 0;
    double ramp = 0;
    FILE *rf[64];
    for (int p = 0; p < P; p++) {
        rf[p] = fdopen(res[p][0], "r");
        uint64_t o = 0, f = 0;
        double r = 0;
        if (fscanf(rf[p], " ramped %" SCNu64 " %" SCNu64 " %lf", &o, &f, &r) != 3)
            f = (uint64_t)(per + (p < extra));
        open += o;
        failed += f;
        if (r > ramp)
            ramp = r;
    }
    double ramp_all = (double)(now_ns() - t0) / 1e9;
    if (!opt.quiet)
        fprintf(stderr, "idle %s: %" PRIu64 " of %d connections open in %.2f s, holding %.1f s\n",
                opt.label, open, opt.conns, ramp_all, opt.hold);
    /* The server's CPU over the hold: with heartbeats on, what keeping
     * the connections costs (flat per ping as the count grows, or not). */
    double cpu0 = opt.server_pid ? read_cpu_s(opt.server_pid) : -1;
    uint64_t h0 = now_ns();
    struct timespec hold = {(time_t)opt.hold, (long)((opt.hold - (double)(time_t)opt.hold) * 1e9)};
    nanosleep(&hold, NULL);
    long rss_kb = opt.server_pid ? read_rss_kb(opt.server_pid) : -1;
    double cpu1 = opt.server_pid ? read_cpu_s(opt.server_pid) : -1;
    double held_s = (double)(now_ns() - h0) / 1e9;
    double hold_cpu = cpu0 >= 0 && cpu1 >= 0 ? cpu1 - cpu0 : -1;
    for (int p = 0; p < P; p++)
        close(ctl[p][1]);
    uint64_t still = 0, alive = 0, dropped = 0, errors = 0, pings = 0;
    double p99 = 0;
    for (int p = 0; p < P; p++) {
        uint64_t s = 0, a = 0, d = 0, e = 0, v = 0, g = 0;
        double q = 0;
        char tag[16];
        if (fscanf(rf[p],
                   " done %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64
                   " %lf %15s",
                   &s, &a, &d, &e, &v, &g, &q, tag) != 8)
            e++;
        pings += g;
        still += s;
        alive += a;
        dropped += d;
        errors += e + v;
        if (q > p99)
            p99 = q;
        fclose(rf[p]);
        waitpid(pids[p], NULL, 0);
    }
    double gen_cpu = cpu_seconds(RUSAGE_CHILDREN);
    double per_conn = (rss_kb >= 0 && base_kb >= 0 && open > 0)
                          ? (double)(rss_kb - base_kb) * 1024.0 / (double)open
                          : -1;
    int ok = failed == 0 && alive == open && dropped == 0 && errors == 0 && open > 0;
    if (!opt.quiet)
        fprintf(stderr,
                "  server RSS %ld kB -> %ld kB: %.0f bytes per connection; %" PRIu64 " of %" PRIu64
                " answered an echo after the hold (p99 %.0f us); %s\n",
                base_kb, rss_kb, per_conn, alive, open, p99, ok ? "ok" : "FAILED");
    if (!opt.quiet && hold_cpu >= 0)
        fprintf(stderr,
                "  hold: server CPU %.3f s in %.1f s; %" PRIu64 " pings answered (%.0f us each)\n",
                hold_cpu, held_s, pings, pings ? hold_cpu * 1e6 / (double)pings : 0);
    printf("{\"mode\":\"idle\",");
    print_json_common(stdout);
    printf(",\"conns\":%d,\"procs\":%d,\"src_addrs\":%d,\"open\":%" PRIu64 ",\"failed\":%" PRIu64
           ",\"ramp_s\":%.3f,\"conns_per_s\":%.0f,\"hold_s\":%.1f,\"server_rss_base_kb\":%ld,"
           "\"server_rss_kb\":%ld,\"rss_per_conn\":%.0f,\"open_after_hold\":%" PRIu64
           ",\"alive\":%" PRIu64 ",\"dropped\":%" PRIu64 ",\"errors\":%" PRIu64
           ",\"alive_p99_us\":%.1f,\"hold_server_cpu_s\":%.3f,\"pings\":%" PRIu64
           ",\"pings_per_s\":%.0f,\"server_us_per_ping\":%.2f,"
           "\"gen_cpu_s\":%.3f,\"verified\":%s}\n",
           opt.conns, P, opt.src_addrs, open, failed, ramp_all,
           ramp_all > 0 ? (double)open / ramp_all : 0, opt.hold, base_kb, rss_kb, per_conn, still,
           alive, dropped, errors, p99, hold_cpu, pings, held_s > 0 ? (double)pings / held_s : 0,
           pings && hold_cpu >= 0 ? hold_cpu * 1e6 / (double)pings : -1, gen_cpu,
           ok ? "true" : "false");
    fflush(stdout);
    return ok ? 0 : 1;
}

/* ---- main ------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen MODE [options]   MODE: echo | raw | broadcast | idle\n"
            "  --host ADDR (127.0.0.1)  --port N (8080)  --path P (/echo)\n"
            "  --conns N       connections; broadcast: subscribers (100)\n"
            "  --depth N       messages in flight per connection; broadcast: publishes (1)\n"
            "  --size BYTES    payload (32)            --binary / --text (text)\n"
            "  --duration S    measured seconds (5)    --warmup S (1)\n"
            "  --threads N     echo/raw epoll threads (1)\n"
            "  --sub-path P (/sub) --pub-path P (/pub) broadcast routes\n"
            "  --pub-port N        broadcast: publish through another server (a broker)\n"
            "  --procs N       idle: processes (1)     --src-addrs N  use 127.0.0.2..N+1\n"
            "  --hold S        idle: hold time (2)     --ramp-pending N (256)\n"
            "  --server-pid P  idle: the server's RSS (/proc/P/status) and CPU over the hold;\n"
            "                  echo, broadcast: its CPU share over the window (server_cpu)\n"
            "  --tls           TLS (no certificate check)\n"
            "  --deflate       permessage-deflate, every sent message compressed\n"
            "  --label TEXT    name in the output      --quiet  JSON only\n"
            "Prints human text on stderr and one JSON line on stdout; exits 1 when\n"
            "verification failed, 2 on bad usage.\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    if (!strcmp(argv[1], "echo"))
        opt.mode = MODE_ECHO;
    else if (!strcmp(argv[1], "raw")) {
        opt.mode = MODE_RAW;
        opt.tcp = 1;
    } else if (!strcmp(argv[1], "broadcast"))
        opt.mode = MODE_BROADCAST;
    else if (!strcmp(argv[1], "idle"))
        opt.mode = MODE_IDLE;
    else
        usage();
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (!strcmp(a, name) && v && (i++, 1))
        if (ARG("--host"))
            opt.host = v;
        else if (ARG("--port"))
            opt.port = atoi(v);
        else if (ARG("--path"))
            opt.path = v;
        else if (ARG("--sub-path"))
            opt.sub_path = v;
        else if (ARG("--pub-path"))
            opt.pub_path = v;
        else if (ARG("--pub-port"))
            opt.pub_port = atoi(v);
        else if (ARG("--conns"))
            opt.conns = atoi(v);
        else if (ARG("--depth"))
            opt.depth = atoi(v);
        else if (ARG("--size"))
            opt.size = (size_t)strtoull(v, NULL, 10);
        else if (ARG("--duration"))
            opt.duration = atof(v);
        else if (ARG("--warmup"))
            opt.warmup = atof(v);
        else if (ARG("--threads"))
            opt.threads = atoi(v);
        else if (ARG("--procs"))
            opt.procs = atoi(v);
        else if (ARG("--src-addrs"))
            opt.src_addrs = atoi(v);
        else if (ARG("--hold"))
            opt.hold = atof(v);
        else if (ARG("--ramp-pending"))
            opt.ramp_pending = atoi(v);
        else if (ARG("--server-pid"))
            opt.server_pid = atoi(v);
        else if (ARG("--label"))
            opt.label = v;
        else if (!strcmp(a, "--binary"))
            opt.binary = 1;
        else if (!strcmp(a, "--text"))
            opt.binary = 0;
        else if (!strcmp(a, "--tcp"))
            opt.tcp = 1;
        else if (!strcmp(a, "--tls"))
            opt.tls = 1;
        else if (!strcmp(a, "--deflate"))
            opt.deflate = 1;
        else if (!strcmp(a, "--quiet"))
            opt.quiet = 1;
        else
            usage();
#undef ARG
    }
    if (opt.conns < 1 || opt.depth < 1 || opt.size < 1 || opt.duration <= 0)
        die("--conns, --depth, --size and --duration must be positive");
    if (opt.mode == MODE_IDLE) {
        opt.depth = 1;
        opt.size = 32;
        opt.binary = 0;
    }
    /* as many descriptors as the hard limit allows */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    if (opt.tcp && (opt.tls || opt.deflate))
        die("--tls and --deflate are for WebSocket modes, not raw TCP");
    if (opt.tls)
        tls_init();
    pattern_init(opt.size, opt.binary);
    build_request(opt.path);
    switch (opt.mode) {
    case MODE_ECHO:
    case MODE_RAW:
        return run_echo();
    case MODE_BROADCAST:
        return run_broadcast();
    case MODE_IDLE:
        return run_idle();
    }
    return 2;
}
