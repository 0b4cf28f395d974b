/* A client connection: its socket and transport, the HTTP upgrade, the
 * WebSocket frame stream, its output queue, its timers and its inbox of
 * events waiting for a busy handler.
 *
 * Lifetime: a connection is reference counted. The transport holds one
 * reference until the socket is closed (mw__conn_teardown), the app (Lua)
 * holds one while it has a handle on the connection, and the core holds one
 * around every call into the app. Memory is freed when the last goes, so a
 * handler may close its own connection, and nothing is freed under a caller.
 *
 * States (enum mw_conn_state):
 *
 *   HTTP ──head──► UPGRADING ──accept──► OPEN ──we close──► CLOSING
 *     │  (app decides; reading paused)      │                  │
 *     ├─plain request─► HTTP_BODY ─► REQUEST ─answered─► HTTP (keep-alive)
 *     │                                     │  peer's close,   │ peer answers,
 *     └─refused / error────────────────► FLUSHCLOSE ◄─error────┘ or timeout
 *                                           │ queue written: half-close, then
 *                                           ▼ the peer's EOF or close_timeout
 *                                         DEAD (socket closed; freed when the
 *                                               last reference goes)
 *
 * on_close is owed from the moment on_open was (opened = 1) and runs once:
 * when the close handshake completes, or at teardown, whichever is first
 * (mw__conn_deliver_close). */
#ifndef MW_CONN_H
#define MW_CONN_H

#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>

#include "pubsub.h"
#include "worker.h"
#include "ws_frame.h"

enum mw_conn_state {
    MW_CONN_HTTP = 0,   /* reading the upgrade request */
    MW_CONN_UPGRADING,  /* the app is deciding on the upgrade (reading paused) */
    MW_CONN_HTTP_BODY,  /* reading a plain request's body */
    MW_CONN_REQUEST,    /* the app is answering a plain request (reading paused) */
    MW_CONN_OPEN,       /* WebSocket open */
    MW_CONN_CLOSING,    /* we sent a close frame and wait for the peer's */
    MW_CONN_FLUSHCLOSE, /* writing what is queued, then closing the socket */
    MW_CONN_DEAD,       /* socket closed; waiting for the app to let go */
};

/* An event waiting for a busy handler. */
typedef struct mw_inbox_ev {
    struct mw_inbox_ev *next;
    uint8_t kind; /* MW_INBOX_MESSAGE or MW_INBOX_CLOSE */
    uint8_t binary;
    uint16_t code;
    size_t len;
    uint8_t data[];
} mw_inbox_ev_t;

enum { MW_INBOX_MESSAGE = 1, MW_INBOX_DRAIN, MW_INBOX_CLOSE };

/* Byte transport under the WebSocket layer (plain TCP now, TLS later).
 * read/writev return bytes moved, 0 for EOF on read, or -1 with errno. */
typedef struct mw_transport {
    ssize_t (*read)(mw_conn_t *c, void *buf, size_t len);
    ssize_t (*writev)(mw_conn_t *c, const struct iovec *iov, int n);
} mw_transport_t;

struct mw_conn {
    mw_worker_t *w;
    const mw_transport_t *tp;
    ev_io io; /* EV_READ while reading, plus EV_WRITE while the kernel pushes back */
    uint64_t id;
    uint32_t refs;
    uint8_t state;                    /* enum mw_conn_state */
    uint8_t opened : 1;               /* on_open was delivered or queued: on_close is owed */
    uint8_t close_owed_delivered : 1; /* on_close was delivered or queued */
    uint8_t busy : 1;                 /* a handler is suspended; events go to the inbox */
    uint8_t paused : 1;               /* reading stopped: the inbox is full */
    uint8_t in_flush : 1;             /* on the worker's flush list */
    uint8_t writing : 1;              /* EV_WRITE armed */
    uint8_t close_sent : 1;
    uint8_t close_received : 1;
    uint8_t app_closed : 1;     /* closed by ws:close or a handler error: the inbox's
                                   messages are not delivered any more */
    uint8_t fin_sent : 1;       /* our side is shut down; waiting for the peer's EOF */
    uint8_t above_low : 1;      /* the queue went above the route's low-water mark */
    uint8_t keepalive : 1;      /* plain HTTP: another request may follow this one */
    uint8_t responded : 1;      /* plain HTTP: the response to this request is queued */
    uint8_t head_only : 1;      /* plain HTTP: a HEAD request (no body in the response) */
    uint8_t input_due : 1;      /* on the worker's list of held input to parse */
    uint8_t drain_queued : 1;   /* an on_drain waits in the inbox */
    uint8_t leave_due : 1;      /* on the worker's list of connections to unsubscribe */
    uint8_t has_route : 1;      /* route indexes w->routes (a WebSocket, or one being upgraded) */
    uint8_t admin : 1;          /* accepted on the admin listener */
    uint8_t metrics_only : 1;   /* accepted on the metrics listener: GET /metrics only */
    uint8_t wants_ws : 1;       /* the request asked for a WebSocket (for refusal counts) */
    uint8_t tls_want_write : 1; /* OpenSSL must write before it can read on */
    uint8_t tls_failed : 1;     /* a TLS error: no close_notify may be sent */
    uint8_t tls_more : 1;       /* the last read filled the buffer and OpenSSL holds more */
    uint8_t tl_list;            /* MW_TL_* list this connection is on */
    uint8_t in_idle;            /* on the idle list */
    uint16_t close_code;        /* reported to on_close */
    int route;                  /* the app's route index */
    uint32_t dropped;           /* sends skipped by the "drop" slow-consumer policy */
    uint32_t in_len;            /* bytes at in (below) */
    struct mw_sub *subs;        /* this connection's topic subscriptions */

    /* Unparsed input carried over between reads (a partial frame header or
     * control frame, or a partial HTTP head); NULL when empty. */
    uint8_t *in;

    mw_outq_t out;

    /* A message being reassembled from several frames or reads. */
    uint8_t *msg;
    uint32_t msg_len, msg_cap; /* max_message_size and max_body_size are below 2 GiB */

    union {
        mw_http_parser_t http;
        mw_ws_parser_t ws;
        struct {
            mw_chunked_t ck; /* chunked: the decoder; else ck.left is the bytes still to come */
            uint8_t chunked; /* the body comes in the chunked coding (RFC 9112 7.1) */
        } body;              /* MW_CONN_HTTP_BODY: a plain request's body */
    } p;

    /* Timer lists (see worker.h). */
    mw_conn_t *tl_prev, *tl_next;
    double tl_stamp;
    mw_conn_t *il_prev, *il_next;
    double il_stamp;

    mw_conn_t *flush_next;
    mw_conn_t *input_next;
    mw_conn_t *leave_next;
    mw_conn_t *all_prev, *all_next;

    mw_inbox_ev_t *inbox_head, *inbox_tail;
    size_t inbox_bytes;

    char *close_reason; /* reported to on_close; owned */

    char *head; /* copy of the upgrade request head, for the app; owned */
    uint32_t head_len;

    /* The peer's address: IPv4 or IPv6 only (a sockaddr_storage would cost
     * 100 bytes more on every connection). */
    union {
        struct sockaddr sa;
        struct sockaddr_in v4;
        struct sockaddr_in6 v6;
    } peer;
    int app_ref;          /* the app's handle (a Lua registry ref), managed by core/bind */
    uint32_t tls_pending; /* length of an SSL_write that must be retried */
    struct ssl_st *ssl;   /* TLS state, or NULL on a plain connection */
    mw_pmd_t *pmd;        /* permessage-deflate agreement, or NULL */
    double t_open;        /* accept time, for access-log durations */
    /* Fields are ordered so that no padding is left: this struct is most of
     * an idle connection's memory (DESIGN.md principle 6; docs/performance.md). */
};

/* --- lifecycle (conn.c) --- */
mw_conn_t *mw__conn_new(mw_worker_t *w, int fd, const struct sockaddr *sa, socklen_t salen);
static inline void mw__conn_retain(mw_conn_t *c)
{
    c->refs++;
}
void mw__conn_release(mw_conn_t *c);

/* Closes the socket now and releases the transport's reference. For an opened
 * connection, on_close is delivered (or queued behind a busy handler) with
 * the recorded close code, or with `code` if none was recorded. */
void mw__conn_teardown(mw_conn_t *c, uint16_t code, const char *reason);

/* Delivers on_close (or queues it behind a busy handler) with the recorded
 * close code, once: as soon as the close handshake is complete or the
 * connection failed, without waiting for the TCP connection to end. */
void mw__conn_deliver_close(mw_conn_t *c);

/* Marks c for a flush before the loop sleeps. */
void mw__conn_want_flush(mw_conn_t *c);
/* Writes what the kernel takes now; arms EV_WRITE for the rest. */
void mw__conn_flush(mw_conn_t *c);
/* Writes frame (n bytes, a small one) straight to the socket when nothing
 * is queued before it, on plain TCP; queues what did not go out. Never
 * tears c down (a write error is left to the flush pass to find), so
 * timer-list callbacks may use it: a heartbeat ping to an idle connection
 * then needs no output chunk, which with many connections pinged in one
 * pass would leave that many chunks' worth of heap behind. */
void mw__conn_send_now(mw_conn_t *c, const uint8_t *frame, size_t n);
/* Starts or stops reading (inbox backpressure). */
void mw__conn_set_reading(mw_conn_t *c, int on);
/* Schedules mw__conn_resume_input for the next flush pass, so input held
 * back for a busy app is parsed from the loop, never from deep inside the
 * app's own call (a long pipeline must not become a deep recursion). */
void mw__conn_input_due(mw_conn_t *c);
/* Resumes reading and parsing input held back while the inbox was full. */
void mw__conn_resume_input(mw_conn_t *c);
/* Input handling for the current state; returns bytes consumed. */
size_t mw__conn_process(mw_conn_t *c, uint8_t *buf, size_t len);

/* --- HTTP upgrade (conn_http.c) --- */
size_t mw__conn_http_input(mw_conn_t *c, uint8_t *buf, size_t len);
size_t mw__conn_http_body(mw_conn_t *c, uint8_t *buf, size_t len);
/* Writes a complete error response and closes after flushing it. The body
 * is "STATUS REASON: why" (or without ": why" when why is NULL). Extra
 * header lines are "Name: value\r\n"... or NULL. No-op unless c is still in
 * its HTTP phase. */
void mw__conn_http_error(mw_conn_t *c, int status, const char *extra_headers, const char *why);
/* Queues the response to the plain request c is answering: status line,
 * the caller's header lines (hdrs[0..hlen), "Name: value\r\n"...),
 * Content-Length and Connection, then body (omitted for HEAD). Returns
 * MW_OK, or MW_EINVAL when this request was answered already. */
int mw__conn_http_respond(mw_conn_t *c, int status, const char *hdrs, size_t hlen, const void *body,
                          size_t blen);
/* The same with the body read from fd (owned: closed when sent or dropped). */
int mw__conn_http_respond_file(mw_conn_t *c, int status, const char *hdrs, size_t hlen, int fd,
                               uint64_t size);
/* The app is done with the plain request c was answering (MW_CONN_REQUEST):
 * answers `status` with a short text body if it did not respond, then reads
 * the next request of a keep-alive connection or closes. */
void mw__conn_http_done(mw_conn_t *c, int status);
/* The same with a body of the caller's (copied). */
void mw__conn_http_refuse(mw_conn_t *c, int status, const char *extra_headers, const char *body,
                          size_t blen);

/* --- WebSocket (conn_ws.c) --- */
size_t mw__conn_ws_input(mw_conn_t *c, uint8_t *buf, size_t len);

/* Queues one frame. Returns MW_OK; MW_ECLOSED when c no longer sends
 * (closing, closed); MW_EAGAIN when the route's "drop" policy skipped it
 * because the queue is full. Copies data. Never calls into the app. */
int mw__conn_send(mw_conn_t *c, int opcode, const void *data, size_t len);
/* The same without copying a data frame's payload when it is large (at
 * least MW_PIN_MIN bytes) and goes out uncompressed: the queue then refers
 * to data, *pin gets the number the caller must keep data alive under
 * until the core releases it (see mw_pin_src_t), else 0. */
#define MW_PIN_MIN 4096
int mw__conn_send_pinned(mw_conn_t *c, int opcode, const void *data, size_t len, uint32_t *pin);
/* The same for a frame already encoded as hdr + data (copied). */
int mw__conn_send_encoded(mw_conn_t *c, const uint8_t *hdr, size_t hlen, const void *data,
                          size_t len);
/* The same for an encoded frame shared by reference (retained). */
int mw__conn_send_shared(mw_conn_t *c, mw_rbuf_t *frame);

/* Accepts a pending upgrade (MW_CONN_UPGRADING) on route: queues the 101
 * response with the chosen subprotocol (or NULL) and extra header lines
 * ("Name: value\r\n"..., or NULL), opens the WebSocket, runs on_open, and
 * goes on with any frames that came with the request. Returns MW_OK, or
 * MW_ECLOSED if c is no longer waiting for a decision. */
int mw__conn_upgrade_accept(mw_conn_t *c, int route, const char *protocol,
                            const char *extra_headers);

/* Starts the close handshake with code and reason (reason <= 123 bytes,
 * truncated otherwise); code 0 sends an empty close. No-op when closing. */
void mw__conn_close(mw_conn_t *c, uint16_t code, const char *reason, size_t rlen);

/* The write queue fell below the route's low-water mark: on_drain is due. */
void mw__conn_drained(mw_conn_t *c);

/* Called by the app when a suspended handler of c finished: delivers the
 * events that waited in the inbox, in order, until one suspends again. */
void mw__conn_handler_done(mw_conn_t *c);

/* True while c can still send frames. */
int mw__conn_can_send(const mw_conn_t *c);

/* Formats the peer address ("1.2.3.4" or "::1") into buf; returns the port. */
int mw__conn_peer(const mw_conn_t *c, char *buf, size_t len);

/* Timer-list membership (tlist.c). */
/* Moves c to the tail of list `which` (MW_TL_*) stamped now; MW_TL_NONE
 * only removes it. A list whose timeout is 0 (disabled) takes nobody. */
void mw__tl_move(mw_conn_t *c, int which);
/* Restamps c now and moves it to the tail of the list it is on. */
void mw__tl_touch(mw_conn_t *c);
/* The same for the idle list (no-op when idle_timeout is 0). */
void mw__idle_touch(mw_conn_t *c);
void mw__idle_remove(mw_conn_t *c);

#endif
