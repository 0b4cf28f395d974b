/* Metrics of a worker (see metrics.c). */
#ifndef MW_METRICS_H
#define MW_METRICS_H

#include "bind.h"

/* Writes the Prometheus text format into out (cap bytes); returns its length. */
size_t mw__metrics_render(mw_lua_t *S, char *out, size_t cap);

/* moonwire.core.stats (upvalue 1: the mw_lua_t). */
int mw__lua_stats(lua_State *L);

#endif
