/*
 * store: the SQLite file behind nodestate (see store.h for the contract).
 *
 * Everything here is prepared once at open time so that a write is nothing
 * but bind/step/reset on cached statements inside one transaction.
 */
#include "store.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sqlite3.h>

/* The schema this build writes and the newest one it can read. */
#define STORE_SCHEMA_VERSION 1
/*
 * The writer retries failed batches with its own backoff, so a lock held by
 * someone else must make a write fail fast rather than stall the writer.
 */
#define STORE_WRITE_BUSY_MS 100
/* A read-through may wait a little longer: it is rare and off the hot path. */
#define STORE_READ_BUSY_MS 1000
/* 64 MiB of page cache (negative = KiB): the working set of hot runs. */
#define STORE_CACHE_SIZE "-65536"
/* Pages between automatic checkpoints; fewer checkpoints measured ~1.6x faster. */
#define STORE_WAL_AUTOCHECKPOINT "10000"
/* Room for "<operation>: <sqlite message>". */
#define STORE_ERRMSG_MAX 256

/* Parameter / result column positions shared by the upsert and the select. */
enum store_col {
    COL_RUN_ID,
    COL_NODE_ID,
    COL_STATUS,
    COL_ATTEMPT,
    COL_TS_FIRST,                       /* NS_TS_COUNT timestamp columns */
    COL_LAST_ERROR = COL_TS_FIRST + NS_TS_COUNT,
    COL_RETRYABLE,
    COL_SUSPENSION_REASON,
    COL_RESUME_STATE,
    COL_OUTPUTS,
    COL_UPDATED_AT,
    COL_SEQ,
    COL_COUNT
};

#define STORE_COLUMNS                                                       \
    "run_id, node_id, status, attempt, scheduled_at, started_at, "          \
    "completed_at, failed_at, suspended_at, last_error, retryable, "        \
    "suspension_reason, resume_state_json, outputs_json, updated_at, seq"

/*
 * Idempotent (IF NOT EXISTS) so that two processes racing to create the same
 * new file both end up with the same schema.
 */
static const char store_schema_sql[] =
    "CREATE TABLE IF NOT EXISTS run_node_state ("
    " run_id TEXT NOT NULL,"
    " node_id TEXT NOT NULL,"
    " status TEXT NOT NULL,"
    " attempt INTEGER NOT NULL,"
    " scheduled_at TEXT,"
    " started_at TEXT,"
    " completed_at TEXT,"
    " failed_at TEXT,"
    " suspended_at TEXT,"
    " last_error TEXT,"
    " retryable INTEGER NOT NULL DEFAULT 0,"
    " suspension_reason TEXT,"
    " resume_state_json TEXT,"
    " outputs_json TEXT,"
    " updated_at TEXT NOT NULL,"
    " seq INTEGER NOT NULL,"
    " PRIMARY KEY (run_id, node_id)"
    ") WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS run_node_state_run_status"
    " ON run_node_state (run_id, status);"
    "CREATE TABLE IF NOT EXISTS nodestate_meta ("
    " key TEXT PRIMARY KEY,"
    " value INTEGER"
    ");"
    "PRAGMA user_version = 1;";

static const char store_upsert_sql[] =
    "INSERT INTO run_node_state (" STORE_COLUMNS ")"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,"
    " ?15, ?16)"
    " ON CONFLICT (run_id, node_id) DO UPDATE SET"
    " status = excluded.status,"
    " attempt = excluded.attempt,"
    " scheduled_at = excluded.scheduled_at,"
    " started_at = excluded.started_at,"
    " completed_at = excluded.completed_at,"
    " failed_at = excluded.failed_at,"
    " suspended_at = excluded.suspended_at,"
    " last_error = excluded.last_error,"
    " retryable = excluded.retryable,"
    " suspension_reason = excluded.suspension_reason,"
    " resume_state_json = excluded.resume_state_json,"
    " outputs_json = excluded.outputs_json,"
    " updated_at = excluded.updated_at,"
    " seq = excluded.seq";

static const char store_delete_run_sql[] =
    "DELETE FROM run_node_state WHERE run_id = ?1";

/*
 * max() keeps the recorded value "the highest seq ever committed" even if a
 * caller ever hands in a smaller one.
 */
static const char store_set_seq_sql[] =
    "INSERT INTO nodestate_meta (key, value) VALUES ('last_seq', ?1)"
    " ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)";

static const char store_get_seq_sql[] =
    "SELECT value FROM nodestate_meta WHERE key = 'last_seq'";

static const char store_select_run_sql[] =
    "SELECT " STORE_COLUMNS " FROM run_node_state WHERE run_id = ?1"
    " ORDER BY node_id";

/* The write connection. Owned by one thread (the writer); no locking. */
struct store {
    sqlite3 *db;
    sqlite3_stmt *upsert;       /* one row of run_node_state */
    sqlite3_stmt *delete_run;   /* every row of one run */
    sqlite3_stmt *set_seq;      /* nodestate_meta 'last_seq' */
    sqlite3_stmt *begin;        /* BEGIN IMMEDIATE */
    sqlite3_stmt *commit;
    sqlite3_stmt *rollback;
    int64_t last_seq;           /* highest seq committed to the file */
    char errmsg[STORE_ERRMSG_MAX]; /* why the last store_write failed */
};

/* The read-through connection; any thread may use it. */
struct store_reader {
    pthread_mutex_t lock;       /* guards db and select_run */
    sqlite3 *db;
    sqlite3_stmt *select_run;   /* rows of one run in node_id order */
};

/* Writes "<path>: <msg>" into err, tolerating a NULL or empty buffer. */
static void store_set_err(char *err, size_t errlen, const char *path,
                          const char *msg)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s: %s", path, msg);
}

/* Same as store_set_err with the connection's own message, if any. */
static void store_set_db_err(char *err, size_t errlen, const char *path,
                             sqlite3 *db, const char *what)
{
    char msg[STORE_ERRMSG_MAX];

    snprintf(msg, sizeof msg, "%s: %s", what,
             db != NULL ? sqlite3_errmsg(db) : "out of memory");
    store_set_err(err, errlen, path, msg);
}

/* Runs a statement that returns no rows we care about. Returns an sqlite rc. */
static int store_exec(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

/*
 * Runs a single-value query and returns its first column as an integer in
 * *out (0 when there is no row). Returns an sqlite rc.
 */
static int store_query_int(sqlite3 *db, const char *sql, int64_t *out)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);

    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        *out = 0;
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

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
 * Creates the schema on a new file (user_version 0), accepts version 1 and
 * refuses anything newer. Returns 0 or -1 with err set.
 */
static int store_check_schema(sqlite3 *db, char *err, size_t errlen,
                              const char *path)
{
    int64_t version = 0;
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
    if (store_exec(db, store_schema_sql) != SQLITE_OK
        || store_exec(db, "COMMIT") != SQLITE_OK) {
        store_set_db_err(err, errlen, path, db, "creating schema");
        if (!sqlite3_get_autocommit(db))
            store_exec(db, "ROLLBACK");
        return -1;
    }
    return 0;
}

/* Prepares one statement that lives as long as the connection. */
static int store_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **out,
                         char *err, size_t errlen, const char *path)
{
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL)
        != SQLITE_OK) {
        store_set_db_err(err, errlen, path, db, "preparing statements");
        return -1;
    }
    return 0;
}

store *store_open(const char *path, bool sync_full, char *err, size_t errlen)
{
    store *s = NULL;
    int rc;

    if (path == NULL || path[0] == '\0') {
        store_set_err(err, errlen, "(none)", "no database path given");
        return NULL;
    }
    s = calloc(1, sizeof *s);
    if (s == NULL) {
        store_set_err(err, errlen, path, "out of memory");
        return NULL;
    }
    rc = sqlite3_open_v2(path, &s->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE
                             | SQLITE_OPEN_NOMUTEX, NULL);
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
    if (store_enable_wal(s->db, err, errlen, path) != 0)
        goto err;
    if (store_exec(s->db, sync_full ? "PRAGMA synchronous = FULL"
                                    : "PRAGMA synchronous = NORMAL")
            != SQLITE_OK
        || store_exec(s->db, "PRAGMA cache_size = " STORE_CACHE_SIZE)
               != SQLITE_OK
        || store_exec(s->db, "PRAGMA wal_autocheckpoint = "
                                 STORE_WAL_AUTOCHECKPOINT) != SQLITE_OK
        || store_exec(s->db, "PRAGMA temp_store = MEMORY") != SQLITE_OK) {
        store_set_db_err(err, errlen, path, s->db, "setting pragmas");
        goto err;
    }
    if (store_query_int(s->db, store_get_seq_sql, &s->last_seq)
        != SQLITE_OK) {
        store_set_db_err(err, errlen, path, s->db, "reading last_seq");
        goto err;
    }
    if (store_prepare(s->db, store_upsert_sql, &s->upsert, err, errlen, path)
        || store_prepare(s->db, store_delete_run_sql, &s->delete_run, err,
                         errlen, path)
        || store_prepare(s->db, store_set_seq_sql, &s->set_seq, err, errlen,
                         path)
        || store_prepare(s->db, "BEGIN IMMEDIATE", &s->begin, err, errlen,
                         path)
        || store_prepare(s->db, "COMMIT", &s->commit, err, errlen, path)
        || store_prepare(s->db, "ROLLBACK", &s->rollback, err, errlen, path))
        goto err;
    return s;

err:
    store_close(s);
    return NULL;
}

void store_close(store *s)
{
    if (s == NULL)
        return;
    sqlite3_finalize(s->upsert);
    sqlite3_finalize(s->delete_run);
    sqlite3_finalize(s->set_seq);
    sqlite3_finalize(s->begin);
    sqlite3_finalize(s->commit);
    sqlite3_finalize(s->rollback);
    /* Every statement is finalized above, so close cannot be refused. */
    sqlite3_close(s->db);
    free(s);
}

int64_t store_last_seq(const store *s)
{
    return s->last_seq;
}

const char *store_errmsg(const store *s)
{
    return s->errmsg;
}

/* Records why a write failed, before ROLLBACK overwrites the db's message. */
static void store_fail(store *s, const char *what)
{
    snprintf(s->errmsg, sizeof s->errmsg, "%s: %s", what,
             sqlite3_errmsg(s->db));
}

/*
 * Steps a statement that returns no rows and readies it for the next use.
 * Bindings are cleared because they may point into rows the caller frees
 * after this batch. Returns an sqlite rc (SQLITE_DONE on success).
 */
static int store_step_once(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);

    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

/* Binds a timestamp as RFC 3339 text from buf, or NULL. */
static int store_bind_ts(sqlite3_stmt *st, int idx, int64_t ms,
                         char buf[NS_TS_BUF])
{
    if (ms == NS_TS_NULL)
        return sqlite3_bind_null(st, idx);
    model_ts_format(ms, buf);
    return sqlite3_bind_text(st, idx, buf, -1, SQLITE_STATIC);
}

/*
 * Binds all 16 columns of one row into the upsert. Strings are bound
 * SQLITE_STATIC: the row and tsbuf outlive the step that follows, and
 * store_step_once clears the bindings afterwards. A NULL status name (an
 * out-of-range status) binds NULL, which the NOT NULL constraint rejects.
 */
static int store_bind_row(sqlite3_stmt *st, const ns_row *row,
                          char tsbuf[NS_TS_COUNT + 1][NS_TS_BUF])
{
    int rc;

#define STORE_BIND(call)                                                    \
    do {                                                                    \
        if ((rc = (call)) != SQLITE_OK)                                     \
            return rc;                                                      \
    } while (0)

    STORE_BIND(sqlite3_bind_text(st, COL_RUN_ID + 1, row->run_id, -1,
                                 SQLITE_STATIC));
    STORE_BIND(sqlite3_bind_text(st, COL_NODE_ID + 1, row->node_id, -1,
                                 SQLITE_STATIC));
    STORE_BIND(sqlite3_bind_text(st, COL_STATUS + 1,
                                 model_status_name(row->status), -1,
                                 SQLITE_STATIC));
    STORE_BIND(sqlite3_bind_int64(st, COL_ATTEMPT + 1, row->attempt));
    for (int f = 0; f < NS_TS_COUNT; f++)
        STORE_BIND(store_bind_ts(st, COL_TS_FIRST + f + 1, row->ts[f],
                                 tsbuf[f]));
    STORE_BIND(sqlite3_bind_text(st, COL_LAST_ERROR + 1, row->last_error, -1,
                                 SQLITE_STATIC));
    STORE_BIND(sqlite3_bind_int(st, COL_RETRYABLE + 1, row->retryable ? 1 : 0));
    STORE_BIND(sqlite3_bind_text(st, COL_SUSPENSION_REASON + 1,
                                 row->suspension_reason, -1, SQLITE_STATIC));
    STORE_BIND(sqlite3_bind_text(st, COL_RESUME_STATE + 1, row->resume_state,
                                 -1, SQLITE_STATIC));
    STORE_BIND(sqlite3_bind_text(st, COL_OUTPUTS + 1, row->outputs, -1,
                                 SQLITE_STATIC));
    STORE_BIND(store_bind_ts(st, COL_UPDATED_AT + 1, row->updated_at,
                             tsbuf[NS_TS_COUNT]));
    STORE_BIND(sqlite3_bind_int64(st, COL_SEQ + 1, row->seq));
#undef STORE_BIND
    return SQLITE_OK;
}

int store_write(store *s, const store_batch *b)
{
    /* Formatted timestamps of the row being upserted. */
    char tsbuf[NS_TS_COUNT + 1][NS_TS_BUF];

    /* Misuse is an error, not a crash; nothing has started yet. */
    if (b == NULL || (b->n_deletes > 0 && b->delete_runs == NULL)
        || (b->n_rows > 0 && b->rows == NULL)) {
        snprintf(s->errmsg, sizeof s->errmsg, "invalid batch");
        return -1;
    }
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
    }
    for (size_t i = 0; i < b->n_rows; i++) {
        if (b->rows[i] == NULL) {
            snprintf(s->errmsg, sizeof s->errmsg, "upsert: row %zu is NULL",
                     i);
            goto err;
        }
        if (store_bind_row(s->upsert, b->rows[i], tsbuf) != SQLITE_OK) {
            store_fail(s, "upsert");
            sqlite3_clear_bindings(s->upsert);
            goto err;
        }
        if (store_step_once(s->upsert) != SQLITE_DONE) {
            store_fail(s, "upsert");
            goto err;
        }
    }
    if (sqlite3_bind_int64(s->set_seq, 1, b->last_seq) != SQLITE_OK) {
        store_fail(s, "last_seq");
        goto err;
    }
    if (store_step_once(s->set_seq) != SQLITE_DONE) {
        store_fail(s, "last_seq");
        goto err;
    }
    if (store_step_once(s->commit) != SQLITE_DONE) {
        store_fail(s, "commit");
        goto err;
    }
    if (b->last_seq > s->last_seq)
        s->last_seq = b->last_seq;
    s->errmsg[0] = '\0';
    return 0;

err:
    /*
     * Some errors (IOERR, FULL, NOMEM) roll the transaction back by
     * themselves; a failed COMMIT (BUSY) leaves it open. Autocommit tells
     * which. If ROLLBACK itself fails, SQLite undoes the transaction when
     * the next BEGIN finds the journal hot, so there is nothing more to do.
     */
    if (!sqlite3_get_autocommit(s->db))
        store_step_once(s->rollback);
    return -1;
}

store_reader *store_reader_open(const char *path, char *err, size_t errlen)
{
    store_reader *r;

    if (path == NULL || path[0] == '\0') {
        store_set_err(err, errlen, "(none)", "no database path given");
        return NULL;
    }
    r = calloc(1, sizeof *r);
    if (r == NULL) {
        store_set_err(err, errlen, path, "out of memory");
        return NULL;
    }
    if (pthread_mutex_init(&r->lock, NULL) != 0) {
        store_set_err(err, errlen, path, "cannot create reader mutex");
        free(r);
        return NULL;
    }
    if (sqlite3_open_v2(path, &r->db,
                        SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL)
        != SQLITE_OK) {
        store_set_db_err(err, errlen, path, r->db, "opening database to read");
        goto err;
    }
    if (sqlite3_busy_timeout(r->db, STORE_READ_BUSY_MS) != SQLITE_OK) {
        store_set_db_err(err, errlen, path, r->db, "setting busy timeout");
        goto err;
    }
    if (store_prepare(r->db, store_select_run_sql, &r->select_run, err,
                      errlen, path) != 0)
        goto err;
    return r;

err:
    store_reader_close(r);
    return NULL;
}

void store_reader_close(store_reader *r)
{
    if (r == NULL)
        return;
    sqlite3_finalize(r->select_run);
    sqlite3_close(r->db);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

/*
 * A nullable text column: NULL stays NULL. Returns -1 only when SQLite could
 * not produce text for a non-NULL value (out of memory).
 */
static int store_column_text(sqlite3_stmt *st, int col, const char **out)
{
    if (sqlite3_column_type(st, col) == SQLITE_NULL) {
        *out = NULL;
        return 0;
    }
    *out = (const char *)sqlite3_column_text(st, col);
    return *out != NULL ? 0 : -1;
}

/* A nullable timestamp column. -1 for text that is not RFC 3339. */
static int store_column_ts(sqlite3_stmt *st, int col, int64_t *out)
{
    const char *text;

    if (store_column_text(st, col, &text) != 0)
        return -1;
    if (text == NULL) {
        *out = NS_TS_NULL;
        return 0;
    }
    return model_ts_parse(text, out);
}

/*
 * Fills a draft from the current result row. Its strings borrow from the
 * statement and stay valid until the next step or reset. A row we did not
 * write (unknown status, bad timestamp) is refused rather than guessed at.
 */
static int store_row_draft(sqlite3_stmt *st, const char *run_id, ns_row *d)
{
    const char *status;

    memset(d, 0, sizeof *d);
    d->run_id = run_id;
    if (store_column_text(st, COL_NODE_ID, &d->node_id) != 0
        || d->node_id == NULL)
        return -1;
    if (store_column_text(st, COL_STATUS, &status) != 0 || status == NULL
        || model_status_parse(status, &d->status) != 0)
        return -1;
    d->attempt = sqlite3_column_int64(st, COL_ATTEMPT);
    for (int f = 0; f < NS_TS_COUNT; f++)
        if (store_column_ts(st, COL_TS_FIRST + f, &d->ts[f]) != 0)
            return -1;
    if (store_column_text(st, COL_LAST_ERROR, &d->last_error) != 0)
        return -1;
    d->retryable = sqlite3_column_int64(st, COL_RETRYABLE) != 0;
    if (store_column_text(st, COL_SUSPENSION_REASON, &d->suspension_reason)
            != 0
        || store_column_text(st, COL_RESUME_STATE, &d->resume_state) != 0
        || store_column_text(st, COL_OUTPUTS, &d->outputs) != 0)
        return -1;
    if (store_column_ts(st, COL_UPDATED_AT, &d->updated_at) != 0
        || d->updated_at == NS_TS_NULL)
        return -1;
    d->seq = sqlite3_column_int64(st, COL_SEQ);
    return 0;
}

/*
 * fn runs with the reader's mutex held (the draft borrows from the
 * statement), so fn must not call back into this reader.
 */
int store_reader_load_run(store_reader *r, const char *run_id,
                          int (*fn)(void *ctx, ns_row *row), void *ctx)
{
    sqlite3_stmt *st = r->select_run;
    int ret = -1;
    int rc;

    if (run_id == NULL || fn == NULL)
        return -1;
    pthread_mutex_lock(&r->lock);
    if (sqlite3_bind_text(st, 1, run_id, -1, SQLITE_STATIC) != SQLITE_OK)
        goto out;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        ns_row draft;
        ns_row *row;

        if (store_row_draft(st, run_id, &draft) != 0)
            goto out;
        row = model_row_copy(&draft);
        if (row == NULL)
            goto out;
        /* fn owns the row from here, whatever it returns. */
        if (fn(ctx, row) != 0)
            goto out;
    }
    if (rc == SQLITE_DONE)
        ret = 0;

out:
    /* Ends the read transaction so the writer's checkpoints can progress. */
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    pthread_mutex_unlock(&r->lock);
    return ret;
}
