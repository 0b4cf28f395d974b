/* The HTTP phase of a connection: read the request head (RFC 9112), check a
 * WebSocket upgrade (RFC 6455 4.2.1), let the app decide on it (routing, the
 * origin policy and the upgrade hook live on the app side, and may take
 * their time), then answer 101 and switch to WebSocket, or answer with an
 * error status and close. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "log.h"
#include "ws_handshake.h"

void mw__conn_http_refuse(mw_conn_t *c, int status, const char *extra_headers, const char *body,
                          size_t blen)
{
    if (c->state != MW_CONN_HTTP && c->state != MW_CONN_UPGRADING)
        return;
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

int mw__conn_upgrade_accept(mw_conn_t *c, int route, const char *protocol,
                            const char *extra_headers)
{
    mw_worker_t *w = c->w;
    if (c->state != MW_CONN_UPGRADING || route < 0 || (size_t)route >= w->nroutes)
        return MW_ECLOSED;
    mw_http_request_t req;
    mw_slice_t key = {NULL, 0};
    const char *why;
    if (!reparse_head(c, &req) || mw__ws_handshake_check(&req, &key, &why) != 0)
        return MW_EINVAL; /* cannot happen: the head was checked before it was kept */
    char accept[29];
    mw__ws_accept_key(key.p, key.n, accept);
    char resp[512];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n"
                     "%s%s%s",
                     accept, protocol ? "Sec-WebSocket-Protocol: " : "", protocol ? protocol : "",
                     protocol ? "\r\n" : "");
    mw__outq_append2(&w->pool, &c->out, resp, (size_t)n, extra_headers,
                     extra_headers ? strlen(extra_headers) : 0);
    mw__outq_append2(&w->pool, &c->out, "\r\n", 2, NULL, 0);
    mw__conn_want_flush(c);

    c->route = route;
    c->state = MW_CONN_OPEN;
    memset(&c->p.ws, 0, sizeof c->p.ws);
    c->p.ws.server = 1;
    c->p.ws.max_message_size = w->routes[route].max_message_size;
    mw__tl_move(c, MW_TL_ACTIVE);
    mw__idle_touch(c);

    mw__conn_retain(c);
    c->opened = 1;
    if (w->ops->on_open(w->ops_ud, c))
        c->busy = 1;
    /* Frames that rode in with the request were held back; go on with them. */
    mw__conn_resume_input(c);
    mw__conn_release(c);
    return MW_OK;
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
     * and for the whole life of the connection, so the head is kept; it is
     * the only per-connection copy of request data. */
    c->head = mw__xmalloc((size_t)r);
    memcpy(c->head, buf, (size_t)r);
    c->head_len = (uint32_t)r;

    if (!wants_websocket(&req)) {
        /* No route serves plain HTTP yet: a WebSocket path asks for the
         * upgrade (426), any other is unknown (404). */
        c->state = MW_CONN_UPGRADING;
        mw__conn_retain(c);
        w->ops->http_request(w->ops_ud, c, &req);
        mw__conn_release(c);
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
