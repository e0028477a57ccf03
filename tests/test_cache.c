/*
 * Unit tests for cache: runs and nodes in, found, replaced (with per-status
 * counts and reference handling), both tables growing, removal by backward
 * shift keeping every other key reachable, clearing a run, and collecting a
 * run's rows in order with a status mask, a cursor, a limit and "more";
 * the per-status trees staying ordered and balanced (also through randomized
 * operations checked against a plain model), bytes accounting, and partial
 * runs merged with a copy read from disk; eviction of clean nodes, least
 * recently used first, never of queued ones; big removed runs freed in pieces.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "model.h"

#define ALL_STATUSES ((1u << NS_STATUS_COUNT) - 1)

static ns_row *mk(const char *run, const char *node, ns_status s, int64_t seq)
{
    ns_row d;
    memset(&d, 0, sizeof d);
    d.run_id = run;
    d.node_id = node;
    d.status = s;
    d.attempt = 1;
    for (int i = 0; i < NS_TS_COUNT; i++)
        d.ts[i] = NS_TS_NULL;
    d.seq = seq;
    ns_row *r = model_row_copy(&d);
    cr_assert_not_null(r);
    return r;
}

static cache *new_cache(void)
{
    cache *c = cache_new();
    cr_assert_not_null(c);
    return c;
}

static cache_run *add_run(cache *c, const char *run_id)
{
    cache_run *run = cache_run_add(c, run_id);
    cr_assert_not_null(run, "cache_run_add(%s)", run_id);
    return run;
}

static void check_run(const cache_run *run);

static void put(cache *c, cache_run *run, ns_row *row)
{
    cr_assert_eq(cache_node_put(c, run, row), 0);
}

Test(cache, empty)
{
    cache *c = new_cache();
    cr_assert_null(cache_run_find(c, "r"));
    cr_assert_eq(cache_runs(c), 0);
    cr_assert_eq(cache_nodes(c), 0);
    cr_assert_eq(cache_removals(c), 0);
    cache_free(c);
    cache_free(NULL);
}

Test(cache, add_and_find_run)
{
    cache *c = new_cache();
    cache_run *run = add_run(c, "run-1");
    cr_assert_str_eq(run->run_id, "run-1");
    cr_assert_eq(run->nodes, 0);
    cr_assert_eq(run->pending, 0);
    for (int s = 0; s < NS_STATUS_COUNT; s++)
        cr_assert_eq(run->counts[s], 0);
    cr_assert_eq(cache_run_find(c, "run-1"), run);
    cr_assert_null(cache_run_find(c, "run-2"));
    cr_assert_null(cache_node_get(run, "a"));
    cr_assert_eq(cache_runs(c), 1);
    cache_free(c);
}

Test(cache, put_get_replace_counts)
{
    cache *c = new_cache();
    cache_run *run = add_run(c, "r");
    ns_row *a1 = mk("r", "a", NS_RUNNING, 1);
    put(c, run, a1);
    put(c, run, mk("r", "b", NS_RUNNING, 2));
    put(c, run, mk("r", "c", NS_SCHEDULED, 3));
    cr_assert_eq(cache_node_get(run, "a"), a1);
    cr_assert_eq(cache_node_get(run, "b")->seq, 2);
    cr_assert_null(cache_node_get(run, "d"));
    cr_assert_eq(run->nodes, 3);
    cr_assert_eq(cache_nodes(c), 3);
    cr_assert_eq(run->counts[NS_RUNNING], 2);
    cr_assert_eq(run->counts[NS_SCHEDULED], 1);

    /* Replacing drops the cache's reference on the old row. */
    model_row_ref(a1);
    ns_row *a2 = mk("r", "a", NS_COMPLETED, 4);
    put(c, run, a2);
    cr_assert_eq(atomic_load(&a1->refs), 1, "old row still referenced by the cache");
    model_row_unref(a1);
    cr_assert_eq(cache_node_get(run, "a"), a2);
    cr_assert_eq(run->nodes, 3, "a replacement is not a new node");
    cr_assert_eq(cache_nodes(c), 3);
    cr_assert_eq(run->counts[NS_RUNNING], 1);
    cr_assert_eq(run->counts[NS_COMPLETED], 1);
    cr_assert_eq(run->counts[NS_SCHEDULED], 1);

    /* Same status replacement keeps counts. */
    put(c, run, mk("r", "a", NS_COMPLETED, 5));
    cr_assert_eq(run->counts[NS_COMPLETED], 1);
    size_t total = 0;
    for (int s = 0; s < NS_STATUS_COUNT; s++)
        total += run->counts[s];
    cr_assert_eq(total, run->nodes);
    cache_free(c);
}

Test(cache, free_drops_row_references)
{
    cache *c = new_cache();
    cache_run *run = add_run(c, "r");
    ns_row *row = mk("r", "a", NS_IDLE, 1);
    model_row_ref(row);
    put(c, run, row);
    cache_free(c);
    cr_assert_eq(atomic_load(&row->refs), 1);
    model_row_unref(row);
}

Test(cache, many_runs_and_nodes_grow)
{
    cache *c = new_cache();
    char run_id[32], node_id[32];
    enum { RUNS = 300, NODES = 40, BIG = 5000 };
    for (int r = 0; r < RUNS; r++) {
        snprintf(run_id, sizeof run_id, "run-%d", r);
        cache_run *run = add_run(c, run_id);
        for (int n = 0; n < NODES; n++) {
            snprintf(node_id, sizeof node_id, "node-%d", n);
            put(c, run, mk(run_id, node_id, (ns_status)(n % NS_STATUS_COUNT), r * NODES + n));
        }
    }
    cache_run *big = add_run(c, "big");
    for (int n = 0; n < BIG; n++) {
        snprintf(node_id, sizeof node_id, "n%05d", n);
        put(c, big, mk("big", node_id, NS_RUNNING, n));
    }
    cr_assert_eq(cache_runs(c), RUNS + 1);
    cr_assert_eq(cache_nodes(c), RUNS * NODES + BIG);
    cr_assert_eq(big->nodes, BIG);
    cr_assert_eq(big->counts[NS_RUNNING], BIG);
    for (int r = 0; r < RUNS; r++) {
        snprintf(run_id, sizeof run_id, "run-%d", r);
        cache_run *run = cache_run_find(c, run_id);
        cr_assert_not_null(run, "%s lost after growing", run_id);
        cr_assert_str_eq(run->run_id, run_id);
        cr_assert_eq(run->nodes, NODES);
        for (int n = 0; n < NODES; n++) {
            snprintf(node_id, sizeof node_id, "node-%d", n);
            ns_row *row = cache_node_get(run, node_id);
            cr_assert_not_null(row, "%s/%s lost", run_id, node_id);
            cr_assert_eq(row->seq, r * NODES + n);
        }
    }
    for (int n = 0; n < BIG; n++) {
        snprintf(node_id, sizeof node_id, "n%05d", n);
        ns_row *row = cache_node_get(big, node_id);
        cr_assert_not_null(row, "big/%s lost", node_id);
        cr_assert_eq(row->seq, n);
    }
    cr_assert_null(cache_node_get(big, "n99999"));
    cache_free(c);
}

Test(cache, remove_keeps_the_others_findable)
{
    cache *c = new_cache();
    char id[32];
    enum { RUNS = 1000 };
    for (int r = 0; r < RUNS; r++) {
        snprintf(id, sizeof id, "run-%d", r);
        cache_run *run = add_run(c, id);
        put(c, run, mk(id, "a", NS_RUNNING, r));
        put(c, run, mk(id, "b", NS_RUNNING, r));
    }
    cr_assert_eq(cache_nodes(c), 2 * RUNS);
    for (int r = 0; r < RUNS; r += 2) {
        snprintf(id, sizeof id, "run-%d", r);
        cache_run *run = cache_run_find(c, id);
        cr_assert_not_null(run);
        cache_run_remove(c, run);
    }
    cr_assert_eq(cache_runs(c), RUNS / 2);
    cr_assert_eq(cache_nodes(c), RUNS);
    cr_assert_eq(cache_removals(c), RUNS / 2);
    for (int r = 0; r < RUNS; r++) {
        snprintf(id, sizeof id, "run-%d", r);
        cache_run *run = cache_run_find(c, id);
        if (r % 2 == 0) {
            cr_assert_null(run, "%s still found after removal", id);
        } else {
            cr_assert_not_null(run, "%s lost by a removal", id);
            cr_assert_str_eq(run->run_id, id);
            cr_assert_eq(cache_node_get(run, "a")->seq, r);
        }
    }
    /* Removed ids can be added again, and the survivors stay put. */
    for (int r = 0; r < RUNS; r += 2) {
        snprintf(id, sizeof id, "run-%d", r);
        add_run(c, id);
    }
    cr_assert_eq(cache_runs(c), RUNS);
    for (int r = 0; r < RUNS; r++) {
        snprintf(id, sizeof id, "run-%d", r);
        cr_assert_not_null(cache_run_find(c, id), "%s", id);
    }
    /* Remove everything, in another order. */
    for (int r = RUNS - 1; r >= 0; r--) {
        snprintf(id, sizeof id, "run-%d", r);
        cache_run *run = cache_run_find(c, id);
        cr_assert_not_null(run, "%s", id);
        cache_run_remove(c, run);
    }
    cr_assert_eq(cache_runs(c), 0);
    cr_assert_eq(cache_nodes(c), 0);
    cache_free(c);
}

Test(cache, remove_drops_row_references)
{
    cache *c = new_cache();
    cache_run *run = add_run(c, "r");
    ns_row *row = mk("r", "a", NS_IDLE, 1);
    model_row_ref(row);
    put(c, run, row);
    cache_run_remove(c, run);
    cr_assert_eq(atomic_load(&row->refs), 1);
    model_row_unref(row);
    cache_free(c);
}

Test(cache, clear_keeps_the_empty_run)
{
    cache *c = new_cache();
    cache_run *other = add_run(c, "other");
    put(c, other, mk("other", "x", NS_IDLE, 1));
    cache_run *run = add_run(c, "r");
    char id[16];
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "n%d", i);
        put(c, run, mk("r", id, NS_COMPLETED, i));
    }
    ns_row *kept = cache_node_get(run, "n3");
    model_row_ref(kept);
    cr_assert_eq(cache_nodes(c), 11);
    cache_run_clear(c, run);
    cr_assert_eq(atomic_load(&kept->refs), 1, "clear did not drop the row");
    model_row_unref(kept);
    cr_assert_eq(cache_run_find(c, "r"), run);
    cr_assert_eq(run->nodes, 0);
    cr_assert_eq(run->counts[NS_COMPLETED], 0);
    cr_assert_eq(cache_nodes(c), 1);
    cr_assert_eq(cache_runs(c), 2);
    cr_assert_eq(cache_removals(c), 0, "clear is not a removal");
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "n%d", i);
        cr_assert_null(cache_node_get(run, id));
    }
    put(c, run, mk("r", "n1", NS_RUNNING, 20));
    cr_assert_eq(run->nodes, 1);
    cr_assert_eq(run->counts[NS_RUNNING], 1);
    cr_assert_eq(cache_nodes(c), 2);
    cr_assert_eq(cache_node_get(other, "x")->seq, 1);
    cache_free(c);
}

/* A run with nodes n00..n19 inserted out of order; status of nK is K % 7. */
static cache_run *collect_fixture(cache *c)
{
    cache_run *run = add_run(c, "r");
    char id[16];
    for (int k = 0; k < 20; k++) {
        int i = (k * 7) % 20; /* 7 and 20 are coprime: a permutation */
        snprintf(id, sizeof id, "n%02d", i);
        put(c, run, mk("r", id, (ns_status)(i % NS_STATUS_COUNT), i));
    }
    return run;
}

static void release(ns_row **rows, long n)
{
    for (long i = 0; i < n; i++)
        model_row_unref(rows[i]);
}

Test(cache, collect_all_in_order)
{
    cache *c = new_cache();
    cache_run *run = collect_fixture(c);
    ns_row *out[32];
    bool more = true;
    long n = cache_run_collect(run, ALL_STATUSES, NULL, 32, out, &more);
    cr_assert_eq(n, 20);
    cr_assert_not(more);
    char id[32];
    for (long i = 0; i < n; i++) {
        snprintf(id, sizeof id, "n%02ld", i);
        cr_assert_str_eq(out[i]->node_id, id);
        cr_assert_eq(atomic_load(&out[i]->refs), 2, "collect takes a reference");
    }
    release(out, n);
    cr_assert_eq(atomic_load(&cache_node_get(run, "n00")->refs), 1);
    cache_free(c);
}

Test(cache, collect_status_mask)
{
    cache *c = new_cache();
    cache_run *run = collect_fixture(c);
    ns_row *out[32];
    bool more = true;
    unsigned mask = (1u << NS_SCHEDULED) | (1u << NS_RUNNING);
    long n = cache_run_collect(run, mask, NULL, 32, out, &more);
    /* i % 7 in {1, 2}: 1 2 8 9 15 16 */
    static const char *const want[] = { "n01", "n02", "n08", "n09", "n15", "n16" };
    cr_assert_eq(n, 6);
    cr_assert_not(more);
    for (long i = 0; i < n; i++)
        cr_assert_str_eq(out[i]->node_id, want[i]);
    release(out, n);
    n = cache_run_collect(run, 0, NULL, 32, out, &more);
    cr_assert_eq(n, 0);
    cr_assert_not(more);
    cache_free(c);
}

Test(cache, collect_after_limit_more)
{
    cache *c = new_cache();
    cache_run *run = collect_fixture(c);
    ns_row *out[32];
    bool more = false;
    long n = cache_run_collect(run, ALL_STATUSES, "n05", 32, out, &more);
    cr_assert_eq(n, 14, "after is exclusive");
    cr_assert_str_eq(out[0]->node_id, "n06");
    cr_assert_not(more);
    release(out, n);

    /* Page through by 6: 6 + 6 + 6 + 2, more on all pages but the last. */
    const char *after = NULL;
    char cursor[16];
    int pages = 0, seen = 0;
    for (;;) {
        n = cache_run_collect(run, ALL_STATUSES, after, 6, out, &more);
        cr_assert_geq(n, 0);
        for (long i = 0; i < n; i++) {
            char id[16];
            snprintf(id, sizeof id, "n%02d", seen + (int)i);
            cr_assert_str_eq(out[i]->node_id, id);
        }
        seen += (int)n;
        pages++;
        if (n > 0) {
            snprintf(cursor, sizeof cursor, "%s", out[n - 1]->node_id);
            after = cursor;
        }
        release(out, n);
        if (!more)
            break;
        cr_assert_eq(n, 6);
        cr_assert_lt(pages, 10);
    }
    cr_assert_eq(pages, 4);
    cr_assert_eq(seen, 20);

    /* Exactly limit rows left: more is false. */
    n = cache_run_collect(run, ALL_STATUSES, "n14", 5, out, &more);
    cr_assert_eq(n, 5);
    cr_assert_not(more);
    release(out, n);
    n = cache_run_collect(run, ALL_STATUSES, "n14", 4, out, &more);
    cr_assert_eq(n, 4);
    cr_assert(more);
    release(out, n);
    /* Past the end. */
    n = cache_run_collect(run, ALL_STATUSES, "n99", 5, out, &more);
    cr_assert_eq(n, 0);
    cr_assert_not(more);
    /* Mask and cursor together, with a limit cutting it short. */
    n = cache_run_collect(run, 1u << NS_IDLE, "n00", 2, out, &more);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(out[0]->node_id, "n07");
    cr_assert_str_eq(out[1]->node_id, "n14");
    cr_assert_not(more);
    release(out, n);
    cache_free(c);
}

Test(cache, collect_empty_run)
{
    cache *c = new_cache();
    cache_run *run = add_run(c, "r");
    ns_row *out[1];
    bool more = true;
    cr_assert_eq(cache_run_collect(run, ALL_STATUSES, NULL, 1, out, &more), 0);
    cr_assert_not(more);
    cache_free(c);
}

/* The recency list from least to most recently used, as "a,b,c". */
static void lru_is(const cache *c, const char *want)
{
    char got[256] = "";
    size_t n = 0;
    for (const cache_run *r = cache_lru_first(c); r; r = r->lru_next) {
        if (got[0])
            strncat(got, ",", sizeof got - strlen(got) - 1);
        strncat(got, r->run_id, sizeof got - strlen(got) - 1);
        cr_assert_lt(++n, 100, "recency list loops");
    }
    cr_assert_str_eq(got, want);
}

/* A run with one clean node (read from disk), so it is on the recency list. */
static cache_run *add_loaded_run(cache *c, const char *run_id)
{
    cache_run *run = add_run(c, run_id);
    cr_assert_eq(cache_node_load(c, run, mk(run_id, "x", NS_RUNNING, 1)), 0);
    return run;
}

Test(cache, recency_order)
{
    cache *c = new_cache();
    lru_is(c, "");
    cache_run *a = add_loaded_run(c, "a");
    cache_run *b = add_loaded_run(c, "b");
    add_loaded_run(c, "c");
    add_run(c, "e"); /* no clean node: not on the list */
    lru_is(c, "a,b,c");
    cache_touch(c, a);
    lru_is(c, "b,c,a");
    cache_touch(c, a); /* already the most recent */
    lru_is(c, "b,c,a");
    cache_run_remove(c, cache_run_find(c, "c"));
    lru_is(c, "b,a");
    cache_run_remove(c, b);
    lru_is(c, "a");
    cache_run_clear(c, a); /* clearing keeps the run, without clean nodes: off the list */
    lru_is(c, "");
    cr_assert_eq(cache_node_load(c, a, mk("a", "y", NS_RUNNING, 2)), 0);
    lru_is(c, "a");
    cache_run_remove(c, a);
    lru_is(c, "");
    add_loaded_run(c, "d");
    lru_is(c, "d");
    cache_free(c);
}

/*
 * Eviction: only clean nodes go, the least recently used node of the least
 * recently used run first; a queued node stays until settled; a run loses
 * nodes, not its place, until it is empty and unpinned.
 */
Test(cache, evicts_clean_nodes_least_recently_used_first)
{
    cache *c = new_cache();
    cache_run *a = add_run(c, "a");
    cache_run *b = add_run(c, "b");
    ns_row *a1 = mk("a", "1", NS_RUNNING, 1);
    put(c, a, a1);                                  /* a write: queued */
    cache_pin(c, a);
    cr_assert_eq(cache_node_load(c, a, mk("a", "2", NS_RUNNING, 2)), 0);
    cr_assert_eq(cache_node_load(c, a, mk("a", "3", NS_RUNNING, 3)), 0);
    cr_assert_eq(cache_node_load(c, b, mk("b", "1", NS_RUNNING, 4)), 0);
    a->complete = true;
    cr_assert_not(cache_node_clean(a, "1"));
    cr_assert(cache_node_clean(a, "2"));
    lru_is(c, "a,b");
    /* Using a's node 2 makes node 3 its least recently used one. */
    cr_assert_not_null(cache_node_use(c, a, "2"));
    cr_assert_eq(cache_evict_node(c, NULL), CACHE_EVICTED_NODE);
    cr_assert_null(cache_node_get(a, "3"));
    cr_assert_not(a->complete, "a run that lost a node is not complete");
    cr_assert_eq(a->evicted_seq, 3);
    check_run(a);
    /* keep spares a run whole: b goes instead. */
    cr_assert_eq(cache_evict_node(c, a), CACHE_EVICTED_RUN);
    cr_assert_null(cache_run_find(c, "b"), "b, empty and unpinned, stays cached");
    cr_assert_eq(cache_evict_node(c, a), CACHE_EVICTED_NONE);
    cr_assert_eq(cache_evict_node(c, NULL), CACHE_EVICTED_NODE);
    /* Only the queued node is left: nothing may go, and the pinned run stays. */
    cr_assert_eq(cache_evict_node(c, NULL), CACHE_EVICTED_NONE);
    cr_assert_eq(cache_node_get(a, "1"), a1);
    cr_assert_eq(cache_nodes(c), 1);
    /* An older write of the node settling changes nothing; its own one does. */
    ns_row *a1_old = mk("a", "1", NS_SCHEDULED, 0);
    cache_node_settle(c, a, a1_old);
    model_row_unref(a1_old);
    cr_assert_eq(cache_evict_node(c, NULL), CACHE_EVICTED_NONE);
    cache_node_settle(c, a, a1);
    check_run(a);
    cr_assert(cache_node_clean(a, "1"));
    cr_assert_eq(cache_evict_node(c, NULL), CACHE_EVICTED_NODE, "a is pinned: it stays");
    cr_assert_not_null(cache_run_find(c, "a"));
    cr_assert(cache_unpin(c, a));
    cr_assert_eq(cache_nodes(c), 0);
    cache_free(c);
}

/*
 * A refused row that leaves the cache (cache_node_forget) must count for a
 * read in flight like an evicted one (evicted_seq), or readthrough's
 * read_overtaken cannot tell that a run read from disk before the node's
 * last committed row (seq 10 here) is older than the disk now: with the
 * node gone the merge takes the old disk row, and the run is cached
 * complete with it. Scenario: a whole-run read of a partial run starts at
 * durable_seq 9; row 10 of node n commits; row 11 of n is queued and
 * refused (forgotten) while another write keeps the run pinned (so it is
 * not removed); the read comes back and adopts n's row older than 10.
 */
Test(cache, forgetting_a_refused_row_tells_reads_in_flight)
{
    cache *c = new_cache();
    cache_run *a = add_run(c, "a");
    ns_row *r10 = mk("a", "n", NS_RUNNING, 10);
    put(c, a, r10);
    cache_pin(c, a);
    cache_node_settle(c, a, r10); /* committed */
    cr_assert(cache_unpin(c, a));
    ns_row *r11 = mk("a", "n", NS_COMPLETED, 11);
    model_row_ref(r11); /* the queue's */
    put(c, a, r11);
    cache_pin(c, a);
    cache_pin(c, a); /* another write of the run, queued later */
    cr_assert(cache_node_forget(c, a, r11));
    check_run(a);
    cr_assert_eq(cache_nodes(c), 0);
    cr_assert_eq(a->nodes, 0);
    cr_assert_not(a->complete);
    cr_assert_geq(a->evicted_seq, 10,
                  "evicted_seq %lld: a read that began before row 10 committed is not redone",
                  (long long)a->evicted_seq);
    model_row_unref(r11);
    cache_free(c);
}

/* A held run (a batch loading it) is spared like keep, whoever evicts; released, it is evictable again. */
Test(cache, held_runs_are_spared)
{
    cache *c = new_cache();
    cache_run *a = add_run(c, "a");
    cache_run *b = add_run(c, "b");
    cr_assert_eq(cache_node_load(c, a, mk("a", "1", NS_RUNNING, 1)), 0);
    cr_assert_eq(cache_node_load(c, b, mk("b", "1", NS_RUNNING, 2)), 0);
    cache_pin(c, a);
    cache_hold(a);
    cr_assert_eq(cache_evict_node(c, NULL), CACHE_EVICTED_RUN);
    cr_assert_null(cache_run_find(c, "b"));
    cr_assert_eq(cache_evict_node(c, NULL), CACHE_EVICTED_NONE, "a is held");
    cr_assert_not_null(cache_node_get(a, "1"));
    cache_release(a);
    cr_assert_eq(cache_evict_node(c, NULL), CACHE_EVICTED_NODE);
    cr_assert(cache_unpin(c, a));
    cache_free(c);
}

/*
 * A run known whole (new, or read whole) stays known through evictions: an
 * evicted node is "maybe stored" (never a false "absent"), a node never
 * seen is absent but for the filter's rare false "maybe".
 */
Test(cache, known_run_tells_evicted_nodes_from_new_ones)
{
    enum { NODES = 5000 };
    cache *c = new_cache();
    cache_run *run = add_run(c, "r");
    cr_assert_not(cache_node_absent(run, "x"), "a run not known: anything may be stored");
    run->complete = run->known = true;
    char id[32];
    for (int i = 0; i < NODES; i++) {
        snprintf(id, sizeof id, "n%d", i);
        cr_assert(cache_node_absent(run, id));
        cr_assert_eq(cache_node_load(c, run, mk("r", id, NS_RUNNING, i + 1)), 0);
        cr_assert_not(cache_node_absent(run, id), "a held node is not absent");
    }
    for (int i = 0; i < NODES - 10; i++)
        cr_assert_eq(cache_evict_node(c, NULL), CACHE_EVICTED_NODE);
    cr_assert_not(run->complete);
    cr_assert(run->known);
    for (int i = 0; i < NODES; i++) {
        snprintf(id, sizeof id, "n%d", i);
        cr_assert_not(cache_node_absent(run, id), "%s evicted (or held) but called absent", id);
    }
    int maybes = 0;
    for (int i = 0; i < NODES; i++) {
        snprintf(id, sizeof id, "new%d", i);
        maybes += !cache_node_absent(run, id);
    }
    cr_assert_lt(maybes, NODES / 20, "%d of %d new nodes called maybe stored", maybes, NODES);
    /* Read whole again: complete and known afresh, the filter emptied. */
    cache_run *loaded = cache_run_new("r");
    cr_assert_not_null(loaded);
    cr_assert_eq(cache_run_adopt(c, run, loaded), 0);
    cr_assert(run->known && run->complete);
    cr_assert_null(run->gone);
    /* A run cached in part (not known) never calls a node absent. */
    cache_run *p = add_run(c, "p");
    cr_assert_eq(cache_node_load(c, p, mk("p", "a", NS_RUNNING, 1)), 0);
    cr_assert_eq(cache_evict_node(c, run), CACHE_EVICTED_RUN);
    cr_assert_eq(cache_runs(c), 1);
    cache_free(c);
}

/* Removing a big run costs O(1); cache_reap frees its nodes within each call's budget. */
Test(cache, big_run_removed_is_freed_in_pieces)
{
    enum { NODES = 5000 };
    cache *c = new_cache();
    cache_run *run = add_run(c, "big");
    char id[32];
    for (int i = 0; i < NODES; i++) {
        snprintf(id, sizeof id, "n%d", i);
        cr_assert_eq(cache_node_load(c, run, mk("big", id, NS_RUNNING, i + 1)), 0);
    }
    cache_run_remove(c, run);
    cr_assert_null(cache_run_find(c, "big"));
    cr_assert_eq(cache_nodes(c), 0);
    cr_assert_eq(cache_reaping(c), NODES);
    size_t freed = 0, calls = 0;
    while (cache_reaping(c) > 0 && calls < 1000) {
        size_t got = cache_reap(c, 1000);
        cr_assert_leq(got, 1000, "one call freed more than its budget");
        freed += got;
        calls++;
    }
    cr_assert_eq(freed, NODES);
    cr_assert_gt(calls, 1, "freed in one piece");
    cr_assert_eq(cache_reap(c, 1000), 0);
    /* And one left to the end goes with the cache (the sanitizer build checks). */
    run = add_run(c, "big");
    for (int i = 0; i < NODES; i++) {
        snprintf(id, sizeof id, "n%d", i);
        cr_assert_eq(cache_node_load(c, run, mk("big", id, NS_RUNNING, i + 1)), 0);
    }
    cache_run_remove(c, run);
    cache_reap(c, 10);
    cache_free(c);
}

/* A run adopting a disk copy keeps its queued nodes queued, and its place on the list follows. */
Test(cache, adopt_keeps_queued_nodes_queued)
{
    cache *c = new_cache();
    cache_run *run = add_run(c, "r");
    put(c, run, mk("r", "q", NS_RUNNING, 10));
    cache_pin(c, run);
    lru_is(c, "");
    cache_run *loaded = cache_run_new("r");
    cr_assert_not_null(loaded);
    cr_assert_eq(cache_node_load(NULL, loaded, mk("r", "q", NS_SCHEDULED, 1)), 0);
    cr_assert_eq(cache_node_load(NULL, loaded, mk("r", "d", NS_RUNNING, 2)), 0);
    cr_assert_eq(cache_run_adopt(c, run, loaded), 0);
    check_run(run);
    lru_is(c, "r");
    cr_assert_not(cache_node_clean(run, "q"));
    cr_assert(cache_node_clean(run, "d"));
    cr_assert_eq(cache_evict_node(c, NULL), CACHE_EVICTED_NODE);
    cr_assert_null(cache_node_get(run, "d"));
    cr_assert_eq(cache_evict_node(c, NULL), CACHE_EVICTED_NONE);
    cr_assert_eq(cache_node_get(run, "q")->seq, 10);
    cache_free(c);
}

Test(cache, run_tracks_last_seq_and_updated_at)
{
    cache *c = new_cache();
    cache_run *run = add_run(c, "r");
    cr_assert_eq(run->last_seq, 0);
    ns_row *a = mk("r", "a", NS_RUNNING, 5);
    a->updated_at = 1000;
    put(c, run, a);
    ns_row *b = mk("r", "b", NS_RUNNING, 3);
    b->updated_at = 2000;
    put(c, run, b);
    cr_assert_eq(run->last_seq, 5, "the highest seq, not the last put");
    cr_assert_eq(run->updated_at, 2000, "the latest updated_at");
    cache_run_clear(c, run);
    cr_assert_eq(run->last_seq, 0, "an emptied run has no seq");
    cr_assert_eq(run->updated_at, 0);
    cache_free(c);
}

Test(cache, collect_sees_nodes_added_and_replaced_after_a_listing)
{
    cache *c = new_cache();
    cache_run *run = add_run(c, "r");
    put(c, run, mk("r", "b", NS_RUNNING, 1));
    put(c, run, mk("r", "d", NS_RUNNING, 2));
    ns_row *out[8];
    bool more;
    long n = cache_run_collect(run, ALL_STATUSES, NULL, 8, out, &more);
    cr_assert_eq(n, 2);
    release(out, n);
    /* A new node lands between the two; a replaced one keeps its place with its new state. */
    put(c, run, mk("r", "c", NS_SCHEDULED, 3));
    put(c, run, mk("r", "b", NS_COMPLETED, 4));
    for (int i = 0; i < 40; i++) { /* and enough more to grow the table */
        char id[8];
        snprintf(id, sizeof id, "z%02d", i);
        put(c, run, mk("r", id, NS_IDLE, 5 + i));
    }
    n = cache_run_collect(run, ALL_STATUSES, "a", 3, out, &more);
    cr_assert_eq(n, 3);
    cr_assert_str_eq(out[0]->node_id, "b");
    cr_assert_eq(out[0]->status, NS_COMPLETED);
    cr_assert_str_eq(out[1]->node_id, "c");
    cr_assert_str_eq(out[2]->node_id, "d");
    cr_assert(more);
    release(out, n);
    n = cache_run_collect(run, 1u << NS_COMPLETED, NULL, 8, out, &more);
    cr_assert_eq(n, 1);
    cr_assert_str_eq(out[0]->node_id, "b");
    cr_assert(!more);
    release(out, n);
    cache_free(c);
}

/* ---- the ordered trees, bytes, partial runs ---- */

static void check_run(const cache_run *run)
{
    char why[256] = "";
    cr_assert_eq(cache_run_check(run, why, sizeof why), 0, "run %s: %s", run->run_id, why);
}

Test(cache, trees_stay_ordered_and_balanced_through_sequential_inserts)
{
    cache *c = new_cache();
    cache_run *run = add_run(c, "r");
    char id[16];
    /* Ascending keys are the worst case of an unbalanced tree. */
    for (int i = 0; i < 20000; i++) {
        snprintf(id, sizeof id, "n%06d", i);
        put(c, run, mk("r", id, NS_RUNNING, i + 1));
    }
    check_run(run);
    /* Every node moves to another status and so to another tree, descending. */
    for (int i = 19999; i >= 0; i--) {
        snprintf(id, sizeof id, "n%06d", i);
        put(c, run, mk("r", id, i % 2 ? NS_COMPLETED : NS_FAILED, 20001 + i));
    }
    check_run(run);
    cr_assert_eq(run->counts[NS_RUNNING], 0);
    cr_assert_eq(run->counts[NS_COMPLETED], 10000);
    ns_row *out[3];
    bool more;
    long n = cache_run_collect(run, 1u << NS_FAILED, "n010000", 3, out, &more);
    cr_assert_eq(n, 3);
    cr_assert_str_eq(out[0]->node_id, "n010002");
    cr_assert_str_eq(out[2]->node_id, "n010006");
    cr_assert(more);
    release(out, n);
    cache_free(c);
}

Test(cache, bytes_follow_every_row)
{
    cache *c = new_cache();
    cr_assert_eq(cache_bytes(c), 0);
    cache_run *run = add_run(c, "r");
    ns_row *a = mk("r", "a", NS_RUNNING, 1);
    size_t a_bytes = cache_row_bytes(a);
    cr_assert_gt(a_bytes, sizeof(ns_row) + 4, "the row, its ids and the entry");
    put(c, run, a);
    cr_assert_eq(cache_bytes(c), a_bytes);
    cr_assert_eq(run->bytes, a_bytes);

    /* A bigger replacement counts its outputs and error, and only once. */
    ns_row d;
    memset(&d, 0, sizeof d);
    d.run_id = "r";
    d.node_id = "a";
    d.status = NS_COMPLETED;
    d.attempt = 1;
    for (int i = 0; i < NS_TS_COUNT; i++)
        d.ts[i] = NS_TS_NULL;
    char big[5000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    d.outputs = big;
    d.last_error = "boom";
    ns_row *a2 = model_row_copy(&d);
    cr_assert_not_null(a2);
    size_t a2_bytes = cache_row_bytes(a2);
    cr_assert_eq(a2_bytes, a_bytes + sizeof big + 5);
    put(c, run, a2);
    cr_assert_eq(cache_bytes(c), a2_bytes);
    cache_run *other = add_run(c, "o");
    ns_row *x = mk("o", "x", NS_IDLE, 2);
    size_t x_bytes = cache_row_bytes(x);
    put(c, other, x);
    cr_assert_eq(cache_bytes(c), a2_bytes + x_bytes);
    check_run(run);
    cache_run_clear(c, run);
    cr_assert_eq(cache_bytes(c), x_bytes);
    cr_assert_eq(run->bytes, 0);
    cache_run_remove(c, other);
    cr_assert_eq(cache_bytes(c), 0);
    cache_free(c);
}

Test(cache, runs_start_partial_and_clearing_completes_them)
{
    cache *c = new_cache();
    cache_run *run = add_run(c, "r");
    cr_assert_not(run->complete, "a new cached run holds only what is put in it");
    put(c, run, mk("r", "a", NS_RUNNING, 1));
    cache_run_clear(c, run);
    cr_assert(run->complete, "an emptied run is known to have no nodes");
    cache_free(c);
}

Test(cache, adopt_merges_with_cached_rows_winning)
{
    cache *c = new_cache();
    cache_run *other = add_run(c, "o");
    put(c, other, mk("o", "x", NS_IDLE, 1));
    cache_run *run = add_run(c, "r");
    /* Cached (newer than disk): b moved on to completed, z is new. */
    ns_row *b_new = mk("r", "b", NS_COMPLETED, 50);
    put(c, run, b_new);
    put(c, run, mk("r", "z", NS_SCHEDULED, 51));
    /* Loaded from disk: a, b (still running), c. */
    cache_run *loaded = cache_run_new("r");
    cr_assert_not_null(loaded);
    cr_assert_eq(cache_node_put(NULL, loaded, mk("r", "a", NS_RUNNING, 10)), 0);
    cr_assert_eq(cache_node_put(NULL, loaded, mk("r", "b", NS_RUNNING, 11)), 0);
    cr_assert_eq(cache_node_put(NULL, loaded, mk("r", "c", NS_FAILED, 12)), 0);
    check_run(loaded);
    cr_assert_eq(cache_run_adopt(c, run, loaded), 0);
    cr_assert(run->complete);
    check_run(run);
    cr_assert_eq(run->nodes, 4);
    cr_assert_eq(cache_nodes(c), 5);
    cr_assert_eq(cache_node_get(run, "b"), b_new, "the cached row wins");
    cr_assert_eq(atomic_load(&b_new->refs), 1, "one reference, the cache's");
    cr_assert_eq(run->counts[NS_RUNNING], 1);
    cr_assert_eq(run->counts[NS_COMPLETED], 1);
    cr_assert_eq(run->last_seq, 51);
    size_t bytes = cache_row_bytes(cache_node_get(other, "x"));
    ns_row *out[8];
    bool more;
    long n = cache_run_collect(run, ALL_STATUSES, NULL, 8, out, &more);
    cr_assert_eq(n, 4);
    static const char *const want[] = { "a", "b", "c", "z" };
    for (long i = 0; i < n; i++) {
        cr_assert_str_eq(out[i]->node_id, want[i]);
        bytes += cache_row_bytes(out[i]);
    }
    release(out, n);
    cr_assert_eq(cache_bytes(c), bytes);
    /* Still usable as an ordinary run afterwards. */
    put(c, run, mk("r", "b", NS_COMPLETED, 60));
    put(c, run, mk("r", "bb", NS_RUNNING, 61));
    check_run(run);
    cache_free(c);
}

/*
 * Randomized: runs of a small node universe under random puts (new nodes,
 * replacements with and without a status change), clears, removals (as a
 * delete or an eviction does), evictions of the least recently used run and
 * adoptions of "disk" copies, each checked against a plain model: every
 * structure check passes, and every listing (random mask, cursor and limit)
 * matches the model sorted by node_id.
 */
enum { RND_RUNS = 4, RND_NODES = 300, RND_OPS = 40000 };

typedef struct model_node {
    bool present;
    ns_status status;
    int64_t seq;
} model_node;

static uint64_t rnd_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(uint32_t n)
{
    /* xorshift64*: reproducible, so a failure names the same sequence again. */
    rnd_state ^= rnd_state >> 12;
    rnd_state ^= rnd_state << 25;
    rnd_state ^= rnd_state >> 27;
    return (uint32_t)((rnd_state * 2685821657736338717ull) >> 33) % n;
}

static void rnd_node_id(char *id, size_t n, int k)
{
    /* Varying lengths, so order is not the numbers' order. */
    snprintf(id, n, "n%d", k * 7919 % 1000);
}

static void check_against_model(cache_run *run, const model_node *m)
{
    check_run(run);
    /* The model's node ids, sorted. */
    char ids[RND_NODES][16];
    int order[RND_NODES], n_order = 0;
    for (int k = 0; k < RND_NODES; k++) {
        rnd_node_id(ids[k], sizeof ids[k], k);
        if (m[k].present)
            order[n_order++] = k;
    }
    for (int i = 1; i < n_order; i++)
        for (int j = i; j > 0 && strcmp(ids[order[j - 1]], ids[order[j]]) > 0; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    cr_assert_eq(run->nodes, (size_t)n_order);
    unsigned mask = rnd(1u << NS_STATUS_COUNT);
    size_t limit = 1 + rnd(40);
    const char *after = NULL;
    char cursor[16];
    if (rnd(2)) {
        rnd_node_id(cursor, sizeof cursor, (int)rnd(RND_NODES));
        after = cursor;
    }
    ns_row *out[40];
    bool more;
    long got = cache_run_collect(run, mask, after, limit, out, &more);
    size_t want = 0;
    bool want_more = false;
    for (int i = 0; i < n_order; i++) {
        int k = order[i];
        if (!(mask & (1u << m[k].status)) || (after && strcmp(ids[k], after) <= 0))
            continue;
        if (want == limit) {
            want_more = true;
            break;
        }
        cr_assert_lt(want, (size_t)got, "listing of %s ends early at %zu", run->run_id, want);
        cr_assert_str_eq(out[want]->node_id, ids[k]);
        cr_assert_eq(out[want]->status, m[k].status);
        cr_assert_eq(out[want]->seq, m[k].seq);
        want++;
    }
    cr_assert_eq((size_t)got, want, "listing of %s: %ld rows, the model has %zu", run->run_id,
                 got, want);
    cr_assert_eq(more, want_more);
    release(out, got);
}

Test(cache, randomized_against_a_model)
{
    cache *c = new_cache();
    static model_node m[RND_RUNS][RND_NODES];
    memset(m, 0, sizeof m);
    char run_id[8], id[16];
    int64_t seq = 0;
    for (int op = 0; op < RND_OPS; op++) {
        int r = (int)rnd(RND_RUNS);
        snprintf(run_id, sizeof run_id, "r%d", r);
        cache_run *run = cache_run_find(c, run_id);
        uint32_t what = rnd(1000);
        if (what < 3 && run) {
            /* A removal: a delete committed, or an eviction; its nodes go with it. */
            cache_run_remove(c, run);
            memset(m[r], 0, sizeof m[r]);
            continue;
        }
        if (what < 6) {
            /* Evicting the least recently used clean nodes, as the engine's bound does. */
            for (int k = 0; k < 20; k++) {
                cache_run *lru = cache_lru_first(c);
                if (!lru)
                    break;
                int lr = lru->run_id[1] - '0';
                for (int x = 0; x < RND_NODES; x++) {
                    rnd_node_id(id, sizeof id, x);
                    if (m[lr][x].present && !cache_node_get(lru, id))
                        cr_assert_fail("model and cache differ before an eviction");
                }
                bool gone = cache_evict_node(c, NULL) == CACHE_EVICTED_RUN;
                for (int x = 0; x < RND_NODES; x++) {
                    rnd_node_id(id, sizeof id, x);
                    if (m[lr][x].present && (gone || !cache_node_get(lru, id)))
                        m[lr][x].present = false;
                }
                if (!gone)
                    check_against_model(lru, m[lr]);
            }
            continue;
        }
        if (!run)
            run = add_run(c, run_id);
        if (what < 9) {
            /* A delete empties the run, in place or handing its rows over. */
            if (rnd(2)) {
                cache_run_clear(c, run);
            } else {
                cache_run *gone = cache_run_take(c, run);
                cr_assert_not_null(gone);
                check_run(gone);
                cache_run_free(gone);
            }
            memset(m[r], 0, sizeof m[r]);
        } else if (what < 12) {
            /* Adopting a disk copy: only nodes the run does not hold yet come from it. */
            cache_run *loaded = cache_run_new(run_id);
            cr_assert_not_null(loaded);
            for (int k = 0; k < RND_NODES; k++) {
                if (rnd(4))
                    continue;
                rnd_node_id(id, sizeof id, k);
                ns_status s = (ns_status)rnd(NS_STATUS_COUNT);
                cr_assert_eq(cache_node_load(NULL, loaded, mk(run_id, id, s, ++seq)), 0);
                if (!m[r][k].present)
                    m[r][k] = (model_node){ true, s, seq };
            }
            cr_assert_eq(cache_run_adopt(c, run, loaded), 0);
            cr_assert(run->complete);
        } else {
            int k = (int)rnd(RND_NODES);
            rnd_node_id(id, sizeof id, k);
            ns_status s = (ns_status)rnd(NS_STATUS_COUNT);
            ns_row *row = mk(run_id, id, s, ++seq);
            uint32_t how = rnd(4);
            if (how == 0) {
                cr_assert_eq(cache_node_load(c, run, row), 0); /* read from disk */
            } else {
                put(c, run, row);
                if (how == 1)
                    cache_node_settle(c, run, row); /* its write committed */
            }
            m[r][k] = (model_node){ true, s, seq };
            if (rnd(3) == 0)
                cache_touch(c, run);
        }
        if (op % 97 == 0 || what < 12)
            check_against_model(run, m[r]);
    }
    /* Every run, and the cache's totals, at the end. */
    size_t nodes = 0, bytes = 0;
    for (int r = 0; r < RND_RUNS; r++) {
        snprintf(run_id, sizeof run_id, "r%d", r);
        cache_run *run = cache_run_find(c, run_id);
        if (!run) {
            for (int k = 0; k < RND_NODES; k++)
                cr_assert_not(m[r][k].present, "%s gone but the model has nodes", run_id);
            continue;
        }
        check_against_model(run, m[r]);
        nodes += run->nodes;
        bytes += run->bytes;
    }
    cr_assert_eq(cache_nodes(c), nodes);
    cr_assert_eq(cache_bytes(c), bytes);
    cache_free(c);
}

Test(cache, take_empties_the_run_and_hands_its_rows_over)
{
    cache *c = new_cache();
    cache_run *other = add_run(c, "o");
    put(c, other, mk("o", "x", NS_IDLE, 1));
    cache_run *run = add_run(c, "r");
    char id[16];
    for (int i = 0; i < 100; i++) {
        snprintf(id, sizeof id, "n%03d", i);
        put(c, run, mk("r", id, (ns_status)(i % NS_STATUS_COUNT), i + 2));
    }
    ns_row *kept = cache_node_get(run, "n042");
    model_row_ref(kept);
    size_t bytes = run->bytes;
    cache_run *gone = cache_run_take(c, run);
    cr_assert_not_null(gone);
    check_run(run);
    check_run(gone);
    cr_assert_eq(run->nodes, 0);
    cr_assert(run->complete, "an emptied run is known to have no nodes");
    cr_assert_eq(cache_run_find(c, "r"), run, "the run itself stays");
    cr_assert_null(cache_node_get(run, "n042"));
    cr_assert_eq(gone->nodes, 100);
    cr_assert_eq(gone->bytes, bytes);
    cr_assert_eq(cache_node_get(gone, "n042"), kept);
    cr_assert_eq(cache_nodes(c), 1);
    cr_assert_eq(cache_bytes(c), other->bytes);
    cr_assert_eq(cache_removals(c), 0, "taking is not a removal");
    cache_run_free(gone);
    cr_assert_eq(atomic_load(&kept->refs), 1, "freeing what was taken drops its rows");
    model_row_unref(kept);
    /* The run is usable again. */
    put(c, run, mk("r", "n042", NS_RUNNING, 200));
    check_run(run);
    cr_assert_eq(cache_nodes(c), 2);
    cache_free(c);
}
