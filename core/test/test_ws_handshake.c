/* Tests for core/src/ws_handshake.c: the RFC 6455 accept-key vector, base64
 * against RFC 4648 vectors and malformed input, and every upgrade-request
 * check with the status it must produce. */
#include <stdlib.h>
#include <string.h>

#include "mwtest.h"
#include "ws_handshake.h"

/* ---- accept key and base64 -------------------------------------------- */

static void test_accept_key(void)
{
    char out[29];

    /* RFC 6455 1.3. */
    memset(out, 'X', sizeof out);
    mw__ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, out);
    CHECK(strcmp(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0);
    /* Only keylen bytes are hashed. */
    mw__ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==trailing", 24, out);
    CHECK(strcmp(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0);
    /* A second vector, computed independently with
     * `printf %s KEY258EAFA5-... | openssl sha1 -binary | base64`. */
    mw__ws_accept_key("x3JJHMbDL1EzLkh9GBhXDw==", 24, out);
    CHECK(strcmp(out, "HSmrc0sMlYUkAGmm5OPpG2HaGWk=") == 0);
}

static void test_base64_encode(void)
{
    /* RFC 4648 10. */
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const enc[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                      "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    char out[32];

    for (size_t i = 0; i < 7; i++) {
        size_t n = mw__base64_encode((const unsigned char *)plain[i], strlen(plain[i]), out);

        CHECK_EQ(n, strlen(enc[i]));
        CHECK(strcmp(out, enc[i]) == 0);
    }
    /* Every 6-bit value appears in the alphabet in order. */
    {
        unsigned char all[48];
        char b[65];

        for (int i = 0; i < 16; i++) {
            unsigned v = (unsigned)(4 * i);

            all[3 * i] = (unsigned char)(v << 2 | (v + 1) >> 4);
            all[3 * i + 1] = (unsigned char)((v + 1) << 4 | (v + 2) >> 2);
            all[3 * i + 2] = (unsigned char)((v + 2) << 6 | (v + 3));
        }
        CHECK_EQ(mw__base64_encode(all, sizeof all, b), 64);
        CHECK(strcmp(b, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/") == 0);
    }
}

static long dec(const char *s, unsigned char *out, size_t cap)
{
    return mw__base64_decode(s, strlen(s), out, cap);
}

static void test_base64_decode(void)
{
    unsigned char out[64];

    CHECK_EQ(dec("", out, sizeof out), 0);
    CHECK_EQ(dec("Zg==", out, sizeof out), 1);
    CHECK_MEM(out, "f", 1);
    CHECK_EQ(dec("Zm8=", out, sizeof out), 2);
    CHECK_MEM(out, "fo", 2);
    CHECK_EQ(dec("Zm9vYmFy", out, sizeof out), 6);
    CHECK_MEM(out, "foobar", 6);
    CHECK_EQ(dec("dGhlIHNhbXBsZSBub25jZQ==", out, sizeof out), 16);
    CHECK_MEM(out, "the sample nonce", 16);
    CHECK_EQ(dec("+/+/", out, sizeof out), 3);
    CHECK_MEM(out, "\xfb\xff\xbf", 3);

    /* Malformed. */
    CHECK_EQ(dec("Zg=", out, sizeof out), -1);       /* not a multiple of 4 */
    CHECK_EQ(dec("Zg", out, sizeof out), -1);        /* unpadded */
    CHECK_EQ(dec("Z===", out, sizeof out), -1);      /* too much padding */
    CHECK_EQ(dec("====", out, sizeof out), -1);      /* only padding */
    CHECK_EQ(dec("Zg=a", out, sizeof out), -1);      /* data after padding */
    CHECK_EQ(dec("Zg==Zg==", out, sizeof out), -1);  /* padding mid-string */
    CHECK_EQ(dec("Zm9v Yg==", out, sizeof out), -1); /* whitespace */
    CHECK_EQ(dec("Zm9-", out, sizeof out), -1);      /* base64url alphabet */
    CHECK_EQ(dec("Zm9_", out, sizeof out), -1);
    CHECK_EQ(dec("Zm\x80v", out, sizeof out), -1);
    /* RFC 4648 3.5: non-zero bits under the padding are refused. */
    CHECK_EQ(dec("Zh==", out, sizeof out), -1);
    CHECK_EQ(dec("Zm9=", out, sizeof out), -1);
    CHECK_EQ(dec("dGhlIHNhbXBsZSBub25jZR==", out, sizeof out), -1);
    /* An embedded NUL is data, not a terminator. */
    CHECK_EQ(mw__base64_decode("Zg==\0\0\0\0", 8, out, sizeof out), -1);

    /* Output capacity: exact fits, one short does not. */
    CHECK_EQ(dec("Zm9vYmFy", out, 6), 6);
    CHECK_EQ(dec("Zm9vYmFy", out, 5), -1);
    CHECK_EQ(dec("Zm9vYg==", out, 4), 4);
    CHECK_EQ(dec("Zm9vYg==", out, 3), -1);
    CHECK_EQ(dec("", NULL, 0), 0);

    /* Round trip for every length 0..48 and several byte patterns. */
    for (size_t len = 0; len <= 48; len++)
        for (unsigned pat = 0; pat < 4; pat++) {
            unsigned char in[48], back[48];
            char e[80];
            size_t n;

            for (size_t i = 0; i < len; i++)
                in[i] = (unsigned char)(pat == 0 ? 0 : pat == 1 ? 0xFF : i * 37 + pat);
            n = mw__base64_encode(in, len, e);
            CHECK_EQ(n, 4 * ((len + 2) / 3));
            CHECK_EQ(strlen(e), n);
            CHECK_EQ(mw__base64_decode(e, n, back, len), (long)len);
            CHECK_MEM(back, in, len);
        }
}

/* ---- the upgrade request ---------------------------------------------- */

typedef struct {
    int r;
    int status;
    const char *why;
    mw_http_request_t req;
    mw_http_header_t h[32];
} req_t;

static void parse(const char *text, req_t *out)
{
    mw_http_parser_t st = {0};

    memset(out, 0, sizeof *out);
    out->req.headers = out->h;
    out->req.max_headers = 32;
    out->r =
        mw__http_parse_request(&st, text, strlen(text), 8192, &out->req, &out->status, &out->why);
}

/* RFC 6455 1.2's client handshake. */
#define GOOD_KEY "dGhlIHNhbXBsZSBub25jZQ=="
static const char rfc_request[] = "GET /chat HTTP/1.1\r\n"
                                  "Host: server.example.com\r\n"
                                  "Upgrade: websocket\r\n"
                                  "Connection: Upgrade\r\n"
                                  "Sec-WebSocket-Key: " GOOD_KEY "\r\n"
                                  "Origin: http://example.com\r\n"
                                  "Sec-WebSocket-Protocol: chat, superchat\r\n"
                                  "Sec-WebSocket-Version: 13\r\n"
                                  "\r\n";

static void test_valid_upgrade(void)
{
    req_t p;
    mw_slice_t key = {NULL, 0};
    const char *why = "unset";
    char accept[29];

    parse(rfc_request, &p);
    CHECK(p.r > 0);
    CHECK_EQ(mw__ws_handshake_check(&p.req, &key, &why), 0);
    CHECK_EQ(key.n, 24);
    CHECK(key.p != NULL && memcmp(key.p, GOOD_KEY, 24) == 0);
    CHECK(key.p > rfc_request && key.p < rfc_request + sizeof rfc_request);
    CHECK(!mw__ws_handshake_wants_version(&p.req));
    mw__ws_accept_key(key.p, key.n, accept);
    CHECK(strcmp(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0);

    /* Variants real clients send: token lists, case, several Connection
     * lines, extra whitespace. */
    parse("GET / HTTP/1.1\r\nhost: a\r\nupgrade: WebSocket\r\n"
          "connection: keep-alive\r\nCONNECTION: Upgrade\r\n"
          "sec-websocket-key:   " GOOD_KEY "  \r\nsec-websocket-version: 13\r\n\r\n",
          &p);
    CHECK(p.r > 0);
    CHECK_EQ(mw__ws_handshake_check(&p.req, &key, &why), 0);
    CHECK_EQ(key.n, 24);
    parse("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: foo, websocket\r\n"
          "Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"
          "Sec-WebSocket-Version: 13\r\n\r\n",
          &p);
    CHECK_EQ(mw__ws_handshake_check(&p.req, &key, &why), 0);
}

/* Builds a request from the RFC one with one line replaced, added or
 * removed: `drop` names a header to leave out, `add` is extra lines. */
static void variant(req_t *p, const char *method_line, const char *drop, const char *add)
{
    static char buf[2048];
    const char *lines[] = {"Host: server.example.com\r\n", "Upgrade: websocket\r\n",
                           "Connection: Upgrade\r\n", "Sec-WebSocket-Key: " GOOD_KEY "\r\n",
                           "Sec-WebSocket-Version: 13\r\n"};

    strcpy(buf, method_line);
    for (size_t i = 0; i < 5; i++)
        if (!drop || strncmp(lines[i], drop, strlen(drop)) != 0)
            strcat(buf, lines[i]);
    strcat(buf, add ? add : "");
    strcat(buf, "\r\n");
    parse(buf, p);
}

struct bad_upgrade {
    const char *line;
    const char *drop;
    const char *add;
    int status;
    int wants_version;
};

static const struct bad_upgrade bad_upgrades[] = {
    /* RFC 6455 4.2.1 item 1. */
    {"POST / HTTP/1.1\r\n", NULL, NULL, 405, 0},
    {"HEAD / HTTP/1.1\r\n", NULL, NULL, 405, 0},
    {"get / HTTP/1.1\r\n", NULL, NULL, 405, 0},
    {"GET / HTTP/1.0\r\n", NULL, NULL, 400, 0},
    /* Duplicates of the single-valued fields. */
    {"GET / HTTP/1.1\r\n", NULL, "Upgrade: websocket\r\n", 400, 0},
    {"GET / HTTP/1.1\r\n", NULL, "Sec-WebSocket-Key: " GOOD_KEY "\r\n", 400, 0},
    {"GET / HTTP/1.1\r\n", NULL, "sec-websocket-version: 13\r\n", 400, 1},
    /* Upgrade and Connection -> 426. */
    {"GET / HTTP/1.1\r\n", "Upgrade", NULL, 426, 0},
    {"GET / HTTP/1.1\r\n", "Upgrade", "Upgrade: h2c\r\n", 426, 0},
    {"GET / HTTP/1.1\r\n", "Upgrade", "Upgrade: websocketx\r\n", 426, 0},
    {"GET / HTTP/1.1\r\n", "Connection", NULL, 426, 0},
    {"GET / HTTP/1.1\r\n", "Connection", "Connection: keep-alive\r\n", 426, 0},
    {"GET / HTTP/1.1\r\n", "Connection", "Connection: upgraded\r\n", 426, 0},
    /* Version -> 426 advertising 13. */
    {"GET / HTTP/1.1\r\n", "Sec-WebSocket-Version", NULL, 426, 1},
    {"GET / HTTP/1.1\r\n", "Sec-WebSocket-Version", "Sec-WebSocket-Version: 8\r\n", 426, 1},
    {"GET / HTTP/1.1\r\n", "Sec-WebSocket-Version", "Sec-WebSocket-Version: 13, 8\r\n", 426, 1},
    {"GET / HTTP/1.1\r\n", "Sec-WebSocket-Version", "Sec-WebSocket-Version: 130\r\n", 426, 1},
    /* Key -> 400. */
    {"GET / HTTP/1.1\r\n", "Sec-WebSocket-Key", NULL, 400, 0},
    {"GET / HTTP/1.1\r\n", "Sec-WebSocket-Key", "Sec-WebSocket-Key: \r\n", 400, 0},
    {"GET / HTTP/1.1\r\n", "Sec-WebSocket-Key", "Sec-WebSocket-Key: Zm9vYmFy\r\n", 400, 0},
    {"GET / HTTP/1.1\r\n", "Sec-WebSocket-Key", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n",
     400, 0},
    {"GET / HTTP/1.1\r\n", "Sec-WebSocket-Key",
     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==AAAA\r\n", 400, 0},
    {"GET / HTTP/1.1\r\n", "Sec-WebSocket-Key", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZSE=\r\n",
     400, 0}, /* 17 bytes */
    {"GET / HTTP/1.1\r\n", "Sec-WebSocket-Key", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j!Q==\r\n",
     400, 0},
    {"GET / HTTP/1.1\r\n", "Sec-WebSocket-Key", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR==\r\n",
     400, 0},
};

static void test_bad_upgrades(void)
{
    for (size_t i = 0; i < sizeof bad_upgrades / sizeof bad_upgrades[0]; i++) {
        const struct bad_upgrade *t = &bad_upgrades[i];
        req_t p;
        mw_slice_t key = {NULL, 0};
        const char *why = NULL;
        int r;

        variant(&p, t->line, t->drop, t->add);
        CHECK(p.r > 0);
        r = mw__ws_handshake_check(&p.req, &key, &why);
        if (r != t->status)
            fprintf(stderr, "  case %zu: %d (%s), want %d\n", i, r, why ? why : "", t->status);
        CHECK_EQ(r, t->status);
        CHECK(why != NULL && why[0] != '\0');
        CHECK_EQ(mw__ws_handshake_wants_version(&p.req), t->wants_version);
    }
}

/* A request the HTTP parser would refuse can still be built by hand; the
 * check must not rely on the parser for Host. */
static void test_check_without_parser(void)
{
    mw_http_header_t h[4] = {
        {{"Upgrade", 7}, {"websocket", 9}},
        {{"Connection", 10}, {"Upgrade", 7}},
        {{"Sec-WebSocket-Key", 17}, {GOOD_KEY, 24}},
        {{"Sec-WebSocket-Version", 21}, {"13", 2}},
    };
    mw_http_request_t req;
    mw_slice_t key;
    const char *why = NULL;

    memset(&req, 0, sizeof req);
    req.method.p = "GET";
    req.method.n = 3;
    req.version_minor = 1;
    req.headers = h;
    req.max_headers = 4;
    req.nheaders = 4;
    CHECK_EQ(mw__ws_handshake_check(&req, &key, &why), 400);
    h[0].name.p = "Host";
    h[0].name.n = 4;
    CHECK_EQ(mw__ws_handshake_check(&req, &key, &why), 426);
}

int main(void)
{
    RUN(test_accept_key);
    RUN(test_base64_encode);
    RUN(test_base64_decode);
    RUN(test_valid_upgrade);
    RUN(test_bad_upgrades);
    RUN(test_check_without_parser);
    return mwt_summary();
}
