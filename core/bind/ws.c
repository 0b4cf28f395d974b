/* The `ws` object handlers receive: a userdata box around a connection.
 *
 * The box is made the first time a handler needs it and anchored by one
 * registry ref while the connection lives (so ws is the same object in
 * every call, and ws.data persists). When the connection is finished (its
 * on_close ran) the link is cleared from both sides: methods on the box
 * then return nil, "closed" and fields read nil, never a dangling pointer. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "bind.h"
#include "http.h"
#include "pubsub.h"

#define WS_MT "moonwire.ws"

typedef struct ws_box {
    mw_conn_t *c; /* NULL once the connection is finished */
    uint64_t id;
    int data_ref;    /* ws.data, made on first use */
    int headers_ref; /* ws.headers, made on first use */
    int query_ref;   /* ws.query, made on first use */
    int params_ref;  /* ws.params, set by the router */
} ws_box_t;

void mw__ws_push(mw_lua_t *S, mw_conn_t *c)
{
    lua_State *L = S->L;
    if (c->app_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, c->app_ref);
        return;
    }
    ws_box_t *b = lua_newuserdata(L, sizeof *b);
    b->c = c;
    b->id = c->id;
    b->data_ref = b->headers_ref = b->query_ref = b->params_ref = LUA_NOREF;
    luaL_getmetatable(L, WS_MT);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    c->app_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    mw__conn_retain(c); /* the app's reference */
}

static void box_unref(lua_State *L, ws_box_t *b)
{
    luaL_unref(L, LUA_REGISTRYINDEX, b->data_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, b->headers_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, b->query_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, b->params_ref);
    b->data_ref = b->headers_ref = b->query_ref = b->params_ref = LUA_NOREF;
}

void mw__ws_finalize(mw_lua_t *S, mw_conn_t *c)
{
    lua_State *L = S->L;
    if (c->app_ref == LUA_NOREF)
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->app_ref);
    ws_box_t *b = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (b) {
        b->c = NULL;
        box_unref(L, b);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, c->app_ref);
    c->app_ref = LUA_NOREF;
    mw__conn_release(c);
}

/* Argument 1 must be a ws. Methods carry the ws metatable as upvalue 1, so
 * the check is one pointer comparison instead of luaL_checkudata's lookup
 * of the metatable by name on every ws:send. */
static ws_box_t *check_box(lua_State *L)
{
    void *p = lua_touserdata(L, 1);
    if (p && lua_getmetatable(L, 1)) {
        int ok = lua_rawequal(L, -1, lua_upvalueindex(1));
        lua_pop(L, 1);
        if (ok)
            return p;
    }
    return luaL_checkudata(L, 1, WS_MT); /* raises the usual error */
}

/* ws:send(data [, binary]) -> true | nil, "closed" */
static int ws_send(lua_State *L)
{
    ws_box_t *b = check_box(L);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    int binary = lua_toboolean(L, 3);
    int rc = b->c ? mw__conn_send(b->c, binary ? MW_WS_OP_BINARY : MW_WS_OP_TEXT, data, len)
                  : MW_ECLOSED;
    if (rc != MW_OK) {
        /* "dropped": the route's slow_consumer = "drop" policy skipped it. */
        lua_pushnil(L);
        if (rc == MW_EAGAIN)
            lua_pushliteral(L, "dropped");
        else
            lua_pushliteral(L, "closed");
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* The FFI side of ws:send (see the __index source in mw__ws_register):
 * b is a ws box (the Lua side checked its metatable), opcode TEXT or
 * BINARY; returns MW_OK, MW_EAGAIN (dropped) or MW_ECLOSED, which the Lua
 * side maps to send's results. Never calls into Lua, as a function called from a compiled
 * trace must not. */
static int ffi_send(ws_box_t *b, const char *data, size_t len, int opcode)
{
    mw_conn_t *c = b->c;
    if (!c)
        return MW_ECLOSED;
    return mw__conn_send(c, opcode, data, len);
}

/* The same for a large string (#data >= MW_PIN_MIN), queued where it is
 * when it goes out uncompressed: returns the pin the Lua side keeps the
 * string under (its key in the pins table) or 0 when it was copied; -1
 * dropped, -2 closed. */
static int ffi_send_pinned(ws_box_t *b, const char *data, size_t len, int binary)
{
    uint32_t pin = 0;
    int rc =
        b->c ? mw__conn_send_pinned(b->c, binary ? MW_WS_OP_BINARY : MW_WS_OP_TEXT, data, len, &pin)
             : MW_ECLOSED;
    return rc == MW_OK ? (int)pin : rc == MW_EAGAIN ? -1 : -2;
}

#define PINS_KEY "moonwire.pins"

void mw__ws_unpin(void *ud, const uint32_t *pins, size_t n)
{
    mw_lua_t *S = ud;
    if (!S->L)
        return; /* the state is gone, and the strings with it */
    lua_State *L = S->L;
    lua_getfield(L, LUA_REGISTRYINDEX, PINS_KEY);
    for (size_t i = 0; i < n; i++) {
        /* A pin whose string the Lua side never stored (an error between
         * the send and the store) stays nil: setting it again could grow
         * the table, outside any protected call. */
        lua_rawgeti(L, -1, (int)pins[i]);
        int held = !lua_isnil(L, -1);
        lua_pop(L, 1);
        if (held) {
            lua_pushnil(L);
            lua_rawseti(L, -2, (int)pins[i]);
        }
    }
    lua_pop(L, 1);
}

/* ws:close([code [, reason]]) -> true | nil, "closed" */
static int ws_close(lua_State *L)
{
    ws_box_t *b = check_box(L);
    lua_Integer code = luaL_optinteger(L, 2, MW_WS_CLOSE_NORMAL);
    size_t rlen = 0;
    const char *reason = luaL_optlstring(L, 3, "", &rlen);
    luaL_argcheck(L, mw__ws_close_code_valid((unsigned)code) && code > 0 && code < 65536, 2,
                  "close code must be 1000-1003, 1007-1014 or 3000-4999");
    luaL_argcheck(L, rlen <= MW_WS_MAX_CONTROL - 2, 3, "close reason is longer than 123 bytes");
    if (!b->c || !mw__conn_can_send(b->c)) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    b->c->app_closed = 1;
    mw__conn_close(b->c, (uint16_t)code, reason, rlen);
    lua_pushboolean(L, 1);
    return 1;
}

/* ws:ping([data]) -> true | nil, "closed" */
static int ws_ping(lua_State *L)
{
    ws_box_t *b = check_box(L);
    size_t len = 0;
    const char *data = luaL_optlstring(L, 2, "", &len);
    luaL_argcheck(L, len <= MW_WS_MAX_CONTROL, 2, "ping payload is longer than 125 bytes");
    if (!b->c || mw__conn_send(b->c, MW_WS_OP_PING, data, len) != 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* ws:subscribe(topic) -> true (newly) | false (already) | nil, "closed" */
static int ws_subscribe(lua_State *L)
{
    ws_box_t *b = check_box(L);
    size_t len;
    const char *topic = luaL_checklstring(L, 2, &len);
    if (!b->c || !mw__conn_can_send(b->c)) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    lua_pushboolean(L, mw__pubsub_subscribe(b->c->w->pubsub, b->c, topic, len));
    return 1;
}

/* ws:unsubscribe(topic) -> true (was subscribed) | false */
static int ws_unsubscribe(lua_State *L)
{
    ws_box_t *b = check_box(L);
    size_t len;
    const char *topic = luaL_checklstring(L, 2, &len);
    lua_pushboolean(L, b->c && mw__pubsub_unsubscribe(b->c->w->pubsub, b->c, topic, len));
    return 1;
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Pushes s percent-decoded ('+' as space, as in form encoding). */
static void push_decoded(lua_State *L, const char *s, size_t n)
{
    luaL_Buffer B;
    luaL_buffinit(L, &B);
    for (size_t i = 0; i < n; i++) {
        int ch = (unsigned char)s[i];
        if (ch == '+') {
            ch = ' ';
        } else if (ch == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            ch = hexval(s[i + 1]) * 16 + hexval(s[i + 2]);
            i += 2;
        }
        luaL_addchar(&B, (char)ch);
    }
    luaL_pushresult(&B);
}

/* Re-parses the kept request head; the head was valid when it was kept. */
static int parse_head(mw_conn_t *c, mw_http_request_t *req, mw_http_header_t *hdrs, size_t max)
{
    mw_http_parser_t st = {0};
    int status;
    const char *why;
    memset(req, 0, sizeof *req);
    req->headers = hdrs;
    req->max_headers = max;
    return mw__http_parse_request(&st, c->head, c->head_len, c->head_len + 1, req, &status, &why) >
           0;
}

static void push_cached(lua_State *L, int ref)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
}

void mw__lua_push_headers(lua_State *L, const mw_http_request_t *req)
{
    lua_createtable(L, 0, (int)req->nheaders);
    for (size_t i = 0; i < req->nheaders; i++) {
        const mw_http_header_t *h = &req->headers[i];
        char name[256];
        size_t n = h->name.n < sizeof name ? h->name.n : sizeof name - 1;
        for (size_t j = 0; j < n; j++) {
            char ch = h->name.p[j];
            name[j] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
        }
        lua_pushlstring(L, name, n);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isstring(L, -1)) {
            /* RFC 9110 5.3: repeated fields combine as a comma-separated list. */
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, h->value.p, h->value.n);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, h->value.p, h->value.n);
        }
        lua_rawset(L, -3);
    }
}

void mw__lua_push_query(lua_State *L, mw_slice_t query)
{
    lua_newtable(L);
    const char *p = query.p, *end = query.p + query.n;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *e = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(e - p));
        if (e > p) {
            push_decoded(L, p, (size_t)((eq ? eq : e) - p));
            if (eq)
                push_decoded(L, eq + 1, (size_t)(e - eq - 1));
            else
                lua_pushliteral(L, "");
            lua_rawset(L, -3); /* the last of repeated keys wins */
        }
        p = amp ? amp + 1 : end;
    }
}

void mw__ws_set_params(mw_lua_t *S, mw_conn_t *c, int idx)
{
    lua_State *L = S->L;
    idx = idx < 0 ? lua_gettop(L) + idx + 1 : idx;
    mw__ws_push(S, c);
    ws_box_t *b = lua_touserdata(L, -1);
    lua_pop(L, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, b->params_ref);
    lua_pushvalue(L, idx);
    b->params_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

mw_conn_t *mw__ws_check(lua_State *L, int idx)
{
    ws_box_t *b = luaL_checkudata(L, idx, WS_MT);
    return b->c;
}

static int ws_index(lua_State *L)
{
    ws_box_t *b = check_box(L);
    const char *k = luaL_checkstring(L, 2);
    /* Methods were looked up already by the Lua __index in front of this. */
    if (strcmp(k, "id") == 0) {
        lua_pushnumber(L, (lua_Number)b->id);
        return 1;
    }
    if (strcmp(k, "data") == 0) {
        if (b->data_ref == LUA_NOREF) {
            lua_newtable(L);
            lua_pushvalue(L, -1);
            b->data_ref = luaL_ref(L, LUA_REGISTRYINDEX);
            return 1;
        }
        push_cached(L, b->data_ref);
        return 1;
    }
    mw_conn_t *c = b->c;
    if (!c) {
        lua_pushnil(L);
        return 1;
    }
    if (strcmp(k, "remote_addr") == 0 || strcmp(k, "remote_port") == 0) {
        char addr[64];
        int port = mw__conn_peer(c, addr, sizeof addr);
        if (k[7] == 'a')
            lua_pushstring(L, addr);
        else
            lua_pushinteger(L, port);
        return 1;
    }
    if (strcmp(k, "path") == 0 || strcmp(k, "query_string") == 0) {
        mw_http_request_t req;
        if (!parse_head(c, &req, c->w->hdrs, c->w->cfg.max_headers)) {
            lua_pushnil(L);
            return 1;
        }
        if (k[0] == 'p')
            lua_pushlstring(L, req.path.p, req.path.n);
        else
            lua_pushlstring(L, req.query.p, req.query.n);
        return 1;
    }
    if (strcmp(k, "headers") == 0 || strcmp(k, "query") == 0) {
        int *ref = k[0] == 'h' ? &b->headers_ref : &b->query_ref;
        if (*ref == LUA_NOREF) {
            mw_http_request_t req;
            if (!parse_head(c, &req, c->w->hdrs, c->w->cfg.max_headers)) {
                lua_pushnil(L);
                return 1;
            }
            if (k[0] == 'h')
                mw__lua_push_headers(L, &req);
            else
                mw__lua_push_query(L, req.query);
            lua_pushvalue(L, -1);
            *ref = luaL_ref(L, LUA_REGISTRYINDEX);
            return 1;
        }
        push_cached(L, *ref);
        return 1;
    }
    if (strcmp(k, "params") == 0) {
        if (b->params_ref == LUA_NOREF) {
            lua_newtable(L);
            lua_pushvalue(L, -1);
            b->params_ref = luaL_ref(L, LUA_REGISTRYINDEX);
            return 1;
        }
        push_cached(L, b->params_ref);
        return 1;
    }
    if (strcmp(k, "closed") == 0) {
        lua_pushboolean(L, !mw__conn_can_send(c));
        return 1;
    }
    if (strcmp(k, "buffered") == 0) {
        lua_pushnumber(L, (lua_Number)c->out.bytes);
        return 1;
    }
    if (strcmp(k, "dropped") == 0) {
        lua_pushnumber(L, (lua_Number)c->dropped);
        return 1;
    }
    lua_pushnil(L);
    return 1;
}

static int ws_newindex(lua_State *L)
{
    ws_box_t *b = check_box(L);
    const char *k = luaL_checkstring(L, 2);
    if (strcmp(k, "data") != 0)
        return luaL_error(L, "ws.%s is read-only; keep per-connection state in ws.data", k);
    luaL_unref(L, LUA_REGISTRYINDEX, b->data_ref);
    lua_pushvalue(L, 3);
    b->data_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

static int ws_tostring(lua_State *L)
{
    ws_box_t *b = check_box(L);
    lua_pushfstring(L, "moonwire.ws(%d%s)", (int)b->id, b->c ? "" : ", finished");
    return 1;
}

static int ws_gc(lua_State *L)
{
    ws_box_t *b = lua_touserdata(L, 1);
    box_unref(L, b);
    return 0;
}

void mw__ws_register(lua_State *L)
{
    static const luaL_Reg methods[] = {{"send", ws_send},
                                       {"close", ws_close},
                                       {"ping", ws_ping},
                                       {"subscribe", ws_subscribe},
                                       {"unsubscribe", ws_unsubscribe},
                                       {NULL, NULL}};
    luaL_newmetatable(L, WS_MT);
    /* __index is a small Lua function: `ws:send` is then one table lookup
     * that LuaJIT compiles into the handler's trace, and only fields
     * (ws.data, ws.path...) go through C (profiled: the C __index with its
     * string compares was the largest user-space cost of an echo). ws:send
     * with a string calls C through the FFI, which a trace compiles too; a
     * number takes the C API path, and wrong arguments raise the errors
     * luaL_argerror would, at the app's line. */
    static const char index_src[] =
        "local methods, fields, mt, ffi, send_fn, pinned_fn, pins, PIN_MIN = ...\n"
        "local cffi = ffi.cast('int (*)(void *, const char *, size_t, int)', send_fn)\n"
        "local cpinned = ffi.cast('int (*)(void *, const char *, size_t, int)', pinned_fn)\n"
        "local send, getmetatable, type, error = methods.send, getmetatable, type, error\n"
        "local getinfo = debug.getinfo\n"
        "-- as luaL_argerror words it, at the caller's line (level 3)\n"
        "local function argerror(n, msg)\n"
        "  local ar = getinfo(2, 'n')\n"
        "  if ar and ar.namewhat == 'method' then\n"
        "    n = n - 1\n"
        "    if n == 0 then error(\"calling 'send' on bad self (\" .. msg .. \")\", 3) end\n"
        "  end\n"
        "  error((\"bad argument #%d to 'send' (%s)\"):format(n, msg), 3)\n"
        "end\n"
        "methods.send = function(ws, data, binary)\n"
        "  if getmetatable(ws) ~= mt then\n"
        "    argerror(1, 'moonwire.ws expected, got ' .. type(ws))\n"
        "  end\n"
        "  local t = type(data)\n"
        "  if t ~= 'string' then\n"
        "    if t ~= 'number' then argerror(2, 'string expected, got ' .. t) end\n"
        "    return send(ws, data, binary) -- a number: sent as its text\n"
        "  end\n"
        "  local n = #data\n"
        "  if n >= PIN_MIN then -- queued where it is: kept alive until written\n"
        "    local pin = cpinned(ws, data, n, binary and 1 or 0)\n"
        "    if pin >= 0 then\n"
        "      if pin > 0 then pins[pin] = data end\n"
        "      return true\n"
        "    end\n"
        "    return nil, pin == -1 and 'dropped' or 'closed'\n"
        "  end\n"
        "  local rc = cffi(ws, data, n, binary and 2 or 1) -- the opcode\n"
        "  if rc == 0 then return true end\n"
        "  return nil, rc == -1 and 'dropped' or 'closed' -- MW_EAGAIN, MW_ECLOSED\n"
        "end\n"
        "return function(ws, k)\n"
        "  local m = methods[k]\n"
        "  if m ~= nil then return m end\n"
        "  return fields(ws, k)\n"
        "end\n";
    luaL_loadbuffer(L, index_src, sizeof index_src - 1, "=moonwire.ws");
    lua_newtable(L);
    for (const luaL_Reg *r = methods; r->name; r++) {
        lua_pushvalue(L, -3); /* the metatable */
        lua_pushcclosure(L, r->func, 1);
        lua_setfield(L, -2, r->name);
    }
    lua_pushvalue(L, -3);
    lua_pushcclosure(L, ws_index, 1);
    lua_pushvalue(L, -4);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "ffi");
    lua_call(L, 1, 1);
    mw__lua_push_cfn(L, (void (*)(void))ffi_send);
    mw__lua_push_cfn(L, (void (*)(void))ffi_send_pinned);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, PINS_KEY);
    lua_pushinteger(L, MW_PIN_MIN);
    lua_call(L, 8, 1);
    lua_setfield(L, -2, "__index");
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, ws_newindex, 1);
    lua_setfield(L, -2, "__newindex");
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, ws_tostring, 1);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, ws_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushliteral(L, WS_MT);
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
}
