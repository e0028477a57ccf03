/*
 * sqlite_ops: the SQLite backend's store_ops, its entries the adapters of
 * store_adapt.h over the sqlite_*.c functions.
 */
#include "sqlite_internal.h"

#include "store_adapt.h"

STORE_ADAPTERS(sqlite)

const store_ops store_sqlite_ops = {
    .name = "sqlite",
    STORE_ADAPTED_OPS,
    .seq_block = NULL, /* one process per file (dblock): its counter is the only one */
};
