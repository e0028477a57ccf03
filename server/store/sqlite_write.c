/*
 * sqlite_write: the SQLite file behind nodestate (see store.h for the contract):
 * the schema, opening the write connection, the write transaction, meta.
 *
 * Everything here is prepared once at open time so that a write is nothing
 * but bind/step/reset on cached statements inside one transaction.
 */
#include "sqlite_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/*
 * Idempotent (IF NOT EXISTS) so that two processes racing to create the same
 * new file both end up with the same schema, and so that a migrated file
 * (whose table exists already) gets only the meta table. No secondary
 * index: every read and delete filters by the primary key's (run_id,
 * node_id) prefix, and an index on (run_id, status) cost the writer a
 * quarter of its rows per second on in-order inserts and over half on
 * random updates (see store_migrate_v1).
 *
 * A rowid table, so rows lie in the order they were first written and the
 * key is an index beside them. A small commit (?wait=true: ~12 updates)
 * then rewrites the pages of the nodes it touches; nodes that were created
 * together and move on together (a run's scheduled nodes start and finish
 * in waves) share those pages, where a table ordered by key spreads one
 * commit over a page per run. Files made WITHOUT ROWID by earlier builds
 * (the same key, the same version) are read and written alike and keep
 * their layout.
 */
const char store_schema_sql[] =
    "CREATE TABLE IF NOT EXISTS run_node_state ("
    STORE_SQL_DEFS
    " PRIMARY KEY (" STORE_SQL_KEY ")"
    ");"
    "CREATE TABLE IF NOT EXISTS nodestate_meta ("
    " key TEXT PRIMARY KEY,"
    " value INTEGER"
    ");"
    "PRAGMA user_version = 2;";

static const char store_upsert_sql[] =
    "INSERT INTO run_node_state (" STORE_COLUMNS ")"
    " VALUES (" STORE_SQL_PARAMS ")" STORE_UPSERT_SET;

static const char store_delete_run_sql[] =
    "DELETE FROM run_node_state WHERE run_id = ?1";

/*
 * The newest delete of each run (store.h). Made at every open where it is
 * missing, outside the version: a file written by a build that did not know
 * it gets it, and such a build leaves it alone.
 */
static const char store_deletes_schema_sql[] =
    "CREATE TABLE IF NOT EXISTS run_deletes ("
    " run_id TEXT PRIMARY KEY,"
    " seq INTEGER NOT NULL,"
    " deleted_at INTEGER NOT NULL"
    ");"
    "CREATE INDEX IF NOT EXISTS run_deletes_deleted_at ON run_deletes (deleted_at)";

static const char store_forget_deletes_sql[] =
    "DELETE FROM run_deletes WHERE deleted_at < ?1";

/* ?1 run, ?2 the delete's seq, ?3 now in Unix ms; an older seq never replaces a newer one. */
static const char store_record_delete_sql[] =
    "INSERT INTO run_deletes (run_id, seq, deleted_at) VALUES (?1, ?2, ?3)"
    " ON CONFLICT (run_id) DO UPDATE SET seq = excluded.seq,"
    " deleted_at = excluded.deleted_at WHERE excluded.seq > run_deletes.seq";

/*
 * max() keeps the recorded value "the highest seq ever committed" even if a
 * caller ever hands in a smaller one.
 */
const char store_set_seq_sql[] =
    "INSERT INTO nodestate_meta (key, value) VALUES ('last_seq', ?1)"
    " ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)";

static const char store_get_seq_sql[] =
    "SELECT value FROM nodestate_meta WHERE key = 'last_seq'";

static const char store_meta_get_sql[] =
    "SELECT value FROM nodestate_meta WHERE key = ?1";

/* A plain replace: the caller's keys need not only grow. */
static const char store_meta_set_sql[] =
    "INSERT INTO nodestate_meta (key, value) VALUES (?1, ?2)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/*
 * Switches to WAL and checks it took: journal_mode answers with the mode it
 * ended up in, and some files (in-memory, some VFSes) silently refuse WAL.
 */
static int store_enable_wal(sqlite3 *db, char *err, size_t errlen,
                            const char *path)
{
    sqlite3_stmt *st = NULL;
    const unsigned char *mode;
    int rc = sqlite3_prepare_v2(db, "PRAGMA journal_mode = WAL", -1, &st,
                                NULL);

    if (rc != SQLITE_OK)
        goto err;
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
        goto err;
    mode = sqlite3_column_text(st, 0);
    if (mode == NULL || strcasecmp((const char *)mode, "wal") != 0) {
        char msg[STORE_ERRMSG_MAX];

        snprintf(msg, sizeof msg,
                 "cannot use WAL journal mode (journal_mode is %s)",
                 mode != NULL ? (const char *)mode : "unknown");
        store_set_err(err, errlen, path, msg);
        sqlite3_finalize(st);
        return -1;
    }
    sqlite3_finalize(st);
    return 0;

err:
    store_set_db_err(err, errlen, path, db, "setting journal_mode=WAL");
    sqlite3_finalize(st);
    return -1;
}

/*
 * Creates the schema on a new file (user_version 0), migrates the original
 * design's table (user_version 0 with run_node_state) and a version-1 file,
 * accepts version 2 and refuses anything newer. Returns 0 or -1 with err set.
 */
static int store_check_schema(sqlite3 *db, char *err, size_t errlen,
                              const char *path)
{
    int64_t version = 0;
    int64_t has_table = 0;
    char msg[STORE_ERRMSG_MAX];

    if (store_query_int(db, "PRAGMA user_version", &version) != SQLITE_OK) {
        store_set_db_err(err, errlen, path, db, "reading user_version");
        return -1;
    }
    if (version > STORE_SCHEMA_VERSION) {
        snprintf(msg, sizeof msg,
                 "database schema version %lld is newer than this nodestate "
                 "supports (%d)", (long long)version, STORE_SCHEMA_VERSION);
        store_set_err(err, errlen, path, msg);
        return -1;
    }
    if (version < 0) {
        snprintf(msg, sizeof msg, "database schema version %lld is invalid",
                 (long long)version);
        store_set_err(err, errlen, path, msg);
        return -1;
    }
    if (version == STORE_SCHEMA_VERSION)
        return 0;

    /* One transaction, so a crash never leaves a half-made schema behind. */
    if (store_exec(db, "BEGIN IMMEDIATE") != SQLITE_OK) {
        store_set_db_err(err, errlen, path, db, "creating schema");
        return -1;
    }
    /* Read again under the write lock: another process may have won. */
    if (store_query_int(db, "PRAGMA user_version", &version) != SQLITE_OK
        || store_query_int(db,
                           "SELECT count(*) FROM sqlite_master WHERE"
                           " type = 'table' AND name = 'run_node_state'",
                           &has_table) != SQLITE_OK) {
        store_set_db_err(err, errlen, path, db, "creating schema");
        goto err;
    }
    if (version == 0 && !has_table) {
        /*
         * No table of ours: a new file, or another program's database (a
         * typo in --db), which must not gain our tables and a WAL.
         */
        int64_t others = 0;
        if (store_query_int(db, "SELECT count(*) FROM sqlite_master WHERE"
                                " name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT IN"
                                " ('nodestate_meta', 'run_deletes', 'run_deletes_deleted_at')",
                            &others) != SQLITE_OK) {
            store_set_db_err(err, errlen, path, db, "creating schema");
            goto err;
        }
        if (others > 0) {
            snprintf(msg, sizeof msg,
                     "not a nodestate database: it holds %lld tables, indexes or views "
                     "of another program and no run_node_state", (long long)others);
            store_set_err(err, errlen, path, msg);
            goto err;
        }
    }
    if (version == 0 && has_table) {
        if (store_migrate_v0(db, err, errlen, path) != 0)
            goto err;
    } else if (version == 0 && store_exec(db, store_schema_sql) != SQLITE_OK) {
        store_set_db_err(err, errlen, path, db, "creating schema");
        goto err;
    } else if (version == 1 && store_migrate_v1(db, err, errlen, path) != 0) {
        goto err;
    }
    if (store_exec(db, "COMMIT") != SQLITE_OK) {
        store_set_db_err(err, errlen, path, db, "creating schema");
        goto err;
    }
    return 0;

err:
    store_rollback(db);
    return -1;
}

sqlite_store *sqlite_store_open(const char *path, bool sync_full, char *err, size_t errlen)
{
    sqlite_store *s = NULL;
    char msg[STORE_ERRMSG_MAX * 2];
    const char *vfs;
    int rc;

    if (path == NULL || path[0] == '\0') {
        store_set_err(err, errlen, "(none)", "no database path given");
        return NULL;
    }
    s = calloc(1, sizeof *s);
    if (s == NULL || (s->path = strdup(path)) == NULL) {
        store_set_err(err, errlen, path, "out of memory");
        goto err;
    }
    /* Before the file is touched: a bad spec must change nothing. */
    if (STORE_FAULTS_LOAD(s, msg, sizeof msg) != 0) {
        store_set_err(err, errlen, path, msg);
        goto err;
    }
    /* First: the VFS lookup below starts SQLite, after which its page cache is fixed. */
    store_pcache_install();
    vfs = store_walbuf_vfs();
    if (vfs == NULL) {
        store_set_err(err, errlen, path, "out of memory");
        goto err;
    }
    rc = sqlite3_open_v2(path, &s->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE
                             | SQLITE_OPEN_NOMUTEX, vfs);
    if (rc != SQLITE_OK) {
        store_set_db_err(err, errlen, path, s->db, "opening database");
        goto err;
    }
    if (sqlite3_busy_timeout(s->db, STORE_WRITE_BUSY_MS) != SQLITE_OK) {
        store_set_db_err(err, errlen, path, s->db, "setting busy timeout");
        goto err;
    }
    /*
     * The version check comes first so that a file from a newer nodestate
     * is refused before we change anything about it (such as its journal).
     * It is also the first read, so "file is not a database" surfaces here.
     */
    if (store_check_schema(s->db, err, errlen, path) != 0)
        goto err;
    if (store_exec(s->db, store_deletes_schema_sql) != SQLITE_OK) {
        store_set_db_err(err, errlen, path, s->db, "creating run_deletes");
        goto err;
    }
    if (store_enable_wal(s->db, err, errlen, path) != 0)
        goto err;
    if (store_exec(s->db, sync_full ? "PRAGMA synchronous = FULL"
                                    : "PRAGMA synchronous = NORMAL")
            != SQLITE_OK
        || store_exec(s->db, "PRAGMA cache_size = " STORE_CACHE_SIZE)
               != SQLITE_OK
        || store_exec(s->db, "PRAGMA temp_store = MEMORY") != SQLITE_OK) {
        store_set_db_err(err, errlen, path, s->db, "setting pragmas");
        goto err;
    }
    s->ckpt = store_ckpt_start(s->db, path, STORE_WAL_SOFT_FRAMES, STORE_WAL_HARD_FRAMES, err,
                               errlen);
    if (s->ckpt == NULL)
        goto err;
    STORE_FAULTS_ARM_CKPT(s);
    if (store_query_int(s->db, store_get_seq_sql, &s->last_seq)
        != SQLITE_OK) {
        store_set_db_err(err, errlen, path, s->db, "reading last_seq");
        goto err;
    }
    if (store_prepare_row(s->db, store_upsert_sql, true, &s->upsert, err,
                          errlen, path)
        || store_prepare(s->db, store_delete_run_sql, &s->delete_run, err,
                         errlen, path)
        || store_prepare(s->db, store_record_delete_sql, &s->record_delete, err,
                         errlen, path)
        || store_prepare(s->db, store_forget_deletes_sql, &s->forget_deletes, err,
                         errlen, path)
        || store_prepare(s->db, store_set_seq_sql, &s->set_seq, err, errlen,
                         path)
        || store_prepare(s->db, store_meta_get_sql, &s->meta_get, err,
                         errlen, path)
        || store_prepare(s->db, store_meta_set_sql, &s->meta_set, err,
                         errlen, path)
        || store_prepare(s->db, "BEGIN IMMEDIATE", &s->begin, err, errlen,
                         path)
        || store_prepare(s->db, "COMMIT", &s->commit, err, errlen, path)
        || store_prepare(s->db, "ROLLBACK", &s->rollback, err, errlen, path))
        goto err;
    for (size_t k = 0; k < STORE_CHUNKS; k++)
        if (store_prepare_many(s->db, "run_node_state", STORE_UPSERT_SET, store_chunk_rows[k],
                               &s->upsert_many[k], err, errlen, path) != 0)
            goto err;
    return s;

err:
    sqlite_store_close(s);
    return NULL;
}

void sqlite_store_close(sqlite_store *s)
{
    if (s == NULL)
        return;
    store_ckpt_stop(s->ckpt, s->db);
    sqlite3_finalize(s->upsert);
    for (size_t k = 0; k < STORE_CHUNKS; k++)
        sqlite3_finalize(s->upsert_many[k]);
    sqlite3_finalize(s->delete_run);
    sqlite3_finalize(s->record_delete);
    sqlite3_finalize(s->forget_deletes);
    sqlite3_finalize(s->set_seq);
    sqlite3_finalize(s->meta_get);
    sqlite3_finalize(s->meta_set);
    sqlite3_finalize(s->begin);
    sqlite3_finalize(s->commit);
    sqlite3_finalize(s->rollback);
    /* Out of time for the whole WAL: the rest stays in it, for the next start. */
    if (s->close_by_ns != 0 && store_ckpt_final(s->db, s->close_by_ns) != 0)
        sqlite3_db_config(s->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
    /* Every statement is finalized above, so close cannot be refused. */
    sqlite3_close(s->db);
    free(s->iso.v);
    free(s->path);
    free(s);
}

int sqlite_store_probe(sqlite_store *s)
{
    /* A short wait: another process's quick writes are no lock held. */
    sqlite3_busy_timeout(s->db, STORE_PROBE_BUSY_MS);
    int rc = sqlite3_step(s->begin);
    sqlite3_reset(s->begin);
    if (rc == SQLITE_DONE) {
        sqlite3_step(s->rollback);
        sqlite3_reset(s->rollback);
    }
    sqlite3_busy_timeout(s->db, STORE_WRITE_BUSY_MS);
    return rc == SQLITE_DONE ? 0 : rc == SQLITE_BUSY || rc == SQLITE_LOCKED ? 1 : -1;
}

void sqlite_store_close_by(sqlite_store *s, int64_t deadline_ns)
{
    s->close_by_ns = deadline_ns;
    store_ckpt_closing(s->ckpt);
}

int64_t sqlite_store_last_seq(const sqlite_store *s)
{
    return s->last_seq;
}

const char *sqlite_store_errmsg(const sqlite_store *s)
{
    return s->errmsg;
}

/* Records why a write failed, before ROLLBACK overwrites the db's message. */
static void store_fail(sqlite_store *s, const char *what)
{
    snprintf(s->errmsg, sizeof s->errmsg, "%s: %s", what,
             sqlite3_errmsg(s->db));
}

/*
 * Each delete of b with a seq into run_deletes, the records older than
 * b->forget_deletes_before_ms out, in the transaction in progress. 0 or -1.
 */
static int store_record_deletes(sqlite_store *s, const store_batch *b)
{
    if (b->forget_deletes_before_ms > 0 &&
        (sqlite3_bind_int64(s->forget_deletes, 1, b->forget_deletes_before_ms) != SQLITE_OK ||
         store_step_once(s->forget_deletes) != SQLITE_DONE))
        return -1;
    if (b->delete_seqs == NULL)
        return 0;
    int64_t now_ms = model_now_ms();
    for (size_t i = 0; i < b->n_deletes; i++) {
        sqlite3_stmt *st = s->record_delete;
        if (sqlite3_bind_text(st, 1, b->delete_runs[i], -1, SQLITE_STATIC) != SQLITE_OK ||
            sqlite3_bind_int64(st, 2, b->delete_seqs[i]) != SQLITE_OK ||
            sqlite3_bind_int64(st, 3, now_ms) != SQLITE_OK) {
            sqlite3_clear_bindings(st);
            return -1;
        }
        if (store_step_once(st) != SQLITE_DONE)
            return -1;
    }
    return 0;
}

int sqlite_store_write(sqlite_store *s, store_batch *b)
{
    /* Misuse is an error, not a crash; nothing has started yet. */
    if (!store_batch_valid(b)) {
        snprintf(s->errmsg, sizeof s->errmsg, "invalid batch");
        return -1;
    }
    size_t n_gone = 0;
    b->n_isolated = 0;
    b->n_expire_kept = 0;
    s->iso.n = 0;
    if (store_step_once(s->begin) != SQLITE_DONE) {
        store_fail(s, "begin");
        goto err;
    }
    for (size_t i = 0; i < b->n_deletes; i++) {
        if (sqlite3_bind_text(s->delete_run, 1, b->delete_runs[i], -1,
                              SQLITE_STATIC) != SQLITE_OK) {
            store_fail(s, "delete run");
            sqlite3_clear_bindings(s->delete_run);
            goto err;
        }
        if (store_step_once(s->delete_run) != SQLITE_DONE) {
            store_fail(s, "delete run");
            goto err;
        }
        /* Retention's delete of a run a DELETE /runs/{id} removed already expired nothing. */
        if (b->expiring != NULL && b->expiring[i] && sqlite3_changes(s->db) == 0)
            n_gone++;
    }
    if (store_record_deletes(s, b) != 0) {
        store_fail(s, "recording deletes");
        goto err;
    }
    if (store_upsert_rows_many(s->db, s->upsert, s->upsert_many, b->rows,
                               b->n_rows, s, &s->iso, s->errmsg,
                               sizeof s->errmsg) != 0)
        goto err;
    if (sqlite3_bind_int64(s->set_seq, 1, b->last_seq) != SQLITE_OK) {
        store_fail(s, "last_seq");
        goto err;
    }
    if (store_step_once(s->set_seq) != SQLITE_DONE) {
        store_fail(s, "last_seq");
        goto err;
    }
    /* Injected at the commit, so the rollback of real work is exercised. */
    if (STORE_FAULT_COMMIT(s) != 0)
        goto err;
    if (store_step_once(s->commit) != SQLITE_DONE) {
        store_fail(s, "commit");
        goto err;
    }
    STORE_FAULT_WROTE(s);
    if (b->last_seq > s->last_seq)
        s->last_seq = b->last_seq;
    s->errmsg[0] = '\0';
    b->n_isolated = s->iso.n;
    b->n_expire_kept = n_gone;
    store_isolation_report(&s->iso, b);
    return 0;

err:
    store_rollback(s->db);
    return -1;
}

/* ---- nodestate_meta, for the caller's own counters ---- */

int sqlite_store_meta_get(sqlite_store *s, const char *key, int64_t *value)
{
    int ret = -1;
    int rc;

    if (key == NULL || value == NULL) {
        snprintf(s->errmsg, sizeof s->errmsg, "meta get: no key given");
        return -1;
    }
    if (sqlite3_bind_text(s->meta_get, 1, key, -1, SQLITE_STATIC)
        != SQLITE_OK) {
        store_fail(s, "meta get");
        goto out;
    }
    rc = sqlite3_step(s->meta_get);
    if (rc == SQLITE_DONE) {
        ret = 1;
    } else if (rc != SQLITE_ROW) {
        store_fail(s, "meta get");
    } else if (sqlite3_column_type(s->meta_get, 0) != SQLITE_INTEGER) {
        /* Not ours to guess at: 0 for a NULL would restart a counter. */
        snprintf(s->errmsg, sizeof s->errmsg,
                 "meta get: nodestate_meta '%.64s' is not an integer", key);
    } else {
        *value = sqlite3_column_int64(s->meta_get, 0);
        ret = 0;
    }

out:
    sqlite3_reset(s->meta_get);
    sqlite3_clear_bindings(s->meta_get);
    return ret;
}

int sqlite_store_meta_set(sqlite_store *s, const char *key, int64_t value)
{
    if (key == NULL) {
        snprintf(s->errmsg, sizeof s->errmsg, "meta set: no key given");
        return -1;
    }
    /* store_write keeps last_seq with max() and caches it in s->last_seq. */
    if (strcmp(key, "last_seq") == 0) {
        snprintf(s->errmsg, sizeof s->errmsg,
                 "meta set: 'last_seq' is written by store_write only");
        return -1;
    }
    /*
     * Outside BEGIN, the one statement is its own transaction: committed
     * (with the file's synchronous setting) when the step returns DONE.
     */
    if (sqlite3_bind_text(s->meta_set, 1, key, -1, SQLITE_STATIC)
            != SQLITE_OK
        || sqlite3_bind_int64(s->meta_set, 2, value) != SQLITE_OK) {
        store_fail(s, "meta set");
        sqlite3_clear_bindings(s->meta_set);
        return -1;
    }
    if (store_step_once(s->meta_set) != SQLITE_DONE) {
        store_fail(s, "meta set");
        return -1;
    }
    s->errmsg[0] = '\0';
    return 0;
}
