/*
 * Unit tests for engine_batch, on a real SQLite file and the real writer:
 * items judged in order as if submitted alone (an earlier item of the same
 * node counts), per-item results, counters, consecutive seqs; capacity all
 * or nothing, in entries and in bytes, with the queue held full by a parked
 * writer; a write to an uncached run reading only the nodes it touches; and
 * every accepted item on disk after engine_close.
 *
 * No assertion depends on timing: the writer is parked (writer_blocker) or
 * flushed on demand, and waits poll with a generous bound.
 */
#include <criterion/criterion.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "store_fixture.h"
#include "writer_blocker.h"
#include "engine.h"
#include "engine_batch.h"
#include "model.h"

static void setup(void)
{
    sfx_setup("test_engine_batch");
}

TestSuite(engine_batch, .init = setup, .fini = sfx_teardown, .timeout = 120);

static engine *open_cfg(size_t batch_size, double interval, size_t capacity, size_t max_bytes)
{
    engine_config c = {
        .db_path = sfx_db_path(),
        .batch_size = batch_size,
        .batch_interval = interval,
        .queue_capacity = capacity,
        .queue_max_bytes = max_bytes,
        .shutdown_timeout = 10,
    };
    char err[512] = "";
    engine *e = engine_open(&c, err, sizeof err);
    cr_assert_not_null(e, "engine_open: %s", err);
    return e;
}


static ns_row *get(engine *e, const char *run, const char *node)
{
    engine_result r;
    ns_row *row = engine_get(e, run, node, &r);
    cr_assert_not_null(row, "%s/%s not found (%d)", run, node, r);
    return row;
}

static void single(engine *e, const char *run, const char *node, ns_status s)
{
    ns_update u = sfx_update(s, 0);
    ns_row *out = NULL;
    cr_assert_eq(engine_submit(e, run, node, &u, &out), ENGINE_ACCEPTED, "%s/%s", run, node);
    model_row_unref(out);
}

static int64_t db_count(const char *run)
{
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open_v2(sfx_db_path(), &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    cr_assert_eq(sqlite3_prepare_v2(db, "SELECT count(*) FROM run_node_state WHERE run_id = ?",
                                    -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_text(st, 1, run, -1, SQLITE_STATIC);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    int64_t n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

Test(engine_batch, items_apply_in_order_as_if_alone)
{
    engine *e = open_cfg(1000, 60, 10000, 0);
    ns_stats *st = engine_stats(e);
    single(e, "r", "done", NS_COMPLETED);
    ns_update sched = sfx_update(NS_SCHEDULED, 0), run = sfx_update(NS_RUNNING, 0), run2 = sfx_update(NS_RUNNING, 2);
    ns_update stale = sfx_update(NS_RUNNING, 1), back = sfx_update(NS_SCHEDULED, 0);
    engine_batch_item items[] = {
        { "a", &sched },   /* new node: applies */
        { "a", &run },     /* after the item above: applies */
        { "a", &back },    /* rank goes down: illegal */
        { "a", &run },     /* same as the second: duplicate of it */
        { "done", &back }, /* a terminal node: illegal */
        { "b", &run2 },    /* attempt 2 */
        { "b", &stale },   /* attempt 1 after 2: stale */
    };
    enum { N = sizeof items / sizeof *items };
    engine_batch_result res[N];
    cr_assert_eq(engine_batch_submit(e, "r", items, N, res), ENGINE_ACCEPTED);
    engine_result want[N] = { ENGINE_ACCEPTED, ENGINE_ACCEPTED, ENGINE_ILLEGAL,
                              ENGINE_DUPLICATE, ENGINE_ILLEGAL, ENGINE_ACCEPTED, ENGINE_STALE };
    for (int i = 0; i < N; i++)
        cr_assert_eq(res[i].res, want[i], "item %d: %d", i, res[i].res);
    /* Consecutive seqs after the single update's 1, in item order. */
    cr_assert_eq(res[0].seq, 2);
    cr_assert_eq(res[1].seq, 3);
    cr_assert_eq(res[3].seq, 3, "a duplicate of an earlier item has that item's seq");
    cr_assert_eq(res[5].seq, 4);
    /* A refusal carries the row it was judged against: the batch's own, if any. */
    cr_assert_not_null(res[2].current);
    cr_assert_eq(res[2].current->status, NS_RUNNING);
    cr_assert_eq(res[2].current->seq, 3);
    cr_assert_eq(res[6].current->attempt, 2);
    cr_assert_eq(res[4].current->status, NS_COMPLETED);
    cr_assert_null(res[0].current);
    engine_batch_results_free(res, N);

    ns_row *g = get(e, "r", "a");
    cr_assert_eq(g->status, NS_RUNNING);
    cr_assert_eq(g->seq, 3);
    model_row_unref(g);
    cr_assert_eq(atomic_load(&st->updates_queued), 4);
    cr_assert_eq(atomic_load(&st->updates_duplicate), 1);
    cr_assert_eq(atomic_load(&st->rejected[NS_REJECT_ILLEGAL]), 2);
    cr_assert_eq(atomic_load(&st->rejected[NS_REJECT_STALE]), 1);
    cr_assert_eq(atomic_load(&st->last_seq), 4);
    cr_assert_eq(engine_close(e), 0);
    cr_assert_eq(db_count("r"), 3);
}

Test(engine_batch, capacity_is_all_or_nothing)
{
    engine *e = open_cfg(1, 0, 4, 0);
    ns_stats *st = engine_stats(e);
    blocker b;
    blocker_arm(e, &b);
    single(e, "w", "blocker", NS_RUNNING);
    cr_assert(blocker_wait(e, &b), "the writer never committed the blocker");
    single(e, "r", "x", NS_SCHEDULED); /* 3 slots left */

    ns_update sched = sfx_update(NS_SCHEDULED, 0), run = sfx_update(NS_RUNNING, 0);
    /* Four would be accepted (x's duplicate takes no slot): nothing is. */
    engine_batch_item items[] = { { "x", &sched }, { "a", &sched }, { "a", &run },
                                  { "b", &sched }, { "x", &run } };
    engine_batch_result res[5];
    int64_t last = atomic_load(&st->last_seq);
    cr_assert_eq(engine_batch_submit(e, "r", items, 5, res), ENGINE_QUEUE_FULL);
    cr_assert_eq(atomic_load(&st->last_seq), last, "a refused batch used seqs");
    cr_assert_eq(atomic_load(&st->queue_depth), 1);
    cr_assert_eq(atomic_load(&st->rejected[NS_REJECT_QUEUE_FULL]), 5, "every item of a refused batch");
    cr_assert_eq(atomic_load(&st->updates_duplicate), 0, "a refused batch counted its items");
    engine_result r;
    cr_assert_null(engine_get(e, "r", "a", &r));
    ns_row *g = get(e, "r", "x");
    cr_assert_eq(g->status, NS_SCHEDULED);
    model_row_unref(g);
    /* A new run refused whole is not left in the cache. */
    cr_assert_eq(engine_batch_submit(e, "fresh", items + 1, 4, res), ENGINE_QUEUE_FULL);
    cr_assert_eq(atomic_load(&st->cache_runs), 2, "w and r only");

    /* Three fit exactly. */
    cr_assert_eq(engine_batch_submit(e, "r", items, 4, res), ENGINE_ACCEPTED);
    cr_assert_eq(res[0].res, ENGINE_DUPLICATE);
    cr_assert_eq(atomic_load(&st->queue_depth), 4);
    engine_batch_results_free(res, 4);

    atomic_store(&b.release, true);
    cr_assert_eq(engine_close(e), 0);
    cr_assert_eq(db_count("r"), 3);
}

Test(engine_batch, byte_bound_is_all_or_nothing)
{
    enum { BIG = 256 * 1024, N = 4 };
    /* 1 MiB: three BIG rows fit beside a held op, four do not. */
    engine *e = open_cfg(1, 0, 1000, 1 << 20);
    ns_stats *st = engine_stats(e);
    blocker b;
    blocker_arm(e, &b);
    single(e, "w", "blocker", NS_RUNNING);
    cr_assert(blocker_wait(e, &b), "the writer never committed the blocker");
    single(e, "r", "held", NS_SCHEDULED);

    char *outputs = malloc(BIG);
    cr_assert_not_null(outputs);
    memset(outputs, 'x', BIG - 1);
    outputs[0] = outputs[BIG - 2] = '"';
    outputs[BIG - 1] = '\0';
    ns_update u = sfx_update(NS_RUNNING, 0);
    u.outputs.set = true;
    u.outputs.value = outputs;
    engine_batch_item items[N] = { { "n0", &u }, { "n1", &u }, { "n2", &u }, { "n3", &u } };
    engine_batch_result res[N];
    cr_assert_eq(engine_batch_submit(e, "r", items, N, res), ENGINE_QUEUE_FULL);
    const char *why = NULL;
    cr_assert_not(engine_ready(e, &why), "ready while a batch is refused for bytes");
    cr_assert(strstr(why, "queue-max-bytes") != NULL, "%s", why);
    cr_assert_eq(atomic_load(&st->queue_depth), 1, "slots were free: bytes refused it");
    engine_result r;
    cr_assert_null(engine_get(e, "r", "n0", &r), "a refused batch left a node");
    cr_assert_eq(engine_batch_submit(e, "r", items, 3, res), ENGINE_ACCEPTED);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(res[i].res, ENGINE_ACCEPTED);
    engine_batch_results_free(res, 3);
    free(outputs);

    atomic_store(&b.release, true);
    cr_assert_eq(engine_close(e), 0);
    cr_assert_eq(db_count("r"), 4);
}

Test(engine_batch, an_uncached_run_reads_only_the_nodes_touched)
{
    engine *e = open_cfg(1000, 60, 10000, 0);
    char node[16];
    for (int i = 0; i < 200; i++) {
        snprintf(node, sizeof node, "n%03d", i);
        single(e, "p", node, NS_RUNNING);
    }
    cr_assert_eq(engine_close(e), 0);
    e = open_cfg(1000, 60, 10000, 0);
    ns_stats *st = engine_stats(e);
    cr_assert_eq(atomic_load(&st->cache_nodes), 0);

    ns_update done = sfx_update(NS_COMPLETED, 0), sched = sfx_update(NS_SCHEDULED, 0);
    engine_batch_item items[] = { { "n007", &done }, { "new1", &sched }, { "n100", &sched },
                                  { "new2", &sched } };
    engine_batch_result res[4];
    cr_assert_eq(engine_batch_submit(e, "p", items, 4, res), ENGINE_ACCEPTED);
    cr_assert_eq(res[0].res, ENGINE_ACCEPTED);
    cr_assert_eq(res[1].res, ENGINE_ACCEPTED);
    cr_assert_eq(res[2].res, ENGINE_ILLEGAL, "the stored row was not what it was judged by");
    cr_assert_eq(res[2].current->status, NS_RUNNING);
    cr_assert_eq(res[3].res, ENGINE_ACCEPTED);
    engine_batch_results_free(res, 4);
    /* n007, n100 read; new1, new2 added: not the 200 stored nodes. */
    cr_assert_eq(atomic_load(&st->cache_nodes), 4, "the whole run was read");
    cr_assert_eq(atomic_load(&st->cache_loads), 2);
    cr_assert_eq(engine_close(e), 0);
    cr_assert_eq(db_count("p"), 202);
}

/* A batch's items, their results and room for their node ids, n of each. */
typedef struct batch_arrays {
    engine_batch_item *items;
    engine_batch_result *res;
    char (*ids)[16];
} batch_arrays;

static batch_arrays batch_arrays_new(size_t n)
{
    batch_arrays a = { calloc(n, sizeof *a.items), calloc(n, sizeof *a.res),
                       calloc(n, sizeof *a.ids) };
    cr_assert(a.items && a.res && a.ids);
    return a;
}

static void batch_arrays_free(batch_arrays *a)
{
    free(a->items);
    free(a->res);
    free(a->ids);
}

Test(engine_batch, a_large_batch_reaches_the_file)
{
    enum { N = 5000 };
    engine *e = open_cfg(512, 0.05, 20000, 0);
    batch_arrays a = batch_arrays_new(N);
    engine_batch_item *items = a.items;
    engine_batch_result *res = a.res;
    char (*ids)[16] = a.ids;
    ns_update sched = sfx_update(NS_SCHEDULED, 0);
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "node-%05d", i);
        items[i] = (engine_batch_item){ ids[i], &sched };
    }
    cr_assert_eq(engine_batch_submit(e, "big", items, N, res), ENGINE_ACCEPTED);
    for (int i = 0; i < N; i++)
        cr_assert_eq(res[i].seq, i + 1);
    engine_batch_results_free(res, N);
    cr_assert_eq(engine_close(e), 0);
    cr_assert_eq(db_count("big"), N);
    batch_arrays_free(&a);
}

Test(engine_batch, empty_batch_changes_nothing)
{
    engine *e = open_cfg(1000, 60, 10000, 0);
    engine_batch_result res[1];
    cr_assert_eq(engine_batch_submit(e, "r", NULL, 0, res), ENGINE_ACCEPTED);
    cr_assert_eq(atomic_load(&engine_stats(e)->cache_runs), 0);
    cr_assert_eq(engine_close(e), 0);
}

/* Submits new nodes of one run until told to stop: each submit evicts every clean node past the bound. */
typedef struct churn {
    engine *e;
    _Atomic bool stop;
} churn;

static void *churn_main(void *arg)
{
    churn *c = arg;
    char node[32];
    for (long k = 0; k < 10000000 && !atomic_load(&c->stop); k++) {
        snprintf(node, sizeof node, "c%ld", k);
        ns_update u = sfx_update(NS_RUNNING, 0);
        ns_row *out = NULL;
        engine_submit(c->e, "churn", node, &u, &out); /* a full queue is fine */
        model_row_unref(out);
    }
    return NULL;
}

/*
 * A batch reads the nodes it lacks one by one, dropping the lock each time;
 * a node it read first must still be judged against its stored row even
 * when another writer's eviction runs meanwhile. Every node here is
 * completed on disk, so moving one back to running is illegal: before the
 * batch's run was spared while loading, an evicted node was judged as new
 * and the illegal update accepted.
 */
Test(engine_batch, nodes_read_for_a_batch_are_not_evicted_before_it_is_judged)
{
    enum { RUNS = 400, NODES = 8 };
    char run[32], node[NODES][16];
    for (int j = 0; j < NODES; j++)
        snprintf(node[j], sizeof node[j], "n%d", j);
    engine *e = open_cfg(1000, 60, 100000, 0);
    for (int i = 0; i < RUNS; i++) {
        snprintf(run, sizeof run, "r%d", i);
        for (int j = 0; j < NODES; j++)
            single(e, run, node[j], NS_COMPLETED);
    }
    cr_assert_eq(engine_close(e), 0);

    engine_config c = {
        .db_path = sfx_db_path(),
        .batch_size = 64,
        .batch_interval = 0.001,
        .queue_capacity = 4096,
        .shutdown_timeout = 10,
        .cache_max_nodes = 4,
    };
    char err[512] = "";
    e = engine_open(&c, err, sizeof err);
    cr_assert_not_null(e, "engine_open: %s", err);
    churn ch = { .e = e };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, churn_main, &ch), 0);
    ns_update back = sfx_update(NS_RUNNING, 0);
    engine_batch_item items[NODES];
    for (int j = 0; j < NODES; j++)
        items[j] = (engine_batch_item){ node[j], &back };
    int wrong = -1, wrong_item = -1;
    for (int i = 0; i < RUNS && wrong < 0; i++) {
        snprintf(run, sizeof run, "r%d", i);
        engine_batch_result res[NODES];
        /* Nothing to queue, so never QUEUE_FULL: that answer means an item was applied. */
        engine_result got = engine_batch_submit(e, run, items, NODES, res);
        if (got != ENGINE_ACCEPTED) {
            wrong = i;
            wrong_item = -(int)got;
            continue;
        }
        for (int j = 0; j < NODES && wrong < 0; j++)
            if (res[j].res != ENGINE_ILLEGAL) {
                wrong = i;
                wrong_item = j;
            }
        engine_batch_results_free(res, NODES);
    }
    atomic_store(&ch.stop, true);
    pthread_join(t, NULL);
    engine_close(e);
    cr_assert_eq(wrong, -1, "run r%d item %d (negative: the batch's answer): a completed node judged as new",
                 wrong, wrong_item);
}

/* Polls (bounded, 30 s) until the cache holds at most max nodes; what it holds then. */
static uint64_t cache_nodes_settle(ns_stats *st, uint64_t max)
{
    for (int i = 0; i < 30 * 200 && atomic_load(&st->cache_nodes) > max; i++)
        sfx_sleep_ms(5);
    return atomic_load(&st->cache_nodes);
}

/*
 * Batches of new nodes bigger than one eviction step, all into one run:
 * once written, the cache comes back within its bound by itself (it used
 * to keep step - batch more nodes per batch, forever).
 */
Test(engine_batch, big_batches_into_one_run_leave_the_cache_within_its_bound)
{
    enum { PER = 10000, BATCHES = 4, BOUND = 1000 };
    engine_config c = {
        .db_path = sfx_db_path(), .batch_size = 8192, .batch_interval = 0.001,
        .queue_capacity = 4 * PER, .shutdown_timeout = 10, .cache_max_nodes = BOUND,
    };
    char err[512] = "";
    engine *e = engine_open(&c, err, sizeof err);
    cr_assert_not_null(e, "engine_open: %s", err);
    ns_stats *st = engine_stats(e);
    ns_update sched = sfx_update(NS_SCHEDULED, 0);
    batch_arrays a = batch_arrays_new(PER);
    engine_batch_item *items = a.items;
    engine_batch_result *res = a.res;
    char (*ids)[16] = a.ids;
    for (int b = 0; b < BATCHES; b++) {
        for (int i = 0; i < PER; i++) {
            snprintf(ids[i], sizeof ids[i], "b%d-%05d", b, i);
            items[i] = (engine_batch_item){ ids[i], &sched };
        }
        cr_assert_eq(engine_batch_submit(e, "one", items, PER, res), ENGINE_ACCEPTED);
        int64_t last = res[PER - 1].seq;
        engine_batch_results_free(res, PER);
        for (int i = 0; i < 30 * 200 && engine_durable_seq(e) < last; i++) {
            engine_flush_soon(e);
            sfx_sleep_ms(5);
        }
        cr_assert_geq(engine_durable_seq(e), last);
        uint64_t held = cache_nodes_settle(st, BOUND);
        cr_assert_leq(held, BOUND, "after batch %d the cache holds %llu nodes, nothing queued", b,
                      (unsigned long long)held);
    }
    batch_arrays_free(&a);
    cr_assert_eq(engine_close(e), 0);
    cr_assert_eq(db_count("one"), PER * BATCHES);
}

/*
 * A batch of duplicates reads its nodes to judge them and queues nothing:
 * those nodes, on disk already, must not stay in the cache past its bound
 * (the batch's run was spared by the eviction that followed it).
 */
Test(engine_batch, nodes_read_to_judge_a_batch_leave_within_the_bound)
{
    enum { N = 2500, BOUND = 1000 };
    engine *e = open_cfg(1000, 0.001, 4 * N, 0);
    ns_update sched = sfx_update(NS_SCHEDULED, 0);
    batch_arrays a = batch_arrays_new(N);
    engine_batch_item *items = a.items;
    engine_batch_result *res = a.res;
    char (*ids)[16] = a.ids;
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "n%05d", i);
        items[i] = (engine_batch_item){ ids[i], &sched };
    }
    cr_assert_eq(engine_batch_submit(e, "dup", items, N, res), ENGINE_ACCEPTED);
    engine_batch_results_free(res, N);
    cr_assert_eq(engine_close(e), 0);

    engine_config c = {
        .db_path = sfx_db_path(), .batch_size = 1000, .batch_interval = 0.001,
        .queue_capacity = 4 * N, .shutdown_timeout = 10, .cache_max_nodes = BOUND,
    };
    char err[512] = "";
    e = engine_open(&c, err, sizeof err);
    cr_assert_not_null(e, "engine_open: %s", err);
    ns_stats *st = engine_stats(e);
    cr_assert_eq(engine_batch_submit(e, "dup", items, N, res), ENGINE_ACCEPTED);
    for (int i = 0; i < N; i++)
        cr_assert_eq(res[i].res, ENGINE_DUPLICATE);
    engine_batch_results_free(res, N);
    /* The request's own eviction: nothing was queued, so at once. */
    cr_assert_leq(atomic_load(&st->cache_nodes), BOUND);
    batch_arrays_free(&a);
    cr_assert_eq(engine_close(e), 0);
}
