/* Workers (--workers N): one thread per worker, each with its own event
 * loop, Lua state and listening socket on the shared port (SO_REUSEPORT).
 * The hub carries what must cross workers: publishes (so a topic is global
 * while its subscribers live on many workers), reloads and shutdown. Each
 * worker has a mailbox (a short-held mutex and an ev_async); nothing else is
 * shared. */
#ifndef MW_HUB_H
#define MW_HUB_H

#include <pthread.h>

#include "bind.h"
#include "metrics.h"

typedef struct mw_hub_msg mw_hub_msg_t;

typedef struct mw_slot {
    int index; /* 0-based */
    struct ev_loop *loop;
    mw_worker_t *w;
    mw_lua_t *S;
    pthread_t tid;
    pthread_mutex_t mu;
    mw_hub_msg_t *head, *tail;
    ev_async wake;
    ev_timer drain_check, drain_deadline;
    int draining;
    int alive; /* its loop runs and takes mail (under mu) */
    /* Its figures for /metrics, refreshed every second while metrics are
     * on (under mu): worker 1 renders every worker's without stopping them. */
    ev_timer snap_timer;
    mw_wview_t snap;
} mw_slot_t;

typedef struct mw_hub {
    int n;
    mw_slot_t *slots;
} mw_hub_t;

/* Sets up the hub for n workers (slots filled by the caller). */
void mw__hub_init(mw_hub_t *hub, int n);
/* Starts slot i's mailbox on its loop (call in the thread that runs it). */
void mw__hub_attach(mw_hub_t *hub, int i);
/* Closes slot i's mailbox (in its thread, before its loop goes). */
void mw__hub_detach(mw_hub_t *hub, int i);
void mw__hub_free(mw_hub_t *hub);

/* Queues a publish for every worker but `from` (which delivered locally). */
void mw__hub_publish(mw_hub_t *hub, int from, const char *topic, size_t tlen, const char *data,
                     size_t dlen, int binary);

/* Asks every worker but `from` to reload its app, to start a graceful
 * shutdown, or to stop its loop now. */
void mw__hub_reload(mw_hub_t *hub, int from);
void mw__hub_drain(mw_hub_t *hub, int from);
void mw__hub_stop(mw_hub_t *hub, int from);

/* Copies every worker's last snapshot into v[0..n-1]. */
void mw__hub_views(mw_hub_t *hub, mw_wview_t *v);

#endif
