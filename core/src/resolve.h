/* Host name resolution off the loop thread.
 *
 * getaddrinfo blocks (it may wait seconds on a DNS server), so a worker
 * hands names to one resolver thread of its own, started at the first
 * lookup; answers come back to the worker's loop through an ev_async and
 * run the request's callback there. A request can be cancelled at any time
 * before its callback runs (the socket that asked timed out or was
 * collected): its answer is then dropped unseen. */
#ifndef MW_RESOLVE_H
#define MW_RESOLVE_H

#include <ev.h>
#include <netdb.h>

typedef struct mw_resolver mw_resolver_t;
typedef struct mw_resolve_req mw_resolve_req_t;

/* Called on the loop thread with the answer: res (owned by the callee, free
 * it with freeaddrinfo) or NULL and a getaddrinfo error code in gai_err. */
typedef void (*mw_resolve_cb)(void *arg, struct addrinfo *res, int gai_err);

/* Returns owned; no thread runs until the first lookup. */
mw_resolver_t *mw__resolver_new(struct ev_loop *loop);

/* Stops the thread (waiting for a lookup in progress to end), drops every
 * pending request without calling back, frees r. */
void mw__resolver_free(mw_resolver_t *r);

/* Looks up host:port (TCP, any family) in the background; cb runs later on
 * the loop, never from inside this call. Copies host. Returns the request,
 * valid until its callback runs or it is cancelled. */
mw_resolve_req_t *mw__resolve(mw_resolver_t *r, const char *host, int port, mw_resolve_cb cb,
                              void *arg);

/* The caller no longer wants the answer: cb will not run. */
void mw__resolve_cancel(mw_resolver_t *r, mw_resolve_req_t *q);

#endif
