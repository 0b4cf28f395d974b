/* measure.c: what a run measures and reports besides its own messages:
 * the clock, the generator's CPU time, the server's CPU time and RSS from
 * /proc, the latency histogram, and the JSON fields every mode shares. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "loadgen.h"

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

double cpu_seconds(int who)
{
    struct rusage ru;
    getrusage(who, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* Reads /proc/PID/NAME into buf (at most cap - 1 bytes, NUL-terminated);
 * -1 if it cannot be read. */
static long read_proc(int pid, const char *name, char *buf, size_t cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", pid, name);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = 0;
    return (long)n;
}

/* The server's CPU time (user + system), seconds; -1 if unreadable. */
double read_cpu_s(int pid)
{
    char buf[1024];
    if (read_proc(pid, "stat", buf, sizeof buf) < 0)
        return -1;
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* The server's resident set (VmRSS), kB; -1 if unreadable. */
long read_rss_kb(int pid)
{
    char buf[4096];
    if (read_proc(pid, "status", buf, sizeof buf) < 0)
        return -1;
    const char *p = strstr(buf, "\nVmRSS:");
    return p ? strtol(p + 7, NULL, 10) : -1;
}

/* The server's CPU share over a window (1 = one CPU busy), -1 unknown. */
double server_share(double cpu0, double cpu1, double wall)
{
    return cpu0 >= 0 && cpu1 >= 0 && wall > 0 ? (cpu1 - cpu0) / wall : -1;
}

/* ---- histogram -------------------------------------------------------- */

void hist_add(struct hist *h, uint64_t v)
{
    if (v >= ((uint64_t)1 << H_MAX_EXP))
        v = ((uint64_t)1 << H_MAX_EXP) - 1;
    int i;
    if (v < H_SUB) {
        i = (int)v;
    } else {
        int e = 63 - __builtin_clzll(v);
        i = H_SUB + (e - H_SUB_BITS) * H_SUB + (int)((v >> (e - H_SUB_BITS)) & (H_SUB - 1));
    }
    h->b[i]++;
    h->n++;
    h->sum += v;
    if (v > h->max)
        h->max = v;
}

void hist_merge(struct hist *to, const struct hist *from)
{
    for (int i = 0; i < H_BUCKETS; i++)
        to->b[i] += from->b[i];
    to->n += from->n;
    to->sum += from->sum;
    if (from->max > to->max)
        to->max = from->max;
}

/* The value below which a fraction q of the samples lie (bucket midpoint). */
double hist_pct(const struct hist *h, double q)
{
    if (h->n == 0)
        return 0;
    uint64_t want = (uint64_t)(q * (double)h->n + 0.999999);
    if (want < 1)
        want = 1;
    uint64_t seen = 0;
    for (int i = 0; i < H_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= want) {
            if (i < H_SUB)
                return i;
            int e = (i - H_SUB) / H_SUB + H_SUB_BITS, sub = (i - H_SUB) % H_SUB;
            double lo = (double)((uint64_t)(H_SUB + sub) << (e - H_SUB_BITS));
            double width = (double)((uint64_t)1 << (e - H_SUB_BITS));
            double mid = lo + width / 2;
            return mid > (double)h->max ? (double)h->max : mid;
        }
    }
    return (double)h->max;
}

/* ---- the report ------------------------------------------------------- */

/* RFC 8259 7: '"', '\\' and the control characters must be escaped; other
 * bytes go out as they are, so UTF-8 passes through. */
void print_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20 || ch >= 0x7f)
            /* bytes beyond ASCII (a peer's reason, say) may not be UTF-8:
             * written as U+0080..U+00FF, the JSON stays valid */
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

void print_json_common(FILE *f, const struct config *cfg)
{
    fputs("\"label\":", f);
    print_json_string(f, cfg->label);
    fputs(",\"host\":", f);
    print_json_string(f, cfg->host);
    fprintf(f, ",\"port\":%d,\"tls\":%s,\"deflate\":%s", cfg->port, cfg->tls ? "true" : "false",
            cfg->deflate ? "true" : "false");
}
