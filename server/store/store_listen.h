/*
 * store_listen: how an instance learns that other instances sharing its
 * store committed to runs. Several nodestate instances may share one
 * PostgreSQL database; each commit of a writer there carries a notification
 * naming the runs it touched and the instance that wrote them (sent in the
 * same transaction, so it is delivered only if the commit is), and a
 * listener connection of every instance hears the others'. An SQLite file
 * has one writer (dblock), so there is nothing to hear there.
 */
#ifndef NODESTATE_STORE_LISTEN_H
#define NODESTATE_STORE_LISTEN_H

#include <stdbool.h>
#include <stddef.h>

typedef struct store_listener store_listener;

/*
 * Called on the listener's own thread with runs another instance committed
 * to (run_ids NULL: any run may have changed, because notifications may
 * have been missed while the listener was reconnecting).
 */
typedef void store_runs_changed_fn(void *ctx, const char *const *run_ids, size_t n);

/* Longest instance id store_listen_start and store_batch.notify_id take. */
#define STORE_INSTANCE_ID_MAX 64

/* Whether the store at path may be shared with other instances (PostgreSQL). */
bool store_listen_shared(const char *path);
/*
 * Starts listening to the store at path for commits of instances other than
 * instance_id (1..STORE_INSTANCE_ID_MAX bytes of [A-Za-z0-9._-]), calling fn
 * for each. It reconnects by itself when the connection is lost (calling fn
 * with NULL once reconnected). Returns NULL with err set on failure, and
 * NULL with err "" for a store that is not shared (nothing to hear).
 */
store_listener *store_listen_start(const char *path, const char *instance_id,
                                   store_runs_changed_fn *fn, void *ctx,
                                   char *err, size_t errlen);
/* Stops the thread (no call of fn after it returns) and frees l. NULL is a no-op. */
void store_listen_stop(store_listener *l);

#endif
