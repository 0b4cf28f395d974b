/* libFuzzer target for the permessage-deflate inflate path
 * (core/src/deflate.c): attacker-chosen compressed payloads, with and
 * without context takeover, against a small message limit. Invariants: the
 * result is a length <= the limit, -1 (too big) or -2 (bad data); a
 * decompression bomb never makes the output buffer grow past limit + 1 and
 * a bit of slack; the context survives several messages in a row.
 *
 * Input: one byte of flags (bit 0: no context takeover), then messages as
 * length-prefixed chunks (two bytes, little endian, then that many bytes). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deflate.h"

#define LIMIT 65536

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    mw_pmd_shared_t sh;
    memset(&sh, 0, sizeof sh);
    mw_pmd_t p;
    memset(&p, 0, sizeof p);
    p.client_no_ctx = data[0] & 1;
    p.server_bits = 15;
    p.level = 1;
    size_t off = 1;
    while (off + 2 <= size) {
        size_t n = data[off] | (size_t)data[off + 1] << 8;
        off += 2;
        if (n > size - off)
            n = size - off;
        long r = mw__pmd_inflate(&sh, &p, data + off, n, LIMIT);
        if (r >= 0 && r > LIMIT)
            abort();
        if (r < -2)
            abort();
        /* The output buffer is bounded by the limit, not by the input. */
        if (sh.cap > 2 * (LIMIT + 1) + 65536)
            abort();
        off += n;
        if (r == -2 && !p.client_no_ctx)
            break; /* a broken context: the connection would be closed */
    }
    mw__pmd_free(&p);
    mw__pmd_shared_free(&sh);
    return 0;
}
