/* moonwire.tcp(): outbound TCP and TLS for handlers, a cosocket in the
 * manner of OpenResty's ngx.socket.tcp. This file is the Lua side: the
 * socket userdata, its options and results, and the waiting. The
 * connection itself (connect, TLS, buffered reads, writes, the pool) is
 * core/src/osock.c, and host names go to core/src/resolve.c's thread.
 *
 * Every call that must wait (resolve, connect, TLS handshake, send,
 * receive) arms an ev_io and an ev_timer on the worker's loop and yields
 * the calling coroutine; the loop resumes it with the answer, while every
 * other connection runs on. A socket is a userdata ("moonwire.tcp") that
 * embeds its watchers: while a call waits, a registry ref anchors it so
 * the collector never frees a watcher libev holds; otherwise __gc closes
 * the connection. Reads are bounded by max_line ("*l") and max_receive (n,
 * "*a"), so a peer cannot grow a worker's memory without limit. Errors are
 * short stable strings: "timeout", "closed", "connection refused",
 * "no such host: NAME", "tls: certificate verify failed: REASON", ... */
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "bind.h"
#include "log.h"
#include "osock.h"
#include "resolve.h"

#define TCP_MT "moonwire.tcp"

/* Defaults (docs/clients.md lists them). */
#define TCP_TIMEOUT_MS   60000       /* each of connect, send, read */
#define TCP_MAX_LINE     65536       /* receive("*l") */
#define TCP_MAX_RECEIVE  (16u << 20) /* receive(n), receive("*a") */
#define TCP_POOL_IDLE_MS 60000       /* setkeepalive() idle timeout */
#define TCP_POOL_SIZE    30          /* setkeepalive() per-key pool size */

enum { ST_NEW, ST_RESOLVING, ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_CLOSED };
enum { OP_NONE, OP_CONNECT, OP_SEND, OP_RECEIVE };
enum { RECV_LINE, RECV_ALL, RECV_BYTES };
enum { T_CONNECT, T_SEND, T_READ };

typedef struct mw_tcp mw_tcp_t;

/* Per worker: the resolver, the default TLS context, the pool, every live
 * socket (so shutdown can disarm them all). */
typedef struct mw_tcp_state {
    mw_resolver_t *resolver;
    SSL_CTX *ctx; /* verification against the system's CA store */
    mw_opool_t *pool;
    mw_tcp_t *live;
} mw_tcp_state_t;

struct mw_tcp {
    mw_lua_t *S;
    mw_tcp_state_t *T; /* NULL once the state closed (then only __gc comes) */
    mw_osock_t s;      /* the connection */
    int state, op;
    mw_co_t *waiter; /* the coroutine suspended in a call on this socket */
    int self_ref;    /* anchors the userdata while waiter is set */
    ev_io io;
    ev_timer timer;
    double timeout[3]; /* seconds: connect, send, read */
    /* connecting */
    mw_resolve_req_t *rq;
    struct addrinfo *ai_list, *ai_next;
    int gai_err;
    char *host, *server_name, *pool_key;
    int tls, verify;
    SSL_CTX *ctx; /* a context of its own (ca_file), or NULL */
    /* reading */
    size_t max_line, max_receive;
    int rmode;
    size_t rwant;
    /* sending: wbuf[wpos..wlen) is left to send */
    char *wbuf;
    size_t wlen, wpos, wtotal;
    unsigned reused;
    int linked; /* in T->live */
    char errbuf[192];
    mw_tcp_t *prev, *next;
};

/* --- small helpers ---------------------------------------------------------- */

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(mw__xmalloc(n), s, n);
}

/* Pushes "nil, msg" [-0, +2, m]. Returns 2. */
static int push_fail(lua_State *L, const char *msg)
{
    lua_pushnil(L);
    lua_pushstring(L, msg);
    return 2;
}

static mw_tcp_state_t *tcp_state(mw_lua_t *S)
{
    if (!S->tcp) {
        S->tcp = mw__xcalloc(1, sizeof *S->tcp);
        S->tcp->resolver = mw__resolver_new(S->w->loop);
        S->tcp->pool = mw__opool_new(S->w->loop);
    }
    return S->tcp;
}

/* --- the life of a socket ----------------------------------------------------- */

static void stop_watchers(mw_tcp_t *t)
{
    if (t->T && t->S->w) {
        ev_io_stop(t->S->w->loop, &t->io);
        ev_timer_stop(t->S->w->loop, &t->timer);
    }
}

/* Closes the connection (not the userdata): the socket can connect again. */
static void tcp_close(mw_tcp_t *t)
{
    stop_watchers(t);
    if (t->rq) {
        if (t->T)
            mw__resolve_cancel(t->T->resolver, t->rq);
        t->rq = NULL;
    }
    if (t->ai_list)
        freeaddrinfo(t->ai_list);
    t->ai_list = t->ai_next = NULL;
    mw__osock_close(&t->s);
    if (t->ctx)
        SSL_CTX_free(t->ctx);
    t->ctx = NULL;
    free(t->wbuf);
    t->wbuf = NULL;
    t->wlen = t->wpos = 0;
    t->state = ST_CLOSED;
}

/* Lists t in its worker's live sockets (at its first connect: a socket
 * made while the app file loads has no loop yet), so shutdown finds it. */
static void tcp_link(mw_tcp_t *t)
{
    if (t->linked)
        return;
    t->T = tcp_state(t->S);
    t->next = t->T->live;
    if (t->next)
        t->next->prev = t;
    t->T->live = t;
    t->linked = 1;
}

static void tcp_unlink(mw_tcp_t *t)
{
    if (!t->linked)
        return;
    t->linked = 0;
    if (t->prev)
        t->prev->next = t->next;
    else
        t->T->live = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->prev = t->next = NULL;
}

/* Ends the wait of the suspended caller (its results are already on its
 * stack) without resuming it yet. Returns the coroutine to resume. */
static mw_co_t *end_wait(mw_tcp_t *t)
{
    mw_co_t *k = t->waiter;
    stop_watchers(t);
    t->waiter = NULL;
    t->op = OP_NONE;
    luaL_unref(t->S->L, LUA_REGISTRYINDEX, t->self_ref);
    t->self_ref = LUA_NOREF;
    return k;
}

/* The call's coroutine ended while waiting (mw__lua_wait's on_cancel). */
static void wait_cancelled(void *arg)
{
    mw_tcp_t *t = arg;
    end_wait(t);
    tcp_close(t);
}

/* --- the operations: each step either pushes the call's results on L and
 * returns how many, or returns -1 to wait for t->s.want (or the resolver). --- */

static int fail_closed(mw_tcp_t *t, lua_State *L, const char *msg)
{
    tcp_close(t);
    return push_fail(L, msg);
}

static int step_connect(mw_tcp_t *t, lua_State *L)
{
    for (;;) {
        switch (t->state) {
        case ST_RESOLVING:
            if (t->rq)
                return -1; /* the resolver calls back */
            if (!t->ai_list) {
                if (t->gai_err == EAI_NONAME || t->gai_err == EAI_NODATA ||
                    t->gai_err == EAI_FAIL || t->gai_err == EAI_AGAIN)
                    snprintf(t->errbuf, sizeof t->errbuf, "no such host: %s", t->host);
                else
                    snprintf(t->errbuf, sizeof t->errbuf, "cannot resolve %s: %s", t->host,
                             gai_strerror(t->gai_err));
                return fail_closed(t, L, t->errbuf);
            }
            t->ai_next = t->ai_list;
            t->state = ST_CONNECTING;
            if (mw__osock_connect(&t->s, &t->ai_next) < 0)
                return fail_closed(t, L, t->s.err);
            return -1; /* connected or in progress: writable tells */
        case ST_CONNECTING: {
            int rc = mw__osock_connected(&t->s);
            if (rc == MW_OSOCK_AGAIN)
                return -1;
            if (rc == MW_OSOCK_ERROR) {
                /* On to the next address, if any. The watcher stops before
                 * the close: the next socket may get the same fd. */
                ev_io_stop(t->S->w->loop, &t->io);
                mw__osock_close(&t->s);
                if (mw__osock_connect(&t->s, &t->ai_next) < 0)
                    return fail_closed(t, L, t->s.err);
                return -1;
            }
            freeaddrinfo(t->ai_list);
            t->ai_list = t->ai_next = NULL;
            if (!t->tls) {
                t->state = ST_OPEN;
                lua_pushinteger(L, 1);
                return 1;
            }
            if (!t->ctx && !t->T->ctx &&
                !(t->T->ctx = mw__osock_tls_ctx(NULL, t->errbuf, sizeof t->errbuf)))
                return fail_closed(t, L, t->errbuf);
            mw__osock_tls_start(&t->s, t->ctx ? t->ctx : t->T->ctx,
                                t->server_name ? t->server_name : t->host, t->verify);
            t->state = ST_HANDSHAKE;
            break;
        }
        case ST_HANDSHAKE: {
            int rc = mw__osock_tls_handshake(&t->s);
            if (rc == MW_OSOCK_AGAIN)
                return -1;
            if (rc == MW_OSOCK_ERROR)
                return fail_closed(t, L, t->s.err);
            t->state = ST_OPEN;
            lua_pushinteger(L, 1);
            return 1;
        }
        default:
            return fail_closed(t, L, "closed");
        }
    }
}

static int step_send(mw_tcp_t *t, lua_State *L)
{
    while (t->wpos < t->wlen) {
        ssize_t n = mw__osock_write(&t->s, t->wbuf + t->wpos, t->wlen - t->wpos);
        if (n == MW_OSOCK_AGAIN)
            return -1;
        if (n < 0)
            return fail_closed(t, L, t->s.err);
        t->wpos += (size_t)n;
    }
    free(t->wbuf);
    t->wbuf = NULL;
    t->wlen = t->wpos = 0;
    lua_pushinteger(L, (lua_Integer)t->wtotal);
    return 1;
}

/* Pushes the buffered bytes and takes them from the buffer. */
static void push_buffered(mw_tcp_t *t, lua_State *L)
{
    mw_osock_t *s = &t->s;
    lua_pushlstring(L, s->rbuf ? s->rbuf + s->rstart : "", s->rend - s->rstart);
    s->rstart = s->rend = 0;
}

/* Returns "nil, err, partial" where partial is everything buffered. */
static int fail_partial(mw_tcp_t *t, lua_State *L, const char *msg, int close_it)
{
    lua_pushnil(L);
    lua_pushstring(L, msg);
    push_buffered(t, L);
    if (close_it)
        tcp_close(t);
    return 3;
}

static int step_receive(mw_tcp_t *t, lua_State *L)
{
    mw_osock_t *s = &t->s;
    for (;;) {
        size_t avail = s->rend - s->rstart;
        const char *p = s->rbuf ? s->rbuf + s->rstart : "";
        if (t->rmode == RECV_LINE && avail) {
            const char *nl = memchr(p, '\n', avail);
            if (nl) {
                size_t n = (size_t)(nl - p);
                lua_pushlstring(L, p, n > 0 && p[n - 1] == '\r' ? n - 1 : n);
                s->rstart += n + 1;
                return 1;
            }
            if (avail > t->max_line)
                return fail_partial(t, L, "line too long", 1);
        } else if (t->rmode == RECV_BYTES && avail >= t->rwant) {
            lua_pushlstring(L, p, t->rwant);
            s->rstart += t->rwant;
            return 1;
        } else if (t->rmode == RECV_ALL && avail > t->max_receive) {
            return fail_partial(t, L, "too large", 1);
        }
        ssize_t n = mw__osock_read(s);
        if (n == MW_OSOCK_AGAIN)
            return -1;
        if (n == MW_OSOCK_ERROR)
            return fail_partial(t, L, s->err, 1);
        if (n == 0) {
            if (t->rmode != RECV_ALL)
                return fail_partial(t, L, "closed", 1);
            push_buffered(t, L); /* "*a": the close is the end */
            tcp_close(t);
            return 1;
        }
    }
}

static int step(mw_tcp_t *t, lua_State *L)
{
    switch (t->op) {
    case OP_CONNECT:
        return step_connect(t, L);
    case OP_SEND:
        return step_send(t, L);
    default:
        return step_receive(t, L);
    }
}

/* --- waiting ---------------------------------------------------------------- */

static void arm_io(mw_tcp_t *t)
{
    struct ev_loop *loop = t->S->w->loop;
    int fd = t->s.fd, want = t->state == ST_RESOLVING ? 0 : t->s.want;
    if (fd < 0 || !want) {
        ev_io_stop(loop, &t->io);
        return;
    }
    if (ev_is_active(&t->io) && (t->io.fd != fd || (t->io.events & (EV_READ | EV_WRITE)) != want))
        ev_io_stop(loop, &t->io);
    if (!ev_is_active(&t->io)) {
        ev_io_set(&t->io, fd, want);
        ev_io_start(loop, &t->io);
    }
}

/* Runs the next step for the waiting call; resumes it if the call is over. */
static void kick(mw_tcp_t *t)
{
    lua_State *co = t->waiter->co;
    lua_settop(co, 0);
    int n = step(t, co);
    if (n < 0) {
        arm_io(t);
        return;
    }
    mw__lua_wake(end_wait(t), n);
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    kick((mw_tcp_t *)((char *)w - offsetof(mw_tcp_t, io)));
}

static void on_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    mw_tcp_t *t = (mw_tcp_t *)((char *)w - offsetof(mw_tcp_t, timer));
    lua_State *co = t->waiter->co;
    lua_settop(co, 0);
    int n;
    if (t->op == OP_RECEIVE) {
        /* A read that timed out leaves the connection usable (OpenResty's
         * rule): the bytes so far are returned as partial. */
        n = fail_partial(t, co, "timeout", 0);
    } else {
        /* A connect or send cut short leaves nothing usable. */
        n = fail_closed(t, co, "timeout");
    }
    mw__lua_wake(end_wait(t), n);
}

static void resolved(void *arg, struct addrinfo *res, int gai_err)
{
    mw_tcp_t *t = arg;
    t->rq = NULL;
    t->ai_list = res;
    t->gai_err = gai_err;
    kick(t);
}

/* Runs op now; if it must wait, suspends the caller (socket at index 1). */
static int run(lua_State *L, mw_tcp_t *t, int op, mw_co_t *k)
{
    t->op = op;
    int n = step(t, L);
    if (n >= 0) {
        t->op = OP_NONE;
        return n;
    }
    t->waiter = k;
    lua_pushvalue(L, 1);
    t->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    arm_io(t);
    int which = op == OP_CONNECT ? T_CONNECT : op == OP_SEND ? T_SEND : T_READ;
    ev_timer_set(&t->timer, t->timeout[which], 0.);
    ev_timer_start(t->S->w->loop, &t->timer);
    mw__lua_wait(k, wait_cancelled, t);
    return lua_yield(L, 0);
}

/* --- the Lua methods -------------------------------------------------------- */

static mw_tcp_t *check(lua_State *L)
{
    return luaL_checkudata(L, 1, TCP_MT);
}

/* A second coroutine may not use a socket another one waits on. */
static int busy(lua_State *L, mw_tcp_t *t)
{
    if (!t->waiter)
        return 0;
    push_fail(L, "socket busy");
    return 1;
}

static int get_opt_bool(lua_State *L, int idx, const char *name, int dflt)
{
    lua_getfield(L, idx, name);
    int v = lua_isnil(L, -1) ? dflt : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

static const char *get_opt_str(lua_State *L, int idx, const char *name)
{
    lua_getfield(L, idx, name);
    if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "moonwire.tcp: option %s must be a string", name);
    const char *s = lua_tostring(L, -1);
    lua_pop(L, 1); /* the table keeps the string alive */
    return s;
}

static size_t get_opt_size(lua_State *L, int idx, const char *name, size_t dflt)
{
    lua_getfield(L, idx, name);
    size_t v = dflt;
    if (!lua_isnil(L, -1)) {
        lua_Number n = lua_tonumber(L, -1);
        if (!lua_isnumber(L, -1) || n < 1)
            luaL_error(L, "moonwire.tcp: option %s must be a number >= 1", name);
        v = (size_t)n;
    }
    lua_pop(L, 1);
    return v;
}

/* sock:connect(host, port [, opts]) -> 1 | nil, err
 * opts: tls, verify (default true), server_name, ca_file, pool, max_line,
 * max_receive. */
static int l_connect(lua_State *L)
{
    mw_tcp_t *t = check(L);
    const char *host = luaL_checkstring(L, 2);
    lua_Integer port = luaL_checkinteger(L, 3);
    luaL_argcheck(L, port > 0 && port < 65536, 3, "port must be 1..65535");
    luaL_argcheck(L, *host, 2, "empty host");
    int has_opts = !lua_isnoneornil(L, 4);
    if (has_opts)
        luaL_checktype(L, 4, LUA_TTABLE);
    mw_co_t *k = mw__lua_waiter(L, t->S, "moonwire.tcp: connect");
    if (busy(L, t))
        return 2;
    int tls = has_opts ? get_opt_bool(L, 4, "tls", 0) : 0;
    int verify = has_opts ? get_opt_bool(L, 4, "verify", 1) : 1;
    const char *server_name = has_opts ? get_opt_str(L, 4, "server_name") : NULL;
    const char *ca_file = has_opts ? get_opt_str(L, 4, "ca_file") : NULL;
    const char *pool = has_opts ? get_opt_str(L, 4, "pool") : NULL;
    size_t max_line = has_opts ? get_opt_size(L, 4, "max_line", TCP_MAX_LINE) : TCP_MAX_LINE;
    size_t max_receive =
        has_opts ? get_opt_size(L, 4, "max_receive", TCP_MAX_RECEIVE) : TCP_MAX_RECEIVE;

    tcp_close(t); /* connecting again drops the old connection */
    tcp_link(t);
    t->s.short_io = t->S->w->short_io;
    free(t->host);
    free(t->server_name);
    free(t->pool_key);
    t->host = xstrdup(host);
    t->server_name = server_name ? xstrdup(server_name) : NULL;
    t->tls = tls;
    t->verify = verify;
    t->max_line = max_line;
    t->max_receive = max_receive;
    t->reused = 0;
    t->gai_err = 0;
    if (pool) {
        t->pool_key = xstrdup(pool);
    } else {
        lua_pushfstring(L, "%s:%d", host, (int)port);
        if (tls)
            lua_pushfstring(L, ":tls:%s:%d:%s", server_name ? server_name : host, verify,
                            ca_file ? ca_file : "");
        else
            lua_pushliteral(L, "");
        lua_concat(L, 2);
        t->pool_key = xstrdup(lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    if (mw__opool_take(t->T->pool, t->pool_key, &t->s, &t->reused)) {
        t->state = ST_OPEN;
        lua_pushinteger(L, 1);
        return 1;
    }
    if (tls && ca_file && !(t->ctx = mw__osock_tls_ctx(ca_file, t->errbuf, sizeof t->errbuf)))
        return fail_closed(t, L, t->errbuf);
    /* IP literals parse here, at once; names go to the resolver thread. */
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    char portstr[8];
    snprintf(portstr, sizeof portstr, "%d", (int)port);
    t->state = ST_RESOLVING;
    if (getaddrinfo(host, portstr, &hints, &t->ai_list) != 0) {
        t->ai_list = NULL;
        t->rq = mw__resolve(t->T->resolver, host, (int)port, resolved, t);
    }
    return run(L, t, OP_CONNECT, k);
}

/* sock:send(data) -> bytes | nil, err; data: a string or an array of strings. */
static int l_send(lua_State *L)
{
    mw_tcp_t *t = check(L);
    if (lua_istable(L, 2)) {
        /* Joined here: one write for the pieces, as OpenResty does. */
        luaL_Buffer b;
        size_t n = lua_objlen(L, 2);
        luaL_buffinit(L, &b);
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, 2, (int)i);
            if (!lua_isstring(L, -1))
                luaL_error(L, "sock:send: item %d of the table is not a string", (int)i);
            luaL_addvalue(&b);
        }
        luaL_pushresult(&b);
        lua_replace(L, 2);
    }
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    mw_co_t *k = mw__lua_waiter(L, t->S, "moonwire.tcp: send");
    if (busy(L, t))
        return 2;
    if (t->state != ST_OPEN)
        return push_fail(L, "closed");
    /* Straight from the Lua string; only what the kernel refuses is copied
     * (the string may not outlive the yield). */
    size_t done = 0;
    while (done < len) {
        ssize_t n = mw__osock_write(&t->s, data + done, len - done);
        if (n == MW_OSOCK_AGAIN)
            break;
        if (n < 0)
            return fail_closed(t, L, t->s.err);
        done += (size_t)n;
    }
    t->wtotal = len;
    if (done == len) {
        lua_pushinteger(L, (lua_Integer)len);
        return 1;
    }
    t->wlen = len - done;
    t->wpos = 0;
    t->wbuf = mw__xmalloc(t->wlen);
    memcpy(t->wbuf, data + done, t->wlen);
    return run(L, t, OP_SEND, k);
}

/* sock:receive(pattern) -> data | nil, err, partial; pattern: "*l" (a line
 * without its \r\n; the default), "*a" (all until the peer closes), or n. */
static int l_receive(lua_State *L)
{
    mw_tcp_t *t = check(L);
    int mode = RECV_LINE;
    size_t want = 0;
    if (lua_type(L, 2) == LUA_TNUMBER) {
        lua_Number n = lua_tonumber(L, 2);
        luaL_argcheck(L, n >= 0, 2, "size must be >= 0");
        mode = RECV_BYTES;
        want = (size_t)n;
    } else if (!lua_isnoneornil(L, 2)) {
        const char *p = luaL_checkstring(L, 2);
        if (strcmp(p, "*l") == 0 || strcmp(p, "l") == 0)
            mode = RECV_LINE;
        else if (strcmp(p, "*a") == 0 || strcmp(p, "a") == 0)
            mode = RECV_ALL;
        else
            luaL_argerror(L, 2, "pattern must be \"*l\", \"*a\" or a number of bytes");
    }
    mw_co_t *k = mw__lua_waiter(L, t->S, "moonwire.tcp: receive");
    if (busy(L, t))
        return 2;
    if (t->state != ST_OPEN) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        lua_pushliteral(L, "");
        return 3;
    }
    if (mode == RECV_BYTES && want > t->max_receive)
        return push_fail(L, "too large");
    t->rmode = mode;
    t->rwant = want;
    return run(L, t, OP_RECEIVE, k);
}

static double check_ms(lua_State *L, int idx)
{
    lua_Number ms = luaL_checknumber(L, idx);
    luaL_argcheck(L, ms > 0 && ms == ms, idx, "timeout must be a number of milliseconds > 0");
    return ms / 1000.0;
}

/* sock:settimeout(ms): the same timeout for connect, send and each receive. */
static int l_settimeout(lua_State *L)
{
    mw_tcp_t *t = check(L);
    double s = check_ms(L, 2);
    t->timeout[T_CONNECT] = t->timeout[T_SEND] = t->timeout[T_READ] = s;
    return 0;
}

/* sock:settimeouts(connect_ms, send_ms, read_ms) */
static int l_settimeouts(lua_State *L)
{
    mw_tcp_t *t = check(L);
    for (int i = 0; i < 3; i++)
        t->timeout[i] = check_ms(L, 2 + i);
    return 0;
}

/* sock:close() -> 1 | nil, err */
static int l_close(lua_State *L)
{
    mw_tcp_t *t = check(L);
    if (busy(L, t))
        return 2;
    if (t->state != ST_OPEN)
        return push_fail(L, "closed");
    tcp_close(t);
    lua_pushinteger(L, 1);
    return 1;
}

/* sock:setkeepalive([idle_ms [, pool_size]]) -> 1 | nil, err: the
 * connection goes to the worker's pool for the next connect to the same
 * host, port and TLS settings (or the same opts.pool name). */
static int l_setkeepalive(lua_State *L)
{
    mw_tcp_t *t = check(L);
    double idle = lua_isnoneornil(L, 2) ? TCP_POOL_IDLE_MS / 1000.0 : check_ms(L, 2);
    lua_Integer size = luaL_optinteger(L, 3, TCP_POOL_SIZE);
    luaL_argcheck(L, size >= 1, 3, "pool size must be >= 1");
    if (busy(L, t))
        return 2;
    if (t->state != ST_OPEN)
        return push_fail(L, "closed");
    if (t->s.rend > t->s.rstart) {
        /* Bytes nobody read would be handed to the next user. */
        tcp_close(t);
        return push_fail(L, "unread data in buffer");
    }
    mw__opool_put(t->T->pool, t->pool_key, &t->s, t->reused, idle, (size_t)size);
    tcp_close(t);
    lua_pushinteger(L, 1);
    return 1;
}

/* sock:getreusedtimes() -> how many times this connection came from the pool */
static int l_getreusedtimes(lua_State *L)
{
    mw_tcp_t *t = check(L);
    if (t->state != ST_OPEN)
        return push_fail(L, "closed");
    lua_pushinteger(L, t->reused);
    return 1;
}

static int l_gc(lua_State *L)
{
    mw_tcp_t *t = check(L);
    tcp_close(t);
    tcp_unlink(t);
    free(t->host);
    free(t->server_name);
    free(t->pool_key);
    t->host = t->server_name = t->pool_key = NULL;
    return 0;
}

static int l_tostring(lua_State *L)
{
    mw_tcp_t *t = check(L);
    static const char *const states[] = {"new",       "resolving", "connecting",
                                         "handshake", "open",      "closed"};
    lua_pushfstring(L, "moonwire.tcp(%s%s%s)", states[t->state], t->host ? " " : "",
                    t->host ? t->host : "");
    return 1;
}

/* moonwire.core.tcp() -> sock. Making one is fine anywhere; its calls that
 * wait need a handler, the upgrade hook or a timer. */
static int l_tcp(lua_State *L)
{
    mw_lua_t *S = lua_touserdata(L, lua_upvalueindex(1));
    mw_tcp_t *t = lua_newuserdata(L, sizeof *t);
    memset(t, 0, sizeof *t);
    t->S = S;
    mw__osock_init(&t->s);
    t->self_ref = LUA_NOREF;
    t->state = ST_NEW;
    t->max_line = TCP_MAX_LINE;
    t->max_receive = TCP_MAX_RECEIVE;
    for (int i = 0; i < 3; i++)
        t->timeout[i] = TCP_TIMEOUT_MS / 1000.0;
    ev_init(&t->io, on_io);
    ev_init(&t->timer, on_timeout);
    luaL_getmetatable(L, TCP_MT);
    lua_setmetatable(L, -2);
    return 1;
}

void mw__tcp_register(lua_State *L, mw_lua_t *S)
{
    static const luaL_Reg methods[] = {{"connect", l_connect},
                                       {"send", l_send},
                                       {"receive", l_receive},
                                       {"settimeout", l_settimeout},
                                       {"settimeouts", l_settimeouts},
                                       {"close", l_close},
                                       {"setkeepalive", l_setkeepalive},
                                       {"getreusedtimes", l_getreusedtimes},
                                       {NULL, NULL}};
    mw__lua_class(L, S, TCP_MT, methods, l_tostring, l_gc, "tcp", l_tcp);
}

void mw__tcp_close_all(mw_lua_t *S)
{
    mw_tcp_state_t *T = S->tcp;
    if (!T)
        return;
    /* Sockets stay as userdata until lua_close collects them; cut them
     * loose from the loop and from T first. */
    while (T->live) {
        mw_tcp_t *t = T->live;
        if (t->waiter)
            end_wait(t);
        tcp_close(t);
        tcp_unlink(t);
        t->T = NULL;
    }
    mw__opool_free(T->pool);
    mw__resolver_free(T->resolver);
    if (T->ctx)
        SSL_CTX_free(T->ctx);
    free(T);
    S->tcp = NULL;
}
