/* The Lua side of a worker: its lua_State, the loaded app, the coroutine
 * scheduler that runs handlers, and the ws userdata. This folder is the only
 * C that includes lua.h; the core calls it only through mw_app_ops_t. */
#ifndef MW_BIND_H
#define MW_BIND_H

#include <lua.h>

#include "conn.h"
#include "worker.h"

typedef struct mw_co mw_co_t;

/* A pooled coroutine (DESIGN.md principle 6). It runs one handler call at a
 * time; only a call that suspends keeps it away from the pool. */
struct mw_co {
    lua_State *co;
    int ref;         /* registry ref that keeps the thread alive */
    int fresh;       /* the body has not been started yet */
    int waiting;     /* set by a moonwire call that yields (sleep) */
    int closing;     /* this call is on_close: finalize the connection after */
    mw_conn_t *conn; /* the connection whose handler runs here (retained), or NULL */
    ev_timer timer;  /* wakes a sleeping call */
    struct mw_lua *S;
    mw_co_t *next; /* pool or busy list */
    mw_co_t *prev;
};

typedef struct mw_lua {
    lua_State *L;
    mw_worker_t *w;
    const char *app_path;
    int app_ref;                /* the app table returned by the app file */
    int routes_ref;             /* app.routes */
    int body_ref;               /* the coroutine body (trampoline) */
    int force_max_message_size; /* --max-message-size overrides every route */
    mw_co_t *running;           /* the coroutine now running, or NULL */
    mw_co_t *pool;              /* idle coroutines */
    size_t npool;
    mw_co_t *busy; /* suspended coroutines */
} mw_lua_t;

/* Creates the Lua state, loads the app file and keeps the app. Returns 0, or
 * -1 with one line in err naming the file (and line) and what to fix. */
int mw__lua_open(mw_lua_t *S, const char *app_path, char *err, size_t errlen);

/* Applies the app's options (moonwire.app{...}) onto cfg. */
void mw__lua_apply_options(mw_lua_t *S, mw_config_t *cfg);

/* Attaches the state to the worker (before the worker runs). */
void mw__lua_attach(mw_lua_t *S, mw_worker_t *w);

/* The hooks the core calls. */
extern const mw_app_ops_t mw__lua_ops;

/* Drops suspended calls and every handle on connections; then closes the state. */
void mw__lua_close(mw_lua_t *S);

/* --- internals shared by the files of core/bind --- */
int mw__lua_run(mw_lua_t *S, mw_conn_t *c, int nargs, int closing);
void mw__ws_push(mw_lua_t *S, mw_conn_t *c);
void mw__ws_finalize(mw_lua_t *S, mw_conn_t *c);
void mw__ws_register(lua_State *L);
int mw__luaopen_core(lua_State *L);
int mw__sched_init(mw_lua_t *S);
void mw__sched_close(mw_lua_t *S);

#endif
