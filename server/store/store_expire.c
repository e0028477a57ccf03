/*
 * store_expire: judging runs for retention as a backend feeds their rows,
 * a page at a time (see store_expire.h; the contract is store_expired_runs
 * in store.h).
 */
#include "store_expire.h"

#include <stdio.h>
#include <string.h>

int store_expiry_keeps_sql(const char *param, char *out, size_t outlen)
{
    size_t len = 0;
    int n = snprintf(out, outlen, "(status NOT IN (");
    if (n < 0 || (size_t)n >= outlen)
        return -1;
    len = (size_t)n;
    /* From model_status_terminal, so no status name is written here. */
    bool first = true;
    for (int st = 0; st < NS_STATUS_COUNT; st++) {
        if (!model_status_terminal((ns_status)st))
            continue;
        n = snprintf(out + len, outlen - len, "%s'%s'", first ? "" : ",",
                     model_status_name((ns_status)st));
        if (n < 0 || (size_t)n >= outlen - len)
            return -1;
        len += (size_t)n;
        first = false;
    }
    n = snprintf(out + len, outlen - len, ") OR updated_at IS NULL OR updated_at >= %s)", param);
    return n < 0 || (size_t)n >= outlen - len ? -1 : 0;
}

/* Whether a stored status name is a terminal one. */
static bool terminal_name(const char *name)
{
    ns_status st;
    return name != NULL && model_status_parse(name, &st) == 0 && model_status_terminal(st);
}

void store_expiry_begin(store_expiry_walk *w, store_expiry_cursor *c, int64_t cutoff_ms,
                        int (*recheck)(void *backend, const char *run_id, const char *cutoff),
                        void *backend,
                        int (*fn)(void *ctx, const char *run_id, int64_t max_seq), void *ctx)
{
    memset(w, 0, sizeof *w);
    w->c = c;
    /* updated_at is stored in this very form, so text order is time order. */
    model_ts_format(cutoff_ms, w->cutoff);
    w->recheck = recheck;
    w->backend = backend;
    w->fn = fn;
    w->ctx = ctx;
}

/*
 * The cursor's run is examined to its last row: hands it to fn if it has
 * expired. 0 done, 1 fn stopped (the cursor stays on the run, to finish it
 * again next page), -1 when the recheck failed.
 */
static int finish_run(store_expiry_walk *w)
{
    store_expiry_cursor *c = w->c;
    if (!c->expired_so_far)
        return 0;
    if (c->spans) {
        /* Commits since the earlier page may have changed it. */
        int rc = w->recheck(w->backend, c->run_id, w->cutoff);
        if (rc <= 0)
            return rc;
    }
    return w->fn(w->ctx, c->run_id, c->max_seq) == 0 ? 0 : 1;
}

/* Starts judging run_id at its first row. */
static void start_run(store_expiry_cursor *c, const char *run_id)
{
    snprintf(c->run_id, sizeof c->run_id, "%s", run_id);
    c->expired_so_far = true;
    c->spans = false;
    c->max_seq = 0;
}

int store_expiry_row(store_expiry_walk *w, const char *run_id, const char *node_id,
                     const char *updated_at, const char *status, int64_t seq)
{
    store_expiry_cursor *c = w->c;
    if (w->stop)
        return 1;
    if (run_id == NULL || node_id == NULL)
        return 0; /* NOT NULL columns: another program's row, kept */
    if (c->run_id[0] == '\0' || strcmp(run_id, c->run_id) != 0) {
        if (c->run_id[0] != '\0' && (w->stop = finish_run(w)) != 0)
            return 1;
        start_run(c, run_id);
    }
    w->examined++;
    /*
     * Ids are at most NS_ID_MAX bytes (the API's limit); a longer one
     * written by another program would cut the cursor short, and the next
     * page would examine some of its rows again: a page's work is still
     * bounded.
     */
    snprintf(c->node_id, sizeof c->node_id, "%s", node_id);
    if (seq > c->max_seq)
        c->max_seq = seq;
    /* A NULL updated_at cannot be judged: such a run is kept. */
    if (!terminal_name(status) || updated_at == NULL || strcmp(updated_at, w->cutoff) >= 0)
        c->expired_so_far = false;
    return 0;
}

int store_expiry_end(store_expiry_walk *w, bool at_end)
{
    store_expiry_cursor *c = w->c;
    if (w->stop < 0)
        return -1;
    if (w->stop == 0 && at_end) {
        /* The end of the table: its last run is whole, and the sweep starts over. */
        if (c->run_id[0] != '\0' && (w->stop = finish_run(w)) < 0)
            return -1;
        if (w->stop == 0)
            memset(c, 0, sizeof *c);
    }
    /* A run still open goes on (or is finished) on the next page, after other commits. */
    if (c->run_id[0] != '\0')
        c->spans = true;
    return (int)w->examined;
}
