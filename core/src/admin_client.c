/* `moonwire reload`: asks a running server, through its admin listener,
 * to reload its app, and reports the answer. Blocking and tiny: it is a
 * command-line client, not part of the server loop. */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "admin_client.h"

int mw__admin_read_token(const char *path, char *tok, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot read the admin token file %s: %s", path, strerror(errno));
        return -1;
    }
    static const char fix[] = "put one line of 16 to 1024 visible ASCII characters there, "
                              "e.g. `openssl rand -hex 32 > FILE`";
    char buf[MW_ADMIN_TOKEN_MAX + 64];
    errno = 0;
    size_t n = fread(buf, 1, sizeof buf, f);
    int bad_read = ferror(f), saved = errno;
    fclose(f);
    if (bad_read) {
        snprintf(err, errlen, "cannot read the admin token file %s: %s; %s", path,
                 saved ? strerror(saved) : "read error", fix);
        return -1;
    }
    while (n > 0 &&
           (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
        n--;
    if (n > MW_ADMIN_TOKEN_MAX) {
        snprintf(err, errlen, "the admin token in %s is longer than 1024 characters; %s", path,
                 fix);
        return -1;
    }
    if (n < MW_ADMIN_TOKEN_MIN) {
        snprintf(err, errlen, "the admin token in %s is %zu characters, too short to be safe; %s",
                 path, n, fix);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (buf[i] < 0x21 || buf[i] > 0x7e) {
            snprintf(err, errlen,
                     "the admin token in %s has a space, control or non-ASCII byte at offset "
                     "%zu; %s",
                     path, i, fix);
            return -1;
        }
    }
    memcpy(tok, buf, n);
    tok[n] = 0;
    return 0;
}

int mw__admin_request(const char *host, int port, const char *method, const char *path,
                      const char *token, char *body, size_t bodycap, int *status)
{
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, portstr, &hints, &res) != 0 || !res) {
        snprintf(body, bodycap, "cannot resolve %s", host);
        return -1;
    }
    int fd = socket(res->ai_family, res->ai_socktype, 0);
    int rc = fd >= 0 ? connect(fd, res->ai_addr, res->ai_addrlen) : -1;
    int saved = errno;
    freeaddrinfo(res);
    if (rc != 0) {
        snprintf(body, bodycap,
                 "no admin listener at %s:%d (%s); start the server with --admin %s:%d", host, port,
                 strerror(saved), host, port);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    /* A reload runs the app file; give it time, but not forever. */
    struct timeval tv = {30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char req[512 + MW_ADMIN_TOKEN_MAX];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: %s:%d\r\n%s%s%sContent-Length: 0\r\nConnection: "
                     "close\r\n\r\n",
                     method, path, host, port, token ? "Authorization: Bearer " : "",
                     token ? token : "", token ? "\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof req) {
        snprintf(body, bodycap, "the request does not fit (host name too long?)");
        close(fd);
        return -1;
    }
    if (write(fd, req, (size_t)n) != n) {
        snprintf(body, bodycap, "cannot send the request: %s", strerror(errno));
        close(fd);
        return -1;
    }
    char buf[16384];
    size_t got = 0;
    for (;;) {
        ssize_t k = read(fd, buf + got, sizeof buf - 1 - got);
        if (k <= 0)
            break;
        got += (size_t)k;
        if (got == sizeof buf - 1)
            break;
    }
    close(fd);
    buf[got] = 0;
    if (sscanf(buf, "HTTP/1.%*d %d", status) != 1) {
        snprintf(body, bodycap, "no HTTP answer from %s:%d", host, port);
        return -1;
    }
    const char *b = strstr(buf, "\r\n\r\n");
    snprintf(body, bodycap, "%s", b ? b + 4 : "");
    return 0;
}
