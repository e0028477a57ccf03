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

Test(shared, former_owner_cannot_regress_a_node_and_rereads_it)
{
    if (ns_pg_base() == NULL)
        cr_skip_test("PostgreSQL only: run it_shared_pg with NODESTATE_TEST_PG set");
    ns_server *a = ns_start("--batch-interval 0.01");
    cr_assert_not_null(a);
    ns_server *b = ns_start("--db %s --batch-interval 0.01", ns_db_path(a));
    cr_assert_not_null(b);
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

/* Writes a node straight into the store, above every seq reserved, as an instance A has not heard of. */
static long long store_node_behind_a(ns_server *a, const char *run, const char *node,
                                     const char *status)
{
    char sql[1024];
    snprintf(sql, sizeof sql,
             "WITH s AS (SELECT value + 1000 AS seq FROM nodestate_meta"
             "           WHERE key = 'seq_reserved'),"
             " i AS (INSERT INTO run_node_state (run_id, node_id, status, attempt,"
             "         scheduled_at, updated_at, seq)"
             "       SELECT '%s', '%s', '%s', 1, '2026-01-01T00:00:00.000Z',"
             "         '2026-01-01T00:00:00.000Z', seq FROM s RETURNING seq)"
             " SELECT seq FROM i", run, node, status);
    long long seq = ns_db_int(a, sql, NULL);
    cr_assert(seq > 1000, "the insert returned %lld", seq);
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
    long long stored = store_node_behind_a(a, "fo", "n1", "scheduled");
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
    stored = store_node_behind_a(a, "fo2", "n2", "scheduled");
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
