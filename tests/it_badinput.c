/*
 * it_badinput: every class of bad input answers its own status as an RFC 9457
 * problem (type, title, status, detail), changes nothing, and leaves the
 * server serving. Input in disguise too: percent-encoded ids (an encoded NUL
 * or '/' must not shorten an id or change the route; the SQLite file is
 * compared before and after), encoded query values, query names in another
 * case (not the parameter, so ignored), request bytes that are not UTF-8
 * (the problem body must still be UTF-8), the ETag of a state that becomes
 * durable, and the counting of every problem by code.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "it_assert.h"
#include "utf8_check.h"

#define STATE_PATH "/runs/rb/nodes/n1/state"
/* --max-body-bytes for these tests: small so a 413 needs no big body. */
#define MAX_BODY 1024

static ns_server *start(void)
{
    ns_server *s = ns_start("--max-body-bytes %d", MAX_BODY);
    cr_assert_not_null(s, "server did not start");
    return s;
}

/* Sends a request and asserts a problem of status and slug; returns "detail". */
static char *expect_problem_req(ns_server *s, const char *method, const char *path,
                                const char *body, const char *const *headers,
                                long status, const char *slug)
{
    ns_resp r = { 0 };
    cr_assert_eq(ns_req(s, method, path, body, headers, &r), 0, "%s %s: %s",
                 method, path, r.error);
    char why[768];
    cr_assert_eq(ns_check_problem(&r, status, slug, why, sizeof why), 0,
                 "%s %s body %.200s: %s", method, path, body ? body : "(none)", why);
    json_t *doc = ns_resp_json(&r);
    char *detail = strdup(ns_jstr(doc, "detail"));
    cr_assert_not_null(detail);
    json_decref(doc);
    ns_resp_free(&r);
    return detail;
}

static void expect_post_problem(ns_server *s, const char *body, long status,
                                const char *slug, const char *detail_has)
{
    char *detail = expect_problem_req(s, "POST", STATE_PATH, body, NULL, status, slug);
    if (detail_has != NULL)
        cr_assert(strstr(detail, detail_has) != NULL,
                  "body %s: detail \"%s\" does not name %s", body, detail, detail_has);
    free(detail);
}

/* The server still answers /healthz and accepts a valid update. */
static void expect_still_serving(ns_server *s)
{
    ns_resp r = { 0 };
    cr_assert_eq(ns_req(s, "GET", "/healthz", NULL, NULL, &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(ns_post_state(s, "ok-run", "ok-node", NULL, "{\"status\":\"running\"}", &r), 0,
                 "%s", r.error);
    cr_assert_eq(r.status, 202, "valid POST after bad input: %ld %s", r.status, r.body);
    ns_resp_free(&r);
}

/* Nothing of the bad requests reached the node. */
static void expect_untouched(ns_server *s)
{
    ns_resp r = { 0 };
    cr_assert_eq(ns_req(s, "GET", STATE_PATH, NULL, NULL, &r), 0);
    cr_assert_eq(r.status, 404, "bad input created the node: %s", r.body);
    ns_resp_free(&r);
}

Test(badinput, invalid_json_and_non_objects_are_400)
{
    ns_server *s = start();
    static const char *const bodies[] = {
        "{bad", "{\"status\":\"running\"", "", "not json", "[1,2]", "\"running\"",
        "42", "null", "true", "{\"status\":\"running\"} trailing",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++)
        expect_post_problem(s, bodies[i], 400, "invalid-json", NULL);
    /* Invalid UTF-8 and a NUL inside the document are not JSON either. */
    expect_post_problem(s, "{\"status\":\"running\",\"last_error\":\"\xff\xfe\"}", 400,
                        "invalid-json", NULL);
    ns_resp r = { 0 };
    static const char nul_body[] = "{\"status\":\"run\0ning\"}";
    cr_assert_eq(ns_req_len(s, "POST", STATE_PATH, nul_body, sizeof nul_body - 1, NULL, &r),
                 0, "%s", r.error);
    char why[768];
    cr_assert_eq(ns_check_problem(&r, 400, "invalid-json", why, sizeof why), 0,
                 "a NUL inside the body: %s", why);
    ns_resp_free(&r);
    expect_untouched(s);
    expect_still_serving(s);
    ns_free(s);
}

Test(badinput, bad_members_are_422_naming_the_member)
{
    ns_server *s = start();
    static const struct {
        const char *body;
        const char *member;
    } cases[] = {
        { "{}", "status" },
        { "{\"attempt\":1}", "status" },
        { "{\"status\":\"done\"}", "status" },
        { "{\"status\":\"RUNNING\"}", "status" },
        { "{\"status\":3}", "status" },
        { "{\"status\":null}", "status" },
        { "{\"status\":\"running\",\"attempt\":\"1\"}", "attempt" },
        { "{\"status\":\"running\",\"attempt\":0}", "attempt" },
        { "{\"status\":\"running\",\"attempt\":-3}", "attempt" },
        { "{\"status\":\"running\",\"attempt\":1.5}", "attempt" },
        { "{\"status\":\"running\",\"attempt\":null}", "attempt" },
        { "{\"status\":\"running\",\"attempt\":9007199254740993}", "attempt" },
        { "{\"status\":\"running\",\"started_at\":123}", "started_at" },
        { "{\"status\":\"running\",\"started_at\":\"yesterday\"}", "started_at" },
        { "{\"status\":\"running\",\"started_at\":\"2026-13-01T00:00:00Z\"}", "started_at" },
        { "{\"status\":\"running\",\"scheduled_at\":true}", "scheduled_at" },
        { "{\"status\":\"failed\",\"failed_at\":{}}", "failed_at" },
        { "{\"status\":\"running\",\"retryable\":\"yes\"}", "retryable" },
        { "{\"status\":\"running\",\"retryable\":1}", "retryable" },
        { "{\"status\":\"failed\",\"last_error\":5}", "last_error" },
        { "{\"status\":\"suspended\",\"suspension_reason\":[]}", "suspension_reason" },
        { "{\"status\":\"running\",\"force\":\"true\"}", "force" },
        { "{\"status\":\"running\",\"foo\":1}", "foo" },
        { "{\"status\":\"running\",\"run_id\":\"other\"}", "run_id" },
        { "{\"status\":\"running\",\"node_id\":\"other\"}", "node_id" },
        { "{\"status\":\"running\",\"run_id\":7}", "run_id" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        expect_post_problem(s, cases[i].body, 422, "invalid-update", cases[i].member);
    expect_untouched(s);

    /* Ids equal to the path's, and the ignored read-only members, are fine. */
    ns_resp r = { 0 };
    cr_assert_eq(ns_req(s, "POST", STATE_PATH,
                        "{\"status\":\"running\",\"run_id\":\"rb\",\"node_id\":\"n1\","
                        "\"seq\":99,\"updated_at\":\"x\",\"durable\":true}", NULL, &r), 0);
    cr_assert_eq(r.status, 202, "%ld %s", r.status, r.body);
    ns_resp_free(&r);
    expect_still_serving(s);
    ns_free(s);
}

Test(badinput, long_last_error_is_422)
{
    /* The body limit must let the long text reach the decoder. */
    ns_server *s = ns_start("--max-body-bytes 200000");
    cr_assert_not_null(s);
    size_t n = 65537;
    char *body = malloc(n + 64);
    cr_assert_not_null(body);
    int head = snprintf(body, 64, "{\"status\":\"failed\",\"last_error\":\"");
    memset(body + head, 'e', n);
    strcpy(body + head + n, "\"}");
    expect_post_problem(s, body, 422, "invalid-update", "last_error");
    /* 65536 bytes is still fine. */
    strcpy(body + head + n - 1, "\"}");
    ns_resp r = { 0 };
    cr_assert_eq(ns_req(s, "POST", STATE_PATH, body, NULL, &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 202, "65536-byte last_error: %ld %.200s", r.status, r.body);
    ns_resp_free(&r);
    free(body);
    ns_free(s);
}

Test(badinput, bad_ids_are_400)
{
    ns_server *s = start();
    char id129[130], id128[129];
    memset(id129, 'a', 129);
    id129[129] = '\0';
    memset(id128, 'b', 128);
    id128[128] = '\0';
    char path[512];
    const char *body = "{\"status\":\"running\"}";

    static const char *const bad_paths[] = {
        "/runs/r!x/nodes/n/state", "/runs/r/nodes/n@1/state",
        "/runs/r%20x/nodes/n/state", "/runs/r/nodes/n%2Bx/state",
        "/runs/r/nodes/%C3%A9/state", "/runs/r*/nodes/n/state",
        "/runs//nodes/n/state", "/runs/r/nodes//state",
    };
    for (size_t i = 0; i < sizeof bad_paths / sizeof *bad_paths; i++) {
        free(expect_problem_req(s, "POST", bad_paths[i], body, NULL, 400, "invalid-id"));
        free(expect_problem_req(s, "GET", bad_paths[i], NULL, NULL, 400, "invalid-id"));
    }
    snprintf(path, sizeof path, "/runs/%s/nodes/n/state", id129);
    free(expect_problem_req(s, "POST", path, body, NULL, 400, "invalid-id"));
    snprintf(path, sizeof path, "/runs/r/nodes/%s/state", id129);
    free(expect_problem_req(s, "POST", path, body, NULL, 400, "invalid-id"));
    snprintf(path, sizeof path, "/runs/%s", id129);
    free(expect_problem_req(s, "GET", path, NULL, NULL, 400, "invalid-id"));
    free(expect_problem_req(s, "DELETE", path, NULL, NULL, 400, "invalid-id"));

    /* 128 bytes of every allowed character class is a valid id. */
    ns_resp r = { 0 };
    snprintf(path, sizeof path, "/runs/%s/nodes/A-z.0_9~:x/state", id128);
    cr_assert_eq(ns_req(s, "POST", path, body, NULL, &r), 0);
    cr_assert_eq(r.status, 202, "128-byte id: %ld %s", r.status, r.body);
    ns_resp_free(&r);
    expect_still_serving(s);
    ns_free(s);
}

Test(badinput, body_over_limit_is_413)
{
    ns_server *s = start();
    /* Exactly the limit is accepted. */
    char body[4 * MAX_BODY];
    const char *head = "{\"status\":\"failed\",\"last_error\":\"";
    size_t hl = strlen(head);
    memcpy(body, head, hl);
    memset(body + hl, 'x', MAX_BODY - hl - 2);
    memcpy(body + MAX_BODY - 2, "\"}", 3);
    cr_assert_eq(strlen(body), MAX_BODY);
    ns_resp r = { 0 };
    cr_assert_eq(ns_req(s, "POST", STATE_PATH, body, NULL, &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 202, "a body of exactly the limit: %ld %s", r.status, r.body);

    memset(body + hl, 'x', sizeof body - hl - 3);
    memcpy(body + sizeof body - 3, "\"}", 3);
    free(expect_problem_req(s, "POST", "/runs/rb/nodes/n2/state", body, NULL, 413,
                            "body-too-large"));
    /* One byte over. */
    memset(body + hl, 'x', MAX_BODY + 1 - hl - 2);
    memcpy(body + MAX_BODY + 1 - 2, "\"}", 3);
    free(expect_problem_req(s, "POST", "/runs/rb/nodes/n2/state", body, NULL, 413,
                            "body-too-large"));
    cr_assert_eq(ns_req(s, "GET", "/runs/rb/nodes/n2/state", NULL, NULL, &r), 0);
    cr_assert_eq(r.status, 404, "a refused body created the node");
    ns_resp_free(&r);
    expect_still_serving(s);
    ns_free(s);
}

/*
 * A client that waits for 100 Continue before sending a body over the limit
 * gets the 413 instead, at once, and never has to send the body; one whose
 * body fits gets its 100 Continue.
 */
Test(badinput, body_over_limit_with_expect_is_413_before_the_body)
{
    ns_server *s = start();
    char head[512], buf[4096];
    size_t len = 0;
    int fd = it_raw_connect(s, NULL);
    snprintf(head, sizeof head,
             "POST " STATE_PATH " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: %d\r\nExpect: 100-continue\r\n\r\n", MAX_BODY + 1);
    cr_assert_eq(ns_raw_send_str(fd, head), 0);
    it_raw_read_to_close(fd, buf, sizeof buf, &len, 30.0);
    close(fd);
    cr_assert(strncmp(buf, "HTTP/1.1 413", 12) == 0, "not an early 413: %.300s", buf);
    cr_assert_null(strstr(buf, "100 Continue"), "a 100 Continue before the 413: %.300s", buf);
    cr_assert_not_null(strstr(buf, "body-too-large"), "%.600s", buf);

    fd = it_raw_connect(s, NULL);
    len = 0;
    snprintf(head, sizeof head,
             "POST " STATE_PATH " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: %d\r\nExpect: 100-continue\r\n\r\n", MAX_BODY);
    cr_assert_eq(ns_raw_send_str(fd, head), 0);
    buf[0] = '\0';
    for (int tries = 0; strstr(buf, "\r\n\r\n") == NULL; tries++) {
        cr_assert(tries < 600, "no answer in 60 s: %.300s", buf);
        cr_assert_eq(it_raw_read_for(fd, buf, sizeof buf, &len, 100), 0,
                     "closed before an answer: %.300s", buf);
    }
    cr_assert(strncmp(buf, "HTTP/1.1 100", 12) == 0, "not a 100 Continue: %.300s", buf);
    close(fd);
    expect_still_serving(s);
    ns_free(s);
}

Test(badinput, content_type_not_json_is_415)
{
    ns_server *s = start();
    const char *body = "{\"status\":\"running\"}";
    static const char *const bad[] = {
        "Content-Type: text/plain", "Content-Type: application/x-www-form-urlencoded",
        "Content-Type: application/xml", "Content-Type: multipart/form-data; boundary=x",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char *hdr[] = { bad[i], NULL };
        free(expect_problem_req(s, "POST", STATE_PATH, body, hdr, 415,
                                "unsupported-media-type"));
    }
    expect_untouched(s);

    /* JSON with parameters, +json types and no Content-Type at all are JSON. */
    static const struct {
        const char *header;
        const char *node;
    } good[] = {
        { "Content-Type: application/json; charset=utf-8", "g1" },
        { "Content-Type: application/merge-patch+json", "g2" },
        { "Content-Type: APPLICATION/JSON", "g3" },
        { "Content-Type:", "g4" },
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        const char *hdr[] = { good[i].header, NULL };
        char path[128];
        snprintf(path, sizeof path, "/runs/rb/nodes/%s/state", good[i].node);
        ns_resp r = { 0 };
        cr_assert_eq(ns_req(s, "POST", path, body, hdr, &r), 0);
        cr_assert_eq(r.status, 202, "%s: %ld %s", good[i].header, r.status, r.body);
        ns_resp_free(&r);
    }
    expect_still_serving(s);
    ns_free(s);
}

Test(badinput, unknown_path_404_wrong_method_405)
{
    ns_server *s = start();
    static const char *const unknown[] = {
        "/", "/nope", "/runs", "/runs/r/nodes/n", "/runs/r/nodes/n/state/x",
        "/runs/r/other", "/healthz/x", "/statsx",
    };
    for (size_t i = 0; i < sizeof unknown / sizeof *unknown; i++)
        free(expect_problem_req(s, "GET", unknown[i], NULL, NULL, 404, "not-found"));

    static const struct {
        const char *method;
        const char *path;
        const char *allow_has[3];
    } wrong[] = {
        { "PUT", STATE_PATH, { "GET", "POST", NULL } },
        { "DELETE", STATE_PATH, { "GET", "POST", NULL } },
        { "PATCH", STATE_PATH, { "GET", "POST", NULL } },
        { "POST", "/runs/rb", { "GET", "DELETE", NULL } },
        { "PUT", "/runs/rb", { "GET", "DELETE", NULL } },
        { "PUT", "/runs/rb/nodes", { "GET", "POST", NULL } },
        { "DELETE", "/stats", { "GET", NULL, NULL } },
        { "POST", "/metrics", { "GET", NULL, NULL } },
        { "POST", "/healthz", { "GET", NULL, NULL } },
        { "PUT", "/readyz", { "GET", NULL, NULL } },
    };
    for (size_t i = 0; i < sizeof wrong / sizeof *wrong; i++) {
        ns_resp r = { 0 };
        const char *body = strcmp(wrong[i].method, "DELETE") == 0 ? NULL : "{}";
        cr_assert_eq(ns_req(s, wrong[i].method, wrong[i].path, body, NULL, &r), 0);
        char why[768];
        cr_assert_eq(ns_check_problem(&r, 405, "method-not-allowed", why, sizeof why), 0,
                     "%s %s: %s", wrong[i].method, wrong[i].path, why);
        cr_assert(r.allow[0] != '\0', "%s %s: no Allow header", wrong[i].method,
                  wrong[i].path);
        for (int k = 0; k < 3 && wrong[i].allow_has[k] != NULL; k++)
            cr_assert(strstr(r.allow, wrong[i].allow_has[k]) != NULL,
                      "%s %s: Allow \"%s\" lacks %s", wrong[i].method, wrong[i].path,
                      r.allow, wrong[i].allow_has[k]);
        cr_assert(strstr(r.allow, wrong[i].method) == NULL,
                  "%s %s: Allow \"%s\" lists the refused method", wrong[i].method,
                  wrong[i].path, r.allow);
        ns_resp_free(&r);
    }
    expect_untouched(s);
    expect_still_serving(s);
    ns_free(s);
}

Test(badinput, garbage_never_kills_the_server)
{
    ns_server *s = start();
    /* Deep nesting inside a free-form member, just under the body limit. */
    char deep[MAX_BODY];
    size_t depth = 400;
    size_t off = (size_t)snprintf(deep, sizeof deep, "{\"status\":\"running\",\"outputs\":");
    for (size_t i = 0; i < depth; i++)
        deep[off++] = '[';
    for (size_t i = 0; i < depth; i++)
        deep[off++] = ']';
    deep[off++] = '}';
    deep[off] = '\0';
    ns_resp r = { 0 };
    cr_assert_eq(ns_req(s, "POST", "/runs/rg/nodes/deep/state", deep, NULL, &r), 0);
    cr_assert(r.status == 202 || (r.status >= 400 && r.status < 500),
              "deep nesting: %ld", r.status);

    ns_resp_free(&r);

    static const char *const junk[] = {
        "{\"status\":\"running\",\"outputs\":", "{\"\":\"\"}", "{\"status\":\"\"}",
        "{\"status\":\"running\",\"status\":\"failed\",\"status\":1}",
        "\xef\xbb\xbf{\"status\":\"running\"}", "{\"status\":\"running\",\"attempt\":1e400}",
        "{\"status\":\"running\",\"attempt\":18446744073709551616}",
        "{\"status\":\"running\",\"started_at\":\"\"}",
        "{\"status\":\"running\",\"started_at\":\"2026-02-30T00:00:00Z\"}",
        "{\"status\":\"running\",\"started_at\":\"9999-12-31T23:59:60.999999999+23:59\"}",
    };
    for (size_t i = 0; i < sizeof junk / sizeof *junk; i++) {
        cr_assert_eq(ns_req(s, "POST", "/runs/rg/nodes/j/state", junk[i], NULL, &r), 0,
                     "junk %zu: %s", i, r.error);
        if (r.status >= 400) {
            char why[768];
            cr_assert(r.status == 400 || r.status == 422, "junk %zu: %ld", i, r.status);
            cr_assert_eq(ns_check_problem(&r, r.status, r.status == 400 ? "invalid-json"
                                                                        : "invalid-update",
                                          why, sizeof why), 0, "junk %zu: %s", i, why);
        } else {
            cr_assert(r.status == 200 || r.status == 202, "junk %zu: %ld", i, r.status);
        }
    }
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(s, SIGTERM), 0, "exit code after garbage");
    cr_assert(ns_log_contains(s, "msg=stopped"));
    ns_free(s);
}

Test(badinput, rejections_are_counted)
{
    ns_server *s = start();
    expect_post_problem(s, "{bad", 400, "invalid-json", NULL);
    expect_post_problem(s, "{\"status\":\"nope\"}", 422, "invalid-update", "status");
    json_t *st = ns_stats(s);
    cr_assert_not_null(st);
    json_t *rej = json_object_get(st, "updates_rejected");
    long long invalid = -1;
    if (json_is_object(rej))
        invalid = json_integer_value(json_object_get(rej, "invalid"));
    else if (json_is_integer(rej))
        invalid = json_integer_value(rej);
    cr_assert_geq(invalid, 2, "updates_rejected does not count bad input");
    long long queued = -1;
    cr_assert_eq(ns_jint(st, "updates_queued", &queued), 0);
    cr_assert_eq(queued, 0, "bad input was queued");
    json_decref(st);
    ns_free(s);
}

/* ---- input in disguise: percent-encoding in paths and query values ------ */

/* The rows of the SQLite file, as "run/node=status;" in key order. */
static char *db_rows(ns_server *s)
{
    bool err = false;
    char *rows = ns_db_text(s, &err,
                            "SELECT group_concat(run_id || '/' || node_id || '=' || status, ';')"
                            " FROM (SELECT * FROM run_node_state ORDER BY run_id, node_id) AS t",
                            NULL);
    cr_assert_not(err, "reading the database failed");
    cr_assert_not_null(rows, "the database holds no rows");
    return rows;
}

Test(badinput, percent_encoded_ids_are_400_and_change_nothing)
{
    ns_server *s = start();
    it_post(s, "r1", "n1", "?wait=true", "{\"status\":\"running\"}", 200);
    it_post(s, "r1", "n2", "?wait=true", "{\"status\":\"scheduled\"}", 200);
    char *before = db_rows(s);
    cr_assert_str_eq(before, "r1/n1=running;r1/n2=scheduled");

    const char *done = "{\"status\":\"completed\"}";
    static const char *const state_paths[] = {
        "/runs/r1%00/nodes/n1/state", "/runs/r1/nodes/n1%00/state",
        "/runs/r1%00junk/nodes/n1/state", "/runs/r1%2Fnodes%2Fn1/nodes/n1/state",
        "/runs/r1/nodes/n1%2Fstate/state", "/runs/r%251/nodes/n1/state",
        "/runs/r%7E1/nodes/n1/state", "/runs/r1/nodes/n%31/state",
    };
    for (size_t i = 0; i < sizeof state_paths / sizeof *state_paths; i++) {
        free(expect_problem_req(s, "POST", state_paths[i], done, NULL, 400, "invalid-id"));
        free(expect_problem_req(s, "GET", state_paths[i], NULL, NULL, 400, "invalid-id"));
    }
    static const char *const run_paths[] = { "/runs/r1%00", "/runs/r1%00junk", "/runs/r%31",
                                              "/runs/r1%2F", "/runs/r1%00/nodes" };
    for (size_t i = 0; i < sizeof run_paths / sizeof *run_paths; i++) {
        const char *method = strstr(run_paths[i], "/nodes") != NULL ? "GET" : "DELETE";
        char *detail = expect_problem_req(s, method, run_paths[i], NULL, NULL, 400,
                                          "invalid-id");
        cr_assert(strstr(detail, "percent-encoding") != NULL, "%s: detail \"%s\"",
                  run_paths[i], detail);
        free(detail);
    }
    /* No DELETE on a node state, whatever the ids; an encoded '/' makes no route. */
    free(expect_problem_req(s, "DELETE", "/runs/r1%00/nodes/n1/state", NULL, NULL, 405,
                            "method-not-allowed"));
    free(expect_problem_req(s, "POST", "/runs/r9/nodes%2Fn1%2Fstate", done, NULL, 404,
                            "not-found"));
    free(expect_problem_req(s, "GET", "/runs/r9/nodes%2Fn1%2Fstate", NULL, NULL, 404,
                            "not-found"));

    /* Nothing reached the queue or the file. */
    cr_assert_eq(ns_stat(s, "updates_queued"), 2);
    cr_assert_eq(ns_wait_idle(s, 30), 0, "the writer did not go idle");
    char *after = db_rows(s);
    cr_assert_str_eq(after, before, "refused requests changed the database");
    free(before);
    free(after);
    json_t *run = it_get_json(s, "/runs/r1", 200);
    cr_assert_eq(it_jint(run, "nodes"), 2);
    json_decref(run);
    expect_still_serving(s);
    ns_free(s);
}

Test(badinput, query_values_work_encoded_and_plain)
{
    ns_server *s = start();
    it_post(s, "rq", "a", "?wait=%74rue&timeout=%35", "{\"status\":\"running\"}", 200);
    it_post(s, "rq", "b", "?wait=true&timeout=5", "{\"status\":\"completed\"}", 200);
    it_post(s, "rq", "c", NULL, "{\"status\":\"failed\"}", 202);

    static const struct {
        const char *query;
        const char *ids;   /* node ids of the page, in order */
        const char *next;  /* NULL: null */
    } cases[] = {
        { "?status=running,completed", "ab", NULL },
        { "?status=running%2Ccompleted", "ab", NULL },
        { "?status=running%2ccompleted&limit=%31", "a", "a" },
        { "?status=%72unning,completed&limit=1&after=%61", "b", NULL },
        { "?limit=2&after=a", "bc", NULL },
        { "?limit=%32", "ab", "b" },
        { "?status=", "abc", NULL },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char path[256];
        snprintf(path, sizeof path, "/runs/rq/nodes%s", cases[i].query);
        json_t *page = it_get_json(s, path, 200);
        json_t *nodes = json_object_get(page, "nodes");
        char got[16] = "";
        for (size_t k = 0; k < json_array_size(nodes) && k + 1 < sizeof got; k++)
            strncat(got, ns_jstr(json_array_get(nodes, k), "node_id"), 1);
        cr_assert_str_eq(got, cases[i].ids, "%s", path);
        if (cases[i].next == NULL)
            cr_assert(ns_jnull(page, "next"), "%s: next is not null", path);
        else
            cr_assert_str_eq(ns_jstr(page, "next"), cases[i].next, "%s", path);
        json_decref(page);
    }
    json_t *st = it_get_json(s, "/stats?format=%6Ason", 200);
    cr_assert_eq(it_jint(st, "updates_queued"), 3);
    json_decref(st);

    /* An encoded NUL no longer cuts a value short ("a%00zzz" was "a"). */
    static const char *const bad[] = {
        "/runs/rq/nodes?after=a%00zzz", "/runs/rq/nodes?status=running%00",
        "/runs/rq/nodes?limit=1%00", "/runs/rq/nodes?limit=%zz", "/runs/rq/nodes?after=%",
        "/stats?format=json%00", "/runs/rq/nodes?status=running%2",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *detail = expect_problem_req(s, "GET", bad[i], NULL, NULL, 400, "invalid-query");
        cr_assert(strstr(detail, "percent-encoded") != NULL, "%s: detail \"%s\"", bad[i],
                  detail);
        free(detail);
    }
    free(expect_problem_req(s, "POST", "/runs/rq/nodes/d/state?wait=true%00no",
                            "{\"status\":\"running\"}", NULL, 400, "invalid-query"));
    free(expect_problem_req(s, "DELETE", "/runs/rq?wait=%", NULL, NULL, 400,
                            "invalid-query"));
    cr_assert_eq(ns_stat(s, "updates_queued"), 3, "a refused request was queued");
    json_t *run = it_get_json(s, "/runs/rq", 200);
    cr_assert_eq(it_jint(run, "nodes"), 3);
    json_decref(run);
    ns_free(s);
}

/* Asserts path answers 200 with a page of these nodes (one letter each, in order). */
static void expect_page(ns_server *s, const char *path, const char *ids)
{
    json_t *page = it_get_json(s, path, 200);
    json_t *nodes = json_object_get(page, "nodes");
    char got[16] = "";
    for (size_t k = 0; k < json_array_size(nodes) && k + 1 < sizeof got; k++)
        strncat(got, ns_jstr(json_array_get(nodes, k), "node_id"), 1);
    cr_assert_str_eq(got, ids, "%s", path);
    json_decref(page);
}

/*
 * Names are matched as sent: one in another case is not the parameter (MHD's
 * own lookup is caseless), so it is ignored like any name a route does not
 * know, and it neither refuses a request nor changes its answer.
 */
Test(badinput, query_names_are_matched_as_sent)
{
    ns_server *s = start();
    it_post(s, "rn", "a", "?WAIT=true", "{\"status\":\"running\"}", 202);
    it_post(s, "rn", "b", "?Wait", "{\"status\":\"completed\"}", 202);
    it_post(s, "rn", "c", "?wait", "{\"status\":\"failed\"}", 200);

    expect_page(s, "/runs/rn/nodes?STATUS=bogus", "abc");
    expect_page(s, "/runs/rn/nodes?Limit=1", "abc");
    expect_page(s, "/runs/rn/nodes?Limit=1&limit=2", "ab");
    expect_page(s, "/runs/rn/nodes?status=failed&Status=running", "c");
    free(expect_problem_req(s, "GET", "/runs/rn/nodes?status=bogus", NULL, NULL, 400,
                            "invalid-query"));

    ns_resp r = { 0 };
    cr_assert_eq(ns_req(s, "GET", "/stats?FORMAT=xml", NULL, NULL, &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 200, "?FORMAT=xml: %ld %s", r.status, r.body);
    cr_assert(strncmp(r.content_type, "text/plain", 10) == 0, "?FORMAT=xml: %s",
              r.content_type);
    ns_resp_free(&r);
    free(expect_problem_req(s, "GET", "/stats?format=xml", NULL, NULL, 400,
                            "invalid-query"));
    ns_free(s);
}

/* ---- the ETag follows the body ------------------------------------------ */

Test(badinput, etag_changes_when_the_state_becomes_durable)
{
    /* Nothing commits on its own: only the ?wait=true below makes it durable. */
    ns_server *s = ns_start("--batch-interval 60");
    cr_assert_not_null(s);
    json_t *doc = it_post_json(s, "re", "n1", NULL, "{\"status\":\"running\"}", 202);
    long long seq = it_jint(doc, "seq");
    cr_assert(json_is_false(json_object_get(doc, "durable")));
    json_decref(doc);

    ns_resp r = { 0 };
    cr_assert_eq(ns_get_state(s, "re", "n1", &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 200);
    doc = ns_resp_json(&r);
    cr_assert(json_is_false(json_object_get(doc, "durable")), "%s", r.body);
    json_decref(doc);
    char queued[64];
    snprintf(queued, sizeof queued, "\"%lld-q\"", seq);
    cr_assert_str_eq(r.etag, queued, "the tag of a queued state");
    char inm[96];
    snprintf(inm, sizeof inm, "If-None-Match: %s", queued);
    const char *hdr[] = { inm, NULL };
    cr_assert_eq(ns_req(s, "GET", "/runs/re/nodes/n1/state", NULL, hdr, &r), 0);
    cr_assert_eq(r.status, 304, "unchanged and still queued: %ld", r.status);

    /* A waiting write commits everything queued before it, n1 included. */
    it_post(s, "re", "n2", "?wait=true", "{\"status\":\"running\"}", 200);
    cr_assert_eq(ns_req(s, "GET", "/runs/re/nodes/n1/state", NULL, hdr, &r), 0);
    cr_assert_eq(r.status, 200, "the queued tag matched the durable state: %ld", r.status);
    doc = ns_resp_json(&r);
    cr_assert_not_null(doc, "no body with the 200");
    cr_assert(json_is_true(json_object_get(doc, "durable")), "%s", r.body);
    cr_assert_eq(it_jint(doc, "seq"), seq);
    json_decref(doc);
    char durable[64];
    snprintf(durable, sizeof durable, "\"%lld\"", seq);
    cr_assert_str_eq(r.etag, durable, "the tag of a durable state");
    snprintf(inm, sizeof inm, "If-None-Match: %s", durable);
    cr_assert_eq(ns_req(s, "GET", "/runs/re/nodes/n1/state", NULL, hdr, &r), 0);
    cr_assert_eq(r.status, 304);
    cr_assert_str_eq(r.etag, durable);
    ns_resp_free(&r);
    ns_free(s);
}

/* ---- client bytes in problem details ------------------------------------ */

/* Sends a request; asserts a problem of status and slug whose body is valid UTF-8. Returns the detail. */
static char *expect_utf8_problem(ns_server *s, const char *method, const char *path,
                                 const char *body, long status, const char *slug)
{
    ns_resp r = { 0 };
    cr_assert_eq(ns_req(s, method, path, body, NULL, &r), 0, "%s", r.error);
    cr_assert(utf8_check(r.body, r.body_len), "%s: the body is not UTF-8: %s", slug, r.body);
    char why[768];
    cr_assert_eq(ns_check_problem(&r, status, slug, why, sizeof why), 0, "%s", why);
    json_t *doc = ns_resp_json(&r);
    char *detail = strdup(ns_jstr(doc, "detail"));
    cr_assert_not_null(detail);
    json_decref(doc);
    ns_resp_free(&r);
    return detail;
}

/*
 * Sends "METHOD PATH HTTP/1.1" with Connection: close over a plain socket
 * (curl would percent-encode the path's bytes), reads the answer to the end
 * (bounded: 30 s) and returns its body (free it), with the status in *status.
 */
static char *raw_request(ns_server *s, const char *method, const char *path, long *status)
{
    int fd = it_raw_connect(s, NULL);
    char req[512];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Connection: close\r\n\r\n", method, path);
    cr_assert(n > 0 && (size_t)n < sizeof req);
    cr_assert_eq(ns_raw_send(fd, req, (size_t)n), 0, "%s", strerror(errno));
    static char answer[16384];
    size_t got = 0;
    it_raw_read_to_close(fd, answer, sizeof answer, &got, 30.0);
    cr_assert_lt(got, sizeof answer - 1, "answer too long");
    close(fd);
    cr_assert_eq(sscanf(answer, "HTTP/1.1 %ld", status), 1, "no status line: %.100s", answer);
    const char *body = strstr(answer, "\r\n\r\n");
    cr_assert_not_null(body, "no end of headers");
    char *copy = strdup(body + 4);
    cr_assert_not_null(copy);
    return copy;
}

Test(badinput, problem_bodies_are_utf8_whatever_the_request_bytes)
{
    ns_server *s = start();
    /* Invalid UTF-8 and a control byte in the method are shown escaped. */
    char *d = expect_utf8_problem(s, "G\xffT", "/runs/r1", NULL, 405, "method-not-allowed");
    cr_assert(strstr(d, "G\\xFFT") != NULL, "detail \"%s\"", d);
    free(d);
    /* A method of multi-byte characters, cut at every offset: never inside one. */
    for (int lead = 0; lead < 3; lead++) {
        char method[96];
        memset(method, 'M', (size_t)lead);
        for (int i = 0; i < 30; i++)
            memcpy(method + lead + 2 * i, "\xc3\xa9", 2);
        method[lead + 60] = '\0';
        free(expect_utf8_problem(s, method, "/runs/r1", NULL, 405, "method-not-allowed"));
    }
    /* Invalid UTF-8 in the path, as curl sends it (percent-encoded) and raw. */
    free(expect_utf8_problem(s, "GET", "/runs/r\xff\xfe/nodes/n\xc3/state", NULL, 400,
                             "invalid-id"));
    free(expect_utf8_problem(s, "GET", "/n\xc3\xa9\xff", NULL, 404, "not-found"));
    static const struct {
        const char *method, *path;
        long status;
    } raw[] = {
        { "GET", "/runs/r\xff\xfe/nodes/n\xc3/state", 400 },
        { "POST", "/runs/r\x01/nodes/n/state", 400 },
        { "GET", "/r\xc3\xa9\xff", 404 },
        { "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9M", "/runs/r\xff", 405 },
        { "M\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9",
          "/stats", 405 },
    };
    for (size_t i = 0; i < sizeof raw / sizeof *raw; i++) {
        long status = 0;
        char *body = raw_request(s, raw[i].method, raw[i].path, &status);
        cr_assert_eq(status, raw[i].status, "raw case %zu: %ld %s", i, status, body);
        cr_assert(utf8_check(body, strlen(body)), "raw case %zu: the body is not UTF-8: %s",
                  i, body);
        json_error_t err;
        json_t *doc = json_loads(body, 0, &err);
        cr_assert_not_null(doc, "raw case %zu: not JSON (%s): %s", i, err.text, body);
        cr_assert(json_is_string(json_object_get(doc, "detail")), "raw case %zu", i);
        json_decref(doc);
        free(body);
    }
    /* A member name with a multi-byte character where the detail cuts it. */
    for (int lead = 61; lead <= 65; lead++) {
        char body[256];
        snprintf(body, sizeof body, "{\"status\":\"idle\",\"%.*s\xe2\x82\xac\xe2\x82\xac\":1}", lead,
                 "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk");
        d = expect_utf8_problem(s, "POST", STATE_PATH, body, 422, "invalid-update");
        cr_assert(strstr(d, "unknown member \"kkkk") != NULL, "detail \"%s\"", d);
        free(d);
    }
    expect_untouched(s);
    expect_still_serving(s);
    ns_free(s);
}

/* ---- every answer is counted ------------------------------------------- */

Test(badinput, every_problem_answered_is_counted_by_code)
{
    ns_server *s = start();
    it_post(s, "rc", "n1", "?wait=true", "{\"status\":\"completed\"}", 200);
    static const struct {
        const char *method, *path, *body;
        long status;
        const char *slug;
    } cases[] = {
        { "GET", "/nope", NULL, 404, "not-found" },
        { "PUT", "/runs/rc", "{}", 405, "method-not-allowed" },
        { "G\xffT", "/runs/rc", NULL, 405, "method-not-allowed" },
        { "GET", "/runs/rc%00", NULL, 400, "invalid-id" },
        { "GET", "/runs/rc/nodes?after=%00", NULL, 400, "invalid-query" },
        { "POST", "/runs/rc/nodes/n2/state?wait=maybe", "{\"status\":\"idle\"}", 400,
          "invalid-query" },
        { "POST", "/runs/rc/nodes/n2/state", "{", 400, "invalid-json" },
        { "POST", "/runs/rc/nodes/n2/state", "{\"status\":\"x\"}", 422, "invalid-update" },
        { "POST", "/runs/rc/nodes/n1/state", "{\"status\":\"running\"}", 409,
          "illegal-transition" },
    };
    long long want[600] = { 0 };
    want[200] = 1;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        free(expect_problem_req(s, cases[i].method, cases[i].path, cases[i].body, NULL,
                                cases[i].status, cases[i].slug));
        want[cases[i].status]++;
    }
    /* The transport's own 413 goes through the api's counting too. */
    char big[2 * MAX_BODY];
    memset(big, ' ', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    free(expect_problem_req(s, "POST", "/runs/rc/nodes/n3/state", big, NULL, 413,
                            "body-too-large"));
    want[413]++;

    json_t *st = ns_stats(s);
    cr_assert_not_null(st);
    json_t *codes = json_object_get(st, "http_responses");
    cr_assert(json_is_object(codes), "no http_responses");
    for (int code = 100; code < 600; code++) {
        char key[8];
        snprintf(key, sizeof key, "%d", code);
        json_t *v = json_object_get(codes, key);
        long long got = json_is_integer(v) ? json_integer_value(v) : 0;
        cr_assert_eq(got, want[code], "http_responses[%d] = %lld, want %lld", code, got,
                     want[code]);
    }
    /* Refused updates: the bad ?wait=, the bad body, the bad member, the 413. */
    json_t *rej = json_object_get(st, "updates_rejected");
    cr_assert_eq(json_integer_value(json_object_get(rej, "invalid")), 4);
    json_decref(st);
    ns_free(s);
}
