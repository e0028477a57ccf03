/*
 * cache_evict.c: what decides which node may go and which goes first: the
 * recency lists (the runs with clean nodes, and each run's clean nodes),
 * pins and holds, the record of nodes evicted from a known run
 * (idfilter), settling a queued row, and cache_evict_node. Apart from the
 * tables in cache.c because this is the policy kept within the bounds,
 * while the tables only store rows.
 */
#include "cache.h"
#include "cache_internal.h"

#include <stdlib.h>

void cache_lru_unlink(cache *c, cache_run *run)
{
    if (run->lru_prev)
        run->lru_prev->lru_next = run->lru_next;
    else
        c->lru_first = run->lru_next;
    if (run->lru_next)
        run->lru_next->lru_prev = run->lru_prev;
    else
        c->lru_last = run->lru_prev;
    run->lru_prev = run->lru_next = NULL;
}

void cache_lru_append(cache *c, cache_run *run)
{
    run->lru_prev = c->lru_last;
    run->lru_next = NULL;
    if (c->lru_last)
        c->lru_last->lru_next = run;
    else
        c->lru_first = run;
    c->lru_last = run;
}

void cache_touch(cache *c, cache_run *run)
{
    if (run->clean == 0 || c->lru_last == run)
        return;
    cache_lru_unlink(c, run);
    cache_lru_append(c, run);
}

void cache_pin(cache *c, cache_run *run)
{
    (void)c;
    run->pending++;
}

bool cache_unpin(cache *c, cache_run *run)
{
    (void)c;
    return --run->pending == 0;
}

void cache_hold(cache_run *run)
{
    run->holds++;
}

void cache_release(cache_run *run)
{
    run->holds--;
}

/* Takes n off its run's clean list; a run left without clean nodes leaves the cache's list. */
void cache_clean_unlink(cache *c, cache_run *run, cache_node *n)
{
    if (n->older)
        n->older->newer = n->newer;
    else
        run->clean_first = n->newer;
    if (n->newer)
        n->newer->older = n->older;
    else
        run->clean_last = n->older;
    n->older = n->newer = NULL;
    if (--run->clean == 0 && c)
        cache_lru_unlink(c, run);
}

/* Puts n at the recent end of its run's clean list; a run's first clean node puts it on the cache's list. */
void cache_clean_append(cache *c, cache_run *run, cache_node *n)
{
    n->older = run->clean_last;
    n->newer = NULL;
    if (run->clean_last)
        run->clean_last->newer = n;
    else
        run->clean_first = n;
    run->clean_last = n;
    if (run->clean++ == 0 && c)
        cache_lru_append(c, run);
}

/* Forgets a run's clean list (its nodes are going); it leaves the cache's list. */
void cache_clean_forget(cache *c, cache_run *run)
{
    if (run->clean > 0 && c)
        cache_lru_unlink(c, run);
    run->clean_first = run->clean_last = NULL;
    run->clean = 0;
}

cache_run *cache_lru_first(const cache *c)
{
    return c->lru_first;
}

void cache_gone_free(cache_run *run)
{
    idfilter_free(run->gone);
    run->gone = NULL;
}

/* Sets run->known (it is complete now) with an empty filter. */
void cache_known_reset(cache_run *run)
{
    cache_gone_free(run);
    run->known = true;
}

/* Records an evicted node of a known run; past the filter's limit, or out of memory, the run is no longer known. */
static void gone_add(cache_run *run, const char *node_id)
{
    if (idfilter_add(&run->gone, node_id) != 0) {
        cache_gone_free(run);
        run->known = false;
    }
}

bool cache_node_absent(const cache_run *run, const char *node_id)
{
    if (cache_node_get(run, node_id))
        return false;
    if (run->complete)
        return true;
    return run->known && !idfilter_may_have(run->gone, node_id);
}

ns_row *cache_node_use(cache *c, cache_run *run, const char *node_id)
{
    cache_node *n = run->slots[cache_node_slot(run, node_id)];
    if (!n)
        return NULL;
    if (!n->queued && run->clean_last != n) {
        cache_clean_unlink(c, run, n);
        cache_clean_append(c, run, n);
    }
    return n->row;
}

bool cache_node_clean(const cache_run *run, const char *node_id)
{
    const cache_node *n = run->slots[cache_node_slot(run, node_id)];
    return n && !n->queued;
}

void cache_node_settle(cache *c, cache_run *run, const ns_row *row)
{
    cache_node *n = run->slots[cache_node_slot(run, row->node_id)];
    if (n && n->row == row && n->queued) {
        n->queued = false;
        cache_clean_append(c, run, n);
    }
}

/* ---- evicting ---- */

/* Takes n out of run (its table, its status tree, the counts) and frees it; run is not complete after. */
static void node_drop(cache *c, cache_run *run, cache_node *n)
{
    cache_node_table_remove(run, cache_node_slot(run, n->row->node_id));
    run->by_status[n->row->status] = cache_tree_remove(run->by_status[n->row->status], n);
    cache_account(c, run, n->row, false);
    run->nodes--;
    c->nodes--;
    run->complete = false;
    if (run->known)
        gone_add(run, n->row->node_id);
    model_row_unref(n->row);
    free(n);
}

bool cache_node_forget(cache *c, cache_run *run, const ns_row *row)
{
    cache_node *n = run->slots[cache_node_slot(run, row->node_id)];
    if (!n || n->row != row || !n->queued)
        return false;
    /* As an eviction: a read of the run in flight may predate the row it had. */
    if (row->seq > run->evicted_seq)
        run->evicted_seq = row->seq;
    run->forgets++;
    node_drop(c, run, n);
    return true;
}

void cache_set_own_seqs(cache *c, bool (*own)(void *ctx, int64_t seq), void *ctx)
{
    c->own_seq = own;
    c->own_ctx = ctx;
}

cache_evicted cache_evict_node(cache *c, const cache_run *keep)
{
    cache_run *run = c->lru_first;
    /* Held runs are few (batches being loaded), so stepping over them stays cheap. */
    while (run && (run == keep || run->holds))
        run = run->lru_next;
    if (!run)
        return CACHE_EVICTED_NONE;
    cache_node *n = run->clean_first;
    cache_clean_unlink(c, run, n);
    if (n->row->seq > run->evicted_seq && (!c->own_seq || c->own_seq(c->own_ctx, n->row->seq)))
        run->evicted_seq = n->row->seq;
    node_drop(c, run, n);
    if (run->nodes == 0 && run->pending == 0) {
        cache_run_remove(c, run);
        return CACHE_EVICTED_RUN;
    }
    return CACHE_EVICTED_NODE;
}
