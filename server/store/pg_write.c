/*
 * pg_write: the PostgreSQL write connection: open (schema), the batch as
 * one transaction of multi-row upserts judged by the transition rules,
 * isolation of rows PostgreSQL refuses, meta, and replay of the sidecar.
 */
#include "pg_internal.h"
#include "pg_listen.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* A row left out of the transaction in progress, reported after COMMIT. */
typedef struct pg_isolated {
    size_t row;
    char why[PG_ERRMSG_MAX];
} pg_isolated;

pg_store *pg_store_open(const char *uri, bool sync_full, char *err,
                        size_t errlen)
{
    /* PostgreSQL's own durability settings (synchronous_commit) apply. */
    (void)sync_full;
    pg_store *s = calloc(1, sizeof *s);
    if (s == NULL || (s->uri = strdup(uri)) == NULL) {
        snprintf(err, errlen, "out of memory");
        goto err;
    }
    if (pg_sql_build(&s->sql) != 0) {
        snprintf(err, errlen, "out of memory");
        goto err;
    }
    s->conn = pg_connect(uri, err, errlen);
    if (s->conn == NULL)
        goto err;
    if (pg_migrate(s->conn, &s->sql, err, errlen) != 0)
        goto err;
    if (pg_exec(s->conn, "SET lock_timeout = '" PG_LOCK_TIMEOUT "'", err, errlen,
                "setting lock_timeout") != 0)
        goto err;
    /* Every seq any instance handed out is at most this (blocks are recorded before use). */
    if (pg_query_int(s->conn, "SELECT value FROM nodestate_meta WHERE key = 'seq_reserved'",
                     0, NULL, &s->last_seq, err, errlen, "reading seq_reserved") < 0)
        goto err;
    return s;
err:
    pg_store_close(s);
    return NULL;
}

void pg_store_close(pg_store *s)
{
    if (s == NULL)
        return;
    if (s->conn)
        PQfinish(s->conn);
    pg_sql_free(&s->sql);
    free(s->uri);
    free(s);
}

/* A broken connection (the server restarted) is made anew before a try. */
static void pg_revive(PGconn *conn)
{
    if (PQstatus(conn) != CONNECTION_OK)
        PQreset(conn);
}

/* Records why a call failed. */
static void pg_fail(pg_store *s, const PGresult *res, const char *what)
{
    pg_set_err(s->errmsg, sizeof s->errmsg, s->conn, res, what);
}

/* Runs sql (no rows wanted) with text params; 0, or -1 with *failed kept. */
static int pg_run(pg_store *s, const char *sql, int n, const char *const *params,
                  const char *what, PGresult **failed)
{
    PGresult *res = PQexecParams(s->conn, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        PQclear(res);
        return 0;
    }
    pg_fail(s, res, what);
    if (failed)
        *failed = res;
    else
        PQclear(res);
    return -1;
}

/* The array element text of each kind of NS_NODE_FIELDS. */
static void pg_put_id(pg_buf *b, const char *v)
{
    pg_buf_array_elem(b, v);
}

static void pg_put_status(pg_buf *b, ns_status v)
{
    pg_buf_array_elem(b, model_status_name(v));
}

static void pg_put_int(pg_buf *b, int64_t v)
{
    char num[32];
    snprintf(num, sizeof num, "%lld", (long long)v);
    pg_buf_array_elem(b, num);
}

static void pg_put_timestamp(pg_buf *b, int64_t v)
{
    char ts[NS_TS_BUF];
    if (v == NS_TS_NULL) {
        pg_buf_array_elem(b, NULL);
        return;
    }
    model_ts_format(v, ts);
    pg_buf_array_elem(b, ts);
}

static void pg_put_text(pg_buf *b, const char *v)
{
    pg_buf_array_elem(b, v);
}

static void pg_put_bool(pg_buf *b, bool v)
{
    pg_buf_array_elem(b, v ? "t" : "f");
}

static void pg_put_json(pg_buf *b, const char *v)
{
    pg_buf_array_elem(b, v);
}

static int pg_by_key(const void *a, const void *b)
{
    const ns_row *x = *(const ns_row *const *)a;
    const ns_row *y = *(const ns_row *const *)b;
    int c = strcmp(x->run_id, y->run_id);
    return c ? c : strcmp(x->node_id, y->node_id);
}

/* Marks the rows of b that res (RETURNING run_id, node_id) says were applied. */
static void pg_mark_applied(const store_batch *b, const PGresult *res, bool *applied)
{
    for (int i = 0; i < PQntuples(res); i++) {
        ns_row key = { .run_id = PQgetvalue(res, i, 0), .node_id = PQgetvalue(res, i, 1) };
        const ns_row *kp = &key;
        ns_row *const *hit = bsearch(&kp, b->rows, b->n_rows, sizeof *b->rows, pg_by_key);
        if (hit != NULL) {
            applied[hit - b->rows] = true;
            continue;
        }
        /* Rows not in key order (a caller's mistake): look the slow way. */
        for (size_t k = 0; k < b->n_rows; k++)
            if (pg_by_key(&kp, &b->rows[k]) == 0)
                applied[k] = true;
    }
}

/*
 * Upserts rows idx[0..n) of b in one statement (forced: judged by seq
 * alone). 0 with the applied ones marked, or -1 with *failed set to the
 * failed result (the caller clears it) or NULL when out of memory.
 */
static int pg_upsert(pg_store *s, const store_batch *b, const size_t *idx, size_t n,
                     bool forced, bool *applied, PGresult **failed)
{
    int ncols = s->sql.ncols;
    pg_buf cols[64];
    const char *params[64];
    int ret = -1;
    *failed = NULL;
    memset(cols, 0, sizeof cols);
    for (int c = 0; c < ncols; c++)
        pg_buf_array_open(&cols[c]);
    for (size_t k = 0; k < n; k++) {
        const ns_row *row = b->rows[idx[k]];
        int c = 0;
#define PG_PUT_(name, member, json, column, kind) pg_put_##kind(&cols[c++], row->member);
        NS_NODE_FIELDS(PG_PUT_)
#undef PG_PUT_
    }
    for (int c = 0; c < ncols; c++) {
        pg_buf_array_close(&cols[c]);
        if (cols[c].oom) {
            snprintf(s->errmsg, sizeof s->errmsg, "upsert: out of memory");
            goto out;
        }
        params[c] = cols[c].p;
    }
    PGresult *res = PQexecParams(s->conn, forced ? s->sql.upsert_forced : s->sql.upsert,
                                 ncols, NULL, params, NULL, NULL, 0);
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        pg_fail(s, res, "upsert");
        *failed = res;
        goto out;
    }
    pg_mark_applied(b, res, applied);
    PQclear(res);
    ret = 0;
out:
    for (int c = 0; c < ncols; c++)
        pg_buf_free(&cols[c]);
    return ret;
}

/* The runs of b deleted, in the transaction in progress. 0 or -1. */
static int pg_delete_runs(pg_store *s, const store_batch *b)
{
    if (b->n_deletes == 0)
        return 0;
    pg_buf runs = { 0 };
    pg_buf_array_open(&runs);
    for (size_t i = 0; i < b->n_deletes; i++)
        pg_buf_array_elem(&runs, b->delete_runs[i]);
    pg_buf_array_close(&runs);
    if (runs.oom) {
        snprintf(s->errmsg, sizeof s->errmsg, "delete run: out of memory");
        return -1;
    }
    const char *p[1] = { runs.p };
    int rc = pg_run(s, "DELETE FROM run_node_state WHERE run_id = ANY($1::text[])",
                    1, p, "delete run", NULL);
    pg_buf_free(&runs);
    return rc;
}

/*
 * The slow way, after a batch statement failed on a row: every row in a
 * savepoint of its own, so that the rows PostgreSQL refuses are left out
 * (noted in iso) and the rest still commits. In a fresh transaction.
 */
static int pg_write_isolating(pg_store *s, const store_batch *b, bool *applied,
                              pg_isolated *iso, size_t *n_iso)
{
    PGresult *failed = NULL;
    *n_iso = 0;
    memset(applied, 0, b->n_rows * sizeof *applied);
    if (pg_run(s, "BEGIN", 0, NULL, "begin", NULL) != 0 || pg_delete_runs(s, b) != 0)
        return -1;
    for (size_t i = 0; i < b->n_rows; i++) {
        bool forced = b->forced != NULL && b->forced[i];
        if (pg_run(s, "SAVEPOINT nodestate_row", 0, NULL, "savepoint", NULL) != 0)
            return -1;
        if (pg_upsert(s, b, &i, 1, forced, applied, &failed) == 0) {
            if (pg_run(s, "RELEASE SAVEPOINT nodestate_row", 0, NULL, "savepoint", NULL) != 0)
                return -1;
            continue;
        }
        bool row_level = pg_row_level(failed);
        PQclear(failed);
        if (!row_level)
            return -1;
        iso[*n_iso].row = i;
        snprintf(iso[*n_iso].why, sizeof iso[0].why, "%s", s->errmsg);
        (*n_iso)++;
        if (pg_run(s, "ROLLBACK TO SAVEPOINT nodestate_row", 0, NULL, "savepoint", NULL) != 0)
            return -1;
    }
    return 0;
}

/* Whether b's arrays are there for the counts it claims. */
static bool pg_batch_valid(const store_batch *b)
{
    return b != NULL && (b->n_deletes == 0 || b->delete_runs != NULL) &&
           (b->n_rows == 0 || b->rows != NULL);
}

int pg_store_write(pg_store *s, store_batch *b)
{
    bool *applied = NULL;
    size_t *idx = NULL;
    pg_isolated *iso = NULL;
    size_t n_iso = 0;
    PGresult *failed = NULL;
    int ret = -1;

    if (!pg_batch_valid(b)) {
        snprintf(s->errmsg, sizeof s->errmsg, "invalid batch");
        return -1;
    }
    b->n_isolated = 0;
    b->n_superseded = 0;
    pg_revive(s->conn);
    applied = calloc(b->n_rows ? b->n_rows : 1, sizeof *applied);
    idx = malloc((b->n_rows ? b->n_rows : 1) * sizeof *idx);
    if (applied == NULL || idx == NULL) {
        snprintf(s->errmsg, sizeof s->errmsg, "out of memory");
        goto out;
    }
    if (pg_run(s, "BEGIN", 0, NULL, "begin", NULL) != 0 || pg_delete_runs(s, b) != 0)
        goto rollback;
    /* Two statements at most: the rows judged by the rules, then the forced ones. */
    for (int pass = 0; pass < 2; pass++) {
        bool forced = pass == 1;
        size_t n = 0;
        for (size_t i = 0; i < b->n_rows; i++)
            if ((b->forced != NULL && b->forced[i]) == forced)
                idx[n++] = i;
        if (n == 0)
            continue;
        if (pg_upsert(s, b, idx, n, forced, applied, &failed) == 0)
            continue;
        bool row_level = failed != NULL && pg_row_level(failed);
        PQclear(failed);
        if (!row_level)
            goto rollback;
        /* A row PostgreSQL will never take: start over, a row at a time. */
        PQclear(PQexec(s->conn, "ROLLBACK"));
        iso = malloc(b->n_rows * sizeof *iso);
        if (iso == NULL) {
            snprintf(s->errmsg, sizeof s->errmsg, "out of memory");
            goto out;
        }
        if (pg_write_isolating(s, b, applied, iso, &n_iso) != 0)
            goto rollback;
        break;
    }
    /*
     * The notifications (the other instances drop these runs) and COMMIT
     * in one round trip: delivered with the commit, never without it.
     */
    char *commit_sql = NULL;
    if (pg_listen_commit_sql(s->conn, b, &commit_sql, s->errmsg, sizeof s->errmsg) != 0)
        goto rollback;
    PGresult *committed = PQexec(s->conn, commit_sql);
    free(commit_sql);
    if (PQresultStatus(committed) != PGRES_COMMAND_OK) {
        pg_fail(s, committed, "commit");
        PQclear(committed);
        goto rollback;
    }
    PQclear(committed);
    if (b->last_seq > s->last_seq)
        s->last_seq = b->last_seq;
    /* Committed: now the callbacks may learn what was left out. */
    for (size_t k = 0; k < n_iso; k++) {
        applied[iso[k].row] = true; /* reported as isolated, not as superseded */
        b->n_isolated++;
        if (b->on_isolated)
            b->on_isolated(b->isolated_ctx, b->rows[iso[k].row], iso[k].why);
    }
    for (size_t i = 0; i < b->n_rows; i++) {
        if (applied[i])
            continue;
        b->n_superseded++;
        if (b->on_superseded)
            b->on_superseded(b->isolated_ctx, b->rows[i]);
    }
    ret = 0;
    goto out;
rollback:
    if (PQstatus(s->conn) == CONNECTION_OK)
        PQclear(PQexec(s->conn, "ROLLBACK"));
out:
    free(applied);
    free(idx);
    free(iso);
    return ret;
}

int64_t pg_store_last_seq(const pg_store *s)
{
    return s->last_seq;
}

const char *pg_store_errmsg(const pg_store *s)
{
    return s->errmsg;
}

int pg_store_meta_get(pg_store *s, const char *key, int64_t *value)
{
    const char *p[1] = { key };
    pg_revive(s->conn);
    return pg_query_int(s->conn, "SELECT value FROM nodestate_meta WHERE key = $1",
                        1, p, value, s->errmsg, sizeof s->errmsg, "meta");
}

int pg_store_meta_set(pg_store *s, const char *key, int64_t value)
{
    char v[32];
    if (strcmp(key, "last_seq") == 0 || strcmp(key, "seq_reserved") == 0 ||
        strcmp(key, "schema_version") == 0) {
        snprintf(s->errmsg, sizeof s->errmsg, "meta: %s is the store's own", key);
        return -1;
    }
    snprintf(v, sizeof v, "%lld", (long long)value);
    const char *p[2] = { key, v };
    pg_revive(s->conn);
    return pg_run(s, "INSERT INTO nodestate_meta (key, value) VALUES ($1, $2::bigint)"
                     " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                  2, p, "meta", NULL);
}

/*
 * The sidecar is a local SQLite file whatever the database: its live
 * content is read (store_spill_read) and written as one batch, every row
 * judged by seq alone as SQLite's replay does (each was accepted here
 * against this instance's state), deletes first; only then is it removed.
 */
int pg_store_replay(pg_store *s, const char *spill_path, store_replayed *out,
                    char *err, size_t errlen)
{
    store_spill_content c;
    bool *forced = NULL;
    int ret = -1;
    memset(out, 0, sizeof *out);
    if (store_spill_read(spill_path, &c, err, errlen) != 0)
        return -1;
    out->torn = c.info.torn;
    if (c.n_rows == 0 && c.n_deletes == 0 && c.info.pieces == 0) {
        store_spill_content_free(&c);
        struct stat sb;
        if (stat(spill_path, &sb) != 0)
            return 0;
        return store_spill_remove(spill_path, err, errlen);
    }
    forced = malloc((c.n_rows ? c.n_rows : 1) * sizeof *forced);
    if (forced == NULL) {
        snprintf(err, errlen, "%s: out of memory", spill_path);
        goto out;
    }
    for (size_t i = 0; i < c.n_rows; i++)
        forced[i] = true;
    store_batch b = {
        .delete_runs = (const char *const *)c.deletes, .n_deletes = c.n_deletes,
        .rows = c.rows, .n_rows = c.n_rows, .forced = forced, .last_seq = c.last_seq,
    };
    if (pg_store_write(s, &b) != 0) {
        snprintf(err, errlen, "replaying spill file %s: %s", spill_path, s->errmsg);
        goto out;
    }
    if (store_spill_remove(spill_path, err, errlen) != 0)
        goto out;
    *out = c.info;
    ret = 0;
out:
    free(forced);
    store_spill_content_free(&c);
    return ret;
}
