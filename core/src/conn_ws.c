/* The WebSocket phase of a connection (RFC 6455 5-7): frames in, messages to
 * the app in order (through the inbox while a handler is busy), control
 * frames answered, frames out through the corked output queue, and the
 * close handshake. */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "conn.h"
#include "log.h"
#include "utf8.h"

int mw__conn_can_send(const mw_conn_t *c)
{
    return c->state == MW_CONN_OPEN;
}

static void queue_frame(mw_conn_t *c, int opcode, const void *data, size_t len)
{
    uint8_t hdr[MW_WS_MAX_HEADER];
    size_t hlen = mw__ws_header(hdr, 1, 0, opcode, len);
    mw__outq_append2(&c->w->pool, &c->out, hdr, hlen, data, len);
    mw__conn_want_flush(c);
}

/* Builds a close payload: 2-byte code and up to 123 bytes of reason (RFC
 * 6455 5.5: control payloads <= 125). Returns its length. */
static size_t close_payload(uint8_t out[MW_WS_MAX_CONTROL], uint16_t code, const char *reason,
                            size_t rlen)
{
    if (!code)
        return 0;
    out[0] = (uint8_t)(code >> 8);
    out[1] = (uint8_t)code;
    if (rlen > MW_WS_MAX_CONTROL - 2)
        rlen = MW_WS_MAX_CONTROL - 2;
    if (rlen)
        memcpy(out + 2, reason, rlen);
    return 2 + rlen;
}

/* c just left MW_CONN_OPEN (a close went out or came in): it waits for the
 * end of the close handshake on the closing timer, and its subscriptions
 * end now: it can receive no more messages, and subscriber counts should
 * say so at once, not when the TCP connection finally goes. */
static void leave_open(mw_conn_t *c)
{
    mw__tl_move(c, MW_TL_CLOSING);
    mw__idle_remove(c);
    /* Not here and now: this may run inside a publish that is walking one
     * of these very subscriber arrays (a slow consumer closed by the send).
     * The flush pass of this loop iteration unsubscribes it. */
    if (c->subs && !c->leave_due) {
        mw__conn_retain(c); /* the list's reference */
        c->leave_due = 1;
        c->leave_next = c->w->leave_head;
        c->w->leave_head = c;
    }
}

static void record_close(mw_conn_t *c, uint16_t code, const char *reason, size_t rlen)
{
    c->close_code = code;
    free(c->close_reason);
    c->close_reason = NULL;
    if (rlen) {
        c->close_reason = mw__xmalloc(rlen + 1);
        memcpy(c->close_reason, reason, rlen);
        c->close_reason[rlen] = 0;
    }
}

/* Would queueing n more bytes put c past its route's max_buffered? The bound
 * is on the backlog of a peer that does not keep up, not on message size:
 * the queue may hold max_buffered bytes beyond one message of up to the
 * route's max_message_size that is being written (so a 16 MiB echo, and the
 * pong or next message behind it, is fine when the client reads), and an
 * empty queue always takes one message. */
static int over_limit(const mw_conn_t *c, size_t n)
{
    const mw_route_t *r = &c->w->routes[c->route];
    return c->out.bytes > 0 && c->out.bytes + n > r->max_buffered + r->max_message_size;
}

/* A peer this far behind on reading would grow our memory without bound
 * (also one that sends pings and never reads the pongs): what is queued
 * stays queued, a close follows it, and close_timeout bounds the wait. */
static void slow_consumer(mw_conn_t *c)
{
    mw_warn("conn %llu: slow consumer: %zu bytes queued (max_buffered %zu); closing with 1008",
            (unsigned long long)c->id, c->out.bytes, c->w->routes[c->route].max_buffered);
    mw__conn_close(c, MW_WS_CLOSE_POLICY, "slow consumer", 13);
}

/* The route's slow-consumer policy, before a frame of n bytes is queued:
 * MW_OK to queue it; MW_EAGAIN when "drop" skips it (counted); MW_ECLOSED
 * when "close" closes the connection instead. Control frames are never
 * dropped, only closed on. */
static int admit(mw_conn_t *c, size_t n, int control)
{
    if (!over_limit(c, n))
        return MW_OK;
    if (c->w->routes[c->route].drop && !control) {
        c->dropped++;
        c->w->stats.slow_dropped++;
        return MW_EAGAIN;
    }
    c->w->stats.slow_closed++;
    slow_consumer(c);
    return MW_ECLOSED;
}

/* After queueing: note crossing the low-water mark (for on_drain) and mark
 * the connection for the flush pass. */
static void queued(mw_conn_t *c)
{
    c->w->stats.msgs_out++;
    if (c->out.bytes >= c->w->routes[c->route].low_water_mark)
        c->above_low = 1;
    mw__conn_want_flush(c);
}

int mw__conn_send_encoded(mw_conn_t *c, const uint8_t *hdr, size_t hlen, const void *data,
                          size_t len)
{
    if (c->state != MW_CONN_OPEN)
        return MW_ECLOSED;
    int rc = admit(c, hlen + len, hdr[0] & 0x08);
    if (rc != MW_OK)
        return rc;
    mw__outq_append2(&c->w->pool, &c->out, hdr, hlen, data, len);
    queued(c);
    return MW_OK;
}

int mw__conn_send_shared(mw_conn_t *c, mw_rbuf_t *frame)
{
    if (c->state != MW_CONN_OPEN)
        return MW_ECLOSED;
    int rc = admit(c, frame->len, 0);
    if (rc != MW_OK)
        return rc;
    mw__outq_append_ref(&c->w->pool, &c->out, frame);
    queued(c);
    return MW_OK;
}

/* mw__conn_send beyond the common frame: compressed, large, control, or
 * over the slow-consumer bound. Kept apart so the common path saves no registers. */
__attribute__((noinline)) static int send_general(mw_conn_t *c, int opcode, const void *data,
                                                  size_t len)
{
    uint8_t hdr[MW_WS_MAX_HEADER];
    if (c->pmd && opcode < MW_WS_OP_CLOSE && len >= c->pmd->threshold && c->state == MW_CONN_OPEN) {
        /* Admit before compressing: with context takeover a compressed
         * message that was then dropped would corrupt every later one. */
        int rc = admit(c, len + MW_WS_MAX_HEADER, 0);
        if (rc != MW_OK)
            return rc;
        mw_worker_t *w = c->w;
        size_t n = mw__pmd_compress(&w->pmd, c->pmd, data, len);
        size_t hlen = mw__ws_header(hdr, 1, 1, opcode, n);
        mw__outq_append2(&w->pool, &c->out, hdr, hlen, w->pmd.buf, n);
        queued(c);
        return MW_OK;
    }
    size_t hlen = mw__ws_header(hdr, 1, 0, opcode, len);
    return mw__conn_send_encoded(c, hdr, hlen, data, len);
}

int mw__conn_send(mw_conn_t *c, int opcode, const void *data, size_t len)
{
    /* The common frame, a small uncompressed data message within the
     * slow-consumer bound, in one go (profiled: send_general cost about
     * 130 instructions per 32-byte echo, this one a third of that). */
    if (len <= 125 && opcode < MW_WS_OP_CLOSE && c->state == MW_CONN_OPEN &&
        (!c->pmd || len < c->pmd->threshold)) {
        /* over_limit and queued, with the route looked up once */
        const mw_route_t *r = &c->w->routes[c->route];
        size_t had = c->out.bytes;
        if (had == 0 || had + len + 2 <= r->max_buffered + r->max_message_size) {
            if (!mw__outq_append_small(&c->out, (uint8_t)(0x80 | opcode), data, len))
                mw__outq_append_small_new(&c->w->pool, &c->out, (uint8_t)(0x80 | opcode), data,
                                          len);
            c->w->stats.msgs_out++;
            if (had + len + 2 >= r->low_water_mark)
                c->above_low = 1;
            if (!c->in_flush)
                mw__conn_want_flush(c);
            return MW_OK;
        }
    }
    return send_general(c, opcode, data, len);
}

int mw__conn_send_pinned(mw_conn_t *c, int opcode, const void *data, size_t len, uint32_t *pin)
{
    *pin = 0;
    if (len < MW_PIN_MIN || len > UINT32_MAX / 2 || opcode >= MW_WS_OP_CLOSE ||
        (c->pmd && len >= c->pmd->threshold))
        return mw__conn_send(c, opcode, data, len);
    if (c->state != MW_CONN_OPEN)
        return MW_ECLOSED;
    uint8_t hdr[MW_WS_MAX_HEADER];
    size_t hlen = mw__ws_header(hdr, 1, 0, opcode, len);
    int rc = admit(c, hlen + len, 0);
    if (rc != MW_OK)
        return rc;
    mw_chunk_pool_t *pool = &c->w->pool;
    *pin = mw__pool_pin_take(pool);
    mw__outq_append_pinned(pool, &c->out, hdr, hlen, data, len, *pin);
    queued(c);
    return MW_OK;
}

void mw__conn_close(mw_conn_t *c, uint16_t code, const char *reason, size_t rlen)
{
    if (c->state != MW_CONN_OPEN)
        return;
    uint8_t payload[MW_WS_MAX_CONTROL];
    size_t n = close_payload(payload, code, reason, rlen);
    queue_frame(c, MW_WS_OP_CLOSE, payload, n);
    c->close_sent = 1;
    record_close(c, code ? code : MW_WS_CLOSE_NO_STATUS, reason, n > 2 ? n - 2 : 0);
    c->state = MW_CONN_CLOSING;
    leave_open(c);
}

/* RFC 6455 7.1.7 "Fail the WebSocket Connection": send a close with the
 * reason for the failure, stop reading frames, and close the TCP connection
 * once the close is written. */
static void batch_flush(mw_worker_t *w);

static void fail(mw_conn_t *c, uint16_t code, const char *why)
{
    batch_flush(c->w); /* what came before the fault is delivered first */
    mw_debug("conn %llu: failing with %u: %s", (unsigned long long)c->id, code, why);
    if (!c->close_sent) {
        uint8_t payload[MW_WS_MAX_CONTROL];
        size_t rlen = why ? strlen(why) : 0;
        size_t n = close_payload(payload, code, why, rlen);
        queue_frame(c, MW_WS_OP_CLOSE, payload, n);
        c->close_sent = 1;
        record_close(c, code, why, n - 2);
    }
    c->state = MW_CONN_FLUSHCLOSE;
    leave_open(c);
    mw__conn_deliver_close(c);
}

static void inbox_push(mw_conn_t *c, int kind, int binary, uint16_t code, const uint8_t *data,
                       size_t len)
{
    mw_inbox_ev_t *e = mw__xmalloc(sizeof *e + len + 1);
    e->next = NULL;
    e->kind = (uint8_t)kind;
    e->binary = (uint8_t)binary;
    e->code = code;
    e->len = len;
    if (len)
        memcpy(e->data, data, len);
    e->data[len] = 0;
    if (c->inbox_tail)
        c->inbox_tail->next = e;
    else
        c->inbox_head = e;
    c->inbox_tail = e;
    c->inbox_bytes += len;
}

static void inbox_check(mw_conn_t *c)
{
    if (c->inbox_bytes >= c->w->cfg.max_inbox_bytes)
        mw__conn_set_reading(c, 0);
}

/* Delivers the messages gathered from the read being parsed in one
 * on_batch call. Called before anything else can happen to the connection
 * (a control frame, a message not in the read buffer, a failure) and when
 * the read is done, so order is what it would be one message at a time. */
static void batch_flush(mw_worker_t *w)
{
    size_t n = w->batch_n;
    mw_conn_t *c = w->batch_conn;
    if (!n)
        return;
    /* A copy: the worker's array is free again for whatever the handlers
     * cause (a batch is never nested today, but nothing here relies on it). */
    mw_msgref_t m[MW_BATCH_MAX];
    memcpy(m, w->batch, n * sizeof m[0]);
    w->batch_n = 0;
    w->batch_conn = NULL;
    size_t done = n;
    mw__conn_retain(c);
    if (w->ops->on_batch(w->ops_ud, c, m, n, &done)) {
        c->busy = 1;
        /* A handler suspended: the rest wait their turn, copied out of the
         * read buffer (which the next read reuses). */
        for (size_t i = done; i < n && c->state == MW_CONN_OPEN; i++)
            inbox_push(c, MW_INBOX_MESSAGE, m[i].binary, 0, m[i].data, m[i].len);
        inbox_check(c);
    }
    mw__conn_release(c);
}

/* Hands a complete message to the app, or to the inbox while a handler of
 * this connection is suspended (DESIGN.md principle 5: one call at a time,
 * in arrival order). A full inbox stops reading the socket: TCP pushes
 * back on the client and nothing is lost. A message that lies whole in the
 * read buffer (in_place) joins the read's batch instead of running now. */
static void deliver(mw_conn_t *c, int binary, const uint8_t *data, size_t len, int in_place)
{
    mw_worker_t *w = c->w;
    w->stats.msgs_in++;
    if (c->state == MW_CONN_OPEN)
        mw__idle_touch(c);
    if (w->batch_n && (!in_place || w->batch_n == MW_BATCH_MAX || w->batch_conn != c))
        batch_flush(w);
    if (!c->busy && !c->inbox_head) {
        if (in_place) {
            w->batch_conn = c;
            w->batch[w->batch_n++] = (mw_msgref_t){data, len, binary};
            return;
        }
        if (w->ops->on_message(w->ops_ud, c, data, len, binary))
            c->busy = 1;
        return;
    }
    inbox_push(c, MW_INBOX_MESSAGE, binary, 0, data, len);
    inbox_check(c);
}

/* A compressed message (RFC 7692 6.2) is complete in c->msg: inflate it,
 * bounded by max_message_size (1009 after at most that many bytes), check
 * text as UTF-8 (the parser could not), and deliver it. */
static void deliver_compressed(mw_conn_t *c, int binary)
{
    mw_worker_t *w = c->w;
    uint64_t max = w->routes[c->route].max_message_size;
    long n = mw__pmd_inflate(&w->pmd, c->pmd, c->msg ? c->msg : (const uint8_t *)"", c->msg_len,
                             max ? max : UINT64_MAX - 1);
    if (n == -1) {
        fail(c, MW_WS_CLOSE_TOO_BIG, "message too big once inflated");
        return;
    }
    if (n < 0) {
        fail(c, MW_WS_CLOSE_INVALID_DATA, "invalid compressed data");
        return;
    }
    uint32_t st = MW_UTF8_ACCEPT;
    if (!binary && (mw__utf8_validate(&st, w->pmd.buf, (size_t)n) != 0 || !mw__utf8_complete(st))) {
        fail(c, MW_WS_CLOSE_INVALID_DATA, "text message is not UTF-8");
        return;
    }
    /* The handler gets its own copy (a Lua string) before it can send,
     * which reuses this buffer. */
    deliver(c, binary, w->pmd.buf, (size_t)n, 0);
}

static void on_data(mw_conn_t *c, const mw_ws_event_t *ev)
{
    /* RFC 6455 1.4: after sending a close, data frames are discarded (a
     * client that sent them got the close code). What arrived before the
     * close still reaches the handler, from the inbox if need be. */
    if (c->state != MW_CONN_OPEN)
        return;
    int binary = ev->opcode == MW_WS_OP_BINARY;
    if (c->pmd && !ev->rsv1 && c->msg_len + ev->len > c->w->routes[c->route].max_message_size) {
        /* The parser's limit has room for deflate overhead; an uncompressed
         * message gets the route's exact one. */
        fail(c, MW_WS_CLOSE_TOO_BIG, "message too big");
        return;
    }
    if (ev->first && ev->last && !ev->rsv1) {
        /* The whole message lies in the read buffer: no copy. */
        deliver(c, binary, ev->data, ev->len, 1);
        return;
    }
    if (ev->len) {
        if (c->msg_len + ev->len > c->msg_cap) {
            size_t cap = c->msg_cap ? c->msg_cap : 4096;
            while (cap < c->msg_len + ev->len)
                cap *= 2;
            if (cap > UINT32_MAX) /* the limit (< 2 GiB, plus deflate's slack) fits */
                cap = UINT32_MAX;
            c->msg = mw__xrealloc(c->msg, cap);
            c->msg_cap = (uint32_t)cap;
        }
        memcpy(c->msg + c->msg_len, ev->data, ev->len);
        c->msg_len += (uint32_t)ev->len;
    }
    if (ev->last) {
        if (ev->rsv1)
            deliver_compressed(c, binary);
        else
            deliver(c, binary, c->msg ? c->msg : (const uint8_t *)"", c->msg_len, 0);
        /* Idle connections hold no buffers. */
        free(c->msg);
        c->msg = NULL;
        c->msg_len = c->msg_cap = 0;
    }
}

static void on_control(mw_conn_t *c, const mw_ws_event_t *ev)
{
    switch (ev->opcode) {
    case MW_WS_OP_PING:
        /* RFC 6455 5.5.3: answer with a pong carrying the same payload. */
        if (c->state == MW_CONN_OPEN) {
            if (over_limit(c, ev->len + 2))
                slow_consumer(c);
            else
                queue_frame(c, MW_WS_OP_PONG, ev->data, ev->len);
        }
        return;
    case MW_WS_OP_PONG:
        return; /* liveness was already noted; unsolicited pongs are fine */
    case MW_WS_OP_CLOSE:
        break;
    default:
        return;
    }
    uint16_t code = 0;
    int bad = mw__ws_close_check(ev->data, ev->len, &code);
    c->close_received = 1;
    if (bad) {
        fail(c, (uint16_t)bad,
             bad == MW_WS_CLOSE_INVALID_DATA ? "close reason is not UTF-8" : "invalid close frame");
        return;
    }
    if (c->state == MW_CONN_CLOSING) {
        /* Our close was answered: the handshake is complete. */
        c->state = MW_CONN_FLUSHCLOSE;
        mw__conn_want_flush(c);
        mw__conn_deliver_close(c);
        return;
    }
    /* The peer started the close: echo its code (RFC 6455 5.5.1) and
     * report its code and reason to on_close. */
    const char *reason = ev->len > 2 ? (const char *)ev->data + 2 : "";
    size_t rlen = ev->len > 2 ? ev->len - 2 : 0;
    uint8_t payload[MW_WS_MAX_CONTROL];
    size_t n = close_payload(payload, code == MW_WS_CLOSE_NO_STATUS ? 0 : code, NULL, 0);
    queue_frame(c, MW_WS_OP_CLOSE, payload, n);
    c->close_sent = 1;
    record_close(c, code, reason, rlen);
    c->state = MW_CONN_FLUSHCLOSE;
    leave_open(c);
    mw__conn_deliver_close(c);
}

size_t mw__conn_ws_input(mw_conn_t *c, uint8_t *buf, size_t len)
{
    /* Any bytes from the peer prove it alive: restart its heartbeat clock. */
    if (c->tl_list == MW_TL_PING)
        mw__tl_move(c, MW_TL_ACTIVE);
    else if (c->tl_list == MW_TL_ACTIVE)
        mw__tl_touch(c);

    mw_worker_t *w = c->w;
    size_t off = 0, batched = 0;
    while (off < len && !c->paused && (c->state == MW_CONN_OPEN || c->state == MW_CONN_CLOSING)) {
        mw_ws_event_t ev;
        if (!c->pmd && c->state == MW_CONN_OPEN && !c->busy && !c->inbox_head &&
            w->batch_n < MW_BATCH_MAX && (!w->batch_n || w->batch_conn == c)) {
            /* The common read: whole small messages, straight into the
             * batch (what on_data and deliver would do with them, in
             * short; the idle clock is restarted once, below). */
            size_t n;
            ssize_t r = mw__ws_parse_whole(&c->p.ws, buf + off, len - off, w->batch + w->batch_n,
                                           MW_BATCH_MAX - w->batch_n, &n, &ev);
            if (n) {
                w->stats.msgs_in += n;
                w->batch_conn = c;
                w->batch_n += n;
                batched += n;
            }
            if (r < 0) {
                fail(c, ev.close_code, ev.error);
                return len;
            }
            off += (size_t)r;
            if (off == len)
                break;
        }
        ssize_t r = mw__ws_parse(&c->p.ws, buf + off, len - off, &ev);
        if (r < 0) {
            fail(c, ev.close_code, ev.error);
            return len;
        }
        off += (size_t)r;
        if (ev.type == MW_WS_EV_DATA && ev.first && ev.last && !c->pmd &&
            c->state == MW_CONN_OPEN && !c->busy && !c->inbox_head && w->batch_n < MW_BATCH_MAX &&
            (!w->batch_n || w->batch_conn == c)) {
            /* What on_data and deliver would do with a whole message in
             * the read buffer, in short: it joins the batch (its idle
             * clock is restarted once, below). */
            w->stats.msgs_in++;
            w->batch_conn = c;
            w->batch[w->batch_n++] = (mw_msgref_t){ev.data, ev.len, ev.opcode == MW_WS_OP_BINARY};
            batched++;
        } else if (ev.type == MW_WS_EV_DATA) {
            on_data(c, &ev);
        } else if (ev.type == MW_WS_EV_CONTROL) {
            batch_flush(c->w);
            on_control(c, &ev);
        } else if (r == 0) {
            break; /* need more bytes */
        }
    }
    if (batched && c->state == MW_CONN_OPEN)
        mw__idle_touch(c);
    batch_flush(w);
    if (c->state != MW_CONN_OPEN && c->state != MW_CONN_CLOSING)
        return len; /* nothing after a close is read */
    return off;
}

void mw__conn_drained(mw_conn_t *c)
{
    mw_worker_t *w = c->w;
    c->above_low = 0;
    if (c->state != MW_CONN_OPEN)
        return;
    mw__conn_retain(c);
    if (!c->busy && !c->inbox_head) {
        if (w->ops->on_drain(w->ops_ud, c))
            c->busy = 1;
    } else if (!c->drain_queued) {
        /* One waiting on_drain is enough: it is checked again when its turn
         * comes (see mw__conn_handler_done). */
        c->drain_queued = 1;
        inbox_push(c, MW_INBOX_DRAIN, 0, 0, NULL, 0);
    }
    mw__conn_release(c);
}

void mw__conn_handler_done(mw_conn_t *c)
{
    mw_worker_t *w = c->w;
    mw__conn_retain(c);
    c->busy = 0;
    while (!c->busy && c->inbox_head) {
        mw_inbox_ev_t *e = c->inbox_head;
        c->inbox_head = e->next;
        if (!c->inbox_head)
            c->inbox_tail = NULL;
        c->inbox_bytes -= e->kind == MW_INBOX_MESSAGE ? e->len : 0;
        int suspended = 0;
        if (e->kind == MW_INBOX_MESSAGE) {
            /* Once the app closed the connection (ws:close, or a handler
             * error) no message is handed on, as with those behind it in
             * the same read (take); after any other close (the peer's, a
             * protocol error, a timeout, shutdown) what arrived before it
             * still is. */
            if (!c->app_closed)
                suspended = w->ops->on_message(w->ops_ud, c, e->data, e->len, e->binary);
        } else if (e->kind == MW_INBOX_DRAIN) {
            /* Only if the queue is still below the mark: otherwise the next
             * drain will come when it gets there. */
            c->drain_queued = 0;
            if (c->state == MW_CONN_OPEN) {
                if (c->out.bytes < w->routes[c->route].low_water_mark)
                    suspended = w->ops->on_drain(w->ops_ud, c);
                else
                    c->above_low = 1;
            }
        } else
            suspended = w->ops->on_close(w->ops_ud, c, e->code, (const char *)e->data, e->len);
        free(e);
        if (suspended)
            c->busy = 1;
    }
    if (c->paused && c->inbox_bytes < w->cfg.max_inbox_bytes)
        mw__conn_resume_input(c);
    mw__conn_release(c);
}
