/*
 * it_api: every endpoint's happy path against the real binary, and the
 * transition rules (docs/design.md §3) as a worker sees them through HTTP.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "harness.h"
#include "it_assert.h"

/* Generous bound for "the writer caught up"; idle servers flush in ~0.1 s. */
#define IDLE_TIMEOUT 15.0

static ns_server *start(const char *args)
{
    ns_server *s = ns_start("%s", args != NULL ? args : "");
    cr_assert_not_null(s, "server did not start");
    return s;
}

/* Sends method path body, asserts the status, returns the body as JSON. */
static json_t *call(ns_server *s, const char *method, const char *path,
                    const char *body, long want)
{
    ns_resp r = { 0 };
    cr_assert_eq(ns_req(s, method, path, body, NULL, &r), 0, "%s %s: %s",
                 method, path, r.error);
    cr_assert_eq(r.status, want, "%s %s %s: status %ld, want %ld; body %s",
                 method, path, body ? body : "", r.status, want, r.body);
    cr_assert(strncmp(r.content_type, "application/json", 16) == 0 ||
                  strncmp(r.content_type, "application/problem+json", 24) == 0,
              "%s %s: Content-Type %s", method, path, r.content_type);
    json_t *doc = ns_resp_json(&r);
    cr_assert(json_is_object(doc), "%s %s: body is not an object: %s", method,
              path, r.body);
    ns_resp_free(&r);
    return doc;
}

static json_t *post(ns_server *s, const char *run, const char *node,
                    const char *json, long want)
{
    char path[512];
    snprintf(path, sizeof path, "/runs/%s/nodes/%s/state", run, node);
    return call(s, "POST", path, json, want);
}

/* Asserts r is a problem of status and slug; returns its body as JSON. */
static json_t *problem(ns_resp *r, long status, const char *slug)
{
    char why[512];
    cr_assert_eq(ns_check_problem(r, status, slug, why, sizeof why), 0, "%s", why);
    json_t *doc = ns_resp_json(r);
    cr_assert_not_null(doc);
    return doc;
}

/* POSTs json and asserts a 409 problem of slug; returns its "current". */
static json_t *post_conflict(ns_server *s, const char *run, const char *node,
                             const char *json, const char *slug)
{
    ns_resp r = { 0 };
    cr_assert_eq(ns_post_state(s, run, node, NULL, json, &r), 0, "%s", r.error);
    json_t *doc = problem(&r, 409, slug);
    json_t *current = json_object_get(doc, "current");
    cr_assert(json_is_object(current), "409 without \"current\": %s", r.body);
    json_incref(current);
    json_decref(doc);
    ns_resp_free(&r);
    return current;
}

static void expect_str(const json_t *o, const char *key, const char *want)
{
    const char *got = ns_jstr(o, key);
    cr_assert_not_null(got, "member %s is not a string", key);
    cr_assert_str_eq(got, want, "member %s", key);
}

static void expect_null(const json_t *o, const char *key)
{
    cr_assert(ns_jnull(o, key), "member %s is not null", key);
}

static void wait_idle(ns_server *s)
{
    cr_assert_eq(ns_wait_idle(s, IDLE_TIMEOUT), 0, "writer did not catch up");
}

static const char *const state_keys[] = {
    "run_id", "node_id", "status", "attempt", "scheduled_at", "started_at",
    "completed_at", "failed_at", "suspended_at", "last_error", "retryable",
    "suspension_reason", "resume_state", "outputs", "updated_at", "seq",
    "durable",
};

/* Every key of a node state, in the agreed order, and nothing else. */
static void expect_state_shape(const json_t *doc)
{
    size_t n = sizeof state_keys / sizeof *state_keys;
    cr_assert_eq(json_object_size(doc), n, "state has %zu members, want %zu",
                 json_object_size(doc), n);
    size_t i = 0;
    void *it = json_object_iter((json_t *)doc);
    for (; it != NULL && i < n; it = json_object_iter_next((json_t *)doc, it), i++)
        cr_assert_str_eq(json_object_iter_key(it), state_keys[i],
                         "member %zu", i);
}

/* ---- node state: POST, GET, ETag ------------------------------------- */

/*
 * GET path with the If-None-Match header line inm: a 304 without a body,
 * whose Content-Length is the 200's (RFC 9110 8.6; libmicrohttpd always
 * sends one).
 */
static void expect_not_modified(ns_server *s, const char *path, const char *inm)
{
    ns_resp ok = { 0 }, r = { 0 };
    cr_assert_eq(ns_req(s, "GET", path, NULL, NULL, &ok), 0);
    cr_assert_eq(ok.status, 200);
    const char *hdr[] = { inm, NULL };
    cr_assert_eq(ns_req(s, "GET", path, NULL, hdr, &r), 0);
    cr_assert_eq(r.status, 304, "%s with %s: %ld %s", path, inm, r.status, r.body);
    cr_assert_eq(r.body_len, 0, "a 304 with a body: %s", r.body);
    cr_assert(r.content_length[0], "%s: a 304 without Content-Length", path);
    cr_assert_eq(strtoull(r.content_length, NULL, 10), ok.body_len,
                 "%s: a 304 says Content-Length %s, its 200 has %zu bytes", path,
                 r.content_length, ok.body_len);
    ns_resp_free(&ok);
    ns_resp_free(&r);
}

Test(api, post_then_get_with_etag)
{
    ns_server *s = start(NULL);
    long long before = ns_wall_ms();
    json_t *doc = post(s, "run-1", "node.a", "{\"status\":\"scheduled\"}", 202);
    long long after = ns_wall_ms();
    expect_state_shape(doc);
    expect_str(doc, "run_id", "run-1");
    expect_str(doc, "node_id", "node.a");
    expect_str(doc, "status", "scheduled");
    cr_assert_eq(it_jint(doc, "attempt"), 1);
    long long stamped = ns_ts_ms(ns_jstr(doc, "scheduled_at"));
    cr_assert(stamped >= before && stamped <= after,
              "scheduled_at %s is not the server's now", ns_jstr(doc, "scheduled_at"));
    expect_null(doc, "started_at");
    expect_null(doc, "completed_at");
    expect_null(doc, "failed_at");
    expect_null(doc, "suspended_at");
    expect_null(doc, "last_error");
    cr_assert(json_is_false(json_object_get(doc, "retryable")));
    expect_null(doc, "suspension_reason");
    expect_null(doc, "resume_state");
    expect_null(doc, "outputs");
    cr_assert_geq(ns_ts_ms(ns_jstr(doc, "updated_at")), before);
    cr_assert(json_is_false(json_object_get(doc, "durable")));
    long long seq = it_jint(doc, "seq");
    cr_assert_gt(seq, 0);
    json_decref(doc);

    /* Durable first: the tag of a queued state changes at the commit. */
    cr_assert_eq(ns_wait_stat_ge(s, "durable_seq", seq, 30), 0, "not durable in 30 s");
    ns_resp r = { 0 };
    cr_assert_eq(ns_get_state(s, "run-1", "node.a", &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 200, "GET: %ld %s", r.status, r.body);
    cr_assert(strncmp(r.content_type, "application/json", 16) == 0, "%s",
              r.content_type);
    char etag[64];
    snprintf(etag, sizeof etag, "\"%lld\"", seq);
    cr_assert_str_eq(r.etag, etag);
    doc = ns_resp_json(&r);
    expect_state_shape(doc);
    expect_str(doc, "status", "scheduled");
    cr_assert_eq(it_jint(doc, "seq"), seq);
    json_decref(doc);

    char inm[96];
    snprintf(inm, sizeof inm, "If-None-Match: %s", etag);
    const char *hdr[] = { inm, NULL };
    expect_not_modified(s, "/runs/run-1/nodes/node.a/state", inm);

    const char *other[] = { "If-None-Match: \"999999999\"", NULL };
    cr_assert_eq(ns_req(s, "GET", "/runs/run-1/nodes/node.a/state", NULL, other, &r), 0);
    cr_assert_eq(r.status, 200, "If-None-Match different: %ld", r.status);

    /* A list split over two header lines: the second line's tag counts too. */
    const char *two[] = { "If-None-Match: \"999999999\"", inm, NULL };
    cr_assert_eq(ns_req(s, "GET", "/runs/run-1/nodes/node.a/state", NULL, two, &r), 0);
    cr_assert_eq(r.status, 304, "If-None-Match on its second line: %ld %s", r.status, r.body);

    /* A newer change makes the old tag stale. */
    doc = post(s, "run-1", "node.a", "{\"status\":\"running\"}", 202);
    long long seq2 = it_jint(doc, "seq");
    cr_assert_gt(seq2, seq);
    json_decref(doc);
    cr_assert_eq(ns_req(s, "GET", "/runs/run-1/nodes/node.a/state", NULL, hdr, &r), 0);
    cr_assert_eq(r.status, 200, "old ETag after a change: %ld", r.status);
    doc = ns_resp_json(&r);
    cr_assert_eq(it_jint(doc, "seq"), seq2);
    /* Queued or already durable, whichever the writer made it by now. */
    snprintf(etag, sizeof etag, "\"%lld%s\"", seq2,
             json_is_true(json_object_get(doc, "durable")) ? "" : "-q");
    json_decref(doc);
    cr_assert_str_eq(r.etag, etag);

    cr_assert_eq(ns_get_state(s, "run-1", "node.zz", &r), 0);
    json_decref(problem(&r, 404, "not-found"));
    cr_assert_eq(ns_get_state(s, "no-such-run", "node.a", &r), 0);
    json_decref(problem(&r, 404, "not-found"));
    ns_resp_free(&r);
    ns_free(s);
}

Test(api, wait_true_is_durable_at_once)
{
    /* A long interval: only the durable waiter can make the writer commit. */
    ns_server *s = start("--batch-interval 30");
    ns_resp r = { 0 };
    cr_assert_eq(ns_post_state(s, "rw", "n1", "?wait=true",
                               "{\"status\":\"running\"}", &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 200, "?wait=true: %ld %s", r.status, r.body);
    json_t *doc = ns_resp_json(&r);
    cr_assert(json_is_true(json_object_get(doc, "durable")), "%s", r.body);
    char seq[32];
    snprintf(seq, sizeof seq, "%lld", it_jint(doc, "seq"));
    json_decref(doc);
    /* Durable means in the file now, without waiting for anything. */
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE "
                              "run_id='rw' AND node_id='n1' AND status='running' "
                              "AND seq=?", seq, NULL), 1);

    /* A later GET reports the durable state. */
    cr_assert_eq(ns_get_state(s, "rw", "n1", &r), 0);
    doc = ns_resp_json(&r);
    cr_assert(json_is_true(json_object_get(doc, "durable")), "%s", r.body);
    json_decref(doc);
    ns_resp_free(&r);
    ns_free(s);
}

/* ---- list, summary, delete -------------------------------------------- */

static void post_five(ns_server *s, const char *run)
{
    static const char *const body[] = {
        "{\"status\":\"scheduled\"}", "{\"status\":\"running\"}",
        "{\"status\":\"completed\"}", "{\"status\":\"running\"}",
        "{\"status\":\"failed\",\"last_error\":\"x\"}",
    };
    for (int i = 0; i < 5; i++) {
        char node[16];
        snprintf(node, sizeof node, "n%d", i + 1);
        json_decref(post(s, run, node, body[i], 202));
    }
}

/* Asserts a page's node ids, in order, and its "next". */
static void expect_page(json_t *page, const char *const *ids, size_t n,
                        const char *next)
{
    json_t *nodes = json_object_get(page, "nodes");
    cr_assert(json_is_array(nodes));
    cr_assert_eq(json_array_size(nodes), n, "page has %zu nodes, want %zu",
                 json_array_size(nodes), n);
    for (size_t i = 0; i < n; i++) {
        json_t *node = json_array_get(nodes, i);
        expect_state_shape(node);
        expect_str(node, "node_id", ids[i]);
    }
    if (next == NULL)
        expect_null(page, "next");
    else
        expect_str(page, "next", next);
}

Test(api, list_with_filter_and_pagination)
{
    ns_server *s = start(NULL);
    post_five(s, "rl");
    json_decref(post(s, "other", "n9", "{\"status\":\"running\"}", 202));

    json_t *page = call(s, "GET", "/runs/rl/nodes", NULL, 200);
    expect_str(page, "run_id", "rl");
    expect_page(page, (const char *[]){ "n1", "n2", "n3", "n4", "n5" }, 5, NULL);
    json_decref(page);

    page = call(s, "GET", "/runs/rl/nodes?status=running", NULL, 200);
    expect_page(page, (const char *[]){ "n2", "n4" }, 2, NULL);
    json_t *nodes = json_object_get(page, "nodes");
    for (size_t i = 0; i < json_array_size(nodes); i++)
        expect_str(json_array_get(nodes, i), "status", "running");
    json_decref(page);

    page = call(s, "GET", "/runs/rl/nodes?status=scheduled,running", NULL, 200);
    expect_page(page, (const char *[]){ "n1", "n2", "n4" }, 3, NULL);
    json_decref(page);

    page = call(s, "GET", "/runs/rl/nodes?status=completed,failed", NULL, 200);
    expect_page(page, (const char *[]){ "n3", "n5" }, 2, NULL);
    json_decref(page);

    page = call(s, "GET", "/runs/rl/nodes?status=paused", NULL, 200);
    expect_page(page, NULL, 0, NULL);
    json_decref(page);

    page = call(s, "GET", "/runs/rl/nodes?limit=2", NULL, 200);
    expect_page(page, (const char *[]){ "n1", "n2" }, 2, "n2");
    json_decref(page);
    page = call(s, "GET", "/runs/rl/nodes?limit=2&after=n2", NULL, 200);
    expect_page(page, (const char *[]){ "n3", "n4" }, 2, "n4");
    json_decref(page);
    page = call(s, "GET", "/runs/rl/nodes?limit=2&after=n4", NULL, 200);
    expect_page(page, (const char *[]){ "n5" }, 1, NULL);
    json_decref(page);

    /* Following "next" visits every node once (bounded: at most 10 pages). */
    char path[128] = "/runs/rl/nodes?limit=1";
    int seen = 0;
    for (int round = 0; round < 10; round++) {
        page = call(s, "GET", path, NULL, 200);
        seen += (int)json_array_size(json_object_get(page, "nodes"));
        const char *next = ns_jstr(page, "next");
        if (next == NULL) {
            json_decref(page);
            break;
        }
        snprintf(path, sizeof path, "/runs/rl/nodes?limit=1&after=%s", next);
        json_decref(page);
    }
    cr_assert_eq(seen, 5, "pagination visited %d nodes", seen);

    page = call(s, "GET", "/runs/rl/nodes?status=running&limit=1", NULL, 200);
    expect_page(page, (const char *[]){ "n2" }, 1, "n2");
    json_decref(page);

    ns_resp r = { 0 };
    static const char *const bad[] = {
        "/runs/rl/nodes?limit=0", "/runs/rl/nodes?limit=10001",
        "/runs/rl/nodes?limit=abc", "/runs/rl/nodes?status=bogus",
        "/runs/rl/nodes?status=running,bogus",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cr_assert_eq(ns_req(s, "GET", bad[i], NULL, NULL, &r), 0);
        char why[512];
        cr_assert_eq(ns_check_problem(&r, 400, "invalid-query", why, sizeof why),
                     0, "%s: %s", bad[i], why);
    }
    cr_assert_eq(ns_req(s, "GET", "/runs/nope/nodes", NULL, NULL, &r), 0);
    json_decref(problem(&r, 404, "not-found"));
    ns_resp_free(&r);
    ns_free(s);
}

Test(api, run_summary_counts)
{
    ns_server *s = start(NULL);
    post_five(s, "rs");
    json_t *last = post(s, "rs", "n6", "{\"status\":\"suspended\"}", 202);
    long long last_seq = it_jint(last, "seq");
    json_decref(last);
    json_decref(post(s, "other", "x", "{\"status\":\"running\"}", 202));

    json_t *sum = call(s, "GET", "/runs/rs", NULL, 200);
    expect_str(sum, "run_id", "rs");
    cr_assert_eq(it_jint(sum, "nodes"), 6);
    json_t *counts = json_object_get(sum, "counts");
    cr_assert(json_is_object(counts));
    static const struct {
        const char *status;
        long long n;
    } want[] = {
        { "idle", 0 }, { "scheduled", 1 }, { "running", 2 }, { "paused", 0 },
        { "suspended", 1 }, { "completed", 1 }, { "failed", 1 },
    };
    cr_assert_eq(json_object_size(counts), 7);
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        cr_assert_eq(it_jint(counts, want[i].status), want[i].n, "count of %s",
                     want[i].status);
    cr_assert_eq(it_jint(sum, "last_seq"), last_seq);
    cr_assert_gt(ns_ts_ms(ns_jstr(sum, "updated_at")), 0);
    json_decref(sum);

    /*
     * The summary's ETag is its last seq; asking with it again gets a 304,
     * but for PostgreSQL, where a node added below the last seq (another
     * instance's block) would change the summary and not the tag.
     */
    char inm[64];
    snprintf(inm, sizeof inm, "If-None-Match: \"%lld\"", last_seq);
    ns_resp r = { 0 };
    if (!ns_pg_base()) {
        expect_not_modified(s, "/runs/rs", inm);
    } else {
        const char *hdr[] = { inm, NULL };
        cr_assert_eq(ns_req(s, "GET", "/runs/rs", NULL, hdr, &r), 0);
        cr_assert_eq(r.status, 200, "a shared store's summary answered %ld", r.status);
    }

    cr_assert_eq(ns_req(s, "GET", "/runs/unknown-run", NULL, NULL, &r), 0);
    json_decref(problem(&r, 404, "not-found"));
    ns_resp_free(&r);
    ns_free(s);
}

Test(api, delete_run_then_404_and_rows_gone)
{
    ns_server *s = start(NULL);
    json_decref(post(s, "rd", "a", "{\"status\":\"running\"}", 202));
    json_decref(post(s, "rd", "b", "{\"status\":\"scheduled\"}", 202));
    json_decref(post(s, "rd", "c", "{\"status\":\"completed\"}", 202));
    json_decref(post(s, "keep", "a", "{\"status\":\"running\"}", 202));
    wait_idle(s);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='rd'", NULL), 3);

    json_t *del = call(s, "DELETE", "/runs/rd", NULL, 202);
    expect_str(del, "run_id", "rd");
    cr_assert_eq(it_jint(del, "deleted"), 3);
    long long seq = it_jint(del, "seq");
    cr_assert_gt(seq, 0);
    cr_assert(json_is_false(json_object_get(del, "durable")));
    json_decref(del);

    ns_resp r = { 0 };
    cr_assert_eq(ns_get_state(s, "rd", "a", &r), 0);
    json_decref(problem(&r, 404, "not-found"));
    cr_assert_eq(ns_req(s, "GET", "/runs/rd", NULL, NULL, &r), 0);
    json_decref(problem(&r, 404, "not-found"));
    cr_assert_eq(ns_req(s, "GET", "/runs/rd/nodes", NULL, NULL, &r), 0);
    json_decref(problem(&r, 404, "not-found"));
    cr_assert_eq(ns_req(s, "DELETE", "/runs/rd", NULL, NULL, &r), 0);
    json_decref(problem(&r, 404, "not-found"));

    wait_idle(s);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='rd'", NULL), 0);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='keep'", NULL), 1);
    json_t *keep = call(s, "GET", "/runs/keep/nodes/a/state", NULL, 200);
    expect_str(keep, "status", "running");
    json_decref(keep);

    /* ?wait=true answers once the delete is on disk. */
    json_decref(post(s, "rd2", "a", "{\"status\":\"running\"}", 202));
    del = call(s, "DELETE", "/runs/rd2?wait=true", NULL, 200);
    cr_assert(json_is_true(json_object_get(del, "durable")));
    cr_assert_eq(it_jint(del, "deleted"), 1);
    json_decref(del);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='rd2'", NULL), 0);

    /* A deleted run can start over. */
    json_t *again = post(s, "rd", "a", "{\"status\":\"scheduled\"}", 202);
    cr_assert_gt(it_jint(again, "seq"), seq);
    cr_assert_eq(it_jint(again, "attempt"), 1);
    json_decref(again);
    ns_resp_free(&r);
    ns_free(s);
}

/* ---- /stats, /metrics, /healthz, /readyz ------------------------------ */

static const char *const stats_keys[] = {
    "updates_queued", "updates_processed", "batches_written", "errors",
    "queue_depth", "queue_capacity", "queue_bytes", "updates_coalesced",
    "rows_written", "updates_duplicate", "cache_nodes", "last_seq", "durable_seq",
};

Test(api, stats_json_text_metrics_health)
{
    ns_server *s = start("--queue-capacity 777");
    json_decref(post(s, "st", "a", "{\"status\":\"scheduled\"}", 202));
    json_decref(post(s, "st", "a", "{\"status\":\"running\"}", 202));
    json_decref(post(s, "st", "a", "{\"status\":\"running\"}", 200));
    wait_idle(s);

    json_t *st = call(s, "GET", "/stats?format=json", NULL, 200);
    for (size_t i = 0; i < sizeof stats_keys / sizeof *stats_keys; i++) {
        long long v;
        cr_assert_eq(ns_jint(st, stats_keys[i], &v), 0, "/stats lacks %s",
                     stats_keys[i]);
        cr_assert_geq(v, 0, "%s", stats_keys[i]);
    }
    cr_assert(json_is_object(json_object_get(st, "updates_rejected")) ||
                  json_is_integer(json_object_get(st, "updates_rejected")),
              "/stats lacks updates_rejected");
    cr_assert(json_is_number(json_object_get(st, "uptime_seconds")));
    cr_assert_eq(it_jint(st, "updates_queued"), 2);
    cr_assert_eq(it_jint(st, "updates_processed"), 2);
    cr_assert_eq(it_jint(st, "updates_duplicate"), 1);
    cr_assert_eq(it_jint(st, "queue_capacity"), 777);
    cr_assert_eq(it_jint(st, "queue_depth"), 0);
    cr_assert_eq(it_jint(st, "queue_bytes"), 0, "nothing is queued once idle");
    cr_assert_eq(it_jint(st, "last_seq"), it_jint(st, "durable_seq"));
    cr_assert_geq(it_jint(st, "batches_written"), 1);
    long long queued = it_jint(st, "updates_queued");
    long long batches = it_jint(st, "batches_written");
    json_decref(st);

    ns_resp r = { 0 };
    const char *accept_json[] = { "Accept: application/json", NULL };
    cr_assert_eq(ns_req(s, "GET", "/stats", NULL, accept_json, &r), 0);
    cr_assert_eq(r.status, 200);
    cr_assert(strncmp(r.content_type, "application/json", 16) == 0,
              "Accept: application/json gave %s", r.content_type);
    cr_assert_str_eq(r.vary, "Accept", "the body chosen by Accept, but Vary: \"%s\"", r.vary);
    st = ns_resp_json(&r);
    cr_assert(json_is_object(st));
    cr_assert_eq(it_jint(st, "updates_queued"), queued);
    json_decref(st);

    /* Prometheus text by default, with the same values as JSON. */
    const char *const text_paths[] = { "/stats", "/metrics",
                                       "/stats?format=prometheus" };
    for (size_t i = 0; i < 3; i++) {
        const char *const *hdr = i == 2 ? accept_json : NULL;
        cr_assert_eq(ns_req(s, "GET", text_paths[i], NULL, hdr, &r), 0);
        cr_assert_eq(r.status, 200, "%s: %ld", text_paths[i], r.status);
        cr_assert(strstr(r.content_type, "text/plain") != NULL &&
                      strstr(r.content_type, "version=0.0.4") != NULL,
                  "%s: Content-Type %s", text_paths[i], r.content_type);
        cr_assert(strstr(r.body, "# TYPE nodestate_updates_queued_total counter") != NULL,
                  "%s: no TYPE line:\n%s", text_paths[i], r.body);
        /* Only /stats without ?format= goes by Accept. */
        cr_assert_str_eq(r.vary, i == 0 ? "Accept" : "", "%s: Vary: \"%s\"", text_paths[i],
                         r.vary);
        double v;
        cr_assert_eq(ns_prom_value(r.body, "nodestate_updates_queued_total", &v), 0);
        cr_assert_eq((long long)v, queued);
        cr_assert_eq(ns_prom_value(r.body, "nodestate_batches_written_total", &v), 0);
        cr_assert_eq((long long)v, batches);
    }
    const char *accept_text[] = { "Accept: text/plain, application/json", NULL };
    cr_assert_eq(ns_req(s, "GET", "/stats", NULL, accept_text, &r), 0);
    cr_assert(strstr(r.content_type, "text/plain") != NULL, "%s", r.content_type);
    cr_assert_eq(ns_req(s, "GET", "/metrics", NULL, accept_json, &r), 0);
    cr_assert(strstr(r.content_type, "text/plain") != NULL,
              "/metrics is always text: %s", r.content_type);

    json_t *h = call(s, "GET", "/healthz", NULL, 200);
    expect_str(h, "status", "ok");
    json_decref(h);
    h = call(s, "GET", "/readyz", NULL, 200);
    expect_str(h, "status", "ready");
    json_decref(h);
    ns_resp_free(&r);
    ns_free(s);
}

/* ---- fields ------------------------------------------------------------ */

Test(api, null_clears_absent_keeps)
{
    ns_server *s = start(NULL);
    json_t *d = post(s, "rn", "a",
                     "{\"status\":\"running\",\"last_error\":\"warn\",\"retryable\":true,"
                     "\"suspension_reason\":\"why\",\"outputs\":{\"a\":[1,2]},"
                     "\"resume_state\":{\"cursor\":7},\"scheduled_at\":\"2026-01-02T03:04:05.678Z\"}",
                     202);
    expect_str(d, "last_error", "warn");
    cr_assert(json_is_true(json_object_get(d, "retryable")));
    json_t *want_out = json_pack("{s:[i,i]}", "a", 1, 2);
    cr_assert(json_equal(json_object_get(d, "outputs"), want_out),
              "outputs not embedded as JSON");
    json_decref(want_out);
    json_decref(d);

    d = post(s, "rn", "a", "{\"status\":\"running\",\"outputs\":null,\"last_error\":null,"
                           "\"retryable\":null,\"scheduled_at\":null}", 202);
    expect_null(d, "outputs");
    expect_null(d, "last_error");
    expect_null(d, "scheduled_at");
    cr_assert(json_is_false(json_object_get(d, "retryable")));
    /* Absent members are unchanged. */
    expect_str(d, "suspension_reason", "why");
    json_t *want_rs = json_pack("{s:i}", "cursor", 7);
    cr_assert(json_equal(json_object_get(d, "resume_state"), want_rs));
    json_decref(want_rs);
    cr_assert(ns_jstr(d, "started_at") != NULL);
    json_decref(d);

    wait_idle(s);
    ns_dbrow *row = ns_db_row(s, "SELECT * FROM run_node_state WHERE run_id='rn' AND node_id='a'", NULL);
    cr_assert_not_null(row);
    cr_assert(ns_dbrow_has(row, "outputs_json"));
    cr_assert_null(ns_dbrow_get(row, "outputs_json"), "outputs_json not NULL in the file");
    cr_assert_null(ns_dbrow_get(row, "last_error"));
    cr_assert_null(ns_dbrow_get(row, "scheduled_at"));
    cr_assert_str_eq(ns_dbrow_get(row, "suspension_reason"), "why");
    cr_assert_not_null(ns_dbrow_get(row, "resume_state_json"));
    ns_dbrow_free(row);
    ns_free(s);
}

Test(api, server_stamps_missing_timestamps)
{
    ns_server *s = start(NULL);
    long long before = ns_wall_ms();
    json_t *d = post(s, "rt", "a", "{\"status\":\"running\"}", 202);
    long long after = ns_wall_ms();
    long long started = ns_ts_ms(ns_jstr(d, "started_at"));
    cr_assert(started >= before && started <= after, "started_at %s not stamped now",
              ns_jstr(d, "started_at"));
    json_decref(d);

    /* Given timestamps are kept (normalised to UTC, ms). */
    d = post(s, "rt", "b", "{\"status\":\"running\",\"started_at\":\"2026-01-02T04:04:05.678+01:00\"}", 202);
    expect_str(d, "started_at", "2026-01-02T03:04:05.678Z");
    json_decref(d);

    /* Moving into completed stamps completed_at, keeps started_at. */
    before = ns_wall_ms();
    d = post(s, "rt", "b", "{\"status\":\"completed\"}", 202);
    after = ns_wall_ms();
    expect_str(d, "started_at", "2026-01-02T03:04:05.678Z");
    long long done = ns_ts_ms(ns_jstr(d, "completed_at"));
    cr_assert(done >= before && done <= after);
    json_decref(d);

    /* The same status again stamps nothing new: a duplicate. */
    d = post(s, "rt", "a", "{\"status\":\"running\"}", 200);
    cr_assert_eq(ns_ts_ms(ns_jstr(d, "started_at")), started);
    json_decref(d);
    ns_free(s);
}

/* ---- transition rules ------------------------------------------------- */

Test(api, regression_is_409_with_current)
{
    ns_server *s = start(NULL);
    json_t *d = post(s, "rr", "a", "{\"status\":\"running\"}", 202);
    long long seq = it_jint(d, "seq");
    json_decref(d);

    json_t *cur = post_conflict(s, "rr", "a", "{\"status\":\"scheduled\"}", "illegal-transition");
    expect_str(cur, "status", "running");
    cr_assert_eq(it_jint(cur, "seq"), seq);
    json_decref(cur);
    cur = post_conflict(s, "rr", "a", "{\"status\":\"idle\"}", "illegal-transition");
    json_decref(cur);

    d = post(s, "rr", "a", "{\"status\":\"completed\",\"outputs\":{\"v\":1}}", 202);
    seq = it_jint(d, "seq");
    json_decref(d);
    /* Terminal is final for its attempt. */
    cur = post_conflict(s, "rr", "a", "{\"status\":\"running\"}", "illegal-transition");
    expect_str(cur, "status", "completed");
    cr_assert_eq(it_jint(cur, "seq"), seq);
    json_decref(cur);
    json_decref(post_conflict(s, "rr", "a", "{\"status\":\"failed\"}", "illegal-transition"));
    json_decref(post_conflict(s, "rr", "a", "{\"status\":\"completed\",\"outputs\":{\"v\":2}}",
                              "illegal-transition"));
    /* The same terminal state again is a harmless duplicate. */
    json_decref(post(s, "rr", "a", "{\"status\":\"completed\",\"outputs\":{\"v\":1}}", 200));

    /* Rejections changed nothing, in memory or on disk. */
    d = call(s, "GET", "/runs/rr/nodes/a/state", NULL, 200);
    cr_assert_eq(it_jint(d, "seq"), seq);
    expect_str(d, "status", "completed");
    json_decref(d);
    wait_idle(s);
    char seqtext[32];
    snprintf(seqtext, sizeof seqtext, "%lld", seq);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='rr' "
                              "AND status='completed' AND seq=?", seqtext, NULL), 1);
    json_t *st = ns_stats(s);
    cr_assert_not_null(st);
    json_t *rej = json_object_get(st, "updates_rejected");
    if (json_is_object(rej))
        cr_assert_geq(json_integer_value(json_object_get(rej, "illegal")), 5);
    json_decref(st);
    ns_free(s);
}

Test(api, stale_attempt_is_409)
{
    ns_server *s = start(NULL);
    json_t *d = post(s, "ra", "a", "{\"status\":\"running\",\"attempt\":2}", 202);
    cr_assert_eq(it_jint(d, "attempt"), 2);
    json_decref(d);
    json_t *cur = post_conflict(s, "ra", "a", "{\"status\":\"completed\",\"attempt\":1}",
                                "stale-attempt");
    cr_assert_eq(it_jint(cur, "attempt"), 2);
    expect_str(cur, "status", "running");
    json_decref(cur);
    /* Without attempt the update means the current attempt. */
    d = post(s, "ra", "a", "{\"status\":\"completed\"}", 202);
    cr_assert_eq(it_jint(d, "attempt"), 2);
    json_decref(d);
    ns_free(s);
}

Test(api, higher_attempt_clears_the_attempts_fields)
{
    ns_server *s = start(NULL);
    json_decref(post(s, "rh", "a",
                     "{\"status\":\"scheduled\",\"scheduled_at\":\"2026-01-01T00:00:00.000Z\","
                     "\"resume_state\":{\"k\":\"v\"}}", 202));
    json_decref(post(s, "rh", "a", "{\"status\":\"suspended\",\"suspension_reason\":\"wait\"}", 202));
    json_t *d = post(s, "rh", "a",
                     "{\"status\":\"failed\",\"last_error\":\"boom\",\"retryable\":true,"
                     "\"outputs\":{\"x\":1}}", 202);
    cr_assert(ns_jstr(d, "failed_at") != NULL);
    cr_assert(ns_jstr(d, "suspended_at") != NULL);
    json_decref(d);

    long long before = ns_wall_ms();
    d = post(s, "rh", "a", "{\"status\":\"running\",\"attempt\":2}", 202);
    long long after = ns_wall_ms();
    cr_assert_eq(it_jint(d, "attempt"), 2);
    expect_str(d, "status", "running");
    long long started = ns_ts_ms(ns_jstr(d, "started_at"));
    cr_assert(started >= before && started <= after);
    expect_null(d, "completed_at");
    expect_null(d, "failed_at");
    expect_null(d, "suspended_at");
    expect_null(d, "last_error");
    expect_null(d, "suspension_reason");
    expect_null(d, "outputs");
    cr_assert(json_is_false(json_object_get(d, "retryable")));
    /* Kept across attempts. */
    expect_str(d, "scheduled_at", "2026-01-01T00:00:00.000Z");
    json_t *rs = json_pack("{s:s}", "k", "v");
    cr_assert(json_equal(json_object_get(d, "resume_state"), rs));
    json_decref(rs);
    json_decref(d);

    /* A new attempt may go to any status, even a lower rank. */
    d = post(s, "rh", "a", "{\"status\":\"scheduled\",\"attempt\":3}", 202);
    cr_assert_eq(it_jint(d, "attempt"), 3);
    expect_null(d, "started_at");
    json_decref(d);
    ns_free(s);
}

Test(api, duplicate_is_200_and_queues_nothing)
{
    ns_server *s = start(NULL);
    json_t *d = post(s, "rp", "a", "{\"status\":\"scheduled\",\"outputs\":{\"o\":1}}", 202);
    long long seq = it_jint(d, "seq");
    json_decref(d);
    wait_idle(s);
    long long queued = ns_stat(s, "updates_queued");
    long long dups = ns_stat(s, "updates_duplicate");
    cr_assert_eq(queued, 1);

    d = post(s, "rp", "a", "{\"status\":\"scheduled\"}", 200);
    cr_assert_eq(it_jint(d, "seq"), seq);
    cr_assert(json_is_true(json_object_get(d, "durable")),
              "a duplicate of a durable state reports durable");
    json_decref(d);
    d = post(s, "rp", "a", "{\"status\":\"scheduled\",\"attempt\":1,\"outputs\":{\"o\":1}}", 200);
    cr_assert_eq(it_jint(d, "seq"), seq);
    json_decref(d);
    /* A GET body posted back is a duplicate too. */
    d = call(s, "GET", "/runs/rp/nodes/a/state", NULL, 200);
    char *back = json_dumps(d, JSON_COMPACT);
    cr_assert_not_null(back);
    json_decref(d);
    json_decref(post(s, "rp", "a", back, 200));
    free(back);

    cr_assert_eq(ns_stat(s, "updates_queued"), queued);
    cr_assert_eq(ns_stat(s, "updates_duplicate"), dups + 3);
    ns_free(s);
}

Test(api, force_bypasses_rules)
{
    ns_server *s = start(NULL);
    json_decref(post(s, "rf", "a", "{\"status\":\"completed\",\"attempt\":3}", 202));
    json_t *d = post(s, "rf", "a", "{\"status\":\"running\",\"force\":true}", 202);
    expect_str(d, "status", "running");
    json_decref(d);
    d = post(s, "rf", "a", "{\"status\":\"idle\",\"attempt\":1,\"force\":true}", 202);
    expect_str(d, "status", "idle");
    cr_assert_eq(it_jint(d, "attempt"), 1);
    cr_assert(json_object_get(d, "force") == NULL, "force is not part of the state");
    json_decref(d);
    wait_idle(s);
    cr_assert_eq(ns_db_int(s, "SELECT attempt FROM run_node_state WHERE run_id='rf' AND "
                              "node_id='a' AND status='idle'", NULL), 1);
    ns_free(s);
}

Test(api, rank_two_moves_are_free)
{
    ns_server *s = start(NULL);
    json_decref(post(s, "rk", "a", "{\"status\":\"running\"}", 202));
    json_decref(post(s, "rk", "a", "{\"status\":\"paused\"}", 202));
    json_t *d = post(s, "rk", "a", "{\"status\":\"suspended\",\"suspension_reason\":\"input\","
                                   "\"resume_state\":{\"step\":3}}", 202);
    cr_assert(ns_jstr(d, "suspended_at") != NULL, "moving into suspended stamps suspended_at");
    expect_str(d, "suspension_reason", "input");
    json_decref(d);
    d = post(s, "rk", "a", "{\"status\":\"running\"}", 202);
    expect_str(d, "status", "running");
    json_decref(d);
    ns_free(s);
}

/*
 * A run of big outputs: a page (by node id or by seq) ends on bytes long
 * before `limit`, and asking on from where it ended reaches every node once.
 */
Test(api, pages_of_big_nodes_are_bounded_in_bytes_and_reach_every_node, .timeout = 180)
{
    enum { NODES = 24, BIG = 900 * 1024 };
    ns_server *s = start(NULL);
    char *body = malloc(BIG + 64);
    cr_assert_not_null(body);
    int n = snprintf(body, BIG + 64, "{\"status\":\"running\",\"outputs\":\"");
    memset(body + n, 'x', BIG);
    strcpy(body + n + BIG, "\"}");
    char node[16];
    for (int i = 0; i < NODES; i++) {
        snprintf(node, sizeof node, "n%02d", i);
        json_decref(post(s, "big", node, body, 202));
    }
    free(body);

    /* By node id, with next. */
    char path[256], after[64] = "";
    int seen = 0, pages = 0;
    for (;;) {
        snprintf(path, sizeof path, "/runs/big/nodes?limit=1000%s%s", *after ? "&after=" : "",
                 after);
        json_t *page = call(s, "GET", path, NULL, 200);
        json_t *nodes = json_object_get(page, "nodes");
        cr_assert_gt(json_array_size(nodes), 0);
        cr_assert_lt(json_array_size(nodes), NODES, "a page held every node");
        seen += (int)json_array_size(nodes);
        pages++;
        json_t *next = json_object_get(page, "next");
        bool more = json_is_string(next);
        if (more)
            snprintf(after, sizeof after, "%s", json_string_value(next));
        json_decref(page);
        if (!more)
            break;
    }
    cr_assert_eq(seen, NODES, "%d nodes over %d pages", seen, pages);

    /* By seq, asking again from the last one. */
    long long since = 0;
    seen = 0;
    for (int round = 0; round < NODES; round++) {
        snprintf(path, sizeof path, "/runs/big/nodes?since=%lld&limit=1000", since);
        json_t *page = call(s, "GET", path, NULL, 200);
        json_t *nodes = json_object_get(page, "nodes");
        size_t count = json_array_size(nodes);
        json_t *last = json_array_get(nodes, count - 1);
        if (count)
            since = it_jint(last, "seq");
        seen += (int)count;
        cr_assert(count == 0 || count < NODES, "a page held every node");
        json_decref(page);
        if (count == 0)
            break;
    }
    cr_assert_eq(seen, NODES);
    ns_free(s);
}
