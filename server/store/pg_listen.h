/*
 * pg_listen: cross-instance notifications on PostgreSQL (the listener of
 * store_listen.h, and the sending side the PostgreSQL writer calls inside
 * its transaction). Private to server/store; libpq's types stay behind the
 * struct tag, so libpq-fe.h is included by pg_*.c files only.
 *
 * Channel NS_PG_CHANNEL; each payload is "<instance_id> <run_id> <run_id>
 * ...", ids separated by one space (ids never hold one), cut into several
 * notifications below PostgreSQL's 8000-byte payload limit.
 */
#ifndef NODESTATE_PG_LISTEN_H
#define NODESTATE_PG_LISTEN_H

#include <stdbool.h>
#include <stddef.h>

#include "store.h"
#include "store_listen.h"

#define NS_PG_CHANNEL "nodestate_runs"

struct pg_conn; /* libpq's PGconn */

/* Whether path is a libpq connection URI (postgresql:// or postgres://). */
bool pg_listen_is_uri(const char *path);
store_listener *pg_listen_start(const char *uri, const char *instance_id,
                                store_runs_changed_fn *fn, void *ctx,
                                char *err, size_t errlen);
void pg_listen_stop(store_listener *l);
/*
 * The statements that end b's transaction on conn: the notifications naming
 * every run b touches (its rows' and its deletes'), signed with
 * b->notify_id (none when it is NULL or the batch touches no run), then
 * COMMIT, as one text for one round trip (PQexec). The notifications are
 * delivered when the transaction commits, and never if it does not.
 * 0 with *sql malloc'd (the caller frees it), or -1 with err set.
 */
int pg_listen_commit_sql(struct pg_conn *conn, const store_batch *b, char **sql,
                         char *err, size_t errlen);

#endif
