/*
 * sqlite_expire: finding the runs retention may delete (store_expired_runs),
 * on the write connection, a page of runs at a time.
 *
 * The page walks run_node_state's primary key (run_id, node_id): the table
 * is WITHOUT ROWID, so the key is the table itself and GROUP BY run_id reads
 * rows in key order with no sort and no temporary table, and stops after
 * max_runs groups. A page therefore costs the rows of max_runs runs however
 * big the table is, and needs no index of its own (tests/test_store.c checks
 * the plan).
 */
#include "sqlite_internal.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/*
 * ?1 the cursor (run ids after it), ?2 the page size. %s is the list of
 * terminal statuses, built from the model so no status name is written here.
 */
static const char expire_page_sql[] =
    "SELECT run_id, max(updated_at), sum(status NOT IN (%s))"
    " FROM run_node_state WHERE run_id > ?1"
    " GROUP BY run_id ORDER BY run_id LIMIT ?2";

/* "'completed','failed'" from model_status_terminal. */
static void terminal_list(char *out, size_t outlen)
{
    size_t len = 0;

    out[0] = '\0';
    for (int st = 0; st < NS_STATUS_COUNT; st++) {
        if (!model_status_terminal((ns_status)st))
            continue;
        int n = snprintf(out + len, outlen - len, "%s'%s'", len ? "," : "",
                         model_status_name((ns_status)st));
        if (n < 0 || (size_t)n >= outlen - len)
            return;
        len += (size_t)n;
    }
}

/* The page's SQL, for store_expired_runs and for tests of its plan. */
int store_expired_sql(char *out, size_t outlen)
{
    char terminal[256];

    terminal_list(terminal, sizeof terminal);
    int n = snprintf(out, outlen, expire_page_sql, terminal);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

int store_expired_runs(store *s, int64_t cutoff_ms, size_t max_runs,
                       char cursor[NS_ID_MAX + 1],
                       int (*fn)(void *ctx, const char *run_id), void *ctx)
{
    char sql[512], cutoff[NS_TS_BUF];
    sqlite3_stmt *st = NULL;
    long examined = 0;
    int rc;

    if (max_runs == 0 || store_expired_sql(sql, sizeof sql) != 0) {
        snprintf(s->errmsg, sizeof s->errmsg, "expired runs: bad arguments");
        return -1;
    }
    /* updated_at is stored in this very form, so text order is time order. */
    model_ts_format(cutoff_ms, cutoff);
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK ||
        sqlite3_bind_text(st, 1, cursor, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_bind_int64(st, 2, (sqlite3_int64)max_runs) != SQLITE_OK) {
        snprintf(s->errmsg, sizeof s->errmsg, "expired runs: %s", sqlite3_errmsg(s->db));
        goto err;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *run_id = (const char *)sqlite3_column_text(st, 0);
        const char *newest = (const char *)sqlite3_column_text(st, 1);
        int64_t open = sqlite3_column_int64(st, 2);

        if (run_id == NULL)
            continue;
        /* A NULL updated_at cannot be judged: such a run is kept. */
        bool expired = open == 0 && newest != NULL && strcmp(newest, cutoff) < 0;
        /* Stopped: the next page starts with this run again. */
        if (expired && fn(ctx, run_id) != 0)
            break;
        examined++;
        /*
         * Ids are at most NS_ID_MAX bytes (the API's limit); a longer one
         * written into the file by hand would cut the cursor short and
         * keep the sweep on its page, which costs a page per pass, no more.
         */
        snprintf(cursor, NS_ID_MAX + 1, "%s", run_id);
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        snprintf(s->errmsg, sizeof s->errmsg, "expired runs: %s", sqlite3_errmsg(s->db));
        goto err;
    }
    /* A short page reached the end: the next one starts from the first run. */
    if ((size_t)examined < max_runs && rc == SQLITE_DONE)
        cursor[0] = '\0';
    sqlite3_finalize(st);
    return (int)examined;

err:
    sqlite3_finalize(st);
    return -1;
}
