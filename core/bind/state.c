/* The Lua state of a worker: library paths, loading the app file with
 * errors that name file and line, reading the app's options and routes, and
 * the hooks (mw_app_ops_t) through which the core hands events to the app. */
#include <lauxlib.h>
#include <limits.h>
#include <lualib.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bind.h"
#include "log.h"

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Finds the directory that holds moonwire/init.lua: $MOONWIRE_LUA_DIR, then
 * beside an installed binary (<prefix>/bin/../share/lua/5.1, as luarocks and
 * `make install` lay it out), then the source tree the binary was built from. */
static int find_lua_dir(char *out, size_t outlen)
{
    char probe[PATH_MAX + 64];
    const char *env = getenv("MOONWIRE_LUA_DIR");
    if (env && *env) {
        snprintf(out, outlen, "%s", env);
        return 0;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0;
            snprintf(probe, sizeof probe, "%s/../share/lua/5.1/moonwire/init.lua", exe);
            if (file_exists(probe)) {
                snprintf(out, outlen, "%s/../share/lua/5.1", exe);
                return 0;
            }
        }
    }
    snprintf(probe, sizeof probe, "%s/moonwire/init.lua", MW_INSTALL_LUA_DIR);
    if (file_exists(probe)) {
        snprintf(out, outlen, "%s", MW_INSTALL_LUA_DIR);
        return 0;
    }
    snprintf(out, outlen, "%s", MW_SOURCE_LUA_DIR);
    return 0;
}

/* Puts our library and the app's own directory in front of package.path,
 * so `require "moonwire"` and the app's local modules load without LUA_PATH. */
/* Module search order (no LUA_PATH needed): moonwire's own library; the
 * app's directory (app-local modules); the project-local rocks tree next
 * to the app (lua_modules/, as `luarocks init` makes it); --rocks-tree
 * trees; the tree the binary is installed in; the user's tree
 * (~/.luarocks); then LuaJIT's defaults (/usr/local, Debian's lua-* packages). */
static void set_paths(lua_State *L, const char *lua_dir, const char *app_path,
                      const char *const *trees)
{
    char app_dir[PATH_MAX];
    snprintf(app_dir, sizeof app_dir, "%s", app_path);
    char *slash = strrchr(app_dir, '/');
    if (slash)
        *slash = 0;
    else
        strcpy(app_dir, ".");
    /* The path grows as one string at `path`; cpath pieces go to a table
     * and are joined at the end. */
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s/?.lua;%s/?/init.lua;", lua_dir, lua_dir, app_dir,
                    app_dir);
    int path = lua_gettop(L);

    lua_newtable(L);
    int cpieces = lua_gettop(L);
    int nc = 0;
    char tree[PATH_MAX * 2];
    const char *home = getenv("HOME");
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *s = strrchr(exe, '/');
        if (s)
            *s = 0;
    }
    const char *list[64];
    int nl = 0;
    snprintf(tree, sizeof tree, "%s/lua_modules", app_dir);
    list[nl++] = strdup(tree);
    for (int i = 0; trees && trees[i] && nl < 60; i++)
        list[nl++] = strdup(trees[i]);
    if (n > 0) {
        snprintf(tree, sizeof tree, "%s/..", exe);
        list[nl++] = strdup(tree);
    }
    if (home && *home) {
        snprintf(tree, sizeof tree, "%s/.luarocks", home);
        list[nl++] = strdup(tree);
    }
    for (int i = 0; i < nl; i++) {
        lua_pushvalue(L, path);
        lua_pushfstring(L, "%s/share/lua/5.1/?.lua;%s/share/lua/5.1/?/init.lua;", list[i], list[i]);
        lua_concat(L, 2);
        lua_replace(L, path);
        lua_pushfstring(L, "%s/lib/lua/5.1/?.so;", list[i]);
        lua_rawseti(L, cpieces, ++nc);
        free((void *)list[i]);
    }
    lua_getglobal(L, "package");
    lua_pushvalue(L, path);
    lua_getfield(L, -2, "path");
    lua_concat(L, 2);
    lua_setfield(L, -2, "path");
    for (int i = 1; i <= nc; i++)
        lua_rawgeti(L, cpieces, i);
    lua_getfield(L, -1 - nc, "cpath");
    lua_concat(L, nc + 1);
    lua_setfield(L, -2, "cpath");
    lua_settop(L, path - 1);
}

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg)
        msg = "(error object is not a string)";
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* Keeps only the first line of a traceback: startup errors are one line. */
static void first_line(char *s)
{
    /* Startup and reload errors are one line: the traceback goes, and the
     * lines of the message itself (require's "error loading module ... :"
     * followed by the module's own FILE:LINE) are joined with spaces. */
    char *tb = strstr(s, "\nstack traceback:");
    if (tb)
        *tb = 0;
    for (char *p = s; *p; p++)
        if (*p == '\n' || *p == '\t')
            *p = ' ';
}

int mw__lua_open(mw_lua_t *S, const char *app_path, const char *const *rocks_trees, int index,
                 int nworkers, char *err, size_t errlen)
{
    memset(S, 0, sizeof *S);
    S->index = index;
    S->nworkers = nworkers;
    S->app_ref = S->routes_ref = S->body_ref = LUA_NOREF;
    S->app_path = app_path;
    lua_State *L = luaL_newstate();
    if (!L) {
        snprintf(err, errlen, "cannot create a Lua state (out of memory)");
        return -1;
    }
    S->L = L;
    luaL_openlibs(L);
    char lua_dir[2 * PATH_MAX];
    find_lua_dir(lua_dir, sizeof lua_dir);
    set_paths(L, lua_dir, app_path, rocks_trees);

    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushlightuserdata(L, S);
    lua_pushcclosure(L, mw__luaopen_core, 1);
    lua_setfield(L, -2, "moonwire.core");
    lua_pop(L, 2);
    /* Load the core module now so it can carry the app's path (for error
     * messages that have no line to point at). */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "moonwire.core");
    lua_call(L, 1, 1);
    lua_pushstring(L, app_path);
    lua_setfield(L, -2, "app_path");
    lua_pop(L, 1);
    mw__ws_register(L);
    lua_pushliteral(L, "on_message");
    S->on_message_key = luaL_ref(L, LUA_REGISTRYINDEX);
    if (mw__sched_init(S) != 0) {
        snprintf(err, errlen, "internal error: scheduler: %s", lua_tostring(L, -1));
        return -1;
    }

    if (!file_exists(app_path)) {
        snprintf(err, errlen, "%s: no such app file (give the path of an app .lua file)", app_path);
        return -1;
    }
    /* Load our library first and note every module present now (the
     * standard ones, LuaJIT's, moonwire's): a reload never replaces them,
     * even if the app's directory holds a file of the same name. */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "moonwire");
    if (lua_pcall(L, 1, 1, 0) != 0) {
        snprintf(err, errlen, "cannot load the moonwire Lua library: %s", lua_tostring(L, -1));
        first_line(err);
        return -1;
    }
    lua_getfield(L, -1, "_snapshot_system");
    if (lua_pcall(L, 0, 0, 0) != 0)
        lua_pop(L, 1);
    lua_pop(L, 1);
    if (mw__lua_load_app(S, err, errlen) != 0)
        return -1;
    lua_getfield(L, -1, "routes");
    S->routes_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    S->app_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

int mw__lua_load_app(mw_lua_t *S, char *err, size_t errlen)
{
    lua_State *L = S->L;
    const char *app_path = S->app_path;
    int top = lua_gettop(L);
    lua_pushcfunction(L, traceback);
    int rc = luaL_loadfile(L, app_path);
    if (rc != 0) {
        /* The message already reads "FILE:LINE: what is wrong". */
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        first_line(err);
        lua_settop(L, top);
        return -1;
    }
    if (lua_pcall(L, 0, 1, -2) != 0) {
        snprintf(err, errlen, "%s (while loading the app file %s)", lua_tostring(L, -1), app_path);
        first_line(err);
        lua_settop(L, top);
        return -1;
    }
    /* The file must return an app built by moonwire.app{...}. */
    int ok = 0;
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "_moonwire_app");
        ok = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    if (!ok) {
        snprintf(err, errlen,
                 "%s: the app file must end with `return app`, where app = "
                 "require(\"moonwire\").app{...}; it returned %s",
                 app_path, luaL_typename(L, -1));
        lua_settop(L, top);
        return -1;
    }
    lua_remove(L, -2); /* traceback */
    return 0;
}

void mw__lua_apply_options(mw_lua_t *S, mw_config_t *cfg)
{
    lua_State *L = S->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->app_ref);
    lua_getfield(L, -1, "options");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 2);
        return;
    }
#define NUM_OPT(name, field, type)                  \
    do {                                            \
        lua_getfield(L, -1, name);                  \
        if (lua_isnumber(L, -1))                    \
            cfg->field = (type)lua_tonumber(L, -1); \
        lua_pop(L, 1);                              \
    } while (0)
    NUM_OPT("ping_interval", ping_interval, double);
    NUM_OPT("pong_timeout", pong_timeout, double);
    NUM_OPT("idle_timeout", idle_timeout, double);
    NUM_OPT("handshake_timeout", handshake_timeout, double);
    NUM_OPT("close_timeout", close_timeout, double);
    NUM_OPT("shutdown_timeout", shutdown_timeout, double);
    NUM_OPT("workers", workers, int);
    NUM_OPT("max_message_size", max_message_size, uint64_t);
    NUM_OPT("max_header_bytes", max_header_bytes, size_t);
    NUM_OPT("max_headers", max_headers, size_t);
    NUM_OPT("max_connections", max_connections, size_t);
    NUM_OPT("max_admin_connections", max_admin_connections, size_t);
    NUM_OPT("max_buffered", max_buffered, size_t);
    NUM_OPT("max_inbox_bytes", max_inbox_bytes, size_t);
    NUM_OPT("max_body_size", max_body_size, size_t);
    NUM_OPT("listen_backlog", listen_backlog, size_t);
    NUM_OPT("broker_max_pending", broker_max_pending, size_t);
    NUM_OPT("broker_timeout", broker_timeout, double);
#undef NUM_OPT
    static const struct {
        const char *name;
        size_t off, cap;
    } paths[] = {
        {"tls_cert", offsetof(mw_config_t, tls_cert), sizeof cfg->tls_cert},
        {"tls_key", offsetof(mw_config_t, tls_key), sizeof cfg->tls_key},
        {"broker", offsetof(mw_config_t, broker), sizeof cfg->broker},
        {"broker_prefix", offsetof(mw_config_t, broker_prefix), sizeof cfg->broker_prefix}};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        lua_getfield(L, -1, paths[i].name);
        if (lua_isstring(L, -1))
            snprintf((char *)cfg + paths[i].off, paths[i].cap, "%s", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_getfield(L, -1, "tls_listen");
    if (lua_isstring(L, -1)) {
        const char *v = lua_tostring(L, -1);
        const char *colon = strrchr(v, ':');
        if (colon && (size_t)(colon - v) < sizeof cfg->tls_listen_host) {
            memcpy(cfg->tls_listen_host, v, (size_t)(colon - v));
            cfg->tls_listen_host[colon - v] = 0;
            cfg->tls_listen_port = atoi(colon + 1);
        }
    }
    lua_pop(L, 1);
    lua_getfield(L, -1, "listen");
    if (lua_isstring(L, -1)) {
        const char *v = lua_tostring(L, -1);
        const char *colon = strrchr(v, ':');
        if (colon && (size_t)(colon - v) < sizeof cfg->listen_host) {
            memcpy(cfg->listen_host, v, (size_t)(colon - v));
            cfg->listen_host[colon - v] = 0;
            cfg->listen_port = atoi(colon + 1);
        }
    }
    lua_pop(L, 3);
}

void mw__lua_attach(mw_lua_t *S, mw_worker_t *w)
{
    S->w = w;
    mw__lua_build_routes(S);
    mw__timer_start_pending(S);
}

void mw__lua_close(mw_lua_t *S)
{
    if (!S->L)
        return;
    mw__timer_close(S);
    mw__tcp_close_all(S); /* before the coroutines its waits point at go */
    mw__sched_close(S);
    /* Connections the app still holds (finished ones whose on_close never
     * got to run, at shutdown) are let go here. */
    if (S->w) {
        mw_conn_t *c = S->w->all_head;
        while (c) {
            mw_conn_t *next = c->all_next;
            mw__conn_retain(c);
            mw__ws_finalize(S, c);
            next = c->all_next;
            mw__conn_release(c);
            c = next;
        }
    }
    lua_close(S->L);
    S->L = NULL;
    free(S->routes);
    S->routes = NULL;
}

/* --- hooks for the core ----------------------------------------------------- */

void mw__lua_push_cfn(lua_State *L, void (*fn)(void))
{
    void *p; /* C11 has no cast from a function pointer to void *; copy it */
    _Static_assert(sizeof p == sizeof fn, "function pointers are data-pointer sized");
    memcpy(&p, &fn, sizeof p);
    lua_pushlightuserdata(L, p);
}

/* Pushes the route table of route `index` (0-based, as in w->routes). */
void mw__lua_class(lua_State *L, mw_lua_t *S, const char *name, const luaL_Reg *methods,
                   lua_CFunction tostring, lua_CFunction gc, const char *ctor, lua_CFunction fn)
{
    luaL_newmetatable(L, name);
    lua_newtable(L);
    luaL_register(L, NULL, methods);
    lua_setfield(L, -2, "__index");
    if (tostring) {
        lua_pushcfunction(L, tostring);
        lua_setfield(L, -2, "__tostring");
    }
    if (gc) {
        lua_pushcfunction(L, gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
    lua_pushlightuserdata(L, S);
    lua_pushcclosure(L, fn, 1);
    lua_setfield(L, -2, ctor);
}

void mw__lua_push_route(mw_lua_t *S, int index)
{
    lua_rawgeti(S->L, LUA_REGISTRYINDEX, S->routes_ref);
    lua_rawgeti(S->L, -1, index + 1);
    lua_remove(S->L, -2);
}

/* Pushes handler `name` of c's route; returns 0 (nothing pushed) if none. */
static int push_handler(mw_lua_t *S, mw_conn_t *c, const char *name)
{
    lua_State *L = S->L;
    mw__lua_push_route(S, c->route);
    lua_getfield(L, -1, name);
    lua_remove(L, -2);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    return 1;
}

static int op_on_open(void *ud, mw_conn_t *c)
{
    mw_lua_t *S = ud;
    if (!push_handler(S, c, "on_open"))
        return 0;
    mw__ws_push(S, c);
    return mw__lua_run(S, c, 1, MW_CO_HANDLER);
}

/* push_handler(S, c, "on_message") for every message or batch, without
 * interning the name each time (lua_getfield's cost, a third of this). */
static int push_on_message(mw_lua_t *S, mw_conn_t *c)
{
    lua_State *L = S->L;
    mw__lua_push_route(S, c->route);
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->on_message_key);
    lua_gettable(L, -2);
    lua_remove(L, -2);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    return 1;
}

static int op_on_message(void *ud, mw_conn_t *c, const uint8_t *data, size_t len, int binary)
{
    mw_lua_t *S = ud;
    if (!push_on_message(S, c))
        return 0;
    mw__ws_push(S, c);
    lua_pushlstring(S->L, (const char *)data, len);
    lua_pushboolean(S->L, binary);
    return mw__lua_run(S, c, 3, MW_CO_HANDLER);
}

static int op_on_batch(void *ud, mw_conn_t *c, const mw_msgref_t *m, size_t n, size_t *done)
{
    mw_lua_t *S = ud;
    if (!push_on_message(S, c)) {
        *done = n;
        return 0;
    }
    return mw__lua_run_batch(S, c, m, n, done);
}

static int op_on_close(void *ud, mw_conn_t *c, int code, const char *reason, size_t rlen)
{
    mw_lua_t *S = ud;
    if (!push_handler(S, c, "on_close")) {
        mw__ws_finalize(S, c);
        return 0;
    }
    mw__ws_push(S, c);
    lua_pushinteger(S->L, code);
    lua_pushlstring(S->L, reason, rlen);
    return mw__lua_run(S, c, 3, MW_CO_CLOSE);
}

static int op_on_drain(void *ud, mw_conn_t *c)
{
    mw_lua_t *S = ud;
    if (!push_handler(S, c, "on_drain"))
        return 0;
    mw__ws_push(S, c);
    return mw__lua_run(S, c, 1, MW_CO_HANDLER);
}

const mw_app_ops_t mw__lua_ops = {mw__route_upgrade, mw__route_http, op_on_open,
                                  op_on_message,     op_on_batch,    op_on_drain,
                                  op_on_close,       mw__ws_unpin,   mw__route_http_unrouted};

void mw__lua_set_workers(mw_lua_t *S, int n)
{
    lua_State *L = S->L;
    S->nworkers = n;
    /* moonwire.core.workers and moonwire.workers (copied at require). */
    const char *mods[] = {"moonwire.core", "moonwire"};
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    for (int i = 0; i < 2; i++) {
        lua_getfield(L, -1, mods[i]);
        if (lua_istable(L, -1)) {
            lua_pushinteger(L, n);
            lua_setfield(L, -2, "workers");
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
}
