/* Incremental UTF-8 validation (RFC 3629) for WebSocket text messages.
 *
 * RFC 6455 8.1 requires text payloads to be valid UTF-8 and lets an endpoint
 * fail fast as soon as a message can no longer become valid, also when a code
 * point is split across frames or reads. The validator is a pure function
 * over bytes with one word of state: no allocation, no I/O. */
#ifndef MW_UTF8_H
#define MW_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* State between calls. MW_UTF8_ACCEPT means "at a code point boundary". */
#define MW_UTF8_ACCEPT 0u
#define MW_UTF8_REJECT 1u

/* Validates len bytes of p, continuing from *state (start a message with
 * MW_UTF8_ACCEPT). Returns 0 while the bytes seen so far can still be the
 * prefix of valid UTF-8 and updates *state; returns -1 as soon as they
 * cannot (overlong forms, surrogates U+D800..U+DFFF, code points above
 * U+10FFFF, stray continuation bytes, bytes C0, C1, F5..FF), leaving *state
 * at MW_UTF8_REJECT. Borrows p. */
int mw__utf8_validate(uint32_t *state, const uint8_t *p, size_t len);

/* True when a message may end in this state (no partial code point). */
static inline int mw__utf8_complete(uint32_t state)
{
    return state == MW_UTF8_ACCEPT;
}

#endif
