/* Hot reload: the app file and its app-local modules are loaded afresh in
 * the same Lua state and swapped in only if that worked.
 *
 * What changes: the app table (routes, handlers, options of routes), the
 * app's timers (the old ones are cancelled, the new ones start), and every
 * app-local module. What stays: every connection with its socket, ws.data,
 * subscriptions and queued bytes; coroutines already suspended, which
 * finish on the code they started with; modules from outside the app's
 * directory; moonwire.state(name) tables. A live connection's route is
 * found again in the new app by its path pattern; a connection whose route
 * the edit removed keeps that route's old handlers until it closes. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "bind.h"
#include "log.h"

/* Calls moonwire.<fn> with nargs arguments on the stack; keeps nres results. */
static int call_moonwire(lua_State *L, const char *fn, int nargs, int nres)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    lua_getfield(L, -1, "moonwire");
    lua_getfield(L, -1, fn);
    lua_replace(L, -4);
    lua_pop(L, 2);
    lua_insert(L, -1 - nargs);
    return lua_pcall(L, nargs, nres, 0);
}

static void push_app_dir(lua_State *L, const char *app_path)
{
    const char *slash = strrchr(app_path, '/');
    if (slash)
        lua_pushlstring(L, app_path, (size_t)(slash - app_path));
    else
        lua_pushliteral(L, ".");
}

/* Points every live connection of the old routes at the new app's route
 * of the same path; routes the new app lacks but connections still use
 * are appended to the new routes array, unreachable by new requests.
 * new_app is a stack index. */
static void remap_routes(mw_lua_t *S, int new_app)
{
    lua_State *L = S->L;
    mw_worker_t *w = S->w;
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->routes_ref);
    int old_routes = lua_gettop(L);
    lua_getfield(L, new_app, "routes");
    int new_routes = lua_gettop(L);
    lua_getfield(L, new_app, "ws_paths");
    int new_paths = lua_gettop(L);
    size_t n_old = lua_objlen(L, old_routes);
    int n_new = (int)lua_objlen(L, new_routes);
    if (n_old == 0) {
        lua_settop(L, old_routes - 1);
        return;
    }
    int *map = mw__xmalloc(n_old * sizeof *map);
    for (size_t i = 0; i < n_old; i++)
        map[i] = -1;
    for (mw_conn_t *c = w->all_head; c; c = c->all_next) {
        if (!c->has_route || c->route < 0 || (size_t)c->route >= n_old)
            continue;
        int i = c->route;
        if (map[i] < 0) {
            lua_rawgeti(L, old_routes, i + 1);
            lua_getfield(L, -1, "path");
            lua_rawget(L, new_paths);
            if (lua_isnumber(L, -1)) {
                map[i] = (int)lua_tointeger(L, -1) - 1;
                lua_pop(L, 2);
            } else {
                /* Removed by the edit: keep it, for these connections only. */
                lua_pop(L, 1);
                lua_rawseti(L, new_routes, ++n_new);
                map[i] = n_new - 1;
                lua_rawgeti(L, new_routes, n_new);
                lua_getfield(L, -1, "path");
                mw_info("reload: route %s is gone; its live connections keep the old handlers",
                        lua_tostring(L, -1));
                lua_pop(L, 2);
            }
        }
        c->route = map[i];
    }
    free(map);
    lua_settop(L, old_routes - 1);
}

int mw__lua_reload(mw_lua_t *S, char *err, size_t errlen)
{
    lua_State *L = S->L;
    int top = lua_gettop(L);
    push_app_dir(L, S->app_path);
    int dir = lua_gettop(L);
    lua_pushvalue(L, dir);
    if (call_moonwire(L, "_take_local_modules", 1, 1) != 0) {
        snprintf(err, errlen, "reload: %s", lua_tostring(L, -1));
        lua_settop(L, top);
        return -1;
    }
    int saved = lua_gettop(L);

    S->loading = 1;
    int rc = mw__lua_load_app(S, err, errlen);
    S->loading = 0;
    if (rc != 0) {
        /* Nothing changes: the old modules go back, the new timers go. */
        lua_pushvalue(L, dir);
        lua_pushvalue(L, saved);
        call_moonwire(L, "_restore_local_modules", 2, 0);
        mw__timer_drop_pending(S);
        lua_settop(L, top);
        S->reload_failures++;
        return -1;
    }
    int app = lua_gettop(L);
    if (S->w)
        remap_routes(S, app);

    /* Swap: from here on every event runs the new app's handlers. */
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->app_ref);
    int old_app = lua_gettop(L);
    luaL_unref(L, LUA_REGISTRYINDEX, S->routes_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, S->app_ref);
    lua_getfield(L, app, "routes");
    S->routes_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, app);
    S->app_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (S->w)
        mw__lua_build_routes(S);

    /* Timers are replaced, never doubled. */
    lua_pushvalue(L, old_app);
    if (call_moonwire(L, "_retire", 1, 0) != 0) {
        mw_warn("reload: stopping the old app's timers: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    if (S->w)
        mw__timer_start_pending(S);
    lua_settop(L, top);
    S->reloads++;
    return 0;
}
