/* Per-connection output queue: the bytes a connection still has to write,
 * in order, as a list of chunks.
 *
 * Small frames are copied into pooled chunks (16 KiB each), so a send costs
 * a memcpy and, on the common path, no malloc: chunks come from and return
 * to a per-worker free list. A chunk may instead refer to a shared,
 * refcounted buffer, so one encoded frame can sit in many queues at once
 * (publish fan-out) without copies. Everything is flushed with writev. */
#ifndef MW_OUTQ_H
#define MW_OUTQ_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

/* A shared, immutable byte buffer with a reference count (one worker only). */
typedef struct mw_rbuf {
    uint32_t refs;
    size_t len;
    uint8_t data[];
} mw_rbuf_t;

/* A chunk whose bytes are still in a file: read (pread) into a data chunk
 * only when it reaches the head of the queue, so a large file costs one
 * chunk of memory at a time and is read as fast as the peer takes it. */
typedef struct mw_file_src {
    int fd; /* owned: closed when the chunk is consumed or dropped */
    uint64_t off, left;
} mw_file_src_t;

#define MW_CHUNK_FILE UINT32_MAX /* cap of a file chunk */

/* A chunk whose payload belongs to the app (a Lua string the binding keeps
 * alive under a pin number), so that a large payload is written from where
 * it is instead of being copied into the queue. The chunk carries the
 * frame's header itself: its bytes [start, end) run over hdr[0..hlen) and
 * then data[0..end - hlen). When the chunk is written or dropped its pin
 * goes on the pool's released list; the binding lets the string go at its
 * next safe point (mw_app_ops_t.pins_released) and mw__pool_pins_reuse then
 * frees the number. The chunk never touches the bytes after that. */
typedef struct mw_pin_src {
    const uint8_t *data;
    uint32_t pin;
    uint8_t hlen;
    uint8_t hdr[15]; /* up to MW_WS_MAX_HEADER (14) */
} mw_pin_src_t;

#define MW_CHUNK_PIN (UINT32_MAX - 1) /* cap of a pinned chunk */

/* Returns an owned buffer of len bytes with refs = 1, contents copied from data
 * when data is not NULL. */
mw_rbuf_t *mw__rbuf_new(const void *data, size_t len);
static inline void mw__rbuf_retain(mw_rbuf_t *b)
{
    b->refs++;
}
void mw__rbuf_release(mw_rbuf_t *b);

typedef struct mw_chunk {
    struct mw_chunk *next;
    mw_rbuf_t *ref; /* when set, the bytes are ref->data[start..end) */
    uint32_t start; /* first byte not yet written */
    uint32_t end;   /* end of valid bytes */
    uint32_t cap;   /* capacity of data[] (0 for ref chunks); MW_CHUNK_FILE, MW_CHUNK_PIN */
    uint32_t pad;   /* keeps data[] 8-byte aligned (a file chunk stores a struct there) */
    uint8_t data[];
} mw_chunk_t;

/* Pool of standard-size chunks, one per worker. */
typedef struct mw_chunk_pool {
    mw_chunk_t *free;
    size_t nfree;
    size_t max_free;        /* chunks kept for reuse; the rest go back to malloc */
    mw_chunk_t *free_small; /* the same for small chunks */
    size_t nfree_small;
    /* Pin numbers (1, 2, ...): released ones wait for the binding, free
     * ones for reuse. */
    uint32_t *pins_released, *pins_free;
    size_t n_released, cap_released, n_free_pins, cap_free_pins;
    uint32_t pins_next;
} mw_chunk_pool_t;

#define MW_CHUNK_SIZE (16384 - sizeof(mw_chunk_t))
/* A frame that fits into an empty queue whole gets a small chunk: a burst
 * of new connections (each queueing one 101 response) or of depth-1
 * echoes then holds 1 KiB per connection in flight, not 16 KiB, and the
 * heap's high-water mark (which RSS keeps) stays low. */
#define MW_CHUNK_SMALL (1024 - sizeof(mw_chunk_t))

typedef struct mw_outq {
    mw_chunk_t *head, *tail;
    size_t bytes; /* bytes queued and not yet written */
} mw_outq_t;

void mw__chunk_pool_init(mw_chunk_pool_t *pool, size_t max_free);
void mw__chunk_pool_free(mw_chunk_pool_t *pool);

/* Copies a frame made of hdr[0..hlen) and data[0..len) to the end of q; the
 * caller keeps both. Fills the tail chunk first and takes pooled chunks
 * after it; a payload larger than a chunk gets a chunk of its own size. */
void mw__outq_append2(mw_chunk_pool_t *pool, mw_outq_t *q, const void *hdr, size_t hlen,
                      const void *data, size_t len);

/* A pin number to queue bytes under (see mw_pin_src_t). */
uint32_t mw__pool_pin_take(mw_chunk_pool_t *pool);

/* The binding has let go of the app's bytes behind the released pins:
 * makes their numbers free again. */
void mw__pool_pins_reuse(mw_chunk_pool_t *pool);

/* Queues a frame made of hdr[0..hlen) (copied; hlen <= 15) and data[0..len)
 * where it is, under pin (the caller keeps those bytes alive until the pin
 * is released): one small allocation whatever the size. */
void mw__outq_append_pinned(mw_chunk_pool_t *pool, mw_outq_t *q, const void *hdr, size_t hlen,
                            const void *data, size_t len, uint32_t pin);

/* Whether bytes can be copied into c's data area (a memory chunk, not a
 * shared, file or pinned one). */
static inline int mw__chunk_takes_bytes(const mw_chunk_t *c)
{
    return !c->ref && c->cap != MW_CHUNK_FILE && c->cap != MW_CHUNK_PIN;
}

/* memcpy for n <= 125 without the call: overlapping 16-, 8- and 4-byte
 * moves that stay within both ranges (a 32-byte message is two moves). */
static inline void mw__copy_small(uint8_t *dst, const uint8_t *src, size_t n)
{
    if (n >= 16) {
        size_t i = 0;
        for (; n - i > 16; i += 16)
            memcpy(dst + i, src + i, 16);
        memcpy(dst + n - 16, src + n - 16, 16);
    } else if (n >= 8) {
        uint64_t a, b;
        memcpy(&a, src, 8);
        memcpy(&b, src + n - 8, 8);
        memcpy(dst, &a, 8);
        memcpy(dst + n - 8, &b, 8);
    } else if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, src, 4);
        memcpy(&b, src + n - 4, 4);
        memcpy(dst, &a, 4);
        memcpy(dst + n - 4, &b, 4);
    } else {
        for (size_t i = 0; i < n; i++)
            dst[i] = src[i];
    }
}

/* The common small frame (a 2-byte header b0, len, then data; len <= 125)
 * copied straight into the tail chunk when it has room: returns 1, or 0
 * when the caller must take mw__outq_append_small_new. */
static inline int mw__outq_append_small(mw_outq_t *q, uint8_t b0, const void *data, size_t len)
{
    mw_chunk_t *t = q->tail;
    if (!t || !mw__chunk_takes_bytes(t) || t->cap - t->end < len + 2)
        return 0;
    uint8_t *o = t->data + t->end;
    o[0] = b0;
    o[1] = (uint8_t)len;
    mw__copy_small(o + 2, data, len);
    t->end += (uint32_t)(len + 2);
    q->bytes += len + 2;
    return 1;
}

/* The same frame when mw__outq_append_small refused it: in a new tail
 * chunk, whatever the old tail was. */
void mw__outq_append_small_new(mw_chunk_pool_t *pool, mw_outq_t *q, uint8_t b0, const void *data,
                               size_t len);

/* Queues the bytes of b (retained; the caller keeps its reference). */
void mw__outq_append_ref(mw_chunk_pool_t *pool, mw_outq_t *q, mw_rbuf_t *b);

/* Queues len bytes of fd from off; takes ownership of fd. */
void mw__outq_append_file(mw_chunk_pool_t *pool, mw_outq_t *q, int fd, uint64_t off, uint64_t len);

/* When the first unsent bytes are in a file, reads up to one chunk of them
 * into memory so mw__outq_iov can return them. Returns the bytes read, 0 if
 * there was nothing to read, -1 on a read error (errno set). */
long mw__outq_fill(mw_chunk_pool_t *pool, mw_outq_t *q);

/* Fills up to max iovecs with the queued bytes, in order, stopping at a
 * file chunk (see mw__outq_fill). Returns the count. */
int mw__outq_iov(const mw_outq_t *q, struct iovec *iov, int max);

/* Drops the first n bytes (n <= q->bytes), returning emptied chunks. */
void mw__outq_consume(mw_chunk_pool_t *pool, mw_outq_t *q, size_t n);

/* Drops everything. */
void mw__outq_clear(mw_chunk_pool_t *pool, mw_outq_t *q);

#endif
