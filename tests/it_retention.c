/*
 * it_retention: --retention on the real binary, on either store (the _pg
 * variant runs it on PostgreSQL). Runs are written through the API, the
 * server is stopped, and the rows of some are aged in the database itself
 * (updated_at set years back, ns_db_exec), so the test never waits for the
 * retention period; the restarted server's first sweep runs at start-up.
 * A run whose nodes are all completed/failed and old is deleted (file,
 * answers, counters); one with a running node, or updated recently, stays;
 * a later write to the deleted run starts it afresh.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "it_assert.h"

TestSuite(retention, .init = it_env_clear, .timeout = 120);

#define WAIT_S 30.0

/* Runs sql on a fresh read-write connection to the stopped server's database. */
static void exec_db(ns_server *s, const char *sql)
{
    cr_assert_eq(ns_db_exec(s, sql), 0, "%s", sql);
}

static long long rows_of(ns_server *s, const char *run)
{
    return ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id = ?", run, NULL);
}

static long get_status(ns_server *s, const char *path)
{
    ns_resp r = { 0 };
    cr_assert_eq(ns_req(s, "GET", path, NULL, NULL, &r), 0);
    long status = r.status;
    ns_resp_free(&r);
    return status;
}

/* Writes the runs, stops the server and ages the given runs' rows by years. */
static void write_and_age(ns_server *s, const char *aged_sql_list)
{
    it_post(s, "done", "a", NULL, "{\"status\":\"completed\"}", 202);
    it_post(s, "done", "b", NULL, "{\"status\":\"failed\",\"last_error\":\"x\"}", 202);
    it_post(s, "open", "a", NULL, "{\"status\":\"completed\"}", 202);
    it_post(s, "open", "b", NULL, "{\"status\":\"running\"}", 202);
    it_post(s, "fresh", "a", "?wait=true&timeout=30", "{\"status\":\"completed\"}", 200);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    char sql[256];
    snprintf(sql, sizeof sql,
             "UPDATE run_node_state SET updated_at = '2020-01-01T00:00:00.000Z'"
             " WHERE run_id IN (%s)", aged_sql_list);
    exec_db(s, sql);
}

static void expect_only_done_expired(ns_server *s)
{
    cr_assert_eq(ns_wait_stat_eq(s, "runs_expired", 1, WAIT_S), 0, "runs_expired never 1");
    cr_assert_eq(rows_of(s, "done"), 0, "the old finished run is gone from the file");
    cr_assert_eq(rows_of(s, "open"), 2, "a run with a running node stays, however old");
    cr_assert_eq(rows_of(s, "fresh"), 1, "a run updated recently stays");
    cr_assert_eq(get_status(s, "/runs/done"), 404);
    cr_assert_eq(get_status(s, "/runs/open"), 200);
    cr_assert_eq(get_status(s, "/runs/fresh"), 200);
    cr_assert_eq(ns_stat(s, "runs_deleted"), 0, "expired, not deleted");
}

Test(retention, old_finished_runs_go_others_stay)
{
    ns_server *s = ns_start(NULL);
    cr_assert_not_null(s);
    write_and_age(s, "'done', 'open'");

    cr_assert_eq(ns_restart(s, "--retention 1h --retention-interval 1m"), 0);
    expect_only_done_expired(s);

    ns_resp m = { 0 };
    cr_assert_eq(ns_req(s, "GET", "/metrics", NULL, NULL, &m), 0);
    double v = -1;
    cr_assert_eq(ns_prom_value(m.body, "nodestate_runs_expired_total", &v), 0);
    cr_assert_eq(v, 1.0);
    ns_resp_free(&m);

    /* Afresh: on the old completed node, scheduled would be a 409. */
    it_post(s, "done", "a", "?wait=true&timeout=30", "{\"status\":\"scheduled\"}", 200);
    cr_assert_eq(rows_of(s, "done"), 1);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

Test(retention, the_variable_turns_it_on_and_a_recent_run_is_kept)
{
    const char *const env[] = { "NODESTATE_RETENTION=2d", NULL };
    ns_server *s = ns_start_bin(NODESTATE_BIN, env, NULL);
    cr_assert_not_null(s);
    /* Written with retention on: nothing is old enough yet. */
    write_and_age(s, "'done', 'open'");
    cr_assert_eq(ns_restart(s, NULL), 0);
    expect_only_done_expired(s);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

/*
 * Two instances on one PostgreSQL database: the one sweeping deletes the
 * run through its own writer, and the commit is announced (LISTEN/NOTIFY)
 * like any other, so the other instance, which had the run in its cache,
 * drops it and answers 404 rather than the rows that are gone.
 */
Test(retention, an_expired_run_is_announced_to_the_other_instances)
{
    if (ns_pg_base() == NULL)
        cr_skip_test("PostgreSQL only: run it_retention_pg with NODESTATE_TEST_PG set");
    ns_server *b = ns_start("--batch-interval 0.01");
    cr_assert_not_null(b);
    it_post(b, "done", "a", "?wait=true&timeout=30", "{\"status\":\"completed\"}", 200);
    cr_assert_eq(get_status(b, "/runs/done"), 200, "B has the run cached");
    /* Aged behind B's back: B's cache still holds the run, and nothing tells B. */
    exec_db(b, "UPDATE run_node_state SET updated_at = '2020-01-01T00:00:00.000Z'");
    long long invalidations = ns_stat(b, "cache_invalidations");

    ns_server *a = ns_start("--db %s --retention 1h --retention-interval 1m", ns_db_path(b));
    cr_assert_not_null(a);
    cr_assert_eq(ns_wait_stat_eq(a, "runs_expired", 1, WAIT_S), 0, "A never expired the run");
    cr_assert_eq(rows_of(b, "done"), 0);
    ns_resp r = { 0 };
    cr_assert_eq(ns_req_until(b, "GET", "/runs/done", 404, &r, WAIT_S, 10), 0,
                 "B still answers %ld %s", r.status, r.body ? r.body : "");
    ns_resp_free(&r);
    cr_assert_gt(ns_stat(b, "cache_invalidations"), invalidations, "B heard of the delete");
    cr_assert_eq(ns_stop(a, SIGTERM), 0);
    cr_assert_eq(ns_stop(b, SIGTERM), 0);
    ns_free(a);
    ns_free(b);
}
