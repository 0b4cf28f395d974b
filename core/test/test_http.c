/* Tests for core/src/http.c: request heads parsed whole and one byte at a
 * time, every refusal and its status, the head and header-count limits,
 * token lists, header lookup and reason phrases. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "mwtest.h"

#define MAX_HEADERS 16

typedef struct {
    const char *base; /* the buffer the parser saw */
    int r;
    int status;
    const char *why;
    mw_http_request_t req;
    mw_http_header_t headers[MAX_HEADERS];
} parsed_t;

/* Each call parses a heap block of exactly the bytes it may read, so under
 * ASan a read past the end is caught. The block of the latest call stays
 * alive for the checks on its slices. */
static char *copy_of(const char *buf, size_t len)
{
    static char *last;

    free(last);
    last = malloc(len ? len : 1);
    memcpy(last, buf, len);
    return last;
}

/* Parses buf[0..len) in one call with a fresh parser. */
static void parse_whole(const char *buf, size_t len, size_t max_head, size_t max_headers,
                        parsed_t *out)
{
    mw_http_parser_t st = {0};

    memset(out, 0, sizeof *out);
    out->req.headers = out->headers;
    out->req.max_headers = max_headers;
    out->base = copy_of(buf, len);
    out->r =
        mw__http_parse_request(&st, out->base, len, max_head, &out->req, &out->status, &out->why);
}

/* Delivers buf one byte at a time into a growing buffer, as a connection
 * reading one byte per call would; stops at the first non-zero result.
 * Checks that each incomplete call remembered how far it scanned. */
static void parse_bytewise(const char *buf, size_t len, size_t max_head, size_t max_headers,
                           parsed_t *out, size_t *calls)
{
    mw_http_parser_t st = {0};

    memset(out, 0, sizeof *out);
    out->req.headers = out->headers;
    out->req.max_headers = max_headers;
    *calls = 0;
    for (size_t n = 1; n <= len; n++) {
        (*calls)++;
        out->base = copy_of(buf, n);
        out->r =
            mw__http_parse_request(&st, out->base, n, max_head, &out->req, &out->status, &out->why);
        if (out->r != 0)
            return;
        CHECK_EQ(st.scanned, n);
    }
}

static int slice_is(mw_slice_t s, const char *str)
{
    return s.n == strlen(str) && memcmp(s.p, str, s.n) == 0;
}

#define LIT(s) s, sizeof(s) - 1

static const char simple[] = "GET /chat?room=1&x=%20 HTTP/1.1\r\n"
                             "Host: example.com\r\n"
                             "Upgrade:websocket\r\n"
                             "connection: \t keep-alive, Upgrade \t \r\n"
                             "X-Empty:\r\n"
                             "X-Obs: caf\xc3\xa9\tx\r\n"
                             "\r\n"
                             "body bytes that are not part of the head";

static void check_simple(const parsed_t *p)
{
    size_t head = strstr(simple, "\r\n\r\n") - simple + 4;

    CHECK_EQ(p->r, (int)head);
    CHECK_EQ(p->req.head_len, head);
    CHECK(slice_is(p->req.method, "GET"));
    CHECK(slice_is(p->req.target, "/chat?room=1&x=%20"));
    CHECK(slice_is(p->req.path, "/chat"));
    CHECK(slice_is(p->req.query, "room=1&x=%20"));
    CHECK_EQ(p->req.version_minor, 1);
    CHECK_EQ(p->req.nheaders, 5);
    CHECK(slice_is(p->headers[0].name, "Host"));
    CHECK(slice_is(p->headers[0].value, "example.com"));
    CHECK(slice_is(p->headers[1].name, "Upgrade"));
    CHECK(slice_is(p->headers[1].value, "websocket"));
    CHECK(slice_is(p->headers[2].name, "connection"));
    CHECK(slice_is(p->headers[2].value, "keep-alive, Upgrade"));
    CHECK(slice_is(p->headers[3].name, "X-Empty"));
    CHECK_EQ(p->headers[3].value.n, 0);
    CHECK(slice_is(p->headers[4].value, "caf\xc3\xa9\tx"));
    /* Slices borrow the caller's buffer. */
    CHECK(p->req.method.p == p->base);
}

static void test_simple(void)
{
    parsed_t p;

    parse_whole(simple, sizeof simple - 1, 8192, MAX_HEADERS, &p);
    check_simple(&p);
}

/* One byte at a time: incomplete until the last byte of the head, then the
 * same result as a whole-buffer parse. */
static void test_bytewise(void)
{
    parsed_t p;
    size_t calls, head = strstr(simple, "\r\n\r\n") - simple + 4;

    parse_bytewise(simple, sizeof simple - 1, 8192, MAX_HEADERS, &p, &calls);
    CHECK_EQ(calls, head);
    check_simple(&p);

    /* Leading empty lines (RFC 9112 2.2) are skipped and count in the head. */
    static const char lead[] = "\r\n\r\n\r\nGET / HTTP/1.0\r\n\r\n";
    parse_bytewise(LIT(lead), 8192, MAX_HEADERS, &p, &calls);
    CHECK_EQ(p.r, (int)sizeof lead - 1);
    CHECK(slice_is(p.req.method, "GET"));
    CHECK(slice_is(p.req.target, "/"));
    CHECK_EQ(p.req.version_minor, 0);
    CHECK_EQ(p.req.nheaders, 0);
    parse_whole(LIT(lead), 8192, MAX_HEADERS, &p);
    CHECK_EQ(p.r, (int)sizeof lead - 1);

    /* Only empty lines: never a head, until the limit. */
    static const char blank[] = "\r\n\r\n\r\n\r\n";
    parse_whole(LIT(blank), 8192, MAX_HEADERS, &p);
    CHECK_EQ(p.r, 0);
    parse_whole(LIT(blank), 6, MAX_HEADERS, &p);
    CHECK(p.r < 0);
    CHECK_EQ(p.status, 431);
}

/* A scanner that forgot its position would still pass the tests above, so
 * check that resuming looks at new bytes only: bytes already scanned are
 * not looked at again (a NUL planted there after scanning goes unseen). */
static void test_resumes(void)
{
    char buf[64] = "GET / HTTP/1.0\r\nA: b";
    mw_http_parser_t st = {0};
    mw_http_header_t h[4];
    mw_http_request_t req = {.headers = h, .max_headers = 4};
    int status = 0;
    const char *why = NULL;
    size_t n = strlen(buf);

    CHECK_EQ(mw__http_parse_request(&st, buf, n, 8192, &req, &status, &why), 0);
    CHECK_EQ(st.scanned, n);
    buf[0] = '\0'; /* would be refused if scanned again */
    memcpy(buf + n, "\r\n\r", 3);
    CHECK_EQ(mw__http_parse_request(&st, buf, n + 3, 8192, &req, &status, &why), 0);
    CHECK_EQ(st.scanned, n + 3);
}

struct bad_request {
    const char *text;
    size_t len;
    int status;
};
#define BAD(s, status)           \
    {                            \
        s, sizeof(s) - 1, status \
    }

static const struct bad_request bad_requests[] = {
    /* NUL, bare CR, bare LF. */
    BAD("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", 400),
    BAD("GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\rHost: a\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\nHost: a\n\n", 400),
    BAD("GET / HTTP/1.1\r\nHost: a\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\nHost: a\r\n\n", 400),
    BAD("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    /* Obsolete line folding, and whitespace before the first field. */
    BAD("GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\tc\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
    /* Header names. */
    BAD("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\nHost: a\r\nX@Y: b\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\nHost: a\r\nX\xc3\xa9: b\r\n\r\n", 400),
    /* Header values: controls other than HTAB, and DEL. */
    BAD("GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\nHost: a\x7f\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\nHost: a\r\nX: \x1b[31m\r\n\r\n", 400),
    /* Versions: other HTTP/x.y -> 505, anything malformed -> 400. */
    BAD("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    BAD("GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505),
    BAD("GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505),
    BAD("GET / HTTP/3.1\r\nHost: a\r\n\r\n", 505),
    BAD("GET / http/1.1\r\nHost: a\r\n\r\n", 400),
    BAD("GET / HTTP/1\r\nHost: a\r\n\r\n", 400),
    BAD("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400),
    BAD("GET / HTTP/11.1\r\nHost: a\r\n\r\n", 400),
    BAD("GET / HTTP/1.x\r\nHost: a\r\n\r\n", 400),
    BAD("GET / FOO/1.1\r\nHost: a\r\n\r\n", 400),
    BAD("GET /\r\nHost: a\r\n\r\n", 400),
    BAD("GET\r\nHost: a\r\n\r\n", 400),
    /* Request line shape and method. */
    BAD("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    BAD("GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    BAD(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    BAD("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    BAD("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    /* Targets: origin-form only, "*" only for OPTIONS, visible ASCII only. */
    BAD("GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    BAD("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    BAD("GET chat HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    BAD("GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    BAD("options * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    BAD("GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    BAD("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    BAD("GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    BAD("GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    /* Host (RFC 9112 3.2). */
    BAD("GET / HTTP/1.1\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400),
    BAD("GET / HTTP/1.0\r\nHost: a\r\nHOST: a\r\n\r\n", 400),
    /* Framing (RFC 9112 6). */
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: "
        "chunked\r\n\r\n",
        501),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,\r\n\r\n", 400),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", 400),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        400),
    BAD("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", 400),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1234567890123456789\r\n\r\n", 400),
};

static void test_rejections(void)
{
    for (size_t i = 0; i < sizeof bad_requests / sizeof bad_requests[0]; i++) {
        const struct bad_request *t = &bad_requests[i];
        parsed_t whole, bytewise;
        size_t calls;

        parse_whole(t->text, t->len, 8192, MAX_HEADERS, &whole);
        if (!(whole.r < 0 && whole.status == t->status))
            fprintf(stderr, "  request %zu: r=%d status=%d, want %d\n", i, whole.r, whole.status,
                    t->status);
        CHECK(whole.r < 0);
        CHECK_EQ(whole.status, t->status);
        CHECK(whole.why != NULL && whole.why[0] != '\0');
        /* Delivery in single bytes reaches the same verdict. */
        parse_bytewise(t->text, t->len, 8192, MAX_HEADERS, &bytewise, &calls);
        CHECK(bytewise.r < 0);
        CHECK_EQ(bytewise.status, t->status);
    }
}

/* Bytes that can never be part of a head are refused on arrival, without
 * waiting for a terminator that a broken client may never send. */
static void test_early_refusal(void)
{
    static const struct bad_request early[] = {
        BAD("GET / HTTP/1.1\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\rX", 400),
        BAD("GET / HTTP/1.1\r\nHo\0", 400),
    };

    for (size_t i = 0; i < sizeof early / sizeof early[0]; i++) {
        parsed_t p;
        size_t calls;

        parse_bytewise(early[i].text, early[i].len, 8192, MAX_HEADERS, &p, &calls);
        CHECK(p.r < 0);
        CHECK_EQ(p.status, 400);
        CHECK_EQ(calls, early[i].len);
    }
}

/* Requests at the edges of what is accepted. */
static void test_accepts(void)
{
    parsed_t p;

    parse_whole(LIT("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), 8192, MAX_HEADERS, &p);
    CHECK(p.r > 0);
    CHECK(slice_is(p.req.target, "*"));
    CHECK(slice_is(p.req.path, "*"));
    CHECK_EQ(p.req.query.n, 0);

    /* HTTP/1.0 needs no Host; a bare '?' gives an empty query. */
    parse_whole(LIT("HEAD /x? HTTP/1.0\r\n\r\n"), 8192, MAX_HEADERS, &p);
    CHECK(p.r > 0);
    CHECK(slice_is(p.req.path, "/x"));
    CHECK_EQ(p.req.query.n, 0);
    CHECK_EQ(p.req.version_minor, 0);

    /* Only the first '?' splits. */
    parse_whole(LIT("GET /a?b?c HTTP/1.1\r\nHost: h\r\n\r\n"), 8192, MAX_HEADERS, &p);
    CHECK(slice_is(p.req.path, "/a"));
    CHECK(slice_is(p.req.query, "b?c"));

    /* Methods are any token; names use the whole tchar set. */
    parse_whole(LIT("M-SEARCH /x HTTP/1.1\r\nHost: h\r\n"
                    "!#$%&'*+-.^_`|~09azAZ: v\r\n\r\n"),
                8192, MAX_HEADERS, &p);
    CHECK(p.r > 0);
    CHECK(slice_is(p.req.method, "M-SEARCH"));
    CHECK(slice_is(p.headers[1].name, "!#$%&'*+-.^_`|~09azAZ"));

    /* Equal Content-Length fields are the same framing; a value of only
     * whitespace is empty; 18 digits are accepted. */
    parse_whole(LIT("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                    "content-length: 5\r\nX:  \t \r\n\r\n"),
                8192, MAX_HEADERS, &p);
    CHECK(p.r > 0);
    CHECK_EQ(p.headers[3].value.n, 0);
    parse_whole(LIT("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 123456789012345678\r\n\r\n"),
                8192, MAX_HEADERS, &p);
    CHECK(p.r > 0);

    /* Only the head is consumed: a pipelined second request is left over. */
    static const char two[] =
        "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n";
    parse_whole(LIT(two), 8192, MAX_HEADERS, &p);
    CHECK_EQ(p.r, (int)(sizeof two - 1) / 2);
    CHECK(slice_is(p.req.target, "/1"));
}

static void test_limits(void)
{
    static const char req[] = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    size_t n = sizeof req - 1;
    parsed_t p;
    size_t calls;
    char big[2048];

    /* The head may be exactly max_head bytes, not one more. */
    parse_whole(req, n, n, MAX_HEADERS, &p);
    CHECK_EQ(p.r, (int)n);
    parse_whole(req, n, n - 1, MAX_HEADERS, &p);
    CHECK(p.r < 0);
    CHECK_EQ(p.status, 431);
    parse_bytewise(req, n, n - 1, MAX_HEADERS, &p, &calls);
    CHECK_EQ(p.status, 431);
    CHECK_EQ(calls, n);

    /* Too large before any terminator: refused as soon as max_head bytes
     * were scanned without an end; not before. */
    memset(big, 'a', sizeof big);
    memcpy(big, "GET /", 5);
    parse_whole(big, 100, 100, MAX_HEADERS, &p);
    CHECK_EQ(p.r, 0);
    parse_whole(big, 101, 100, MAX_HEADERS, &p);
    CHECK(p.r < 0);
    CHECK_EQ(p.status, 431);
    parse_bytewise(big, sizeof big, 100, MAX_HEADERS, &p, &calls);
    CHECK_EQ(p.status, 431);
    CHECK_EQ(calls, 101);

    /* Header count: four fields fit in four slots, not in three. */
    parse_whole(req, n, 8192, 4, &p);
    CHECK_EQ(p.r, (int)n);
    CHECK_EQ(p.req.nheaders, 4);
    parse_whole(req, n, 8192, 3, &p);
    CHECK(p.r < 0);
    CHECK_EQ(p.status, 431);
    parse_whole(LIT("GET / HTTP/1.0\r\n\r\n"), 8192, 0, &p);
    CHECK(p.r > 0);
    parse_whole(req, n, 8192, 0, &p);
    CHECK_EQ(p.status, 431);
}

static mw_slice_t S(const char *s)
{
    mw_slice_t x = {s, strlen(s)};
    return x;
}

static void test_list_has(void)
{
    CHECK(mw__http_list_has(S("keep-alive, Upgrade"), "upgrade"));
    CHECK(mw__http_list_has(S("upgrade"), "upgrade"));
    CHECK(mw__http_list_has(S(" , upgrade ,"), "upgrade"));
    CHECK(mw__http_list_has(S("UPGRADE"), "upgrade"));
    CHECK(mw__http_list_has(S("a,\tupgrade\t,b"), "upgrade"));
    CHECK(mw__http_list_has(S(",,,upgrade"), "upgrade"));
    CHECK(mw__http_list_has(S("websocket"), "WebSocket"));
    CHECK(!mw__http_list_has(S("upgraded"), "upgrade"));
    CHECK(!mw__http_list_has(S("xupgrade"), "upgrade"));
    CHECK(!mw__http_list_has(S("up grade"), "upgrade"));
    CHECK(!mw__http_list_has(S("keep-alive"), "upgrade"));
    CHECK(!mw__http_list_has(S(""), "upgrade"));
    CHECK(!mw__http_list_has(S(" , ,"), "upgrade"));
    CHECK(!mw__http_list_has(S("upgrade"), ""));
    {
        mw_slice_t empty = {NULL, 0};
        CHECK(!mw__http_list_has(empty, "upgrade"));
    }
    /* Bounded by the slice, not by a NUL. */
    {
        mw_slice_t cut = {"upgrade", 6};
        CHECK(!mw__http_list_has(cut, "upgrade"));
    }
}

static void test_header_lookup(void)
{
    parsed_t p;
    const mw_http_header_t *h;

    parse_whole(LIT("GET / HTTP/1.1\r\nHOST: one\r\nx-a: 1\r\nX-A: 2\r\n\r\n"), 8192, MAX_HEADERS,
                &p);
    CHECK(p.r > 0);
    h = mw__http_header_find(&p.req, "host");
    CHECK(h != NULL && slice_is(h->value, "one"));
    h = mw__http_header_find(&p.req, "Host");
    CHECK(h != NULL && slice_is(h->value, "one"));
    h = mw__http_header_find(&p.req, "X-a");
    CHECK(h != NULL && slice_is(h->value, "1"));
    CHECK(mw__http_header_find(&p.req, "hos") == NULL);
    CHECK(mw__http_header_find(&p.req, "hostx") == NULL);
    CHECK(mw__http_header_find(&p.req, "missing") == NULL);
    CHECK_EQ(mw__http_header_count(&p.req, "x-A"), 2);
    CHECK_EQ(mw__http_header_count(&p.req, "host"), 1);
    CHECK_EQ(mw__http_header_count(&p.req, "nope"), 0);

    CHECK(mw__slice_ieq(S("Sec-WebSocket-Key"), "sec-websocket-key"));
    CHECK(!mw__slice_ieq(S("Sec-WebSocket-Key"), "sec-websocket-ke"));
    CHECK(!mw__slice_ieq(S("a"), "b"));
    /* Only ASCII letters fold: '@' (0x40) is not '`' (0x60). */
    CHECK(!mw__slice_ieq(S("@"), "`"));
    CHECK(!mw__slice_ieq(S("["), "{"));
}

static void test_reasons(void)
{
    static const int codes[] = {101, 200, 204, 206, 301, 302, 304, 400, 401,
                                403, 404, 405, 408, 409, 411, 413, 414, 415,
                                416, 426, 429, 431, 500, 501, 502, 503, 505};

    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        CHECK(mw__http_reason(codes[i])[0] != '\0');
    CHECK(strcmp(mw__http_reason(101), "Switching Protocols") == 0);
    CHECK(strcmp(mw__http_reason(200), "OK") == 0);
    CHECK(strcmp(mw__http_reason(400), "Bad Request") == 0);
    CHECK(strcmp(mw__http_reason(404), "Not Found") == 0);
    CHECK(strcmp(mw__http_reason(426), "Upgrade Required") == 0);
    CHECK(strcmp(mw__http_reason(431), "Request Header Fields Too Large") == 0);
    CHECK(strcmp(mw__http_reason(505), "HTTP Version Not Supported") == 0);
    CHECK(strcmp(mw__http_reason(299), "") == 0);
    CHECK(strcmp(mw__http_reason(-1), "") == 0);
}

/* Decodes a whole chunked body handed over in pieces of at most `step`
 * bytes (0: all at once); returns the decoder's last result and fills
 * out/outlen with the data and *end with where the body ended. */
static int chunked_run(const char *in, size_t n, size_t step, uint64_t max_body, char *out,
                       size_t *outlen, size_t *end, int *status)
{
    mw_chunked_t st;
    memset(&st, 0, sizeof st);
    *outlen = 0;
    *end = 0;
    size_t off = 0;
    while (off < n) {
        size_t piece = step && n - off > step ? step : n - off;
        /* an exact-size heap copy of the piece, for ASan */
        uint8_t *b = malloc(piece);
        memcpy(b, in + off, piece);
        size_t p = 0;
        while (p < piece) {
            size_t used, dlen;
            const uint8_t *d = NULL;
            const char *why;
            int r = mw__http_chunked(&st, b + p, piece - p, max_body, 64, &used, &d, &dlen, status,
                                     &why);
            if (r < 0) {
                free(b);
                return r;
            }
            CHECK(used <= piece - p);
            CHECK(used > 0 || r == 1);
            if (dlen) {
                CHECK(d >= b + p && d + dlen <= b + p + used);
                memcpy(out + *outlen, d, dlen);
                *outlen += dlen;
            }
            p += used;
            if (r == 1) {
                *end = off + p;
                free(b);
                return 1;
            }
        }
        free(b);
        off += piece;
    }
    return 0;
}

static void test_chunked(void)
{
    char out[256];
    size_t outlen, end;
    int status;
    static const char body[] = "5\r\nhello\r\n"
                               "1A;name=val;x=\"q\"\r\nabcdefghijklmnopqrstuvwxyz\r\n"
                               "00001 \t;ext\r\n!\r\n"
                               "0\r\nTrailer-A: 1\r\nB: two\r\n\r\n"
                               "NEXT";
    size_t n = sizeof body - 1;
    static const char want[] = "helloabcdefghijklmnopqrstuvwxyz!";
    /* whole, byte by byte, and in every piece size up to the body */
    for (size_t step = 0; step <= n; step++) {
        int r = chunked_run(body, n, step, 1000, out, &outlen, &end, &status);
        CHECK_EQ(r, 1);
        CHECK_EQ(outlen, sizeof want - 1);
        CHECK(memcmp(out, want, outlen) == 0);
        CHECK_EQ(end, n - 4); /* "NEXT" is the next request's */
    }
    /* an empty body */
    CHECK_EQ(chunked_run(LIT("0\r\n\r\n"), 0, 1000, out, &outlen, &end, &status), 1);
    CHECK_EQ(outlen, 0);
    /* incomplete: needs more */
    CHECK_EQ(chunked_run(LIT("5\r\nhel"), 1, 1000, out, &outlen, &end, &status), 0);
    CHECK_EQ(chunked_run(LIT("0\r\nX: y\r\n"), 0, 1000, out, &outlen, &end, &status), 0);

    /* refusals, each also fed byte by byte */
    static const struct {
        const char *in;
        uint64_t max;
        int status;
    } bad[] = {
        {"\r\n", 1000, 400},                        /* no size */
        {"x\r\n", 1000, 400},                       /* not hex */
        {"5x\r\nhello\r\n", 1000, 400},             /* junk after the size */
        {"5 x\r\nhello\r\n", 1000, 400},            /* junk after BWS */
        {"5 \r\nhello\r\n", 1000, 400},             /* BWS without a ';' */
        {"0\r\n: v\r\n\r\n", 1000, 400},            /* a trailer without a name */
        {"0\r\n X: v\r\n\r\n", 1000, 400},          /* a folded trailer line */
        {"0\r\nNoColon\r\n\r\n", 1000, 400},        /* a trailer line without ':' */
        {"5\nhello\r\n", 1000, 400},                /* bare LF */
        {"5\rhello\r\n", 1000, 400},                /* bare CR */
        {"5;a\x01b\r\nhello\r\n", 1000, 400},       /* control character in an extension */
        {"5\r\nhelloX\r\n", 1000, 400},             /* data longer than announced */
        {"5\r\nhello\n0\r\n\r\n", 1000, 400},       /* data ends in a bare LF */
        {"0\r\nX: y\n\r\n", 1000, 400},             /* trailer ends in a bare LF */
        {"0\r\nX: \x01\r\n\r\n", 1000, 400},        /* control character in a trailer */
        {"0\r\n\rX", 1000, 400},                    /* final CR without LF */
        {"3e9\r\n", 1000, 413},                     /* over max_body, before any data */
        {"200\r\n", 511, 413},                      /* 512 > 511 */
        {"10000000000000000\r\n", UINT64_MAX, 413}, /* 2^64 overflows */
        {"0\r\nX: 0123456789012345678901234567890123456789012345678901234567890123456789\r\n"
         "\r\n",
         1000, 431}, /* trailers over 64 bytes */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        for (size_t step = 0; step <= 1; step++) {
            status = 0;
            int r = chunked_run(bad[i].in, strlen(bad[i].in), step, bad[i].max, out, &outlen, &end,
                                &status);
            if (r >= 0 || status != bad[i].status)
                fprintf(stderr, "  chunked case %zu (step %zu): r %d status %d, want %d\n", i, step,
                        r, status, bad[i].status);
            CHECK(r < 0);
            CHECK_EQ(status, bad[i].status);
        }
    }
    /* two chunks within max_body, the third over it */
    CHECK_EQ(
        chunked_run(LIT("3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"), 0, 6, out, &outlen, &end, &status),
        1);
    CHECK(chunked_run(LIT("3\r\nabc\r\n3\r\ndef\r\n1\r\n"), 0, 6, out, &outlen, &end, &status) < 0);
    CHECK_EQ(status, 413);
    /* A chunk-size line of max_head (64) bytes, its CR included, passes and
     * one more does not: the first chunk's and a later one's. */
    for (int later = 0; later <= 1; later++) {
        for (int extra = 0; extra <= 1; extra++) {
            char line[200];
            size_t k = 0;
            if (later) {
                memcpy(line, "2\r\nAB\r\n", 7);
                k = 7;
            }
            size_t start = k;
            line[k++] = '1';
            line[k++] = ';';
            while (k - start < (size_t)(63 + extra)) /* the CR makes 64 (+1) */
                line[k++] = ' ';
            memcpy(line + k, "\r\nA\r\n0\r\n\r\n", 10);
            k += 10;
            int r = chunked_run(line, k, 0, 10, out, &outlen, &end, &status);
            if (extra) {
                CHECK(r < 0);
                CHECK_EQ(status, 400);
            } else {
                CHECK_EQ(r, 1);
                CHECK_EQ(outlen, later ? 3 : 1);
            }
        }
    }
    /* trailers: up to 64 bytes in all, the final CRLF included */
    static const char tr64[] =
        "0\r\nX-A: 01234567890123456789\r\nX-B: 0123456789012345678901234567\r\n\r\n";
    CHECK_EQ(sizeof tr64 - 1 - 3, 64);
    CHECK_EQ(chunked_run(tr64, sizeof tr64 - 1, 0, 10, out, &outlen, &end, &status), 1);
    static const char tr65[] =
        "0\r\nX-A: 01234567890123456789\r\nX-B: 01234567890123456789012345678\r\n\r\n";
    CHECK(chunked_run(tr65, sizeof tr65 - 1, 0, 10, out, &outlen, &end, &status) < 0);
    CHECK_EQ(status, 431);

    /* the head parser marks a chunked request, and unmarks the next one
     * parsed into the same request struct */
    parsed_t p;
    parse_whole(LIT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,Chunked\r\n\r\n"), 8192,
                MAX_HEADERS, &p);
    CHECK(p.r > 0);
    CHECK_EQ(p.req.chunked, 1);
    mw_http_parser_t st = {0};
    static const char cl[] = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n";
    int r = mw__http_parse_request(&st, cl, sizeof cl - 1, 8192, &p.req, &p.status, &p.why);
    CHECK(r > 0);
    CHECK_EQ(p.req.chunked, 0);
}

int main(void)
{
    RUN(test_simple);
    RUN(test_bytewise);
    RUN(test_resumes);
    RUN(test_rejections);
    RUN(test_early_refusal);
    RUN(test_accepts);
    RUN(test_limits);
    RUN(test_list_has);
    RUN(test_header_lookup);
    RUN(test_reasons);
    RUN(test_chunked);
    return mwt_summary();
}
