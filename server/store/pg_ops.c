/*
 * pg_ops: the PostgreSQL backend's store_ops, its entries the adapters of
 * store_adapt.h over the pg_*.c functions, plus the seq blocks that a store
 * several instances share needs.
 */
#include "pg_internal.h"

#include "store_adapt.h"

STORE_ADAPTERS(pg)

static int ops_seq_block(void *r, int64_t above, int64_t want, int64_t *first,
                         int64_t *last)
{
    return pg_reader_seq_block(r, above, want, first, last);
}

const store_ops store_pg_ops = {
    .name = "postgresql",
    STORE_ADAPTED_OPS,
    .seq_block = ops_seq_block,
};
