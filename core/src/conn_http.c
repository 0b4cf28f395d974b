/* The HTTP phase of a connection: read the upgrade request (RFC 9112),
 * route it, check it (RFC 6455 4.2.1), and either answer 101 and switch to
 * WebSocket or answer with an error status and close. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "log.h"
#include "ws_handshake.h"

void mw__conn_http_error(mw_conn_t *c, int status, const char *extra_headers, const char *why)
{
    char body[256], head[512];
    const char *reason = mw__http_reason(status);
    int blen =
        snprintf(body, sizeof body, "%d %s%s%s\n", status, reason, why ? ": " : "", why ? why : "");
    if (blen < 0 || (size_t)blen >= sizeof body)
        blen = (int)strlen(body);
    int hlen = snprintf(head, sizeof head,
                        "HTTP/1.1 %d %s\r\n"
                        "Connection: close\r\n"
                        "Content-Type: text/plain; charset=utf-8\r\n"
                        "Content-Length: %d\r\n"
                        "%s\r\n",
                        status, reason, blen, extra_headers ? extra_headers : "");
    if (hlen < 0 || (size_t)hlen >= sizeof head)
        hlen = (int)strlen(head);
    mw__outq_append2(&c->w->pool, &c->out, head, (size_t)hlen, body, (size_t)blen);
    mw_debug("conn %llu: refused with %d: %s", (unsigned long long)c->id, status,
             why ? why : reason);
    c->state = MW_CONN_FLUSHCLOSE;
    mw__tl_move(c, MW_TL_CLOSING);
    mw__conn_want_flush(c);
}

/* Answers 101 and turns c into a WebSocket connection on route. */
static void accept_upgrade(mw_conn_t *c, const char *head, size_t head_len, mw_slice_t key,
                           const mw_route_t *route)
{
    mw_worker_t *w = c->w;
    char accept[29], resp[256];
    mw__ws_accept_key(key.p, key.n, accept);
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n",
                     accept);
    mw__outq_append2(&w->pool, &c->out, resp, (size_t)n, NULL, 0);
    mw__conn_want_flush(c);

    /* The app may read the request (path, query, headers) for the whole
     * life of the connection, so the head is kept; it is the only per-
     * connection copy of request data. */
    c->head = mw__xmalloc(head_len);
    memcpy(c->head, head, head_len);
    c->head_len = (uint32_t)head_len;
    c->route = route->index;

    c->state = MW_CONN_OPEN;
    memset(&c->p.ws, 0, sizeof c->p.ws);
    c->p.ws.server = 1;
    c->p.ws.max_message_size = route->max_message_size;
    mw__tl_move(c, MW_TL_ACTIVE);
    mw__idle_touch(c);

    c->opened = 1;
    if (w->ops->on_open(w->ops_ud, c))
        c->busy = 1;
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

    /* A WebSocket upgrade has no body; a request that announces one is
     * ambiguous about where the frames begin (RFC 9112 6.3). */
    if (mw__http_header_find(&req, "content-length") ||
        mw__http_header_find(&req, "transfer-encoding")) {
        const mw_http_header_t *cl = mw__http_header_find(&req, "content-length");
        if (!cl || !(cl->value.n == 1 && cl->value.p[0] == '0') ||
            mw__http_header_find(&req, "transfer-encoding")) {
            mw__conn_http_error(c, 400, NULL, "an upgrade request has no body");
            return len;
        }
    }

    mw_route_t route = {0, w->cfg.max_message_size};
    mw__conn_retain(c);
    status = w->ops->route(w->ops_ud, c, &req, &route);
    mw__conn_release(c);
    if (c->state != MW_CONN_HTTP)
        return len;
    if (status) {
        mw__conn_http_error(c, status, NULL, status == 404 ? "no route for this path" : NULL);
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

    mw__conn_retain(c);
    accept_upgrade(c, (const char *)buf, (size_t)r, key, &route);
    size_t used = (size_t)r;
    /* Frames may ride in the same packet as the request. */
    if (used < len && (c->state == MW_CONN_OPEN || c->state == MW_CONN_CLOSING))
        used += mw__conn_ws_input(c, buf + used, len - used);
    else if (c->state == MW_CONN_DEAD || c->state == MW_CONN_FLUSHCLOSE)
        used = len;
    mw__conn_release(c);
    return used;
}
