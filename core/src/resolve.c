/* Host name resolution on a resolver thread (see resolve.h).
 *
 * Two lists under one mutex: `todo` (the thread takes from its head) and
 * `done` (answers the loop picks up on its ev_async). Cancelling happens on
 * the loop thread, like delivery, so a cancelled flag checked at delivery
 * needs no more locking than the list swap. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "resolve.h"

struct mw_resolve_req {
    char *host;
    int port;
    mw_resolve_cb cb;
    void *arg;
    struct addrinfo *res;
    int gai_err;
    int cancelled;
    mw_resolve_req_t *next;
};

struct mw_resolver {
    struct ev_loop *loop;
    ev_async async;
    pthread_t thread;
    int started, stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    mw_resolve_req_t *todo, **todo_tail; /* FIFO */
    mw_resolve_req_t *done;              /* LIFO: order of answers does not matter */
};

static void req_free(mw_resolve_req_t *q)
{
    if (q->res)
        freeaddrinfo(q->res);
    free(q->host);
    free(q);
}

static void *resolver_main(void *arg)
{
    mw_resolver_t *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->stop && !r->todo)
            pthread_cond_wait(&r->cv, &r->mu);
        if (r->stop)
            break;
        mw_resolve_req_t *q = r->todo;
        r->todo = q->next;
        if (!r->todo)
            r->todo_tail = &r->todo;
        pthread_mutex_unlock(&r->mu);

        char port[16];
        snprintf(port, sizeof port, "%d", q->port);
        struct addrinfo hints;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_ADDRCONFIG | AI_NUMERICSERV;
        q->gai_err = getaddrinfo(q->host, port, &hints, &q->res);
        if (q->gai_err)
            q->res = NULL;

        pthread_mutex_lock(&r->mu);
        q->next = r->done;
        r->done = q;
        ev_async_send(r->loop, &r->async);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* On the loop: run the callbacks of every answer that came in. */
static void deliver(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)loop;
    (void)revents;
    mw_resolver_t *r = (mw_resolver_t *)((char *)a - offsetof(mw_resolver_t, async));
    pthread_mutex_lock(&r->mu);
    mw_resolve_req_t *q = r->done;
    r->done = NULL;
    pthread_mutex_unlock(&r->mu);
    while (q) {
        mw_resolve_req_t *next = q->next;
        if (!q->cancelled) {
            struct addrinfo *res = q->res;
            q->res = NULL; /* the callback owns it now */
            q->cb(q->arg, res, q->gai_err);
        }
        req_free(q);
        q = next;
    }
}

mw_resolver_t *mw__resolver_new(struct ev_loop *loop)
{
    mw_resolver_t *r = mw__xcalloc(1, sizeof *r);
    r->loop = loop;
    r->todo_tail = &r->todo;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    ev_async_init(&r->async, deliver);
    return r;
}

void mw__resolver_free(mw_resolver_t *r)
{
    if (!r)
        return;
    if (r->started) {
        pthread_mutex_lock(&r->mu);
        r->stop = 1;
        pthread_cond_signal(&r->cv);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->thread, NULL);
        ev_ref(r->loop); /* undo the ev_unref of the start */
        ev_async_stop(r->loop, &r->async);
    }
    for (mw_resolve_req_t *lists[2] = {r->todo, r->done}, **l = lists; l < lists + 2; l++) {
        while (*l) {
            mw_resolve_req_t *next = (*l)->next;
            req_free(*l);
            *l = next;
        }
    }
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

mw_resolve_req_t *mw__resolve(mw_resolver_t *r, const char *host, int port, mw_resolve_cb cb,
                              void *arg)
{
    if (!r->started) {
        ev_async_start(r->loop, &r->async);
        ev_unref(r->loop); /* a lookup alone does not keep the loop running */
        if (pthread_create(&r->thread, NULL, resolver_main, r) != 0) {
            mw_error("cannot start the resolver thread");
            abort();
        }
        r->started = 1;
    }
    mw_resolve_req_t *q = mw__xcalloc(1, sizeof *q);
    q->host = mw__xmalloc(strlen(host) + 1);
    memcpy(q->host, host, strlen(host) + 1);
    q->port = port;
    q->cb = cb;
    q->arg = arg;
    pthread_mutex_lock(&r->mu);
    *r->todo_tail = q;
    r->todo_tail = &q->next;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return q;
}

void mw__resolve_cancel(mw_resolver_t *r, mw_resolve_req_t *q)
{
    pthread_mutex_lock(&r->mu);
    /* Still waiting for the thread: take it out and free it now. */
    for (mw_resolve_req_t **p = &r->todo; *p; p = &(*p)->next) {
        if (*p == q) {
            *p = q->next;
            if (r->todo_tail == &q->next)
                r->todo_tail = p;
            pthread_mutex_unlock(&r->mu);
            req_free(q);
            return;
        }
    }
    /* Being looked up or answered: drop the answer when it arrives. */
    q->cancelled = 1;
    pthread_mutex_unlock(&r->mu);
}
