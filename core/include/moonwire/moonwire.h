/* moonwire public C surface: version, error codes and small value types.
 *
 * This is the only header installed for extensions. Everything else in core/
 * is private and may change between releases. Conventions: functions are
 * mw_<noun>_<verb>, errors are negative MW_E* codes, success is >= 0. */
#ifndef MOONWIRE_H
#define MOONWIRE_H

#include <stddef.h>

#define MW_VERSION_MAJOR  0
#define MW_VERSION_MINOR  1
#define MW_VERSION_PATCH  0
#define MW_VERSION_STRING "0.1.0"

/* Error codes. Success is MW_OK (0) or another value >= 0. */
enum {
    MW_OK = 0,
    MW_EAGAIN = -1,  /* not ready; try again when the descriptor is */
    MW_EPROTO = -2,  /* the peer broke the protocol */
    MW_ETOOBIG = -3, /* a size limit was exceeded */
    MW_ECLOSED = -4, /* the connection is closed or closing */
    MW_EIO = -5,     /* an I/O error; errno has the detail */
    MW_EINVAL = -6,  /* an invalid argument */
    MW_EUTF8 = -7,   /* text that is not valid UTF-8 */
    MW_ELIMIT = -8,  /* a configured count limit was reached */
};

/* Returns a static, human-readable description of an MW_E* code. */
const char *mw_strerror(int err);

/* A borrowed run of bytes: p is not NUL-terminated and is valid only as long
 * as the buffer it points into. */
typedef struct mw_slice {
    const char *p;
    size_t n;
} mw_slice_t;

#endif
