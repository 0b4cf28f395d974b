/* Metrics: the worker's counters (stats.h) and the gauges computed when
 * asked, as Prometheus text (GET /metrics on --metrics or --admin) and as
 * the table moonwire.stats() returns. Names and units follow Prometheus
 * conventions: *_total counters, *_bytes and *_seconds units. */
#include <lauxlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "bind.h"
#include "broker.h"
#include "metrics.h"

/* Gauges that are sums over connections. */
typedef struct gauges {
    size_t ws_open, http_open, queued;
} gauges_t;

static void gather(mw_lua_t *S, gauges_t *g)
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

typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf_t;

static void put(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        b->len += (size_t)n < b->cap - b->len ? (size_t)n : b->cap - b->len - 1;
}

static void head(sbuf_t *b, const char *name, const char *type, const char *help)
{
    put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void counter(sbuf_t *b, const char *name, const char *help, unsigned long long v)
{
    head(b, name, "counter", help);
    put(b, "%s %llu\n", name, v);
}

static void gauge(sbuf_t *b, const char *name, const char *help, double v)
{
    head(b, name, "gauge", help);
    put(b, "%s %.17g\n", name, v);
}

size_t mw__metrics_render(mw_lua_t *S, char *out, size_t cap)
{
    sbuf_t b = {out, 0, cap};
    out[0] = 0;
    if (!S->w)
        return 0;
    S->w->timing = 1; /* someone reads the figures: time the handlers from now on */
    const mw_stats_t *st = &S->w->stats;
    gauges_t g;
    gather(S, &g);
    counter(&b, "moonwire_connections_accepted_total", "TCP connections accepted.", st->accepted);
    head(&b, "moonwire_connections_open", "gauge", "Open connections by kind.");
    put(&b, "moonwire_connections_open{kind=\"websocket\"} %zu\n", g.ws_open);
    put(&b, "moonwire_connections_open{kind=\"http\"} %zu\n", g.http_open);
    counter(&b, "moonwire_websocket_upgrades_total", "WebSocket upgrades accepted.", st->ws_opened);
    head(&b, "moonwire_websocket_upgrades_refused_total", "counter",
         "WebSocket upgrade requests refused, by HTTP status.");
    for (int i = 1; i < MW_STATS_REFUSALS; i++)
        put(&b, "moonwire_websocket_upgrades_refused_total{status=\"%u\"} %llu\n",
            mw__stats_refusals[i], (unsigned long long)st->refused[i]);
    put(&b, "moonwire_websocket_upgrades_refused_total{status=\"other\"} %llu\n",
        (unsigned long long)st->refused[0]);
    head(&b, "moonwire_websocket_closed_total", "counter",
         "WebSocket connections ended, by the close code on_close got.");
    for (int i = 1; i < MW_STATS_CODES; i++)
        put(&b, "moonwire_websocket_closed_total{code=\"%u\"} %llu\n", mw__stats_codes[i],
            (unsigned long long)st->closes[i]);
    put(&b, "moonwire_websocket_closed_total{code=\"other\"} %llu\n",
        (unsigned long long)st->closes[0]);
    counter(&b, "moonwire_http_requests_total", "Plain HTTP requests answered.", st->http_requests);
    counter(&b, "moonwire_messages_received_total", "WebSocket messages received.", st->msgs_in);
    counter(&b, "moonwire_messages_sent_total", "WebSocket frames queued for sending.",
            st->msgs_out);
    counter(&b, "moonwire_received_bytes_total", "Bytes read from client sockets.", st->bytes_in);
    counter(&b, "moonwire_sent_bytes_total", "Bytes written to client sockets.", st->bytes_out);
    counter(&b, "moonwire_publishes_total", "app:publish calls.", st->publishes);
    counter(&b, "moonwire_publish_deliveries_total", "Messages queued to subscribers by publishes.",
            st->deliveries);
    counter(&b, "moonwire_handler_calls_total", "Runs of Lua handlers (resumes).",
            st->handler_calls);
    counter(&b, "moonwire_handler_errors_total", "Lua handler, hook and timer errors.",
            st->handler_errors);
    head(&b, "moonwire_handler_seconds_total", "counter", "Time spent running Lua handlers.");
    put(&b, "moonwire_handler_seconds_total %.9f\n", st->handler_seconds);
    gauge(&b, "moonwire_handlers_suspended", "Handler calls suspended (sleeping or waiting).",
          (double)S->nbusy);
    gauge(&b, "moonwire_write_queue_bytes", "Bytes queued for clients and not yet written.",
          (double)g.queued);
    counter(&b, "moonwire_slow_consumer_closed_total", "Connections closed as slow consumers.",
            st->slow_closed);
    counter(&b, "moonwire_slow_consumer_dropped_total",
            "Messages dropped for slow consumers (slow_consumer = \"drop\").", st->slow_dropped);
    head(&b, "moonwire_reloads_total", "counter", "Hot reloads, by result.");
    put(&b, "moonwire_reloads_total{result=\"ok\"} %u\n", S->reloads);
    put(&b, "moonwire_reloads_total{result=\"failed\"} %u\n", S->reload_failures);
    gauge(&b, "moonwire_lua_memory_bytes", "Memory used by the Lua state.",
          (double)lua_gc(S->L, LUA_GCCOUNT, 0) * 1024.0 + (double)lua_gc(S->L, LUA_GCCOUNTB, 0));
    if (S->broker) {
        mw_broker_stats_t bs;
        mw__broker_stats(S->broker, &bs);
        gauge(&b, "moonwire_broker_connected", "1 while the Redis broker is connected.",
              bs.connected);
        counter(&b, "moonwire_broker_published_total", "Publishes sent to Redis.", bs.published);
        counter(&b, "moonwire_broker_received_total",
                "Messages from other processes delivered through Redis.", bs.received);
        head(&b, "moonwire_broker_dropped_total", "counter",
             "Publishes that reached only this process, by reason.");
        put(&b, "moonwire_broker_dropped_total{reason=\"disconnected\"} %llu\n", bs.dropped_down);
        put(&b, "moonwire_broker_dropped_total{reason=\"max_pending\"} %llu\n", bs.dropped_full);
        counter(&b, "moonwire_broker_reconnects_total", "Connections to Redis made again.",
                bs.reconnects);
        gauge(&b, "moonwire_broker_subscriptions", "Redis channels followed.",
              (double)bs.subscriptions);
    }
    return b.len;
}

static void setnum(lua_State *L, const char *k, double v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
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
    gauges_t g;
    gather(S, &g);
    lua_newtable(L);
    setnum(L, "accepted", (double)st->accepted);
    setnum(L, "websocket", (double)g.ws_open);
    setnum(L, "http", (double)g.http_open);
    lua_setfield(L, -2, "connections");
    lua_newtable(L);
    setnum(L, "accepted", (double)st->ws_opened);
    lua_newtable(L);
    for (int i = 0; i < MW_STATS_REFUSALS; i++) {
        if (!st->refused[i])
            continue;
        if (i)
            lua_pushfstring(L, "%d", (int)mw__stats_refusals[i]);
        else
            lua_pushliteral(L, "other");
        lua_pushnumber(L, (double)st->refused[i]);
        lua_settable(L, -3);
    }
    lua_setfield(L, -2, "refused");
    lua_setfield(L, -2, "upgrades");
    lua_newtable(L);
    for (int i = 0; i < MW_STATS_CODES; i++) {
        if (!st->closes[i])
            continue;
        if (i)
            lua_pushfstring(L, "%d", (int)mw__stats_codes[i]);
        else
            lua_pushliteral(L, "other");
        lua_pushnumber(L, (double)st->closes[i]);
        lua_settable(L, -3);
    }
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
