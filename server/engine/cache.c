#include "cache.h"

#include <stdio.h>
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
/* Removals remembered for cache_removed_since. */
#define REMOVED_RING 64
/*
 * Deepest tree walk: an AVL tree of n nodes is at most 1.44 log2(n + 2)
 * high, so 64 levels hold more nodes than memory can.
 */
#define TREE_MAX_DEPTH 64
/*
 * A removed run of more nodes than this is freed by cache_reap, a piece at
 * a time, instead of at once.
 */
#define REAP_INLINE_NODES 1024
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
};

static void lru_unlink(cache *c, cache_run *run)
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

static void lru_append(cache *c, cache_run *run)
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
    lru_unlink(c, run);
    lru_append(c, run);
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
static void clean_unlink(cache *c, cache_run *run, cache_node *n)
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
        lru_unlink(c, run);
}

/* Puts n at the recent end of its run's clean list; a run's first clean node puts it on the cache's list. */
static void clean_append(cache *c, cache_run *run, cache_node *n)
{
    n->older = run->clean_last;
    n->newer = NULL;
    if (run->clean_last)
        run->clean_last->newer = n;
    else
        run->clean_first = n;
    run->clean_last = n;
    if (run->clean++ == 0 && c)
        lru_append(c, run);
}

cache_run *cache_lru_first(const cache *c)
{
    return c->lru_first;
}

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

static void gone_free(cache_run *run)
{
    idfilter_free(run->gone);
    run->gone = NULL;
}

/* Sets run->known (it is complete now) with an empty filter. */
static void known_reset(cache_run *run)
{
    gone_free(run);
    run->known = true;
}

/* Records an evicted node of a known run; past the filter's limit, or out of memory, the run is no longer known. */
static void gone_add(cache_run *run, const char *node_id)
{
    if (idfilter_add(&run->gone, node_id) != 0) {
        gone_free(run);
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

static void run_free(cache_run *run)
{
    gone_free(run);
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
        lru_unlink(c, run);
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

/* Forgets a run's clean list (its nodes are going); it leaves the cache's list. */
static void clean_forget(cache *c, cache_run *run)
{
    if (run->clean > 0 && c)
        lru_unlink(c, run);
    run->clean_first = run->clean_last = NULL;
    run->clean = 0;
}

void cache_run_clear(cache *c, cache_run *run)
{
    clean_forget(c, run);
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
    known_reset(run);
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
    clean_forget(c, run);
    c->nodes -= run->nodes;
    c->bytes -= run->bytes;
    run->nodes = 0;
    run->bytes = 0;
    run->last_seq = 0;
    run->updated_at = 0;
    memset(run->counts, 0, sizeof run->counts);
    memset(run->by_status, 0, sizeof run->by_status);
    run->complete = true;
    known_reset(run);
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

static size_t node_slot(const cache_run *run, const char *node_id)
{
    return node_slot_h(run, node_id, hash_str(node_id));
}

ns_row *cache_node_get(const cache_run *run, const char *node_id)
{
    const cache_node *n = run->slots[node_slot(run, node_id)];
    return n ? n->row : NULL;
}

ns_row *cache_node_use(cache *c, cache_run *run, const char *node_id)
{
    cache_node *n = run->slots[node_slot(run, node_id)];
    if (!n)
        return NULL;
    if (!n->queued && run->clean_last != n) {
        clean_unlink(c, run, n);
        clean_append(c, run, n);
    }
    return n->row;
}

bool cache_node_clean(const cache_run *run, const char *node_id)
{
    const cache_node *n = run->slots[node_slot(run, node_id)];
    return n && !n->queued;
}

/* Empties slot i of the node table; backward shift keeps every other key reachable. */
static void node_table_remove(cache_run *run, size_t i)
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

/* ---- the trees: AVL, keyed by node_id (unique within a run) ---- */

static int height(const cache_node *n)
{
    return n ? n->height : 0;
}

static void fix_height(cache_node *n)
{
    int l = height(n->left), r = height(n->right);
    n->height = (l > r ? l : r) + 1;
}

static cache_node *rotate_right(cache_node *n)
{
    cache_node *l = n->left;
    n->left = l->right;
    l->right = n;
    fix_height(n);
    fix_height(l);
    return l;
}

static cache_node *rotate_left(cache_node *n)
{
    cache_node *r = n->right;
    n->right = r->left;
    r->left = n;
    fix_height(n);
    fix_height(r);
    return r;
}

/* Restores the AVL balance at n (its subtrees are balanced); returns the subtree's new root. */
static cache_node *rebalance(cache_node *n)
{
    fix_height(n);
    int b = height(n->left) - height(n->right);
    if (b > 1) {
        if (height(n->left->left) < height(n->left->right))
            n->left = rotate_left(n->left);
        return rotate_right(n);
    }
    if (b < -1) {
        if (height(n->right->right) < height(n->right->left))
            n->right = rotate_right(n->right);
        return rotate_left(n);
    }
    return n;
}

static cache_node *tree_insert(cache_node *root, cache_node *n)
{
    if (!root) {
        n->left = n->right = NULL;
        n->height = 1;
        return n;
    }
    if (strcmp(n->row->node_id, root->row->node_id) < 0)
        root->left = tree_insert(root->left, n);
    else
        root->right = tree_insert(root->right, n);
    return rebalance(root);
}

/* Unlinks the leftmost node of root into *min; returns the new root. */
static cache_node *tree_take_min(cache_node *root, cache_node **min)
{
    if (!root->left) {
        *min = root;
        return root->right;
    }
    root->left = tree_take_min(root->left, min);
    return rebalance(root);
}

/* Unlinks n, which is in the tree; returns the new root. */
static cache_node *tree_remove(cache_node *root, const cache_node *n)
{
    if (root == n) {
        cache_node *l = root->left, *r = root->right;
        if (!r)
            return l;
        cache_node *min;
        r = tree_take_min(r, &min);
        min->left = l;
        min->right = r;
        return rebalance(min);
    }
    if (strcmp(n->row->node_id, root->row->node_id) < 0)
        root->left = tree_remove(root->left, n);
    else
        root->right = tree_remove(root->right, n);
    return rebalance(root);
}

/* An in-order walk from a starting key: the stack holds the nodes still to visit. */
typedef struct tree_iter {
    const cache_node *stack[TREE_MAX_DEPTH];
    int depth;
} tree_iter;

/* Positions it on the first node whose node_id sorts after `after` (NULL: the first). */
static void iter_seek(tree_iter *it, const cache_node *root, const char *after)
{
    it->depth = 0;
    while (root) {
        if (!after || strcmp(root->row->node_id, after) > 0) {
            it->stack[it->depth++] = root;
            root = root->left;
        } else {
            root = root->right;
        }
    }
}

static const cache_node *iter_peek(const tree_iter *it)
{
    return it->depth ? it->stack[it->depth - 1] : NULL;
}

static void iter_next(tree_iter *it)
{
    const cache_node *n = it->stack[--it->depth];
    for (n = n->right; n; n = n->left)
        it->stack[it->depth++] = n;
}

/* ---- storing rows ---- */

static void account(cache *c, cache_run *run, const ns_row *row, bool add)
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
        run->by_status[row->status] = tree_insert(run->by_status[row->status], n);
        run->nodes++;
        if (c)
            c->nodes++;
    } else {
        ns_row *old = n->row;
        account(c, run, old, false);
        if (old->status != row->status) {
            /* Same key, another tree. */
            run->by_status[old->status] = tree_remove(run->by_status[old->status], n);
            n->row = row;
            run->by_status[row->status] = tree_insert(run->by_status[row->status], n);
        } else {
            n->row = row;
        }
        model_row_unref(old);
    }
    account(c, run, row, true);
    if (row->seq > run->last_seq)
        run->last_seq = row->seq;
    if (row->updated_at > run->updated_at)
        run->updated_at = row->updated_at;
    if (!n->queued)
        clean_unlink(c, run, n);
    n->queued = queued;
    if (!queued)
        clean_append(c, run, n);
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

void cache_node_settle(cache *c, cache_run *run, const ns_row *row)
{
    cache_node *n = run->slots[node_slot(run, row->node_id)];
    if (n && n->row == row && n->queued) {
        n->queued = false;
        clean_append(c, run, n);
    }
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
        lru_unlink(c, run);
    else if (!had_clean && run->clean)
        lru_append(c, run);
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
    if (loaded->updated_at > run->updated_at)
        run->updated_at = loaded->updated_at;
    run->complete = true;
    known_reset(run);
    run_free(loaded);
    return 0;
}

/* ---- evicting ---- */

cache_evicted cache_evict_node(cache *c, const cache_run *keep)
{
    cache_run *run = c->lru_first;
    /* Held runs are few (batches being loaded), so stepping over them stays cheap. */
    while (run && (run == keep || run->holds))
        run = run->lru_next;
    if (!run)
        return CACHE_EVICTED_NONE;
    cache_node *n = run->clean_first;
    clean_unlink(c, run, n);
    node_table_remove(run, node_slot(run, n->row->node_id));
    run->by_status[n->row->status] = tree_remove(run->by_status[n->row->status], n);
    account(c, run, n->row, false);
    run->nodes--;
    c->nodes--;
    if (n->row->seq > run->evicted_seq)
        run->evicted_seq = n->row->seq;
    run->complete = false;
    if (run->known)
        gone_add(run, n->row->node_id);
    model_row_unref(n->row);
    free(n);
    if (run->nodes == 0 && run->pending == 0) {
        cache_run_remove(c, run);
        return CACHE_EVICTED_RUN;
    }
    return CACHE_EVICTED_NODE;
}

/* ---- listing ---- */

long cache_run_collect(const cache_run *run, unsigned status_mask,
                       const char *after, size_t limit, ns_row **out, bool *more)
{
    /* One walk per status asked for, merged: each step takes the smallest node_id ahead. */
    tree_iter its[NS_STATUS_COUNT];
    int n_its = 0;
    for (int s = 0; s < NS_STATUS_COUNT; s++) {
        if (!(status_mask & (1u << s)) || !run->by_status[s])
            continue;
        iter_seek(&its[n_its], run->by_status[s], after);
        if (its[n_its].depth)
            n_its++;
    }
    size_t taken = 0;
    *more = false;
    while (n_its > 0) {
        int best = 0;
        for (int i = 1; i < n_its; i++)
            if (strcmp(iter_peek(&its[i])->row->node_id,
                       iter_peek(&its[best])->row->node_id) < 0)
                best = i;
        if (taken == limit) {
            *more = true;
            break;
        }
        ns_row *r = iter_peek(&its[best])->row;
        model_row_ref(r);
        out[taken++] = r;
        iter_next(&its[best]);
        if (!its[best].depth)
            its[best] = its[--n_its];
    }
    return (long)taken;
}

/* ---- checking ---- */

typedef struct check_state {
    const cache_run *run;
    size_t nodes, bytes;
    char *why;
    size_t why_len;
} check_state;

/*
 * Checks the subtree at n: keys strictly between lo and hi (NULL: open),
 * every node of status s and in the table, heights right and balanced.
 * Returns its height, or -1 at the first fault.
 */
static int check_tree(check_state *cs, const cache_node *n, int s, const char *lo,
                      const char *hi, int depth)
{
    if (!n)
        return 0;
    const char *id = n->row->node_id;
    if (depth >= TREE_MAX_DEPTH) {
        snprintf(cs->why, cs->why_len, "tree of status %d deeper than %d", s, TREE_MAX_DEPTH);
        return -1;
    }
    if ((lo && strcmp(id, lo) <= 0) || (hi && strcmp(id, hi) >= 0)) {
        snprintf(cs->why, cs->why_len, "%s out of order in the tree of status %d", id, s);
        return -1;
    }
    if ((int)n->row->status != s) {
        snprintf(cs->why, cs->why_len, "%s (status %d) in the tree of status %d", id,
                 (int)n->row->status, s);
        return -1;
    }
    if (cs->run->slots[node_slot(cs->run, id)] != n) {
        snprintf(cs->why, cs->why_len, "%s in a tree but not in the table", id);
        return -1;
    }
    int l = check_tree(cs, n->left, s, lo, id, depth + 1);
    if (l < 0)
        return -1;
    int r = check_tree(cs, n->right, s, id, hi, depth + 1);
    if (r < 0)
        return -1;
    int h = (l > r ? l : r) + 1;
    if (n->height != h || l - r > 1 || r - l > 1) {
        snprintf(cs->why, cs->why_len, "%s: height %d, subtrees %d and %d", id, n->height,
                 l, r);
        return -1;
    }
    cs->nodes++;
    cs->bytes += cache_row_bytes(n->row);
    return h;
}

/* The number of nodes in the subtree at n. */
static size_t tree_size(const cache_node *n)
{
    return n ? 1 + tree_size(n->left) + tree_size(n->right) : 0;
}

int cache_run_check(const cache_run *run, char *why, size_t why_len)
{
    check_state cs = { run, 0, 0, why, why_len };
    for (int s = 0; s < NS_STATUS_COUNT; s++) {
        size_t before = cs.nodes;
        if (check_tree(&cs, run->by_status[s], s, NULL, NULL, 0) < 0)
            return -1;
        if (cs.nodes - before != run->counts[s] || tree_size(run->by_status[s]) != run->counts[s]) {
            snprintf(why, why_len, "status %d: %zu nodes in its tree, counted %zu", s,
                     cs.nodes - before, run->counts[s]);
            return -1;
        }
    }
    size_t in_table = 0;
    for (size_t i = 0; i < run->n_slots; i++)
        in_table += run->slots[i] != NULL;
    if (in_table != run->nodes || cs.nodes != run->nodes) {
        snprintf(why, why_len, "%zu nodes in the table, %zu in the trees, counted %zu",
                 in_table, cs.nodes, run->nodes);
        return -1;
    }
    if (cs.bytes != run->bytes) {
        snprintf(why, why_len, "%zu bytes held, counted %zu", cs.bytes, run->bytes);
        return -1;
    }
    /* The clean list: linked both ways, every clean node on it once, no queued one. */
    size_t clean_in_table = 0, on_list = 0;
    for (size_t i = 0; i < run->n_slots; i++)
        clean_in_table += run->slots[i] && !run->slots[i]->queued;
    const cache_node *prev = NULL;
    for (const cache_node *n = run->clean_first; n; prev = n, n = n->newer) {
        if (n->queued || n->older != prev || ++on_list > run->nodes ||
            run->slots[node_slot(run, n->row->node_id)] != n) {
            snprintf(why, why_len, "clean list broken at %s", n->row->node_id);
            return -1;
        }
    }
    if (prev != run->clean_last || on_list != run->clean || clean_in_table != run->clean) {
        snprintf(why, why_len, "%zu clean nodes in the table, %zu on the list, counted %zu",
                 clean_in_table, on_list, run->clean);
        return -1;
    }
    return 0;
}
