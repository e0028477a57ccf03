/*
 * it_durable: POST ...?wait=true answers only once the update is committed
 * (200, "durable": true), and waiters parked behind one commit are all
 * acknowledged by the next (group commit; how many acks a commit carries
 * under real load is a speed figure, measured by bench/durable_bench.c). A waiter
 * makes the writer commit within --group-commit-delay instead of waiting out
 * --batch-interval, and waiters arriving meanwhile share that commit;
 * when the database stays locked the wait times out into 202 "durable": false
 * and the update is still written later; GET tells whether a node's last
 * change is durable.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "it_assert.h"

enum {
    WAITERS = 32,
    ROUNDS = 20,            /* durable POSTs per waiter thread */
};
/* Bounds, not expectations. */
#define IDLE_TIMEOUT 30.0

/* Whether a response body says "durable": want. */
static bool body_durable_is(const ns_resp *r, bool want)
{
    json_t *doc = ns_resp_json(r);
    json_t *d = json_object_get(doc, "durable");
    bool ok = want ? json_is_true(d) : json_is_false(d);
    json_decref(doc);
    return ok;
}

/* One thread posting durable updates; results for the main thread to assert. */
typedef struct waiter {
    ns_server *s;
    ns_client *c;
    pthread_barrier_t *start;
    int id;
    int rounds;
    const char *run;
    int acks;                /* 200 with "durable": true */
    int failures;            /* anything else */
    char first_error[512];
} waiter;

static void *waiter_main(void *arg)
{
    waiter *w = arg;
    ns_resp r = { 0 };
    pthread_barrier_wait(w->start);
    for (int i = 0; i < w->rounds; i++) {
        char path[128], body[96];
        snprintf(path, sizeof path, "/runs/%s/nodes/t%02d-%03d/state?wait=true&timeout=25",
                 w->run, w->id, i);
        snprintf(body, sizeof body, "{\"status\":\"running\",\"outputs\":%d}", w->id * 1000 + i);
        int rc = ns_client_req(w->c, "POST", path, body, NULL, &r);
        if (rc == 0 && r.status == 200 && body_durable_is(&r, true)) {
            w->acks++;
            continue;
        }
        if (w->failures++ == 0)
            snprintf(w->first_error, sizeof w->first_error, "%s: %ld %s %s", path, r.status,
                     rc == 0 ? r.body : "", rc == 0 ? "" : r.error);
    }
    ns_resp_free(&r);
    return NULL;
}

/* Runs n waiter threads of rounds POSTs each; returns the total durable acks. */
static int run_waiters(ns_server *s, const char *run, int n, int rounds,
                       void (*while_running)(ns_server *s, void *ctx), void *ctx)
{
    waiter w[WAITERS];
    pthread_t t[WAITERS];
    pthread_barrier_t start;
    cr_assert_leq(n, WAITERS);
    cr_assert_eq(pthread_barrier_init(&start, NULL, (unsigned)n + 1), 0);
    for (int i = 0; i < n; i++) {
        w[i] = (waiter){ .s = s, .start = &start, .id = i, .rounds = rounds, .run = run };
        w[i].c = ns_client_new(s);
        cr_assert_not_null(w[i].c);
        cr_assert_eq(pthread_create(&t[i], NULL, waiter_main, &w[i]), 0);
    }
    pthread_barrier_wait(&start);
    if (while_running != NULL)
        while_running(s, ctx);
    int acks = 0, failures = 0;
    char first[512] = "";
    for (int i = 0; i < n; i++) {
        pthread_join(t[i], NULL);
        ns_client_free(w[i].c);
        acks += w[i].acks;
        if (w[i].failures > 0 && failures == 0)
            snprintf(first, sizeof first, "%s", w[i].first_error);
        failures += w[i].failures;
    }
    pthread_barrier_destroy(&start);
    cr_assert_eq(failures, 0, "%d durable POSTs did not get 200 durable:true; first: %s",
                 failures, first);
    return acks;
}

Test(durable, concurrent_waiters_share_commits)
{
    /* A long interval: every commit here is one a waiter asked for. Under
     * synchronous=full a commit costs an fsync, where sharing one matters. */
    ns_server *s = ns_start("--batch-interval 60 --synchronous full");
    cr_assert_not_null(s);
    long long before = ns_stat(s, "batches_written");
    cr_assert_geq(before, 0);

    int acks = run_waiters(s, "dw", WAITERS, ROUNDS, NULL, NULL);
    cr_assert_eq(acks, WAITERS * ROUNDS);
    long long batches = ns_stat(s, "batches_written") - before;
    cr_log_info("durable: %d acks from %d waiters in %lld commits (%.1f acks/commit)",
                acks, WAITERS, batches, batches > 0 ? (double)acks / (double)batches : 0.0);
    fprintf(stderr, "it_durable: %d durable acks from %d concurrent waiters in %lld commits\n",
            acks, WAITERS, batches);
    cr_assert_gt(batches, 0);
    /* How many acks share a commit depends on how the threads get scheduled:
     * bench/durable_bench.c measures it (acks/commit); the deterministic
     * check of sharing is one_commit_acknowledges_many_parked_waiters. */

    /* Every acknowledged update is in the file, with its value. */
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='dw' AND "
                              "CAST(outputs_json AS INTEGER) = "
                              "CAST(substr(node_id, 2, 2) AS INTEGER) * 1000 + "
                              "CAST(substr(node_id, 5) AS INTEGER)", NULL),
                 WAITERS * ROUNDS);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

Test(durable, concurrent_waiters_under_synchronous_normal)
{
    /* The same under normal, where commits cost no fsync and come quicker
     * than waiters arrive: the group commit delay must not strand any. */
    ns_server *s = ns_start("--batch-interval 60 --synchronous normal");
    cr_assert_not_null(s);
    int acks = run_waiters(s, "dn", WAITERS / 2, ROUNDS / 2, NULL, NULL);
    cr_assert_eq(acks, (WAITERS / 2) * (ROUNDS / 2));
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='dn'", NULL),
                 (WAITERS / 2) * (ROUNDS / 2));
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

/* Posts one durable update from a thread of its own. */
static void *post_one_durable(void *arg)
{
    waiter *w = arg;
    ns_resp r = { 0 };
    int rc = ns_client_req(w->c, "POST", "/runs/gc/nodes/first/state?wait=true&timeout=50",
                           "{\"status\":\"running\"}", NULL, &r);
    if (rc == 0 && r.status == 200 && body_durable_is(&r, true))
        w->acks++;
    else
        snprintf(w->first_error, sizeof w->first_error, "%ld %s %s", r.status,
                 rc == 0 ? r.body : "", rc == 0 ? "" : r.error);
    ns_resp_free(&r);
    return NULL;
}

Test(durable, group_commit_delay_gathers_waiters_into_one_commit)
{
    /*
     * The first waiter's commit waits up to --group-commit-delay (30 s here,
     * far longer than the test needs) for more waiters, or until the batch
     * is full (2 updates): the second waiter fills it, and one commit
     * acknowledges both. Without the delay the first waiter would be
     * committed on its own at once. Nothing here depends on timing: the
     * only way to one commit before 30 s is the second update.
     */
    ns_server *s = ns_start("--batch-interval 60 --batch-size 2 --group-commit-delay 30");
    cr_assert_not_null(s);
    /*
     * First a commit of two updates (a full batch, no waiter): a waiter
     * whose previous commit carried one update at most would be committed
     * at once (see lone_waiters_are_committed_at_once).
     */
    ns_resp r = { 0 };
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(ns_post_state(s, "gc", i ? "pre1" : "pre0", "", "{\"status\":\"running\"}",
                                   &r), 0, "%s", r.error);
        cr_assert_eq(r.status, 202, "%ld %s", r.status, r.body);
        ns_resp_free(&r);
    }
    cr_assert_eq(ns_wait_stat_eq(s, "batches_written", 1, IDLE_TIMEOUT), 0);
    /* Its own client: the server's handle is the main thread's. */
    waiter first = { .s = s, .c = ns_client_new(s) };
    cr_assert_not_null(first.c);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, post_one_durable, &first), 0);
    /* The first is queued (and its waiter asking for the commit) before the second. */
    cr_assert_eq(ns_wait_stat_eq(s, "updates_queued", 3, IDLE_TIMEOUT), 0);
    cr_assert_eq(ns_stat(s, "batches_written"), 1, "the first waiter was committed alone");

    cr_assert_eq(ns_post_state(s, "gc", "second", "?wait=true&timeout=50",
                               "{\"status\":\"running\"}", &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 200, "second waiter: %ld %s", r.status, r.body);
    cr_assert(body_durable_is(&r, true), "%s", r.body);
    ns_resp_free(&r);
    pthread_join(t, NULL);
    ns_client_free(first.c);
    cr_assert_eq(first.acks, 1, "first waiter: %s", first.first_error);
    cr_assert_eq(ns_stat(s, "batches_written"), 2, "two waiters, not one commit");
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='gc'", NULL), 4);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

Test(durable, lone_waiters_are_committed_at_once)
{
    /*
     * One client posting one update at a time: each commit carries that one
     * update, so the next waiter has no one to gather and is not held for
     * --group-commit-delay (30 s here). Each asks to wait 20 s at most: a
     * commit held for the delay would answer 202 "durable": false.
     */
    ns_server *s = ns_start("--batch-interval 60 --group-commit-delay 30");
    cr_assert_not_null(s);
    const char *steps[] = {"{\"status\":\"scheduled\"}", "{\"status\":\"running\"}",
                           "{\"status\":\"completed\"}"};
    for (int i = 0; i < 3; i++) {
        ns_resp r = { 0 };
        cr_assert_eq(ns_post_state(s, "lone", "n", "?wait=true&timeout=20", steps[i], &r), 0, "%s",
                     r.error);
        cr_assert_eq(r.status, 200, "waiter %d: %ld %s", i, r.status, r.body);
        cr_assert(body_durable_is(&r, true), "waiter %d: %s", i, r.body);
        ns_resp_free(&r);
    }
    cr_assert_eq(ns_stat(s, "batches_written"), 3);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

typedef struct park_ctx {
    it_store_lock *db;
    long long queued;        /* updates_queued once every waiter was parked */
    long long batches;       /* batches_written while the file was locked */
} park_ctx;

/* Waits until every waiter is queued behind the lock, then releases it. */
static void release_when_parked(ns_server *s, void *arg)
{
    park_ctx *p = arg;
    (void)ns_wait_stat_eq(s, "updates_queued", WAITERS, 60.0);
    p->queued = ns_stat(s, "updates_queued");
    p->batches = ns_stat(s, "batches_written");
    it_unlock_store(p->db);
    p->db = NULL;
}

Test(durable, one_commit_acknowledges_many_parked_waiters)
{
    ns_server *s = ns_start("--batch-interval 60");
    cr_assert_not_null(s);
    long long before = ns_stat(s, "batches_written");
    park_ctx p = { .db = it_lock_store(s) };

    /* All 32 waiters park while the file is locked; at most one batch is in
     * the writer's hands, the rest wait in the queue for the next commit. */
    int acks = run_waiters(s, "pw", WAITERS, 1, release_when_parked, &p);
    cr_assert_null(p.db);
    cr_assert_eq(p.queued, WAITERS, "not every waiter was queued behind the lock");
    cr_assert_eq(p.batches, before, "a commit went through the exclusive lock");
    cr_assert_eq(acks, WAITERS);
    long long batches = ns_stat(s, "batches_written") - before;
    fprintf(stderr, "it_durable: %d parked waiters acknowledged by %lld commits\n", acks,
            batches);
    /* The batch that met the lock, then one commit for everything behind it. */
    cr_assert_geq(batches, 1);
    cr_assert_leq(batches, 2, "%lld commits for %d parked waiters", batches, acks);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='pw'", NULL),
                 WAITERS);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

Test(durable, lone_waiter_does_not_wait_for_the_batch_interval)
{
    /* With a 60 s interval only the waiter can make the writer commit; the
     * harness gives up on a request after 30 s, so any answer at all came
     * long before the interval, and 200 durable:true (not the 10 s default
     * timeout's 202) says the commit itself was prompt. */
    ns_server *s = ns_start("--batch-interval 60");
    cr_assert_not_null(s);
    ns_resp r = { 0 };
    long long t0 = ns_mono_ms();
    cr_assert_eq(ns_post_state(s, "lone", "n1", "?wait=true", "{\"status\":\"running\"}", &r),
                 0, "%s", r.error);
    long long took = ns_mono_ms() - t0;
    fprintf(stderr, "it_durable: lone durable POST answered in %lld ms (batch interval 60 s)\n",
            took);
    cr_assert_eq(r.status, 200, "lone durable POST: %ld %s", r.status, r.body);
    cr_assert(body_durable_is(&r, true), "%s", r.body);
    /* Durable means in the file, read by another connection. */
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='lone' "
                              "AND node_id='n1' AND status='running'", NULL), 1);
    cr_assert_eq(ns_stat(s, "batches_written"), 1);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

Test(durable, wait_times_out_into_202_while_the_file_is_locked)
{
    ns_server *s = ns_start(NULL);
    cr_assert_not_null(s);
    it_store_lock *db = it_lock_store(s);
    ns_resp r = { 0 };
    cr_assert_eq(ns_post_state(s, "to", "n1", "?wait=true&timeout=1",
                               "{\"status\":\"running\",\"outputs\":7}", &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 202, "durable POST while locked: %ld %s", r.status, r.body);
    cr_assert(body_durable_is(&r, false), "%s", r.body);
    json_t *doc = ns_resp_json(&r);
    cr_assert_str_eq(ns_jstr(doc, "status"), "running", "%s", r.body);
    cr_assert_str_eq(ns_jstr(doc, "node_id"), "n1", "%s", r.body);
    json_decref(doc);
    cr_assert_eq(ns_stat(s, "updates_processed"), 0, "committed through an exclusive lock?");

    /* Still accepted: it is written once the lock is gone. */
    it_unlock_store(db);
    cr_assert_eq(ns_wait_idle(s, IDLE_TIMEOUT), 0);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='to' "
                              "AND node_id='n1' AND outputs_json='7'", NULL), 1);
    cr_assert_eq(ns_get_state(s, "to", "n1", &r), 0);
    cr_assert_eq(r.status, 200);
    cr_assert(body_durable_is(&r, true), "GET after the commit: %s", r.body);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

Test(durable, get_tells_whether_the_last_change_is_durable)
{
    ns_server *s = ns_start("--batch-interval 60");
    cr_assert_not_null(s);
    ns_resp r = { 0 };
    cr_assert_eq(ns_post_state(s, "gd", "a", NULL, "{\"status\":\"scheduled\"}", &r), 0);
    cr_assert_eq(r.status, 202, "%ld %s", r.status, r.body);
    cr_assert(body_durable_is(&r, false), "%s", r.body);
    cr_assert_eq(ns_get_state(s, "gd", "a", &r), 0);
    cr_assert_eq(r.status, 200);
    cr_assert(body_durable_is(&r, false), "GET of a queued change: %s", r.body);

    /* A waiter on another node commits everything queued before it too. */
    cr_assert_eq(ns_post_state(s, "gd", "b", "?wait=true", "{\"status\":\"scheduled\"}", &r), 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    cr_assert(body_durable_is(&r, true), "%s", r.body);
    cr_assert_eq(ns_get_state(s, "gd", "a", &r), 0);
    cr_assert_eq(r.status, 200);
    cr_assert(body_durable_is(&r, true), "GET after the commit: %s", r.body);

    /* A new change is not durable until its own commit. */
    cr_assert_eq(ns_post_state(s, "gd", "a", NULL, "{\"status\":\"running\"}", &r), 0);
    cr_assert_eq(r.status, 202);
    cr_assert_eq(ns_get_state(s, "gd", "a", &r), 0);
    cr_assert(body_durable_is(&r, false), "GET of a newer queued change: %s", r.body);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='gd' "
                              "AND node_id='a' AND status='running'", NULL), 1);
    ns_free(s);
}
