/* rawecho: the benchmark's physical reference, a single-threaded epoll TCP
 * echo server with no protocol at all. Whatever moonwire does per message on
 * top of reading and writing the same bytes shows up as the gap between the
 * two.
 *
 * Each readable connection gets one read into a shared 256 KiB buffer and one
 * write of what was read; only what the kernel refuses to take is copied into
 * a per-connection buffer, and that connection is not read again until the
 * buffer has drained (so a client that does not read is held back by TCP,
 * not by our memory).
 *
 * Usage: rawecho [--listen HOST:PORT]   (default 127.0.0.1:0)
 * Logs "listening on HOST:PORT" on stderr, like moonwire. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE (256 * 1024)

struct conn {
    int fd;
    char *pending; /* bytes the kernel did not take yet */
    size_t len, off;
};

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static void conn_free(int ep, struct conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pending);
    free(c);
}

/* Writes what is pending; returns 1 when all is out, 0 when the kernel
 * pushed back, -1 on error. */
static int drain(struct conn *c)
{
    while (c->off < c->len) {
        ssize_t n = write(c->fd, c->pending + c->off, c->len - c->off);
        if (n > 0) {
            c->off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            return 0;
        } else {
            return -1;
        }
    }
    free(c->pending);
    c->pending = NULL;
    c->len = c->off = 0;
    return 1;
}

static void watch(int ep, struct conn *c, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void on_readable(int ep, struct conn *c, char *buf)
{
    ssize_t n = read(c->fd, buf, BUF_SIZE);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        conn_free(ep, c);
        return;
    }
    ssize_t w = write(c->fd, buf, (size_t)n);
    if (w < 0 && errno != EAGAIN && errno != EINTR) {
        conn_free(ep, c);
        return;
    }
    if (w < 0)
        w = 0;
    if (w < n) {
        c->len = (size_t)(n - w);
        c->off = 0;
        c->pending = malloc(c->len);
        if (!c->pending) {
            fprintf(stderr, "rawecho: out of memory\n");
            abort();
        }
        memcpy(c->pending, buf + w, c->len);
        watch(ep, c, EPOLLOUT); /* stop reading until the backlog is out */
    }
}

int main(int argc, char **argv)
{
    const char *listen_at = "127.0.0.1:0";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--listen") && i + 1 < argc) {
            listen_at = argv[++i];
        } else {
            fprintf(stderr, "usage: rawecho [--listen HOST:PORT]\n");
            return 2;
        }
    }
    char host[64];
    const char *colon = strrchr(listen_at, ':');
    if (!colon || (size_t)(colon - listen_at) >= sizeof host) {
        fprintf(stderr, "rawecho: --listen wants HOST:PORT\n");
        return 2;
    }
    memcpy(host, listen_at, (size_t)(colon - listen_at));
    host[colon - listen_at] = 0;

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "rawecho: bad address %s\n", host);
        return 2;
    }
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, 4096) != 0) {
        fprintf(stderr, "rawecho: %s: %s\n", listen_at, strerror(errno));
        return 1;
    }
    socklen_t alen = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &alen);
    fprintf(stderr, "rawecho: listening on %s:%d\n", host, ntohs(addr.sin_port));

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    char *buf = malloc(BUF_SIZE);
    struct epoll_event ev[512];
    while (!stop) {
        int n = epoll_wait(ep, ev, 512, 500);
        for (int i = 0; i < n; i++) {
            struct conn *c = ev[i].data.ptr;
            if (!c) { /* the listener: take every pending connection */
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0)
                        break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c = calloc(1, sizeof *c);
                    c->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            if (c->pending) {
                int r = drain(c);
                if (r < 0)
                    conn_free(ep, c);
                else if (r == 1)
                    watch(ep, c, EPOLLIN);
                continue;
            }
            on_readable(ep, c, buf);
        }
    }
    return 0;
}
