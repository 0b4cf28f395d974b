/* The server side of the WebSocket opening handshake (RFC 6455 4.2): the
 * checks on the client's upgrade request, Sec-WebSocket-Accept, and the
 * base64 codec both of them need.
 *
 * The checks run in an order chosen so that each refusal carries the most
 * useful status: 405 before anything else (the resource exists, the method
 * is wrong), header duplicates next (a request that says two things is
 * malformed whatever it says), then 426 for a client that did not ask for
 * WebSocket version 13, and 400 for the key last, since a client speaking
 * another version may well use another key format. */
#include "ws_handshake.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

/* RFC 6455 1.3: the GUID appended to the key before hashing. */
static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/* RFC 6455 4.2.1 item 5: the key is 16 random bytes, base64-encoded. */
#define WS_KEY_BYTES 16
#define WS_KEY_CHARS 24

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Returns the 6-bit value of a base64 character, or -1. */
static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

long mw__base64_decode(const char *src, size_t len, unsigned char *out, size_t outcap)
{
    size_t o = 0;

    /* RFC 4648 4: padded base64 always comes in groups of four characters. */
    if (len % 4 != 0)
        return -1;
    for (size_t i = 0; i < len; i += 4) {
        const unsigned char *q = (const unsigned char *)src + i;
        int v[4], pad = 0;
        unsigned long group;

        for (int k = 0; k < 4; k++) {
            /* '=' may only end the last group, as its last one or two
             * characters; anything after a '=' is refused. */
            if (q[k] == '=' && i + 4 == len && k >= 2) {
                pad++;
                v[k] = 0;
                continue;
            }
            if (pad || (v[k] = b64_value(q[k])) < 0)
                return -1;
        }
        group = (unsigned long)v[0] << 18 | (unsigned long)v[1] << 12 | (unsigned long)v[2] << 6 |
                (unsigned long)v[3];
        /* RFC 4648 3.5: the bits a padded group leaves over must be zero;
         * refusing them keeps one encoding per byte string. */
        if ((pad == 1 && (group & 0xFF)) || (pad == 2 && (group & 0xFFFF)))
            return -1;
        if (outcap - o < (size_t)(3 - pad))
            return -1;
        out[o++] = (unsigned char)(group >> 16);
        if (pad < 2)
            out[o++] = (unsigned char)(group >> 8);
        if (pad < 1)
            out[o++] = (unsigned char)group;
    }
    return (long)o;
}

size_t mw__base64_encode(const unsigned char *src, size_t len, char *out)
{
    size_t o = 0, i = 0;

    for (; len - i >= 3; i += 3) {
        unsigned long g = (unsigned long)src[i] << 16 | (unsigned long)src[i + 1] << 8 | src[i + 2];

        out[o++] = b64_alphabet[(g >> 18) & 63];
        out[o++] = b64_alphabet[(g >> 12) & 63];
        out[o++] = b64_alphabet[(g >> 6) & 63];
        out[o++] = b64_alphabet[g & 63];
    }
    if (len - i == 1) {
        unsigned long g = (unsigned long)src[i] << 16;

        out[o++] = b64_alphabet[(g >> 18) & 63];
        out[o++] = b64_alphabet[(g >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (len - i == 2) {
        unsigned long g = (unsigned long)src[i] << 16 | (unsigned long)src[i + 1] << 8;

        out[o++] = b64_alphabet[(g >> 18) & 63];
        out[o++] = b64_alphabet[(g >> 12) & 63];
        out[o++] = b64_alphabet[(g >> 6) & 63];
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

void mw__ws_accept_key(const char *key, size_t keylen, char out[29])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();

    /* Allocation failure aborts (STYLE.md rule 3); any other failure of a
     * SHA-1 over memory means a broken crypto library, not a bad request. */
    if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) != 1 ||
        EVP_DigestUpdate(ctx, key, keylen) != 1 ||
        EVP_DigestUpdate(ctx, ws_guid, sizeof ws_guid - 1) != 1 ||
        EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 20) {
        fprintf(stderr, "moonwire: SHA-1 for Sec-WebSocket-Accept failed\n");
        abort();
    }
    EVP_MD_CTX_free(ctx);
    /* RFC 6455 4.2.2 item 5.4: base64 of the 20-byte digest is 28 characters. */
    mw__base64_encode(md, 20, out);
}

/* Counts the fields named name and, if there is exactly one, returns it. */
static const mw_http_header_t *single(const mw_http_request_t *req, const char *name, size_t *count)
{
    *count = mw__http_header_count(req, name);
    return *count == 1 ? mw__http_header_find(req, name) : NULL;
}

/* True when some Connection field lists the "upgrade" token. Unlike the
 * other fields checked here, Connection may legitimately be split over
 * several field lines (RFC 9110 5.3), so every one of them is searched. */
static int connection_has_upgrade(const mw_http_request_t *req)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (mw__slice_ieq(req->headers[i].name, "connection") &&
            mw__http_list_has(req->headers[i].value, "upgrade"))
            return 1;
    return 0;
}

int mw__ws_handshake_check(const mw_http_request_t *req, mw_slice_t *key, const char **why)
{
    const mw_http_header_t *upgrade, *version, *wskey;
    size_t nhost, nupgrade, nversion, nkey;
    unsigned char raw[WS_KEY_BYTES + 2];

    /* RFC 6455 4.2.1 item 1: "An HTTP/1.1 or higher GET request". */
    if (req->method.n != 3 || memcmp(req->method.p, "GET", 3) != 0) {
        *why = "WebSocket upgrade needs GET";
        return 405;
    }
    if (req->version_minor < 1) {
        *why = "WebSocket upgrade needs HTTP/1.1";
        return 400;
    }

    /* RFC 6455 4.2.1 items 2-6 each name one field; two copies of any of
     * them leave it unclear which one a proxy acted on -> 400. */
    single(req, "host", &nhost);
    upgrade = single(req, "upgrade", &nupgrade);
    version = single(req, "sec-websocket-version", &nversion);
    wskey = single(req, "sec-websocket-key", &nkey);
    if (nhost > 1 || nupgrade > 1 || nversion > 1 || nkey > 1) {
        *why = "duplicate WebSocket handshake header";
        return 400;
    }
    /* RFC 6455 4.2.1 item 2. */
    if (nhost == 0) {
        *why = "missing Host header";
        return 400;
    }

    /* RFC 6455 4.2.1 items 3-4; a request that does not ask to switch to
     * websocket gets 426 with "Upgrade: websocket" (RFC 9110 15.5.22). */
    if (upgrade == NULL || !mw__http_list_has(upgrade->value, "websocket")) {
        *why = "Upgrade header does not name websocket";
        return 426;
    }
    if (!connection_has_upgrade(req)) {
        *why = "Connection header does not name upgrade";
        return 426;
    }

    /* RFC 6455 4.2.1 item 6 and 4.4: any other version gets 426 with the
     * versions we speak in Sec-WebSocket-Version. */
    if (version == NULL || !mw__slice_ieq(version->value, "13")) {
        *why = "Sec-WebSocket-Version is not 13";
        return 426;
    }

    /* RFC 6455 4.2.1 item 5: base64 of exactly 16 bytes, i.e. 24 characters
     * ending in "==". raw has room for more so that a longer decoding is
     * told apart from a short buffer. */
    if (wskey == NULL) {
        *why = "missing Sec-WebSocket-Key";
        return 400;
    }
    if (wskey->value.n != WS_KEY_CHARS ||
        mw__base64_decode(wskey->value.p, wskey->value.n, raw, sizeof raw) != WS_KEY_BYTES) {
        *why = "Sec-WebSocket-Key is not base64 of 16 bytes";
        return 400;
    }
    *key = wskey->value;
    *why = NULL;
    return 0;
}

int mw__ws_handshake_wants_version(const mw_http_request_t *req)
{
    const mw_http_header_t *version;
    size_t n;

    /* Missing, unsupported, or duplicated (so not unambiguously 13): the
     * client learns which version we speak (RFC 6455 4.4). */
    version = single(req, "sec-websocket-version", &n);
    return version == NULL || !mw__slice_ieq(version->value, "13");
}
