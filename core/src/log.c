/* Logger and the aborting allocators (see log.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "log.h"

static int log_level = MW_LOG_INFO;
static const char *const level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void mw__log_set_level(int level)
{
    log_level = level;
}

int mw__log_level(void)
{
    return log_level;
}

int mw__log_parse_level(const char *name)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

static int log_format = MW_LOG_TEXT;

void mw__log_set_format(int format)
{
    log_format = format;
}

int mw__log_format(void)
{
    return log_format;
}

size_t mw__json_escape(char *out, size_t cap, const char *s)
{
    size_t o = 0;
    for (; *s && o + 8 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else if (ch == '\t') {
            out[o++] = '\\';
            out[o++] = 't';
        } else if (ch < 0x20) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", ch);
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o] = 0;
    return o;
}

static size_t stamp(char *out, size_t cap)
{
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    return (size_t)snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                            tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                            (int)(tv.tv_usec / 1000));
}

static const char *const json_levels[] = {"debug", "info", "warn", "error"};

static void emit(const char *line, size_t len)
{
    /* One write per line, so lines from several threads never interleave. */
    fwrite(line, 1, len, stderr);
    fflush(stderr);
}

static void vlog_json(int level, const char *fmt, va_list ap)
{
    char msg[2048], esc[4096], ts[64], line[4400];
    vsnprintf(msg, sizeof msg, fmt, ap);
    mw__json_escape(esc, sizeof esc, msg);
    stamp(ts, sizeof ts);
    int n = snprintf(line, sizeof line, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"%s\"}\n", ts,
                     json_levels[level], esc);
    if (n < 0 || (size_t)n >= sizeof line) {
        n = (int)sizeof line - 1;
        line[n - 1] = '\n';
    }
    emit(line, (size_t)n);
}

static void vlog(int level, const char *fmt, va_list ap)
{
    if (log_format == MW_LOG_JSON) {
        vlog_json(level, fmt, ap);
        return;
    }
    char line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %-5s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (int)(tv.tv_usec / 1000), level_names[level]);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    /* One write per line, so lines from several threads never interleave. */
    fwrite(line, 1, len, stderr);
    fflush(stderr);
}

void mw__log(int level, const char *fmt, ...)
{
    if (level < log_level || level < 0 || level >= MW_LOG_OFF)
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog(level, fmt, ap);
    va_end(ap);
}

void mw__log_always(int level, const char *fmt, ...)
{
    if (level < 0 || level >= MW_LOG_OFF)
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog(level, fmt, ap);
    va_end(ap);
}

static int is_number(const char *s, size_t n)
{
    size_t i = 0;
    int digits = 0;
    if (i < n && s[i] == '-')
        i++;
    for (; i < n; i++) {
        if (s[i] >= '0' && s[i] <= '9')
            digits++;
        else if (s[i] != '.')
            return 0;
    }
    return digits > 0 && !(n > 1 && s[0] == '0' && s[1] != '.');
}

void mw__log_access(const char *event, const char *fmt, ...)
{
    if (MW_LOG_INFO < log_level)
        return;
    char fields[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fields, sizeof fields, fmt, ap);
    va_end(ap);
    if (log_format != MW_LOG_JSON) {
        mw__log(MW_LOG_INFO, "access %s %s", event, fields);
        return;
    }
    char line[6144], ts[64];
    stamp(ts, sizeof ts);
    size_t o = (size_t)snprintf(line, sizeof line,
                                "{\"ts\":\"%s\",\"level\":\"info\",\"event\":\"%s\"", ts, event);
    /* key=value pairs, separated by single spaces */
    for (char *p = fields; *p && o < sizeof line - 64;) {
        char *sp = strchr(p, ' ');
        size_t len = sp ? (size_t)(sp - p) : strlen(p);
        char *eq = memchr(p, '=', len);
        if (eq) {
            char key[64], val[1024], esc[2048];
            size_t kl = (size_t)(eq - p) < sizeof key - 1 ? (size_t)(eq - p) : sizeof key - 1;
            memcpy(key, p, kl);
            key[kl] = 0;
            size_t vl = len - (size_t)(eq - p) - 1;
            if (vl > sizeof val - 1)
                vl = sizeof val - 1;
            memcpy(val, eq + 1, vl);
            val[vl] = 0;
            if (is_number(val, vl)) {
                o += (size_t)snprintf(line + o, sizeof line - o, ",\"%s\":%s", key, val);
            } else {
                mw__json_escape(esc, sizeof esc, val);
                o += (size_t)snprintf(line + o, sizeof line - o, ",\"%s\":\"%s\"", key, esc);
            }
        }
        p += len;
        while (*p == ' ')
            p++;
    }
    if (o > sizeof line - 3)
        o = sizeof line - 3;
    line[o++] = '}';
    line[o++] = '\n';
    emit(line, o);
}

static void out_of_memory(size_t n)
{
    fprintf(stderr, "moonwire: out of memory allocating %zu bytes\n", n);
    abort();
}

void *mw__xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        out_of_memory(n);
    return p;
}

void *mw__xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        out_of_memory(n);
    return q;
}

void *mw__xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        out_of_memory(n * size);
    return p;
}
