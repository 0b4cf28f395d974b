/* broadcast.c: mode broadcast. N subscribers and one publisher on one
 * worker; each publish carries its sequence number and send time in hex in
 * its first 32 bytes, then the pattern for that sequence, so every
 * subscriber checks order, loss and content, and every delivery yields a
 * latency. A publish is retired, with its full fan-out latency, when every
 * subscriber has it; at most D are in flight. */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "loadgen.h"

/* A publish in flight: retired when every subscriber has it. */
struct pubslot {
    uint64_t seq, ts;
    int remaining;
};

static void put_hex(uint8_t *p, uint64_t v)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--, v >>= 4)
        p[i] = (uint8_t)hex[v & 15];
}

static int get_hex(const uint8_t *p, uint64_t *v)
{
    uint64_t r = 0;
    for (int i = 0; i < 16; i++) {
        int d;
        if (p[i] >= '0' && p[i] <= '9')
            d = p[i] - '0';
        else if (p[i] >= 'a' && p[i] <= 'f')
            d = p[i] - 'a' + 10;
        else
            return -1;
        r = r << 4 | (uint64_t)d;
    }
    *v = r;
    return 0;
}

static void pub_may_send(struct worker *w)
{
    const struct config *cfg = w->cfg;
    struct conn *c = w->pub;
    uint8_t *msg = w->pub_msg;
    while (w->sending && c->state == ST_OPEN &&
           w->next_seq - w->oldest_seq < (uint64_t)cfg->depth) {
        struct pubslot *s = &w->slots[w->next_seq % (uint64_t)cfg->depth];
        s->seq = w->next_seq;
        s->ts = w->now;
        s->remaining = w->nsubs;
        put_hex(msg, w->next_seq);
        put_hex(msg + 16, w->now);
        memcpy(msg + 32, expect_of(cfg, 0, w->next_seq) + 32, cfg->size - 32);
        queue_frame(c, cfg->binary ? 2 : 1, msg, cfg->size);
        w->next_seq++;
        w->published++;
    }
}

static void pub_retire(struct worker *w)
{
    while (w->oldest_seq < w->next_seq) {
        struct pubslot *s = &w->slots[w->oldest_seq % (uint64_t)w->cfg->depth];
        if (s->remaining > 0)
            break;
        if (in_window(w))
            hist_add(&w->fanout, w->now - s->ts);
        w->oldest_seq++;
    }
    pub_may_send(w);
}

static void sub_payload(struct conn *c, const uint8_t *p, size_t n)
{
    const struct config *cfg = c->w->cfg;
    if (c->rx_off + n > cfg->size) {
        conn_error(c, "broadcast message longer than %zu", cfg->size);
        c->w->verify_errors++;
        return;
    }
    size_t off = (size_t)c->rx_off;
    if (off < 32) { /* sequence and timestamp, parsed when the message ends */
        size_t take = n < 32 - off ? n : 32 - off;
        memcpy(c->head + off, p, take);
        p += take;
        n -= take;
        off += take;
    }
    if (n > 0) { /* padding after the head: the publisher's pattern for seq */
        uint64_t seq;
        if (get_hex(c->head, &seq) != 0 || memcmp(p, expect_of(cfg, 0, seq) + off, n) != 0) {
            conn_error(c, "broadcast payload differs");
            c->w->verify_errors++;
        }
        off += n;
    }
    c->rx_off = off;
}

static void sub_done(struct conn *c)
{
    struct worker *w = c->w;
    const struct config *cfg = w->cfg;
    uint64_t seq, ts;
    if (c->rx_off != cfg->size || get_hex(c->head, &seq) != 0 || get_hex(c->head + 16, &ts) != 0) {
        conn_error(c, "bad broadcast message");
        w->verify_errors++;
        c->rx_off = 0;
        return;
    }
    c->rx_off = 0;
    if (seq > c->expect_seq) {
        w->lost += seq - c->expect_seq;
    } else if (seq < c->expect_seq) {
        w->out_of_order++;
        return;
    }
    c->expect_seq = seq + 1;
    if (in_window(w)) {
        w->deliveries++;
        hist_add(&w->lat, w->now - ts);
    }
    if (seq >= w->oldest_seq && seq < w->next_seq) {
        struct pubslot *s = &w->slots[seq % (uint64_t)cfg->depth];
        if (--s->remaining == 0 && seq == w->oldest_seq)
            pub_retire(w);
    }
}

/* The frame parser's handlers: subscribers check what they get; the
 * publisher expects nothing back (any bytes are a verification error). */
static void bcast_payload(struct conn *c, const uint8_t *p, size_t n)
{
    if (c->role == R_SUB) {
        sub_payload(c, p, n);
        return;
    }
    conn_error(c, "unexpected bytes (message %" PRIu64 ")", c->rx_k);
    c->w->verify_errors++;
}

static void bcast_done(struct conn *c)
{
    if (c->role == R_SUB)
        sub_done(c);
}

int run_broadcast(const struct config *cfg)
{
    if (cfg->size < 32)
        die("broadcast needs --size >= 32 (sequence and timestamp)");
    struct worker *w = calloc(1, sizeof *w);
    worker_init(w, cfg, 0, cfg->conns, 1);
    w->on_payload = bcast_payload;
    w->on_message = bcast_done;
    w->nsubs = cfg->conns;
    w->slots = calloc((size_t)cfg->depth, sizeof *w->slots);
    w->pub_msg = malloc(cfg->size);
    for (int i = 0; i < cfg->conns; i++)
        w->conns[i].role = R_SUB;
    /* subscribers first, then the publisher (conns[nconns], id 0) */
    build_request(w, cfg->sub_path, R_SUB);
    uint64_t connect_t0 = now_ns();
    worker_connect(w, 512, 30);
    struct conn *pub = &w->conns[cfg->conns];
    pub->id = 0;
    pub->w = w;
    pub->fd = -1;
    pub->role = R_PUB;
    w->pub = pub;
    build_request(w, cfg->pub_path, R_PUB);
    conn_start(w, pub);
    uint64_t deadline = now_ns() + 10000000000u;
    while (pub->state != ST_OPEN && pub->state != ST_CLOSED && now_ns() < deadline)
        worker_poll(w, 100);
    if (pub->state != ST_OPEN || w->open_count < (uint64_t)cfg->conns + 1) {
        fprintf(stderr, "loadgen: broadcast: %" PRIu64 " of %d connections open; %s\n",
                w->open_count, cfg->conns + 1, w->first_error);
        printf("{\"mode\":\"broadcast\",");
        print_json_common(stdout, cfg);
        char why[sizeof w->first_error + 64];
        snprintf(why, sizeof why, "%" PRIu64 " of %d connections open%s%s", w->open_count,
                 cfg->conns + 1, w->first_error[0] ? "; first: " : "", w->first_error);
        printf(",\"subs\":%d,\"verified\":false,\"first_error\":", cfg->conns);
        print_json_string(stdout, why);
        printf("}\n");
        return 1;
    }
    /* the connect time covers the publisher too */
    double cs = (double)(now_ns() - connect_t0) / 1e9;
    /* servers that subscribe after sending the 101 need a moment */
    uint64_t settle = now_ns() + 200000000u;
    while (now_ns() < settle)
        worker_poll(w, 20);
    w->now = now_ns();
    w->t_start = w->now + (uint64_t)(cfg->warmup * 1e9);
    w->t_end = w->t_start + (uint64_t)(cfg->duration * 1e9);
    w->sending = 1;
    pub_may_send(w);
    flush_dirty(w);
    double cpu0 = 0, cpu1, scpu0 = -1;
    uint64_t wall0 = 0, wall1, pub0 = 0, pub1 = 0;
    int sampled = 0;
    uint64_t stall_seq = UINT64_MAX, stall_since = 0;
    int stalled = 0;
    while (w->now < w->t_end) {
        worker_poll(w, 20);
        if (!sampled && w->now >= w->t_start) {
            cpu0 = cpu_seconds(RUSAGE_SELF);
            scpu0 = cfg->server_pid ? read_cpu_s(cfg->server_pid) : -1;
            wall0 = w->now;
            pub0 = w->published;
            sampled = 1;
        }
        /* a publish that some subscriber never gets would stall the window */
        if (w->oldest_seq != stall_seq) {
            stall_seq = w->oldest_seq;
            stall_since = w->now;
        } else if (w->oldest_seq < w->next_seq && w->now - stall_since > 5000000000u) {
            stalled = 1;
            break;
        }
    }
    cpu1 = cpu_seconds(RUSAGE_SELF);
    double scpu1 = cfg->server_pid ? read_cpu_s(cfg->server_pid) : -1;
    wall1 = now_ns();
    pub1 = w->published;
    w->sending = 0;
    uint64_t drain_end = now_ns() + 3000000000u;
    while (w->oldest_seq < w->next_seq && w->now < drain_end)
        worker_poll(w, 20);
    /* whatever a subscriber still misses of what was published is lost */
    uint64_t missing = 0;
    for (int i = 0; i < cfg->conns; i++)
        if (w->conns[i].expect_seq < w->next_seq)
            missing += w->next_seq - w->conns[i].expect_seq;
    uint64_t lost = w->lost + missing;
    double secs = cfg->duration;
    double wall = (double)(wall1 - wall0) / 1e9;
    double idle = 1 - (wall > 0 ? (cpu1 - cpu0) / wall : 0);
    if (idle < 0)
        idle = 0;
    int ok = w->errors == 0 && w->verify_errors == 0 && lost == 0 && w->out_of_order == 0 &&
             !stalled && w->deliveries > 0;
    double dps = (double)w->deliveries / secs;
    if (!cfg->quiet) {
        fprintf(stderr,
                "broadcast %s: %d subscribers, %zu B %s, %d publishes in flight, %.1f s "
                "(connect %.2f s)\n"
                "  %.0f publishes/s, %.0f deliveries/s; delivery latency p50 %.1f us, p99 %.1f "
                "us, p99.9 %.1f us; full fan-out p50 %.1f us, p99 %.1f us\n"
                "  verified: %s (lost %" PRIu64 ", out of order %" PRIu64 ", errors %" PRIu64
                "%s)%s%s\n"
                "  generator idle share %.0f%%%s\n",
                cfg->label, cfg->conns, cfg->size, cfg->binary ? "binary" : "text", cfg->depth,
                secs, cs, (double)(pub1 - pub0) / secs, dps, hist_pct(&w->lat, .5) / 1e3,
                hist_pct(&w->lat, .99) / 1e3, hist_pct(&w->lat, .999) / 1e3,
                hist_pct(&w->fanout, .5) / 1e3, hist_pct(&w->fanout, .99) / 1e3,
                ok ? "ok" : "FAILED", lost, w->out_of_order, w->errors + w->verify_errors,
                stalled ? ", STALLED" : "", w->first_error[0] ? "; first: " : "", w->first_error,
                idle * 100,
                idle < 0.1 ? " -- the GENERATOR is the bottleneck, not the server" : "");
    }
    printf("{\"mode\":\"broadcast\",");
    print_json_common(stdout, cfg);
    printf(",\"subs\":%d,\"depth\":%d,\"size\":%zu,\"binary\":%s,\"duration\":%.3f,"
           "\"published\":%" PRIu64 ",\"publishes_per_s\":%.1f,\"deliveries\":%" PRIu64
           ",\"deliveries_per_s\":%.1f,\"msgs_per_s\":%.1f,\"mb_per_s\":%.3f,"
           "\"p50_us\":%.2f,\"p99_us\":%.2f,\"p999_us\":%.2f,\"max_us\":%.2f,"
           "\"fanout_p50_us\":%.2f,\"fanout_p99_us\":%.2f,\"lost\":%" PRIu64
           ",\"out_of_order\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"stalled\":%s,\"verified\":%s,"
           "\"gen_cpu_s\":%.3f,\"gen_idle\":%.3f,\"gen_bottleneck\":%s,\"server_cpu\":%.3f,"
           "\"first_error\":",
           cfg->conns, cfg->depth, cfg->size, cfg->binary ? "true" : "false", secs, w->published,
           (double)(pub1 - pub0) / secs, w->deliveries, dps, dps, dps * (double)cfg->size / 1e6,
           hist_pct(&w->lat, .5) / 1e3, hist_pct(&w->lat, .99) / 1e3, hist_pct(&w->lat, .999) / 1e3,
           (double)w->lat.max / 1e3, hist_pct(&w->fanout, .5) / 1e3,
           hist_pct(&w->fanout, .99) / 1e3, lost, w->out_of_order, w->errors + w->verify_errors,
           stalled ? "true" : "false", ok ? "true" : "false", cpu1 - cpu0, idle,
           idle < 0.1 ? "true" : "false", server_share(scpu0, scpu1, wall));
    print_json_string(stdout, w->first_error);
    printf("}\n");
    fflush(stdout);
    return ok ? 0 : 1;
}
