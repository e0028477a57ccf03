/*
 * store: the engine's store API (store.h) over whichever backend the
 * database path names: a libpq URI (postgresql:// or postgres://) is the
 * PostgreSQL store (pg_*.c), anything else an SQLite file (sqlite_*.c).
 * Each call goes to the backend's store_ops; the sidecar path (a local
 * SQLite file for both) is kept here, since replay needs it whatever the
 * backend.
 */
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_ops.h"

struct store {
    const store_ops *ops;
    void *impl;
    char *spill;                /* the sidecar store_replay applies */
};

struct store_reader {
    const store_ops *ops;
    void *impl;
};

bool store_is_pg(const char *path)
{
    return path != NULL && (strncmp(path, "postgresql://", 13) == 0 ||
                            strncmp(path, "postgres://", 11) == 0);
}

static const store_ops *store_ops_for(const char *path)
{
    return store_is_pg(path) ? &store_pg_ops : &store_sqlite_ops;
}

void store_default_spill_path(const char *db_path, char *out, size_t outlen)
{
    if (store_is_pg(db_path)) {
        if (outlen > 0)
            snprintf(out, outlen, "%s", STORE_PG_SPILL_DEFAULT);
    } else {
        store_spill_path(db_path, out, outlen);
    }
}

store *store_open(const char *path, bool sync_full, char *err, size_t errlen)
{
    char spill[4200];
    store *s = calloc(1, sizeof *s);
    if (s == NULL) {
        snprintf(err, errlen, "%s: out of memory", path ? path : "(none)");
        return NULL;
    }
    s->ops = store_ops_for(path);
    store_default_spill_path(path, spill, sizeof spill);
    if ((s->spill = strdup(spill)) == NULL) {
        snprintf(err, errlen, "%s: out of memory", path ? path : "(none)");
        goto err;
    }
    s->impl = s->ops->open(path, sync_full, err, errlen);
    if (s->impl == NULL)
        goto err;
    return s;
err:
    free(s->spill);
    free(s);
    return NULL;
}

void store_close(store *s)
{
    if (s == NULL)
        return;
    s->ops->close(s->impl);
    free(s->spill);
    free(s);
}

int store_set_spill_file(store *s, const char *spill_path)
{
    char *copy = strdup(spill_path);
    if (copy == NULL)
        return -1;
    free(s->spill);
    s->spill = copy;
    return 0;
}

const char *store_spill_file(const store *s)
{
    return s->spill;
}

bool store_shared(const store *s)
{
    return s->ops->seq_block != NULL;
}

void store_on_checkpoint(store *s, store_ckpt_fn fn, void *ctx)
{
    if (s->ops->on_checkpoint != NULL)
        s->ops->on_checkpoint(s->impl, fn, ctx);
}

int store_probe(store *s)
{
    return s->ops->probe != NULL ? s->ops->probe(s->impl) : 0;
}

void store_close_by(store *s, int64_t deadline_ns)
{
    if (s->ops->close_by != NULL)
        s->ops->close_by(s->impl, deadline_ns);
}

int64_t store_wal_frames(const store *s)
{
    return s->ops->wal_frames != NULL ? s->ops->wal_frames(s->impl) : 0;
}

int64_t store_last_seq(const store *s)
{
    return s->ops->last_seq(s->impl);
}

int store_write(store *s, store_batch *b)
{
    return s->ops->write(s->impl, b);
}

int store_replay(store *s, const char *notify_id, store_replayed *out, char *err,
                 size_t errlen)
{
    return s->ops->replay(s->impl, s->spill, notify_id, out, err, errlen);
}

const char *store_errmsg(const store *s)
{
    return s->ops->errmsg(s->impl);
}

int store_meta_get(store *s, const char *key, int64_t *value)
{
    return s->ops->meta_get(s->impl, key, value);
}

int store_meta_set(store *s, const char *key, int64_t value)
{
    return s->ops->meta_set(s->impl, key, value);
}

store_reader *store_reader_open(const char *path, char *err, size_t errlen)
{
    store_reader *r = calloc(1, sizeof *r);
    if (r == NULL) {
        snprintf(err, errlen, "%s: out of memory", path ? path : "(none)");
        return NULL;
    }
    r->ops = store_ops_for(path);
    r->impl = r->ops->reader_open(path, err, errlen);
    if (r->impl == NULL) {
        free(r);
        return NULL;
    }
    return r;
}

void store_reader_close(store_reader *r)
{
    if (r == NULL)
        return;
    r->ops->reader_close(r->impl);
    free(r);
}

int store_reader_load_run(store_reader *r, const char *run_id, bool light,
                          int (*fn)(void *ctx, ns_row *row), void *ctx,
                          size_t *skipped)
{
    return r->ops->load_run(r->impl, run_id, light, fn, ctx, skipped);
}

int store_reader_load_node(store_reader *r, const char *run_id,
                           const char *node_id, ns_row **out,
                           bool *run_has_rows)
{
    return r->ops->load_node(r->impl, run_id, node_id, out, run_has_rows);
}

int store_reader_deleted_seq(store_reader *r, const char *run_id, int64_t *seq)
{
    return r->ops->deleted_seq(r->impl, run_id, seq);
}

int store_reader_load_page(store_reader *r, const char *run_id,
                           const char *after, unsigned status_mask,
                           size_t want, int (*fn)(void *ctx, ns_row *row),
                           void *ctx, store_page *page)
{
    return r->ops->load_page(r->impl, run_id, after, status_mask, want, fn,
                             ctx, page);
}

int store_reader_seq_block(store_reader *r, int64_t above, int64_t want,
                           int64_t *first, int64_t *last)
{
    if (r->ops->seq_block == NULL)
        return 1;
    return r->ops->seq_block(r->impl, above, want, first, last);
}

bool store_can_expire(const store *s)
{
    return s->ops->expired_runs != NULL;
}

int store_expired_runs(store *s, int64_t cutoff_ms, size_t max_rows,
                       store_expiry_cursor *cursor,
                       int (*fn)(void *ctx, const char *run_id, int64_t max_seq), void *ctx)
{
    if (s->ops->expired_runs == NULL)
        return -1; /* engine_open refuses retention first (store_can_expire) */
    return s->ops->expired_runs(s->impl, cutoff_ms, max_rows, cursor, fn, ctx);
}

/*
 * SQLite's online backup copies a file; a PostgreSQL database has its own
 * tools, which also see every instance's writes.
 */
store_backup_result store_backup_open(const char *db_path, store_backup **out,
                                      char *err, size_t errlen)
{
    *out = NULL;
    if (store_is_pg(db_path)) {
        snprintf(err, errlen, "the PostgreSQL store is backed up with pg_dump "
                 "(and restored with pg_restore or psql), not over HTTP");
        return STORE_BACKUP_UNSUPPORTED;
    }
    return sqlite_backup_open(db_path, out, err, errlen);
}

int store_backup_sweep(const char *db_path, size_t *removed, char *err,
                       size_t errlen)
{
    *removed = 0;
    if (store_is_pg(db_path))
        return 0; /* no backup copies are made of it */
    return sqlite_backup_sweep(db_path, removed, err, errlen);
}
