/* A blocking client for the admin listener (used by `moonwire reload`). */
#ifndef MW_ADMIN_CLIENT_H
#define MW_ADMIN_CLIENT_H

#include <stddef.h>

/* The admin token's bounds: long enough not to be guessed, short enough for
 * one header line. */
#define MW_ADMIN_TOKEN_MIN 16
#define MW_ADMIN_TOKEN_MAX 1024

/* Reads the admin token from the file at path (--admin-token-file): the
 * file's text without trailing whitespace, MW_ADMIN_TOKEN_MIN to _MAX
 * visible ASCII characters. Returns 0, or -1 with a message naming the
 * file and the fix in err. tok has room for MW_ADMIN_TOKEN_MAX + 1 bytes. */
int mw__admin_read_token(const char *path, char *tok, char *err, size_t errlen);

/* Sends `method path` to host:port (with `Authorization: Bearer token`
 * unless token is NULL) and reads the answer: returns 0 with the HTTP
 * status in *status and the body in body, or -1 with a message there. */
int mw__admin_request(const char *host, int port, const char *method, const char *path,
                      const char *token, char *body, size_t bodycap, int *status);

#endif
