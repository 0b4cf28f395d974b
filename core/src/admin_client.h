/* A blocking client for the admin listener (used by `moonwire reload`). */
#ifndef MW_ADMIN_CLIENT_H
#define MW_ADMIN_CLIENT_H

#include <stddef.h>

/* Sends `method path` to host:port and reads the answer: returns 0 with the
 * HTTP status in *status and the body in body, or -1 with a message there. */
int mw__admin_request(const char *host, int port, const char *method, const char *path, char *body,
                      size_t bodycap, int *status);

#endif
