/* Outbound (client) connections, Lua-free: what core/bind/tcp.c drives for
 * moonwire.tcp. A non-blocking TCP connect over a list of addresses, a TLS
 * client session with certificate verification, a read buffer that the
 * caller bounds, writes; and a per-worker pool of idle connections.
 *
 * Every call is non-blocking. One that cannot finish returns MW_OSOCK_AGAIN
 * with s->want set to EV_READ or EV_WRITE: the caller waits for that on
 * s->fd and calls again (TLS may want to write while reading). A failure
 * returns MW_OSOCK_ERROR with a short lowercase text in s->err
 * ("connection refused", "tls: certificate verify failed: ..."). */
#ifndef MW_OSOCK_H
#define MW_OSOCK_H

#include <ev.h>
#include <netdb.h>
#include <openssl/ssl.h>
#include <sys/types.h>

enum { MW_OSOCK_AGAIN = -1, MW_OSOCK_ERROR = -2 };

typedef struct mw_osock {
    int fd;     /* -1 when closed */
    SSL *ssl;   /* NULL for plain TCP */
    int verify; /* the TLS session checks the peer's certificate */
    /* Bytes rbuf[rstart..rend) are received and not yet taken. */
    char *rbuf;
    size_t rstart, rend, rcap;
    int want; /* EV_READ / EV_WRITE after MW_OSOCK_AGAIN */
    /* Test mode (MOONWIRE_TEST_SHORT_IO): one byte per read and write, and
     * on plain TCP an EAGAIN between bytes, so every partial path runs. */
    int short_io, short_turn; /* short_turn: EV_READ/EV_WRITE bits, alternating */
    char err[192];
} mw_osock_t;

/* An empty, closed socket. */
void mw__osock_init(mw_osock_t *s);

/* Closes the connection (sends one close_notify for TLS, does not wait)
 * and frees the read buffer. Stop every watcher on s->fd first: the next
 * socket may get the same fd number. */
void mw__osock_close(mw_osock_t *s);

/* Starts a connect to *next, going on down the list while the kernel
 * refuses at once; advances *next past the address tried. Returns 0 with
 * s->fd connecting (wait until writable, then mw__osock_connected), or
 * MW_OSOCK_ERROR once no address is left. */
int mw__osock_connect(mw_osock_t *s, struct addrinfo **next);

/* After the fd turned writable: 0 connected, MW_OSOCK_AGAIN, or
 * MW_OSOCK_ERROR (close s, then try the next address). */
int mw__osock_connected(mw_osock_t *s);

/* A client context: TLS 1.2 or newer, partial writes, trusting ca_file or,
 * when NULL, the system's CA store. Returns owned, or NULL with err set. */
SSL_CTX *mw__osock_tls_ctx(const char *ca_file, char *err, size_t errlen);

/* Starts a TLS session over the connected fd: SNI for name (not for IP
 * addresses) and, with verify, a check of the chain and of name (DNS name
 * or IP address). ctx is borrowed (the session holds its own reference). */
void mw__osock_tls_start(mw_osock_t *s, SSL_CTX *ctx, const char *name, int verify);

/* Runs the handshake: 0 done, MW_OSOCK_AGAIN, MW_OSOCK_ERROR. */
int mw__osock_tls_handshake(mw_osock_t *s);

/* Reads what is there into the buffer (growing it; the caller bounds how
 * far by what it asks for). Returns the bytes added (> 0), 0 at EOF (also a
 * TLS peer that closes without close_notify), MW_OSOCK_AGAIN or
 * MW_OSOCK_ERROR. */
ssize_t mw__osock_read(mw_osock_t *s);

/* Writes from p (borrowed; after MW_OSOCK_AGAIN call again with the same
 * bytes, possibly moved). Returns bytes written (> 0), MW_OSOCK_AGAIN or
 * MW_OSOCK_ERROR. */
ssize_t mw__osock_write(mw_osock_t *s, const char *p, size_t len);

/* strerror with a lowercase first letter, "timeout" for ETIMEDOUT. */
const char *mw__osock_strerror(int e, char *buf, size_t len);

/* --- the pool of idle connections ---------------------------------------- */

typedef struct mw_opool mw_opool_t;

/* Returns owned. */
mw_opool_t *mw__opool_new(struct ev_loop *loop);

/* Closes every pooled connection and frees p. */
void mw__opool_free(mw_opool_t *p);

/* Takes s's connection (fd and TLS session; s is left closed, its buffer
 * must be empty) into the pool under key (copied), with the count of its
 * previous reuses. It is closed after idle seconds, or at once if it turns
 * readable (the peer closed it). With max of that key pooled already, the
 * oldest goes. */
void mw__opool_put(mw_opool_t *p, const char *key, mw_osock_t *s, unsigned reused, double idle,
                   size_t max);

/* Moves the most recently pooled live connection of key into s (closed
 * before). Returns 1 with *reused set to its count of reuses + 1, or 0. */
int mw__opool_take(mw_opool_t *p, const char *key, mw_osock_t *s, unsigned *reused);

/* How many connections the pool holds. */
size_t mw__opool_size(const mw_opool_t *p);

#endif
