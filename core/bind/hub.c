/* The hub between workers (see hub.h). A publish is copied once per other
 * worker into its mailbox and encoded once there, for that worker's
 * subscribers: per worker, encoding stays once per publish. */
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "hub.h"
#include "log.h"
#include "pubsub.h"

enum { HUB_PUBLISH = 1, HUB_RELOAD, HUB_DRAIN, HUB_STOP };

struct mw_hub_msg {
    mw_hub_msg_t *next;
    int kind;
    int binary;
    size_t tlen, dlen;
    char data[]; /* topic, then payload */
};

static void post(mw_slot_t *s, mw_hub_msg_t *m)
{
    m->next = NULL;
    pthread_mutex_lock(&s->mu);
    if (!s->alive) {
        /* That worker has stopped: nobody left to deliver to. */
        pthread_mutex_unlock(&s->mu);
        free(m);
        return;
    }
    if (s->tail)
        s->tail->next = m;
    else
        s->head = m;
    s->tail = m;
    /* Sent under the lock, so the loop cannot be gone (see detach). */
    ev_async_send(s->loop, &s->wake);
    pthread_mutex_unlock(&s->mu);
}

static void post_all(mw_hub_t *hub, int from, int kind, const char *topic, size_t tlen,
                     const char *data, size_t dlen, int binary)
{
    for (int i = 0; i < hub->n; i++) {
        if (i == from)
            continue;
        mw_hub_msg_t *m = mw__xmalloc(sizeof *m + tlen + dlen);
        m->kind = kind;
        m->binary = binary;
        m->tlen = tlen;
        m->dlen = dlen;
        if (tlen)
            memcpy(m->data, topic, tlen);
        if (dlen)
            memcpy(m->data + tlen, data, dlen);
        post(&hub->slots[i], m);
    }
}

void mw__hub_publish(mw_hub_t *hub, int from, const char *topic, size_t tlen, const char *data,
                     size_t dlen, int binary)
{
    post_all(hub, from, HUB_PUBLISH, topic, tlen, data, dlen, binary);
}

void mw__hub_reload(mw_hub_t *hub, int from)
{
    post_all(hub, from, HUB_RELOAD, NULL, 0, NULL, 0, 0);
}

void mw__hub_drain(mw_hub_t *hub, int from)
{
    post_all(hub, from, HUB_DRAIN, NULL, 0, NULL, 0, 0);
}

void mw__hub_stop(mw_hub_t *hub, int from)
{
    post_all(hub, from, HUB_STOP, NULL, 0, NULL, 0, 0);
}

static void drain_poll(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    mw_slot_t *s = (mw_slot_t *)((char *)t - offsetof(mw_slot_t, drain_check));
    if (s->w->nconns == 0 && !s->S->busy)
        ev_break(loop, EVBREAK_ALL);
}

static void drain_expired(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)t;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

static void on_wake(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)revents;
    mw_slot_t *s = (mw_slot_t *)((char *)a - offsetof(mw_slot_t, wake));
    pthread_mutex_lock(&s->mu);
    mw_hub_msg_t *m = s->head;
    s->head = s->tail = NULL;
    pthread_mutex_unlock(&s->mu);
    while (m) {
        mw_hub_msg_t *next = m->next;
        char err[1024];
        switch (m->kind) {
        case HUB_PUBLISH:
            mw__pubsub_publish(s->w->pubsub, m->data, m->tlen, m->binary, m->data + m->tlen,
                               m->dlen, NULL);
            break;
        case HUB_RELOAD:
            mw__app_reload(s->S, "on every worker", err, sizeof err);
            break;
        case HUB_DRAIN:
            if (!s->draining) {
                s->draining = 1;
                mw__worker_drain(s->w);
                ev_timer_init(&s->drain_check, drain_poll, 0., 0.05);
                ev_timer_start(loop, &s->drain_check);
                ev_timer_init(&s->drain_deadline, drain_expired, s->w->cfg.shutdown_timeout, 0.);
                ev_timer_start(loop, &s->drain_deadline);
            }
            break;
        case HUB_STOP:
            ev_break(loop, EVBREAK_ALL);
            break;
        }
        free(m);
        m = next;
    }
}

/* Every second: this worker's figures into its slot, for worker 1's
 * /metrics. Only when metrics are read (w->timing): walking 100,000
 * connections for gauges nobody reads is waste. */
static void take_snapshot(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    mw_slot_t *s = (mw_slot_t *)((char *)t - offsetof(mw_slot_t, snap_timer));
    if (!s->w || !s->w->timing)
        return;
    mw_wview_t v;
    mw__metrics_view(s->S, &v);
    pthread_mutex_lock(&s->mu);
    s->snap = v;
    pthread_mutex_unlock(&s->mu);
}

void mw__hub_views(mw_hub_t *hub, mw_wview_t *v)
{
    for (int i = 0; i < hub->n; i++) {
        mw_slot_t *s = &hub->slots[i];
        pthread_mutex_lock(&s->mu);
        v[i] = s->snap;
        pthread_mutex_unlock(&s->mu);
    }
}

void mw__hub_init(mw_hub_t *hub, int n)
{
    hub->n = n;
    hub->slots = mw__xcalloc((size_t)n, sizeof *hub->slots);
    for (int i = 0; i < n; i++) {
        hub->slots[i].index = i;
        pthread_mutex_init(&hub->slots[i].mu, NULL);
    }
}

void mw__hub_attach(mw_hub_t *hub, int i)
{
    mw_slot_t *s = &hub->slots[i];
    ev_async_init(&s->wake, on_wake);
    ev_async_start(s->loop, &s->wake);
    /* The mailbox alone must not keep a loop from ending. */
    ev_unref(s->loop);
    if (hub->n > 1) {
        ev_timer_init(&s->snap_timer, take_snapshot, 0., 1.);
        ev_timer_start(s->loop, &s->snap_timer);
        ev_unref(s->loop);
    }
    pthread_mutex_lock(&s->mu);
    s->alive = 1;
    pthread_mutex_unlock(&s->mu);
}

void mw__hub_detach(mw_hub_t *hub, int i)
{
    mw_slot_t *s = &hub->slots[i];
    pthread_mutex_lock(&s->mu);
    s->alive = 0;
    pthread_mutex_unlock(&s->mu);
    ev_ref(s->loop);
    ev_async_stop(s->loop, &s->wake);
    if (hub->n > 1) {
        ev_ref(s->loop);
        ev_timer_stop(s->loop, &s->snap_timer);
    }
    ev_timer_stop(s->loop, &s->drain_check);
    ev_timer_stop(s->loop, &s->drain_deadline);
}

void mw__hub_free(mw_hub_t *hub)
{
    for (int i = 0; i < hub->n; i++) {
        mw_slot_t *s = &hub->slots[i];
        while (s->head) {
            mw_hub_msg_t *m = s->head;
            s->head = m->next;
            free(m);
        }
        pthread_mutex_destroy(&s->mu);
    }
    free(hub->slots);
    hub->slots = NULL;
}
