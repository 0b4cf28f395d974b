/* Topics and their subscribers, per worker, for app:publish fan-out.
 *
 * A publish encodes its frame once (DESIGN.md principle 3): small frames are
 * then copied into each subscriber's pooled output chunk (cheaper than any
 * allocation, and one iovec per flush), large ones are queued by reference
 * to one refcounted buffer. A topic nobody follows costs one hash lookup.
 * Each connection keeps the list of its own subscriptions, so they all end
 * with it. */
#ifndef MW_PUBSUB_H
#define MW_PUBSUB_H

#include <stddef.h>
#include <stdint.h>

typedef struct mw_conn mw_conn_t;
typedef struct mw_topic mw_topic_t;
typedef struct mw_pubsub mw_pubsub_t;

/* One connection's membership of one topic. */
typedef struct mw_sub {
    mw_topic_t *topic;
    mw_conn_t *conn;
    size_t index; /* position in topic->subs */
    struct mw_sub *next_of_conn;
} mw_sub_t;

/* Frames up to this size are copied into each subscriber's queue; larger
 * ones are shared by reference. */
#define MW_PUBSUB_COPY_MAX 512

mw_pubsub_t *mw__pubsub_new(void);
/* Frees every topic; connections must have left them already. */
void mw__pubsub_free(mw_pubsub_t *ps);

/* Subscribes c to topic (copied). Returns 1 if new, 0 if c already was. */
int mw__pubsub_subscribe(mw_pubsub_t *ps, mw_conn_t *c, const char *topic, size_t len);
/* Returns 1 if c was subscribed and no longer is, 0 otherwise. */
int mw__pubsub_unsubscribe(mw_pubsub_t *ps, mw_conn_t *c, const char *topic, size_t len);
/* Ends every subscription of c (at teardown). */
void mw__pubsub_leave_all(mw_pubsub_t *ps, mw_conn_t *c);
/* Subscribers of topic. */
size_t mw__pubsub_count(const mw_pubsub_t *ps, const char *topic, size_t len);
/* Topics with at least one subscriber. */
size_t mw__pubsub_topics(const mw_pubsub_t *ps);

/* Called when a topic gains its first subscriber (active = 1) or loses its
 * last (active = 0); the Redis broker follows topics with it. */
typedef void (*mw_pubsub_watch_fn)(void *ud, const char *topic, size_t len, int active);
void mw__pubsub_watch(mw_pubsub_t *ps, mw_pubsub_watch_fn fn, void *ud);

/* FNV-1a of n bytes: the hash of topic tables. */
uint32_t mw__pubsub_hash(const void *p, size_t n);

/* Sends one message (text or binary) to every subscriber of topic that can
 * still send. Returns the number of connections it was queued for; *dropped
 * (if not NULL) gets the number a drop policy skipped. Never calls into the
 * app. */
size_t mw__pubsub_publish(mw_pubsub_t *ps, const char *topic, size_t len, int binary,
                          const void *data, size_t dlen, size_t *dropped);

#endif
