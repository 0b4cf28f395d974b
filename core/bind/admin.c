/* The admin listener's requests (--admin HOST:PORT), for deployment
 * scripts: POST /reload reloads the app and answers whether it worked;
 * GET /status answers a few figures. Both answer JSON. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "hub.h"
#include "log.h"
#include "metrics.h"

static void answer(mw_conn_t *c, int status, const char *json)
{
    static const char type[] = "Content-Type: application/json\r\n";
    mw__conn_http_respond(c, status, type, sizeof type - 1, json, strlen(json));
    mw__conn_http_done(c, 500);
}

int mw__app_reload(mw_lua_t *S, const char *why, char *err, size_t errlen)
{
    /* Certificates are re-read with the app (renewals need no restart); a
     * bad one keeps the old context serving. */
    if (S->w && mw__worker_reload_tls(S->w, err, errlen) != 0)
        mw_error("reload (%s): keeping the previous TLS certificate: %s", why, err);
    if (mw__lua_reload(S, err, errlen) == 0) {
        mw_info("reloaded %s (%s)", S->app_path, why);
        return 0;
    }
    mw_error("reload failed (%s); still serving the previous version: %s", why, err);
    return -1;
}

/* Whether req carries `Authorization: Bearer <token>`. The comparison
 * takes the same time wherever the first difference is. */
static int authorized(const mw_http_request_t *req, const char *token)
{
    if (mw__http_header_count(req, "authorization") != 1)
        return 0;
    mw_slice_t v = mw__http_header_find(req, "authorization")->value;
    static const char scheme[] = "bearer ";
    size_t sl = sizeof scheme - 1, tl = strlen(token);
    if (v.n != sl + tl)
        return 0;
    for (size_t i = 0; i < sl; i++)
        if ((v.p[i] | 0x20) != scheme[i])
            return 0;
    unsigned char diff = 0;
    for (size_t i = 0; i < tl; i++)
        diff |= (unsigned char)(v.p[sl + i] ^ token[i]);
    return diff == 0;
}

void mw__admin_request_cb(void *ud, mw_conn_t *c, const mw_http_request_t *req)
{
    mw_lua_t *S = ud;
    char body[2048], err[1024], esc[1100];
    /* --admin-token-file: every admin request shows the token (the metrics
     * listener has none to show: it answers GET /metrics only). */
    if (!c->metrics_only && S->admin_token && !authorized(req, S->admin_token)) {
        /* Logged at most once a second, with how many since: someone
         * hammering the port must not flood the log. */
        S->admin_refused++;
        double now = ev_now(c->w->loop);
        if (now - S->admin_warned >= 1.0) {
            char addr[64];
            mw__conn_peer(c, addr, sizeof addr);
            mw_warn("admin listener: refused %.*s %.*s from %s without the admin token (%u "
                    "refused since the last such line)",
                    (int)(req->method.n > 32 ? 32 : req->method.n), req->method.p,
                    (int)(req->path.n > 200 ? 200 : req->path.n), req->path.p, addr,
                    S->admin_refused);
            S->admin_warned = now;
            S->admin_refused = 0;
        }
        mw__conn_http_error(c, 401, "WWW-Authenticate: Bearer realm=\"moonwire admin\"\r\n",
                            "send Authorization: Bearer <the token in the server's "
                            "--admin-token-file> (moonwire reload --admin-token-file FILE)");
        return;
    }
    /* The metrics listener may face a scraper on another host: it answers
     * GET /metrics and nothing else, least of all /reload. */
    if (c->metrics_only && !mw__slice_ieq(req->path, "/metrics")) {
        mw__conn_http_error(c, 404, NULL, "the metrics listener serves GET /metrics");
        return;
    }
    if (mw__slice_ieq(req->path, "/metrics") && !mw__slice_ieq(req->method, "GET") &&
        !mw__slice_ieq(req->method, "HEAD")) {
        mw__conn_http_error(c, 405, "Allow: GET, HEAD\r\n", "use GET /metrics");
        return;
    }
    if (mw__slice_ieq(req->path, "/reload")) {
        if (!mw__slice_ieq(req->method, "POST")) {
            mw__conn_http_error(c, 405, "Allow: POST\r\n", "use POST /reload");
            return;
        }
        int rc = mw__app_reload(S, "admin request", err, sizeof err);
        if (S->hub) /* the other workers reload too, each on its own loop */
            mw__hub_reload(S->hub, S->index);
        if (rc == 0) {
            snprintf(body, sizeof body, "{\"ok\":true,\"reloads\":%u}\n", S->reloads);
            answer(c, 200, body);
        } else {
            mw__json_escape(esc, sizeof esc, err);
            snprintf(body, sizeof body, "{\"ok\":false,\"error\":\"%s\"}\n", esc);
            answer(c, 500, body);
        }
        return;
    }
    if (mw__slice_ieq(req->path, "/metrics")) {
        size_t n;
        char *text = mw__metrics_render(S, &n);
        static const char type[] = "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n";
        mw__conn_http_respond(c, 200, type, sizeof type - 1, text, n);
        free(text);
        mw__conn_http_done(c, 500);
        return;
    }
    if (mw__slice_ieq(req->path, "/status")) {
        /* Clients only: not admin connections (this one included). */
        size_t n = 0;
        for (mw_conn_t *k = S->w ? S->w->all_head : NULL; k; k = k->all_next)
            n += k->state != MW_CONN_DEAD && !k->admin;
        snprintf(body, sizeof body, "{\"connections\":%zu,\"reloads\":%u,\"reload_failures\":%u}\n",
                 n, S->reloads, S->reload_failures);
        answer(c, 200, body);
        return;
    }
    mw__conn_http_error(c, 404, NULL, "the admin listener has POST /reload and GET /status");
}
