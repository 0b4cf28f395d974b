/* Worker threads (see threads.h and hub.h). Each thread owns everything it
 * uses: its loop, its worker, its Lua state; it meets the others only in
 * the hub's mailboxes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "log.h"
#include "threads.h"

typedef struct start {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pending; /* threads that have not reported yet */
    int failed;
    char err[1024];
} start_t;

typedef struct targ {
    mw_hub_t *hub;
    int index;
    const mw_thread_spec_t *spec;
    start_t *start;
} targ_t;

static void report(start_t *st, const char *err)
{
    pthread_mutex_lock(&st->mu);
    if (err && !st->failed) {
        st->failed = 1;
        snprintf(st->err, sizeof st->err, "%s", err);
    }
    st->pending--;
    pthread_cond_signal(&st->cv);
    pthread_mutex_unlock(&st->mu);
}

static void *run(void *arg)
{
    targ_t *t = arg;
    mw_hub_t *hub = t->hub;
    int i = t->index;
    mw_slot_t *slot = &hub->slots[i];
    const mw_thread_spec_t *spec = t->spec;
    char err[1024];
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    mw_lua_t *S = mw__xcalloc(1, sizeof *S);
    mw_worker_t *w = mw__xcalloc(1, sizeof *w);
    slot->loop = loop;
    if (mw__lua_open(S, spec->app_path, spec->trees, i, hub->n, err, sizeof err) != 0) {
        report(t->start, err);
        mw__lua_close(S);
        goto out;
    }
    S->force_max_message_size = spec->force_max_message_size;
    mw__worker_init(w, loop, &spec->cfg, &mw__lua_ops, S);
    w->index = i;
    w->share_fd = spec->share_fd;
    w->share_tls_fd = spec->share_tls_fd;
    w->access_log = spec->access_log;
    w->timing = spec->timing;
    mw__lua_attach(S, w);
    if (spec->broker) {
        S->broker = spec->broker;
        mw__broker_watch(spec->broker, w);
    }
    if (mw__worker_listen(w, err, sizeof err) != 0 ||
        mw__worker_listen_tls(w, err, sizeof err) != 0) {
        report(t->start, err);
        mw__worker_stop(w);
        mw__lua_close(S);
        mw__worker_free(w);
        goto out;
    }
    S->hub = hub;
    slot->w = w;
    slot->S = S;
    mw__hub_attach(hub, i);
    mw__worker_start(w);
    report(t->start, NULL);

    ev_run(loop, 0);

    mw__hub_detach(hub, i);
    mw__worker_stop(w);
    mw__lua_close(S);
    mw__worker_free(w);
    slot->w = NULL;
    slot->S = NULL;
out:
    ev_loop_destroy(loop);
    free(w);
    free(S);
    free(t);
    return NULL;
}

int mw__threads_start(mw_hub_t *hub, const mw_thread_spec_t *spec, char *err, size_t errlen)
{
    start_t st;
    memset(&st, 0, sizeof st);
    pthread_mutex_init(&st.mu, NULL);
    pthread_cond_init(&st.cv, NULL);
    st.pending = hub->n - 1;
    for (int i = 1; i < hub->n; i++) {
        targ_t *t = mw__xmalloc(sizeof *t);
        t->hub = hub;
        t->index = i;
        t->spec = spec;
        t->start = &st;
        if (pthread_create(&hub->slots[i].tid, NULL, run, t) != 0) {
            mw_error("cannot start worker %d", i + 1);
            abort();
        }
    }
    pthread_mutex_lock(&st.mu);
    while (st.pending > 0)
        pthread_cond_wait(&st.cv, &st.mu);
    pthread_mutex_unlock(&st.mu);
    pthread_cond_destroy(&st.cv);
    pthread_mutex_destroy(&st.mu);
    if (st.failed) {
        snprintf(err, errlen, "%s", st.err);
        mw__hub_stop(hub, 0);
        mw__threads_join(hub);
        return -1;
    }
    return 0;
}

void mw__threads_join(mw_hub_t *hub)
{
    for (int i = 1; i < hub->n; i++) {
        if (hub->slots[i].tid) {
            pthread_join(hub->slots[i].tid, NULL);
            hub->slots[i].tid = 0;
        }
    }
}
