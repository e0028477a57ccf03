#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <jansson.h>

#include "codec.h"
#include "utf8_check.h"

#define RUN "run-1"
#define NODE "node.a"
#define MAX_ERR 64

/* ---- decoding ---- */

typedef struct decoded {
    codec_doc *doc;
    ns_update u;
    int status;
    char detail[256];
} decoded;

static decoded decode(const char *body)
{
    decoded d;
    memset(&d, 0, sizeof d);
    d.status = -1;
    d.doc = codec_decode_update(body, strlen(body), RUN, NODE, MAX_ERR, &d.u,
                                &d.status, d.detail, sizeof d.detail);
    return d;
}

/* Decodes body that must be accepted; the caller frees d.doc. */
static decoded decode_ok(const char *body)
{
    decoded d = decode(body);
    cr_assert_not_null(d.doc, "refused %s: %d %s", body, d.status, d.detail);
    return d;
}

/* Decodes body that must be refused with code, the detail containing want. */
static void decode_bad(const char *body, int code, const char *want)
{
    decoded d = decode(body);
    cr_assert_null(d.doc, "accepted %s", body);
    cr_assert_eq(d.status, code, "%s: status %d, want %d (%s)", body,
                 d.status, code, d.detail);
    cr_assert_not_null(strstr(d.detail, want), "%s: detail \"%s\" lacks \"%s\"",
                       body, d.detail, want);
}

/* Refused with 422 and a detail naming the member. */
static void decode_bad_member(const char *body, const char *member)
{
    char want[64];
    snprintf(want, sizeof want, "member \"%s\"", member);
    decode_bad(body, 422, want);
}

Test(decode, minimal_body)
{
    decoded d = decode_ok("{\"status\":\"running\"}");
    cr_assert_eq(d.u.status, NS_RUNNING);
    cr_assert_not(d.u.has_attempt);
    cr_assert_eq(d.u.ts_set, 0);
    cr_assert_not(d.u.last_error.set);
    cr_assert_not(d.u.has_retryable);
    cr_assert_not(d.u.suspension_reason.set);
    cr_assert_not(d.u.resume_state.set);
    cr_assert_not(d.u.outputs.set);
    cr_assert_not(d.u.force);
    codec_doc_free(d.doc);
}

Test(decode, every_status_name)
{
    static const char *names[] = { "idle", "scheduled", "running", "paused",
                                   "suspended", "completed", "failed" };
    for (int i = 0; i < NS_STATUS_COUNT; i++) {
        char body[64];
        snprintf(body, sizeof body, "{\"status\":\"%s\"}", names[i]);
        decoded d = decode_ok(body);
        cr_assert_eq((int)d.u.status, i);
        codec_doc_free(d.doc);
    }
}

Test(decode, status_rules)
{
    decode_bad("{}", 422, "missing member \"status\"");
    decode_bad("{\"attempt\":2}", 422, "missing member \"status\"");
    decode_bad_member("{\"status\":\"done\"}", "status");
    decode_bad_member("{\"status\":\"RUNNING\"}", "status");
    decode_bad_member("{\"status\":null}", "status");
    decode_bad_member("{\"status\":3}", "status");
    decode_bad_member("{\"status\":[\"running\"]}", "status");
}

Test(decode, full_body)
{
    decoded d = decode_ok(
        "{\"run_id\":\"run-1\",\"node_id\":\"node.a\",\"status\":\"failed\","
        "\"attempt\":3,\"scheduled_at\":\"2026-11-26T16:27:29.123Z\","
        "\"started_at\":\"2026-11-26T17:27:30.5+01:00\",\"completed_at\":null,"
        "\"failed_at\":\"2026-11-26t16:27:31Z\",\"suspended_at\":null,"
        "\"last_error\":\"boom \\\"x\\\" \\u00e9\",\"retryable\":true,"
        "\"suspension_reason\":\"why\",\"resume_state\":{ \"k\" : [ 1, 2 ] },"
        "\"outputs\":\"text\",\"force\":true,"
        "\"updated_at\":\"whatever\",\"seq\":\"x\",\"durable\":{}}");
    cr_assert_eq(d.u.status, NS_FAILED);
    cr_assert(d.u.has_attempt);
    cr_assert_eq(d.u.attempt, 3);
    cr_assert_eq(d.u.ts_set, (1u << NS_TS_COUNT) - 1);
    int64_t want;
    cr_assert_eq(model_ts_parse("2026-11-26T16:27:29.123Z", &want), 0);
    cr_assert_eq(d.u.ts[NS_TS_SCHEDULED], want);
    cr_assert_eq(d.u.ts[NS_TS_STARTED], want + 1377);
    cr_assert_eq(d.u.ts[NS_TS_COMPLETED], NS_TS_NULL);
    cr_assert_eq(d.u.ts[NS_TS_FAILED], want + 1877);
    cr_assert_eq(d.u.ts[NS_TS_SUSPENDED], NS_TS_NULL);
    cr_assert(d.u.last_error.set);
    cr_assert_str_eq(d.u.last_error.value, "boom \"x\" \xc3\xa9");
    cr_assert(d.u.has_retryable);
    cr_assert(d.u.retryable);
    cr_assert(d.u.suspension_reason.set);
    cr_assert_str_eq(d.u.suspension_reason.value, "why");
    cr_assert(d.u.resume_state.set);
    cr_assert_str_eq(d.u.resume_state.value, "{\"k\":[1,2]}");
    cr_assert(d.u.outputs.set);
    cr_assert_str_eq(d.u.outputs.value, "\"text\"");
    cr_assert(d.u.force);
    codec_doc_free(d.doc);
}

Test(decode, attempt_rules)
{
    decoded d = decode_ok("{\"status\":\"idle\",\"attempt\":1}");
    cr_assert(d.u.has_attempt);
    cr_assert_eq(d.u.attempt, 1);
    codec_doc_free(d.doc);
    d = decode_ok("{\"status\":\"idle\",\"attempt\":9007199254740992}");
    cr_assert_eq(d.u.attempt, INT64_C(9007199254740992));
    codec_doc_free(d.doc);

    decode_bad("{\"status\":\"idle\",\"attempt\":0}", 422,
               "member \"attempt\" must be an integer >= 1");
    decode_bad_member("{\"status\":\"idle\",\"attempt\":-4}", "attempt");
    decode_bad_member("{\"status\":\"idle\",\"attempt\":9007199254740993}", "attempt");
    decode_bad_member("{\"status\":\"idle\",\"attempt\":1.5}", "attempt");
    decode_bad_member("{\"status\":\"idle\",\"attempt\":2.0}", "attempt");
    /* written as a non-integer: refused even when the value is whole */
    decode_bad_member("{\"status\":\"idle\",\"attempt\":1.0}", "attempt");
    decode_bad_member("{\"status\":\"idle\",\"attempt\":1e0}", "attempt");
    decode_bad_member("{\"status\":\"idle\",\"attempt\":2.5}", "attempt");
    decode_bad_member("{\"status\":\"idle\",\"attempt\":-0}", "attempt");
    /* beyond int64 reaches the check (it used to be a jansson parse error) */
    decode_bad_member("{\"status\":\"idle\",\"attempt\":18446744073709551616}",
                      "attempt");
    decode_bad_member("{\"status\":\"idle\",\"attempt\":123456789012345678901234567890}",
                      "attempt");
    d = decode_ok("{\"status\":\"idle\",\"attempt\":9007199254740991}");
    cr_assert_eq(d.u.attempt, INT64_C(9007199254740991));
    codec_doc_free(d.doc);
    decode_bad_member("{\"status\":\"idle\",\"attempt\":\"2\"}", "attempt");
    decode_bad_member("{\"status\":\"idle\",\"attempt\":null}", "attempt");
    decode_bad_member("{\"status\":\"idle\",\"attempt\":true}", "attempt");
}

Test(decode, timestamp_rules)
{
    for (int f = 0; f < NS_TS_COUNT; f++) {
        const char *name = model_ts_field_name((ns_ts_field)f);
        char body[160];

        snprintf(body, sizeof body,
                 "{\"status\":\"idle\",\"%s\":\"2026-01-02T03:04:05.006Z\"}", name);
        decoded d = decode_ok(body);
        int64_t want;
        cr_assert_eq(model_ts_parse("2026-01-02T03:04:05.006Z", &want), 0);
        cr_assert_eq(d.u.ts_set, 1u << f);
        cr_assert_eq(d.u.ts[f], want);
        codec_doc_free(d.doc);

        /* null clears: present, with the null marker */
        snprintf(body, sizeof body, "{\"status\":\"idle\",\"%s\":null}", name);
        d = decode_ok(body);
        cr_assert_eq(d.u.ts_set, 1u << f);
        cr_assert_eq(d.u.ts[f], NS_TS_NULL);
        codec_doc_free(d.doc);

        snprintf(body, sizeof body, "{\"status\":\"idle\",\"%s\":\"yesterday\"}", name);
        decode_bad_member(body, name);
        snprintf(body, sizeof body, "{\"status\":\"idle\",\"%s\":\"2026-02-30T00:00:00Z\"}", name);
        decode_bad_member(body, name);
        snprintf(body, sizeof body, "{\"status\":\"idle\",\"%s\":1764174449}", name);
        decode_bad_member(body, name);
        snprintf(body, sizeof body, "{\"status\":\"idle\",\"%s\":false}", name);
        decode_bad_member(body, name);
    }
}

Test(decode, text_members)
{
    static const char *members[] = { "last_error", "suspension_reason" };
    for (size_t i = 0; i < 2; i++) {
        char body[160];
        snprintf(body, sizeof body, "{\"status\":\"idle\",\"%s\":\"t\\n\\u65e5\"}",
                 members[i]);
        decoded d = decode_ok(body);
        ns_text *t = i == 0 ? &d.u.last_error : &d.u.suspension_reason;
        cr_assert(t->set);
        cr_assert_str_eq(t->value, "t\n\xe6\x97\xa5");
        codec_doc_free(d.doc);

        snprintf(body, sizeof body, "{\"status\":\"idle\",\"%s\":null}", members[i]);
        d = decode_ok(body);
        t = i == 0 ? &d.u.last_error : &d.u.suspension_reason;
        cr_assert(t->set);
        cr_assert_null(t->value);
        codec_doc_free(d.doc);

        snprintf(body, sizeof body, "{\"status\":\"idle\",\"%s\":42}", members[i]);
        decode_bad_member(body, members[i]);
        snprintf(body, sizeof body, "{\"status\":\"idle\",\"%s\":{\"a\":1}}", members[i]);
        decode_bad_member(body, members[i]);
    }
}

/* Both free texts are bounded by max_error_bytes (every string member has a limit). */
Test(decode, free_text_length_limit)
{
    static const char *const members[] = { "last_error", "suspension_reason" };
    for (size_t i = 0; i < 2; i++) {
        char body[256];
        char text[MAX_ERR + 2];
        memset(text, 'e', sizeof text);
        text[MAX_ERR] = '\0';
        snprintf(body, sizeof body, "{\"status\":\"failed\",\"%s\":\"%s\"}", members[i], text);
        decoded d = decode_ok(body);
        const ns_text *t = i == 0 ? &d.u.last_error : &d.u.suspension_reason;
        cr_assert_eq(strlen(t->value), MAX_ERR);
        codec_doc_free(d.doc);

        text[MAX_ERR] = 'e';
        text[MAX_ERR + 1] = '\0';
        snprintf(body, sizeof body, "{\"status\":\"failed\",\"%s\":\"%s\"}", members[i], text);
        decode_bad_member(body, members[i]);
    }
}

Test(decode, retryable_rules)
{
    decoded d = decode_ok("{\"status\":\"failed\",\"retryable\":true}");
    cr_assert(d.u.has_retryable);
    cr_assert(d.u.retryable);
    codec_doc_free(d.doc);
    d = decode_ok("{\"status\":\"failed\",\"retryable\":false}");
    cr_assert(d.u.has_retryable);
    cr_assert_not(d.u.retryable);
    codec_doc_free(d.doc);
    d = decode_ok("{\"status\":\"failed\",\"retryable\":null}");
    cr_assert(d.u.has_retryable);
    cr_assert_not(d.u.retryable);
    codec_doc_free(d.doc);
    decode_bad_member("{\"status\":\"failed\",\"retryable\":\"true\"}", "retryable");
    decode_bad_member("{\"status\":\"failed\",\"retryable\":1}", "retryable");
}

Test(decode, json_members_stored_compact)
{
    static const char *members[] = { "resume_state", "outputs" };
    static const struct { const char *in, *out; } cases[] = {
        { "{ \"b\" : 1 , \"a\" : [ true , null , \"x\" ] }",
          "{\"b\":1,\"a\":[true,null,\"x\"]}" },
        { "[ ]", "[]" },
        /* escapes are kept as written, not re-encoded */
        { "\"caf\\u00e9\"", "\"caf\\u00e9\"" },
        { "12", "12" },
        { "false", "false" },
        { "{}", "{}" },
    };
    for (size_t m = 0; m < 2; m++) {
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            char body[200];
            snprintf(body, sizeof body, "{\"status\":\"suspended\",\"%s\":%s}",
                     members[m], cases[i].in);
            decoded d = decode_ok(body);
            ns_text *t = m == 0 ? &d.u.resume_state : &d.u.outputs;
            cr_assert(t->set);
            cr_assert_str_eq(t->value, cases[i].out);
            codec_doc_free(d.doc);
        }
        char body[100];
        snprintf(body, sizeof body, "{\"status\":\"suspended\",\"%s\":null}", members[m]);
        decoded d = decode_ok(body);
        ns_text *t = m == 0 ? &d.u.resume_state : &d.u.outputs;
        cr_assert(t->set);
        cr_assert_null(t->value);
        codec_doc_free(d.doc);
    }
}

/* The stored text of outputs (m == 1) or resume_state (m == 0) for value. */
static void expect_stored(size_t m, const char *value, const char *want)
{
    static const char *members[] = { "resume_state", "outputs" };
    size_t size = strlen(value) + 64;
    char *body = malloc(size);
    cr_assert_not_null(body);
    snprintf(body, size, "{\"status\":\"suspended\",\"%s\":%s}", members[m], value);
    decoded d = decode_ok(body);
    ns_text *t = m == 0 ? &d.u.resume_state : &d.u.outputs;
    cr_assert(t->set);
    cr_assert_not_null(t->value);
    cr_assert_str_eq(t->value, want, "%s: stored %s, want %s", members[m],
                     t->value, want);
    codec_doc_free(d.doc);
    free(body);
}

Test(decode, json_members_numbers_kept_as_written)
{
    for (size_t m = 0; m < 2; m++) {
        /* json_dumps would give 1.1000000000000001 */
        expect_stored(m, "{\"x\":1.1}", "{\"x\":1.1}");
        expect_stored(m, "0.1", "0.1");
        expect_stored(m, "[1E+2, 1e-7, -0.0, 2.50, 0]", "[1E+2,1e-7,-0.0,2.50,0]");
        /* beyond int64 (and beyond double precision): kept digit for digit */
        expect_stored(m, "{\"n\":123456789012345678901234567890}",
                      "{\"n\":123456789012345678901234567890}");
        expect_stored(m, "-123456789012345678901234567890",
                      "-123456789012345678901234567890");
        expect_stored(m, "[18446744073709551616, 9007199254740993]",
                      "[18446744073709551616,9007199254740993]");
        /* underflow is finite: jansson takes it, and the text is kept */
        expect_stored(m, "1e-400", "1e-400");
    }
}

Test(decode, json_members_strings_kept_byte_for_byte)
{
    /* escapes of every kind, raw UTF-8, a surrogate pair, spaces and
     * brackets inside strings; only the whitespace between tokens goes */
    const char *in =
        "{ \"s\" : \"a \\\"b\\\" \\\\ \\/ \\b\\f\\n\\r\\t \\u00e9 \\ud83d\\ude00 } ] , :\" ,\n"
        "  \"t\" : [ \"\xe6\x97\xa5\xe6\x9c\xac\" , { \"k\\u0022\" : \"\\u0022\" } ] }";
    const char *want =
        "{\"s\":\"a \\\"b\\\" \\\\ \\/ \\b\\f\\n\\r\\t \\u00e9 \\ud83d\\ude00 } ] , :\","
        "\"t\":[\"\xe6\x97\xa5\xe6\x9c\xac\",{\"k\\u0022\":\"\\u0022\"}]}";
    for (size_t m = 0; m < 2; m++) {
        expect_stored(m, in, want);
        expect_stored(m, "\"\\\\\"", "\"\\\\\"");   /* a string ending in an escaped backslash */
        expect_stored(m, "\"  \"", "\"  \"");
    }
}

Test(decode, json_members_spacing_removed)
{
    static const char *const spellings[] = {
        "{\"a\":[1,{\"b\":null}],\"c\":true}",
        "{ \"a\" : [ 1 , { \"b\" : null } ] , \"c\" : true }",
        "\r\n\t{\n\t\"a\":\r\n[1,\t{\"b\"\n:null}\n]\n,\"c\":true\n}\r\n",
    };
    for (size_t m = 0; m < 2; m++)
        for (size_t i = 0; i < 3; i++)
            expect_stored(m, spellings[i], spellings[0]);
    /* the whole body spaced out, members around the JSON ones still seen */
    decoded d = decode_ok(" \n{ \"outputs\" : [ \"]}\" , 1 ] , \"attempt\" : 4 ,"
                          " \"resume_state\" : { } , \"status\" : \"failed\" } \n");
    cr_assert_eq(d.u.status, NS_FAILED);
    cr_assert_eq(d.u.attempt, 4);
    cr_assert_str_eq(d.u.outputs.value, "[\"]}\",1]");
    cr_assert_str_eq(d.u.resume_state.value, "{}");
    codec_doc_free(d.doc);
}

Test(decode, json_members_deep_nesting)
{
    /* deeper than any recursion we would want, within jansson's 2048 */
    enum { DEPTH = 2000 };
    char *value = malloc(3 * DEPTH + 16);
    char *want = malloc(2 * DEPTH + 16);
    cr_assert(value != NULL && want != NULL);
    size_t n = 0, w = 0;
    for (size_t i = 0; i < DEPTH; i++) {
        value[n++] = '[';
        value[n++] = ' ';
        want[w++] = '[';
    }
    for (size_t i = 0; i < DEPTH; i++) {
        value[n++] = ']';
        want[w++] = ']';
    }
    value[n] = '\0';
    want[w] = '\0';
    expect_stored(1, value, want);
    free(value);
    free(want);
}

Test(decode, escaped_member_keys)
{
    /* jansson unescapes keys, so the scanner must agree on which is which */
    decoded d = decode_ok("{\"status\":\"idle\",\"outp\\u0075ts\":{\"x\":1.1},"
                          "\"resume\\u005Fstate\":[2.0],\"\\u0061ttempt\":3}");
    cr_assert(d.u.outputs.set);
    cr_assert_str_eq(d.u.outputs.value, "{\"x\":1.1}");
    cr_assert(d.u.resume_state.set);
    cr_assert_str_eq(d.u.resume_state.value, "[2.0]");
    cr_assert(d.u.has_attempt);
    cr_assert_eq(d.u.attempt, 3);
    codec_doc_free(d.doc);

    /* an escaped key that is the same as a plain one is a duplicate */
    decode_bad("{\"status\":\"idle\",\"outputs\":1,\"outp\\u0075ts\":2}", 400,
               "invalid JSON");
    /* a key that only starts like one is unknown */
    decode_bad("{\"status\":\"idle\",\"outputs\\u0020\":1}", 422,
               "unknown member \"outputs \"");
    decode_bad("{\"status\":\"idle\",\"outputsx\":1}", 422,
               "unknown member \"outputsx\"");
    /* a member whose name contains a quote, before the JSON one */
    d = decode_ok("{\"status\":\"idle\",\"updated_at\":\"a\\\"}\",\"outputs\":[\"\\\"\"]}");
    cr_assert_str_eq(d.u.outputs.value, "[\"\\\"\"]");
    codec_doc_free(d.doc);
}

Test(decode, numbers_beyond_double_range)
{
    /* jansson refuses non-finite numbers outright: the body is not JSON we can read */
    decode_bad("{\"status\":\"idle\",\"outputs\":1e400}", 400, "invalid JSON");
    decode_bad("{\"status\":\"idle\",\"resume_state\":{\"a\":[-1e400]}}", 400,
               "invalid JSON");
    decode_bad("{\"status\":\"idle\",\"attempt\":1e400}", 400, "invalid JSON");
}

Test(decode, big_numbers_elsewhere)
{
    /* a big integer in an ignored server field no longer refuses the body */
    decoded d = decode_ok("{\"status\":\"idle\",\"seq\":123456789012345678901234567890}");
    cr_assert_eq(d.u.status, NS_IDLE);
    codec_doc_free(d.doc);
    /* and is the type error it always was where a number does not belong */
    decode_bad_member("{\"status\":\"idle\",\"retryable\":123456789012345678901234567890}",
                      "retryable");
    decode_bad_member("{\"status\":\"idle\",\"force\":0}", "force");
    decode_bad_member("{\"status\":\"idle\",\"last_error\":1.5}", "last_error");
    decode_bad_member("{\"status\":\"idle\",\"started_at\":1e3}", "started_at");
    decode_bad_member("{\"status\":\"idle\",\"run_id\":123456789012345678901234567890}",
                      "run_id");
}

Test(decode, force_rules)
{
    decoded d = decode_ok("{\"status\":\"idle\",\"force\":true}");
    cr_assert(d.u.force);
    codec_doc_free(d.doc);
    d = decode_ok("{\"status\":\"idle\",\"force\":false}");
    cr_assert_not(d.u.force);
    codec_doc_free(d.doc);
    decode_bad_member("{\"status\":\"idle\",\"force\":null}", "force");
    decode_bad_member("{\"status\":\"idle\",\"force\":\"yes\"}", "force");
    decode_bad_member("{\"status\":\"idle\",\"force\":1}", "force");
}

Test(decode, path_ids_must_match)
{
    decoded d = decode_ok("{\"status\":\"idle\",\"run_id\":\"run-1\",\"node_id\":\"node.a\"}");
    codec_doc_free(d.doc);
    decode_bad_member("{\"status\":\"idle\",\"run_id\":\"run-2\"}", "run_id");
    decode_bad_member("{\"status\":\"idle\",\"run_id\":null}", "run_id");
    decode_bad_member("{\"status\":\"idle\",\"run_id\":1}", "run_id");
    decode_bad_member("{\"status\":\"idle\",\"node_id\":\"node.b\"}", "node_id");
    decode_bad_member("{\"status\":\"idle\",\"node_id\":\"node.a \"}", "node_id");
}

Test(decode, server_fields_ignored)
{
    decoded d = decode_ok("{\"status\":\"idle\",\"updated_at\":5,\"seq\":\"s\","
                          "\"durable\":[1]}");
    cr_assert_eq(d.u.status, NS_IDLE);
    codec_doc_free(d.doc);
}

Test(decode, unknown_member)
{
    decode_bad("{\"status\":\"idle\",\"foo\":1}", 422, "unknown member \"foo\"");
    decode_bad("{\"foo\":1,\"status\":\"idle\"}", 422, "unknown member \"foo\"");
    decode_bad("{\"status\":\"idle\",\"Status\":\"idle\"}", 422,
               "unknown member \"Status\"");
}

static bool utf8_ok(const char *s)
{
    return utf8_check(s, strlen(s));
}

Test(decode, unknown_member_is_cut_at_a_whole_character)
{
    /* 'é' (2 bytes) at bytes 63-64 of the name: a cut at 64 bytes splits it. */
    for (int lead = 60; lead <= 66; lead++) {
        char body[256];
        int n = snprintf(body, sizeof body, "{\"status\":\"idle\",\"%.*s\xc3\xa9\xc3\xa9\":1}",
                         lead, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
        cr_assert_lt(n, (int)sizeof body);
        decoded d = decode(body);
        cr_assert_eq(d.status, 422);
        cr_assert(utf8_ok(d.detail), "lead %d: detail is not UTF-8: %s", lead, d.detail);
        cr_assert_not_null(strstr(d.detail, "unknown member \"aaaa"), "%s", d.detail);
    }
    /* A short name is shown whole. */
    decode_bad("{\"status\":\"idle\",\"caf\xc3\xa9\":1}", 422, "unknown member \"caf\xc3\xa9\"");
}

Test(decode, detail_fits_any_size_at_a_whole_character)
{
    const char *body = "{\"status\":\"idle\",\"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\":1}";
    for (size_t size = 1; size < 48; size++) {
        ns_update u;
        int status = 0;
        char detail[48];
        memset(detail, 'Z', sizeof detail);
        codec_doc *doc = codec_decode_update(body, strlen(body), RUN, NODE, MAX_ERR, &u,
                                             &status, detail, size);
        cr_assert_null(doc);
        cr_assert_eq(status, 422);
        cr_assert_lt(strlen(detail), size, "size %zu: overran", size);
        cr_assert(utf8_ok(detail), "size %zu: detail is not UTF-8: %s", size, detail);
    }
}

Test(decode, not_json_or_not_object)
{
    decode_bad("{\"status\":", 400, "invalid JSON at line 1 column");
    decode_bad("{\"status\" \"idle\"}", 400, "invalid JSON at line 1 column ");
    decode_bad("{\n  \"status\": \"idle\",\n  \"attempt\": }", 400,
               "invalid JSON at line 3 column ");
    decode_bad("nope", 400, "invalid JSON");
    decode_bad("{\"status\":\"idle\"} x", 400, "invalid JSON");
    decode_bad("   ", 400, "invalid JSON");
    decode_bad("[{\"status\":\"idle\"}]", 400, "object");
    decode_bad("\"status\"", 400, "object");
    decode_bad("null", 400, "object");
    /* duplicate keys make the body ambiguous */
    decode_bad("{\"status\":\"idle\",\"status\":\"failed\"}", 400, "invalid JSON");
    /* a NUL inside a string cannot become a C string; the detail names no library flag */
    decode_bad("{\"status\":\"idle\",\"last_error\":\"a\\u0000b\"}", 400,
               "a string holds \\u0000 (NUL)");
    /* invalid UTF-8 */
    decode_bad("{\"status\":\"idle\",\"last_error\":\"\xff\"}", 400, "invalid JSON");
}

Test(decode, empty_body)
{
    ns_update u;
    int status = 0;
    char detail[128];
    cr_assert_null(codec_decode_update("", 0, RUN, NODE, MAX_ERR, &u, &status,
                                       detail, sizeof detail));
    cr_assert_eq(status, 400);
    cr_assert_neq(detail[0], '\0');
    status = 0;
    cr_assert_null(codec_decode_update(NULL, 0, RUN, NODE, MAX_ERR, &u, &status,
                                       detail, sizeof detail));
    cr_assert_eq(status, 400);
}

Test(decode, body_need_not_be_nul_terminated)
{
    const char *text = "{\"status\":\"paused\"}GARBAGE";
    ns_update u;
    int status = 0;
    char detail[128];
    codec_doc *doc = codec_decode_update(text, strlen("{\"status\":\"paused\"}"),
                                         RUN, NODE, MAX_ERR, &u, &status,
                                         detail, sizeof detail);
    cr_assert_not_null(doc);
    cr_assert_eq(u.status, NS_PAUSED);
    codec_doc_free(doc);
}

Test(decode, no_detail_buffer_is_safe)
{
    ns_update u;
    int status = 0;
    const char *body = "{\"status\":\"bogus\"}";
    cr_assert_null(codec_decode_update(body, strlen(body), RUN, NODE, MAX_ERR,
                                       &u, &status, NULL, 0));
    cr_assert_eq(status, 422);
    codec_doc_free(NULL);
}

/* ---- encoding ---- */

/* Parses the buffer as JSON (the test fails if it does not parse). */
static json_t *parse_buf(buf *b)
{
    cr_assert_not(b->failed);
    json_error_t err;
    json_t *j = json_loadb(b->data, b->len, JSON_REJECT_DUPLICATES, &err);
    cr_assert_not_null(j, "not JSON (%s): %s", err.text, b->data);
    return j;
}

/* The object's keys in order must be exactly keys[0..n). */
static void assert_keys(json_t *obj, const char *const *keys, size_t n)
{
    cr_assert(json_is_object(obj));
    cr_assert_eq(json_object_size(obj), n);
    size_t i = 0;
    for (void *it = json_object_iter(obj); it != NULL;
         it = json_object_iter_next(obj, it), i++)
        cr_assert_str_eq(json_object_iter_key(it), keys[i]);
}

static const char *const row_keys[] = {
    "run_id", "node_id", "status", "attempt", "scheduled_at", "started_at",
    "completed_at", "failed_at", "suspended_at", "last_error", "retryable",
    "suspension_reason", "resume_state", "outputs", "updated_at", "seq",
    "durable",
};
#define ROW_KEYS (sizeof row_keys / sizeof *row_keys)

static const char *str_of(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    cr_assert(json_is_string(v), "%s is not a string", key);
    return json_string_value(v);
}

static json_int_t int_of(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    cr_assert(json_is_integer(v), "%s is not an integer", key);
    return json_integer_value(v);
}

static void assert_null(json_t *obj, const char *key)
{
    cr_assert(json_is_null(json_object_get(obj, key)), "%s is not null", key);
}

/* A draft row with every field filled, strings that need escaping. */
static ns_row full_row(void)
{
    ns_row r;
    memset(&r, 0, sizeof r);
    r.run_id = "run-\"1\"";
    r.node_id = "n\\ode\x01\xc3\xa9";
    r.status = NS_SUSPENDED;
    r.attempt = 7;
    for (int f = 0; f < NS_TS_COUNT; f++)
        r.ts[f] = NS_TS_NULL;
    r.ts[NS_TS_SCHEDULED] = INT64_C(1764174449123);
    r.ts[NS_TS_SUSPENDED] = INT64_C(1764174450000);
    r.last_error = "line1\nline2\t\"quoted\" \x1f \xe6\x97\xa5\xe6\x9c\xac";
    r.retryable = true;
    r.suspension_reason = "waiting for \\approval/";
    r.resume_state = "{\"cursor\":[1,2,{\"k\":null}],\"s\":\"\\u00e9\"}";
    r.outputs = "\"out\"";
    r.updated_at = INT64_C(1764174451001);
    r.seq = 42;
    return r;
}

static void assert_full_row(json_t *j, bool durable)
{
    assert_keys(j, row_keys, ROW_KEYS);
    cr_assert_str_eq(str_of(j, "run_id"), "run-\"1\"");
    cr_assert_str_eq(str_of(j, "node_id"), "n\\ode\x01\xc3\xa9");
    cr_assert_str_eq(str_of(j, "status"), "suspended");
    cr_assert_eq(int_of(j, "attempt"), 7);
    cr_assert_str_eq(str_of(j, "scheduled_at"), "2025-11-26T16:27:29.123Z");
    assert_null(j, "started_at");
    assert_null(j, "completed_at");
    assert_null(j, "failed_at");
    cr_assert_str_eq(str_of(j, "suspended_at"), "2025-11-26T16:27:30.000Z");
    cr_assert_str_eq(str_of(j, "last_error"),
                     "line1\nline2\t\"quoted\" \x1f \xe6\x97\xa5\xe6\x9c\xac");
    cr_assert(json_is_true(json_object_get(j, "retryable")));
    cr_assert_str_eq(str_of(j, "suspension_reason"), "waiting for \\approval/");
    json_t *rs = json_object_get(j, "resume_state");
    json_t *want = json_loads("{\"cursor\":[1,2,{\"k\":null}],\"s\":\"\xc3\xa9\"}",
                              0, NULL);
    cr_assert_not_null(want);
    cr_assert(json_equal(rs, want));
    json_decref(want);
    cr_assert_str_eq(str_of(j, "outputs"), "out");
    cr_assert_str_eq(str_of(j, "updated_at"), "2025-11-26T16:27:31.001Z");
    cr_assert_eq(int_of(j, "seq"), 42);
    cr_assert(json_is_boolean(json_object_get(j, "durable")));
    cr_assert_eq(json_is_true(json_object_get(j, "durable")), durable);
}

Test(encode, row_full_with_escaping)
{
    ns_row r = full_row();
    buf b;
    buf_init(&b);
    codec_row(&b, &r, true);
    json_t *j = parse_buf(&b);
    assert_full_row(j, true);
    json_decref(j);
    /* compact: no whitespace outside strings from the encoder itself */
    cr_assert_null(strstr(b.data, "\": "));
    cr_assert_null(strstr(b.data, ", \""));
    buf_free(&b);
}

Test(encode, row_with_nulls)
{
    ns_row r;
    memset(&r, 0, sizeof r);
    r.run_id = "r";
    r.node_id = "n";
    r.status = NS_IDLE;
    r.attempt = 1;
    for (int f = 0; f < NS_TS_COUNT; f++)
        r.ts[f] = NS_TS_NULL;
    r.updated_at = 0;
    r.seq = 1;
    buf b;
    buf_init(&b);
    codec_row(&b, &r, false);
    json_t *j = parse_buf(&b);
    assert_keys(j, row_keys, ROW_KEYS);
    cr_assert_str_eq(str_of(j, "status"), "idle");
    for (int f = 0; f < NS_TS_COUNT; f++)
        assert_null(j, model_ts_field_name((ns_ts_field)f));
    assert_null(j, "last_error");
    cr_assert(json_is_false(json_object_get(j, "retryable")));
    assert_null(j, "suspension_reason");
    assert_null(j, "resume_state");
    assert_null(j, "outputs");
    cr_assert_str_eq(str_of(j, "updated_at"), "1970-01-01T00:00:00.000Z");
    cr_assert(json_is_false(json_object_get(j, "durable")));
    json_decref(j);
    buf_free(&b);
}

Test(encode, problem_without_current)
{
    buf b;
    buf_init(&b);
    codec_problem(&b, 422, "invalid-update", "Invalid update",
                  "unknown member \"f\x01o\"", NULL, false);
    json_t *j = parse_buf(&b);
    static const char *const keys[] = { "type", "title", "status", "detail" };
    assert_keys(j, keys, 4);
    cr_assert_str_eq(str_of(j, "type"), "urn:nodestate:problem:invalid-update");
    cr_assert_str_eq(str_of(j, "title"), "Invalid update");
    cr_assert_eq(int_of(j, "status"), 422);
    /* A control byte is shown, escaped, rather than passed on. */
    cr_assert_str_eq(str_of(j, "detail"), "unknown member \"f\\x01o\"");
    json_decref(j);
    buf_free(&b);
}

Test(encode, problem_detail_is_always_utf8_and_bounded)
{
    /* Invalid UTF-8 and controls are escaped; a long detail is cut at a character. */
    char long_detail[3000];
    long_detail[0] = 'x';
    for (size_t i = 1; i + 2 < sizeof long_detail; i += 2)
        memcpy(long_detail + i, "\xc3\xa9", 2);
    long_detail[sizeof long_detail - 1] = '\0';
    static const char *const raw[] = { "G\xffT is not allowed", "a\xc3", "\xed\xa0\x80",
                                       "tab\there" };
    static const char *const shown[] = { "G\\xFFT is not allowed", "a\\xC3",
                                         "\\xED\\xA0\\x80", "tab\\x09here" };
    for (size_t i = 0; i < 5; i++) {
        buf b;
        buf_init(&b);
        const char *detail = i < 4 ? raw[i] : long_detail;
        codec_problem(&b, 400, "invalid-json", "Invalid JSON", detail, NULL, false);
        cr_assert_not(b.failed);
        cr_assert(utf8_ok(b.data), "case %zu: body is not UTF-8", i);
        json_t *j = parse_buf(&b);
        if (i < 4)
            cr_assert_str_eq(str_of(j, "detail"), shown[i]);
        else
            cr_assert_leq(strlen(str_of(j, "detail")), 1023);
        json_decref(j);
        buf_free(&b);
    }
}

Test(encode, problem_with_current)
{
    ns_row r = full_row();
    buf b;
    buf_init(&b);
    codec_problem(&b, 409, "stale-attempt", "Stale attempt",
                  "attempt 3 is older than the current attempt 7", &r, true);
    json_t *j = parse_buf(&b);
    static const char *const keys[] = { "type", "title", "status", "detail",
                                        "current" };
    assert_keys(j, keys, 5);
    cr_assert_str_eq(str_of(j, "type"), "urn:nodestate:problem:stale-attempt");
    cr_assert_eq(int_of(j, "status"), 409);
    assert_full_row(json_object_get(j, "current"), true);
    json_decref(j);
    buf_free(&b);
}

static ns_row page_row(const char *node, int64_t seq)
{
    ns_row r;
    memset(&r, 0, sizeof r);
    r.run_id = "run-1";
    r.node_id = node;
    r.status = NS_RUNNING;
    r.attempt = 1;
    for (int f = 0; f < NS_TS_COUNT; f++)
        r.ts[f] = NS_TS_NULL;
    r.seq = seq;
    r.updated_at = INT64_C(1764174449123);
    return r;
}

Test(encode, page_with_more)
{
    ns_row r0 = page_row("a", 5), r1 = page_row("b\"q", 9), r2 = page_row("c", 10),
           r3 = page_row("d", 12);
    ns_row *rows[] = { &r0, &r1, &r2, &r3 };
    engine_page page = { .rows = rows, .count = 4, .more = true };
    buf b;
    buf_init(&b);
    /* Committed up to 9, handed out up to 11: 12 was written by another instance. */
    engine_durability d = { .durable_seq = 9, .last_seq = 11 };
    codec_page(&b, "run-1", &page, &d, 0);
    json_t *j = parse_buf(&b);
    static const char *const keys[] = { "run_id", "nodes", "next" };
    assert_keys(j, keys, 3);
    cr_assert_str_eq(str_of(j, "run_id"), "run-1");
    json_t *nodes = json_object_get(j, "nodes");
    cr_assert(json_is_array(nodes));
    cr_assert_eq(json_array_size(nodes), 4);
    cr_assert_str_eq(str_of(json_array_get(nodes, 1), "node_id"), "b\"q");
    /* durable exactly when seq <= durable_seq, or past the seqs handed out here */
    cr_assert(json_is_true(json_object_get(json_array_get(nodes, 0), "durable")));
    cr_assert(json_is_true(json_object_get(json_array_get(nodes, 1), "durable")));
    cr_assert(json_is_false(json_object_get(json_array_get(nodes, 2), "durable")));
    cr_assert(json_is_true(json_object_get(json_array_get(nodes, 3), "durable")));
    cr_assert_str_eq(str_of(j, "next"), "d");
    json_decref(j);
    buf_free(&b);
}

Test(encode, page_last_and_empty)
{
    ns_row r0 = page_row("a", 5);
    ns_row *rows[] = { &r0 };
    engine_page page = { .rows = rows, .count = 1, .more = false };
    buf b;
    buf_init(&b);
    engine_durability d = { .durable_seq = 0, .last_seq = 5 };
    codec_page(&b, "run-1", &page, &d, 0);
    json_t *j = parse_buf(&b);
    cr_assert_eq(json_array_size(json_object_get(j, "nodes")), 1);
    cr_assert(json_is_false(json_object_get(
        json_array_get(json_object_get(j, "nodes"), 0), "durable")));
    assert_null(j, "next");
    json_decref(j);
    buf_free(&b);

    engine_page empty = { .rows = NULL, .count = 0, .more = false };
    buf_init(&b);
    codec_page(&b, "run-1", &empty, &d, 0);
    cr_assert_str_eq(b.data, "{\"run_id\":\"run-1\",\"nodes\":[],\"next\":null}");
    buf_free(&b);
}

Test(encode, summary)
{
    engine_summary s = { .nodes = 6, .counts = { 0, 1, 2, 0, 0, 3, 0 },
                         .last_seq = 77, .updated_at = INT64_C(1764174449123) };
    buf b;
    buf_init(&b);
    codec_summary(&b, "run-\x02", &s);
    json_t *j = parse_buf(&b);
    static const char *const keys[] = { "run_id", "nodes", "counts", "last_seq",
                                        "updated_at" };
    assert_keys(j, keys, 5);
    cr_assert_str_eq(str_of(j, "run_id"), "run-\x02");
    cr_assert_eq(int_of(j, "nodes"), 6);
    static const char *const statuses[] = { "idle", "scheduled", "running",
                                            "paused", "suspended", "completed",
                                            "failed" };
    json_t *counts = json_object_get(j, "counts");
    assert_keys(counts, statuses, 7);
    for (int i = 0; i < 7; i++)
        cr_assert_eq(int_of(counts, statuses[i]), (json_int_t)s.counts[i]);
    cr_assert_eq(int_of(j, "last_seq"), 77);
    cr_assert_str_eq(str_of(j, "updated_at"), "2025-11-26T16:27:29.123Z");
    json_decref(j);
    buf_free(&b);

    engine_summary none = { 0 };
    buf_init(&b);
    codec_summary(&b, "r", &none);
    j = parse_buf(&b);
    cr_assert_eq(int_of(j, "nodes"), 0);
    assert_null(j, "updated_at");
    json_decref(j);
    buf_free(&b);
}

Test(encode, deleted)
{
    buf b;
    buf_init(&b);
    codec_deleted(&b, "run-9", 12, INT64_C(9007199254740992), true);
    json_t *j = parse_buf(&b);
    static const char *const keys[] = { "run_id", "deleted", "seq", "durable" };
    assert_keys(j, keys, 4);
    cr_assert_str_eq(str_of(j, "run_id"), "run-9");
    cr_assert_eq(int_of(j, "deleted"), 12);
    cr_assert_eq(int_of(j, "seq"), INT64_C(9007199254740992));
    cr_assert(json_is_true(json_object_get(j, "durable")));
    json_decref(j);
    buf_free(&b);
}

Test(encode, stats)
{
    static ns_stats s;   /* static: large, and zeroed before stats_init */
    stats_init(&s, 5000);
    s.start_ms = 1000000;
    atomic_store(&s.updates_queued, 11);
    atomic_store(&s.updates_processed, 10);
    atomic_store(&s.batches_written, 3);
    atomic_store(&s.errors, 1);
    atomic_store(&s.queue_depth, 1);
    atomic_store(&s.queue_bytes, 4242);
    atomic_store(&s.updates_coalesced, 4);
    atomic_store(&s.rows_written, 6);
    atomic_store(&s.runs_deleted, 2);
    atomic_store(&s.runs_expired, 3);
    atomic_store(&s.rejected[NS_REJECT_INVALID], 5);
    atomic_store(&s.rejected[NS_REJECT_STALE], 6);
    atomic_store(&s.rejected[NS_REJECT_ILLEGAL], 7);
    atomic_store(&s.rejected[NS_REJECT_QUEUE_FULL], 8);
    atomic_store(&s.updates_duplicate, 9);
    atomic_store(&s.cache_nodes, 100);
    atomic_store(&s.cache_runs, 4);
    atomic_store(&s.cache_bytes, 123456);
    atomic_store(&s.cache_loads, 2);
    atomic_store(&s.cache_evictions, 13);
    atomic_store(&s.cache_nodes_evicted, 15);
    atomic_store(&s.cache_run_loads, 16);
    atomic_store(&s.rows_isolated, 14);
    atomic_store(&s.last_seq, 12);
    atomic_store(&s.durable_seq, 11);
    atomic_store(&s.batch_requests, 15);
    atomic_store(&s.batch_request_updates, 16);
    atomic_store(&s.commit_seconds.count, 3);
    atomic_store(&s.commit_seconds.sum_micro, 1500000);
    atomic_store(&s.batch_updates.count, 3);
    atomic_store(&s.batch_updates.sum_micro, 10000000);
    atomic_store(&s.enqueue_to_commit_seconds.count, 10);
    atomic_store(&s.enqueue_to_commit_seconds.sum_micro, 2);
    atomic_store(&s.http_responses[100 - NS_HTTP_MIN], 1);  /* lowest code */
    atomic_store(&s.http_responses[202 - NS_HTTP_MIN], 7);
    atomic_store(&s.http_responses[409 - NS_HTTP_MIN], 3);
    atomic_store(&s.http_responses[599 - NS_HTTP_MIN], 2);  /* highest code */

    buf b;
    buf_init(&b);
    codec_stats(&b, &s, 1000000 + 61250);
    json_t *j = parse_buf(&b);
    static const char *const keys[] = {
        "updates_queued", "updates_processed", "batches_written", "errors",
        "queue_depth", "queue_capacity", "queue_bytes", "updates_coalesced",
        "rows_written", "runs_deleted", "runs_expired", "updates_rejected", "updates_duplicate", "cache_nodes",
        "cache_runs", "cache_bytes", "cache_loads", "cache_evictions", "cache_nodes_evicted",
        "cache_run_loads", "cache_invalidations", "rows_isolated",
        "store_conflicts", "checkpoint_failures", "wal_frames",
        "last_seq", "durable_seq", "batch_requests", "batch_request_updates",
        "watchers", "watch_events_sent", "watch_dropped",
        "uptime_seconds", "commit_seconds", "batch_updates", "enqueue_to_commit_seconds",
        "http_responses",
    };
    assert_keys(j, keys, sizeof keys / sizeof *keys);
    cr_assert_eq(int_of(j, "updates_queued"), 11);
    cr_assert_eq(int_of(j, "updates_processed"), 10);
    cr_assert_eq(int_of(j, "batches_written"), 3);
    cr_assert_eq(int_of(j, "errors"), 1);
    cr_assert_eq(int_of(j, "queue_depth"), 1);
    cr_assert_eq(int_of(j, "queue_capacity"), 5000);
    cr_assert_eq(int_of(j, "queue_bytes"), 4242);
    cr_assert_eq(int_of(j, "updates_coalesced"), 4);
    cr_assert_eq(int_of(j, "rows_written"), 6);
    cr_assert_eq(int_of(j, "runs_deleted"), 2);
    cr_assert_eq(int_of(j, "runs_expired"), 3);
    static const char *const reasons[] = { "invalid", "stale", "illegal",
                                           "queue_full" };
    json_t *rej = json_object_get(j, "updates_rejected");
    assert_keys(rej, reasons, 4);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(int_of(rej, reasons[i]), 5 + i);
    cr_assert_eq(int_of(j, "updates_duplicate"), 9);
    cr_assert_eq(int_of(j, "cache_nodes"), 100);
    cr_assert_eq(int_of(j, "cache_runs"), 4);
    cr_assert_eq(int_of(j, "cache_bytes"), 123456);
    cr_assert_eq(int_of(j, "cache_loads"), 2);
    cr_assert_eq(int_of(j, "cache_evictions"), 13);
    cr_assert_eq(int_of(j, "cache_nodes_evicted"), 15);
    cr_assert_eq(int_of(j, "cache_run_loads"), 16);
    cr_assert_eq(int_of(j, "rows_isolated"), 14);
    cr_assert_eq(int_of(j, "last_seq"), 12);
    cr_assert_eq(int_of(j, "durable_seq"), 11);
    cr_assert_eq(int_of(j, "batch_requests"), 15);
    cr_assert_eq(int_of(j, "batch_request_updates"), 16);
    json_t *up = json_object_get(j, "uptime_seconds");
    cr_assert(json_is_real(up));
    cr_assert_float_eq(json_real_value(up), 61.25, 1e-9);

    static const char *const hkeys[] = { "count", "sum" };
    json_t *h = json_object_get(j, "commit_seconds");
    assert_keys(h, hkeys, 2);
    cr_assert_eq(int_of(h, "count"), 3);
    cr_assert(json_is_real(json_object_get(h, "sum")));
    cr_assert_float_eq(json_real_value(json_object_get(h, "sum")), 1.5, 1e-9);
    h = json_object_get(j, "batch_updates");
    cr_assert_float_eq(json_number_value(json_object_get(h, "sum")), 10.0, 1e-9);
    h = json_object_get(j, "enqueue_to_commit_seconds");
    cr_assert_eq(int_of(h, "count"), 10);
    cr_assert_float_eq(json_number_value(json_object_get(h, "sum")), 0.000002, 1e-12);

    /* only the codes answered, ascending, each with its count */
    static const char *const codes[] = { "100", "202", "409", "599" };
    json_t *http = json_object_get(j, "http_responses");
    assert_keys(http, codes, 4);
    cr_assert_eq(int_of(http, "100"), 1);
    cr_assert_eq(int_of(http, "202"), 7);
    cr_assert_eq(int_of(http, "409"), 3);
    cr_assert_eq(int_of(http, "599"), 2);
    json_decref(j);

    /* a clock that stepped back never gives a negative uptime */
    buf_free(&b);
    buf_init(&b);
    codec_stats(&b, &s, 0);
    j = parse_buf(&b);
    cr_assert_float_eq(json_number_value(json_object_get(j, "uptime_seconds")),
                       0.0, 1e-12);
    json_decref(j);
    buf_free(&b);
}

Test(encode, stats_without_http_responses)
{
    static ns_stats s;
    stats_init(&s, 10);
    buf b;
    buf_init(&b);
    codec_stats(&b, &s, s.start_ms);
    json_t *j = parse_buf(&b);
    json_t *http = json_object_get(j, "http_responses");
    cr_assert(json_is_object(http), "http_responses missing or not an object");
    cr_assert_eq(json_object_size(http), 0);
    json_decref(j);
    buf_free(&b);
}

Test(decode, nul_byte_in_the_body_is_invalid_json)
{
    /* jansson stops reading a number at a NUL; the body must still be a 400, not a 500. */
    static const char body[] = "{\"status\":\"running\",\"outputs\":12\0}";
    ns_update u;
    int status = -1;
    char detail[256] = "";
    codec_doc *d = codec_decode_update(body, sizeof body - 1, RUN, NODE, MAX_ERR, &u,
                                       &status, detail, sizeof detail);
    cr_assert_null(d);
    cr_assert_eq(status, 400, "status %d: %s", status, detail);
    cr_assert_not_null(strstr(detail, "NUL"), "%s", detail);
}

/* ---- decoding a batch (POST /runs/{run_id}/nodes) ---- */

/* Decodes a batch that must be accepted (envelope), at most max items. */
static codec_batch *batch_ok(const char *body, size_t max)
{
    int status = -1;
    char detail[256] = "";
    codec_batch *b = codec_decode_batch(body, strlen(body), RUN, MAX_ERR, max, &status,
                                        detail, sizeof detail);
    cr_assert_not_null(b, "refused %s: %d %s", body, status, detail);
    return b;
}

static void batch_bad(const char *body, size_t max, int code, const char *want)
{
    int status = -1;
    char detail[256] = "";
    codec_batch *b = codec_decode_batch(body, strlen(body), RUN, MAX_ERR, max, &status,
                                        detail, sizeof detail);
    cr_assert_null(b, "accepted %s", body);
    cr_assert_eq(status, code, "%s: status %d, want %d (%s)", body, status, code, detail);
    cr_assert_not_null(strstr(detail, want), "%s: detail \"%s\" lacks \"%s\"", body, detail,
                       want);
}

/* body: prefix, then n copies of unit separated by commas, then suffix (malloc'd). */
static char *repeated(const char *prefix, const char *unit, size_t n, const char *suffix)
{
    size_t pl = strlen(prefix), ul = strlen(unit), sl = strlen(suffix);
    char *body = malloc(pl + n * (ul + 1) + sl + 1);
    cr_assert_not_null(body);
    char *p = body;
    memcpy(p, prefix, pl);
    p += pl;
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            *p++ = ',';
        memcpy(p, unit, ul);
        p += ul;
    }
    memcpy(p, suffix, sl + 1);
    return body;
}

/* The budget: 8 times the body, at least 64 MiB; the estimate of tiny values passes it. */
Test(decode_batch, the_tree_budget_and_a_body_of_tiny_values)
{
    cr_assert_eq(codec_tree_budget(0), CODEC_TREE_FLOOR);
    cr_assert_eq(codec_tree_budget(1 << 20), CODEC_TREE_FLOOR);
    cr_assert_eq(codec_tree_budget((size_t)16 << 20), (size_t)128 << 20);
    char *many = repeated("{\"updates\":[", "{}", 400000, "]}");
    cr_assert_gt(codec_tree_estimate(many, strlen(many)), codec_tree_budget(strlen(many)));
    free(many);
    char *few = repeated("{\"updates\":[", "{\"node_id\":\"n\",\"status\":\"idle\"}", 10000,
                         "]}");
    cr_assert_lt(codec_tree_estimate(few, strlen(few)), codec_tree_budget(strlen(few)),
                 "10,000 plain items fit");
    free(few);
}

/*
 * The estimate is not below what jansson takes for bodies of each kind of
 * value (counted through jansson's allocator hooks, each block with the
 * 16 bytes malloc keeps beside it), so the budget bounds the tree it
 * stands for.
 */
#define MALLOC_OVERHEAD 16
static size_t tree_live;
static void *tree_malloc(size_t n)
{
    size_t *p = malloc(n + sizeof(size_t) * 2);
    if (p == NULL)
        return NULL;
    p[0] = n + MALLOC_OVERHEAD;
    tree_live += p[0];
    return p + 2;
}
static void tree_free(void *q)
{
    if (q == NULL)
        return;
    size_t *p = (size_t *)q - 2;
    tree_live -= p[0];
    free(p);
}

Test(decode_batch, the_tree_estimate_is_not_below_jansson)
{
    static const char *const units[] = {
        "{}", "[]", "0", "-1.5e3", "\"x\"", "{\"a\":0}", "[1,2,3]", "true", "null",
        "{\"k\":\"a longer string value\",\"l\":[{}, []]}",
    };
    json_malloc_t old_m;
    json_free_t old_f;
    json_get_alloc_funcs(&old_m, &old_f);
    json_set_alloc_funcs(tree_malloc, tree_free);
    for (size_t u = 0; u < sizeof units / sizeof *units; u++) {
        char *body = repeated("[", units[u], 20000, "]");
        size_t before = tree_live;
        json_error_t err;
        json_t *tree = json_loadb(body, strlen(body), 0, &err);
        cr_assert_not_null(tree, "%s: %s", units[u], err.text);
        size_t took = tree_live - before;
        size_t est = codec_tree_estimate(body, strlen(body));
        json_decref(tree);
        cr_assert_geq(est, took, "%s: estimate %zu < %zu taken", units[u], est, took);
        free(body);
    }
    json_set_alloc_funcs(old_m, old_f);
}

Test(decode_batch, items_in_order_with_their_own_spans)
{
    /* Spacing differs between the items: each one's JSON members are read from its own text. */
    codec_batch *b = batch_ok("{ \"run_id\":\"" RUN "\", \"updates\" : [\n"
                              " {\"node_id\":\"a\",\"status\":\"scheduled\",\"attempt\":3},\n"
                              " {\"outputs\": { \"n\" : 1.10 },\"node_id\":\"b\",\"status\":\"completed\"},"
                              "{\"node_id\":\"c\",\"status\":\"running\",\"resume_state\":[1, \"x y\"]}"
                              " ] }", 10);
    cr_assert_eq(codec_batch_len(b), 3);
    const char *node, *why;
    const ns_update *u = codec_batch_item_at(b, 0, &node, &why);
    cr_assert_not_null(u, "%s", why);
    cr_assert_str_eq(node, "a");
    cr_assert_eq(u->status, NS_SCHEDULED);
    cr_assert(u->has_attempt);
    cr_assert_eq(u->attempt, 3);
    cr_assert_not(u->outputs.set);
    u = codec_batch_item_at(b, 1, &node, &why);
    cr_assert_str_eq(node, "b");
    cr_assert_eq(u->status, NS_COMPLETED);
    cr_assert_str_eq(u->outputs.value, "{\"n\":1.10}");
    cr_assert_not(u->has_attempt);
    u = codec_batch_item_at(b, 2, &node, &why);
    cr_assert_str_eq(node, "c");
    cr_assert_str_eq(u->resume_state.value, "[1,\"x y\"]");
    cr_assert_null(why);
    codec_batch_free(b);
}

Test(decode_batch, a_bad_item_is_refused_alone)
{
    codec_batch *b = batch_ok("{\"updates\":[{\"node_id\":\"a\",\"status\":\"running\"},"
                              "{\"status\":\"running\"},"
                              "{\"node_id\":\"bad id\",\"status\":\"running\"},"
                              "{\"node_id\":\"d\",\"status\":\"sleeping\"},"
                              "{\"node_id\":\"e\",\"status\":\"running\",\"colour\":1},"
                              "{\"node_id\":\"f\"},"
                              "[1],"
                              "{\"node_id\":\"g\",\"status\":\"idle\",\"run_id\":\"other\"},"
                              "{\"node_id\":\"h\",\"status\":\"idle\",\"attempt\":2.0},"
                              "{\"node_id\":\"i\",\"status\":\"idle\"}]}", 100);
    static const char *const want[] = {
        NULL, "member \"node_id\"", "member \"node_id\"", "member \"status\"",
        "unknown member \"colour\"", "missing member \"status\"", "JSON object",
        "member \"run_id\"", "member \"attempt\"", NULL,
    };
    cr_assert_eq(codec_batch_len(b), 10);
    for (size_t i = 0; i < 10; i++) {
        const char *node, *why;
        const ns_update *u = codec_batch_item_at(b, i, &node, &why);
        if (!want[i]) {
            cr_assert_not_null(u, "item %zu refused: %s", i, why);
            continue;
        }
        cr_assert_null(u, "item %zu accepted", i);
        cr_assert_not_null(strstr(why, want[i]), "item %zu: \"%s\" lacks \"%s\"", i, why, want[i]);
    }
    const char *node, *why;
    codec_batch_item_at(b, 1, &node, &why);
    cr_assert_null(node, "an item without node_id has none");
    codec_batch_item_at(b, 2, &node, &why);
    cr_assert_str_eq(node, "bad id", "the node_id as sent, for the result");
    codec_batch_free(b);
}

Test(decode_batch, a_bad_envelope_refuses_the_whole_request)
{
    batch_bad("", 10, 400, "empty body");
    batch_bad("[", 10, 400, "invalid JSON");
    batch_bad("[{\"node_id\":\"a\",\"status\":\"idle\"}]", 10, 400, "JSON object");
    batch_bad("{}", 10, 422, "member \"updates\"");
    batch_bad("{\"updates\":{}}", 10, 422, "member \"updates\"");
    batch_bad("{\"updates\":[]}", 10, 422, "at least one");
    batch_bad("{\"updates\":[{\"node_id\":\"a\",\"status\":\"idle\"}],\"x\":1}", 10, 422,
              "unknown member \"x\"");
    batch_bad("{\"run_id\":\"other\",\"updates\":[{\"node_id\":\"a\",\"status\":\"idle\"}]}", 10,
              422, "member \"run_id\"");
    batch_bad("{\"updates\":[{},{},{}]}", 2, 413, "3 items; at most 2");
    /* A member twice in the envelope; a syntax error in an item (beside a NUL in another). */
    batch_bad("{\"updates\":[{\"node_id\":\"a\",\"status\":\"idle\"}],\"updates\":[]}", 10,
              400, "appears twice");
    batch_bad("{\"updates\":[{\"node_id\":\"a\",\"last_error\":\"\\u0000\"},{\"node_id\":}]}", 10,
              400, "invalid JSON");
    batch_bad("{\"updates\":[{\"node_id\":\"a\",\"last_error\":\"\\u0000\"}],\"x\":1}", 10, 422,
              "unknown member \"x\"");
    /* Too many items is the same 413 with or without one jansson refuses. */
    batch_bad("{\"updates\":[{\"node_id\":\"a\",\"last_error\":\"\\u0000\"},{},{}]}", 2, 413,
              "3 items; at most 2");
    /* A NUL byte inside the body. */
    int status = -1;
    char detail[128];
    cr_assert_null(codec_decode_batch("{\"updates\":[]}\0", 15, RUN, MAX_ERR, 10, &status,
                                      detail, sizeof detail));
    cr_assert_eq(status, 400);
}

/*
 * Valid JSON that jansson refuses (a NUL in a string or a member name, a
 * member twice, a number beyond double, nesting past 2048) is the item's
 * fault: that item gets its 422, the others are read as usual.
 */
Test(decode_batch, what_jansson_refuses_in_an_item_is_that_items_422)
{
    static const char *const bad[] = {
        "{\"node_id\":\"x\",\"status\":\"failed\",\"last_error\":\"a\\u0000b\"}",
        "{\"node_id\":\"x\",\"status\":\"idle\",\"outputs\":{\"k\\u0000\":1}}",
        "{\"node_id\":\"x\",\"status\":\"idle\",\"status\":\"failed\"}",
        "{\"node_id\":\"x\",\"status\":\"idle\",\"outputs\":1e400}",
        NULL, /* nesting past 2048 levels, built below */
    };
    static const char *const want[] = {
        "a string holds \\u0000", "a member name holds \\u0000", "appears twice",
        "beyond the range", "deeper than 2048",
    };
    char deep[2 * 2100 + 128];
    int at = snprintf(deep, sizeof deep, "{\"node_id\":\"x\",\"status\":\"idle\",\"outputs\":");
    for (int i = 0; i < 2100; i++)
        deep[at++] = '[';
    for (int i = 0; i < 2100; i++)
        deep[at++] = ']';
    snprintf(deep + at, sizeof deep - (size_t)at, "}");
    for (size_t k = 0; k < sizeof want / sizeof *want; k++) {
        char body[sizeof deep + 256];
        snprintf(body, sizeof body,
                 "{\"updates\":[{\"node_id\":\"a\",\"status\":\"running\"},%s,"
                 "{\"node_id\":\"c\",\"status\":\"failed\",\"outputs\":{\"o\":[1.50]}}]}",
                 bad[k] != NULL ? bad[k] : deep);
        codec_batch *b = batch_ok(body, 10);
        cr_assert_eq(codec_batch_len(b), 3);
        const char *node, *why;
        const ns_update *u = codec_batch_item_at(b, 0, &node, &why);
        cr_assert_not_null(u, "case %zu: item 0 refused: %s", k, why);
        cr_assert_str_eq(node, "a");
        cr_assert_eq(u->status, NS_RUNNING);
        u = codec_batch_item_at(b, 1, &node, &why);
        cr_assert_null(u, "case %zu: the bad item was taken", k);
        cr_assert_not_null(node, "case %zu: the refused item's node_id not read", k);
        cr_assert_str_eq(node, "x", "case %zu", k);
        cr_assert_not_null(strstr(why, want[k]), "case %zu: \"%s\" lacks \"%s\"", k, why,
                           want[k]);
        cr_assert_null(strstr(why, "JSON_"), "case %zu: a library's flag in \"%s\"", k, why);
        u = codec_batch_item_at(b, 2, &node, &why);
        cr_assert_not_null(u, "case %zu: item 2 refused: %s", k, why);
        cr_assert_str_eq(node, "c");
        cr_assert_str_eq(u->outputs.value, "{\"o\":[1.50]}", "read from its own text");
        codec_batch_free(b);
    }
    /* A node_id not plainly there (escaped, invalid, not a string, nested) is not named. */
    static const char *const unnamed[] = {
        "{\"node_id\":\"\\u0078\",\"status\":\"idle\",\"a\":\"\\u0000\"}",
        "{\"node_id\":\"b c\",\"status\":\"idle\",\"a\":\"\\u0000\"}",
        "{\"node_id\":7,\"status\":\"idle\",\"a\":\"\\u0000\"}",
        "{\"status\":\"idle\",\"outputs\":{\"node_id\":\"x\"},\"a\":\"\\u0000\"}",
        "[\"node_id\",\"\\u0000\"]",
    };
    for (size_t k = 0; k < sizeof unnamed / sizeof *unnamed; k++) {
        char body[256];
        snprintf(body, sizeof body, "{\"updates\":[%s]}", unnamed[k]);
        codec_batch *b = batch_ok(body, 10);
        const char *node, *why;
        cr_assert_null(codec_batch_item_at(b, 0, &node, &why), "%s taken", body);
        cr_assert_null(node, "%s: node_id \"%s\"", body, node);
        codec_batch_free(b);
    }
}

Test(decode_batch, item_members_match_a_single_update)
{
    /* The same update as a batch item and as a single body decode alike. */
    static const char item[] = "\"status\":\"failed\",\"attempt\":2,\"last_error\":\"boom\","
                               "\"retryable\":true,\"failed_at\":\"2026-11-26T16:27:29.123Z\","
                               "\"suspension_reason\":null,\"force\":true,\"outputs\":{\"a\": [1]}";
    char single[512], batch[600];
    snprintf(single, sizeof single, "{%s}", item);
    snprintf(batch, sizeof batch, "{\"updates\":[{\"node_id\":\"" NODE "\",%s}]}", item);
    decoded d = decode_ok(single);
    codec_batch *b = batch_ok(batch, 1);
    const char *node, *why;
    const ns_update *u = codec_batch_item_at(b, 0, &node, &why);
    cr_assert_not_null(u, "%s", why);
    cr_assert_eq(u->status, d.u.status);
    cr_assert_eq(u->attempt, d.u.attempt);
    cr_assert_eq(u->ts_set, d.u.ts_set);
    cr_assert_eq(u->ts[NS_TS_FAILED], d.u.ts[NS_TS_FAILED]);
    cr_assert_str_eq(u->last_error.value, d.u.last_error.value);
    cr_assert_eq(u->retryable, d.u.retryable);
    cr_assert_eq(u->suspension_reason.set, d.u.suspension_reason.set);
    cr_assert_eq(u->force, d.u.force);
    cr_assert_str_eq(u->outputs.value, d.u.outputs.value);
    codec_doc_free(d.doc);
    codec_batch_free(b);
}

/* Whether two ns_text hold the same: both absent, both null, or the same text. */
static bool text_same(ns_text a, ns_text b)
{
    if (a.set != b.set || (a.value == NULL) != (b.value == NULL))
        return false;
    return a.value == NULL || strcmp(a.value, b.value) == 0;
}

static bool update_same(const ns_update *a, const ns_update *b)
{
    if (a->status != b->status || a->has_attempt != b->has_attempt ||
        (a->has_attempt && a->attempt != b->attempt) || a->ts_set != b->ts_set ||
        a->has_retryable != b->has_retryable || a->retryable != b->retryable ||
        a->force != b->force || !text_same(a->last_error, b->last_error) ||
        !text_same(a->suspension_reason, b->suspension_reason) ||
        !text_same(a->resume_state, b->resume_state) || !text_same(a->outputs, b->outputs))
        return false;
    for (int f = 0; f < NS_TS_COUNT; f++)
        if (a->ts[f] != b->ts[f])
            return false;
    return true;
}

/*
 * codec_decode_batch (with its fast path for plain {"node_id","status"}
 * items) gives exactly what codec_decode_batch_tree (jansson's tree for
 * every body) gives: the same refusal and detail, or the same items.
 */
static void batch_both(const char *body, size_t max)
{
    int s1 = -1, s2 = -1;
    char d1[256] = "x", d2[256] = "y";
    codec_batch *a = codec_decode_batch(body, strlen(body), RUN, MAX_ERR, max, &s1, d1,
                                        sizeof d1);
    codec_batch *b = codec_decode_batch_tree(body, strlen(body), RUN, MAX_ERR, max, &s2, d2,
                                             sizeof d2);
    cr_assert_eq(a == NULL, b == NULL, "%s: one decoder refused it: %d %s / %d %s", body, s1,
                 d1, s2, d2);
    cr_assert_str_eq(d1, d2, "%s", body);
    if (a == NULL) {
        cr_assert_eq(s1, s2, "%s", body);
        return;
    }
    cr_assert_eq(codec_batch_len(a), codec_batch_len(b), "%s", body);
    for (size_t i = 0; i < codec_batch_len(a); i++) {
        const char *n1, *n2, *w1, *w2;
        const ns_update *u1 = codec_batch_item_at(a, i, &n1, &w1);
        const ns_update *u2 = codec_batch_item_at(b, i, &n2, &w2);
        cr_assert_eq(u1 == NULL, u2 == NULL, "%s: item %zu", body, i);
        cr_assert_eq(n1 == NULL, n2 == NULL, "%s: item %zu", body, i);
        if (n1 != NULL)
            cr_assert_str_eq(n1, n2, "%s: item %zu", body, i);
        if (u1 == NULL)
            cr_assert_str_eq(w1, w2, "%s: item %zu", body, i);
        else
            cr_assert(update_same(u1, u2), "%s: item %zu", body, i);
    }
    codec_batch_free(a);
    codec_batch_free(b);
}

Test(decode_batch, the_fast_path_agrees_with_the_tree_decoder)
{
    static const char *const bodies[] = {
        /* what the fast path takes */
        "{\"updates\":[{\"node_id\":\"a\",\"status\":\"running\"}]}",
        " {\r\n\t\"updates\" : [ { \"status\" : \"idle\" , \"node_id\" : \"b.c_d~e:f-9\" } ,"
        "{\"node_id\":\"a\",\"status\":\"completed\"}, {\"node_id\":\"a\",\"status\":\"failed\"}"
        " ] } \n",
        /* what it leaves to the tree decoder */
        "{\"updates\":[{\"node_id\":\"a\\u0062\",\"status\":\"running\"}]}",
        "{\"updates\":[{\"node_id\":\"a\",\"status\":\"runn\\u0069ng\"}]}",
        "{\"updates\":[{\"node_\\u0069d\":\"a\",\"status\":\"running\"}]}",
        "{\"updates\":[{\"node_id\":\"\xc3\xa9\",\"status\":\"running\"}]}",
        "{\"updates\":[{\"node_id\":\"\xff\",\"status\":\"running\"}]}",
        "{\"updates\":[{\"node_id\":\"a b\",\"status\":\"running\"}]}",
        "{\"updates\":[{\"node_id\":\"\",\"status\":\"running\"}]}",
        "{\"updates\":[{\"node_id\":\"a\",\"status\":\"walking\"}]}",
        "{\"updates\":[{\"node_id\":\"a\",\"status\":null}]}",
        "{\"updates\":[{\"node_id\":7,\"status\":\"running\"}]}",
        "{\"updates\":[{\"node_id\":\"a\",\"node_id\":\"a\"}]}",
        "{\"updates\":[{\"status\":\"running\",\"status\":\"running\"}]}",
        "{\"updates\":[{\"node_id\":\"a\"}]}",
        "{\"updates\":[{\"status\":\"running\"}]}",
        "{\"updates\":[{}]}",
        "{\"updates\":[{\"node_id\":\"a\",\"status\":\"running\",\"attempt\":2}]}",
        "{\"updates\":[{\"node_id\":\"a\",\"status\":\"running\"}],\"run_id\":\"" RUN "\"}",
        "{\"run_id\":\"" RUN "\",\"updates\":[{\"node_id\":\"a\",\"status\":\"running\"}]}",
        "{\"updates\":[{\"node_id\":\"a\",\"status\":\"running\"}],\"updates\":[]}",
        "{\"updates\":[{\"node_id\":\"a\",\"status\":\"running\"}]}x",
        "{\"updates\":[{\"node_id\":\"a\",\"status\":\"running\"}]",
        "{\"updates\":[{\"node_id\":\"a\",\"status\":\"running\"},]}",
        "{\"updates\":[{\"node_id\":\"a\",\"status\":\"running\"}}",
        "{\"updates\":[{\"node_id\":\"a\",\"status\":\"running\"]}",
        "{\"updates\":[{\"node_id\":\"a\",\"status\":\"running}]}",
        "{\"updates\":[{\"node_id\":\"a\" \"status\":\"running\"}]}",
        "{\"updates\":[[\"node_id\",\"a\"]]}",
        "{\"updates\":[]}",
        "{\"updates\":{}}",
        "{\"updates\":[{\"node_id\":\"a\",\"status\":\"running\"}] , }",
        "{\"updates\" [{\"node_id\":\"a\",\"status\":\"running\"}]}",
        "{\"updates\"",
        "{\"updates\":[{\"node_id\":\"a\",\"status\":\"running\"},{\"node_id\":\"b\","
        "\"status\":\"running\"},{\"node_id\":\"c\",\"status\":\"running\"}]}",
        "[{\"updates\":[]}]",
        "",
        "{",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++)
        batch_both(bodies[i], 2);

    /* A node_id of the longest length taken, and one byte longer. */
    char body[512];
    char id[NS_ID_MAX + 2];
    memset(id, 'x', sizeof id - 1);
    id[sizeof id - 1] = '\0';
    snprintf(body, sizeof body, "{\"updates\":[{\"node_id\":\"%s\",\"status\":\"running\"}]}", id);
    batch_both(body, 2);
    id[NS_ID_MAX] = '\0';
    snprintf(body, sizeof body, "{\"updates\":[{\"node_id\":\"%s\",\"status\":\"running\"}]}", id);
    batch_both(body, 2);
    /* Every status name, and every printable ASCII byte as a node_id. */
    for (int st = 0; st < NS_STATUS_COUNT; st++) {
        snprintf(body, sizeof body, "{\"updates\":[{\"node_id\":\"n\",\"status\":\"%s\"}]}",
                 model_status_name((ns_status)st));
        batch_both(body, 2);
    }
    for (int c = 0x20; c < 0x7f; c++) {
        if (c == '"' || c == '\\')
            continue;
        snprintf(body, sizeof body, "{\"updates\":[{\"node_id\":\"%c\",\"status\":\"idle\"}]}",
                 c);
        batch_both(body, 2);
    }
}


/* ---- the row encoder against jansson ---- */

/* A small deterministic generator, so a failure names a reproducible row. */
static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/*
 * Random valid UTF-8 of up to max bytes: ASCII with quotes, backslashes and
 * every control byte, two-, three- and four-byte characters, U+2028, DEL.
 */
static void rng_text(uint64_t *s, char *out, size_t max)
{
    static const char *const pieces[] = {
        "a", "Z", "0", " ", "\"", "\\", "/", "\b", "\f", "\n", "\r", "\t", "\x01", "\x1f",
        "\x7f", "\xc3\xa9", "\xe2\x82\xac", "\xe2\x80\xa8", "\xf0\x9f\x98\x80", "{", "}",
        ":", ",", "null",
    };
    size_t len = 0, want = rng_next(s) % (max / 4 + 1);
    while (len < want) {
        const char *p = pieces[rng_next(s) % (sizeof pieces / sizeof pieces[0])];
        size_t n = strlen(p);
        if (len + n >= max)
            break;
        memcpy(out + len, p, n);
        len += n;
    }
    out[len] = '\0';
}

/* A random JSON value (depth-bounded) as jansson holds it. */
static json_t *rng_value(uint64_t *s, int depth, char *scratch, size_t max)
{
    switch (rng_next(s) % (depth > 0 ? 7 : 5)) {
    case 0: return json_null();
    case 1: return json_boolean(rng_next(s) & 1);
    case 2: return json_integer((json_int_t)(rng_next(s) % 2000001) - 1000000);
    case 3:
        rng_text(s, scratch, max);
        return json_string(scratch);
    case 4: return json_integer((json_int_t)rng_next(s));
    case 5: {
        json_t *a = json_array();
        for (int i = (int)(rng_next(s) % 4); i > 0; i--)
            json_array_append_new(a, rng_value(s, depth - 1, scratch, max));
        return a;
    }
    default: {
        json_t *o = json_object();
        for (int i = (int)(rng_next(s) % 4); i > 0; i--) {
            char key[32];
            snprintf(key, sizeof key, "k%d\xc3\xa9", i);
            json_object_set_new(o, key, rng_value(s, depth - 1, scratch, max));
        }
        return o;
    }
    }
}

/* jansson writes \u00XX escapes with upper-case hex, codec_row lower-case: same JSON. */
static void lower_u_escapes(char *p)
{
    for (; *p != '\0'; p++)
        if (p[0] == '\\' && p[1] == '\\')
            p++;
        else if (p[0] == '\\' && p[1] == 'u')
            for (int i = 2; i < 6 && p[i] != '\0'; i++)
                p[i] = (char)tolower((unsigned char)p[i]);
}

Test(encode, row_matches_jansson_byte_for_byte)
{
    uint64_t seed = 0x9e3779b97f4a7c15u;
    static char text[3][70000];
    char tsbuf[NS_TS_BUF];

    for (int n = 0; n < 3000; n++) {
        uint64_t at = seed;
        ns_row r;
        memset(&r, 0, sizeof r);
        r.run_id = n % 2 ? "run-1" : "R.~:-_9";
        r.node_id = n % 3 ? "node.a" : "n";
        r.status = (ns_status)(rng_next(&seed) % NS_STATUS_COUNT);
        r.attempt = (int64_t)(rng_next(&seed) % 1000) + 1;
        if (n % 50 == 0)
            r.attempt = INT64_MAX;
        for (int t = 0; t < NS_TS_COUNT; t++)
            r.ts[t] = rng_next(&seed) % 3 == 0 ? NS_TS_NULL
                                               : (int64_t)(rng_next(&seed) % 4102444800000u);
        /* Now and then a big text (tens of KiB), else a short one. */
        size_t big = n % 97 == 0 ? sizeof text[0] : 64;
        rng_text(&seed, text[0], big);
        r.last_error = rng_next(&seed) % 3 == 0 ? NULL : text[0];
        rng_text(&seed, text[1], 64);
        r.suspension_reason = rng_next(&seed) % 2 ? NULL : text[1];
        r.retryable = rng_next(&seed) & 1;
        json_t *rs = rng_next(&seed) % 3 == 0 ? NULL : rng_value(&seed, 3, text[2], 48);
        json_t *out = rng_next(&seed) % 3 == 0 ? NULL : rng_value(&seed, 4, text[2], 48);
        /* Stored JSON is compact text, as jansson writes it. */
        char *rs_text = rs ? json_dumps(rs, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER)
                           : NULL;
        char *out_text = out ? json_dumps(out, JSON_COMPACT | JSON_ENCODE_ANY |
                                                   JSON_PRESERVE_ORDER)
                             : NULL;
        if (rs_text)
            lower_u_escapes(rs_text);
        if (out_text)
            lower_u_escapes(out_text);
        r.resume_state = rs_text;
        r.outputs = out_text;
        r.updated_at = (int64_t)(rng_next(&seed) % 4102444800000u);
        r.seq = (int64_t)(rng_next(&seed) >> 1);
        bool durable = rng_next(&seed) & 1;

        /* What jansson writes for the same row, fields in the documented order. */
        json_t *want = json_object();
#define WANT_TS(key, ms)                                                                    \
    do {                                                                                    \
        if ((ms) == NS_TS_NULL) {                                                           \
            json_object_set_new(want, key, json_null());                                    \
        } else {                                                                            \
            model_ts_format((ms), tsbuf);                                                   \
            json_object_set_new(want, key, json_string(tsbuf));                             \
        }                                                                                   \
    } while (0)
        json_object_set_new(want, "run_id", json_string(r.run_id));
        json_object_set_new(want, "node_id", json_string(r.node_id));
        json_object_set_new(want, "status", json_string(model_status_name(r.status)));
        json_object_set_new(want, "attempt", json_integer(r.attempt));
        WANT_TS("scheduled_at", r.ts[NS_TS_SCHEDULED]);
        WANT_TS("started_at", r.ts[NS_TS_STARTED]);
        WANT_TS("completed_at", r.ts[NS_TS_COMPLETED]);
        WANT_TS("failed_at", r.ts[NS_TS_FAILED]);
        WANT_TS("suspended_at", r.ts[NS_TS_SUSPENDED]);
        json_object_set_new(want, "last_error",
                            r.last_error ? json_string(r.last_error) : json_null());
        json_object_set_new(want, "retryable", json_boolean(r.retryable));
        json_object_set_new(want, "suspension_reason",
                            r.suspension_reason ? json_string(r.suspension_reason)
                                                : json_null());
        json_object_set_new(want, "resume_state", rs ? rs : json_null());
        json_object_set_new(want, "outputs", out ? out : json_null());
        WANT_TS("updated_at", r.updated_at);
        json_object_set_new(want, "seq", json_integer(r.seq));
        json_object_set_new(want, "durable", json_boolean(durable));
#undef WANT_TS
        char *want_text = json_dumps(want, JSON_COMPACT | JSON_PRESERVE_ORDER);
        cr_assert_not_null(want_text);
        lower_u_escapes(want_text);

        buf b;
        buf_init(&b);
        codec_row(&b, &r, durable);
        cr_assert_not(b.failed);
        size_t at_byte = 0;
        while (b.data[at_byte] != '\0' && b.data[at_byte] == want_text[at_byte])
            at_byte++;
        cr_assert_str_eq(b.data, want_text,
                         "row %d (generator state %llu) differs at byte %zu:\n"
                         " codec_row: %.80s\n jansson:   %.80s", n, (unsigned long long)at,
                         at_byte, b.data + at_byte, want_text + at_byte);
        buf_free(&b);
        free(want_text);
        free(rs_text);
        free(out_text);
        json_decref(want);
    }
}
