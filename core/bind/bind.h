/* The Lua side of a worker: its lua_State, the loaded app, the coroutine
 * scheduler that runs handlers, and the ws userdata. This folder is the only
 * C that includes lua.h; the core calls it only through mw_app_ops_t. */
#ifndef MW_BIND_H
#define MW_BIND_H

#include <lauxlib.h>
#include <lua.h>

#include "conn.h"
#include "worker.h"

typedef struct mw_co mw_co_t;

enum { MW_CO_HANDLER = 0, MW_CO_CLOSE, MW_CO_UPGRADE, MW_CO_HTTP };

/* A pooled coroutine (DESIGN.md principle 6). It runs one handler call at a
 * time; only a call that suspends keeps it away from the pool. */
struct mw_co {
    lua_State *co;
    int ref;                    /* registry ref that keeps the thread alive */
    int fresh;                  /* the body has not been started yet */
    int batch;                  /* runs the batch body (mw__lua_run_batch), not the general one */
    int waiting;                /* set by a moonwire call that yields (sleep) */
    int kind;                   /* MW_CO_HANDLER, MW_CO_CLOSE (finalize after), MW_CO_UPGRADE */
    mw_conn_t *conn;            /* the connection whose handler runs here (retained), or NULL */
    ev_timer timer;             /* wakes a sleeping call */
    void (*on_done)(void *arg); /* called when a suspended call ends (timers) */
    void *done_arg;
    /* Called if the call ends while `waiting` (its yield failed): whoever
     * armed a wait for it (a socket) disarms. Set by mw__lua_wait. */
    void (*on_cancel)(void *arg);
    void *cancel_arg;
    struct mw_lua *S;
    mw_co_t *next; /* pool or busy list */
    mw_co_t *prev;
};

typedef struct mw_lua {
    lua_State *L;
    mw_worker_t *w;
    const char *app_path;
    int app_ref;        /* the app table returned by the app file */
    int routes_ref;     /* app.routes */
    int body_ref;       /* the coroutine body (trampoline) */
    int batch_ref;      /* the batch body: a Lua loop over take() (mw__lua_run_batch) */
    int on_message_key; /* the string "on_message", interned once (push_handler) */
    /* The batch the running call takes its messages from (mw__lua_run_batch);
     * only the coroutine batch_co can take, and only during that run. */
    const mw_msgref_t *batch;
    size_t batch_i, batch_n;
    mw_co_t *batch_co;
    double batch_seq;           /* the running batch's number, for take */
    double batch_seqs;          /* batches started */
    int force_max_message_size; /* --max-message-size overrides every route */
    mw_co_t *running;           /* the coroutine now running, or NULL */
    mw_co_t *suspended;         /* the call mw__lua_run last left suspended */
    mw_co_t *pool;              /* idle coroutines */
    size_t npool;
    mw_co_t *bpool; /* idle coroutines of the batch body */
    size_t nbpool;
    mw_co_t *busy;      /* suspended coroutines */
    size_t nbusy;       /* how many */
    mw_route_t *routes; /* the core's copy of the routes' limits (w->routes) */
    size_t nroutes;
    struct mw_timer *timers;  /* every armed timer */
    int loading;              /* a reload is running the app file: hold new timers */
    struct mw_hub *hub;       /* the other workers (and the broker's deliveries), or NULL */
    struct mw_broker *broker; /* --broker: publishes to other processes, or NULL */
    int index, nworkers;      /* this worker (0-based) of how many */
    unsigned reloads, reload_failures;
    struct mw_tcp_state *tcp; /* outbound sockets, their pools and resolver (tcp.c) */
    const char *admin_token;  /* --admin-token-file's token, or NULL (admin.c) */
    double admin_warned;      /* when a refused admin request was last logged */
    unsigned admin_refused;   /* refused since then */
} mw_lua_t;

/* Creates the Lua state, loads the app file and keeps the app. Modules are
 * also found in the LuaRocks trees of rocks_trees (NULL-terminated, or NULL). Returns 0, or
 * -1 with one line in err naming the file (and line) and what to fix. */
int mw__lua_open(mw_lua_t *S, const char *app_path, const char *const *rocks_trees, int index,
                 int nworkers, char *err, size_t errlen);

/* Runs the app file and checks it returned an app. Returns 0 with the app
 * on the top of the stack, or -1 with one line in err (FILE:LINE: ...) and
 * the stack as it was. */
int mw__lua_load_app(mw_lua_t *S, char *err, size_t errlen);

/* Hot reload: loads the app file and its app-local modules afresh and swaps
 * the new app in if that worked (routes, handlers, timers); live
 * connections keep everything else. On failure nothing changes and err
 * holds the reason (FILE:LINE: ...). Returns 0 or -1. */
int mw__lua_reload(mw_lua_t *S, char *err, size_t errlen);

/* Tells the state how many workers run (moonwire.workers). */
void mw__lua_set_workers(mw_lua_t *S, int n);

/* Applies the app's options (moonwire.app{...}) onto cfg. */
void mw__lua_apply_options(mw_lua_t *S, mw_config_t *cfg);

/* Attaches the state to the worker (before the worker runs). */
void mw__lua_attach(mw_lua_t *S, mw_worker_t *w);

/* The hooks the core calls. */
extern const mw_app_ops_t mw__lua_ops;

/* Drops suspended calls and every handle on connections; then closes the state. */
void mw__lua_close(mw_lua_t *S);

/* --- internals shared by the files of core/bind --- */
/* Runs the function under nargs (<= 3) arguments on S->L in a pooled
 * coroutine for connection c (or NULL); kind is MW_CO_*. Returns 1 if the
 * call suspended, 0 if it ended. */
int mw__lua_run(mw_lua_t *S, mw_conn_t *c, int nargs, int kind);
/* Runs handler (on S->L's top) for the messages m[0..n) of connection c in
 * one coroutine: a Lua loop calls it once per message. Returns 1 if a call
 * suspended; *done gets the messages taken. */
int mw__lua_run_batch(mw_lua_t *S, mw_conn_t *c, const mw_msgref_t *m, size_t n, size_t *done);
void mw__ws_push(mw_lua_t *S, mw_conn_t *c);
void mw__ws_finalize(mw_lua_t *S, mw_conn_t *c);
void mw__ws_register(lua_State *L);
/* Lets go of the strings ws:send queued without a copy under pins[0..n)
 * (mw_app_ops_t.pins_released). */
void mw__ws_unpin(void *ud, const uint32_t *pins, size_t n);
/* Returns the connection of the ws at idx (NULL once finished); raises if
 * the value is not a ws. */
mw_conn_t *mw__ws_check(lua_State *L, int idx);
/* Sets ws.params of c to the value at idx. */
void mw__ws_set_params(mw_lua_t *S, mw_conn_t *c, int idx);
/* Pushes a table of the request's headers (lowercase names) / decoded query. */
void mw__lua_push_headers(lua_State *L, const mw_http_request_t *req);
void mw__lua_push_query(lua_State *L, mw_slice_t query);
/* A userdata class: metatable `name` with methods (NULL-terminated) as
 * __index, the __tostring and __gc metamethods (either may be NULL) and
 * __name; then field `ctor` of the table on the stack's top becomes fn, a
 * closure over S. */
void mw__lua_class(lua_State *L, mw_lua_t *S, const char *name, const luaL_Reg *methods,
                   lua_CFunction tostring, lua_CFunction gc, const char *ctor, lua_CFunction fn);
/* Pushes C function fn as a light userdata, for the Lua side to
 * ffi.cast to its type: the hot paths (the batch runner's take, ws:send)
 * are called through LuaJIT's FFI so that their loops compile. */
void mw__lua_push_cfn(lua_State *L, void (*fn)(void));
/* Pushes the app's route table number index (0-based). */
void mw__lua_push_route(mw_lua_t *S, int index);
/* Builds w->routes from the app's route tables. */
void mw__lua_build_routes(mw_lua_t *S);
/* moonwire.core functions of routes.c and timer.c. */
void mw__routes_register(lua_State *L, mw_lua_t *S);
void mw__timer_register(lua_State *L, mw_lua_t *S);
void mw__timer_start_pending(mw_lua_t *S);
void mw__timer_close(mw_lua_t *S);
/* Disarms timers made by a load that failed (never started). */
void mw__timer_drop_pending(mw_lua_t *S);
void mw__route_upgrade(void *ud, mw_conn_t *c, const mw_http_request_t *req);
void mw__route_http(void *ud, mw_conn_t *c, const mw_http_request_t *req);
int mw__route_http_unrouted(void *ud, mw_conn_t *c, const mw_http_request_t *req);
int mw__luaopen_core(lua_State *L);
int mw__sched_init(mw_lua_t *S);
/* The coroutine a moonwire call that yields (`what`, e.g. "moonwire.sleep")
 * may suspend: the running handler's, if L is it. Raises a clear error when
 * L cannot wait (the app file loading, a coroutine of the app's own). */
mw_co_t *mw__lua_waiter(lua_State *L, mw_lua_t *S, const char *what);
/* Marks k as waiting; call right before `return lua_yield(L, 0)`. If the
 * yield fails (a C boundary such as a string.gsub callback), the call ends
 * with that error and on_cancel(arg) runs to disarm the wait. */
void mw__lua_wait(mw_co_t *k, void (*on_cancel)(void *), void *arg);
/* Resumes k, suspended in a moonwire wait, with the nret values on the top
 * of k->co as the results of the call that yielded. */
void mw__lua_wake(mw_co_t *k, int nret);
/* Outbound TCP (tcp.c): moonwire.core.tcp, and the teardown of every
 * socket, pool and the resolver before the state closes. */
void mw__tcp_register(lua_State *L, mw_lua_t *S);
void mw__tcp_close_all(mw_lua_t *S);
/* The WebSocket client's codec helpers on moonwire.core (wsc.c). */
void mw__wsc_register(lua_State *L);
void mw__sched_close(mw_lua_t *S);

#endif
