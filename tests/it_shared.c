/*
 * it_shared: two instances on one PostgreSQL database, as behind a load
 * balancer when a run moves from one to the other. The store is the final
 * judge: a former owner's late write that the transition rules do not
 * admit against the stored row is refused, counted (store_conflicts), and
 * the former owner drops the run and reads the store's state again; seqs
 * stay unique and increasing per node across the instances.
 *
 * Another instance's commits normally reach an instance at once
 * (LISTEN/NOTIFY: it drops the run); a commit whose notification is still
 * on its way is played by writing the store directly.
 *
 * PostgreSQL only: skipped unless run as it_shared_pg (NS_IT_STORE=pg with
 * NODESTATE_TEST_PG set; see pg_check.h).
 */
#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "harness.h"
#include "it_assert.h"

#define WAIT_S 30.0

static long long seq_of(ns_server *s, const char *run, const char *node)
{
    ns_resp r = { 0 };
    cr_assert_eq(ns_get_state(s, run, node, &r), 0);
    cr_assert_eq(r.status, 200, "GET %s/%s: %ld %s", run, node, r.status, r.body);
    json_t *doc = ns_resp_json(&r);
    long long seq = it_jint(doc, "seq");
    json_decref(doc);
    ns_resp_free(&r);
    return seq;
}

/*
 * Polls GET until the node's status is want (the run is dropped once its
 * batch is released, a moment after the conflict is counted), bounded.
 */
static void expect_status(ns_server *s, const char *run, const char *node, const char *want)
{
    char last[64] = "";
    long long end = ns_mono_ms() + (long long)(WAIT_S * 1000);
    for (int i = 0; i < 3000 && ns_mono_ms() < end; i++) {
        ns_resp r = { 0 };
        cr_assert_eq(ns_get_state(s, run, node, &r), 0);
        cr_assert_eq(r.status, 200, "GET %s/%s: %ld %s", run, node, r.status, r.body);
        json_t *doc = ns_resp_json(&r);
        snprintf(last, sizeof last, "%s", ns_jstr(doc, "status"));
        json_decref(doc);
        ns_resp_free(&r);
        if (strcmp(last, want) == 0)
            return;
        ns_sleep_ms(10);
    }
    cr_assert_fail("%s/%s stayed %s, want %s", run, node, last, want);
}

/* A second instance on a's store (its run moves there, say); asserted started. */
static ns_server *start_b(const ns_server *a)
{
    ns_server *b = ns_start("--db %s --batch-interval 0.01", ns_db_path(a));
    cr_assert_not_null(b);
    return b;
}

Test(shared, former_owner_cannot_regress_a_node_and_rereads_it)
{
    if (ns_pg_base() == NULL)
        cr_skip_test("PostgreSQL only: run it_shared_pg with NODESTATE_TEST_PG set");
    ns_server *a = ns_start("--batch-interval 0.01");
    cr_assert_not_null(a);
    ns_server *b = start_b(a);
    ns_resp r = { 0 };

    /* A owns the run first: the node runs, durably. */
    cr_assert_eq(ns_post_state(a, "mv", "n1", "?wait=true", "{\"status\":\"running\"}", &r), 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    long long seq_a = seq_of(a, "mv", "n1");

    /* The run moves to B, which reads the node from the store and completes it. */
    cr_assert_eq(ns_post_state(b, "mv", "n1", "?wait=true", "{\"status\":\"completed\"}", &r), 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    long long seq_b = seq_of(b, "mv", "n1");
    cr_assert_gt(seq_b, seq_a, "B's seq %lld is not above A's %lld", seq_b, seq_a);

    /* A hears of B's commit (LISTEN/NOTIFY) and drops its copy of the run. */
    expect_status(a, "mv", "n1", "completed");
    cr_assert_geq(ns_stat(a, "cache_invalidations"), 1);

    /*
     * Another instance's commit whose notification has not reached A yet:
     * played by writing the store directly (no notification), so A's cache
     * is behind for certain. The node is in attempt 2, running.
     */
    cr_assert_eq(ns_db_int(a, "WITH u AS (UPDATE run_node_state SET status = 'running',"
                              " attempt = 2, completed_at = NULL, seq = seq + 1000"
                              " WHERE run_id = 'mv' RETURNING 1) SELECT count(*) FROM u", NULL), 1);
    long long seq_b2 = ns_db_int(a, "SELECT seq FROM run_node_state WHERE run_id = 'mv'", NULL);
    /*
     * A, behind (its cache says completed in attempt 1), accepts attempt 2
     * as scheduled, which would move the stored node back: the store
     * refuses it and counts it, A reads the store's state again, and the
     * waiting caller gets the update judged against that state: a 409
     * holding the stored node.
     */
    cr_assert_eq(ns_post_state(a, "mv", "n1", "?wait=true",
                               "{\"status\":\"scheduled\",\"attempt\":2}", &r), 0);
    char why[512];
    cr_assert_eq(ns_check_problem(&r, 409, "illegal-transition", why, sizeof why), 0, "%s", why);
    json_t *doc = ns_resp_json(&r);
    json_t *cur = json_object_get(doc, "current");
    cr_assert_str_eq(ns_jstr(cur, "status"), "running", "%s", r.body);
    cr_assert_eq(it_jint(cur, "attempt"), 2, "%s", r.body);
    json_decref(doc);
    cr_assert_eq(ns_stat(a, "store_conflicts"), 1);
    cr_assert(ns_log_contains(a, "msg=row-superseded"));
    cr_assert_eq(ns_db_int(a, "SELECT count(*) FROM run_node_state WHERE run_id = 'mv'"
                              " AND status = 'running' AND attempt = 2", NULL), 1,
                 "the late write regressed the node");
    expect_status(a, "mv", "n1", "running");
    cr_assert_eq(ns_stat(b, "store_conflicts"), 0);

    /* A new attempt on A is a legal move against the stored row: it applies, above B's seq. */
    cr_assert_eq(ns_post_state(a, "mv", "n1", "?wait=true",
                               "{\"status\":\"running\",\"attempt\":3}", &r), 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    cr_assert_gt(seq_of(a, "mv", "n1"), seq_b2);
    cr_assert_eq(ns_db_int(a, "SELECT attempt FROM run_node_state WHERE run_id='mv'", NULL), 3);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(b, SIGTERM), 0);
    cr_assert_eq(ns_stop(a, SIGTERM), 0);
    ns_free(b);
    ns_free(a);
}

/* Writes a node straight into the store with seq seq_reserved + above, as another instance. */
static long long store_node_at(ns_server *a, const char *run, const char *node, int above)
{
    char sql[1024];
    snprintf(sql, sizeof sql,
             "WITH s AS (SELECT value + %d AS seq FROM nodestate_meta"
             "           WHERE key = 'seq_reserved'),"
             " i AS (INSERT INTO run_node_state (run_id, node_id, status, attempt,"
             "         scheduled_at, updated_at, seq)"
             "       SELECT '%s', '%s', 'scheduled', 1, '2026-01-01T00:00:00.000Z',"
             "         '2026-01-01T00:00:00.000Z', seq FROM s RETURNING seq)"
             " SELECT seq FROM i", above, run, node);
    long long seq = ns_db_int(a, sql, NULL);
    cr_assert(seq > above, "the insert returned %lld", seq);
    return seq;
}

Test(shared, superseded_update_is_judged_again_against_the_stored_node)
{
    if (ns_pg_base() == NULL)
        cr_skip_test("PostgreSQL only: run it_shared_pg with NODESTATE_TEST_PG set");
    ns_server *a = ns_start("--batch-interval 0.01");
    cr_assert_not_null(a);
    ns_resp r = { 0 };

    /* A knows the run whole (listed), with one node. */
    cr_assert_eq(ns_post_state(a, "fo", "n0", "?wait=true", "{\"status\":\"running\"}", &r), 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    cr_assert_eq(ns_req(a, "GET", "/runs/fo/nodes", NULL, NULL, &r), 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);

    /*
     * Another instance stored n1 as scheduled and died before answering;
     * its worker sends the same update again, now to A, which has not heard
     * of n1: A takes it for a new node, under a seq below the stored one,
     * and the store refuses it. Judged again against the stored node, it
     * changes nothing: 200 with the stored node, which is on disk.
     */
    long long stored = store_node_at(a, "fo", "n1", 1000);
    cr_assert_eq(ns_post_state(a, "fo", "n1", "?wait=true",
                               "{\"status\":\"scheduled\",\"attempt\":1}", &r), 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    json_t *doc = ns_resp_json(&r);
    cr_assert_eq(it_jint(doc, "seq"), stored, "%s", r.body);
    cr_assert(json_is_true(json_object_get(doc, "durable")), "%s", r.body);
    json_decref(doc);
    cr_assert_eq(ns_stat(a, "store_conflicts"), 1);

    /*
     * The same for an update the stored node admits (scheduled to running):
     * judged again it applies, under a seq above the stored one, and the
     * caller waits for that commit.
     */
    cr_assert_eq(ns_post_state(a, "fo2", "n0", "?wait=true", "{\"status\":\"running\"}", &r),
                 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    cr_assert_eq(ns_req(a, "GET", "/runs/fo2/nodes", NULL, NULL, &r), 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    stored = store_node_at(a, "fo2", "n2", 1000);
    cr_assert_eq(ns_post_state(a, "fo2", "n2", "?wait=true", "{\"status\":\"running\"}", &r),
                 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    doc = ns_resp_json(&r);
    cr_assert_str_eq(ns_jstr(doc, "status"), "running", "%s", r.body);
    cr_assert(it_jint(doc, "seq") > stored, "%s", r.body);
    cr_assert(json_is_true(json_object_get(doc, "durable")), "%s", r.body);
    json_decref(doc);
    cr_assert_eq(ns_stat(a, "store_conflicts"), 2);
    cr_assert_eq(ns_db_int(a, "SELECT count(*) FROM run_node_state WHERE run_id = 'fo2'"
                              " AND node_id = 'n2' AND status = 'running'", NULL), 1);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(a, SIGTERM), 0);
    ns_free(a);
}

/* A transaction holding one node's row (FOR UPDATE): the server's write of that node waits. */
static PGconn *lock_node_row(ns_server *s, const char *run, const char *node)
{
    PGconn *c = PQconnectdb(ns_db_path(s));
    cr_assert_eq(PQstatus(c), CONNECTION_OK, "connect: %s", PQerrorMessage(c));
    char sql[512];
    snprintf(sql, sizeof sql,
             "BEGIN; SELECT 1 FROM run_node_state WHERE run_id = '%s' AND node_id = '%s'"
             " FOR UPDATE", run, node);
    PGresult *r = PQexec(c, sql);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQresultErrorMessage(r));
    cr_assert_eq(PQntuples(r), 1);
    PQclear(r);
    return c;
}

static void unlock_node_row(PGconn *c)
{
    PQclear(PQexec(c, "ROLLBACK"));
    PQfinish(c);
}

typedef struct late_post {
    ns_client *c;
    ns_resp r;
    int rc;
} late_post;

static void *post_late(void *arg)
{
    late_post *p = arg;
    p->rc = ns_client_req(p->c, "POST", "/runs/pin/nodes/n1/state?wait=true&timeout=60",
                          "{\"status\":\"scheduled\",\"attempt\":2}", NULL, &p->r);
    return NULL;
}

/*
 * The same refusal as in former_owner_cannot_regress_a_node_and_rereads_it,
 * but with another write of the run still queued when the waiter is judged
 * again: the run is pinned, so it is not dropped from the cache, and the
 * update must still be judged against the stored node (409), not against
 * A's own refused row (which would make it a duplicate: 200 "durable").
 * Deterministic: one update per commit, the refused one held back by a row
 * lock until the other is queued, the other held back until the answer.
 */
Test(shared, superseded_update_is_judged_against_the_store_while_its_run_is_pinned)
{
    if (ns_pg_base() == NULL)
        cr_skip_test("PostgreSQL only: run it_shared_pg with NODESTATE_TEST_PG set");
    ns_server *a = ns_start("--batch-interval 0.01 --batch-size 1");
    cr_assert_not_null(a);
    ns_resp r = { 0 };
    it_post(a, "pin", "n1", "?wait=true", "{\"status\":\"running\"}", 200);
    it_post(a, "pin", "n1", "?wait=true", "{\"status\":\"completed\"}", 200);
    it_post(a, "pin", "n2", "?wait=true", "{\"status\":\"running\"}", 200);
    /* Behind A's back (no notification): n1 is in attempt 2, running. */
    cr_assert_eq(ns_db_int(a, "WITH u AS (UPDATE run_node_state SET status = 'running',"
                              " attempt = 2, completed_at = NULL, seq = seq + 1000"
                              " WHERE run_id = 'pin' AND node_id = 'n1' RETURNING 1)"
                              " SELECT count(*) FROM u", NULL), 1);
    PGconn *hold_n1 = lock_node_row(a, "pin", "n1");
    PGconn *hold_n2 = lock_node_row(a, "pin", "n2");
    long long queued = ns_stat(a, "updates_queued");
    cr_assert_geq(queued, 0);

    late_post late = { .c = ns_client_new(a) };
    cr_assert_not_null(late.c);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, post_late, &late), 0);
    /* A (behind) accepts it; its commit waits on hold_n1. */
    cr_assert_eq(ns_wait_stat_eq(a, "updates_queued", queued + 1, WAIT_S), 0);
    /* Another write of the run, queued behind it (its commit waits on hold_n2). */
    it_post(a, "pin", "n2", "", "{\"status\":\"completed\"}", 202);
    unlock_node_row(hold_n1);
    pthread_join(t, NULL);
    cr_assert_eq(late.rc, 0, "%s", late.r.error);
    cr_assert_eq(ns_stat(a, "store_conflicts"), 1);
    char why[512];
    int problem = ns_check_problem(&late.r, 409, "illegal-transition", why, sizeof why);
    unlock_node_row(hold_n2);
    cr_assert_eq(problem, 0, "%s", why);
    cr_assert_eq(ns_db_int(a, "SELECT count(*) FROM run_node_state WHERE run_id = 'pin'"
                              " AND node_id = 'n1' AND status = 'running' AND attempt = 2",
                           NULL), 1);
    ns_resp_free(&late.r);
    ns_client_free(late.c);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(a, SIGTERM), 0);
    ns_free(a);
}

/*
 * Instance A on PostgreSQL (skips without it), with args, having written a
 * node of its own durably: seq blocks reserved, so others' seqs come above.
 */
static ns_server *start_a(const char *args)
{
    if (ns_pg_base() == NULL)
        cr_skip_test("PostgreSQL only: run it_shared_pg with NODESTATE_TEST_PG set");
    ns_server *a = ns_start("%s", args);
    cr_assert_not_null(a);
    it_post(a, "own", "n0", "?wait=true", "{\"status\":\"running\"}", 200);
    return a;
}

static bool durable_of(ns_server *a, const char *run, const char *node)
{
    ns_resp r = { 0 };
    cr_assert_eq(ns_get_state(a, run, node, &r), 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    json_t *doc = ns_resp_json(&r);
    bool durable = json_is_true(json_object_get(doc, "durable"));
    json_decref(doc);
    ns_resp_free(&r);
    return durable;
}

/*
 * A node another instance wrote, once answered "durable": true (its seq is
 * past every seq A handed out), must stay so: it is on disk and unchanged.
 * A's next block, reserved above it while A's own write is still queued,
 * must not turn it back into "durable": false (and its ETag into "-q").
 */
Test(shared, another_instances_node_stays_durable_when_a_reserves_above_it)
{
    ns_server *a = start_a("--batch-interval 0.01");
    store_node_at(a, "fx", "x", 1000);
    store_node_at(a, "fy", "y", 2000);
    cr_assert(durable_of(a, "fx", "x"), "another instance's committed node");
    /* A's write of y: above y's seq, so a fresh block above x's too; its commit held back. */
    it_store_lock *hold = it_lock_store(a);
    it_post(a, "fy", "y", "", "{\"status\":\"running\"}", 202);
    bool still = durable_of(a, "fx", "x");
    it_unlock_store(hold);
    cr_assert(still, "x (unchanged, on disk) went back to durable: false");
    cr_assert_eq(ns_stop(a, SIGTERM), 0);
    ns_free(a);
}

/*
 * A batch made only of duplicates was "durable" when the highest seq it
 * found was (api_post_batch: api_is_durable(w->seq)). That held while
 * durable meant seq <= durable_seq; now that another instance's seq (past
 * A's last seq, or in a gap) is durable at once, the highest seq being
 * durable says nothing of a lower one that is A's own and still queued:
 * x (A's, queued behind a locked store) is answered durable: true with it.
 */
Test(shared, all_duplicate_batch_is_not_durable_while_one_of_its_seqs_is_queued)
{
    ns_server *a = start_a("--batch-interval 0.01");
    /* y: another instance's node, seq above every block reserved. */
    store_node_at(a, "dup", "y", 1000);
    it_store_lock *hold = it_lock_store(a);
    /* x: A's own, queued (its commit waits on the lock), seq below y's. */
    it_post(a, "dup", "x", "", "{\"status\":\"running\"}", 202);
    bool x_durable = durable_of(a, "dup", "x");
    ns_resp r = { 0 };
    cr_assert_eq(ns_req(a, "POST", "/runs/dup/nodes",
                        "{\"updates\":[{\"node_id\":\"x\",\"status\":\"running\"},"
                        "{\"node_id\":\"y\",\"status\":\"scheduled\"}]}", NULL, &r), 0);
    it_unlock_store(hold);
    cr_assert_not(x_durable, "x is queued");
    json_t *doc = ns_resp_json(&r);
    cr_assert_eq(it_jint(doc, "duplicates"), 2, "%s", r.body);
    cr_assert_not(json_is_true(json_object_get(doc, "durable")),
                  "%ld %s: x's seq is still queued", r.status, r.body);
    /* Nothing accepted: a 200 (DESIGN 8), as each duplicate gets alone. */
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    json_decref(doc);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(a, SIGTERM), 0);
    ns_free(a);
}

/*
 * (Older than this session, found reviewing it.) Evicting a node another
 * instance wrote raises its run's evicted_seq to that node's seq, past A's
 * durable_seq (A's own commits only); readthrough's read_overtaken then
 * takes every later read of the run for overtaken, all LOAD_TRIES of it,
 * the last under the lock too, and the read fails: a node of that run not
 * cached answers 500 until A's durable_seq passes the other instance's seq.
 */
Test(shared, evicting_another_instances_node_does_not_break_reads_of_its_run)
{
    ns_server *a = start_a("--batch-interval 0.01 --cache-max-nodes 3");
    store_node_at(a, "ev", "x", 1000);
    store_node_at(a, "ev", "w", 1001);
    store_node_at(a, "ev", "u", 1002);
    cr_assert(durable_of(a, "ev", "x"));
    cr_assert(durable_of(a, "ev", "w"));
    /* A fourth node: after its commit the least recently used one (ev/x) is evicted. */
    it_post(a, "own", "n1", "?wait=true", "{\"status\":\"running\"}", 200);
    cr_assert_geq(ns_stat(a, "cache_nodes_evicted"), 1);
    ns_resp r = { 0 };
    cr_assert_eq(ns_get_state(a, "ev", "u", &r), 0);
    cr_assert_eq(r.status, 200, "GET ev/u: %ld %s", r.status, r.body);
    ns_resp_free(&r);
    cr_assert_eq(ns_get_state(a, "ev", "x", &r), 0);
    cr_assert_eq(r.status, 200, "GET ev/x: %ld %s", r.status, r.body);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(a, SIGTERM), 0);
    ns_free(a);
}

/* A lists run after a node of its own there: every node not cached is new to it. */
static void know_run_whole(ns_server *a, const char *run)
{
    ns_resp r = { 0 };
    it_post(a, run, "n0", "?wait=true", "{\"status\":\"running\"}", 200);
    char path[128];
    snprintf(path, sizeof path, "/runs/%s/nodes", run);
    cr_assert_eq(ns_req(a, "GET", path, NULL, NULL, &r), 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    ns_resp_free(&r);
}

/* store_node_at, then completed: a node no update of attempt 1 may move. */
static void store_completed_at(ns_server *a, const char *run, const char *node, int above)
{
    store_node_at(a, run, node, above);
    char sql[512];
    snprintf(sql, sizeof sql,
             "WITH u AS (UPDATE run_node_state SET status = 'completed',"
             " completed_at = '2026-01-01T00:00:01.000Z'"
             " WHERE run_id = '%s' AND node_id = '%s' RETURNING 1) SELECT count(*) FROM u",
             run, node);
    cr_assert_eq(ns_db_int(a, sql, NULL), 1);
}

/*
 * The same for the items of a waiting batch: each item the store refused
 * as superseded is judged again against the stored node, as a single
 * update is (not answered 500 write-refused): one that changes nothing is
 * a duplicate (200, the stored seq), one the rules refuse there a 409 with
 * the stored node, and one they admit is queued again and the batch waits
 * for it too. The batch's counts follow its items.
 */
Test(shared, superseded_batch_items_are_judged_again_against_the_stored_nodes)
{
    ns_server *a = start_a("--batch-interval 0.01");
    ns_resp r = { 0 };
    /* A knows run fb whole (listed), so it takes every node below for new. */
    know_run_whole(a, "fb");
    /* Another instance stored n1 and n3 as scheduled and n4 as completed. */
    long long s1 = store_node_at(a, "fb", "n1", 1000);
    long long s3 = store_node_at(a, "fb", "n3", 1001);
    store_completed_at(a, "fb", "n4", 1002);
    cr_assert_eq(ns_req(a, "POST", "/runs/fb/nodes?wait=true",
                        "{\"updates\":[{\"node_id\":\"n1\",\"status\":\"scheduled\"},"
                        "{\"node_id\":\"n3\",\"status\":\"running\"},"
                        "{\"node_id\":\"n4\",\"status\":\"running\"},"
                        "{\"node_id\":\"n5\",\"status\":\"running\"}]}", NULL, &r), 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    json_t *doc = ns_resp_json(&r);
    cr_assert(json_is_true(json_object_get(doc, "durable")), "%s", r.body);
    cr_assert_eq(it_jint(doc, "accepted"), 2, "%s", r.body);
    cr_assert_eq(it_jint(doc, "duplicates"), 1, "%s", r.body);
    cr_assert_eq(it_jint(doc, "refused"), 1, "%s", r.body);
    json_t *res = json_object_get(doc, "results");
    cr_assert_eq(json_array_size(res), 4, "%s", r.body);
    json_t *n1 = json_array_get(res, 0), *n3 = json_array_get(res, 1);
    json_t *n4 = json_array_get(res, 2), *n5 = json_array_get(res, 3);
    cr_assert_eq(it_jint(n1, "code"), 200, "n1 changes nothing stored: %s", r.body);
    cr_assert_eq(it_jint(n1, "seq"), s1, "%s", r.body);
    cr_assert_eq(it_jint(n3, "code"), 202, "n3 applies to the stored node: %s", r.body);
    cr_assert(it_jint(n3, "seq") > s3, "%s", r.body);
    cr_assert_eq(it_jint(n4, "code"), 409, "n4 is completed in the store: %s", r.body);
    json_t *p4 = json_object_get(n4, "problem");
    cr_assert_str_eq(ns_jstr(p4, "type"), "urn:nodestate:problem:illegal-transition", "%s",
                     r.body);
    cr_assert_str_eq(ns_jstr(json_object_get(p4, "current"), "status"), "completed", "%s",
                     r.body);
    cr_assert_eq(it_jint(n5, "code"), 202, "%s", r.body);
    cr_assert_eq(it_jint(doc, "last_seq"), it_jint(n3, "seq"), "%s", r.body);
    json_decref(doc);
    ns_resp_free(&r);
    cr_assert_eq(ns_stat(a, "store_conflicts"), 3);
    /* Durable meant it: n3's second try and n5 are stored, n4 untouched. */
    cr_assert_eq(ns_db_int(a, "SELECT count(*) FROM run_node_state WHERE run_id = 'fb' AND"
                              " ((node_id IN ('n3', 'n5') AND status = 'running') OR"
                              "  (node_id = 'n4' AND status = 'completed') OR"
                              "  (node_id = 'n1' AND status = 'scheduled'))", NULL), 4);
    cr_assert_eq(ns_stop(a, SIGTERM), 0);
    ns_free(a);
}

/*
 * (Review of 69ad9e0.) last_seq is "the highest seq of the accepted and
 * duplicate items; null when none" (openapi BatchAnswer). An item judged
 * again into a 409 no longer has a seq, but w->seq kept its refused one:
 * here the batch's highest seq was the refused item's, so last_seq named a
 * seq no result shows (and that is not stored).
 */
Test(shared, last_seq_drops_the_seq_of_an_item_judged_again_into_a_409)
{
    ns_server *a = start_a("--batch-interval 0.01");
    ns_resp r = { 0 };
    know_run_whole(a, "ls");
    /* Another instance stored n4 as completed. */
    store_completed_at(a, "ls", "n4", 1000);
    cr_assert_eq(ns_req(a, "POST", "/runs/ls/nodes?wait=true",
                        "{\"updates\":[{\"node_id\":\"n5\",\"status\":\"running\"},"
                        "{\"node_id\":\"n4\",\"status\":\"running\"}]}", NULL, &r), 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    json_t *doc = ns_resp_json(&r);
    json_t *res = json_object_get(doc, "results");
    cr_assert_eq(it_jint(json_array_get(res, 1), "code"), 409, "%s", r.body);
    cr_assert_eq(it_jint(doc, "last_seq"), it_jint(json_array_get(res, 0), "seq"),
                 "last_seq is the refused seq of the item answered 409: %s", r.body);
    json_decref(doc);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(a, SIGTERM), 0);
    ns_free(a);
}

/*
 * (Review of 69ad9e0.) An item judged again and queued anew, refused again
 * (a second pass of api_batch_mark_refused on the re-rendered results, with
 * the places recorded anew): the JSON stays whole and the counts follow.
 * The store refuses every write of n3 (a trigger skips it, as a newer
 * stored state would); n4 turns 409 between the passes, so the text moves.
 */
Test(shared, an_item_judged_again_and_refused_again_is_write_refused_in_place)
{
    ns_server *a = start_a("--batch-interval 0.01");
    ns_resp r = { 0 };
    know_run_whole(a, "rr");
    store_node_at(a, "rr", "n3", 1000);
    store_completed_at(a, "rr", "n4", 1001);
    cr_assert_eq(ns_db_exec(a, "CREATE FUNCTION skip_n3() RETURNS trigger LANGUAGE plpgsql AS"
                               " $$ BEGIN IF NEW.node_id = 'n3' THEN RETURN NULL; END IF;"
                               " RETURN NEW; END $$;"
                               " CREATE TRIGGER skip_n3 BEFORE UPDATE ON run_node_state"
                               " FOR EACH ROW EXECUTE FUNCTION skip_n3()"), 0);
    cr_assert_eq(ns_req(a, "POST", "/runs/rr/nodes?wait=true&timeout=20",
                        "{\"updates\":[{\"node_id\":\"n1\",\"status\":\"running\"},"
                        "{\"node_id\":\"n3\",\"status\":\"running\"},"
                        "{\"node_id\":\"n4\",\"status\":\"running\"},"
                        "{\"node_id\":\"n5\",\"status\":\"running\"}]}", NULL, &r), 0);
    json_t *doc = ns_resp_json(&r);
    cr_assert_not_null(doc, "not JSON: %s", r.body);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    cr_assert(json_is_true(json_object_get(doc, "durable")), "%s", r.body);
    json_t *res = json_object_get(doc, "results");
    cr_assert_eq(json_array_size(res), 4, "%s", r.body);
    cr_assert_eq(it_jint(json_array_get(res, 0), "code"), 202, "%s", r.body);
    cr_assert_eq(it_jint(json_array_get(res, 1), "code"), 500, "%s", r.body);
    cr_assert_str_eq(ns_jstr(json_object_get(json_array_get(res, 1), "problem"), "type"),
                     "urn:nodestate:problem:write-refused", "%s", r.body);
    cr_assert_eq(it_jint(json_array_get(res, 2), "code"), 409, "%s", r.body);
    cr_assert_eq(it_jint(json_array_get(res, 3), "code"), 202, "%s", r.body);
    cr_assert_eq(it_jint(doc, "accepted"), 2, "%s", r.body);
    cr_assert_eq(it_jint(doc, "duplicates"), 0, "%s", r.body);
    cr_assert_eq(it_jint(doc, "refused"), 2, "%s", r.body);
    cr_assert_geq(ns_stat(a, "store_conflicts"), 3);
    json_decref(doc);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(a, SIGTERM), 0);
    ns_free(a);
}

/*
 * (Review of 69ad9e0.) The wait after a re-judge ends by its timeout: the
 * re-queued commit of n3 cannot finish (a trigger on its admitted update
 * waits for an advisory lock the test holds; the first, refused write
 * updates nothing, so it never fires there): 202, durable false, the
 * re-queued item 202 with its new seq, and nothing leaks (ASan build).
 */
Test(shared, a_batch_waiting_again_times_out_not_durable)
{
    ns_server *a = start_a("--batch-interval 0.01");
    ns_resp r = { 0 };
    know_run_whole(a, "to");
    long long s3 = store_node_at(a, "to", "n3", 1000);
    cr_assert_eq(ns_db_exec(a, "CREATE FUNCTION hold_n3() RETURNS trigger LANGUAGE plpgsql AS"
                               " $$ BEGIN IF NEW.node_id = 'n3' THEN"
                               " PERFORM pg_advisory_xact_lock(4242); END IF;"
                               " RETURN NEW; END $$;"
                               " CREATE TRIGGER hold_n3 BEFORE UPDATE ON run_node_state"
                               " FOR EACH ROW EXECUTE FUNCTION hold_n3()"), 0);
    PGconn *hold = PQconnectdb(ns_db_path(a));
    cr_assert_eq(PQstatus(hold), CONNECTION_OK, "connect: %s", PQerrorMessage(hold));
    PGresult *pr = PQexec(hold, "SELECT pg_advisory_lock(4242)");
    cr_assert_eq(PQresultStatus(pr), PGRES_TUPLES_OK, "%s", PQresultErrorMessage(pr));
    PQclear(pr);
    /* Ample for the first commit; the second cannot end while the lock is held. */
    cr_assert_eq(ns_req(a, "POST", "/runs/to/nodes?wait=true&timeout=10",
                        "{\"updates\":[{\"node_id\":\"n1\",\"status\":\"running\"},"
                        "{\"node_id\":\"n3\",\"status\":\"running\"}]}", NULL, &r), 0);
    PQfinish(hold); /* releases the lock: the commit goes through */
    json_t *doc = ns_resp_json(&r);
    cr_assert_not_null(doc, "not JSON: %s", r.body);
    cr_assert_eq(r.status, 202, "%ld %s", r.status, r.body);
    cr_assert(json_is_false(json_object_get(doc, "durable")), "%s", r.body);
    json_t *res = json_object_get(doc, "results");
    cr_assert_eq(it_jint(json_array_get(res, 1), "code"), 202, "%s", r.body);
    cr_assert(it_jint(json_array_get(res, 1), "seq") > s3, "%s", r.body);
    cr_assert_eq(it_jint(doc, "accepted"), 2, "%s", r.body);
    json_decref(doc);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(a, SIGTERM), 0);
    ns_free(a);
}

/*
 * GET /runs/{run}/nodes?since=seen on s: asserts the one node listed is
 * node; returns the page's deleted_seq (0 when absent).
 */
static long long told_deleted(ns_server *s, const char *run, long long seen, const char *node)
{
    char path[128];
    snprintf(path, sizeof path, "/runs/%s/nodes?since=%lld", run, seen);
    json_t *page = it_get_json(s, path, 200);
    json_t *nodes = json_object_get(page, "nodes");
    cr_assert_eq(json_array_size(nodes), 1, "%s", path);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(nodes, 0), "node_id")),
                     node);
    json_t *d = json_object_get(page, "deleted_seq");
    long long deleted = json_is_integer(d) ? json_integer_value(d) : 0;
    json_decref(page);
    return deleted;
}

/*
 * A run moves between instances around its delete. A (whose seq block is
 * the first) deletes the run after B wrote it, then B writes it anew: the
 * delete's seq must be above B's node (or a watcher that saw that node
 * would never be told of the delete), and B's new node above the delete
 * (or a watcher told of it would resume past the new node).
 */
Test(shared, a_delete_and_the_write_after_it_are_ordered_across_instances)
{
    ns_server *a = start_a("--batch-interval 0.01");
    ns_server *b = start_b(a);
    it_post(b, "mv", "old", "?wait=true", "{\"status\":\"running\"}", 200);
    long long seen = seq_of(b, "mv", "old");
    long long dropped = ns_stat(b, "cache_invalidations");

    long long deleted = it_delete_seq(a, "mv", "?wait=true", 200);
    cr_assert_gt(deleted, seen, "the delete is numbered below a node a watcher saw");

    /* B learns of the delete (it drops the run: notified), then writes the run anew. */
    cr_assert_eq(ns_wait_stat_ge(b, "cache_invalidations", dropped + 1, WAIT_S), 0,
                 "B never heard of A's delete");
    json_t *row = it_post_json(b, "mv", "new", "?wait=true", "{\"status\":\"running\"}", 200);
    long long fresh = it_jint(row, "seq");
    json_decref(row);
    cr_assert_gt(fresh, deleted, "the write after the delete is numbered below it");

    /* A watcher that saw `old`: told of the delete, and the new node. */
    cr_assert_eq(told_deleted(a, "mv", seen, "new"), deleted);
    cr_assert_eq(told_deleted(b, "mv", seen, "new"), deleted);
    ns_free(b);
    ns_free(a);
}

/*
 * Retention on A expires a run only B wrote (A never cached it): its delete
 * is numbered above B's nodes all the same (the sweep hands over the run's
 * highest seq), so a watcher that saw them is told, and B's later write
 * comes above the delete.
 */
Test(shared, retention_of_a_run_another_instance_wrote_is_numbered_above_it)
{
    ns_server *a = start_a("--batch-interval 0.01 --retention 1 --retention-interval 0.2");
    ns_server *b = start_b(a);
    it_post(b, "old", "n1", "?wait=true", "{\"status\":\"completed\"}", 200);
    long long seen = seq_of(b, "old", "n1");
    long long dropped = ns_stat(b, "cache_invalidations");
    cr_assert_eq(ns_wait_stat_ge(a, "runs_expired", 1, WAIT_S), 0, "A never expired the run");
    cr_assert_eq(ns_wait_stat_ge(b, "cache_invalidations", dropped + 1, WAIT_S), 0,
                 "B never heard of the expiry");
    it_post(b, "old", "n2", "?wait=true", "{\"status\":\"running\"}", 200);
    cr_assert_gt(told_deleted(b, "old", seen, "n2"), seen,
                 "the expiry was numbered below the node seen");
    ns_free(b);
    ns_free(a);
}
