/* loadgen.h: what the load generator's modules share: the run's
 * configuration, a connection and a worker (one epoll loop), and the
 * functions one module offers the others.
 *
 * main.c         options, usage, main: fills a struct config and runs a mode
 * conn.c         connections and the epoll loop: connect, handshake, frames
 * tls_deflate.c  the TLS transport (OpenSSL) and permessage-deflate (zlib)
 * measure.c      clocks, CPU time and RSS from /proc, the latency histogram
 * echo.c         modes echo and raw (threads, one worker each)
 * broadcast.c    mode broadcast (subscribers and a publisher on one worker)
 * idle.c         mode idle (connections spread over processes)
 *
 * No module keeps state another reads: the configuration travels as a
 * pointer in each worker (w->cfg), and everything a mode measures lives in
 * its workers. */
#ifndef LOADGEN_H
#define LOADGEN_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <openssl/ssl.h>
#include <zlib.h>

enum mode { MODE_ECHO, MODE_RAW, MODE_BROADCAST, MODE_IDLE };
enum cstate { ST_CONNECTING, ST_TLS, ST_HANDSHAKE, ST_OPEN, ST_CLOSED };
enum role { R_ECHO, R_SUB, R_PUB };

/* ---- configuration ---------------------------------------------------- */

/* The command line's options, and what main derives from them before the
 * first connection; read-only from then on. */
struct config {
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
    /* derived */
    uint8_t *pattern; /* size + 512 bytes that payloads are cut from (expect_of) */
    SSL_CTX *tls_ctx; /* --tls */
};

/* Message k of connection id carries pattern[off .. off+size) with off
 * depending on both, so a byte from another message or connection fails the
 * comparison. Text patterns are printable ASCII (valid UTF-8). */
static inline const uint8_t *expect_of(const struct config *cfg, int id, uint64_t k)
{
    return cfg->pattern + ((uint32_t)id * 37u + (uint32_t)k * 11u) % 256u;
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

/* ---- connections and workers ------------------------------------------ */

struct worker;

struct conn {
    int fd, id;
    uint8_t state, role, out_armed, dirty;
    struct worker *w;
    /* output: frames appended here, flushed once per batch of events */
    uint8_t *out;
    size_t out_len, out_off, out_cap;
    /* handshake: the response received so far */
    char *hs;
    size_t hs_len;
    /* receive: frame header being assembled, the frame's remaining payload */
    uint8_t hdr[14], hdr_len, opcode, fin, in_msg;
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

/* What a mode does with what the server sends: the frame parser (or, over
 * plain TCP, the stream cut into messages of cfg->size bytes) hands over
 * each piece of a message's payload, then its end. */
typedef void payload_fn(struct conn *c, const uint8_t *p, size_t n);
typedef void message_fn(struct conn *c);

struct pubslot; /* broadcast.c */

/* One epoll loop and its connections (one thread, or one idle process). */
struct worker {
    const struct config *cfg; /* borrowed from main for the whole run */
    int index, ep;
    struct conn *conns;
    int nconns;
    payload_fn *on_payload;
    message_fn *on_message;
    char hs_request[512]; /* the upgrade request its next connections send */
    size_t hs_request_len;
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
    uint8_t *pub_msg; /* the publish being built */
    uint64_t next_seq, oldest_seq;
    uint64_t published, lost, out_of_order, deliveries;
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

/* Whether the worker's clock is inside the measured window. */
static inline int in_window(const struct worker *w)
{
    return w->now >= w->t_start && w->now < w->t_end;
}

/* ---- main.c ----------------------------------------------------------- */

/* Prints "loadgen: " and the message on stderr and exits with status 2. */
__attribute__((noreturn, format(printf, 1, 2))) void die(const char *fmt, ...);
/* Returns p reallocated to hold at least need bytes, *cap doubled (from 256
 * when 0) until it does; takes ownership of p. Dies when memory runs out. */
void *grow(void *p, size_t *cap, size_t need);

/* ---- conn.c ----------------------------------------------------------- */

/* Sets up w for nconns connections with ids first_id.. (plus one spare slot
 * for broadcast's publisher), all in role R_ECHO, and builds the upgrade
 * request for cfg->path. Borrows cfg for the worker's life. */
void worker_init(struct worker *w, const struct config *cfg, int index, int nconns, int first_id);
/* Opens all of the worker's connections, at most `pending` attempts at a
 * time, and waits for their handshakes. Returns the seconds it took. */
double worker_connect(struct worker *w, int pending, double timeout);
/* One epoll_wait (up to timeout_ms), its events handled, w->now updated,
 * every output written. */
void worker_poll(struct worker *w, int timeout_ms);
/* Writes what the connections queued since the last flush. */
void flush_dirty(struct worker *w);
/* Builds the upgrade request for path that w's next conn_start sends, its
 * Host: naming the port a connection in this role connects to. */
void build_request(struct worker *w, const char *path, enum role role);
/* Starts connecting c (role and id already set); -1 if that failed at once. */
int conn_start(struct worker *w, struct conn *c);
/* Appends one masked frame (compressed first with --deflate, for data
 * frames); copies data. Written at the next flush. */
void queue_frame(struct conn *c, int opcode, const uint8_t *data, size_t len);
/* Appends bytes as they are (plain TCP); copies data. */
void queue_raw(struct conn *c, const uint8_t *data, size_t len);
/* Counts an error on c's worker and keeps the first one's message. */
__attribute__((format(printf, 2, 3))) void conn_error(struct conn *c, const char *fmt, ...);
/* Counts a failed connection attempt, with its reason, and closes c. */
void conn_fail(struct conn *c, const char *what);

/* ---- tls_deflate.c ---------------------------------------------------- */

/* A client context without certificate checks (a benchmark, not a client). */
SSL_CTX *tls_client_ctx(void);
/* Puts c's connected socket under TLS as a client; -1 if OpenSSL refused. */
int tls_start(struct conn *c, SSL_CTX *ctx);
/* One step of the TLS handshake: 1 done, 0 to be continued when the socket
 * is ready (*want_write: for writing), -1 failed with *why (static text). */
int tls_handshake(struct conn *c, int *want_write, const char **why);
/* Whether OpenSSL holds bytes the socket no longer signals. */
int tls_pending(struct conn *c);
/* Frees c's TLS state; the socket stays open. */
void tls_free(struct conn *c);
/* write(2) or SSL_write: > 0 written, or -1 with errno (EAGAIN: try later). */
ssize_t io_write(struct conn *c, const void *p, size_t n);
/* read(2) or SSL_read: > 0 read, 0 end of stream, -1 with errno. */
ssize_t io_read(struct conn *c, void *p, size_t n);

/* Sets up w's two zlib streams (raw deflate, 32 KB window). */
void deflate_init(struct worker *w);
/* Compresses one message into w->zbuf (RFC 7692 7.2.1: the final empty
 * block's 00 00 ff ff removed); returns its length. */
size_t deflate_msg(struct worker *w, const uint8_t *data, size_t len);
/* Inflates the compressed message in c->zin into w->zbuf; returns its
 * length, or -1 for data zlib refuses. */
long inflate_msg(struct worker *w, struct conn *c);
/* Appends a piece of a compressed message to c->zin; copies p. */
void zin_append(struct conn *c, const uint8_t *p, size_t n);

/* ---- measure.c -------------------------------------------------------- */

uint64_t now_ns(void);
/* User + system CPU seconds of RUSAGE_SELF or RUSAGE_CHILDREN. */
double cpu_seconds(int who);
/* The server's CPU time (user + system), seconds; -1 if unreadable. */
double read_cpu_s(int pid);
/* The server's resident set (VmRSS), kB; -1 if unreadable. */
long read_rss_kb(int pid);
/* The server's CPU share over a window (1 = one CPU busy), -1 unknown. */
double server_share(double cpu0, double cpu1, double wall);

void hist_add(struct hist *h, uint64_t v);
void hist_merge(struct hist *to, const struct hist *from);
/* The value below which a fraction q of the samples lie (bucket midpoint). */
double hist_pct(const struct hist *h, double q);

/* Writes s as a JSON string, quotes included, with '"', '\\' and control
 * characters escaped: for the strings that come from outside (label, host,
 * error messages). */
void print_json_string(FILE *f, const char *s);
/* The JSON fields every mode's line starts with (no braces, no comma). */
void print_json_common(FILE *f, const struct config *cfg);

/* ---- the modes: each prints its report, returns the exit status ------- */

/* echo.c: the echo handlers on all of w's connections, with cfg->depth
 * send times each. */
void echo_attach(struct worker *w);
/* Sends on c while the worker is sending and c has room in its depth. */
void echo_may_send(struct conn *c);
int run_echo(const struct config *cfg);
int run_broadcast(const struct config *cfg);
int run_idle(const struct config *cfg);

#endif
