/*
 * Unit tests for the store's fault injection (the NODESTATE_FAULTS build of
 * the core, linked here as nodestate_core_faults): reading the
 * NODESTATE_FAULTS variable at store_open, injected commit failures that
 * roll back and count down, "after=", and "row=" isolating one node.
 *
 * Criterion runs each test in its own process, so setenv in one test does
 * not leak into the next.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache.h"
#include "engine_batch.h"
#include "engine_internal.h"
#include "model.h"
#include "sqlite_internal.h" /* STORE_WAL_SOFT_FRAMES, STORE_WAL_HARD_FRAMES */
#include "store.h"
#include "store_fixture.h"
#include "writer_blocker.h"

static void setup(void)
{
    sfx_setup("test_store_faults");
    cr_assert(unsetenv("NODESTATE_FAULTS") == 0);
}

TestSuite(faults, .init = setup, .fini = sfx_teardown);

static store *open_with(const char *spec)
{
    char err[512] = "";
    store *s;

    cr_assert(setenv("NODESTATE_FAULTS", spec, 1) == 0);
    s = store_open(sfx_db_path(), false, err, sizeof err);
    cr_assert(s != NULL, "store_open with NODESTATE_FAULTS=\"%s\": %s", spec,
              err);
    return s;
}

/* Writes one row of run "r"; returns store_write's result. */
static int write_one(store *s, const char *node, int64_t seq)
{
    ns_row a = sfx_draft("r", node, NS_RUNNING, seq);
    ns_row *rows[] = {&a};
    store_batch b = {.rows = rows, .n_rows = 1, .last_seq = seq};

    return store_write(s, &b);
}

static int count_row(void *ctx, ns_row *row)
{
    int *n = ctx;

    model_row_unref(row);
    (*n)++;
    return 0;
}

/* How many rows of run "r" are in the file. */
static int count_rows(void)
{
    store_reader *r = sfx_open_reader();
    int n = 0;

    cr_assert(eq(int, store_reader_load_run(r, "r", false, count_row, &n, NULL), 0));
    store_reader_close(r);
    return n;
}

Test(faults, unset_or_empty_injects_nothing)
{
    store *s = open_with("");

    for (int i = 1; i <= 3; i++)
        cr_assert(eq(int, write_one(s, "a", i), 0), "%s", store_errmsg(s));
    store_close(s);
}

Test(faults, a_spec_it_cannot_read_fails_open_and_names_the_variable)
{
    static const char *const bad[] = {
        "bogus=1",      "commit=busy",   "commit=nope:1", "commit=busy:0",
        "commit=busy:x", "commit=busy:-1", "after=-1",     "after=",
        "row=",          "row=no spaces", "commit=busy:1,", ",row=a",
        "commit",
        /* more row= entries than it keeps */
        "row=a,row=b,row=c,row=d,row=e,row=f,row=g,row=h,row=i",
    };

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[512] = "";

        cr_assert(setenv("NODESTATE_FAULTS", bad[i], 1) == 0);
        cr_assert(store_open(sfx_db_path(), false, err, sizeof err) == NULL,
                  "accepted \"%s\"", bad[i]);
        cr_assert(strstr(err, "NODESTATE_FAULTS") != NULL, "err: %s", err);
        cr_assert(strstr(err, sfx_db_path()) != NULL, "err: %s", err);
        cr_assert(access(sfx_db_path(), F_OK) != 0,
                  "a refused spec must not create the file (\"%s\")", bad[i]);
    }
}

Test(faults, commit_busy_fails_n_writes_then_lets_them_through)
{
    store *s = open_with("commit=busy:2");

    cr_assert(eq(int, write_one(s, "a", 1), -1));
    cr_assert(eq(str, (char *)store_errmsg(s),
                 "commit: database is locked (injected fault)"));
    cr_assert(eq(int, write_one(s, "a", 2), -1));
    cr_assert(eq(i64, store_last_seq(s), 0));
    cr_assert(eq(int, count_rows(), 0), "an injected failure rolls back");

    cr_assert(eq(int, write_one(s, "a", 3), 0), "%s", store_errmsg(s));
    cr_assert(eq(str, (char *)store_errmsg(s), ""));
    cr_assert(eq(i64, store_last_seq(s), 3));
    cr_assert(eq(int, count_rows(), 1));
    cr_assert(eq(int, write_one(s, "b", 4), 0), "the count is used up");
    store_close(s);
}

Test(faults, commit_ioerr_and_full_say_so)
{
    store *s = open_with("commit=ioerr:1");

    cr_assert(eq(int, write_one(s, "a", 1), -1));
    cr_assert(eq(str, (char *)store_errmsg(s),
                 "commit: disk I/O error (injected fault)"));
    cr_assert(eq(int, write_one(s, "a", 2), 0), "%s", store_errmsg(s));
    store_close(s);

    s = open_with("commit=full:1");
    cr_assert(eq(int, write_one(s, "a", 3), -1));
    cr_assert(eq(str, (char *)store_errmsg(s),
                 "commit: database or disk is full (injected fault)"));
    cr_assert(eq(int, write_one(s, "a", 4), 0), "%s", store_errmsg(s));
    store_close(s);
}

Test(faults, after_delays_the_faults)
{
    store *s = open_with("after=2,commit=busy:1");

    cr_assert(eq(int, write_one(s, "a", 1), 0), "%s", store_errmsg(s));
    cr_assert(eq(int, write_one(s, "a", 2), 0), "%s", store_errmsg(s));
    cr_assert(eq(int, write_one(s, "a", 3), -1));
    cr_assert(strstr(store_errmsg(s), "injected") != NULL);
    cr_assert(eq(int, write_one(s, "a", 4), 0), "%s", store_errmsg(s));
    cr_assert(eq(i64, store_last_seq(s), 4));
    store_close(s);
}

Test(faults, row_fault_isolates_that_node_every_time)
{
    store *s = open_with("row=bad,row=worse");
    sfx_isolated iso = {0};
    ns_row a = sfx_draft("r", "a", NS_RUNNING, 1);
    ns_row bad = sfx_draft("r", "bad", NS_RUNNING, 2);
    ns_row c = sfx_draft("r", "c", NS_RUNNING, 3);
    ns_row worse = sfx_draft("r", "worse", NS_RUNNING, 4);
    ns_row *rows[] = {&a, &bad, &c, &worse};
    store_batch b = {.rows = rows, .n_rows = 4, .last_seq = 4,
                     .on_isolated = sfx_on_isolated, .isolated_ctx = &iso};

    cr_assert(eq(int, store_write(s, &b), 0), "%s", store_errmsg(s));
    cr_assert(eq(sz, b.n_isolated, 2));
    cr_assert(eq(sz, iso.n, 2));
    cr_assert(iso.rows[0] == &bad);
    cr_assert(iso.rows[1] == &worse);
    cr_assert(strstr(iso.why[0], "injected") != NULL, "why: %s", iso.why[0]);
    cr_assert(eq(int, count_rows(), 2));
    cr_assert(eq(i64, store_last_seq(s), 4));

    /* Not once: every upsert of that node. */
    iso.n = 0;
    cr_assert(eq(int, store_write(s, &b), 0), "%s", store_errmsg(s));
    cr_assert(eq(sz, iso.n, 2));
    cr_assert(eq(int, count_rows(), 2));
    store_close(s);
}

Test(faults, a_failed_commit_reports_no_isolated_rows)
{
    store *s = open_with("commit=busy:1,row=bad");
    sfx_isolated iso = {0};
    ns_row a = sfx_draft("r", "a", NS_RUNNING, 1);
    ns_row bad = sfx_draft("r", "bad", NS_RUNNING, 2);
    ns_row *rows[] = {&a, &bad};
    store_batch b = {.rows = rows, .n_rows = 2, .last_seq = 2,
                     .on_isolated = sfx_on_isolated, .isolated_ctx = &iso};

    cr_assert(eq(int, store_write(s, &b), -1));
    cr_assert(eq(sz, iso.n, 0));
    cr_assert(eq(sz, b.n_isolated, 0));
    cr_assert(eq(int, count_rows(), 0));

    cr_assert(eq(int, store_write(s, &b), 0), "%s", store_errmsg(s));
    cr_assert(eq(sz, iso.n, 1),
              "reported once, by the commit that left it out");
    cr_assert(eq(int, count_rows(), 1));
    store_close(s);
}

/*
 * A row the database refused (here: isolated) is not stored, so it must not
 * stay cached and be served (as durable: its seq is below durable_seq) or
 * judged against. cache_node_forget spares a node whose run a batch holds
 * (engine_batch_submit's load_nodes, reading another node of the run
 * without the lock); the node is then settled clean with the refused row
 * and stays while the batch's own queued writes keep the (stale) run
 * cached. The hold and the batch's write are made by hand here, as
 * load_nodes and the batch's enqueue would leave them.
 */
Test(faults, a_refused_row_does_not_stay_cached_after_a_batch_held_its_run)
{
    cr_assert(setenv("NODESTATE_FAULTS", "row=bad", 1) == 0);
    engine *e = sfx_open_engine();
    sfx_accept(e, "r", "ok", NS_RUNNING);
    ns_update u = sfx_update(NS_RUNNING, 0);
    ns_row *row = NULL;
    cr_assert_eq(engine_submit(e, "r", "bad", &u, &row), ENGINE_ACCEPTED);
    int64_t bad_seq = row->seq;
    model_row_unref(row);

    /* A batch of run r holds and pins it while it reads a node without the lock... */
    lockcheck_lock(&e->lock);
    cache_run *run = cache_run_find(e->cache, "r");
    cr_assert_not_null(run);
    cache_pin(e->cache, run);
    cache_hold(run);
    lockcheck_unlock(&e->lock);
    /* ...meanwhile the writer commits, and the database refuses "bad". */
    engine_flush_soon(e);
    for (int i = 0; i < 3000 && engine_durable_seq(e) < bad_seq; i++)
        sfx_sleep_ms(10);
    cr_assert_geq(engine_durable_seq(e), bad_seq, "no commit");
    cr_assert_eq(engine_refused(e, bad_seq), ENGINE_REFUSED_ISOLATED);
    /* The batch queues its write of another node of r, then lets go of the run. */
    sfx_accept(e, "r", "other", NS_RUNNING);
    lockcheck_lock(&e->lock);
    cache_release(run);
    if (cache_unpin(e->cache, run))
        engine_run_drop_if_idle(e, run);
    lockcheck_unlock(&e->lock);

    engine_result res = ENGINE_ERROR;
    ns_row *got = engine_get(e, "r", "bad", &res);
    cr_assert_null(got, "the refused row (seq %lld, %s) is served as the node's state",
                   (long long)bad_seq, got ? model_status_name(got->status) : "");
    cr_assert_eq(res, ENGINE_NOT_FOUND);
    cr_assert_eq(engine_close(e), 0);
}

/*
 * A batch whose items span two commits is answered (its wait on the top
 * seq resumed, or found durable) only at the second; engine_refused must
 * still know the seq the first commit refused. Refusals are now forgotten
 * REFUSED_KEEP_NS (60 s) after they happen, measured from the refusing
 * commit, not from when the batch's waiter is resumed: when the second
 * commit comes more than a minute later (the database failing meanwhile:
 * commits are retried without end; --max-wait may be far above 60 s), the
 * pruning at that very commit drops the refusal before the waiter asks,
 * and the item is answered "accepted", durable, though it is not stored.
 * The minute is simulated by ageing the remembered refusal while the
 * writer is parked between the two commits (writer_blocker).
 */
Test(faults, a_batch_spanning_commits_still_learns_of_a_refusal_a_minute_old)
{
    cr_assert(setenv("NODESTATE_FAULTS", "row=bad", 1) == 0);
    engine *e = sfx_open_engine(); /* batch_size 1000 */
    enum { N = 1001 };
    static char ids[N][16];
    static engine_batch_item items[N];
    static engine_batch_result results[N];
    ns_update u = sfx_update(NS_RUNNING, 0);
    snprintf(ids[0], sizeof ids[0], "bad");
    for (int i = 1; i < N; i++)
        snprintf(ids[i], sizeof ids[i], "n%04d", i);
    for (int i = 0; i < N; i++)
        items[i] = (engine_batch_item){ ids[i], &u };
    blocker b;
    blocker_arm(e, &b);
    cr_assert_eq(engine_batch_submit(e, "r", items, N, results), ENGINE_ACCEPTED);
    int64_t bad_seq = results[0].seq, top = results[N - 1].seq;
    cr_assert_eq(results[0].res, ENGINE_ACCEPTED);
    /* The first commit (1000 ops, "bad" among them) is done; the last item is still queued. */
    cr_assert(blocker_wait(e, &b), "the writer never committed");
    cr_assert_geq(engine_durable_seq(e), bad_seq);
    cr_assert_lt(engine_durable_seq(e), top);
    cr_assert_eq(engine_refused(e, bad_seq), ENGINE_REFUSED_ISOLATED);
    /* More than a minute passes before the next commit. */
    lockcheck_lock(&e->lock);
    for (size_t i = 0; i < atomic_load(&e->n_refused); i++)
        e->refused[i].at_ns -= REFUSED_KEEP_NS + 1000000000ll;
    lockcheck_unlock(&e->lock);
    atomic_store(&b.release, true);
    for (int i = 0; i < 3000 && engine_durable_seq(e) < top; i++) {
        engine_flush_soon(e);
        sfx_sleep_ms(10);
    }
    cr_assert_geq(engine_durable_seq(e), top, "no second commit");
    /* The batch's waiter, resumed by this commit, asks now (api_batch_mark_refused). */
    cr_assert(engine_refused_between(e, bad_seq, top),
              "the batch's refused item (seq %lld) is forgotten by the commit that resumes "
              "its waiter: the batch is answered all accepted and durable",
              (long long)bad_seq);
    cr_assert_eq(engine_refused(e, bad_seq), ENGINE_REFUSED_ISOLATED);
    engine_batch_results_free(results, N);
    cr_assert_eq(engine_close(e), 0);
}

/* What store_on_checkpoint's listener was told, in order. */
typedef struct ckpt_heard {
    pthread_mutex_t mu;
    int calls;
    uint64_t failures[4];
    bool error[4];
    char first_error[256];
} ckpt_heard;

static void on_ckpt(void *ctx, uint64_t failures, const char *error)
{
    ckpt_heard *h = ctx;
    pthread_mutex_lock(&h->mu);
    if (h->calls < 4) {
        h->failures[h->calls] = failures;
        h->error[h->calls] = error != NULL;
    }
    if (h->calls == 0 && error != NULL)
        snprintf(h->first_error, sizeof h->first_error, "%s", error);
    h->calls++;
    pthread_mutex_unlock(&h->mu);
}

static int ckpt_calls(ckpt_heard *h)
{
    pthread_mutex_lock(&h->mu);
    int n = h->calls;
    pthread_mutex_unlock(&h->mu);
    return n;
}

Test(faults, failed_checkpoints_are_told_and_so_is_the_recovery)
{
    enum { PER_COMMIT = 200, MAX_COMMITS = 400 };
    store *s = open_with("checkpoint=2");
    ckpt_heard h = {.mu = PTHREAD_MUTEX_INITIALIZER};
    store_on_checkpoint(s, on_ckpt, &h);
    static char ids[MAX_COMMITS * PER_COMMIT][16];
    static ns_row rows[PER_COMMIT];
    ns_row *ptrs[PER_COMMIT];
    int64_t seq = 0;
    /*
     * Commits of new nodes until the listener has heard two failed rounds
     * and the one that completed after them: every commit past the WAL's
     * soft bound asks the checkpoint thread for a round.
     */
    int commits = 0;
    for (; commits < MAX_COMMITS && ckpt_calls(&h) < 3; commits++) {
        for (int k = 0; k < PER_COMMIT; k++) {
            char *id = ids[commits * PER_COMMIT + k];
            snprintf(id, sizeof ids[0], "n%07d", commits * PER_COMMIT + k);
            rows[k] = sfx_draft("r", id, NS_RUNNING, ++seq);
            ptrs[k] = &rows[k];
        }
        store_batch b = {.rows = ptrs, .n_rows = PER_COMMIT, .last_seq = seq};
        cr_assert(eq(int, store_write(s, &b), 0), "%s", store_errmsg(s));
    }
    /* The last commits' rounds may still be running. */
    for (int i = 0; i < 3000 && ckpt_calls(&h) < 3; i++)
        sfx_sleep_ms(10);
    pthread_mutex_lock(&h.mu);
    cr_assert(eq(int, h.calls, 3), "the listener heard %d calls in %d commits", h.calls,
              commits);
    cr_assert(h.error[0] && h.error[1] && !h.error[2]);
    cr_assert(eq(u64, h.failures[0], 1));
    cr_assert(eq(u64, h.failures[1], 2));
    cr_assert(eq(u64, h.failures[2], 2), "the recovery tells the count so far");
    cr_assert(strstr(h.first_error, "injected") != NULL, "error: %s", h.first_error);
    pthread_mutex_unlock(&h.mu);
    cr_assert(store_wal_frames(s) > 0);
    store_close(s);
    /* Nothing a failed round touched is lost. */
    cr_assert(eq(int, count_rows(), commits * PER_COMMIT));
}

/*
 * A failing checkpoint stays off the commit path: no round completes, so
 * the WAL passes twice the hard bound (20,000 frames), from where a commit
 * would run a round of its own inside its COMMIT, on the writer's thread
 * (with a real error, syncing the WAL and copying pages before failing).
 * While rounds fail, the commits only ask. (Found by a review.)
 */
typedef struct ckpt_threads {
    pthread_mutex_t mu;
    pthread_t writer;
    int on_writer, elsewhere;
} ckpt_threads;

static void on_ckpt_thread(void *ctx, uint64_t failures, const char *error)
{
    ckpt_threads *t = ctx;
    (void)failures;
    (void)error;
    pthread_mutex_lock(&t->mu);
    if (pthread_equal(pthread_self(), t->writer))
        t->on_writer++;
    else
        t->elsewhere++;
    pthread_mutex_unlock(&t->mu);
}

/* One commit of nodes first, first+stride, ... (SPREAD of them) of ids, new rows above *seq. */
static void write_spread(store *s, char (*ids)[16], ns_row *rows, ns_row **ptrs, int first,
                         int stride, int spread, int64_t *seq)
{
    for (int k = 0; k < spread; k++) {
        rows[k] = sfx_draft("r", ids[first % stride + k * stride], NS_RUNNING, ++*seq);
        ptrs[k] = &rows[k];
    }
    store_batch b = {.rows = ptrs, .n_rows = (size_t)spread, .last_seq = *seq};
    cr_assert(eq(int, store_write(s, &b), 0), "%s", store_errmsg(s));
}

static int failed_elsewhere(ckpt_threads *t)
{
    pthread_mutex_lock(&t->mu);
    int n = t->elsewhere;
    pthread_mutex_unlock(&t->mu);
    return n;
}

Test(faults, a_failing_checkpoint_costs_no_commit_a_round)
{
    enum { NODES = 50000, SPREAD = 200, AFTER = 20, SOFT = STORE_WAL_SOFT_FRAMES,
           TWICE_HARD = 2 * STORE_WAL_HARD_FRAMES };
    store *s = open_with("checkpoint=1000000");
    ckpt_threads t = {.mu = PTHREAD_MUTEX_INITIALIZER, .writer = pthread_self()};
    store_on_checkpoint(s, on_ckpt_thread, &t);
    static char ids[NODES][16];
    static ns_row rows[NODES];
    static ns_row *ptrs[NODES];
    int64_t seq = 0;
    for (int i = 0; i < NODES; i++) {
        snprintf(ids[i], sizeof ids[i], "n%06d", i);
        rows[i] = sfx_draft("r", ids[i], NS_RUNNING, ++seq);
        ptrs[i] = &rows[i];
    }
    store_batch all = {.rows = ptrs, .n_rows = NODES, .last_seq = seq};
    cr_assert(eq(int, store_write(s, &all), 0), "%s", store_errmsg(s));
    /*
     * Commits that each touch SPREAD pages: first past the soft bound
     * (STORE_WAL_SOFT_FRAMES), so the thread is asked, and until it has
     * failed a round (the very first failure may be anyone's, and a busy
     * machine may not run the thread at once: waited for, bounded); then
     * past twice the hard bound (STORE_WAL_HARD_FRAMES), and AFTER more.
     */
    int stride = NODES / SPREAD, j = 0, extra = 0;
    for (int i = 0; i < 3000 && failed_elsewhere(&t) == 0; i++) {
        if (store_wal_frames(s) < SOFT)
            write_spread(s, ids, rows, ptrs, j++, stride, SPREAD, &seq);
        else
            sfx_sleep_ms(10);
    }
    cr_assert(failed_elsewhere(&t) > 0, "the checkpoint thread failed no round");
    for (int commits = 0; extra < AFTER && commits < 2000; commits++) {
        if (store_wal_frames(s) >= TWICE_HARD)
            extra++;
        write_spread(s, ids, rows, ptrs, j++, stride, SPREAD, &seq);
    }
    cr_assert(eq(int, extra, AFTER), "the WAL never reached %d frames (%lld)", TWICE_HARD,
              (long long)store_wal_frames(s));
    pthread_mutex_lock(&t.mu);
    int on_writer = t.on_writer, elsewhere = t.elsewhere;
    pthread_mutex_unlock(&t.mu);
    store_close(s);
    cr_assert(eq(int, on_writer, 0),
              "%d failed rounds ran inside store_write (the last %d commits past %d frames), "
              "%d on the checkpoint thread", on_writer, AFTER, TWICE_HARD, elsewhere);
}
