/* Topics and fan-out (see pubsub.h). Topics live in a chained hash table
 * (FNV-1a) that doubles when it averages more than one topic per bucket;
 * each topic keeps its subscribers in an array, with each membership
 * knowing its index so unsubscribing is O(1) (swap with the last). */
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "log.h"
#include "pubsub.h"

struct mw_topic {
    mw_topic_t *next; /* hash chain */
    uint32_t hash;
    size_t len;
    mw_sub_t **subs;
    size_t nsubs, cap;
    char name[];
};

struct mw_pubsub {
    mw_topic_t **buckets;
    size_t nbuckets; /* a power of two */
    size_t ntopics;
    mw_pubsub_watch_fn watch;
    void *watch_ud;
};

uint32_t mw__pubsub_hash(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 16777619u;
    }
    return h;
}

mw_pubsub_t *mw__pubsub_new(void)
{
    mw_pubsub_t *ps = mw__xcalloc(1, sizeof *ps);
    ps->nbuckets = 64;
    ps->buckets = mw__xcalloc(ps->nbuckets, sizeof *ps->buckets);
    return ps;
}

void mw__pubsub_free(mw_pubsub_t *ps)
{
    if (!ps)
        return;
    for (size_t i = 0; i < ps->nbuckets; i++) {
        mw_topic_t *t = ps->buckets[i];
        while (t) {
            mw_topic_t *next = t->next;
            for (size_t k = 0; k < t->nsubs; k++)
                free(t->subs[k]);
            free(t->subs);
            free(t);
            t = next;
        }
    }
    free(ps->buckets);
    free(ps);
}

void mw__pubsub_watch(mw_pubsub_t *ps, mw_pubsub_watch_fn fn, void *ud)
{
    ps->watch = fn;
    ps->watch_ud = ud;
}

static mw_topic_t *find(const mw_pubsub_t *ps, const char *name, size_t len, uint32_t h)
{
    for (mw_topic_t *t = ps->buckets[h & (ps->nbuckets - 1)]; t; t = t->next)
        if (t->hash == h && t->len == len && memcmp(t->name, name, len) == 0)
            return t;
    return NULL;
}

static void grow(mw_pubsub_t *ps)
{
    size_t n = ps->nbuckets * 2;
    mw_topic_t **b = mw__xcalloc(n, sizeof *b);
    for (size_t i = 0; i < ps->nbuckets; i++) {
        mw_topic_t *t = ps->buckets[i];
        while (t) {
            mw_topic_t *next = t->next;
            t->next = b[t->hash & (n - 1)];
            b[t->hash & (n - 1)] = t;
            t = next;
        }
    }
    free(ps->buckets);
    ps->buckets = b;
    ps->nbuckets = n;
}

static void topic_drop(mw_pubsub_t *ps, mw_topic_t *t)
{
    mw_topic_t **pp = &ps->buckets[t->hash & (ps->nbuckets - 1)];
    while (*pp != t)
        pp = &(*pp)->next;
    *pp = t->next;
    if (ps->watch)
        ps->watch(ps->watch_ud, t->name, t->len, 0);
    free(t->subs);
    free(t);
    ps->ntopics--;
}

int mw__pubsub_subscribe(mw_pubsub_t *ps, mw_conn_t *c, const char *name, size_t len)
{
    uint32_t h = mw__pubsub_hash(name, len);
    mw_topic_t *t = find(ps, name, len, h);
    if (t) {
        for (mw_sub_t *s = c->subs; s; s = s->next_of_conn)
            if (s->topic == t)
                return 0;
    } else {
        if (ps->ntopics >= ps->nbuckets)
            grow(ps);
        t = mw__xcalloc(1, sizeof *t + len + 1);
        t->hash = h;
        t->len = len;
        memcpy(t->name, name, len);
        t->next = ps->buckets[h & (ps->nbuckets - 1)];
        ps->buckets[h & (ps->nbuckets - 1)] = t;
        ps->ntopics++;
        if (ps->watch)
            ps->watch(ps->watch_ud, t->name, t->len, 1);
    }
    if (t->nsubs == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 4;
        t->subs = mw__xrealloc(t->subs, t->cap * sizeof *t->subs);
    }
    mw_sub_t *s = mw__xmalloc(sizeof *s);
    s->topic = t;
    s->conn = c;
    s->index = t->nsubs;
    s->next_of_conn = c->subs;
    c->subs = s;
    t->subs[t->nsubs++] = s;
    return 1;
}

/* Removes s from its topic (dropping an emptied topic) and frees it; the
 * caller unlinks it from the connection's list. */
static void sub_remove(mw_pubsub_t *ps, mw_sub_t *s)
{
    mw_topic_t *t = s->topic;
    mw_sub_t *last = t->subs[--t->nsubs];
    t->subs[s->index] = last;
    last->index = s->index;
    free(s);
    if (t->nsubs == 0)
        topic_drop(ps, t);
}

int mw__pubsub_unsubscribe(mw_pubsub_t *ps, mw_conn_t *c, const char *name, size_t len)
{
    mw_topic_t *t = find(ps, name, len, mw__pubsub_hash(name, len));
    if (!t)
        return 0;
    for (mw_sub_t **pp = &c->subs; *pp; pp = &(*pp)->next_of_conn) {
        if ((*pp)->topic == t) {
            mw_sub_t *s = *pp;
            *pp = s->next_of_conn;
            sub_remove(ps, s);
            return 1;
        }
    }
    return 0;
}

void mw__pubsub_leave_all(mw_pubsub_t *ps, mw_conn_t *c)
{
    while (c->subs) {
        mw_sub_t *s = c->subs;
        c->subs = s->next_of_conn;
        sub_remove(ps, s);
    }
}

size_t mw__pubsub_count(const mw_pubsub_t *ps, const char *name, size_t len)
{
    mw_topic_t *t = find(ps, name, len, mw__pubsub_hash(name, len));
    return t ? t->nsubs : 0;
}

size_t mw__pubsub_topics(const mw_pubsub_t *ps)
{
    return ps->ntopics;
}

size_t mw__pubsub_publish(mw_pubsub_t *ps, const char *name, size_t len, int binary,
                          const void *data, size_t dlen, size_t *dropped)
{
    size_t sent = 0, skipped = 0;
    mw_topic_t *t = find(ps, name, len, mw__pubsub_hash(name, len));
    if (dropped)
        *dropped = 0;
    if (!t)
        return 0;
    /* Encode once. */
    uint8_t hdr[MW_WS_MAX_HEADER];
    size_t hlen = mw__ws_header(hdr, 1, 0, binary ? MW_WS_OP_BINARY : MW_WS_OP_TEXT, dlen);
    mw_rbuf_t *shared = NULL;
    if (hlen + dlen > MW_PUBSUB_COPY_MAX) {
        shared = mw__rbuf_new(NULL, hlen + dlen);
        memcpy(shared->data, hdr, hlen);
        memcpy(shared->data + hlen, data, dlen);
    }
    /* Compressed variants, made at most once per window size and level
     * for the subscribers without context takeover (RFC 7692 7.1.1.1). */
    struct {
        int bits, level;
        mw_rbuf_t *frame;
    } zc[4];
    int nzc = 0;
    /* Queueing never runs app code and never unsubscribes anyone (a slow
     * consumer is only marked closing), so the array is stable here. */
    for (size_t i = 0; i < t->nsubs; i++) {
        mw_conn_t *c = t->subs[i]->conn;
        int rc;
        mw_pmd_t *z = c->pmd;
        if (z && dlen >= z->threshold && !z->server_no_ctx) {
            /* Its own compression context: compressed for it alone. */
            rc = mw__conn_send(c, binary ? MW_WS_OP_BINARY : MW_WS_OP_TEXT, data, dlen);
        } else if (z && dlen >= z->threshold) {
            int k = 0;
            while (k < nzc && (zc[k].bits != z->server_bits || zc[k].level != z->level))
                k++;
            if (k == nzc && nzc < 4) {
                mw_worker_t *w = c->w;
                size_t n = mw__pmd_compress_shared(&w->pmd, z->server_bits, z->level, data, dlen);
                uint8_t zh[MW_WS_MAX_HEADER];
                size_t zhl = mw__ws_header(zh, 1, 1, binary ? MW_WS_OP_BINARY : MW_WS_OP_TEXT, n);
                zc[k].bits = z->server_bits;
                zc[k].level = z->level;
                zc[k].frame = mw__rbuf_new(NULL, zhl + n);
                memcpy(zc[k].frame->data, zh, zhl);
                memcpy(zc[k].frame->data + zhl, w->pmd.buf, n);
                nzc++;
            }
            rc = k < nzc ? mw__conn_send_shared(c, zc[k].frame)
                         : mw__conn_send(c, binary ? MW_WS_OP_BINARY : MW_WS_OP_TEXT, data, dlen);
        } else {
            rc = shared ? mw__conn_send_shared(c, shared)
                        : mw__conn_send_encoded(c, hdr, hlen, data, dlen);
        }
        if (rc == MW_OK) {
            sent++;
            c->w->stats.deliveries++;
        } else if (rc == MW_EAGAIN)
            skipped++;
    }
    if (shared)
        mw__rbuf_release(shared);
    for (int k = 0; k < nzc; k++)
        mw__rbuf_release(zc[k].frame);
    if (dropped)
        *dropped = skipped;
    return sent;
}
