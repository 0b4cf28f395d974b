/* A worker: one thread's event loop with its listener, its connections,
 * its read buffer, its timer lists and the hooks into the app (Lua).
 *
 * Everything a connection needs from "the server" hangs off its worker, so
 * there is no global server struct and several workers can run side by
 * side, one per thread. */
#ifndef MW_WORKER_H
#define MW_WORKER_H

#include <ev.h>
#include <stdint.h>

#include "config.h"
#include "deflate.h"
#include "http.h"
#include "outq.h"
#include "stats.h"
#include "ws_frame.h"

typedef struct mw_conn mw_conn_t;
typedef struct mw_worker mw_worker_t;

/* Per-route settings the core enforces, one per route of the app, kept in
 * the worker and indexed by a connection's route number. */
typedef struct mw_route {
    uint64_t max_message_size; /* close 1009 above this */
    size_t max_buffered;       /* the slow-consumer bound of the write queue */
    size_t low_water_mark;     /* on_drain once the queue falls below this */
    uint8_t drop;              /* slow_consumer = "drop": skip sends instead of closing */
    mw_pmd_policy_t pmd;       /* permessage-deflate for this route */
} mw_route_t;

/* A message that lies whole in the read buffer, waiting to be delivered
 * with the others of the same read (see on_batch). */
typedef mw_ws_whole_t mw_msgref_t;

/* Most messages of one read handed to one on_batch call. */
#define MW_BATCH_MAX 64

/* The app's side (implemented by core/bind). Each event hook returns 1 when
 * the handler suspended (the connection is then busy, and its further
 * events wait in its inbox until mw__conn_handler_done), 0 when it finished.
 * The core holds a reference on the connection during every call. */
typedef struct mw_app_ops {
    /* A valid upgrade request arrived (RFC 6455 checks passed; accept is the
     * Sec-WebSocket-Accept value). The app must decide, now or later, with
     * mw__conn_upgrade_accept or mw__conn_http_error (404 when no route
     * matches). Returns nothing: the connection waits in MW_CONN_UPGRADING
     * until one is called. */
    void (*upgrade)(void *ud, mw_conn_t *c, const mw_http_request_t *req);
    /* A plain (not WebSocket) request, with its body in c->msg[0..msg_len).
     * The app answers it, now or later, with mw__conn_http_respond and then
     * mw__conn_http_done (or refuses it with mw__conn_http_error). */
    void (*http_request)(void *ud, mw_conn_t *c, const mw_http_request_t *req);
    int (*on_open)(void *ud, mw_conn_t *c);
    int (*on_message)(void *ud, mw_conn_t *c, const uint8_t *data, size_t len, int binary);
    /* The messages m[0..n) of one read, in order, as on_message calls run in
     * one go (one resume instead of one per message). *done gets how many
     * the app took: all of them, or fewer when a handler suspended (the
     * core queues the rest in the inbox) or the connection stopped being
     * open (the rest are dropped, as on_message would have). The data stays
     * valid for the call only. */
    int (*on_batch)(void *ud, mw_conn_t *c, const mw_msgref_t *m, size_t n, size_t *done);
    int (*on_drain)(void *ud, mw_conn_t *c);
    int (*on_close)(void *ud, mw_conn_t *c, int code, const char *reason, size_t rlen);
    /* The queues are done with the app's bytes behind pins[0..n) (see
     * mw__conn_send_pinned); called where the app runs no code. */
    void (*pins_released)(void *ud, const uint32_t *pins, size_t n);
    /* A plain request whose body is still to come: answers it now (with
     * mw__conn_http_error) and returns 1 when the app has no route for it,
     * so that no body is read, or sent after 100 Continue, only to be
     * refused. Returns 0 to go on; http_request routes it again later. */
    int (*http_unrouted)(void *ud, mw_conn_t *c, const mw_http_request_t *req);
} mw_app_ops_t;

/* An activity-ordered list of connections that share one timeout, swept by
 * one ev_timer armed for the head's deadline (libev manual, "Be smart about
 * timeouts"): touching a connection is O(1) and needs no timer call. */
typedef struct mw_tlist {
    mw_conn_t *head, *tail;
    double timeout;
    ev_timer timer;
    mw_worker_t *w;
    void (*expire)(mw_conn_t *c); /* called for each connection past its deadline */
    size_t count;
} mw_tlist_t;

enum { MW_TL_NONE = 0, MW_TL_HANDSHAKE, MW_TL_ACTIVE, MW_TL_PING, MW_TL_CLOSING, MW_TL_COUNT };

struct mw_worker {
    struct ev_loop *loop;
    mw_config_t cfg;
    int listen_fd;
    /* Worker 1's listening sockets, for the other workers where the kernel
     * has no SO_REUSEPORT: they accept from the same socket (-1: unused). */
    int share_fd, share_tls_fd;
    ev_io accept_io;
    ev_timer accept_pause; /* re-enables accepting after EMFILE */
    ev_prepare flush_prep; /* flushes corked writes before the loop sleeps */

    const mw_app_ops_t *ops;
    void *ops_ud;

    /* The admin listener (--admin): plain HTTP requests on it go to
     * admin_request instead of the app. */
    int admin_fd;
    ev_io admin_io;

    /* The TLS listener (tls_listen) and its context. */
    int tls_fd;
    ev_io tls_io;
    struct ssl_ctx_st *tls_ctx;
    uint8_t *tls_wbuf;   /* staging buffer: one flush, one SSL_write */
    mw_pmd_shared_t pmd; /* compression streams shared by connections without context */
    size_t tls_wbuf_cap;
    void (*admin_request)(void *ud, mw_conn_t *c, const mw_http_request_t *req);
    int metrics_fd; /* --metrics: the same handler, GET /metrics only */
    ev_io metrics_io;
    void *admin_ud;

    mw_http_header_t *hdrs; /* cfg.max_headers slots for the request being parsed */
    mw_route_t *routes;     /* the app's routes (owned by the app side) */
    size_t nroutes;
    struct mw_pubsub *pubsub;
    uint8_t *rbuf; /* the one read buffer every connection parses in place */
    /* Messages of the read being parsed, for one on_batch call. */
    mw_msgref_t batch[MW_BATCH_MAX];
    size_t batch_n;
    mw_conn_t *batch_conn;
    size_t rbuf_cap;
    mw_chunk_pool_t pool;

    mw_conn_t *flush_head; /* connections with corked writes */
    mw_conn_t *input_head; /* connections with held input to parse (mw__conn_input_due) */
    mw_conn_t *leave_head; /* closing connections whose subscriptions end this iteration */
    mw_conn_t *all_head;   /* every connection, for shutdown */
    size_t nconns;
    size_t nservice;       /* of which admin and metrics connections (max_admin_connections) */
    double service_warned; /* when a refused admin connection was last logged */
    uint64_t next_id;

    mw_tlist_t tl[MW_TL_COUNT]; /* indexed by MW_TL_* (0 unused) */
    mw_tlist_t idle;            /* ordered by the last data message received */

    mw_stats_t stats;
    int index;      /* this worker, 0-based, of cfg.workers */
    int access_log; /* log a line per HTTP request and per WebSocket open/close */
    int timing;     /* measure time in handlers (once metrics are read) */
    int short_io;   /* test mode: one byte per read and write */
    int stopping;
};

/* Sets up w on loop with cfg (copied); does not listen yet. */
void mw__worker_init(mw_worker_t *w, struct ev_loop *loop, const mw_config_t *cfg,
                     const mw_app_ops_t *ops, void *ud);

/* Binds and listens on cfg's address. Returns 0, or -1 with a message in err. */
int mw__worker_listen(mw_worker_t *w, char *err, size_t errlen);

/* Listens on host:port for admin requests, answered by fn (which must
 * answer with mw__conn_http_respond + mw__conn_http_done). Returns 0 or -1
 * with a message in err. */
int mw__worker_listen_admin(mw_worker_t *w, const char *host, int port,
                            void (*fn)(void *ud, mw_conn_t *c, const mw_http_request_t *req),
                            void *ud, char *err, size_t errlen);

/* Builds the TLS context from cfg's certificate and key and listens on the
 * TLS address. Returns 0 or -1 with a message in err. */
int mw__worker_listen_tls(mw_worker_t *w, char *err, size_t errlen);

/* Reads the certificate and key again (SIGHUP); the new context serves new
 * connections, live ones keep theirs. Returns 0, or -1 with err (the old
 * context stays). */
int mw__worker_reload_tls(mw_worker_t *w, char *err, size_t errlen);

/* The TLS port actually bound. */
int mw__worker_tls_port(const mw_worker_t *w);

/* Listens on host:port for GET /metrics only (same handler as admin, which
 * must have been set up first or is set here). Returns 0 or -1 with err. */
int mw__worker_listen_metrics(mw_worker_t *w, const char *host, int port,
                              void (*fn)(void *ud, mw_conn_t *c, const mw_http_request_t *req),
                              void *ud, char *err, size_t errlen);

/* The local port a listening socket is bound to, or -1. */
int mw__fd_port(int fd);

/* Whether a socket is bound to a loopback address (127.0.0.0/8, ::1). */
int mw__fd_is_loopback(int fd);

/* The port actually bound (after mw__worker_listen). */
int mw__worker_port(const mw_worker_t *w);

/* Starts accepting; the loop must then be run by the caller. */
void mw__worker_start(mw_worker_t *w);

/* Graceful shutdown, first step: stops accepting, starts the close
 * handshake (1001) on every WebSocket, lets plain requests in progress be
 * answered (then closes them) and closes idle keep-alive connections.
 * Returns the connections still open; the caller runs the loop until they
 * are gone or its deadline passes, then calls mw__worker_stop. */
size_t mw__worker_drain(mw_worker_t *w);

/* Stops accepting and drops every connection (each opened one still gets
 * its on_close, with 1001). */
void mw__worker_stop(mw_worker_t *w);

/* Frees the worker's resources; every connection must be gone. */
void mw__worker_free(mw_worker_t *w);

/* Timer-list operations (tlist.c). */
void mw__tlist_init(mw_tlist_t *l, mw_worker_t *w, double timeout, void (*expire)(mw_conn_t *));
void mw__tlist_free(mw_tlist_t *l);

#endif
