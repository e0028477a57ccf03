/*
 * store_listen: the listener, chosen by the store's path; only the
 * PostgreSQL store (pg_listen.c) has one.
 */
#include "store_listen.h"

#include <stdio.h>

#include "pg_listen.h"

bool store_listen_shared(const char *path)
{
    return pg_listen_is_uri(path);
}

store_listener *store_listen_start(const char *path, const char *instance_id,
                                   store_runs_changed_fn *fn, void *ctx,
                                   char *err, size_t errlen)
{
    if (errlen)
        err[0] = '\0';
    if (!store_listen_shared(path))
        return NULL;
    return pg_listen_start(path, instance_id, fn, ctx, err, errlen);
}

void store_listen_stop(store_listener *l)
{
    pg_listen_stop(l);
}
