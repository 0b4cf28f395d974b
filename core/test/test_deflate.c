/* Unit tests for permessage-deflate (core/src/deflate.c): negotiation
 * answers, compress/inflate round trips with and without context takeover,
 * the size limit, and data that zlib accepts but that does not end a
 * message on a block boundary (truncated or garbage). */
#include <stdlib.h>
#include <string.h>

#include "deflate.h"
#include "mwtest.h"

static int negotiate(const char *offer, const mw_pmd_policy_t *pol, mw_pmd_t *out, char *resp)
{
    mw_http_header_t h[1];
    mw_http_request_t req;
    memset(&req, 0, sizeof req);
    h[0].name = (mw_slice_t){"Sec-WebSocket-Extensions", 24};
    h[0].value = (mw_slice_t){offer, strlen(offer)};
    req.headers = h;
    req.nheaders = 1;
    req.max_headers = 1;
    return mw__pmd_negotiate(&req, pol, out, resp, 256);
}

static const mw_pmd_policy_t on = {1, 1, 15, 1, 0};

static void test_negotiation(void)
{
    mw_pmd_t p;
    char resp[256];
    CHECK_EQ(negotiate("permessage-deflate", &on, &p, resp), 1);
    CHECK(strcmp(resp, "permessage-deflate") == 0);
    CHECK_EQ(negotiate("permessage-deflate; client_max_window_bits", &on, &p, resp), 1);
    CHECK(strcmp(resp, "permessage-deflate") == 0);
    CHECK_EQ(negotiate("permessage-deflate; server_no_context_takeover", &on, &p, resp), 1);
    CHECK(strstr(resp, "server_no_context_takeover") != NULL);
    CHECK_EQ(p.server_no_ctx, 1);
    CHECK_EQ(negotiate("permessage-deflate; server_max_window_bits=10", &on, &p, resp), 1);
    CHECK(strstr(resp, "server_max_window_bits=10") != NULL);
    CHECK_EQ(p.server_bits, 10);
    /* declined: 8 bits, unknown or repeated parameters, bad values */
    CHECK_EQ(negotiate("permessage-deflate; server_max_window_bits=8", &on, &p, resp), 0);
    CHECK_EQ(negotiate("permessage-deflate; foo", &on, &p, resp), 0);
    CHECK_EQ(negotiate("permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                       &on, &p, resp),
             0);
    CHECK_EQ(negotiate("permessage-deflate; client_max_window_bits=16", &on, &p, resp), 0);
    /* the first acceptable offer wins */
    CHECK_EQ(negotiate("permessage-deflate; foo, permessage-deflate; client_no_context_takeover",
                       &on, &p, resp),
             1);
    CHECK_EQ(p.client_no_ctx, 1);
    mw_pmd_policy_t off = on;
    off.enabled = 0;
    CHECK_EQ(negotiate("permessage-deflate", &off, &p, resp), 0);
}

static void round_trip(int ctx)
{
    mw_pmd_shared_t tx, rx;
    memset(&tx, 0, sizeof tx);
    memset(&rx, 0, sizeof rx);
    mw_pmd_t a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    a.server_bits = 15;
    a.level = 1;
    a.server_no_ctx = !ctx;
    b.client_no_ctx = !ctx;
    for (int i = 0; i < 50; i++) {
        char msg[256];
        int n =
            snprintf(msg, sizeof msg, "message %d of a stream of similar messages %d", i, i * 7);
        size_t z = mw__pmd_compress(&tx, &a, (const uint8_t *)msg, (size_t)n);
        uint8_t copy[512];
        memcpy(copy, tx.buf, z);
        long got = mw__pmd_inflate(&rx, &b, copy, z, 1 << 20);
        CHECK_EQ(got, n);
        CHECK(got == n && memcmp(rx.buf, msg, (size_t)n) == 0);
    }
    /* an empty message after others is one 0x00 (RFC 7692 7.2.3.6) */
    size_t z = mw__pmd_compress(&tx, &a, (const uint8_t *)"", 0);
    CHECK(z >= 1);
    uint8_t copy[64];
    memcpy(copy, tx.buf, z);
    CHECK_EQ(mw__pmd_inflate(&rx, &b, copy, z, 100), 0);
    mw__pmd_free(&a);
    mw__pmd_free(&b);
    mw__pmd_shared_free(&tx);
    mw__pmd_shared_free(&rx);
}

static void test_round_trips(void)
{
    round_trip(1);
    round_trip(0);
}

static void test_limits_and_garbage(void)
{
    mw_pmd_shared_t sh;
    memset(&sh, 0, sizeof sh);
    mw_pmd_t p;
    memset(&p, 0, sizeof p);
    p.server_bits = 15;
    p.level = 9;
    p.client_no_ctx = 1;
    p.server_no_ctx = 1;
    /* a bomb: 1 MiB of zeros inflates past a 64 KiB limit */
    uint8_t *zeros = calloc(1, 1 << 20);
    size_t z = mw__pmd_compress(&sh, &p, zeros, 1 << 20);
    uint8_t *copy = malloc(z);
    memcpy(copy, sh.buf, z);
    mw_pmd_shared_t in;
    memset(&in, 0, sizeof in);
    CHECK_EQ(mw__pmd_inflate(&in, &p, copy, z, 65536), -1);
    /* the output never grew much past the limit */
    CHECK(in.cap <= 2 * 65537 + 65536);
    mw__pmd_shared_free(&in);
    free(copy);
    free(zeros);
    /* A message cut short is not a message, though zlib reports no error
     * for it: it must not be delivered. */
    static const char text[] = "a message that compresses into a few fixed-Huffman codes, "
                               "a message that compresses into a few fixed-Huffman codes";
    mw_pmd_t q = p;
    q.level = 1;
    size_t full = mw__pmd_compress(&sh, &q, (const uint8_t *)text, sizeof text - 1);
    uint8_t whole[256];
    memcpy(whole, sh.buf, full);
    mw_pmd_shared_t in2;
    memset(&in2, 0, sizeof in2);
    CHECK_EQ(mw__pmd_inflate(&in2, &q, whole, full, 1 << 20), (long)(sizeof text - 1));
    int delivered = 0;
    for (size_t cut = 1; cut < full; cut++)
        if (mw__pmd_inflate(&in2, &q, whole, full - cut, 1 << 20) >= 0)
            delivered++;
    CHECK_EQ(delivered, 0);
    /* Bytes after a final block (BFINAL) are garbage. */
    uint8_t fin[260];
    memcpy(fin, whole, full);
    fin[0] |= 1; /* the first block becomes the last */
    fin[full] = 0x42;
    CHECK(mw__pmd_inflate(&in2, &q, fin, full + 1, 1 << 20) < 0);
    mw__pmd_shared_free(&in2);
    mw__pmd_free(&p);
    mw__pmd_shared_free(&sh);
}

int main(void)
{
    RUN(test_negotiation);
    RUN(test_round_trips);
    RUN(test_limits_and_garbage);
    return mwt_summary();
}
