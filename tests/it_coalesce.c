/*
 * it_coalesce: the writer coalesces queued updates of one node into one row
 * write (docs/design.md §4) and never puts more than --batch-size queued entries
 * into one transaction.
 *
 * The coalescing tests use a long --batch-interval so nothing is written
 * until a ?wait=true request (or SIGTERM) makes the writer flush: what lands
 * in one batch then does not depend on timing.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "it_assert.h"

#define IDLE_TIMEOUT 20.0

/* The file's row for (run, node) matches the state the server answered. */
static void expect_row_is(ns_server *s, const char *run, const char *node,
                          const json_t *state)
{
    ns_dbrow *row = ns_db_row(s, "SELECT * FROM run_node_state WHERE run_id=? AND node_id=?",
                              run, node, NULL);
    cr_assert_not_null(row, "no row for %s/%s", run, node);
    static const char *const text_cols[] = {
        "status", "scheduled_at", "started_at", "completed_at", "failed_at",
        "suspended_at", "last_error", "suspension_reason",
    };
    for (size_t i = 0; i < sizeof text_cols / sizeof *text_cols; i++) {
        const char *want = ns_jstr(state, text_cols[i]);
        const char *got = ns_dbrow_get(row, text_cols[i]);
        if (want == NULL)
            cr_assert_null(got, "%s/%s %s: file has %s, want NULL", run, node,
                           text_cols[i], got);
        else
            cr_assert(got != NULL && ns_ts_ms(got) == ns_ts_ms(want) &&
                          (ns_ts_ms(want) >= 0 || strcmp(got, want) == 0),
                      "%s/%s %s: file has %s, want %s", run, node, text_cols[i],
                      got ? got : "NULL", want);
    }
    long long seq = -1, attempt = -1;
    cr_assert_eq(ns_jint(state, "seq", &seq), 0);
    cr_assert_eq(ns_jint(state, "attempt", &attempt), 0);
    cr_assert_not_null(ns_dbrow_get(row, "seq"));
    cr_assert_eq(atoll(ns_dbrow_get(row, "seq")), seq, "%s/%s seq", run, node);
    cr_assert_eq(atoll(ns_dbrow_get(row, "attempt")), attempt);
    ns_dbrow_free(row);
}

Test(coalesce, three_updates_of_one_node_are_one_row_write)
{
    ns_server *s = ns_start("--batch-interval 60 --batch-size 1000");
    cr_assert_not_null(s);
    json_decref(it_post_json(s, "rc", "n1", NULL, "{\"status\":\"scheduled\"}", 202));
    json_decref(it_post_json(s, "rc", "n1", NULL, "{\"status\":\"running\"}", 202));
    /* Nothing is written yet: the interval is long and no one waits. */
    cr_assert_eq(ns_stat(s, "batches_written"), 0);
    json_t *last = it_post_json(s, "rc", "n1", "?wait=true",
                                "{\"status\":\"completed\",\"outputs\":{\"ok\":true}}", 200);
    cr_assert(json_is_true(json_object_get(last, "durable")));

    json_t *st = ns_stats(s);
    cr_assert_not_null(st);
    cr_assert_eq(it_jint(st, "updates_queued"), 3);
    cr_assert_eq(it_jint(st, "updates_processed"), 3);
    cr_assert_eq(it_jint(st, "updates_coalesced"), 2);
    cr_assert_eq(it_jint(st, "rows_written"), 1);
    cr_assert_eq(it_jint(st, "batches_written"), 1);
    cr_assert_eq(it_jint(st, "durable_seq"), it_jint(st, "last_seq"));
    json_decref(st);

    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state", NULL), 1);
    expect_row_is(s, "rc", "n1", last);
    cr_assert_not_null(ns_jstr(last, "scheduled_at"));
    cr_assert_not_null(ns_jstr(last, "started_at"));
    cr_assert_not_null(ns_jstr(last, "completed_at"));
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE "
                              "outputs_json = '{\"ok\":true}'", NULL), 1);
    json_decref(last);
    ns_free(s);
}

Test(coalesce, many_nodes_coalesce_per_node)
{
    ns_server *s = ns_start("--batch-interval 60 --batch-size 1000");
    cr_assert_not_null(s);
    enum { NODES = 50 };
    static const char *const steps[] = {
        "{\"status\":\"scheduled\"}", "{\"status\":\"running\"}",
        "{\"status\":\"completed\"}",
    };
    json_t *final[NODES];
    for (int step = 0; step < 3; step++)
        for (int i = 0; i < NODES; i++) {
            char node[16];
            snprintf(node, sizeof node, "n%03d", i);
            json_t *d = it_post_json(s, "rm", node, NULL, steps[step], 202);
            if (step == 2)
                final[i] = d;
            else
                json_decref(d);
        }
    json_decref(it_post_json(s, "rm", "flush", "?wait=true", "{\"status\":\"idle\"}", 200));

    json_t *st = ns_stats(s);
    cr_assert_not_null(st);
    cr_assert_eq(it_jint(st, "updates_processed"), 3 * NODES + 1);
    cr_assert_eq(it_jint(st, "updates_coalesced"), 2 * NODES);
    cr_assert_eq(it_jint(st, "rows_written"), NODES + 1);
    cr_assert_eq(it_jint(st, "batches_written"), 1);
    json_decref(st);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='rm' "
                              "AND status='completed'", NULL), NODES);
    for (int i = 0; i < NODES; i++) {
        char node[16];
        snprintf(node, sizeof node, "n%03d", i);
        expect_row_is(s, "rm", node, final[i]);
        json_decref(final[i]);
    }
    ns_free(s);
}

Test(coalesce, sigterm_flushes_the_coalesced_rows)
{
    ns_server *s = ns_start("--batch-interval 60 --batch-size 1000");
    cr_assert_not_null(s);
    json_t *final[2];
    for (int n = 0; n < 2; n++) {
        char node[8];
        snprintf(node, sizeof node, "n%d", n);
        json_decref(it_post_json(s, "rs", node, NULL, "{\"status\":\"scheduled\"}", 202));
        json_decref(it_post_json(s, "rs", node, NULL, "{\"status\":\"running\"}", 202));
        final[n] = it_post_json(s, "rs", node, NULL,
                                "{\"status\":\"failed\",\"last_error\":\"oom\","
                                "\"retryable\":true}", 202);
    }
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state", NULL), 0,
                 "written before the interval or a flush");
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert(ns_log_contains(s, "msg=stopped"));
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state", NULL), 2);
    for (int n = 0; n < 2; n++) {
        char node[8];
        snprintf(node, sizeof node, "n%d", n);
        expect_row_is(s, "rs", node, final[n]);
        json_decref(final[n]);
    }
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE retryable IS TRUE "
                              "AND last_error='oom'", NULL), 2);
    ns_free(s);
}

Test(coalesce, no_transaction_exceeds_batch_size)
{
    ns_server *s = ns_start("--batch-size 10 --batch-interval 0.2");
    cr_assert_not_null(s);
    enum { NODES = 200, BATCH = 10 };
    for (int i = 0; i < NODES; i++) {
        char node[16];
        snprintf(node, sizeof node, "n%03d", i);
        json_decref(it_post_json(s, "rb", node, NULL, "{\"status\":\"running\"}", 202));
    }
    cr_assert_eq(ns_wait_stat_eq(s, "updates_processed", NODES, IDLE_TIMEOUT), 0,
                 "writer did not catch up: processed %lld",
                 ns_stat(s, "updates_processed"));
    json_t *st = ns_stats(s);
    cr_assert_not_null(st);
    long long batches = it_jint(st, "batches_written");
    cr_assert_geq(batches, NODES / BATCH, "%lld batches for %d updates of at most %d",
                  batches, NODES, BATCH);
    cr_assert_eq(it_jint(st, "rows_written"), NODES);
    cr_assert_eq(it_jint(st, "updates_coalesced"), 0);
    json_t *hist = json_object_get(st, "batch_updates");
    if (json_is_object(hist))
        cr_assert_eq(json_integer_value(json_object_get(hist, "count")), batches);
    json_decref(st);

    /* Every batch fell in the le="10" bucket. */
    ns_resp r = { 0 };
    cr_assert_eq(ns_req(s, "GET", "/metrics", NULL, NULL, &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 200);
    double le10 = -1, count = -1, total = -1;
    cr_assert_eq(ns_prom_value(r.body, "nodestate_batch_updates_bucket{le=\"10\"}", &le10), 0,
                 "no nodestate_batch_updates_bucket{le=\"10\"} in:\n%s", r.body);
    cr_assert_eq(ns_prom_value(r.body, "nodestate_batch_updates_count", &count), 0);
    cr_assert_eq(ns_prom_value(r.body, "nodestate_batch_updates_sum", &total), 0);
    cr_assert_eq((long long)count, batches);
    cr_assert_eq((long long)le10, (long long)count, "%g of %g batches held <= 10 updates",
                 le10, count);
    cr_assert_eq((long long)total, NODES);
    ns_resp_free(&r);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='rb'", NULL),
                 NODES);
    ns_free(s);
}
