/*
 * cache: the latest accepted row of every node the engine holds in memory,
 * as run_id -> run -> node_id -> row. The unit of caching is a whole run: a
 * run is either absent (SQLite holds its truth) or present with all its
 * nodes, so listings and summaries never need to merge cache and disk.
 *
 * Not thread-safe: the engine's lock guards the cache and every run in it.
 */
#ifndef NODESTATE_CACHE_H
#define NODESTATE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef struct cache cache;

typedef struct cache_run {
    char *run_id;
    size_t pending;            /* queued ops not yet committed (cache_pin); a pinned run stays */
    bool stale;                /* cached rows may differ from disk: drop once unpinned */
    size_t counts[NS_STATUS_COUNT]; /* nodes per status */
    size_t nodes;              /* nodes held */
    int64_t last_seq;          /* highest seq among them (0 when empty) */
    int64_t updated_at;        /* latest updated_at among them, ms (0 when empty) */
    /* the node table (open addressing, keyed by row->node_id) */
    ns_row **slots;
    size_t n_slots;
    /*
     * Slot indexes in node_id order, for listings; rebuilt on the next
     * listing after the set of nodes changed (a row replaced in its slot
     * keeps its place, since its node_id is the same).
     */
    size_t *order;
    size_t n_order;
    bool order_stale;
    /* recency list of unpinned runs: lru_prev is less recently used */
    struct cache_run *lru_prev;
    struct cache_run *lru_next;
} cache_run;

cache *cache_new(void);
/* Frees every run and drops every row reference. */
void cache_free(cache *c);
/* The run, or NULL when it is not cached. */
cache_run *cache_run_find(cache *c, const char *run_id);
/* Adds an empty run (not yet cached); NULL when out of memory. */
cache_run *cache_run_add(cache *c, const char *run_id);
/* Removes a run and drops its rows. */
void cache_run_remove(cache *c, cache_run *run);
/* Drops every node of a run, keeping the (now empty) run. */
void cache_run_clear(cache *c, cache_run *run);
/* Incremented by every cache_run_remove. */
uint64_t cache_removals(const cache *c);
/*
 * Whether run_id may have been removed since cache_removals() returned
 * `since` (true when unsure: too many removals to tell). A reader that
 * loaded a run from disk without the lock uses it to know its rows may
 * predate a removal and so be stale.
 */
bool cache_removed_since(const cache *c, const char *run_id, uint64_t since);
size_t cache_nodes(const cache *c);
size_t cache_runs(const cache *c);

/* Marks a run as the most recently used (cache_run_add does too). */
void cache_touch(cache *c, cache_run *run);
/*
 * The least recently used unpinned run, or NULL; then ->lru_next towards
 * the most recent. Pinned runs are not on this list, so eviction never
 * steps over them.
 */
cache_run *cache_lru_first(const cache *c);
/* One more queued op for run: it cannot be evicted until unpinned. */
void cache_pin(cache *c, cache_run *run);
/* One queued op of run committed; returns true when that was the last one. */
bool cache_unpin(cache *c, cache_run *run);

/* The node's row (no reference taken), or NULL. */
ns_row *cache_node_get(const cache_run *run, const char *node_id);
/* Stores row (taking over the caller's reference), replacing and unreffing any previous one. -1 when out of memory. */
int cache_node_put(cache *c, cache_run *run, ns_row *row);

/*
 * Collects the run's rows whose status bit is in status_mask and whose
 * node_id sorts after `after` (NULL: all), in node_id order, at most limit,
 * taking a reference on each into out (room for limit). *more tells whether
 * further matching rows follow. Returns the count, or -1 when out of memory.
 * Costs a binary search plus the rows it steps over, once the run's order
 * is built (O(n log n) after nodes were added).
 */
long cache_run_collect(cache_run *run, unsigned status_mask,
                       const char *after, size_t limit, ns_row **out, bool *more);

#endif
