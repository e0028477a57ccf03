/*
 * sqlite_ops: the SQLite backend's store_ops, its entries the adapters of
 * store_adapt.h over the sqlite_*.c functions.
 */
#include "sqlite_internal.h"

#include "store_adapt.h"

STORE_ADAPTERS(sqlite)

static void sqlite_on_checkpoint(void *s, store_ckpt_fn fn, void *ctx)
{
    store_ckpt_listen(((sqlite_store *)s)->ckpt, fn, ctx);
}

static int64_t sqlite_wal_frames(const void *s)
{
    return store_ckpt_wal_frames(((const sqlite_store *)s)->ckpt);
}

static int sqlite_probe(void *s)
{
    return sqlite_store_probe(s);
}

static void sqlite_close_by(void *s, int64_t deadline_ns)
{
    sqlite_store_close_by(s, deadline_ns);
}

const store_ops store_sqlite_ops = {
    .name = "sqlite",
    STORE_ADAPTED_OPS,
    .seq_block = NULL, /* one process per file (dblock): its counter is the only one */
    .on_checkpoint = sqlite_on_checkpoint,
    .wal_frames = sqlite_wal_frames,
    .close_by = sqlite_close_by,
    .probe = sqlite_probe,
};
