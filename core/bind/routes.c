/* Deciding on an upgrade: the route (app:_match in Lua, with its path
 * parameters), the origin policy, the subprotocol, and the route's upgrade
 * hook, which runs in a coroutine like every handler and answers through
 * moonwire.core.accept / refuse. Also the per-route limits the core
 * enforces (w->routes) and the fan-out functions of moonwire.core. */
#include <errno.h>
#include <lauxlib.h>
#include <limits.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>

#include "bind.h"
#include "broker.h"
#include "hub.h"
#include "log.h"
#include "pubsub.h"
#include "static.h"

static uint64_t opt_number(lua_State *L, int t, const char *name, uint64_t dflt)
{
    lua_getfield(L, t, name);
    uint64_t v = lua_isnumber(L, -1) ? (uint64_t)lua_tonumber(L, -1) : dflt;
    lua_pop(L, 1);
    return v;
}

void mw__lua_build_routes(mw_lua_t *S)
{
    lua_State *L = S->L;
    const mw_config_t *cfg = &S->w->cfg;
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->routes_ref);
    size_t n = lua_objlen(L, -1);
    mw_route_t *routes = mw__xcalloc(n ? n : 1, sizeof *routes);
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        int t = lua_gettop(L);
        mw_route_t *r = &routes[i];
        r->max_message_size = S->force_max_message_size
                                  ? cfg->max_message_size
                                  : opt_number(L, t, "max_message_size", cfg->max_message_size);
        r->max_buffered = (size_t)opt_number(L, t, "max_buffered", cfg->max_buffered);
        size_t low = r->max_buffered / 2 < 65536 ? r->max_buffered / 2 : 65536;
        r->low_water_mark = (size_t)opt_number(L, t, "low_water_mark", low);
        if (r->low_water_mark >= r->max_buffered)
            r->low_water_mark = r->max_buffered / 2;
        lua_getfield(L, t, "slow_consumer");
        r->drop = lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "drop") == 0;
        lua_pop(L, 1);
        /* permessage-deflate: off unless the route asks (README, "Compression"). */
        lua_getfield(L, t, "compression");
        r->pmd.enabled = (uint8_t)lua_toboolean(L, -1);
        lua_pop(L, 1);
        lua_getfield(L, t, "compression_context_takeover");
        r->pmd.context_takeover = lua_isnil(L, -1) ? 1 : (uint8_t)lua_toboolean(L, -1);
        lua_pop(L, 1);
        r->pmd.threshold = (uint32_t)opt_number(L, t, "compression_threshold", 64);
        r->pmd.level = (int8_t)opt_number(L, t, "compression_level", 1);
        r->pmd.window_bits = (uint8_t)opt_number(L, t, "compression_window_bits", 15);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    free(S->routes);
    S->routes = routes;
    S->nroutes = n;
    S->w->routes = routes;
    S->w->nroutes = n;
}

/* --- origin policy (RFC 6455 10.2; gorilla/websocket's CheckOrigin) -------- */

static int slice_ieq(mw_slice_t a, mw_slice_t b)
{
    if (a.n != b.n)
        return 0;
    for (size_t i = 0; i < a.n; i++) {
        int x = (unsigned char)a.p[i], y = (unsigned char)b.p[i];
        if (x >= 'A' && x <= 'Z')
            x += 32;
        if (y >= 'A' && y <= 'Z')
            y += 32;
        if (x != y)
            return 0;
    }
    return 1;
}

/* Browsers always send Origin; other clients usually do not, and are let
 * through (they can forge any header anyway). With no `origins` option the
 * origin's host[:port] must equal Host: a page may only open sockets to its
 * own server. `origins = "*"` allows any; a list allows exactly those. The
 * route table is at index t. */
static int origin_allowed(lua_State *L, int t, const mw_http_request_t *req)
{
    const mw_http_header_t *o = mw__http_header_find(req, "origin");
    if (!o)
        return 1;
    lua_getfield(L, t, "origins");
    int ok = 0;
    if (lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "*") == 0) {
        ok = 1;
    } else if (lua_istable(L, -1)) {
        size_t n = lua_objlen(L, -1);
        for (size_t i = 1; i <= n && !ok; i++) {
            lua_rawgeti(L, -1, (int)i);
            mw_slice_t allowed = {lua_tostring(L, -1), lua_objlen(L, -1)};
            ok = allowed.p && slice_ieq(allowed, o->value);
            lua_pop(L, 1);
        }
    } else {
        const mw_http_header_t *host = mw__http_header_find(req, "host");
        const char *sep = host ? memchr(o->value.p, ':', o->value.n) : NULL;
        if (sep && (size_t)(o->value.p + o->value.n - sep) > 3 && sep[1] == '/' && sep[2] == '/') {
            mw_slice_t hostport = {sep + 3, (size_t)(o->value.p + o->value.n - sep - 3)};
            ok = slice_ieq(hostport, host->value);
        }
    }
    lua_pop(L, 1);
    return ok;
}

/* --- subprotocols (RFC 6455 4.2.2 /subprotocol/) ---------------------------- */

/* Calls fn for each token the client offered in Sec-WebSocket-Protocol. */
static int offered_has(const mw_http_request_t *req, const char *proto)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (mw__slice_ieq(req->headers[i].name, "sec-websocket-protocol") &&
            mw__http_list_has(req->headers[i].value, proto))
            return 1;
    return 0;
}

static void push_offered(lua_State *L, const mw_http_request_t *req)
{
    lua_newtable(L);
    int n = 0;
    for (size_t i = 0; i < req->nheaders; i++) {
        if (!mw__slice_ieq(req->headers[i].name, "sec-websocket-protocol"))
            continue;
        const char *p = req->headers[i].value.p, *end = p + req->headers[i].value.n;
        while (p < end) {
            while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
                p++;
            const char *s = p;
            while (p < end && *p != ',' && *p != ' ' && *p != '\t')
                p++;
            if (p > s) {
                lua_pushlstring(L, s, (size_t)(p - s));
                lua_rawseti(L, -2, ++n);
            }
        }
    }
}

/* Pushes the first of the route's `protocols` (route table at t) that the
 * client offered, or nil. The server's order is its preference. */
static void push_chosen_protocol(lua_State *L, int t, const mw_http_request_t *req)
{
    lua_getfield(L, t, "protocols");
    if (lua_istable(L, -1)) {
        size_t n = lua_objlen(L, -1);
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, (int)i);
            if (lua_isstring(L, -1) && offered_has(req, lua_tostring(L, -1))) {
                lua_remove(L, -2);
                return;
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    lua_pushnil(L);
}

/* --- the upgrade ------------------------------------------------------------ */

static void push_request(mw_lua_t *S, mw_conn_t *c, const mw_http_request_t *req, int t, int params,
                         int proto)
{
    lua_State *L = S->L;
    char addr[64];
    int port = mw__conn_peer(c, addr, sizeof addr);
    lua_createtable(L, 0, 16);
    lua_pushlstring(L, req->method.p, req->method.n);
    lua_setfield(L, -2, "method");
    lua_pushlstring(L, req->path.p, req->path.n);
    lua_setfield(L, -2, "path");
    lua_pushlstring(L, req->query.p, req->query.n);
    lua_setfield(L, -2, "query_string");
    mw__lua_push_query(L, req->query);
    lua_setfield(L, -2, "query");
    mw__lua_push_headers(L, req);
    lua_setfield(L, -2, "headers");
    if (params)
        lua_pushvalue(L, params);
    else
        lua_newtable(L);
    lua_setfield(L, -2, "params");
    lua_pushstring(L, addr);
    lua_setfield(L, -2, "remote_addr");
    lua_pushinteger(L, port);
    lua_setfield(L, -2, "remote_port");
    if (proto) {
        /* An upgrade: its subprotocols and the headers its 101 may carry. */
        push_offered(L, req);
        lua_setfield(L, -2, "protocols");
        lua_pushvalue(L, proto);
        lua_setfield(L, -2, "protocol");
        lua_newtable(L);
        lua_setfield(L, -2, "response_headers");
    }
    lua_getfield(L, t, "path");
    lua_setfield(L, -2, "route");
    const mw_http_header_t *o = mw__http_header_find(req, "origin");
    if (o) {
        lua_pushlstring(L, o->value.p, o->value.n);
        lua_setfield(L, -2, "origin");
    }
}

/* Calls app:_match(path): pushes the route index (1-based) and params, or
 * returns 0 with nothing pushed. */
static int match(mw_lua_t *S, mw_slice_t path)
{
    lua_State *L = S->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->app_ref);
    lua_getfield(L, -1, "_match");
    lua_insert(L, -2);
    lua_pushlstring(L, path.p, path.n);
    if (lua_pcall(L, 2, 2, 0) != 0) {
        mw_error("route lookup failed: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return 0;
    }
    if (!lua_isnumber(L, -2)) {
        lua_pop(L, 2);
        return 0;
    }
    return 1;
}

void mw__route_upgrade(void *ud, mw_conn_t *c, const mw_http_request_t *req)
{
    mw_lua_t *S = ud;
    lua_State *L = S->L;
    int top = lua_gettop(L);
    if (!match(S, req->path)) {
        mw__conn_http_error(c, 404, NULL, "no route for this path");
        return;
    }
    int index = (int)lua_tointeger(L, top + 1) - 1;
    int params = lua_istable(L, top + 2) ? top + 2 : 0;
    c->route = index;
    c->has_route = 1;
    mw__lua_push_route(S, index);
    int t = lua_gettop(L);
    if (!origin_allowed(L, t, req)) {
        lua_settop(L, top);
        mw__conn_http_error(c, 403, NULL, "origin not allowed");
        return;
    }
    push_chosen_protocol(L, t, req);
    int proto = lua_gettop(L);
    if (params)
        mw__ws_set_params(S, c, params);
    lua_getfield(L, t, "upgrade");
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->app_ref);
    lua_getfield(L, -1, "middleware");
    int middleware = lua_istable(L, -1) && lua_objlen(L, -1) > 0;
    lua_pop(L, 2);
    if (lua_isnil(L, -1) && !middleware) {
        const char *chosen = lua_tostring(L, proto);
        mw__conn_upgrade_accept(c, index, chosen, NULL);
        lua_settop(L, top);
        return;
    }
    /* moonwire._upgrade(app, req, ws) in a coroutine (middleware, then the
     * hook); the run takes the function and its arguments from the top. */
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    lua_getfield(L, -1, "moonwire");
    lua_getfield(L, -1, "_upgrade");
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->app_ref);
    push_request(S, c, req, t, params, proto);
    lua_pushinteger(L, index + 1);
    lua_setfield(L, -2, "route_index");
    mw__ws_push(S, c);
    mw__lua_run(S, c, 3, MW_CO_UPGRADE);
    lua_settop(L, top);
}

/* Looks up the HTTP route of req: pushes app:_match_http's two results
 * (route index and params, or nil and the path's methods) and returns 1,
 * or answers 500 and returns 0 when the lookup itself failed. */
static int lookup_http(mw_lua_t *S, mw_conn_t *c, const mw_http_request_t *req)
{
    lua_State *L = S->L;
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->app_ref);
    lua_getfield(L, -1, "_match_http");
    lua_insert(L, -2);
    lua_pushlstring(L, req->method.p, req->method.n);
    lua_pushlstring(L, req->path.p, req->path.n);
    if (lua_pcall(L, 3, 2, 0) != 0) {
        mw_error("HTTP route lookup failed: %s", lua_tostring(L, -1));
        lua_settop(L, top);
        mw__conn_http_error(c, 500, NULL, NULL);
        return 0;
    }
    return 1;
}

/* With lookup_http's results at top + 1, top + 2 and no route found:
 * 405 with Allow, 426 on a WebSocket path, or 404. Restores top. */
static void answer_unrouted(mw_lua_t *S, mw_conn_t *c, const mw_http_request_t *req, int top)
{
    lua_State *L = S->L;
    if (lua_isstring(L, top + 2)) {
        /* RFC 9110 15.5.6: 405 names the methods the path has. */
        lua_pushfstring(L, "Allow: %s\r\n", lua_tostring(L, top + 2));
        mw__conn_http_error(c, 405, lua_tostring(L, -1), "method not allowed for this path");
    } else if (lua_settop(L, top), match(S, req->path)) {
        mw__conn_http_error(c, 426, "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
                            "this path speaks WebSocket");
    } else {
        mw__conn_http_error(c, 404, NULL, "no route for this path");
    }
    lua_settop(L, top);
}

int mw__route_http_unrouted(void *ud, mw_conn_t *c, const mw_http_request_t *req)
{
    mw_lua_t *S = ud;
    int top = lua_gettop(S->L);
    if (!lookup_http(S, c, req))
        return 1;
    if (lua_isnumber(S->L, top + 1)) {
        lua_settop(S->L, top);
        return 0;
    }
    answer_unrouted(S, c, req, top);
    return 1;
}

void mw__route_http(void *ud, mw_conn_t *c, const mw_http_request_t *req)
{
    mw_lua_t *S = ud;
    lua_State *L = S->L;
    int top = lua_gettop(L);
    if (!lookup_http(S, c, req))
        return;
    if (!lua_isnumber(L, top + 1)) {
        answer_unrouted(S, c, req, top);
        return;
    }
    int index = (int)lua_tointeger(L, top + 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->app_ref);
    lua_getfield(L, -1, "http_routes");
    lua_rawgeti(L, -1, index);
    int t = lua_gettop(L);
    lua_getfield(L, t, "root");
    if (lua_isstring(L, -1)) {
        /* app:static: answered here, no Lua handler runs. */
        size_t rlen;
        const char *rel = lua_tolstring(L, top + 2, &rlen);
        mw__static_serve(c, lua_tostring(L, -1), rel ? rel : "", rel ? rlen : 0, req);
        lua_settop(L, top);
        mw__conn_http_done(c, 500);
        return;
    }
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    lua_getfield(L, -1, "moonwire");
    lua_getfield(L, -1, "_http");
    lua_getfield(L, t, "handler");
    push_request(S, c, req, t, lua_istable(L, top + 2) ? top + 2 : 0, 0);
    lua_pushlstring(L, c->msg ? (const char *)c->msg : "", c->msg_len);
    lua_setfield(L, -2, "body");
    mw__ws_push(S, c);
    mw__lua_run(S, c, 3, MW_CO_HTTP);
    lua_settop(L, top);
}

/* Appends "Name: value\r\n" for each pair of the table at idx, checking
 * names are tokens and values hold no control characters (no header
 * injection through an app's response headers). */
static void add_headers(lua_State *L, int idx, luaL_Buffer *B)
{
    if (lua_isnoneornil(L, idx))
        return;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        size_t nl, vl;
        const char *name = lua_tolstring(L, -2, &nl);
        const char *value = lua_isstring(L, -1) ? lua_tolstring(L, -1, &vl) : NULL;
        if (lua_type(L, -2) != LUA_TSTRING || !value)
            luaL_error(L, "response headers must map names to strings");
        for (size_t i = 0; i < nl; i++)
            if (!strchr("!#$%&'*+-.^_`|~", name[i]) &&
                !((name[i] >= '0' && name[i] <= '9') ||
                  ((name[i] | 32) >= 'a' && (name[i] | 32) <= 'z')))
                luaL_error(L, "response header name '%s' is not a token", name);
        for (size_t i = 0; i < vl; i++)
            if ((unsigned char)value[i] < 0x20 && value[i] != '\t')
                luaL_error(L, "response header '%s' has a control character in its value", name);
        if (nl == 0)
            luaL_error(L, "response header names must not be empty");
        /* The server frames every response: an app-set length or coding
         * would contradict its own and desynchronise keep-alive. */
        static const char *const framing[] = {"content-length", "transfer-encoding", "connection"};
        for (size_t f = 0; f < sizeof framing / sizeof framing[0]; f++)
            if (mw__slice_ieq((mw_slice_t){name, nl}, framing[f]))
                luaL_error(L, "response header '%s' is set by the server, not by the app", name);
        luaL_addlstring(B, name, nl);
        luaL_addlstring(B, ": ", 2);
        luaL_addlstring(B, value, vl);
        luaL_addlstring(B, "\r\n", 2);
        lua_pop(L, 1);
    }
}

static int pending(lua_State *L, mw_conn_t *c)
{
    if (c && c->state == MW_CONN_UPGRADING)
        return 1;
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 0;
}

/* moonwire.core.accept(ws, protocol, headers) */
static int l_accept(lua_State *L)
{
    mw_conn_t *c = mw__ws_check(L, 1);
    const char *proto = luaL_optstring(L, 2, NULL);
    luaL_Buffer B;
    luaL_buffinit(L, &B);
    add_headers(L, 3, &B);
    luaL_pushresult(&B);
    if (!pending(L, c))
        return 2;
    if (proto) {
        mw_http_request_t req;
        int ok = 0;
        mw_http_parser_t st = {0};
        int status;
        const char *why;
        memset(&req, 0, sizeof req);
        req.headers = c->w->hdrs;
        req.max_headers = c->w->cfg.max_headers;
        if (mw__http_parse_request(&st, c->head, c->head_len, c->head_len + 1, &req, &status,
                                   &why) > 0)
            ok = offered_has(&req, proto);
        if (!ok)
            return luaL_error(L,
                              "req.protocol '%s' was not offered by the client "
                              "(pick one of req.protocols, or leave it nil)",
                              proto);
    }
    const char *extra = lua_objlen(L, -1) ? lua_tostring(L, -1) : NULL;
    mw__conn_upgrade_accept(c, c->route, proto, extra);
    lua_pushboolean(L, 1);
    return 1;
}

/* moonwire.core.refuse(ws, status, body, headers) */
static int l_refuse(lua_State *L)
{
    mw_conn_t *c = mw__ws_check(L, 1);
    lua_Integer status = luaL_checkinteger(L, 2);
    luaL_argcheck(L, status >= 300 && status <= 599, 2,
                  "an upgrade hook refuses with a status from 300 to 599");
    size_t blen = 0;
    const char *body = luaL_optlstring(L, 3, NULL, &blen);
    luaL_Buffer B;
    luaL_buffinit(L, &B);
    add_headers(L, 4, &B);
    luaL_pushresult(&B);
    if (!pending(L, c))
        return 2;
    const char *extra = lua_objlen(L, -1) ? lua_tostring(L, -1) : NULL;
    if (body)
        mw__conn_http_refuse(c, (int)status, extra, body, blen);
    else
        mw__conn_http_error(c, (int)status, extra, NULL);
    lua_pushboolean(L, 1);
    return 1;
}

static mw_worker_t *running_worker(lua_State *L, const char *what)
{
    mw_lua_t *S = lua_touserdata(L, lua_upvalueindex(1));
    if (!S->w)
        luaL_error(L,
                   "%s works only while the server runs (in a handler or a timer), not while "
                   "the app file loads",
                   what);
    return S->w;
}

/* moonwire.core.publish(topic, data, binary) -> deliveries */
static int l_publish(lua_State *L)
{
    size_t tl, dl;
    const char *topic = luaL_checklstring(L, 1, &tl);
    const char *data = luaL_checklstring(L, 2, &dl);
    mw_worker_t *w = running_worker(L, "app:publish");
    w->stats.publishes++;
    lua_pushnumber(L, (lua_Number)mw__pubsub_publish(w->pubsub, topic, tl, lua_toboolean(L, 3),
                                                     data, dl, NULL));
    /* Topics are global: the other workers' subscribers get it too. */
    mw_lua_t *S = lua_touserdata(L, lua_upvalueindex(1));
    if (S->hub)
        mw__hub_publish(S->hub, S->index, topic, tl, data, dl, lua_toboolean(L, 3));
    /* And with --broker, other processes' subscribers too. */
    if (S->broker)
        mw__broker_publish(S->broker, topic, tl, data, dl, lua_toboolean(L, 3));
    return 1;
}

/* moonwire.core.subscribers(topic) -> count */
static int l_subscribers(lua_State *L)
{
    size_t tl;
    const char *topic = luaL_checklstring(L, 1, &tl);
    mw_worker_t *w = running_worker(L, "app:subscribers");
    lua_pushnumber(L, (lua_Number)mw__pubsub_count(w->pubsub, topic, tl));
    return 1;
}

/* moonwire.core.respond(conn, status, headers, body) -> true | nil, err */
static int l_respond(lua_State *L)
{
    mw_conn_t *c = mw__ws_check(L, 1);
    lua_Integer status = luaL_checkinteger(L, 2);
    luaL_argcheck(L, status >= 200 && status <= 599, 2, "status must be from 200 to 599");
    size_t blen;
    const char *body = luaL_checklstring(L, 4, &blen);
    luaL_Buffer B;
    luaL_buffinit(L, &B);
    add_headers(L, 3, &B);
    luaL_pushresult(&B);
    size_t hlen;
    const char *hdrs = lua_tolstring(L, -1, &hlen);
    if (!c || mw__conn_http_respond(c, (int)status, hdrs, hlen, body, blen) != MW_OK) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* moonwire.core.realpath(dir) -> absolute path of a directory | nil, err */
static int l_realpath(lua_State *L)
{
    const char *dir = luaL_checkstring(L, 1);
    char real[PATH_MAX];
    struct stat st;
    if (!realpath(dir, real) || stat(real, &st) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, strerror(errno));
        return 2;
    }
    if (!S_ISDIR(st.st_mode)) {
        lua_pushnil(L);
        lua_pushliteral(L, "not a directory");
        return 2;
    }
    lua_pushstring(L, real);
    return 1;
}

void mw__routes_register(lua_State *L, mw_lua_t *S)
{
    static const luaL_Reg fns[] = {{"respond", l_respond},
                                   {"realpath", l_realpath},
                                   {"accept", l_accept},
                                   {"refuse", l_refuse},
                                   {"publish", l_publish},
                                   {"subscribers", l_subscribers},
                                   {NULL, NULL}};
    for (const luaL_Reg *f = fns; f->name; f++) {
        lua_pushlightuserdata(L, S);
        lua_pushcclosure(L, f->func, 1);
        lua_setfield(L, -2, f->name);
    }
}
