/* loadgen: the benchmark's load generator, a WebSocket (and plain TCP) client
 * built to measure a server rather than itself.
 *
 * Modes:
 *   echo       N connections, D messages in flight on each, every echoed byte
 *              compared with what was sent; msgs/s, MB/s, latency percentiles
 *   raw        the same payloads over plain TCP (no framing) against a byte
 *              echo server: the physical reference for "echo"
 *   broadcast  N subscribers and one publisher; each publish carries its
 *              sequence number and send time, so every subscriber checks order
 *              and loss and every delivery yields a fan-out latency
 *   idle       ramp to N connections (over several 127.0.0.x source addresses
 *              and several processes), hold, read the server's RSS from /proc,
 *              then check that every connection still echoes one message
 *
 * --tls speaks TLS (OpenSSL, no certificate check: a benchmark, not a
 * client); --deflate offers permessage-deflate without context takeover,
 * compresses every message it sends and inflates compressed ones before
 * verifying them.
 *
 * Output: human text on stderr, one JSON line on stdout. The generator also
 * reports its own idle CPU share (getrusage against wall time over the
 * measured window): near zero means the generator, not the server, was the
 * bottleneck, and the run says so.
 *
 * This file: the command line, the configuration derived from it, and the
 * choice of mode; loadgen.h lists the other modules. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "loadgen.h"

void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

void *grow(void *p, size_t *cap, size_t need)
{
    size_t n = *cap ? *cap : 256;
    while (n < need)
        n *= 2;
    p = realloc(p, n);
    if (!p)
        die("out of memory");
    *cap = n;
    return p;
}

/* The bytes payloads are cut from (expect_of): a xorshift stream, printable
 * ASCII for text messages. */
static uint8_t *pattern_new(size_t size, int binary)
{
    uint8_t *pattern = malloc(size + 512);
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < size + 512; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        pattern[i] = binary ? (uint8_t)x : (uint8_t)('0' + x % 75); /* '0'..'z' */
    }
    return pattern;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen MODE [options]   MODE: echo | raw | broadcast | idle\n"
            "  --host ADDR (127.0.0.1)  --port N (8080)  --path P (/echo)\n"
            "  --conns N       connections; broadcast: subscribers (100)\n"
            "  --depth N       messages in flight per connection; broadcast: publishes (1)\n"
            "  --size BYTES    payload (32)            --binary / --text (text)\n"
            "  --duration S    measured seconds (5)    --warmup S (1)\n"
            "  --threads N     echo/raw epoll threads (1)\n"
            "  --sub-path P (/sub) --pub-path P (/pub) broadcast routes\n"
            "  --pub-port N        broadcast: publish through another server (a broker)\n"
            "  --procs N       idle: processes (1)     --src-addrs N  use 127.0.0.2..N+1\n"
            "  --hold S        idle: hold time (2)     --ramp-pending N (256)\n"
            "  --server-pid P  idle: the server's RSS (/proc/P/status) and CPU over the hold;\n"
            "                  echo, broadcast: its CPU share over the window (server_cpu)\n"
            "  --tls           TLS (no certificate check)\n"
            "  --deflate       permessage-deflate, every sent message compressed\n"
            "  --label TEXT    name in the output      --quiet  JSON only\n"
            "Prints human text on stderr and one JSON line on stdout; exits 1 when\n"
            "verification failed, 2 on bad usage.\n");
    exit(2);
}

/* A whole-number option in [lo, hi], or the run stops naming it. */
static long opt_int(const char *name, const char *v, long lo, long hi)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || end == v || *end || n < lo || n > hi)
        die("%s: '%s' is not a whole number from %ld to %ld", name, v, lo, hi);
    return n;
}

/* A number of seconds >= 0, or the run stops naming it. */
static double opt_secs(const char *name, const char *v)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end || !(d >= 0 && d < 1e7))
        die("%s: '%s' is not a number of seconds", name, v);
    return d;
}

int main(int argc, char **argv)
{
    struct config cfg = {
        .mode = MODE_ECHO,
        .host = "127.0.0.1",
        .port = 8080,
        .path = "/echo",
        .sub_path = "/sub",
        .pub_path = "/pub",
        .conns = 100,
        .depth = 1,
        .size = 32,
        .duration = 5,
        .warmup = 1,
        .threads = 1,
        .procs = 1,
        .src_addrs = 0,
        .hold = 2,
        .ramp_pending = 256,
        .label = "",
    };
    if (argc < 2)
        usage();
    if (!strcmp(argv[1], "echo"))
        cfg.mode = MODE_ECHO;
    else if (!strcmp(argv[1], "raw")) {
        cfg.mode = MODE_RAW;
        cfg.tcp = 1;
    } else if (!strcmp(argv[1], "broadcast"))
        cfg.mode = MODE_BROADCAST;
    else if (!strcmp(argv[1], "idle"))
        cfg.mode = MODE_IDLE;
    else
        usage();
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (!strcmp(a, name) && v && (i++, 1))
        if (ARG("--host"))
            cfg.host = v;
        else if (ARG("--port"))
            cfg.port = (int)opt_int(a, v, 1, 65535);
        else if (ARG("--path"))
            cfg.path = v;
        else if (ARG("--sub-path"))
            cfg.sub_path = v;
        else if (ARG("--pub-path"))
            cfg.pub_path = v;
        else if (ARG("--pub-port"))
            cfg.pub_port = (int)opt_int(a, v, 1, 65535);
        else if (ARG("--conns"))
            cfg.conns = (int)opt_int(a, v, 1, 10000000);
        else if (ARG("--depth"))
            cfg.depth = (int)opt_int(a, v, 1, 1000000);
        else if (ARG("--size"))
            cfg.size = (size_t)opt_int(a, v, 1, 1L << 30);
        else if (ARG("--duration"))
            cfg.duration = opt_secs(a, v);
        else if (ARG("--warmup"))
            cfg.warmup = opt_secs(a, v);
        else if (ARG("--threads"))
            cfg.threads = (int)opt_int(a, v, 1, 64);
        else if (ARG("--procs"))
            cfg.procs = (int)opt_int(a, v, 1, 1000000);
        else if (ARG("--src-addrs"))
            cfg.src_addrs = (int)opt_int(a, v, 0, 250);
        else if (ARG("--hold"))
            cfg.hold = opt_secs(a, v);
        else if (ARG("--ramp-pending"))
            cfg.ramp_pending = (int)opt_int(a, v, 1, 1000000);
        else if (ARG("--server-pid"))
            cfg.server_pid = (int)opt_int(a, v, 1, 1L << 30);
        else if (ARG("--label"))
            cfg.label = v;
        else if (!strcmp(a, "--binary"))
            cfg.binary = 1;
        else if (!strcmp(a, "--text"))
            cfg.binary = 0;
        else if (!strcmp(a, "--tcp"))
            cfg.tcp = 1;
        else if (!strcmp(a, "--tls"))
            cfg.tls = 1;
        else if (!strcmp(a, "--deflate"))
            cfg.deflate = 1;
        else if (!strcmp(a, "--quiet"))
            cfg.quiet = 1;
        else
            usage();
#undef ARG
    }
    if (cfg.duration <= 0)
        die("--duration must be positive");
    struct in_addr host;
    if (inet_pton(AF_INET, cfg.host, &host) != 1)
        die("--host: '%s' is not an IPv4 address (e.g. 127.0.0.1)", cfg.host);
    if (cfg.mode == MODE_IDLE) {
        cfg.depth = 1;
        cfg.size = 32;
        cfg.binary = 0;
    }
    /* as many descriptors as the hard limit allows */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    if (cfg.tcp && (cfg.tls || cfg.deflate))
        die("--tls and --deflate are for WebSocket modes, not raw TCP");
    if (cfg.tls)
        cfg.tls_ctx = tls_client_ctx();
    cfg.pattern = pattern_new(cfg.size, cfg.binary);
    switch (cfg.mode) {
    case MODE_ECHO:
    case MODE_RAW:
        return run_echo(&cfg);
    case MODE_BROADCAST:
        return run_broadcast(&cfg);
    case MODE_IDLE:
        return run_idle(&cfg);
    }
    return 2;
}
