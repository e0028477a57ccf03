/*
 * engine_batch: many updates of one run accepted as one (POST
 * /runs/{run_id}/nodes). Each item is judged by the transition rules exactly
 * as if it were submitted alone at that moment, an earlier item of the same
 * request included (scheduled then running of one node both apply), and the
 * queue takes every accepted item or none: a batch that does not fit the
 * queue's free slots and bytes changes nothing, in memory or on disk.
 *
 * The nodes the items touch are read through first (only those nodes, for a
 * run that is not cached: readthrough_run_node, which drops the lock while
 * it reads the file); the run stays pinned from then on, so what was read
 * stays cached. The judging, the capacity check and the acceptance then run
 * under one hold of the engine's lock, so no other write interleaves with
 * the batch and its items get consecutive seqs.
 */
#ifndef NODESTATE_ENGINE_BATCH_H
#define NODESTATE_ENGINE_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "engine.h"

/* One item of a batch; node_id must already be a valid id. */
typedef struct engine_batch_item {
    const char *node_id;
    const ns_update *u;
} engine_batch_item;

/* What became of one item. */
typedef struct engine_batch_result {
    engine_result res;      /* ACCEPTED, DUPLICATE, STALE, ILLEGAL or ERROR */
    int64_t seq;            /* ACCEPTED: the new row's seq; DUPLICATE: the current row's */
    ns_row *current;        /* STALE, ILLEGAL: the node's row at that point (a reference); else NULL */
} engine_batch_result;

/*
 * Applies items[0..n) to run_id in order, with results[i] telling what became
 * of items[i]. Returns ENGINE_ACCEPTED when the batch went through (some items
 * may still be refused: see results), ENGINE_QUEUE_FULL when the queue cannot
 * take every item that would be accepted (nothing changed; results untouched)
 * or ENGINE_ERROR when reading the file or memory failed (nothing changed).
 * After ENGINE_ACCEPTED the caller drops the references with
 * engine_batch_results_free.
 */
engine_result engine_batch_submit(engine *e, const char *run_id,
                                  const engine_batch_item *items, size_t n,
                                  engine_batch_result *results);
/* Drops the row references results[0..n) hold. */
void engine_batch_results_free(engine_batch_result *results, size_t n);

#endif
