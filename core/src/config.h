/* Server limits and timeouts: one struct, its defaults, and the rules that
 * check it. Every limit the server enforces is a field here, so the README
 * table, the app options and the command-line flags all map onto it. */
#ifndef MW_CONFIG_H
#define MW_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef struct mw_config {
    char listen_host[256];        /* numeric address or host name */
    int listen_port;              /* 0: let the kernel pick one */
    double ping_interval;         /* s of silence before a heartbeat ping; 0 = off */
    double pong_timeout;          /* s to wait for any frame after that ping */
    double idle_timeout;          /* s without a data message before closing; 0 = off */
    double handshake_timeout;     /* s to complete the HTTP upgrade */
    double close_timeout;         /* s to wait for the peer's close frame */
    int workers;                  /* threads, each with its own loop and Lua state */
    double shutdown_timeout;      /* s a graceful shutdown waits for connections */
    uint64_t max_message_size;    /* bytes per message, default for routes */
    size_t max_header_bytes;      /* bytes of an HTTP request head */
    size_t max_headers;           /* header fields in a request */
    size_t max_connections;       /* open connections per worker */
    size_t max_admin_connections; /* open admin and metrics connections */
    size_t max_buffered;          /* bytes queued for writing per connection */
    size_t max_inbox_bytes;       /* bytes of messages waiting for a busy handler */
    size_t max_body_size;         /* bytes of a plain HTTP request body */
    size_t listen_backlog;        /* connections the kernel may hold before accept */
    char tls_listen_host[256];    /* TLS listener; empty: none */
    int tls_listen_port;
    char tls_cert[4096];       /* PEM certificate chain file */
    char tls_key[4096];        /* PEM private key file */
    char broker[1024];         /* redis://HOST:PORT between processes; empty: none */
    char broker_prefix[256];   /* Redis channel = prefix .. topic */
    size_t broker_max_pending; /* bytes of publishes Redis has not acknowledged */
    double broker_timeout;     /* s to connect to Redis and for a PING's answer */
} mw_config_t;

#define MW_DEFAULT_PORT 8080
/* The largest message or body: one Lua string (LuaJIT's limit, 2^31 - 1). */
#define MW_MAX_MESSAGE_LIMIT 2147483647u

/* Fills cfg with the documented defaults. */
void mw__config_defaults(mw_config_t *cfg);

/* Checks cross-field rules; returns NULL or a static message naming the fault. */
const char *mw__config_check(const mw_config_t *cfg);

#endif
