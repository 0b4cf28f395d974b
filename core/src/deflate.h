/* permessage-deflate (RFC 7692): negotiation, and compressing and
 * inflating whole messages with zlib.
 *
 * Memory: a connection that keeps compression context (the default when the
 * client allows it) holds its own deflate stream (window 2^bits * 4 bytes +
 * 8 KiB, about 136 KiB at 15 bits) and inflate stream (about 40 KiB), made
 * on first use. Without context takeover a connection holds nothing: every
 * message is compressed or inflated by streams shared by the worker and
 * reset after each message, so one compressed frame also serves every
 * subscriber of a publish with that setting. */
#ifndef MW_DEFLATE_H
#define MW_DEFLATE_H

#include <stddef.h>
#include <stdint.h>
#include <zlib.h>

#include "http.h"

/* What a route allows (from its options). */
typedef struct mw_pmd_policy {
    uint8_t enabled;
    uint8_t context_takeover; /* 0: ask for no context takeover both ways */
    uint8_t window_bits;      /* our deflate window, 9..15 */
    int8_t level;             /* zlib level 1..9 */
    uint32_t threshold;       /* messages shorter than this go uncompressed */
} mw_pmd_policy_t;

/* What was agreed with one client. */
typedef struct mw_pmd {
    uint8_t server_no_ctx; /* we reset our compressor after each message */
    uint8_t client_no_ctx; /* the client resets its; we may too */
    uint8_t server_bits;   /* our deflate window */
    int8_t level;
    uint32_t threshold;
    z_stream *def; /* own deflate stream (context takeover), made on first use */
    z_stream *inf; /* own inflate stream (context takeover), made on first use */
} mw_pmd_t;

/* Picks the first permessage-deflate offer in the request's
 * Sec-WebSocket-Extensions that can be accepted under policy, declining
 * offers with unknown, repeated or invalid parameters (RFC 7692 5, 7.1) and
 * offers that ask for a server window of 8 bits (zlib cannot produce it).
 * Returns 1 and fills *out and the response's extension value in resp
 * ("permessage-deflate; ..."), or 0 when none is acceptable. */
int mw__pmd_negotiate(const mw_http_request_t *req, const mw_pmd_policy_t *policy, mw_pmd_t *out,
                      char *resp, size_t cap);

/* Streams shared by a worker for connections without context takeover. */
typedef struct mw_pmd_shared {
    z_stream *def[16]; /* by window bits, made on first use */
    z_stream *inf;
    uint8_t *buf; /* output of the last call */
    size_t cap;
} mw_pmd_shared_t;

void mw__pmd_shared_free(mw_pmd_shared_t *sh);
void mw__pmd_free(mw_pmd_t *p);

/* Compresses one message; returns its length, with the bytes in sh->buf
 * (valid until the next call), without the final 00 00 FF FF (RFC 7692
 * 7.2.1). */
size_t mw__pmd_compress(mw_pmd_shared_t *sh, mw_pmd_t *p, const uint8_t *in, size_t len);

/* The same for a publish to every subscriber without context takeover at
 * this window size and level. */
size_t mw__pmd_compress_shared(mw_pmd_shared_t *sh, int bits, int level, const uint8_t *in,
                               size_t len);

/* Inflates one message's payload (RSV1 set); the result is in sh->buf.
 * Returns its length, -1 when it would exceed max bytes (decided after at
 * most max + 1 bytes were produced: a decompression bomb costs nothing
 * more), or -2 when the data is not valid deflate. */
long mw__pmd_inflate(mw_pmd_shared_t *sh, mw_pmd_t *p, const uint8_t *in, size_t len, uint64_t max);

#endif
