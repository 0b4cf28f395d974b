/* Tests for core/src/outq.c: frames copied, shared and pinned come out of
 * mw__outq_iov in order at every consume point; pinned chunks hold their
 * own header (no chunk of their own per header) and hand their pin back
 * once written or dropped; pin numbers are reused only after the binding
 * let go. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mwtest.h"
#include "outq.h"

/* A 4 KiB payload to pin and its binary frame header. */
static const uint8_t big[4096];
static const uint8_t hdr[4] = {0x82, 0x7e, 0x10, 0x00};

/* The queue's unsent bytes, gathered through mw__outq_iov with at most
 * max iovecs per call (consuming nothing). */
static size_t gather(const mw_outq_t *q, uint8_t *out, int max)
{
    struct iovec iov[64];
    int n = mw__outq_iov(q, iov, max);
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        memcpy(out + len, iov[i].iov_base, iov[i].iov_len);
        len += iov[i].iov_len;
    }
    return len;
}

static void test_order_at_every_consume_point(void)
{
    static uint8_t data[5000], want[6000], got[6000];
    static const uint8_t dhdr[4] = {0x82, 0x7e, 0x13, 0x88};
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 7 + 1);
    /* "ab" + "cd" copied, then [dhdr + data] pinned, then a shared "xyz". */
    size_t total = 0;
    memcpy(want, "abcd", 4);
    memcpy(want + 4, dhdr, 4);
    memcpy(want + 8, data, sizeof data);
    memcpy(want + 8 + sizeof data, "xyz", 3);
    total = 8 + sizeof data + 3;

    for (size_t cut = 0; cut <= total; cut += (cut < 16 || total - cut < 16) ? 1 : 97) {
        for (int max = 1; max <= 4; max++) {
            mw_chunk_pool_t pool;
            mw_outq_t q = {0};
            mw__chunk_pool_init(&pool, 4);
            mw__outq_append2(&pool, &q, "ab", 2, "cd", 2);
            uint32_t pin = mw__pool_pin_take(&pool);
            mw__outq_append_pinned(&pool, &q, dhdr, 4, data, sizeof data, pin);
            mw_rbuf_t *b = mw__rbuf_new("xyz", 3);
            mw__outq_append_ref(&pool, &q, b);
            mw__rbuf_release(b);
            CHECK_EQ(q.bytes, total);

            /* Consume cut bytes, in steps no larger than what one
             * mw__outq_iov call with max iovecs returns (as a flush does). */
            size_t done = 0;
            while (done < cut) {
                size_t avail = gather(&q, got, max);
                size_t k = cut - done < avail ? cut - done : avail;
                CHECK(avail > 0);
                if (!avail)
                    break;
                mw__outq_consume(&pool, &q, k);
                done += k;
            }
            /* The rest comes out whole and in order, whatever max is. */
            size_t len = 0;
            while (q.bytes) {
                size_t n = gather(&q, got + len, max);
                CHECK(n > 0);
                if (!n)
                    break;
                mw__outq_consume(&pool, &q, n);
                len += n;
            }
            CHECK_EQ(len, total - cut);
            CHECK_MEM(got, want + cut, total - cut);
            /* Once the pinned chunk is written its pin is released, once. */
            CHECK_EQ(pool.n_released, 1);
            CHECK_EQ(pool.pins_released[0], pin);
            CHECK(q.head == NULL && q.tail == NULL);
            mw__chunk_pool_free(&pool);
        }
    }
}

static void test_pins_released_on_clear_and_reused(void)
{
    mw_chunk_pool_t pool;
    mw_outq_t q = {0};
    mw__chunk_pool_init(&pool, 4);

    uint32_t a = mw__pool_pin_take(&pool), b = mw__pool_pin_take(&pool);
    CHECK(a != 0 && b != 0 && a != b);
    mw__outq_append_pinned(&pool, &q, hdr, 4, big, sizeof big, a);
    mw__outq_append_pinned(&pool, &q, hdr, 4, big, sizeof big, b);
    /* Part of the first written, then the connection is dropped. */
    mw__outq_consume(&pool, &q, 100);
    CHECK_EQ(pool.n_released, 0);
    mw__outq_clear(&pool, &q);
    CHECK_EQ(q.bytes, 0);
    CHECK_EQ(pool.n_released, 2);
    /* Not reusable until the binding let go of them... */
    uint32_t c = mw__pool_pin_take(&pool);
    CHECK(c != a && c != b);
    /* ...and then they are. */
    mw__pool_pins_reuse(&pool);
    CHECK_EQ(pool.n_released, 0);
    uint32_t d = mw__pool_pin_take(&pool), e = mw__pool_pin_take(&pool);
    CHECK((d == a && e == b) || (d == b && e == a));
    CHECK(mw__pool_pin_take(&pool) != c);
    mw__chunk_pool_free(&pool);
}

/* A backlog of large sends costs one small chunk per frame: the header is
 * not given a (16 KiB) chunk of its own after each pinned tail. */
static void test_pinned_backlog_has_no_header_chunks(void)
{
    mw_chunk_pool_t pool;
    mw_outq_t q = {0};
    mw__chunk_pool_init(&pool, 4);
    for (int i = 0; i < 1000; i++)
        mw__outq_append_pinned(&pool, &q, hdr, 4, big, sizeof big, mw__pool_pin_take(&pool));
    size_t chunks = 0, pinned = 0;
    for (mw_chunk_t *c = q.head; c; c = c->next) {
        chunks++;
        pinned += c->cap == MW_CHUNK_PIN;
    }
    CHECK_EQ(chunks, 1000);
    CHECK_EQ(pinned, 1000);
    CHECK_EQ(q.bytes, 1000 * (4 + sizeof big));
    /* A copied frame after a pinned one goes to a fresh chunk, and the
     * next pinned frame after that still carries its own header. */
    mw__outq_append2(&pool, &q, "h", 1, "i", 1);
    mw__outq_append_pinned(&pool, &q, hdr, 4, big, sizeof big, mw__pool_pin_take(&pool));
    CHECK_EQ(q.tail->cap, MW_CHUNK_PIN);
    mw__outq_clear(&pool, &q);
    CHECK_EQ(pool.n_released, 1001);
    mw__chunk_pool_free(&pool);
}

/* The small-frame shortcut writes only into a memory chunk with room,
 * never into a pinned, shared or file chunk, and keeps the order. */
static void test_append_small(void)
{
    uint8_t got[8192];
    mw_chunk_pool_t pool;
    mw_outq_t q = {0};
    mw__chunk_pool_init(&pool, 4);

    CHECK_EQ(mw__outq_append_small(&q, 0x81, "a", 1), 0); /* empty queue */
    mw__outq_append2(&pool, &q, "\x81\x01", 2, "b", 1);
    CHECK_EQ(mw__outq_append_small(&q, 0x81, "cd", 2), 1);
    mw__outq_append_pinned(&pool, &q, hdr, 4, big, sizeof big, mw__pool_pin_take(&pool));
    CHECK_EQ(mw__outq_append_small(&q, 0x82, "e", 1), 0); /* pinned tail */
    mw_rbuf_t *b = mw__rbuf_new("\x81\x01z", 3);
    mw__outq_append_ref(&pool, &q, b);
    mw__rbuf_release(b);
    CHECK_EQ(mw__outq_append_small(&q, 0x82, "e", 1), 0); /* shared tail */
    mw__outq_append2(&pool, &q, "\x81\x01", 2, "f", 1);
    CHECK_EQ(mw__outq_append_small(&q, 0x82, "gh", 2), 1);
    size_t total = 3 + 4 + 4 + sizeof big + 3 + 3 + 4;
    CHECK_EQ(q.bytes, total);
    size_t n = gather(&q, got, 64);
    CHECK_EQ(n, total);
    CHECK_MEM(got,
              "\x81\x01"
              "b"
              "\x81\x02"
              "cd",
              7);
    CHECK_MEM(got + 7, hdr, 4);
    CHECK_MEM(got + 11 + sizeof big,
              "\x81\x01z"
              "\x81\x01"
              "f"
              "\x82\x02"
              "gh",
              10);
    /* A full tail chunk is refused too. */
    while (q.tail->end + 2 + 125 <= q.tail->cap)
        CHECK_EQ(mw__outq_append_small(&q, 0x81, big, 125), 1);
    CHECK_EQ(mw__outq_append_small(&q, 0x81, big, 125), 0);
    mw__outq_clear(&pool, &q);
    mw__chunk_pool_free(&pool);
}

/* Where the shortcut refuses, append_small_new puts the frame whole in a
 * new chunk: small for an empty queue, standard behind a full, pinned or
 * shared tail; the order is kept and the small shortcut then fills it. */
static void test_append_small_new(void)
{
    static uint8_t got[3 * 16384];
    mw_chunk_pool_t pool;
    mw_outq_t q = {0};
    mw__chunk_pool_init(&pool, 4);

    mw__outq_append_small_new(&pool, &q, 0x81, "a", 1);
    CHECK_EQ(q.tail->cap, MW_CHUNK_SMALL);
    CHECK_EQ(q.bytes, 3);
    size_t total = 3, frames = 1;
    while (mw__outq_append_small(&q, 0x82, big, 125))
        total += 127, frames++;
    CHECK(frames > 1);
    mw__outq_append_small_new(&pool, &q, 0x81, "bc", 2); /* the small chunk is full */
    CHECK_EQ(q.tail->cap, MW_CHUNK_SIZE);
    CHECK_EQ(q.tail->end, 4);
    total += 4;
    mw__outq_append_pinned(&pool, &q, hdr, 4, big, sizeof big, mw__pool_pin_take(&pool));
    mw__outq_append_small_new(&pool, &q, 0x81, "d", 1); /* behind a pinned tail */
    CHECK_EQ(q.tail->cap, MW_CHUNK_SIZE);
    total += 4 + sizeof big + 3;
    CHECK_EQ(q.bytes, total);
    size_t n = gather(&q, got, 64);
    CHECK_EQ(n, total);
    CHECK_MEM(got,
              "\x81\x01"
              "a",
              3);
    CHECK_MEM(got + 3 + (frames - 1) * 127 - 125, big, 125);
    CHECK_MEM(got + 3 + (frames - 1) * 127,
              "\x81\x02"
              "bc",
              4);
    CHECK_MEM(got + 3 + (frames - 1) * 127 + 4 + 4 + sizeof big,
              "\x81\x01"
              "d",
              3);
    mw__outq_clear(&pool, &q);
    mw__chunk_pool_free(&pool);
}

int main(void)
{
    RUN(test_order_at_every_consume_point);
    RUN(test_pins_released_on_clear_and_reused);
    RUN(test_pinned_backlog_has_no_header_chunks);
    RUN(test_append_small);
    RUN(test_append_small_new);
    return mwt_summary();
}
