/* Static files for app:static(prefix, dir): a file below a root directory,
 * answered with its content type, length, Last-Modified and ETag, or 304
 * when the client's copy is current. */
#ifndef MW_STATIC_H
#define MW_STATIC_H

#include <stddef.h>

#include "conn.h"

/* Answers the plain request c is answering (GET or HEAD) with the file at
 * rel (the request path below the route's prefix, still percent-encoded)
 * inside root, which must be an absolute path with symlinks resolved
 * (realpath). A directory serves its index.html. Nothing outside root is
 * ever served: ".." segments, encoded or not, and symlinks that lead out
 * are refused with 403; a missing file is 404. Returns the status sent. */
int mw__static_serve(mw_conn_t *c, const char *root, const char *rel, size_t rlen,
                     const mw_http_request_t *req);

/* The media type for a file name, by its extension. */
const char *mw__static_type(const char *name);

#endif
