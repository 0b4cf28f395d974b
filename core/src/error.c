/* mw_strerror: the one place that turns MW_E* codes into text. */
#include "moonwire/moonwire.h"

const char *mw_strerror(int err)
{
    switch (err) {
    case MW_OK:
        return "success";
    case MW_EAGAIN:
        return "resource temporarily unavailable";
    case MW_EPROTO:
        return "protocol error";
    case MW_ETOOBIG:
        return "size limit exceeded";
    case MW_ECLOSED:
        return "connection closed";
    case MW_EIO:
        return "I/O error";
    case MW_EINVAL:
        return "invalid argument";
    case MW_EUTF8:
        return "invalid UTF-8";
    case MW_ELIMIT:
        return "limit reached";
    default:
        /* Non-negative values other than MW_OK are success values too
         * (e.g. a byte count), so only unknown negatives are errors. */
        return err > 0 ? "success" : "unknown error";
    }
}
