/* Reload triggers shared by SIGHUP, --watch and the admin listener. */
#ifndef MW_ADMIN_H
#define MW_ADMIN_H

#include "bind.h"

/* Reloads the app and logs the outcome (why names the trigger). Returns 0,
 * or -1 with the reason in err. */
int mw__app_reload(mw_lua_t *S, const char *why, char *err, size_t errlen);

/* Answers a request on the admin listener (mw__worker_listen_admin). */
void mw__admin_request_cb(void *ud, mw_conn_t *c, const mw_http_request_t *req);

#endif
