/* Metrics of a worker (see metrics.c). */
#ifndef MW_METRICS_H
#define MW_METRICS_H

#include "bind.h"
#include "stats.h"

/* Gauges that are sums over a worker's connections. */
typedef struct mw_gauges {
    size_t ws_open, http_open, queued;
} mw_gauges_t;

/* One worker's figures at one moment: what /metrics shows for it. */
typedef struct mw_wview {
    mw_stats_t st;
    mw_gauges_t g;
    size_t suspended;
    unsigned reloads, reload_failures;
    double lua_bytes;
} mw_wview_t;

/* Fills v with S's figures now (in S's own thread). */
void mw__metrics_view(mw_lua_t *S, mw_wview_t *v);

/* The Prometheus text format, malloc'd (the caller frees it); *len gets
 * its length. With several workers every series has a worker label: this
 * worker's figures are current, the others' at most 1 s old. */
char *mw__metrics_render(mw_lua_t *S, size_t *len);

/* moonwire.core.stats (upvalue 1: the mw_lua_t). */
int mw__lua_stats(lua_State *L);

#endif
