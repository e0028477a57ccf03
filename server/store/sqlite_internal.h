/*
 * sqlite_internal: what the files of the SQLite store share, and nothing
 * outside server/store may include (it brings sqlite3.h): the column
 * positions and SQL pieces of NS_NODE_FIELDS, struct store, the fault hooks
 * (NODESTATE_FAULTS builds), and the helpers every connection uses. The
 * store is split by concern: sqlite_write.c (schema, open, the write
 * transaction, meta), sqlite_migrate.c (the version-0 migration),
 * sqlite_spill.c (spill and replay), sqlite_read.c (the reader),
 * sqlite_faults.c (fault injection), sqlite_common.c (errors, statements,
 * binding and upserting rows), sqlite_backup.c (the online backup),
 * sqlite_checkpoint.c (the writer's WAL checkpoints), sqlite_walbuf.c (the
 * writer's WAL writes, one per commit), sqlite_pcache.c (the page cache).
 */
#ifndef NODESTATE_SQLITE_INTERNAL_H
#define NODESTATE_SQLITE_INTERNAL_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "model.h"
#include "store.h"
#include "store_ops.h"

/* The schema this build writes and the newest one it can read. */
#define STORE_SCHEMA_VERSION 2
/*
 * The spill file's own version: its tables did not change when the main
 * file's index went away (version 2), so spill files of either build replay.
 */
#define STORE_SPILL_SCHEMA_VERSION 1
/*
 * The writer retries failed batches with its own backoff, so a lock held by
 * someone else must make a write fail fast rather than stall the writer.
 */
#define STORE_WRITE_BUSY_MS 100
/* store_probe's wait for the write lock: longer than another process's quick write. */
#define STORE_PROBE_BUSY_MS 50
/* A read-through may wait a little longer: it is rare and off the hot path. */
#define STORE_READ_BUSY_MS 1000
/* A spill is the last write before exit; waiting a moment beats losing it. */
#define STORE_SPILL_BUSY_MS 1000
/*
 * 32 MiB of page cache for the sidecar: a piece (SPILL_PIECE_BYTES in the
 * engine) and the pages it lands on stay in memory until its commit.
 */
#define STORE_SPILL_CACHE_SIZE "-32768"
/* 64 MiB of page cache (negative = KiB): the working set of hot runs. */
#define STORE_CACHE_SIZE "-65536"
/*
 * WAL frames not yet checkpointed from which the checkpoint thread is asked
 * for a round, and WAL frames from which the commit checkpoints itself
 * (sqlite_checkpoint.c). Fewer, larger checkpoints measured ~1.6x faster
 * on the batch path.
 */
#define STORE_WAL_SOFT_FRAMES 1000
#define STORE_WAL_HARD_FRAMES 10000
/* Room for "<operation>: <sqlite message>". */
#define STORE_ERRMSG_MAX 256
/* Room for a database path plus ".spill" or "-journal". */
#define STORE_PATH_MAX (PATH_MAX + 16)
/* The schema name the sidecar is attached under while it is replayed. */
#define STORE_SPILL_SCHEMA "spill"

/*
 * Parameter / result column positions shared by the upsert and the select:
 * COL_<name> for each field of NS_NODE_FIELDS, in its order.
 */
enum store_col {
#define STORE_COL_(name, member, json, column, kind) COL_##name,
    NS_NODE_FIELDS(STORE_COL_)
#undef STORE_COL_
    COL_COUNT,
    /*
     * The select's json_valid() of the json columns (NULL for NULL), one
     * each, in the list's order, after the row's columns.
     */
    COL_JSON_VALID_FIRST = COL_COUNT
};

/* Per kind of NS_NODE_FIELDS: whether it is a timestamp, or a json column. */
#define STORE_IS_TS_id 0
#define STORE_IS_TS_status 0
#define STORE_IS_TS_int 0
#define STORE_IS_TS_timestamp 1
#define STORE_IS_TS_text 0
#define STORE_IS_TS_bool 0
#define STORE_IS_TS_json 0
#define STORE_IS_JSON_id 0
#define STORE_IS_JSON_status 0
#define STORE_IS_JSON_int 0
#define STORE_IS_JSON_timestamp 0
#define STORE_IS_JSON_text 0
#define STORE_IS_JSON_bool 0
#define STORE_IS_JSON_json 1

/*
 * Per kind of NS_NODE_FIELDS: its column's SQL declaration (updated_at, the
 * timestamp that is never null, adds NOT NULL), and whether it is part of
 * the key (run_node_state's primary key, the upsert's conflict target).
 */
#define STORE_DECL_id "TEXT NOT NULL"
#define STORE_DECL_status "TEXT NOT NULL"
#define STORE_DECL_int "INTEGER NOT NULL"
#define STORE_DECL_timestamp "TEXT"
#define STORE_DECL_text "TEXT"
#define STORE_DECL_bool "INTEGER NOT NULL DEFAULT 0"
#define STORE_DECL_json "TEXT"
#define STORE_IS_KEY_id 1
#define STORE_IS_KEY_status 0
#define STORE_IS_KEY_int 0
#define STORE_IS_KEY_timestamp 0
#define STORE_IS_KEY_text 0
#define STORE_IS_KEY_bool 0
#define STORE_IS_KEY_json 0
/* Kinds whose values a run's counts never need: strings, often big ones. */
#define STORE_IS_BULK_id 0
#define STORE_IS_BULK_status 0
#define STORE_IS_BULK_int 0
#define STORE_IS_BULK_timestamp 0
#define STORE_IS_BULK_text 1
#define STORE_IS_BULK_bool 0
#define STORE_IS_BULK_json 1

/*
 * Tokens in the SQL texts of the sqlite_*.c files that store_exec and
 * store_prepare expand from NS_NODE_FIELDS (store_sql), so that no SQL
 * names the node's columns by hand:
 *   COLUMNS     every column, in the list's order, comma-separated
 *   PARAMS      ?1 .. ?N, one per column
 *   KEY         the key columns (kind id), comma-separated
 *   JSON_VALID  ", json_valid(col)" for every json column (a select's tail)
 *   LIGHT       COLUMNS and JSON_VALID for a select that reads no text or
 *               JSON value: "NULL AS col" for those columns, ", 0" for the tail
 *   SET         "col = excluded.col" for every column but the key
 *   DEFS        " col DECL," for every column (run_node_state's body)
 *   SPILL_DEFS  ", col DECL" for every column but seq (spill_log's body,
 *               after its own seq key)
 */
#define STORE_SQL_COLUMNS "@COLUMNS@"
#define STORE_SQL_PARAMS "@PARAMS@"
#define STORE_SQL_KEY "@KEY@"
#define STORE_SQL_SET "@SET@"
#define STORE_SQL_JSON_VALID "@JSON_VALID@"
#define STORE_SQL_LIGHT "@LIGHT@"
#define STORE_SQL_DEFS "@DEFS@"
#define STORE_SQL_SPILL_DEFS "@SPILL_DEFS@"
/* Room the expansions take beyond the template, for every statement. */
#define STORE_SQL_ROOM 8192

#define STORE_COLUMNS STORE_SQL_COLUMNS

/* Every column but the key takes the incoming row's value. */
#define STORE_UPSERT_SET                                                    \
    " ON CONFLICT (" STORE_SQL_KEY ") DO UPDATE SET" STORE_SQL_SET

/* The schema of a new database (sqlite_write.c), also run by the migration. */
extern const char store_schema_sql[];
/* last_seq = max(last_seq, ?1), on the database and on the sidecar. */
extern const char store_set_seq_sql[];

/* ---------------------------------------------------------------------
 * Fault injection: NODESTATE_FAULTS builds only (see store.h).
 *
 * Everything that makes a write fail on purpose lives in sqlite_faults.c. A
 * normal build defines the hooks below as empty macros, so it carries no
 * fault code at all. The hooks are:
 *   STORE_FAULTS_LOAD(s, msg, len)  parse the environment at open (0 / -1)
 *   STORE_FAULT_ROW(s, row)         true: refuse this upsert as unwritable
 *   STORE_FAULT_COMMIT(s)           -1 (errmsg set): fail this write
 *   STORE_FAULT_WROTE(s)            a write committed
 *   STORE_FAULTS_ARM_CKPT(s)        the checkpointer fails its first rounds
 * --------------------------------------------------------------------- */
#ifdef NODESTATE_FAULTS

/* How many row= entries one spec may name. */
#define STORE_FAULT_ROWS_MAX 8

typedef struct store_faults {
    int commit_rc;              /* SQLITE_BUSY / _IOERR / _FULL; 0 = none */
    long commit_left;           /* injected write failures still to come */
    long after;                 /* successful writes before faults start */
    long wrote;                 /* successful writes so far */
    long checkpoint_rounds;     /* checkpoint rounds to fail, from the first */
    size_t n_rows;
    char rows[STORE_FAULT_ROWS_MAX][NS_ID_MAX + 1]; /* node_ids refused */
} store_faults;

#define STORE_FAULTS_FIELD store_faults faults;

/* Parses NODESTATE_FAULTS into f; -1 with msg set when it cannot. */
int store_faults_load(store_faults *f, char *msg, size_t msglen);
/* Whether the upsert of node_id is to be refused. */
bool store_faults_row(const store_faults *f, const char *node_id);
/* -1 with errmsg set when this write is to fail; each one uses up one. */
int store_faults_commit(store_faults *f, char *errmsg, size_t len);

#define STORE_FAULTS_LOAD(s, msg, len) store_faults_load(&(s)->faults, msg, len)
#define STORE_FAULT_ROW(s, row)                                             \
    ((s) != NULL && store_faults_row(&(s)->faults, (row)->node_id))
#define STORE_FAULT_COMMIT(s)                                               \
    store_faults_commit(&(s)->faults, (s)->errmsg, sizeof (s)->errmsg)
#define STORE_FAULT_WROTE(s) ((void)(s)->faults.wrote++)
#define STORE_FAULTS_ARM_CKPT(s) store_ckpt_inject((s)->ckpt, (s)->faults.checkpoint_rounds)

#else /* !NODESTATE_FAULTS */

#define STORE_FAULTS_FIELD
#define STORE_FAULTS_LOAD(s, msg, len) 0
#define STORE_FAULT_ROW(s, row) false
#define STORE_FAULT_COMMIT(s) 0
#define STORE_FAULT_WROTE(s) ((void)0)
#define STORE_FAULTS_ARM_CKPT(s) ((void)0)

#endif /* NODESTATE_FAULTS */
/* ---------------------- end of fault injection ---------------------- */

/* A row a transaction left out, reported only once that transaction commits. */
typedef struct store_isolated {
    size_t row;                 /* index into store_batch.rows */
    char why[STORE_ERRMSG_MAX]; /* SQLite's message */
} store_isolated;

/* The rows left out of the transaction in progress. */
typedef struct store_isolation {
    store_isolated *v;
    size_t n;
    size_t cap;
} store_isolation;

/* The write connection's checkpoints (sqlite_checkpoint.c). */
typedef struct store_ckpt store_ckpt;
/*
 * Starts the checkpoint thread, on a connection of its own to path, and
 * hooks the writer connection's commits to it (in place of SQLite's
 * automatic checkpoint). NULL with err set when it cannot.
 */
store_ckpt *store_ckpt_start(sqlite3 *writer, const char *path, int soft_frames,
                             int hard_frames, char *err, size_t errlen);
/*
 * Unhooks writer and stops the thread, cutting a round in progress short;
 * NULL is a no-op.
 */
void store_ckpt_stop(store_ckpt *c, sqlite3 *writer);
/*
 * The store is closing: from now on no commit checkpoints inline, and one
 * doing so now is interrupted. Any thread. NULL is a no-op.
 */
void store_ckpt_closing(store_ckpt *c);
/*
 * The close's checkpoint of writer, cut short at deadline_ns
 * (model_mono_ns) by sqlite3_interrupt from a watching thread: 0 when the
 * whole WAL is copied, so that closing the connection has nothing left to
 * copy; 1 otherwise (out of time, a reader's snapshot, an error), when the
 * close must not checkpoint (SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE): the WAL
 * keeps the rest, and the next start reads it.
 */
int store_ckpt_final(sqlite3 *writer, int64_t deadline_ns);
/* For tests: a paused thread leaves every request for later. */
void store_ckpt_pause(store_ckpt *c, bool paused);
/* For tests: the rounds the thread and the commits have run so far. */
void store_ckpt_rounds(const store_ckpt *c, unsigned long *thread_rounds,
                       unsigned long *inline_rounds);
/* Sets the listener told of failed rounds (store_on_checkpoint); NULL: none. */
void store_ckpt_listen(store_ckpt *c, store_ckpt_fn fn, void *ctx);
/* The WAL's length in frames at the writer's last commit (store_wal_frames). */
int store_ckpt_wal_frames(const store_ckpt *c);
#ifdef NODESTATE_FAULTS
/* The next `rounds` checkpoint rounds fail (NODESTATE_FAULTS "checkpoint=N"). */
void store_ckpt_inject(store_ckpt *c, long rounds);
#endif

/*
 * Puts the page cache of sqlite_pcache.c in place of SQLite's default, once
 * per process; call before any other SQLite call of the store. False when
 * SQLite was initialised already (the default cache stays: slower commits,
 * nothing else).
 */
bool store_pcache_install(void);
/*
 * For tests: how many pages the cache has held under a nearer number, and
 * the largest number the default cache was asked to move a page to.
 */
typedef struct store_pcache_stats {
    unsigned long aliases;
    unsigned largest_move;
} store_pcache_stats;
store_pcache_stats store_pcache_counts(void);

/*
 * The name of the VFS the write connection opens its file with
 * (sqlite_walbuf.c): the default one, but a commit's WAL frames reach the
 * file in one write when the commit frame is complete. Registered on first
 * use; NULL when it cannot be (out of memory).
 */
const char *store_walbuf_vfs(void);
/*
 * For tests: how many buffers the WAL file of db (opened with that VFS) has
 * sent, how many writes went straight through, how often it was synced.
 * -1 when db's WAL is not one of its files (not open yet, or another VFS).
 */
typedef struct store_walbuf_stats {
    unsigned long sends, through, syncs;
} store_walbuf_stats;
int store_walbuf_counts(sqlite3 *db, store_walbuf_stats *out);
/*
 * Syncs db's WAL file now, whatever the synchronous mode (a replayed
 * sidecar must be on disk before it is removed). Call on the thread that
 * owns db. An SQLite result code.
 */
int store_wal_sync(sqlite3 *db);

/*
 * Rows per multi-row insert (store_upsert_rows_many), largest first. Steps
 * are what the writer spends its time on: a big batch goes 64 rows a step
 * (64 x 16 columns stays far below SQLite's 32,766 parameters), and a
 * ?wait=true commit of a dozen rows 8 a step rather than one.
 */
#define STORE_ROWS_MANY 64
#define STORE_ROWS_FEW 8
#define STORE_CHUNKS 2

/* The write connection. Owned by one thread (the writer); no locking. */
struct sqlite_store {
    sqlite3 *db;
    store_ckpt *ckpt;           /* its checkpoints, on a thread of their own */
    int64_t close_by_ns;        /* store_close_by's deadline (model_mono_ns); 0: none */
    char *path;                 /* as given to store_open; names the sidecar */
    sqlite3_stmt *upsert;       /* one row of run_node_state */
    sqlite3_stmt *upsert_many[STORE_CHUNKS]; /* store_chunk_rows[k] rows of it */
    sqlite3_stmt *delete_run;   /* every row of one run */
    sqlite3_stmt *record_delete; /* run_deletes: a run's newest delete */
    sqlite3_stmt *forget_deletes; /* run_deletes: the records older than ?1 */
    sqlite3_stmt *set_seq;      /* nodestate_meta 'last_seq' */
    sqlite3_stmt *meta_get;     /* any nodestate_meta key */
    sqlite3_stmt *meta_set;
    sqlite3_stmt *begin;        /* BEGIN IMMEDIATE */
    sqlite3_stmt *commit;
    sqlite3_stmt *rollback;
    int64_t last_seq;           /* highest seq committed to the file */
    store_isolation iso;        /* reused by every store_write */
    char errmsg[STORE_ERRMSG_MAX]; /* why the last store_write failed */
    STORE_FAULTS_FIELD          /* injected faults (NODESTATE_FAULTS only) */
};

/*
 * The backend's side of store.h (store_sqlite_ops in sqlite_ops.c points at
 * these); each does what its store_* namesake promises.
 */
typedef struct sqlite_store sqlite_store;
typedef struct sqlite_reader sqlite_reader;
sqlite_store *sqlite_store_open(const char *path, bool sync_full, char *err,
                                size_t errlen);
void sqlite_store_close(sqlite_store *s);
int64_t sqlite_store_last_seq(const sqlite_store *s);
const char *sqlite_store_errmsg(const sqlite_store *s);
int sqlite_store_write(sqlite_store *s, store_batch *b);
int sqlite_store_meta_get(sqlite_store *s, const char *key, int64_t *value);
int sqlite_store_meta_set(sqlite_store *s, const char *key, int64_t value);
void sqlite_store_close_by(sqlite_store *s, int64_t deadline_ns);
int sqlite_store_probe(sqlite_store *s);
/* store_expired_runs (sqlite_expire.c). */
int sqlite_store_expired_runs(sqlite_store *s, int64_t cutoff_ms, size_t max_rows,
                              store_expiry_cursor *c,
                              int (*fn)(void *ctx, const char *run_id, int64_t max_seq), void *ctx);
/* store_replay of the sidecar at spill_path. */
int sqlite_store_replay(sqlite_store *s, const char *spill_path, const char *notify_id,
                        store_replayed *out, char *err, size_t errlen);
sqlite_reader *sqlite_reader_open(const char *path, char *err, size_t errlen);
void sqlite_reader_close(sqlite_reader *r);
int sqlite_reader_load_run(sqlite_reader *r, const char *run_id, bool light,
                           int (*fn)(void *ctx, ns_row *row), void *ctx,
                           size_t *skipped);
int sqlite_reader_deleted_seq(sqlite_reader *r, const char *run_id, int64_t *seq);
int sqlite_reader_load_node(sqlite_reader *r, const char *run_id,
                            const char *node_id, ns_row **out,
                            bool *run_has_rows);
int sqlite_reader_load_page(sqlite_reader *r, const char *run_id,
                            const char *after, unsigned status_mask,
                            size_t want, int (*fn)(void *ctx, ns_row *row),
                            void *ctx, store_page *page);

/* Writes "<path>: <msg>" into err, tolerating a NULL or empty buffer. */
void store_set_err(char *err, size_t errlen, const char *path,
                   const char *msg);
/* Same as store_set_err with the connection's own message, if any. */
void store_set_db_err(char *err, size_t errlen, const char *path,
                      sqlite3 *db, const char *what);
/* Runs a statement that returns no rows we care about. Returns an sqlite rc. */
/*
 * A template's STORE_SQL_* tokens expanded, malloc'd; NULL if out of memory
 * or the template names an unknown token. store_exec and store_prepare
 * expand what they are given.
 */
char *store_sql(const char *tmpl);
int store_exec(sqlite3 *db, const char *sql);
/* Ends the transaction in progress, if any, keeping nothing of it. */
void store_rollback(sqlite3 *db);
/* A single-value query's first column in *out (0: no row). An sqlite rc. */
int store_query_int(sqlite3 *db, const char *sql, int64_t *out);
/* Prepares one statement that lives as long as the connection. 0 or -1. */
int store_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **out,
                  char *err, size_t errlen, const char *path);
/* store_prepare, checked against NS_NODE_FIELDS (binds or returns a row). */
int store_prepare_row(sqlite3 *db, const char *sql, bool params,
                      sqlite3_stmt **out, char *err, size_t errlen,
                      const char *path);
/* Steps a statement that returns no rows, then resets it. An sqlite rc. */
int store_step_once(sqlite3_stmt *st);
/* Upserts rows with st inside db's open transaction (see sqlite_common.c). */
int store_upsert_rows(sqlite3 *db, sqlite3_stmt *st, ns_row *const *rows,
                      size_t n, const sqlite_store *faults_of, store_isolation *iso,
                      char *msg, size_t msglen);
extern const size_t store_chunk_rows[STORE_CHUNKS];
/* store_upsert_rows, store_chunk_rows[k] rows per step of many[k] where it can. */
int store_upsert_rows_many(sqlite3 *db, sqlite3_stmt *st,
                           sqlite3_stmt *const many[STORE_CHUNKS],
                           ns_row *const *rows, size_t n,
                           const sqlite_store *faults_of, store_isolation *iso,
                           char *msg, size_t msglen);
/* Prepares the insert of per rows (at most STORE_ROWS_MANY) into table, tail after its VALUES. */
int store_prepare_many(sqlite3 *db, const char *table, const char *tail, size_t per,
                       sqlite3_stmt **out, char *err, size_t errlen,
                       const char *path);
/* Tells the batch's callback about the rows left out, after COMMIT. */
void store_isolation_report(const store_isolation *iso, const store_batch *b);
/* Whether b's arrays are there for the counts it claims. */
bool store_batch_valid(const store_batch *b);
/*
 * Fills a draft from the current result row of a select of STORE_COLUMNS
 * and STORE_SQL_JSON_VALID (sqlite_read.c): 0, 1 for a row this build
 * cannot read, -1 out of memory. Its strings borrow from the statement.
 */
int store_row_draft(sqlite3_stmt *st, ns_row *d);
/* Brings a version-0 table up to the current version in the caller's transaction. */
int store_migrate_v0(sqlite3 *db, char *err, size_t errlen, const char *path);
/* Brings a version-1 file up to version 2 in the caller's transaction. */
int store_migrate_v1(sqlite3 *db, char *err, size_t errlen, const char *path);

#endif
