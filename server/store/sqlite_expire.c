/*
 * sqlite_expire: finding the runs retention may delete (store_expired_runs of
 * the SQLite backend),
 * on the write connection, a page of rows at a time.
 *
 * A page walks run_node_state's primary key (run_id, node_id) from the
 * cursor: its index (or the table itself, in a file made WITHOUT ROWID),
 * so the rows come in key order with no sort and no temporary table, and
 * the page stops after max_rows of them. A page therefore costs max_rows
 * rows however big the table or its runs are, and needs no index of its
 * own (tests/test_retention.c checks the plan of both layouts). The rows
 * are fed to store_expire.c, which judges them the same way for either
 * backend; a run whose rows began on an earlier page is checked again
 * whole, by key (recheck below), before it is handed over.
 */
#include "sqlite_internal.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "store_expire.h"

/* ?1 ?2 the cursor's key, ?3 the page size. */
static const char expire_page_sql[] =
    "SELECT run_id, node_id, updated_at, status, seq FROM run_node_state"
    " WHERE (run_id, node_id) > (?1, ?2) ORDER BY run_id, node_id LIMIT ?3";

int store_expired_sql(char *out, size_t outlen)
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
    sqlite_store *s = backend;
    char keeps[256], sql[640];
    sqlite3_stmt *st = NULL;
    int ret = -1;

    if (store_expiry_keeps_sql("?2", keeps, sizeof keeps) != 0) {
        snprintf(s->errmsg, sizeof s->errmsg, "expired runs: statement too long");
        return -1;
    }
    snprintf(sql, sizeof sql,
             "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM run_node_state WHERE run_id = ?1)"
             " OR EXISTS (SELECT 1 FROM run_node_state WHERE run_id = ?1 AND %s)", keeps);
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK ||
        sqlite3_bind_text(st, 1, run_id, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_text(st, 2, cutoff, -1, SQLITE_STATIC) != SQLITE_OK)
        goto out;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        ret = 0;
    else if (rc == SQLITE_DONE)
        ret = 1;
out:
    if (ret < 0)
        snprintf(s->errmsg, sizeof s->errmsg, "expired runs: %s", sqlite3_errmsg(s->db));
    sqlite3_finalize(st);
    return ret;
}

int sqlite_store_expired_runs(sqlite_store *s, int64_t cutoff_ms, size_t max_rows,
                       store_expiry_cursor *c,
                       int (*fn)(void *ctx, const char *run_id, int64_t max_seq), void *ctx)
{
    store_expiry_walk w;
    sqlite3_stmt *st = NULL;
    size_t fetched = 0;
    int rc;

    if (max_rows == 0 || max_rows > INT_MAX) {
        snprintf(s->errmsg, sizeof s->errmsg, "expired runs: bad page size");
        return -1;
    }
    store_expiry_begin(&w, c, cutoff_ms, recheck, s, fn, ctx);
    if (sqlite3_prepare_v2(s->db, expire_page_sql, -1, &st, NULL) != SQLITE_OK ||
        sqlite3_bind_text(st, 1, c->run_id, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_bind_text(st, 2, c->node_id, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_bind_int64(st, 3, (sqlite3_int64)max_rows) != SQLITE_OK)
        goto err;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        fetched++;
        if (store_expiry_row(&w, (const char *)sqlite3_column_text(st, 0),
                             (const char *)sqlite3_column_text(st, 1),
                             (const char *)sqlite3_column_text(st, 2),
                             (const char *)sqlite3_column_text(st, 3),
                             sqlite3_column_int64(st, 4)) != 0)
            break;
    }
    if (w.stop == 0 && rc != SQLITE_ROW && rc != SQLITE_DONE)
        goto err;
    int examined = store_expiry_end(&w, w.stop == 0 && rc == SQLITE_DONE && fetched < max_rows);
    sqlite3_finalize(st);
    return examined;

err:
    snprintf(s->errmsg, sizeof s->errmsg, "expired runs: %s", sqlite3_errmsg(s->db));
    sqlite3_finalize(st);
    return -1;
}
