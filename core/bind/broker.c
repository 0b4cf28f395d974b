/* The Redis broker (see broker.h). Everything here but the mailbox, the
 * counters and the URL check runs on the broker thread: hiredis is not
 * thread-safe, and this way no worker loop ever waits on Redis.
 *
 * Connection life: both connections are made together and count as one
 * link. Until both are up (and authenticated), publishes are dropped for
 * the other processes and counted; when either fails, both are closed and
 * made again after a wait that doubles from 100 ms up to the timeout. A
 * PING on the publishing connection every `timeout` seconds finds a Redis
 * that hangs without closing; the subscribing connection relies on TCP
 * keepalive (hiredis 0.14 cannot PING in subscribed mode). */
#include <errno.h>
#include <hiredis/adapters/libev.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/random.h>
#include <sys/socket.h>

#include "broker.h"
#include "log.h"
#include "pubsub.h"
#include "utf8.h"

/* The header of a moonwire payload: "\0mw", flags, 8-byte origin. */
#define HDR_LEN        12
#define HDR_V1         0x10
#define HDR_BINARY     0x01
#define SUBSCRIBE_STEP 512 /* channels per SUBSCRIBE when re-subscribing */
#define RETRY_FIRST    0.1 /* s before the first reconnect */
#define KEEPALIVE_S    5   /* TCP keepalive of the subscribing connection */

enum { MSG_PUBLISH = 1, MSG_INTEREST, MSG_STOP };
enum { T_IDLE = 0, T_SUBSCRIBED, T_UNSUBSCRIBING };

typedef struct bmsg {
    struct bmsg *next;
    int kind;
    int delta;   /* MSG_INTEREST: +1 or -1 */
    size_t len;  /* MSG_PUBLISH: bytes of the PUBLISH payload */
    size_t clen; /* bytes of the channel name */
    size_t cost; /* what it added to pending */
    char data[]; /* channel, then payload */
} bmsg_t;

/* A channel some worker follows: how many workers, and where Redis is. */
typedef struct btopic {
    struct btopic *next;
    uint32_t hash;
    int interest;
    int state;
    size_t len;
    char name[]; /* the channel (prefix + topic) */
} btopic_t;

struct mw_broker {
    /* set once at start */
    char host[256], user[128], pass[256];
    int port;
    char prefix[256];
    size_t plen;
    size_t max_pending;
    double timeout;
    uint8_t origin[8];
    mw_hub_t *hub;

    /* the mailbox (any thread) */
    pthread_mutex_t mu;
    bmsg_t *head, *tail;
    int closed;
    atomic_size_t pending;
    atomic_int connected;
    atomic_ullong published, received, dropped_down, dropped_full, reconnects, nsubs;
    atomic_ullong full_warned; /* dropped_full at the last warning */

    /* the broker thread */
    pthread_t tid;
    struct ev_loop *loop;
    ev_async wake;
    ev_timer retry, watchdog, ping;
    redisAsyncContext *pub, *sub;
    int pub_up, sub_up; /* connected and authenticated */
    int ping_out;       /* a PING is waiting for its answer */
    int stopping;
    int ever_connected;
    int down_logged; /* the current outage was logged */
    int publish_error_logged;
    double backoff;
    btopic_t **buckets;
    size_t nbuckets, ntopics;
};

/* ---- the URL ---------------------------------------------------------- */

/* Parses redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] into b (when not NULL).
 * Returns NULL or what is wrong. */
static const char *parse_url(const char *url, mw_broker_t *b)
{
    static const char scheme[] = "redis://";
    if (!url || strncmp(url, scheme, sizeof scheme - 1) != 0)
        return "the broker URL must start with redis:// (redis://HOST:PORT)";
    const char *p = url + sizeof scheme - 1;
    const char *at = strrchr(p, '@');
    char user[128] = "", pass[256] = "";
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon)
            return "the broker URL's credentials must be :PASSWORD@ or USER:PASSWORD@";
        if ((size_t)(colon - p) >= sizeof user || (size_t)(at - colon - 1) >= sizeof pass)
            return "the broker URL's user or password is too long";
        memcpy(user, p, (size_t)(colon - p));
        user[colon - p] = 0;
        memcpy(pass, colon + 1, (size_t)(at - colon - 1));
        pass[at - colon - 1] = 0;
        p = at + 1;
    }
    const char *end = p + strcspn(p, "/");
    const char *hend = end;
    long port = 6379;
    const char *colon = NULL;
    if (*p == '[') { /* [v6]:port */
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb)
            return "the broker URL has an unclosed [ in its host";
        colon = rb + 1 < end && rb[1] == ':' ? rb + 1 : NULL;
        hend = rb + 1;
    } else {
        colon = memchr(p, ':', (size_t)(end - p));
        if (colon)
            hend = colon;
    }
    if (colon) {
        char *e;
        errno = 0;
        port = strtol(colon + 1, &e, 10);
        if (errno || e != end || port < 1 || port > 65535)
            return "the broker URL's port must be a number from 1 to 65535";
    }
    const char *h = p;
    size_t hlen = (size_t)(hend - p);
    if (hlen >= 2 && h[0] == '[') {
        h++;
        hlen -= 2;
    }
    if (hlen == 0)
        return "the broker URL has no host (redis://HOST:PORT)";
    if (hlen >= sizeof b->host)
        return "the broker URL's host is too long";
    if (*end == '/' && end[1]) {
        /* A database number: pub/sub ignores it, but a typo is still one. */
        char *e;
        long db = strtol(end + 1, &e, 10);
        if (*e || db < 0)
            return "the broker URL's path must be a database number (/0)";
    }
    if (b) {
        memcpy(b->host, h, hlen);
        b->host[hlen] = 0;
        b->port = (int)port;
        memcpy(b->user, user, sizeof user);
        memcpy(b->pass, pass, sizeof pass);
    }
    return NULL;
}

const char *mw__broker_check_url(const char *url)
{
    return parse_url(url, NULL);
}

/* ---- the mailbox (worker threads) ------------------------------------- */

static void post(mw_broker_t *b, bmsg_t *m)
{
    m->next = NULL;
    pthread_mutex_lock(&b->mu);
    if (b->closed) {
        pthread_mutex_unlock(&b->mu);
        atomic_fetch_sub(&b->pending, m->cost);
        free(m);
        return;
    }
    if (b->tail)
        b->tail->next = m;
    else
        b->head = m;
    b->tail = m;
    ev_async_send(b->loop, &b->wake);
    pthread_mutex_unlock(&b->mu);
}

static bmsg_t *msg_new(mw_broker_t *b, int kind, const char *topic, size_t tlen, size_t extra)
{
    bmsg_t *m = mw__xmalloc(sizeof *m + b->plen + tlen + extra);
    memset(m, 0, sizeof *m);
    m->kind = kind;
    m->clen = b->plen + tlen;
    memcpy(m->data, b->prefix, b->plen);
    if (tlen)
        memcpy(m->data + b->plen, topic, tlen);
    return m;
}

void mw__broker_publish(mw_broker_t *b, const char *topic, size_t tlen, const void *data,
                        size_t dlen, int binary)
{
    if (!atomic_load(&b->connected)) {
        atomic_fetch_add(&b->dropped_down, 1);
        return;
    }
    size_t cost = sizeof(bmsg_t) + b->plen + tlen + HDR_LEN + dlen;
    if (atomic_fetch_add(&b->pending, cost) + cost > b->max_pending) {
        atomic_fetch_sub(&b->pending, cost);
        unsigned long long n = atomic_fetch_add(&b->dropped_full, 1) + 1;
        /* One warning per 1000 drops: a stalled Redis must not flood the log. */
        if (n - atomic_load(&b->full_warned) >= 1000 || n == 1) {
            atomic_store(&b->full_warned, n);
            mw_warn("redis broker: %zu bytes wait for Redis (broker_max_pending); %llu publishes "
                    "reached only this process's subscribers",
                    b->max_pending, n);
        }
        return;
    }
    bmsg_t *m = msg_new(b, MSG_PUBLISH, topic, tlen, HDR_LEN + dlen);
    m->cost = cost;
    m->len = HDR_LEN + dlen;
    char *h = m->data + m->clen;
    h[0] = 0;
    h[1] = 'm';
    h[2] = 'w';
    h[3] = (char)(HDR_V1 | (binary ? HDR_BINARY : 0));
    memcpy(h + 4, b->origin, 8);
    if (dlen)
        memcpy(h + HDR_LEN, data, dlen);
    post(b, m);
}

static void on_topic(void *ud, const char *topic, size_t len, int active)
{
    mw_broker_t *b = ud;
    bmsg_t *m = msg_new(b, MSG_INTEREST, topic, len, 0);
    m->delta = active ? 1 : -1;
    post(b, m);
}

void mw__broker_watch(mw_broker_t *b, mw_worker_t *w)
{
    mw__pubsub_watch(w->pubsub, on_topic, b);
}

void mw__broker_stats(mw_broker_t *b, mw_broker_stats_t *out)
{
    out->connected = atomic_load(&b->connected);
    out->published = atomic_load(&b->published);
    out->received = atomic_load(&b->received);
    out->dropped_down = atomic_load(&b->dropped_down);
    out->dropped_full = atomic_load(&b->dropped_full);
    out->reconnects = atomic_load(&b->reconnects);
    out->subscriptions = atomic_load(&b->nsubs);
}

/* ---- followed channels (broker thread) -------------------------------- */

static btopic_t **topic_slot(mw_broker_t *b, const char *name, size_t len, uint32_t h)
{
    btopic_t **pp = &b->buckets[h & (b->nbuckets - 1)];
    while (*pp && !((*pp)->hash == h && (*pp)->len == len && memcmp((*pp)->name, name, len) == 0))
        pp = &(*pp)->next;
    return pp;
}

static btopic_t *topic_get(mw_broker_t *b, const char *name, size_t len)
{
    uint32_t h = mw__pubsub_hash(name, len);
    btopic_t **pp = topic_slot(b, name, len, h);
    if (*pp)
        return *pp;
    if (b->ntopics >= b->nbuckets) {
        size_t n = b->nbuckets * 2;
        btopic_t **nb = mw__xcalloc(n, sizeof *nb);
        for (size_t i = 0; i < b->nbuckets; i++)
            while (b->buckets[i]) {
                btopic_t *t = b->buckets[i];
                b->buckets[i] = t->next;
                t->next = nb[t->hash & (n - 1)];
                nb[t->hash & (n - 1)] = t;
            }
        free(b->buckets);
        b->buckets = nb;
        b->nbuckets = n;
        pp = topic_slot(b, name, len, h);
    }
    btopic_t *t = mw__xcalloc(1, sizeof *t + len + 1);
    t->hash = h;
    t->len = len;
    memcpy(t->name, name, len);
    *pp = t;
    b->ntopics++;
    return t;
}

static void topic_drop(mw_broker_t *b, btopic_t *t)
{
    btopic_t **pp = topic_slot(b, t->name, t->len, t->hash);
    *pp = t->next;
    free(t);
    b->ntopics--;
}

static void on_sub_reply(redisAsyncContext *ac, void *r, void *privdata);

static void send_subscribe(mw_broker_t *b, btopic_t **ts, size_t n)
{
    const char *argv[SUBSCRIBE_STEP + 1];
    size_t lens[SUBSCRIBE_STEP + 1];
    argv[0] = "SUBSCRIBE";
    lens[0] = 9;
    for (size_t i = 0; i < n; i++) {
        argv[i + 1] = ts[i]->name;
        lens[i + 1] = ts[i]->len;
        ts[i]->state = T_SUBSCRIBED;
    }
    redisAsyncCommandArgv(b->sub, on_sub_reply, b, (int)n + 1, argv, lens);
    atomic_fetch_add(&b->nsubs, n);
}

static void follow(mw_broker_t *b, btopic_t *t)
{
    if (b->sub_up && t->state == T_IDLE)
        send_subscribe(b, &t, 1);
    /* T_UNSUBSCRIBING: subscribed again when Redis confirms (on_sub_reply). */
}

static void unfollow(mw_broker_t *b, btopic_t *t)
{
    if (b->sub_up && t->state == T_SUBSCRIBED) {
        const char *argv[2] = {"UNSUBSCRIBE", t->name};
        size_t lens[2] = {11, t->len};
        redisAsyncCommandArgv(b->sub, NULL, NULL, 2, argv, lens);
        t->state = T_UNSUBSCRIBING;
        atomic_fetch_sub(&b->nsubs, 1);
    } else if (t->state == T_IDLE) {
        topic_drop(b, t);
    }
}

/* The subscribing connection is up: follow every channel in Redis again. */
static void resubscribe_all(mw_broker_t *b)
{
    btopic_t *batch[SUBSCRIBE_STEP];
    size_t n = 0;
    for (size_t i = 0; i < b->nbuckets; i++)
        for (btopic_t *t = b->buckets[i]; t; t = t->next)
            if (t->interest > 0 && t->state == T_IDLE) {
                batch[n++] = t;
                if (n == SUBSCRIBE_STEP) {
                    send_subscribe(b, batch, n);
                    n = 0;
                }
            }
    if (n)
        send_subscribe(b, batch, n);
}

/* ---- messages from Redis ------------------------------------------------ */

static void deliver(mw_broker_t *b, const redisReply *ch, const redisReply *msg)
{
    if (ch->len < b->plen || memcmp(ch->str, b->prefix, b->plen) != 0)
        return;
    const char *topic = ch->str + b->plen;
    size_t tlen = ch->len - b->plen;
    const char *data = msg->str;
    size_t dlen = msg->len;
    int binary;
    if (dlen >= HDR_LEN && memcmp(data, "\0mw", 3) == 0 && (data[3] & 0xF0) == HDR_V1) {
        if (memcmp(data + 4, b->origin, 8) == 0)
            return; /* ours: local subscribers had it when it was published */
        binary = data[3] & HDR_BINARY;
        data += HDR_LEN;
        dlen -= HDR_LEN;
    } else {
        /* From another publisher (a backend's PUBLISH): text when it can be. */
        uint32_t st = MW_UTF8_ACCEPT;
        binary = mw__utf8_validate(&st, (const uint8_t *)data, dlen) != 0 || !mw__utf8_complete(st);
    }
    atomic_fetch_add(&b->received, 1);
    mw__hub_publish(b->hub, -1, topic, tlen, data, dlen, binary);
}

static void on_sub_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    (void)ac;
    mw_broker_t *b = privdata;
    redisReply *reply = r;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_STRING)
        return; /* NULL: the connection is going away */
    const char *kind = reply->element[0]->str;
    if (strcmp(kind, "message") == 0 && reply->element[2]->type == REDIS_REPLY_STRING) {
        deliver(b, reply->element[1], reply->element[2]);
    } else if (strcmp(kind, "unsubscribe") == 0) {
        const redisReply *ch = reply->element[1];
        uint32_t h = mw__pubsub_hash(ch->str, ch->len);
        btopic_t *t = *topic_slot(b, ch->str, ch->len, h);
        if (!t || t->state != T_UNSUBSCRIBING)
            return;
        t->state = T_IDLE;
        if (t->interest > 0)
            follow(b, t); /* followed again while Redis was unsubscribing */
        else
            topic_drop(b, t);
    }
}

/* ---- connecting ------------------------------------------------------- */

static void connect_both(mw_broker_t *b);

static void link_down(mw_broker_t *b, const char *why)
{
    int was = atomic_exchange(&b->connected, 0);
    b->pub_up = b->sub_up = 0;
    b->ping_out = 0;
    ev_timer_stop(b->loop, &b->ping);
    ev_timer_stop(b->loop, &b->watchdog);
    /* Null the fields first: freeing runs callbacks that look at them. */
    redisAsyncContext *p = b->pub, *s = b->sub;
    b->pub = b->sub = NULL;
    if (p)
        redisAsyncFree(p);
    if (s)
        redisAsyncFree(s);
    /* Nothing is followed in Redis any more. */
    for (size_t i = 0; i < b->nbuckets; i++) {
        btopic_t **pp = &b->buckets[i];
        while (*pp) {
            btopic_t *t = *pp;
            t->state = T_IDLE;
            if (t->interest <= 0) {
                *pp = t->next;
                free(t);
                b->ntopics--;
            } else {
                pp = &t->next;
            }
        }
    }
    atomic_store(&b->nsubs, 0);
    if (b->stopping)
        return;
    if (!b->down_logged) {
        b->down_logged = 1;
        if (was)
            mw_warn("redis broker: lost %s:%d (%s); publishes reach only this process's "
                    "subscribers until it is back; retrying",
                    b->host, b->port, why);
        else
            mw_warn("redis broker: cannot reach %s:%d (%s); publishes reach only this process's "
                    "subscribers until it can; retrying",
                    b->host, b->port, why);
    }
    ev_timer_set(&b->retry, b->backoff, 0.);
    ev_timer_start(b->loop, &b->retry);
    b->backoff *= 2;
    if (b->backoff > b->timeout)
        b->backoff = b->timeout;
}

static void maybe_up(mw_broker_t *b)
{
    if (!b->pub_up || !b->sub_up)
        return;
    ev_timer_stop(b->loop, &b->watchdog);
    b->backoff = RETRY_FIRST;
    if (b->ever_connected)
        atomic_fetch_add(&b->reconnects, 1);
    mw__log_always(MW_LOG_INFO, "redis broker: %s %s:%d (channels %s*)",
                   b->ever_connected ? "reconnected to" : "connected to", b->host, b->port,
                   b->prefix);
    b->ever_connected = 1;
    b->down_logged = 0;
    resubscribe_all(b);
    atomic_store(&b->connected, 1);
    ev_timer_set(&b->ping, b->timeout, b->timeout);
    ev_timer_start(b->loop, &b->ping);
}

/* The answer to the first command on a connection (AUTH, or PING without
 * a password): an error here (a wrong password, or a Redis that wants one)
 * is logged as such rather than as a lost connection. */
static void on_hello(redisAsyncContext *ac, void *r, void *privdata)
{
    mw_broker_t *b = privdata;
    redisReply *reply = r;
    if (!reply || (ac != b->pub && ac != b->sub))
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        char why[400];
        if (b->pass[0])
            snprintf(why, sizeof why, "AUTH failed: %s; check the password in the broker URL",
                     reply->str);
        else
            snprintf(why, sizeof why,
                     "%s; give the password in the broker URL (redis://:PASSWORD@HOST:PORT)",
                     reply->str);
        b->down_logged = 0; /* say it, even in an outage already logged */
        link_down(b, why);
        return;
    }
    if (ac == b->pub)
        b->pub_up = 1;
    else
        b->sub_up = 1;
    maybe_up(b);
}

/* TCP keepalive: a dead peer is found in about 2 x KEEPALIVE_S. */
static void keepalive(int fd)
{
    int on = 1, idle = KEEPALIVE_S, intvl = KEEPALIVE_S / 3 ? KEEPALIVE_S / 3 : 1, cnt = 3;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
}

static void on_connect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    mw_broker_t *b = ac->data;
    if (ac != b->pub && ac != b->sub)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees ac after this returns. */
        char why[300];
        snprintf(why, sizeof why, "%s", ac->errstr[0] ? ac->errstr : "connect failed");
        if (ac == b->pub)
            b->pub = NULL;
        else
            b->sub = NULL;
        link_down(b, why);
        return;
    }
    if (ac == b->sub)
        keepalive(ac->c.fd);
    if (b->user[0]) {
        const char *argv[3] = {"AUTH", b->user, b->pass};
        redisAsyncCommandArgv(ac, on_hello, b, 3, argv, NULL);
    } else if (b->pass[0]) {
        const char *argv[2] = {"AUTH", b->pass};
        redisAsyncCommandArgv(ac, on_hello, b, 2, argv, NULL);
    } else {
        redisAsyncCommand(ac, on_hello, b, "PING");
    }
}

static void on_disconnect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    mw_broker_t *b = ac->data;
    if (ac != b->pub && ac != b->sub)
        return; /* one we let go of ourselves */
    char why[300];
    snprintf(why, sizeof why, "%s",
             status == REDIS_OK ? "closed" : (ac->errstr[0] ? ac->errstr : "connection lost"));
    if (ac == b->pub)
        b->pub = NULL;
    else
        b->sub = NULL;
    link_down(b, why);
}

static redisAsyncContext *open_one(mw_broker_t *b, char *why, size_t whylen)
{
    redisAsyncContext *ac = redisAsyncConnect(b->host, b->port);
    if (!ac) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    if (ac->err) {
        snprintf(why, whylen, "%s", ac->errstr);
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = b;
    redisLibevAttach(b->loop, ac);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    return ac;
}

static void connect_both(mw_broker_t *b)
{
    char why[300];
    b->pub = open_one(b, why, sizeof why);
    if (b->pub)
        b->sub = open_one(b, why, sizeof why);
    if (!b->pub || !b->sub) {
        link_down(b, why);
        return;
    }
    ev_timer_set(&b->watchdog, b->timeout, 0.);
    ev_timer_start(b->loop, &b->watchdog);
}

static void on_retry(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    connect_both((mw_broker_t *)t->data);
}

static void on_watchdog(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    link_down((mw_broker_t *)t->data, "no answer within broker_timeout");
}

static void on_pong(redisAsyncContext *ac, void *r, void *privdata)
{
    mw_broker_t *b = privdata;
    if (r && ac == b->pub)
        b->ping_out = 0;
}

static void on_ping_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    mw_broker_t *b = t->data;
    if (b->ping_out) {
        link_down(b, "no answer to PING within broker_timeout");
        return;
    }
    b->ping_out = 1;
    redisAsyncCommand(b->pub, on_pong, b, "PING");
}

/* ---- the broker thread ---------------------------------------------------- */

static void on_published(redisAsyncContext *ac, void *r, void *privdata)
{
    /* privdata carries the message's cost: it is no longer pending (the
     * reply came, or the connection went and took it along). */
    mw_broker_t *b = ac->data;
    redisReply *reply = r;
    atomic_fetch_sub(&b->pending, (size_t)(uintptr_t)privdata);
    if (reply && reply->type == REDIS_REPLY_ERROR && !b->publish_error_logged) {
        b->publish_error_logged = 1;
        mw_error("redis broker: PUBLISH failed: %s", reply->str);
    }
}

static void on_mail(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)revents;
    mw_broker_t *b = a->data;
    pthread_mutex_lock(&b->mu);
    bmsg_t *m = b->head;
    b->head = b->tail = NULL;
    pthread_mutex_unlock(&b->mu);
    while (m) {
        bmsg_t *next = m->next;
        if (m->kind == MSG_PUBLISH) {
            if (b->pub_up && b->pub) {
                const char *argv[3] = {"PUBLISH", m->data, m->data + m->clen};
                size_t lens[3] = {7, m->clen, m->len};
                redisAsyncCommandArgv(b->pub, on_published, (void *)(uintptr_t)m->cost, 3, argv,
                                      lens);
                atomic_fetch_add(&b->published, 1);
            } else {
                atomic_fetch_sub(&b->pending, m->cost);
                atomic_fetch_add(&b->dropped_down, 1);
            }
        } else if (m->kind == MSG_INTEREST) {
            btopic_t *t = topic_get(b, m->data, m->clen);
            t->interest += m->delta;
            if (m->delta > 0 && t->interest == 1)
                follow(b, t);
            else if (m->delta < 0 && t->interest == 0)
                unfollow(b, t);
        } else if (m->kind == MSG_STOP) {
            b->stopping = 1;
            ev_break(loop, EVBREAK_ALL);
        }
        free(m);
        m = next;
    }
}

static void *run(void *arg)
{
    mw_broker_t *b = arg;
    connect_both(b);
    ev_run(b->loop, 0);
    b->stopping = 1;
    link_down(b, "stopping");
    ev_timer_stop(b->loop, &b->retry);
    /* hiredis may still hold closing watchers: let them end. */
    ev_run(b->loop, EVRUN_NOWAIT);
    return NULL;
}

mw_broker_t *mw__broker_start(const mw_broker_options_t *opt, mw_hub_t *hub, char *err,
                              size_t errlen)
{
    mw_broker_t *b = mw__xcalloc(1, sizeof *b);
    const char *bad = parse_url(opt->url, b);
    if (!bad && strlen(opt->prefix) >= sizeof b->prefix)
        bad = "broker_prefix is too long (at most 255 bytes)";
    if (bad) {
        snprintf(err, errlen, "%s (got '%s')", bad, opt->url ? opt->url : "");
        free(b);
        return NULL;
    }
    snprintf(b->prefix, sizeof b->prefix, "%s", opt->prefix);
    b->plen = strlen(b->prefix);
    b->max_pending = opt->max_pending;
    b->timeout = opt->timeout;
    b->backoff = RETRY_FIRST;
    b->hub = hub;
    if (getrandom(b->origin, sizeof b->origin, 0) != (ssize_t)sizeof b->origin) {
        /* No entropy source: time and address still tell processes apart. */
        uint64_t x = (uint64_t)ev_time() * 1000003u ^ (uint64_t)(uintptr_t)b;
        memcpy(b->origin, &x, sizeof x);
    }
    pthread_mutex_init(&b->mu, NULL);
    b->nbuckets = 64;
    b->buckets = mw__xcalloc(b->nbuckets, sizeof *b->buckets);
    b->loop = ev_loop_new(EVFLAG_AUTO);
    ev_async_init(&b->wake, on_mail);
    b->wake.data = b;
    ev_async_start(b->loop, &b->wake);
    ev_init(&b->retry, on_retry);
    b->retry.data = b;
    ev_init(&b->watchdog, on_watchdog);
    b->watchdog.data = b;
    ev_init(&b->ping, on_ping_timer);
    b->ping.data = b;
    if (pthread_create(&b->tid, NULL, run, b) != 0) {
        snprintf(err, errlen, "cannot start the broker thread: %s", strerror(errno));
        ev_async_stop(b->loop, &b->wake);
        ev_loop_destroy(b->loop);
        pthread_mutex_destroy(&b->mu);
        free(b->buckets);
        free(b);
        return NULL;
    }
    return b;
}

void mw__broker_stop(mw_broker_t *b)
{
    if (!b)
        return;
    bmsg_t *m = mw__xcalloc(1, sizeof *m);
    m->kind = MSG_STOP;
    post(b, m);
    pthread_join(b->tid, NULL);
    /* Mail that came after the stop (late interest changes) is dropped. */
    pthread_mutex_lock(&b->mu);
    b->closed = 1;
    m = b->head;
    b->head = b->tail = NULL;
    pthread_mutex_unlock(&b->mu);
    while (m) {
        bmsg_t *next = m->next;
        free(m);
        m = next;
    }
    ev_async_stop(b->loop, &b->wake);
    ev_loop_destroy(b->loop);
    for (size_t i = 0; i < b->nbuckets; i++)
        while (b->buckets[i]) {
            btopic_t *t = b->buckets[i];
            b->buckets[i] = t->next;
            free(t);
        }
    free(b->buckets);
    pthread_mutex_destroy(&b->mu);
    free(b);
}
