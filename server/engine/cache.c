#include "cache.h"

#include <stdlib.h>
#include <string.h>

/*
 * Both tables are open addressing with linear probing, power-of-two sizes,
 * kept at most half full so probes stay short.
 */
/* Removals remembered for cache_removed_since. */
#define REMOVED_RING 64

struct cache {
    cache_run **slots;      /* runs keyed by run_id */
    size_t n_slots;
    size_t runs;
    size_t nodes;
    uint64_t removals;
    cache_run *lru_first;   /* least recently used unpinned run */
    cache_run *lru_last;    /* most recently used unpinned run */
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
    if (run->pending > 0 || c->lru_last == run)
        return;
    lru_unlink(c, run);
    lru_append(c, run);
}

void cache_pin(cache *c, cache_run *run)
{
    if (run->pending++ == 0)
        lru_unlink(c, run);
}

bool cache_unpin(cache *c, cache_run *run)
{
    if (--run->pending > 0)
        return false;
    lru_append(c, run);
    return true;
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
    for (size_t i = 0; i < run->n_slots; i++)
        model_row_unref(run->slots[i]);
    free(run->order);
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

cache_run *cache_run_add(cache *c, const char *run_id)
{
    if ((c->runs + 1) * 2 > c->n_slots && runs_grow(c) != 0)
        return NULL;
    cache_run *run = calloc(1, sizeof *run);
    if (!run)
        return NULL;
    run->run_id = strdup(run_id);
    run->n_slots = 8;
    run->slots = calloc(run->n_slots, sizeof *run->slots);
    if (!run->run_id || !run->slots) {
        free(run->run_id);
        free(run->slots);
        free(run);
        return NULL;
    }
    c->slots[run_slot(c, run_id)] = run;
    c->runs++;
    lru_append(c, run);
    return run;
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
    c->removed_hash[c->removals % REMOVED_RING] = hash_str(run->run_id);
    c->removals++;
    if (run->pending == 0)
        lru_unlink(c, run);
    run_free(run);
}

void cache_run_clear(cache *c, cache_run *run)
{
    for (size_t i = 0; i < run->n_slots; i++) {
        model_row_unref(run->slots[i]);
        run->slots[i] = NULL;
    }
    c->nodes -= run->nodes;
    run->nodes = 0;
    run->order_stale = true;
    run->last_seq = 0;
    run->updated_at = 0;
    memset(run->counts, 0, sizeof run->counts);
}

uint64_t cache_removals(const cache *c)
{
    return c->removals;
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

static size_t node_slot(const cache_run *run, const char *node_id)
{
    size_t mask = run->n_slots - 1;
    size_t i = hash_str(node_id) & mask;
    while (run->slots[i] && strcmp(run->slots[i]->node_id, node_id) != 0)
        i = (i + 1) & mask;
    return i;
}

ns_row *cache_node_get(const cache_run *run, const char *node_id)
{
    return run->slots[node_slot(run, node_id)];
}

static int nodes_grow(cache_run *run)
{
    size_t n = run->n_slots * 2;
    ns_row **slots = calloc(n, sizeof *slots);
    if (!slots)
        return -1;
    ns_row **old = run->slots;
    size_t old_n = run->n_slots;
    run->slots = slots;
    run->n_slots = n;
    for (size_t i = 0; i < old_n; i++)
        if (old[i])
            run->slots[node_slot(run, old[i]->node_id)] = old[i];
    free(old);
    run->order_stale = true;
    return 0;
}

int cache_node_put(cache *c, cache_run *run, ns_row *row)
{
    size_t i = node_slot(run, row->node_id);
    ns_row *old = run->slots[i];
    if (!old) {
        if ((run->nodes + 1) * 2 > run->n_slots) {
            if (nodes_grow(run) != 0)
                return -1;
            i = node_slot(run, row->node_id);
        }
        run->nodes++;
        c->nodes++;
        run->order_stale = true;
    } else {
        run->counts[old->status]--;
        model_row_unref(old);
    }
    run->slots[i] = row;
    run->counts[row->status]++;
    if (row->seq > run->last_seq)
        run->last_seq = row->seq;
    if (row->updated_at > run->updated_at)
        run->updated_at = row->updated_at;
    return 0;
}

static int by_node_id(const void *a, const void *b)
{
    const ns_row *x = *(const ns_row *const *)a;
    const ns_row *y = *(const ns_row *const *)b;
    return strcmp(x->node_id, y->node_id);
}

/* Rebuilds run->order from the node table; -1 when out of memory. */
static int order_build(cache_run *run)
{
    size_t n = run->nodes;
    ns_row **rows = malloc((n ? n : 1) * sizeof *rows);
    size_t *order = malloc((n ? n : 1) * sizeof *order);
    if (!rows || !order) {
        free(rows);
        free(order);
        return -1;
    }
    size_t k = 0;
    for (size_t i = 0; i < run->n_slots; i++)
        if (run->slots[i])
            rows[k++] = run->slots[i];
    qsort(rows, k, sizeof *rows, by_node_id);
    for (size_t i = 0; i < k; i++)
        order[i] = node_slot(run, rows[i]->node_id);
    free(rows);
    free(run->order);
    run->order = order;
    run->n_order = k;
    run->order_stale = false;
    return 0;
}

/* The first position in run->order whose node_id sorts after `after`. */
static size_t order_after(const cache_run *run, const char *after)
{
    size_t lo = 0, hi = run->n_order;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(run->slots[run->order[mid]]->node_id, after) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

long cache_run_collect(cache_run *run, unsigned status_mask,
                       const char *after, size_t limit, ns_row **out, bool *more)
{
    if ((run->order_stale || !run->order) && order_build(run) != 0)
        return -1;
    size_t taken = 0;
    *more = false;
    for (size_t i = after ? order_after(run, after) : 0; i < run->n_order; i++) {
        ns_row *r = run->slots[run->order[i]];
        if (!(status_mask & (1u << r->status)))
            continue;
        if (taken == limit) {
            *more = true;
            break;
        }
        model_row_ref(r);
        out[taken++] = r;
    }
    return (long)taken;
}
