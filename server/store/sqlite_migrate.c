/*
 * sqlite_migrate: older files brought up to the current schema (version 2)
 * in place: the original design's table (version 0), or refused with the
 * row that stands in the way; and version 1, which only loses an index.
 */
#include "sqlite_internal.h"

#include <stdio.h>
#include <string.h>

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
 * Brings the original design's table (user_version 0) up to the current
 * version inside the caller's transaction: the missing columns, then the
 * meta table and version, then seqs for the rows and last_seq from them.
 * A table we cannot read the same way (another key, non-text statuses or
 * timestamps) is refused rather than half converted. Returns 0 or -1 with err set.
 */
int store_migrate_v0(sqlite3 *db, char *err, size_t errlen,
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
    /* The original design's file may carry version 1's index too. */
    return store_migrate_v1(db, err, errlen, path);
}


/*
 * Version 1 had an index on (run_id, status) that no read used (listing by
 * status walks a run's rows by primary key, the cache holds the counts) and
 * that every upsert paid for. Dropping it touches no row. Runs inside the
 * caller's transaction. Returns 0 or -1 with err set.
 */
int store_migrate_v1(sqlite3 *db, char *err, size_t errlen, const char *path)
{
    if (store_exec(db, "DROP INDEX IF EXISTS run_node_state_run_status;"
                       "PRAGMA user_version = 2;") != SQLITE_OK) {
        store_set_db_err(err, errlen, path, db, "migrating schema version 1");
        return -1;
    }
    return 0;
}
