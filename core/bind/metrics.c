/* Metrics: the worker's counters (stats.h) and the gauges computed when
 * asked, as Prometheus text (GET /metrics on --metrics or --admin) and as
 * the table moonwire.stats() returns. Names and units follow Prometheus
 * conventions: *_total counters, *_bytes and *_seconds units. */
#include <lauxlib.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "bind.h"
#include "broker.h"
#include "hub.h"
#include "log.h"
#include "metrics.h"

static void gather(mw_lua_t *S, mw_gauges_t *g)
{
    memset(g, 0, sizeof *g);
    for (mw_conn_t *c = S->w ? S->w->all_head : NULL; c; c = c->all_next) {
        if (c->state == MW_CONN_DEAD || c->admin)
            continue;
        if (c->opened)
            g->ws_open++;
        else
            g->http_open++;
        g->queued += c->out.bytes;
    }
}

void mw__metrics_view(mw_lua_t *S, mw_wview_t *v)
{
    memset(v, 0, sizeof *v);
    if (!S->w)
        return;
    v->st = S->w->stats;
    gather(S, &v->g);
    v->suspended = S->nbusy;
    v->reloads = S->reloads;
    v->reload_failures = S->reload_failures;
    v->lua_bytes =
        (double)lua_gc(S->L, LUA_GCCOUNT, 0) * 1024.0 + (double)lua_gc(S->L, LUA_GCCOUNTB, 0);
}

/* A growing text buffer. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf_t;

static void put(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf_t *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        b->cap = b->cap * 2 + (size_t)n;
        b->p = mw__xrealloc(b->p, b->cap);
    }
}

static void head(sbuf_t *b, const char *name, const char *type, const char *help)
{
    put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* The figures of every worker: with one, plain series; with several, one
 * series per worker, labelled worker="N" (sum them for the process). */
typedef struct views {
    const mw_wview_t *v;
    size_t n;
} views_t;

/* The label set for worker i, with more labels (or NULL): "", {a="b"},
 * {worker="2"} or {worker="2",a="b"}. */
static const char *labels(char *buf, size_t cap, const views_t *vs, size_t i, const char *more)
{
    if (vs->n > 1)
        snprintf(buf, cap, "{worker=\"%zu\"%s%s}", i + 1, more ? "," : "", more ? more : "");
    else if (more)
        snprintf(buf, cap, "{%s}", more);
    else
        buf[0] = 0;
    return buf;
}

#define STAT(field) offsetof(mw_stats_t, field)

/* A counter of mw_stats_t (the uint64_t at offset off), one line per worker. */
static void counter(sbuf_t *b, const views_t *vs, const char *name, const char *help, size_t off)
{
    char l[64];
    head(b, name, "counter", help);
    for (size_t i = 0; i < vs->n; i++) {
        uint64_t x;
        memcpy(&x, (const char *)&vs->v[i].st + off, sizeof x);
        put(b, "%s%s %llu\n", name, labels(l, sizeof l, vs, i, NULL), (unsigned long long)x);
    }
}

/* A counter array by label: values[k] at offset off + k * 8, label name=keys[k] ("other" for 0). */
static void counter_by(sbuf_t *b, const views_t *vs, const char *name, const char *help,
                       const char *label, const uint16_t *keys, int nkeys, size_t off)
{
    char l[96], more[48];
    head(b, name, "counter", help);
    for (size_t i = 0; i < vs->n; i++)
        for (int k = 1; k <= nkeys; k++) {
            int key = k % nkeys; /* "other" (index 0) last */
            uint64_t x;
            memcpy(&x, (const char *)&vs->v[i].st + off + (size_t)key * sizeof x, sizeof x);
            if (key)
                snprintf(more, sizeof more, "%s=\"%u\"", label, keys[key]);
            else
                snprintf(more, sizeof more, "%s=\"other\"", label);
            put(b, "%s%s %llu\n", name, labels(l, sizeof l, vs, i, more), (unsigned long long)x);
        }
}

/* A gauge computed per worker by get(view). */
static void gauge(sbuf_t *b, const views_t *vs, const char *name, const char *type,
                  const char *help, double (*get)(const mw_wview_t *))
{
    char l[64];
    head(b, name, type, help);
    for (size_t i = 0; i < vs->n; i++)
        put(b, "%s%s %.17g\n", name, labels(l, sizeof l, vs, i, NULL), get(&vs->v[i]));
}

static double get_seconds(const mw_wview_t *v)
{
    return v->st.handler_seconds;
}
static double get_suspended(const mw_wview_t *v)
{
    return (double)v->suspended;
}
static double get_queued(const mw_wview_t *v)
{
    return (double)v->g.queued;
}
static double get_lua(const mw_wview_t *v)
{
    return v->lua_bytes;
}

static void broker_metrics(sbuf_t *b, mw_broker_t *broker)
{
    mw_broker_stats_t bs;
    mw__broker_stats(broker, &bs);
    head(b, "moonwire_broker_connected", "gauge", "1 while the Redis broker is connected.");
    put(b, "moonwire_broker_connected %d\n", bs.connected);
    static const char *const names[][2] = {
        {"moonwire_broker_published_total", "Publishes sent to Redis."},
        {"moonwire_broker_received_total",
         "Messages from other processes delivered through Redis."},
        {"moonwire_broker_reconnects_total", "Connections to Redis made again."}};
    const unsigned long long vals[] = {bs.published, bs.received, bs.reconnects};
    for (size_t i = 0; i < 3; i++) {
        head(b, names[i][0], "counter", names[i][1]);
        put(b, "%s %llu\n", names[i][0], vals[i]);
    }
    head(b, "moonwire_broker_dropped_total", "counter",
         "Publishes that reached only this process, by reason.");
    put(b, "moonwire_broker_dropped_total{reason=\"disconnected\"} %llu\n", bs.dropped_down);
    put(b, "moonwire_broker_dropped_total{reason=\"max_pending\"} %llu\n", bs.dropped_full);
    head(b, "moonwire_broker_subscriptions", "gauge", "Redis channels followed.");
    put(b, "moonwire_broker_subscriptions %llu\n", bs.subscriptions);
}

char *mw__metrics_render(mw_lua_t *S, size_t *len)
{
    sbuf_t b = {mw__xmalloc(16384), 0, 16384};
    b.p[0] = 0;
    *len = 0;
    if (!S->w)
        return b.p;
    S->w->timing = 1; /* someone reads the figures: time the handlers from now on */
    /* This worker's figures now; the others' from their last snapshot. */
    size_t n = S->hub && S->hub->n > 1 ? (size_t)S->hub->n : 1;
    mw_wview_t *v = mw__xcalloc(n, sizeof *v);
    if (n > 1)
        mw__hub_views(S->hub, v);
    mw__metrics_view(S, &v[n > 1 ? (size_t)S->index : 0]);
    views_t vs = {v, n};
    char l[96];
    counter(&b, &vs, "moonwire_connections_accepted_total", "TCP connections accepted.",
            STAT(accepted));
    head(&b, "moonwire_connections_open", "gauge", "Open connections by kind.");
    for (size_t i = 0; i < n; i++) {
        put(&b, "moonwire_connections_open%s %zu\n",
            labels(l, sizeof l, &vs, i, "kind=\"websocket\""), v[i].g.ws_open);
        put(&b, "moonwire_connections_open%s %zu\n", labels(l, sizeof l, &vs, i, "kind=\"http\""),
            v[i].g.http_open);
    }
    counter(&b, &vs, "moonwire_websocket_upgrades_total", "WebSocket upgrades accepted.",
            STAT(ws_opened));
    counter_by(&b, &vs, "moonwire_websocket_upgrades_refused_total",
               "WebSocket upgrade requests refused, by HTTP status.", "status", mw__stats_refusals,
               MW_STATS_REFUSALS, STAT(refused));
    counter_by(&b, &vs, "moonwire_websocket_closed_total",
               "WebSocket connections ended, by the close code on_close got.", "code",
               mw__stats_codes, MW_STATS_CODES, STAT(closes));
    counter(&b, &vs, "moonwire_http_requests_total", "Plain HTTP requests answered.",
            STAT(http_requests));
    counter(&b, &vs, "moonwire_messages_received_total", "WebSocket messages received.",
            STAT(msgs_in));
    counter(&b, &vs, "moonwire_messages_sent_total", "WebSocket frames queued for sending.",
            STAT(msgs_out));
    counter(&b, &vs, "moonwire_received_bytes_total", "Bytes read from client sockets.",
            STAT(bytes_in));
    counter(&b, &vs, "moonwire_sent_bytes_total", "Bytes written to client sockets.",
            STAT(bytes_out));
    counter(&b, &vs, "moonwire_publishes_total", "app:publish calls.", STAT(publishes));
    counter(&b, &vs, "moonwire_publish_deliveries_total",
            "Messages queued to subscribers by publishes.", STAT(deliveries));
    counter(&b, &vs, "moonwire_handler_calls_total", "Runs of Lua handlers (resumes).",
            STAT(handler_calls));
    counter(&b, &vs, "moonwire_handler_errors_total", "Lua handler, hook and timer errors.",
            STAT(handler_errors));
    gauge(&b, &vs, "moonwire_handler_seconds_total", "counter", "Time spent running Lua handlers.",
          get_seconds);
    gauge(&b, &vs, "moonwire_handlers_suspended", "gauge",
          "Handler calls suspended (sleeping or waiting).", get_suspended);
    gauge(&b, &vs, "moonwire_write_queue_bytes", "gauge",
          "Bytes queued for clients and not yet written.", get_queued);
    counter(&b, &vs, "moonwire_slow_consumer_closed_total", "Connections closed as slow consumers.",
            STAT(slow_closed));
    counter(&b, &vs, "moonwire_slow_consumer_dropped_total",
            "Messages dropped for slow consumers (slow_consumer = \"drop\").", STAT(slow_dropped));
    head(&b, "moonwire_reloads_total", "counter", "Hot reloads, by result.");
    for (size_t i = 0; i < n; i++) {
        put(&b, "moonwire_reloads_total%s %u\n", labels(l, sizeof l, &vs, i, "result=\"ok\""),
            v[i].reloads);
        put(&b, "moonwire_reloads_total%s %u\n", labels(l, sizeof l, &vs, i, "result=\"failed\""),
            v[i].reload_failures);
    }
    gauge(&b, &vs, "moonwire_lua_memory_bytes", "gauge", "Memory used by the Lua state.", get_lua);
    if (S->broker)
        broker_metrics(&b, S->broker);
    free(v);
    *len = b.len;
    return b.p;
}

static void setnum(lua_State *L, const char *k, double v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}

/* Pushes {["KEY"] = count} for the nonzero counts, keys[i] as a string and
 * index 0 as "other" (close codes, refusal statuses). */
static void push_counts(lua_State *L, const uint64_t *counts, const uint16_t *keys, int n)
{
    lua_newtable(L);
    for (int i = 0; i < n; i++) {
        if (!counts[i])
            continue;
        if (i)
            lua_pushfstring(L, "%d", (int)keys[i]);
        else
            lua_pushliteral(L, "other");
        lua_pushnumber(L, (double)counts[i]);
        lua_settable(L, -3);
    }
}

/* moonwire.stats() -> table with the same figures as /metrics */
int mw__lua_stats(lua_State *L)
{
    mw_lua_t *S = lua_touserdata(L, lua_upvalueindex(1));
    lua_newtable(L);
    if (!S->w)
        return 1;
    S->w->timing = 1;
    const mw_stats_t *st = &S->w->stats;
    mw_gauges_t g;
    gather(S, &g);
    lua_newtable(L);
    setnum(L, "accepted", (double)st->accepted);
    setnum(L, "websocket", (double)g.ws_open);
    setnum(L, "http", (double)g.http_open);
    lua_setfield(L, -2, "connections");
    lua_newtable(L);
    setnum(L, "accepted", (double)st->ws_opened);
    push_counts(L, st->refused, mw__stats_refusals, MW_STATS_REFUSALS);
    lua_setfield(L, -2, "refused");
    lua_setfield(L, -2, "upgrades");
    push_counts(L, st->closes, mw__stats_codes, MW_STATS_CODES);
    lua_setfield(L, -2, "closed");
    setnum(L, "http_requests", (double)st->http_requests);
    lua_newtable(L);
    setnum(L, "received", (double)st->msgs_in);
    setnum(L, "sent", (double)st->msgs_out);
    lua_setfield(L, -2, "messages");
    lua_newtable(L);
    setnum(L, "received", (double)st->bytes_in);
    setnum(L, "sent", (double)st->bytes_out);
    setnum(L, "queued", (double)g.queued);
    lua_setfield(L, -2, "bytes");
    lua_newtable(L);
    setnum(L, "publishes", (double)st->publishes);
    setnum(L, "deliveries", (double)st->deliveries);
    lua_setfield(L, -2, "pubsub");
    lua_newtable(L);
    setnum(L, "calls", (double)st->handler_calls);
    setnum(L, "errors", (double)st->handler_errors);
    setnum(L, "seconds", st->handler_seconds);
    setnum(L, "suspended", (double)S->nbusy);
    lua_setfield(L, -2, "handlers");
    lua_newtable(L);
    setnum(L, "closed", (double)st->slow_closed);
    setnum(L, "dropped", (double)st->slow_dropped);
    lua_setfield(L, -2, "slow_consumers");
    lua_newtable(L);
    setnum(L, "ok", (double)S->reloads);
    setnum(L, "failed", (double)S->reload_failures);
    lua_setfield(L, -2, "reloads");
    setnum(L, "lua_memory_bytes",
           (double)lua_gc(L, LUA_GCCOUNT, 0) * 1024.0 + (double)lua_gc(L, LUA_GCCOUNTB, 0));
    if (S->broker) {
        mw_broker_stats_t bs;
        mw__broker_stats(S->broker, &bs);
        lua_newtable(L);
        lua_pushboolean(L, bs.connected);
        lua_setfield(L, -2, "connected");
        setnum(L, "published", (double)bs.published);
        setnum(L, "received", (double)bs.received);
        setnum(L, "dropped_disconnected", (double)bs.dropped_down);
        setnum(L, "dropped_max_pending", (double)bs.dropped_full);
        setnum(L, "reconnects", (double)bs.reconnects);
        setnum(L, "subscriptions", (double)bs.subscriptions);
        lua_setfield(L, -2, "broker");
    }
    return 1;
}
