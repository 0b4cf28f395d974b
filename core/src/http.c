/* HTTP/1.1 request head parser (RFC 9112) and the small header helpers the
 * upgrade path needs: lookup, token lists, reason phrases.
 *
 * Parsing happens in two passes. The first finds the blank line that ends
 * the head; it resumes where the previous call stopped and already refuses
 * the bytes that can never be part of a valid head (NUL, bare CR, bare LF)
 * and heads that outgrow the limit, so a client cannot make us wait for a
 * terminator that will never count. The second pass runs once, over the
 * complete head, and parses it strictly: anything a lenient parser would
 * have to guess about is refused, since guessing differently from a proxy
 * in front of us is how request smuggling starts (RFC 9112 11.2). */
#include "http.h"

#include <limits.h>
#include <string.h>

#define SP   ' '
#define HTAB '\t'
#define CR   '\r'
#define LF   '\n'

/* Longest Content-Length we accept, in digits: below 2^63, so no consumer
 * of the value can overflow converting it. */
#define MAX_CONTENT_LENGTH_DIGITS 18

/* Fills the refusal outputs; the return value only says "refused", the
 * status says how. */
static int refuse(int *status, const char **why, int code, const char *reason)
{
    *status = code;
    *why = reason;
    return code == 431 ? MW_ETOOBIG : MW_EPROTO;
}

static int lower(int c)
{
    return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
}

/* ASCII case-insensitive comparison; locale-independent on purpose, since
 * header names are ASCII whatever the process locale is. */
static int ieq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
            return 0;
    return 1;
}

/* RFC 9110 5.6.2: tchar. */
static int is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* RFC 9110 5.5: field-vchar / SP / HTAB, obs-text included. */
static int is_field_char(unsigned char c)
{
    return c == HTAB || (c >= 0x20 && c != 0x7F);
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* Pass one: finds the end of the head, resuming at st->scanned. Returns the
 * head length, 0 if it is not complete, or a refusal. */
static long find_end(mw_http_parser_t *st, const unsigned char *b, size_t len, size_t max_head,
                     int *status, const char **why)
{
    size_t i = st->scanned;

    /* The buffer must be the one we scanned, grown; if the caller shrank it
     * the safe thing is to start over. */
    if (i > len)
        i = 0;
    /* The head length is returned as an int. */
    if (max_head > INT_MAX)
        max_head = INT_MAX;
    for (; i < len; i++) {
        unsigned char c = b[i];

        /* Refused as soon as the head outgrows the limit, terminator or not. */
        if (i >= max_head) {
            st->scanned = i;
            return refuse(status, why, 431, "request head too large");
        }
        /* RFC 9112 2.2: lines end in CRLF; a bare CR is refused (it may not be
         * taken as a line end) and so is a bare LF (we do not accept it as
         * one, so a lenient peer and we cannot disagree on the lines). */
        if (i > 0 && b[i - 1] == CR && c != LF)
            return refuse(status, why, 400, "bare CR in request head");
        if (c == LF) {
            if (i == 0 || b[i - 1] != CR)
                return refuse(status, why, 400, "bare LF in request head");
            /* An empty line. It is the end of the head unless no request line
             * came yet: RFC 9112 2.2 lets a server skip empty lines before the
             * request line. Consecutive empty lines only occur there (the
             * first empty line after a non-empty one ends the scan), so the
             * line before being empty too means we are still before the
             * request line, and this needs no state beyond the position. */
            if (i == 1)
                continue;
            if (b[i - 2] == LF) {
                int prev_empty = i == 3 || (i > 3 && b[i - 4] == LF);
                if (!prev_empty) {
                    st->scanned = i + 1;
                    return (long)(i + 1);
                }
            }
        } else if (c == 0) {
            /* RFC 9110 5.5: NUL is never valid in a field and dangerous to
             * C consumers of the value. */
            return refuse(status, why, 400, "NUL in request head");
        }
    }
    st->scanned = len;
    return 0;
}

/* Parses "HTTP/1.x" at b[i..] up to CR. Returns 0 and sets *minor, or the
 * refusal. */
static int parse_version(const unsigned char *b, size_t i, size_t end, int *minor, int *status,
                         const char **why)
{
    size_t n = end - i;

    /* RFC 9112 2.3: HTTP-version = "HTTP" "/" DIGIT "." DIGIT, case-sensitive. */
    if (n != 8 || memcmp(b + i, "HTTP/", 5) != 0 || !is_digit(b[i + 5]) || b[i + 6] != '.' ||
        !is_digit(b[i + 7]))
        return refuse(status, why, 400, "malformed HTTP version");
    if (b[i + 5] != '1' || (b[i + 7] != '0' && b[i + 7] != '1'))
        return refuse(status, why, 505, "HTTP version not supported");
    *minor = b[i + 7] - '0';
    return 0;
}

/* The Transfer-Encoding fields, in order, as one list: chunked must be the
 * final coding and appear once (RFC 9112 6.3: otherwise the framing is
 * unknown -> 400); chunked is the only coding decoded, so one before it
 * (gzip, chunked) -> 501. */
static int check_codings(mw_http_request_t *req, int *status, const char **why)
{
    size_t codings = 0, chunked = 0;
    int last_chunked = 0;
    for (size_t h = 0; h < req->nheaders; h++) {
        const mw_http_header_t *hd = &req->headers[h];
        if (!mw__slice_ieq(hd->name, "transfer-encoding"))
            continue;
        size_t i = 0;
        while (i <= hd->value.n) {
            size_t s = i, e;
            while (i < hd->value.n && hd->value.p[i] != ',')
                i++;
            e = i++;
            while (s < e && (hd->value.p[s] == SP || hd->value.p[s] == HTAB))
                s++;
            while (e > s && (hd->value.p[e - 1] == SP || hd->value.p[e - 1] == HTAB))
                e--;
            if (s == e) /* an empty element (RFC 9110 5.6.1) */
                continue;
            codings++;
            last_chunked = e - s == 7 && ieq(hd->value.p + s, "chunked", 7);
            chunked += (size_t)last_chunked;
        }
    }
    if (!codings || !last_chunked)
        return refuse(status, why, 400, "chunked must be the final transfer coding");
    if (chunked > 1)
        return refuse(status, why, 400, "chunked applied more than once");
    if (codings > 1)
        return refuse(status, why, 501, "transfer coding not implemented (only chunked)");
    req->chunked = 1;
    return 0;
}

/* Checks the fields that decide message framing, once all are known. */
static int check_framing(mw_http_request_t *req, int *status, const char **why)
{
    const mw_http_header_t *first_cl = NULL;
    size_t hosts = 0, te = 0;

    for (size_t h = 0; h < req->nheaders; h++) {
        const mw_http_header_t *hd = &req->headers[h];

        if (mw__slice_ieq(hd->name, "host")) {
            hosts++;
        } else if (mw__slice_ieq(hd->name, "transfer-encoding")) {
            te++;
        } else if (mw__slice_ieq(hd->name, "content-length")) {
            /* RFC 9110 8.6: 1*DIGIT. A list, even of equal values, is
             * refused rather than reconciled. */
            if (hd->value.n == 0 || hd->value.n > MAX_CONTENT_LENGTH_DIGITS)
                return refuse(status, why, 400, "invalid Content-Length");
            for (size_t k = 0; k < hd->value.n; k++)
                if (!is_digit((unsigned char)hd->value.p[k]))
                    return refuse(status, why, 400, "invalid Content-Length");
            /* RFC 9112 6.3: differing Content-Length fields make the framing
             * ambiguous -> 400. */
            if (first_cl && (first_cl->value.n != hd->value.n ||
                             memcmp(first_cl->value.p, hd->value.p, hd->value.n) != 0))
                return refuse(status, why, 400, "conflicting Content-Length fields");
            if (!first_cl)
                first_cl = hd;
        }
    }
    /* RFC 9112 3.2: an HTTP/1.1 request without Host, or any request with
     * more than one, MUST be answered with 400. */
    if (hosts > 1)
        return refuse(status, why, 400, "more than one Host field");
    if (hosts == 0 && req->version_minor >= 1)
        return refuse(status, why, 400, "HTTP/1.1 request without Host");
    if (te) {
        /* RFC 9112 6.1: Transfer-Encoding with Content-Length is a smuggling
         * attempt, and in HTTP/1.0 it means faulty framing: both -> 400. */
        if (first_cl || req->version_minor == 0)
            return refuse(status, why, 400, "Transfer-Encoding not allowed here");
        return check_codings(req, status, why);
    }
    return 0;
}

/* Pass two: parses the complete head b[0..head_len), which pass one has
 * shown to consist of CRLF-terminated lines without NUL. */
static int parse_head(const unsigned char *b, size_t head_len, mw_http_request_t *req, int *status,
                      const char **why)
{
    size_t i = 0, start, eol;
    int r;

    /* Skip the empty lines pass one tolerated before the request line. */
    while (b[i] == CR)
        i += 2;

    /* RFC 9112 3: request-line = method SP request-target SP HTTP-version. */
    start = i;
    while (is_tchar(b[i]))
        i++;
    if (i == start || b[i] != SP)
        return refuse(status, why, 400, "malformed method");
    req->method.p = (const char *)b + start;
    req->method.n = i - start;
    i++;

    /* Only visible ASCII: a space, control byte or non-ASCII byte inside the
     * target means a malformed or smuggled request line (RFC 9112 3.2). */
    start = i;
    while (b[i] > 0x20 && b[i] < 0x7F)
        i++;
    if (b[i] == CR)
        return refuse(status, why, 400, "request line without version");
    if (i == start || b[i] != SP)
        return refuse(status, why, 400, "malformed request target");
    req->target.p = (const char *)b + start;
    req->target.n = i - start;
    /* RFC 9112 3.2: origin-form, or asterisk-form for OPTIONS only. We are
     * no proxy, so absolute-form and authority-form are refused. */
    if (b[start] != '/' && !(req->target.n == 1 && b[start] == '*' && req->method.n == 7 &&
                             memcmp(req->method.p, "OPTIONS", 7) == 0))
        return refuse(status, why, 400, "request target not in origin form");
    {
        const char *q = memchr(req->target.p, '?', req->target.n);
        size_t pathlen = q ? (size_t)(q - req->target.p) : req->target.n;

        req->path.p = req->target.p;
        req->path.n = pathlen;
        req->query.p = q ? q + 1 : req->target.p + req->target.n;
        req->query.n = q ? req->target.n - pathlen - 1 : 0;
    }
    i++;

    eol = i;
    while (b[eol] != CR)
        eol++;
    if ((r = parse_version(b, i, eol, &req->version_minor, status, why)) != 0)
        return r;
    i = eol + 2;

    req->nheaders = 0;
    req->chunked = 0;
    while (b[i] != CR) {
        mw_http_header_t *hd;
        size_t name_end, vstart, vend;

        /* RFC 9112 5.2: obs-fold is refused with 400, and whitespace before
         * the first field (RFC 9112 2.2) is refused the same way. */
        if (b[i] == SP || b[i] == HTAB)
            return refuse(status, why, 400, "folded or indented header line");
        start = i;
        while (is_tchar(b[i]))
            i++;
        name_end = i;
        /* RFC 9112 5.1: no whitespace between field name and colon -> 400. */
        if (b[i] == SP || b[i] == HTAB)
            return refuse(status, why, 400, "whitespace before colon in header");
        if (b[i] != ':')
            return refuse(status, why, 400, "invalid character in header name");
        if (name_end == start)
            return refuse(status, why, 400, "empty header name");
        i++;

        while (b[i] == SP || b[i] == HTAB)
            i++;
        vstart = i;
        while (b[i] != CR) {
            if (!is_field_char(b[i]))
                return refuse(status, why, 400, "control character in header value");
            i++;
        }
        vend = i;
        while (vend > vstart && (b[vend - 1] == SP || b[vend - 1] == HTAB))
            vend--;
        i += 2;

        if (req->nheaders >= req->max_headers)
            return refuse(status, why, 431, "too many header fields");
        hd = &req->headers[req->nheaders++];
        hd->name.p = (const char *)b + start;
        hd->name.n = name_end - start;
        hd->value.p = (const char *)b + vstart;
        hd->value.n = vend - vstart;
    }
    if ((r = check_framing(req, status, why)) != 0)
        return r;
    req->head_len = head_len;
    return (int)head_len;
}

int mw__http_parse_request(mw_http_parser_t *st, const char *buf, size_t len, size_t max_head,
                           mw_http_request_t *req, int *status, const char **why)
{
    const unsigned char *b = (const unsigned char *)buf;
    long end = find_end(st, b, len, max_head, status, why);

    if (end <= 0)
        return (int)end;
    return parse_head(b, (size_t)end, req, status, why);
}

const mw_http_header_t *mw__http_header_find(const mw_http_request_t *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (mw__slice_ieq(req->headers[i].name, name))
            return &req->headers[i];
    return NULL;
}

size_t mw__http_header_count(const mw_http_request_t *req, const char *name)
{
    size_t n = 0;

    for (size_t i = 0; i < req->nheaders; i++)
        if (mw__slice_ieq(req->headers[i].name, name))
            n++;
    return n;
}

/* mw_chunked_t.state */
enum {
    CK_SIZE,       /* hex digits of a chunk size */
    CK_EXT,        /* after the size: BWS, chunk extensions, up to CR */
    CK_SIZE_LF,    /* the LF ending a chunk-size line */
    CK_DATA,       /* chunk data */
    CK_DATA_CR,    /* the CRLF after chunk data */
    CK_DATA_LF,    /*   */
    CK_TRAILER,    /* the start of a trailer line, or the CR of the final CRLF */
    CK_FIELD_NAME, /* a trailer field's name, up to ':' */
    CK_FIELD,      /* a trailer field's value, up to CR */
    CK_FIELD_LF,   /* the LF ending a trailer field line */
    CK_END_LF      /* the LF of the final CRLF */
};

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (unsigned char)lower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int mw__http_chunked(mw_chunked_t *st, const uint8_t *in, size_t n, uint64_t max_body,
                     size_t max_head, size_t *used, const uint8_t **data, size_t *dlen, int *status,
                     const char **why)
{
    size_t i = 0;
    *dlen = 0;
    while (i < n) {
        unsigned char c = in[i];
        /* which bound the byte counts against, once consumed */
        int size_byte = st->state == CK_SIZE || st->state == CK_EXT;
        int trailer_byte = st->state >= CK_TRAILER;
        switch (st->state) {
        case CK_DATA: {
            size_t take = n - i < st->left ? n - i : (size_t)st->left;
            *data = in + i;
            *dlen = take;
            st->left -= take;
            if (st->left == 0)
                st->state = CK_DATA_CR;
            *used = i + take;
            return 0;
        }
        case CK_SIZE: {
            int v = hexval(c);
            if (v >= 0) {
                if (st->left >> 60) /* one more digit would overflow */
                    return refuse(status, why, 413, "request body larger than max_body_size");
                st->left = st->left << 4 | (uint64_t)v;
                st->mark = 1;
                break;
            }
            if (!st->mark)
                return refuse(status, why, 400, "invalid chunk size");
            if (st->left > max_body || st->total + st->left > max_body)
                return refuse(status, why, 413, "request body larger than max_body_size");
            st->total += st->left;
            st->mark = 0;
            st->state = CK_EXT;
            continue; /* this byte belongs to what follows the size */
        }
        case CK_EXT:
            /* chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ):
             * skipped, but only visible characters, SP and HTAB, and BWS
             * only before a ';'. */
            if (c == '\r') {
                if (st->mark == 2)
                    return refuse(status, why, 400, "invalid chunk size");
                st->state = CK_SIZE_LF;
            } else if (c == '\n') {
                return refuse(status, why, 400, "a chunk-size line must end in CRLF");
            } else if (!is_field_char(c)) {
                return refuse(status, why, 400, "invalid character in a chunk extension");
            } else if (c == ';') {
                st->mark = 1;
            } else if (st->mark != 1) {
                if (c != SP && c != HTAB)
                    return refuse(status, why, 400, "invalid chunk size");
                st->mark = 2;
            }
            break;
        case CK_SIZE_LF:
            if (c != '\n')
                return refuse(status, why, 400, "a chunk-size line must end in CRLF");
            st->state = st->left ? CK_DATA : CK_TRAILER;
            break;
        case CK_DATA_CR:
        case CK_DATA_LF:
            if (c != (st->state == CK_DATA_CR ? '\r' : '\n'))
                return refuse(status, why, 400, "chunk data not followed by CRLF");
            if (st->state == CK_DATA_CR) {
                st->state = CK_DATA_LF;
            } else {
                st->state = CK_SIZE; /* the next chunk-size line */
                st->line = 0;
                st->mark = 0;
            }
            break;
        case CK_TRAILER:
            if (c == '\r') {
                st->state = CK_END_LF;
                break;
            }
            st->state = CK_FIELD_NAME;
            st->mark = 0;
            continue;
        case CK_FIELD_NAME:
            /* field-line = field-name ":" OWS field-value OWS (RFC 9112 5);
             * no obsolete folding */
            if (c == ':' && st->mark)
                st->state = CK_FIELD;
            else if (is_tchar(c))
                st->mark = 1;
            else
                return refuse(status, why, 400, "invalid trailer field");
            break;
        case CK_FIELD:
            if (c == '\r')
                st->state = CK_FIELD_LF;
            else if (c == '\n' || !is_field_char(c))
                return refuse(status, why, 400, "invalid trailer field");
            break;
        case CK_FIELD_LF:
            if (c != '\n')
                return refuse(status, why, 400, "a trailer line must end in CRLF");
            st->state = CK_TRAILER;
            break;
        case CK_END_LF:
            if (c != '\n')
                return refuse(status, why, 400, "the chunked body must end in CRLF");
            if (++st->trailer > max_head)
                return refuse(status, why, 431, "trailer section larger than max_header_bytes");
            *used = i + 1;
            return 1;
        }
        if (size_byte && ++st->line > max_head)
            return refuse(status, why, 400, "chunk-size line longer than max_header_bytes");
        if (trailer_byte && ++st->trailer > max_head)
            return refuse(status, why, 431, "trailer section larger than max_header_bytes");
        i++;
    }
    *used = n;
    return 0;
}

int mw__http_list_has(mw_slice_t value, const char *token)
{
    size_t tlen = strlen(token), i = 0;

    if (tlen == 0)
        return 0;
    /* RFC 9110 5.6.1: #element lists allow OWS around elements and empty
     * elements (", , a"), which recipients must ignore. */
    while (i < value.n) {
        size_t s = i, e;

        while (i < value.n && value.p[i] != ',')
            i++;
        e = i;
        while (s < e && (value.p[s] == SP || value.p[s] == HTAB))
            s++;
        while (e > s && (value.p[e - 1] == SP || value.p[e - 1] == HTAB))
            e--;
        if (e - s == tlen && ieq(value.p + s, token, tlen))
            return 1;
        i++;
    }
    return 0;
}

int mw__slice_ieq(mw_slice_t s, const char *str)
{
    size_t n = strlen(str);

    return s.n == n && ieq(s.p, str, n);
}

/* RFC 9110 section 15, plus 429 and 431 from RFC 6585. */
static const struct {
    int status;
    const char *reason;
} reasons[] = {
    {100, "Continue"},
    {101, "Switching Protocols"},
    {200, "OK"},
    {201, "Created"},
    {202, "Accepted"},
    {204, "No Content"},
    {206, "Partial Content"},
    {301, "Moved Permanently"},
    {302, "Found"},
    {303, "See Other"},
    {304, "Not Modified"},
    {307, "Temporary Redirect"},
    {308, "Permanent Redirect"},
    {400, "Bad Request"},
    {401, "Unauthorized"},
    {403, "Forbidden"},
    {404, "Not Found"},
    {405, "Method Not Allowed"},
    {406, "Not Acceptable"},
    {408, "Request Timeout"},
    {409, "Conflict"},
    {410, "Gone"},
    {411, "Length Required"},
    {412, "Precondition Failed"},
    {413, "Content Too Large"},
    {414, "URI Too Long"},
    {415, "Unsupported Media Type"},
    {416, "Range Not Satisfiable"},
    {417, "Expectation Failed"},
    {421, "Misdirected Request"},
    {422, "Unprocessable Content"},
    {426, "Upgrade Required"},
    {428, "Precondition Required"},
    {429, "Too Many Requests"},
    {431, "Request Header Fields Too Large"},
    {500, "Internal Server Error"},
    {501, "Not Implemented"},
    {502, "Bad Gateway"},
    {503, "Service Unavailable"},
    {504, "Gateway Timeout"},
    {505, "HTTP Version Not Supported"},
};

const char *mw__http_reason(int status)
{
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
        if (reasons[i].status == status)
            return reasons[i].reason;
    /* RFC 9112 4: the reason phrase may be empty, which is better than an
     * invented one for a code we do not know. */
    return "";
}
