/*
 * pg_listen: cross-instance notifications on PostgreSQL (the listener of
 * store_listen.h, and the statement the PostgreSQL writer sends inside its
 * transaction). Private to server/store; libpq-fe.h stays in the .c files.
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

/* Whether path is a libpq connection URI (postgresql:// or postgres://). */
bool pg_listen_is_uri(const char *path);
store_listener *pg_listen_start(const char *uri, const char *instance_id,
                                store_runs_changed_fn *fn, void *ctx,
                                char *err, size_t errlen);
void pg_listen_stop(store_listener *l);
/*
 * The statement that sends the notifications, its one parameter the text[]
 * literal of pg_listen_payloads. Sent in the batch's transaction (in the
 * pipeline before COMMIT), so the notifications are delivered when it
 * commits and never when it does not. It returns one row per payload.
 */
#define PG_LISTEN_NOTIFY_SQL \
    "SELECT pg_notify('" NS_PG_CHANNEL "', p) FROM unnest($1::text[]) AS p"
/*
 * The payloads naming every run b touches (its rows' and its deletes'),
 * signed with b->notify_id, as a text[] literal: 0 with *literal malloc'd
 * (the caller frees it), or NULL when there is nothing to tell (no
 * notify_id, or no run touched); -1 with err set when out of memory.
 */
int pg_listen_payloads(const store_batch *b, char **literal, char *err, size_t errlen);

#endif
