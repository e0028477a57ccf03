/*
 * it_lock: another process holding the SQLite write lock does not stall the
 * API. While the test holds BEGIN EXCLUSIVE on the file, every POST is still
 * accepted (202, queued); the writer's transactions fail and are counted
 * (errors), /readyz turns unready, and once the lock is gone the writer
 * retries and every update reaches the file, none dropped. With nothing
 * queued, the idle writer's look at the store turns /readyz unready too.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

#include "harness.h"
#include "it_assert.h"

enum { UPDATES = 200 };
/* Bounds, not expectations: the writer's busy timeout plus retry backoff. */
#define FAIL_TIMEOUT 25.0
#define RECOVER_TIMEOUT 30.0

/* Counts rows through the lock holder's own connection (inside its transaction). */
static long long locked_count(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    cr_assert_eq(sqlite3_prepare_v2(db, "SELECT count(*) FROM run_node_state", -1, &st, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    long long n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

Test(lock, posts_are_accepted_while_the_file_is_locked)
{
    ns_server *s = ns_start("--queue-capacity 10000");
    cr_assert_not_null(s);
    sqlite3 *db = it_lock_db(s);

    ns_resp r = { 0 };
    int accepted = 0;
    for (int i = 0; i < UPDATES; i++) {
        char node[16], body[96];
        snprintf(node, sizeof node, "n%03d", i);
        snprintf(body, sizeof body, "{\"status\":\"running\",\"outputs\":%d}", i);
        cr_assert_eq(ns_post_state(s, "rl", node, NULL, body, &r), 0, "%s", r.error);
        cr_assert_eq(r.status, 202, "POST %d under the lock: %ld %s", i, r.status, r.body);
        accepted++;
    }
    /* Every answer came while the lock was held: nothing reached the file. */
    cr_assert_eq(accepted, UPDATES);
    cr_assert_eq(ns_stat(s, "updates_queued"), UPDATES);
    cr_assert_eq(ns_stat(s, "updates_processed"), 0, "committed through an exclusive lock?");
    cr_assert_eq(locked_count(db), 0);
    cr_assert_eq(ns_get_state(s, "rl", "n000", &r), 0);
    cr_assert_eq(r.status, 200, "reads work while the file is locked: %ld", r.status);
    json_t *doc = ns_resp_json(&r);
    cr_assert(json_is_false(json_object_get(doc, "durable")), "%s", r.body);
    json_decref(doc);

    /* Keep the lock until the writer has met it at least once. */
    cr_assert_eq(ns_wait_stat_ge(s, "errors", 1, FAIL_TIMEOUT), 0,
                 "no failed transaction counted while the file was locked");
    it_unlock_db(db);

    cr_assert_eq(ns_wait_idle(s, RECOVER_TIMEOUT), 0, "writer did not recover: %lld of %d",
                 ns_stat(s, "updates_processed"), UPDATES);
    cr_assert_eq(ns_stat(s, "updates_processed"), UPDATES);
    cr_assert_gt(ns_stat(s, "errors"), 0);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='rl' "
                              "AND status='running' AND CAST(outputs_json AS INTEGER) = "
                              "CAST(substr(node_id, 2) AS INTEGER)", NULL), UPDATES);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state", NULL), UPDATES);

    /* And it keeps working. */
    cr_assert_eq(ns_post_state(s, "rl", "after", "?wait=true", "{\"status\":\"running\"}", &r), 0);
    cr_assert_eq(r.status, 200, "?wait=true after recovery: %ld %s", r.status, r.body);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

/* A server whose /readyz answers 200 (into r) before anything is locked. */
static ns_server *start_ready(ns_resp *r)
{
    ns_server *s = ns_start(NULL);
    cr_assert_not_null(s);
    cr_assert_eq(ns_req(s, "GET", "/readyz", NULL, NULL, r), 0);
    cr_assert_eq(r->status, 200, "/readyz before the lock: %ld %s", r->status, r->body);
    return s;
}

Test(lock, readyz_unready_while_the_store_fails)
{
    ns_resp r = { 0 };
    ns_server *s = start_ready(&r);

    sqlite3 *db = it_lock_db(s);
    cr_assert_eq(ns_post_state(s, "ry", "a", NULL, "{\"status\":\"running\"}", &r), 0);
    cr_assert_eq(r.status, 202);
    cr_assert_eq(ns_wait_stat_ge(s, "errors", 1, FAIL_TIMEOUT), 0);

    /* Bounded poll: the writer reports the failure, then readiness follows. */
    cr_assert_eq(ns_req_until(s, "GET", "/readyz", 503, &r, 15.0, 10), 0,
                 "/readyz stayed %ld while every transaction failed %s", r.status, r.error);
    char why[512];
    cr_assert_eq(ns_check_problem(&r, 503, "not-ready", why, sizeof why), 0, "%s", why);
    cr_assert(r.retry_after[0] != '\0', "503 without Retry-After");
    /* Liveness is another matter: the process and its writer are alive. */
    cr_assert_eq(ns_req(s, "GET", "/healthz", NULL, NULL, &r), 0);
    cr_assert_eq(r.status, 200, "/healthz while the store fails: %ld", r.status);

    it_unlock_db(db);
    cr_assert_eq(ns_wait_idle(s, RECOVER_TIMEOUT), 0);
    cr_assert_eq(ns_req_until(s, "GET", "/readyz", 200, &r, 15.0, 10), 0,
                 "/readyz did not recover: %ld %s %s", r.status, r.body, r.error);
    ns_resp_free(&r);
    ns_free(s);
}

/*
 * With nothing to write, the database locked by another process is found
 * all the same (the idle writer tries the store): /readyz says so without
 * waiting for a write to fail, and recovers once the lock is gone.
 */
Test(lock, readyz_unready_while_another_process_holds_the_lock_and_nothing_is_queued)
{
    ns_resp r = { 0 };
    ns_server *s = start_ready(&r);

    sqlite3 *db = it_lock_db(s);
    cr_assert_eq(ns_req_until(s, "GET", "/readyz", 503, &r, 15.0, 10), 0,
                 "/readyz stayed %ld with the database locked", r.status);
    char why[512];
    cr_assert_eq(ns_check_problem(&r, 503, "not-ready", why, sizeof why), 0, "%s", why);
    cr_assert_eq(ns_stat(s, "updates_queued"), 0, "the test wrote something");
    it_unlock_db(db);
    cr_assert_eq(ns_req_until(s, "GET", "/readyz", 200, &r, 15.0, 10), 0,
                 "/readyz did not recover: %ld %s %s", r.status, r.body, r.error);
    ns_resp_free(&r);
    ns_free(s);
}
