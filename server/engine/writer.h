/*
 * writer: turns a run of queued ops (oldest first) into one store batch.
 * Coalescing keeps only the newest row per node (scheduled, running and
 * completed queued together become one row write), drops rows that a later
 * delete of their run makes moot, and sorts the rows by (run_id, node_id),
 * since SQLite takes keys in order several times faster than random ones.
 * Pure: the engine's writer thread calls it outside any lock.
 */
#ifndef NODESTATE_WRITER_H
#define NODESTATE_WRITER_H

#include <stddef.h>

#include "queue.h"
#include "store.h"

typedef struct writer_plan {
    store_batch batch;       /* points into the arrays below and into the ops */
    const char **deletes;
    int64_t *delete_seqs;    /* per delete of deletes: the newest delete's seq */
    ns_row **rows;
    bool *forced;            /* per row of rows: force: true (store_batch.forced) */
    bool *expiring;          /* per delete of deletes: retention's (store_batch.expiring) */
    size_t upserts;          /* upsert ops seen */
    size_t coalesced;        /* upsert ops that write no row of their own */
    size_t run_deletes;      /* delete ops seen: two of one run count two, though one deletes */
    size_t run_expires;      /* delete ops retention queued (not in run_deletes) */
} writer_plan;

/* Plans ops[0..n) into *plan. Returns 0, or -1 when out of memory. */
int writer_plan_build(const ns_op *ops, size_t n, writer_plan *plan);
void writer_plan_free(writer_plan *plan);

#endif
