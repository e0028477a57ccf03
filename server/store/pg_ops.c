/*
 * pg_ops: the PostgreSQL backend's store_ops, each entry a thin adapter
 * from store.c's untyped connection to the pg_*.c function.
 */
#include "pg_internal.h"

static void *ops_open(const char *path, bool sync_full, char *err, size_t errlen)
{
    return pg_store_open(path, sync_full, err, errlen);
}

static void ops_close(void *s)
{
    pg_store_close(s);
}

static int64_t ops_last_seq(const void *s)
{
    return pg_store_last_seq(s);
}

static int ops_write(void *s, store_batch *b)
{
    return pg_store_write(s, b);
}

static int ops_replay(void *s, const char *spill_path, store_replayed *out,
                      char *err, size_t errlen)
{
    return pg_store_replay(s, spill_path, out, err, errlen);
}

static const char *ops_errmsg(const void *s)
{
    return pg_store_errmsg(s);
}

static int ops_meta_get(void *s, const char *key, int64_t *value)
{
    return pg_store_meta_get(s, key, value);
}

static int ops_meta_set(void *s, const char *key, int64_t value)
{
    return pg_store_meta_set(s, key, value);
}

static void *ops_reader_open(const char *path, char *err, size_t errlen)
{
    return pg_reader_open(path, err, errlen);
}

static void ops_reader_close(void *r)
{
    pg_reader_close(r);
}

static int ops_load_run(void *r, const char *run_id,
                        int (*fn)(void *ctx, ns_row *row), void *ctx,
                        size_t *skipped)
{
    return pg_reader_load_run(r, run_id, fn, ctx, skipped);
}

static int ops_load_node(void *r, const char *run_id, const char *node_id,
                         ns_row **out, bool *run_has_rows)
{
    return pg_reader_load_node(r, run_id, node_id, out, run_has_rows);
}

static int ops_load_page(void *r, const char *run_id, const char *after,
                         unsigned status_mask, size_t want,
                         int (*fn)(void *ctx, ns_row *row), void *ctx,
                         store_page *page)
{
    return pg_reader_load_page(r, run_id, after, status_mask, want, fn, ctx,
                               page);
}

static int ops_seq_block(void *r, int64_t above, int64_t want, int64_t *first,
                         int64_t *last)
{
    return pg_reader_seq_block(r, above, want, first, last);
}

static int ops_expired_runs(void *s, int64_t cutoff_ms, size_t max_rows,
                            store_expiry_cursor *c,
                            int (*fn)(void *ctx, const char *run_id), void *ctx)
{
    return pg_store_expired_runs(s, cutoff_ms, max_rows, c, fn, ctx);
}

const store_ops store_pg_ops = {
    .name = "postgresql",
    .open = ops_open,
    .close = ops_close,
    .last_seq = ops_last_seq,
    .write = ops_write,
    .replay = ops_replay,
    .errmsg = ops_errmsg,
    .meta_get = ops_meta_get,
    .meta_set = ops_meta_set,
    .reader_open = ops_reader_open,
    .reader_close = ops_reader_close,
    .load_run = ops_load_run,
    .load_node = ops_load_node,
    .load_page = ops_load_page,
    .seq_block = ops_seq_block,
    .expired_runs = ops_expired_runs,
};
