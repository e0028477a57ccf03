/*
 * cache_internal: the cache's private parts, for cache*.c only (nothing
 * else includes it; the rest of the engine uses cache.h). The cache is
 * split by concern: cache.c holds the run and node tables and stores rows,
 * cache_tree.c the per-status trees and the listings over them,
 * cache_evict.c the recency lists and eviction. Here are the structs they
 * all reach into and the few functions one of them calls in another. Like
 * the rest of the cache, not thread-safe: the engine's lock guards all of
 * it.
 */
#ifndef NODESTATE_CACHE_INTERNAL_H
#define NODESTATE_CACHE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "model.h"

/* Removals remembered for cache_removed_since. */
#define REMOVED_RING 64
/*
 * One cached node: in its run's table, in the tree of its row's status, and
 * (when clean) in its run's recency list.
 */
struct cache_node {
    ns_row *row;
    cache_node *left, *right;
    cache_node *older, *newer; /* the run's clean list; both NULL while queued */
    int height;             /* of the subtree rooted here; a leaf is 1 */
    bool queued;            /* row is a write not yet on disk: not evictable */
};

struct cache {
    cache_run **slots;      /* runs keyed by run_id */
    size_t n_slots;
    size_t runs;
    size_t nodes;
    size_t bytes;           /* sum of the runs' bytes */
    uint64_t removals;
    cache_run *lru_first;   /* least recently used run with clean nodes */
    cache_run *lru_last;    /* most recently used run with clean nodes */
    cache_run *doomed;      /* removed runs freed in pieces (cache_reap), linked by lru_next */
    size_t reaping;         /* nodes they still hold */
    /* hashes of the last REMOVED_RING removed run ids, by removal number */
    uint64_t removed_hash[REMOVED_RING];
    /* NULL (every seq), or whether this process handed seq out (cache_set_own_seqs) */
    bool (*own_seq)(void *ctx, int64_t seq);
    void *own_ctx;
};

/* ---- cache.c: the node table, storing rows ---- */

/* The slot of node_id in run's node table: its node's, or the empty one that ends its probe. */
size_t cache_node_slot(const cache_run *run, const char *node_id);
/* Empties slot i of run's node table. */
void cache_node_table_remove(cache_run *run, size_t i);
/* Counts row in (add) or out of run's bytes and status counts, and c's bytes (c NULL: detached run). */
void cache_account(cache *c, cache_run *run, const ns_row *row, bool add);

/* ---- cache_tree.c: the per-status trees ---- */

/* Links n into the tree at root (n's node_id is not in it); returns the new root. */
cache_node *cache_tree_insert(cache_node *root, cache_node *n);
/* Unlinks n, which is in the tree; returns the new root. */
cache_node *cache_tree_remove(cache_node *root, const cache_node *n);

/* ---- cache_evict.c: recency, the evicted-id filter ---- */

/* Takes run off the cache's recency list. */
void cache_lru_unlink(cache *c, cache_run *run);
/* Puts run at the recent end of the cache's recency list. */
void cache_lru_append(cache *c, cache_run *run);
/* Takes n off its run's clean list (c NULL: a detached run). */
void cache_clean_unlink(cache *c, cache_run *run, cache_node *n);
/* Puts n at the recent end of its run's clean list (c NULL: a detached run). */
void cache_clean_append(cache *c, cache_run *run, cache_node *n);
/* Forgets a run's clean list, its nodes going. */
void cache_clean_forget(cache *c, cache_run *run);
/* Frees run's record of evicted nodes. */
void cache_gone_free(cache_run *run);
/* Marks run known (it is complete now) with an empty record of evicted nodes. */
void cache_known_reset(cache_run *run);

#endif
