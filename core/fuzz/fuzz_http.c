/* libFuzzer target for the HTTP request-head parser (core/src/http.c) and
 * the upgrade checks on what it produces (core/src/ws_handshake.c).
 *
 * Input layout: one configuration byte (bits 0-3 pick max_headers, bits 4-5
 * the head limit, bits 6-7 the read size), then the bytes of the request.
 * The request is parsed as one buffer and again as a buffer that grows by
 * reads, the way a connection receives it; both must agree. Every call sees
 * a buffer of exactly the bytes it may read, so ASan catches overreads. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "moonwire/moonwire.h"
#include "ws_handshake.h"

#define FUZZ_ASSERT(c)                                                                \
    do {                                                                              \
        if (!(c)) {                                                                   \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #c); \
            abort();                                                                  \
        }                                                                             \
    } while (0)

#define MAX_HEADERS 15

typedef struct {
    int r, status;
    const char *why;
    mw_http_request_t req;
    mw_http_header_t h[MAX_HEADERS];
} result_t;

static int in_buf(mw_slice_t s, const char *buf, size_t len)
{
    return s.n == 0 || (s.p >= buf && s.p + s.n <= buf + len);
}

/* Checks a successful parse and exercises the helpers on it. */
static void check_request(const result_t *res, const char *buf)
{
    const mw_http_request_t *req = &res->req;
    size_t head = (size_t)res->r;

    FUZZ_ASSERT(req->head_len == head);
    FUZZ_ASSERT(head >= 4 && memcmp(buf + head - 4, "\r\n\r\n", 4) == 0);
    FUZZ_ASSERT(req->nheaders <= req->max_headers);
    FUZZ_ASSERT(req->version_minor == 0 || req->version_minor == 1);
    FUZZ_ASSERT(req->method.n > 0 && in_buf(req->method, buf, head));
    FUZZ_ASSERT(req->target.n > 0 && in_buf(req->target, buf, head));
    FUZZ_ASSERT(req->target.p[0] == '/' || (req->target.n == 1 && req->target.p[0] == '*'));
    FUZZ_ASSERT(in_buf(req->path, buf, head) && in_buf(req->query, buf, head));
    for (size_t i = 0; i < req->target.n; i++)
        FUZZ_ASSERT(req->target.p[i] > 0x20 && req->target.p[i] < 0x7F);
    for (size_t i = 0; i < req->nheaders; i++) {
        const mw_http_header_t *h = &req->headers[i];

        FUZZ_ASSERT(h->name.n > 0 && in_buf(h->name, buf, head) && in_buf(h->value, buf, head));
        for (size_t k = 0; k < h->value.n; k++) {
            unsigned char c = (unsigned char)h->value.p[k];

            FUZZ_ASSERT(c != '\r' && c != '\n' && c != '\0');
        }
        if (h->value.n)
            FUZZ_ASSERT(h->value.p[0] != ' ' && h->value.p[h->value.n - 1] != ' ');
        (void)mw__http_list_has(h->value, "upgrade");
        FUZZ_ASSERT(mw__http_header_find(req, "x") == NULL || mw__http_header_count(req, "x") > 0);
    }
    {
        mw_slice_t key;
        const char *why = NULL;
        int st = mw__ws_handshake_check(req, &key, &why);

        FUZZ_ASSERT(st == 0 || st == 400 || st == 405 || st == 426);
        FUZZ_ASSERT(why != NULL || st == 0);
        (void)mw__ws_handshake_wants_version(req);
        if (st == 0) {
            char accept[29];

            FUZZ_ASSERT(key.n == 24 && in_buf(key, buf, head));
            mw__ws_accept_key(key.p, key.n, accept);
            FUZZ_ASSERT(strlen(accept) == 28);
        }
    }
}

static void parse(const char *data, size_t len, size_t max_head, size_t max_headers,
                  mw_http_parser_t *st, result_t *res)
{
    /* An exact-size copy, so a read beyond len is an ASan report. */
    char *buf = malloc(len ? len : 1);

    memcpy(buf, data, len);
    res->req.headers = res->h;
    res->req.max_headers = max_headers;
    res->r = mw__http_parse_request(st, buf, len, max_head, &res->req, &res->status, &res->why);
    if (res->r > 0)
        check_request(res, buf);
    else if (res->r < 0)
        FUZZ_ASSERT(res->why != NULL && (res->status == 400 || res->status == 431 ||
                                         res->status == 501 || res->status == 505));
    else
        FUZZ_ASSERT(len <= max_head);
    free(buf);
}

/* A chunked body after the head, decoded in pieces of step bytes: returns
 * the decoder's verdict, with the data in out and where the body ended. */
typedef struct {
    int r, status;
    size_t outlen, end;
} chunked_result_t;

static void decode_chunked(const char *in, size_t n, size_t step, uint8_t *out,
                           chunked_result_t *res)
{
    mw_chunked_t st;
    memset(&st, 0, sizeof st);
    memset(res, 0, sizeof *res);
    for (size_t off = 0; off < n;) {
        size_t piece = n - off < step ? n - off : step;
        uint8_t *b = malloc(piece); /* exact size, for ASan */
        memcpy(b, in + off, piece);
        for (size_t p = 0; p < piece;) {
            size_t used, dlen;
            const uint8_t *d = NULL;
            const char *why = NULL;
            res->r = mw__http_chunked(&st, b + p, piece - p, 4096, 256, &used, &d, &dlen,
                                      &res->status, &why);
            if (res->r < 0) {
                FUZZ_ASSERT(why != NULL && (res->status == 400 || res->status == 413 ||
                                            res->status == 431));
                free(b);
                return;
            }
            FUZZ_ASSERT(used <= piece - p && (used > 0 || res->r == 1));
            FUZZ_ASSERT(res->outlen + dlen <= 4096);
            if (dlen) {
                FUZZ_ASSERT(d >= b + p && d + dlen <= b + p + used);
                memcpy(out + res->outlen, d, dlen);
                res->outlen += dlen;
            }
            p += used;
            if (res->r == 1) {
                res->end = off + p;
                free(b);
                return;
            }
        }
        free(b);
        off += piece;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t heads[4] = {64, 256, 1024, 8192};
    static const size_t reads[4] = {1, 3, 17, 200};
    mw_http_parser_t st;
    result_t whole, grown;
    size_t max_headers, max_head, step;
    const char *req;

    if (size < 1)
        return 0;
    max_headers = data[0] & 15;
    max_head = heads[(data[0] >> 4) & 3];
    step = reads[data[0] >> 6];
    req = (const char *)data + 1;
    size--;

    memset(&st, 0, sizeof st);
    memset(&whole, 0, sizeof whole);
    parse(req, size, max_head, max_headers, &st, &whole);

    memset(&st, 0, sizeof st);
    memset(&grown, 0, sizeof grown);
    for (size_t n = 0; n < size;) {
        n = size - n < step ? size : n + step;
        parse(req, n, max_head, max_headers, &st, &grown);
        if (grown.r != 0)
            break;
    }
    /* How the request arrived must not change the verdict. */
    FUZZ_ASSERT(grown.r == whole.r);
    if (whole.r < 0)
        FUZZ_ASSERT(grown.status == whole.status);
    if (whole.r > 0)
        FUZZ_ASSERT(grown.req.nheaders == whole.req.nheaders &&
                    grown.req.method.n == whole.req.method.n &&
                    grown.req.target.n == whole.req.target.n);
    if (whole.r > 0 && whole.req.chunked) {
        /* The body after the head, whole and in pieces: the same verdict,
         * data and end. */
        size_t n = size - (size_t)whole.r;
        uint8_t *a = malloc(n + 1), *b = malloc(n + 1);
        chunked_result_t ra, rb;
        decode_chunked(req + whole.r, n, n ? n : 1, a, &ra);
        decode_chunked(req + whole.r, n, step, b, &rb);
        FUZZ_ASSERT(ra.r == rb.r && ra.status == rb.status);
        if (ra.r >= 0)
            FUZZ_ASSERT(ra.outlen == rb.outlen && memcmp(a, b, ra.outlen) == 0 &&
                        ra.end == rb.end && ra.outlen <= n);
        free(a);
        free(b);
    }
    return 0;
}
