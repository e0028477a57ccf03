/*
 * sqlite_expire: finding the runs retention may delete (store_expired_runs of
 * the SQLite backend),
 * on the write connection, a page of rows at a time.
 *
 * A page walks run_node_state's primary key (run_id, node_id) from the
 * cursor: the table is WITHOUT ROWID, so the key is the table itself, the
 * rows come in key order with no sort and no temporary table, and the page
 * stops after max_rows of them. A page therefore costs max_rows rows however
 * big the table or its runs are, and needs no index of its own
 * (tests/test_retention.c checks the plan). A run is judged as its rows go
 * by; one whose rows began on an earlier page (other commits may have come
 * in between) is checked again whole, by key, before it is handed over.
 */
#include "sqlite_internal.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* ?1 ?2 the cursor's key, ?3 the page size. */
static const char expire_page_sql[] =
    "SELECT run_id, node_id, updated_at, status FROM run_node_state"
    " WHERE (run_id, node_id) > (?1, ?2) ORDER BY run_id, node_id LIMIT ?3";
/* Some node of run ?1 that keeps it: not terminal, or updated at or after ?2. %s: the terminal statuses. */
static const char expire_recheck_sql[] =
    "SELECT 1 FROM run_node_state WHERE run_id = ?1"
    " AND (status NOT IN (%s) OR updated_at IS NULL OR updated_at >= ?2) LIMIT 1";

/* "'completed','failed'" from model_status_terminal, so no status name is written here. */
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

int store_expired_sql(char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "%s", expire_page_sql);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

/* Whether a stored status name is a terminal one. */
static bool terminal_name(const char *name)
{
    ns_status st;
    return name != NULL && model_status_parse(name, &st) == 0 && model_status_terminal(st);
}

/*
 * Whether run_id, judged on earlier pages, still has no node that keeps
 * it. 1 yes, 0 no, -1 on an SQLite error (errmsg set).
 */
static int recheck(sqlite_store *s, const char *run_id, const char *cutoff)
{
    char terminal[256], sql[512];
    sqlite3_stmt *st = NULL;
    int ret = -1;

    terminal_list(terminal, sizeof terminal);
    snprintf(sql, sizeof sql, expire_recheck_sql, terminal);
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

/*
 * The cursor's run is examined to its last row: hands it to fn if it has
 * expired. 0 done, 1 fn stopped (the cursor stays on the run, to finish it
 * again next page), -1 on an SQLite error.
 */
static int finish_run(sqlite_store *s, store_expiry_cursor *c, const char *cutoff,
                      int (*fn)(void *ctx, const char *run_id), void *ctx)
{
    if (!c->expired_so_far)
        return 0;
    if (c->spans) {
        int rc = recheck(s, c->run_id, cutoff);
        if (rc <= 0)
            return rc;
    }
    return fn(ctx, c->run_id) == 0 ? 0 : 1;
}

/* Starts judging run_id at its first row. */
static void start_run(store_expiry_cursor *c, const char *run_id)
{
    snprintf(c->run_id, sizeof c->run_id, "%s", run_id);
    c->expired_so_far = true;
    c->spans = false;
}

int sqlite_store_expired_runs(sqlite_store *s, int64_t cutoff_ms, size_t max_rows,
                       store_expiry_cursor *c,
                       int (*fn)(void *ctx, const char *run_id), void *ctx)
{
    char cutoff[NS_TS_BUF];
    sqlite3_stmt *st = NULL;
    long examined = 0;
    int rc, fin = 0;

    if (max_rows == 0 || max_rows > INT_MAX) {
        snprintf(s->errmsg, sizeof s->errmsg, "expired runs: bad page size");
        return -1;
    }
    /* updated_at is stored in this very form, so text order is time order. */
    model_ts_format(cutoff_ms, cutoff);
    if (sqlite3_prepare_v2(s->db, expire_page_sql, -1, &st, NULL) != SQLITE_OK ||
        sqlite3_bind_text(st, 1, c->run_id, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_bind_text(st, 2, c->node_id, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_bind_int64(st, 3, (sqlite3_int64)max_rows) != SQLITE_OK)
        goto err;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *run_id = (const char *)sqlite3_column_text(st, 0);
        const char *node_id = (const char *)sqlite3_column_text(st, 1);
        const char *updated = (const char *)sqlite3_column_text(st, 2);
        const char *status = (const char *)sqlite3_column_text(st, 3);

        if (run_id == NULL || node_id == NULL)
            continue; /* NOT NULL columns: another program's row, kept */
        if (c->run_id[0] == '\0' || strcmp(run_id, c->run_id) != 0) {
            if (c->run_id[0] != '\0' && (fin = finish_run(s, c, cutoff, fn, ctx)) != 0)
                break;
            start_run(c, run_id);
        }
        examined++;
        /*
         * Ids are at most NS_ID_MAX bytes (the API's limit); a longer one
         * written by another program would cut the cursor short, and the
         * next page would examine some of its rows again: a page's work
         * is still bounded.
         */
        snprintf(c->node_id, sizeof c->node_id, "%s", node_id);
        /* A NULL updated_at cannot be judged: such a run is kept. */
        if (!terminal_name(status) || updated == NULL || strcmp(updated, cutoff) >= 0)
            c->expired_so_far = false;
    }
    if (fin < 0 || (fin == 0 && rc != SQLITE_ROW && rc != SQLITE_DONE))
        goto err;
    if (fin == 0 && rc == SQLITE_DONE && (size_t)examined < max_rows) {
        /* The end of the table: its last run is whole, and the sweep starts over. */
        if (c->run_id[0] != '\0' && (fin = finish_run(s, c, cutoff, fn, ctx)) < 0)
            goto err;
        if (fin == 0)
            memset(c, 0, sizeof *c);
    }
    /* A run still open goes on (or is finished) on the next page, after other commits. */
    if (c->run_id[0] != '\0')
        c->spans = true;
    sqlite3_finalize(st);
    return (int)examined;

err:
    if (fin >= 0)
        snprintf(s->errmsg, sizeof s->errmsg, "expired runs: %s", sqlite3_errmsg(s->db));
    sqlite3_finalize(st);
    return -1;
}
