/* Defaults for every limit (see config.h; the README lists the same values). */
#include <string.h>

#include "config.h"

void mw__config_defaults(mw_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    strcpy(cfg->listen_host, "127.0.0.1");
    cfg->listen_port = MW_DEFAULT_PORT;
    cfg->ping_interval = 30;
    cfg->pong_timeout = 10;
    cfg->idle_timeout = 0;
    cfg->handshake_timeout = 10;
    cfg->close_timeout = 5;
    cfg->shutdown_timeout = 10;
    cfg->workers = 1;
    cfg->max_message_size = 1u << 20;
    cfg->max_header_bytes = 8192;
    cfg->max_headers = 64;
    cfg->max_connections = 10000;
    cfg->max_buffered = 4u << 20;
    cfg->max_inbox_bytes = 1u << 20;
    cfg->max_body_size = 1u << 20;
    cfg->max_admin_connections = 64;
    cfg->listen_backlog = 1024;
    strcpy(cfg->broker_prefix, "moonwire:");
    cfg->broker_max_pending = 16u << 20;
    cfg->broker_timeout = 5;
}

const char *mw__config_check(const mw_config_t *cfg)
{
    if (cfg->max_header_bytes < 256)
        return "max_header_bytes must be at least 256";
    if (cfg->max_header_bytes > (64u << 20))
        return "max_header_bytes must be at most 64 MiB";
    if (cfg->max_headers < 8)
        return "max_headers must be at least 8";
    if (cfg->handshake_timeout <= 0)
        return "handshake_timeout must be positive";
    if (cfg->close_timeout <= 0)
        return "close_timeout must be positive";
    if (cfg->ping_interval > 0 && cfg->pong_timeout <= 0)
        return "pong_timeout must be positive when ping_interval is set";
    if (cfg->workers < 1 || cfg->workers > 256)
        return "workers must be from 1 to 256";
    if (cfg->max_connections < 1)
        return "max_connections must be at least 1";
    if (cfg->max_admin_connections < 1)
        return "max_admin_connections must be at least 1";
    if (cfg->max_message_size < 1)
        return "max_message_size must be at least 1";
    /* A message becomes one Lua string, and LuaJIT's are below 2 GiB. */
    if (cfg->max_message_size > MW_MAX_MESSAGE_LIMIT)
        return "max_message_size must be at most 2147483647 (a Lua string's limit)";
    if (cfg->max_body_size > MW_MAX_MESSAGE_LIMIT)
        return "max_body_size must be at most 2147483647 (a Lua string's limit)";
    if (cfg->max_buffered < 1024)
        return "max_buffered must be at least 1024";
    if (cfg->tls_listen_host[0] && (!cfg->tls_cert[0] || !cfg->tls_key[0]))
        return "a TLS listener (tls_listen / --tls-listen) needs tls_cert and tls_key";
    if (cfg->listen_backlog < 1 || cfg->listen_backlog > 65535)
        return "listen_backlog must be from 1 to 65535 (the kernel caps it at net.core.somaxconn)";
    if (cfg->broker_timeout <= 0)
        return "broker_timeout must be positive";
    if (cfg->broker_max_pending < 1024)
        return "broker_max_pending must be at least 1024";
    return NULL;
}
