/*
 * cache: the latest accepted row of every node the engine holds in memory,
 * as run_id -> run -> node_id -> row.
 *
 * A run is cached whole (complete: the cache holds every node of it) or in
 * part (some of its nodes; the others may be on disk). A cached row is never
 * older than the stored one, so a run read whole from disk is merged into a
 * partial one with the cached rows winning (cache_run_adopt).
 *
 * Each run keeps its nodes twice over: a hash table for lookups, and one
 * ordered tree (AVL, keyed by node_id) per status for listings, maintained
 * as rows come and go, so adding a node costs O(log n) and a listing page
 * O(log n) plus the rows it returns, whatever the run's size and filter.
 *
 * The cache counts its nodes and the bytes they take (cache_row_bytes), for
 * the engine's bounds, and evicts at node granularity: a node whose row is
 * on disk (clean: read from disk, or its queued write committed,
 * cache_node_settle) may go; a node whose row is still queued (put by a
 * write) may not, since the cache is its only copy. Each run keeps its clean
 * nodes in a recency list, and the cache keeps the runs that have clean
 * nodes in another; cache_evict_node drops the least recently used clean
 * node of the least recently used such run, in O(log n), so a bound is kept
 * one node at a time and a run is never dropped whole to make room (nor
 * read back whole for a write). A run that is removed is freed in pieces
 * (cache_reap) when it is big, so no single call is O(n).
 *
 * Not thread-safe: the engine's lock guards the cache and every run in it.
 * A detached run (cache_run_new) belongs to whoever made it, until adopted.
 */
#ifndef NODESTATE_CACHE_H
#define NODESTATE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "idfilter.h"
#include "model.h"

typedef struct cache cache;
typedef struct cache_node cache_node;


typedef struct cache_run {
    char *run_id;
    size_t pending;            /* queued ops not yet committed (cache_pin); a pinned run stays */
    size_t holds;              /* callers judging against its nodes across a dropped lock (cache_hold) */
    uint64_t forgets;          /* refused rows dropped (cache_node_forget): a holder reads again */
    bool stale;                /* cached rows may differ from disk: drop once unpinned */
    bool complete;             /* every node of the run is held (else only some) */
    /*
     * Every stored node of the run is held or in `gone`, the nodes evicted
     * since it was complete: a node in neither is not on disk, so a new
     * node needs no read (cache_node_absent).
     */
    bool known;
    idfilter *gone;            /* a false "maybe" only costs a read */
    size_t counts[NS_STATUS_COUNT]; /* nodes held per status */
    size_t nodes;              /* nodes held */
    size_t bytes;              /* what they take (cache_row_bytes each) */
    int64_t last_seq;          /* highest seq among them (0 when empty) */
    int64_t updated_at;        /* latest updated_at among them, ms (0 when empty) */
    /* the node table (open addressing, keyed by node_id; its block also holds the slots' hash tags, see cache.c) */
    cache_node **slots;
    size_t n_slots;
    cache_node *by_status[NS_STATUS_COUNT]; /* tree roots, node_id order */
    /* the clean (evictable) nodes, least recently used first */
    cache_node *clean_first;
    cache_node *clean_last;
    size_t clean;              /* how many */
    int64_t evicted_seq;       /* highest seq of a row evicted from it (cache_evict_node) */
    int64_t deleted_seq;       /* its newest delete this process queued, 0: none (engine_deleted_seq) */
    size_t reap_at;            /* removed, being freed in pieces: the next slot to free */
    /* recency list of the runs with clean nodes: lru_prev is less recently used */
    struct cache_run *lru_prev;
    struct cache_run *lru_next;
} cache_run;

cache *cache_new(void);
/* Frees every run and drops every row reference. */
void cache_free(cache *c);
/* The run, or NULL when it is not cached. */
cache_run *cache_run_find(cache *c, const char *run_id);
/* Adds an empty, partial run (not yet cached); NULL when out of memory. */
cache_run *cache_run_add(cache *c, const char *run_id);
/*
 * Removes a run and drops its rows: at once for a small run, else in pieces
 * by cache_reap (its nodes no longer count in cache_nodes either way).
 */
void cache_run_remove(cache *c, cache_run *run);
/*
 * Frees up to about `budget` nodes of removed runs still waiting to be freed;
 * returns how many were freed. Called by whoever keeps the bounds, so a big
 * removed run is freed a piece at a time.
 */
size_t cache_reap(cache *c, size_t budget);
/* Nodes of removed runs not yet freed (cache_reap). */
size_t cache_reaping(const cache *c);
/* Drops every node of a run, keeping the (now empty) run, which is complete: it has none. */
void cache_run_clear(cache *c, cache_run *run);
/*
 * cache_run_clear that hands the rows over instead of dropping them: returns
 * a detached run holding them, for the caller to free (cache_run_free)
 * without the engine's lock, since freeing a big run takes a while. NULL
 * when out of memory; run is cleared in place then.
 */
cache_run *cache_run_take(cache *c, cache_run *run);
/* Incremented by every cache_run_remove. */
uint64_t cache_removals(const cache *c);
/*
 * Whether run_id may have been removed since cache_removals() returned
 * `since` (true when unsure: too many removals to tell). A reader that
 * read a run from disk without the lock uses it to know its rows may
 * predate a removal and so be stale.
 */
bool cache_removed_since(const cache *c, const char *run_id, uint64_t since);
/*
 * Counts run_id as removed for cache_removed_since, whether it is cached or
 * not, so a reader reading it from disk without the lock right now reads it
 * again: the stored rows changed under it (another instance committed to
 * the run). run_id NULL: every run.
 */
void cache_note_removed(cache *c, const char *run_id);
/* Marks every cached run stale (cache_run.stale). */
void cache_mark_all_stale(cache *c);
size_t cache_nodes(const cache *c);
size_t cache_runs(const cache *c);
/* Bytes the cached nodes take, the sum of cache_row_bytes. */
size_t cache_bytes(const cache *c);
/*
 * What one cached row costs: the row and its strings and JSON texts (one
 * allocation) plus the cache's own entry for it.
 */
size_t cache_row_bytes(const ns_row *row);

/* Marks a run as the most recently used (a run without clean nodes has no place yet). */
void cache_touch(cache *c, cache_run *run);
/*
 * The least recently used run with clean nodes, or NULL; then ->lru_next
 * towards the most recent. Runs whose nodes are all queued are not on this
 * list, so eviction never steps over them.
 */
cache_run *cache_lru_first(const cache *c);
/* One more queued op for run: the run stays cached until unpinned. */
void cache_pin(cache *c, cache_run *run);
/* One queued op of run committed; returns true when that was the last one. */
bool cache_unpin(cache *c, cache_run *run);

/*
 * A caller reads nodes of run one by one, dropping the lock between reads,
 * and judges against all of them afterwards (a batch): cache_evict_node
 * spares a held run like its keep, so a node read first is still there.
 * Pin it too, or it may be removed. cache_release undoes one hold.
 */
void cache_hold(cache_run *run);
void cache_release(cache_run *run);

/* The node's row (no reference taken), or NULL. */
ns_row *cache_node_get(const cache_run *run, const char *node_id);
/* cache_node_get that also marks a clean node as its run's most recently used. */
ns_row *cache_node_use(cache *c, cache_run *run, const char *node_id);
/*
 * Stores a written row (taking over the caller's reference), replacing and
 * unreffing any previous one: the node is queued, so not evictable, until
 * cache_node_settle. c is NULL for a detached run. -1 when out of memory
 * (the caller keeps its reference then).
 */
int cache_node_put(cache *c, cache_run *run, ns_row *row);
/* cache_node_put of a row read from disk: the node is clean, the most recently used. */
int cache_node_load(cache *c, cache_run *run, ns_row *row);
/*
 * The queued write of row is on disk now: if it is still the node's row,
 * the node becomes clean, its run's most recently used.
 */
void cache_node_settle(cache *c, cache_run *run, const ns_row *row);
/*
 * The queued write of row was refused for good (the database will not take
 * it, or holds a newer state): if it is still the node's row, the node goes,
 * so that the next access reads what is stored, the run is no longer
 * complete, and run->forgets counts it (a caller holding the run reads
 * again what it read before). False when a newer row of the node is queued.
 */
bool cache_node_forget(cache *c, cache_run *run, const ns_row *row);
/*
 * Whether the node is known not to exist, neither held nor stored: the run
 * is complete, or known and the node was not evicted from it (the filter
 * may say "maybe" for a node never evicted, under once in fifty: then
 * the caller reads it). Costs O(log) of the nodes evicted.
 */
bool cache_node_absent(const cache_run *run, const char *node_id);
/* Whether the node is clean (evictable). For tests. */
bool cache_node_clean(const cache_run *run, const char *node_id);

/* What cache_evict_node did. */
typedef enum cache_evicted {
    CACHE_EVICTED_NONE,  /* no clean node outside keep */
    CACHE_EVICTED_NODE,  /* one node went */
    CACHE_EVICTED_RUN    /* one node went, and with it its run (empty and unpinned) */
} cache_evicted;
/*
 * Drops the least recently used clean node of the least recently used run
 * with clean nodes, sparing the run keep (may be NULL) and held runs
 * (cache_hold), and whatever they hold. The run is then no longer
 * complete, and its evicted_seq rises to the row's seq if this process
 * handed it out (cache_set_own_seqs); one left empty and unpinned is
 * removed. O(log n).
 */
cache_evicted cache_evict_node(cache *c, const cache_run *keep);
/*
 * With a store other processes write: own(ctx, seq) tells whether this
 * process handed seq out. Another process's row is on disk before any read
 * that could have seen it and a change of it drops the run (the listener),
 * while evicted_seq is compared with this process's durable seq, which such
 * a row may stay above for good, failing every read of its run. Called with
 * the engine's lock held.
 */
void cache_set_own_seqs(cache *c, bool (*own)(void *ctx, int64_t seq), void *ctx);

/*
 * A run outside any cache, to fill (cache_node_put with c NULL) without the
 * engine's lock, e.g. while reading a run from disk. NULL when out of memory.
 */
cache_run *cache_run_new(const char *run_id);
/* Frees a detached run and drops its rows. NULL is a no-op. */
void cache_run_free(cache_run *run);
/*
 * Puts run's rows into loaded (a detached run holding every stored node of
 * it), a reference each, replacing loaded's rows of the same nodes: run's
 * are newer, and queued ones stay queued. loaded is then the whole run as it stands, outside the cache.
 * Costs O(k log n) for the k nodes run holds. 0, or -1 when out of memory
 * (loaded holds some of them then).
 */
int cache_run_merge_into(const cache_run *run, cache_run *loaded);
/*
 * Makes run complete with the nodes of loaded (a detached run holding every
 * stored node of it): run's own rows are newer and win, the others come
 * from loaded. Costs O(k log n) for the k nodes run held, not O(n): loaded's
 * tables are taken over whole. loaded is consumed (freed) either way.
 * Returns 0, or -1 when out of memory (run is unchanged then).
 */
int cache_run_adopt(cache *c, cache_run *run, cache_run *loaded);

/*
 * Collects the run's rows whose status bit is in status_mask and whose
 * node_id sorts after `after` (NULL: all), in node_id order, at most limit,
 * taking a reference on each into out (room for limit). *more tells whether
 * further matching rows follow. Returns the count. Costs O(log n) per
 * status in the mask plus the rows returned.
 */
long cache_run_collect(const cache_run *run, unsigned status_mask,
                       const char *after, size_t limit, ns_row **out, bool *more);

/*
 * Checks a run's structure: every tree ordered and balanced with the right
 * heights, each node in its status's tree, the table and the trees holding
 * the same nodes, counts, nodes and bytes matching. 0, or -1 with the first
 * fault described in why. For tests.
 */
int cache_run_check(const cache_run *run, char *why, size_t why_len);

#endif
