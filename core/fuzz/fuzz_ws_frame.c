/* libFuzzer target for the WebSocket frame parser (core/src/ws_frame.c).
 *
 * Input layout: one configuration byte (bit 0 server side, bit 1 RSV1
 * allowed, bits 2-4 pick a message size limit), then the stream as
 * length-prefixed reads: a byte n followed by up to n bytes, so the fuzzer
 * chooses where reads split the stream, including empty reads. A simulated
 * caller feeds those reads the way the connection layer does (unconsumed
 * bytes are re-presented with the next read appended), always in a buffer of
 * exactly the bytes it holds so ASan sees any read past the end. The same
 * stream is then parsed as one buffer, and both runs must report the same
 * messages, control frames and error. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moonwire/moonwire.h"
#include "utf8.h"
#include "ws_frame.h"

#define FUZZ_ASSERT(c)                                                                \
    do {                                                                              \
        if (!(c)) {                                                                   \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #c); \
            abort();                                                                  \
        }                                                                             \
    } while (0)

typedef struct {
    mw_ws_parser_t p;
    uint8_t *pend; /* unconsumed bytes */
    size_t pn;
    int err;
    uint16_t close_code;
    uint64_t hash; /* FNV-1a over completed messages and control frames */
    uint64_t msg_hash;
    size_t msg_len;
    int in_msg;
    uint8_t msg_op, msg_rsv1;
} run_t;

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;

    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * UINT64_C(0x100000001b3);
    return h;
}

static void feed(run_t *r, const uint8_t *in, size_t n)
{
    if (r->err)
        return;
    memcpy(r->pend + r->pn, in, n);
    r->pn += n;
    for (;;) {
        mw_ws_event_t ev;
        /* An exact-size copy, so a read beyond pn is an ASan report. */
        uint8_t *buf = malloc(r->pn ? r->pn : 1);
        ssize_t k;

        memcpy(buf, r->pend, r->pn);
        k = mw__ws_parse(&r->p, buf, r->pn, &ev);
        if (k < 0) {
            FUZZ_ASSERT(k == MW_EPROTO || k == MW_EUTF8 || k == MW_ETOOBIG);
            FUZZ_ASSERT(ev.error != NULL);
            FUZZ_ASSERT(ev.close_code == (k == MW_EPROTO ? 1002 : k == MW_EUTF8 ? 1007 : 1009));
            r->err = (int)k;
            r->close_code = ev.close_code;
            free(buf);
            return;
        }
        FUZZ_ASSERT((size_t)k <= r->pn);
        if (r->p.max_message_size)
            FUZZ_ASSERT(r->p.msg_len <= r->p.max_message_size);
        if (ev.type == MW_WS_EV_DATA) {
            FUZZ_ASSERT(ev.data >= buf && ev.data + ev.len <= buf + k);
            FUZZ_ASSERT(ev.opcode == MW_WS_OP_TEXT || ev.opcode == MW_WS_OP_BINARY);
            FUZZ_ASSERT(ev.first == !r->in_msg);
            if (ev.first) {
                r->in_msg = 1, r->msg_len = 0, r->msg_hash = UINT64_C(0xcbf29ce484222325);
                r->msg_op = ev.opcode, r->msg_rsv1 = ev.rsv1;
            }
            FUZZ_ASSERT(ev.opcode == r->msg_op && ev.rsv1 == r->msg_rsv1);
            FUZZ_ASSERT(ev.rsv1 == 0 || r->p.rsv1_allowed);
            r->msg_hash = fnv(r->msg_hash, ev.data, ev.len);
            r->msg_len += ev.len;
            if (ev.last) {
                uint8_t tag[2] = {'M', ev.opcode};

                if (r->p.max_message_size)
                    FUZZ_ASSERT(r->msg_len <= r->p.max_message_size);
                FUZZ_ASSERT(r->p.msg_opcode == 0 && !r->p.in_frame);
                r->hash = fnv(r->hash, tag, 2);
                r->hash = fnv(r->hash, &r->msg_hash, sizeof r->msg_hash);
                r->hash = fnv(r->hash, &r->msg_len, sizeof r->msg_len);
                r->in_msg = 0;
            }
        } else if (ev.type == MW_WS_EV_CONTROL) {
            uint8_t tag[2] = {'C', ev.opcode};

            FUZZ_ASSERT(ev.data >= buf && ev.data + ev.len <= buf + k);
            FUZZ_ASSERT(ev.len <= MW_WS_MAX_CONTROL);
            FUZZ_ASSERT(ev.opcode == MW_WS_OP_CLOSE || ev.opcode == MW_WS_OP_PING ||
                        ev.opcode == MW_WS_OP_PONG);
            if (ev.opcode == MW_WS_OP_CLOSE) {
                uint16_t code = 0;
                int c = mw__ws_close_check(ev.data, ev.len, &code);

                FUZZ_ASSERT(c == 0 || c == 1002 || c == 1007);
                if (c == 0)
                    FUZZ_ASSERT(code == 1005 || mw__ws_close_code_valid(code));
            }
            r->hash = fnv(r->hash, tag, 2);
            r->hash = fnv(r->hash, ev.data, ev.len);
        } else {
            FUZZ_ASSERT(ev.type == MW_WS_EV_NONE);
        }
        free(buf);
        if (k == 0) {
            /* Only "need more bytes" may consume nothing. */
            FUZZ_ASSERT(ev.type == MW_WS_EV_NONE);
            return;
        }
        memmove(r->pend, r->pend + k, r->pn - (size_t)k);
        r->pn -= (size_t)k;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint64_t limits[8] = {0, 1, 8, 125, 126, 1000, 65535, 65536};
    mw_ws_parser_t cfg;
    uint8_t *stream;
    size_t *cuts, ncuts = 0, sn = 0;
    run_t chunked, whole;

    if (size < 1)
        return 0;
    memset(&cfg, 0, sizeof cfg);
    cfg.server = data[0] & 1;
    cfg.rsv1_allowed = (data[0] >> 1) & 1;
    cfg.max_message_size = limits[(data[0] >> 2) & 7];
    data++, size--;

    /* Undo the length prefixes: stream is the bytes, cuts the read ends. */
    stream = malloc(size + 1);
    cuts = malloc((size + 1) * sizeof *cuts);
    for (size_t i = 0; i < size;) {
        size_t n = data[i++];

        if (n > size - i)
            n = size - i;
        memcpy(stream + sn, data + i, n);
        sn += n, i += n;
        cuts[ncuts++] = sn;
    }

    memset(&chunked, 0, sizeof chunked);
    chunked.p = cfg;
    chunked.pend = malloc(sn + 1);
    for (size_t c = 0, at = 0; c < ncuts; c++) {
        feed(&chunked, stream + at, cuts[c] - at);
        at = cuts[c];
    }
    memset(&whole, 0, sizeof whole);
    whole.p = cfg;
    whole.pend = malloc(sn + 1);
    feed(&whole, stream, sn);

    /* The split into reads must not change what the stream means. */
    FUZZ_ASSERT(chunked.err == whole.err);
    FUZZ_ASSERT(chunked.close_code == whole.close_code);
    FUZZ_ASSERT(chunked.hash == whole.hash);
    if (!whole.err)
        FUZZ_ASSERT(chunked.pn == whole.pn);

    free(chunked.pend);
    free(whole.pend);
    free(cuts);
    free(stream);
    return 0;
}
