/*
 * cache.c: the cache's tables and what fills and empties them: the run
 * table (runs by run_id, removing and reaping them, the ring of removals
 * readers check), each run's node table, storing rows (which keeps the
 * per-status trees and the clean lists in step), and taking in a run read
 * from disk. The trees and the listings over them are in cache_tree.c,
 * recency and eviction in cache_evict.c; cache_internal.h holds what the
 * three share.
 */
#include "cache.h"
#include "cache_internal.h"

#include <stdlib.h>
#include <string.h>

/*
 * Both tables are open addressing with linear probing, power-of-two sizes,
 * kept at most half full so probes stay short.
 *
 * A run's node table is one allocation: the n_slots node pointers, then one
 * 32-bit tag (the low half of the node_id's hash, of which the slot index
 * is the lowest bits) per slot, read only where the slot is set. A probe
 * compares the tag before it follows the pointer, so looking up a node new
 * to a big run (every item of a batch of new nodes, several times) no
 * longer misses the CPU cache on every node and row it passes, and growing
 * or shifting the table finds each node's home slot without its string. Keeping both in one block leaves
 * every place that swaps, clears or frees a table as it was.
 */

/*
 * A removed run of more nodes than this is freed by cache_reap, a piece at
 * a time, instead of at once.
 */
#define REAP_INLINE_NODES 1024

static uint64_t hash_str(const char *s)
{
    uint64_t h = model_hash(MODEL_HASH_SEED, s);
    return h ^ (h >> 29); /* fold the high bits into the low ones the mask keeps */
}

/* A node table of n slots, all empty, with room for its tags; NULL if out of memory. */
static cache_node **node_table_new(size_t n)
{
    return calloc(n, sizeof(cache_node *) + sizeof(uint32_t));
}

/* The tags of run's node table, after its slots. */
static uint32_t *node_tags(const cache_run *run)
{
    return (uint32_t *)(void *)(run->slots + run->n_slots);
}

static uint32_t tag_of(uint64_t h)
{
    return (uint32_t)h;
}

/* The home slot of node n (tagged tag) in a table of mask + 1 slots, from its tag while the index fits in one. */
static size_t node_home(const cache_node *n, uint32_t tag, size_t mask)
{
    if (mask > UINT32_MAX)
        return hash_str(n->row->node_id) & mask;
    return tag & mask;
}

cache *cache_new(void)
{
    cache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->n_slots = 64;
    c->slots = calloc(c->n_slots, sizeof *c->slots);
    if (!c->slots) {
        free(c);
        return NULL;
    }
    return c;
}

static void run_free(cache_run *run)
{
    cache_gone_free(run);
    for (size_t i = 0; i < run->n_slots; i++) {
        if (run->slots[i]) {
            model_row_unref(run->slots[i]->row);
            free(run->slots[i]);
        }
    }
    free(run->slots);
    free(run->run_id);
    free(run);
}

void cache_free(cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_slots; i++)
        if (c->slots[i])
            run_free(c->slots[i]);
    while (c->doomed) {
        cache_run *run = c->doomed;
        c->doomed = run->lru_next;
        run_free(run); /* cache_reap left NULL in the slots it freed */
    }
    free(c->slots);
    free(c);
}

static size_t run_slot(const cache *c, const char *run_id)
{
    size_t mask = c->n_slots - 1;
    size_t i = hash_str(run_id) & mask;
    while (c->slots[i] && strcmp(c->slots[i]->run_id, run_id) != 0)
        i = (i + 1) & mask;
    return i;
}

cache_run *cache_run_find(cache *c, const char *run_id)
{
    return c->slots[run_slot(c, run_id)];
}

static int runs_grow(cache *c)
{
    size_t n = c->n_slots * 2;
    cache_run **slots = calloc(n, sizeof *slots);
    if (!slots)
        return -1;
    cache_run **old = c->slots;
    size_t old_n = c->n_slots;
    c->slots = slots;
    c->n_slots = n;
    for (size_t i = 0; i < old_n; i++)
        if (old[i])
            c->slots[run_slot(c, old[i]->run_id)] = old[i];
    free(old);
    return 0;
}

cache_run *cache_run_new(const char *run_id)
{
    cache_run *run = calloc(1, sizeof *run);
    if (!run)
        return NULL;
    run->run_id = strdup(run_id);
    run->n_slots = 8;
    run->slots = node_table_new(run->n_slots);
    if (!run->run_id || !run->slots) {
        free(run->run_id);
        free(run->slots);
        free(run);
        return NULL;
    }
    return run;
}

void cache_run_free(cache_run *run)
{
    if (run)
        run_free(run);
}

cache_run *cache_run_add(cache *c, const char *run_id)
{
    if ((c->runs + 1) * 2 > c->n_slots && runs_grow(c) != 0)
        return NULL;
    cache_run *run = cache_run_new(run_id);
    if (!run)
        return NULL;
    c->slots[run_slot(c, run_id)] = run;
    c->runs++;
    return run; /* on the recency list once it has a clean node */
}

void cache_run_remove(cache *c, cache_run *run)
{
    size_t mask = c->n_slots - 1;
    size_t i = run_slot(c, run->run_id);
    if (c->slots[i] != run)
        return;
    /* Backward-shift deletion keeps every other key reachable without tombstones. */
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!c->slots[j])
            break;
        size_t home = hash_str(c->slots[j]->run_id) & mask;
        bool between = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (!between) {
            c->slots[i] = c->slots[j];
            i = j;
        }
    }
    c->slots[i] = NULL;
    c->runs--;
    c->nodes -= run->nodes;
    c->bytes -= run->bytes;
    c->removed_hash[c->removals % REMOVED_RING] = hash_str(run->run_id);
    c->removals++;
    if (run->clean > 0)
        cache_lru_unlink(c, run);
    if (run->nodes <= REAP_INLINE_NODES) {
        run_free(run);
        return;
    }
    /* Big: freed a piece at a time by cache_reap, so this call stays O(1). */
    run->reap_at = 0;
    run->lru_next = c->doomed;
    c->doomed = run;
    c->reaping += run->nodes;
}

size_t cache_reap(cache *c, size_t budget)
{
    size_t freed = 0, work = 0;
    while (c->doomed && work < budget) {
        cache_run *run = c->doomed;
        while (run->reap_at < run->n_slots && work < budget) {
            cache_node *n = run->slots[run->reap_at];
            run->slots[run->reap_at++] = NULL;
            work++;
            if (n) {
                model_row_unref(n->row);
                free(n);
                freed++;
            }
        }
        if (run->reap_at == run->n_slots) {
            c->doomed = run->lru_next;
            run_free(run); /* every slot is NULL by now */
        }
    }
    c->reaping -= freed;
    return freed;
}

size_t cache_reaping(const cache *c)
{
    return c->reaping;
}

void cache_run_clear(cache *c, cache_run *run)
{
    cache_clean_forget(c, run);
    for (size_t i = 0; i < run->n_slots; i++) {
        if (run->slots[i]) {
            model_row_unref(run->slots[i]->row);
            free(run->slots[i]);
            run->slots[i] = NULL;
        }
    }
    /* A big run emptied gives its table back; keeping the old one is fine too. */
    cache_node **small = run->n_slots > 8 ? node_table_new(8) : NULL;
    if (small) {
        free(run->slots);
        run->slots = small;
        run->n_slots = 8;
    }
    c->nodes -= run->nodes;
    c->bytes -= run->bytes;
    run->nodes = 0;
    run->bytes = 0;
    run->last_seq = 0;
    run->updated_at = 0;
    memset(run->counts, 0, sizeof run->counts);
    memset(run->by_status, 0, sizeof run->by_status);
    run->complete = true;
    cache_known_reset(run);
}

cache_run *cache_run_take(cache *c, cache_run *run)
{
    cache_run *old = cache_run_new(run->run_id);
    if (!old) {
        cache_run_clear(c, run);
        return NULL;
    }
    /* old leaves with the full table and trees, run keeps old's empty table. */
    cache_node **slots = old->slots;
    size_t n_slots = old->n_slots;
    old->slots = run->slots;
    old->n_slots = run->n_slots;
    run->slots = slots;
    run->n_slots = n_slots;
    memcpy(old->by_status, run->by_status, sizeof old->by_status);
    memcpy(old->counts, run->counts, sizeof old->counts);
    old->nodes = run->nodes;
    old->bytes = run->bytes;
    old->clean_first = run->clean_first;
    old->clean_last = run->clean_last;
    old->clean = run->clean;
    cache_clean_forget(c, run);
    c->nodes -= run->nodes;
    c->bytes -= run->bytes;
    run->nodes = 0;
    run->bytes = 0;
    run->last_seq = 0;
    run->updated_at = 0;
    memset(run->counts, 0, sizeof run->counts);
    memset(run->by_status, 0, sizeof run->by_status);
    run->complete = true;
    cache_known_reset(run);
    return old;
}

uint64_t cache_removals(const cache *c)
{
    return c->removals;
}

void cache_mark_all_stale(cache *c)
{
    for (size_t i = 0; i < c->n_slots; i++)
        if (c->slots[i])
            c->slots[i]->stale = true;
}

void cache_note_removed(cache *c, const char *run_id)
{
    if (!run_id) {
        /* Past the ring: cache_removed_since is unsure, so true, for every reader in flight. */
        c->removals += REMOVED_RING + 1;
        return;
    }
    c->removed_hash[c->removals % REMOVED_RING] = hash_str(run_id);
    c->removals++;
}

bool cache_removed_since(const cache *c, const char *run_id, uint64_t since)
{
    if (c->removals - since > REMOVED_RING)
        return true;
    uint64_t h = hash_str(run_id);
    for (uint64_t n = since; n < c->removals; n++)
        if (c->removed_hash[n % REMOVED_RING] == h)
            return true; /* or a hash twin: a needless reload, never a stale one */
    return false;
}

size_t cache_nodes(const cache *c)
{
    return c->nodes;
}

size_t cache_runs(const cache *c)
{
    return c->runs;
}

size_t cache_bytes(const cache *c)
{
    return c->bytes;
}

size_t cache_row_bytes(const ns_row *row)
{
    /* model_row_copy's one allocation, the node, and its table slot (kept at most half full). */
    return model_row_bytes(row) + sizeof(cache_node) + 2 * sizeof(cache_node *);
}

/* ---- the node table ---- */

/* The slot of node_id (hashed to h): its node's, or the empty one that ends its probe. */
static size_t node_slot_h(const cache_run *run, const char *node_id, uint64_t h)
{
    size_t mask = run->n_slots - 1;
    size_t i = h & mask;
    uint32_t tag = tag_of(h);
    const uint32_t *tags = node_tags(run);
    while (run->slots[i] &&
           (tags[i] != tag || strcmp(run->slots[i]->row->node_id, node_id) != 0))
        i = (i + 1) & mask;
    return i;
}

size_t cache_node_slot(const cache_run *run, const char *node_id)
{
    return node_slot_h(run, node_id, hash_str(node_id));
}

ns_row *cache_node_get(const cache_run *run, const char *node_id)
{
    const cache_node *n = run->slots[cache_node_slot(run, node_id)];
    return n ? n->row : NULL;
}

/* Empties slot i of the node table; backward shift keeps every other key reachable. */
void cache_node_table_remove(cache_run *run, size_t i)
{
    size_t mask = run->n_slots - 1;
    uint32_t *tags = node_tags(run);
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!run->slots[j])
            break;
        size_t home = node_home(run->slots[j], tags[j], mask);
        bool between = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (!between) {
            run->slots[i] = run->slots[j];
            tags[i] = tags[j];
            i = j;
        }
    }
    run->slots[i] = NULL;
}

static int nodes_grow(cache_run *run)
{
    size_t n = run->n_slots * 2;
    cache_node **slots = node_table_new(n);
    if (!slots)
        return -1;
    cache_node **old = run->slots;
    size_t old_n = run->n_slots;
    const uint32_t *old_tags = node_tags(run);
    run->slots = slots;
    run->n_slots = n;
    uint32_t *tags = node_tags(run);
    for (size_t i = 0; i < old_n; i++) {
        if (!old[i])
            continue;
        /* The keys are distinct: the first empty slot from home is theirs. */
        size_t j = node_home(old[i], old_tags[i], n - 1);
        while (run->slots[j])
            j = (j + 1) & (n - 1);
        run->slots[j] = old[i];
        tags[j] = old_tags[i];
    }
    free(old);
    return 0;
}

/* ---- storing rows ---- */

void cache_account(cache *c, cache_run *run, const ns_row *row, bool add)
{
    size_t b = cache_row_bytes(row);
    if (add) {
        run->bytes += b;
        run->counts[row->status]++;
        if (c)
            c->bytes += b;
    } else {
        run->bytes -= b;
        run->counts[row->status]--;
        if (c)
            c->bytes -= b;
    }
}

/* Stores row as the node's, queued (a write) or clean (read from disk). */
static int node_put(cache *c, cache_run *run, ns_row *row, bool queued)
{
    uint64_t h = hash_str(row->node_id);
    size_t i = node_slot_h(run, row->node_id, h);
    cache_node *n = run->slots[i];
    if (!n) {
        if ((run->nodes + 1) * 2 > run->n_slots) {
            if (nodes_grow(run) != 0)
                return -1;
            i = node_slot_h(run, row->node_id, h);
        }
        n = malloc(sizeof *n);
        if (!n)
            return -1;
        n->row = row;
        n->older = n->newer = NULL;
        n->queued = true;
        run->slots[i] = n;
        node_tags(run)[i] = tag_of(h);
        run->by_status[row->status] = cache_tree_insert(run->by_status[row->status], n);
        run->nodes++;
        if (c)
            c->nodes++;
    } else {
        ns_row *old = n->row;
        cache_account(c, run, old, false);
        if (old->status != row->status) {
            /* Same key, another tree. */
            run->by_status[old->status] = cache_tree_remove(run->by_status[old->status], n);
            n->row = row;
            run->by_status[row->status] = cache_tree_insert(run->by_status[row->status], n);
        } else {
            n->row = row;
        }
        model_row_unref(old);
    }
    cache_account(c, run, row, true);
    if (row->seq > run->last_seq)
        run->last_seq = row->seq;
    if (row->updated_at > run->updated_at)
        run->updated_at = row->updated_at;
    if (!n->queued)
        cache_clean_unlink(c, run, n);
    n->queued = queued;
    if (!queued)
        cache_clean_append(c, run, n);
    return 0;
}

int cache_node_put(cache *c, cache_run *run, ns_row *row)
{
    return node_put(c, run, row, true);
}

int cache_node_load(cache *c, cache_run *run, ns_row *row)
{
    return node_put(c, run, row, false);
}

int cache_run_merge_into(const cache_run *run, cache_run *loaded)
{
    for (size_t i = 0; i < run->n_slots; i++) {
        if (!run->slots[i])
            continue;
        ns_row *row = run->slots[i]->row;
        model_row_ref(row); /* loaded's own */
        if (node_put(NULL, loaded, row, run->slots[i]->queued) != 0) {
            model_row_unref(row);
            return -1;
        }
    }
    return 0;
}

int cache_run_adopt(cache *c, cache_run *run, cache_run *loaded)
{
    if (cache_run_merge_into(run, loaded) != 0) {
        cache_run_free(loaded);
        return -1;
    }
    c->nodes = c->nodes - run->nodes + loaded->nodes;
    c->bytes = c->bytes - run->bytes + loaded->bytes;
    /* run's clean list becomes loaded's, which holds run's nodes' rows and states now. */
    bool had_clean = run->clean > 0;
    run->clean_first = loaded->clean_first;
    run->clean_last = loaded->clean_last;
    run->clean = loaded->clean;
    if (had_clean && !run->clean)
        cache_lru_unlink(c, run);
    else if (!had_clean && run->clean)
        cache_lru_append(c, run);
    /* Swap the bodies: run takes loaded's tables, loaded leaves with run's old ones. */
    cache_node **slots = run->slots;
    size_t n_slots = run->n_slots;
    run->slots = loaded->slots;
    run->n_slots = loaded->n_slots;
    loaded->slots = slots;
    loaded->n_slots = n_slots;
    memcpy(run->by_status, loaded->by_status, sizeof run->by_status);
    memcpy(run->counts, loaded->counts, sizeof run->counts);
    run->nodes = loaded->nodes;
    run->bytes = loaded->bytes;
    if (loaded->last_seq > run->last_seq)
        run->last_seq = loaded->last_seq;
    if (loaded->deleted_seq > run->deleted_seq)
        run->deleted_seq = loaded->deleted_seq;
    if (loaded->updated_at > run->updated_at)
        run->updated_at = loaded->updated_at;
    run->complete = true;
    cache_known_reset(run);
    run_free(loaded);
    return 0;
}
