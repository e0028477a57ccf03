/*
 * store: the SQLite file behind nodestate (see store.h for the contract).
 *
 * Everything here is prepared once at open time so that a write is nothing
 * but bind/step/reset on cached statements inside one transaction.
 */
#include "store.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

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
/* A spill is the last write before exit; waiting a moment beats losing it. */
#define STORE_SPILL_BUSY_MS 1000
/*
 * 32 MiB of page cache for the sidecar: a piece (SPILL_PIECE_BYTES in the
 * engine) and the pages it lands on stay in memory until its commit.
 */
#define STORE_SPILL_CACHE_SIZE "-32768"
/* 64 MiB of page cache (negative = KiB): the working set of hot runs. */
#define STORE_CACHE_SIZE "-65536"
/* Pages between automatic checkpoints; fewer checkpoints measured ~1.6x faster. */
#define STORE_WAL_AUTOCHECKPOINT "10000"
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
 * The SQL below names the columns of NS_NODE_FIELDS by hand, in the list's
 * order (tests/test_store.c checks the tables against the list); a field
 * added to the list needs its column here, in both schemas, in the upsert's
 * SET, a placeholder more and, for a json field, a json_valid() in the
 * selects.
 */
#define STORE_COLUMNS                                                       \
    "run_id, node_id, status, attempt, scheduled_at, started_at, "          \
    "completed_at, failed_at, suspended_at, last_error, retryable, "        \
    "suspension_reason, resume_state_json, outputs_json, updated_at, seq"

/* Every column but the key takes the incoming row's value. */
#define STORE_UPSERT_SET                                                    \
    " ON CONFLICT (run_id, node_id) DO UPDATE SET"                          \
    " status = excluded.status,"                                            \
    " attempt = excluded.attempt,"                                          \
    " scheduled_at = excluded.scheduled_at,"                                \
    " started_at = excluded.started_at,"                                    \
    " completed_at = excluded.completed_at,"                                \
    " failed_at = excluded.failed_at,"                                      \
    " suspended_at = excluded.suspended_at,"                                \
    " last_error = excluded.last_error,"                                    \
    " retryable = excluded.retryable,"                                      \
    " suspension_reason = excluded.suspension_reason,"                      \
    " resume_state_json = excluded.resume_state_json,"                      \
    " outputs_json = excluded.outputs_json,"                                \
    " updated_at = excluded.updated_at,"                                    \
    " seq = excluded.seq"

/*
 * Idempotent (IF NOT EXISTS) so that two processes racing to create the same
 * new file both end up with the same schema, and so that a migrated file
 * (whose table exists already) gets only the index and meta table.
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

/*
 * The sidecar: a log of the rows spilled, keyed by seq so that every piece
 * appends at the end of the table (no index, few pages touched, a small
 * journal: about twice as fast as upserting by key), and the runs deleted,
 * each with the seq before which its logged rows are void. The row columns
 * and constraints are the main table's, so the same rows are refused.
 */
static const char store_spill_schema_sql[] =
    "CREATE TABLE IF NOT EXISTS spill_log ("
    " seq INTEGER PRIMARY KEY,"
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
    " updated_at TEXT NOT NULL"
    ");"
    "CREATE TABLE IF NOT EXISTS spill_deletes ("
    " run_id TEXT PRIMARY KEY,"
    " before_seq INTEGER NOT NULL"
    ");"
    "CREATE TABLE IF NOT EXISTS nodestate_meta ("
    " key TEXT PRIMARY KEY,"
    " value INTEGER"
    ");"
    "PRAGMA user_version = 1;";

static const char store_spill_row_sql[] =
    "INSERT INTO spill_log (" STORE_COLUMNS ")"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,"
    " ?15, ?16)";

/*
 * A delete voids the logged rows of its run spilled before its piece: they
 * all have seqs up to the last_seq recorded so far, while the rows of its
 * own piece that survive planning are newer than the delete itself.
 */
static const char store_spill_delete_sql[] =
    "INSERT INTO spill_deletes (run_id, before_seq) VALUES (?1,"
    " coalesce((SELECT value FROM nodestate_meta WHERE key = 'last_seq'), 0)"
    " + 1)"
    " ON CONFLICT (run_id) DO UPDATE SET"
    " before_seq = max(before_seq, excluded.before_seq)";

static const char store_upsert_sql[] =
    "INSERT INTO run_node_state (" STORE_COLUMNS ")"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,"
    " ?15, ?16)" STORE_UPSERT_SET;

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

static const char store_meta_get_sql[] =
    "SELECT value FROM nodestate_meta WHERE key = ?1";

/* A plain replace: the caller's keys need not only grow. */
static const char store_meta_set_sql[] =
    "INSERT INTO nodestate_meta (key, value) VALUES (?1, ?2)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/*
 * The api splices the JSON columns into responses as they are, so the reader
 * must know whether they hold JSON; json_valid() tells without a parse in C.
 */
static const char store_select_run_sql[] =
    "SELECT " STORE_COLUMNS ", json_valid(resume_state_json),"
    " json_valid(outputs_json) FROM run_node_state WHERE run_id = ?1"
    " ORDER BY node_id";
/* One node by primary key, and whether its run has any row. */
static const char store_select_node_sql[] =
    "SELECT " STORE_COLUMNS ", json_valid(resume_state_json),"
    " json_valid(outputs_json) FROM run_node_state"
    " WHERE run_id = ?1 AND node_id = ?2";
/* A run's rows after a node id, in node_id order ("" is before every id). */
static const char store_select_after_sql[] =
    "SELECT " STORE_COLUMNS ", json_valid(resume_state_json),"
    " json_valid(outputs_json) FROM run_node_state"
    " WHERE run_id = ?1 AND node_id > ?2 ORDER BY node_id";
static const char store_select_run_exists_sql[] =
    "SELECT 1 FROM run_node_state WHERE run_id = ?1 LIMIT 1";

/* The rows of the log that no later delete of their run voids. */
#define STORE_SPILL_LIVE                                                    \
    " FROM " STORE_SPILL_SCHEMA ".spill_log AS l WHERE NOT EXISTS"          \
    " (SELECT 1 FROM " STORE_SPILL_SCHEMA ".spill_deletes AS d"             \
    "  WHERE d.run_id = l.run_id AND d.before_seq > l.seq)"

/*
 * Replay of the log, run on the write connection with the sidecar attached.
 * Deletes first; then the live rows in key order (SQLite takes keys in
 * order fastest), each node's in seq order so that its newest wins. The seq
 * guard only matters if a sidecar were ever replayed late, after newer
 * writes: it never lets an older spilled row replace them.
 */
static const char store_replay_log_sql[] =
    "DELETE FROM main.run_node_state WHERE run_id IN"
    " (SELECT run_id FROM " STORE_SPILL_SCHEMA ".spill_deletes);"
    "INSERT INTO main.run_node_state (" STORE_COLUMNS ")"
    " SELECT " STORE_COLUMNS STORE_SPILL_LIVE
    " ORDER BY run_id, node_id, seq" STORE_UPSERT_SET
    " WHERE excluded.seq >= run_node_state.seq;"
    "INSERT INTO main.nodestate_meta (key, value)"
    " SELECT 'last_seq', max("
    "  coalesce((SELECT value FROM " STORE_SPILL_SCHEMA ".nodestate_meta"
    "            WHERE key = 'last_seq'), 0),"
    "  coalesce((SELECT max(seq) FROM " STORE_SPILL_SCHEMA ".spill_log), 0))"
    " WHERE true"
    " ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value);";

/*
 * Replay of a sidecar written by builds before the log (one table keyed
 * like the main one, plus the runs deleted), so that one left behind by an
 * upgrade still replays. "WHERE true" is SQLite's documented way to keep ON
 * CONFLICT from being parsed as a join constraint after INSERT ... SELECT.
 */
static const char store_replay_v1_sql[] =
    "DELETE FROM main.run_node_state WHERE run_id IN"
    " (SELECT run_id FROM " STORE_SPILL_SCHEMA ".spilled_deletes);"
    "INSERT INTO main.run_node_state (" STORE_COLUMNS ")"
    " SELECT " STORE_COLUMNS " FROM " STORE_SPILL_SCHEMA ".run_node_state"
    " WHERE true" STORE_UPSERT_SET
    " WHERE excluded.seq >= run_node_state.seq;"
    "INSERT INTO main.nodestate_meta (key, value)"
    " SELECT 'last_seq', max("
    "  coalesce((SELECT value FROM " STORE_SPILL_SCHEMA ".nodestate_meta"
    "            WHERE key = 'last_seq'), 0),"
    "  coalesce((SELECT max(seq) FROM " STORE_SPILL_SCHEMA
    ".run_node_state), 0))"
    " WHERE true"
    " ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value);";

/* ---------------------------------------------------------------------
 * Fault injection: NODESTATE_FAULTS builds only (see store.h).
 *
 * Everything that makes a write fail on purpose lives in this section. A
 * normal build defines the hooks at its end as empty macros, so it carries
 * no fault code at all. The hooks are:
 *   STORE_FAULTS_LOAD(s, msg, len)  parse the environment at open (0 / -1)
 *   STORE_FAULT_ROW(s, row)         true: refuse this upsert as unwritable
 *   STORE_FAULT_COMMIT(s)           -1 (errmsg set): fail this write
 *   STORE_FAULT_WROTE(s)            a write committed
 * --------------------------------------------------------------------- */
#ifdef NODESTATE_FAULTS

/* How many row= entries one spec may name. */
#define STORE_FAULT_ROWS_MAX 8

typedef struct store_faults {
    int commit_rc;              /* SQLITE_BUSY / _IOERR / _FULL; 0 = none */
    long commit_left;           /* injected write failures still to come */
    long after;                 /* successful writes before faults start */
    long wrote;                 /* successful writes so far */
    size_t n_rows;
    char rows[STORE_FAULT_ROWS_MAX][NS_ID_MAX + 1]; /* node_ids refused */
} store_faults;

#define STORE_FAULTS_FIELD store_faults faults;

/* A whole decimal number in [min, LONG_MAX]; 0 or -1. */
static int store_faults_number(const char *text, long min, long *out)
{
    char *end;
    long v;

    if (text[0] < '0' || text[0] > '9')
        return -1;
    errno = 0;
    v = strtol(text, &end, 10);
    if (errno != 0 || *end != '\0' || v < min)
        return -1;
    *out = v;
    return 0;
}

/* One "key=value" entry of the spec into f. 0, or -1 if it is not one. */
static int store_faults_entry(store_faults *f, char *entry)
{
    char *value = strchr(entry, '=');
    char *count;

    if (value == NULL)
        return -1;
    *value++ = '\0';
    if (strcmp(entry, "commit") == 0) {
        count = strchr(value, ':');
        if (count == NULL)
            return -1;
        *count++ = '\0';
        if (strcmp(value, "busy") == 0)
            f->commit_rc = SQLITE_BUSY;
        else if (strcmp(value, "ioerr") == 0)
            f->commit_rc = SQLITE_IOERR;
        else if (strcmp(value, "full") == 0)
            f->commit_rc = SQLITE_FULL;
        else
            return -1;
        return store_faults_number(count, 1, &f->commit_left);
    }
    if (strcmp(entry, "after") == 0)
        return store_faults_number(value, 0, &f->after);
    if (strcmp(entry, "row") == 0) {
        if (!model_id_valid(value, strlen(value))
            || f->n_rows == STORE_FAULT_ROWS_MAX)
            return -1;
        snprintf(f->rows[f->n_rows++], sizeof f->rows[0], "%s", value);
        return 0;
    }
    return -1;
}

/*
 * Reads NODESTATE_FAULTS into f (unset or empty: no faults). On a spec it
 * cannot read, writes a message naming the variable and returns -1, so a
 * typo in a test fails loudly instead of testing nothing.
 */
static int store_faults_load(store_faults *f, char *msg, size_t msglen)
{
    const char *spec = getenv("NODESTATE_FAULTS");
    char *copy, *entry, *save = NULL;
    int ret = 0;

    memset(f, 0, sizeof *f);
    if (spec == NULL || spec[0] == '\0')
        return 0;
    copy = strdup(spec);
    if (copy == NULL) {
        snprintf(msg, msglen, "NODESTATE_FAULTS: out of memory");
        return -1;
    }
    /* strtok_r would skip empty entries; a stray comma is a typo. */
    for (entry = copy; ret == 0 && entry != NULL; entry = save) {
        save = strchr(entry, ',');
        if (save != NULL)
            *save++ = '\0';
        if (store_faults_entry(f, entry) != 0) {
            snprintf(msg, msglen,
                     "NODESTATE_FAULTS=\"%s\": cannot read \"%s\" (expected "
                     "commit=busy|ioerr|full:N, after=N or row=NODE_ID, "
                     "comma-separated)", spec, entry);
            ret = -1;
        }
    }
    free(copy);
    return ret;
}

static bool store_faults_active(const store_faults *f)
{
    return f->wrote >= f->after;
}

static bool store_faults_row(const store_faults *f, const char *node_id)
{
    if (!store_faults_active(f))
        return false;
    for (size_t i = 0; i < f->n_rows; i++)
        if (strcmp(f->rows[i], node_id) == 0)
            return true;
    return false;
}

/* -1 with errmsg set when this write is to fail; each one uses up one. */
static int store_faults_commit(store_faults *f, char *errmsg, size_t len)
{
    if (f->commit_rc == 0 || f->commit_left == 0 || !store_faults_active(f))
        return 0;
    f->commit_left--;
    snprintf(errmsg, len, "commit: %s (injected fault)",
             sqlite3_errstr(f->commit_rc));
    return -1;
}

#define STORE_FAULTS_LOAD(s, msg, len) store_faults_load(&(s)->faults, msg, len)
#define STORE_FAULT_ROW(s, row)                                             \
    ((s) != NULL && store_faults_row(&(s)->faults, (row)->node_id))
#define STORE_FAULT_COMMIT(s)                                               \
    store_faults_commit(&(s)->faults, (s)->errmsg, sizeof (s)->errmsg)
#define STORE_FAULT_WROTE(s) ((void)(s)->faults.wrote++)

#else /* !NODESTATE_FAULTS */

#define STORE_FAULTS_FIELD
#define STORE_FAULTS_LOAD(s, msg, len) 0
#define STORE_FAULT_ROW(s, row) false
#define STORE_FAULT_COMMIT(s) 0
#define STORE_FAULT_WROTE(s) ((void)0)

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

/* The write connection. Owned by one thread (the writer); no locking. */
struct store {
    sqlite3 *db;
    char *path;                 /* as given to store_open; names the sidecar */
    sqlite3_stmt *upsert;       /* one row of run_node_state */
    sqlite3_stmt *delete_run;   /* every row of one run */
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

/* The read-through connection; any thread may use it. */
struct store_reader {
    pthread_mutex_t lock;       /* guards db and the statements */
    sqlite3 *db;
    sqlite3_stmt *select_run;   /* rows of one run in node_id order */
    sqlite3_stmt *select_node;  /* one row by primary key */
    sqlite3_stmt *select_after; /* rows of one run after a node id */
    sqlite3_stmt *run_exists;   /* whether a run has any row */
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

/* Ends the transaction in progress, if any, keeping nothing of it. */
static void store_rollback(sqlite3 *db)
{
    /*
     * Some errors (IOERR, FULL, NOMEM) roll the transaction back by
     * themselves; a failed COMMIT (BUSY) leaves it open. Autocommit tells
     * which. If ROLLBACK itself fails, SQLite undoes the transaction when
     * the next BEGIN finds the journal hot, so there is nothing more to do.
     */
    if (!sqlite3_get_autocommit(db))
        store_exec(db, "ROLLBACK");
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
 * The columns a version-0 run_node_state (the original design's table) may
 * lack, and how each is added. run_id, node_id, status and updated_at have
 * no sensible default, so a table without them is refused instead. attempt
 * defaults to 1 because every recorded node has had at least one attempt
 * and the API promises attempt >= 1.
 */
static const struct store_added_col {
    const char *name;
    const char *decl;           /* for ALTER TABLE ... ADD COLUMN */
} store_added_cols[] = {
    {"attempt", "attempt INTEGER NOT NULL DEFAULT 1"},
    {"scheduled_at", "scheduled_at TEXT"},
    {"started_at", "started_at TEXT"},
    {"completed_at", "completed_at TEXT"},
    {"failed_at", "failed_at TEXT"},
    {"suspended_at", "suspended_at TEXT"},
    {"last_error", "last_error TEXT"},
    {"retryable", "retryable INTEGER NOT NULL DEFAULT 0"},
    {"suspension_reason", "suspension_reason TEXT"},
    {"resume_state_json", "resume_state_json TEXT"},
    {"outputs_json", "outputs_json TEXT"},
    {"seq", "seq INTEGER NOT NULL DEFAULT 0"},
};
#define STORE_N_ADDED_COLS                                                  \
    (sizeof store_added_cols / sizeof store_added_cols[0])

/* Columns we read as RFC 3339 text or as a status name. */
static const char *const store_text_cols[] = {
    "status", "scheduled_at", "started_at", "completed_at", "failed_at",
    "suspended_at", "updated_at",
};
#define STORE_N_TEXT_COLS (sizeof store_text_cols / sizeof store_text_cols[0])

/* The timestamp columns, every one of them present once columns are added. */
static const char *const store_ts_cols[] = {
    "scheduled_at", "started_at", "completed_at", "failed_at",
    "suspended_at", "updated_at",
};
#define STORE_N_TS_COLS (sizeof store_ts_cols / sizeof store_ts_cols[0])

/* The columns holding JSON text, every one of them present by then too. */
static const char *const store_json_cols[] = {
    "resume_state_json", "outputs_json",
};
#define STORE_N_JSON_COLS                                                   \
    (sizeof store_json_cols / sizeof store_json_cols[0])

/*
 * Room for the value checks and rewrites of one column (our own column
 * names only, so they always fit), and for the message of a refusal.
 */
#define STORE_MIGRATE_SQL_MAX 1024
#define STORE_MIGRATE_MSG_MAX 512

/*
 * Migration's timestamp conversion, as SQL on one column:
 * first nodestate_ts, i.e. exactly what the reader accepts (any RFC 3339,
 * truncated to the ms like the reader does), then SQLite's own date forms
 * ("2026-11-26 16:27:29", taken as UTC as SQLite writes them), rounded to
 * the ms by strftime. The GLOB keeps SQLite from reading bare numbers (a
 * julian day), 'now' or a time without a date as a date. NULL: none fits.
 * The column name goes in three times.
 */
#define STORE_TS_CONVERT_SQL                                                \
    "coalesce(nodestate_ts(%s), CASE WHEN %s GLOB"                          \
    " '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*'"                        \
    " THEN strftime('%%Y-%%m-%%dT%%H:%%M:%%fZ', %s) END)"

/*
 * nodestate_ts(x): x in our stored form when model_ts_parse reads it, else
 * NULL. Registered on the write connection only while migrating.
 */
static void store_sql_ts(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    const unsigned char *text;
    char buf[NS_TS_BUF];
    int64_t ms;

    if (sqlite3_value_type(argv[0]) == SQLITE_NULL) {
        sqlite3_result_null(ctx);
        return;
    }
    text = sqlite3_value_text(argv[0]);
    if (text == NULL) {
        sqlite3_result_error_nomem(ctx);
        return;
    }
    if (model_ts_parse((const char *)text, &ms) != 0) {
        sqlite3_result_null(ctx);
        return;
    }
    model_ts_format(ms, buf);
    sqlite3_result_text(ctx, buf, -1, SQLITE_TRANSIENT);
}

/*
 * Runs sql, which selects quote(value), quote(run_id), quote(node_id) of
 * the first offending row, if any. Returns 0 for none, 1 with msg saying
 * "run_node_state.<col> holds <value> (<key>), <why>", or -1 on a SQLite
 * error (the connection's message tells it).
 */
static int store_migrate_find_bad(sqlite3 *db, const char *sql,
                                  const char *col, const char *why,
                                  char *msg, size_t msglen)
{
    sqlite3_stmt *st = NULL;
    const unsigned char *v[3];
    int ret = -1;
    int rc;

    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        goto out;
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        ret = 0;
        goto out;
    }
    if (rc != SQLITE_ROW)
        goto out;
    for (int i = 0; i < 3; i++)
        if ((v[i] = sqlite3_column_text(st, i)) == NULL)
            goto out;       /* quote() never gives NULL: out of memory */
    snprintf(msg, msglen,
             "cannot migrate schema version 0: run_node_state.%s holds %.48s"
             " (run_id %.48s, node_id %.48s), %s; fix or remove such rows"
             " first", col, (const char *)v[0], (const char *)v[1],
             (const char *)v[2], why);
    ret = 1;

out:
    sqlite3_finalize(st);
    return ret;
}

/*
 * The values of a version-0 table, checked and converted so that every row
 * migrated reads back: statuses must be ours, attempt a whole number >= 1,
 * the JSON columns NULL or JSON, timestamps are rewritten to our RFC 3339
 * UTC millisecond form, updated_at must be there. Declared
 * types alone cannot promise this (a TEXT column may hold SQLite's
 * "2026-11-26 16:27:29"). Runs inside the migration's transaction, so a
 * refusal leaves the file as it was. Returns 0 or -1 with err set.
 */
static int store_migrate_values(sqlite3 *db, char *err, size_t errlen,
                                const char *path)
{
    char sql[STORE_MIGRATE_SQL_MAX];
    char msg[STORE_MIGRATE_MSG_MAX];
    size_t used;
    bool registered = false;
    int bad;
    int ret = -1;

    if (sqlite3_create_function_v2(db, "nodestate_ts", 1,
                                   SQLITE_UTF8 | SQLITE_DETERMINISTIC
                                       | SQLITE_DIRECTONLY,
                                   NULL, store_sql_ts, NULL, NULL, NULL)
        != SQLITE_OK) {
        store_set_db_err(err, errlen, path, db,
                         "migrating schema version 0: registering a function");
        goto out;
    }
    registered = true;

    used = (size_t)snprintf(sql, sizeof sql,
                            "SELECT quote(status), quote(run_id),"
                            " quote(node_id) FROM run_node_state WHERE"
                            " status IS NULL OR CAST(status AS TEXT)"
                            " NOT IN (");
    for (int i = 0; i < NS_STATUS_COUNT && used < sizeof sql; i++)
        used += (size_t)snprintf(sql + used, sizeof sql - used, "%s'%s'",
                                 i > 0 ? ", " : "",
                                 model_status_name((ns_status)i));
    if (used < sizeof sql)
        snprintf(sql + used, sizeof sql - used, ") LIMIT 1");
    bad = store_migrate_find_bad(db, sql, "status", "not a known status",
                                 msg, sizeof msg);
    if (bad != 0)
        goto refused;

    /*
     * The API promises attempt >= 1, and the reader would take text or a
     * fraction through sqlite3_column_int64 as some other number.
     */
    bad = store_migrate_find_bad(db,
                                 "SELECT quote(attempt), quote(run_id),"
                                 " quote(node_id) FROM run_node_state WHERE"
                                 " attempt IS NULL OR typeof(attempt) <>"
                                 " 'integer' OR attempt < 1 LIMIT 1",
                                 "attempt", "not a whole number >= 1", msg,
                                 sizeof msg);
    if (bad != 0)
        goto refused;

    /* The api splices these into responses; text not JSON would break them. */
    for (size_t i = 0; i < STORE_N_JSON_COLS; i++) {
        const char *col = store_json_cols[i];

        snprintf(sql, sizeof sql,
                 "SELECT quote(%s), quote(run_id), quote(node_id) FROM"
                 " run_node_state WHERE %s IS NOT NULL AND NOT json_valid(%s)"
                 " LIMIT 1", col, col, col);
        bad = store_migrate_find_bad(db, sql, col, "not valid JSON", msg,
                                     sizeof msg);
        if (bad != 0)
            goto refused;
    }

    for (size_t i = 0; i < STORE_N_TS_COLS; i++) {
        const char *col = store_ts_cols[i];
        /* The reader needs updated_at; the other timestamps may be NULL. */
        bool required = strcmp(col, "updated_at") == 0;

        snprintf(sql, sizeof sql,
                 "SELECT quote(%s), quote(run_id), quote(node_id) FROM"
                 " run_node_state WHERE %s %s " STORE_TS_CONVERT_SQL
                 " IS NULL LIMIT 1", col, required ? "" : col,
                 required ? "" : "IS NOT NULL AND", col, col, col);
        bad = store_migrate_find_bad(db, sql, col,
                                     "not a timestamp it can convert", msg,
                                     sizeof msg);
        if (bad != 0)
            goto refused;
        snprintf(sql, sizeof sql,
                 "UPDATE run_node_state SET %s = " STORE_TS_CONVERT_SQL
                 " WHERE %s IS NOT " STORE_TS_CONVERT_SQL, col, col, col, col,
                 col, col, col, col);
        if (store_exec(db, sql) != SQLITE_OK) {
            store_set_db_err(err, errlen, path, db,
                             "migrating schema version 0: converting "
                             "timestamps");
            goto out;
        }
    }
    ret = 0;
    goto out;

refused:
    if (bad < 0)
        store_set_db_err(err, errlen, path, db,
                         "migrating schema version 0: checking values");
    else
        store_set_err(err, errlen, path, msg);

out:
    /* Only this migration may use it; nothing else depends on it. */
    if (registered
        && sqlite3_create_function_v2(db, "nodestate_ts", 1, SQLITE_UTF8,
                                      NULL, NULL, NULL, NULL, NULL)
               != SQLITE_OK
        && ret == 0) {
        store_set_db_err(err, errlen, path, db,
                         "migrating schema version 0: removing a function");
        ret = -1;
    }
    return ret;
}

/*
 * Whether a declared column type has TEXT affinity, by SQLite's own rules
 * (datatype3.html §3.1): "INT" anywhere wins, then CHAR, CLOB or TEXT.
 */
static bool store_text_affinity(const char *decl)
{
    char up[64];
    size_t i;

    for (i = 0; decl[i] != '\0' && i + 1 < sizeof up; i++)
        up[i] = (char)(decl[i] >= 'a' && decl[i] <= 'z' ? decl[i] - 'a' + 'A'
                                                        : decl[i]);
    up[i] = '\0';
    if (strstr(up, "INT") != NULL)
        return false;
    return strstr(up, "CHAR") != NULL || strstr(up, "CLOB") != NULL
           || strstr(up, "TEXT") != NULL;
}

/* What a version-0 run_node_state has, from PRAGMA table_info. */
typedef struct store_old_table {
    bool has_added[STORE_N_ADDED_COLS];
    bool has_status;
    bool has_updated_at;
    bool key_ok;                /* primary key is exactly (run_id, node_id) */
    const char *bad_type_col;   /* a text column of another type, or NULL */
    char bad_type[64];          /* its declared type */
} store_old_table;

/* Fills t from the table's columns. Returns an sqlite rc. */
static int store_inspect_old(sqlite3 *db, store_old_table *t)
{
    sqlite3_stmt *st = NULL;
    int n_key = 0, key_hits = 0;
    int rc;

    memset(t, 0, sizeof *t);
    rc = sqlite3_prepare_v2(db,
                            "SELECT name, coalesce(type, ''), pk FROM"
                            " pragma_table_info('run_node_state')",
                            -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        const char *type = (const char *)sqlite3_column_text(st, 1);
        int pk = sqlite3_column_int(st, 2);

        if (name == NULL || type == NULL) {
            rc = SQLITE_NOMEM;
            break;
        }
        if (pk > 0) {
            n_key++;
            if ((pk == 1 && strcmp(name, "run_id") == 0)
                || (pk == 2 && strcmp(name, "node_id") == 0))
                key_hits++;
        }
        t->has_status |= strcmp(name, "status") == 0;
        t->has_updated_at |= strcmp(name, "updated_at") == 0;
        for (size_t i = 0; i < STORE_N_ADDED_COLS; i++)
            if (strcmp(name, store_added_cols[i].name) == 0)
                t->has_added[i] = true;
        for (size_t i = 0; i < STORE_N_TEXT_COLS; i++)
            if (t->bad_type_col == NULL
                && strcmp(name, store_text_cols[i]) == 0
                && !store_text_affinity(type)) {
                t->bad_type_col = store_text_cols[i];
                snprintf(t->bad_type, sizeof t->bad_type, "%s",
                         type[0] != '\0' ? type : "(no type)");
            }
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return rc;
    t->key_ok = n_key == 2 && key_hits == 2;
    return SQLITE_OK;
}

/*
 * Gives every version-0 row without a seq of its own (0, NULL, not a whole
 * number; the old design had no seq, so the added column says 0) a distinct
 * one: an ETag shared by every node would let a conditional write pass
 * against a state it never saw. Rows are numbered in (run_id, node_id)
 * order above the highest seq already there (positive seqs are kept, and a
 * last_seq already recorded counts too), so seq still only ever grows. IS,
 * not =, because a rowid table's key columns may hold NULL.
 */
static const char store_number_v0_sql[] =
    "UPDATE run_node_state SET seq = numbered.n FROM"
    " (SELECT run_id, node_id, max("
    "   coalesce((SELECT max(seq) FROM run_node_state"
    "             WHERE typeof(seq) = 'integer' AND seq > 0), 0),"
    "   coalesce((SELECT value FROM nodestate_meta WHERE key = 'last_seq'"
    "             AND typeof(value) = 'integer'), 0))"
    "   + row_number() OVER (ORDER BY run_id, node_id) AS n"
    "  FROM run_node_state WHERE typeof(seq) <> 'integer' OR seq < 1)"
    " AS numbered"
    " WHERE numbered.run_id IS run_node_state.run_id"
    " AND numbered.node_id IS run_node_state.node_id";

/*
 * Brings the original design's table (user_version 0) up to version 1
 * inside the caller's transaction: the missing columns, then the index,
 * meta table and version, then seqs for the rows and last_seq from them.
 * A table we cannot read the same way (another key, non-text statuses or
 * timestamps) is refused rather than half converted. Returns 0 or -1 with err set.
 */
static int store_migrate_v0(sqlite3 *db, char *err, size_t errlen,
                            const char *path)
{
    store_old_table t;
    char msg[STORE_ERRMSG_MAX];
    char sql[128];

    if (store_inspect_old(db, &t) != SQLITE_OK) {
        store_set_db_err(err, errlen, path, db,
                         "migrating schema version 0: reading run_node_state");
        return -1;
    }
    if (!t.key_ok) {
        store_set_err(err, errlen, path,
                      "cannot migrate schema version 0: the primary key of "
                      "run_node_state is not (run_id, node_id)");
        return -1;
    }
    if (!t.has_status || !t.has_updated_at) {
        snprintf(msg, sizeof msg,
                 "cannot migrate schema version 0: run_node_state has no "
                 "%s column", !t.has_status ? "status" : "updated_at");
        store_set_err(err, errlen, path, msg);
        return -1;
    }
    if (t.bad_type_col != NULL) {
        snprintf(msg, sizeof msg,
                 "cannot migrate schema version 0: run_node_state.%s is "
                 "declared %s, not text", t.bad_type_col, t.bad_type);
        store_set_err(err, errlen, path, msg);
        return -1;
    }
    for (size_t i = 0; i < STORE_N_ADDED_COLS; i++) {
        if (t.has_added[i])
            continue;
        snprintf(sql, sizeof sql, "ALTER TABLE run_node_state ADD COLUMN %s",
                 store_added_cols[i].decl);
        if (store_exec(db, sql) != SQLITE_OK) {
            store_set_db_err(err, errlen, path, db,
                             "migrating schema version 0: adding a column");
            return -1;
        }
    }
    if (store_migrate_values(db, err, errlen, path) != 0)
        return -1;
    if (store_exec(db, store_schema_sql) != SQLITE_OK
        || store_exec(db, store_number_v0_sql) != SQLITE_OK
        || store_exec(db,
                      "INSERT INTO nodestate_meta (key, value)"
                      " SELECT 'last_seq', coalesce(max(seq), 0)"
                      " FROM run_node_state WHERE true"
                      " ON CONFLICT (key) DO UPDATE SET"
                      " value = max(value, excluded.value)") != SQLITE_OK) {
        store_set_db_err(err, errlen, path, db, "migrating schema version 0");
        return -1;
    }
    return 0;
}

/*
 * Creates the schema on a new file (user_version 0), migrates the original
 * design's table (user_version 0 with run_node_state), accepts version 1 and
 * refuses anything newer. Returns 0 or -1 with err set.
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
    if (version == 0 && has_table) {
        if (store_migrate_v0(db, err, errlen, path) != 0)
            goto err;
    } else if (version == 0 && store_exec(db, store_schema_sql) != SQLITE_OK) {
        store_set_db_err(err, errlen, path, db, "creating schema");
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

/*
 * store_prepare for a statement that binds a row (params) or returns one
 * (!params), checking it against NS_NODE_FIELDS: the SQL above is written by
 * hand, and a column out of place would bind or read one field as another.
 * An insert must take one parameter per field; a select must return the
 * fields' columns by name, in order, then one json_valid() per json field.
 */
static int store_prepare_row(sqlite3 *db, const char *sql, bool params,
                             sqlite3_stmt **out, char *err, size_t errlen,
                             const char *path)
{
#define STORE_COLUMN_NAME_(name, member, json, column, kind) column,
    static const char *const columns[COL_COUNT] = {
        NS_NODE_FIELDS(STORE_COLUMN_NAME_)
    };
#undef STORE_COLUMN_NAME_
#define STORE_IS_JSON_(name, member, json, column, kind) + STORE_IS_JSON_##kind
    enum { n_json = 0 NS_NODE_FIELDS(STORE_IS_JSON_) };
#undef STORE_IS_JSON_
    bool ok;

    if (store_prepare(db, sql, out, err, errlen, path) != 0)
        return -1;
    if (params) {
        ok = sqlite3_bind_parameter_count(*out) == COL_COUNT;
    } else {
        ok = sqlite3_column_count(*out) == COL_COUNT + n_json;
        for (int i = 0; ok && i < COL_COUNT; i++) {
            const char *name = sqlite3_column_name(*out, i);
            ok = name != NULL && strcmp(name, columns[i]) == 0;
        }
    }
    if (!ok) {
        store_set_err(err, errlen, path,
                      "internal: a statement's columns are not the node's fields");
        return -1;
    }
    return 0;
}

store *store_open(const char *path, bool sync_full, char *err, size_t errlen)
{
    store *s = NULL;
    char msg[STORE_ERRMSG_MAX * 2];
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
    if (store_prepare_row(s->db, store_upsert_sql, true, &s->upsert, err,
                          errlen, path)
        || store_prepare(s->db, store_delete_run_sql, &s->delete_run, err,
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
    sqlite3_finalize(s->meta_get);
    sqlite3_finalize(s->meta_set);
    sqlite3_finalize(s->begin);
    sqlite3_finalize(s->commit);
    sqlite3_finalize(s->rollback);
    /* Every statement is finalized above, so close cannot be refused. */
    sqlite3_close(s->db);
    free(s->iso.v);
    free(s->path);
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

/*
 * The binders of NS_NODE_FIELDS' kinds, store_bind_<kind>. A timestamp is
 * bound as RFC 3339 text from the next buffer of *ts, or as NULL.
 */
static int store_bind_id(sqlite3_stmt *st, int idx, const char *v,
                         char (**ts)[NS_TS_BUF])
{
    (void)ts;
    return sqlite3_bind_text(st, idx, v, -1, SQLITE_STATIC);
}

static int store_bind_status(sqlite3_stmt *st, int idx, ns_status v,
                             char (**ts)[NS_TS_BUF])
{
    (void)ts;
    return sqlite3_bind_text(st, idx, model_status_name(v), -1, SQLITE_STATIC);
}

static int store_bind_int(sqlite3_stmt *st, int idx, int64_t v,
                          char (**ts)[NS_TS_BUF])
{
    (void)ts;
    return sqlite3_bind_int64(st, idx, v);
}

static int store_bind_timestamp(sqlite3_stmt *st, int idx, int64_t ms,
                                char (**ts)[NS_TS_BUF])
{
    char *buf = **ts;

    (*ts)++;
    if (ms == NS_TS_NULL)
        return sqlite3_bind_null(st, idx);
    model_ts_format(ms, buf);
    return sqlite3_bind_text(st, idx, buf, -1, SQLITE_STATIC);
}

static int store_bind_text(sqlite3_stmt *st, int idx, const char *v,
                           char (**ts)[NS_TS_BUF])
{
    (void)ts;
    return sqlite3_bind_text(st, idx, v, -1, SQLITE_STATIC);
}

static int store_bind_bool(sqlite3_stmt *st, int idx, bool v,
                           char (**ts)[NS_TS_BUF])
{
    (void)ts;
    return sqlite3_bind_int(st, idx, v ? 1 : 0);
}

static int store_bind_json(sqlite3_stmt *st, int idx, const char *v,
                           char (**ts)[NS_TS_BUF])
{
    (void)ts;
    return sqlite3_bind_text(st, idx, v, -1, SQLITE_STATIC);
}

/*
 * Binds every column of one row into the upsert (or the spill log's insert).
 * Strings are bound SQLITE_STATIC: the row and tsbuf outlive the step that
 * follows, and store_upsert_rows clears the bindings afterwards. A NULL
 * status name (an out-of-range status) binds NULL, which the NOT NULL
 * constraint rejects.
 */
#define STORE_COUNT_TS_(name, member, json, column, kind) + STORE_IS_TS_##kind
_Static_assert(0 NS_NODE_FIELDS(STORE_COUNT_TS_) == NS_TS_COUNT + 1,
               "a buffer of store_bind_row's tsbuf per timestamp column");
#undef STORE_COUNT_TS_

static int store_bind_row(sqlite3_stmt *st, const ns_row *row,
                          char tsbuf[NS_TS_COUNT + 1][NS_TS_BUF])
{
    char (*ts)[NS_TS_BUF] = tsbuf;
    int rc;

#define STORE_BIND_(name, member, json, column, kind)                       \
    if ((rc = store_bind_##kind(st, COL_##name + 1, row->member, &ts))      \
        != SQLITE_OK)                                                       \
        return rc;
    NS_NODE_FIELDS(STORE_BIND_)
#undef STORE_BIND_
    return SQLITE_OK;
}

/*
 * Whether SQLite refused a row for something about the row itself, so that
 * retrying the same row can never succeed. Everything else (BUSY, LOCKED,
 * IOERR, FULL, NOMEM, ...) is about the database and fails the whole batch.
 */
static bool store_row_level(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_CONSTRAINT:
    case SQLITE_TOOBIG:
    case SQLITE_MISMATCH:
    case SQLITE_RANGE:
        return true;
    default:
        return false;
    }
}

/* Notes rows[row] as left out. 0, or -1 when out of memory. */
static int store_isolation_add(store_isolation *iso, size_t row,
                               const char *why)
{
    if (iso->n == iso->cap) {
        size_t cap = iso->cap != 0 ? iso->cap * 2 : 4;
        store_isolated *v = realloc(iso->v, cap * sizeof *v);

        if (v == NULL)
            return -1;
        iso->v = v;
        iso->cap = cap;
    }
    iso->v[iso->n].row = row;
    snprintf(iso->v[iso->n].why, sizeof iso->v[0].why, "%s", why);
    iso->n++;
    return 0;
}

/*
 * Tells the batch's callback about the rows left out. Only called after
 * COMMIT: a batch that fails is retried whole, and reporting its isolated
 * rows each time would count them twice.
 */
static void store_isolation_report(const store_isolation *iso,
                                   const store_batch *b)
{
    if (b->on_isolated == NULL)
        return;
    for (size_t i = 0; i < iso->n; i++)
        b->on_isolated(b->isolated_ctx, b->rows[iso->v[i].row],
                       iso->v[i].why);
}

/*
 * Upserts rows[0..n) with st inside the open transaction of db. A row that
 * SQLite refuses by itself is skipped and noted in iso: its statement was
 * undone (ABORT, the default conflict resolution) and the transaction goes
 * on. faults_of is the store whose injected row faults apply, or NULL.
 * Any other failure stops: returns -1 with "upsert: <why>" in msg.
 */
static int store_upsert_rows(sqlite3 *db, sqlite3_stmt *st,
                             ns_row *const *rows, size_t n,
                             const store *faults_of, store_isolation *iso,
                             char *msg, size_t msglen)
{
    /* Formatted timestamps of the row being upserted. */
    char tsbuf[NS_TS_COUNT + 1][NS_TS_BUF];
    /* Leaves room for the "upsert: " prefix in msg. */
    char why[STORE_ERRMSG_MAX - 16];
    int rc;

    for (size_t i = 0; i < n; i++) {
        if (rows[i] == NULL) {
            snprintf(msg, msglen, "upsert: row %zu is NULL", i);
            return -1;
        }
        if (STORE_FAULT_ROW(faults_of, rows[i])) {
            snprintf(why, sizeof why, "row refused (injected fault)");
            rc = SQLITE_CONSTRAINT;
        } else {
            rc = store_bind_row(st, rows[i], tsbuf);
            if (rc == SQLITE_OK)
                rc = sqlite3_step(st);
            /* Read before reset, which may replace the message. */
            if (rc != SQLITE_DONE)
                snprintf(why, sizeof why, "%s", sqlite3_errmsg(db));
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
        }
        if (rc == SQLITE_DONE)
            continue;
        /*
         * RAISE(ROLLBACK) in a trigger is a constraint error that ends the
         * transaction too; without a transaction nothing is left to commit.
         */
        if (!store_row_level(rc) || sqlite3_get_autocommit(db)) {
            snprintf(msg, msglen, "upsert: %s", why);
            return -1;
        }
        if (store_isolation_add(iso, i, why) != 0) {
            snprintf(msg, msglen, "upsert: out of memory");
            return -1;
        }
    }
    return 0;
}

/* Whether b's arrays are there for the counts it claims. */
static bool store_batch_valid(const store_batch *b)
{
    return b != NULL && (b->n_deletes == 0 || b->delete_runs != NULL)
           && (b->n_rows == 0 || b->rows != NULL);
}

int store_write(store *s, store_batch *b)
{
    /* Misuse is an error, not a crash; nothing has started yet. */
    if (!store_batch_valid(b)) {
        snprintf(s->errmsg, sizeof s->errmsg, "invalid batch");
        return -1;
    }
    b->n_isolated = 0;
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
    }
    if (store_upsert_rows(s->db, s->upsert, b->rows, b->n_rows, s, &s->iso,
                          s->errmsg, sizeof s->errmsg) != 0)
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
    store_isolation_report(&s->iso, b);
    return 0;

err:
    store_rollback(s->db);
    return -1;
}

/* ---- nodestate_meta, for the caller's own counters ---- */

int store_meta_get(store *s, const char *key, int64_t *value)
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

int store_meta_set(store *s, const char *key, int64_t value)
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

/* ---- the sidecar: spill at shutdown, replay at the next start ---- */

void store_spill_path(const char *db_path, char *out, size_t outlen)
{
    if (outlen > 0)
        snprintf(out, outlen, "%s.spill", db_path != NULL ? db_path : "");
}

/* path + suffix into out; -1 (with err set) if it does not fit. */
static int store_path_with(const char *path, const char *suffix, char *out,
                           size_t outlen, char *err, size_t errlen)
{
    int n = snprintf(out, outlen, "%s%s", path, suffix);

    if (n < 0 || (size_t)n >= outlen) {
        store_set_err(err, errlen, path, "path too long");
        return -1;
    }
    return 0;
}

/* The sidecar open for appending pieces (store_spill_open). */
struct store_sidecar {
    char path[STORE_PATH_MAX];
    sqlite3 *db;
    sqlite3_stmt *del_run;      /* spill_deletes: the run, voiding its earlier rows */
    sqlite3_stmt *add_row;      /* spill_log */
    sqlite3_stmt *set_seq;
    sqlite3_stmt *count_piece;  /* nodestate_meta 'pieces' + 1 */
    store_isolation iso;        /* reused by every append */
};

/* Counts the pieces a sidecar holds, so replay can say how many it restored. */
static const char store_spill_count_piece_sql[] =
    "INSERT INTO nodestate_meta (key, value) VALUES ('pieces', 1)"
    " ON CONFLICT (key) DO UPDATE SET value = value + 1";

void store_spill_close(store_sidecar *sc)
{
    if (sc == NULL)
        return;
    sqlite3_finalize(sc->del_run);
    sqlite3_finalize(sc->add_row);
    sqlite3_finalize(sc->set_seq);
    sqlite3_finalize(sc->count_piece);
    sqlite3_close(sc->db);
    free(sc->iso.v);
    free(sc);
}

/*
 * The sidecar uses a rollback journal and synchronous=FULL whatever the
 * database does: it exists because the process is going away, and each
 * piece must survive a power loss that follows, while a piece cut short by
 * SIGKILL is rolled back from its journal by the next open.
 */
store_sidecar *store_spill_open(const char *db_path, char *err, size_t errlen)
{
    char msg[STORE_ERRMSG_MAX];
    int64_t version = 0;
    store_sidecar *sc;

    if (db_path == NULL || db_path[0] == '\0') {
        store_set_err(err, errlen, "(none)", "no database path given");
        return NULL;
    }
    sc = calloc(1, sizeof *sc);
    if (sc == NULL) {
        store_set_err(err, errlen, db_path, "out of memory");
        return NULL;
    }
    if (store_path_with(db_path, ".spill", sc->path, sizeof sc->path, err,
                        errlen) != 0)
        goto err;
    if (sqlite3_open_v2(sc->path, &sc->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE
                            | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        store_set_db_err(err, errlen, sc->path, sc->db, "opening spill file");
        goto err;
    }
    if (sqlite3_busy_timeout(sc->db, STORE_SPILL_BUSY_MS) != SQLITE_OK
        || store_exec(sc->db, "PRAGMA journal_mode = DELETE") != SQLITE_OK
        || store_exec(sc->db, "PRAGMA synchronous = FULL") != SQLITE_OK
        || store_exec(sc->db, "PRAGMA cache_size = " STORE_SPILL_CACHE_SIZE)
               != SQLITE_OK
        || store_query_int(sc->db, "PRAGMA user_version", &version)
               != SQLITE_OK) {
        store_set_db_err(err, errlen, sc->path, sc->db, "opening spill file");
        goto err;
    }
    if (version > STORE_SCHEMA_VERSION) {
        snprintf(msg, sizeof msg,
                 "spill file schema version %lld is newer than this "
                 "nodestate supports (%d)", (long long)version,
                 STORE_SCHEMA_VERSION);
        store_set_err(err, errlen, sc->path, msg);
        goto err;
    }
    /* Its own transaction: a piece killed half-way then leaves no schema half-made. */
    if (store_exec(sc->db, "BEGIN IMMEDIATE") != SQLITE_OK
        || store_exec(sc->db, store_spill_schema_sql) != SQLITE_OK
        || store_exec(sc->db, "COMMIT") != SQLITE_OK) {
        store_set_db_err(err, errlen, sc->path, sc->db,
                         "creating spill schema");
        store_rollback(sc->db);
        goto err;
    }
    if (store_prepare(sc->db, store_spill_delete_sql, &sc->del_run, err,
                      errlen, sc->path) != 0
        || store_prepare_row(sc->db, store_spill_row_sql, true, &sc->add_row,
                             err, errlen, sc->path) != 0
        || store_prepare(sc->db, store_set_seq_sql, &sc->set_seq, err,
                         errlen, sc->path) != 0
        || store_prepare(sc->db, store_spill_count_piece_sql,
                         &sc->count_piece, err, errlen, sc->path) != 0)
        goto err;
    return sc;

err:
    store_spill_close(sc);
    return NULL;
}

/*
 * One piece, one transaction: the runs deleted (voiding their rows of
 * earlier pieces), the rows appended to the log, last_seq, the piece count.
 */
int store_spill_append(store_sidecar *sc, const store_batch *b, char *err,
                       size_t errlen)
{
    char msg[STORE_ERRMSG_MAX];

    if (!store_batch_valid(b)) {
        store_set_err(err, errlen, sc->path, "invalid batch");
        return -1;
    }
    sc->iso.n = 0;
    if (store_exec(sc->db, "BEGIN IMMEDIATE") != SQLITE_OK) {
        store_set_db_err(err, errlen, sc->path, sc->db, "spill: begin");
        goto err;
    }
    for (size_t i = 0; i < b->n_deletes; i++) {
        const char *run = b->delete_runs[i];

        if (sqlite3_bind_text(sc->del_run, 1, run, -1, SQLITE_STATIC)
                != SQLITE_OK
            || store_step_once(sc->del_run) != SQLITE_DONE) {
            store_set_db_err(err, errlen, sc->path, sc->db,
                             "spill: delete run");
            goto err;
        }
    }
    if (store_upsert_rows(sc->db, sc->add_row, b->rows, b->n_rows, NULL,
                          &sc->iso, msg, sizeof msg) != 0) {
        store_set_err(err, errlen, sc->path, msg);
        goto err;
    }
    if (sqlite3_bind_int64(sc->set_seq, 1, b->last_seq) != SQLITE_OK
        || store_step_once(sc->set_seq) != SQLITE_DONE
        || store_step_once(sc->count_piece) != SQLITE_DONE) {
        store_set_db_err(err, errlen, sc->path, sc->db, "spill: last_seq");
        goto err;
    }
    if (store_exec(sc->db, "COMMIT") != SQLITE_OK) {
        store_set_db_err(err, errlen, sc->path, sc->db, "spill: commit");
        goto err;
    }
    store_isolation_report(&sc->iso, b);
    return 0;

err:
    sqlite3_clear_bindings(sc->del_run);
    store_rollback(sc->db);
    return -1;
}

int store_spill(const char *db_path, const store_batch *b, char *err,
                size_t errlen)
{
    store_sidecar *sc = store_spill_open(db_path, err, errlen);
    int ret;

    if (sc == NULL)
        return -1;
    ret = store_spill_append(sc, b, err, errlen);
    store_spill_close(sc);
    return ret;
}

/* Removes a file that may not exist. 0, or -1 with err set. */
static int store_unlink(const char *path, const char *suffix, char *err,
                        size_t errlen)
{
    char p[STORE_PATH_MAX + 16];
    char msg[STORE_ERRMSG_MAX];

    if (store_path_with(path, suffix, p, sizeof p, err, errlen) != 0)
        return -1;
    if (unlink(p) != 0 && errno != ENOENT) {
        snprintf(msg, sizeof msg, "spill replayed, but cannot remove: %s",
                 strerror(errno));
        store_set_err(err, errlen, p, msg);
        return -1;
    }
    return 0;
}

/*
 * Removes a replayed (or empty) sidecar. The file itself goes first: a
 * leftover journal next to no database is harmless, while a leftover
 * database would be replayed again, its deletes included, over newer rows.
 */
static int store_remove_spill(const char *spill, char *err, size_t errlen)
{
    static const char *const suffixes[] = {"", "-journal", "-wal", "-shm"};

    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++)
        if (store_unlink(spill, suffixes[i], err, errlen) != 0)
            return -1;
    return 0;
}

/* What store_spill_kind finds in a sidecar (bits). */
enum { STORE_SPILL_V1 = 1, STORE_SPILL_LOG = 2 };

/*
 * Checks the attached sidecar: STORE_SPILL_LOG when it holds the log of
 * this build, STORE_SPILL_V1 for the tables of earlier builds (both bits
 * for both), 0 when it holds nothing (a spill whose first transaction never
 * committed), -1 with err set for anything else.
 */
static int store_spill_kind(sqlite3 *db, const char *spill, char *err,
                            size_t errlen)
{
    int64_t version = 0, tables = 0, ours = 0, log = 0;
    char msg[STORE_ERRMSG_MAX];
    int kind = 0;

    if (store_query_int(db, "PRAGMA " STORE_SPILL_SCHEMA ".user_version",
                        &version) != SQLITE_OK
        || store_query_int(db,
                           "SELECT count(*) FROM " STORE_SPILL_SCHEMA
                           ".sqlite_master WHERE type = 'table'",
                           &tables) != SQLITE_OK
        || store_query_int(db,
                           "SELECT count(*) FROM " STORE_SPILL_SCHEMA
                           ".sqlite_master WHERE type = 'table' AND name IN"
                           " ('run_node_state', 'nodestate_meta',"
                           "  'spilled_deletes')",
                           &ours) != SQLITE_OK
        || store_query_int(db,
                           "SELECT count(*) FROM " STORE_SPILL_SCHEMA
                           ".sqlite_master WHERE type = 'table' AND name IN"
                           " ('spill_log', 'spill_deletes', 'nodestate_meta')",
                           &log) != SQLITE_OK) {
        store_set_db_err(err, errlen, spill, db, "reading spill file");
        return -1;
    }
    if (version == 0 && tables == 0)
        return 0;
    if (ours == 3)
        kind |= STORE_SPILL_V1;
    if (log == 3)
        kind |= STORE_SPILL_LOG;
    if (version != STORE_SCHEMA_VERSION || kind == 0) {
        snprintf(msg, sizeof msg,
                 "not a nodestate spill file of schema version %d "
                 "(user_version %lld); move it away to start",
                 STORE_SCHEMA_VERSION, (long long)version);
        store_set_err(err, errlen, spill, msg);
        return -1;
    }
    return kind;
}

/*
 * Whether the sidecar's rollback journal holds content: the process that
 * wrote the sidecar died inside a piece's transaction. Attaching rolls that
 * piece back (SQLite's hot journal), and the caller is told, so it is never
 * dropped silently.
 */
static bool store_spill_torn(const char *spill)
{
    char journal[STORE_PATH_MAX + 16];
    struct stat sb;

    if (snprintf(journal, sizeof journal, "%s-journal", spill)
        >= (int)sizeof journal)
        return false;
    return stat(journal, &sb) == 0 && sb.st_size > 0;
}

int store_replay(store *s, store_replayed *out, char *err, size_t errlen)
{
    char spill[STORE_PATH_MAX];
    struct stat sb;
    sqlite3_stmt *attach = NULL;
    int64_t n_rows = 0, n_deletes = 0, n_pieces = 0, last_seq = 0;
    int64_t v1_rows = 0, v1_deletes = 0;
    bool attached = false;
    int kind;
    int ret = -1;

    memset(out, 0, sizeof *out);
    if (store_path_with(s->path, ".spill", spill, sizeof spill, err, errlen)
        != 0)
        return -1;
    if (stat(spill, &sb) != 0) {
        if (errno == ENOENT)
            return 0;
        store_set_err(err, errlen, spill, strerror(errno));
        return -1;
    }
    out->torn = store_spill_torn(spill);
    /* An empty file is a spill that never got its schema: nothing to do. */
    if (sb.st_size == 0)
        return store_remove_spill(spill, err, errlen);

    if (sqlite3_prepare_v2(s->db, "ATTACH DATABASE ?1 AS " STORE_SPILL_SCHEMA,
                           -1, &attach, NULL) != SQLITE_OK
        || sqlite3_bind_text(attach, 1, spill, -1, SQLITE_STATIC)
               != SQLITE_OK
        || sqlite3_step(attach) != SQLITE_DONE) {
        store_set_db_err(err, errlen, spill, s->db, "attaching spill file");
        goto out;
    }
    attached = true;
    /* The first read of the attached file rolls a torn piece back. */
    kind = store_spill_kind(s->db, spill, err, errlen);
    if (kind < 0)
        goto out;
    if (kind == 0) {
        ret = 0;
        goto out;
    }
    /* BEGIN IMMEDIATE takes the main file's write lock, or fails if held. */
    if (store_exec(s->db, "BEGIN IMMEDIATE") != SQLITE_OK) {
        store_set_db_err(err, errlen, s->path, s->db, "replaying spill file");
        goto out;
    }
    /* Tables of an earlier build first: anything in the log came after them. */
    if (((kind & STORE_SPILL_V1)
         && (store_query_int(s->db,
                             "SELECT count(*) FROM " STORE_SPILL_SCHEMA
                             ".run_node_state", &v1_rows) != SQLITE_OK
             || store_query_int(s->db,
                                "SELECT count(*) FROM " STORE_SPILL_SCHEMA
                                ".spilled_deletes", &v1_deletes) != SQLITE_OK
             || store_exec(s->db, store_replay_v1_sql) != SQLITE_OK))
        || ((kind & STORE_SPILL_LOG)
            && (store_query_int(s->db,
                                "SELECT count(*) FROM (SELECT DISTINCT"
                                " run_id, node_id" STORE_SPILL_LIVE ")",
                                &n_rows) != SQLITE_OK
                || store_query_int(s->db,
                                   "SELECT count(*) FROM " STORE_SPILL_SCHEMA
                                   ".spill_deletes", &n_deletes) != SQLITE_OK
                || store_exec(s->db, store_replay_log_sql) != SQLITE_OK))
        || store_query_int(s->db,
                           "SELECT value FROM " STORE_SPILL_SCHEMA
                           ".nodestate_meta WHERE key = 'pieces'", &n_pieces)
               != SQLITE_OK
        || store_query_int(s->db, "SELECT value FROM main.nodestate_meta"
                                  " WHERE key = 'last_seq'", &last_seq)
               != SQLITE_OK
        || store_exec(s->db, "COMMIT") != SQLITE_OK) {
        store_set_db_err(err, errlen, s->path, s->db, "replaying spill file");
        goto out;
    }
    if (last_seq > s->last_seq)
        s->last_seq = last_seq;
    n_rows += v1_rows;
    n_deletes += v1_deletes;
    out->rows = (size_t)n_rows;
    out->deletes = (size_t)n_deletes;
    /* A sidecar of an earlier build counted no pieces: it was written as one. */
    out->pieces = n_pieces > 0 ? (size_t)n_pieces
                  : n_rows > 0 || n_deletes > 0 ? 1 : 0;
    ret = 0;

out:
    sqlite3_finalize(attach);
    store_rollback(s->db);
    /* Every statement is reset or finalized, so DETACH cannot be refused. */
    if (attached && store_exec(s->db, "DETACH DATABASE " STORE_SPILL_SCHEMA)
                        != SQLITE_OK
        && ret == 0) {
        store_set_db_err(err, errlen, spill, s->db, "detaching spill file");
        ret = -1;
    }
    /* Only once the content is in the database (or there was none). */
    if (ret == 0 && attached)
        ret = store_remove_spill(spill, err, errlen);
    if (ret != 0)
        out->rows = out->deletes = out->pieces = 0;
    return ret;
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
    if (store_prepare_row(r->db, store_select_run_sql, false, &r->select_run,
                          err, errlen, path) != 0
        || store_prepare_row(r->db, store_select_node_sql, false,
                             &r->select_node, err, errlen, path) != 0
        || store_prepare_row(r->db, store_select_after_sql, false,
                             &r->select_after, err, errlen, path) != 0
        || store_prepare(r->db, store_select_run_exists_sql, &r->run_exists,
                         err, errlen, path) != 0)
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
    sqlite3_finalize(r->select_node);
    sqlite3_finalize(r->select_after);
    sqlite3_finalize(r->run_exists);
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

/* A nullable timestamp column: 0, 1 for text that is not RFC 3339, -1 OOM. */
static int store_column_ts(sqlite3_stmt *st, int col, int64_t *out)
{
    const char *text;

    if (store_column_text(st, col, &text) != 0)
        return -1;
    if (text == NULL) {
        *out = NS_TS_NULL;
        return 0;
    }
    return model_ts_parse(text, out) == 0 ? 0 : 1;
}

/*
 * The readers of NS_NODE_FIELDS' kinds, store_read_<kind>: 0, 1 for a value
 * we did not write (refused rather than guessed at), -1 when SQLite could not
 * produce a value (out of memory). A json column is also refused when its
 * json_valid() (the next of the select's extra columns, *valid) says it is
 * not JSON: that text would make every response carrying it invalid.
 */
static int store_read_id(sqlite3_stmt *st, int col, const char **out,
                         int *valid)
{
    (void)valid;
    if (store_column_text(st, col, out) != 0)
        return -1;
    return *out != NULL ? 0 : 1;
}

static int store_read_status(sqlite3_stmt *st, int col, ns_status *out,
                             int *valid)
{
    const char *name;

    (void)valid;
    if (store_column_text(st, col, &name) != 0)
        return -1;
    return name != NULL && model_status_parse(name, out) == 0 ? 0 : 1;
}

static int store_read_int(sqlite3_stmt *st, int col, int64_t *out,
                          int *valid)
{
    (void)valid;
    *out = sqlite3_column_int64(st, col);
    return 0;
}

static int store_read_timestamp(sqlite3_stmt *st, int col, int64_t *out,
                                int *valid)
{
    (void)valid;
    return store_column_ts(st, col, out);
}

static int store_read_text(sqlite3_stmt *st, int col, const char **out,
                           int *valid)
{
    (void)valid;
    return store_column_text(st, col, out);
}

static int store_read_bool(sqlite3_stmt *st, int col, bool *out, int *valid)
{
    (void)valid;
    *out = sqlite3_column_int64(st, col) != 0;
    return 0;
}

static int store_read_json(sqlite3_stmt *st, int col, const char **out,
                           int *valid)
{
    int is_json = sqlite3_column_int(st, (*valid)++);

    if (store_column_text(st, col, out) != 0)
        return -1;
    return *out == NULL || is_json != 0 ? 0 : 1;
}

/*
 * Fills a draft from the current result row, column by column. Its strings
 * borrow from the statement and stay valid until the next step or reset. A
 * row we did not write (unknown status, bad timestamp, a JSON column that is
 * not JSON, no updated_at) is refused rather than guessed at.
 * Returns 0, 1 for such an unreadable row, or -1 when SQLite could not
 * produce a value (out of memory), which says nothing about the row.
 */
static int store_row_draft(sqlite3_stmt *st, ns_row *d)
{
    int valid = COL_JSON_VALID_FIRST;
    int rc;

    memset(d, 0, sizeof *d);
#define STORE_READ_(name, member, json, column, kind)                       \
    if ((rc = store_read_##kind(st, COL_##name, &d->member, &valid)) != 0)  \
        return rc;
    NS_NODE_FIELDS(STORE_READ_)
#undef STORE_READ_
    if (d->updated_at == NS_TS_NULL)
        return 1;
    return 0;
}

/*
 * fn runs with the reader's mutex held (the draft borrows from the
 * statement), so fn must not call back into this reader.
 */
int store_reader_load_run(store_reader *r, const char *run_id,
                          int (*fn)(void *ctx, ns_row *row), void *ctx,
                          size_t *skipped)
{
    sqlite3_stmt *st = r->select_run;
    size_t n_skipped = 0;
    int ret = -1;
    int rc;

    if (skipped != NULL)
        *skipped = 0;
    if (run_id == NULL || fn == NULL)
        return -1;
    pthread_mutex_lock(&r->lock);
    if (sqlite3_bind_text(st, 1, run_id, -1, SQLITE_STATIC) != SQLITE_OK)
        goto out;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        ns_row draft;
        ns_row *row;
        int drc = store_row_draft(st, &draft);

        if (drc < 0)
            goto out;
        /*
         * One bad row must not make the whole run unloadable forever (every
         * request for it would fail, and nothing could repair it): leave it
         * out and let the caller report it.
         */
        if (drc > 0) {
            n_skipped++;
            continue;
        }
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
    if (skipped != NULL)
        *skipped = n_skipped;
    return ret;
}

int store_reader_load_node(store_reader *r, const char *run_id,
                           const char *node_id, ns_row **out,
                           bool *run_has_rows)
{
    sqlite3_stmt *st = r->select_node;
    sqlite3_stmt *ex = r->run_exists;
    int ret = -1;
    int rc;

    *out = NULL;
    *run_has_rows = false;
    if (run_id == NULL || node_id == NULL)
        return -1;
    pthread_mutex_lock(&r->lock);
    if (sqlite3_bind_text(st, 1, run_id, -1, SQLITE_STATIC) != SQLITE_OK
        || sqlite3_bind_text(st, 2, node_id, -1, SQLITE_STATIC) != SQLITE_OK)
        goto out;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        ns_row draft;
        int drc = store_row_draft(st, &draft);

        if (drc < 0)
            goto out;
        *run_has_rows = true;
        if (drc == 0 && (*out = model_row_copy(&draft)) == NULL)
            goto out;
        ret = drc == 0 ? 0 : 1;
        goto out;
    }
    if (rc != SQLITE_DONE)
        goto out;
    /* No such node: say whether the run has others, so a new run can be known empty. */
    if (sqlite3_bind_text(ex, 1, run_id, -1, SQLITE_STATIC) != SQLITE_OK)
        goto out;
    rc = sqlite3_step(ex);
    if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
        *run_has_rows = rc == SQLITE_ROW;
        ret = 0;
    }

out:
    /* Ends the read transactions so the writer's checkpoints can progress. */
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    sqlite3_reset(ex);
    sqlite3_clear_bindings(ex);
    pthread_mutex_unlock(&r->lock);
    return ret;
}

/* Whether run_id has any stored row; 0/1, or -1 on a SQLite error. Reader lock held. */
static int store_reader_run_exists(store_reader *r, const char *run_id)
{
    sqlite3_stmt *ex = r->run_exists;
    int ret = -1;
    int rc;

    if (sqlite3_bind_text(ex, 1, run_id, -1, SQLITE_STATIC) == SQLITE_OK) {
        rc = sqlite3_step(ex);
        if (rc == SQLITE_ROW || rc == SQLITE_DONE)
            ret = rc == SQLITE_ROW;
    }
    sqlite3_reset(ex);
    sqlite3_clear_bindings(ex);
    return ret;
}

/*
 * Rows whose status is not asked for are passed over on their status
 * column alone, before anything else of them is read.
 */
int store_reader_load_page(store_reader *r, const char *run_id,
                           const char *after, unsigned status_mask,
                           size_t want, int (*fn)(void *ctx, ns_row *row),
                           void *ctx, store_page *page)
{
    sqlite3_stmt *st = r->select_after;
    size_t delivered = 0;
    int ret = -1;
    int rc;

    memset(page, 0, sizeof *page);
    if (run_id == NULL || fn == NULL || want == 0)
        return -1;
    pthread_mutex_lock(&r->lock);
    if (sqlite3_bind_text(st, 1, run_id, -1, SQLITE_STATIC) != SQLITE_OK
        || sqlite3_bind_text(st, 2, after != NULL ? after : "", -1,
                             SQLITE_STATIC) != SQLITE_OK)
        goto out;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *status;
        ns_status s;
        ns_row draft;
        ns_row *row;
        int drc;

        page->run_has_rows = true;
        if (store_column_text(st, COL_status, &status) != 0)
            goto out;
        if (status != NULL && model_status_parse(status, &s) == 0
            && !(status_mask & (1u << s)))
            continue;
        if (delivered == want) {
            page->more = true;
            break;
        }
        drc = store_row_draft(st, &draft);
        if (drc < 0)
            goto out;
        if (drc > 0 || !(status_mask & (1u << draft.status))) {
            page->skipped += drc > 0;
            continue;
        }
        row = model_row_copy(&draft);
        if (row == NULL)
            goto out;
        /* fn owns the row from here, whatever it returns. */
        if (fn(ctx, row) != 0)
            goto out;
        delivered++;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        goto out;
    sqlite3_reset(st);
    if (!page->run_has_rows) {
        /* Nothing after `after`: whether the run is there at all. */
        rc = store_reader_run_exists(r, run_id);
        if (rc < 0)
            goto out;
        page->run_has_rows = rc == 1;
    }
    ret = 0;

out:
    /* Ends the read transaction so the writer's checkpoints can progress. */
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    pthread_mutex_unlock(&r->lock);
    return ret;
}
