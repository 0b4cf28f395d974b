/* Tests for core/src/osock.c over real loopback sockets: connect (refused,
 * accepted), reads (EAGAIN, growth past the first chunk, compaction, EOF),
 * writes, the error texts, a ca_file that cannot load, and the pool (keys,
 * reuse counts, the per-key bound, peers that close while pooled, noticed
 * by the idle watcher or by the last check on take). TLS runs against real
 * servers in spec/clients_spec.lua. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mwtest.h"
#include "osock.h"

/* A listening loopback socket; *port gets its port. */
static int listener(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    bind(fd, (struct sockaddr *)&a, sizeof a);
    listen(fd, 8);
    getsockname(fd, (struct sockaddr *)&a, &len);
    *port = ntohs(a.sin_port);
    return fd;
}

static struct addrinfo *addr(int port)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST}, *res = NULL;
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    getaddrinfo("127.0.0.1", p, &hints, &res);
    return res;
}

static void wait_for(int fd, int events)
{
    struct pollfd p = {.fd = fd, .events = (short)events};
    poll(&p, 1, 2000);
}

/* Connects s to port; returns the server side of the connection. */
static int connect_pair(mw_osock_t *s, int lfd, int port)
{
    struct addrinfo *ai = addr(port), *next = ai;
    mw__osock_init(s);
    CHECK_EQ(mw__osock_connect(s, &next), 0);
    int rc;
    do {
        wait_for(s->fd, POLLOUT);
        rc = mw__osock_connected(s);
    } while (rc == MW_OSOCK_AGAIN);
    CHECK_EQ(rc, 0);
    freeaddrinfo(ai);
    return accept(lfd, NULL, NULL);
}

static void test_refused(void)
{
    int port;
    int lfd = listener(&port);
    close(lfd); /* nothing listens there now */
    struct addrinfo *ai = addr(port), *next = ai;
    mw_osock_t s;
    mw__osock_init(&s);
    int rc = mw__osock_connect(&s, &next);
    if (rc == 0) {
        do {
            wait_for(s.fd, POLLOUT);
            rc = mw__osock_connected(&s);
        } while (rc == MW_OSOCK_AGAIN);
    }
    CHECK_EQ(rc, MW_OSOCK_ERROR);
    CHECK(strcmp(s.err, "connection refused") == 0);
    CHECK(next == NULL); /* the only address was tried */
    mw__osock_close(&s);
    freeaddrinfo(ai);
}

static void test_read_write(void)
{
    int port, lfd = listener(&port);
    mw_osock_t s;
    int peer = connect_pair(&s, lfd, port);
    CHECK_EQ(mw__osock_read(&s), MW_OSOCK_AGAIN);
    CHECK_EQ(s.want, EV_READ);
    CHECK_EQ(mw__osock_write(&s, "ping\n", 5), 5);
    char buf[8];
    CHECK_EQ(recv(peer, buf, sizeof buf, 0), 5);
    /* 100000 bytes: the buffer grows past its first chunk; taking half
     * then reading more compacts it. */
    static char big[100000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)('a' + i % 26);
    CHECK_EQ(send(peer, big, sizeof big, 0), (ssize_t)sizeof big);
    size_t got = 0;
    while (got < sizeof big) {
        ssize_t n = mw__osock_read(&s);
        if (n == MW_OSOCK_AGAIN) {
            wait_for(s.fd, POLLIN);
            continue;
        }
        CHECK(n > 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    CHECK_EQ(s.rend - s.rstart, sizeof big);
    CHECK_MEM(s.rbuf + s.rstart, big, sizeof big);
    s.rstart += 50000;
    CHECK_EQ(send(peer, "xyz", 3, 0), 3);
    wait_for(s.fd, POLLIN);
    while (mw__osock_read(&s) > 0 && s.rend - s.rstart < 50003)
        ;
    CHECK_EQ(s.rend - s.rstart, 50003);
    CHECK_MEM(s.rbuf + s.rend - 3, "xyz", 3);
    close(peer);
    wait_for(s.fd, POLLIN);
    CHECK_EQ(mw__osock_read(&s), 0); /* EOF */
    mw__osock_close(&s);
    CHECK_EQ(s.fd, -1);
    close(lfd);
}

/* Short I/O test mode: a byte per call, a wait between calls. */
static void test_short_io(void)
{
    int port, lfd = listener(&port);
    mw_osock_t s;
    int peer = connect_pair(&s, lfd, port);
    s.short_io = 1;
    CHECK_EQ(mw__osock_write(&s, "abc", 3), 1);
    CHECK_EQ(mw__osock_write(&s, "bc", 2), MW_OSOCK_AGAIN);
    CHECK_EQ(s.want, EV_WRITE);
    CHECK_EQ(mw__osock_write(&s, "bc", 2), 1);
    CHECK_EQ(send(peer, "xyz", 3, 0), 3);
    wait_for(s.fd, POLLIN);
    CHECK_EQ(mw__osock_read(&s), 1);
    CHECK_EQ(mw__osock_read(&s), MW_OSOCK_AGAIN);
    CHECK_EQ(s.want, EV_READ);
    CHECK_EQ(mw__osock_read(&s), 1);
    CHECK_MEM(s.rbuf + s.rstart, "xy", 2);
    close(peer);
    mw__osock_close(&s);
    close(lfd);
}

static void test_texts(void)
{
    char buf[64];
    CHECK(strcmp(mw__osock_strerror(ECONNREFUSED, buf, sizeof buf), "connection refused") == 0);
    CHECK(strcmp(mw__osock_strerror(ETIMEDOUT, buf, sizeof buf), "timeout") == 0);
    char err[128];
    CHECK(mw__osock_tls_ctx("/nonexistent/ca.pem", err, sizeof err) == NULL);
    CHECK(strcmp(err, "tls: cannot load ca_file /nonexistent/ca.pem") == 0);
    SSL_CTX *ctx = mw__osock_tls_ctx(NULL, err, sizeof err);
    CHECK(ctx != NULL);
    SSL_CTX_free(ctx);
}

static void test_pool(void)
{
    struct ev_loop *loop = ev_loop_new(0);
    mw_opool_t *pool = mw__opool_new(loop);
    int port, lfd = listener(&port);
    mw_osock_t s;
    int peers[4];
    unsigned reused = 0;

    peers[0] = connect_pair(&s, lfd, port);
    int fd0 = s.fd;
    mw__opool_put(pool, "k", &s, 0, 60., 2);
    CHECK_EQ(s.fd, -1);
    CHECK_EQ(mw__opool_size(pool), 1);
    CHECK_EQ(mw__opool_take(pool, "other", &s, &reused), 0);
    CHECK_EQ(mw__opool_take(pool, "k", &s, &reused), 1);
    CHECK_EQ(s.fd, fd0);
    CHECK_EQ(reused, 1);
    mw__opool_put(pool, "k", &s, reused, 60., 2);
    CHECK_EQ(mw__opool_take(pool, "k", &s, &reused), 1);
    CHECK_EQ(reused, 2);
    mw__opool_put(pool, "k", &s, reused, 60., 2);

    /* At most 2 per key: a third pushes the oldest out. */
    peers[1] = connect_pair(&s, lfd, port);
    mw__opool_put(pool, "k", &s, 0, 60., 2);
    peers[2] = connect_pair(&s, lfd, port);
    mw__opool_put(pool, "k", &s, 0, 60., 2);
    CHECK_EQ(mw__opool_size(pool), 2);

    /* The peer of the newest closes: the idle watcher drops it. */
    close(peers[2]);
    usleep(20000);
    ev_run(loop, EVRUN_NOWAIT);
    CHECK_EQ(mw__opool_size(pool), 1);

    /* The peer closes and take runs before the loop noticed. */
    close(peers[1]);
    usleep(20000);
    CHECK_EQ(mw__opool_take(pool, "k", &s, &reused), 0);
    CHECK_EQ(mw__opool_size(pool), 0);

    peers[3] = connect_pair(&s, lfd, port);
    mw__opool_put(pool, "k2", &s, 0, 60., 30);
    mw__opool_free(pool); /* closes what it holds */
    close(peers[0]);
    close(peers[3]);
    close(lfd);
    ev_loop_destroy(loop);
}

static void test_idle_timeout(void)
{
    struct ev_loop *loop = ev_loop_new(0);
    mw_opool_t *pool = mw__opool_new(loop);
    int port, lfd = listener(&port);
    mw_osock_t s;
    int peer = connect_pair(&s, lfd, port);
    mw__opool_put(pool, "k", &s, 0, 0.05, 30);
    ev_run(loop, 0); /* the idle timer is the only watcher left after it fires */
    CHECK_EQ(mw__opool_size(pool), 0);
    mw__opool_free(pool);
    close(peer);
    close(lfd);
    ev_loop_destroy(loop);
}

int main(void)
{
    RUN(test_refused);
    RUN(test_read_write);
    RUN(test_short_io);
    RUN(test_texts);
    RUN(test_pool);
    RUN(test_idle_timeout);
    return mwt_summary();
}
