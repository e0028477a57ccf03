/*
 * pg_expire: finding the runs retention may delete (store_expired_runs of
 * the PostgreSQL backend), on the write connection (the writer thread's),
 * a page of rows at a time.
 *
 * A page is a row-value comparison on the primary key from the cursor,
 * (run_id, node_id) > ($1, $2) ORDER BY run_id, node_id LIMIT $3: an index
 * scan of the primary key's btree that starts at the cursor and stops after
 * max_rows rows, no sort (test_pg_store checks the plan). Both key columns
 * are in the "C" collation, so the order is strcmp's, the same order
 * store_expire.c expects. The rows are judged by store_expire.c, as
 * SQLite's are; a run carried over from an earlier page is checked again
 * whole (recheck) before it is handed over.
 *
 * Only candidates are found here: the delete itself goes through the
 * writer's batch like DELETE /runs/{id}, marked as retention's
 * (store_batch.expiring) so that pg_write.c judges it again under row
 * locks, and is announced to the other instances with that batch's commit
 * (pg_listen).
 */
#include "pg_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_expire.h"

/* $1 $2 the cursor's key, $3 the page size. */
static const char expire_page_sql[] =
    "SELECT run_id, node_id, updated_at, status, seq FROM run_node_state"
    " WHERE (run_id, node_id) > ($1, $2) ORDER BY run_id, node_id LIMIT $3";

int store_pg_expired_sql(char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "%s", expire_page_sql);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

/*
 * store_expiry_walk's recheck: some node of run_id that keeps it, or no
 * node left (a DELETE committed since the earlier page: nothing to expire)?
 */
static int recheck(void *backend, const char *run_id, const char *cutoff)
{
    pg_store *s = backend;
    char keeps[256], sql[640];
    const char *p[2] = { run_id, cutoff };
    int64_t one;

    if (store_expiry_keeps_sql("$2", keeps, sizeof keeps) != 0) {
        snprintf(s->errmsg, sizeof s->errmsg, "expired runs: statement too long");
        return -1;
    }
    snprintf(sql, sizeof sql,
             "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM run_node_state WHERE run_id = $1)"
             " OR EXISTS (SELECT 1 FROM run_node_state WHERE run_id = $1 AND %s)", keeps);
    int rc = pg_query_int(s->conn, sql, 2, p, &one, s->errmsg, sizeof s->errmsg,
                          "expired runs");
    return rc < 0 ? -1 : rc; /* 0 kept (or gone), 1 expired */
}

/* A column of row i of res, NULL for SQL NULL. */
static const char *col(const PGresult *res, int i, int c)
{
    return PQgetisnull(res, i, c) ? NULL : PQgetvalue(res, i, c);
}

int pg_store_expired_runs(pg_store *s, int64_t cutoff_ms, size_t max_rows,
                          store_expiry_cursor *c,
                          int (*fn)(void *ctx, const char *run_id, int64_t max_seq), void *ctx)
{
    store_expiry_walk w;
    char limit[32];

    if (max_rows == 0 || max_rows > INT_MAX) {
        snprintf(s->errmsg, sizeof s->errmsg, "expired runs: bad page size");
        return -1;
    }
    pg_store_revive(s);
    store_expiry_begin(&w, c, cutoff_ms, recheck, s, fn, ctx);
    snprintf(limit, sizeof limit, "%zu", max_rows);
    const char *p[3] = { c->run_id, c->node_id, limit };
    PGresult *res = PQexecParams(s->conn, expire_page_sql, 3, NULL, p, NULL, NULL, 0);
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        pg_set_err(s->errmsg, sizeof s->errmsg, s->conn, res, "expired runs");
        PQclear(res);
        return -1;
    }
    int n = PQntuples(res);
    for (int i = 0; i < n; i++)
        if (store_expiry_row(&w, col(res, i, 0), col(res, i, 1), col(res, i, 2),
                             col(res, i, 3), col(res, i, 4) ? atoll(col(res, i, 4)) : 0) != 0)
            break;
    /* The page ran out before max_rows: the end of the table. */
    int examined = store_expiry_end(&w, w.stop == 0 && (size_t)n < max_rows);
    PQclear(res);
    return examined;
}
