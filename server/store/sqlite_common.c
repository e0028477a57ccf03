/*
 * sqlite_common: what every connection of the store uses: error messages,
 * statements, binding a row and upserting rows with isolation of the ones
 * SQLite refuses.
 */
#include "sqlite_internal.h"

#include <stdio.h>
#include <string.h>
#include <stdlib.h>

/* Writes "<path>: <msg>" into err, tolerating a NULL or empty buffer. */
void store_set_err(char *err, size_t errlen, const char *path,
                   const char *msg)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s: %s", path, msg);
}

/* Same as store_set_err with the connection's own message, if any. */
void store_set_db_err(char *err, size_t errlen, const char *path,
                      sqlite3 *db, const char *what)
{
    char msg[STORE_ERRMSG_MAX];

    snprintf(msg, sizeof msg, "%s: %s", what,
             db != NULL ? sqlite3_errmsg(db) : "out of memory");
    store_set_err(err, errlen, path, msg);
}

/*
 * The columns of NS_NODE_FIELDS with their SQL declarations. updated_at is
 * the one timestamp that is never null; seq leads the spill log as its key.
 */
#define STORE_FIELD_(name, member, json, column, kind)                      \
    {column, STORE_DECL_##kind, STORE_IS_KEY_##kind, STORE_IS_JSON_##kind,  \
     STORE_IS_BULK_##kind,                                                  \
     offsetof(ns_row, member) == offsetof(ns_row, updated_at),              \
     offsetof(ns_row, member) == offsetof(ns_row, seq)},
static const struct store_field {
    const char *column;
    const char *decl;
    bool key;
    bool json;
    bool bulk;
    bool required;
    bool seq;
} store_fields[COL_COUNT] = {NS_NODE_FIELDS(STORE_FIELD_)};
#undef STORE_FIELD_

/* Appends text to b (len bytes of room, *at used); -1 if it does not fit. */
static int store_sql_put(char *b, size_t len, size_t *at, const char *text)
{
    size_t n = strlen(text);

    if (n >= len - *at)
        return -1;
    memcpy(b + *at, text, n + 1);
    *at += n;
    return 0;
}

/* Appends the expansion of one STORE_SQL_* token; -1 if it does not fit. */
static int store_sql_token(char *b, size_t len, size_t *at, const char *tok)
{
    char num[24];
    bool first = true;

    for (int i = 0; i < COL_COUNT; i++) {
        const struct store_field *f = &store_fields[i];
        int rc = 0;

        if (strcmp(tok, STORE_SQL_COLUMNS) == 0) {
            rc = store_sql_put(b, len, at, first ? "" : ", ")
                 | store_sql_put(b, len, at, f->column);
        } else if (strcmp(tok, STORE_SQL_PARAMS) == 0) {
            snprintf(num, sizeof num, "%s?%d", first ? "" : ", ", i + 1);
            rc = store_sql_put(b, len, at, num);
        } else if (strcmp(tok, STORE_SQL_KEY) == 0) {
            if (!f->key)
                continue;
            rc = store_sql_put(b, len, at, first ? "" : ", ")
                 | store_sql_put(b, len, at, f->column);
        } else if (strcmp(tok, STORE_SQL_JSON_VALID) == 0) {
            if (!f->json)
                continue;
            rc = store_sql_put(b, len, at, ", json_valid(")
                 | store_sql_put(b, len, at, f->column)
                 | store_sql_put(b, len, at, ")");
        } else if (strcmp(tok, STORE_SQL_LIGHT) == 0) {
            rc = store_sql_put(b, len, at, first ? "" : ", ")
                 | store_sql_put(b, len, at, f->bulk ? "NULL AS " : "")
                 | store_sql_put(b, len, at, f->column);
            /* The JSON_VALID tail's places, after the last column. */
            for (int j = 0; rc == 0 && i == COL_COUNT - 1 && j < COL_COUNT; j++)
                if (store_fields[j].json)
                    rc = store_sql_put(b, len, at, ", 0");
        } else if (strcmp(tok, STORE_SQL_SET) == 0) {
            if (f->key)
                continue;
            rc = store_sql_put(b, len, at, first ? " " : ", ")
                 | store_sql_put(b, len, at, f->column)
                 | store_sql_put(b, len, at, " = excluded.")
                 | store_sql_put(b, len, at, f->column);
        } else if (strcmp(tok, STORE_SQL_DEFS) == 0
                   || strcmp(tok, STORE_SQL_SPILL_DEFS) == 0) {
            bool spill = strcmp(tok, STORE_SQL_SPILL_DEFS) == 0;

            if (spill && f->seq)
                continue;
            rc = store_sql_put(b, len, at, spill ? ", " : " ")
                 | store_sql_put(b, len, at, f->column)
                 | store_sql_put(b, len, at, " ")
                 | store_sql_put(b, len, at, f->decl)
                 | store_sql_put(b, len, at, f->required ? " NOT NULL" : "")
                 | store_sql_put(b, len, at, spill ? "" : ",");
        } else {
            return -1;
        }
        if (rc != 0)
            return -1;
        first = false;
    }
    return 0;
}

char *store_sql(const char *tmpl)
{
    size_t len = strlen(tmpl) + STORE_SQL_ROOM;
    char *b = malloc(len);
    size_t at = 0;
    char tok[32];

    if (b == NULL)
        return NULL;
    b[0] = '\0';
    while (*tmpl != '\0') {
        const char *open = strchr(tmpl, '@');
        const char *close = open != NULL ? strchr(open + 1, '@') : NULL;
        size_t n = open != NULL ? (size_t)(open - tmpl) : strlen(tmpl);

        if (n >= len - at || (open != NULL && close == NULL))
            goto err;
        memcpy(b + at, tmpl, n);
        at += n;
        b[at] = '\0';
        if (open == NULL)
            break;
        if ((size_t)(close - open + 1) >= sizeof tok)
            goto err;
        memcpy(tok, open, (size_t)(close - open + 1));
        tok[close - open + 1] = '\0';
        if (store_sql_token(b, len, &at, tok) != 0)
            goto err;
        tmpl = close + 1;
    }
    return b;

err:
    free(b);
    return NULL;
}

/*
 * Runs a statement that returns no rows we care about, its STORE_SQL_*
 * tokens expanded. Returns an sqlite rc.
 */
int store_exec(sqlite3 *db, const char *sql)
{
    char *text = store_sql(sql);
    int rc;

    if (text == NULL)
        return SQLITE_NOMEM;
    rc = sqlite3_exec(db, text, NULL, NULL, NULL);
    free(text);
    return rc;
}

/* Ends the transaction in progress, if any, keeping nothing of it. */
void store_rollback(sqlite3 *db)
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
int store_query_int(sqlite3 *db, const char *sql, int64_t *out)
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

/* Prepares one statement that lives as long as the connection. */
int store_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **out,
                  char *err, size_t errlen, const char *path)
{
    char *text = store_sql(sql);
    int rc;

    if (text == NULL) {
        store_set_err(err, errlen, path, "out of memory");
        return -1;
    }
    rc = sqlite3_prepare_v3(db, text, -1, SQLITE_PREPARE_PERSISTENT, out,
                            NULL);
    free(text);
    if (rc != SQLITE_OK) {
        store_set_db_err(err, errlen, path, db, "preparing statements");
        return -1;
    }
    return 0;
}

/*
 * store_prepare for a statement that binds a row (params) or returns one
 * (!params), checking it against NS_NODE_FIELDS: the column lists are
 * expanded from the list, but the rest of a statement is written by hand,
 * and a column out of place would bind or read one field as another.
 * An insert must take one parameter per field; a select must return the
 * fields' columns by name, in order, then one json_valid() per json field.
 */
int store_prepare_row(sqlite3 *db, const char *sql, bool params,
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

/*
 * Steps a statement that returns no rows and readies it for the next use.
 * Bindings are cleared because they may point into rows the caller frees
 * after this batch. Returns an sqlite rc (SQLITE_DONE on success).
 */
int store_step_once(sqlite3_stmt *st)
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
 * Binds every column of one row into the upsert (or the spill log's insert),
 * at parameters base + 1 .. base + COL_COUNT (base > 0: a later row of a
 * multi-row insert).
 * Strings are bound SQLITE_STATIC: the row and tsbuf outlive the step that
 * follows, and store_upsert_rows clears the bindings afterwards. A NULL
 * status name (an out-of-range status) binds NULL, which the NOT NULL
 * constraint rejects.
 */
#define STORE_COUNT_TS_(name, member, json, column, kind) + STORE_IS_TS_##kind
_Static_assert(0 NS_NODE_FIELDS(STORE_COUNT_TS_) == NS_TS_COUNT + 1,
               "a buffer of store_bind_row's tsbuf per timestamp column");
#undef STORE_COUNT_TS_

static int store_bind_row(sqlite3_stmt *st, int base, const ns_row *row,
                          char tsbuf[NS_TS_COUNT + 1][NS_TS_BUF])
{
    char (*ts)[NS_TS_BUF] = tsbuf;
    int rc;

#define STORE_BIND_(name, member, json, column, kind)                       \
    if ((rc = store_bind_##kind(st, base + COL_##name + 1, row->member,     \
                                &ts))                                       \
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
void store_isolation_report(const store_isolation *iso,
                            const store_batch *b)
{
    if (b->on_isolated == NULL)
        return;
    for (size_t i = 0; i < iso->n; i++)
        b->on_isolated(b->isolated_ctx, b->rows[iso->v[i].row],
                       iso->v[i].why);
}

/*
 * Upserts rows[from..to) one statement each with st inside the open
 * transaction of db. A row that SQLite refuses by itself is skipped and
 * noted in iso: its statement was undone (ABORT, the default conflict
 * resolution) and the transaction goes on. faults_of is the store whose
 * injected row faults apply, or NULL. Any other failure stops: returns -1
 * with "upsert: <why>" in msg. Leaves st's bindings for the caller to clear.
 */
static int store_upsert_range(sqlite3 *db, sqlite3_stmt *st,
                              ns_row *const *rows, size_t from, size_t to,
                              const sqlite_store *faults_of,
                              store_isolation *iso, char *msg, size_t msglen)
{
    /* Formatted timestamps of the row being upserted. */
    char tsbuf[NS_TS_COUNT + 1][NS_TS_BUF];
    /* Leaves room for the "upsert: " prefix in msg. */
    char why[STORE_ERRMSG_MAX - 16];
    int rc;

    for (size_t i = from; i < to; i++) {
        if (rows[i] == NULL) {
            snprintf(msg, msglen, "upsert: row %zu is NULL", i);
            return -1;
        }
        if (STORE_FAULT_ROW(faults_of, rows[i])) {
            snprintf(why, sizeof why, "row refused (injected fault)");
            rc = SQLITE_CONSTRAINT;
        } else {
            rc = store_bind_row(st, 0, rows[i], tsbuf);
            if (rc == SQLITE_OK)
                rc = sqlite3_step(st);
            /* Read before reset, which may replace the message. */
            if (rc != SQLITE_DONE)
                snprintf(why, sizeof why, "%s", sqlite3_errmsg(db));
            /*
             * No clear_bindings per row: the next row binds every
             * parameter again, and the batch's end clears them once.
             */
            sqlite3_reset(st);
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

/* Upserts rows[0..n) one statement each (see store_upsert_range). */
int store_upsert_rows(sqlite3 *db, sqlite3_stmt *st,
                      ns_row *const *rows, size_t n,
                      const sqlite_store *faults_of, store_isolation *iso,
                      char *msg, size_t msglen)
{
    int rc = store_upsert_range(db, st, rows, 0, n, faults_of, iso, msg,
                                msglen);

    /* The rows' strings were bound SQLITE_STATIC: none may outlive them. */
    sqlite3_clear_bindings(st);
    return rc;
}

/*
 * Whether rows[from..from + per) can go in one multi-row statement: none is
 * NULL or has an injected fault (those take the one-row path, which reports
 * them exactly as before).
 */
static bool store_chunk_clean(ns_row *const *rows, size_t from, size_t per,
                              const sqlite_store *faults_of)
{
    for (size_t j = from; j < from + per; j++)
        if (rows[j] == NULL || STORE_FAULT_ROW(faults_of, rows[j]))
            return false;
    return true;
}

const size_t store_chunk_rows[STORE_CHUNKS] = { STORE_ROWS_MANY, STORE_ROWS_FEW };

/*
 * Upserts rows[0..n) with the result of store_upsert_rows, but
 * store_chunk_rows[k] rows per step of many[k] where it can, largest first:
 * a step costs about as much per statement as per row, so one per row was
 * most of the writer's time on new rows, and on a ?wait=true commit of a
 * dozen. Rows within one statement are inserted in order, a later one's
 * conflict with an earlier one updating it as a later statement would. A
 * chunk that SQLite refuses for something about a row was undone whole
 * (ABORT); it is done again one row each, so exactly the rows the one-row
 * path would leave out are left out, with the same messages.
 */
int store_upsert_rows_many(sqlite3 *db, sqlite3_stmt *st,
                           sqlite3_stmt *const many[STORE_CHUNKS],
                           ns_row *const *rows, size_t n,
                           const sqlite_store *faults_of, store_isolation *iso,
                           char *msg, size_t msglen)
{
    /* Formatted timestamps of the rows of one chunk. */
    char tsbuf[STORE_ROWS_MANY][NS_TS_COUNT + 1][NS_TS_BUF];
    char why[STORE_ERRMSG_MAX - 16];
    size_t i = 0;
    int rc = SQLITE_OK;
    int ret = -1;

    for (size_t k = 0; k < STORE_CHUNKS; k++) {
        size_t per = store_chunk_rows[k];
        while (n - i >= per) {
            if (store_chunk_clean(rows, i, per, faults_of)) {
                rc = SQLITE_OK;
                for (size_t j = 0; j < per && rc == SQLITE_OK; j++)
                    rc = store_bind_row(many[k], (int)j * COL_COUNT, rows[i + j], tsbuf[j]);
                if (rc == SQLITE_OK)
                    rc = sqlite3_step(many[k]);
                if (rc != SQLITE_DONE)
                    snprintf(why, sizeof why, "%s", sqlite3_errmsg(db));
                sqlite3_reset(many[k]);
                if (rc == SQLITE_DONE) {
                    i += per;
                    continue;
                }
                if (!store_row_level(rc) || sqlite3_get_autocommit(db)) {
                    snprintf(msg, msglen, "upsert: %s", why);
                    goto out;
                }
            }
            if (store_upsert_range(db, st, rows, i, i + per, faults_of, iso, msg, msglen) != 0)
                goto out;
            i += per;
        }
    }
    if (store_upsert_range(db, st, rows, i, n, faults_of, iso, msg, msglen) != 0)
        goto out;
    ret = 0;

out:
    for (size_t k = 0; k < STORE_CHUNKS; k++)
        sqlite3_clear_bindings(many[k]);
    sqlite3_clear_bindings(st);
    return ret;
}

/*
 * Prepares many: "INSERT INTO <table> (<columns>) VALUES" and per groups of
 * one anonymous parameter per column, then tail (its tokens expanded),
 * checked to bind exactly that many parameters. 0 or -1.
 */
int store_prepare_many(sqlite3 *db, const char *table, const char *tail, size_t per,
                       sqlite3_stmt **out, char *err, size_t errlen,
                       const char *path)
{
    size_t len = strlen(table) + strlen(tail) + 64 + per * (COL_COUNT * 3 + 3);
    char *tmpl;
    size_t at = 0;
    int ret = -1;

    /* store_upsert_rows_many formats the timestamps of STORE_ROWS_MANY rows at most. */
    if (per == 0 || per > STORE_ROWS_MANY) {
        store_set_err(err, errlen, path, "internal: rows per statement out of range");
        return -1;
    }
    tmpl = malloc(len);
    if (tmpl == NULL) {
        store_set_err(err, errlen, path, "out of memory");
        return -1;
    }
    tmpl[0] = '\0';
    if (store_sql_put(tmpl, len, &at, "INSERT INTO ") != 0
        || store_sql_put(tmpl, len, &at, table) != 0
        || store_sql_put(tmpl, len, &at, " (" STORE_SQL_COLUMNS ") VALUES")
               != 0)
        goto out;
    for (size_t r = 0; r < per; r++)
        for (int c = 0; c < COL_COUNT; c++)
            if (store_sql_put(tmpl, len, &at,
                              c == 0 ? (r == 0 ? " (?" : ", (?")
                                     : (c + 1 == COL_COUNT ? ", ?)" : ", ?"))
                != 0)
                goto out;
    if (store_sql_put(tmpl, len, &at, tail) != 0)
        goto out;
    if (store_prepare(db, tmpl, out, err, errlen, path) != 0)
        goto out_quiet;
    if ((size_t)sqlite3_bind_parameter_count(*out) != per * COL_COUNT) {
        store_set_err(err, errlen, path,
                      "internal: a statement's columns are not the node's fields");
        goto out_quiet;
    }
    ret = 0;
    goto out_quiet;

out:
    store_set_err(err, errlen, path, "internal: statement too long");
out_quiet:
    free(tmpl);
    return ret;
}

/* Whether b's arrays are there for the counts it claims. */
bool store_batch_valid(const store_batch *b)
{
    return b != NULL && (b->n_deletes == 0 || b->delete_runs != NULL)
           && (b->n_rows == 0 || b->rows != NULL);
}
