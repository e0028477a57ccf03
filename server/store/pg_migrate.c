/*
 * pg_migrate: the PostgreSQL schema and its version, and the SQL texts
 * generated from NS_NODE_FIELDS (so no statement names a column by hand).
 */
#include "pg_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Per kind of NS_NODE_FIELDS: the column's declaration and the array type
 * the batch sends it in. Timestamps are the same RFC 3339 text as SQLite's
 * (updated_at, never null, adds NOT NULL below); ids sort as strcmp does.
 * The JSON columns are text, as in SQLite: only this service writes them,
 * from JSON it parsed, and text compares and reads back byte for byte.
 */
#define PG_DECL_id "text COLLATE \"C\" NOT NULL"
#define PG_DECL_status "text NOT NULL"
#define PG_DECL_int "bigint NOT NULL"
#define PG_DECL_timestamp "text"
#define PG_DECL_text "text"
#define PG_DECL_bool "boolean NOT NULL DEFAULT false"
#define PG_DECL_json "text"
#define PG_ARRAY_id "text[]"
#define PG_ARRAY_status "text[]"
#define PG_ARRAY_int "bigint[]"
#define PG_ARRAY_timestamp "text[]"
#define PG_ARRAY_text "text[]"
#define PG_ARRAY_bool "boolean[]"
#define PG_ARRAY_json "text[]"
#define PG_IS_KEY_id 1
#define PG_IS_KEY_status 0
#define PG_IS_KEY_int 0
#define PG_IS_KEY_timestamp 0
#define PG_IS_KEY_text 0
#define PG_IS_KEY_bool 0
#define PG_IS_KEY_json 0

/* Appends "CASE <expr> WHEN 'idle' THEN 0 ... END": a status's rank. */
static void pg_rank_sql(pg_buf *b, const char *expr)
{
    char part[96];
    pg_buf_str(b, "(CASE ");
    pg_buf_str(b, expr);
    for (int s = 0; s < NS_STATUS_COUNT; s++) {
        snprintf(part, sizeof part, " WHEN '%s' THEN %d",
                 model_status_name((ns_status)s), model_status_rank((ns_status)s));
        pg_buf_str(b, part);
    }
    pg_buf_str(b, " END)");
}

/* Appends "(<expr> IN ('completed', 'failed'))": whether a status is final. */
static void pg_terminal_sql(pg_buf *b, const char *expr)
{
    bool first = true;
    pg_buf_str(b, "(");
    pg_buf_str(b, expr);
    pg_buf_str(b, " IN (");
    for (int s = 0; s < NS_STATUS_COUNT; s++) {
        if (!model_status_terminal((ns_status)s))
            continue;
        pg_buf_str(b, first ? "'" : ", '");
        pg_buf_str(b, model_status_name((ns_status)s));
        pg_buf_str(b, "'");
        first = false;
    }
    pg_buf_str(b, "))");
}

/*
 * The upsert of a batch: one row per element of the arrays $1..$N, applied
 * over a stored row only when the transition rules admit it against that
 * row, as the engine's rules_apply would: never an older seq; a higher
 * attempt always (a new try); the same attempt only up the ranks or among
 * the rank-2 statuses, and never past a terminal status. With force the seq
 * alone decides. The applied rows come back (RETURNING) so the caller
 * learns which were refused.
 */
static void pg_upsert_sql(pg_buf *b, bool forced)
{
    char num[16];
    int i = 0;
    pg_buf_str(b, "INSERT INTO run_node_state AS t (");
#define PG_COL_(name, member, json, column, kind)                           \
    pg_buf_str(b, i++ ? ", " column : column);
    NS_NODE_FIELDS(PG_COL_)
#undef PG_COL_
    pg_buf_str(b, ") SELECT * FROM unnest(");
    i = 0;
#define PG_PARAM_(name, member, json, column, kind)                         \
    snprintf(num, sizeof num, "%s$%d::", i ? ", " : "", i + 1);             \
    i++;                                                                    \
    pg_buf_str(b, num);                                                     \
    pg_buf_str(b, PG_ARRAY_##kind);
    NS_NODE_FIELDS(PG_PARAM_)
#undef PG_PARAM_
    pg_buf_str(b, ") ON CONFLICT (");
    i = 0;
#define PG_KEY_(name, member, json, column, kind)                           \
    if (PG_IS_KEY_##kind)                                                   \
        pg_buf_str(b, i++ ? ", " column : column);
    NS_NODE_FIELDS(PG_KEY_)
#undef PG_KEY_
    pg_buf_str(b, ") DO UPDATE SET ");
    i = 0;
#define PG_SET_(name, member, json, column, kind)                           \
    if (!PG_IS_KEY_##kind) {                                                \
        pg_buf_str(b, i++ ? ", " column " = excluded." column               \
                          : column " = excluded." column);                  \
    }
    NS_NODE_FIELDS(PG_SET_)
#undef PG_SET_
    pg_buf_str(b, " WHERE t.seq < excluded.seq");
    if (!forced) {
        pg_buf_str(b, " AND (excluded.attempt > t.attempt"
                      " OR (excluded.attempt = t.attempt AND (");
        pg_rank_sql(b, "excluded.status");
        pg_buf_str(b, " > ");
        pg_rank_sql(b, "t.status");
        pg_buf_str(b, " OR (");
        pg_rank_sql(b, "excluded.status");
        pg_buf_str(b, " = ");
        pg_rank_sql(b, "t.status");
        pg_buf_str(b, " AND NOT ");
        pg_terminal_sql(b, "t.status");
        pg_buf_str(b, "))))");
    }
    pg_buf_str(b, " RETURNING run_id, node_id");
}

static void pg_schema_sql(pg_buf *b)
{
    char v[128];
    pg_buf_str(b, "CREATE TABLE IF NOT EXISTS run_node_state (");
#define PG_DEF_(name, member, json, column, kind)                           \
    pg_buf_str(b, column " " PG_DECL_##kind);                               \
    if (strcmp(column, "updated_at") == 0)                                  \
        pg_buf_str(b, " NOT NULL");                                         \
    pg_buf_str(b, ", ");
    NS_NODE_FIELDS(PG_DEF_)
#undef PG_DEF_
    pg_buf_str(b, "PRIMARY KEY (run_id, node_id));"
                  "CREATE INDEX IF NOT EXISTS run_node_state_status"
                  " ON run_node_state (run_id, status);"
                  /* store.h: made where missing, whatever the version. */
                  "CREATE TABLE IF NOT EXISTS run_deletes (run_id " PG_DECL_id " PRIMARY KEY,"
                  " seq bigint NOT NULL, deleted_at bigint NOT NULL);"
                  "CREATE INDEX IF NOT EXISTS run_deletes_deleted_at ON run_deletes (deleted_at);"
                  "INSERT INTO nodestate_meta (key, value) VALUES"
                  " ('seq_reserved', 0)"
                  " ON CONFLICT (key) DO NOTHING;");
    snprintf(v, sizeof v,
             "INSERT INTO nodestate_meta (key, value) VALUES"
             " ('schema_version', %d) ON CONFLICT (key) DO UPDATE"
             " SET value = excluded.value;", PG_SCHEMA_VERSION);
    pg_buf_str(b, v);
}

int pg_sql_build(pg_sql *sql)
{
    pg_buf schema = { 0 }, up = { 0 }, forced = { 0 }, cols = { 0 };
    int i = 0;
    memset(sql, 0, sizeof *sql);
    pg_schema_sql(&schema);
    pg_upsert_sql(&up, false);
    pg_upsert_sql(&forced, true);
#define PG_SEL_(name, member, json, column, kind)                           \
    pg_buf_str(&cols, i++ ? ", " column : column);
    NS_NODE_FIELDS(PG_SEL_)
#undef PG_SEL_
    if (schema.oom || up.oom || forced.oom || cols.oom) {
        pg_buf_free(&schema);
        pg_buf_free(&up);
        pg_buf_free(&forced);
        pg_buf_free(&cols);
        return -1;
    }
    sql->schema = schema.p;
    sql->upsert = up.p;
    sql->upsert_forced = forced.p;
    sql->select_cols = cols.p;
    sql->ncols = i;
    return 0;
}

void pg_sql_free(pg_sql *sql)
{
    free(sql->schema);
    free(sql->upsert);
    free(sql->upsert_forced);
    free(sql->select_cols);
    memset(sql, 0, sizeof *sql);
}

int pg_migrate(PGconn *conn, const pg_sql *sql, char *err, size_t errlen)
{
    int64_t version = 0;
    if (pg_exec(conn, "BEGIN", err, errlen, "creating schema") != 0)
        return -1;
    /* Instances starting together create the tables once, one after another. */
    if (pg_exec(conn, "SELECT pg_advisory_xact_lock(" PG_SCHEMA_LOCK_KEY ")", err,
                errlen, "locking schema") != 0 ||
        pg_exec(conn, "CREATE TABLE IF NOT EXISTS nodestate_meta"
                      " (key text COLLATE \"C\" PRIMARY KEY, value bigint NOT NULL)",
                err, errlen, "creating schema") != 0)
        goto err;
    if (pg_query_int(conn, "SELECT value FROM nodestate_meta WHERE key = 'schema_version'",
                     0, NULL, &version, err, errlen, "reading schema version") < 0)
        goto err;
    if (version > PG_SCHEMA_VERSION) {
        snprintf(err, errlen, "database schema version %lld is newer than this "
                 "nodestate supports (%d)", (long long)version, PG_SCHEMA_VERSION);
        goto err;
    }
    if (pg_exec(conn, sql->schema, err, errlen, "creating schema") != 0 ||
        pg_exec(conn, "COMMIT", err, errlen, "creating schema") != 0)
        goto err;
    return 0;
err:
    PQclear(PQexec(conn, "ROLLBACK"));
    return -1;
}
