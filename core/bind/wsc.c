/* C helpers for the Lua WebSocket client (lua/moonwire/websocket.lua): the
 * codec pieces the server's core already has (masked frame headers, masking
 * a word at a time, the Sec-WebSocket-Accept value, base64) and OpenSSL's
 * random bytes, exposed on moonwire.core so the client reuses them instead
 * of redoing them byte by byte in Lua. None of these touch a socket. */
#include <lauxlib.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#include "bind.h"
#include "ws_frame.h"
#include "ws_handshake.h"

/* core.ws_client_frame(opcode, payload [, fin]) -> one masked frame
 * (RFC 6455 5.3: a client masks every frame with a fresh random key). */
static int l_ws_client_frame(lua_State *L)
{
    lua_Integer op = luaL_checkinteger(L, 1);
    size_t len;
    const char *payload = luaL_checklstring(L, 2, &len);
    int fin = lua_isnoneornil(L, 3) ? 1 : lua_toboolean(L, 3);
    luaL_argcheck(L, op >= 0 && op <= 15, 1, "opcode must be 0..15");
    uint8_t mask[4];
    if (RAND_bytes(mask, sizeof mask) != 1)
        return luaL_error(L, "moonwire.websocket: no random bytes for the masking key");
    uint8_t hdr[MW_WS_MAX_HEADER];
    size_t hlen = mw__ws_header_masked(hdr, fin, 0, (int)op, len, mask);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, (const char *)hdr, hlen);
    /* Masked a buffer's worth at a time, in the buffer itself. */
    unsigned off = 0;
    for (size_t done = 0; done < len;) {
        char *p = luaL_prepbuffer(&b);
        size_t n = len - done < LUAL_BUFFERSIZE ? len - done : LUAL_BUFFERSIZE;
        memcpy(p, payload + done, n);
        off = mw__ws_mask((uint8_t *)p, n, mask, off);
        luaL_addsize(&b, n);
        done += n;
    }
    luaL_pushresult(&b);
    return 1;
}

/* core.random_base64(n) -> base64 of n random bytes (a Sec-WebSocket-Key). */
static int l_random_base64(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n > 0 && n <= 64, 1, "1..64 bytes");
    unsigned char raw[64];
    char out[4 * ((64 + 2) / 3) + 1];
    if (RAND_bytes(raw, (int)n) != 1)
        return luaL_error(L, "moonwire.websocket: no random bytes");
    lua_pushlstring(L, out, mw__base64_encode(raw, (size_t)n, out));
    return 1;
}

/* core.ws_accept(key) -> the Sec-WebSocket-Accept value for key. */
static int l_ws_accept(lua_State *L)
{
    size_t len;
    const char *key = luaL_checklstring(L, 1, &len);
    char out[29];
    mw__ws_accept_key(key, len, out);
    lua_pushstring(L, out);
    return 1;
}

void mw__wsc_register(lua_State *L)
{
    lua_pushcfunction(L, l_ws_client_frame);
    lua_setfield(L, -2, "ws_client_frame");
    lua_pushcfunction(L, l_random_base64);
    lua_setfield(L, -2, "random_base64");
    lua_pushcfunction(L, l_ws_accept);
    lua_setfield(L, -2, "ws_accept");
}
