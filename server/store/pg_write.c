/*
 * pg_write: the PostgreSQL write connection: open (schema), the batch as
 * one transaction of multi-row upserts judged by the transition rules,
 * isolation of rows PostgreSQL refuses, meta, and replay of the sidecar.
 */
#include "pg_internal.h"
#include "pg_listen.h"
#include "store_expire.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* A row left out of the transaction in progress, reported after COMMIT. */
typedef struct pg_isolated {
    size_t row;
    char why[PG_ERRMSG_MAX];
} pg_isolated;

/* The session settings of the write connection, again after each reset. */
static int pg_session(PGconn *conn, char *err, size_t errlen)
{
    return pg_exec(conn, "SET lock_timeout = '" PG_LOCK_TIMEOUT "'", err, errlen,
                   "setting lock_timeout");
}

/*
 * A broken connection (the server restarted) is made anew before a try,
 * with its session settings; a failure shows in the statement that follows.
 */
static void pg_revive(pg_store *s)
{
    if (PQstatus(s->conn) == CONNECTION_OK)
        return;
    PQreset(s->conn);
    if (PQstatus(s->conn) == CONNECTION_OK)
        pg_session(s->conn, s->errmsg, sizeof s->errmsg);
}

void pg_store_revive(pg_store *s)
{
    pg_revive(s);
}

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
    if (pg_session(s->conn, err, errlen) != 0)
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

/* The NS_NODE_FIELDS columns of some rows of a batch as array literals, $1..$N. */
typedef struct pg_arrays {
    pg_buf cols[64];
    const char *params[64];
} pg_arrays;

/* Builds the arrays of rows idx[0..n) of b. 0, or -1 out of memory (errmsg set). */
static int pg_arrays_build(pg_store *s, const store_batch *b, const size_t *idx, size_t n,
                           pg_arrays *a)
{
    int ncols = s->sql.ncols;
    memset(a, 0, sizeof *a);
    for (int c = 0; c < ncols; c++)
        pg_buf_array_open(&a->cols[c]);
    for (size_t k = 0; k < n; k++) {
        const ns_row *row = b->rows[idx[k]];
        int c = 0;
#define PG_PUT_(name, member, json, column, kind) pg_put_##kind(&a->cols[c++], row->member);
        NS_NODE_FIELDS(PG_PUT_)
#undef PG_PUT_
    }
    for (int c = 0; c < ncols; c++) {
        pg_buf_array_close(&a->cols[c]);
        if (a->cols[c].oom) {
            snprintf(s->errmsg, sizeof s->errmsg, "upsert: out of memory");
            return -1;
        }
        a->params[c] = a->cols[c].p;
    }
    return 0;
}

static void pg_arrays_free(pg_arrays *a)
{
    for (size_t c = 0; c < sizeof a->cols / sizeof a->cols[0]; c++)
        pg_buf_free(&a->cols[c]);
}

/*
 * Upserts rows idx[0..n) of b in one statement (forced: judged by seq
 * alone). 0 with the applied ones marked, or -1 with *failed set to the
 * failed result (the caller clears it) or NULL when out of memory.
 */
static int pg_upsert(pg_store *s, const store_batch *b, const size_t *idx, size_t n,
                     bool forced, bool *applied, PGresult **failed)
{
    pg_arrays a;
    int ret = -1;
    *failed = NULL;
    if (pg_arrays_build(s, b, idx, n, &a) != 0)
        goto out;
    PGresult *res = PQexecParams(s->conn, forced ? s->sql.upsert_forced : s->sql.upsert,
                                 s->sql.ncols, NULL, a.params, NULL, NULL, 0);
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        pg_fail(s, res, "upsert");
        *failed = res;
        goto out;
    }
    pg_mark_applied(b, res, applied);
    PQclear(res);
    ret = 0;
out:
    pg_arrays_free(&a);
    return ret;
}

/*
 * Sends what libpq holds for the server without ever blocking on a full
 * socket while the server waits for us to read its results (which would
 * deadlock both): non-blocking writes, reading whatever arrives meanwhile.
 * 0 once all is sent, -1 on a connection error.
 */
static int pg_flush_all(PGconn *conn)
{
    int rc;
    while ((rc = PQflush(conn)) == 1) {
        struct pollfd p = { .fd = PQsocket(conn), .events = POLLIN | POLLOUT };
        if (poll(&p, 1, 1000) < 0 && errno != EINTR)
            return -1;
        if ((p.revents & POLLIN) && PQconsumeInput(conn) == 0)
            return -1;
    }
    return rc == 0 ? 0 : -1;
}

/* Whether delete i of b is retention's (store_batch.expiring). */
static bool pg_expiring(const store_batch *b, size_t i)
{
    return b->expiring != NULL && b->expiring[i];
}

/*
 * The runs b deletes as an array literal: retention's (expiring) or the
 * others. How many (0: out left empty), or -1 out of memory (errmsg set).
 */
static int pg_delete_array(pg_store *s, const store_batch *b, bool expiring, pg_buf *out)
{
    int n = 0;
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < b->n_deletes; i++) {
        if (pg_expiring(b, i) != expiring)
            continue;
        if (n++ == 0)
            pg_buf_array_open(out);
        pg_buf_array_elem(out, b->delete_runs[i]);
    }
    if (n == 0)
        return 0;
    pg_buf_array_close(out);
    if (out->oom) {
        pg_buf_free(out);
        snprintf(s->errmsg, sizeof s->errmsg, "delete run: out of memory");
        return -1;
    }
    return n;
}

/*
 * Retention's deletes, judged again here since another instance may have
 * written a run since this one found it expired. First every row of those
 * runs is locked (in key order, as the upserts take them): a write in
 * flight is waited for, and none can change a row after. Then, in a
 * statement whose snapshot sees those writes, a run with a row that keeps
 * it (store_expiry_keeps_sql) is kept whole and returned; the others are
 * deleted. A row inserted by a transaction that commits after that
 * snapshot is not seen and stays: its run starts afresh, as after
 * DELETE /runs/{id}. Every run it did not delete is returned: kept, or
 * gone already (a DELETE /runs/{id} committed since the sweep found it),
 * so that only runs retention removed count as expired. $1 the runs, $2
 * the cutoff.
 */
static const char pg_expire_lock_sql[] =
    "SELECT 1 FROM run_node_state WHERE run_id = ANY($1::text[])"
    " ORDER BY run_id, node_id FOR UPDATE";

static int pg_expire_delete_sql(pg_store *s, char *out, size_t outlen)
{
    char keeps[256];
    int n = -1;
    if (store_expiry_keeps_sql("$2", keeps, sizeof keeps) == 0)
        n = snprintf(out, outlen,
                     "WITH kept AS (SELECT DISTINCT run_id FROM run_node_state"
                     " WHERE run_id = ANY($1::text[]) AND %s),"
                     " gone AS (DELETE FROM run_node_state WHERE run_id = ANY($1::text[])"
                     " AND run_id NOT IN (SELECT run_id FROM kept) RETURNING run_id)"
                     " SELECT r FROM unnest($1::text[]) AS r"
                     " WHERE r NOT IN (SELECT run_id FROM gone)", keeps);
    if (n < 0 || (size_t)n >= outlen) {
        snprintf(s->errmsg, sizeof s->errmsg, "expire run: statement too long");
        return -1;
    }
    return 0;
}

/*
 * The runs b deleted into run_deletes (store.h), after the deletes in the
 * same transaction: $1 the runs, $2 their seqs, $3 now in Unix ms, $4
 * retention's runs among them, recorded only where gone (not kept).
 */
static const char pg_record_deletes_sql[] =
    "INSERT INTO run_deletes (run_id, seq, deleted_at)"
    " SELECT d.run_id, d.seq, $3::bigint FROM unnest($1::text[], $2::bigint[]) AS d(run_id, seq)"
    " WHERE NOT d.run_id = ANY($4::text[])"
    " OR NOT EXISTS (SELECT 1 FROM run_node_state AS r WHERE r.run_id = d.run_id)"
    " ON CONFLICT (run_id) DO UPDATE SET seq = excluded.seq, deleted_at = excluded.deleted_at"
    " WHERE excluded.seq > run_deletes.seq";

static const char pg_forget_deletes_sql[] = "DELETE FROM run_deletes WHERE deleted_at < $1";

/* pg_record_deletes_sql's parameters, and pg_forget_deletes_sql's (forget). */
typedef struct pg_record {
    pg_buf runs, seqs, xruns;
    char now[32], before[32];
    const char *p[4];
    const char *forget[1];
} pg_record;

/*
 * Fills rec for b's deletes: 1, 0 when there is nothing to record (no
 * deletes, or no seqs), -1 out of memory (errmsg set); rec->forget[0] is
 * set when old records go (store_batch.forget_deletes_before_ms).
 * pg_record_free after.
 */
static int pg_record_params(pg_store *s, const store_batch *b, pg_record *rec)
{
    memset(rec, 0, sizeof *rec);
    if (b->forget_deletes_before_ms > 0) {
        snprintf(rec->before, sizeof rec->before, "%lld", (long long)b->forget_deletes_before_ms);
        rec->forget[0] = rec->before;
    }
    if (b->n_deletes == 0 || b->delete_seqs == NULL)
        return 0;
    pg_buf_array_open(&rec->runs);
    pg_buf_array_open(&rec->seqs);
    pg_buf_array_open(&rec->xruns);
    for (size_t i = 0; i < b->n_deletes; i++) {
        char v[32];
        snprintf(v, sizeof v, "%lld", (long long)b->delete_seqs[i]);
        pg_buf_array_elem(&rec->runs, b->delete_runs[i]);
        pg_buf_array_elem(&rec->seqs, v);
        if (pg_expiring(b, i))
            pg_buf_array_elem(&rec->xruns, b->delete_runs[i]);
    }
    pg_buf_array_close(&rec->runs);
    pg_buf_array_close(&rec->seqs);
    pg_buf_array_close(&rec->xruns);
    if (rec->runs.oom || rec->seqs.oom || rec->xruns.oom) {
        snprintf(s->errmsg, sizeof s->errmsg, "recording deletes: out of memory");
        return -1;
    }
    snprintf(rec->now, sizeof rec->now, "%lld", (long long)model_now_ms());
    rec->p[0] = rec->runs.p;
    rec->p[1] = rec->seqs.p;
    rec->p[2] = rec->now;
    rec->p[3] = rec->xruns.p;
    return 1;
}

static void pg_record_free(pg_record *rec)
{
    pg_buf_free(&rec->runs);
    pg_buf_free(&rec->seqs);
    pg_buf_free(&rec->xruns);
}

/* Marks the deletes of b that res (the kept runs) names. */
static void pg_mark_kept(const store_batch *b, const PGresult *res, bool *kept)
{
    for (int i = 0; i < PQntuples(res); i++)
        for (size_t k = 0; k < b->n_deletes; k++)
            if (pg_expiring(b, k) && strcmp(PQgetvalue(res, i, 0), b->delete_runs[k]) == 0)
                kept[k] = true;
}

/*
 * The whole batch in one round trip: BEGIN, the deletes, the judged
 * upsert, the forced one and COMMIT go out together as a libpq pipeline,
 * then their results are read in order. A statement that fails makes the
 * server skip the rest, COMMIT included. Returns 0 once committed (applied
 * rows marked), -1 otherwise, with *row_level telling whether the failure
 * was a row's own; the caller rolls back what is left of the transaction.
 */
static int pg_write_pipelined(pg_store *s, const store_batch *b, size_t *idx,
                              bool *applied, bool *kept, bool *row_level)
{
    enum { Q_PLAIN, Q_UPSERT, Q_NOTIFY, Q_ROWS, Q_KEPT };
    pg_arrays arrays[2];
    pg_buf runs = { 0 }, xruns = { 0 };
    pg_record rec;
    char *notify = NULL, xsql[1024], cutoff[NS_TS_BUF];
    int kinds[10], nq = 0, ret = -1, n_plain = 0, n_expiring = 0, n_record = 0;
    const char *whats[10];
    bool have[2] = { false, false };
    size_t *group[2] = { idx, NULL };
    size_t counts[2] = { 0, 0 };
    bool pipelined = false, failed = false;
    *row_level = false;
    memset(arrays, 0, sizeof arrays);
    memset(&rec, 0, sizeof rec);

    /* idx holds the judged rows from the front and the forced ones from the back. */
    for (size_t i = 0; i < b->n_rows; i++) {
        if (b->forced != NULL && b->forced[i])
            idx[b->n_rows - 1 - counts[1]++] = i;
        else
            idx[counts[0]++] = i;
    }
    group[1] = idx + b->n_rows - counts[1];
    for (int g = 0; g < 2; g++) {
        have[g] = counts[g] > 0;
        if (have[g] && pg_arrays_build(s, b, group[g], counts[g], &arrays[g]) != 0)
            goto out;
    }
    if ((n_plain = pg_delete_array(s, b, false, &runs)) < 0 ||
        (n_expiring = pg_delete_array(s, b, true, &xruns)) < 0 ||
        (n_record = pg_record_params(s, b, &rec)) < 0)
        goto out;
    if (n_expiring) {
        if (pg_expire_delete_sql(s, xsql, sizeof xsql) != 0)
            goto out;
        model_ts_format(b->expire_cutoff_ms, cutoff);
    }

    if (pg_listen_payloads(b, &notify, s->errmsg, sizeof s->errmsg) != 0)
        goto out;

    if (PQsetnonblocking(s->conn, 1) != 0 || PQenterPipelineMode(s->conn) != 1) {
        pg_fail(s, NULL, "pipeline");
        goto out;
    }
    pipelined = true;
    bool sent = PQsendQueryParams(s->conn, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) == 1;
    kinds[nq] = Q_PLAIN, whats[nq++] = "begin";
    if (sent && n_plain) {
        const char *p[1] = { runs.p };
        sent = PQsendQueryParams(s->conn, "DELETE FROM run_node_state WHERE run_id = ANY($1::text[])",
                                 1, NULL, p, NULL, NULL, 0) == 1;
        kinds[nq] = Q_PLAIN, whats[nq++] = "delete run";
    }
    if (sent && n_expiring) {
        const char *p[2] = { xruns.p, cutoff };
        sent = PQsendQueryParams(s->conn, pg_expire_lock_sql, 1, NULL, p, NULL, NULL, 0) == 1;
        kinds[nq] = Q_ROWS, whats[nq++] = "expire run";
        sent = sent && PQsendQueryParams(s->conn, xsql, 2, NULL, p, NULL, NULL, 0) == 1;
        kinds[nq] = Q_KEPT, whats[nq++] = "expire run";
    }
    if (sent && rec.forget[0]) {
        sent = PQsendQueryParams(s->conn, pg_forget_deletes_sql, 1, NULL, rec.forget, NULL, NULL,
                                 0) == 1;
        kinds[nq] = Q_PLAIN, whats[nq++] = "forgetting deletes";
    }
    if (sent && n_record) {
        sent = PQsendQueryParams(s->conn, pg_record_deletes_sql, 4, NULL, rec.p, NULL, NULL,
                                 0) == 1;
        kinds[nq] = Q_PLAIN, whats[nq++] = "recording deletes";
    }
    for (int g = 0; g < 2 && sent; g++) {
        if (!have[g])
            continue;
        sent = PQsendQueryParams(s->conn, g ? s->sql.upsert_forced : s->sql.upsert,
                                 s->sql.ncols, NULL, arrays[g].params, NULL, NULL, 0) == 1;
        kinds[nq] = Q_UPSERT, whats[nq++] = "upsert";
    }
    /* The other instances drop these runs: told with the commit, never without it. */
    if (sent && notify) {
        const char *p[1] = { notify };
        sent = PQsendQueryParams(s->conn, PG_LISTEN_NOTIFY_SQL, 1, NULL, p, NULL, NULL, 0) == 1;
        kinds[nq] = Q_NOTIFY, whats[nq++] = "notify";
    }
    if (sent) {
        sent = PQsendQueryParams(s->conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) == 1;
        kinds[nq] = Q_PLAIN, whats[nq++] = "commit";
    }
    if (!sent || PQpipelineSync(s->conn) != 1 || pg_flush_all(s->conn) != 0 ||
        PQsetnonblocking(s->conn, 0) != 0) {
        pg_fail(s, NULL, "sending the batch");
        goto out;
    }
    /* Everything is sent: reading may block now. */
    for (int q = 0; q < nq; q++) {
        PGresult *res = PQgetResult(s->conn);
        if (res == NULL) {
            pg_fail(s, NULL, whats[q]);
            goto out;
        }
        ExecStatusType st = PQresultStatus(res);
        bool ok = st == (kinds[q] == Q_PLAIN ? PGRES_COMMAND_OK : PGRES_TUPLES_OK);
        if (ok && kinds[q] == Q_UPSERT)
            pg_mark_applied(b, res, applied);
        if (ok && kinds[q] == Q_KEPT)
            pg_mark_kept(b, res, kept);
        if (!ok && st != PGRES_PIPELINE_ABORTED && !failed) {
            /* The first failure is the one to tell; those after it were skipped. */
            pg_fail(s, res, whats[q]);
            *row_level = kinds[q] == Q_UPSERT && pg_row_level(res);
        }
        failed |= !ok;
        PQclear(res);
        /* Each statement's results end with a NULL. */
        while ((res = PQgetResult(s->conn)) != NULL)
            PQclear(res);
    }
    PGresult *sync = PQgetResult(s->conn);
    bool synced = sync != NULL && PQresultStatus(sync) == PGRES_PIPELINE_SYNC;
    PQclear(sync);
    if (!synced) {
        if (!failed)
            pg_fail(s, NULL, "pipeline sync");
        goto out;
    }
    ret = failed ? -1 : 0;
out:
    if (pipelined && PQexitPipelineMode(s->conn) != 1) {
        /* Results left unread: the connection is in no state to go on. */
        char scratch[PG_ERRMSG_MAX];
        PQreset(s->conn);
        if (PQstatus(s->conn) == CONNECTION_OK)
            pg_session(s->conn, scratch, sizeof scratch);
    }
    PQsetnonblocking(s->conn, 0);
    for (int g = 0; g < 2; g++)
        pg_arrays_free(&arrays[g]);
    pg_buf_free(&runs);
    pg_buf_free(&xruns);
    pg_record_free(&rec);
    free(notify);
    return ret;
}

/* The runs of b deleted (retention's judged again), in the transaction in progress. 0 or -1. */
static int pg_delete_runs(pg_store *s, const store_batch *b, bool *kept)
{
    pg_buf runs, xruns = { 0 };
    char xsql[1024], cutoff[NS_TS_BUF];
    int rc = -1, n_plain, n_expiring = 0;
    if ((n_plain = pg_delete_array(s, b, false, &runs)) < 0 ||
        (n_expiring = pg_delete_array(s, b, true, &xruns)) < 0)
        goto out;
    if (n_plain) {
        const char *p[1] = { runs.p };
        if (pg_run(s, "DELETE FROM run_node_state WHERE run_id = ANY($1::text[])",
                   1, p, "delete run", NULL) != 0)
            goto out;
    }
    if (n_expiring) {
        model_ts_format(b->expire_cutoff_ms, cutoff);
        const char *p[2] = { xruns.p, cutoff };
        if (pg_expire_delete_sql(s, xsql, sizeof xsql) != 0 ||
            pg_run(s, pg_expire_lock_sql, 1, p, "expire run", NULL) != 0)
            goto out;
        PGresult *res = PQexecParams(s->conn, xsql, 2, NULL, p, NULL, NULL, 0);
        if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
            pg_fail(s, res, "expire run");
            PQclear(res);
            goto out;
        }
        pg_mark_kept(b, res, kept);
        PQclear(res);
    }
    pg_record rec;
    int n_record = pg_record_params(s, b, &rec);
    if (n_record < 0 ||
        (rec.forget[0] &&
         pg_run(s, pg_forget_deletes_sql, 1, rec.forget, "forgetting deletes", NULL) != 0) ||
        (n_record && pg_run(s, pg_record_deletes_sql, 4, rec.p, "recording deletes", NULL) != 0)) {
        pg_record_free(&rec);
        goto out;
    }
    pg_record_free(&rec);
    rc = 0;
out:
    pg_buf_free(&runs);
    pg_buf_free(&xruns);
    return rc;
}

/*
 * The slow way, after a batch statement failed on a row: every row in a
 * savepoint of its own, so that the rows PostgreSQL refuses are left out
 * (noted in iso) and the rest still commits. In a fresh transaction.
 */
static int pg_write_isolating(pg_store *s, const store_batch *b, bool *applied,
                              bool *kept, pg_isolated *iso, size_t *n_iso)
{
    PGresult *failed = NULL;
    *n_iso = 0;
    memset(applied, 0, b->n_rows * sizeof *applied);
    memset(kept, 0, b->n_deletes * sizeof *kept);
    if (pg_run(s, "BEGIN", 0, NULL, "begin", NULL) != 0 || pg_delete_runs(s, b, kept) != 0)
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

/* Tells the other instances, in the transaction in progress, which runs b touches. 0 or -1. */
static int pg_notify_runs(pg_store *s, const store_batch *b)
{
    char *notify = NULL;
    if (pg_listen_payloads(b, &notify, s->errmsg, sizeof s->errmsg) != 0)
        return -1;
    if (!notify)
        return 0;
    const char *p[1] = { notify };
    int rc = pg_run(s, PG_LISTEN_NOTIFY_SQL, 1, p, "notify", NULL);
    free(notify);
    return rc;
}

/* Whether b's arrays are there for the counts it claims. */
static bool pg_batch_valid(const store_batch *b)
{
    return b != NULL && (b->n_deletes == 0 || b->delete_runs != NULL) &&
           (b->n_rows == 0 || b->rows != NULL);
}

int pg_store_write(pg_store *s, store_batch *b)
{
    bool *applied = NULL, *kept = NULL;
    size_t *idx = NULL;
    pg_isolated *iso = NULL;
    size_t n_iso = 0;
    int ret = -1;

    if (!pg_batch_valid(b)) {
        snprintf(s->errmsg, sizeof s->errmsg, "invalid batch");
        return -1;
    }
    b->n_isolated = 0;
    b->n_superseded = 0;
    b->n_expire_kept = 0;
    pg_revive(s);
    applied = calloc(b->n_rows ? b->n_rows : 1, sizeof *applied);
    kept = calloc(b->n_deletes ? b->n_deletes : 1, sizeof *kept);
    idx = malloc((b->n_rows ? b->n_rows : 1) * sizeof *idx);
    if (applied == NULL || kept == NULL || idx == NULL) {
        snprintf(s->errmsg, sizeof s->errmsg, "out of memory");
        goto out;
    }
    bool row_level = false;
    if (pg_write_pipelined(s, b, idx, applied, kept, &row_level) != 0) {
        if (!row_level)
            goto rollback;
        /* A row PostgreSQL will never take: start over, a row at a time. */
        PQclear(PQexec(s->conn, "ROLLBACK"));
        iso = malloc(b->n_rows * sizeof *iso);
        if (iso == NULL) {
            snprintf(s->errmsg, sizeof s->errmsg, "out of memory");
            goto out;
        }
        if (pg_write_isolating(s, b, applied, kept, iso, &n_iso) != 0 ||
            pg_notify_runs(s, b) != 0 || pg_run(s, "COMMIT", 0, NULL, "commit", NULL) != 0)
            goto rollback;
    }
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
    for (size_t i = 0; i < b->n_deletes; i++) {
        if (!kept[i])
            continue;
        b->n_expire_kept++;
        if (b->on_expire_kept)
            b->on_expire_kept(b->isolated_ctx, b->delete_runs[i],
                              b->delete_seqs ? b->delete_seqs[i] : 0);
    }
    ret = 0;
    goto out;
rollback:
    if (PQstatus(s->conn) == CONNECTION_OK)
        PQclear(PQexec(s->conn, "ROLLBACK"));
out:
    free(applied);
    free(kept);
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
    pg_revive(s);
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
    pg_revive(s);
    return pg_run(s, "INSERT INTO nodestate_meta (key, value) VALUES ($1, $2::bigint)"
                     " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                  2, p, "meta", NULL);
}

/*
 * The sidecar is a local SQLite file whatever the database: its live
 * content is read (store_spill_read) and written as one batch, every row
 * judged by seq alone as SQLite's replay does (each was accepted here
 * against this instance's state), deletes first, the other instances told
 * of its runs like any batch's; only then is it removed.
 */
int pg_store_replay(pg_store *s, const char *spill_path, const char *notify_id,
                    store_replayed *out, char *err, size_t errlen)
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
        .delete_runs = (const char *const *)c.deletes, .delete_seqs = c.delete_seqs,
        .n_deletes = c.n_deletes,
        .rows = c.rows, .n_rows = c.n_rows, .forced = forced, .last_seq = c.last_seq,
        .notify_id = notify_id,
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
