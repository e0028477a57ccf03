#include "engine_batch.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"
#include "readthrough.h"
#include "rules.h"

/*
 * The rows this batch has made so far, by node_id: an item judged after an
 * earlier one of the same node sees that one's row, not the cached row.
 * Open addressing over at least twice the items, so it never fills.
 */
typedef struct overlay {
    ns_row **slots;
    size_t mask;
} overlay;

static int overlay_init(overlay *o, size_t n)
{
    size_t size = 16;
    while (size < 2 * n)
        size *= 2;
    o->slots = calloc(size, sizeof *o->slots);
    o->mask = size - 1;
    return o->slots ? 0 : -1;
}

static ns_row **overlay_slot(const overlay *o, const char *node_id)
{
    size_t i = (size_t)model_hash(MODEL_HASH_SEED, node_id) & o->mask;
    while (o->slots[i] && strcmp(o->slots[i]->node_id, node_id) != 0)
        i = (i + 1) & o->mask;
    return &o->slots[i];
}

/*
 * Makes sure every node an item touches is cached (or known absent: the
 * run is cached whole), reading through what is not; returns the run, pinned
 * (so it stays) and held (so another writer's eviction, while the lock is
 * dropped for a later read, takes none of the nodes read before, which the
 * batch is judged against). A refused row may still go meanwhile
 * (cache_node_forget): then every item is looked at again, so none is
 * judged as absent that is stored. NULL with *res set when reading fails.
 * Lock held, dropped while reading.
 */
static cache_run *load_nodes(engine *e, const char *run_id, const engine_batch_item *items,
                             size_t n, engine_result *res)
{
    lockcheck_assert_held(&e->lock);
    cache_run *run = NULL;
    uint64_t forgets = 0;
    for (size_t i = 0; i < n; i++) {
        if (run && (run->complete || cache_node_get(run, items[i].node_id)))
            continue;
        ns_row *cur;
        cache_run *got = readthrough_run_node(e, run_id, items[i].node_id, true, &cur, res);
        if (!got) {
            if (run) {
                cache_release(run);
                if (cache_unpin(e->cache, run))
                    engine_run_drop_if_idle(e, run);
            }
            return NULL;
        }
        if (!run) {
            run = got;
            cache_pin(e->cache, run);
            cache_hold(run);
            forgets = run->forgets;
        } else if (run->forgets != forgets) {
            /* A node read before may have gone while the lock was dropped: from the first again. */
            forgets = run->forgets;
            i = SIZE_MAX; /* the loop's i++ makes it 0 */
        }
        /* A pinned run is never removed (neither evicted nor dropped), so it stays this one. */
        assert(got == run);
    }
    return run;
}

/* Drops the references a judged-but-refused batch took. */
static void discard(ns_row **rows, size_t count, engine_batch_result *results, size_t n)
{
    for (size_t k = 0; k < count; k++)
        model_row_unref(rows[k]);
    engine_batch_results_free(results, n);
}

engine_result engine_batch_submit(engine *e, const char *run_id,
                                  const engine_batch_item *items, size_t n,
                                  engine_batch_result *results)
{
    lockcheck_assert_not_held(&e->lock);
    if (n == 0)
        return ENGINE_ACCEPTED;
    engine_result res = ENGINE_ERROR;
    overlay ov = { 0 };
    /*
     * The accepted rows, in order, one reference each; then each item's
     * cached row as found once under this hold of the lock (borrowed), so
     * that judging does not look every node up in the run's table again.
     */
    ns_row **rows = n <= SIZE_MAX / (2 * sizeof *rows) ? malloc(2 * n * sizeof *rows) : NULL;
    if (!rows || overlay_init(&ov, n) != 0) {
        free(rows);
        free(ov.slots);
        return ENGINE_ERROR;
    }
    ns_row **cached = rows + n;
    memset(results, 0, n * sizeof *results);
    size_t count = 0, bytes = 0;
    lockcheck_lock(&e->lock);
    cache_run *run = load_nodes(e, run_id, items, n, &res);
    if (!run)
        goto done;

    /*
     * Room for a seq per item above every node's current one: with a store
     * that several instances share, seqs come in reserved blocks.
     */
    int64_t above = run->deleted_seq; /* and above its last delete (engine.c run_seq_floor) */
    for (size_t i = 0; i < n; i++) {
        ns_row *cur = cached[i] = cache_node_get(run, items[i].node_id);
        if (cur && cur->seq > above)
            above = cur->seq;
    }
    if (engine_seq_room(e, above, n) != 0) {
        res = ENGINE_ERROR;
        goto unpin;
    }

    /* Judged against the cache and the batch's own rows, before anything changes. */
    int64_t now = model_now_ms();
    for (size_t i = 0; i < n; i++) {
        const char *node_id = items[i].node_id;
        ns_row **slot = overlay_slot(&ov, node_id);
        ns_row *cur = *slot ? *slot : cached[i];
        ns_row draft;
        rules_verdict v = rules_apply(cur, run_id, node_id, items[i].u, now, &draft);
        switch (v) {
        case RULES_STALE:
        case RULES_ILLEGAL:
            results[i].res = v == RULES_STALE ? ENGINE_STALE : ENGINE_ILLEGAL;
            if (cur) {
                model_row_ref(cur);
                results[i].current = cur;
            }
            continue;
        case RULES_DUPLICATE:
            results[i].res = ENGINE_DUPLICATE;
            results[i].seq = cur->seq;
            continue;
        case RULES_APPLY:
            break;
        }
        /* Seqs are handed out in this order below, under this same hold of the lock. */
        draft.seq = e->last_seq + (int64_t)count + 1;
        draft.updated_at = now;
        ns_row *row = model_row_copy(&draft);
        if (!row) {
            discard(rows, count, results, n);
            res = ENGINE_ERROR;
            goto unpin;
        }
        rows[count++] = row;
        bytes += queue_op_bytes(&(ns_op){ .row = row });
        *slot = row;
        results[i].res = ENGINE_ACCEPTED;
        results[i].seq = row->seq;
    }

    /* All or nothing: the free slots and bytes must take every accepted row. */
    size_t free_slots = queue_capacity(e->queue) - queue_len(e->queue);
    size_t max = e->cfg.queue_max_bytes;
    bool bytes_fit = max == 0 || e->queue_bytes == 0 ||
                     bytes <= max - (max < e->queue_bytes ? max : e->queue_bytes);
    if (count > free_slots || !bytes_fit) {
        atomic_store(&e->bytes_full, count <= free_slots);
        /* The request is refused whole: every item comes again, duplicates and 409s too. */
        atomic_fetch_add_explicit(&e->stats.rejected[NS_REJECT_QUEUE_FULL], n,
                                  memory_order_relaxed);
        discard(rows, count, results, n);
        res = ENGINE_QUEUE_FULL;
        goto unpin;
    }

    size_t k = 0;
    bool oom = false;
    for (size_t i = 0; i < n; i++) {
        engine_batch_result *r = &results[i];
        if (r->res == ENGINE_STALE || r->res == ENGINE_ILLEGAL) {
            engine_reject(e, r->res == ENGINE_STALE ? NS_REJECT_STALE : NS_REJECT_ILLEGAL);
        } else if (r->res == ENGINE_DUPLICATE) {
            atomic_fetch_add_explicit(&e->stats.updates_duplicate, 1, memory_order_relaxed);
        } else if (r->res == ENGINE_ACCEPTED && k < count) {
            ns_row *row = rows[k++];
            model_row_ref(row); /* the queue's; the cache takes over the batch's */
            if (cache_node_put(e->cache, run, row) != 0) {
                /* Out of memory midway: what went in stays, this one and the rest do not. */
                model_row_unref(row);
                model_row_unref(row);
                r->res = ENGINE_ERROR;
                for (; k < count; k++)
                    model_row_unref(rows[k]);
                oom = true;
                continue;
            }
            ns_op op = { .row = row, .run = run, .forced = items[i].u->force };
            engine_enqueue(e, &op);
            assert(op.seq == row->seq);
        } else if (r->res == ENGINE_ACCEPTED) {
            r->res = ENGINE_ERROR; /* after the out-of-memory above */
        }
    }
    /*
     * Judged against an earlier item's row that did not go in (a seq never
     * handed out): neither a duplicate of it nor refused by it.
     */
    for (size_t i = 0; oom && i < n; i++) {
        engine_batch_result *r = &results[i];
        bool against_lost = r->res == ENGINE_DUPLICATE ? r->seq > e->last_seq
                            : (r->res == ENGINE_STALE || r->res == ENGINE_ILLEGAL) &&
                                  r->current && r->current->seq > e->last_seq;
        if (!against_lost)
            continue;
        model_row_unref(r->current);
        r->current = NULL;
        r->res = ENGINE_ERROR;
    }
    res = ENGINE_ACCEPTED;
unpin:
    cache_release(run);
    if (cache_unpin(e->cache, run))
        engine_run_drop_if_idle(e, run);
    /*
     * New nodes, bigger rows, or nodes loaded to judge the items (those of
     * duplicates and refusals are on disk already) may pass a bound: this
     * run's go like any other's, now that it is released.
     */
    engine_evict(e, NULL);
done:
    engine_unlock(e);
    free(rows);
    free(ov.slots);
    return res;
}

void engine_batch_results_free(engine_batch_result *results, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        model_row_unref(results[i].current);
        results[i].current = NULL;
    }
}
