/* Tests for core/src/resolve.c: answers arrive on the loop thread through
 * the ev_async (never inside mw__resolve), failures carry getaddrinfo's
 * code, cancelled requests never call back (queued or already answered),
 * and freeing the resolver with requests pending leaks nothing (ASan). */
#include <netinet/in.h>
#include <stdlib.h>

#include "mwtest.h"
#include "resolve.h"

typedef struct {
    int calls, gai_err, family, port;
} answer_t;

static void on_answer(void *arg, struct addrinfo *res, int gai_err)
{
    answer_t *a = arg;
    a->calls++;
    a->gai_err = gai_err;
    if (res) {
        a->family = res->ai_family;
        if (res->ai_family == AF_INET)
            a->port = ntohs(((struct sockaddr_in *)res->ai_addr)->sin_port);
        freeaddrinfo(res);
    }
}

static void stop_loop(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)t;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

/* Runs the loop until every answer in want has come (or 5 s pass). */
static void run_until(struct ev_loop *loop, answer_t **want, int n)
{
    ev_timer guard;
    ev_timer_init(&guard, stop_loop, 5., 0.);
    ev_timer_start(loop, &guard);
    for (;;) {
        int pending = 0;
        for (int i = 0; i < n; i++)
            pending += want[i]->calls == 0;
        if (!pending || !ev_is_active(&guard))
            break;
        ev_run(loop, EVRUN_ONCE);
    }
    ev_timer_stop(loop, &guard);
}

static void test_resolves_localhost(void)
{
    struct ev_loop *loop = ev_loop_new(0);
    mw_resolver_t *r = mw__resolver_new(loop);
    answer_t a = {0};
    mw__resolve(r, "localhost", 6379, on_answer, &a);
    CHECK_EQ(a.calls, 0); /* never from inside mw__resolve */
    answer_t *want[] = {&a};
    run_until(loop, want, 1);
    CHECK_EQ(a.calls, 1);
    CHECK_EQ(a.gai_err, 0);
    if (a.family == AF_INET)
        CHECK_EQ(a.port, 6379);
    mw__resolver_free(r);
    ev_loop_destroy(loop);
}

static void test_unknown_name_fails(void)
{
    struct ev_loop *loop = ev_loop_new(0);
    mw_resolver_t *r = mw__resolver_new(loop);
    answer_t a = {0};
    mw__resolve(r, "nonexistent.invalid", 80, on_answer, &a);
    answer_t *want[] = {&a};
    run_until(loop, want, 1);
    CHECK_EQ(a.calls, 1);
    CHECK(a.gai_err != 0);
    mw__resolver_free(r);
    ev_loop_destroy(loop);
}

static void test_cancelled_never_call_back(void)
{
    struct ev_loop *loop = ev_loop_new(0);
    mw_resolver_t *r = mw__resolver_new(loop);
    answer_t a = {0}, b = {0}, c = {0};
    mw_resolve_req_t *qa = mw__resolve(r, "localhost", 1, on_answer, &a);
    mw_resolve_req_t *qb = mw__resolve(r, "localhost", 2, on_answer, &b);
    mw__resolve(r, "localhost", 3, on_answer, &c);
    mw__resolve_cancel(r, qa); /* maybe being looked up already */
    mw__resolve_cancel(r, qb); /* likely still queued */
    answer_t *want[] = {&c};
    run_until(loop, want, 1);
    CHECK_EQ(c.calls, 1);
    CHECK_EQ(a.calls, 0);
    CHECK_EQ(b.calls, 0);
    mw__resolver_free(r);
    ev_loop_destroy(loop);
}

static void test_free_with_pending(void)
{
    struct ev_loop *loop = ev_loop_new(0);
    mw_resolver_t *r = mw__resolver_new(loop);
    answer_t a[8] = {{0}};
    for (int i = 0; i < 8; i++)
        mw__resolve(r, "localhost", 1000 + i, on_answer, &a[i]);
    mw__resolver_free(r); /* no callbacks, no leaks */
    for (int i = 0; i < 8; i++)
        CHECK_EQ(a[i].calls, 0);
    mw__resolver_free(mw__resolver_new(loop)); /* never started */
    ev_loop_destroy(loop);
}

int main(void)
{
    RUN(test_resolves_localhost);
    RUN(test_unknown_name_fails);
    RUN(test_cancelled_never_call_back);
    RUN(test_free_with_pending);
    return mwt_summary();
}
