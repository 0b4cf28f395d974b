/* The Redis broker (--broker redis://HOST:PORT): publishes travel between
 * moonwire processes, on one machine or many, through Redis pub/sub.
 *
 * One broker thread per process owns two hiredis connections on its own
 * libev loop: one that PUBLISHes, one that SUBSCRIBEs. Workers hand it
 * their publishes and the topics they gain or lose (through a mailbox, as
 * the hub does between workers); it hands what Redis delivers to every
 * worker through the hub. The workers' loops never wait on Redis.
 *
 * What crosses Redis:
 * - channel: the prefix (default "moonwire:") followed by the topic;
 * - payload: "\0mw" + a flags byte (version 1, binary bit) + this process's
 *   8-byte origin id + the message. A process skips its own messages (its
 *   local subscribers already had them). A payload without that header
 *   (a backend's `PUBLISH moonwire:news hello`) is delivered as a text
 *   message when it is UTF-8, else as a binary one.
 *
 * The broker subscribes only to topics some local connection follows (it
 * sums the workers' interest) and unsubscribes when the last one leaves.
 * Delivery across processes is at most once: while Redis is unreachable,
 * publishes reach this process's subscribers only and are not replayed
 * later (the same promise as Redis pub/sub itself). */
#ifndef MW_BROKER_H
#define MW_BROKER_H

#include <stddef.h>

#include "hub.h"

typedef struct mw_broker mw_broker_t;

typedef struct mw_broker_options {
    const char *url;    /* redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] */
    const char *prefix; /* channel prefix */
    size_t max_pending; /* bytes handed to Redis and not yet acknowledged */
    double timeout;     /* s: connect, and a PING's answer; also the longest retry wait */
} mw_broker_options_t;

#define MW_BROKER_DEFAULT_PREFIX      "moonwire:"
#define MW_BROKER_DEFAULT_MAX_PENDING ((size_t)16 << 20)
#define MW_BROKER_DEFAULT_TIMEOUT     5.0

/* Figures for /metrics and moonwire.stats(), read from any thread. */
typedef struct mw_broker_stats {
    int connected;                    /* 1 while both connections are up */
    unsigned long long published;     /* publishes handed to Redis */
    unsigned long long received;      /* messages from other processes delivered here */
    unsigned long long dropped_down;  /* publishes not sent: Redis was unreachable */
    unsigned long long dropped_full;  /* publishes not sent: max_pending was reached */
    unsigned long long reconnects;    /* connections re-established after a loss */
    unsigned long long subscriptions; /* channels subscribed now */
} mw_broker_stats_t;

/* Checks a broker URL. Returns NULL, or a static message naming the fault. */
const char *mw__broker_check_url(const char *url);

/* Starts the broker thread; deliveries from Redis go to every slot of hub.
 * Connecting happens in the background (and is retried), so this fails
 * only on a bad URL. Returns the broker or NULL with err set. */
mw_broker_t *mw__broker_start(const mw_broker_options_t *opt, mw_hub_t *hub, char *err,
                              size_t errlen);

/* Stops the thread, closes both connections and frees b. */
void mw__broker_stop(mw_broker_t *b);

/* From any worker: sends a publish to the other processes. */
void mw__broker_publish(mw_broker_t *b, const char *topic, size_t tlen, const void *data,
                        size_t dlen, int binary);

/* Hooks worker w's topics to b: a topic that gains its first (or loses its
 * last) subscriber on w is reported, so b follows it in Redis. */
void mw__broker_watch(mw_broker_t *b, mw_worker_t *w);

void mw__broker_stats(mw_broker_t *b, mw_broker_stats_t *out);

#endif
