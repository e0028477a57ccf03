/*
 * it_shutdown: SIGTERM and SIGINT flush everything accepted before the process
 * exits 0, and a restart on the same file serves the persisted state: reads,
 * lists and summaries work, the transition rules apply to what was persisted,
 * and seq keeps growing past anything seen before (deleted runs included).
 * SIGHUP (a closed terminal, an operator's habit), SIGUSR1 and SIGUSR2 (a
 * log rotation's or a reload's) change nothing: the server keeps serving,
 * and a later SIGTERM still flushes everything.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "harness.h"
#include "it_assert.h"

Test(shutdown, sigterm_flushes_every_accepted_update)
{
    enum { UPDATES = 5000 };
    ns_server *s = ns_start("--batch-interval 60 --batch-size 100000 --queue-capacity 100000 "
                            "--shutdown-timeout 60");
    cr_assert_not_null(s);
    ns_resp r = { 0 };
    long long max_seq = 0;
    for (int i = 0; i < UPDATES; i++) {
        char run[16], node[16], body[128];
        snprintf(run, sizeof run, "sd-%d", i % 5);
        snprintf(node, sizeof node, "n%04d", i);
        snprintf(body, sizeof body,
                 "{\"status\":\"running\",\"attempt\":2,\"outputs\":{\"i\":%d}}", i);
        cr_assert_eq(ns_post_state(s, run, node, NULL, body, &r), 0, "POST %d: %s", i, r.error);
        cr_assert_eq(r.status, 202, "POST %d: %ld %s", i, r.status, r.body);
        json_t *doc = ns_resp_json(&r);
        long long seq = it_jint(doc, "seq");
        cr_assert_gt(seq, max_seq, "seq does not grow");
        max_seq = seq;
        json_decref(doc);
    }
    ns_resp_free(&r);

    cr_assert_eq(ns_stop(s, SIGTERM), 0, "exit code after SIGTERM");
    cr_assert(ns_log_contains(s, "msg=stopped"), "no msg=stopped in the log");
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state", NULL), UPDATES);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE status='running' "
                              "AND attempt=2 AND started_at IS NOT NULL AND "
                              "outputs_json = '{\"i\":' || "
                              "CAST(CAST(substr(node_id, 2) AS INTEGER) AS TEXT) || '}' AND "
                              "run_id = 'sd-' || (CAST(substr(node_id, 2) AS INTEGER) % 5)",
                              NULL), UPDATES);
    cr_assert_eq(ns_db_int(s, "SELECT max(seq) FROM run_node_state", NULL), max_seq);
    ns_free(s);
}

Test(shutdown, sigint_flushes_too)
{
    ns_server *s = ns_start("--batch-interval 30");
    cr_assert_not_null(s);
    for (int i = 0; i < 10; i++) {
        char node[8];
        snprintf(node, sizeof node, "n%d", i);
        json_decref(it_post_json(s, "si", node, NULL, "{\"status\":\"scheduled\"}", 202));
        json_decref(it_post_json(s, "si", node, NULL, "{\"status\":\"completed\"}", 202));
    }
    cr_assert_eq(ns_stop(s, SIGINT), 0, "exit code after SIGINT");
    cr_assert(ns_log_contains(s, "msg=stopped"));
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE status='completed'",
                           NULL), 10);
    ns_free(s);
}

Test(shutdown, sighup_is_ignored_and_sigterm_still_flushes)
{
    enum { BEFORE = 20, AFTER = 20 };
    /* A long interval: what is queued at SIGHUP is still only in memory. */
    ns_server *s = ns_start("--batch-interval 60");
    cr_assert_not_null(s);
    char node[16];
    for (int i = 0; i < BEFORE; i++) {
        snprintf(node, sizeof node, "n%03d", i);
        it_post(s, "hup", node, NULL, "{\"status\":\"running\"}", 202);
    }
    cr_assert_eq(ns_stat(s, "updates_processed"), 0);
    pid_t pid = ns_pid(s);
    cr_assert_eq(kill(pid, SIGHUP), 0);
    cr_assert_eq(kill(pid, SIGUSR1), 0);
    cr_assert_eq(kill(pid, SIGUSR2), 0);
    /* Still the same process, still serving: reads, writes, health. */
    for (int i = BEFORE; i < BEFORE + AFTER; i++) {
        snprintf(node, sizeof node, "n%03d", i);
        it_post(s, "hup", node, NULL, "{\"status\":\"running\"}", 202);
    }
    json_decref(it_get_json(s, "/runs/hup/nodes/n000/state", 200));
    json_decref(it_get_json(s, "/healthz", 200));
    cr_assert_eq(ns_pid(s), pid);
    cr_assert_eq(kill(pid, SIGHUP), 0);
    cr_assert_eq(ns_stop(s, SIGTERM), 0, "exit code after SIGHUP then SIGTERM");
    cr_assert(ns_log_contains(s, "msg=stopped"), "no msg=stopped in the log");
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='hup'", NULL),
                 BEFORE + AFTER, "updates accepted before and after SIGHUP were lost");
    ns_free(s);
}

/* A state without "durable", to compare before and after a restart. */
static json_t *without_durable(json_t *state)
{
    json_t *copy = json_deep_copy(state);
    cr_assert_not_null(copy);
    json_object_del(copy, "durable");
    return copy;
}

Test(shutdown, restart_serves_persisted_state)
{
    ns_server *s = ns_start("--batch-interval 0.05");
    cr_assert_not_null(s);
    json_decref(it_post_json(s, "rp", "n1", NULL,
                             "{\"status\":\"scheduled\",\"resume_state\":{\"k\":[1,2]}}", 202));
    json_decref(it_post_json(s, "rp", "n1", NULL, "{\"status\":\"running\"}", 202));
    json_decref(it_post_json(s, "rp", "n1", NULL,
                             "{\"status\":\"completed\",\"outputs\":{\"v\":\"done\"}}", 202));
    json_decref(it_post_json(s, "rp", "n2", NULL, "{\"status\":\"running\",\"attempt\":2}",
                             202));
    json_decref(it_post_json(s, "rp", "n3", NULL,
                             "{\"status\":\"suspended\",\"suspension_reason\":\"input\","
                             "\"last_error\":\"e\\u00e9\\\"\",\"retryable\":true}", 202));
    json_decref(it_post_json(s, "gone", "g1", NULL, "{\"status\":\"running\"}", 202));

    const char *const nodes[] = { "n1", "n2", "n3" };
    json_t *before[3];
    long long run_last_seq = 0;
    for (int i = 0; i < 3; i++) {
        char path[64];
        snprintf(path, sizeof path, "/runs/rp/nodes/%s/state", nodes[i]);
        json_t *d = it_get_json(s, path, 200);
        if (it_jint(d, "seq") > run_last_seq)
            run_last_seq = it_jint(d, "seq");
        before[i] = without_durable(d);
        json_decref(d);
    }
    /* The delete is the highest seq; no row keeps it, only the meta table. */
    long long delete_seq = it_delete_seq(s, "gone", NULL, 202);
    cr_assert_gt(delete_seq, run_last_seq);
    ns_resp r = { 0 };

    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_eq(ns_restart(s, "--batch-interval 0.05"), 0, "restart on the same file");

    for (int i = 0; i < 3; i++) {
        char path[64];
        snprintf(path, sizeof path, "/runs/rp/nodes/%s/state", nodes[i]);
        cr_assert_eq(ns_req(s, "GET", path, NULL, NULL, &r), 0, "%s", r.error);
        cr_assert_eq(r.status, 200, "GET %s after restart: %ld %s", path, r.status, r.body);
        json_t *d = ns_resp_json(&r);
        cr_assert(json_is_true(json_object_get(d, "durable")), "%s", r.body);
        char etag[48];
        snprintf(etag, sizeof etag, "\"%lld\"", it_jint(d, "seq"));
        cr_assert_str_eq(r.etag, etag);
        json_t *after = without_durable(d);
        char *a = json_dumps(after, JSON_COMPACT | JSON_SORT_KEYS);
        char *b = json_dumps(before[i], JSON_COMPACT | JSON_SORT_KEYS);
        cr_assert(json_equal(after, before[i]), "%s changed over the restart:\n"
                  "before %s\nafter  %s", nodes[i], b, a);
        free(a);
        free(b);
        json_decref(after);
        json_decref(d);
    }
    cr_assert_eq(ns_req(s, "GET", "/runs/gone/nodes/g1/state", NULL, NULL, &r), 0);
    cr_assert_eq(r.status, 404, "a deleted run came back: %s", r.body);

    json_t *page = it_get_json(s, "/runs/rp/nodes", 200);
    cr_assert_eq(json_array_size(json_object_get(page, "nodes")), 3);
    json_decref(page);
    page = it_get_json(s, "/runs/rp/nodes?status=completed,suspended", 200);
    json_t *listed = json_object_get(page, "nodes");
    cr_assert_eq(json_array_size(listed), 2);
    cr_assert_str_eq(ns_jstr(json_array_get(listed, 0), "node_id"), "n1");
    cr_assert_str_eq(ns_jstr(json_array_get(listed, 1), "node_id"), "n3");
    json_decref(page);
    json_t *sum = it_get_json(s, "/runs/rp", 200);
    cr_assert_eq(it_jint(sum, "nodes"), 3);
    json_t *counts = json_object_get(sum, "counts");
    cr_assert_eq(it_jint(counts, "completed"), 1);
    cr_assert_eq(it_jint(counts, "running"), 1);
    cr_assert_eq(it_jint(counts, "suspended"), 1);
    cr_assert_eq(it_jint(counts, "scheduled"), 0);
    cr_assert_eq(it_jint(sum, "last_seq"), run_last_seq);
    json_decref(sum);

    /* The rules see the persisted state. */
    cr_assert_eq(ns_post_state(s, "rp", "n1", NULL, "{\"status\":\"running\"}", &r), 0);
    char why[512];
    cr_assert_eq(ns_check_problem(&r, 409, "illegal-transition", why, sizeof why), 0,
                 "regression after restart: %s", why);
    cr_assert_eq(ns_post_state(s, "rp", "n2", NULL,
                               "{\"status\":\"completed\",\"attempt\":1}", &r), 0);
    cr_assert_eq(ns_check_problem(&r, 409, "stale-attempt", why, sizeof why), 0,
                 "stale attempt after restart: %s", why);
    json_decref(it_post_json(s, "rp", "n1", NULL, "{\"status\":\"completed\"}", 200));

    /* seq keeps growing past the highest ever assigned, the delete's. */
    json_t *d = it_post_json(s, "rp", "n2", NULL, "{\"status\":\"completed\"}", 202);
    cr_assert_gt(it_jint(d, "seq"), delete_seq, "seq went back after a restart");
    cr_assert_eq(it_jint(d, "attempt"), 2);
    json_decref(d);
    d = it_post_json(s, "new-run", "x", NULL, "{\"status\":\"scheduled\"}", 202);
    cr_assert_gt(it_jint(d, "seq"), delete_seq);
    json_decref(d);

    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='rp' AND "
                              "node_id='n2' AND status='completed'", NULL), 1);
    for (int i = 0; i < 3; i++)
        json_decref(before[i]);
    ns_resp_free(&r);
    ns_free(s);
}
