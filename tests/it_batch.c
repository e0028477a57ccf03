/*
 * it_batch: POST /runs/{run_id}/nodes on the real binary. A batch of mixed
 * items gets one result per item in request order (accepted, duplicate,
 * stale, illegal, invalid, valid JSON the service does not take) and only
 * the accepted ones reach the file; a
 * batch the queue cannot take whole is 503 and changes nothing; a bad
 * envelope is refused whole (400, 413, 415, 422); ?wait=true answers 200
 * once every accepted item is durable, 202 when its timeout passes first; and after SIGTERM every accepted item
 * of a large batch is in the SQLite file.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "it_assert.h"

TestSuite(batch, .init = it_env_clear, .timeout = 120);

/* POST /runs/{run}/nodes{query} with body; asserts an answer came. */
static void post_batch(ns_server *s, const char *run, const char *query, const char *body,
                       ns_resp *r)
{
    char path[256];
    snprintf(path, sizeof path, "/runs/%s/nodes%s", run, query ? query : "");
    ns_resp_free(r);
    cr_assert_eq(ns_req(s, "POST", path, body, NULL, r), 0, "POST %s: %s", path, r->error);
}

/* The code of results[i] of a batch answer. */
static long long result_code(const json_t *doc, size_t i)
{
    json_t *res = json_array_get(json_object_get(doc, "results"), i);
    cr_assert_not_null(res, "no results[%zu]", i);
    return it_jint(res, "code");
}

static const char *result_slug(const json_t *doc, size_t i)
{
    json_t *res = json_array_get(json_object_get(doc, "results"), i);
    const char *type = ns_jstr(json_object_get(res, "problem"), "type");
    cr_assert_not_null(type, "results[%zu] has no problem type", i);
    return type + strlen("urn:nodestate:problem:");
}

/* A body of n items "{"node_id":"<prefix><i>","status":"<status>"}". */
static char *items_body(const char *prefix, int from, int n, const char *status)
{
    size_t cap = 64 + (size_t)n * 96;
    char *body = malloc(cap);
    cr_assert_not_null(body);
    size_t len = (size_t)snprintf(body, cap, "{\"updates\":[");
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(body + len, cap - len,
                                "%s{\"node_id\":\"%s%05d\",\"status\":\"%s\",\"outputs\":{\"i\":%d}}",
                                i ? "," : "", prefix, from + i, status, from + i);
    snprintf(body + len, cap - len, "]}");
    return body;
}

Test(batch, mixed_items_each_get_their_result)
{
    ns_server *s = ns_start("--batch-interval 0.05");
    cr_assert_not_null(s);
    ns_resp r = { 0 };
    it_post(s, "mx", "done", NULL, "{\"status\":\"completed\"}", 202);
    it_post(s, "mx", "retry", NULL, "{\"status\":\"running\",\"attempt\":3}", 202);
    post_batch(s, "mx", NULL,
               "{\"updates\":["
               "{\"node_id\":\"a\",\"status\":\"scheduled\"},"        /* 0 new: 202 */
               "{\"node_id\":\"a\",\"status\":\"running\"},"          /* 1 after 0: 202 */
               "{\"node_id\":\"a\",\"status\":\"running\"},"          /* 2 duplicate of 1: 200 */
               "{\"node_id\":\"a\",\"status\":\"scheduled\"},"        /* 3 lower rank: 409 */
               "{\"node_id\":\"done\",\"status\":\"running\"},"       /* 4 terminal: 409 */
               "{\"node_id\":\"retry\",\"status\":\"failed\",\"attempt\":2}," /* 5 stale: 409 */
               "{\"node_id\":\"b c\",\"status\":\"running\"},"        /* 6 bad id: 422 */
               "{\"node_id\":\"d\",\"status\":\"sleeping\"},"         /* 7 bad status: 422 */
               "{\"node_id\":\"e\",\"status\":\"idle\",\"colour\":1}," /* 8 bad member: 422 */
               /* 9, 10: valid JSON jansson refuses (a NUL, a member twice): their own 422 */
               "{\"node_id\":\"g\",\"status\":\"failed\",\"last_error\":\"x\\u0000y\"},"
               "{\"node_id\":\"h\",\"status\":\"idle\",\"status\":\"failed\"},"
               "{\"node_id\":\"f\",\"status\":\"idle\"}"              /* 11 new: 202 */
               "]}", &r);
    cr_assert_eq(r.status, 202, "%ld %s", r.status, r.body);
    json_t *doc = ns_resp_json(&r);
    cr_assert_not_null(doc);
    static const long long codes[] = { 202, 202, 200, 409, 409, 409, 422, 422, 422, 422, 422,
                                       202 };
    cr_assert_eq(json_array_size(json_object_get(doc, "results")), 12);
    for (size_t i = 0; i < 12; i++)
        cr_assert_eq(result_code(doc, i), codes[i], "results[%zu]: %s", i, r.body);
    cr_assert_str_eq(result_slug(doc, 3), "illegal-transition");
    cr_assert_str_eq(result_slug(doc, 4), "illegal-transition");
    cr_assert_str_eq(result_slug(doc, 5), "stale-attempt");
    for (size_t i = 6; i < 11; i++)
        cr_assert_str_eq(result_slug(doc, i), "invalid-update");
    /* Items jansson would not read still name their node. */
    json_t *named = json_object_get(doc, "results");
    cr_assert_str_eq(ns_jstr(json_array_get(named, 9), "node_id"), "g", "%s", r.body);
    cr_assert_str_eq(ns_jstr(json_array_get(named, 10), "node_id"), "h", "%s", r.body);
    cr_assert_eq(it_jint(doc, "accepted"), 3);
    cr_assert_eq(it_jint(doc, "duplicates"), 1);
    cr_assert_eq(it_jint(doc, "refused"), 8);
    cr_assert_str_eq(ns_jstr(doc, "run_id"), "mx");
    /* Seqs follow the two single updates (1, 2), in item order. */
    json_t *res = json_object_get(doc, "results");
    cr_assert_eq(it_jint(json_array_get(res, 0), "seq"), 3);
    cr_assert_eq(it_jint(json_array_get(res, 1), "seq"), 4);
    cr_assert_eq(it_jint(json_array_get(res, 2), "seq"), 4);
    cr_assert_eq(it_jint(json_array_get(res, 11), "seq"), 5);
    cr_assert_eq(it_jint(doc, "last_seq"), 5);
    json_decref(doc);

    json_t *st = ns_stats(s);
    cr_assert_not_null(st);
    cr_assert_eq(it_jint(st, "batch_requests"), 1);
    cr_assert_eq(it_jint(st, "batch_request_updates"), 12);
    cr_assert_eq(it_jint(st, "updates_queued"), 5, "2 single + 3 batch items");
    json_decref(st);

    cr_assert_eq(ns_wait_stat_ge(s, "durable_seq", 5, 30.0), 0, "not durable in 30 s");
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='mx'", NULL), 4);
    char *st_a = ns_db_text(s, NULL, "SELECT status FROM run_node_state WHERE node_id='a'", NULL);
    cr_assert_not_null(st_a);
    cr_assert_str_eq(st_a, "running");
    free(st_a);
    cr_assert_eq(ns_db_int(s, "SELECT attempt FROM run_node_state WHERE node_id='retry'", NULL), 3);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE node_id IN "
                              "('d','e','g','h')", NULL), 0);
    ns_resp_free(&r);
    ns_free(s);
}

Test(batch, a_batch_the_queue_cannot_take_whole_changes_nothing)
{
    enum { CAPACITY = 20 };
    ns_server *s = ns_start("--queue-capacity %d --batch-interval 60", CAPACITY);
    cr_assert_not_null(s);
    ns_resp r = { 0 };
    /* The writer cannot commit: what is queued stays queued. */
    it_store_lock *db = it_lock_store(s);
    char *body = items_body("n", 0, CAPACITY / 2, "running");
    post_batch(s, "full", NULL, body, &r);
    free(body);
    cr_assert_eq(r.status, 202, "%ld %s", r.status, r.body);

    json_t *st = ns_stats(s);
    long long depth = it_jint(st, "queue_depth"), last = it_jint(st, "last_seq");
    json_decref(st);
    long long room = CAPACITY - depth;
    cr_assert_gt(room, 1);
    /* One item more than the room, with a change to a queued node first: refused whole. */
    char *more = items_body("m", 0, (int)room, "scheduled");
    char *p = strstr(more, "[");
    size_t need = strlen(more) + 128;
    char *mixed = malloc(need);
    cr_assert_not_null(mixed);
    snprintf(mixed, need, "{\"updates\":[{\"node_id\":\"n00000\",\"status\":\"completed\"},%s",
             p + 1);
    free(more);
    post_batch(s, "full", NULL, mixed, &r);
    free(mixed);
    char why[512];
    cr_assert_eq(ns_check_problem(&r, 503, "queue-full", why, sizeof why), 0, "%s", why);
    cr_assert(r.retry_after[0] != '\0', "503 without Retry-After");

    /* Nothing changed: no node added, none changed, no seq used. */
    cr_assert_eq(ns_get_state(s, "full", "m00000", &r), 0);
    cr_assert_eq(r.status, 404, "%ld %s", r.status, r.body);
    cr_assert_eq(ns_get_state(s, "full", "n00000", &r), 0);
    json_t *node = ns_resp_json(&r);
    cr_assert_str_eq(ns_jstr(node, "status"), "running");
    json_decref(node);
    st = ns_stats(s);
    cr_assert_eq(it_jint(st, "last_seq"), last);
    cr_assert_eq(it_jint(st, "queue_depth"), depth);
    json_decref(st);

    /* Exactly the room fits. */
    body = items_body("m", 0, (int)room, "scheduled");
    post_batch(s, "full", NULL, body, &r);
    free(body);
    cr_assert_eq(r.status, 202, "%ld %s", r.status, r.body);

    it_unlock_store(db);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='full'", NULL),
                 CAPACITY / 2 + room);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE status='completed'",
                           NULL), 0);
    ns_resp_free(&r);
    ns_free(s);
}

Test(batch, a_bad_envelope_is_refused_whole)
{
    ns_server *s = ns_start("--max-batch-updates 3 --max-batch-body-bytes 600 --max-body-bytes 64");
    cr_assert_not_null(s);
    ns_resp r = { 0 };
    char why[512];
    static const struct {
        const char *body;
        long status;
        const char *slug;
    } cases[] = {
        { "nope", 400, "invalid-json" },
        { "[]", 400, "invalid-json" },
        { "{}", 422, "invalid-update" },
        { "{\"updates\":[]}", 422, "invalid-update" },
        { "{\"updates\":{\"node_id\":\"a\",\"status\":\"idle\"}}", 422, "invalid-update" },
        { "{\"updates\":[{\"node_id\":\"a\",\"status\":\"idle\"}],\"extra\":1}", 422,
          "invalid-update" },
        { "{\"updates\":[{},{},{},{}]}", 413, "too-many-updates" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        post_batch(s, "env", NULL, cases[i].body, &r);
        cr_assert_eq(ns_check_problem(&r, cases[i].status, cases[i].slug, why, sizeof why), 0,
                     "%s: %s", cases[i].body, why);
    }
    /* Above --max-batch-body-bytes (the batch's own limit, not --max-body-bytes). */
    char big[1024];
    snprintf(big, sizeof big, "{\"updates\":[{\"node_id\":\"a\",\"status\":\"idle\","
                              "\"last_error\":\"%0700d\"}]}", 0);
    post_batch(s, "env", NULL, big, &r);
    cr_assert_eq(ns_check_problem(&r, 413, "body-too-large", why, sizeof why), 0, "%s", why);
    static const char *const text[] = { "Content-Type: text/plain", NULL };
    cr_assert_eq(ns_req(s, "POST", "/runs/env/nodes",
                        "{\"updates\":[{\"node_id\":\"a\",\"status\":\"idle\"}]}", text, &r), 0);
    cr_assert_eq(ns_check_problem(&r, 415, "unsupported-media-type", why, sizeof why), 0, "%s",
                 why);
    /* Nothing of them applied; a good batch above --max-body-bytes goes through. */
    cr_assert_eq(ns_get_state(s, "env", "a", &r), 0);
    cr_assert_eq(r.status, 404);
    post_batch(s, "env", NULL, "{\"updates\":[{\"node_id\":\"a\",\"status\":\"idle\"},"
                               "{\"node_id\":\"b\",\"status\":\"idle\"}]}", &r);
    cr_assert_eq(r.status, 202, "%ld %s", r.status, r.body);
    json_t *st = ns_stats(s);
    cr_assert_eq(it_jint(st, "batch_requests"), 1, "only a valid envelope counts");
    cr_assert_eq(it_jint(json_object_get(st, "updates_rejected"), "queue_full"), 0);
    json_decref(st);
    ns_resp_free(&r);
    ns_stop(s, SIGTERM);
    ns_free(s);
}

/* A body of 15 MiB: one item whose outputs are n empty objects. */
static char *tiny_values_body(size_t n)
{
    static const char head[] = "{\"updates\":[{\"node_id\":\"a\",\"status\":\"running\","
                               "\"outputs\":[";
    char *body = malloc(sizeof head + n * 3 + 8);
    cr_assert_not_null(body);
    char *p = body + sizeof head - 1;
    memcpy(body, head, sizeof head - 1);
    for (size_t i = 0; i < n; i++, p += 3)
        memcpy(p, i ? ",{}" : "{} ", 3);
    strcpy(p, "]}]}");
    return body;
}

/*
 * A body of tiny values costs jansson ~80 times its size to read: 15 MiB
 * of them took the server to 1.26 GB before the answer (413 or 202). Such
 * a body is refused by what reading it would take, before the tree is
 * built, and the server's peak memory stays far below that.
 */
Test(batch, a_body_of_tiny_values_is_refused_before_it_is_read, .timeout = 120)
{
    ns_server *s = ns_start(NULL);
    cr_assert_not_null(s);
    ns_resp r = { 0 };
    char why[512];
    post_batch(s, "tiny", NULL, "{\"updates\":[{\"node_id\":\"a\",\"status\":\"idle\"}]}",
               &r);
    cr_assert_eq(r.status, 202, "%ld %s", r.status, r.body);
    long before = ns_status_kib(s, "VmHWM");
    cr_assert_gt(before, 0);
    char *body = tiny_values_body((size_t)5 << 20);
    post_batch(s, "tiny", NULL, body, &r);
    free(body);
    cr_assert_eq(ns_check_problem(&r, 413, "body-too-large", why, sizeof why), 0, "%s", why);
    cr_assert_not_null(strstr(r.body, "decoding this body would take"), "%s", r.body);
    long grew = ns_status_kib(s, "VmHWM") - before;
    /* The body itself (15 MiB) and the budget's floor (64 MiB) at most; it was 1.2 GB. */
    cr_assert(!NS_MEMORY_TELLS_OURS || grew < 160 * 1024, "the server grew by %ld MiB",
              grew / 1024);
    cr_assert_eq(ns_get_state(s, "tiny", "a", &r), 0);
    cr_assert(strstr(r.body, "\"idle\"") != NULL, "%s", r.body);
    ns_resp_free(&r);
    ns_stop(s, SIGTERM);
    ns_free(s);
}

Test(batch, wait_true_answers_200_once_durable)
{
    ns_server *s = ns_start("--batch-interval 60");
    cr_assert_not_null(s);
    ns_resp r = { 0 };
    char *body = items_body("w", 0, 50, "running");
    post_batch(s, "wt", "?wait=true&timeout=30", body, &r);
    free(body);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    json_t *doc = ns_resp_json(&r);
    cr_assert(json_is_true(json_object_get(doc, "durable")), "%s", r.body);
    cr_assert_eq(it_jint(doc, "accepted"), 50);
    long long last = it_jint(doc, "last_seq");
    json_decref(doc);
    /* Durable means in the file, read while the server still runs. */
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='wt'", NULL), 50);
    cr_assert_eq(ns_db_int(s, "SELECT max(seq) FROM run_node_state WHERE run_id='wt'", NULL),
                 last);
    /* Only duplicates, already durable: 200 at once, without waiting. */
    body = items_body("w", 0, 2, "running");
    post_batch(s, "wt", NULL, body, &r);
    free(body);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    doc = ns_resp_json(&r);
    cr_assert_eq(it_jint(doc, "duplicates"), 2);
    cr_assert(json_is_true(json_object_get(doc, "durable")));
    json_decref(doc);
    /* The file locked: the wait times out, 202 with durable false and the same results. */
    it_store_lock *db = it_lock_store(s);
    body = items_body("w", 200, 3, "running");
    post_batch(s, "wt", "?wait=true&timeout=0.2", body, &r);
    free(body);
    cr_assert_eq(r.status, 202, "%ld %s", r.status, r.body);
    doc = ns_resp_json(&r);
    cr_assert(json_is_false(json_object_get(doc, "durable")), "%s", r.body);
    cr_assert_eq(it_jint(doc, "accepted"), 3);
    cr_assert_eq(result_code(doc, 2), 202);
    json_decref(doc);
    it_unlock_store(db);
    /* Without wait, an accepted item is still queued (interval 60 s): 202. */
    body = items_body("w", 100, 1, "running");
    post_batch(s, "wt", NULL, body, &r);
    free(body);
    cr_assert_eq(r.status, 202, "%ld %s", r.status, r.body);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

Test(batch, sigterm_after_a_large_batch_keeps_every_accepted_item)
{
    enum { N = 10000 };
    ns_server *s = ns_start("--batch-interval 60 --shutdown-timeout 60");
    cr_assert_not_null(s);
    ns_resp r = { 0 };
    char *body = items_body("big", 0, N, "running");
    post_batch(s, "lg", NULL, body, &r);
    free(body);
    cr_assert_eq(r.status, 202, "%ld %.300s", r.status, r.body);
    json_t *doc = ns_resp_json(&r);
    cr_assert_eq(it_jint(doc, "accepted"), N);
    json_decref(doc);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(s, SIGTERM), 0, "exit code after SIGTERM");
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='lg' AND "
                              "status='running' AND outputs_json = "
                              "'{\"i\":' || CAST(CAST(substr(node_id, 4) AS INTEGER) AS TEXT) || '}'", NULL), N);
    ns_free(s);
}
