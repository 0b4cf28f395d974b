/* Starting and joining the worker threads beyond the first (--workers). */
#ifndef MW_THREADS_H
#define MW_THREADS_H

#include "hub.h"

typedef struct mw_thread_spec {
    const char *app_path;
    const char *const *trees;
    mw_config_t cfg; /* final configuration; ports are the ones worker 1 bound */
    int force_max_message_size;
    int access_log;
    int timing;
    struct mw_broker *broker;   /* --broker, or NULL */
    int share_fd, share_tls_fd; /* worker 1's listening sockets (see worker.h) */
} mw_thread_spec_t;

/* Starts workers 2..N (hub slots 1..n-1): each loads the app into its own
 * Lua state and listens on the shared ports. Returns 0 once all listen, or
 * -1 with the first failure in err (the started ones are stopped). */
int mw__threads_start(mw_hub_t *hub, const mw_thread_spec_t *spec, char *err, size_t errlen);

/* Waits for every started worker thread to end. */
void mw__threads_join(mw_hub_t *hub);

#endif
