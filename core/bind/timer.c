/* App timers: app:every(seconds, fn) and app:after(seconds, fn).
 *
 * A timer is a userdata ("moonwire.timer") that embeds its ev_timer; while
 * it is armed a registry ref keeps it (and its function) alive, so Lua's
 * collector never frees a watcher libev still holds. Each tick runs fn on a
 * pooled coroutine like a handler, so it may sleep; an error is logged with
 * its traceback and the timer goes on. Timers made while the app file loads
 * start when the server starts. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "bind.h"
#include "log.h"

#define TIMER_MT "moonwire.timer"

typedef struct mw_timer {
    ev_timer t;
    mw_lua_t *S;
    int fn_ref;   /* the function to run */
    int self_ref; /* keeps the userdata alive while armed */
    int run_ref;  /* keeps it alive while a run of it is suspended */
    double after, repeat;
    int started;
    struct mw_timer *prev, *next; /* S->timers: every armed timer */
} mw_timer_t;

static void timer_unlink(mw_lua_t *S, mw_timer_t *tm)
{
    if (tm->prev)
        tm->prev->next = tm->next;
    else
        S->timers = tm->next;
    if (tm->next)
        tm->next->prev = tm->prev;
    tm->prev = tm->next = NULL;
}

/* Disarms tm and lets Lua collect it once nothing else refers to it. */
static void timer_disarm(mw_timer_t *tm)
{
    mw_lua_t *S = tm->S;
    if (tm->self_ref == LUA_NOREF)
        return;
    if (S->w)
        ev_timer_stop(S->w->loop, &tm->t);
    timer_unlink(S, tm);
    luaL_unref(S->L, LUA_REGISTRYINDEX, tm->fn_ref);
    luaL_unref(S->L, LUA_REGISTRYINDEX, tm->self_ref);
    tm->fn_ref = tm->self_ref = LUA_NOREF;
}

static void run_done(void *arg)
{
    mw_timer_t *tm = arg;
    int ref = tm->run_ref;
    tm->run_ref = LUA_NOREF;
    luaL_unref(tm->S->L, LUA_REGISTRYINDEX, ref); /* tm may be collected after this */
}

static void timer_fire(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    mw_timer_t *tm = (mw_timer_t *)((char *)t - offsetof(mw_timer_t, t));
    mw_lua_t *S = tm->S;
    /* A repeating timer whose last run still sleeps skips this tick rather
     * than piling up runs that would all wake together. */
    if (tm->run_ref != LUA_NOREF) {
        mw_debug("timer tick skipped: the previous run is still suspended");
        return;
    }
    lua_rawgeti(S->L, LUA_REGISTRYINDEX, tm->fn_ref);
    int repeating = tm->repeat > 0;
    if (!repeating)
        timer_disarm(tm); /* one-shot: the coroutine holds fn from here on */
    if (mw__lua_run(S, NULL, 0, MW_CO_HANDLER) && repeating) {
        lua_rawgeti(S->L, LUA_REGISTRYINDEX, tm->self_ref);
        tm->run_ref = luaL_ref(S->L, LUA_REGISTRYINDEX);
        S->suspended->on_done = run_done;
        S->suspended->done_arg = tm;
    }
}

static void timer_start(mw_timer_t *tm)
{
    ev_timer_init(&tm->t, timer_fire, tm->after, tm->repeat > 0 ? tm->repeat : 0.);
    ev_timer_start(tm->S->w->loop, &tm->t);
    tm->started = 1;
}

/* moonwire.core.timer(seconds, repeating, fn) -> timer */
static int l_timer(lua_State *L)
{
    mw_lua_t *S = lua_touserdata(L, lua_upvalueindex(1));
    lua_Number s = luaL_checknumber(L, 1);
    int repeating = lua_toboolean(L, 2);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    luaL_argcheck(L, s >= 0 && (!repeating || s > 0), 1, "seconds out of range");
    mw_timer_t *tm = lua_newuserdata(L, sizeof *tm);
    memset(tm, 0, sizeof *tm);
    tm->S = S;
    tm->run_ref = LUA_NOREF;
    tm->after = s;
    tm->repeat = repeating ? s : 0;
    luaL_getmetatable(L, TIMER_MT);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, 3);
    tm->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    tm->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    tm->next = S->timers;
    if (S->timers)
        S->timers->prev = tm;
    S->timers = tm;
    /* While the app file loads (at startup, or in a reload that may still
     * fail) timers wait; they start with the server or the swap. */
    if (S->w && !S->loading)
        timer_start(tm);
    return 1;
}

/* timer:cancel() -> true if it was armed */
static int l_cancel(lua_State *L)
{
    mw_timer_t *tm = luaL_checkudata(L, 1, TIMER_MT);
    int armed = tm->self_ref != LUA_NOREF;
    timer_disarm(tm);
    lua_pushboolean(L, armed);
    return 1;
}

static int l_tostring(lua_State *L)
{
    mw_timer_t *tm = luaL_checkudata(L, 1, TIMER_MT);
    lua_pushfstring(L, "moonwire.timer(%s %f s%s)", tm->repeat > 0 ? "every" : "after", tm->after,
                    tm->self_ref == LUA_NOREF ? ", cancelled or done" : "");
    return 1;
}

void mw__timer_register(lua_State *L, mw_lua_t *S)
{
    static const luaL_Reg methods[] = {{"cancel", l_cancel}, {NULL, NULL}};
    mw__lua_class(L, S, TIMER_MT, methods, l_tostring, NULL, "timer", l_timer);
}

void mw__timer_start_pending(mw_lua_t *S)
{
    for (mw_timer_t *tm = S->timers; tm; tm = tm->next)
        if (!tm->started)
            timer_start(tm);
}

void mw__timer_drop_pending(mw_lua_t *S)
{
    mw_timer_t *tm = S->timers;
    while (tm) {
        mw_timer_t *next = tm->next;
        if (!tm->started)
            timer_disarm(tm);
        tm = next;
    }
}

void mw__timer_close(mw_lua_t *S)
{
    while (S->timers)
        timer_disarm(S->timers);
}
