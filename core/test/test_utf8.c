/* Tests for core/src/utf8.c: named vectors (RFC 3629, the Autobahn 6.x
 * cases), exhaustive comparison with an independent reference over all
 * short sequences, the fail-fast position, the ASCII fast path at every
 * alignment, and validation split at every point. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mwtest.h"
#include "utf8.h"

/* ---- reference -------------------------------------------------------- */

/* An independent model of RFC 3629: decode each code point arithmetically
 * and ask whether any completion of the bytes seen so far is a valid
 * scalar value. Returns the index of the first byte after which the input
 * can no longer become valid, or n; *complete says whether it ends on a code
 * point boundary. Deliberately written without tables, so it cannot share a
 * mistake with the DFA. */
static size_t ref_fail_pos(const uint8_t *s, size_t n, int *complete)
{
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    size_t i = 0;

    *complete = 1;
    while (i < n) {
        uint8_t lead = s[i];
        int len;
        uint32_t cp;

        if (lead < 0x80) {
            i++;
            continue;
        }
        if ((lead & 0xE0) == 0xC0) {
            len = 2, cp = lead & 0x1F;
        } else if ((lead & 0xF0) == 0xE0) {
            len = 3, cp = lead & 0x0F;
        } else if ((lead & 0xF8) == 0xF0) {
            len = 4, cp = lead & 0x07;
        } else {
            *complete = 0;
            return i;
        }
        for (int m = 1; m <= len; m++) {
            uint32_t lo, hi, a, b;
            int rest = len - m;

            if (m > 1) {
                if (i + (size_t)m - 1 >= n) {
                    *complete = 0;
                    return n;
                }
                if ((s[i + m - 1] & 0xC0) != 0x80) {
                    *complete = 0;
                    return i + m - 1;
                }
                cp = cp << 6 | (s[i + m - 1] & 0x3F);
            }
            lo = cp << (6 * rest);
            hi = lo | ((1u << (6 * rest)) - 1);
            a = lo > min_cp[len] ? lo : min_cp[len];
            b = hi < 0x10FFFF ? hi : 0x10FFFF;
            /* Viable if [a, b] holds a value outside D800..DFFF. */
            if (a > b || (a >= 0xD800 && b <= 0xDFFF)) {
                *complete = 0;
                return i + m - 1;
            }
            if (m == len)
                break;
            if (i + (size_t)m >= n) {
                *complete = 0;
                return n;
            }
        }
        i += (size_t)len;
    }
    return n;
}

/* Feeds s one byte per call; returns the index of the byte whose call
 * failed, or n. */
static size_t dfa_fail_pos_bytewise(const uint8_t *s, size_t n, uint32_t *state)
{
    *state = MW_UTF8_ACCEPT;
    for (size_t i = 0; i < n; i++)
        if (mw__utf8_validate(state, s + i, 1) < 0)
            return i;
    return n;
}

/* Checks one input against the reference, bytewise and in one call. */
static int agree(const uint8_t *s, size_t n)
{
    int complete;
    size_t want = ref_fail_pos(s, n, &complete);
    uint32_t st;
    size_t got = dfa_fail_pos_bytewise(s, n, &st);
    int ok = got == want;

    if (got == n)
        ok = ok && mw__utf8_complete(st) == complete;
    else
        ok = ok && st == MW_UTF8_REJECT;
    st = MW_UTF8_ACCEPT;
    ok = ok && (mw__utf8_validate(&st, s, n) < 0) == (want < n);
    if (want == n)
        ok = ok && mw__utf8_complete(st) == complete;
    return ok;
}

/* ---- named vectors ---------------------------------------------------- */

struct vec {
    const char *s;
    size_t n;
    long fail;    /* index of the byte that fails, or -1 */
    int complete; /* when not failing: ends on a boundary */
};
#define V(lit, fail, complete)               \
    {                                        \
        lit, sizeof(lit) - 1, fail, complete \
    }

static const struct vec vectors[] = {
    V("", -1, 1),
    V("Hello", -1, 1),
    /* RFC 3629 7 examples. */
    V("\x41\xE2\x89\xA2\xCE\x91\x2E", -1, 1),
    V("\xED\x95\x9C\xEA\xB5\xAD\xEC\x96\xB4", -1, 1),
    V("\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E", -1, 1),
    V("\xEF\xBB\xBF\xF0\xA3\x8E\xB4", -1, 1),
    /* Autobahn 6.2.1 and 6.5.1. */
    V("Hello-\xc2\xb5@\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc\xc3\xa0\xc3\xa1-UTF-8!!", -1, 1),
    V("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", -1, 1),
    /* Autobahn 6.3.1: a surrogate inside valid text fails on its 2nd byte. */
    V("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64", 12, 0),
    /* Autobahn 6.4.x: fail fast on F4 90 inside text. */
    V("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80\x65\x64\x69\x74\x65\x64", 12,
      0),
    /* Autobahn 6.6.x: prefixes of kosme. */
    V("\xce", -1, 0),
    V("\xce\xba\xe1", -1, 0),
    V("\xce\xba\xe1\xbd", -1, 0),
    V("\xce\xba\xe1\xbd\xb9\xcf", -1, 0),
    /* Autobahn 6.7 and 6.9: first and last code points of each length. */
    V("\x00", -1, 1),
    V("\xc2\x80", -1, 1),
    V("\xe0\xa0\x80", -1, 1),
    V("\xf0\x90\x80\x80", -1, 1),
    V("\x7f", -1, 1),
    V("\xdf\xbf", -1, 1),
    V("\xef\xbf\xbf", -1, 1),
    V("\xf4\x8f\xbf\xbf", -1, 1),
    /* Autobahn 6.8 and 6.10: 5- and 6-byte forms, F7 BF BF BF. */
    V("\xf8\x88\x80\x80\x80", 0, 0),
    V("\xfc\x84\x80\x80\x80\x80", 0, 0),
    V("\xf7\xbf\xbf\xbf", 0, 0),
    V("\xfb\xbf\xbf\xbf\xbf", 0, 0),
    V("\xfd\xbf\xbf\xbf\xbf\xbf", 0, 0),
    /* Autobahn 6.11: boundaries around surrogates and U+10FFFF. */
    V("\xed\x9f\xbf", -1, 1),
    V("\xee\x80\x80", -1, 1),
    V("\xef\xbf\xbd", -1, 1),
    V("\xf4\x90\x80\x80", 1, 0),
    /* Autobahn 6.12: unexpected continuation bytes. */
    V("\x80", 0, 0),
    V("\xbf", 0, 0),
    V("\x80\xbf", 0, 0),
    V("a\x80\xbf\x80", 1, 0),
    /* Autobahn 6.13: lonely start characters followed by a space. */
    V("\xc0\x20", 0, 0),
    V("\xc2\x20", 1, 0),
    V("\xe0\x20", 1, 0),
    V("\xe1\x20", 1, 0),
    V("\xf0\x20", 1, 0),
    V("\xf8\x20", 0, 0),
    V("\xfc\x20", 0, 0),
    /* Autobahn 6.14: last continuation byte missing. */
    V("\xc0", 0, 0),
    V("\xe0\x80", 1, 0),
    V("\xf0\x80\x80", 1, 0),
    V("\xdf", -1, 0),
    V("\xef\xbf", -1, 0),
    V("\xf4\x8f\xbf", -1, 0),
    V("\xf7\xbf\xbf", 0, 0),
    /* Autobahn 6.15: concatenation of incomplete sequences. */
    V("\xc0\xe0\x80\xf0\x80\x80\xf8\x80\x80\x80\xfc\x80\x80\x80\x80\xdf\xef\xbf", 0, 0),
    V("\xdf\xef\xbf", 1, 0),
    /* Autobahn 6.16: impossible bytes. */
    V("\xfe", 0, 0),
    V("\xff", 0, 0),
    V("\xfe\xfe\xff\xff", 0, 0),
    /* Autobahn 6.17-6.19: overlong forms fail on the first byte that makes
     * them overlong. */
    V("\xc0\xaf", 0, 0),
    V("\xe0\x80\xaf", 1, 0),
    V("\xf0\x80\x80\xaf", 1, 0),
    V("\xc1\xbf", 0, 0),
    V("\xe0\x9f\xbf", 1, 0),
    V("\xf0\x8f\xbf\xbf", 1, 0),
    V("\xc0\x80", 0, 0),
    V("\xe0\x80\x80", 1, 0),
    V("\xf0\x80\x80\x80", 1, 0),
    /* Autobahn 6.20-6.21: UTF-16 surrogates, single and paired. */
    V("\xed\xa0\x80", 1, 0),
    V("\xed\xad\xbf", 1, 0),
    V("\xed\xae\x80", 1, 0),
    V("\xed\xaf\xbf", 1, 0),
    V("\xed\xb0\x80", 1, 0),
    V("\xed\xbe\x80", 1, 0),
    V("\xed\xbf\xbf", 1, 0),
    V("\xed\xa0\x80\xed\xb0\x80", 1, 0),
    V("\xed\xaf\xbf\xed\xbf\xbf", 1, 0),
    /* Autobahn 6.22: noncharacters are valid UTF-8. */
    V("\xef\xbf\xbe", -1, 1),
    V("\xef\xb7\x90", -1, 1),
    V("\xf0\x9f\xbf\xbe", -1, 1),
    V("\xf0\x9f\xbf\xbf", -1, 1),
    V("\xf4\x8f\xbf\xbe", -1, 1),
    /* Autobahn 6.23: U+FFFD. */
    V("\xef\xbf\xbd\xef\xbf\xbd", -1, 1),
    /* Fail fast on the first impossible byte, as the brief spells out. */
    V("\xf4\x90", 1, 0),
    V("\xed\xa0", 1, 0),
    V("\xf5", 0, 0),
    V("\xc1", 0, 0),
    V("ab\xf4\x8f\xbf\xc0", 5, 0),
};

static void test_vectors(void)
{
    for (size_t v = 0; v < sizeof vectors / sizeof vectors[0]; v++) {
        const struct vec *t = &vectors[v];
        const uint8_t *s = (const uint8_t *)t->s;
        uint32_t st;
        size_t pos = dfa_fail_pos_bytewise(s, t->n, &st);
        long got = pos == t->n ? -1 : (long)pos;
        int ok = got == t->fail;

        if (t->fail < 0)
            ok = ok && mw__utf8_complete(st) == t->complete;
        /* The one-call result must agree with the bytewise one. */
        st = MW_UTF8_ACCEPT;
        ok = ok && (mw__utf8_validate(&st, s, t->n) < 0) == (t->fail >= 0);
        ok = ok && agree(s, t->n);
        if (!ok)
            fprintf(stderr, "  vector %zu: fail at %ld, expected %ld\n", v, got, t->fail);
        CHECK(ok);
    }
}

/* ---- exhaustive and randomized comparison with the reference --------- */

static void test_exhaustive_short(void)
{
    uint8_t s[4];
    long bad = 0;

    for (unsigned a = 0; a < 256; a++) {
        s[0] = (uint8_t)a;
        bad += !agree(s, 1);
        for (unsigned b = 0; b < 256; b++) {
            s[1] = (uint8_t)b;
            bad += !agree(s, 2);
        }
    }
    /* Every 3-byte string whose lead starts a multi-byte sequence; other
     * leads are decided by the first byte or reduce to the 2-byte case. */
    for (unsigned a = 0xC0; a < 256; a++)
        for (unsigned b = 0; b < 256; b++)
            for (unsigned c = 0; c < 256; c++) {
                s[0] = (uint8_t)a, s[1] = (uint8_t)b, s[2] = (uint8_t)c;
                bad += !agree(s, 3);
            }
    CHECK_EQ(bad, 0);
}

static void test_exhaustive_four(void)
{
    static const uint8_t last[] = {0x00, 0x7F, 0x80, 0x8F, 0x90, 0xBF, 0xC0, 0xFF};
    uint8_t s[4];
    long bad = 0;

    for (unsigned a = 0xF0; a < 256; a++)
        for (unsigned b = 0; b < 256; b++)
            for (unsigned c = 0; c < 256; c++)
                for (size_t d = 0; d < sizeof last; d++) {
                    s[0] = (uint8_t)a, s[1] = (uint8_t)b, s[2] = (uint8_t)c, s[3] = last[d];
                    bad += !agree(s, 4);
                }
    CHECK_EQ(bad, 0);
}

static uint32_t rng_state = 12345;

static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

/* Appends the UTF-8 encoding of cp (assumed valid) to s. */
static size_t put_cp(uint8_t *s, uint32_t cp)
{
    if (cp < 0x80) {
        s[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        s[0] = (uint8_t)(0xC0 | cp >> 6);
        s[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        s[0] = (uint8_t)(0xE0 | cp >> 12);
        s[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        s[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    s[0] = (uint8_t)(0xF0 | cp >> 18);
    s[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    s[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    s[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* Random mostly-valid strings with occasional corruption, validated in
 * random chunks, against the reference. */
static void test_random_chunks(void)
{
    uint8_t s[96];
    long bad = 0;

    for (int iter = 0; iter < 200000; iter++) {
        size_t n = 0, want, pos, i = 0;
        int complete;
        uint32_t st = MW_UTF8_ACCEPT;

        while (n < sizeof s - 4) {
            uint32_t r = rng(), cp;

            switch (r % 4) {
            case 0:
                cp = r >> 8 & 0x7F;
                break;
            case 1:
                cp = 0x80 + (r >> 8) % 0x780;
                break;
            case 2:
                cp = 0x800 + (r >> 8) % 0xF800;
                break;
            default:
                cp = 0x10000 + (r >> 8) % 0x100000;
                break;
            }
            if (cp >= 0xD800 && cp <= 0xDFFF)
                cp = 0xFFFD;
            n += put_cp(s + n, cp);
            if (rng() % 8 == 0)
                break;
        }
        if (rng() % 2)
            s[rng() % n] = (uint8_t)rng();
        if (rng() % 4 == 0)
            n -= rng() % (n + 1);
        want = ref_fail_pos(s, n, &complete);
        pos = n;
        while (i < n) {
            size_t c = 1 + rng() % 16;

            if (c > n - i)
                c = n - i;
            if (mw__utf8_validate(&st, s + i, c) < 0) {
                /* The failing byte lies inside the failing chunk. */
                pos = i;
                if (!(want >= i && want < i + c))
                    bad++;
                break;
            }
            i += c;
        }
        if (pos == n && (want != n || mw__utf8_complete(st) != complete))
            bad++;
    }
    CHECK_EQ(bad, 0);
}

/* ---- fast path, splits, state handling -------------------------------- */

/* The word-at-a-time ASCII skip must not jump over a bad byte or a
 * multi-byte character at any position or buffer alignment. */
static void test_ascii_fast_path(void)
{
    uint8_t store[80];
    long bad = 0;

    for (size_t align = 0; align < 8; align++) {
        uint8_t *s = store + align;

        for (size_t n = 1; n <= 64; n++) {
            for (size_t at = 0; at < n; at++) {
                uint32_t st = MW_UTF8_ACCEPT;

                memset(s, 'a', n);
                s[at] = 0x80;
                bad += mw__utf8_validate(&st, s, n) != -1 || st != MW_UTF8_REJECT;

                st = MW_UTF8_ACCEPT;
                s[at] = 0xFF;
                bad += mw__utf8_validate(&st, s, n) != -1;

                /* A lead byte last: valid so far, but incomplete. */
                st = MW_UTF8_ACCEPT;
                memset(s, 'a', n);
                s[n - 1] = 0xE2;
                bad += mw__utf8_validate(&st, s, n) != 0 || mw__utf8_complete(st);

                /* A 2-byte character at position at. */
                if (at + 1 < n) {
                    st = MW_UTF8_ACCEPT;
                    memset(s, 'a', n);
                    s[at] = 0xC3, s[at + 1] = 0xA9;
                    bad += mw__utf8_validate(&st, s, n) != 0 || !mw__utf8_complete(st);
                }
            }
            uint32_t st = MW_UTF8_ACCEPT;
            memset(s, 'z', n);
            bad += mw__utf8_validate(&st, s, n) != 0 || st != MW_UTF8_ACCEPT;
        }
    }
    CHECK_EQ(bad, 0);
}

/* Splitting valid text at every point into two calls keeps it valid, and a
 * split never makes the intermediate state REJECT. */
static void test_every_split(void)
{
    static const char text[] = "ab\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80xyz0123456789\xf4\x8f\xbf\xbf"
                               "\xed\x9f\xbf\xee\x80\x80 tail of ascii to cross a word";
    const uint8_t *s = (const uint8_t *)text;
    size_t n = sizeof text - 1;

    for (size_t cut = 0; cut <= n; cut++) {
        uint32_t st = MW_UTF8_ACCEPT;

        CHECK_EQ(mw__utf8_validate(&st, s, cut), 0);
        CHECK(st != MW_UTF8_REJECT);
        CHECK_EQ(mw__utf8_validate(&st, s + cut, n - cut), 0);
        CHECK(mw__utf8_complete(st));
    }
}

static void test_reject_is_sticky(void)
{
    uint32_t st = MW_UTF8_ACCEPT;

    CHECK_EQ(mw__utf8_validate(&st, (const uint8_t *)"\xff", 1), -1);
    CHECK_EQ(st, MW_UTF8_REJECT);
    CHECK_EQ(mw__utf8_validate(&st, (const uint8_t *)"abc", 3), -1);
    CHECK_EQ(mw__utf8_validate(&st, NULL, 0), -1);
    CHECK(!mw__utf8_complete(st));

    /* Empty input leaves any state as it was. */
    st = MW_UTF8_ACCEPT;
    CHECK_EQ(mw__utf8_validate(&st, NULL, 0), 0);
    CHECK(mw__utf8_complete(st));
    CHECK_EQ(mw__utf8_validate(&st, (const uint8_t *)"\xf0\x9f", 2), 0);
    CHECK(!mw__utf8_complete(st));
    CHECK_EQ(mw__utf8_validate(&st, NULL, 0), 0);
    CHECK_EQ(mw__utf8_validate(&st, (const uint8_t *)"\x98\x80", 2), 0);
    CHECK(mw__utf8_complete(st));

    /* A garbage state is refused rather than used as a table index. */
    st = 1000;
    CHECK_EQ(mw__utf8_validate(&st, (const uint8_t *)"a", 1), -1);
    CHECK_EQ(st, MW_UTF8_REJECT);
}

/* Every code point round-trips: all scalar values valid, all surrogates
 * and everything above U+10FFFF refused. */
static void test_all_code_points(void)
{
    uint8_t s[4];
    long bad = 0;

    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        uint32_t st = MW_UTF8_ACCEPT;
        size_t n;

        if (cp >= 0xD800 && cp <= 0xDFFF) {
            /* Encode the surrogate the way CESU-8 would: must fail on byte 1. */
            s[0] = 0xED, s[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F)), s[2] = 0x80;
            bad += dfa_fail_pos_bytewise(s, 3, &st) != 1;
            continue;
        }
        n = put_cp(s, cp);
        bad += mw__utf8_validate(&st, s, n) != 0 || !mw__utf8_complete(st);
    }
    CHECK_EQ(bad, 0);
}

int main(void)
{
    RUN(test_vectors);
    RUN(test_exhaustive_short);
    RUN(test_exhaustive_four);
    RUN(test_random_chunks);
    RUN(test_ascii_fast_path);
    RUN(test_every_split);
    RUN(test_reject_is_sticky);
    RUN(test_all_code_points);
    return mwt_summary();
}
