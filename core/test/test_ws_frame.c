/* Tests for core/src/ws_frame.c: the RFC 6455 5.7 examples, every protocol
 * rule the parser enforces, size limits, UTF-8 of text messages, streams
 * fed at every split point through a simulated caller, the close-payload
 * check, the header encoders and masking at every offset and length. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "moonwire/moonwire.h"
#include "mwtest.h"
#include "ws_frame.h"

static const uint8_t rfc_mask[4] = {0x37, 0xfa, 0x21, 0x3d};

/* ---- building input --------------------------------------------------- */

typedef struct {
    uint8_t b[70000 * 2];
    size_t n;
} stream_t;

/* Appends a frame: b0 is the first header byte as sent (FIN, RSV, opcode);
 * the length is encoded minimally; masked frames use the RFC 5.7 key. An
 * encoder written independently of the one under test. */
static void put_frame(stream_t *s, unsigned b0, int masked, const void *payload, size_t len)
{
    uint8_t *o = s->b + s->n;
    size_t h = 0;

    o[h++] = (uint8_t)b0;
    if (len < 126) {
        o[h++] = (uint8_t)((masked ? 0x80 : 0) | len);
    } else if (len < 65536) {
        o[h++] = (uint8_t)((masked ? 0x80 : 0) | 126);
        o[h++] = (uint8_t)(len >> 8);
        o[h++] = (uint8_t)len;
    } else {
        o[h++] = (uint8_t)((masked ? 0x80 : 0) | 127);
        for (int i = 7; i >= 0; i--)
            o[h++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    if (masked) {
        memcpy(o + h, rfc_mask, 4);
        h += 4;
    }
    for (size_t i = 0; i < len; i++)
        o[h + i] = ((const uint8_t *)payload)[i] ^ (masked ? rfc_mask[i % 4] : 0);
    s->n += h + len;
}

static void put_raw(stream_t *s, const void *bytes, size_t len)
{
    memcpy(s->b + s->n, bytes, len);
    s->n += len;
}

/* ---- the simulated caller --------------------------------------------- */

/* What a whole run produced: completed messages and control frames as a
 * byte transcript, and the final error if any. Chunks are merged into
 * messages, so runs over different splits of one stream must produce
 * identical transcripts. */
typedef struct {
    uint8_t t[70000 * 2];
    size_t tn;
    int err;
    uint16_t close_code;
    long violations; /* broken invariants seen by the driver */
    size_t events;
    size_t leftover; /* unconsumed bytes at the end */
} result_t;

typedef struct {
    mw_ws_parser_t p;
    uint8_t pend[70000 * 2]; /* the caller's read buffer: unconsumed bytes */
    size_t pn;
    uint8_t msg[70000 * 2]; /* the message being assembled */
    size_t mn;
    int in_msg;
    uint8_t msg_op, msg_rsv1;
    int use_whole;      /* try mw__ws_parse_whole before each mw__ws_parse, as the
                           connection layer does */
    uint32_t whole_rng; /* its batch sizes */
} caller_t;

static void t_put(result_t *r, const void *p, size_t n)
{
    memcpy(r->t + r->tn, p, n);
    r->tn += n;
}

static void record(result_t *r, char kind, uint8_t op, uint8_t rsv1, const uint8_t *p, size_t n)
{
    uint8_t h[7] = {(uint8_t)kind,     op,        rsv1, (uint8_t)(n >> 24), (uint8_t)(n >> 16),
                    (uint8_t)(n >> 8), (uint8_t)n};
    t_put(r, h, sizeof h);
    t_put(r, p, n);
}

/* Records the parser's error (and frees the read's buffer). */
static void parse_failed(result_t *r, ssize_t k, const mw_ws_event_t *ev, uint8_t *buf)
{
    r->err = (int)k;
    r->close_code = ev->close_code;
    r->violations += ev->error == NULL;
    free(buf);
}

/* Appends bytes as one read, then parses until the parser wants more, the
 * way the connection layer will: consumed bytes are dropped from the front
 * of the buffer and unconsumed ones re-presented with the next read. */
static void feed(caller_t *c, result_t *r, const uint8_t *in, size_t n)
{
    if (r->err)
        return;
    memcpy(c->pend + c->pn, in, n);
    c->pn += n;
    for (;;) {
        mw_ws_event_t ev;
        /* The parser sees a heap block of exactly the pending bytes, so
         * under ASan any read past the end is caught. */
        uint8_t *buf = malloc(c->pn ? c->pn : 1);
        ssize_t k;

        memcpy(buf, c->pend, c->pn);
        if (c->use_whole) {
            mw_ws_whole_t out[4];
            size_t cnt = 99;
            c->whole_rng = c->whole_rng * 1103515245u + 12345u;
            k = mw__ws_parse_whole(&c->p, buf, c->pn, out, 1 + (c->whole_rng >> 16) % 4, &cnt, &ev);
            r->violations += cnt > 4 || (k >= 0 && (size_t)k > c->pn);
            for (size_t i = 0; i < cnt && i < 4; i++) {
                r->events++;
                r->violations += out[i].data < buf || out[i].data + out[i].len > buf + c->pn;
                record(r, 'M', out[i].binary ? 2 : 1, 0, out[i].data, out[i].len);
            }
            if (k < 0) {
                parse_failed(r, k, &ev, buf);
                return;
            }
            if (k > 0) {
                memmove(c->pend, c->pend + k, c->pn - (size_t)k);
                c->pn -= (size_t)k;
                free(buf);
                continue;
            }
            r->violations += cnt != 0;
        }
        k = mw__ws_parse(&c->p, buf, c->pn, &ev);
        if (k < 0) {
            parse_failed(r, k, &ev, buf);
            return;
        }
        r->violations += (size_t)k > c->pn;
        if (c->p.max_message_size)
            r->violations += c->p.msg_len > c->p.max_message_size;
        if (ev.type == MW_WS_EV_DATA) {
            r->events++;
            r->violations += ev.data < buf || ev.data + ev.len > buf + k;
            r->violations += ev.first != !c->in_msg;
            if (ev.first) {
                c->in_msg = 1, c->mn = 0, c->msg_op = ev.opcode, c->msg_rsv1 = ev.rsv1;
            } else {
                r->violations += ev.opcode != c->msg_op || ev.rsv1 != c->msg_rsv1;
            }
            memcpy(c->msg + c->mn, ev.data, ev.len);
            c->mn += ev.len;
            if (ev.last) {
                record(r, 'M', c->msg_op, c->msg_rsv1, c->msg, c->mn);
                c->in_msg = 0;
            }
        } else if (ev.type == MW_WS_EV_CONTROL) {
            r->events++;
            r->violations += ev.data < buf || ev.data + ev.len > buf + k;
            r->violations += ev.len > MW_WS_MAX_CONTROL;
            record(r, 'C', ev.opcode, 0, ev.data, ev.len);
        }
        /* Keep what the parser left, as the parser left it. Only a NONE
         * event may consume nothing, and it means "need more bytes". */
        memcpy(c->pend, buf + k, c->pn - (size_t)k);
        c->pn -= (size_t)k;
        free(buf);
        if (k == 0) {
            r->violations += ev.type != MW_WS_EV_NONE;
            return;
        }
    }
}

static caller_t caller;
static result_t res_whole, res_split;
static int caller_use_whole; /* the next runs try mw__ws_parse_whole first */

static void caller_init(caller_t *c, const mw_ws_parser_t *cfg)
{
    memset(c, 0, sizeof *c);
    c->p = *cfg;
    c->use_whole = caller_use_whole;
}

/* Runs the stream as reads of the given sizes (the last read takes the rest). */
static void run_cuts(const mw_ws_parser_t *cfg, const stream_t *s, const size_t *cuts, size_t ncuts,
                     result_t *r)
{
    size_t at = 0;

    memset(r, 0, sizeof *r);
    caller_init(&caller, cfg);
    for (size_t i = 0; i < ncuts; i++) {
        feed(&caller, r, s->b + at, cuts[i] - at);
        at = cuts[i];
    }
    feed(&caller, r, s->b + at, s->n - at);
    r->leftover = caller.pn;
}

static int same_result(const result_t *a, const result_t *b)
{
    return a->err == b->err && a->close_code == b->close_code && a->tn == b->tn &&
           memcmp(a->t, b->t, a->tn) == 0 && b->violations == 0 &&
           /* After an error the caller stops reading, so what is left
            * unconsumed depends on the split. */
           (a->err || a->leftover == b->leftover);
}

/* The whole-buffer run is the reference; splitting the stream in two at
 * every position, and into single bytes, must give the same transcript. */
static void check_every_split(const mw_ws_parser_t *cfg, const stream_t *s, int want_err)
{
    /* Copies, because the parser unmasks in place. */
    static stream_t copy;
    long bad = 0;

    copy = *s;
    run_cuts(cfg, &copy, NULL, 0, &res_whole);
    CHECK_EQ(res_whole.err, want_err);
    CHECK_EQ(res_whole.violations, 0);
    if (!want_err)
        CHECK_EQ(res_whole.leftover, 0);
    for (size_t cut = 0; cut <= s->n; cut++) {
        copy = *s;
        run_cuts(cfg, &copy, &cut, 1, &res_split);
        if (!same_result(&res_whole, &res_split)) {
            fprintf(stderr, "  split at %zu differs\n", cut);
            bad++;
        }
    }
    {
        static size_t cuts[sizeof copy.b];

        for (size_t i = 0; i < s->n; i++)
            cuts[i] = i + 1;
        copy = *s;
        run_cuts(cfg, &copy, cuts, s->n, &res_split);
        bad += !same_result(&res_whole, &res_split);
    }
    CHECK_EQ(bad, 0);
}

/* Parses a buffer once; returns the return value. */
static ssize_t parse_once(mw_ws_parser_t *p, const void *bytes, size_t n, mw_ws_event_t *ev)
{
    static uint8_t b[70000];

    memcpy(b, bytes, n);
    return mw__ws_parse(p, b, n, ev);
}

static mw_ws_parser_t server_cfg(void)
{
    mw_ws_parser_t p;

    memset(&p, 0, sizeof p);
    p.server = 1;
    return p;
}

static mw_ws_parser_t client_cfg(void)
{
    mw_ws_parser_t p;

    memset(&p, 0, sizeof p);
    return p;
}

/* ---- RFC 6455 5.7 examples -------------------------------------------- */

static void test_rfc_examples(void)
{
    static const uint8_t hello_unmasked[] = {0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
    static const uint8_t hello_masked[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                           0x7f, 0x9f, 0x4d, 0x51, 0x58};
    static const uint8_t frag[] = {0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f};
    static const uint8_t ping[] = {0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
    static const uint8_t pong_masked[] = {0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                          0x7f, 0x9f, 0x4d, 0x51, 0x58};
    uint8_t b[64];
    mw_ws_parser_t p;
    mw_ws_event_t ev;
    ssize_t r;

    /* A single-frame unmasked text message, as a client receives it. */
    p = client_cfg();
    memcpy(b, hello_unmasked, sizeof hello_unmasked);
    r = mw__ws_parse(&p, b, sizeof hello_unmasked, &ev);
    CHECK_EQ(r, 7);
    CHECK_EQ(ev.type, MW_WS_EV_DATA);
    CHECK_EQ(ev.opcode, MW_WS_OP_TEXT);
    CHECK(ev.first && ev.last && !ev.rsv1);
    CHECK_EQ(ev.len, 5);
    CHECK(ev.data == b + 2);
    CHECK_MEM(ev.data, "Hello", 5);

    /* The same message masked, as a server receives it. */
    p = server_cfg();
    memcpy(b, hello_masked, sizeof hello_masked);
    r = mw__ws_parse(&p, b, sizeof hello_masked, &ev);
    CHECK_EQ(r, 11);
    CHECK_EQ(ev.type, MW_WS_EV_DATA);
    CHECK(ev.first && ev.last);
    CHECK_EQ(ev.len, 5);
    CHECK(ev.data == b + 6);
    CHECK_MEM(ev.data, "Hello", 5);
    CHECK_EQ(p.msg_opcode, 0);
    CHECK_EQ(p.in_frame, 0);

    /* A fragmented unmasked text message: "Hel" then "lo". */
    p = client_cfg();
    memcpy(b, frag, sizeof frag);
    r = mw__ws_parse(&p, b, sizeof frag, &ev);
    CHECK_EQ(r, 5);
    CHECK_EQ(ev.type, MW_WS_EV_DATA);
    CHECK(ev.first && !ev.last);
    CHECK_MEM(ev.data, "Hel", 3);
    CHECK_EQ(p.msg_opcode, MW_WS_OP_TEXT);
    r = mw__ws_parse(&p, b + 5, sizeof frag - 5, &ev);
    CHECK_EQ(r, 4);
    CHECK(!ev.first && ev.last);
    CHECK_EQ(ev.opcode, MW_WS_OP_TEXT);
    CHECK_MEM(ev.data, "lo", 2);

    /* Unmasked ping and masked pong, each with "Hello". */
    p = client_cfg();
    memcpy(b, ping, sizeof ping);
    r = mw__ws_parse(&p, b, sizeof ping, &ev);
    CHECK_EQ(r, 7);
    CHECK_EQ(ev.type, MW_WS_EV_CONTROL);
    CHECK_EQ(ev.opcode, MW_WS_OP_PING);
    CHECK_EQ(ev.len, 5);
    CHECK_MEM(ev.data, "Hello", 5);
    p = server_cfg();
    memcpy(b, pong_masked, sizeof pong_masked);
    r = mw__ws_parse(&p, b, sizeof pong_masked, &ev);
    CHECK_EQ(r, 11);
    CHECK_EQ(ev.type, MW_WS_EV_CONTROL);
    CHECK_EQ(ev.opcode, MW_WS_OP_PONG);
    CHECK_MEM(ev.data, "Hello", 5);

    /* Our encoders produce exactly these headers. */
    CHECK_EQ(mw__ws_header(b, 1, 0, MW_WS_OP_TEXT, 5), 2);
    CHECK_MEM(b, hello_unmasked, 2);
    CHECK_EQ(mw__ws_header_masked(b, 1, 0, MW_WS_OP_TEXT, 5, rfc_mask), 6);
    CHECK_MEM(b, hello_masked, 6);
    CHECK_EQ(mw__ws_header(b, 0, 0, MW_WS_OP_TEXT, 3), 2);
    CHECK_MEM(b, frag, 2);
    CHECK_EQ(mw__ws_header(b, 1, 0, MW_WS_OP_CONT, 2), 2);
    CHECK_MEM(b, frag + 5, 2);
    CHECK_EQ(mw__ws_header(b, 1, 0, MW_WS_OP_PING, 5), 2);
    CHECK_MEM(b, ping, 2);
    CHECK_EQ(mw__ws_header_masked(b, 1, 0, MW_WS_OP_PONG, 5, rfc_mask), 6);
    CHECK_MEM(b, pong_masked, 6);
    memcpy(b, "Hello", 5);
    CHECK_EQ(mw__ws_mask(b, 5, rfc_mask, 0), 1);
    CHECK_MEM(b, hello_masked + 6, 5);
}

/* RFC 6455 5.7: 256 bytes in one unmasked binary frame (16-bit length) and
 * 64 KiB (64-bit length). */
static void test_rfc_lengths(void)
{
    static uint8_t b[65536 + 14];
    static const uint8_t h256[] = {0x82, 0x7E, 0x01, 0x00};
    static const uint8_t h64k[] = {0x82, 0x7F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00};
    mw_ws_parser_t p = client_cfg();
    mw_ws_event_t ev;
    ssize_t r;

    memcpy(b, h256, 4);
    for (int i = 0; i < 256; i++)
        b[4 + i] = (uint8_t)i;
    r = mw__ws_parse(&p, b, 4 + 256, &ev);
    CHECK_EQ(r, 260);
    CHECK_EQ(ev.type, MW_WS_EV_DATA);
    CHECK_EQ(ev.opcode, MW_WS_OP_BINARY);
    CHECK_EQ(ev.len, 256);
    CHECK(ev.first && ev.last);
    CHECK_EQ(ev.data[255], 255);

    memcpy(b, h64k, 10);
    memset(b + 10, 0xAB, 65536);
    r = mw__ws_parse(&p, b, 10 + 65536, &ev);
    CHECK_EQ(r, 10 + 65536);
    CHECK_EQ(ev.len, 65536);
    CHECK(ev.first && ev.last);

    /* Partly arrived: the header and 1000 bytes, then the rest. */
    p = client_cfg();
    memcpy(b, h64k, 10);
    r = mw__ws_parse(&p, b, 10 + 1000, &ev);
    CHECK_EQ(r, 1010);
    CHECK_EQ(ev.len, 1000);
    CHECK(ev.first && !ev.last);
    CHECK_EQ(p.remaining, 65536 - 1000);
    CHECK_EQ(p.in_frame, 1);
    r = mw__ws_parse(&p, b + 1010, 65536 - 1000, &ev);
    CHECK_EQ(r, 65536 - 1000);
    CHECK(!ev.first && ev.last);
    CHECK_EQ(p.in_frame, 0);

    CHECK_EQ(mw__ws_header(b, 1, 0, MW_WS_OP_BINARY, 256), 4);
    CHECK_MEM(b, h256, 4);
    CHECK_EQ(mw__ws_header(b, 1, 0, MW_WS_OP_BINARY, 65536), 10);
    CHECK_MEM(b, h64k, 10);
}

/* ---- incremental behaviour -------------------------------------------- */

/* Every proper prefix of a valid header consumes nothing and reports NONE;
 * a data header without payload is consumed on its own. */
static void test_partial_headers(void)
{
    static const uint8_t hdrs[][14] = {
        {0x81, 0x85, 1, 2, 3, 4},
        {0x82, 0xFE, 0x01, 0x00, 1, 2, 3, 4},
        {0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4},
    };
    static const size_t hlen[] = {6, 8, 14};

    for (size_t h = 0; h < 3; h++) {
        for (size_t n = 0; n < hlen[h]; n++) {
            mw_ws_parser_t p = server_cfg();
            mw_ws_event_t ev;

            CHECK_EQ(parse_once(&p, hdrs[h], n, &ev), 0);
            CHECK_EQ(ev.type, MW_WS_EV_NONE);
            CHECK_EQ(p.in_frame, 0);
        }
        mw_ws_parser_t p = server_cfg();
        mw_ws_event_t ev;

        CHECK_EQ(parse_once(&p, hdrs[h], hlen[h], &ev), (ssize_t)hlen[h]);
        CHECK_EQ(ev.type, MW_WS_EV_NONE);
        CHECK_EQ(p.in_frame, 1);
        CHECK_EQ(p.msg_opcode, hdrs[h][0] & 0xF);
        /* In a frame with nothing new: still nothing. */
        CHECK_EQ(parse_once(&p, "", 0, &ev), 0);
        CHECK_EQ(ev.type, MW_WS_EV_NONE);
    }
}

/* Control frames are only reported whole, and may sit between the
 * fragments of a data message (RFC 6455 5.4). */
static void test_control_frames(void)
{
    static stream_t s;
    uint8_t payload[125];
    mw_ws_parser_t p = server_cfg();
    mw_ws_event_t ev;

    memset(payload, 'p', sizeof payload);
    s.n = 0;
    put_frame(&s, 0x89, 1, payload, 125);
    for (size_t n = 0; n < s.n; n++) {
        p = server_cfg();
        CHECK_EQ(parse_once(&p, s.b, n, &ev), 0);
        CHECK_EQ(ev.type, MW_WS_EV_NONE);
    }
    p = server_cfg();
    CHECK_EQ(parse_once(&p, s.b, s.n, &ev), (ssize_t)s.n);
    CHECK_EQ(ev.type, MW_WS_EV_CONTROL);
    CHECK_EQ(ev.len, 125);
    CHECK_MEM(ev.data, payload, 125);

    /* Empty close, and a ping inside a fragmented message. */
    s.n = 0;
    put_frame(&s, 0x01, 1, "ab", 2);
    put_frame(&s, 0x89, 1, "", 0);
    put_frame(&s, 0x80, 1, "cd", 2);
    put_frame(&s, 0x88, 1, "", 0);
    p = server_cfg();
    {
        uint8_t *b = s.b;
        size_t n = s.n;
        ssize_t r;

        r = mw__ws_parse(&p, b, n, &ev);
        CHECK_EQ(ev.type, MW_WS_EV_DATA);
        CHECK(ev.first && !ev.last);
        b += r, n -= (size_t)r;
        r = mw__ws_parse(&p, b, n, &ev);
        CHECK_EQ(ev.type, MW_WS_EV_CONTROL);
        CHECK_EQ(ev.opcode, MW_WS_OP_PING);
        CHECK_EQ(ev.len, 0);
        CHECK_EQ(r, 6);
        CHECK_EQ(p.msg_opcode, MW_WS_OP_TEXT);
        b += r, n -= (size_t)r;
        r = mw__ws_parse(&p, b, n, &ev);
        CHECK_EQ(ev.type, MW_WS_EV_DATA);
        CHECK(!ev.first && ev.last);
        CHECK_MEM(ev.data, "cd", 2);
        b += r, n -= (size_t)r;
        r = mw__ws_parse(&p, b, n, &ev);
        CHECK_EQ(ev.type, MW_WS_EV_CONTROL);
        CHECK_EQ(ev.opcode, MW_WS_OP_CLOSE);
        CHECK_EQ(r, 6);
        CHECK_EQ((size_t)r, n);
    }
}

/* Empty data frames are reported as empty chunks. */
static void test_empty_frames(void)
{
    static stream_t s;
    mw_ws_parser_t p = server_cfg();
    mw_ws_event_t ev;
    uint8_t *b;
    ssize_t r;

    s.n = 0;
    put_frame(&s, 0x02, 1, "", 0);
    put_frame(&s, 0x00, 1, "", 0);
    put_frame(&s, 0x80, 1, "", 0);
    b = s.b;
    r = mw__ws_parse(&p, b, s.n, &ev);
    CHECK_EQ(r, 6);
    CHECK_EQ(ev.type, MW_WS_EV_DATA);
    CHECK(ev.first && !ev.last);
    CHECK_EQ(ev.len, 0);
    r = mw__ws_parse(&p, b + 6, s.n - 6, &ev);
    CHECK_EQ(r, 6);
    CHECK(!ev.first && !ev.last);
    CHECK_EQ(ev.opcode, MW_WS_OP_BINARY);
    r = mw__ws_parse(&p, b + 12, s.n - 12, &ev);
    CHECK_EQ(r, 6);
    CHECK(!ev.first && ev.last);
    CHECK_EQ(ev.len, 0);
    CHECK_EQ(p.msg_opcode, 0);
}

/* ---- protocol errors --------------------------------------------------- */

struct bad_frame {
    const char *name;
    uint8_t bytes[16];
    size_t len;     /* bytes given to the parser: only those the rule needs */
    int server;     /* parser side */
    int rsv1_ok;    /* rsv1_allowed */
    int in_message; /* a fragmented TEXT message is in progress */
    int err;
    uint16_t code;
};

/* The tail of a server-side, no-extension 1002 case. */
#define LEN64 1, 0, 0, MW_EPROTO, 1002

static const struct bad_frame bad_frames[] = {
    {"RSV2", {0xA1}, 1, 1, 1, 0, MW_EPROTO, 1002},
    {"RSV3", {0x91}, 1, 1, 1, 0, MW_EPROTO, 1002},
    {"RSV1 without extension", {0xC1}, 1, 1, 0, 0, MW_EPROTO, 1002},
    {"RSV1 on continuation", {0xC0}, 1, 1, 1, 1, MW_EPROTO, 1002},
    {"RSV1 on ping", {0xC9}, 1, 1, 1, 0, MW_EPROTO, 1002},
    {"RSV1 on close", {0xC8}, 1, 1, 1, 0, MW_EPROTO, 1002},
    {"opcode 3", {0x83}, 1, 1, 0, 0, MW_EPROTO, 1002},
    {"opcode 7", {0x87}, 1, 1, 0, 0, MW_EPROTO, 1002},
    {"opcode B", {0x8B}, 1, 1, 0, 0, MW_EPROTO, 1002},
    {"opcode F", {0x8F}, 1, 1, 0, 0, MW_EPROTO, 1002},
    {"fragmented ping", {0x09}, 1, 1, 0, 0, MW_EPROTO, 1002},
    {"fragmented close", {0x08}, 1, 1, 0, 0, MW_EPROTO, 1002},
    {"ping of 126", {0x89, 0xFE}, 2, 1, 0, 0, MW_EPROTO, 1002},
    {"pong of 127", {0x8A, 0xFF}, 2, 1, 0, 0, MW_EPROTO, 1002},
    {"unmasked from client", {0x81, 0x05}, 2, 1, 0, 0, MW_EPROTO, 1002},
    {"masked from server", {0x81, 0x85}, 2, 0, 0, 0, MW_EPROTO, 1002},
    {"continuation without message", {0x80}, 1, 1, 0, 0, MW_EPROTO, 1002},
    {"text inside message", {0x81}, 1, 1, 0, 1, MW_EPROTO, 1002},
    {"binary inside message", {0x02}, 1, 1, 0, 1, MW_EPROTO, 1002},
    {"16-bit length 125", {0x82, 0xFE, 0x00, 0x7D, 1, 2, 3, 4}, 8, 1, 0, 0, MW_EPROTO, 1002},
    {"16-bit length 0", {0x82, 0xFE, 0x00, 0x00, 1, 2, 3, 4}, 8, 1, 0, 0, MW_EPROTO, 1002},
    /* The length rules need the whole header; the mask key rides along. */
    {"64-bit length 65535", {0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 1, 2, 3, 4}, 14, LEN64},
    {"64-bit length 5", {0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4}, 14, LEN64},
    {"64-bit length top bit", {0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}, 14, LEN64},
    {"64-bit length all ones",
     {0x82, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4},
     14,
     LEN64},
};

static void test_protocol_errors(void)
{
    for (size_t i = 0; i < sizeof bad_frames / sizeof bad_frames[0]; i++) {
        const struct bad_frame *t = &bad_frames[i];
        mw_ws_parser_t p;
        mw_ws_event_t ev;
        ssize_t r;

        memset(&p, 0, sizeof p);
        p.server = (uint8_t)t->server;
        p.rsv1_allowed = (uint8_t)t->rsv1_ok;
        if (t->in_message) {
            /* Start a fragmented text message first. */
            static const uint8_t start_m[] = {0x01, 0x81, 1, 2, 3, 4, 'a' ^ 1};
            static const uint8_t start_u[] = {0x01, 0x01, 'a'};

            r = t->server ? parse_once(&p, start_m, sizeof start_m, &ev)
                          : parse_once(&p, start_u, sizeof start_u, &ev);
            CHECK(r > 0);
            CHECK_EQ(p.msg_opcode, MW_WS_OP_TEXT);
        }
        /* Fail fast: the bytes that decide the rule are enough. */
        r = parse_once(&p, t->bytes, t->len, &ev);
        if (r != t->err || ev.close_code != t->code || ev.error == NULL)
            fprintf(stderr, "  %s: got %zd/%u\n", t->name, r, ev.close_code);
        CHECK_EQ(r, t->err);
        CHECK_EQ(ev.close_code, t->code);
        CHECK(ev.error != NULL);
    }
}

/* The rules are tight, not overbroad: the nearest acceptable frames pass. */
static void test_protocol_accepts(void)
{
    mw_ws_parser_t p;
    mw_ws_event_t ev;
    static const uint8_t len126[] = {0x82, 0x7E, 0x00, 0x7E};
    static const uint8_t len65536[] = {0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0};
    static const uint8_t huge[] = {0x82, 0x7F, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};

    /* RSV1 on the first frame when allowed, and the message carries it. */
    p = client_cfg();
    p.rsv1_allowed = 1;
    CHECK_EQ(parse_once(&p, "\x41\x01x", 3, &ev), 3);
    CHECK_EQ(ev.type, MW_WS_EV_DATA);
    CHECK_EQ(ev.rsv1, 1);
    CHECK(ev.first && !ev.last);
    CHECK_EQ(parse_once(&p, "\x80\x01y", 3, &ev), 3);
    CHECK_EQ(ev.rsv1, 1);
    CHECK(ev.last);

    /* A control frame of exactly 125 bytes is checked in test_control_frames;
     * minimal 16- and 64-bit lengths pass. */
    p = client_cfg();
    CHECK_EQ(parse_once(&p, len126, sizeof len126, &ev), 4);
    CHECK_EQ(p.remaining, 126);
    p = client_cfg();
    CHECK_EQ(parse_once(&p, len65536, sizeof len65536, &ev), 10);
    CHECK_EQ(p.remaining, 65536);
    /* With no limit, the largest legal length is accepted. */
    p = client_cfg();
    CHECK_EQ(parse_once(&p, huge, sizeof huge, &ev), 10);
    CHECK_EQ(p.remaining, UINT64_C(0x7FFFFFFFFFFFFFFF));

    /* Control frames between the fragments of a message. */
    p = server_cfg();
    CHECK_EQ(parse_once(&p, "\x01\x80\0\0\0\0", 6, &ev), 6);
    CHECK_EQ(parse_once(&p, "\x8A\x80\0\0\0\0", 6, &ev), 6);
    CHECK_EQ(ev.type, MW_WS_EV_CONTROL);
    CHECK_EQ(parse_once(&p, "\x80\x80\0\0\0\0", 6, &ev), 6);
    CHECK_EQ(ev.type, MW_WS_EV_DATA);
    CHECK(ev.last);
}

/* ---- size limit -------------------------------------------------------- */

static void test_max_message_size(void)
{
    static stream_t s;
    static const uint8_t huge[] = {0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF,
                                   0xFF, 0xFF, 0xFF, 1,    2,    3,    4};
    uint8_t payload[16] = {0};
    mw_ws_parser_t p;
    mw_ws_event_t ev;
    ssize_t r;

    /* A single frame of exactly the limit passes, one more byte fails at
     * the header, before any payload is there. */
    p = server_cfg();
    p.max_message_size = 10;
    s.n = 0;
    put_frame(&s, 0x82, 1, payload, 10);
    CHECK_EQ(parse_once(&p, s.b, s.n, &ev), (ssize_t)s.n);
    CHECK(ev.last);
    p = server_cfg();
    p.max_message_size = 10;
    s.n = 0;
    put_frame(&s, 0x82, 1, payload, 11);
    r = parse_once(&p, s.b, 6, &ev);
    CHECK_EQ(r, MW_ETOOBIG);
    CHECK_EQ(ev.close_code, 1009);
    CHECK(ev.error != NULL);

    /* Across fragments: 6 + 4 pass, 6 + 5 fails at the second header. */
    p = server_cfg();
    p.max_message_size = 10;
    s.n = 0;
    put_frame(&s, 0x02, 1, payload, 6);
    put_frame(&s, 0x80, 1, payload, 4);
    CHECK_EQ(parse_once(&p, s.b, s.n, &ev), 12);
    CHECK_EQ(p.msg_len, 6);
    CHECK_EQ(parse_once(&p, s.b + 12, s.n - 12, &ev), 10);
    CHECK(ev.last);
    CHECK_EQ(p.msg_len, 0);
    /* The limit is per message: the next one starts from zero. */
    s.n = 0;
    put_frame(&s, 0x02, 1, payload, 6);
    put_frame(&s, 0x80, 1, payload, 5);
    CHECK_EQ(parse_once(&p, s.b, 12, &ev), 12);
    CHECK_EQ(parse_once(&p, s.b + 12, 6, &ev), MW_ETOOBIG);
    CHECK_EQ(ev.close_code, 1009);

    /* A 2^63-1 length against a limit does not overflow the check. */
    p = server_cfg();
    p.max_message_size = 1;
    CHECK_EQ(parse_once(&p, huge, sizeof huge, &ev), MW_ETOOBIG);
    p = server_cfg();
    p.max_message_size = UINT64_MAX;
    CHECK_EQ(parse_once(&p, huge, sizeof huge, &ev), 14);

    /* Control frames are bounded by RFC 6455 5.5, not by the message limit. */
    p = server_cfg();
    p.max_message_size = 1;
    s.n = 0;
    put_frame(&s, 0x89, 1, payload, 5);
    CHECK_EQ(parse_once(&p, s.b, s.n, &ev), (ssize_t)s.n);
    CHECK_EQ(ev.type, MW_WS_EV_CONTROL);
}

/* ---- UTF-8 in text messages ------------------------------------------- */

static void test_text_utf8(void)
{
    static stream_t s;
    mw_ws_parser_t p;
    mw_ws_event_t ev;
    ssize_t r;

    /* Invalid text in one frame -> 1007. */
    p = server_cfg();
    s.n = 0;
    put_frame(&s, 0x81, 1, "ok\xff", 3);
    r = parse_once(&p, s.b, s.n, &ev);
    CHECK_EQ(r, MW_EUTF8);
    CHECK_EQ(ev.close_code, 1007);

    /* Fail fast: the frame says 100 bytes, but the bad prefix is enough. */
    p = server_cfg();
    {
        uint8_t text[100];

        memset(text, 'a', sizeof text);
        text[3] = 0xED, text[4] = 0xA0;
        s.n = 0;
        put_frame(&s, 0x81, 1, text, sizeof text);
        CHECK_EQ(parse_once(&p, s.b, 6 + 4, &ev), 6 + 4);
        CHECK_EQ(parse_once(&p, s.b + 10, 1, &ev), MW_EUTF8);
    }

    /* A character split across frames is fine... */
    p = server_cfg();
    s.n = 0;
    put_frame(&s, 0x01, 1, "\xe2\x82", 2);
    put_frame(&s, 0x80, 1, "\xac", 1);
    CHECK_EQ(parse_once(&p, s.b, 8, &ev), 8);
    CHECK_EQ(parse_once(&p, s.b + 8, 7, &ev), 7);
    CHECK(ev.last);
    /* ... but a message may not end inside one. */
    p = server_cfg();
    s.n = 0;
    put_frame(&s, 0x01, 1, "a\xe2\x82", 3);
    put_frame(&s, 0x80, 1, "", 0);
    CHECK_EQ(parse_once(&p, s.b, 9, &ev), 9);
    CHECK_EQ(parse_once(&p, s.b + 9, 6, &ev), MW_EUTF8);
    CHECK_EQ(ev.close_code, 1007);

    /* Binary messages are not validated. */
    p = server_cfg();
    s.n = 0;
    put_frame(&s, 0x82, 1, "\xff\xfe", 2);
    CHECK_EQ(parse_once(&p, s.b, s.n, &ev), (ssize_t)s.n);

    /* A compressed (RSV1) text message carries deflate data, validated after
     * inflation by the caller, so the parser does not reject it. */
    p = server_cfg();
    p.rsv1_allowed = 1;
    s.n = 0;
    put_frame(&s, 0xC1, 1, "\xff\xc0\xe2", 3);
    r = parse_once(&p, s.b, s.n, &ev);
    CHECK_EQ(r, (ssize_t)s.n);
    CHECK_EQ(ev.rsv1, 1);
    CHECK(ev.last);
    /* The next, uncompressed, text message is validated again. */
    s.n = 0;
    put_frame(&s, 0x81, 1, "\xff", 1);
    CHECK_EQ(parse_once(&p, s.b, s.n, &ev), MW_EUTF8);
}

/* ---- every split point ------------------------------------------------- */

static void build_valid_server_stream(stream_t *s)
{
    static uint8_t big[300];

    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)(i * 7);
    s->n = 0;
    put_frame(s, 0x81, 1, "Hello", 5);
    put_frame(s, 0x01, 1, "frag\xe2\x82", 6); /* euro sign split across frames */
    put_frame(s, 0x89, 1, "ping!", 5);
    put_frame(s, 0x00, 1, "\xac mid", 5);
    put_frame(s, 0x8A, 1, "", 0);
    put_frame(s, 0x80, 1, " end", 4);
    put_frame(s, 0x82, 1, "", 0);
    put_frame(s, 0x82, 1, big, sizeof big);
    put_frame(s, 0xC1, 1, "\xff\xfe compressed", 13);
    put_frame(s, 0x02, 1, big, 130);
    put_frame(s, 0x00, 1, "", 0);
    put_frame(s, 0x80, 1, big + 130, 170);
    put_frame(s, 0x88, 1,
              "\x03\xe8"
              "bye",
              5);
}

static void test_splits_valid(void)
{
    static stream_t s;
    mw_ws_parser_t cfg = server_cfg();

    cfg.rsv1_allowed = 1;
    cfg.max_message_size = 300;
    build_valid_server_stream(&s);
    check_every_split(&cfg, &s, 0);
    /* 9 messages and 3 control frames. */
    CHECK_EQ(res_whole.err, 0);
    {
        size_t m = 0, c = 0, i = 0;

        while (i < res_whole.tn) {
            size_t n = (size_t)res_whole.t[i + 3] << 24 | (size_t)res_whole.t[i + 4] << 16 |
                       (size_t)res_whole.t[i + 5] << 8 | res_whole.t[i + 6];

            m += res_whole.t[i] == 'M';
            c += res_whole.t[i] == 'C';
            i += 7 + n;
        }
        CHECK_EQ(m, 6);
        CHECK_EQ(c, 3);
    }
    /* The message assembled across frames is the original text. */
    CHECK(memmem(res_whole.t, res_whole.tn, "frag\xe2\x82\xac mid end", 15) != NULL);

    /* A client-side (unmasked) stream with a 64 KiB frame. */
    {
        static uint8_t big[65536];
        mw_ws_parser_t ccfg = client_cfg();

        memset(big, 'x', sizeof big);
        s.n = 0;
        put_frame(&s, 0x01, 0, "a", 1);
        put_frame(&s, 0x80, 0, big, sizeof big);
        put_frame(&s, 0x89, 0, "p", 1);
        run_cuts(&ccfg, &s, NULL, 0, &res_whole);
        CHECK_EQ(res_whole.err, 0);
        CHECK_EQ(res_whole.tn, 7 + 65537 + 7 + 1);
        /* Two-part splits around the headers and a sample in the payload. */
        for (size_t cut = 0; cut <= s.n; cut += (cut < 20 || cut > s.n - 20) ? 1 : 997) {
            run_cuts(&ccfg, &s, &cut, 1, &res_split);
            CHECK(same_result(&res_whole, &res_split));
        }
    }
}

static void test_splits_errors(void)
{
    static stream_t s;
    mw_ws_parser_t cfg = server_cfg();

    cfg.max_message_size = 64;
    /* Each stream: valid traffic, then one broken frame. */
    s.n = 0;
    put_frame(&s, 0x81, 1, "ok", 2);
    put_frame(&s, 0x01, 1, "abc", 3);
    put_frame(&s, 0x80, 1, "d\xed\xa0\x80", 4);
    check_every_split(&cfg, &s, MW_EUTF8);
    CHECK_EQ(res_whole.close_code, 1007);

    s.n = 0;
    put_frame(&s, 0x81, 1, "ok", 2);
    put_frame(&s, 0x89, 1, "x", 1);
    put_frame(&s, 0x80, 1, "cont", 4);
    check_every_split(&cfg, &s, MW_EPROTO);
    CHECK_EQ(res_whole.close_code, 1002);

    s.n = 0;
    put_frame(&s, 0x02, 1, "0123456789", 10);
    put_frame(&s, 0x80, 1, "0123456789012345678901234567890123456789012345678901234567890", 61);
    check_every_split(&cfg, &s, MW_ETOOBIG);
    CHECK_EQ(res_whole.close_code, 1009);

    s.n = 0;
    put_frame(&s, 0x81, 1, "ok", 2);
    put_raw(&s, "\x82\xFE\x00\x10\0\0\0\0", 8);
    check_every_split(&cfg, &s, MW_EPROTO);

    s.n = 0;
    put_frame(&s, 0x81, 1, "ok", 2);
    put_frame(&s, 0x09, 1, "x", 1);
    check_every_split(&cfg, &s, MW_EPROTO);

    /* A text message that ends inside a character. */
    s.n = 0;
    put_frame(&s, 0x01, 1, "abc\xf0\x9f", 5);
    put_frame(&s, 0x80, 1, "\x98", 1);
    check_every_split(&cfg, &s, MW_EUTF8);
}

/* Random streams of valid frames read in random chunk sizes, including
 * many zero-length reads, against the whole-buffer run. */
static uint32_t rng_state = 2463534242u;

static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

static void test_random_chunking(void)
{
    static stream_t s;
    static size_t cuts[4096];
    uint8_t payload[400];
    long bad = 0;

    for (size_t i = 0; i < sizeof payload; i++)
        payload[i] = (uint8_t)('a' + i % 26);
    for (int iter = 0; iter < 300; iter++) {
        mw_ws_parser_t cfg = server_cfg();
        int in_msg = 0;
        size_t ncuts = 0;
        stream_t *copy = malloc(sizeof *copy);

        cfg.max_message_size = 2000;
        s.n = 0;
        for (int f = 0; f < 12; f++) {
            uint32_t r = rng();
            size_t len = r % 4 == 0 ? 126 + r % 274 : r % 20;

            if (r % 5 == 0) {
                put_frame(&s, 0x89 + (r >> 8) % 2, 1, payload, len % 126);
                continue;
            }
            unsigned op = in_msg ? 0x0 : ((r >> 9) % 2 ? 0x1 : 0x2);
            int fin = (r >> 10) % 3 != 0;

            put_frame(&s, (fin ? 0x80u : 0) | op, 1, payload, len);
            in_msg = !fin;
        }
        if (in_msg)
            put_frame(&s, 0x80, 1, "", 0);
        for (size_t at = 0; at < s.n && ncuts < sizeof cuts / sizeof cuts[0];) {
            at += rng() % 3 == 0 ? 0 : rng() % 40;
            if (at > s.n)
                at = s.n;
            cuts[ncuts++] = at;
        }
        *copy = s;
        run_cuts(&cfg, copy, NULL, 0, &res_whole);
        *copy = s;
        run_cuts(&cfg, copy, cuts, ncuts, &res_split);
        bad += res_whole.err != 0 || !same_result(&res_whole, &res_split);
        free(copy);
    }
    CHECK_EQ(bad, 0);
}

/* Small whole masked messages take a fast path in mw__ws_parse; fed one
 * byte at a time the same frames take the general one. Random streams of
 * such frames, with payloads of ASCII, valid multi-byte UTF-8, truncated
 * characters and arbitrary bytes, and now and then a frame the fast path
 * must leave alone (control, fragment, RSV1, above 125 bytes, over the
 * size limit), must give the same transcript and the same error both
 * ways, and a third: mw__ws_parse_whole's batches first, as the
 * connection layer parses. */
static void test_small_frames_both_paths(void)
{
    static stream_t s, copy;
    static size_t cuts[sizeof s.b];
    static const char *const pieces[] = {
        "a",    "Z",        " ",    "\xc3\xa9",     "\xe2\x82\xac", "\xf0\x9f\x98\x80",
        "\xc3", "\xe2\x82", "\xff", "\xed\xa0\x80", "\x80",         "\x7f"};
    static const uint64_t limits[] = {0, 10, 64, 125, 2000};
    uint8_t payload[300];
    long bad = 0, errors = 0;

    for (int iter = 0; iter < 3000; iter++) {
        mw_ws_parser_t cfg = server_cfg();
        cfg.max_message_size = limits[rng() % 5];
        cfg.rsv1_allowed = (uint8_t)(rng() % 2);
        s.n = 0;
        int frames = 1 + (int)(rng() % 5);
        for (int f = 0; f < frames; f++) {
            uint32_t r = rng();
            size_t len = 0;
            /* Mostly ASCII, sometimes other pieces. */
            size_t want = r % 8 == 0 ? 126 + r % 150 : r % 126;
            while (len < want) {
                const char *pc = rng() % 4 ? "x" : pieces[rng() % 12];
                size_t k = strlen(pc);
                if (len + k > want)
                    break;
                memcpy(payload + len, pc, k);
                len += k;
            }
            switch ((r >> 12) % 12) {
            case 0:
                put_frame(&s, 0x89, 1, payload, len % 126); /* a ping */
                break;
            case 1:
                put_frame(&s, 0x01, 1, payload, len); /* a fragmented text */
                put_frame(&s, 0x80, 1, payload, len / 2);
                break;
            case 2:
                put_frame(&s, 0xC1, 1, payload, len); /* RSV1 */
                break;
            case 3: /* a whole message inside a fragmented one: 1002 */
                put_frame(&s, 0x02, 1, payload, len % 126);
                put_frame(&s, 0x81, 1, (const uint8_t *)"x", 1);
                break;
            default:
                put_frame(&s, (r >> 16) % 2 ? 0x81 : 0x82, 1, payload, len);
                break;
            }
        }
        copy = s;
        run_cuts(&cfg, &copy, NULL, 0, &res_whole);
        errors += res_whole.err != 0;
        for (size_t i = 0; i < s.n; i++)
            cuts[i] = i + 1;
        copy = s;
        run_cuts(&cfg, &copy, cuts, s.n, &res_split);
        bad += res_whole.violations != 0 || !same_result(&res_whole, &res_split);
        size_t cut = rng() % (s.n + 1);
        copy = s;
        run_cuts(&cfg, &copy, &cut, 1, &res_split);
        bad += !same_result(&res_whole, &res_split);
        /* The batch parser the connection layer runs first, whole and cut
         * in two, with batches of 1 to 4 frames. */
        caller_use_whole = 1;
        copy = s;
        run_cuts(&cfg, &copy, NULL, 0, &res_split);
        bad += res_split.violations != 0 || !same_result(&res_whole, &res_split);
        copy = s;
        run_cuts(&cfg, &copy, &cut, 1, &res_split);
        bad += res_split.violations != 0 || !same_result(&res_whole, &res_split);
        caller_use_whole = 0;
    }
    CHECK_EQ(bad, 0);
    /* Both outcomes were exercised. */
    CHECK(errors > 300 && errors < 2700);
}

/* ---- close payloads ---------------------------------------------------- */

/* The valid-to-send set, spelled out independently of the code under test. */
static int expected_valid_code(unsigned c)
{
    static const unsigned listed[] = {1000, 1001, 1002, 1003, 1007, 1008,
                                      1009, 1010, 1011, 1012, 1013, 1014};

    for (size_t i = 0; i < sizeof listed / sizeof listed[0]; i++)
        if (c == listed[i])
            return 1;
    return c >= 3000 && c <= 4999;
}

static void test_close_codes(void)
{
    long bad = 0;

    for (unsigned c = 0; c < 70000; c++)
        bad += !mw__ws_close_code_valid(c) != !expected_valid_code(c);
    CHECK_EQ(bad, 0);
    CHECK(!mw__ws_close_code_valid(999));
    CHECK(mw__ws_close_code_valid(1000));
    CHECK(!mw__ws_close_code_valid(1004));
    CHECK(!mw__ws_close_code_valid(1005));
    CHECK(!mw__ws_close_code_valid(1006));
    CHECK(mw__ws_close_code_valid(1014));
    CHECK(!mw__ws_close_code_valid(1015));
    CHECK(!mw__ws_close_code_valid(1016));
    CHECK(!mw__ws_close_code_valid(2999));
    CHECK(mw__ws_close_code_valid(3000));
    CHECK(mw__ws_close_code_valid(4999));
    CHECK(!mw__ws_close_code_valid(5000));
}

static void test_close_check(void)
{
    uint16_t code = 0;
    uint8_t b[8];

    CHECK_EQ(mw__ws_close_check((const uint8_t *)"", 0, &code), 0);
    CHECK_EQ(code, 1005);
    CHECK_EQ(mw__ws_close_check((const uint8_t *)"\x03", 1, &code), 1002);
    CHECK_EQ(mw__ws_close_check((const uint8_t *)"\x03\xe8", 2, &code), 0);
    CHECK_EQ(code, 1000);
    CHECK_EQ(mw__ws_close_check((const uint8_t *)"\x0f\xa0"
                                                 "bye \xc3\xa9",
                                8, &code),
             0);
    CHECK_EQ(code, 4000);
    /* Codes that may not be sent. */
    static const unsigned invalid[] = {0,    999,  1004, 1005, 1006, 1015,
                                       1016, 1100, 2000, 2999, 5000, 65535};
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        b[0] = (uint8_t)(invalid[i] >> 8), b[1] = (uint8_t)invalid[i];
        CHECK_EQ(mw__ws_close_check(b, 2, &code), 1002);
    }
    /* Reasons that are not UTF-8: invalid, and cut inside a character. */
    CHECK_EQ(mw__ws_close_check((const uint8_t *)"\x03\xe8\xff", 3, &code), 1007);
    CHECK_EQ(mw__ws_close_check((const uint8_t *)"\x03\xe8"
                                                 "a\xc3",
                                4, &code),
             1007);
    /* 123 bytes of reason, the most a close frame holds. */
    {
        uint8_t big[125];

        memset(big, 'r', sizeof big);
        big[0] = 0x0B, big[1] = 0xB8; /* 3000 */
        CHECK_EQ(mw__ws_close_check(big, sizeof big, &code), 0);
        CHECK_EQ(code, 3000);
    }
}

/* ---- encoders ---------------------------------------------------------- */

static void test_encoders(void)
{
    uint8_t h[MW_WS_MAX_HEADER];
    static const uint8_t key[4] = {0xde, 0xad, 0xbe, 0xef};

    CHECK_EQ(mw__ws_header(h, 1, 0, MW_WS_OP_BINARY, 0), 2);
    CHECK_MEM(h, "\x82\x00", 2);
    CHECK_EQ(mw__ws_header(h, 1, 0, MW_WS_OP_BINARY, 125), 2);
    CHECK_MEM(h, "\x82\x7d", 2);
    CHECK_EQ(mw__ws_header(h, 1, 0, MW_WS_OP_BINARY, 126), 4);
    CHECK_MEM(h, "\x82\x7e\x00\x7e", 4);
    CHECK_EQ(mw__ws_header(h, 0, 1, MW_WS_OP_TEXT, 65535), 4);
    CHECK_MEM(h, "\x41\x7e\xff\xff", 4);
    CHECK_EQ(mw__ws_header(h, 1, 1, MW_WS_OP_TEXT, 65536), 10);
    CHECK_MEM(h, "\xc1\x7f\x00\x00\x00\x00\x00\x01\x00\x00", 10);
    CHECK_EQ(mw__ws_header(h, 1, 0, MW_WS_OP_BINARY, UINT64_C(0x0123456789ABCDEF)), 10);
    CHECK_MEM(h, "\x82\x7f\x01\x23\x45\x67\x89\xab\xcd\xef", 10);
    CHECK_EQ(mw__ws_header(h, 1, 0, MW_WS_OP_CLOSE, 2), 2);
    CHECK_MEM(h, "\x88\x02", 2);

    CHECK_EQ(mw__ws_header_masked(h, 1, 0, MW_WS_OP_TEXT, 0, key), 6);
    CHECK_MEM(h, "\x81\x80\xde\xad\xbe\xef", 6);
    CHECK_EQ(mw__ws_header_masked(h, 1, 0, MW_WS_OP_TEXT, 300, key), 8);
    CHECK_MEM(h, "\x81\xfe\x01\x2c\xde\xad\xbe\xef", 8);
    CHECK_EQ(mw__ws_header_masked(h, 1, 0, MW_WS_OP_TEXT, 70000, key), 14);
    CHECK_MEM(h, "\x81\xff\x00\x00\x00\x00\x00\x01\x11\x70\xde\xad\xbe\xef", 14);

    /* Round trip: what a client would send, read by a server parser, for
     * lengths around each encoding boundary. */
    static const size_t lens[] = {0, 1, 125, 126, 127, 65535, 65536, 65537};
    static uint8_t frame[MW_WS_MAX_HEADER + 65537], orig[65537];
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        size_t n = lens[i], hl;
        mw_ws_parser_t p = server_cfg();
        mw_ws_event_t ev;

        for (size_t k = 0; k < n; k++)
            orig[k] = (uint8_t)(k * 31 + i);
        hl = mw__ws_header_masked(frame, 1, 0, MW_WS_OP_BINARY, n, key);
        memcpy(frame + hl, orig, n);
        mw__ws_mask(frame + hl, n, key, 0);
        CHECK_EQ(mw__ws_parse(&p, frame, hl + n, &ev), (ssize_t)(hl + n));
        CHECK_EQ(ev.len, n);
        CHECK(ev.first && ev.last);
        CHECK_MEM(ev.data, orig, n);
    }
}

/* ---- masking ----------------------------------------------------------- */

static void test_mask(void)
{
    static const uint8_t key[4] = {0x11, 0x22, 0x84, 0xF0};
    uint8_t store[96], want[96], orig[96];
    long bad = 0;

    for (size_t i = 0; i < sizeof orig; i++)
        orig[i] = (uint8_t)(i * 13 + 5);
    /* Every buffer alignment, key offset and length 0..67, against a
     * bytewise reference; the bytes around the range must stay put. */
    for (size_t align = 0; align < 8; align++)
        for (unsigned off = 0; off < 4; off++)
            for (size_t len = 0; len <= 67; len++) {
                unsigned r;

                memcpy(store, orig, sizeof store);
                memcpy(want, orig, sizeof want);
                for (size_t k = 0; k < len; k++)
                    want[align + k] ^= key[(off + k) % 4];
                r = mw__ws_mask(store + align, len, key, off);
                bad += r != (off + len) % 4;
                bad += memcmp(store, want, sizeof store) != 0;
                /* Masking twice restores the data. */
                mw__ws_mask(store + align, len, key, off);
                bad += memcmp(store, orig, sizeof store) != 0;
            }
    CHECK_EQ(bad, 0);

    /* Masking in pieces equals masking at once. */
    for (size_t cut = 0; cut <= 67; cut++) {
        unsigned off;

        memcpy(store, orig, sizeof store);
        memcpy(want, orig, sizeof want);
        mw__ws_mask(want, 67, key, 2);
        off = mw__ws_mask(store, cut, key, 2);
        off = mw__ws_mask(store + cut, 67 - cut, key, off);
        CHECK_EQ(off, (2 + 67) % 4);
        CHECK_MEM(store, want, 67);
    }
    /* An out-of-range offset is taken modulo 4; empty input with NULL. */
    CHECK_EQ(mw__ws_mask(NULL, 0, key, 3), 3);
    CHECK_EQ(mw__ws_mask(NULL, 0, key, 6), 2);
}

int main(void)
{
    RUN(test_rfc_examples);
    RUN(test_rfc_lengths);
    RUN(test_partial_headers);
    RUN(test_control_frames);
    RUN(test_empty_frames);
    RUN(test_protocol_errors);
    RUN(test_protocol_accepts);
    RUN(test_max_message_size);
    RUN(test_text_utf8);
    RUN(test_splits_valid);
    RUN(test_splits_errors);
    RUN(test_random_chunking);
    RUN(test_small_frames_both_paths);
    RUN(test_close_codes);
    RUN(test_close_check);
    RUN(test_encoders);
    RUN(test_mask);
    return mwt_summary();
}
