/* moonwire's composition root: parse the command line, load the app, build
 * the configuration (defaults < app options < flags), listen, run the loop,
 * and shut down in order on SIGTERM or SIGINT. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <ev.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "admin_client.h"
#include "bind.h"
#include "broker.h"
#include "hub.h"
#include "threads.h"
#include "config.h"
#include "log.h"
#include "moonwire/moonwire.h"
#include "watch.h"
#include "worker.h"

static const char usage[] =
    "usage: moonwire APP.lua [options]\n"
    "       moonwire reload [--admin HOST:PORT] [--admin-token-file FILE]\n"
    "                                             reload a running server's app\n"
    "\n"
    "Serves the app that APP.lua returns (see README.md). SIGHUP reloads the app;\n"
    "`moonwire reload` does it through the admin listener and tells whether it worked\n"
    "(default --admin 127.0.0.1:9090).\n"
    "\n"
    "options (each overrides the app's own option of the same name):\n"
    "  --listen HOST:PORT          address to listen on (default 127.0.0.1:8080; port 0 picks "
    "one)\n"
    "  --ping-interval SECONDS     heartbeat ping after this much silence (default 30, 0 = off)\n"
    "  --pong-timeout SECONDS      drop a peer silent this long after a ping (default 10)\n"
    "  --idle-timeout SECONDS      close after this long without a message (default 0 = off)\n"
    "  --handshake-timeout SECONDS time to complete the upgrade request (default 10)\n"
    "  --close-timeout SECONDS     time to wait for the peer's close frame (default 5)\n"
    "  --shutdown-timeout SECONDS  on SIGTERM/SIGINT, time for clients to finish (default 10)\n"
    "  --max-message-size BYTES    largest message, for every route (default 1048576)\n"
    "  --max-header-bytes BYTES    largest request head (default 8192)\n"
    "  --max-headers N             most header fields in a request (default 64)\n"
    "  --max-connections N         most open connections (default 10000)\n"
    "  --max-buffered BYTES        most bytes queued for one slow client (default 4194304)\n"
    "  --max-inbox-bytes BYTES     most bytes waiting for one busy handler (default 1048576)\n"
    "  --max-body-size BYTES       largest plain HTTP request body (default 1048576)\n"
    "  --listen-backlog N          connections the kernel queues before accept (default 1024)\n"
    "  --workers N                 worker threads sharing the port (default 1; auto = cores)\n"
    "  --log-level LEVEL           debug, info, warn or error (default info)\n"
    "  --log-format FORMAT         text (default) or json (one JSON object per line)\n"
    "  --access-log                log every HTTP request and WebSocket open and close\n"
    "  --metrics HOST:PORT         Prometheus metrics at GET /metrics (off by default)\n"
    "  --watch                     reload the app when a .lua file in its directory changes\n"
    "  --rocks-tree DIR            also load modules from this LuaRocks tree (repeatable;\n"
    "                              lua_modules/ next to the app and ~/.luarocks are searched)\n"
    "  --tls-listen HOST:PORT      also serve wss:// and https:// here (needs cert and key)\n"
    "  --tls-cert FILE             PEM certificate chain (re-read on SIGHUP)\n"
    "  --tls-key FILE              PEM private key\n"
    "  --broker redis://HOST:PORT  share topics with other moonwire processes through Redis\n"
    "  --broker-prefix PREFIX      Redis channel prefix (default moonwire:)\n"
    "  --broker-max-pending BYTES  publishes Redis has not acknowledged (default 16777216)\n"
    "  --broker-timeout SECONDS    to connect to Redis, and for its PING answers (default 5)\n"
    "  --admin HOST:PORT           admin listener: POST /reload, GET /status (off by default;\n"
    "                              a non-loopback address needs --admin-token-file)\n"
    "  --admin-token-file FILE     admin requests must send Authorization: Bearer <its text>\n"
    "  --max-admin-connections N   most open admin and metrics connections (default 64)\n"
    "  -h, --help                  show this help\n"
    "  -v, --version               show the version\n";

static int fail(const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, "moonwire: ");
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, "\n");
    return 2;
}

/* Parses a non-negative number (seconds may have a fraction). */
static int parse_number(const char *s, int allow_fraction, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v < 0 || v != v || v > 1e15)
        return -1;
    if (!allow_fraction && v != (double)(unsigned long long)v)
        return -1;
    *out = v;
    return 0;
}

typedef struct flag {
    const char *name;
    int kind; /* 0 seconds, 1 whole number, 2 HOST:PORT, 3 log level, 4 switch, 5 path,
               * 6 log format, 7 workers, 8 text */
    int set;
    double value;
    const char *str;
} flag_t;

enum {
    F_LISTEN,
    F_PING,
    F_PONG,
    F_IDLE,
    F_HANDSHAKE,
    F_CLOSE,
    F_MAXMSG,
    F_MAXHDR,
    F_MAXHDRS,
    F_MAXCONN,
    F_MAXBUF,
    F_MAXINBOX,
    F_MAXBODY,
    F_LOG,
    F_ADMIN,
    F_WATCH,
    F_TLS_LISTEN,
    F_TLS_CERT,
    F_TLS_KEY,
    F_SHUTDOWN,
    F_METRICS,
    F_LOG_FORMAT,
    F_ACCESS_LOG,
    F_WORKERS,
    F_BROKER,
    F_BROKER_PREFIX,
    F_BROKER_MAX_PENDING,
    F_BROKER_TIMEOUT,
    F_BACKLOG,
    F_ADMIN_TOKEN,
    F_MAXADMIN,
    F_COUNT
};

static int apply_listen(mw_config_t *cfg, const char *v)
{
    const char *colon = strrchr(v, ':');
    if (!colon || colon == v || (size_t)(colon - v) >= sizeof cfg->listen_host)
        return -1;
    double port;
    if (parse_number(colon + 1, 0, &port) != 0 || port > 65535)
        return -1;
    const char *host = v;
    size_t hlen = (size_t)(colon - v);
    if (host[0] == '[' && hlen >= 2 && host[hlen - 1] == ']') {
        host++;
        hlen -= 2;
    }
    memcpy(cfg->listen_host, host, hlen);
    cfg->listen_host[hlen] = 0;
    cfg->listen_port = (int)port;
    return 0;
}

/* Splits HOST:PORT ([v6]:port too) into host (capacity hcap) and *port. */
static int split_hostport(const char *v, char *host, size_t hcap, int *port)
{
    const char *colon = strrchr(v, ':');
    if (!colon || colon == v)
        return -1;
    double p;
    if (parse_number(colon + 1, 0, &p) != 0 || p > 65535)
        return -1;
    const char *h = v;
    size_t hlen = (size_t)(colon - v);
    if (h[0] == '[' && hlen >= 2 && h[hlen - 1] == ']') {
        h++;
        hlen -= 2;
    }
    if (hlen >= hcap)
        return -1;
    memcpy(host, h, hlen);
    host[hlen] = 0;
    *port = (int)p;
    return 0;
}

/* `moonwire reload [--admin HOST:PORT] [--admin-token-file FILE]` */
static int reload_command(int argc, char **argv)
{
    const char *addr = "127.0.0.1:9090", *token_file = NULL;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--admin") == 0 && i + 1 < argc)
            addr = argv[++i];
        else if (strncmp(argv[i], "--admin=", 8) == 0)
            addr = argv[i] + 8;
        else if (strcmp(argv[i], "--admin-token-file") == 0 && i + 1 < argc)
            token_file = argv[++i];
        else if (strncmp(argv[i], "--admin-token-file=", 19) == 0)
            token_file = argv[i] + 19;
        else
            return fail("reload: unknown argument '%s'%s; usage: moonwire reload [--admin "
                        "HOST:PORT] [--admin-token-file FILE]",
                        argv[i], "");
    }
    char host[256], body[4096], token[MW_ADMIN_TOKEN_MAX + 1], err[1024];
    int port, status = 0;
    if (split_hostport(addr, host, sizeof host, &port) != 0)
        return fail("reload: --admin '%s' is not HOST:PORT%s", addr, "");
    if (token_file && mw__admin_read_token(token_file, token, err, sizeof err) != 0)
        return fail("reload: %s%s", err, "");
    if (mw__admin_request(host, port, "POST", "/reload", token_file ? token : NULL, body,
                          sizeof body, &status) != 0) {
        fprintf(stderr, "moonwire reload: %s\n", body);
        return 1;
    }
    fputs(body, status == 200 ? stdout : stderr);
    return status == 200 ? 0 : 1;
}

static struct ev_loop *main_loop;
static mw_lua_t *main_lua;

static void on_hup(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    char err[1024];
    mw__app_reload(main_lua, "SIGHUP", err, sizeof err);
    if (main_lua->hub)
        mw__hub_reload(main_lua->hub, 0);
}

static void on_watch(void *ud)
{
    char err[1024];
    mw_lua_t *S = ud;
    mw__app_reload(S, "--watch", err, sizeof err);
    if (S->hub)
        mw__hub_reload(S->hub, 0);
}

/* Graceful shutdown: the first SIGTERM or SIGINT stops accepting, closes
 * every connection properly (1001) and lets on_close handlers run, for up
 * to shutdown_timeout; a second one, or SIGQUIT, stops at once. */
static mw_worker_t *main_worker;
static ev_timer drain_check, drain_deadline;
static int draining, forced;

static void drain_poll(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)t;
    (void)revents;
    if (main_worker->nconns == 0 && !main_lua->busy) {
        mw_info("all connections closed");
        ev_break(loop, EVBREAK_ALL);
    }
}

static void drain_expired(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)t;
    (void)revents;
    mw_warn("shutdown_timeout reached with %zu connections open; closing them now",
            main_worker->nconns);
    ev_break(loop, EVBREAK_ALL);
}

static void on_stop_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)revents;
    const char *name = w->signum == SIGINT    ? "SIGINT"
                       : w->signum == SIGQUIT ? "SIGQUIT"
                                              : "SIGTERM";
    if (draining || w->signum == SIGQUIT) {
        mw_warn("received %s; stopping now", name);
        forced = 1;
        ev_break(loop, EVBREAK_ALL);
        return;
    }
    draining = 1;
    if (main_lua->hub)
        mw__hub_drain(main_lua->hub, 0);
    size_t open = mw__worker_drain(main_worker);
    mw_info("received %s; shutting down gracefully (%zu connections, up to %.3g s; send it "
            "again to stop now)",
            name, open, main_worker->cfg.shutdown_timeout);
    ev_timer_init(&drain_check, drain_poll, 0., 0.05);
    ev_timer_start(loop, &drain_check);
    ev_timer_init(&drain_deadline, drain_expired, main_worker->cfg.shutdown_timeout, 0.);
    ev_timer_start(loop, &drain_deadline);
}

int main(int argc, char **argv)
{
    flag_t flags[F_COUNT] = {
        [F_LISTEN] = {"--listen", 2, 0, 0, NULL},
        [F_PING] = {"--ping-interval", 0, 0, 0, NULL},
        [F_PONG] = {"--pong-timeout", 0, 0, 0, NULL},
        [F_IDLE] = {"--idle-timeout", 0, 0, 0, NULL},
        [F_HANDSHAKE] = {"--handshake-timeout", 0, 0, 0, NULL},
        [F_CLOSE] = {"--close-timeout", 0, 0, 0, NULL},
        [F_MAXMSG] = {"--max-message-size", 1, 0, 0, NULL},
        [F_MAXHDR] = {"--max-header-bytes", 1, 0, 0, NULL},
        [F_MAXHDRS] = {"--max-headers", 1, 0, 0, NULL},
        [F_MAXCONN] = {"--max-connections", 1, 0, 0, NULL},
        [F_MAXBUF] = {"--max-buffered", 1, 0, 0, NULL},
        [F_MAXINBOX] = {"--max-inbox-bytes", 1, 0, 0, NULL},
        [F_MAXBODY] = {"--max-body-size", 1, 0, 0, NULL},
        [F_LOG] = {"--log-level", 3, 0, 0, NULL},
        [F_ADMIN] = {"--admin", 2, 0, 0, NULL},
        [F_ADMIN_TOKEN] = {"--admin-token-file", 5, 0, 0, NULL},
        [F_MAXADMIN] = {"--max-admin-connections", 1, 0, 0, NULL},
        [F_WATCH] = {"--watch", 4, 0, 0, NULL},
        [F_TLS_LISTEN] = {"--tls-listen", 2, 0, 0, NULL},
        [F_TLS_CERT] = {"--tls-cert", 5, 0, 0, NULL},
        [F_TLS_KEY] = {"--tls-key", 5, 0, 0, NULL},
        [F_SHUTDOWN] = {"--shutdown-timeout", 0, 0, 0, NULL},
        [F_METRICS] = {"--metrics", 2, 0, 0, NULL},
        [F_LOG_FORMAT] = {"--log-format", 6, 0, 0, NULL},
        [F_ACCESS_LOG] = {"--access-log", 4, 0, 0, NULL},
        [F_WORKERS] = {"--workers", 7, 0, 0, NULL},
        [F_BROKER] = {"--broker", 8, 0, 0, NULL},
        [F_BROKER_PREFIX] = {"--broker-prefix", 8, 0, 0, NULL},
        [F_BROKER_MAX_PENDING] = {"--broker-max-pending", 1, 0, 0, NULL},
        [F_BROKER_TIMEOUT] = {"--broker-timeout", 0, 0, 0, NULL},
        [F_BACKLOG] = {"--listen-backlog", 1, 0, 0, NULL},
    };
    const char *app_path = NULL;
    const char *trees[33] = {NULL};
    int ntrees = 0;
    if (argc >= 2 && strcmp(argv[1], "reload") == 0)
        return reload_command(argc, argv);

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage, stdout);
            return 0;
        }
        if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
            printf("moonwire %s\n", MW_VERSION_STRING);
            return 0;
        }
        if (a[0] != '-') {
            if (app_path)
                return fail("more than one app file given ('%s' and '%s'); give one", app_path, a);
            app_path = a;
            continue;
        }
        /* --rocks-tree DIR, any number of times */
        if (strcmp(a, "--rocks-tree") == 0 || strncmp(a, "--rocks-tree=", 13) == 0) {
            const char *v = a[12] == '=' ? a + 13 : (i + 1 < argc ? argv[++i] : NULL);
            if (!v || !*v)
                return fail("option --rocks-tree needs a directory%s%s", "", "");
            if (ntrees + 1 >= (int)(sizeof trees / sizeof trees[0]))
                return fail("too many --rocks-tree options%s%s", "", "");
            trees[ntrees++] = v;
            continue;
        }
        /* --name=value or --name value */
        char name[64];
        const char *value = NULL;
        const char *eq = strchr(a, '=');
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        if (nlen >= sizeof name)
            nlen = sizeof name - 1;
        memcpy(name, a, nlen);
        name[nlen] = 0;
        flag_t *f = NULL;
        for (int k = 0; k < F_COUNT; k++)
            if (strcmp(flags[k].name, name) == 0)
                f = &flags[k];
        if (!f)
            return fail("unknown option '%s'%s (see moonwire --help)", name, "");
        if (f->kind == 4) {
            if (eq)
                return fail("option %s takes no value%s", name, "");
            f->set = 1;
            continue;
        }
        if (eq) {
            value = eq + 1;
        } else {
            if (i + 1 >= argc)
                return fail("option %s needs a value%s (see moonwire --help)", name, "");
            value = argv[++i];
        }
        f->set = 1;
        f->str = value;
        if (f->kind == 0 || f->kind == 1) {
            if (parse_number(value, f->kind == 0, &f->value) != 0)
                return fail(f->kind == 0 ? "option %s: '%s' is not a number of seconds >= 0"
                                         : "option %s: '%s' is not a whole number >= 0",
                            name, value);
        } else if (f->kind == 7) {
            long n = strcmp(value, "auto") == 0 ? sysconf(_SC_NPROCESSORS_ONLN) : -1;
            if (n < 0 && parse_number(value, 0, &f->value) == 0)
                n = (long)f->value;
            if (n < 1 || n > 256)
                return fail("option %s: '%s' is not a number of workers (1-256) or auto", name,
                            value);
            f->value = (double)n;
        } else if (f->kind == 6) {
            if (strcmp(value, "text") != 0 && strcmp(value, "json") != 0)
                return fail("option %s: '%s' is not text or json", name, value);
        } else if (f->kind == 3) {
            if (mw__log_parse_level(value) < 0)
                return fail("option %s: '%s' is not one of debug, info, warn, error", name, value);
        }
    }
    if (!app_path)
        return fail("no app file given%s%s; usage: moonwire APP.lua [options]", "", "");
    static char admin_token[MW_ADMIN_TOKEN_MAX + 1];
    if (flags[F_ADMIN_TOKEN].set) {
        char terr[1200];
        if (!flags[F_ADMIN].set)
            return fail("option --admin-token-file protects the admin listener: give --admin "
                        "HOST:PORT too%s%s",
                        "", "");
        if (mw__admin_read_token(flags[F_ADMIN_TOKEN].str, admin_token, terr, sizeof terr) != 0)
            return fail("option --admin-token-file: %s%s", terr, "");
    }
    if (flags[F_LOG].set)
        mw__log_set_level(mw__log_parse_level(flags[F_LOG].str));
    if (flags[F_LOG_FORMAT].set && strcmp(flags[F_LOG_FORMAT].str, "json") == 0)
        mw__log_set_format(MW_LOG_JSON);

    signal(SIGPIPE, SIG_IGN);

    mw_config_t cfg;
    mw__config_defaults(&cfg);
    mw_lua_t S;
    char err[1024];
    if (mw__lua_open(&S, app_path, trees, 0, 1, err, sizeof err) != 0) {
        fprintf(stderr, "moonwire: %s\n", err);
        mw__lua_close(&S);
        return 1;
    }
    mw__lua_apply_options(&S, &cfg);

    /* Flags override the app's options. */
    if (flags[F_LISTEN].set && apply_listen(&cfg, flags[F_LISTEN].str) != 0) {
        mw__lua_close(&S);
        return fail("option --listen: '%s' is not HOST:PORT (e.g. 127.0.0.1:8080)%s",
                    flags[F_LISTEN].str, "");
    }
    double *secs[] = {[F_PING] = &cfg.ping_interval,
                      [F_PONG] = &cfg.pong_timeout,
                      [F_IDLE] = &cfg.idle_timeout,
                      [F_HANDSHAKE] = &cfg.handshake_timeout,
                      [F_CLOSE] = &cfg.close_timeout};
    for (int k = F_PING; k <= F_CLOSE; k++)
        if (flags[k].set)
            *secs[k] = flags[k].value;
    if (flags[F_MAXMSG].set) {
        cfg.max_message_size = (uint64_t)flags[F_MAXMSG].value;
        S.force_max_message_size = 1;
    }
    if (flags[F_MAXHDR].set)
        cfg.max_header_bytes = (size_t)flags[F_MAXHDR].value;
    if (flags[F_MAXHDRS].set)
        cfg.max_headers = (size_t)flags[F_MAXHDRS].value;
    if (flags[F_MAXCONN].set)
        cfg.max_connections = (size_t)flags[F_MAXCONN].value;
    if (flags[F_MAXADMIN].set)
        cfg.max_admin_connections = (size_t)flags[F_MAXADMIN].value;
    if (flags[F_MAXBUF].set)
        cfg.max_buffered = (size_t)flags[F_MAXBUF].value;
    if (flags[F_MAXINBOX].set)
        cfg.max_inbox_bytes = (size_t)flags[F_MAXINBOX].value;
    if (flags[F_MAXBODY].set)
        cfg.max_body_size = (size_t)flags[F_MAXBODY].value;
    if (flags[F_BACKLOG].set)
        cfg.listen_backlog = (size_t)flags[F_BACKLOG].value;
    if (flags[F_SHUTDOWN].set)
        cfg.shutdown_timeout = flags[F_SHUTDOWN].value;
    if (flags[F_WORKERS].set)
        cfg.workers = (int)flags[F_WORKERS].value;
    if (flags[F_TLS_LISTEN].set &&
        split_hostport(flags[F_TLS_LISTEN].str, cfg.tls_listen_host, sizeof cfg.tls_listen_host,
                       &cfg.tls_listen_port) != 0) {
        mw__lua_close(&S);
        return fail("option --tls-listen: '%s' is not HOST:PORT%s", flags[F_TLS_LISTEN].str, "");
    }
    if (flags[F_TLS_CERT].set)
        snprintf(cfg.tls_cert, sizeof cfg.tls_cert, "%s", flags[F_TLS_CERT].str);
    if (flags[F_TLS_KEY].set)
        snprintf(cfg.tls_key, sizeof cfg.tls_key, "%s", flags[F_TLS_KEY].str);
    if (flags[F_BROKER].set)
        snprintf(cfg.broker, sizeof cfg.broker, "%s", flags[F_BROKER].str);
    if (flags[F_BROKER_PREFIX].set)
        snprintf(cfg.broker_prefix, sizeof cfg.broker_prefix, "%s", flags[F_BROKER_PREFIX].str);
    if (flags[F_BROKER_MAX_PENDING].set)
        cfg.broker_max_pending = (size_t)flags[F_BROKER_MAX_PENDING].value;
    if (flags[F_BROKER_TIMEOUT].set)
        cfg.broker_timeout = flags[F_BROKER_TIMEOUT].value;
    const char *bad = mw__config_check(&cfg);
    if (!bad && cfg.broker[0])
        bad = mw__broker_check_url(cfg.broker);
    if (bad) {
        mw__lua_close(&S);
        return fail("invalid configuration: %s%s", bad, "");
    }

    /* The app loaded before the number of workers was known (it may set
     * it): tell its state now. */
    mw__lua_set_workers(&S, cfg.workers);
    main_loop = ev_default_loop(EVFLAG_AUTO);
    mw_worker_t w;
    mw__worker_init(&w, main_loop, &cfg, &mw__lua_ops, &S);
    mw__lua_attach(&S, &w);
    if (mw__worker_listen(&w, err, sizeof err) != 0) {
        fprintf(stderr, "moonwire: %s\n", err);
        mw__lua_close(&S);
        mw__worker_free(&w);
        ev_loop_destroy(main_loop);
        return 1;
    }
    if (mw__worker_listen_tls(&w, err, sizeof err) != 0) {
        fprintf(stderr, "moonwire: %s\n", err);
        mw__worker_stop(&w);
        mw__lua_close(&S);
        mw__worker_free(&w);
        ev_loop_destroy(main_loop);
        return 1;
    }
    main_lua = &S;
    S.admin_token = flags[F_ADMIN_TOKEN].set ? admin_token : NULL;
    w.access_log = flags[F_ACCESS_LOG].set;
    w.timing = flags[F_METRICS].set || flags[F_ADMIN].set;
    /* --admin and --metrics: plain HTTP listeners answered by admin.c. */
    const struct {
        int flag;
        int metrics;
        const char *what;
    } services[] = {
        {F_ADMIN, 0, "admin listener on %s:%d (POST /reload, GET /status, GET /metrics)"},
        {F_METRICS, 1, "metrics on %s:%d (GET /metrics)"}};
    for (size_t i = 0; i < sizeof services / sizeof services[0]; i++) {
        const flag_t *f = &flags[services[i].flag];
        if (!f->set)
            continue;
        char host[256];
        int port = 0, rc;
        if (split_hostport(f->str, host, sizeof host, &port) != 0) {
            port = -1;
            snprintf(err, sizeof err, "'%s' is not HOST:PORT (e.g. 127.0.0.1:9100)", f->str);
            rc = -1;
        } else if (services[i].metrics) {
            rc = mw__worker_listen_metrics(&w, host, port, mw__admin_request_cb, &S, err,
                                           sizeof err);
        } else {
            rc = mw__worker_listen_admin(&w, host, port, mw__admin_request_cb, &S, err, sizeof err);
            /* Anyone who reaches the admin listener can reload the app:
             * off the loopback interface it takes a token. */
            if (rc == 0 && !flags[F_ADMIN_TOKEN].set && !mw__fd_is_loopback(w.admin_fd)) {
                snprintf(err, sizeof err,
                         "'%s' is not a loopback address, and without --admin-token-file anyone "
                         "who reaches it could reload the app; listen on 127.0.0.1 or give "
                         "--admin-token-file FILE",
                         f->str);
                rc = -2; /* a usage error, like a bad value */
            }
        }
        if (rc != 0) {
            fprintf(stderr, "moonwire: %s: %s\n", f->name, err);
            mw__worker_stop(&w);
            mw__lua_close(&S);
            mw__worker_free(&w);
            /* a bad value, or a failed listen */
            return rc == -2 || port < 0 || strchr(err, '\'') ? 2 : 1;
        }
        mw__log_always(MW_LOG_INFO, services[i].what, host,
                       mw__fd_port(services[i].metrics ? w.metrics_fd : w.admin_fd));
    }
    mw_watch_t watch;
    watch.fd = -1;
    if (flags[F_WATCH].set) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", app_path);
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = 0;
        else
            strcpy(dir, ".");
        if (mw__watch_start(&watch, main_loop, dir, on_watch, &S, err, sizeof err) != 0) {
            fprintf(stderr, "moonwire: %s\n", err);
            mw__worker_stop(&w);
            mw__lua_close(&S);
            mw__worker_free(&w);
            return 1;
        }
        mw_info("watching %s for edits", dir);
    }
    /* Workers 2..N: their own threads, loops and Lua states, on the ports
     * worker 1 bound (port 0 picks one for all). The hub carries publishes
     * between them, and the broker's deliveries to each of them. */
    mw_hub_t hub;
    memset(&hub, 0, sizeof hub);
    mw_thread_spec_t spec;
    memset(&spec, 0, sizeof spec);
    int use_hub = cfg.workers > 1 || cfg.broker[0];
    mw_broker_t *broker = NULL;
    if (use_hub) {
        mw__hub_init(&hub, cfg.workers);
        hub.slots[0].loop = main_loop;
        hub.slots[0].w = &w;
        hub.slots[0].S = &S;
        mw__hub_attach(&hub, 0);
        S.hub = &hub;
    }
    if (cfg.broker[0]) {
        mw_broker_options_t bo = {cfg.broker, cfg.broker_prefix, cfg.broker_max_pending,
                                  cfg.broker_timeout};
        broker = mw__broker_start(&bo, &hub, err, sizeof err);
        if (!broker) {
            fprintf(stderr, "moonwire: broker: %s\n", err);
            mw__hub_detach(&hub, 0);
            mw__worker_stop(&w);
            mw__lua_close(&S);
            mw__worker_free(&w);
            mw__hub_free(&hub);
            return 1;
        }
        S.broker = broker;
        mw__broker_watch(broker, &w);
        spec.broker = broker;
    }
    if (cfg.workers > 1) {
        spec.app_path = app_path;
        spec.trees = trees;
        spec.cfg = cfg;
        spec.cfg.listen_port = mw__worker_port(&w);
        if (w.tls_fd >= 0)
            spec.cfg.tls_listen_port = mw__worker_tls_port(&w);
        spec.force_max_message_size = S.force_max_message_size;
        spec.access_log = w.access_log;
        spec.timing = w.timing;
        spec.share_fd = w.listen_fd;
        spec.share_tls_fd = w.tls_fd;
        if (mw__threads_start(&hub, &spec, err, sizeof err) != 0) {
            fprintf(stderr, "moonwire: worker: %s\n", err);
            mw__hub_detach(&hub, 0);
            mw__worker_stop(&w);
            mw__lua_close(&S);
            mw__worker_free(&w);
            mw__broker_stop(broker);
            mw__hub_free(&hub);
            return 1;
        }
        mw_info("%d workers share the port", cfg.workers);
    }
    mw__worker_start(&w);
    ev_signal sig_hup;
    ev_signal_init(&sig_hup, on_hup, SIGHUP);
    ev_signal_start(main_loop, &sig_hup);
    ev_signal sig_term, sig_int;
    ev_signal_init(&sig_term, on_stop_signal, SIGTERM);
    ev_signal_init(&sig_int, on_stop_signal, SIGINT);
    ev_signal sig_quit;
    ev_signal_init(&sig_quit, on_stop_signal, SIGQUIT);
    ev_signal_start(main_loop, &sig_term);
    ev_signal_start(main_loop, &sig_int);
    ev_signal_start(main_loop, &sig_quit);
    main_worker = &w;

    int v6 = strchr(cfg.listen_host, ':') != NULL;
    mw__log_always(MW_LOG_INFO, "moonwire %s serving %s; listening on %s%s%s:%d", MW_VERSION_STRING,
                   app_path, v6 ? "[" : "", cfg.listen_host, v6 ? "]" : "", mw__worker_port(&w));
    /* After the plain line: tools read the first "listening on" as it. */
    if (w.tls_fd >= 0)
        mw__log_always(MW_LOG_INFO, "TLS listening on %s:%d", cfg.tls_listen_host,
                       mw__worker_tls_port(&w));
    ev_run(main_loop, 0);

    if (use_hub) {
        /* Worker 1 is done; the others finish their own drain (or stop now
         * after a second signal), then end. */
        if (forced || !draining)
            mw__hub_stop(&hub, 0);
        mw__threads_join(&hub);
        mw__hub_detach(&hub, 0);
        S.hub = NULL;
    }
    mw__watch_stop(&watch);
    ev_signal_stop(main_loop, &sig_hup);
    mw__worker_stop(&w);
    mw__lua_close(&S);
    mw__worker_free(&w);
    ev_signal_stop(main_loop, &sig_term);
    ev_signal_stop(main_loop, &sig_int);
    ev_signal_stop(main_loop, &sig_quit);
    ev_timer_stop(main_loop, &drain_check);
    ev_timer_stop(main_loop, &drain_deadline);
    ev_loop_destroy(main_loop);
    /* After every worker: their last unsubscribes went to the broker. */
    mw__broker_stop(broker);
    if (use_hub)
        mw__hub_free(&hub);
    mw_info("stopped");
    return 0;
}
