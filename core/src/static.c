/* Static file responses (see static.h). The file is opened and checked
 * here; its bytes are read later, a chunk at a time, as the client takes
 * them (outq file chunks). Disk calls block the loop briefly: static
 * serving is for an app's own assets, not bulk downloads. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "static.h"

static const struct {
    const char *ext;
    const char *type;
} types[] = {
    {"html", "text/html; charset=utf-8"},
    {"htm", "text/html; charset=utf-8"},
    {"css", "text/css; charset=utf-8"},
    {"js", "text/javascript; charset=utf-8"},
    {"mjs", "text/javascript; charset=utf-8"},
    {"json", "application/json"},
    {"map", "application/json"},
    {"txt", "text/plain; charset=utf-8"},
    {"md", "text/markdown; charset=utf-8"},
    {"csv", "text/csv; charset=utf-8"},
    {"xml", "application/xml"},
    {"svg", "image/svg+xml"},
    {"png", "image/png"},
    {"jpg", "image/jpeg"},
    {"jpeg", "image/jpeg"},
    {"gif", "image/gif"},
    {"webp", "image/webp"},
    {"avif", "image/avif"},
    {"ico", "image/x-icon"},
    {"woff", "font/woff"},
    {"woff2", "font/woff2"},
    {"ttf", "font/ttf"},
    {"otf", "font/otf"},
    {"wasm", "application/wasm"},
    {"pdf", "application/pdf"},
    {"mp3", "audio/mpeg"},
    {"ogg", "audio/ogg"},
    {"wav", "audio/wav"},
    {"mp4", "video/mp4"},
    {"webm", "video/webm"},
    {"zip", "application/zip"},
    {"gz", "application/gzip"},
};

const char *mw__static_type(const char *name)
{
    const char *dot = strrchr(name, '.');
    const char *slash = strrchr(name, '/');
    if (dot && (!slash || dot > slash))
        for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
            if (strcasecmp(dot + 1, types[i].ext) == 0)
                return types[i].type;
    return "application/octet-stream";
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch |= 32;
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

/* Percent-decodes src into dst (capacity cap). Returns the length, or -1 for
 * a bad escape, an encoded NUL or a result that does not fit. */
static long decode_path(const char *src, size_t n, char *dst, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int ch = (unsigned char)src[i];
        if (ch == '%') {
            if (i + 2 >= n)
                return -1;
            int hi = hexval((unsigned char)src[i + 1]), lo = hexval((unsigned char)src[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            ch = hi * 16 + lo;
            i += 2;
        }
        if (ch == 0 || o + 1 >= cap)
            return -1;
        dst[o++] = (char)ch;
    }
    dst[o] = 0;
    return (long)o;
}

/* True when any '/'-separated segment of p is "..". */
static int has_dotdot(const char *p)
{
    for (const char *s = p; *s;) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 2 && s[0] == '.' && s[1] == '.')
            return 1;
        if (!e)
            break;
        s = e + 1;
    }
    return 0;
}

static void http_date(time_t t, char *out, size_t len)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, len, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

/* Parses an IMF-fixdate (RFC 9110 5.6.7); returns -1 if it is not one. */
static time_t parse_http_date(const char *s, size_t n)
{
    char buf[64];
    if (n >= sizeof buf)
        return -1;
    memcpy(buf, s, n);
    buf[n] = 0;
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (!end || *end)
        return -1;
    return timegm(&tm);
}

static int respond_text(mw_conn_t *c, int status, const char *why)
{
    char body[256];
    int n = snprintf(body, sizeof body, "%d %s: %s\n", status, mw__http_reason(status), why);
    static const char type[] = "Content-Type: text/plain; charset=utf-8\r\n";
    mw__conn_http_respond(c, status, type, sizeof type - 1, body, (size_t)n);
    return status;
}

int mw__static_serve(mw_conn_t *c, const char *root, const char *rel, size_t rlen,
                     const mw_http_request_t *req)
{
    char decoded[PATH_MAX], path[PATH_MAX * 2], real[PATH_MAX];
    if (decode_path(rel, rlen, decoded, sizeof decoded) < 0)
        return respond_text(c, 400, "malformed path");
    /* Refuse ".." before touching the file system: the answer must not
     * depend on what exists outside the directory. */
    if (has_dotdot(decoded) || strchr(decoded, '\\'))
        return respond_text(c, 403, "path leaves the static directory");
    snprintf(path, sizeof path, "%s/%s", root, decoded[0] == '/' ? decoded + 1 : decoded);
    if (!realpath(path, real))
        return respond_text(c, errno == EACCES ? 403 : 404, "no such file");
    /* realpath resolved every symlink: the result must still be inside. */
    size_t rootlen = strlen(root);
    if (strncmp(real, root, rootlen) != 0 || (real[rootlen] != '/' && real[rootlen] != 0))
        return respond_text(c, 403, "path leaves the static directory");
    struct stat st;
    if (stat(real, &st) != 0)
        return respond_text(c, 404, "no such file");
    if (S_ISDIR(st.st_mode)) {
        size_t l = strlen(real);
        if (l + sizeof "/index.html" > sizeof real)
            return respond_text(c, 404, "no such file");
        memcpy(real + l, "/index.html", sizeof "/index.html");
        if (stat(real, &st) != 0)
            return respond_text(c, 404, "no such file");
    }
    if (!S_ISREG(st.st_mode))
        return respond_text(c, 404, "not a regular file");
    int fd = open(real, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return respond_text(c, errno == EACCES ? 403 : 404, "cannot open file");
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return respond_text(c, 404, "not a regular file");
    }

    /* Validators (RFC 9110 8.8): a weak ETag from size and mtime, and
     * Last-Modified. If-None-Match wins over If-Modified-Since (13.2.2). */
    char etag[64], lastmod[64], hdrs[512];
    snprintf(etag, sizeof etag, "W/\"%llx-%llx\"", (unsigned long long)st.st_size,
             (unsigned long long)st.st_mtime);
    http_date(st.st_mtime, lastmod, sizeof lastmod);
    int not_modified = 0;
    const mw_http_header_t *inm = mw__http_header_find(req, "if-none-match");
    const mw_http_header_t *ims = mw__http_header_find(req, "if-modified-since");
    if (inm) {
        mw_slice_t v = inm->value;
        const char *bare = etag + 2; /* weak comparison: W/ does not matter */
        not_modified =
            (v.n == 1 && v.p[0] == '*') || mw__http_list_has(v, etag) || mw__http_list_has(v, bare);
    } else if (ims) {
        /* RFC 9110 13.1.3: a date later than now is invalid: ignore it. */
        time_t t = parse_http_date(ims->value.p, ims->value.n);
        not_modified = t >= 0 && t <= time(NULL) && st.st_mtime <= t;
    }
    int n = snprintf(hdrs, sizeof hdrs,
                     "Content-Type: %s\r\nLast-Modified: %s\r\nETag: %s\r\n"
                     "Cache-Control: no-cache\r\n",
                     mw__static_type(real), lastmod, etag);
    if (not_modified) {
        close(fd);
        mw__conn_http_respond(c, 304, hdrs, (size_t)n, NULL, 0);
        return 304;
    }
    /* The head carries the length; the bytes follow from the file. */
    mw__conn_http_respond_file(c, 200, hdrs, (size_t)n, fd, (uint64_t)st.st_size);
    return 200;
}
