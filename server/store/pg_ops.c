/* placeholder, replaced by the PostgreSQL store */
#include "store_ops.h"
#include <stdio.h>
static void *ops_open(const char *path, bool sync_full, char *err, size_t errlen)
{
    snprintf(err, errlen, "%s: PostgreSQL is not supported yet", path);
    return NULL;
}
static void *ops_reader_open(const char *path, char *err, size_t errlen)
{
    return ops_open(path, false, err, errlen);
}
const store_ops store_pg_ops = { .name = "postgresql", .open = ops_open, .reader_open = ops_reader_open };
