#include "retention.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "logfmt.h"

/* The candidates of one page, collected without the lock. */
typedef struct candidates {
    char *ids[RETENTION_PAGE_RUNS];
    int64_t max_seqs[RETENTION_PAGE_RUNS];   /* each run's highest seq seen */
    size_t n;
} candidates;

static int collect(void *ctx, const char *run_id, int64_t max_seq)
{
    candidates *c = ctx;
    if (c->n == RETENTION_PAGE_RUNS)
        return -1;
    c->max_seqs[c->n] = max_seq;
    c->ids[c->n] = strdup(run_id);
    if (!c->ids[c->n])
        return -1;
    c->n++;
    return 0;
}

int64_t retention_due_ns(engine *e)
{
    lockcheck_assert_held(&e->lock);
    if (e->cfg.retention <= 0 || state_of(e) >= ENGINE_DRAINING)
        return INT64_MAX;
    return e->retention_next_ns;
}

bool retention_run(engine *e)
{
    lockcheck_assert_held(&e->lock);
    int64_t start = model_mono_ns();
    if (start < retention_due_ns(e))
        return false;
    /* The writer is behind: its queue is for the clients' writes now; the sweep waits. */
    if (queue_len(e->queue) * 2 >= queue_capacity(e->queue) || engine_queue_bytes_high(e)) {
        e->retention_next_ns = start + RETENTION_BUSY_NS;
        return true;
    }
    int64_t now_ms = e->cfg.clock_ms ? e->cfg.clock_ms(e->cfg.clock_ctx) : model_now_ms();
    int64_t cutoff = now_ms - (int64_t)(e->cfg.retention * 1000.0);
    lockcheck_unlock(&e->lock);

    /* The write connection is the writer's own: no one else uses it meanwhile. */
    candidates found = { .n = 0 };
    int examined = store_expired_runs(e->store, cutoff, RETENTION_PAGE_ROWS,
                                      &e->retention_cursor, collect, &found);
    if (examined < 0) {
        char why[512];
        engine_log(e, NS_LOG_ERROR, "retention-failed", "error=%s",
                   logfmt_quote(why, sizeof why, store_errmsg(e->store)));
        memset(&e->retention_cursor, 0, sizeof e->retention_cursor);
    }
    cache_run *gone[RETENTION_PAGE_RUNS];
    size_t queued = 0, kept = 0, n_gone = 0;
    bool full = false;

    lockcheck_lock(&e->lock);
    for (size_t i = 0; i < found.n; i++) {
        cache_run *rows = NULL;
        int rc = engine_expire_run(e, found.ids[i], cutoff, found.max_seqs[i], &rows);
        if (rc < 0) {
            /*
             * No room: the sweep goes on from this run (its first row) a
             * page gap later, once the writer has made room (or, with the
             * queue still half full, a second later), not after a whole
             * interval.
             */
            kept += found.n - i;
            /* Before its first row, judged afresh (as store_expiry_row starts a run). */
            memset(&e->retention_cursor, 0, sizeof e->retention_cursor);
            snprintf(e->retention_cursor.run_id, sizeof e->retention_cursor.run_id, "%s",
                     found.ids[i]);
            e->retention_cursor.expired_so_far = true;
            full = true;
            break;
        }
        if (rc == 1)
            queued++;
        else
            kept++;
        if (rows)
            gone[n_gone++] = rows;
    }
    if (queued) {
        /* Written at once rather than after batch_interval: nothing waits for them, but the space does. */
        if (e->flush_until < e->last_seq)
            e->flush_until = e->last_seq;
    }
    /* A page that stopped short of the end has more after it; the end zeroes the cursor. */
    bool more = examined >= 0 && e->retention_cursor.run_id[0] != '\0';
    int64_t gap = full || more ? RETENTION_PAGE_GAP_NS
                               : (int64_t)(e->cfg.retention_interval * 1e9);
    e->retention_next_ns = model_mono_ns() + (gap > RETENTION_PAGE_GAP_NS ? gap : RETENTION_PAGE_GAP_NS);
    engine_unlock(e);

    /* Freed without the lock: a big run's rows take a while. */
    for (size_t i = 0; i < n_gone; i++)
        cache_run_free(gone[i]);
    for (size_t i = 0; i < found.n; i++)
        free(found.ids[i]);
    if (queued || kept)
        engine_log(e, NS_LOG_DEBUG, "retention-page", "examined=%d queued=%zu kept=%zu",
                   examined, queued, kept);
    lockcheck_lock(&e->lock);
    return true;
}
