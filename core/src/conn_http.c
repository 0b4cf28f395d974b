/* The HTTP phase of a connection: read the request head (RFC 9112), check a
 * WebSocket upgrade (RFC 6455 4.2.1), let the app decide on it (routing, the
 * origin policy and the upgrade hook live on the app side, and may take
 * their time), then answer 101 and switch to WebSocket, or answer with an
 * error status and close. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"
#include "ws_handshake.h"

/* Counts an answered plain request (not an upgrade, not an admin call)
 * and writes its access line. */
static void account(mw_conn_t *c, int status, uint64_t blen)
{
    mw_worker_t *w = c->w;
    if (c->admin || c->wants_ws)
        return;
    w->stats.http_requests++;
    if (!w->access_log)
        return;
    char addr[64];
    int port = mw__conn_peer(c, addr, sizeof addr);
    mw_http_request_t r;
    mw_http_parser_t st = {0};
    int code;
    const char *why;
    memset(&r, 0, sizeof r);
    r.headers = w->hdrs;
    r.max_headers = w->cfg.max_headers;
    int ok = c->head && mw__http_parse_request(&st, c->head, c->head_len, c->head_len + 1, &r,
                                               &code, &why) > 0;
    mw__log_access("http", "addr=%s:%d method=%.*s path=%.*s status=%d bytes=%llu duration=%.6f",
                   addr, port, ok ? (int)r.method.n : 1, ok ? r.method.p : "-",
                   ok ? (int)r.path.n : 1, ok ? r.path.p : "-", status, (unsigned long long)blen,
                   c->t_open > 0 ? ev_time() - c->t_open : 0.0);
}

void mw__conn_http_refuse(mw_conn_t *c, int status, const char *extra_headers, const char *body,
                          size_t blen)
{
    if (c->state != MW_CONN_HTTP && c->state != MW_CONN_UPGRADING &&
        c->state != MW_CONN_HTTP_BODY && !(c->state == MW_CONN_REQUEST && !c->responded))
        return;
    c->responded = 1;
    char head[1024];
    const char *reason = mw__http_reason(status);
    const char *extra = extra_headers ? extra_headers : "";
    /* A body of the app's own may be anything; ours is always text. */
    int has_type = extra_headers && strstr(extra_headers, "Content-Type:") != NULL;
    int hlen = snprintf(head, sizeof head,
                        "HTTP/1.1 %d %s\r\n"
                        "Connection: close\r\n"
                        "%s"
                        "Content-Length: %zu\r\n",
                        status, reason,
                        has_type ? "" : "Content-Type: text/plain; charset=utf-8\r\n", blen);
    if (hlen < 0 || (size_t)hlen >= sizeof head)
        hlen = 0;
    if (c->wants_ws)
        c->w->stats.refused[mw__stats_refusal_index((unsigned)status)]++;
    else
        account(c, status, blen);
    mw__outq_append2(&c->w->pool, &c->out, head, (size_t)hlen, extra, strlen(extra));
    mw__outq_append2(&c->w->pool, &c->out, "\r\n", 2, body, blen);
    mw_debug("conn %llu: answered %d", (unsigned long long)c->id, status);
    c->state = MW_CONN_FLUSHCLOSE;
    mw__tl_move(c, MW_TL_CLOSING);
    /* Read (and discard) again until the peer's EOF: see mw__conn_flush. */
    mw__conn_set_reading(c, 1);
    mw__conn_want_flush(c);
}

void mw__conn_http_error(mw_conn_t *c, int status, const char *extra_headers, const char *why)
{
    char body[320];
    int blen = snprintf(body, sizeof body, "%d %s%s%s\n", status, mw__http_reason(status),
                        why ? ": " : "", why ? why : "");
    if (blen < 0 || (size_t)blen >= sizeof body)
        blen = (int)strlen(body);
    mw__conn_http_refuse(c, status, extra_headers, body, (size_t)blen);
}

/* Re-parses the kept request head (it was valid when kept). */
static int reparse_head(mw_conn_t *c, mw_http_request_t *req)
{
    mw_http_parser_t st = {0};
    int status;
    const char *why;
    memset(req, 0, sizeof *req);
    req->headers = c->w->hdrs;
    req->max_headers = c->w->cfg.max_headers;
    return mw__http_parse_request(&st, c->head, c->head_len, c->head_len + 1, req, &status, &why) >
           0;
}

/* After the 101, the kept head loses the handshake's own fields (Upgrade,
 * Connection, Sec-WebSocket-Key/-Version/-Extensions): their work is done,
 * the upgrade hook saw them, and an idle connection should not carry them
 * (about 100 bytes from a script, 150 from a browser). req was parsed from
 * c->head; what the app reads later (path, query, other headers) stays. */
static int spent_header(const mw_http_header_t *h)
{
    static const char *const spent[] = {"upgrade", "connection", "sec-websocket-key",
                                        "sec-websocket-version", "sec-websocket-extensions"};
    for (size_t k = 0; k < sizeof spent / sizeof spent[0]; k++)
        if (mw__slice_ieq(h->name, spent[k]))
            return 1;
    return 0;
}

static void compact_head(mw_conn_t *c, const mw_http_request_t *req)
{
    const char *line_end = memchr(c->head, '\n', c->head_len);
    size_t first = line_end ? (size_t)(line_end - c->head) + 1 : 0;
    /* Exact size first: a shrinking realloc would leave a hole per connection. */
    size_t need = first + 2;
    for (size_t i = 0; i < req->nheaders; i++)
        if (!spent_header(&req->headers[i]))
            need += req->headers[i].name.n + req->headers[i].value.n + 4;
    char *out = mw__xmalloc(need), *p = out;
    memcpy(p, c->head, first);
    p += first;
    for (size_t i = 0; i < req->nheaders; i++) {
        const mw_http_header_t *h = &req->headers[i];
        if (spent_header(h))
            continue;
        memcpy(p, h->name.p, h->name.n);
        p += h->name.n;
        *p++ = ':';
        *p++ = ' ';
        memcpy(p, h->value.p, h->value.n);
        p += h->value.n;
        *p++ = '\r';
        *p++ = '\n';
    }
    *p++ = '\r';
    *p++ = '\n';
    free(c->head);
    c->head = out;
    c->head_len = (uint32_t)need;
}

int mw__conn_upgrade_accept(mw_conn_t *c, int route, const char *protocol,
                            const char *extra_headers)
{
    mw_worker_t *w = c->w;
    if (c->state != MW_CONN_UPGRADING || route < 0 || (size_t)route >= w->nroutes)
        return MW_ECLOSED;
    if (w->stopping) {
        /* An upgrade hook finished during shutdown: open nothing new. */
        mw__conn_http_error(c, 503, "Retry-After: 1\r\n", "server shutting down");
        return MW_ECLOSED;
    }
    mw_http_request_t req;
    mw_slice_t key = {NULL, 0};
    const char *why;
    if (!reparse_head(c, &req) || mw__ws_handshake_check(&req, &key, &why) != 0)
        return MW_EINVAL; /* cannot happen: the head was checked before it was kept */
    char accept[29];
    mw__ws_accept_key(key.p, key.n, accept);
    /* RFC 7692: accept the first permessage-deflate offer the route can. */
    char ext[256];
    mw_pmd_t pmd;
    int compress = mw__pmd_negotiate(&req, &w->routes[route].pmd, &pmd, ext, sizeof ext);
    char resp[1024];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n"
                     "%s%s%s"
                     "%s%s%s",
                     accept, protocol ? "Sec-WebSocket-Protocol: " : "", protocol ? protocol : "",
                     protocol ? "\r\n" : "", compress ? "Sec-WebSocket-Extensions: " : "",
                     compress ? ext : "", compress ? "\r\n" : "");
    if (compress) {
        c->pmd = mw__xmalloc(sizeof *c->pmd);
        *c->pmd = pmd;
    }
    mw__outq_append2(&w->pool, &c->out, resp, (size_t)n, extra_headers,
                     extra_headers ? strlen(extra_headers) : 0);
    mw__outq_append2(&w->pool, &c->out, "\r\n", 2, NULL, 0);
    mw__conn_want_flush(c);
    compact_head(c, &req);

    c->route = route;
    c->state = MW_CONN_OPEN;
    memset(&c->p.ws, 0, sizeof c->p.ws);
    c->p.ws.server = 1;
    c->p.ws.max_message_size = w->routes[route].max_message_size;
    c->p.ws.rsv1_allowed = c->pmd != NULL;
    if (c->pmd && c->p.ws.max_message_size) {
        /* Deflate can grow incompressible data a little (5 bytes per 16 KiB
         * stored block): the wire limit leaves room for that, and the real
         * limit is applied to the inflated message (and, in on_data, to
         * uncompressed ones). */
        c->p.ws.max_message_size += c->p.ws.max_message_size / 64 + 1024;
    }
    mw__tl_move(c, MW_TL_ACTIVE);
    mw__idle_touch(c);

    mw__conn_retain(c);
    c->opened = 1;
    w->stats.ws_opened++;
    if (w->access_log) {
        char addr[64];
        int port = mw__conn_peer(c, addr, sizeof addr);
        mw_http_request_t r2;
        if (reparse_head(c, &r2))
            mw__log_access("ws_open", "id=%llu addr=%s:%d path=%.*s", (unsigned long long)c->id,
                           addr, port, (int)r2.path.n, r2.path.p);
    }
    if (w->ops->on_open(w->ops_ud, c))
        c->busy = 1;
    /* Frames that rode in with the request were held back; go on with them. */
    mw__conn_resume_input(c);
    mw__conn_release(c);
    return MW_OK;
}

/* --- plain HTTP requests (RFC 9112) ------------------------------------------ */

/* Hands the complete request (head in c->head, body in c->msg) to the app
 * and holds everything after it (pipelined requests) until it is answered. */
static void dispatch(mw_conn_t *c)
{
    mw_worker_t *w = c->w;
    mw_http_request_t req;
    c->state = MW_CONN_REQUEST;
    c->responded = 0;
    if (w->access_log)
        c->t_open = ev_time(); /* the access line's duration: the loop's clock is too coarse */
    mw__conn_set_reading(c, 0);
    if (!reparse_head(c, &req)) {
        mw__conn_http_error(c, 400, NULL, NULL);
        return;
    }
    mw__conn_retain(c);
    if (c->admin)
        w->admin_request(w->admin_ud, c, &req);
    else
        w->ops->http_request(w->ops_ud, c, &req);
    mw__conn_release(c);
}

/* The body ended at buf[off]: what follows (a pipelined request) waits in
 * the carry-over, and the request is dispatched. Returns len (all taken). */
static size_t body_done(mw_conn_t *c, const uint8_t *buf, size_t off, size_t len)
{
    if (off < len) {
        c->in = mw__xmalloc(len - off);
        memcpy(c->in, buf + off, len - off);
        c->in_len = (uint32_t)(len - off);
    }
    dispatch(c);
    return len;
}

/* A chunked request body (RFC 9112 7.1): decodes buf[0..len) into c->msg,
 * growing it as chunks arrive (at most max_body_size); when the body ends,
 * what follows is kept for the next request and the request dispatched. */
static size_t chunked_body(mw_conn_t *c, const uint8_t *buf, size_t len)
{
    mw_worker_t *w = c->w;
    size_t off = 0;
    while (off < len) {
        size_t used, dlen;
        const uint8_t *data = NULL;
        int status;
        const char *why;
        int rc = mw__http_chunked(&c->p.body.ck, buf + off, len - off, w->cfg.max_body_size,
                                  w->cfg.max_header_bytes, &used, &data, &dlen, &status, &why);
        if (rc < 0) {
            mw__conn_http_error(c, status, NULL, why);
            return len;
        }
        if (dlen) {
            /* The decoder bounds msg_len + dlen by max_body_size (< 2 GiB). */
            size_t need = (size_t)c->msg_len + dlen;
            if (need > c->msg_cap) {
                size_t cap = c->msg_cap ? (size_t)c->msg_cap * 2 : 4096;
                if (cap < need)
                    cap = need;
                if (cap > w->cfg.max_body_size)
                    cap = need > w->cfg.max_body_size ? need : w->cfg.max_body_size;
                c->msg = mw__xrealloc(c->msg, cap);
                c->msg_cap = (uint32_t)cap;
            }
            memcpy(c->msg + c->msg_len, data, dlen);
            c->msg_len = (uint32_t)need;
        }
        off += used;
        if (rc == 1)
            return body_done(c, buf, off, len);
    }
    return len;
}

/* A plain request's head was parsed from the front of the input; rest[0..n)
 * follows it. Decides keep-alive, starts reading the body, and dispatches
 * once the body is complete. Returns the bytes of rest it consumed. */
static size_t plain_request(mw_conn_t *c, const mw_http_request_t *req, const uint8_t *rest,
                            size_t n)
{
    mw_worker_t *w = c->w;
    /* RFC 9112 9.3: HTTP/1.1 stays open unless "close"; 1.0 closes unless
     * "keep-alive". */
    const mw_http_header_t *conn_hdr = mw__http_header_find(req, "connection");
    if (req->version_minor >= 1)
        c->keepalive = !(conn_hdr && mw__http_list_has(conn_hdr->value, "close"));
    else
        c->keepalive = conn_hdr && mw__http_list_has(conn_hdr->value, "keep-alive");
    c->head_only = mw__slice_ieq(req->method, "HEAD");

    uint64_t body = 0;
    const mw_http_header_t *cl = mw__http_header_find(req, "content-length");
    if (cl) {
        /* The parser checked it is 1-18 digits. */
        for (size_t i = 0; i < cl->value.n; i++)
            body = body * 10 + (uint64_t)(cl->value.p[i] - '0');
    }
    if (body > w->cfg.max_body_size) {
        mw__conn_http_error(c, 413, NULL, "request body larger than max_body_size");
        return n;
    }
    if ((body > 0 || req->chunked) && c->admin) { /* nothing there takes a body: none is buffered */
        mw__conn_http_error(c, 413, NULL, "the admin and metrics listeners take no request body");
        return n;
    }
    /* No route: answered now, before any body is read or asked for. */
    if ((body > 0 || req->chunked) && w->ops && w->ops->http_unrouted &&
        w->ops->http_unrouted(w->ops_ud, c, req))
        return n;
    /* RFC 9110 10.1.1: a client that sent Expect: 100-continue may wait
     * for this before it sends the body (after the checks above, which
     * answer instead). */
    if ((body > 0 || req->chunked) && n == 0 && req->version_minor >= 1) {
        const mw_http_header_t *ex = mw__http_header_find(req, "expect");
        if (ex && mw__slice_ieq(ex->value, "100-continue")) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            mw__outq_append2(&w->pool, &c->out, cont, sizeof cont - 1, NULL, 0);
            mw__conn_want_flush(c);
        }
    }
    free(c->msg);
    c->msg = NULL;
    c->msg_len = c->msg_cap = 0;
    if (req->chunked) {
        memset(&c->p.body, 0, sizeof c->p.body);
        c->p.body.chunked = 1;
        c->state = MW_CONN_HTTP_BODY;
        return chunked_body(c, rest, n);
    }
    if (body > 0) {
        c->msg = mw__xmalloc((size_t)body);
        c->msg_cap = (uint32_t)body;
    }
    size_t take = n < body ? n : (size_t)body;
    if (take)
        memcpy(c->msg, rest, take);
    c->msg_len = (uint32_t)take;
    if (take < body) {
        c->state = MW_CONN_HTTP_BODY;
        c->p.body.chunked = 0;
        c->p.body.ck.left = body - take;
        return take;
    }
    return body_done(c, rest, take, n);
}

size_t mw__conn_http_body(mw_conn_t *c, uint8_t *buf, size_t len)
{
    if (c->p.body.chunked)
        return chunked_body(c, buf, len);
    size_t take = len < c->p.body.ck.left ? len : (size_t)c->p.body.ck.left;
    memcpy(c->msg + c->msg_len, buf, take);
    c->msg_len += (uint32_t)take;
    c->p.body.ck.left -= take;
    if (c->p.body.ck.left > 0)
        return take;
    return body_done(c, buf, take, len);
}

/* Queues a response head for a body of blen bytes; returns 1 when the body
 * must follow (not HEAD, not a status without content). */
static int respond_head(mw_conn_t *c, int status, const char *hdrs, size_t hlen, uint64_t blen)
{
    char line[256];
    /* 1xx, 204 and 304 carry no body and no Content-Length of one (RFC 9110 8.6). */
    int bodiless = status < 200 || status == 204 || status == 304;
    int n = snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\n", status, mw__http_reason(status));
    mw__outq_append2(&c->w->pool, &c->out, line, (size_t)n, hdrs, hlen);
    if (bodiless)
        n = snprintf(line, sizeof line, "Connection: %s\r\n\r\n",
                     c->keepalive ? "keep-alive" : "close");
    else
        n = snprintf(line, sizeof line, "Content-Length: %llu\r\nConnection: %s\r\n\r\n",
                     (unsigned long long)blen, c->keepalive ? "keep-alive" : "close");
    mw__outq_append2(&c->w->pool, &c->out, line, (size_t)n, NULL, 0);
    c->responded = 1;
    mw__conn_want_flush(c);
    account(c, status, blen);
    return !bodiless && !c->head_only;
}

int mw__conn_http_respond(mw_conn_t *c, int status, const char *hdrs, size_t hlen, const void *body,
                          size_t blen)
{
    if (c->state != MW_CONN_REQUEST || c->responded)
        return MW_EINVAL;
    if (respond_head(c, status, hdrs, hlen, blen) && blen)
        mw__outq_append2(&c->w->pool, &c->out, body, blen, NULL, 0);
    return MW_OK;
}

int mw__conn_http_respond_file(mw_conn_t *c, int status, const char *hdrs, size_t hlen, int fd,
                               uint64_t size)
{
    if (c->state != MW_CONN_REQUEST || c->responded) {
        close(fd);
        return MW_EINVAL;
    }
    if (respond_head(c, status, hdrs, hlen, size) && size)
        mw__outq_append_file(&c->w->pool, &c->out, fd, 0, size);
    else
        close(fd);
    return MW_OK;
}

void mw__conn_http_done(mw_conn_t *c, int status)
{
    if (c->state != MW_CONN_REQUEST)
        return;
    if (!c->responded) {
        char body[128];
        int n = snprintf(body, sizeof body, "%d %s\n", status, mw__http_reason(status));
        static const char type[] = "Content-Type: text/plain; charset=utf-8\r\n";
        mw__conn_http_respond(c, status, type, sizeof type - 1, body, (size_t)n);
    }
    free(c->msg);
    c->msg = NULL;
    c->msg_len = c->msg_cap = 0;
    free(c->head);
    c->head = NULL;
    c->head_len = 0;
    if (!c->keepalive) {
        c->state = MW_CONN_FLUSHCLOSE;
        mw__tl_move(c, MW_TL_CLOSING);
        mw__conn_set_reading(c, 1);
        mw__conn_want_flush(c);
        return;
    }
    /* Keep-alive: the next request has handshake_timeout to arrive, and a
     * pipelined one may be waiting already. */
    c->state = MW_CONN_HTTP;
    memset(&c->p.http, 0, sizeof c->p.http);
    mw__tl_move(c, MW_TL_HANDSHAKE);
    mw__conn_input_due(c);
}

/* True when the request asks for a WebSocket (an Upgrade header naming it);
 * such a request is then held to every rule of RFC 6455 4.2.1. */
static int wants_websocket(const mw_http_request_t *req)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (mw__slice_ieq(req->headers[i].name, "upgrade") &&
            mw__http_list_has(req->headers[i].value, "websocket"))
            return 1;
    return 0;
}

size_t mw__conn_http_input(mw_conn_t *c, uint8_t *buf, size_t len)
{
    mw_worker_t *w = c->w;
    mw_http_request_t req;
    memset(&req, 0, sizeof req);
    req.headers = w->hdrs;
    req.max_headers = w->cfg.max_headers;
    int status = 0;
    const char *why = NULL;
    int r = mw__http_parse_request(&c->p.http, (const char *)buf, len, w->cfg.max_header_bytes,
                                   &req, &status, &why);
    if (r == 0)
        return 0; /* keep everything until the head is complete */
    if (r < 0) {
        mw__conn_http_error(c, status, NULL, why);
        return len;
    }

    /* The app may read the request (path, query, headers) during the upgrade
     * and for the whole life of the connection, so the head is kept (less
     * the handshake's fields once upgraded: compact_head); it is the only
     * per-connection copy of request data. */
    c->head = mw__xmalloc((size_t)r);
    memcpy(c->head, buf, (size_t)r);
    c->head_len = (uint32_t)r;

    if (!wants_websocket(&req))
        return (size_t)r + plain_request(c, &req, buf + r, len - (size_t)r);
    c->wants_ws = 1;
    if (c->admin) {
        mw__conn_http_error(c, 404, NULL, "the admin listener speaks plain HTTP only");
        return len;
    }

    /* A WebSocket upgrade has no body; a request that announces one is
     * ambiguous about where the frames begin (RFC 9112 6.3). */
    const mw_http_header_t *cl = mw__http_header_find(&req, "content-length");
    if (mw__http_header_find(&req, "transfer-encoding") ||
        (cl && !(cl->value.n == 1 && cl->value.p[0] == '0'))) {
        mw__conn_http_error(c, 400, NULL, "an upgrade request has no body");
        return len;
    }
    mw_slice_t key = {NULL, 0};
    status = mw__ws_handshake_check(&req, &key, &why);
    if (status) {
        const char *extra = NULL;
        if (status == 405)
            extra = "Allow: GET\r\n";
        else if (status == 426 && mw__ws_handshake_wants_version(&req))
            extra = "Sec-WebSocket-Version: 13\r\n";
        else if (status == 426)
            extra = "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n";
        mw__conn_http_error(c, status, extra, why);
        return len;
    }

    /* Hold everything after the head (frames may ride in the same packet)
     * until the app has decided; it may take a while (an upgrade hook that
     * checks a token), and meanwhile nothing more is read. Accepting goes on
     * with these bytes. */
    c->state = MW_CONN_UPGRADING;
    mw__conn_set_reading(c, 0);
    if ((size_t)r < len) {
        c->in = mw__xmalloc(len - (size_t)r);
        memcpy(c->in, buf + r, len - (size_t)r);
        c->in_len = (uint32_t)(len - (size_t)r);
    }
    mw__conn_retain(c);
    w->ops->upgrade(w->ops_ud, c, &req);
    mw__conn_release(c);
    return len;
}
