/*
 * Unit tests for api: api_handle driven with hand-built api_request structs
 * (headers and query arguments looked up in small arrays) on a real engine
 * over a temp SQLite file. Covers routing (404, 405 with Allow, 400 for bad
 * ids), every POST outcome, GET with ETag and If-None-Match, listing with
 * filters and pages, summaries, deletes, /stats content negotiation,
 * /healthz and /readyz, the two-step ?wait=true answer, percent-encoding in
 * paths (refused in ids) and query values (decoded), client bytes in problem
 * details, the counting of every answer by code, every problem type as
 * api_problem renders it, and the route table's flags and Allow lists.
 * Response bodies are parsed with jansson.
 */
#include <criterion/criterion.h>

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>

#include "utf8_check.h"
#include "store_fixture.h"
#include "writer_blocker.h"
#include "api.h"
#include "api_internal.h"
#include "prom.h"
#include "engine.h"

#define JSON_TYPE "application/json"
#define PROBLEM_TYPE "application/problem+json"
#define HANG_SECONDS 30

/* Criterion fixtures have no context argument; this is per test process. */
static char tmp_dir[64];
static char db_path[128];
static engine *E;
static api *A;

static const api_config api_cfg = {
    .max_body_bytes = 1 << 20,
    .max_error_bytes = 65536,
    .max_wait = 30,
    .default_wait = 10,
    .max_batch_updates = 1000,
};

static void open_env(size_t queue_capacity)
{
    engine_config c = {
        .db_path = db_path,
        .batch_size = 1000,
        .batch_interval = 60, /* the writer commits only when asked to flush */
        .queue_capacity = queue_capacity,
        .shutdown_timeout = 10,
    };
    char err[512] = "";
    E = engine_open(&c, err, sizeof err);
    cr_assert_not_null(E, "engine_open: %s", err);
    A = api_new(E, &api_cfg);
    cr_assert_not_null(A);
}

static void close_env(void)
{
    api_free(A);
    A = NULL;
    if (E)
        cr_assert_eq(engine_close(E), 0);
    E = NULL;
}

static void setup(void)
{
    strcpy(tmp_dir, "/tmp/test_api.XXXXXX");
    cr_assert_not_null(mkdtemp(tmp_dir));
    snprintf(db_path, sizeof db_path, "%s/ns.db", tmp_dir);
    open_env(10000);
}

static void teardown(void)
{
    close_env();
    static const char *const suffixes[] = { "", "-wal", "-shm", "-journal", ".spill", ".spill-wal", ".spill-shm", ".spill-journal" };
    char p[PATH_MAX + 16];
    for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
        snprintf(p, sizeof p, "%s%s", db_path, suffixes[i]);
        unlink(p);
    }
    rmdir(tmp_dir);
}

TestSuite(api, .init = setup, .fini = teardown, .timeout = 120);

/* ---- building requests ---- */

typedef struct kv {
    const char *name;
    const char *value;
} kv;

/* A request: headers and query arguments end at the first NULL name. */
typedef struct spec {
    const char *method;
    const char *path;
    const char *body;
    kv headers[6];
    kv query[6];
} spec;

static const char *header_of(void *ctx, const char *name, size_t nth)
{
    const spec *s = ctx;
    for (size_t i = 0; i < 6 && s->headers[i].name; i++)
        if (strcasecmp(s->headers[i].name, name) == 0 && nth-- == 0)
            return s->headers[i].value;
    return NULL;
}

static const char *query_of(void *ctx, const char *name)
{
    const spec *s = ctx;
    for (size_t i = 0; i < 6 && s->query[i].name; i++)
        if (strcmp(s->query[i].name, name) == 0)
            return s->query[i].value;
    return NULL;
}

static void call(const spec *s, api_response *resp)
{
    api_request req = {
        .method = s->method,
        .path = s->path,
        .body = s->body,
        .body_len = s->body ? strlen(s->body) : 0,
        .header = header_of,
        .query = query_of,
        .ctx = (void *)s,
    };
    api_handle(A, &req, resp);
    if (resp->body) {
        cr_assert_not_null(resp->content_type, "a body without a content type");
        cr_assert_eq(strlen(resp->body), resp->body_len, "body_len disagrees with the body");
    }
}

/* Parses a JSON body; the caller json_decref()s it. */
static json_t *body_json(const api_response *resp)
{
    cr_assert_not_null(resp->body, "no body (status %d)", resp->status);
    json_error_t err;
    json_t *j = json_loadb(resp->body, resp->body_len, 0, &err);
    cr_assert_not_null(j, "body is not JSON: %s: %.*s", err.text, (int)resp->body_len,
                       resp->body);
    return j;
}

static const char *jstr(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    cr_assert(json_is_string(v), "\"%s\" is not a string", key);
    return json_string_value(v);
}

static json_int_t jint(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    cr_assert(json_is_integer(v), "\"%s\" is not an integer", key);
    return json_integer_value(v);
}

static bool jbool(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    cr_assert(json_is_boolean(v), "\"%s\" is not a boolean", key);
    return json_is_true(v);
}

/* Asserts a problem+json answer with this status and slug; returns the parsed body. */
static json_t *expect_problem(const api_response *resp, int status, const char *slug)
{
    cr_assert_eq(resp->status, status, "status %d, want %d: %.*s", resp->status, status,
                 (int)resp->body_len, resp->body ? resp->body : "");
    cr_assert_str_eq(resp->content_type, PROBLEM_TYPE);
    json_t *j = body_json(resp);
    char type[128];
    snprintf(type, sizeof type, "urn:nodestate:problem:%s", slug);
    cr_assert_str_eq(jstr(j, "type"), type);
    cr_assert_eq(jint(j, "status"), status);
    cr_assert_not_null(json_object_get(j, "title"));
    cr_assert_gt(strlen(jstr(j, "detail")), 0, "an empty detail");
    return j;
}

static void check_problem(const spec *s, int status, const char *slug)
{
    api_response resp;
    call(s, &resp);
    json_decref(expect_problem(&resp, status, slug));
    api_response_free(&resp);
}

/* POSTs body to the node's state and returns the HTTP status. */
static int post(const char *run, const char *node, const char *body)
{
    char path[512];
    snprintf(path, sizeof path, "/runs/%s/nodes/%s/state", run, node);
    spec s = { .method = "POST", .path = path, .body = body,
               .headers = { { "Content-Type", "application/json" } } };
    api_response resp;
    call(&s, &resp);
    int status = resp.status;
    api_response_free(&resp);
    return status;
}

static void flush_all(void)
{
    int64_t want = atomic_load(&engine_stats(E)->last_seq);
    for (int i = 0; i < HANG_SECONDS * 200; i++) {
        engine_flush_soon(E);
        if (engine_durable_seq(E) >= want)
            return;
        sfx_sleep_ms(5);
    }
    cr_assert_fail("not durable after %d s", HANG_SECONDS);
}

/* The node state keys, in the agreed order. */
static const char *const row_keys[] = {
    "run_id", "node_id", "status", "attempt", "scheduled_at", "started_at",
    "completed_at", "failed_at", "suspended_at", "last_error", "retryable",
    "suspension_reason", "resume_state", "outputs", "updated_at", "seq", "durable",
};

/* Every key present, in order, and nothing else. */
static void check_row_shape(json_t *row, const char *raw)
{
    cr_assert(json_is_object(row));
    size_t n = sizeof row_keys / sizeof *row_keys;
    cr_assert_eq(json_object_size(row), n, "extra or missing keys");
    const char *prev = raw;
    for (size_t i = 0; i < n; i++) {
        cr_assert_not_null(json_object_get(row, row_keys[i]), "no \"%s\"", row_keys[i]);
        char quoted[64];
        snprintf(quoted, sizeof quoted, "\"%s\":", row_keys[i]);
        const char *at = raw ? strstr(prev, quoted) : NULL;
        if (raw) {
            cr_assert_not_null(at, "\"%s\" out of order", row_keys[i]);
            prev = at;
        }
    }
}

/* ---- routing ---- */

Test(api, unknown_paths_are_404)
{
    static const char *const paths[] = {
        "/", "/nope", "/runs", "/runs/r/nodes/n", "/runs/r/nodes/n/state/x",
        "/runs/r/x", "/runs/r/nodes/n/status", "//runs/r", "/runs/r/", "/runs/r//",
        "runs/r", "/stats/x", "/Runs/r", "/runs/r/nodes/n/state/x/y/z",
    };
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        spec s = { .method = "GET", .path = paths[i] };
        api_response resp;
        call(&s, &resp);
        cr_assert_eq(resp.status, 404, "%s: %d", paths[i], resp.status);
        json_decref(expect_problem(&resp, 404, "not-found"));
        api_response_free(&resp);
    }
}

Test(api, wrong_method_is_405_with_allow)
{
    static const struct {
        const char *method, *path, *allow;
    } cases[] = {
        { "POST", "/stats", "GET, HEAD" },
        { "DELETE", "/metrics", "GET, HEAD" },
        { "POST", "/healthz", "GET, HEAD" },
        { "PUT", "/readyz", "GET, HEAD" },
        { "DELETE", "/runs/r/nodes/n/state", "GET, HEAD, POST" },
        { "PUT", "/runs/r/nodes/n/state", "GET, HEAD, POST" },
        { "PUT", "/runs/r/nodes", "GET, HEAD, POST" },
        { "POST", "/runs/r", "GET, HEAD, DELETE" },
        { "PATCH", "/runs/r", "GET, HEAD, DELETE" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        spec s = { .method = cases[i].method, .path = cases[i].path };
        api_response resp;
        call(&s, &resp);
        json_decref(expect_problem(&resp, 405, "method-not-allowed"));
        cr_assert_not_null(resp.allow, "%s %s: no Allow", cases[i].method, cases[i].path);
        cr_assert_str_eq(resp.allow, cases[i].allow);
        api_response_free(&resp);
    }
}

/*
 * Found by fuzzing (tests/fuzz/corpus/router/crash-405-method-not-utf8): the
 * 405 detail quotes the method, and a method that is not UTF-8 (or one cut
 * inside a character at 16 bytes) made the body invalid JSON.
 */
Test(api, problem_bodies_stay_json_for_bytes_that_are_not_utf8)
{
    static const char *const methods[] = {
        "DE42?wait\xc3LETE",
        "\xff\xfe",
        "ABCDEFGHIJKLMNO\xc3\xa9",   /* é cut in half by the 16-byte limit */
    };
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++) {
        spec s = { .method = methods[i], .path = "/runs/r" };
        api_response resp;
        call(&s, &resp);
        cr_assert(utf8_check(resp.body, resp.body_len), "method %zu: body not UTF-8", i);
        json_t *j = expect_problem(&resp, 405, "method-not-allowed");
        const char *detail = jstr(j, "detail");
        cr_assert(utf8_check(detail, strlen(detail)), "method %zu: detail not UTF-8", i);
        json_decref(j);
        api_response_free(&resp);
    }
    /* jansson's message quotes the bytes it could not decode. */
    static const char *const bodies[] = { "{\"status\":\"\xc3(\"}", "{\"k\xe9\":1}" };
    for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++) {
        spec s = { .method = "POST", .path = "/runs/r/nodes/n/state", .body = bodies[i] };
        api_response resp;
        call(&s, &resp);
        cr_assert(utf8_check(resp.body, resp.body_len), "body %zu: answer not UTF-8", i);
        json_decref(expect_problem(&resp, 400, "invalid-json"));
        api_response_free(&resp);
    }
}

Test(api, bad_ids_are_400)
{
    char long_id[NS_ID_MAX + 2];
    memset(long_id, 'x', NS_ID_MAX + 1);
    long_id[NS_ID_MAX + 1] = '\0';
    char path[512];
    /* "" too: an empty id is an invalid one, not another path. */
    static const char *const bad[] = { "a b", "a%2Fb", "caf\xc3\xa9", "a+b", "a?b", "" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(path, sizeof path, "/runs/%s/nodes/n/state", bad[i]);
        check_problem(&(spec){ .method = "GET", .path = path }, 400, "invalid-id");
        snprintf(path, sizeof path, "/runs/r/nodes/%s/state", bad[i]);
        check_problem(&(spec){ .method = "POST", .path = path, .body = "{\"status\":\"idle\"}" },
                      400, "invalid-id");
        snprintf(path, sizeof path, "/runs/%s", bad[i]);
        check_problem(&(spec){ .method = "DELETE", .path = path }, 400, "invalid-id");
        snprintf(path, sizeof path, "/runs/%s/nodes", bad[i]);
        check_problem(&(spec){ .method = "GET", .path = path }, 400, "invalid-id");
        check_problem(&(spec){ .method = "POST", .path = path, .body = "{\"updates\":[]}" },
                      400, "invalid-id");
        snprintf(path, sizeof path, "/runs/%s/events", bad[i]);
        check_problem(&(spec){ .method = "GET", .path = path }, 400, "invalid-id");
    }
    /* 129 bytes is one too many; 128 is fine (and simply unknown). */
    snprintf(path, sizeof path, "/runs/%s/nodes/n/state", long_id);
    check_problem(&(spec){ .method = "GET", .path = path }, 400, "invalid-id");
    snprintf(path, sizeof path, "/runs/r/nodes/%s/state", long_id);
    check_problem(&(spec){ .method = "POST", .path = path, .body = "{\"status\":\"idle\"}" },
                  400, "invalid-id");
    snprintf(path, sizeof path, "/runs/%s", long_id);
    check_problem(&(spec){ .method = "GET", .path = path }, 400, "invalid-id");
    long_id[NS_ID_MAX] = '\0';
    snprintf(path, sizeof path, "/runs/%s/nodes/n/state", long_id);
    check_problem(&(spec){ .method = "GET", .path = path }, 404, "not-found");
    cr_assert_eq(post(long_id, long_id, "{\"status\":\"idle\"}"), 202);
    /* Nothing was stored for the refused POSTs. */
    cr_assert_eq(atomic_load(&engine_stats(E)->updates_queued), 1);
    cr_assert_geq(atomic_load(&engine_stats(E)->rejected[NS_REJECT_INVALID]), 6);
}

/* ---- POST ---- */

Test(api, post_accepted_duplicate_conflict)
{
    spec s = { .method = "POST", .path = "/runs/r1/nodes/n1/state",
               .body = "{\"status\":\"running\",\"attempt\":2,\"outputs\":{\"a\": [1, 2]}}",
               .headers = { { "Content-Type", "application/json" } } };
    api_response resp;
    call(&s, &resp);
    cr_assert_eq(resp.status, 202, "%.*s", (int)resp.body_len, resp.body);
    cr_assert_str_eq(resp.content_type, JSON_TYPE);
    cr_assert_str_eq(resp.etag, "\"1-q\"", "the tag of a queued state");
    cr_assert_eq(resp.wait_seq, 0);
    json_t *j = body_json(&resp);
    check_row_shape(j, resp.body);
    cr_assert_str_eq(jstr(j, "run_id"), "r1");
    cr_assert_str_eq(jstr(j, "node_id"), "n1");
    cr_assert_str_eq(jstr(j, "status"), "running");
    cr_assert_eq(jint(j, "attempt"), 2);
    cr_assert_eq(jint(j, "seq"), 1);
    cr_assert_not(jbool(j, "durable"));
    cr_assert(json_is_string(json_object_get(j, "started_at")), "started_at not stamped");
    cr_assert(json_is_null(json_object_get(j, "completed_at")));
    cr_assert(json_is_string(json_object_get(j, "updated_at")));
    json_t *outputs = json_object_get(j, "outputs");
    cr_assert(json_is_object(outputs), "outputs not embedded as JSON");
    cr_assert_eq(json_array_size(json_object_get(outputs, "a")), 2);
    int64_t ms;
    cr_assert_eq(model_ts_parse(jstr(j, "started_at"), &ms), 0);
    cr_assert_eq(strlen(jstr(j, "started_at")), 24, "not millisecond UTC: %s",
                 jstr(j, "started_at"));
    json_decref(j);
    api_response_free(&resp);

    /* The same again: 200, nothing queued. */
    call(&s, &resp);
    cr_assert_eq(resp.status, 200);
    j = body_json(&resp);
    cr_assert_eq(jint(j, "seq"), 1);
    json_decref(j);
    api_response_free(&resp);
    cr_assert_eq(atomic_load(&engine_stats(E)->updates_queued), 1);

    /* Once durable, a duplicate says so. */
    flush_all();
    call(&s, &resp);
    cr_assert_eq(resp.status, 200);
    j = body_json(&resp);
    cr_assert(jbool(j, "durable"));
    json_decref(j);
    api_response_free(&resp);

    /* Regression within the attempt: 409 illegal-transition with the current state. */
    s.body = "{\"status\":\"scheduled\"}";
    call(&s, &resp);
    j = expect_problem(&resp, 409, "illegal-transition");
    json_t *cur = json_object_get(j, "current");
    check_row_shape(cur, NULL);
    cr_assert_str_eq(jstr(cur, "status"), "running");
    cr_assert_eq(jint(cur, "seq"), 1);
    cr_assert(jbool(cur, "durable"));
    json_decref(j);
    api_response_free(&resp);

    /* Lower attempt: 409 stale-attempt with the current state. */
    s.body = "{\"status\":\"completed\",\"attempt\":1}";
    call(&s, &resp);
    j = expect_problem(&resp, 409, "stale-attempt");
    cur = json_object_get(j, "current");
    cr_assert_eq(jint(cur, "attempt"), 2);
    json_decref(j);
    api_response_free(&resp);

    /* A GET body can be POSTed back: a duplicate. */
    spec g = { .method = "GET", .path = "/runs/r1/nodes/n1/state" };
    call(&g, &resp);
    cr_assert_eq(resp.status, 200);
    char *echo = strdup(resp.body);
    cr_assert_not_null(echo);
    api_response_free(&resp);
    s.body = echo;
    call(&s, &resp);
    cr_assert_eq(resp.status, 200, "GET body POSTed back: %.*s", (int)resp.body_len, resp.body);
    api_response_free(&resp);
    free(echo);

    ns_stats *st = engine_stats(E);
    cr_assert_eq(atomic_load(&st->rejected[NS_REJECT_ILLEGAL]), 1);
    cr_assert_eq(atomic_load(&st->rejected[NS_REJECT_STALE]), 1);
    cr_assert_eq(atomic_load(&st->updates_queued), 1);
}

Test(api, post_content_types)
{
    const char *body = "{\"status\":\"scheduled\"}";
    static const char *const ok[] = {
        "application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
        "application/problem+json", "application/vnd.nodestate+json;charset=utf-8",
    };
    static const char *const bad[] = {
        "text/plain", "application/x-www-form-urlencoded", "text/json", "application/jsonx",
        "application/+json", "multipart/form-data", "application/vnd.a/b+json",
        "application//x+json",
    };
    char node[16];
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        snprintf(node, sizeof node, "ok%zu", i);
        char path[64];
        snprintf(path, sizeof path, "/runs/r/nodes/%s/state", node);
        spec s = { .method = "POST", .path = path, .body = body,
                   .headers = { { "Content-Type", ok[i] } } };
        api_response resp;
        call(&s, &resp);
        cr_assert_eq(resp.status, 202, "%s: %d", ok[i], resp.status);
        api_response_free(&resp);
    }
    /* No Content-Type at all is taken as JSON. */
    check_problem(&(spec){ .method = "GET", .path = "/runs/r/nodes/none/state" }, 404,
                  "not-found");
    spec none = { .method = "POST", .path = "/runs/r/nodes/none/state", .body = body };
    api_response resp;
    call(&none, &resp);
    cr_assert_eq(resp.status, 202);
    api_response_free(&resp);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        spec s = { .method = "POST", .path = "/runs/r/nodes/bad/state", .body = body,
                   .headers = { { "Content-Type", bad[i] } } };
        check_problem(&s, 415, "unsupported-media-type");
    }
    check_problem(&(spec){ .method = "GET", .path = "/runs/r/nodes/bad/state" }, 404,
                  "not-found");
}

Test(api, post_bad_bodies)
{
    static const char *const invalid_json[] = {
        "", "not json", "{\"status\":", "[]", "\"running\"", "42", "null",
        "{\"status\":\"idle\",\"status\":\"idle\"}",
    };
    for (size_t i = 0; i < sizeof invalid_json / sizeof *invalid_json; i++) {
        spec s = { .method = "POST", .path = "/runs/r/nodes/n/state", .body = invalid_json[i],
                   .headers = { { "Content-Type", "application/json" } } };
        api_response resp;
        call(&s, &resp);
        cr_assert_eq(resp.status, 400, "body %s: %d", invalid_json[i], resp.status);
        json_decref(expect_problem(&resp, 400, "invalid-json"));
        api_response_free(&resp);
    }
    /* A NULL body is an empty one. */
    check_problem(&(spec){ .method = "POST", .path = "/runs/r/nodes/n/state" }, 400,
                  "invalid-json");

    static const struct {
        const char *body, *names;
    } invalid_update[] = {
        { "{}", "status" },
        { "{\"attempt\":1}", "status" },
        { "{\"status\":\"done\"}", "status" },
        { "{\"status\":1}", "status" },
        { "{\"status\":\"idle\",\"attempt\":0}", "attempt" },
        { "{\"status\":\"idle\",\"attempt\":\"1\"}", "attempt" },
        { "{\"status\":\"idle\",\"attempt\":null}", "attempt" },
        { "{\"status\":\"idle\",\"attempt\":1.5}", "attempt" },
        { "{\"status\":\"idle\",\"started_at\":\"yesterday\"}", "started_at" },
        { "{\"status\":\"idle\",\"started_at\":\"2026-02-30T00:00:00Z\"}", "started_at" },
        { "{\"status\":\"idle\",\"failed_at\":5}", "failed_at" },
        { "{\"status\":\"idle\",\"last_error\":5}", "last_error" },
        { "{\"status\":\"idle\",\"retryable\":\"yes\"}", "retryable" },
        { "{\"status\":\"idle\",\"force\":1}", "force" },
        { "{\"status\":\"idle\",\"run_id\":\"other\"}", "run_id" },
        { "{\"status\":\"idle\",\"node_id\":\"other\"}", "node_id" },
        { "{\"status\":\"idle\",\"colour\":\"red\"}", "colour" },
    };
    for (size_t i = 0; i < sizeof invalid_update / sizeof *invalid_update; i++) {
        spec s = { .method = "POST", .path = "/runs/r/nodes/n/state",
                   .body = invalid_update[i].body,
                   .headers = { { "Content-Type", "application/json" } } };
        api_response resp;
        call(&s, &resp);
        cr_assert_eq(resp.status, 422, "body %s: %d", invalid_update[i].body, resp.status);
        json_t *j = expect_problem(&resp, 422, "invalid-update");
        cr_assert_not_null(strstr(jstr(j, "detail"), invalid_update[i].names),
                           "detail \"%s\" does not name %s", jstr(j, "detail"),
                           invalid_update[i].names);
        json_decref(j);
        api_response_free(&resp);
    }
    /* Nothing of the above reached the engine. */
    cr_assert_eq(atomic_load(&engine_stats(E)->updates_queued), 0);
    check_problem(&(spec){ .method = "GET", .path = "/runs/r/nodes/n/state" }, 404,
                  "not-found");
    cr_assert_geq(atomic_load(&engine_stats(E)->rejected[NS_REJECT_INVALID]),
                  sizeof invalid_json / sizeof *invalid_json + 1 +
                      sizeof invalid_update / sizeof *invalid_update);
    /* A bad ?wait= is a 400 too. */
    spec w = { .method = "POST", .path = "/runs/r/nodes/n/state", .body = "{\"status\":\"idle\"}",
               .query = { { "wait", "maybe" } } };
    check_problem(&w, 400, "invalid-query");
    spec t = { .method = "POST", .path = "/runs/r/nodes/n/state", .body = "{\"status\":\"idle\"}",
               .query = { { "wait", "true" }, { "timeout", "soon" } } };
    check_problem(&t, 400, "invalid-query");
    static const char *const bad_seconds[] = { "-1", "+1", " 1", "1 ", "0x1p0", "1e", "1e400",
                                               "inf", "nan", ".", "" };
    for (size_t i = 0; i < sizeof bad_seconds / sizeof *bad_seconds; i++) {
        t.query[1].value = bad_seconds[i];
        check_problem(&t, 400, "invalid-query");
        check_problem(&(spec){ .method = "GET", .path = "/runs/r/nodes",
                               .query = { { "since", "0" }, { "wait", bad_seconds[i] } } },
                      400, "invalid-query");
    }
    /* Plain decimal, fraction and exponent are seconds. */
    static const char *const good_seconds[] = { "0", "0.25", ".5", "1.", "1e-1", "1E0" };
    for (size_t i = 0; i < sizeof good_seconds / sizeof *good_seconds; i++) {
        double secs = -1;
        cr_assert_eq(api_seconds_value(good_seconds[i], &secs), 0, "%s", good_seconds[i]);
        cr_assert(secs >= 0 && secs <= 1, "%s read as %g", good_seconds[i], secs);
    }
}

Test(api, post_queue_full_is_503)
{
    close_env();
    open_env(1);
    blocker bl;
    blocker_arm(E, &bl);
    cr_assert_eq(post("w", "blocker", "{\"status\":\"running\"}"), 202);
    cr_assert(blocker_wait(E, &bl), "the writer never committed the blocker");
    /* The writer is stuck; capacity 1. */
    cr_assert_eq(post("r", "a", "{\"status\":\"running\"}"), 202);
    spec s = { .method = "POST", .path = "/runs/r/nodes/b/state", .body = "{\"status\":\"running\"}" };
    api_response resp;
    call(&s, &resp);
    json_decref(expect_problem(&resp, 503, "queue-full"));
    cr_assert_eq(resp.retry_after, 1);
    api_response_free(&resp);
    check_problem(&(spec){ .method = "GET", .path = "/runs/r/nodes/b/state" }, 404, "not-found");

    /* Not ready while full. */
    call(&(spec){ .method = "GET", .path = "/readyz" }, &resp);
    json_decref(expect_problem(&resp, 503, "not-ready"));
    cr_assert_eq(resp.retry_after, 1);
    api_response_free(&resp);
    /* Still alive. */
    call(&(spec){ .method = "GET", .path = "/healthz" }, &resp);
    cr_assert_eq(resp.status, 200);
    api_response_free(&resp);
    /* A delete needs a slot too. */
    call(&(spec){ .method = "DELETE", .path = "/runs/r" }, &resp);
    json_decref(expect_problem(&resp, 503, "queue-full"));
    cr_assert_eq(resp.retry_after, 1);
    api_response_free(&resp);
    atomic_store(&bl.release, true);
    close_env();
}

/* ---- GET a node ---- */

Test(api, get_etag_and_if_none_match)
{
    cr_assert_eq(post("r", "a", "{\"status\":\"scheduled\"}"), 202);
    cr_assert_eq(post("r", "a", "{\"status\":\"running\"}"), 202);
    api_response resp;
    spec s = { .method = "GET", .path = "/runs/r/nodes/a/state" };
    call(&s, &resp);
    cr_assert_eq(resp.status, 200);
    cr_assert_str_eq(resp.content_type, JSON_TYPE);
    cr_assert_str_eq(resp.etag, "\"2-q\"");
    json_t *j = body_json(&resp);
    check_row_shape(j, resp.body);
    cr_assert_str_eq(jstr(j, "status"), "running");
    cr_assert_eq(jint(j, "seq"), 2);
    cr_assert_not(jbool(j, "durable"));
    json_decref(j);
    api_response_free(&resp);

    static const char *const match[] = { "\"2-q\"", "W/\"2-q\"", "*", "\"1\", \"2-q\"",
                                         "\"9\",\"2-q\"", "\"9\",\t\"2-q\"\t" };
    for (size_t i = 0; i < sizeof match / sizeof *match; i++) {
        spec c = { .method = "GET", .path = "/runs/r/nodes/a/state",
                   .headers = { { "If-None-Match", match[i] } } };
        call(&c, &resp);
        cr_assert_eq(resp.status, 304, "If-None-Match: %s -> %d", match[i], resp.status);
        /* The 200's body, for the transport to measure (Content-Length) and not send. */
        cr_assert_not_null(resp.body);
        cr_assert_not_null(strstr(resp.body, "\"node_id\":\"a\""));
        cr_assert_str_eq(resp.etag, "\"2-q\"");
        api_response_free(&resp);
    }
    static const char *const nomatch[] = { "\"1\"", "\"22\"", "2", "\"20\", \"3\"", "\"2\"",
                                           "\"2-\"", "\"2-q", "\"2-q\"x" };
    for (size_t i = 0; i < sizeof nomatch / sizeof *nomatch; i++) {
        spec c = { .method = "GET", .path = "/runs/r/nodes/a/state",
                   .headers = { { "If-None-Match", nomatch[i] } } };
        call(&c, &resp);
        cr_assert_eq(resp.status, 200, "If-None-Match: %s -> %d", nomatch[i], resp.status);
        api_response_free(&resp);
    }
    /* A list may come on several lines: any line's tag counts. */
    spec lines = { .method = "GET", .path = "/runs/r/nodes/a/state",
                   .headers = { { "If-None-Match", "\"9\"" },
                                { "If-None-Match", "\"1\", \"2-q\"" } } };
    call(&lines, &resp);
    cr_assert_eq(resp.status, 304, "the second If-None-Match line not read: %d", resp.status);
    api_response_free(&resp);
    lines.headers[1].value = "\"3\"";
    call(&lines, &resp);
    cr_assert_eq(resp.status, 200, "two lines, neither matching: %d", resp.status);
    api_response_free(&resp);

    /*
     * After a flush the same state reads durable: another body, so another
     * tag, and the queued tag no longer matches.
     */
    flush_all();
    call(&s, &resp);
    cr_assert_str_eq(resp.etag, "\"2\"");
    j = body_json(&resp);
    cr_assert(jbool(j, "durable"));
    json_decref(j);
    api_response_free(&resp);
    spec old = { .method = "GET", .path = "/runs/r/nodes/a/state",
                 .headers = { { "If-None-Match", "\"2-q\"" } } };
    call(&old, &resp);
    cr_assert_eq(resp.status, 200, "the queued tag matched the durable state");
    cr_assert_str_eq(resp.etag, "\"2\"");
    j = body_json(&resp);
    cr_assert(jbool(j, "durable"));
    json_decref(j);
    api_response_free(&resp);
    old.headers[0].value = "\"2\"";
    call(&old, &resp);
    cr_assert_eq(resp.status, 304);
    api_response_free(&resp);

    /* HEAD is answered like GET (the transport drops the body). */
    call(&(spec){ .method = "HEAD", .path = "/runs/r/nodes/a/state" }, &resp);
    cr_assert_eq(resp.status, 200);
    cr_assert_str_eq(resp.etag, "\"2\"");
    api_response_free(&resp);

    check_problem(&(spec){ .method = "GET", .path = "/runs/r/nodes/zz/state" }, 404, "not-found");
    check_problem(&(spec){ .method = "GET", .path = "/runs/zz/nodes/a/state" }, 404, "not-found");
}

/* ---- listing and summaries ---- */

/* r: a idle, b scheduled, c running, d running, e completed; other: x failed. */
static void list_fixture(void)
{
    cr_assert_eq(post("r", "d", "{\"status\":\"running\"}"), 202);
    cr_assert_eq(post("r", "a", "{\"status\":\"idle\"}"), 202);
    cr_assert_eq(post("r", "e", "{\"status\":\"completed\"}"), 202);
    cr_assert_eq(post("r", "c", "{\"status\":\"running\"}"), 202);
    cr_assert_eq(post("r", "b", "{\"status\":\"scheduled\"}"), 202);
    cr_assert_eq(post("other", "x", "{\"status\":\"failed\"}"), 202);
}

/* GETs a listing; returns the parsed body after checking its frame. */
static json_t *list(const spec *s, const char *ids)
{
    api_response resp;
    call(s, &resp);
    cr_assert_eq(resp.status, 200, "%s: %d %.*s", s->path, resp.status, (int)resp.body_len,
                 resp.body);
    cr_assert_str_eq(resp.content_type, JSON_TYPE);
    json_t *j = body_json(&resp);
    api_response_free(&resp);
    cr_assert_str_eq(jstr(j, "run_id"), "r");
    json_t *nodes = json_object_get(j, "nodes");
    cr_assert(json_is_array(nodes));
    char got[64] = "";
    for (size_t i = 0; i < json_array_size(nodes); i++) {
        json_t *row = json_array_get(nodes, i);
        check_row_shape(row, NULL);
        strncat(got, jstr(row, "node_id"), sizeof got - strlen(got) - 1);
    }
    cr_assert_str_eq(got, ids, "listing");
    cr_assert_not_null(json_object_get(j, "next"), "no \"next\"");
    return j;
}

static void expect_next(json_t *j, const char *next)
{
    json_t *v = json_object_get(j, "next");
    if (next)
        cr_assert_str_eq(json_string_value(v), next);
    else
        cr_assert(json_is_null(v), "next is not null");
    json_decref(j);
}

Test(api, list_nodes)
{
    list_fixture();
    expect_next(list(&(spec){ .method = "GET", .path = "/runs/r/nodes" }, "abcde"), NULL);
    expect_next(list(&(spec){ .method = "GET", .path = "/runs/r/nodes",
                              .query = { { "status", "scheduled,running" } } },
                     "bcd"),
                NULL);
    expect_next(list(&(spec){ .method = "GET", .path = "/runs/r/nodes",
                              .query = { { "status", "failed" } } },
                     ""),
                NULL);
    expect_next(list(&(spec){ .method = "GET", .path = "/runs/r/nodes",
                              .query = { { "status", "" } } },
                     "abcde"),
                NULL);
    /* Pages of two, following next. */
    expect_next(list(&(spec){ .method = "GET", .path = "/runs/r/nodes",
                              .query = { { "limit", "2" } } },
                     "ab"),
                "b");
    expect_next(list(&(spec){ .method = "GET", .path = "/runs/r/nodes",
                              .query = { { "limit", "2" }, { "after", "b" } } },
                     "cd"),
                "d");
    expect_next(list(&(spec){ .method = "GET", .path = "/runs/r/nodes",
                              .query = { { "limit", "2" }, { "after", "d" } } },
                     "e"),
                NULL);
    /* Exactly limit left: no next. */
    expect_next(list(&(spec){ .method = "GET", .path = "/runs/r/nodes",
                              .query = { { "limit", "5" } } },
                     "abcde"),
                NULL);
    expect_next(list(&(spec){ .method = "GET", .path = "/runs/r/nodes",
                              .query = { { "status", "running,idle" }, { "limit", "1" },
                                         { "after", "a" } } },
                     "c"),
                "c");
    expect_next(list(&(spec){ .method = "GET", .path = "/runs/r/nodes",
                              .query = { { "after", "zzz" } } },
                     ""),
                NULL);
    expect_next(list(&(spec){ .method = "GET", .path = "/runs/r/nodes",
                              .query = { { "limit", "10000" } } },
                     "abcde"),
                NULL);

    check_problem(&(spec){ .method = "GET", .path = "/runs/nobody/nodes" }, 404, "not-found");
}

Test(api, list_bad_queries_are_400)
{
    list_fixture();
    static const kv bad[] = {
        { "status", "bogus" }, { "status", "running,bogus" }, { "status", ",running" },
        { "status", "running,,idle" }, { "status", "Running" }, { "status", "running," },
        { "wait", "5" }, { "wait", "abc" }, { "wait", "" },
        { "limit", "0" }, { "limit", "10001" }, { "limit", "abc" }, { "limit", "-1" },
        { "limit", "" }, { "limit", "5x" }, { "limit", "+5" }, { "limit", " 5" },
        { "limit", "99999999999999999999999" },
        { "after", "a b" }, { "after", "a/b" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        spec s = { .method = "GET", .path = "/runs/r/nodes", .query = { bad[i] } };
        api_response resp;
        call(&s, &resp);
        cr_assert_eq(resp.status, 400, "%s=%s: %d", bad[i].name, bad[i].value, resp.status);
        json_decref(expect_problem(&resp, 400, "invalid-query"));
        api_response_free(&resp);
    }
}

Test(api, run_summary)
{
    list_fixture();
    api_response resp;
    call(&(spec){ .method = "GET", .path = "/runs/r" }, &resp);
    cr_assert_eq(resp.status, 200);
    cr_assert_str_eq(resp.content_type, JSON_TYPE);
    json_t *j = body_json(&resp);
    cr_assert_str_eq(jstr(j, "run_id"), "r");
    cr_assert_eq(jint(j, "nodes"), 5);
    json_t *counts = json_object_get(j, "counts");
    cr_assert_eq(json_object_size(counts), 7);
    static const struct {
        const char *name;
        int n;
    } want[] = { { "idle", 1 }, { "scheduled", 1 }, { "running", 2 }, { "paused", 0 },
                 { "suspended", 0 }, { "completed", 1 }, { "failed", 0 } };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        cr_assert_eq(jint(counts, want[i].name), want[i].n, "%s", want[i].name);
    cr_assert_eq(jint(j, "last_seq"), 5);
    int64_t ms;
    cr_assert_eq(model_ts_parse(jstr(j, "updated_at"), &ms), 0);
    json_decref(j);
    cr_assert_str_eq(resp.etag, "\"5\"");
    api_response_free(&resp);

    /* Its tag is the run's last seq: asking with it gets 304 until the run changes. */
    spec same = { .method = "GET", .path = "/runs/r", .headers = { { "If-None-Match", "\"5\"" } } };
    call(&same, &resp);
    cr_assert_eq(resp.status, 304, "the summary's own tag: %d", resp.status);
    cr_assert_not_null(resp.body, "the 200's body, for Content-Length");
    cr_assert_str_eq(resp.etag, "\"5\"");
    api_response_free(&resp);
    cr_assert_eq(post("r", "f", "{\"status\":\"scheduled\"}"), 202);
    call(&same, &resp);
    cr_assert_eq(resp.status, 200, "an old tag after a change: %d", resp.status);
    cr_assert_str_eq(resp.etag, "\"7\"", "%s", resp.etag);
    api_response_free(&resp);
    check_problem(&(spec){ .method = "GET", .path = "/runs/nobody" }, 404, "not-found");
}

/* ---- DELETE ---- */

Test(api, delete_run)
{
    list_fixture();
    api_response resp;
    call(&(spec){ .method = "DELETE", .path = "/runs/r" }, &resp);
    cr_assert_eq(resp.status, 202);
    cr_assert_str_eq(resp.content_type, JSON_TYPE);
    cr_assert_eq(resp.wait_seq, 0);
    json_t *j = body_json(&resp);
    cr_assert_str_eq(jstr(j, "run_id"), "r");
    cr_assert_eq(jint(j, "deleted"), 5);
    cr_assert_eq(jint(j, "seq"), 7);
    cr_assert_not(jbool(j, "durable"));
    json_decref(j);
    api_response_free(&resp);

    check_problem(&(spec){ .method = "GET", .path = "/runs/r" }, 404, "not-found");
    check_problem(&(spec){ .method = "GET", .path = "/runs/r/nodes" }, 404, "not-found");
    check_problem(&(spec){ .method = "GET", .path = "/runs/r/nodes/a/state" }, 404, "not-found");
    check_problem(&(spec){ .method = "DELETE", .path = "/runs/r" }, 404, "not-found");
    check_problem(&(spec){ .method = "DELETE", .path = "/runs/nobody" }, 404, "not-found");
    /* Still gone after the writer committed it. */
    flush_all();
    check_problem(&(spec){ .method = "GET", .path = "/runs/r" }, 404, "not-found");
    call(&(spec){ .method = "GET", .path = "/runs/other" }, &resp);
    cr_assert_eq(resp.status, 200);
    api_response_free(&resp);
}

/* ---- stats and probes ---- */

static bool is_prometheus(const api_response *resp)
{
    return resp->status == 200 && resp->content_type &&
           strcmp(resp->content_type, PROM_CONTENT_TYPE) == 0 && resp->body &&
           strstr(resp->body, "# TYPE nodestate_") != NULL;
}

static bool is_stats_json(const api_response *resp)
{
    if (resp->status != 200 || !resp->content_type ||
        strcmp(resp->content_type, JSON_TYPE) != 0)
        return false;
    json_t *j = body_json(resp);
    bool ok = json_is_integer(json_object_get(j, "updates_queued"));
    json_decref(j);
    return ok;
}

Test(api, stats_json_or_prometheus)
{
    cr_assert_eq(post("r", "a", "{\"status\":\"running\"}"), 202);
    static const struct {
        const char *path, *format, *accept;
        bool json;
    } cases[] = {
        { "/stats", NULL, NULL, false },
        { "/stats", "json", NULL, true },
        { "/stats", "prometheus", NULL, false },
        { "/stats", "prometheus", "application/json", false },
        { "/stats", "json", "text/plain", true },
        { "/stats", NULL, "application/json", true },
        { "/stats", NULL, "application/json, text/plain;q=0.5", true },
        { "/stats", NULL, "text/plain;version=0.0.4, application/json", false },
        { "/stats", NULL, "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1", false },
        { "/stats", NULL, "*/*", false },
        { "/stats", NULL, "application/json;q=0.1, text/plain", false },
        { "/stats", NULL, "text/plain;q=0.2, application/json", true },
        { "/stats", NULL, "application/json;q=0", false },
        { "/stats", NULL, "text/*;q=0.9,application/json;q=0.95", true },
        { "/metrics", NULL, NULL, false },
        { "/metrics", NULL, "application/json", false },
        { "/metrics", "json", NULL, false },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        spec s = { .method = "GET", .path = cases[i].path };
        if (cases[i].format)
            s.query[0] = (kv){ "format", cases[i].format };
        if (cases[i].accept)
            s.headers[0] = (kv){ "Accept", cases[i].accept };
        api_response resp;
        call(&s, &resp);
        if (cases[i].json)
            cr_assert(is_stats_json(&resp), "case %zu: %s format=%s Accept=%s: not JSON", i,
                      cases[i].path, cases[i].format, cases[i].accept);
        else
            cr_assert(is_prometheus(&resp), "case %zu: %s format=%s Accept=%s: not Prometheus", i,
                      cases[i].path, cases[i].format, cases[i].accept);
        /* Where Accept chose the body, a cache is told so. */
        bool negotiated = strcmp(cases[i].path, "/stats") == 0 && !cases[i].format;
        cr_assert_eq(resp.vary != NULL && strcmp(resp.vary, "Accept") == 0, negotiated,
                     "case %zu: Vary %s", i, resp.vary ? resp.vary : "(none)");
        api_response_free(&resp);
    }

    /* The JSON counters carry the engine's values. */
    api_response resp;
    call(&(spec){ .method = "GET", .path = "/stats", .query = { { "format", "json" } } }, &resp);
    json_t *j = body_json(&resp);
    cr_assert_eq(jint(j, "updates_queued"), 1);
    cr_assert_eq(jint(j, "last_seq"), 1);
    cr_assert_eq(jint(j, "queue_capacity"), 10000);
    cr_assert(json_is_object(json_object_get(j, "updates_rejected")));
    json_decref(j);
    api_response_free(&resp);

    check_problem(&(spec){ .method = "GET", .path = "/stats", .query = { { "format", "xml" } } },
                  400, "invalid-query");
}

Test(api, healthz_and_readyz)
{
    api_response resp;
    call(&(spec){ .method = "GET", .path = "/healthz" }, &resp);
    cr_assert_eq(resp.status, 200);
    cr_assert_str_eq(resp.content_type, JSON_TYPE);
    json_t *j = body_json(&resp);
    cr_assert_str_eq(jstr(j, "status"), "ok");
    json_decref(j);
    api_response_free(&resp);

    call(&(spec){ .method = "GET", .path = "/readyz" }, &resp);
    cr_assert_eq(resp.status, 200);
    j = body_json(&resp);
    cr_assert_str_eq(jstr(j, "status"), "ready");
    json_decref(j);
    api_response_free(&resp);
}

/* ---- ?wait=true ---- */

Test(api, wait_true_parks_then_answers_durable)
{
    spec s = { .method = "POST", .path = "/runs/r/nodes/a/state", .body = "{\"status\":\"running\"}",
               .query = { { "wait", "true" } } };
    api_response resp;
    call(&s, &resp);
    cr_assert_eq(resp.wait_seq, 1, "not parked");
    cr_assert_eq(resp.wait_timeout, api_cfg.default_wait);
    cr_assert_null(resp.body, "a parked answer is rendered when it finishes, not before");
    flush_all();
    cr_assert_geq(engine_durable_seq(E), resp.wait_seq);
    api_finish_wait(A, &resp, true);
    cr_assert_eq(resp.status, 200);
    cr_assert_eq(resp.wait_seq, 0);
    cr_assert_null(resp.wait);
    cr_assert_str_eq(resp.content_type, JSON_TYPE);
    json_t *j = body_json(&resp);
    check_row_shape(j, resp.body);
    cr_assert(jbool(j, "durable"));
    cr_assert_eq(jint(j, "seq"), 1);
    cr_assert_str_eq(jstr(j, "status"), "running");
    json_decref(j);
    api_response_free(&resp);
}

Test(api, wait_timeout_answers_202)
{
    spec s = { .method = "POST", .path = "/runs/r/nodes/a/state", .body = "{\"status\":\"running\"}",
               .query = { { "wait", "1" }, { "timeout", "2.5" } } };
    api_response resp;
    call(&s, &resp);
    cr_assert_eq(resp.wait_seq, 1);
    cr_assert_eq(resp.wait_timeout, 2.5);
    api_finish_wait(A, &resp, false);
    cr_assert_eq(resp.status, 202);
    json_t *j = body_json(&resp);
    cr_assert_not(jbool(j, "durable"));
    json_decref(j);
    api_response_free(&resp);

    /* The timeout is capped by max_wait. */
    s.path = "/runs/r/nodes/b/state";
    s.query[1].value = "1000";
    call(&s, &resp);
    cr_assert_eq(resp.wait_seq, 2);
    cr_assert_eq(resp.wait_timeout, api_cfg.max_wait);
    /* Freeing a parked response without finishing it is allowed (client went away). */
    api_response_free(&resp);

    /* wait=false does not park. */
    s.path = "/runs/r/nodes/c/state";
    s.query[0].value = "false";
    call(&s, &resp);
    cr_assert_eq(resp.status, 202);
    cr_assert_eq(resp.wait_seq, 0);
    api_response_free(&resp);
}

Test(api, wait_on_a_durable_duplicate_does_not_park)
{
    cr_assert_eq(post("r", "a", "{\"status\":\"running\"}"), 202);
    flush_all();
    spec s = { .method = "POST", .path = "/runs/r/nodes/a/state", .body = "{\"status\":\"running\"}",
               .query = { { "wait", "true" } } };
    api_response resp;
    call(&s, &resp);
    cr_assert_eq(resp.status, 200);
    cr_assert_eq(resp.wait_seq, 0);
    json_t *j = body_json(&resp);
    cr_assert(jbool(j, "durable"));
    json_decref(j);
    api_response_free(&resp);
}

Test(api, wait_on_delete)
{
    cr_assert_eq(post("r", "a", "{\"status\":\"running\"}"), 202);
    cr_assert_eq(post("r", "b", "{\"status\":\"running\"}"), 202);
    api_response resp;
    call(&(spec){ .method = "DELETE", .path = "/runs/r", .query = { { "wait", "true" } } }, &resp);
    cr_assert_eq(resp.wait_seq, 3);
    cr_assert_null(resp.body, "a parked answer is rendered when it finishes, not before");
    flush_all();
    api_finish_wait(A, &resp, true);
    cr_assert_eq(resp.status, 200);
    json_t *j = body_json(&resp);
    cr_assert_eq(jint(j, "deleted"), 2);
    cr_assert_eq(jint(j, "seq"), 3);
    cr_assert(jbool(j, "durable"));
    json_decref(j);
    api_response_free(&resp);
}

Test(api, wait_on_a_batch_renders_once_it_finishes)
{
    spec s = { .method = "POST", .path = "/runs/r/nodes",
               .body = "{\"updates\":[{\"node_id\":\"a\",\"status\":\"running\"},"
                       "{\"node_id\":\"b\",\"status\":\"scheduled\"}]}",
               .query = { { "wait", "true" } } };
    api_response resp;
    call(&s, &resp);
    cr_assert_eq(resp.wait_seq, 2, "not parked on the batch's last seq");
    cr_assert_null(resp.body, "a parked answer is rendered when it finishes, not before");
    flush_all();
    api_finish_wait(A, &resp, true);
    cr_assert_eq(resp.status, 200);
    cr_assert_eq(resp.wait_seq, 0);
    json_t *j = body_json(&resp);
    json_t *results = json_object_get(j, "results");
    cr_assert_eq(json_array_size(results), 2);
    cr_assert_eq(jint(json_array_get(results, 1), "seq"), 2);
    json_decref(j);
    api_response_free(&resp);
}

/* A batch is a 202 only for an accepted item still queued, never for a duplicate alone. */
Test(api, batch_of_queued_duplicates_is_200)
{
    spec one = { .method = "POST", .path = "/runs/r/nodes/a/state",
                 .body = "{\"status\":\"running\"}" };
    spec dup = { .method = "POST", .path = "/runs/r/nodes",
                 .body = "{\"updates\":[{\"node_id\":\"a\",\"status\":\"running\"}]}" };
    spec mixed = { .method = "POST", .path = "/runs/r/nodes",
                   .body = "{\"updates\":[{\"node_id\":\"a\",\"status\":\"running\"},"
                           "{\"node_id\":\"b\",\"status\":\"scheduled\"}]}" };
    api_response resp;
    call(&one, &resp);
    cr_assert_eq(resp.status, 202);
    api_response_free(&resp);

    /* Only a duplicate of a state still queued: 200 as posted alone, not durable yet. */
    call(&dup, &resp);
    cr_assert_eq(resp.status, 200, "%.*s", (int)resp.body_len, resp.body);
    json_t *j = body_json(&resp);
    cr_assert_eq(jint(j, "accepted"), 0);
    cr_assert_eq(jint(j, "duplicates"), 1);
    cr_assert_not(jbool(j, "durable"), "the duplicate's state is not on disk yet");
    json_decref(j);
    api_response_free(&resp);

    /* With an accepted item beside it: 202. */
    call(&mixed, &resp);
    cr_assert_eq(resp.status, 202, "%.*s", (int)resp.body_len, resp.body);
    api_response_free(&resp);

    /* ?wait=true on the duplicate alone still waits for its state to be durable... */
    dup.query[0] = (kv){ "wait", "true" };
    call(&dup, &resp);
    cr_assert_eq(resp.wait_seq, 1, "a duplicate's wait is not parked on its state's seq");
    /* ...and when its timeout passes first, nothing accepted is queued: a 200 still. */
    api_finish_wait(A, &resp, false);
    cr_assert_eq(resp.status, 200, "%.*s", (int)resp.body_len, resp.body);
    j = body_json(&resp);
    cr_assert_not(jbool(j, "durable"));
    json_decref(j);
    api_response_free(&resp);
    /* The same duplicate posted alone: the same 200 when the timeout passes first. */
    one.query[0] = (kv){ "wait", "true" };
    call(&one, &resp);
    cr_assert_eq(resp.wait_seq, 1, "a single duplicate's wait is not parked on its state's seq");
    api_finish_wait(A, &resp, false);
    cr_assert_eq(resp.status, 200, "a duplicate answered %d: %.*s", resp.status,
                 (int)resp.body_len, resp.body);
    j = body_json(&resp);
    cr_assert_not(jbool(j, "durable"));
    json_decref(j);
    api_response_free(&resp);
    call(&dup, &resp);
    cr_assert_eq(resp.wait_seq, 1);
    flush_all();
    api_finish_wait(A, &resp, true);
    cr_assert_eq(resp.status, 200);
    j = body_json(&resp);
    cr_assert(jbool(j, "durable"));
    json_decref(j);
    api_response_free(&resp);
}

/*
 * A since above every seq the server handed out (a client of a timeline a
 * restored backup went back from) gets the run again from the start, not
 * nothing until the seqs catch up.
 */
Test(api, a_since_above_every_seq_handed_out_starts_over)
{
    cr_assert_eq(post("tl", "n", "{\"status\":\"running\"}"), 202);
    spec s = { .method = "GET", .path = "/runs/tl/nodes", .query = { { "since", "1000000" } } };
    api_response resp;
    call(&s, &resp);
    cr_assert_eq(resp.status, 200, "%d", resp.status);
    cr_assert_not_null(strstr(resp.body, "\"node_id\":\"n\""), "%.*s", (int)resp.body_len,
                       resp.body);
    api_response_free(&resp);
    spec ev = { .method = "GET", .path = "/runs/tl/events",
                .headers = { { "Last-Event-ID", "1000000" } } };
    call(&ev, &resp);
    cr_assert_eq(resp.status, 200, "%d", resp.status);
    cr_assert(resp.events);
    cr_assert_eq(resp.since, 0, "the stream resumes from %lld", (long long)resp.since);
    api_response_free(&resp);
}

/* ---- ?since= over a run of more than one page ---- */

#define SINCE_NODES 12000   /* two pages of the since scan (10,000 each) */
#define SINCE_MOVES 2000    /* nodes moved on from each end of the run */

static atomic_bool since_done;
static atomic_int since_failed;

/* Moves nodes on from both ends of the run in turn: low ids (first page), high (second). */
static void *since_mover(void *arg)
{
    (void)arg;
    for (int i = 0; i < SINCE_MOVES; i++) {
        char lo[16], hi[16];
        snprintf(lo, sizeof lo, "n%05d", i);
        snprintf(hi, sizeof hi, "n%05d", SINCE_NODES - 1 - i);
        if (post("big", lo, "{\"status\":\"running\"}") != 202 ||
            post("big", hi, "{\"status\":\"running\"}") != 202)
            atomic_fetch_add(&since_failed, 1);
    }
    atomic_store(&since_done, true);
    return NULL;
}

/*
 * A client following a run with ?since= (asking again from the highest seq
 * it got) sees every node's latest state, while nodes of both pages the
 * scan reads move on under it: a node read in its old state on the first
 * page may not be left behind by a newer seq read on the second. With a
 * small limit, from 0, the scan keeps only the lowest seqs and leaves the
 * rest out; a node it kept that moves on past what it left out must not be
 * answered either.
 */
static void follow_since(const char *limit, bool from_zero)
{
    for (int b = 0; b < SINCE_NODES / 1000; b++) {
        char body[1000 * 48 + 32];
        size_t len = (size_t)snprintf(body, sizeof body, "{\"updates\":[");
        for (int i = 0; i < 1000; i++)
            len += (size_t)snprintf(body + len, sizeof body - len,
                                    "%s{\"node_id\":\"n%05d\",\"status\":\"scheduled\"}",
                                    i ? "," : "", b * 1000 + i);
        snprintf(body + len, sizeof body - len, "]}");
        api_response resp;
        call(&(spec){ .method = "POST", .path = "/runs/big/nodes", .body = body }, &resp);
        /* 200 when the writer took the full batch at once. */
        cr_assert(resp.status == 202 || resp.status == 200, "%.200s", resp.body);
        api_response_free(&resp);
        flush_all();
    }
    int64_t since = from_zero ? 0 : atomic_load(&engine_stats(E)->last_seq);
    static bool running[SINCE_NODES];
    memset(running, 0, sizeof running);
    atomic_store(&since_done, false);
    pthread_t mover;
    cr_assert_eq(pthread_create(&mover, NULL, since_mover, NULL), 0);
    for (int asks = 0;; asks++) {
        cr_assert_lt(asks, 100000, "the follower never caught up");
        bool done = atomic_load(&since_done);
        char q[32];
        snprintf(q, sizeof q, "%lld", (long long)since);
        api_response resp;
        call(&(spec){ .method = "GET", .path = "/runs/big/nodes",
                      .query = { { "since", q }, { "limit", limit } } }, &resp);
        cr_assert_eq(resp.status, 200);
        json_t *j = body_json(&resp);
        json_t *nodes = json_object_get(j, "nodes");
        size_t n = json_array_size(nodes);
        for (size_t i = 0; i < n; i++) {
            json_t *row = json_array_get(nodes, i);
            int k = atoi(jstr(row, "node_id") + 1);
            cr_assert(k >= 0 && k < SINCE_NODES);
            running[k] = strcmp(jstr(row, "status"), "running") == 0;
            if (jint(row, "seq") > since)
                since = jint(row, "seq");
        }
        json_decref(j);
        api_response_free(&resp);
        if (n == 0 && done)
            break;
    }
    pthread_join(mover, NULL);
    cr_assert_eq(atomic_load(&since_failed), 0, "a move was not accepted");
    int missed = 0;
    for (int i = 0; i < SINCE_MOVES; i++)
        missed += !running[i] + !running[SINCE_NODES - 1 - i];
    cr_assert_eq(missed, 0, "%d nodes' latest state never reached the follower", missed);
}

Test(api, since_misses_no_latest_state_while_the_run_changes)
{
    follow_since("10000", false);
}

Test(api, since_with_a_small_limit_misses_no_latest_state_while_the_run_changes)
{
    follow_since("50", true);
}

Test(api, finish_wait_without_wait_is_a_no_op)
{
    cr_assert_eq(post("r", "a", "{\"status\":\"running\"}"), 202);
    api_response resp;
    call(&(spec){ .method = "GET", .path = "/runs/r/nodes/a/state" }, &resp);
    char *before = strdup(resp.body);
    cr_assert_not_null(before);
    api_finish_wait(A, &resp, true);
    cr_assert_eq(resp.status, 200);
    cr_assert_str_eq(resp.body, before);
    free(before);
    api_response_free(&resp);
}

Test(api, transport_problem)
{
    api_response resp;
    memset(&resp, 0, sizeof resp);
    api_problem(A, &resp, PROBLEM_BODY_TOO_LARGE, "at most 1048576 bytes");
    json_decref(expect_problem(&resp, 413, "body-too-large"));
    cr_assert_eq(resp.retry_after, 0);
    api_response_free(&resp);
    memset(&resp, 0, sizeof resp);
    api_problem(A, &resp, PROBLEM_OUT_OF_MEMORY, "out of memory");
    json_decref(expect_problem(&resp, 503, "out-of-memory"));
    cr_assert_eq(resp.retry_after, 1);
    api_response_free(&resp);
}

/* ---- input in disguise: percent-encoding in paths and query values ---- */

/* A problem whose detail contains has. */
static void check_problem_detail(const spec *s, int status, const char *slug, const char *has)
{
    api_response resp;
    call(s, &resp);
    json_t *j = expect_problem(&resp, status, slug);
    cr_assert(strstr(jstr(j, "detail"), has) != NULL, "%s %s: detail \"%s\" lacks \"%s\"",
              s->method, s->path, jstr(j, "detail"), has);
    json_decref(j);
    api_response_free(&resp);
}

/*
 * A body whose JSON tree would take more than its budget (8 times the
 * body, at least 64 MiB) is 413 body-too-large on both update routes,
 * before it is decoded, and counted as invalid; under it, the same shape
 * is taken.
 */
Test(api, a_body_too_costly_to_decode_is_413)
{
    size_t n = 400000, cap = 128 + n * 3;
    char *one = malloc(cap), *batch = malloc(cap);
    cr_assert(one && batch);
    size_t l1 = (size_t)snprintf(one, cap, "{\"status\":\"running\",\"outputs\":[");
    size_t l2 = (size_t)snprintf(batch, cap, "{\"updates\":[{\"node_id\":\"n\","
                                             "\"status\":\"running\",\"outputs\":[");
    for (size_t i = 0; i < n; i++) {
        memcpy(one + l1, i ? ",{}" : "{}", 3);
        memcpy(batch + l2, i ? ",{}" : "{}", 3);
        l1 += i ? 3 : 2;
        l2 += i ? 3 : 2;
    }
    snprintf(one + l1, cap - l1, "]}");
    snprintf(batch + l2, cap - l2, "]}]}");
    check_problem_detail(&(spec){ .method = "POST", .path = "/runs/r/nodes/n/state", .body = one },
                         413, "body-too-large", "decoding this body would take");
    check_problem_detail(&(spec){ .method = "POST", .path = "/runs/r/nodes", .body = batch },
                         413, "body-too-large", "decoding this body would take");
    cr_assert_eq(post("r", "n", "{\"status\":\"running\",\"outputs\":[{},{},{}]}"), 202);
    free(one);
    free(batch);
}

Test(api, percent_in_an_id_is_400_and_never_shortens_it)
{
    cr_assert_eq(post("r1", "n1", "{\"status\":\"running\"}"), 202);
    static const char *const paths[] = {
        "/runs/r1%00/nodes/n1/state", "/runs/r1/nodes/n1%00/state",
        "/runs/r1%00junk/nodes/n1/state", "/runs/r1%2Fx/nodes/n1/state",
        "/runs/r%251/nodes/n1/state", "/runs/r%7E1/nodes/n1/state",
        "/runs/r1/nodes/n%31/state",
    };
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        check_problem_detail(&(spec){ .method = "GET", .path = paths[i] }, 400, "invalid-id",
                             "percent-encoding");
        check_problem_detail(&(spec){ .method = "POST", .path = paths[i],
                                      .body = "{\"status\":\"completed\"}" },
                             400, "invalid-id", "percent-encoding");
    }
    static const char *const runs[] = { "/runs/r1%00", "/runs/r1%00junk", "/runs/r%31",
                                        "/runs/r1%2F" };
    for (size_t i = 0; i < sizeof runs / sizeof *runs; i++) {
        check_problem_detail(&(spec){ .method = "DELETE", .path = runs[i] }, 400, "invalid-id",
                             "percent-encoding");
        check_problem_detail(&(spec){ .method = "GET", .path = runs[i] }, 400, "invalid-id",
                             "percent-encoding");
    }
    /* An encoded '/' never makes a route: this is not the state of node n1. */
    check_problem(&(spec){ .method = "POST", .path = "/runs/r9/nodes%2Fn1%2Fstate",
                           .body = "{\"status\":\"running\"}" }, 404, "not-found");
    /* The state route has no DELETE, whatever its ids. */
    check_problem(&(spec){ .method = "DELETE", .path = "/runs/r1%00/nodes/n1/state" }, 405,
                  "method-not-allowed");

    /* Nothing was queued, r1/n1 is as it was, and r9 does not exist. */
    cr_assert_eq(atomic_load(&engine_stats(E)->updates_queued), 1);
    api_response resp;
    call(&(spec){ .method = "GET", .path = "/runs/r1/nodes/n1/state" }, &resp);
    cr_assert_eq(resp.status, 200);
    json_t *j = body_json(&resp);
    cr_assert_str_eq(jstr(j, "status"), "running");
    json_decref(j);
    api_response_free(&resp);
    check_problem(&(spec){ .method = "GET", .path = "/runs/r9" }, 404, "not-found");
}

Test(api, query_values_are_percent_decoded)
{
    list_fixture();
    expect_next(list(&(spec){ .method = "GET", .path = "/runs/r/nodes",
                              .query = { { "status", "scheduled%2Crunning" } } },
                     "bcd"),
                NULL);
    expect_next(list(&(spec){ .method = "GET", .path = "/runs/r/nodes",
                              .query = { { "status", "%72unning%2cidle" }, { "limit", "%32" },
                                         { "after", "%61" } } },
                     "cd"),
                NULL);
    expect_next(list(&(spec){ .method = "GET", .path = "/runs/r/nodes",
                              .query = { { "limit", "1%30" } } },
                     "abcde"),
                NULL);
    /* ?format= on /stats. */
    api_response resp;
    call(&(spec){ .method = "GET", .path = "/stats", .query = { { "format", "%6Ason" } } },
         &resp);
    cr_assert(is_stats_json(&resp), "format=%%6Ason is not JSON");
    api_response_free(&resp);
    /* ?wait= and ?timeout= on a POST. */
    spec s = { .method = "POST", .path = "/runs/r/nodes/f/state", .body = "{\"status\":\"running\"}",
               .query = { { "wait", "%74rue" }, { "timeout", "2%2E5" } } };
    call(&s, &resp);
    cr_assert_eq(resp.wait_seq, 7, "wait=%%74rue did not park");
    cr_assert_eq(resp.wait_timeout, 2.5);
    api_finish_wait(A, &resp, false);
    cr_assert_eq(resp.status, 202);
    api_response_free(&resp);
}

Test(api, bad_escapes_and_encoded_nul_in_query_values_are_400)
{
    list_fixture();
    static const char *const bad[] = { "%", "%4", "%zz", "%00", "a%00", "1%0", "%g1" };
    static const char *const names[] = { "status", "limit", "after" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        for (size_t k = 0; k < sizeof names / sizeof *names; k++)
            check_problem_detail(&(spec){ .method = "GET", .path = "/runs/r/nodes",
                                          .query = { { names[k], bad[i] } } },
                                 400, "invalid-query", "percent-encoded");
        check_problem_detail(&(spec){ .method = "GET", .path = "/stats",
                                      .query = { { "format", bad[i] } } },
                             400, "invalid-query", "percent-encoded");
        check_problem_detail(&(spec){ .method = "POST", .path = "/runs/r/nodes/z/state",
                                      .body = "{\"status\":\"running\"}",
                                      .query = { { "wait", bad[i] } } },
                             400, "invalid-query", "percent-encoded");
        check_problem_detail(&(spec){ .method = "DELETE", .path = "/runs/r",
                                      .query = { { "timeout", bad[i] } } },
                             400, "invalid-query", "percent-encoded");
    }
    /* An encoded NUL cannot shorten a value into a valid one. */
    check_problem_detail(&(spec){ .method = "GET", .path = "/runs/r/nodes",
                                  .query = { { "after", "b%00zzz" } } },
                         400, "invalid-query", "%00");
    check_problem_detail(&(spec){ .method = "POST", .path = "/runs/r/nodes/z/state",
                                  .body = "{\"status\":\"running\"}",
                                  .query = { { "wait", "true%00junk" } } },
                         400, "invalid-query", "%00");
    /* Longer than any value we read. */
    char long_value[1100];
    memset(long_value, '1', sizeof long_value - 1);
    long_value[sizeof long_value - 1] = '\0';
    check_problem_detail(&(spec){ .method = "GET", .path = "/runs/r/nodes",
                                  .query = { { "limit", long_value } } },
                         400, "invalid-query", "longer than");
    /* Nothing was queued or deleted by the refused requests. */
    cr_assert_eq(atomic_load(&engine_stats(E)->updates_queued), 6);
}

/* ---- client bytes in problem details ---- */

/* Answers s with a problem of status whose body is valid UTF-8; returns the detail (free it). */
static char *utf8_problem(const spec *s, int status, const char *slug)
{
    api_response resp;
    call(s, &resp);
    cr_assert_not_null(resp.body);
    cr_assert(utf8_check(resp.body, resp.body_len), "%s: body is not UTF-8: %s", slug,
              resp.body);
    json_t *j = expect_problem(&resp, status, slug);
    char *detail = strdup(jstr(j, "detail"));
    cr_assert_not_null(detail);
    json_decref(j);
    api_response_free(&resp);
    return detail;
}

Test(api, a_refused_method_is_echoed_safely)
{
    char *d = utf8_problem(&(spec){ .method = "G\xffT", .path = "/runs/r" }, 405,
                           "method-not-allowed");
    cr_assert_not_null(strstr(d, "G\\xFFT is not allowed"), "%s", d);
    free(d);
    d = utf8_problem(&(spec){ .method = "GE\x01T", .path = "/stats" }, 405, "method-not-allowed");
    cr_assert_not_null(strstr(d, "GE\\x01T"), "%s", d);
    free(d);
    /* Multi-byte characters across every cut point of the shown method. */
    for (int lead = 0; lead < 4; lead++) {
        char method[128];
        memset(method, 'X', (size_t)lead);
        for (int i = 0; i < 30; i++)
            memcpy(method + lead + 2 * i, "\xc3\xa9", 2);
        method[lead + 60] = '\0';
        d = utf8_problem(&(spec){ .method = method, .path = "/runs/r/nodes" }, 405,
                         "method-not-allowed");
        cr_assert_not_null(strstr(d, "... is not allowed"), "lead %d: %s", lead, d);
        free(d);
    }
}

Test(api, an_unknown_member_name_is_cut_at_a_whole_character)
{
    for (int lead = 60; lead <= 66; lead++) {
        char body[256];
        snprintf(body, sizeof body, "{\"status\":\"idle\",\"%.*s\xc3\xa9\xc3\xa9\":1}", lead,
                 "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");
        char *d = utf8_problem(&(spec){ .method = "POST", .path = "/runs/r/nodes/a/state",
                                        .body = body },
                               422, "invalid-update");
        cr_assert_not_null(strstr(d, "unknown member \"bbbb"), "%s", d);
        free(d);
    }
    cr_assert_eq(atomic_load(&engine_stats(E)->updates_queued), 0);
}

/* ---- every answer is counted, once ---- */

static uint64_t answered(int code)
{
    return atomic_load(&engine_stats(E)->http_responses[code - NS_HTTP_MIN]);
}

static uint64_t answered_total(void)
{
    uint64_t n = 0;
    for (int i = 0; i < NS_HTTP_CODES; i++)
        n += atomic_load(&engine_stats(E)->http_responses[i]);
    return n;
}

static uint64_t rejected_invalid(void)
{
    return atomic_load(&engine_stats(E)->rejected[NS_REJECT_INVALID]);
}

Test(api, every_problem_is_counted_once_by_code)
{
    cr_assert_eq(post("r", "a", "{\"status\":\"completed\",\"attempt\":2}"), 202);
    static const struct {
        spec s;
        int status;
        int invalid;   /* how much updates_rejected.invalid grows */
    } cases[] = {
        { { .method = "GET", .path = "/nope" }, 404, 0 },
        { { .method = "GET", .path = "/runs/zz" }, 404, 0 },
        { { .method = "PUT", .path = "/runs/r" }, 405, 0 },
        { { .method = "G\xffT", .path = "/runs/r" }, 405, 0 },
        { { .method = "GET", .path = "/runs/r%00" }, 400, 0 },
        { { .method = "POST", .path = "/runs/r%00/nodes/a/state", .body = "{}" }, 400, 1 },
        { { .method = "POST", .path = "/runs/r/nodes/a/state", .body = "{",
            .headers = { { "Content-Type", "application/json" } } }, 400, 1 },
        { { .method = "POST", .path = "/runs/r/nodes/a/state", .body = "{\"x\":1}" }, 422, 1 },
        { { .method = "POST", .path = "/runs/r/nodes/a/state", .body = "{}",
            .headers = { { "Content-Type", "text/plain" } } }, 415, 1 },
        { { .method = "POST", .path = "/runs/r/nodes/a/state",
            .body = "{\"status\":\"running\"}", .query = { { "wait", "maybe" } } }, 400, 1 },
        { { .method = "POST", .path = "/runs/r/nodes/a/state",
            .body = "{\"status\":\"running\"}", .query = { { "timeout", "%zz" } } }, 400, 1 },
        { { .method = "POST", .path = "/runs/r/nodes/a/state",
            .body = "{\"status\":\"running\",\"attempt\":1}" }, 409, 0 },
        { { .method = "POST", .path = "/runs/r/nodes/a/state",
            .body = "{\"status\":\"running\",\"attempt\":2}" }, 409, 0 },
        { { .method = "GET", .path = "/runs/r/nodes", .query = { { "limit", "0" } } }, 400, 0 },
        { { .method = "GET", .path = "/runs/r/nodes", .query = { { "after", "%00" } } }, 400, 0 },
        { { .method = "DELETE", .path = "/runs/r", .query = { { "wait", "%" } } }, 400, 0 },
        { { .method = "GET", .path = "/stats", .query = { { "format", "xml" } } }, 400, 0 },
        { { .method = "GET", .path = "/runs/r/nodes/a/state",
            .headers = { { "If-None-Match", "*" } } }, 304, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        uint64_t code_before = answered(cases[i].status);
        uint64_t total_before = answered_total();
        uint64_t invalid_before = rejected_invalid();
        api_response resp;
        call(&cases[i].s, &resp);
        cr_assert_eq(resp.status, cases[i].status, "case %zu: %d %.*s", i, resp.status,
                     (int)resp.body_len, resp.body ? resp.body : "");
        api_response_free(&resp);
        cr_assert_eq(answered(cases[i].status), code_before + 1, "case %zu: not counted", i);
        cr_assert_eq(answered_total(), total_before + 1, "case %zu: counted more than once", i);
        cr_assert_eq(rejected_invalid(), invalid_before + (uint64_t)cases[i].invalid,
                     "case %zu: updates_rejected.invalid", i);
    }

    /* 401 from an api that wants a token. */
    api_config with_token = api_cfg;
    with_token.token = "sesame";
    api *guarded = api_new(E, &with_token);
    cr_assert_not_null(guarded);
    uint64_t before = answered(401);
    spec s = { .method = "GET", .path = "/runs/r" };
    api_request req = { .method = s.method, .path = s.path, .header = header_of,
                        .query = query_of, .ctx = &s };
    api_response resp;
    api_handle(guarded, &req, &resp);
    cr_assert_eq(resp.status, 401);
    api_response_free(&resp);
    api_free(guarded);
    cr_assert_eq(answered(401), before + 1);

    /* A parked answer is counted when it is finished, not when parked. */
    uint64_t total = answered_total();
    call(&(spec){ .method = "POST", .path = "/runs/r/nodes/w/state",
                  .body = "{\"status\":\"running\"}", .query = { { "wait", "true" } } }, &resp);
    cr_assert_gt(resp.wait_seq, 0);
    cr_assert_eq(answered_total(), total, "a parked answer was counted");
    api_finish_wait(A, &resp, false);
    cr_assert_eq(answered_total(), total + 1);
    api_response_free(&resp);
}

/* ---- the tables: problem types and routes ---- */

Test(api, every_problem_type_renders_its_slug_title_and_status)
{
    for (int i = 0; i < PROBLEM_COUNT; i++) {
        const problem_type *t = problems_get((problem_id)i);
        api_response resp;
        api_problem(A, &resp, (problem_id)i, "a detail");
        json_t *j = expect_problem(&resp, t->status, t->slug);
        cr_assert_str_eq(jstr(j, "title"), t->title);
        cr_assert_str_eq(jstr(j, "detail"), "a detail");
        /* A 503 is passing; nothing else asks the client to come back. */
        cr_assert_eq(resp.retry_after, t->status == 503 ? 1u : 0u, "%s", t->slug);
        json_decref(j);
        api_response_free(&resp);
    }
}

/* A path of route rt's shape, ids filled in, into out. */
static void route_path(const api_route *rt, char *out, size_t size)
{
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < API_MAX_SEGMENTS && rt->pattern[i]; i++) {
        const char *seg = rt->pattern[i][0] == '{' ? "x1" : rt->pattern[i];
        int n = snprintf(out + used, size - used, "/%s", seg);
        cr_assert(n > 0 && (size_t)n < size - used);
        used += (size_t)n;
    }
}

Test(api, only_healthz_is_exempt_from_the_token)
{
    size_t count;
    const api_route *routes = api_routes(&count);
    cr_assert_gt(count, 0);
    int exempt = 0;
    for (size_t r = 0; r < count; r++) {
        if (!(routes[r].flags & ROUTE_NO_AUTH))
            continue;
        exempt++;
        cr_assert_str_eq(routes[r].pattern[0], "healthz");
        cr_assert_null(routes[r].pattern[1]);
    }
    cr_assert_eq(exempt, 1, "%d routes are exempt from the token", exempt);

    /* And as answered: without a token, every route but /healthz is 401. */
    api_config with_token = api_cfg;
    with_token.token = "sesame";
    api *guarded = api_new(E, &with_token);
    cr_assert_not_null(guarded);
    for (size_t r = 0; r < count; r++) {
        char path[256];
        route_path(&routes[r], path, sizeof path);
        spec s = { .method = "GET", .path = path };
        api_request req = { .method = s.method, .path = s.path, .header = header_of,
                            .query = query_of, .ctx = &s };
        api_response resp;
        api_handle(guarded, &req, &resp);
        if (strcmp(path, "/healthz") == 0)
            cr_assert_eq(resp.status, 200, "%s: %d", path, resp.status);
        else
            cr_assert_eq(resp.status, 401, "%s: %d", path, resp.status);
        /* The transport asks before the body, and hears the same. */
        cr_assert_eq(api_auth_refused(guarded, &req), resp.status == 401, "%s", path);
        api_response_free(&resp);
        /* With the token (or a wrong one), before any body. */
        spec ok = { .method = "POST", .path = path,
                    .headers = { { "Authorization", "Bearer sesame" } } };
        req.ctx = &ok;
        cr_assert_not(api_auth_refused(guarded, &req), "%s with the token", path);
        spec wrong = { .method = "POST", .path = path,
                       .headers = { { "Authorization", "Bearer sesamf" } } };
        req.ctx = &wrong;
        cr_assert_eq(api_auth_refused(guarded, &req), strcmp(path, "/healthz") != 0,
                     "%s with a wrong token", path);
    }
    /* A path of no route needs the token too (its 404 would tell it exists). */
    spec none = { .method = "POST", .path = "/no/such/path" };
    api_request req = { .method = none.method, .path = none.path, .header = header_of,
                        .query = query_of, .ctx = &none };
    cr_assert(api_auth_refused(guarded, &req));
    api_free(guarded);
    /* Without a token configured, nothing is refused. */
    cr_assert_not(api_auth_refused(A, &req));
}

Test(api, route_allow_lists_match_their_handlers)
{
    size_t count;
    const api_route *routes = api_routes(&count);
    int updates = 0;
    for (size_t r = 0; r < count; r++) {
        const api_route *rt = &routes[r];
        char want[64];
        snprintf(want, sizeof want, "%s%s%s", rt->get ? "GET, HEAD" : "",
                 rt->post ? ", POST" : "", rt->del ? ", DELETE" : "");
        cr_assert_str_eq(rt->allow, want, "route /%s", rt->pattern[0]);
        if (rt->flags & ROUTE_UPDATE) {
            updates++;
            cr_assert_not_null(rt->post, "an update route without a POST");
        }
    }
    cr_assert_eq(updates, 2, "POST .../state and POST /runs/{run_id}/nodes");
}

/* ---- GET /backup ---- */

Test(api, backup_streams_a_database_one_at_a_time)
{
    spec s = { .method = "GET", .path = "/backup" };
    api_response first, second, third;
    char head[16];
    uint64_t pos = 0;
    ssize_t got;

    cr_assert_eq(post("r1", "n1", "{\"status\":\"running\"}"), 202);
    flush_all();

    call(&s, &first);
    cr_assert_eq(first.status, 200, "%.*s", (int)first.body_len, first.body ? first.body : "");
    cr_assert_str_eq(first.content_type, "application/vnd.sqlite3");
    cr_assert_null(first.body);
    cr_assert_not_null(first.stream.read);
    cr_assert_gt(first.stream.size, 100);
    cr_assert_not_null(strstr(first.disposition, "attachment; filename=\"nodestate-"),
                       "%s", first.disposition);
    got = first.stream.read(first.stream.ctx, 0, head, sizeof head);
    cr_assert_eq(got, (ssize_t)sizeof head);
    cr_assert_eq(memcmp(head, "SQLite format 3", 16), 0, "not an SQLite file");

    /* The first is still being sent (not freed): one more is refused. */
    call(&s, &second);
    json_decref(expect_problem(&second, 503, "backup-busy"));
    cr_assert_gt(second.retry_after, 0);
    cr_assert_null(second.stream.read);
    api_response_free(&second);

    /* The whole stream reads back to its size; read to its end, it gives
     * its slot back before the transport frees it. */
    for (;;) {
        char piece[4096];
        got = first.stream.read(first.stream.ctx, pos, piece, sizeof piece);
        if (got <= 0)
            break;
        pos += (uint64_t)got;
    }
    cr_assert_eq(got, 0);
    cr_assert_eq(pos, first.stream.size);
    call(&s, &third);
    cr_assert_eq(third.status, 200, "a backup read to its end still holds its slot");
    api_response_free(&first);
    cr_assert_null(first.stream.read, "api_response_free closes the stream it held");

    /* One never read to its end gives its slot back when freed. */
    call(&s, &second);
    json_decref(expect_problem(&second, 503, "backup-busy"));
    api_response_free(&second);
    api_response_free(&third);
    call(&s, &second);
    cr_assert_eq(second.status, 200);
    api_response_free(&second);
}

/*
 * The store's delete records cannot be read (here: the table is gone under
 * the reader; PostgreSQL away, in production): a resume from a seq still
 * answers from what this process knows, it does not fail (an EventSource
 * gives up on a 500 for good).
 */
Test(api, a_resume_does_not_fail_when_delete_records_cannot_be_read)
{
    cr_assert_eq(post("r", "a", "{\"status\":\"running\"}"), 202);
    flush_all();
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(db, "DROP TABLE run_deletes", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    api_response resp;
    call(&(spec){ .method = "GET", .path = "/runs/r/nodes", .query = { { "since", "0" } } },
         &resp);
    cr_assert_eq(resp.status, 200);
    api_response_free(&resp);
    call(&(spec){ .method = "GET", .path = "/runs/r/nodes", .query = { { "since", "1" } } },
         &resp);
    cr_assert_eq(resp.status, 200, "%d %.200s", resp.status, resp.body ? resp.body : "");
    api_response_free(&resp);
}
