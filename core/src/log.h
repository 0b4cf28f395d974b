/* Process-wide logger: one line per event on stderr, with a UTC timestamp
 * and a level. The level is process-wide state on purpose: it is set once
 * from the command line before any worker starts. */
#ifndef MW_LOG_H
#define MW_LOG_H

#include <stddef.h>

enum { MW_LOG_DEBUG = 0, MW_LOG_INFO, MW_LOG_WARN, MW_LOG_ERROR, MW_LOG_OFF };

/* Sets the lowest level that is printed. */
void mw__log_set_level(int level);
int mw__log_level(void);
/* Parses "debug", "info", "warn" or "error"; returns -1 for anything else. */
int mw__log_parse_level(const char *name);

#if defined(__GNUC__)
#define MW_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define MW_PRINTF(a, b)
#endif

void mw__log(int level, const char *fmt, ...) MW_PRINTF(2, 3);

/* Writes s into out (capacity cap, NUL-terminated) as the body of a JSON
 * string (RFC 8259 escapes). Returns the length written. */
size_t mw__json_escape(char *out, size_t cap, const char *s);

/* Output format: MW_LOG_TEXT (default, for people) or MW_LOG_JSON (one JSON
 * object per line: ts, level, msg; access lines carry their fields). */
enum { MW_LOG_TEXT = 0, MW_LOG_JSON = 1 };
void mw__log_set_format(int format);
int mw__log_format(void);

/* An access line (INFO): event and "key=value key=value" fields (values
 * without spaces). Text: "access EVENT key=value ..."; JSON: the fields as
 * members, numbers as numbers. */
void mw__log_access(const char *event, const char *fmt, ...) MW_PRINTF(2, 3);
/* Logs whatever the level filter says: for the few lines a supervisor or a
 * test reads (where the server listens). */
void mw__log_always(int level, const char *fmt, ...) MW_PRINTF(2, 3);

#define mw_debug(...)                           \
    do {                                        \
        if (mw__log_level() <= MW_LOG_DEBUG)    \
            mw__log(MW_LOG_DEBUG, __VA_ARGS__); \
    } while (0)
#define mw_info(...)  mw__log(MW_LOG_INFO, __VA_ARGS__)
#define mw_warn(...)  mw__log(MW_LOG_WARN, __VA_ARGS__)
#define mw_error(...) mw__log(MW_LOG_ERROR, __VA_ARGS__)

/* Allocation that cannot fail: on exhaustion it logs and aborts, so error
 * paths in the core are about I/O and protocol, never about NULL. */
void *mw__xmalloc(size_t n);
void *mw__xrealloc(void *p, size_t n);
void *mw__xcalloc(size_t n, size_t size);

#endif
