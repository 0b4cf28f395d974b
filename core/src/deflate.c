/* permessage-deflate (see deflate.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deflate.h"
#include "log.h"

/* --- negotiation (RFC 7692 7.1) ------------------------------------------- */

typedef struct offer {
    int server_no_ctx, client_no_ctx;
    int server_bits; /* 0: not given */
    int client_bits; /* -1: not given, 0: given without a value */
    int valid;
} offer_t;

static int is_tchar(int ch)
{
    return (ch >= '0' && ch <= '9') || ((ch | 32) >= 'a' && (ch | 32) <= 'z') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static const char *skip_ows(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    return p;
}

/* Parses a window-bits value (a token or a quoted string) 8..15. */
static int parse_bits(const char *v, size_t n)
{
    if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
        v++;
        n -= 2;
    }
    if (n == 1 && v[0] >= '8' && v[0] <= '9')
        return v[0] - '0';
    if (n == 2 && v[0] == '1' && v[1] >= '0' && v[1] <= '5')
        return 10 + v[1] - '0';
    return -1;
}

/* Parses the parameters of one permessage-deflate offer from p up to the
 * next ',' at top level; returns where it stopped. */
static const char *parse_params(const char *p, const char *end, offer_t *o)
{
    memset(o, 0, sizeof *o);
    o->client_bits = -1;
    o->valid = 1;
    int seen_s = 0, seen_c = 0, seen_sb = 0, seen_cb = 0;
    for (;;) {
        p = skip_ows(p, end);
        if (p >= end || *p == ',')
            return p;
        if (*p != ';') {
            o->valid = 0;
            while (p < end && *p != ',')
                p++;
            return p;
        }
        p = skip_ows(p + 1, end);
        const char *name = p;
        while (p < end && is_tchar((unsigned char)*p))
            p++;
        size_t nlen = (size_t)(p - name);
        p = skip_ows(p, end);
        const char *val = NULL;
        size_t vlen = 0;
        if (p < end && *p == '=') {
            p = skip_ows(p + 1, end);
            val = p;
            if (p < end && *p == '"') {
                p++;
                while (p < end && *p != '"')
                    p++;
                if (p < end)
                    p++;
            } else {
                while (p < end && is_tchar((unsigned char)*p))
                    p++;
            }
            vlen = (size_t)(p - val);
        }
#define IS(s) (nlen == sizeof(s) - 1 && memcmp(name, s, nlen) == 0)
        if (IS("server_no_context_takeover") && !val && !seen_s++) {
            o->server_no_ctx = 1;
        } else if (IS("client_no_context_takeover") && !val && !seen_c++) {
            o->client_no_ctx = 1;
        } else if (IS("server_max_window_bits") && val && !seen_sb++) {
            o->server_bits = parse_bits(val, vlen);
            if (o->server_bits < 0)
                o->valid = 0;
        } else if (IS("client_max_window_bits") && !seen_cb++) {
            o->client_bits = val ? parse_bits(val, vlen) : 0;
            if (val && o->client_bits < 0)
                o->valid = 0;
        } else {
            o->valid = 0; /* unknown, repeated or malformed: decline this offer */
        }
#undef IS
    }
}

int mw__pmd_negotiate(const mw_http_request_t *req, const mw_pmd_policy_t *policy, mw_pmd_t *out,
                      char *resp, size_t cap)
{
    if (!policy->enabled)
        return 0;
    for (size_t h = 0; h < req->nheaders; h++) {
        if (!mw__slice_ieq(req->headers[h].name, "sec-websocket-extensions"))
            continue;
        const char *p = req->headers[h].value.p, *end = p + req->headers[h].value.n;
        while (p < end) {
            p = skip_ows(p, end);
            const char *name = p;
            while (p < end && is_tchar((unsigned char)*p))
                p++;
            size_t nlen = (size_t)(p - name);
            offer_t o;
            p = parse_params(p, end, &o);
            if (p < end && *p == ',')
                p++;
            if (nlen != 18 || memcmp(name, "permessage-deflate", 18) != 0 || !o.valid)
                continue;
            /* zlib cannot make raw deflate with a 256-byte window. */
            if (o.server_bits == 8)
                continue;
            memset(out, 0, sizeof *out);
            out->server_no_ctx = o.server_no_ctx || !policy->context_takeover;
            out->client_no_ctx = o.client_no_ctx || !policy->context_takeover;
            int bits = policy->window_bits;
            if (o.server_bits && o.server_bits < bits)
                bits = o.server_bits;
            out->server_bits = (uint8_t)bits;
            out->level = policy->level;
            out->threshold = policy->threshold;
            /* The response names what binds the client: server_max_window_bits
             * only when offered (some browsers refuse it otherwise); a
             * smaller window of ours needs no announcement. */
            int n = snprintf(resp, cap, "permessage-deflate%s%s",
                             out->server_no_ctx ? "; server_no_context_takeover" : "",
                             out->client_no_ctx ? "; client_no_context_takeover" : "");
            if (o.server_bits && n > 0 && (size_t)n < cap)
                snprintf(resp + n, cap - (size_t)n, "; server_max_window_bits=%d", bits);
            return 1;
        }
    }
    return 0;
}

/* --- compression ----------------------------------------------------------- */

static z_stream *deflater_new(int bits, int level)
{
    z_stream *z = mw__xcalloc(1, sizeof *z);
    /* Negative bits: raw deflate, no zlib header (RFC 7692 7.2.1). memLevel 8
     * keeps zlib's speed; the window is what the peer agreed to. */
    if (deflateInit2(z, level, Z_DEFLATED, -bits, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        mw_error("zlib: deflateInit2 failed");
        abort();
    }
    return z;
}

static z_stream *inflater_new(void)
{
    z_stream *z = mw__xcalloc(1, sizeof *z);
    /* A 15-bit window decodes any smaller window the client uses. */
    if (inflateInit2(z, -15) != Z_OK) {
        mw_error("zlib: inflateInit2 failed");
        abort();
    }
    return z;
}

static void grow(mw_pmd_shared_t *sh, size_t need)
{
    if (sh->cap >= need)
        return;
    size_t cap = sh->cap ? sh->cap : 16384;
    while (cap < need)
        cap *= 2;
    sh->buf = mw__xrealloc(sh->buf, cap);
    sh->cap = cap;
}

static size_t compress_with(mw_pmd_shared_t *sh, z_stream *z, const uint8_t *in, size_t len,
                            int reset)
{
    size_t out = 0;
    grow(sh, deflateBound(z, len) + 16);
    z->next_in = (Bytef *)(uintptr_t)in;
    z->avail_in = (uInt)len;
    for (;;) {
        z->next_out = sh->buf + out;
        z->avail_out = (uInt)(sh->cap - out);
        deflate(z, Z_SYNC_FLUSH);
        out = sh->cap - z->avail_out;
        if (z->avail_in == 0 && z->avail_out > 0)
            break;
        grow(sh, sh->cap * 2);
    }
    if (reset)
        deflateReset(z);
    /* A sync flush ends in 00 00 FF FF, which the receiver adds back. */
    out = out >= 4 ? out - 4 : 0;
    if (out == 0) {
        /* Nothing new to say (an empty message after a flush): RFC 7692
         * 7.2.3.6 sends one 0x00 so that the tail makes a valid empty
         * stored block. */
        sh->buf[0] = 0;
        out = 1;
    }
    return out;
}

size_t mw__pmd_compress(mw_pmd_shared_t *sh, mw_pmd_t *p, const uint8_t *in, size_t len)
{
    if (p->server_no_ctx)
        return mw__pmd_compress_shared(sh, p->server_bits, p->level, in, len);
    if (!p->def)
        p->def = deflater_new(p->server_bits, p->level);
    return compress_with(sh, p->def, in, len, 0);
}

size_t mw__pmd_compress_shared(mw_pmd_shared_t *sh, int bits, int level, const uint8_t *in,
                               size_t len)
{
    /* One shared stream per window size; the level is set per call. */
    if (!sh->def[bits])
        sh->def[bits] = deflater_new(bits, level);
    deflateParams(sh->def[bits], level, Z_DEFAULT_STRATEGY);
    return compress_with(sh, sh->def[bits], in, len, 1);
}

long mw__pmd_inflate(mw_pmd_shared_t *sh, mw_pmd_t *p, const uint8_t *in, size_t len, uint64_t max)
{
    z_stream *z;
    if (p->client_no_ctx) {
        if (!sh->inf)
            sh->inf = inflater_new();
        z = sh->inf;
    } else {
        if (!p->inf)
            p->inf = inflater_new();
        z = p->inf;
    }
    static const uint8_t tail[4] = {0, 0, 0xff, 0xff};
    size_t out = 0;
    long rc = 0;
    grow(sh, len * 4 + 64 < max + 1 ? len * 4 + 64 : (size_t)max + 1);
    int ended = 0;
    for (int part = 0; part < 2 && rc == 0; part++) {
        z->next_in = (Bytef *)(uintptr_t)(part ? tail : in);
        z->avail_in = (uInt)(part ? 4 : len);
        while (z->avail_in > 0) {
            if (out == sh->cap)
                grow(sh, sh->cap * 2);
            /* Never produce more than max + 1 bytes. */
            size_t room = sh->cap - out;
            if (out + room > max + 1)
                room = (size_t)(max + 1 - out);
            z->next_out = sh->buf + out;
            z->avail_out = (uInt)room;
            int r = inflate(z, Z_SYNC_FLUSH);
            out += room - z->avail_out;
            if (out > max) {
                rc = -1;
                break;
            }
            if (r == Z_STREAM_END) {
                /* The sender ended its stream (BFINAL): the message is
                 * complete and its context gone; the tail is not needed,
                 * but payload bytes after the final block are garbage. */
                if (part == 0 && z->avail_in > 0)
                    rc = -2;
                inflateReset(z);
                part = 2;
                ended = 1;
                break;
            }
            if (r == Z_NEED_DICT || r == Z_DATA_ERROR || r == Z_MEM_ERROR) {
                rc = -2;
                break;
            }
            if (r == Z_BUF_ERROR && z->avail_out > 0)
                break; /* no progress possible: input used up */
        }
    }
    /* With the tail in, a whole message leaves the inflater between blocks
     * (zlib: data_type bit 128). Anywhere else the data was cut short or
     * is not deflate at all, though zlib saw no error yet. */
    if (rc == 0 && !ended && !(z->data_type & 128))
        rc = -2;
    if (p->client_no_ctx || rc != 0)
        inflateReset(z);
    return rc ? rc : (long)out;
}

void mw__pmd_free(mw_pmd_t *p)
{
    if (p->def) {
        deflateEnd(p->def);
        free(p->def);
    }
    if (p->inf) {
        inflateEnd(p->inf);
        free(p->inf);
    }
    p->def = p->inf = NULL;
}

void mw__pmd_shared_free(mw_pmd_shared_t *sh)
{
    for (int i = 0; i < 16; i++)
        if (sh->def[i]) {
            deflateEnd(sh->def[i]);
            free(sh->def[i]);
        }
    if (sh->inf) {
        inflateEnd(sh->inf);
        free(sh->inf);
    }
    free(sh->buf);
    memset(sh, 0, sizeof *sh);
}
