/*
 * it_faults: faults injected into the store (the nodestate-faults test build,
 * driven by NODESTATE_FAULTS) are survived. A commit that fails with SQLITE_BUSY,
 * an I/O error or a full disk is retried with backoff, counted in /stats
 * "errors" and logged (msg=commit-failed), and every update still reaches the
 * file; a row SQLite refuses for good is isolated (msg=row-isolated,
 * rows_isolated) while the rest of its batch commits, and the server keeps
 * working.
 *
 * The harness runs nodestate-faults (built beside NODESTATE_BIN in test
 * builds) with NODESTATE_FAULTS in its environment.
 */
#include <criterion/criterion.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "harness.h"
#include "it_assert.h"

/* The counts asserted here (commits, errors) assume the defaults. */
TestSuite(faults, .init = it_env_clear);

/* Starts dirname(NODESTATE_BIN)/nodestate-faults with NODESTATE_FAULTS=faults. */
static ns_server *start_faults(const char *faults, const char *extra_args)
{
    const char *bin = NODESTATE_BIN;
    const char *slash = strrchr(bin, '/');
    char path[PATH_MAX], var[512];
    snprintf(path, sizeof path, "%.*s/nodestate-faults",
             slash != NULL ? (int)(slash - bin) : 1, slash != NULL ? bin : ".");
    cr_assert_eq(access(path, X_OK), 0,
                 "%s is not built (test builds build it beside nodestate)", path);
    snprintf(var, sizeof var, "NODESTATE_FAULTS=%s", faults);
    const char *const env[] = { var, NULL };
    ns_server *s = ns_start_bin(path, env, "%s", extra_args != NULL ? extra_args : "");
    cr_assert_not_null(s, "nodestate-faults (NODESTATE_FAULTS=%s) did not listen; "
                       "its log is above", faults);
    return s;
}

static void post(ns_server *s, const char *run, const char *node, const char *query,
                 const char *json, long want)
{
    ns_resp r = { 0 };
    cr_assert_eq(ns_post_state(s, run, node, query, json, &r), 0, "%s", r.error);
    cr_assert_eq(r.status, want, "POST /runs/%s/nodes/%s/state%s %s: %ld %s, want %ld",
                 run, node, query ? query : "", json, r.status, r.body, want);
    ns_resp_free(&r);
}

/* The first log line holding needle (a copy), or NULL. */
static char *log_line(ns_server *s, const char *needle)
{
    char *log = ns_log(s);
    cr_assert_not_null(log);
    char *hit = strstr(log, needle);
    char *line = NULL;
    if (hit != NULL) {
        char *start = hit;
        while (start > log && start[-1] != '\n')
            start--;
        size_t n = strcspn(start, "\n");
        line = strndup(start, n);
    }
    free(log);
    return line;
}

/* Whether text holds one of the '|'-separated words, ignoring case. */
static bool mentions(const char *text, const char *words)
{
    char *copy = strdup(words);
    cr_assert_not_null(copy);
    bool found = false;
    char *save = NULL;
    for (char *w = strtok_r(copy, "|", &save); w != NULL && !found;
         w = strtok_r(NULL, "|", &save)) {
        size_t n = strlen(w);
        for (const char *p = text; *p != '\0' && !found; p++)
            found = strncasecmp(p, w, n) == 0;
    }
    free(copy);
    return found;
}

enum { UPDATES = 40 };

/*
 * Injects `faults` (failing `failures` commits), posts UPDATES updates and
 * checks the failures were counted and logged, and everything committed.
 */
static void check_commit_fault(const char *faults, long long failures, const char *what)
{
    ns_server *s = start_faults(faults, NULL);
    for (int i = 0; i < UPDATES; i++) {
        char node[16], body[96];
        snprintf(node, sizeof node, "n%03d", i);
        snprintf(body, sizeof body, "{\"status\":\"running\",\"outputs\":%d}", i);
        post(s, "flt", node, NULL, body, 202);
    }
    cr_assert(ns_wait_idle(s, 30.0) == 0, "%s: the queue did not drain (errors %lld)", faults,
              ns_stat(s, "errors"));
    long long errors = ns_stat(s, "errors");
    fprintf(stderr, "it_faults: %s: errors %lld, batches %lld\n", faults, errors,
            ns_stat(s, "batches_written"));
    cr_assert_eq(errors, failures, "%s: errors %lld, want %lld", faults, errors, failures);
    char *line = log_line(s, "msg=commit-failed");
    cr_assert_not_null(line, "%s: no msg=commit-failed in the log", faults);
    cr_assert(strstr(line, "error=") != NULL, "no error= in: %s", line);
    cr_assert(mentions(line, what), "%s: the error does not say \"%s\": %s", faults,
              what, line);
    fprintf(stderr, "it_faults: %s\n", line);
    free(line);
    cr_assert_eq(ns_stat(s, "updates_processed"), UPDATES);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='flt' AND "
                              "CAST(outputs_json AS INTEGER) = "
                              "CAST(substr(node_id, 2) AS INTEGER)", NULL), UPDATES);
    /* Healthy again: ready, and durable writes go through. */
    ns_resp r = { 0 };
    cr_assert_eq(ns_req(s, "GET", "/readyz", NULL, NULL, &r), 0);
    cr_assert_eq(r.status, 200, "/readyz after the faults: %ld %s", r.status, r.body);
    ns_resp_free(&r);
    post(s, "flt", "after", "?wait=true", "{\"status\":\"running\"}", 200);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

Test(faults, busy_commits_are_retried)
{
    check_commit_fault("commit=busy:3", 3, "lock|busy");
}

Test(faults, io_errors_are_retried)
{
    check_commit_fault("commit=ioerr:2", 2, "I/O|ioerr");
}

Test(faults, disk_full_is_retried)
{
    check_commit_fault("commit=full:1", 1, "full");
}

Test(faults, faults_start_after_successful_writes)
{
    /* Five commits go through, the next two fail, then all is well again. */
    ns_server *s = start_faults("commit=ioerr:2,after=5", NULL);
    for (int i = 0; i < 10; i++) {
        char node[16];
        snprintf(node, sizeof node, "n%d", i);
        post(s, "aft", node, "?wait=true&timeout=25", "{\"status\":\"running\"}", 200);
        cr_assert_eq(ns_stat(s, "errors"), i < 5 ? 0 : 2, "errors after durable POST %d", i);
    }
    cr_assert_eq(ns_stat(s, "batches_written"), 10);
    cr_assert(ns_log_contains(s, "msg=commit-failed"));
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='aft'", NULL),
                 10);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

/*
 * Posts items a, bad, c to run "bat" with ?wait=true and checks the answer:
 * "bad" (which the faults build isolates) is a write-refused problem, not
 * "accepted" under "durable": true, the counts follow, and a and c are
 * stored. Then stops s.
 */
static void durable_batch_names_bad(ns_server *s)
{
    ns_resp r = { 0 };
    cr_assert_eq(ns_req(s, "POST", "/runs/bat/nodes?wait=true&timeout=25",
                        "{\"updates\":[{\"node_id\":\"a\",\"status\":\"running\"},"
                        "{\"node_id\":\"bad\",\"status\":\"running\"},"
                        "{\"node_id\":\"c\",\"status\":\"running\"}]}", NULL, &r), 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    json_t *doc = ns_resp_json(&r);
    cr_assert_eq(it_jint(doc, "accepted"), 2, "%s", r.body);
    cr_assert_eq(it_jint(doc, "refused"), 1, "%s", r.body);
    cr_assert(json_is_true(json_object_get(doc, "durable")), "%s", r.body);
    json_t *results = json_object_get(doc, "results");
    cr_assert_eq(json_array_size(results), 3, "%s", r.body);
    json_t *bad = json_array_get(results, 1);
    cr_assert_str_eq(ns_jstr(bad, "node_id"), "bad", "%s", r.body);
    cr_assert_eq(it_jint(bad, "code"), 500, "%s", r.body);
    cr_assert(strstr(ns_jstr(json_object_get(bad, "problem"), "type"), "write-refused"),
              "%s", r.body);
    for (size_t i = 0; i < 3; i += 2) {
        json_t *ok = json_array_get(results, i);
        cr_assert_eq(it_jint(ok, "code"), 202, "%s", r.body);
        cr_assert(it_jint(ok, "seq") > 0, "%s", r.body);
    }
    json_decref(doc);
    ns_resp_free(&r);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id = 'bat'",
                           NULL), 2);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

/* A batch answered after ?wait=true says which of its items the database refused. */
Test(faults, durable_batch_names_the_item_the_database_refused)
{
    durable_batch_names_bad(start_faults("row=bad", "--batch-interval 60"));
}

/*
 * The same, with more refusals in one commit than a fixed ring would hold
 * (engine_refused once kept the last 256): 300 other runs' "bad" rows are
 * refused in the same commit, after the batch's own (rows go to the store
 * in key order, "bat" first), so the batch's refused seq was pushed out
 * before the batch looked. A bulk refusal (a shared store superseding a
 * whole batch of a former owner, up to --max-batch-updates items) did the
 * same to one batch's own items.
 */
Test(faults, durable_batch_names_its_refused_item_among_many_refusals)
{
    ns_server *s = start_faults("row=bad", "--batch-interval 60");
    ns_resp r = { 0 };
    char path[64];
    for (int i = 0; i < 300; i++) {
        snprintf(path, sizeof path, "/runs/z%03d/nodes/bad/state", i);
        cr_assert_eq(ns_req(s, "POST", path, "{\"status\":\"running\"}", NULL, &r), 0);
        cr_assert_eq(r.status, 202, "%ld %s", r.status, r.body);
        ns_resp_free(&r);
    }
    durable_batch_names_bad(s);
}

Test(faults, unwritable_row_is_isolated_and_the_batch_commits)
{
    ns_server *s = start_faults("row=bad", "--batch-interval 60");
    /* One batch: nothing commits until the durable POST of the last one. */
    post(s, "iso", "a", NULL, "{\"status\":\"running\",\"outputs\":1}", 202);
    post(s, "iso", "bad", NULL, "{\"status\":\"running\",\"outputs\":2}", 202);
    post(s, "iso", "c", NULL, "{\"status\":\"running\",\"outputs\":3}", 202);
    post(s, "other", "d", "?wait=true&timeout=25", "{\"status\":\"running\"}", 200);
    cr_assert(ns_wait_idle(s, 30.0) == 0);

    cr_assert_eq(ns_stat(s, "batches_written"), 1, "the batch was split or retried");
    cr_assert_eq(ns_stat(s, "rows_isolated"), 1);
    char *line = log_line(s, "msg=row-isolated");
    cr_assert_not_null(line, "no msg=row-isolated in the log");
    cr_assert(strstr(line, "node_id=bad") != NULL, "the log line does not name the row: %s",
              line);
    fprintf(stderr, "it_faults: %s\n", line);
    free(line);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE "
                              "(run_id='iso' AND node_id IN ('a','c')) OR "
                              "(run_id='other' AND node_id='d')", NULL), 3);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE node_id='bad'",
                           NULL), 0);

    /* Not retried forever: it stays counted once while the server goes on. */
    for (int i = 0; i < 5; i++) {
        char node[16];
        snprintf(node, sizeof node, "later%d", i);
        post(s, "iso", node, "?wait=true&timeout=25", "{\"status\":\"running\"}", 200);
    }
    cr_assert_eq(ns_stat(s, "rows_isolated"), 1);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='iso'", NULL),
                 7);
    ns_resp r = { 0 };
    /* The refused node reads as the file has it (absent), not as the cache once had it. */
    cr_assert_eq(ns_req(s, "GET", "/runs/iso/nodes/bad/state", NULL, NULL, &r), 0);
    cr_assert_eq(r.status, 404, "GET of the refused node: %ld %s", r.status, r.body);
    /* A durable wait on a refused update says so instead of "durable": true. */
    cr_assert_eq(ns_req(s, "POST", "/runs/iso/nodes/bad/state?wait=true&timeout=25",
                        "{\"status\":\"running\"}", NULL, &r), 0);
    cr_assert_eq(r.status, 500, "durable POST of a refused row: %ld %s", r.status, r.body);
    cr_assert(strstr(r.body, "urn:nodestate:problem:write-refused") != NULL, "%s", r.body);
    cr_assert_eq(ns_stat(s, "rows_isolated"), 2);
    cr_assert_eq(ns_req(s, "GET", "/readyz", NULL, NULL, &r), 0);
    cr_assert_eq(r.status, 200, "/readyz: %ld %s", r.status, r.body);
    cr_assert_eq(ns_req(s, "GET", "/healthz", NULL, NULL, &r), 0);
    cr_assert_eq(r.status, 200, "/healthz: %ld %s", r.status, r.body);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

/*
 * A WAL checkpoint round that fails is counted (checkpoint_failures) and
 * logged once for its streak, the round that completes after it is logged
 * too, the WAL's length shows in wal_frames, and nothing is lost: the
 * commits never depended on the checkpoint.
 */
Test(faults, failed_checkpoints_are_counted_and_logged)
{
    enum { PER_BATCH = 500, MAX_BATCHES = 400 };
    ns_server *s = start_faults("checkpoint=1", NULL);
    ns_resp r = { 0 };
    int batches = 0;
    char *failed = NULL, *recovered = NULL;
    /* New nodes until a round failed (each commit past ~1,000 WAL frames asks for one). */
    for (; batches < MAX_BATCHES && (failed = log_line(s, "msg=checkpoint-failed")) == NULL;
         batches++) {
        size_t cap = 32 + (size_t)PER_BATCH * 64, len = 0;
        char *body = malloc(cap);
        cr_assert_not_null(body);
        len += (size_t)snprintf(body, cap, "{\"updates\":[");
        for (int i = 0; i < PER_BATCH; i++)
            len += (size_t)snprintf(body + len, cap - len,
                                    "%s{\"node_id\":\"n%07d\",\"status\":\"running\"}",
                                    i ? "," : "", batches * PER_BATCH + i);
        snprintf(body + len, cap - len, "]}");
        cr_assert_eq(ns_req(s, "POST", "/runs/ckpt/nodes?wait=true&timeout=25", body, NULL, &r),
                     0, "%s", r.error);
        cr_assert_eq(r.status, 200, "batch %d: %ld %s", batches, r.status, r.body);
        free(body);
    }
    cr_assert_not_null(failed, "no msg=checkpoint-failed after %d batches of %d", batches,
                       PER_BATCH);
    /* A failed round is tried again a second later, whatever the commits ask. */
    long long end = ns_mono_ms() + 30000;
    while ((recovered = log_line(s, "msg=checkpoint-recovered")) == NULL && ns_mono_ms() < end)
        ns_sleep_ms(10);
    cr_assert_not_null(recovered, "no msg=checkpoint-recovered within 30 s");
    fprintf(stderr, "it_faults: %s\n", recovered);
    cr_assert(strstr(recovered, "failures=1") != NULL, "%s", recovered);
    free(recovered);
    cr_assert(strstr(failed, "level=warn") != NULL, "%s", failed);
    cr_assert(strstr(failed, "failures=1") != NULL, "%s", failed);
    cr_assert(strstr(failed, "injected") != NULL, "the error is not named: %s", failed);
    free(failed);
    cr_assert_eq(ns_stat(s, "checkpoint_failures"), 1);
    cr_assert(ns_stat(s, "wal_frames") > 0, "wal_frames %lld", ns_stat(s, "wal_frames"));
    cr_assert_eq(ns_req(s, "GET", "/readyz", NULL, NULL, &r), 0);
    cr_assert_eq(r.status, 200, "/readyz: %ld %s", r.status, r.body);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='ckpt'", NULL),
                 (long long)batches * PER_BATCH);
    ns_free(s);
}
