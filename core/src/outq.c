/* Output queue and chunk pool (see outq.h). */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>

#include "log.h"
#include "outq.h"

mw_rbuf_t *mw__rbuf_new(const void *data, size_t len)
{
    mw_rbuf_t *b = mw__xmalloc(sizeof *b + len);
    b->refs = 1;
    b->len = len;
    if (data)
        memcpy(b->data, data, len);
    return b;
}

void mw__rbuf_release(mw_rbuf_t *b)
{
    if (--b->refs == 0)
        free(b);
}

void mw__chunk_pool_init(mw_chunk_pool_t *pool, size_t max_free)
{
    pool->free = pool->free_small = NULL;
    pool->nfree = pool->nfree_small = 0;
    pool->max_free = max_free;
    pool->pins_released = pool->pins_free = NULL;
    pool->n_released = pool->cap_released = pool->n_free_pins = pool->cap_free_pins = 0;
    pool->pins_next = 1;
}

static void pin_push(uint32_t **v, size_t *n, size_t *cap, uint32_t pin)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 64;
        *v = mw__xrealloc(*v, *cap * sizeof **v);
    }
    (*v)[(*n)++] = pin;
}

uint32_t mw__pool_pin_take(mw_chunk_pool_t *pool)
{
    if (pool->n_free_pins)
        return pool->pins_free[--pool->n_free_pins];
    return pool->pins_next++;
}

void mw__pool_pins_reuse(mw_chunk_pool_t *pool)
{
    for (size_t i = 0; i < pool->n_released; i++)
        pin_push(&pool->pins_free, &pool->n_free_pins, &pool->cap_free_pins,
                 pool->pins_released[i]);
    pool->n_released = 0;
}

void mw__chunk_pool_free(mw_chunk_pool_t *pool)
{
    free(pool->pins_released);
    free(pool->pins_free);
    pool->pins_released = pool->pins_free = NULL;
    pool->n_released = pool->cap_released = pool->n_free_pins = pool->cap_free_pins = 0;
    mw_chunk_t **lists[2] = {&pool->free, &pool->free_small};
    for (int i = 0; i < 2; i++) {
        while (*lists[i]) {
            mw_chunk_t *c = *lists[i];
            *lists[i] = c->next;
            free(c);
        }
    }
    pool->nfree = pool->nfree_small = 0;
}

/* A chunk for need bytes: small (need <= MW_CHUNK_SMALL and small asked
 * for), standard, or exactly need when larger than a standard one. */
static mw_chunk_t *chunk_get(mw_chunk_pool_t *pool, size_t need, int small)
{
    mw_chunk_t *c;
    if (small && need <= MW_CHUNK_SMALL) {
        if (pool->free_small) {
            c = pool->free_small;
            pool->free_small = c->next;
            pool->nfree_small--;
        } else {
            c = mw__xmalloc(sizeof *c + MW_CHUNK_SMALL);
            c->cap = (uint32_t)MW_CHUNK_SMALL;
        }
    } else if (need <= MW_CHUNK_SIZE && pool->free) {
        c = pool->free;
        pool->free = c->next;
        pool->nfree--;
    } else {
        size_t cap = need <= MW_CHUNK_SIZE ? MW_CHUNK_SIZE : need;
        c = mw__xmalloc(sizeof *c + cap);
        c->cap = (uint32_t)cap;
    }
    c->next = NULL;
    c->ref = NULL;
    c->start = c->end = 0;
    return c;
}

static void chunk_put(mw_chunk_pool_t *pool, mw_chunk_t *c)
{
    if (c->cap == MW_CHUNK_FILE) {
        mw_file_src_t *f = (mw_file_src_t *)(void *)c->data;
        close(f->fd);
        free(c);
        return;
    }
    if (c->cap == MW_CHUNK_PIN) {
        const mw_pin_src_t *s = (const mw_pin_src_t *)(const void *)c->data;
        pin_push(&pool->pins_released, &pool->n_released, &pool->cap_released, s->pin);
        free(c);
        return;
    }
    if (c->ref) {
        mw__rbuf_release(c->ref);
        c->ref = NULL;
        /* Ref chunks are allocated with no data area; never pool them. */
        free(c);
        return;
    }
    if (c->cap == MW_CHUNK_SIZE && pool->nfree < pool->max_free) {
        c->next = pool->free;
        pool->free = c;
        pool->nfree++;
    } else if (c->cap == MW_CHUNK_SMALL && pool->nfree_small < pool->max_free) {
        c->next = pool->free_small;
        pool->free_small = c;
        pool->nfree_small++;
    } else {
        free(c);
    }
}

static void link_tail(mw_outq_t *q, mw_chunk_t *c)
{
    if (q->tail)
        q->tail->next = c;
    else
        q->head = c;
    q->tail = c;
}

/* Copies n bytes into q, filling the tail chunk's free space first; total
 * is the size of the whole frame these bytes begin (for the chunk size). */
static void append_bytes(mw_chunk_pool_t *pool, mw_outq_t *q, const uint8_t *p, size_t n,
                         size_t total)
{
    while (n > 0) {
        mw_chunk_t *t = q->tail;
        if (!t || !mw__chunk_takes_bytes(t) || t->end == t->cap) {
            /* A large remainder gets one exact-size chunk instead of many;
             * a frame that fits an empty queue whole, a small one. */
            int small = !q->head && total <= MW_CHUNK_SMALL;
            t = chunk_get(pool, small ? total : (n > MW_CHUNK_SIZE ? n : MW_CHUNK_SIZE), small);
            link_tail(q, t);
        }
        size_t room = t->cap - t->end;
        size_t k = n < room ? n : room;
        memcpy(t->data + t->end, p, k);
        t->end += (uint32_t)k;
        p += k;
        n -= k;
        q->bytes += k;
    }
}

void mw__outq_append2(mw_chunk_pool_t *pool, mw_outq_t *q, const void *hdr, size_t hlen,
                      const void *data, size_t len)
{
    /* The common case, a small frame that fits the tail chunk: two copies
     * and no loop. */
    mw_chunk_t *t = q->tail;
    size_t total = hlen + len;
    if (t && mw__chunk_takes_bytes(t) && t->cap - t->end >= total) {
        if (hlen)
            memcpy(t->data + t->end, hdr, hlen);
        if (len)
            memcpy(t->data + t->end + hlen, data, len);
        t->end += (uint32_t)total;
        q->bytes += total;
        return;
    }
    if (hlen)
        append_bytes(pool, q, hdr, hlen, hlen + len);
    if (len)
        append_bytes(pool, q, data, len, len);
}

void mw__outq_append_small_new(mw_chunk_pool_t *pool, mw_outq_t *q, uint8_t b0, const void *data,
                               size_t len)
{
    /* The frame goes whole into a new chunk (a small one for an empty
     * queue, as append_bytes would choose); what was left in the old tail
     * (under 127 bytes) stays unused. */
    link_tail(q, chunk_get(pool, q->head ? MW_CHUNK_SIZE : len + 2, !q->head));
    int ok = mw__outq_append_small(q, b0, data, len);
    (void)ok;
    assert(ok);
}

void mw__outq_append_pinned(mw_chunk_pool_t *pool, mw_outq_t *q, const void *hdr, size_t hlen,
                            const void *data, size_t len, uint32_t pin)
{
    (void)pool;
    mw_chunk_t *c = mw__xmalloc(sizeof *c + sizeof(mw_pin_src_t));
    c->next = NULL;
    c->ref = NULL;
    c->start = 0;
    c->end = (uint32_t)(hlen + len);
    c->cap = MW_CHUNK_PIN;
    mw_pin_src_t *s = (mw_pin_src_t *)(void *)c->data;
    s->data = data;
    s->pin = pin;
    s->hlen = (uint8_t)hlen;
    memcpy(s->hdr, hdr, hlen);
    link_tail(q, c);
    q->bytes += hlen + len;
}

void mw__outq_append_ref(mw_chunk_pool_t *pool, mw_outq_t *q, mw_rbuf_t *b)
{
    (void)pool;
    if (b->len == 0)
        return;
    mw_chunk_t *c = mw__xmalloc(sizeof *c);
    c->next = NULL;
    c->ref = b;
    mw__rbuf_retain(b);
    c->start = 0;
    c->end = (uint32_t)b->len;
    c->cap = 0;
    link_tail(q, c);
    q->bytes += b->len;
}

void mw__outq_append_file(mw_chunk_pool_t *pool, mw_outq_t *q, int fd, uint64_t off, uint64_t len)
{
    (void)pool;
    mw_chunk_t *c = mw__xmalloc(sizeof *c + sizeof(mw_file_src_t));
    c->next = NULL;
    c->ref = NULL;
    c->start = c->end = 0;
    c->cap = MW_CHUNK_FILE;
    mw_file_src_t *f = (mw_file_src_t *)(void *)c->data;
    f->fd = fd;
    f->off = off;
    f->left = len;
    link_tail(q, c);
    q->bytes += len;
}

long mw__outq_fill(mw_chunk_pool_t *pool, mw_outq_t *q)
{
    mw_chunk_t *prev = NULL, *c = q->head;
    while (c && c->cap != MW_CHUNK_FILE && c->end == c->start) {
        prev = c;
        c = c->next;
    }
    if (!c || c->cap != MW_CHUNK_FILE)
        return 0;
    mw_file_src_t *f = (mw_file_src_t *)(void *)c->data;
    if (f->left == 0)
        return 0;
    mw_chunk_t *d = chunk_get(pool, MW_CHUNK_SIZE, 0);
    size_t want = f->left < d->cap ? (size_t)f->left : d->cap;
    ssize_t n = pread(f->fd, d->data, want, (off_t)f->off);
    if (n <= 0) {
        chunk_put(pool, d);
        if (n == 0)
            errno = EIO; /* the file shrank under us */
        return -1;
    }
    d->end = (uint32_t)n;
    f->off += (uint64_t)n;
    f->left -= (uint64_t)n;
    /* The data chunk goes in front of the file chunk; an emptied file chunk
     * is dropped at once (closing the file). */
    d->next = c;
    if (prev)
        prev->next = d;
    else
        q->head = d;
    if (f->left == 0) {
        d->next = c->next;
        if (q->tail == c)
            q->tail = d;
        chunk_put(pool, c);
    }
    return (long)n;
}

int mw__outq_iov(const mw_outq_t *q, struct iovec *iov, int max)
{
    int n = 0;
    for (mw_chunk_t *c = q->head; c && n < max && c->cap != MW_CHUNK_FILE; c = c->next) {
        if (c->end == c->start)
            continue;
        if (c->cap == MW_CHUNK_PIN) {
            /* Its header (what is left of it), then the app's bytes. */
            const mw_pin_src_t *s = (const mw_pin_src_t *)(const void *)c->data;
            uint32_t at = c->start;
            if (at < s->hlen) {
                iov[n].iov_base = (void *)(uintptr_t)(s->hdr + at);
                iov[n].iov_len = s->hlen - at;
                n++;
                at = s->hlen;
                if (n == max)
                    break;
            }
            iov[n].iov_base = (void *)(uintptr_t)(s->data + (at - s->hlen));
            iov[n].iov_len = c->end - at;
            n++;
            continue;
        }
        uint8_t *base = c->ref ? c->ref->data : c->data;
        iov[n].iov_base = base + c->start;
        iov[n].iov_len = c->end - c->start;
        n++;
    }
    return n;
}

void mw__outq_consume(mw_chunk_pool_t *pool, mw_outq_t *q, size_t n)
{
    q->bytes -= n;
    while (q->head) {
        mw_chunk_t *c = q->head;
        /* Written bytes always come from memory chunks; a file chunk is only
         * ever emptied by mw__outq_fill. */
        if (c->cap == MW_CHUNK_FILE)
            return;
        size_t avail = c->end - c->start;
        if (n < avail) {
            c->start += (uint32_t)n;
            return;
        }
        n -= avail;
        /* A fully written chunk goes back at once: an idle connection's
         * empty queue holds no memory. */
        q->head = c->next;
        if (!q->head)
            q->tail = NULL;
        chunk_put(pool, c);
    }
}

void mw__outq_clear(mw_chunk_pool_t *pool, mw_outq_t *q)
{
    while (q->head) {
        mw_chunk_t *c = q->head;
        q->head = c->next;
        chunk_put(pool, c);
    }
    q->tail = NULL;
    q->bytes = 0;
}
