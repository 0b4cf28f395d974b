/* inotify directory watch with debounce (see watch.h). */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "log.h"
#include "watch.h"

#define WATCH_MASK \
    (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_DELETE_SELF)

static int skip_dir(const char *name)
{
    return name[0] == '.' || strcmp(name, "node_modules") == 0 || strcmp(name, "lua_modules") == 0;
}

/* Adds dir and, up to a few levels down, its subdirectories. */
static void add_tree(mw_watch_t *wt, const char *dir, int depth)
{
    if (inotify_add_watch(wt->fd, dir, WATCH_MASK) < 0) {
        mw_warn("--watch: cannot watch %s: %s", dir, strerror(errno));
        return;
    }
    if (depth >= 8)
        return;
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_type != DT_DIR || skip_dir(e->d_name))
            continue;
        char sub[4096];
        if ((size_t)snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name) < sizeof sub)
            add_tree(wt, sub, depth + 1);
    }
    closedir(d);
}

static int is_lua(const char *name, size_t len)
{
    return len > 4 && memcmp(name + len - 4, ".lua", 4) == 0;
}

static void fire(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    mw_watch_t *wt = (mw_watch_t *)((char *)t - offsetof(mw_watch_t, debounce));
    wt->cb(wt->ud);
}

static void on_events(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)revents;
    mw_watch_t *wt = (mw_watch_t *)((char *)io - offsetof(mw_watch_t, io));
    _Alignas(struct inotify_event) char buf[8192];
    int changed = 0;
    for (;;) {
        ssize_t n = read(wt->fd, buf, sizeof buf);
        if (n <= 0)
            break;
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)(void *)p;
            size_t len = ev->len ? strlen(ev->name) : 0;
            if ((ev->mask & IN_ISDIR) && (ev->mask & (IN_CREATE | IN_MOVED_TO)) && len &&
                !skip_dir(ev->name)) {
                /* A new subdirectory: its modules count too. The watch
                 * descriptor tells nothing of the path, so rescan. */
                add_tree(wt, wt->root, 0);
            }
            if (len && is_lua(ev->name, len))
                changed = 1;
            p += sizeof *ev + ev->len;
        }
    }
    if (changed) {
        ev_timer_stop(loop, &wt->debounce);
        ev_timer_set(&wt->debounce, MW_WATCH_DEBOUNCE, 0.);
        ev_timer_start(loop, &wt->debounce);
    }
}

int mw__watch_start(mw_watch_t *wt, struct ev_loop *loop, const char *dir, void (*cb)(void *ud),
                    void *ud, char *err, size_t errlen)
{
    memset(wt, 0, sizeof *wt);
    wt->loop = loop;
    wt->cb = cb;
    wt->ud = ud;
    snprintf(wt->root, sizeof wt->root, "%s", dir);
    wt->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (wt->fd < 0) {
        snprintf(err, errlen, "--watch: inotify: %s", strerror(errno));
        return -1;
    }
    if (inotify_add_watch(wt->fd, dir, WATCH_MASK) < 0) {
        snprintf(err, errlen, "--watch: cannot watch %s: %s", dir, strerror(errno));
        close(wt->fd);
        wt->fd = -1;
        return -1;
    }
    add_tree(wt, dir, 0);
    ev_io_init(&wt->io, on_events, wt->fd, EV_READ);
    ev_io_start(loop, &wt->io);
    ev_timer_init(&wt->debounce, fire, MW_WATCH_DEBOUNCE, 0.);
    return 0;
}

void mw__watch_stop(mw_watch_t *wt)
{
    if (wt->fd < 0)
        return;
    ev_io_stop(wt->loop, &wt->io);
    ev_timer_stop(wt->loop, &wt->debounce);
    close(wt->fd);
    wt->fd = -1;
}
