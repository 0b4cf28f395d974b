/* WebSocket frame codec (RFC 6455 section 5): the resumable in-place frame
 * parser, the close-payload check, header encoders and payload masking.
 *
 * The parser checks each header byte as soon as it is in the buffer, in the
 * order the bytes arrive, so a broken frame is refused at the first byte
 * that proves it broken and the error reported does not depend on how the
 * stream was split into reads. Data payloads are handed out as soon as they
 * arrive; control frames only whole, because their handling (pong, close)
 * needs the complete payload and they are small. */
#include "ws_frame.h"

#include <string.h>

#include "moonwire/moonwire.h"
#include "utf8.h"

/* Byte 0 and byte 1 of the frame header (RFC 6455 5.2). */
#define B0_FIN    0x80u
#define B0_RSV1   0x40u
#define B0_RSV23  0x30u
#define B0_OPCODE 0x0Fu
#define B1_MASK   0x80u
#define B1_LEN    0x7Fu

static int is_control(unsigned opcode)
{
    return (opcode & 0x8u) != 0;
}

/* Fills ev for an error and returns the code; close_code is what the
 * connection sends in its close frame (RFC 6455 7.4.1). */
static ssize_t fail(mw_ws_event_t *ev, int err, const char *why)
{
    ev->type = MW_WS_EV_NONE;
    ev->error = why;
    switch (err) {
    case MW_EUTF8:
        ev->close_code = MW_WS_CLOSE_INVALID_DATA;
        break;
    case MW_ETOOBIG:
        ev->close_code = MW_WS_CLOSE_TOO_BIG;
        break;
    default:
        ev->close_code = MW_WS_CLOSE_PROTOCOL;
        break;
    }
    return err;
}

/* Rules that the first header byte alone decides. Returns NULL when the
 * byte is acceptable in the parser's current state, else the broken rule. */
static const char *check_byte0(const mw_ws_parser_t *p, unsigned b0)
{
    unsigned op = b0 & B0_OPCODE;

    /* RFC 6455 5.2: RSV bits are 0 unless an extension defines them, and
     * permessage-deflate (RFC 7692 6) only defines RSV1. */
    if (b0 & B0_RSV23)
        return "RSV2 or RSV3 set";
    switch (op) {
    case MW_WS_OP_CONT:
        /* RFC 6455 5.4: a continuation needs a fragmented message to continue. */
        if (!p->msg_opcode)
            return "continuation frame without a message in progress";
        /* RFC 7692 6.1: RSV1 marks a compressed message on its first frame only. */
        if (b0 & B0_RSV1)
            return "RSV1 set on a continuation frame";
        return NULL;
    case MW_WS_OP_TEXT:
    case MW_WS_OP_BINARY:
        /* RFC 6455 5.4: fragments of one message are not interleaved with
         * another data message. */
        if (p->msg_opcode)
            return "new data message before the fragmented one ended";
        if ((b0 & B0_RSV1) && !p->rsv1_allowed)
            return "RSV1 set without a negotiated extension";
        return NULL;
    case MW_WS_OP_CLOSE:
    case MW_WS_OP_PING:
    case MW_WS_OP_PONG:
        /* RFC 7692 6.1: compression applies to data messages, never to
         * control frames. */
        if (b0 & B0_RSV1)
            return "RSV1 set on a control frame";
        /* RFC 6455 5.5: control frames are never fragmented -> 1002. */
        if (!(b0 & B0_FIN))
            return "fragmented control frame";
        return NULL;
    default:
        /* RFC 6455 5.2: opcodes 3-7 and B-F are reserved -> 1002. */
        return "reserved opcode";
    }
}

/* Rules that the second byte decides, given an acceptable first byte. */
static const char *check_byte1(const mw_ws_parser_t *p, unsigned b0, unsigned b1)
{
    /* RFC 6455 5.1: a client masks every frame and a server masks none; the
     * receiving end closes on a frame that breaks this. */
    if (p->server && !(b1 & B1_MASK))
        return "unmasked frame from a client";
    if (!p->server && (b1 & B1_MASK))
        return "masked frame from a server";
    /* RFC 6455 5.5: control frame payloads are at most 125 bytes, and the
     * 7-bit length codes 126 and 127 only introduce longer lengths. */
    if (is_control(b0 & B0_OPCODE) && (b1 & B1_LEN) > MW_WS_MAX_CONTROL)
        return "control frame longer than 125 bytes";
    return NULL;
}

/* Hands out the next chunk of the current data frame's payload from
 * data[0..avail), after `used` bytes of this call went to its header. */
static ssize_t deliver(mw_ws_parser_t *p, uint8_t *data, size_t avail, size_t used,
                       mw_ws_event_t *ev)
{
    size_t n = p->remaining < avail ? (size_t)p->remaining : avail;
    int last;

    /* A non-empty frame with no payload bytes here yet has nothing to report
     * (an empty frame still produces its empty chunk below). */
    if (n == 0 && p->remaining > 0)
        return (ssize_t)used;
    if (p->server)
        p->mask_off = (uint8_t)mw__ws_mask(data, n, p->mask, p->mask_off);
    p->remaining -= n;
    p->msg_len += n;
    last = p->remaining == 0 && p->frame_fin;

    /* RFC 6455 8.1: text must be UTF-8, and we fail as soon as it cannot
     * become valid, also across chunk and frame boundaries. A compressed
     * message (RSV1, RFC 7692) carries deflate output here, not text, so
     * its UTF-8 is checked by the caller on the inflated bytes instead. */
    if (p->msg_text) {
        if (mw__utf8_validate(&p->utf8, data, n) < 0)
            return fail(ev, MW_EUTF8, "invalid UTF-8 in a text message");
        if (last && !mw__utf8_complete(p->utf8))
            return fail(ev, MW_EUTF8, "text message ends inside a UTF-8 sequence");
    }

    ev->type = MW_WS_EV_DATA;
    ev->opcode = p->msg_opcode;
    ev->first = !p->msg_started;
    ev->last = (uint8_t)last;
    ev->rsv1 = p->msg_rsv1;
    ev->data = data;
    ev->len = n;
    p->msg_started = 1;

    if (p->remaining == 0) {
        p->in_frame = 0;
        if (p->frame_fin) {
            p->msg_opcode = 0;
            p->msg_rsv1 = 0;
            p->msg_text = 0;
            p->msg_started = 0;
            p->msg_len = 0;
            p->utf8 = MW_UTF8_ACCEPT;
        }
    }
    return (ssize_t)(used + n);
}

/* The common frame in one go: a whole masked text or binary message of at
 * most 125 bytes (FIN, no RSV bit, no fragmented message in progress) that
 * lies entirely in buf, buf holding at least 6 bytes. Leaves the parser's
 * state as it is (between messages) and returns what it consumed with the
 * payload in *data and *plen, the error of the general path for bad UTF-8
 * (ev set), or 0 for any other frame, which the general path then parses
 * (nothing was changed). Profiled: the general path's state keeping cost
 * about 200 instructions per small message, more than the unmasking and
 * the UTF-8 check. */
typedef uint64_t mw_u64x2_t __attribute__((vector_size(16)));

static inline size_t small_limit(const mw_ws_parser_t *p)
{
    return p->max_message_size && p->max_message_size < 125 ? p->max_message_size : 125;
}

/* lim: small_limit(p), the largest payload taken here */
static inline ssize_t small_frame(size_t lim, uint8_t *buf, size_t len, uint8_t **data,
                                  size_t *plen, mw_ws_event_t *ev)
{
    unsigned b0 = buf[0], b1 = buf[1];
    size_t n = b1 & B1_LEN;
    if ((b0 != (B0_FIN | MW_WS_OP_TEXT) && b0 != (B0_FIN | MW_WS_OP_BINARY)) || !(b1 & B1_MASK) ||
        n > lim || len - 6 < n)
        return 0;
    uint8_t *d = buf + 6;
    uint32_t m;
    memcpy(&m, buf + 2, 4);
    uint64_t k = (uint64_t)m << 32 | m, high = 0;
    size_t i = 0;
    if (n >= 16) {
        /* 16 bytes a turn (SSE2 on x86-64, NEON on arm64); GCC's own
         * vectorization of the word loop shuffled more than it XORed. */
        mw_u64x2_t kv = {k, k}, hv = {0, 0};
        for (; n - i >= 16; i += 16) {
            mw_u64x2_t v;
            memcpy(&v, d + i, 16);
            v ^= kv;
            hv |= v;
            memcpy(d + i, &v, 16);
        }
        high = hv[0] | hv[1];
    }
    if (n - i >= 8) {
        uint64_t w;
        memcpy(&w, d + i, 8);
        w ^= k;
        high |= w;
        memcpy(d + i, &w, 8);
        i += 8;
    }
    for (; i < n; i++) {
        d[i] ^= buf[2 + (i & 3)];
        high |= d[i];
    }
    /* ASCII needs no more checking; anything else goes through the
     * validator, which fails as the general path would. */
    if (b0 == (B0_FIN | MW_WS_OP_TEXT) && (high & UINT64_C(0x8080808080808080))) {
        uint32_t st = MW_UTF8_ACCEPT;
        if (mw__utf8_validate(&st, d, n) < 0)
            return fail(ev, MW_EUTF8, "invalid UTF-8 in a text message");
        if (!mw__utf8_complete(st))
            return fail(ev, MW_EUTF8, "text message ends inside a UTF-8 sequence");
    }
    *data = d;
    *plen = n;
    return (ssize_t)(6 + n);
}

ssize_t mw__ws_parse_whole(mw_ws_parser_t *p, uint8_t *buf, size_t len, mw_ws_whole_t *out,
                           size_t max, size_t *count, mw_ws_event_t *ev)
{
    size_t off = 0, n = 0;
    if (p->server && !p->in_frame && !p->msg_opcode) {
        size_t lim = small_limit(p);
        while (n < max && len - off >= 6) {
            uint8_t *data;
            size_t plen;
            ssize_t r = small_frame(lim, buf + off, len - off, &data, &plen, ev);
            if (r <= 0) {
                if (r < 0) {
                    *count = n;
                    return r;
                }
                break;
            }
            out[n].data = data;
            out[n].len = plen;
            out[n].binary = buf[off] == (B0_FIN | MW_WS_OP_BINARY);
            n++;
            off += (size_t)r;
        }
    }
    *count = n;
    return (ssize_t)off;
}

ssize_t mw__ws_parse(mw_ws_parser_t *p, uint8_t *buf, size_t len, mw_ws_event_t *ev)
{
    unsigned b0, b1, op, len7;
    size_t hdr;
    uint64_t plen;
    const char *why;

    if (p->in_frame) {
        memset(ev, 0, sizeof *ev);
        return deliver(p, buf, len, 0, ev);
    }
    if (p->server && !p->msg_opcode && len >= 6) {
        uint8_t *data;
        size_t n;
        ssize_t r = small_frame(small_limit(p), buf, len, &data, &n, ev);
        if (r > 0) {
            *ev = (mw_ws_event_t){.type = MW_WS_EV_DATA,
                                  .opcode = (uint8_t)(buf[0] & B0_OPCODE),
                                  .first = 1,
                                  .last = 1,
                                  .data = data,
                                  .len = n};
        }
        if (r)
            return r;
    }
    memset(ev, 0, sizeof *ev);

    if (len < 1)
        return 0;
    b0 = buf[0];
    if ((why = check_byte0(p, b0)) != NULL)
        return fail(ev, MW_EPROTO, why);
    if (len < 2)
        return 0;
    b1 = buf[1];
    if ((why = check_byte1(p, b0, b1)) != NULL)
        return fail(ev, MW_EPROTO, why);

    op = b0 & B0_OPCODE;
    len7 = b1 & B1_LEN;
    hdr = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + (p->server ? 4 : 0);
    if (len < hdr)
        return 0;

    if (len7 == 126) {
        plen = (uint64_t)buf[2] << 8 | buf[3];
        /* RFC 6455 5.2: "the minimal number of bytes MUST be used". */
        if (plen < 126)
            return fail(ev, MW_EPROTO, "16-bit length used for a length below 126");
    } else if (len7 == 127) {
        plen = 0;
        for (int i = 0; i < 8; i++)
            plen = plen << 8 | buf[2 + i];
        /* RFC 6455 5.2: the most significant bit of a 64-bit length is 0. */
        if (plen >> 63)
            return fail(ev, MW_EPROTO, "64-bit length with the top bit set");
        if (plen <= 0xFFFF)
            return fail(ev, MW_EPROTO, "64-bit length used for a length below 65536");
    } else {
        plen = len7;
    }
    if (p->server)
        memcpy(p->mask, buf + hdr - 4, 4);

    if (is_control(op)) {
        /* Control frames are reported whole: wait until all of it is here.
         * plen <= 125 was checked on byte 1. */
        if (len - hdr < plen)
            return 0;
        if (p->server)
            mw__ws_mask(buf + hdr, (size_t)plen, p->mask, 0);
        ev->type = MW_WS_EV_CONTROL;
        ev->opcode = (uint8_t)op;
        ev->data = buf + hdr;
        ev->len = (size_t)plen;
        return (ssize_t)(hdr + plen);
    }

    /* The size limit is enforced before any payload is read, so a peer
     * cannot make us buffer a message we will refuse anyway (RFC 6455 10.4).
     * msg_len <= max_message_size holds, so the subtraction cannot wrap. */
    if (p->max_message_size && plen > p->max_message_size - p->msg_len)
        return fail(ev, MW_ETOOBIG, "message larger than the configured maximum");

    if (op != MW_WS_OP_CONT) {
        p->msg_opcode = (uint8_t)op;
        p->msg_rsv1 = (b0 & B0_RSV1) ? 1 : 0;
        /* One byte of its own: testing opcode and RSV1 here let GCC read
         * both (and their neighbours) with one wide load in deliver, which
         * waited for these separate byte stores to retire (perf: the most
         * sampled instruction of an echo's parse). */
        p->msg_text = op == MW_WS_OP_TEXT && !p->msg_rsv1;
        p->msg_started = 0;
        p->msg_len = 0;
        p->utf8 = MW_UTF8_ACCEPT;
    }
    p->frame_fin = (b0 & B0_FIN) ? 1 : 0;
    p->remaining = plen;
    p->mask_off = 0;
    p->in_frame = 1;
    return deliver(p, buf + hdr, len - hdr, hdr, ev);
}

int mw__ws_close_code_valid(unsigned code)
{
    /* RFC 6455 7.4.1 and the IANA registry (7.4.2): 1004 is reserved, 1005,
     * 1006 and 1015 are for reporting only and never sent, 1016..2999 are
     * unassigned; 3000..3999 are registered by libraries and 4000..4999 are
     * private use. */
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

int mw__ws_close_check(const uint8_t *payload, size_t len, uint16_t *code)
{
    uint32_t utf8 = MW_UTF8_ACCEPT;
    unsigned c;

    /* RFC 6455 7.1.5: an empty close has no status code, reported as 1005. */
    if (len == 0) {
        *code = MW_WS_CLOSE_NO_STATUS;
        return 0;
    }
    /* RFC 6455 5.5.1: a body starts with a 2-byte code, so 1 byte is broken. */
    if (len == 1)
        return MW_WS_CLOSE_PROTOCOL;
    c = (unsigned)payload[0] << 8 | payload[1];
    if (!mw__ws_close_code_valid(c))
        return MW_WS_CLOSE_PROTOCOL;
    /* RFC 6455 5.5.1: the reason after the code is UTF-8 -> 1007. */
    if (mw__utf8_validate(&utf8, payload + 2, len - 2) < 0 || !mw__utf8_complete(utf8))
        return MW_WS_CLOSE_INVALID_DATA;
    *code = (uint16_t)c;
    return 0;
}

/* Writes byte 0, byte 1 and the extended length; returns their size. */
static size_t put_header(uint8_t *out, int fin, int rsv1, int opcode, uint64_t len,
                         unsigned maskbit)
{
    out[0] = (uint8_t)((fin ? B0_FIN : 0) | (rsv1 ? B0_RSV1 : 0) | ((unsigned)opcode & B0_OPCODE));
    /* RFC 6455 5.2: always the shortest length form, as we demand of peers. */
    if (len <= 125) {
        out[1] = (uint8_t)(maskbit | (unsigned)len);
        return 2;
    }
    if (len <= 0xFFFF) {
        out[1] = (uint8_t)(maskbit | 126);
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    out[1] = (uint8_t)(maskbit | 127);
    for (int i = 0; i < 8; i++)
        out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 10;
}

size_t mw__ws_header(uint8_t out[MW_WS_MAX_HEADER], int fin, int rsv1, int opcode, uint64_t len)
{
    return put_header(out, fin, rsv1, opcode, len, 0);
}

size_t mw__ws_header_masked(uint8_t out[MW_WS_MAX_HEADER], int fin, int rsv1, int opcode,
                            uint64_t len, const uint8_t mask[4])
{
    size_t n = put_header(out, fin, rsv1, opcode, len, B1_MASK);

    memcpy(out + n, mask, 4);
    return n + 4;
}

unsigned mw__ws_mask(uint8_t *p, size_t len, const uint8_t mask[4], unsigned off)
{
    /* The key repeated from the current position, laid out in memory order
     * (so the XOR is right on either endianness). A word is two whole key
     * periods, so the position after each word is unchanged. Words are
     * loaded and stored with memcpy: unaligned access is fine on the
     * machines we run on, and a byte-wise prologue to reach alignment cost
     * more than the XOR itself for small messages. The word is built by
     * rotating the 4-byte key in a register: assembling it from 8 byte
     * stores and reading it back as one word stalled the CPU on every
     * frame (store-to-load forwarding fails; perf's hottest spot of an
     * echo's parse). */
    uint32_t m;
    uint64_t k, w;
    size_t i = 0;

    off &= 3;
    memcpy(&m, mask, 4);
    if (off) {
        unsigned sh = 8 * off;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        m = m << sh | m >> (32 - sh);
#else
        m = m >> sh | m << (32 - sh);
#endif
    }
    k = (uint64_t)m << 32 | m;
    for (; len - i >= 8; i += 8) {
        memcpy(&w, p + i, 8);
        w ^= k;
        memcpy(p + i, &w, 8);
    }
    for (; i < len; i++)
        p[i] ^= mask[(off + (unsigned)i) & 3];
    return (off + (unsigned)len) & 3;
}
