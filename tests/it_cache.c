/*
 * it_cache: the cache is bounded and start-up is lazy. With --cache-max-nodes
 * below what was written, whole idle runs are evicted; every evicted run reads
 * back whole and right from SQLite (each node, the listing with a status filter
 * and pagination, the summary), and the transition rules judge updates of an
 * evicted node against the state on disk. With --cache-max-bytes below what
 * was written (nodes with large outputs), cache_bytes stays within the bound
 * plus what queued writes pin, and within it once they are committed, while
 * every node still reads back. A database of 1,000,000 rows is served
 * without loading the table: one run cached, memory small (how soon it
 * serves is printed, not asserted: that is a speed figure).
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "harness.h"
#include "it_assert.h"

enum {
    RUNS = 10,
    NODES = 50,
    MAX_NODES = 100,         /* --cache-max-nodes: two runs' worth */
    PAGE = 7,                /* listing page size, not a divisor of anything here */
};

static const char *const statuses[] = { "scheduled", "running", "completed" };

/* What node j of every run was given. */
static const char *node_status(int j)
{
    return statuses[j % 3];
}

static int node_attempt(int j)
{
    return 1 + j % 2;
}

static json_t *node_outputs(int run, int j)
{
    json_t *o = json_pack("{s:i, s:i, s:[s, i]}", "run", run, "j", j, "tags", "x", j * 7);
    cr_assert_not_null(o);
    return o;
}

/* The node states as the POSTs answered them, without "durable". */
typedef struct written {
    json_t *state[RUNS][NODES];
} written;

/*
 * Asserts one node state object is what run/j was given, and (when w is
 * given) exactly what its POST answered, server stamps and seq included.
 */
static void check_node(const written *w, const json_t *n, int run, int j)
{
    char run_id[16], node_id[16];
    snprintf(run_id, sizeof run_id, "c%02d", run);
    snprintf(node_id, sizeof node_id, "n%03d", j);
    char *text = json_dumps(n, JSON_COMPACT);
    cr_assert_str_eq(ns_jstr(n, "run_id"), run_id, "%s", text);
    cr_assert_str_eq(ns_jstr(n, "node_id"), node_id, "%s", text);
    cr_assert_str_eq(ns_jstr(n, "status"), node_status(j), "%s", text);
    cr_assert_eq(it_jint(n, "attempt"), node_attempt(j), "%s", text);
    json_t *want = node_outputs(run, j);
    cr_assert(json_equal(json_object_get(n, "outputs"), want), "outputs of %s", text);
    json_decref(want);
    char err[32];
    snprintf(err, sizeof err, "e-%d-%d", run, j);
    cr_assert_str_eq(ns_jstr(n, "last_error"), err, "%s", text);
    if (w != NULL) {
        json_t *copy = json_deep_copy(n);
        cr_assert_not_null(copy);
        json_object_del(copy, "durable");
        char *posted = json_dumps(w->state[run][j], JSON_COMPACT | JSON_SORT_KEYS);
        cr_assert(json_equal(copy, w->state[run][j]), "read back %s\nposted    %s", text,
                  posted);
        free(posted);
        json_decref(copy);
    }
    free(text);
}

static bool evicted_pred(const json_t *st, void *ctx)
{
    (void)ctx;
    long long nodes, evictions;
    return ns_jint(st, "cache_nodes", &nodes) == 0 && nodes <= MAX_NODES &&
           ns_jint(st, "cache_evictions", &evictions) == 0 && evictions > 0;
}

/* Every node of one run, read one by one. */
static void check_run_nodes(ns_server *s, const written *w, int run)
{
    for (int j = 0; j < NODES; j++) {
        char path[96];
        snprintf(path, sizeof path, "/runs/c%02d/nodes/n%03d/state", run, j);
        json_t *n = it_get_json(s, path, 200);
        check_node(w, n, run, j);
        cr_assert(json_is_true(json_object_get(n, "durable")), "GET %s: not durable", path);
        json_decref(n);
    }
}

/* The first node index >= j whose status (j % 3) is in mask, or NODES. */
static int next_match(int j, unsigned mask)
{
    while (j < NODES && !(mask & (1u << (j % 3))))
        j++;
    return j;
}

/*
 * The run listed page by page (limit PAGE, after=next), with an optional
 * status filter (mask: bit j % 3 for each status it names): exactly the
 * matching nodes, in node_id order, each right.
 */
static void check_run_listing(ns_server *s, const written *w, int run, const char *filter,
                              unsigned mask)
{
    char after[32] = "";
    int pages = 0;
    int want_j = next_match(0, mask);
    for (;;) {
        char path[160];
        snprintf(path, sizeof path, "/runs/c%02d/nodes?limit=%d%s%s%s%s", run, PAGE,
                 filter ? "&status=" : "", filter ? filter : "", after[0] ? "&after=" : "",
                 after);
        json_t *page = it_get_json(s, path, 200);
        pages++;
        cr_assert_leq(pages, NODES + 1, "listing does not end");
        json_t *nodes = json_object_get(page, "nodes");
        cr_assert(json_is_array(nodes), "GET %s: no nodes array", path);
        cr_assert_leq(json_array_size(nodes), PAGE);
        size_t i;
        json_t *n;
        json_array_foreach(nodes, i, n) {
            cr_assert_lt(want_j, NODES, "GET %s: more nodes than written", path);
            check_node(w, n, run, want_j);
            want_j = next_match(want_j + 1, mask);
        }
        json_t *next = json_object_get(page, "next");
        if (json_is_null(next)) {
            json_decref(page);
            break;
        }
        cr_assert(json_is_string(next), "GET %s: next is neither null nor a string", path);
        cr_assert_eq(json_array_size(nodes), PAGE, "GET %s: short page with a next", path);
        snprintf(after, sizeof after, "%s", json_string_value(next));
        json_decref(page);
    }
    cr_assert_eq(want_j, NODES, "run c%02d listing%s%s stopped early", run,
                 filter ? " with status=" : "", filter ? filter : "");
}

static void check_run_summary(ns_server *s, const written *w, int run)
{
    char path[32];
    snprintf(path, sizeof path, "/runs/c%02d", run);
    json_t *sum = it_get_json(s, path, 200);
    cr_assert_eq(it_jint(sum, "nodes"), NODES);
    json_t *counts = json_object_get(sum, "counts");
    int want[3] = { 0, 0, 0 };
    for (int j = 0; j < NODES; j++)
        want[j % 3]++;
    for (int k = 0; k < 3; k++)
        cr_assert_eq(it_jint(counts, statuses[k]), want[k], "%s of run c%02d", statuses[k],
                     run);
    cr_assert_eq(it_jint(counts, "idle"), 0);
    cr_assert_eq(it_jint(counts, "failed"), 0);
    long long last_seq = 0;
    for (int j = 0; j < NODES; j++)
        if (it_jint(w->state[run][j], "seq") > last_seq)
            last_seq = it_jint(w->state[run][j], "seq");
    cr_assert_eq(it_jint(sum, "last_seq"), last_seq, "last_seq of run c%02d", run);
    json_decref(sum);
}

Test(cache, evicted_runs_read_back_whole_and_right)
{
    ns_server *s = ns_start("--cache-max-nodes %d --batch-interval 0.01", MAX_NODES);
    cr_assert_not_null(s, "the server did not start with --cache-max-nodes (see its log above)");
    written *w = calloc(1, sizeof *w);
    cr_assert_not_null(w);
    ns_resp r = { 0 };
    for (int run = 0; run < RUNS; run++) {
        for (int j = 0; j < NODES; j++) {
            char run_id[16], node_id[16];
            snprintf(run_id, sizeof run_id, "c%02d", run);
            snprintf(node_id, sizeof node_id, "n%03d", j);
            char err[32];
            snprintf(err, sizeof err, "e-%d-%d", run, j);
            json_t *body = json_pack("{s:s, s:i, s:o, s:s}", "status", node_status(j),
                                     "attempt", node_attempt(j), "outputs",
                                     node_outputs(run, j), "last_error", err);
            cr_assert_not_null(body);
            char *text = json_dumps(body, JSON_COMPACT);
            json_decref(body);
            cr_assert_eq(ns_post_state(s, run_id, node_id, NULL, text, &r), 0, "%s", r.error);
            cr_assert_eq(r.status, 202, "POST %s/%s: %ld %s", run_id, node_id, r.status, r.body);
            free(text);
            json_t *state = ns_resp_json(&r);
            cr_assert(json_is_object(state), "%s", r.body);
            json_object_del(state, "durable");
            w->state[run][j] = state;
        }
    }
    cr_assert_eq(ns_wait_idle(s, 30.0), 0);
    cr_assert_eq(ns_wait_stats(s, evicted_pred, NULL, 15.0), 0,
                 "cache not bounded once idle: cache_nodes %lld, evictions %lld",
                 ns_stat(s, "cache_nodes"), ns_stat(s, "cache_evictions"));
    long long runs_cached = ns_stat(s, "cache_runs");
    cr_assert_geq(runs_cached, 0);
    cr_assert_leq(runs_cached, MAX_NODES / NODES, "%lld runs cached", runs_cached);
    long long loads = ns_stat(s, "cache_loads");
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state", NULL), RUNS * NODES);

    /*
     * Every run reads back whole and right, each kind of read on its own pass
     * over c00..c09. The cache holds two runs, so each pass meets every run
     * evicted (the two cached ones are the last two of the previous pass):
     * each kind of read is served from SQLite at least RUNS - 2 times.
     */
    enum { PASSES = 5 };
    for (int pass = 0; pass < PASSES; pass++) {
        for (int run = 0; run < RUNS; run++) {
            switch (pass) {
            case 0: check_run_listing(s, w, run, "running", 2u); break;
            case 1: check_run_listing(s, w, run, "scheduled,completed", 5u); break;
            case 2: check_run_listing(s, w, run, NULL, 7u); break;
            case 3: check_run_summary(s, w, run); break;
            default: check_run_nodes(s, w, run); break;
            }
        }
        long long loads_after = ns_stat(s, "cache_loads");
        fprintf(stderr, "it_cache: read pass %d: %lld read-through loads for %d runs\n", pass,
                loads_after - loads, RUNS);
        cr_assert_geq(loads_after - loads, RUNS - MAX_NODES / NODES,
                      "read pass %d: evicted runs were not read through from SQLite", pass);
        loads = loads_after;
        cr_assert_eq(ns_wait_stats(s, evicted_pred, NULL, 15.0), 0,
                     "cache grew past its bound: %lld", ns_stat(s, "cache_nodes"));
    }
    fprintf(stderr, "it_cache: %lld evictions in all\n", ns_stat(s, "cache_evictions"));

    /* c00 was read first, so it has been evicted since; the rules must judge a
     * regression of its completed node n002 by the state on disk. */
    loads = ns_stat(s, "cache_loads");
    long long run_loads = ns_stat(s, "cache_run_loads");
    cr_assert_eq(ns_post_state(s, "c00", "n002", NULL, "{\"status\":\"running\"}", &r), 0);
    char why[512];
    cr_assert_eq(ns_check_problem(&r, 409, "illegal-transition", why, sizeof why), 0,
                 "regression on an evicted node: %s", why);
    json_t *doc = ns_resp_json(&r);
    json_t *current = json_object_get(doc, "current");
    cr_assert(json_is_object(current), "409 without current: %s", r.body);
    check_node(w, current, 0, 2);
    json_decref(doc);
    cr_assert_eq(ns_stat(s, "cache_loads"), loads + 1, "the run was not read from disk");
    /* c02 is evicted too: a stale attempt is judged by disk state (n003 is
     * at attempt 2 there). */
    loads = ns_stat(s, "cache_loads");
    cr_assert_eq(ns_post_state(s, "c02", "n003", NULL, "{\"status\":\"running\",\"attempt\":1}",
                               &r), 0);
    cr_assert_eq(ns_check_problem(&r, 409, "stale-attempt", why, sizeof why), 0,
                 "stale attempt on an evicted node: %s", why);
    cr_assert_eq(ns_stat(s, "cache_loads"), loads + 1, "the run was not read from disk");
    /* A legal update of an evicted node keeps what was on disk. */
    cr_assert_eq(ns_post_state(s, "c01", "n000", "?wait=true",
                               "{\"status\":\"running\"}", &r), 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    doc = ns_resp_json(&r);
    json_t *want = node_outputs(1, 0);
    cr_assert(json_equal(json_object_get(doc, "outputs"), want), "%s", r.body);
    json_decref(want);
    cr_assert_str_eq(ns_jstr(doc, "status"), "running");
    cr_assert_eq(it_jint(doc, "attempt"), 1);
    cr_assert(ns_jstr(doc, "scheduled_at") != NULL, "scheduled_at lost: %s", r.body);
    json_decref(doc);
    /* Those writes read one node each, never a run whole. */
    cr_assert_eq(ns_stat(s, "cache_run_loads"), run_loads, "a write read its run whole");
    cr_assert_gt(ns_stat(s, "cache_nodes_evicted"), 0);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
    for (int run = 0; run < RUNS; run++)
        for (int j = 0; j < NODES; j++)
            json_decref(w->state[run][j]);
    free(w);
}

/* ---- the byte bound ---- */

enum {
    B_RUNS = 24,
    B_NODES = 8,
    B_BLOB = 16 * 1024,            /* bytes of outputs per node */
    B_MAX_BYTES = 256 * 1024,      /* --cache-max-bytes: about two runs */
    B_RUN_BYTES = B_NODES * (B_BLOB + 1024), /* more than a run's nodes take */
};

static char *blob_body(int run, int j, const char *status)
{
    static char blob[B_BLOB + 1];
    memset(blob, 'a' + (run + j) % 26, B_BLOB);
    blob[B_BLOB] = '\0';
    json_t *body = json_pack("{s:s, s:{s:i, s:i, s:s}}", "status", status, "outputs", "run",
                             run, "j", j, "blob", blob);
    cr_assert_not_null(body);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    cr_assert_not_null(text);
    return text;
}

static void check_blob_node(const json_t *n, int run, int j, const char *status)
{
    json_t *out = json_object_get(n, "outputs");
    cr_assert_str_eq(ns_jstr(n, "status"), status);
    cr_assert_eq(it_jint(out, "run"), run);
    cr_assert_eq(it_jint(out, "j"), j);
    const char *blob = ns_jstr(out, "blob");
    cr_assert_not_null(blob);
    cr_assert_eq(strlen(blob), B_BLOB);
    cr_assert_eq(blob[0], 'a' + (run + j) % 26);
}

static bool bytes_bounded_pred(const json_t *st, void *ctx)
{
    (void)ctx;
    long long bytes;
    return ns_jint(st, "cache_bytes", &bytes) == 0 && bytes > 0 && bytes <= B_MAX_BYTES;
}

Test(cache, byte_bound_holds_and_every_node_reads_back)
{
    ns_server *s = ns_start("--cache-max-bytes %d --batch-interval 0.01", B_MAX_BYTES);
    cr_assert_not_null(s, "the server did not start with --cache-max-bytes");
    ns_resp r = { 0 };
    long long peak = 0;
    for (int run = 0; run < B_RUNS; run++) {
        char run_id[16], node_id[16];
        snprintf(run_id, sizeof run_id, "b%02d", run);
        for (int j = 0; j < B_NODES; j++) {
            snprintf(node_id, sizeof node_id, "n%d", j);
            char *text = blob_body(run, j, "running");
            cr_assert_eq(ns_post_state(s, run_id, node_id, NULL, text, &r), 0, "%s", r.error);
            cr_assert_eq(r.status, 202, "POST %s/%s: %ld %s", run_id, node_id, r.status,
                         r.body);
            free(text);
        }
        /*
         * Between our writes: over the bound by at most what queued writes
         * pin, each pinning at most one run. The writer publishes
         * durable_seq after it has released a batch and evicted what that
         * allowed, so the seqs above the durable_seq read first are all
         * that can pin what the cache_bytes read next counts (nothing else
         * writes meanwhile).
         */
        json_t *st = ns_stats(s);
        cr_assert_not_null(st);
        long long pending = it_jint(st, "last_seq") - it_jint(st, "durable_seq");
        json_decref(st);
        st = ns_stats(s);
        cr_assert_not_null(st);
        long long bytes = it_jint(st, "cache_bytes");
        json_decref(st);
        long long pinned_runs = pending < run + 1 ? pending : run + 1;
        cr_assert_leq(bytes, B_MAX_BYTES + pinned_runs * B_RUN_BYTES,
                      "after run %d: cache_bytes %lld with %lld seqs not durable", run, bytes,
                      pending);
        if (bytes > peak)
            peak = bytes;
    }
    cr_assert_eq(ns_wait_idle(s, 30.0), 0);
    cr_assert_eq(ns_wait_stats(s, bytes_bounded_pred, NULL, 15.0), 0,
                 "cache not within --cache-max-bytes once idle: cache_bytes %lld",
                 ns_stat(s, "cache_bytes"));
    cr_assert_gt(ns_stat(s, "cache_evictions"), 0);
    cr_assert_leq(ns_stat(s, "cache_nodes"), 2 * B_NODES, "%lld nodes cached",
                  ns_stat(s, "cache_nodes"));
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state", NULL), B_RUNS * B_NODES);
    fprintf(stderr, "it_cache: %d KiB written, cache_bytes peaked at %lld while writing, "
            "%lld once idle\n", B_RUNS * B_NODES * B_BLOB / 1024, peak,
            ns_stat(s, "cache_bytes"));

    /* Every node reads back, and with nothing queued the bound holds after each read. */
    for (int run = 0; run < B_RUNS; run++) {
        for (int j = 0; j < B_NODES; j++) {
            char path[96];
            snprintf(path, sizeof path, "/runs/b%02d/nodes/n%d/state", run, j);
            json_t *n = it_get_json(s, path, 200);
            check_blob_node(n, run, j, "running");
            json_decref(n);
            long long bytes = ns_stat(s, "cache_bytes");
            cr_assert_leq(bytes, B_MAX_BYTES, "after GET %s: cache_bytes %lld", path, bytes);
        }
        char path[64];
        snprintf(path, sizeof path, "/runs/b%02d/nodes?limit=%d", run, B_NODES);
        json_t *page = it_get_json(s, path, 200);
        json_t *nodes = json_object_get(page, "nodes");
        cr_assert_eq(json_array_size(nodes), B_NODES);
        for (int j = 0; j < B_NODES; j++)
            check_blob_node(json_array_get(nodes, (size_t)j), run, j, "running");
        json_decref(page);
        cr_assert_leq(ns_stat(s, "cache_bytes"), B_MAX_BYTES);
    }
    /* A write to an evicted run is judged by what is on disk and keeps the outputs. */
    char *text = blob_body(0, 3, "completed");
    cr_assert_eq(ns_post_state(s, "b00", "n3", "?wait=true", text, &r), 0);
    free(text);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    cr_assert_eq(ns_post_state(s, "b00", "n3", NULL, "{\"status\":\"running\"}", &r), 0);
    char why[512];
    cr_assert_eq(ns_check_problem(&r, 409, "illegal-transition", why, sizeof why), 0, "%s", why);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

/* ---- the 1,000,000-row start ---- */

enum { BIG_RUNS = 1000, BIG_NODES = 1000 };

/* Fills the (server-made, empty) file with BIG_RUNS x BIG_NODES rows. */
static void bulk_insert(const char *path)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    char *err = NULL;
    cr_assert_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(db, "PRAGMA synchronous = OFF; BEGIN", NULL, NULL, &err),
                 SQLITE_OK, "%s", err ? err : "");
    cr_assert_eq(sqlite3_prepare_v2(db,
                     "INSERT INTO run_node_state (run_id, node_id, status, attempt, "
                     "started_at, retryable, outputs_json, updated_at, seq) "
                     "VALUES (?1, ?2, 'running', 1, '2026-01-02T03:04:05.678Z', 0, ?3, "
                     "'2026-01-02T03:04:05.678Z', ?4)", -1, &st, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    long long seq = 0;
    for (int run = 0; run < BIG_RUNS; run++) {
        char run_id[16];
        snprintf(run_id, sizeof run_id, "m%04d", run);
        for (int j = 0; j < BIG_NODES; j++) {
            char node_id[16], out[16];
            snprintf(node_id, sizeof node_id, "n%04d", j);
            snprintf(out, sizeof out, "%d", run * BIG_NODES + j);
            seq++;
            cr_assert_eq(sqlite3_bind_text(st, 1, run_id, -1, SQLITE_TRANSIENT), SQLITE_OK);
            cr_assert_eq(sqlite3_bind_text(st, 2, node_id, -1, SQLITE_TRANSIENT), SQLITE_OK);
            cr_assert_eq(sqlite3_bind_text(st, 3, out, -1, SQLITE_TRANSIENT), SQLITE_OK);
            cr_assert_eq(sqlite3_bind_int64(st, 4, seq), SQLITE_OK);
            int rc = sqlite3_step(st);
            cr_assert_eq(rc, SQLITE_DONE, "insert %s/%s: %s", run_id, node_id,
                         sqlite3_errmsg(db));
            cr_assert_eq(sqlite3_reset(st), SQLITE_OK);
        }
    }
    sqlite3_finalize(st);
    char sql[512];
    snprintf(sql, sizeof sql,
             "INSERT INTO nodestate_meta (key, value) VALUES ('last_seq', %lld) "
             "ON CONFLICT (key) DO UPDATE SET value = excluded.value; COMMIT; "
             "PRAGMA wal_checkpoint(TRUNCATE)", seq);
    cr_assert_eq(sqlite3_exec(db, sql, NULL, NULL, &err), SQLITE_OK, "%s", err ? err : "");
    cr_assert_eq(sqlite3_close(db), SQLITE_OK);
}

Test(cache, million_row_database_starts_lazily, .timeout = 240)
{
    /* The server makes the schema on the empty file, then we fill it. */
    ns_server *s = ns_start(NULL);
    cr_assert_not_null(s);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    long long t0 = ns_mono_ms();
    bulk_insert(ns_db_path(s));
    fprintf(stderr, "it_cache: inserted %d rows in %lld ms\n", BIG_RUNS * BIG_NODES,
            ns_mono_ms() - t0);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state", NULL),
                 (long long)BIG_RUNS * BIG_NODES);

    t0 = ns_mono_ms();
    cr_assert_eq(ns_restart(s, NULL), 0, "start on 1,000,000 rows");
    long long listening = ns_mono_ms() - t0;
    ns_resp r = { 0 };
    /* A bound, not the target: how fast it serves is printed below. */
    cr_assert_eq(ns_req_until(s, "GET", "/readyz", 200, &r, 30.0, 5), 0,
                 "/readyz: %ld %s %s", r.status, r.body, r.error);
    cr_assert_eq(ns_get_state(s, "m0777", "n0123", &r), 0, "%s", r.error);
    long long serving = ns_mono_ms() - t0;
    fprintf(stderr, "it_cache: 1,000,000 rows: listening after %lld ms, /readyz 200 and a GET "
            "answered %lld ms after the start\n", listening, serving);
    cr_assert_eq(r.status, 200, "GET: %ld %s", r.status, r.body);
    json_t *doc = ns_resp_json(&r);
    long long out = -1;
    cr_assert_eq(ns_jint(doc, "outputs", &out), 0, "%s", r.body);
    cr_assert_eq(out, 777LL * BIG_NODES + 123);
    cr_assert_str_eq(ns_jstr(doc, "status"), "running");
    json_decref(doc);

    /* Not loaded: only the run read so far is cached, and memory is small. */
    long long cached = ns_stat(s, "cache_nodes");
    cr_assert_geq(cached, 1);
    cr_assert_leq(cached, BIG_NODES, "%lld nodes cached after one GET", cached);
    long kib = ns_status_kib(s, "VmRSS");
    fprintf(stderr, "it_cache: RSS %ld KiB with 1,000,000 rows on disk\n", kib);
    cr_assert_gt(kib, 0);
    cr_assert_lt(kib, 200 * 1024, "RSS %ld KiB: the table was loaded?", kib);

    /* The rows still judge updates, and seq goes on past them. */
    cr_assert_eq(ns_post_state(s, "m0001", "n0001", NULL, "{\"status\":\"scheduled\"}", &r), 0);
    char why[512];
    cr_assert_eq(ns_check_problem(&r, 409, "illegal-transition", why, sizeof why), 0, "%s", why);
    cr_assert_eq(ns_post_state(s, "m0001", "n0001", NULL, "{\"status\":\"completed\"}", &r), 0);
    cr_assert_eq(r.status, 202, "%ld %s", r.status, r.body);
    doc = ns_resp_json(&r);
    cr_assert_gt(it_jint(doc, "seq"), (long long)BIG_RUNS * BIG_NODES);
    json_decref(doc);
    json_t *sum = it_get_json(s, "/runs/m0999", 200);
    cr_assert_eq(it_jint(sum, "nodes"), BIG_NODES);
    json_decref(sum);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}
