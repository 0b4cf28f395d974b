/* Watching an app's directory for edits (--watch), with inotify.
 *
 * Every change to a .lua file below the directory (written, created,
 * moved in or out, deleted) restarts a short debounce timer; when it fires
 * the callback runs once, so an editor's save (often a write to a temporary
 * file and a rename) is one reload, not several. */
#ifndef MW_WATCH_H
#define MW_WATCH_H

#include <ev.h>

typedef struct mw_watch {
    struct ev_loop *loop;
    int fd; /* the inotify instance */
    ev_io io;
    ev_timer debounce;
    void (*cb)(void *ud);
    void *ud;
    char root[4096];
} mw_watch_t;

/* The quiet time after the last change before the callback runs. */
#define MW_WATCH_DEBOUNCE 0.15

/* Watches dir and its subdirectories (except hidden ones, node_modules and
 * lua_modules, where installed rocks live). Returns 0, or -1 with a
 * message in err. */
int mw__watch_start(mw_watch_t *wt, struct ev_loop *loop, const char *dir, void (*cb)(void *ud),
                    void *ud, char *err, size_t errlen);
void mw__watch_stop(mw_watch_t *wt);

#endif
