/* Timer lists: timeouts for thousands of connections with one ev_timer per
 * kind of timeout (libev manual, "Be smart about timeouts", method 4).
 *
 * Every connection on a list has the same timeout, so appending at the tail
 * with the current time keeps the list sorted by deadline. The list's timer
 * is armed for the head's deadline; when it fires, it expires every head
 * that is due and rearms for the new head. Touching a connection on
 * activity is an O(1) unlink and append, with no timer call at all: the
 * timer may fire early, find the head not yet due, and simply rearm. */
#include "conn.h"

static void list_unlink(mw_tlist_t *l, mw_conn_t *c, int idle)
{
    mw_conn_t *prev = idle ? c->il_prev : c->tl_prev;
    mw_conn_t *next = idle ? c->il_next : c->tl_next;
    if (prev)
        *(idle ? &prev->il_next : &prev->tl_next) = next;
    else
        l->head = next;
    if (next)
        *(idle ? &next->il_prev : &next->tl_prev) = prev;
    else
        l->tail = prev;
    l->count--;
    if (idle) {
        c->il_prev = c->il_next = NULL;
    } else {
        c->tl_prev = c->tl_next = NULL;
    }
}

static void list_append(mw_tlist_t *l, mw_conn_t *c, int idle, double now)
{
    if (idle) {
        c->il_prev = l->tail;
        c->il_next = NULL;
        c->il_stamp = now;
        if (l->tail)
            l->tail->il_next = c;
    } else {
        c->tl_prev = l->tail;
        c->tl_next = NULL;
        c->tl_stamp = now;
        if (l->tail)
            l->tail->tl_next = c;
    }
    if (!l->tail)
        l->head = c;
    l->tail = c;
    l->count++;
    if (!ev_is_active(&l->timer)) {
        ev_timer_set(&l->timer, l->timeout, 0.);
        ev_timer_start(l->w->loop, &l->timer);
    }
}

static void sweep(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    mw_tlist_t *l = (mw_tlist_t *)((char *)t - offsetof(mw_tlist_t, timer));
    int idle = l == &l->w->idle;
    double now = ev_now(loop);
    while (l->head) {
        mw_conn_t *c = l->head;
        double due = (idle ? c->il_stamp : c->tl_stamp) + l->timeout;
        if (due > now) {
            ev_timer_set(t, due - now, 0.);
            ev_timer_start(loop, t);
            return;
        }
        /* Take it off first: the expiry action usually moves it elsewhere. */
        if (idle) {
            list_unlink(l, c, 1);
            c->in_idle = 0;
        } else {
            list_unlink(l, c, 0);
            c->tl_list = MW_TL_NONE;
        }
        mw__conn_retain(c);
        l->expire(c);
        mw__conn_release(c);
    }
}

void mw__tlist_init(mw_tlist_t *l, mw_worker_t *w, double timeout, void (*expire)(mw_conn_t *))
{
    l->head = l->tail = NULL;
    l->timeout = timeout;
    l->w = w;
    l->expire = expire;
    l->count = 0;
    ev_timer_init(&l->timer, sweep, timeout, 0.);
}

void mw__tlist_free(mw_tlist_t *l)
{
    ev_timer_stop(l->w->loop, &l->timer);
}

void mw__tl_move(mw_conn_t *c, int which)
{
    mw_worker_t *w = c->w;
    if (c->tl_list != MW_TL_NONE)
        list_unlink(&w->tl[c->tl_list], c, 0);
    c->tl_list = MW_TL_NONE;
    if (which != MW_TL_NONE && w->tl[which].timeout > 0) {
        list_append(&w->tl[which], c, 0, ev_now(w->loop));
        c->tl_list = (uint8_t)which;
    }
}

void mw__tl_touch(mw_conn_t *c)
{
    mw_tlist_t *l = &c->w->tl[c->tl_list];
    if (c->tl_list == MW_TL_NONE || l->tail == c) {
        if (c->tl_list != MW_TL_NONE)
            c->tl_stamp = ev_now(c->w->loop);
        return;
    }
    list_unlink(l, c, 0);
    list_append(l, c, 0, ev_now(c->w->loop));
}

void mw__idle_touch(mw_conn_t *c)
{
    mw_tlist_t *l = &c->w->idle;
    if (l->timeout <= 0)
        return;
    if (c->in_idle)
        list_unlink(l, c, 1);
    list_append(l, c, 1, ev_now(c->w->loop));
    c->in_idle = 1;
}

void mw__idle_remove(mw_conn_t *c)
{
    if (c->in_idle) {
        list_unlink(&c->w->idle, c, 1);
        c->in_idle = 0;
    }
}
