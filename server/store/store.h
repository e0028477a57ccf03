/*
 * store: where node states are kept, behind one API whatever the backend.
 * The database path picks it at store_open / store_reader_open: a libpq
 * URI (postgresql://... or postgres://...) is a PostgreSQL database that
 * several instances may share (pg_*.c, the only files that include
 * libpq-fe.h); anything else is an SQLite file one process owns (sqlite_*.c,
 * the only files that include sqlite3.h). store.c dispatches through a
 * small ops table (store_ops.h). Both keep the same table and contract; the
 * PostgreSQL specifics are at the end of this header.
 *
 * Two kinds of connection. A `store` is the one write connection; it belongs to
 * the writer thread and is never shared. A `store_reader` is a separate
 * read-only connection used to read through on a cache miss; any thread may
 * call it (it serialises callers with its own mutex). WAL lets the reader run
 * beside the writer.
 *
 * Fault injection (builds with NODESTATE_FAULTS defined only, i.e. the
 * nodestate-faults test binary): the environment variable NODESTATE_FAULTS,
 * read at store_open, makes writes fail on purpose, e.g.
 *   "commit=busy:3"   the next 3 store_write calls fail with SQLITE_BUSY
 *   "commit=ioerr:2"  ... with SQLITE_IOERR; "commit=full:1" with SQLITE_FULL
 *   "after=5"         faults start after 5 successful writes
 *   "row=NODE_ID"     every upsert of that node fails as unwritable
 *   "checkpoint=2"    the first 2 WAL checkpoint rounds fail (SQLITE_IOERR)
 * (comma-separated). Without NODESTATE_FAULTS defined there is no such code.
 *
 * Schema (PRAGMA user_version = 2):
 *   run_node_state(run_id, node_id, status, attempt, scheduled_at, started_at,
 *                  completed_at, failed_at, suspended_at, last_error, retryable,
 *                  suspension_reason, resume_state_json, outputs_json,
 *                  updated_at, seq), PRIMARY KEY (run_id, node_id), no
 *                  other index (every read filters by a prefix of the key);
 *                  rows in the order they were first written (a rowid
 *                  table; files made before 2026-12-07 are WITHOUT ROWID,
 *                  in key order, and work alike); timestamps are RFC 3339
 *                  text.
 *   nodestate_meta(key PRIMARY KEY, value): 'last_seq' survives deleted runs,
 *                  so seq keeps growing across restarts; other keys are the
 *                  caller's (store_meta_get / store_meta_set).
 *   run_deletes(run_id PRIMARY KEY, seq, deleted_at): the newest delete of
 *                  each run (its seq; deleted_at in Unix milliseconds),
 *                  written in the delete's transaction, so that a watcher
 *                  resuming from a seq below it learns of the delete even
 *                  after the run was written anew (store_reader_deleted_seq).
 *                  A batch with deletes forgets the records older than
 *                  store_batch.forget_deletes_before_ms (by an index on
 *                  deleted_at). Created at open where missing, with no
 *                  change of version: builds that do not know it leave it
 *                  alone.
 *
 * A version-1 file (which had an index on (run_id, status)) is migrated by
 * dropping that index; its rows are not touched. A file of a newer version
 * is refused, unchanged.
 *
 * A version-0 file (the original design's table, no user_version) is
 * migrated in one transaction at store_open: missing columns are added and
 * every timestamp is rewritten to our RFC 3339 UTC millisecond form, from
 * RFC 3339 or from SQLite's own date forms ("2026-11-26 16:27:29", UTC).
 * Rows without a positive seq (the old design had none) are numbered in
 * (run_id, node_id) order above the highest seq already there, and last_seq
 * is set to the highest. The migration is refused, leaving the file
 * untouched, when a status is NULL or unknown, attempt is not a whole number
 * >= 1, resume_state_json or outputs_json is neither NULL nor valid JSON,
 * updated_at is NULL, or a timestamp cannot be converted; the message names
 * the column and shows a value and the row's key. It ends at version 2.
 */
#ifndef NODESTATE_STORE_H
#define NODESTATE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h> /* ssize_t */

#include "model.h"

typedef struct store store;
typedef struct store_reader store_reader;

/* One transaction's worth of work, prepared by the writer. */
typedef struct store_batch {
    const char *const *delete_runs; /* runs to forget, applied first */
    const int64_t *delete_seqs;     /* per delete: its seq (run_deletes); NULL: not recorded */
    size_t n_deletes;
    /* > 0: the delete records (run_deletes) older than this (Unix ms) go, in this transaction. */
    int64_t forget_deletes_before_ms;
    ns_row *const *rows;            /* upserts, sorted by (run_id, node_id) */
    size_t n_rows;
    /*
     * NULL, or per row: written with force: true (or coalesced with such an
     * update), so a shared store judges it by seq alone (on_superseded).
     */
    const bool *forced;
    int64_t last_seq;               /* recorded in nodestate_meta */
    /*
     * Called for each row that can never be written (SQLite refuses that
     * row itself: constraint, too big, mismatch; not busy, I/O or full).
     * Such a row is left out and the rest of the batch still commits.
     * May be NULL. Output: how many rows were left out.
     */
    void (*on_isolated)(void *ctx, const ns_row *row, const char *why);
    void *isolated_ctx;
    size_t n_isolated;
    /*
     * A shared store (PostgreSQL) is the final judge of the transition
     * rules: a row that the rules do not admit against the row stored (one
     * another instance wrote since this one read it) is not applied, and
     * reported here after the commit, with isolated_ctx. May be NULL.
     * Output: how many rows were refused so. SQLite never refuses.
     */
    void (*on_superseded)(void *ctx, const ns_row *row);
    size_t n_superseded;
    /*
     * The writing instance's id (store_listen.h): a shared store tells the
     * other instances listening to it which runs this batch touched, in the
     * same transaction. NULL: tell no one. SQLite has no one to tell.
     */
    const char *notify_id;
    /*
     * NULL, or per delete: queued by retention (store_expired_runs). A
     * shared store judges such a delete again in its transaction, after
     * locking the run's rows: another instance may have written the run
     * since this one found it expired, so the run goes only if every row
     * is still terminal and updated before expire_cutoff_ms; otherwise it
     * is kept whole and reported to on_expire_kept (with isolated_ctx)
     * after the commit. Output: how many it did not delete: kept, or gone
     * already (a DELETE /runs/{id} committed since the sweep found the
     * run; PostgreSQL reports those to on_expire_kept too). SQLite (one
     * process, whose engine has judged them) keeps none, and counts the
     * gone ones without a report.
     */
    const bool *expiring;
    int64_t expire_cutoff_ms;
    void (*on_expire_kept)(void *ctx, const char *run_id, int64_t seq); /* seq: delete_seqs' (0: none) */
    size_t n_expire_kept;
} store_batch;

/*
 * Opens (creating if needed) the database for writing: WAL, synchronous
 * NORMAL or FULL, schema, prepared statements. On error returns NULL and
 * writes a message that names the path into err.
 */
store *store_open(const char *path, bool sync_full, char *err, size_t errlen);
void store_close(store *s);
/* The highest seq ever committed to this file; 0 for a new one. */
int64_t store_last_seq(const store *s);
/*
 * Writes a batch in ONE transaction of prepared statements. Returns 0 once
 * committed (rows isolated as described at store_batch excepted); on failure
 * rolls back (nothing of the batch is written) and returns -1, with
 * store_errmsg telling why.
 */
int store_write(store *s, store_batch *b);

/*
 * The sidecar next to the database ("<path>.spill"), an SQLite file holding
 * writes that could not reach the database before shutdown: a log of rows
 * in seq order and the runs deleted. It is written in pieces:
 * store_spill_append commits one batch, deletes included, as its own
 * transaction (rollback journal, synchronous=FULL), so a process killed
 * while writing a piece loses that piece only: the next open rolls it back
 * from its journal and every piece committed before it stays. Pieces must
 * be appended in seq order; a delete voids the rows of its run appended
 * before its piece.
 *
 * store_spill_open opens (creating) the sidecar of db_path; NULL with a
 * message in err on failure. store_spill_append returns 0 once the piece is
 * committed, or -1 (nothing of it written) with a message in err; rows the
 * sidecar refuses for good are reported through b->on_isolated as by
 * store_write. store_spill is open, append, close in one call.
 */
typedef struct store_sidecar store_sidecar;
void store_spill_path(const char *db_path, char *out, size_t outlen);
store_sidecar *store_spill_open(const char *db_path, char *err, size_t errlen);
int store_spill_append(store_sidecar *sc, const store_batch *b, char *err,
                       size_t errlen);
void store_spill_close(store_sidecar *sc);
/* store_spill_open of the sidecar file spill_path itself. */
store_sidecar *store_spill_open_file(const char *spill_path, char *err,
                                     size_t errlen);
int store_spill(const char *db_path, const store_batch *b, char *err,
                size_t errlen);

/* What store_replay found and restored. */
typedef struct store_replayed {
    size_t pieces;      /* committed pieces restored */
    size_t rows;        /* rows they held (the newest per node) */
    size_t deletes;     /* runs they deleted */
    bool torn;          /* a piece cut short by the death of its writer was rolled back */
} store_replayed;
/*
 * Applies the sidecar of s's file, if there is one, in one transaction
 * (deletes first, then the newest live row of each node, last_seq raised)
 * and only then removes it. A sidecar of an earlier build (one row per node
 * in a table like the main one) replays too. notify_id (NULL: none) is the
 * replaying instance's, as store_batch.notify_id: a shared store tells the
 * other instances which runs the replay changed, so none keeps serving
 * what it cached of them before.
 * Returns 0 (all zero without a sidecar), or -1 with a message in err and
 * the sidecar left in place (say, the database is locked).
 */
int store_replay(store *s, const char *notify_id, store_replayed *out, char *err,
                 size_t errlen);
/* SQLite's message for the last failure of s. */
const char *store_errmsg(const store *s);

/*
 * An integer in nodestate_meta, read on the write connection (writer thread,
 * or before it starts). Returns 0 with *value set when key is there, 1 when
 * it is absent, -1 on a SQLite error or a stored value that is not an
 * integer (store_errmsg tells which).
 */
int store_meta_get(store *s, const char *key, int64_t *value);
/*
 * Sets key to value (replacing, not max()) in a transaction of its own, so
 * call it outside store_write and only from the writer thread or before it
 * starts. 'last_seq' is store_write's own and is refused. Returns 0 once
 * committed, -1 with store_errmsg set (nothing changed).
 */
int store_meta_set(store *s, const char *key, int64_t value);

/*
 * Where a sweep of store_expired_runs is, between pages: the last row
 * examined and what its run's rows said so far. All zero: the start of
 * the table.
 */
typedef struct store_expiry_cursor {
    char run_id[NS_ID_MAX + 1];
    char node_id[NS_ID_MAX + 1];
    bool expired_so_far;   /* every row of run_id examined is terminal and old */
    bool spans;            /* they were examined on an earlier page */
    int64_t max_seq;       /* the highest seq among them */
} store_expiry_cursor;
/*
 * Retention's candidates (sqlite_expire.c, pg_expire.c; judged in
 * store_expire.c), on the write connection (writer
 * thread only). Examines the next max_rows (>= 1) stored rows after the
 * cursor, in (run_id, node_id) order, and calls fn for each run whose rows
 * have all been examined and are all terminal (completed, failed) with
 * updated_at before cutoff_ms, with the highest seq among them (a shared
 * store's delete is numbered above it: engine.c run_seq_floor). A run
 * whose rows began on an earlier page is checked again whole first
 * (commits may have changed it in between). fn
 * returns 0 to go on, or -1 to stop: the run it was given is handed over
 * again by the next page. The cursor is left after the last row examined,
 * or zeroed once the end of the table is reached, so calling again walks
 * the whole table a page at a time and then starts over. A page costs
 * max_rows rows (and, for a run it carries over, that run's rows),
 * whatever the size of the table. Returns how many rows were examined, or
 * -1 with store_errmsg set. The disk's view only: the caller judges each
 * run again against what it has accepted and not yet written.
 */
int store_expired_runs(store *s, int64_t cutoff_ms, size_t max_rows,
                       store_expiry_cursor *cursor,
                       int (*fn)(void *ctx, const char *run_id, int64_t max_seq), void *ctx);
/* Whether s has store_expired_runs (both backends do). */
bool store_can_expire(const store *s);
/* The SQL of one page (?1 ?2 the cursor's key, ?3 max_rows), for tests of its plan. 0 or -1. */
int store_expired_sql(char *out, size_t outlen);
/* The same for the PostgreSQL store ($1 $2 $3). */
int store_pg_expired_sql(char *out, size_t outlen);

/* Opens a read-only connection to a file that store_open has set up. */
store_reader *store_reader_open(const char *path, char *err, size_t errlen);
void store_reader_close(store_reader *r);
/*
 * Calls fn once for every readable stored row of run_id, in node_id order.
 * Each row is packed with one reference that fn takes over. fn returns 0 to
 * go on or -1 to stop. A row this build cannot read (unknown status, NULL
 * node_id or updated_at, a timestamp that is not RFC 3339, resume_state_json
 * or outputs_json that is not valid JSON) is skipped rather than failing
 * the run forever: the others still load, and writing that node (or
 * deleting the run) through the API replaces the bad row.
 * *skipped (if not NULL) is set to how many rows were skipped, also when -1
 * is returned, so the caller can log them. Returns 0 when every readable row
 * was delivered, -1 on a SQLite error, out of memory, or when fn stopped.
 * light: rows for a run's counts only, their text and JSON members NULL
 * (the SQLite store does not read those values, so a run of big outputs
 * costs little more than its keys; PostgreSQL reads them anyway). Such a
 * row must never be cached or answered.
 */
int store_reader_load_run(store_reader *r, const char *run_id, bool light,
                          int (*fn)(void *ctx, ns_row *row), void *ctx,
                          size_t *skipped);
/*
 * Reads one stored node by primary key: *out gets it packed with one
 * reference (NULL when there is no such row), *run_has_rows whether the run
 * has any row at all (this one or another), so a caller knows a run with
 * none is empty without reading it whole. Returns 0, 1 when the row is
 * there but unreadable (as store_reader_load_run skips; *out stays NULL),
 * -1 on a SQLite error or out of memory.
 */
int store_reader_load_node(store_reader *r, const char *run_id,
                           const char *node_id, ns_row **out,
                           bool *run_has_rows);
/*
 * The seq of the newest committed delete of run_id into *seq (0: none on
 * record; run_deletes in the schema above). 0, or -1 on a database error.
 */
int store_reader_deleted_seq(store_reader *r, const char *run_id, int64_t *seq);

/* What store_reader_load_page found besides its rows. */
typedef struct store_page {
    bool more;          /* another matching row follows the last one handed over */
    bool run_has_rows;  /* the run has some row (matching or not) */
    size_t skipped;     /* unreadable rows passed over */
} store_page;
/*
 * Calls fn, as store_reader_load_run does, for at most `want` (>= 1) stored
 * rows of run_id in node_id order: those whose node_id sorts after `after`
 * (NULL: from the first) and whose status bit (1u << status) is in
 * status_mask. Costs the rows it steps over, not the run: one page of a
 * listing. fn returning 1 takes its row and ends the page there, as if
 * `want` were reached, so that a caller can bound the page in bytes.
 * Returns 0, or -1 on a database error, out of memory, or when fn failed
 * (returned -1).
 */
int store_reader_load_page(store_reader *r, const char *run_id,
                           const char *after, unsigned status_mask,
                           size_t want, int (*fn)(void *ctx, ns_row *row),
                           void *ctx, store_page *page);

/*
 * A consistent snapshot of the whole database, to be read as a stream of
 * bytes: a valid SQLite file that restores the service as of one commit.
 * store_backup_open takes it at once, on a read connection of its own
 * (never the write connection, which goes on committing: SQLite's online
 * backup in one read transaction), into a temporary file in the database's
 * directory, "<db>.backup-XXXXXX", that is unlinked before it returns; its
 * disk space (the database's size) is held until store_backup_close. A
 * process killed while the copy is being made leaves that file behind;
 * store_backup_sweep removes it.
 * Returns STORE_BACKUP_OK with *out set, STORE_BACKUP_UNSUPPORTED when this
 * store has no such backup (err says what to use instead), or
 * STORE_BACKUP_FAILED with a message in err. Any thread may call these; one
 * backup is used by one thread at a time.
 */
typedef struct store_backup store_backup;
typedef enum store_backup_result {
    STORE_BACKUP_OK,
    STORE_BACKUP_UNSUPPORTED,
    STORE_BACKUP_FAILED
} store_backup_result;
store_backup_result store_backup_open(const char *db_path, store_backup **out,
                                      char *err, size_t errlen);
/* The snapshot's length in bytes. */
uint64_t store_backup_size(const store_backup *b);
/* Up to n bytes from offset pos into buf: how many (0 at the end), -1 on an I/O error. */
ssize_t store_backup_read(store_backup *b, uint64_t pos, char *buf, size_t n);
/* Frees b and gives back its disk space. NULL is fine. */
void store_backup_close(store_backup *b);
/*
 * Removes the temporary files of backups that a killed process left next
 * to db_path ("<db>.backup-" and mkstemp's six characters). Only for the
 * process that holds the database (dblock.h), before it takes backups of
 * its own. *removed tells how many; 0, or -1 with a message in err when
 * the directory cannot be read or a file cannot be removed.
 */
int store_backup_sweep(const char *db_path, size_t *removed, char *err,
                       size_t errlen);
/* ---- backends and several instances ---- */

/* Where a PostgreSQL store's sidecar goes unless told (--spill-path). */
#define STORE_PG_SPILL_DEFAULT "nodestate-pg.spill"
/* Whether path is a libpq URI, i.e. names the PostgreSQL store. */
bool store_is_pg(const char *path);
/* The sidecar of db_path unless told otherwise: "<path>.spill" for SQLite. */
void store_default_spill_path(const char *db_path, char *out, size_t outlen);
/* Makes store_replay apply spill_path instead. 0, -1 out of memory. */
int store_set_spill_file(store *s, const char *spill_path);
/* The sidecar store_replay applies (and the writer should spill to). */
const char *store_spill_file(const store *s);
/*
 * Whether several processes may write the store at once (PostgreSQL): seq
 * then comes from blocks (store_reader_seq_block) rather than from the
 * process's own counter, and a row may be refused (on_superseded).
 */
bool store_shared(const store *s);
/*
 * Told of the SQLite WAL's checkpoints: after every round that failed
 * (error: why; failures: rounds failed since the store was opened) and
 * after the first that completed again (error NULL). Called on the
 * checkpoint thread, or on the writer's when a commit checkpoints itself
 * (inside store_write), never two at once; must not call into the store.
 */
typedef void (*store_ckpt_fn)(void *ctx, uint64_t failures, const char *error);
/* Sets the checkpoints' listener (NULL: none); a store without a WAL has none to tell. */
void store_on_checkpoint(store *s, store_ckpt_fn fn, void *ctx);
/* The WAL's length in frames after the last commit; 0 for a store without one. */
int64_t store_wal_frames(const store *s);
/*
 * Bounds what closing s still does (its writes before store_close included)
 * by deadline_ns (model_mono_ns): a WAL checkpoint that would run past it
 * is cut short there, and the WAL keeps the rest for the next start, which
 * reads it. Without this a close copies the whole WAL however long it is.
 * Any thread, also while the writer writes (the shutdown's start).
 */
void store_close_by(store *s, int64_t deadline_ns);
/*
 * Whether a write could begin now, tried with a short wait and undone at
 * once (the writer's thread, between writes): 0 yes, 1 another process
 * holds the write lock, -1 another error. A store nothing else can lock
 * says 0.
 */
int store_probe(store *s);
/*
 * Reserves a block of seqs for this process in a shared store: *first ..
 * *last, at least `want` of them, every one above `above` and above every
 * seq any instance reserved before, recorded in the store before it
 * returns (so no other instance, now or after a crash, gets them). Returns
 * 0, 1 when the store is not shared (nothing to reserve), -1 on error.
 */
int store_reader_seq_block(store_reader *r, int64_t above, int64_t want,
                           int64_t *first, int64_t *last);

#endif
