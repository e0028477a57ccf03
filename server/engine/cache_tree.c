/*
 * cache_tree.c: each run's ordered trees (AVL, one per status, keyed by
 * node_id), the listing walked over them (cache_run_collect), and the
 * structure check tests use (cache_run_check). Apart from cache.c because
 * the balancing and the ordered walks are a concern of their own: cache.c
 * only inserts into and removes from a tree.
 */
#include "cache.h"
#include "cache_internal.h"

#include <stdio.h>
#include <string.h>

/*
 * Deepest tree walk: an AVL tree of n nodes is at most 1.44 log2(n + 2)
 * high, so 64 levels hold more nodes than memory can.
 */
#define TREE_MAX_DEPTH 64

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

cache_node *cache_tree_insert(cache_node *root, cache_node *n)
{
    if (!root) {
        n->left = n->right = NULL;
        n->height = 1;
        return n;
    }
    if (strcmp(n->row->node_id, root->row->node_id) < 0)
        root->left = cache_tree_insert(root->left, n);
    else
        root->right = cache_tree_insert(root->right, n);
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
cache_node *cache_tree_remove(cache_node *root, const cache_node *n)
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
        root->left = cache_tree_remove(root->left, n);
    else
        root->right = cache_tree_remove(root->right, n);
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
    if (cs->run->slots[cache_node_slot(cs->run, id)] != n) {
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
            run->slots[cache_node_slot(run, n->row->node_id)] != n) {
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
