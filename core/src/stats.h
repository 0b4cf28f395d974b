/* Counters every worker keeps for metrics (--metrics, Prometheus text) and
 * moonwire.stats(). Plain integers bumped on paths that already touch the
 * connection: no locks, no allocation, no syscalls. Gauges (open
 * connections, queued bytes, Lua memory) are computed when read. */
#ifndef MW_STATS_H
#define MW_STATS_H

#include <stdint.h>

/* Close codes reported to on_close, counted by code; others in "other". */
#define MW_STATS_CODES 12
extern const uint16_t mw__stats_codes[MW_STATS_CODES]; /* 0 = other */

/* HTTP statuses of refused upgrades, counted by status; others in "other". */
#define MW_STATS_REFUSALS 12
extern const uint16_t mw__stats_refusals[MW_STATS_REFUSALS]; /* 0 = other */

typedef struct mw_stats {
    uint64_t accepted;                   /* TCP connections accepted */
    uint64_t ws_opened;                  /* WebSocket upgrades accepted */
    uint64_t refused[MW_STATS_REFUSALS]; /* upgrade requests refused, by status */
    uint64_t http_requests;              /* plain HTTP requests answered */
    uint64_t msgs_in, msgs_out;          /* WebSocket messages */
    uint64_t bytes_in, bytes_out;        /* bytes read from / written to sockets */
    uint64_t publishes, deliveries;
    uint64_t closes[MW_STATS_CODES]; /* connections ended, by on_close code */
    uint64_t handler_calls, handler_errors;
    double handler_seconds;             /* time inside Lua handlers (resumes) */
    uint64_t slow_closed, slow_dropped; /* slow-consumer actions */
} mw_stats_t;

/* Index of code in mw__stats_codes (0 for other codes). */
int mw__stats_code_index(unsigned code);
int mw__stats_refusal_index(unsigned status);

#endif
