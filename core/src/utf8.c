/* Incremental UTF-8 validation (RFC 3629 section 4) as a byte-class DFA.
 *
 * Every byte is mapped to one of twelve classes, and a small transition
 * table moves between nine states. The classes are chosen so that the
 * second byte of a sequence is range-checked as well as the first: that is
 * where overlong forms (E0 80..9F, F0 80..8F), surrogates (ED A0..BF) and
 * code points above U+10FFFF (F4 90..BF) are told apart from valid ones, so
 * every such sequence is refused on the byte that makes it impossible,
 * which is the fail-fast behaviour RFC 6455 8.1 asks for. */
#include "utf8.h"

#include <string.h>

/* Byte classes. The continuation range 80..BF is split in three because
 * the restricted leads E0, ED, F0 and F4 each accept only part of it. */
enum {
    C_ASCII, /* 00..7F */
    C_CONT1, /* 80..8F */
    C_CONT2, /* 90..9F */
    C_CONT3, /* A0..BF */
    C_BAD,   /* C0, C1 (only overlong 2-byte forms), F5..FF (beyond U+10FFFF) */
    C_LEAD2, /* C2..DF */
    C_E0,    /* E0: next byte A0..BF, or the form is overlong */
    C_LEAD3, /* E1..EC, EE, EF */
    C_ED,    /* ED: next byte 80..9F, or it encodes a surrogate */
    C_F0,    /* F0: next byte 90..BF, or the form is overlong */
    C_LEAD4, /* F1..F3 */
    C_F4,    /* F4: next byte 80..8F, or the code point exceeds U+10FFFF */
    N_CLASSES
};

/* clang-format off */
static const uint8_t byte_class[256] = {
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, /* 00..0F */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, /* 10..1F */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, /* 20..2F */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, /* 30..3F */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, /* 40..4F */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, /* 50..5F */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, /* 60..6F */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, /* 70..7F */
     1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1, /* 80..8F */
     2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2, /* 90..9F */
     3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3, /* A0..AF */
     3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3, /* B0..BF */
     4,  4,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5, /* C0..CF */
     5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5, /* D0..DF */
     6,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  8,  7,  7, /* E0..EF */
     9, 10, 10, 10, 11,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4, /* F0..FF */
};
/* clang-format on */

/* States. ACCEPT (0) and REJECT (1) are fixed by utf8.h; the others say
 * how many continuation bytes are still due and which range the next one
 * must fall in. */
enum {
    S_ACCEPT = MW_UTF8_ACCEPT,
    S_REJECT = MW_UTF8_REJECT,
    S_NEED1, /* one more byte 80..BF */
    S_NEED2, /* two more, the next 80..BF */
    S_E0,    /* two more, the next A0..BF */
    S_ED,    /* two more, the next 80..9F */
    S_NEED3, /* three more, the next 80..BF */
    S_F0,    /* three more, the next 90..BF */
    S_F4,    /* three more, the next 80..8F */
    N_STATES
};

/* transition[state][class], R meaning REJECT. The columns follow the class
 * enum: ASCII CONT1 CONT2 CONT3 BAD LEAD2 E0 LEAD3 ED F0 LEAD4 F4. */
#define R S_REJECT
/* clang-format off */
static const uint8_t transition[N_STATES][N_CLASSES] = {
    [S_ACCEPT] = {S_ACCEPT, R, R, R, R, S_NEED1, S_E0, S_NEED2, S_ED, S_F0, S_NEED3, S_F4},
    [S_REJECT] = {R, R, R, R, R, R, R, R, R, R, R, R},
    [S_NEED1]  = {R, S_ACCEPT, S_ACCEPT, S_ACCEPT, R, R, R, R, R, R, R, R},
    [S_NEED2]  = {R, S_NEED1, S_NEED1, S_NEED1, R, R, R, R, R, R, R, R},
    [S_E0]     = {R, R, R, S_NEED1, R, R, R, R, R, R, R, R},
    [S_ED]     = {R, S_NEED1, S_NEED1, R, R, R, R, R, R, R, R, R},
    [S_NEED3]  = {R, S_NEED2, S_NEED2, S_NEED2, R, R, R, R, R, R, R, R},
    [S_F0]     = {R, R, S_NEED2, S_NEED2, R, R, R, R, R, R, R, R},
    [S_F4]     = {R, S_NEED2, R, R, R, R, R, R, R, R, R, R},
};
/* clang-format on */
#undef R

/* True when the 8 bytes at p are all ASCII. memcpy keeps the load legal at
 * any alignment; compilers turn it into one unaligned load. */
static int ascii8(const uint8_t *p)
{
    uint64_t w;
    memcpy(&w, p, sizeof w);
    return (w & UINT64_C(0x8080808080808080)) == 0;
}

int mw__utf8_validate(uint32_t *state, const uint8_t *p, size_t len)
{
    uint32_t s = *state;
    size_t i = 0;

    /* A state we never produce can only come from a caller's bug; refuse
     * it rather than index past the table. */
    if (s >= N_STATES)
        s = S_REJECT;
    if (s == S_REJECT) {
        *state = S_REJECT;
        return -1;
    }
    while (i < len) {
        /* ASCII never changes the ACCEPT state, so at a boundary whole
         * words of it can be skipped without consulting the table. */
        if (s == S_ACCEPT) {
            while (len - i >= 8 && ascii8(p + i))
                i += 8;
            while (i < len && p[i] < 0x80)
                i++;
            if (i == len)
                break;
        }
        s = transition[s][byte_class[p[i++]]];
        if (s == S_REJECT) {
            *state = S_REJECT;
            return -1;
        }
    }
    *state = s;
    return 0;
}
