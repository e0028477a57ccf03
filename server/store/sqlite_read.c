/*
 * sqlite_read: the read-only connection the engine reads through (store_reader):
 * a run, a node or a page of a run, each row checked as it is read.
 */
#include "sqlite_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * The api splices the JSON columns into responses as they are, so the reader
 * must know whether they hold JSON; json_valid() tells without a parse in C.
 */
static const char store_select_run_sql[] =
    "SELECT " STORE_COLUMNS STORE_SQL_JSON_VALID " FROM run_node_state"
    " WHERE run_id = ?1 ORDER BY node_id";
/* One node by primary key, and whether its run has any row. */
static const char store_select_node_sql[] =
    "SELECT " STORE_COLUMNS STORE_SQL_JSON_VALID " FROM run_node_state"
    " WHERE run_id = ?1 AND node_id = ?2";
/* A run's rows after a node id, in node_id order ("" is before every id). */
static const char store_select_after_sql[] =
    "SELECT " STORE_COLUMNS STORE_SQL_JSON_VALID " FROM run_node_state"
    " WHERE run_id = ?1 AND node_id > ?2 ORDER BY node_id";
/* The same rows without their text and JSON values, for a run's counts. */
static const char store_select_run_light_sql[] =
    "SELECT " STORE_SQL_LIGHT " FROM run_node_state WHERE run_id = ?1 ORDER BY node_id";
static const char store_select_run_exists_sql[] =
    "SELECT 1 FROM run_node_state WHERE run_id = ?1 LIMIT 1";

/* The rows of the log that no later delete of their run voids. */
/* The read-through connection; any thread may use it. */
struct sqlite_reader {
    pthread_mutex_t lock;       /* guards db and the statements */
    sqlite3 *db;
    sqlite3_stmt *select_run;   /* rows of one run in node_id order */
    sqlite3_stmt *select_run_light; /* the same, light */
    sqlite3_stmt *select_node;  /* one row by primary key */
    sqlite3_stmt *select_after; /* rows of one run after a node id */
    sqlite3_stmt *run_exists;   /* whether a run has any row */
    sqlite3_stmt *deleted_seq;  /* run_deletes: a run's newest delete */
};

sqlite_reader *sqlite_reader_open(const char *path, char *err, size_t errlen)
{
    sqlite_reader *r;

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
    store_pcache_install();
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
        || store_prepare_row(r->db, store_select_run_light_sql, false, &r->select_run_light,
                             err, errlen, path) != 0
        || store_prepare_row(r->db, store_select_node_sql, false,
                             &r->select_node, err, errlen, path) != 0
        || store_prepare_row(r->db, store_select_after_sql, false,
                             &r->select_after, err, errlen, path) != 0
        || store_prepare(r->db, store_select_run_exists_sql, &r->run_exists,
                         err, errlen, path) != 0)
        goto err;
    /* A file no writer of this build opened yet has no run_deletes: no delete on record. */
    if (sqlite3_prepare_v2(r->db, "SELECT seq FROM run_deletes WHERE run_id = ?1", -1,
                           &r->deleted_seq, NULL) != SQLITE_OK) {
        sqlite3_finalize(r->deleted_seq);
        r->deleted_seq = NULL;
    }
    return r;

err:
    sqlite_reader_close(r);
    return NULL;
}

void sqlite_reader_close(sqlite_reader *r)
{
    if (r == NULL)
        return;
    sqlite3_finalize(r->select_run);
    sqlite3_finalize(r->select_run_light);
    sqlite3_finalize(r->select_node);
    sqlite3_finalize(r->select_after);
    sqlite3_finalize(r->run_exists);
    sqlite3_finalize(r->deleted_seq);
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
int store_row_draft(sqlite3_stmt *st, ns_row *d)
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
int sqlite_reader_load_run(sqlite_reader *r, const char *run_id, bool light,
                          int (*fn)(void *ctx, ns_row *row), void *ctx,
                          size_t *skipped)
{
    sqlite3_stmt *st = light ? r->select_run_light : r->select_run;
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

int sqlite_reader_load_node(sqlite_reader *r, const char *run_id,
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

int sqlite_reader_deleted_seq(sqlite_reader *r, const char *run_id, int64_t *seq)
{
    sqlite3_stmt *st = r->deleted_seq;
    int ret = -1;

    *seq = 0;
    if (st == NULL)
        return 0;
    pthread_mutex_lock(&r->lock);
    if (sqlite3_bind_text(st, 1, run_id, -1, SQLITE_STATIC) == SQLITE_OK) {
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            *seq = sqlite3_column_int64(st, 0);
        if (rc == SQLITE_ROW || rc == SQLITE_DONE)
            ret = 0;
    }
    /* Ends the read transaction so the writer's checkpoints can progress. */
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    pthread_mutex_unlock(&r->lock);
    return ret;
}

/* Whether run_id has any stored row; 0/1, or -1 on a SQLite error. Reader lock held. */
static int store_reader_run_exists(sqlite_reader *r, const char *run_id)
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
int sqlite_reader_load_page(sqlite_reader *r, const char *run_id,
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
        int frc = fn(ctx, row);
        if (frc < 0)
            goto out;
        delivered++;
        if (frc > 0)
            want = delivered; /* enough: the next matching row, if any, says more follow */
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
