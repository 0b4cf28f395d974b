/* The coroutine scheduler: every handler call runs on a pooled coroutine
 * under xpcall with a traceback; a call that yields in a moonwire wait
 * (sleep) keeps its coroutine until the loop resumes it; a call that
 * finishes gives its coroutine back. This file holds the one lua_resume.
 * It also provides the C functions of the `moonwire.core` module. */
#include <lauxlib.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bind.h"
#include "log.h"
#include "metrics.h"

/* Address used as a unique sentinel: the body yields it when a call is done. */
static char done_key;

/* Most coroutines a worker keeps for reuse; more concurrent suspended calls
 * are fine, their coroutines are just not kept once they finish. */
#define MW_CO_POOL_MAX 1024

static void co_unlink_busy(mw_lua_t *S, mw_co_t *k)
{
    S->nbusy--;
    if (k->prev)
        k->prev->next = k->next;
    else if (S->busy == k)
        S->busy = k->next;
    if (k->next)
        k->next->prev = k->prev;
    k->next = k->prev = NULL;
}

static mw_co_t *co_get(mw_lua_t *S, int batch)
{
    mw_co_t **pool = batch ? &S->bpool : &S->pool;
    mw_co_t *k = *pool;
    if (k) {
        *pool = k->next;
        if (batch)
            S->nbpool--;
        else
            S->npool--;
        k->next = NULL;
        return k;
    }
    k = mw__xcalloc(1, sizeof *k);
    k->S = S;
    k->batch = batch;
    k->co = lua_newthread(S->L);
    k->ref = luaL_ref(S->L, LUA_REGISTRYINDEX);
    k->fresh = 1;
    return k;
}

static void co_destroy(mw_lua_t *S, mw_co_t *k)
{
    ev_timer_stop(S->w->loop, &k->timer);
    luaL_unref(S->L, LUA_REGISTRYINDEX, k->ref);
    free(k);
}

/* A handler raised an error: log it with its traceback, close only this
 * connection with 1011 (DESIGN.md principle 8). */
static void handler_error(mw_lua_t *S, mw_co_t *k, const char *msg)
{
    if (S->w)
        S->w->stats.handler_errors++;
    static const char *const kinds[] = {"handler", "on_close", "upgrade hook", "http handler"};
    mw_conn_t *c = k->conn;
    if (!msg)
        msg = "(error is not a string)";
    if (c)
        mw_error("%s error (connection %llu): %s", kinds[k->kind], (unsigned long long)c->id, msg);
    else
        mw_error("timer error: %s", msg);
    if (c && c->state == MW_CONN_OPEN) {
        c->app_closed = 1;
        mw__conn_close(c, MW_WS_CLOSE_INTERNAL, "internal error", 14);
    } else if (c && c->state == MW_CONN_UPGRADING)
        mw__conn_http_error(c, 500, NULL, "the upgrade hook failed");
}

/* The call on k ended (finished, or failed when `failed`): give k back or
 * drop it, and finish what the call was for. */
static void co_finish(mw_lua_t *S, mw_co_t *k, int reusable, int failed)
{
    mw_conn_t *c = k->conn;
    int kind = k->kind;
    void (*on_done)(void *) = k->on_done;
    k->conn = NULL;
    k->kind = MW_CO_HANDLER;
    k->on_done = NULL;
    if (k->waiting) {
        /* The call ended while a wait was armed for it (its yield raised):
         * nothing may resume it, so disarm the wait. */
        if (S->w)
            ev_timer_stop(S->w->loop, &k->timer);
        if (k->on_cancel)
            k->on_cancel(k->cancel_arg);
        k->waiting = 0;
    }
    k->on_cancel = NULL;
    if (on_done)
        on_done(k->done_arg);
    size_t *npool = k->batch ? &S->nbpool : &S->npool;
    if (reusable && *npool < MW_CO_POOL_MAX) {
        lua_settop(k->co, 0);
        mw_co_t **pool = k->batch ? &S->bpool : &S->pool;
        k->next = *pool;
        *pool = k;
        (*npool)++;
    } else {
        co_destroy(S, k);
    }
    if (c) {
        /* After on_close, or after an upgrade that did not open the
         * connection (refused, timed out), nothing will use its ws again. */
        if (kind == MW_CO_CLOSE || (kind == MW_CO_UPGRADE && !c->opened) || kind == MW_CO_HTTP)
            mw__ws_finalize(S, c);
        /* A plain request is answered (500 after an error, 204 when the
         * handler sent nothing), then the next one may be read. */
        if (kind == MW_CO_HTTP)
            mw__conn_http_done(c, failed ? 500 : 204);
        mw__conn_release(c);
    }
}

/* Resumes k with nargs values on its stack. Returns 1 if the call is now
 * suspended in a moonwire wait, 0 if it ended. */
static int co_resume(mw_lua_t *S, mw_co_t *k, int nargs)
{
    mw_co_t *prev = S->running;
    S->running = k;
    k->waiting = 0;
    k->on_cancel = NULL;
    /* Time in Lua, for the handler-time metric: two vDSO clock reads, only
     * once someone reads the figures (--metrics, --admin, moonwire.stats):
     * at millions of messages a second they are not free. */
    struct timespec t0, t1;
    int timed = S->w && S->w->timing;
    if (timed)
        clock_gettime(CLOCK_MONOTONIC, &t0);
    int st = lua_resume(k->co, nargs);
    S->running = prev;
    if (S->w) {
        S->w->stats.handler_calls++;
        if (timed) {
            clock_gettime(CLOCK_MONOTONIC, &t1);
            S->w->stats.handler_seconds +=
                (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
        }
    }
    if (st == LUA_YIELD) {
        if (lua_gettop(k->co) >= 1 && lua_touserdata(k->co, 1) == &done_key) {
            int failed = !lua_toboolean(k->co, 2);
            if (failed)
                handler_error(S, k, lua_tostring(k->co, 3));
            co_finish(S, k, 1, failed);
            return 0;
        }
        if (k->waiting) {
            S->suspended = k;
            S->nbusy++;
            k->next = S->busy;
            k->prev = NULL;
            if (S->busy)
                S->busy->prev = k;
            S->busy = k;
            return 1;
        }
        /* Nothing of ours is waiting: the handler called coroutine.yield
         * itself, and nothing would ever resume it. */
        handler_error(S, k,
                      "a handler yielded outside a moonwire call (coroutine.yield in a "
                      "handler suspends it forever; use moonwire.sleep)");
        co_finish(S, k, 0, 1);
        return 0;
    }
    if (k->batch && st == LUA_ERRRUN) {
        /* The batch body runs handlers without xpcall (it would cost more
         * than the rest of a one-message batch): an error ends the
         * coroutine, whose stack is left as it was for the traceback. */
        const char *msg = lua_tostring(k->co, -1);
        luaL_traceback(S->L, k->co, msg ? msg : "(error is not a string)", 0);
        handler_error(S, k, lua_tostring(S->L, -1));
        lua_pop(S->L, 1);
        co_finish(S, k, 0, 1);
        return 0;
    }
    /* The general body catches every error, so this is an error in the
     * error handler itself or memory exhaustion. */
    handler_error(S, k, lua_tostring(k->co, -1));
    co_finish(S, k, 0, 1);
    return 0;
}

int mw__lua_run(mw_lua_t *S, mw_conn_t *c, int nargs, int kind)
{
    /* S->L holds the handler and nargs (<= 3) arguments. */
    mw_co_t *k = co_get(S, 0);
    lua_State *co = k->co;
    if (k->fresh) {
        lua_rawgeti(co, LUA_REGISTRYINDEX, S->body_ref);
        k->fresh = 0;
    } else {
        lua_settop(co, 0);
    }
    lua_xmove(S->L, co, nargs + 1);
    for (int i = nargs; i < 3; i++)
        lua_pushnil(co);
    k->conn = c;
    k->kind = kind;
    if (c)
        mw__conn_retain(c);
    /* A fresh coroutine starts the body with (fn, a, b, c); a pooled one is
     * parked in the body's yield, which returns them. */
    return co_resume(S, k, 4);
}

int mw__lua_run_batch(mw_lua_t *S, mw_conn_t *c, const mw_msgref_t *m, size_t n, size_t *done)
{
    /* S->L: handler. The batch body takes (handler, ws, seq) and calls the
     * handler for each message take() hands out, in a Lua loop. */
    lua_State *L = S->L;
    mw__ws_push(S, c);
    mw_co_t *k = co_get(S, 1);
    lua_State *co = k->co;
    if (k->fresh) {
        lua_rawgeti(co, LUA_REGISTRYINDEX, S->batch_ref);
        k->fresh = 0;
    }
    lua_xmove(L, co, 2);
    /* A number, not a light userdata: LuaJIT's traces cannot pass those
     * to C (NYI on 64-bit), and this one is passed on every take. */
    lua_pushnumber(co, (double)++S->batch_seqs);
    k->conn = c;
    k->kind = MW_CO_HANDLER;
    mw__conn_retain(c);
    const mw_msgref_t *prev = S->batch;
    size_t prev_i = S->batch_i, prev_n = S->batch_n;
    mw_co_t *prev_co = S->batch_co;
    double prev_seq = S->batch_seq;
    S->batch_seq = S->batch_seqs;
    S->batch = m;
    S->batch_i = 0;
    S->batch_n = n;
    S->batch_co = k;
    int suspended = co_resume(S, k, 3);
    *done = S->batch_i;
    if (S->batch_i > 1 && S->w) /* the first was counted by its resume */
        S->w->stats.handler_calls += S->batch_i - 1;
    /* Whatever happens to k now (pooled, or suspended and resumed later),
     * it takes nothing more from this batch: the rest went to the inbox. */
    S->batch = prev;
    S->batch_i = prev_i;
    S->batch_n = prev_n;
    S->batch_co = prev_co;
    S->batch_seq = prev_seq;
    return suspended;
}

/* take(S, seq): the next message of the batch the running call was started
 * for (seq is that batch's number); NULL once the batch is done, the caller
 * is not that batch's call, or the connection is no longer open.
 * Called through LuaJIT's FFI from the batch runner, so the loop over a
 * read's messages compiles into one trace: it must not call into Lua. */
_Static_assert(offsetof(mw_msgref_t, len) == sizeof(void *) &&
                   offsetof(mw_msgref_t, binary) == 2 * sizeof(void *),
               "batch_src declares mw_msgref_t's layout for the FFI");
static const mw_msgref_t *ffi_take(mw_lua_t *S, double seq)
{
    /* seq is never 0, the number outside any batch, so a match means a
     * batch is running and batch_co is its coroutine. */
    mw_co_t *k = S->batch_co;
    if (seq != S->batch_seq || S->running != k || S->batch_i >= S->batch_n || !k->conn ||
        k->conn->state != MW_CONN_OPEN)
        return NULL;
    return &S->batch[S->batch_i++];
}

void mw__lua_wake(mw_co_t *k, int nret)
{
    mw_lua_t *S = k->S;
    co_unlink_busy(S, k);
    mw_conn_t *c = k->conn;
    int kind = k->kind;
    if (c)
        mw__conn_retain(c);
    int suspended = co_resume(S, k, nret);
    if (c) {
        /* A WebSocket's suspended call ended: its waiting events run. */
        if (!suspended && (kind == MW_CO_HANDLER || kind == MW_CO_CLOSE))
            mw__conn_handler_done(c);
        mw__conn_release(c);
    }
}

mw_co_t *mw__lua_waiter(lua_State *L, mw_lua_t *S, const char *what)
{
    mw_co_t *k = S->running;
    if (!k || k->co != L || !S->w)
        luaL_error(L,
                   "%s can only be called inside a handler (on_open, on_message, on_close, "
                   "an HTTP route), the upgrade hook or a timer, not while the app file loads "
                   "or from a coroutine of your own",
                   what);
    return k;
}

void mw__lua_wait(mw_co_t *k, void (*on_cancel)(void *), void *arg)
{
    k->waiting = 1;
    k->on_cancel = on_cancel;
    k->cancel_arg = arg;
}

static void sleep_done(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    mw_co_t *k = (mw_co_t *)((char *)t - offsetof(mw_co_t, timer));
    lua_settop(k->co, 0);
    mw__lua_wake(k, 0);
}

/* moonwire.sleep(seconds): suspends the calling handler; other connections
 * and this connection's control frames are served meanwhile. */
static int l_sleep(lua_State *L)
{
    mw_lua_t *S = lua_touserdata(L, lua_upvalueindex(1));
    lua_Number s = luaL_checknumber(L, 1);
    luaL_argcheck(L, s >= 0 && s == s, 1, "seconds must be a number >= 0");
    mw_co_t *k = mw__lua_waiter(L, S, "moonwire.sleep");
    ev_timer_init(&k->timer, sleep_done, (ev_tstamp)s, 0.);
    ev_timer_start(S->w->loop, &k->timer);
    mw__lua_wait(k, NULL, NULL);
    return lua_yield(L, 0);
}

static int l_now(lua_State *L)
{
    mw_lua_t *S = lua_touserdata(L, lua_upvalueindex(1));
    lua_pushnumber(L, S->w ? ev_now(S->w->loop) : 0);
    return 1;
}

/* moonwire.core.log(level, message): where Lua's logs join the server's. */
static int l_log(lua_State *L)
{
    int level = (int)luaL_checkinteger(L, 1);
    const char *msg = luaL_checkstring(L, 2);
    if (level >= mw__log_level())
        mw__log(level, "%s", msg);
    return 0;
}

static int l_log_enabled(lua_State *L)
{
    lua_pushboolean(L, luaL_checkinteger(L, 1) >= mw__log_level());
    return 1;
}

int mw__luaopen_core(lua_State *L)
{
    mw_lua_t *S = lua_touserdata(L, lua_upvalueindex(1));
    static const struct {
        const char *name;
        lua_CFunction fn;
    } fns[] = {{"sleep", l_sleep},
               {"now", l_now},
               {"log", l_log},
               {"log_enabled", l_log_enabled},
               {"stats", mw__lua_stats}};
    lua_createtable(L, 0, 8);
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
        lua_pushlightuserdata(L, S);
        lua_pushcclosure(L, fns[i].fn, 1);
        lua_setfield(L, -2, fns[i].name);
    }
    lua_pushinteger(L, MW_LOG_DEBUG);
    lua_setfield(L, -2, "DEBUG");
    lua_pushinteger(L, MW_LOG_INFO);
    lua_setfield(L, -2, "INFO");
    lua_pushinteger(L, MW_LOG_WARN);
    lua_setfield(L, -2, "WARN");
    lua_pushinteger(L, MW_LOG_ERROR);
    lua_setfield(L, -2, "ERROR");
    lua_pushstring(L, MW_VERSION_STRING);
    lua_setfield(L, -2, "version");
    /* Which worker runs this state (1-based), of how many: timers and
     * module state are per worker, topics are global. */
    lua_pushinteger(L, S->index + 1);
    lua_setfield(L, -2, "worker");
    lua_pushinteger(L, S->nworkers > 0 ? S->nworkers : 1);
    lua_setfield(L, -2, "workers");
    mw__routes_register(L, S);
    mw__timer_register(L, S);
    mw__tcp_register(L, S);
    mw__wsc_register(L);
    return 1;
}

/* The batch body: handler(ws, message, binary) for each message take()
 * hands out, then it parks in a yield until the next batch: fn, ws, seq
 * are the batch's handler, connection and number. A handler error ends
 * the coroutine (co_resume reports it with a traceback and closes the
 * connection with 1011): no xpcall, whose cost per batch was more than
 * the rest of a one-message batch's Lua side. take is a C function called
 * through the FFI (see ffi_take): with the classic C API each call would
 * end LuaJIT's trace; this way the loop, the handler and its ws:send
 * compile together. take is at the top of the loop so the first message
 * of a batch runs in the trace too (an interpreted FFI call before the
 * loop cost about 1,700 instructions per batch). The message struct has
 * no global name, so an app's own ffi.cdef cannot clash with it. */
static const char batch_src[] =
    "local ffi, take_fn, S, done, yield = ...\n"
    "S = ffi.cast('void *', S)\n"
    "local msgp = ffi.typeof('const struct { const char *data; size_t len; int binary; } *')\n"
    "local take = ffi.cast(ffi.typeof('$ (*)(void *, double)', msgp), take_fn)\n"
    "local str = ffi.string\n"
    "return function(fn, ws, seq)\n"
    "  while true do\n"
    "    while true do\n"
    "      local m = take(S, seq)\n"
    "      if m == nil then break end\n"
    "      fn(ws, str(m.data, m.len), m.binary ~= 0)\n"
    "    end\n"
    "    fn, ws, seq = yield(done, true)\n"
    "  end\n"
    "end\n";

/* The body every pooled coroutine runs: call, report, park, repeat. */
static const char body_src[] = "local done, xpcall, traceback, yield = ...\n"
                               "return function(fn, a, b, c)\n"
                               "  while true do\n"
                               "    local ok, err = xpcall(fn, traceback, a, b, c)\n"
                               "    fn, a, b, c = yield(done, ok, err)\n"
                               "  end\n"
                               "end\n";

int mw__sched_init(mw_lua_t *S)
{
    lua_State *L = S->L;
    if (luaL_loadbuffer(L, body_src, sizeof body_src - 1, "=moonwire.scheduler") != 0)
        return -1;
    lua_pushlightuserdata(L, &done_key);
    lua_getglobal(L, "xpcall");
    lua_getglobal(L, "debug");
    lua_getfield(L, -1, "traceback");
    lua_remove(L, -2);
    lua_getglobal(L, "coroutine");
    lua_getfield(L, -1, "yield");
    lua_remove(L, -2);
    if (lua_pcall(L, 4, 1, 0) != 0)
        return -1;
    S->body_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (luaL_loadbuffer(L, batch_src, sizeof batch_src - 1, "=moonwire.batch") != 0)
        return -1;
    lua_getglobal(L, "require");
    lua_pushliteral(L, "ffi");
    if (lua_pcall(L, 1, 1, 0) != 0)
        return -1;
    mw__lua_push_cfn(L, (void (*)(void))ffi_take);
    lua_pushlightuserdata(L, S);
    lua_pushlightuserdata(L, &done_key);
    lua_getglobal(L, "coroutine");
    lua_getfield(L, -1, "yield");
    lua_remove(L, -2);
    if (lua_pcall(L, 5, 1, 0) != 0)
        return -1;
    S->batch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

void mw__sched_close(mw_lua_t *S)
{
    /* Suspended calls never resume after shutdown; let go of their
     * connections so those can be freed. */
    while (S->busy) {
        mw_co_t *k = S->busy;
        co_unlink_busy(S, k);
        mw_conn_t *c = k->conn;
        k->conn = NULL;
        co_destroy(S, k);
        if (c)
            mw__conn_release(c);
    }
    mw_co_t **pools[2] = {&S->pool, &S->bpool};
    for (int i = 0; i < 2; i++) {
        while (*pools[i]) {
            mw_co_t *k = *pools[i];
            *pools[i] = k->next;
            co_destroy(S, k);
        }
    }
    S->npool = S->nbpool = 0;
}
