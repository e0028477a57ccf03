/*
 * it_load: many concurrent workers with keep-alive connections report full
 * node lifecycles; every report is accepted, every node ends up completed in
 * the file, and the single writer never meets "database is locked". (How
 * few transactions batching makes of them depends on the machine's load:
 * bench/engine_bench.c and bench/run.sh measure that.)
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "harness.h"

enum {
    THREADS = 16,
    RUNS = 4,
    NODES_PER_THREAD = 64,               /* 1,024 nodes in all */
    NODES = THREADS * NODES_PER_THREAD,
    UPDATES = 3 * NODES,
};

static const char *const phases[] = { "scheduled", "running", "completed" };

typedef struct worker {
    ns_server *s;
    ns_client *c;
    int id;
    int failures;            /* answers that were not the expected 202 */
    char first_error[512];
} worker;

static void worker_fail(worker *w, const char *fmt, const char *a, long st,
                        const char *body)
{
    if (w->failures++ == 0)
        snprintf(w->first_error, sizeof w->first_error, fmt, a, st, body);
}

/*
 * Each worker walks its nodes through the lifecycle phase by phase, so the
 * runs' nodes and the threads' requests interleave.
 */
static void *worker_main(void *arg)
{
    worker *w = arg;
    ns_resp r = { 0 };
    for (int phase = 0; phase < 3; phase++) {
        for (int i = 0; i < NODES_PER_THREAD; i++) {
            char run[32], node[32], body[128], want[64];
            snprintf(run, sizeof run, "load-%d", (i + w->id) % RUNS);
            snprintf(node, sizeof node, "t%02d-n%03d", w->id, i);
            snprintf(body, sizeof body, "{\"status\":\"%s\",\"outputs\":{\"t\":%d,\"i\":%d}}",
                     phases[phase], w->id, i);
            snprintf(want, sizeof want, "\"status\":\"%s\"", phases[phase]);
            if (ns_client_post_state(w->c, run, node, body, &r) != 0) {
                worker_fail(w, "%s: transport error %ld %s", node, 0, r.error);
                continue;
            }
            if (r.status != 202)
                worker_fail(w, "%s: status %ld: %.300s", node, r.status, r.body);
            else if (strstr(r.body, want) == NULL)
                worker_fail(w, "%s: %ld answer lacks the new status: %.300s", node,
                            r.status, r.body);
        }
    }
    ns_resp_free(&r);
    return NULL;
}

Test(load, concurrent_lifecycles_all_land)
{
    ns_server *s = ns_start("--queue-capacity 100000");
    cr_assert_not_null(s);
    worker w[THREADS];
    pthread_t tid[THREADS];
    memset(w, 0, sizeof w);
    for (int t = 0; t < THREADS; t++) {
        w[t].s = s;
        w[t].id = t;
        w[t].c = ns_client_new(s);
        cr_assert_not_null(w[t].c);
    }
    int started = 0;
    for (; started < THREADS; started++)
        if (pthread_create(&tid[started], NULL, worker_main, &w[started]) != 0)
            break;
    for (int t = 0; t < started; t++)
        pthread_join(tid[t], NULL);
    cr_assert_eq(started, THREADS, "could not start the worker threads");
    for (int t = 0; t < THREADS; t++) {
        cr_assert_eq(w[t].failures, 0, "worker %d: %d bad answers, first: %s", t,
                     w[t].failures, w[t].first_error);
        ns_client_free(w[t].c);
    }

    cr_assert_eq(ns_wait_idle(s, 30.0), 0, "writer did not catch up");
    json_t *st = ns_stats(s);
    cr_assert_not_null(st);
    long long queued = -1, processed = -1, errors = -1;
    cr_assert_eq(ns_jint(st, "updates_queued", &queued), 0);
    cr_assert_eq(ns_jint(st, "updates_processed", &processed), 0);
    cr_assert_eq(ns_jint(st, "errors", &errors), 0);
    json_decref(st);
    cr_assert_eq(queued, UPDATES);
    cr_assert_eq(processed, queued);
    cr_assert_eq(errors, 0, "failed transactions under plain load");

    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state", NULL), NODES);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE status='completed' "
                              "AND started_at IS NOT NULL AND completed_at IS NOT NULL", NULL),
                 NODES);
    cr_assert_eq(ns_db_int(s, "SELECT count(DISTINCT run_id) FROM run_node_state", NULL), RUNS);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE "
                              "json_extract(outputs_json,'$.i') = "
                              "CAST(substr(node_id, 6) AS INTEGER)", NULL), NODES);

    /* Each run lists all its nodes, completed, through pagination. */
    for (int run = 0; run < RUNS; run++) {
        char path[128];
        snprintf(path, sizeof path, "/runs/load-%d/nodes?limit=100", run);
        int seen = 0;
        ns_resp r = { 0 };
        for (int page = 0; page < 10; page++) {
            cr_assert_eq(ns_req(s, "GET", path, NULL, NULL, &r), 0, "%s", r.error);
            cr_assert_eq(r.status, 200, "%s: %ld", path, r.status);
            json_t *doc = ns_resp_json(&r);
            json_t *nodes = json_object_get(doc, "nodes");
            cr_assert(json_is_array(nodes));
            for (size_t i = 0; i < json_array_size(nodes); i++) {
                const char *status = ns_jstr(json_array_get(nodes, i), "status");
                cr_assert(status != NULL && strcmp(status, "completed") == 0);
            }
            seen += (int)json_array_size(nodes);
            const char *next = ns_jstr(doc, "next");
            if (next != NULL)
                snprintf(path, sizeof path, "/runs/load-%d/nodes?limit=100&after=%s", run,
                         next);
            json_decref(doc);
            if (next == NULL)
                break;
        }
        ns_resp_free(&r);
        cr_assert_eq(seen, NODES / RUNS, "run %d lists %d nodes", run, seen);
    }
    cr_assert(!ns_log_contains(s, "database is locked"), "the log mentions a locked database");
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}
