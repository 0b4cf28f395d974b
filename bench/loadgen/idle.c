/* idle.c: mode idle. Ramps to N connections spread over P processes (and
 * over several 127.0.0.x source addresses, for more than one address's
 * ephemeral ports), holds them, reads the server's RSS and CPU time from
 * /proc over the hold, then checks that every connection still echoes one
 * message. Each process is one worker; it reports to the parent in text
 * lines over a pipe, and the parent ends the hold by closing another. */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "loadgen.h"

/* One idle process: opens its share, reports, holds until the parent closes
 * the control pipe, then checks that each connection still echoes. */
static void idle_child(const struct config *cfg, int nconns, int first_id, int ctl_fd, int out_fd)
{
    struct worker *w = calloc(1, sizeof *w);
    worker_init(w, cfg, 0, nconns, first_id);
    echo_attach(w); /* cfg->depth is 1 in this mode */
    double ramp = worker_connect(w, cfg->ramp_pending, 60);
    dprintf(out_fd, "ramped %" PRIu64 " %" PRIu64 " %.3f\n", w->open_count, w->conn_failed, ramp);
    w->pings = 0; /* the heartbeats of the hold */
    w->ctl_fd = ctl_fd;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(w->ep, EPOLL_CTL_ADD, ctl_fd, &ev);
    while (!w->ctl_eof)
        worker_poll(w, 200);
    /* liveness: one 32-byte echo on every connection still open */
    uint64_t open_before = w->open_count - w->closed_count;
    uint64_t pings = w->pings;
    w->now = now_ns();
    w->t_start = w->now;
    w->t_end = UINT64_MAX;
    w->sending = 1;
    w->msg_limit = 1;
    for (int i = 0; i < nconns; i++)
        echo_may_send(&w->conns[i]);
    flush_dirty(w);
    uint64_t deadline = w->now + 20000000000u;
    while (w->msgs_total < open_before && w->now < deadline)
        worker_poll(w, 100);
    dprintf(out_fd,
            "done %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64
            " %.2f %s\n",
            open_before, w->msgs_total, w->dropped, w->errors, w->verify_errors, pings,
            hist_pct(&w->lat, .99) / 1e3, w->first_error[0] ? "error" : "-");
    if (w->first_error[0])
        fprintf(stderr, "loadgen: idle: %s\n", w->first_error);
    _exit(0);
}

/* Warm-up before the baseline: 64 connections that each echo once and go.
 * The first connections fault in code and tables a server touches once
 * (TLS and SHA-1 code, libc paths, allocator arenas): about 2 MB here,
 * which over 10,000 connections would read as 200 bytes each. */
static void idle_warmup(const struct config *cfg)
{
    int ctl[2], res[2];
    if (pipe(ctl) != 0 || pipe(res) != 0)
        die("pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid == 0) {
        close(ctl[1]);
        close(res[0]);
        idle_child(cfg, cfg->conns < 64 ? cfg->conns : 64, 0, ctl[0], res[1]);
    }
    close(ctl[0]);
    close(ctl[1]); /* no hold: echo and leave */
    close(res[1]);
    char buf[512];
    while (read(res[0], buf, sizeof buf) > 0) {
    }
    close(res[0]);
    waitpid(pid, NULL, 0);
    struct timespec settle = {0, 200000000};
    nanosleep(&settle, NULL);
}

#define MAX_PROCS 64

int run_idle(const struct config *cfg)
{
    int P = cfg->procs < 1 ? 1 : cfg->procs;
    if (P > MAX_PROCS) /* before the warm-up forks anything */
        die("--procs at most %d", MAX_PROCS);
    if (cfg->server_pid)
        idle_warmup(cfg);
    long base_kb = cfg->server_pid ? read_rss_kb(cfg->server_pid) : -1;
    int ctl[MAX_PROCS][2], res[MAX_PROCS][2];
    pid_t pids[MAX_PROCS];
    int per = cfg->conns / P, extra = cfg->conns % P, id = 0;
    uint64_t t0 = now_ns();
    for (int p = 0; p < P; p++) {
        int n = per + (p < extra);
        if (pipe(ctl[p]) != 0 || pipe(res[p]) != 0)
            die("pipe: %s", strerror(errno));
        pids[p] = fork();
        if (pids[p] == 0) {
            for (int q = 0; q <= p; q++) {
                close(ctl[q][1]);
                close(res[q][0]);
            }
            idle_child(cfg, n, id, ctl[p][0], res[p][1]);
        }
        close(ctl[p][0]);
        close(res[p][1]);
        id += n;
    }
    uint64_t open = 0, failed = 0;
    double ramp = 0;
    FILE *rf[MAX_PROCS];
    for (int p = 0; p < P; p++) {
        /* the children need no cleanup: they end when ctl closes at our exit */
        rf[p] = fdopen(res[p][0], "r");
        if (!rf[p])
            die("fdopen: %s", strerror(errno));
        uint64_t o = 0, f = 0;
        double r = 0;
        if (fscanf(rf[p], " ramped %" SCNu64 " %" SCNu64 " %lf", &o, &f, &r) != 3)
            f = (uint64_t)(per + (p < extra));
        open += o;
        failed += f;
        if (r > ramp)
            ramp = r;
    }
    double ramp_all = (double)(now_ns() - t0) / 1e9;
    if (!cfg->quiet)
        fprintf(stderr, "idle %s: %" PRIu64 " of %d connections open in %.2f s, holding %.1f s\n",
                cfg->label, open, cfg->conns, ramp_all, cfg->hold);
    /* The server's CPU over the hold: with heartbeats on, what keeping
     * the connections costs (flat per ping as the count grows, or not). */
    double cpu0 = cfg->server_pid ? read_cpu_s(cfg->server_pid) : -1;
    uint64_t h0 = now_ns();
    struct timespec hold = {(time_t)cfg->hold,
                            (long)((cfg->hold - (double)(time_t)cfg->hold) * 1e9)};
    nanosleep(&hold, NULL);
    long rss_kb = cfg->server_pid ? read_rss_kb(cfg->server_pid) : -1;
    double cpu1 = cfg->server_pid ? read_cpu_s(cfg->server_pid) : -1;
    double held_s = (double)(now_ns() - h0) / 1e9;
    double hold_cpu = cpu0 >= 0 && cpu1 >= 0 ? cpu1 - cpu0 : -1;
    for (int p = 0; p < P; p++)
        close(ctl[p][1]);
    uint64_t still = 0, alive = 0, dropped = 0, errors = 0, pings = 0;
    double p99 = 0;
    for (int p = 0; p < P; p++) {
        uint64_t s = 0, a = 0, d = 0, e = 0, v = 0, g = 0;
        double q = 0;
        char tag[16];
        if (fscanf(rf[p],
                   " done %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64
                   " %lf %15s",
                   &s, &a, &d, &e, &v, &g, &q, tag) != 8)
            e++;
        pings += g;
        still += s;
        alive += a;
        dropped += d;
        errors += e + v;
        if (q > p99)
            p99 = q;
        fclose(rf[p]);
        waitpid(pids[p], NULL, 0);
    }
    double gen_cpu = cpu_seconds(RUSAGE_CHILDREN);
    double per_conn = (rss_kb >= 0 && base_kb >= 0 && open > 0)
                          ? (double)(rss_kb - base_kb) * 1024.0 / (double)open
                          : -1;
    int ok = failed == 0 && alive == open && dropped == 0 && errors == 0 && open > 0;
    if (!cfg->quiet)
        fprintf(stderr,
                "  server RSS %ld kB -> %ld kB: %.0f bytes per connection; %" PRIu64 " of %" PRIu64
                " answered an echo after the hold (p99 %.0f us); %s\n",
                base_kb, rss_kb, per_conn, alive, open, p99, ok ? "ok" : "FAILED");
    if (!cfg->quiet && hold_cpu >= 0)
        fprintf(stderr,
                "  hold: server CPU %.3f s in %.1f s; %" PRIu64 " pings answered (%.0f us each)\n",
                hold_cpu, held_s, pings, pings ? hold_cpu * 1e6 / (double)pings : 0);
    printf("{\"mode\":\"idle\",");
    print_json_common(stdout, cfg);
    printf(",\"conns\":%d,\"procs\":%d,\"src_addrs\":%d,\"open\":%" PRIu64 ",\"failed\":%" PRIu64
           ",\"ramp_s\":%.3f,\"conns_per_s\":%.0f,\"hold_s\":%.1f,\"server_rss_base_kb\":%ld,"
           "\"server_rss_kb\":%ld,\"rss_per_conn\":%.0f,\"open_after_hold\":%" PRIu64
           ",\"alive\":%" PRIu64 ",\"dropped\":%" PRIu64 ",\"errors\":%" PRIu64
           ",\"alive_p99_us\":%.1f,\"hold_server_cpu_s\":%.3f,\"pings\":%" PRIu64
           ",\"pings_per_s\":%.0f,\"server_us_per_ping\":%.2f,"
           "\"gen_cpu_s\":%.3f,\"verified\":%s}\n",
           cfg->conns, P, cfg->src_addrs, open, failed, ramp_all,
           ramp_all > 0 ? (double)open / ramp_all : 0, cfg->hold, base_kb, rss_kb, per_conn, still,
           alive, dropped, errors, p99, hold_cpu, pings, held_s > 0 ? (double)pings / held_s : 0,
           pings && hold_cpu >= 0 ? hold_cpu * 1e6 / (double)pings : -1, gen_cpu,
           ok ? "true" : "false");
    fflush(stdout);
    return ok ? 0 : 1;
}
