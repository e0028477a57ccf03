/*
 * store_ops: how store.c reaches a backend. store.h's functions are the
 * engine's API whatever holds the table; each backend (sqlite_*.c, pg_*.c)
 * fills one store_ops with its own functions over its own connection types,
 * and store.c picks the table from the database path at open. Nothing
 * outside server/store includes this header, and it names no third-party
 * type, so either backend's private header may include it.
 */
#ifndef NODESTATE_STORE_OPS_H
#define NODESTATE_STORE_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

typedef struct store_ops {
    const char *name;           /* "sqlite", "postgresql": for messages */
    /* The write connection (see store.h for what each one promises). */
    void *(*open)(const char *path, bool sync_full, char *err, size_t errlen);
    void (*close)(void *s);
    int64_t (*last_seq)(const void *s);
    int (*write)(void *s, store_batch *b);
    /* store_replay of the sidecar at spill_path. */
    int (*replay)(void *s, const char *spill_path, const char *notify_id,
                  store_replayed *out, char *err, size_t errlen);
    const char *(*errmsg)(const void *s);
    int (*meta_get)(void *s, const char *key, int64_t *value);
    int (*meta_set)(void *s, const char *key, int64_t value);
    /* The read-through connection; it locks itself. */
    void *(*reader_open)(const char *path, char *err, size_t errlen);
    void (*reader_close)(void *r);
    int (*load_run)(void *r, const char *run_id, bool light,
                    int (*fn)(void *ctx, ns_row *row), void *ctx,
                    size_t *skipped);
    int (*load_node)(void *r, const char *run_id, const char *node_id,
                     ns_row **out, bool *run_has_rows);
    int (*load_page)(void *r, const char *run_id, const char *after,
                     unsigned status_mask, size_t want,
                     int (*fn)(void *ctx, ns_row *row), void *ctx,
                     store_page *page);
    int (*deleted_seq)(void *r, const char *run_id, int64_t *seq);
    /*
     * store_reader_seq_block; NULL for a store that one process owns (its
     * own counter is the only one, so it needs no blocks).
     */
    int (*seq_block)(void *r, int64_t above, int64_t want, int64_t *first,
                     int64_t *last);
    /* store_expired_runs; NULL when the backend has no retention sweep. */
    int (*expired_runs)(void *s, int64_t cutoff_ms, size_t max_rows,
                        store_expiry_cursor *c,
                        int (*fn)(void *ctx, const char *run_id, int64_t max_seq),
                        void *ctx);
    /* store_on_checkpoint and store_wal_frames; NULL when there is no WAL. */
    void (*on_checkpoint)(void *s, store_ckpt_fn fn, void *ctx);
    int64_t (*wal_frames)(const void *s);
    /* store_probe; NULL when a store cannot be locked out by another process. */
    int (*probe)(void *s);
    /* store_close_by; NULL when closing has nothing to bound. */
    void (*close_by)(void *s, int64_t deadline_ns);
} store_ops;

/*
 * The live content of a sidecar (sqlite_spill.c), for a backend that is not
 * SQLite to replay: the runs deleted, the newest live row of each node (in
 * (run_id, node_id) order), the highest seq, and what store_replay reports.
 */
typedef struct store_spill_content {
    char **deletes;
    int64_t *delete_seqs;   /* per delete: its seq (a lower bound from earlier builds) */
    size_t n_deletes;
    ns_row **rows;
    size_t n_rows;
    int64_t last_seq;
    store_replayed info;
} store_spill_content;
/*
 * Reads the sidecar at spill_path without changing it (a torn piece is
 * rolled back, and said so in info.torn). 0 (all empty when there is no
 * sidecar), or -1 with err set.
 */
int store_spill_read(const char *spill_path, store_spill_content *out,
                     char *err, size_t errlen);
void store_spill_content_free(store_spill_content *c);
/* Removes a replayed sidecar and its journal. 0, or -1 with err set. */
int store_spill_remove(const char *spill_path, char *err, size_t errlen);

/* store_backup_open and store_backup_sweep of an SQLite file (sqlite_backup.c). */
store_backup_result sqlite_backup_open(const char *db_path, store_backup **out,
                                       char *err, size_t errlen);
int sqlite_backup_sweep(const char *db_path, size_t *removed, char *err,
                        size_t errlen);

/* The backends; each defined in its own files. */
extern const store_ops store_sqlite_ops;
extern const store_ops store_pg_ops;

#endif
