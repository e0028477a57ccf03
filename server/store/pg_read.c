/*
 * pg_read: the PostgreSQL read-through connection (a run, a node, a page
 * of a run) and the seq blocks reserved through it.
 */
#include "pg_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

pg_reader *pg_reader_open(const char *uri, char *err, size_t errlen)
{
    pg_sql sql;
    pg_reader *r = calloc(1, sizeof *r);
    if (r == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (pthread_mutex_init(&r->lock, NULL) != 0) {
        snprintf(err, errlen, "cannot create reader mutex");
        free(r);
        return NULL;
    }
    if (pg_sql_build(&sql) != 0) {
        snprintf(err, errlen, "out of memory");
        goto err;
    }
    r->select_cols = sql.select_cols;
    sql.select_cols = NULL;
    pg_sql_free(&sql);
    r->conn = pg_connect(uri, err, errlen);
    if (r->conn == NULL)
        goto err;
    return r;
err:
    pg_reader_close(r);
    return NULL;
}

void pg_reader_close(pg_reader *r)
{
    if (r == NULL)
        return;
    if (r->conn)
        PQfinish(r->conn);
    free(r->select_cols);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

/*
 * Runs "SELECT <columns> <tail>" with text params. The result, or NULL on
 * an error. Reader lock held; a broken connection is made anew first.
 */
static PGresult *pg_select(pg_reader *r, const char *tail, int n,
                           const char *const *params)
{
    char sql[1024];
    if (PQstatus(r->conn) != CONNECTION_OK)
        PQreset(r->conn);
    if (snprintf(sql, sizeof sql, "SELECT %s %s", r->select_cols, tail) >= (int)sizeof sql)
        return NULL;
    PGresult *res = PQexecParams(r->conn, sql, n, NULL, params, NULL, NULL, 0);
    if (res != NULL && PQresultStatus(res) != PGRES_TUPLES_OK) {
        PQclear(res);
        res = NULL;
    }
    return res;
}

/* Whether run_id has any stored row; 0/1, or -1 on an error. Lock held. */
static int pg_run_exists(pg_reader *r, const char *run_id)
{
    const char *p[1] = { run_id };
    PGresult *res = PQexecParams(r->conn,
                                 "SELECT 1 FROM run_node_state WHERE run_id = $1 LIMIT 1",
                                 1, NULL, p, NULL, NULL, 0);
    int ret = res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK ? PQntuples(res) > 0 : -1;
    PQclear(res);
    return ret;
}

int pg_reader_deleted_seq(pg_reader *r, const char *run_id, int64_t *seq)
{
    const char *p[1] = { run_id };
    char err[PG_ERRMSG_MAX];
    *seq = 0;
    pthread_mutex_lock(&r->lock);
    if (PQstatus(r->conn) != CONNECTION_OK)
        PQreset(r->conn);
    int rc = pg_query_int(r->conn, "SELECT seq FROM run_deletes WHERE run_id = $1", 1, p, seq,
                          err, sizeof err, "deleted seq");
    pthread_mutex_unlock(&r->lock);
    return rc < 0 ? -1 : 0;
}

/*
 * fn runs with the reader's mutex held (the drafts borrow from the
 * result), so fn must not call back into this reader.
 */
int pg_reader_load_run(pg_reader *r, const char *run_id, bool light,
                       int (*fn)(void *ctx, ns_row *row), void *ctx,
                       size_t *skipped)
{
    (void)light; /* every column: a light read is an optimisation the SQLite store has */
    const char *p[1] = { run_id };
    size_t n_skipped = 0;
    int ret = -1;
    if (skipped != NULL)
        *skipped = 0;
    if (run_id == NULL || fn == NULL)
        return -1;
    pthread_mutex_lock(&r->lock);
    PGresult *res = pg_select(r, "FROM run_node_state WHERE run_id = $1 ORDER BY node_id", 1, p);
    if (res == NULL)
        goto out;
    for (int i = 0; i < PQntuples(res); i++) {
        ns_row draft;
        if (pg_row_draft(res, i, &draft) != 0) {
            n_skipped++;
            continue;
        }
        ns_row *row = model_row_copy(&draft);
        /* fn owns the row from here, whatever it returns. */
        if (row == NULL || fn(ctx, row) != 0)
            goto out;
    }
    ret = 0;
out:
    PQclear(res);
    pthread_mutex_unlock(&r->lock);
    if (skipped != NULL)
        *skipped = n_skipped;
    return ret;
}

int pg_reader_load_node(pg_reader *r, const char *run_id, const char *node_id,
                        ns_row **out, bool *run_has_rows)
{
    const char *p[2] = { run_id, node_id };
    int ret = -1;
    *out = NULL;
    *run_has_rows = false;
    if (run_id == NULL || node_id == NULL)
        return -1;
    pthread_mutex_lock(&r->lock);
    PGresult *res = pg_select(r, "FROM run_node_state WHERE run_id = $1 AND node_id = $2", 2, p);
    if (res == NULL)
        goto out;
    if (PQntuples(res) > 0) {
        ns_row draft;
        int drc = pg_row_draft(res, 0, &draft);
        *run_has_rows = true;
        if (drc == 0 && (*out = model_row_copy(&draft)) == NULL)
            goto out;
        ret = drc == 0 ? 0 : 1;
        goto out;
    }
    /* No such node: say whether the run has others, so a new run can be known empty. */
    int ex = pg_run_exists(r, run_id);
    if (ex >= 0) {
        *run_has_rows = ex == 1;
        ret = 0;
    }
out:
    PQclear(res);
    pthread_mutex_unlock(&r->lock);
    return ret;
}

int pg_reader_load_page(pg_reader *r, const char *run_id, const char *after,
                        unsigned status_mask, size_t want,
                        int (*fn)(void *ctx, ns_row *row), void *ctx,
                        store_page *page)
{
    char limit[32];
    pg_buf statuses = { 0 };
    int ret = -1;
    memset(page, 0, sizeof *page);
    if (run_id == NULL || fn == NULL || want == 0)
        return -1;
    pg_buf_array_open(&statuses);
    for (int s = 0; s < NS_STATUS_COUNT; s++)
        if (status_mask & (1u << s))
            pg_buf_array_elem(&statuses, model_status_name((ns_status)s));
    pg_buf_array_close(&statuses);
    if (statuses.oom)
        return -1;
    /* One more than wanted tells whether another page follows. */
    snprintf(limit, sizeof limit, "%zu", want + 1);
    const char *p[4] = { run_id, after != NULL ? after : "", statuses.p, limit };
    char sql[1024];
    snprintf(sql, sizeof sql,
             "SELECT %s FROM run_node_state WHERE run_id = $1 AND node_id > $2"
             " AND status = ANY($3::text[]) ORDER BY node_id LIMIT $4::bigint",
             r->select_cols);
    pthread_mutex_lock(&r->lock);
    if (PQstatus(r->conn) != CONNECTION_OK)
        PQreset(r->conn);
    /*
     * A row at a time (single-row mode): libpq would otherwise hold the
     * whole result, a page of 1,000 big outputs, before fn could say
     * "enough". Rows after that are still read, one at a time, and dropped.
     */
    if (PQsendQueryParams(r->conn, sql, 4, NULL, p, NULL, NULL, 0) != 1)
        goto out;
    PQsetSingleRowMode(r->conn); /* refused (never, just after the send): one result, read alike */
    bool failed = false, done = false;
    size_t delivered = 0;
    for (PGresult *res; (res = PQgetResult(r->conn)) != NULL; PQclear(res)) {
        ExecStatusType st = PQresultStatus(res);
        if (st != PGRES_SINGLE_TUPLE && st != PGRES_TUPLES_OK) {
            failed = true;
            continue;
        }
        for (int i = 0; i < PQntuples(res) && !failed && !done; i++) {
            ns_row draft;
            page->run_has_rows = true;
            if (delivered == want) {
                page->more = true;
                done = true;
            } else if (pg_row_draft(res, i, &draft) != 0) {
                page->skipped++;
            } else {
                ns_row *row = model_row_copy(&draft);
                int frc = row == NULL ? -1 : fn(ctx, row);
                failed = frc < 0;
                delivered += frc >= 0;
                if (frc > 0)
                    want = delivered; /* enough: the next matching row, if any, says more follow */
            }
        }
    }
    if (failed)
        goto out;
    if (!page->run_has_rows) {
        int ex = pg_run_exists(r, run_id);
        if (ex < 0)
            goto out;
        page->run_has_rows = ex == 1;
    }
    ret = 0;
out:
    pthread_mutex_unlock(&r->lock);
    pg_buf_free(&statuses);
    return ret;
}

/*
 * One committed UPDATE of 'seq_reserved' (its own transaction, so it is
 * on disk before a seq of the block is handed out); the row lock makes
 * instances that reserve at once take turns, each above the other.
 */
int pg_reader_seq_block(pg_reader *r, int64_t above, int64_t want,
                        int64_t *first, int64_t *last)
{
    char a[32], w[32], err[PG_ERRMSG_MAX];
    int64_t top = 0;
    if (want < 1)
        want = 1;
    snprintf(a, sizeof a, "%lld", (long long)(above > 0 ? above : 0));
    snprintf(w, sizeof w, "%lld", (long long)want);
    const char *p[2] = { a, w };
    pthread_mutex_lock(&r->lock);
    if (PQstatus(r->conn) != CONNECTION_OK)
        PQreset(r->conn);
    int rc = pg_query_int(r->conn,
                          "UPDATE nodestate_meta SET value = GREATEST(value, $1::bigint)"
                          " + $2::bigint WHERE key = 'seq_reserved' RETURNING value",
                          2, p, &top, err, sizeof err, "reserving seqs");
    pthread_mutex_unlock(&r->lock);
    if (rc != 0)
        return -1;
    *first = top - want + 1;
    *last = top;
    return 0;
}
