/* echo.c: modes echo and raw. N connections over T threads (one worker
 * each), D messages in flight on each; every echoed byte is compared with
 * what was sent, each round trip is timed. raw sends the same payloads over
 * plain TCP to a byte echo server: the physical reference for echo. Mode
 * idle borrows the handlers for its liveness check. */
#define _GNU_SOURCE
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "loadgen.h"

static void echo_send(struct conn *c)
{
    struct worker *w = c->w;
    const struct config *cfg = w->cfg;
    c->sent_ts[c->tx_k % (uint64_t)cfg->depth] = w->now;
    const uint8_t *p = expect_of(cfg, c->id, c->tx_k);
    if (cfg->tcp)
        queue_raw(c, p, cfg->size);
    else
        queue_frame(c, cfg->binary ? 2 : 1, p, cfg->size);
    c->tx_k++;
}

void echo_may_send(struct conn *c)
{
    struct worker *w = c->w;
    while (w->sending && c->state == ST_OPEN && c->tx_k - c->rx_k < (uint64_t)w->cfg->depth &&
           (w->msg_limit == 0 || c->tx_k < w->msg_limit))
        echo_send(c);
}

static void echo_payload(struct conn *c, const uint8_t *p, size_t n)
{
    const struct config *cfg = c->w->cfg;
    if (c->rx_k >= c->tx_k || c->rx_off + n > cfg->size) {
        conn_error(c, "unexpected bytes (message %" PRIu64 ")", c->rx_k);
        c->w->verify_errors++;
        return;
    }
    if (memcmp(p, expect_of(cfg, c->id, c->rx_k) + c->rx_off, n) != 0) {
        conn_error(c, "echoed bytes differ (message %" PRIu64 ")", c->rx_k);
        c->w->verify_errors++;
    }
    c->rx_off += n;
}

static void echo_done(struct conn *c)
{
    struct worker *w = c->w;
    const struct config *cfg = w->cfg;
    if (c->rx_off != cfg->size) {
        conn_error(c, "echo of %" PRIu64 " bytes, sent %zu", c->rx_off, cfg->size);
        w->verify_errors++;
    }
    uint64_t sent = c->sent_ts[c->rx_k % (uint64_t)cfg->depth];
    if (in_window(w)) {
        hist_add(&w->lat, w->now - sent);
        w->msgs++;
        w->bytes += cfg->size;
    }
    w->msgs_total++;
    c->rx_k++;
    c->rx_off = 0;
    echo_may_send(c);
}

void echo_attach(struct worker *w)
{
    w->on_payload = echo_payload;
    w->on_message = echo_done;
    for (int i = 0; i < w->nconns; i++)
        w->conns[i].sent_ts = calloc((size_t)w->cfg->depth, sizeof(uint64_t));
}

/* ---- echo and raw: threads -------------------------------------------- */

static pthread_barrier_t barrier;
static uint64_t g_start, g_end;
/* the connect time reported: from the threads' start until the last
 * thread's connections are up (the first barrier), not one thread's own */
static uint64_t g_connect_t0;
static double g_connect_s;
/* thread 0 samples the process's CPU time at the edges of the window */
static double g_cpu0, g_cpu1, g_scpu0 = -1, g_scpu1 = -1;
static uint64_t g_wall0, g_wall1;

static uint64_t worker_inflight(struct worker *w)
{
    uint64_t inflight = 0;
    for (int i = 0; i < w->nconns; i++)
        if (w->conns[i].state == ST_OPEN)
            inflight += w->conns[i].tx_k - w->conns[i].rx_k;
    return inflight;
}

static void *echo_thread(void *arg)
{
    struct worker *w = arg;
    const struct config *cfg = w->cfg;
    echo_attach(w);
    worker_connect(w, 512, 30);
    if (pthread_barrier_wait(&barrier) == PTHREAD_BARRIER_SERIAL_THREAD) {
        uint64_t t = now_ns();
        g_connect_s = (double)(t - g_connect_t0) / 1e9;
        g_start = t + (uint64_t)(cfg->warmup * 1e9);
        g_end = g_start + (uint64_t)(cfg->duration * 1e9);
    }
    pthread_barrier_wait(&barrier);
    w->t_start = g_start;
    w->t_end = g_end;
    w->now = now_ns();
    w->sending = 1;
    for (int i = 0; i < w->nconns; i++)
        echo_may_send(&w->conns[i]);
    flush_dirty(w);
    int sampled = 0;
    while (w->now < g_end) {
        worker_poll(w, 20);
        if (w->index == 0 && !sampled && w->now >= g_start) {
            g_cpu0 = cpu_seconds(RUSAGE_SELF);
            g_scpu0 = cfg->server_pid ? read_cpu_s(cfg->server_pid) : -1;
            g_wall0 = w->now;
            sampled = 1;
        }
    }
    if (w->index == 0) {
        g_cpu1 = cpu_seconds(RUSAGE_SELF);
        g_scpu1 = cfg->server_pid ? read_cpu_s(cfg->server_pid) : -1;
        g_wall1 = now_ns();
        if (!sampled) {
            g_scpu0 = g_scpu1;
            g_cpu0 = g_cpu1;
            g_wall0 = g_wall1;
        }
    }
    /* stop starting messages; let those in flight come back and be checked */
    w->sending = 0;
    uint64_t drain_end = w->now + 2000000000u;
    while (worker_inflight(w) > 0 && w->now < drain_end)
        worker_poll(w, 50);
    return NULL;
}

int run_echo(const struct config *cfg)
{
    int T = cfg->threads < 1 ? 1 : cfg->threads;
    if (T > cfg->conns)
        T = cfg->conns;
    struct worker *ws = calloc((size_t)T, sizeof *ws);
    int per = cfg->conns / T, extra = cfg->conns % T, id = 0;
    for (int t = 0; t < T; t++) {
        int n = per + (t < extra);
        worker_init(&ws[t], cfg, t, n, id);
        id += n;
    }
    pthread_barrier_init(&barrier, NULL, (unsigned)T);
    g_connect_t0 = now_ns();
    for (int t = 1; t < T; t++)
        pthread_create(&ws[t].thread, NULL, echo_thread, &ws[t]);
    echo_thread(&ws[0]);
    for (int t = 1; t < T; t++)
        pthread_join(ws[t].thread, NULL);

    struct hist *lat = calloc(1, sizeof *lat);
    uint64_t msgs = 0, bytes = 0, errors = 0, verr = 0, failed = 0, dropped = 0, open = 0;
    uint64_t inflight = 0;
    const char *first = "";
    for (int t = 0; t < T; t++) {
        hist_merge(lat, &ws[t].lat);
        msgs += ws[t].msgs;
        bytes += ws[t].bytes;
        errors += ws[t].errors;
        verr += ws[t].verify_errors;
        failed += ws[t].conn_failed;
        dropped += ws[t].dropped;
        open += ws[t].open_count;
        inflight += worker_inflight(&ws[t]);
        if (!*first && ws[t].first_error[0])
            first = ws[t].first_error;
    }
    if (inflight) {
        errors++;
        if (!*first)
            first = "messages still unanswered 2 s after the end";
    }
    double secs = cfg->duration;
    double wall = (double)(g_wall1 - g_wall0) / 1e9;
    int ncpu = 1;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        ncpu = CPU_COUNT(&set);
    int usable = T < ncpu ? T : ncpu;
    double busy = wall > 0 ? (g_cpu1 - g_cpu0) / (wall * usable) : 0;
    double idle = 1 - busy;
    if (idle < 0)
        idle = 0;
    int ok = errors == 0 && verr == 0 && failed == 0 && msgs > 0;
    double mps = (double)msgs / secs, mbs = (double)bytes / secs / 1e6;
    if (!cfg->quiet) {
        fprintf(stderr,
                "%s %s: %d conns x depth %d, %zu B %s, %d thread(s), %.1f s (connect %.2f s)\n"
                "  %.0f msgs/s, %.2f MB/s echoed; latency p50 %.1f us, p99 %.1f us, p99.9 "
                "%.1f us, max %.1f us\n"
                "  verified: %s (%" PRIu64 " errors, %" PRIu64 " failed connections)%s%s\n"
                "  generator idle share %.0f%%%s\n",
                cfg->tcp ? "raw" : "echo", cfg->label, cfg->conns, cfg->depth, cfg->size,
                cfg->tcp      ? "tcp"
                : cfg->binary ? "binary"
                              : "text",
                T, secs, g_connect_s, mps, mbs, hist_pct(lat, .5) / 1e3, hist_pct(lat, .99) / 1e3,
                hist_pct(lat, .999) / 1e3, (double)lat->max / 1e3, ok ? "ok" : "FAILED",
                errors + verr, failed, *first ? "; first: " : "", first, idle * 100,
                idle < 0.1 ? " -- the GENERATOR is the bottleneck, not the server" : "");
    }
    printf("{\"mode\":\"%s\",", cfg->tcp ? "raw" : "echo");
    print_json_common(stdout, cfg);
    printf(",\"conns\":%d,\"depth\":%d,\"size\":%zu,\"binary\":%s,\"threads\":%d,"
           "\"duration\":%.3f,\"msgs\":%" PRIu64 ",\"msgs_per_s\":%.1f,\"mb_per_s\":%.3f,"
           "\"p50_us\":%.2f,\"p90_us\":%.2f,\"p99_us\":%.2f,\"p999_us\":%.2f,\"max_us\":%.2f,"
           "\"mean_us\":%.2f,\"errors\":%" PRIu64 ",\"verify_errors\":%" PRIu64
           ",\"conn_failed\":%" PRIu64 ",\"dropped\":%" PRIu64 ",\"open\":%" PRIu64
           ",\"verified\":%s,\"gen_cpu_s\":%.3f,\"gen_idle\":%.3f,\"gen_bottleneck\":%s,"
           "\"server_cpu\":%.3f,\"first_error\":",
           cfg->conns, cfg->depth, cfg->size, cfg->binary ? "true" : "false", T, secs, msgs, mps,
           mbs, hist_pct(lat, .5) / 1e3, hist_pct(lat, .9) / 1e3, hist_pct(lat, .99) / 1e3,
           hist_pct(lat, .999) / 1e3, (double)lat->max / 1e3,
           lat->n ? (double)lat->sum / (double)lat->n / 1e3 : 0.0, errors, verr, failed, dropped,
           open, ok ? "true" : "false", g_cpu1 - g_cpu0, idle, idle < 0.1 ? "true" : "false",
           server_share(g_scpu0, g_scpu1, (double)(g_wall1 - g_wall0) / 1e9));
    print_json_string(stdout, first);
    printf("}\n");
    fflush(stdout);
    return ok ? 0 : 1;
}
