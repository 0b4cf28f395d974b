/* HTTP/1.1 request head parser (RFC 9112 sections 2-5), sans-I/O.
 *
 * The parser is resumable: it remembers how far it has scanned for the end
 * of the head, so a request that trickles in one byte at a time costs linear
 * time, not quadratic. Once the blank line that ends the head is in the
 * buffer it parses the request line and every header field strictly and
 * fills a request of slices that point into the caller's buffer. It never
 * allocates and never touches a socket. */
#ifndef MW_HTTP_H
#define MW_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "moonwire/moonwire.h"

typedef struct mw_http_header {
    mw_slice_t name;  /* as sent; compare case-insensitively */
    mw_slice_t value; /* leading and trailing spaces and tabs removed */
} mw_http_header_t;

typedef struct mw_http_request {
    mw_slice_t method;         /* e.g. "GET" */
    mw_slice_t target;         /* request-target as sent, e.g. "/chat?x=1" */
    mw_slice_t path;           /* target before '?', not percent-decoded */
    mw_slice_t query;          /* target after '?', without the '?'; empty if none */
    int version_minor;         /* 1 for HTTP/1.1, 0 for HTTP/1.0 */
    mw_http_header_t *headers; /* caller-provided array ... */
    size_t max_headers;        /* ... of this capacity */
    size_t nheaders;           /* filled on success */
    size_t head_len;           /* bytes of the head, including the final CRLF CRLF */
    int chunked;               /* the body comes in the chunked coding (RFC 9112 7.1) */
} mw_http_request_t;

/* Resumable scan state; zero it before the first call of each request. */
typedef struct mw_http_parser {
    size_t scanned; /* bytes already searched for the end of the head */
} mw_http_parser_t;

/* Looks for a complete request head in buf[0..len) (the same buffer, grown,
 * on each call) and parses it into *req (whose headers and max_headers the
 * caller set).
 * Returns:
 *   > 0  the head's length; *req is filled and its slices borrow buf;
 *   0    the head is not complete yet and is still within max_head bytes;
 *   < 0  the request must be refused: *status is the HTTP status to answer
 *        (400 malformed, 431 head larger than max_head or more than
 *        max_headers fields, 501 unsupported transfer coding, 505 a version
 *        other than HTTP/1.0 or HTTP/1.1) and *why a static reason.
 * Strict by design: the request line is `method SP request-target SP
 * HTTP/1.x CRLF`; the method is a token; the target is origin-form (starts
 * with '/') or "*" for OPTIONS; header names are tokens with no space before
 * the colon; values hold no CR, LF or NUL and no control characters but
 * HTAB; obsolete line folding is refused; every line ends in CRLF (a bare CR
 * or bare LF is refused). Leading empty lines before the request line are
 * tolerated as RFC 9112 2.2 allows. */
int mw__http_parse_request(mw_http_parser_t *st, const char *buf, size_t len, size_t max_head,
                           mw_http_request_t *req, int *status, const char **why);

/* A chunked request body being decoded (RFC 9112 7.1), resumable at any
 * byte; zero it before the body's first byte. */
typedef struct mw_chunked {
    uint64_t left;    /* data bytes still to come in the current chunk */
    uint64_t total;   /* data bytes of the body so far, this chunk's announced ones included */
    uint32_t line;    /* bytes of the current chunk-size line so far */
    uint32_t trailer; /* bytes of the trailer section so far */
    uint8_t state;    /* where in the coding (http.c) */
    uint8_t mark;     /* in the size: a hex digit was seen; after it: 1 a ';', 2 BWS
                       * without one yet; in a trailer name: a character was seen */
} mw_chunked_t;

/* Decodes in[0..n) of a chunked body, up to one span of data at a time.
 * Sets *used to the bytes consumed and (*data, *dlen) to the data found in
 * them (dlen 0 if none); call again with the rest. Returns:
 *   0    more input is needed (*used == n) or a span of data was found;
 *   1    the body ended (last chunk and trailer section read): *used stops
 *        there, and what follows is the next request;
 *   < 0  the body is refused: *status 400 (malformed: *why says where) or
 *        413 (the data would exceed max_body, decided on the chunk size
 *        before its data is read), or 431 (trailers beyond max_head bytes). A
 * chunk-size line (size and extensions) longer than max_head is 400.
 * Chunk extensions are skipped and trailer fields discarded (a server may,
 * RFC 9112 7.1.2); every line must end in CRLF. */
int mw__http_chunked(mw_chunked_t *st, const uint8_t *in, size_t n, uint64_t max_body,
                     size_t max_head, size_t *used, const uint8_t **data, size_t *dlen, int *status,
                     const char **why);

/* Returns the first header named name (case-insensitive), or NULL. */
const mw_http_header_t *mw__http_header_find(const mw_http_request_t *req, const char *name);

/* Counts the headers named name (case-insensitive). */
size_t mw__http_header_count(const mw_http_request_t *req, const char *name);

/* True if value, a comma-separated list of tokens (RFC 9110 5.6.1, optional
 * whitespace around elements, empty elements allowed), contains token
 * (compared case-insensitively). */
int mw__http_list_has(mw_slice_t value, const char *token);

/* Case-insensitive comparison of a slice with a NUL-terminated string. */
int mw__slice_ieq(mw_slice_t s, const char *str);

/* Returns the standard reason phrase for an HTTP status, e.g. "Not Found". */
const char *mw__http_reason(int status);

#endif
