/*
 * Unit tests for model: status names, parsing, ranks and timestamp fields;
 * id validation at the length bounds and per character class; RFC 3339
 * formatting and parsing (offsets, fractions, calendar checks); packing a
 * draft into one counted allocation; and what model_row_same compares.
 */
#include <criterion/criterion.h>

#include <stdint.h>
#include <string.h>

#include "model.h"

/* 2026-11-26T16:27:29.123Z in ms since the epoch (date -u -d ... +%s, plus .123). */
#define T0 INT64_C(1795710449123)

/* ---- statuses ---- */

static const char *const names[NS_STATUS_COUNT] = {
    "idle", "scheduled", "running", "paused", "suspended", "completed", "failed",
};

Test(model, status_names_and_parse_round_trip)
{
    for (int i = 0; i < NS_STATUS_COUNT; i++) {
        cr_assert_str_eq(model_status_name((ns_status)i), names[i]);
        ns_status s = NS_STATUS_COUNT;
        cr_assert_eq(model_status_parse(names[i], &s), 0, "parse %s", names[i]);
        cr_assert_eq(s, (ns_status)i);
    }
    cr_assert_null(model_status_name(NS_STATUS_COUNT));
    cr_assert_null(model_status_name((ns_status)-1));
}

Test(model, status_parse_refuses_unknown_names)
{
    static const char *const bad[] = {
        "", "Running", "RUNNING", "run", "runningx", " running", "done", "cancelled",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ns_status s = NS_PAUSED;
        cr_assert_eq(model_status_parse(bad[i], &s), -1, "\"%s\" parsed", bad[i]);
    }
}

Test(model, status_rank_and_terminal)
{
    static const int ranks[NS_STATUS_COUNT] = { 0, 1, 2, 2, 2, 3, 3 };
    static const bool terminal[NS_STATUS_COUNT] = { false, false, false, false, false, true, true };
    for (int i = 0; i < NS_STATUS_COUNT; i++) {
        cr_assert_eq(model_status_rank((ns_status)i), ranks[i], "%s", names[i]);
        cr_assert_eq(model_status_terminal((ns_status)i), terminal[i], "%s", names[i]);
    }
    cr_assert_eq(model_status_rank(NS_STATUS_COUNT), -1);
    cr_assert_not(model_status_terminal(NS_STATUS_COUNT));
}

Test(model, status_ts_field)
{
    cr_assert_eq(model_status_ts_field(NS_IDLE), -1);
    cr_assert_eq(model_status_ts_field(NS_SCHEDULED), NS_TS_SCHEDULED);
    cr_assert_eq(model_status_ts_field(NS_RUNNING), NS_TS_STARTED);
    cr_assert_eq(model_status_ts_field(NS_PAUSED), -1);
    cr_assert_eq(model_status_ts_field(NS_SUSPENDED), NS_TS_SUSPENDED);
    cr_assert_eq(model_status_ts_field(NS_COMPLETED), NS_TS_COMPLETED);
    cr_assert_eq(model_status_ts_field(NS_FAILED), NS_TS_FAILED);

    static const char *const fields[NS_TS_COUNT] = {
        "scheduled_at", "started_at", "completed_at", "failed_at", "suspended_at",
    };
    for (int f = 0; f < NS_TS_COUNT; f++)
        cr_assert_str_eq(model_ts_field_name((ns_ts_field)f), fields[f]);
    cr_assert_null(model_ts_field_name(NS_TS_COUNT));
}

/* ---- ids ---- */

static bool valid(const char *s)
{
    return model_id_valid(s, strlen(s));
}

Test(model, id_length_bounds)
{
    char id[NS_ID_MAX + 2];
    memset(id, 'a', sizeof id);
    cr_assert_not(model_id_valid(id, 0), "empty id accepted");
    cr_assert(model_id_valid(id, 1));
    cr_assert(model_id_valid(id, NS_ID_MAX));
    cr_assert_not(model_id_valid(id, NS_ID_MAX + 1), "129-byte id accepted");
    cr_assert_eq(NS_ID_MAX, 128);
}

Test(model, id_every_allowed_class)
{
    cr_assert(valid("abcdefghijklmnopqrstuvwxyz"));
    cr_assert(valid("ABCDEFGHIJKLMNOPQRSTUVWXYZ"));
    cr_assert(valid("0123456789"));
    cr_assert(valid("."));
    cr_assert(valid("_"));
    cr_assert(valid("~"));
    cr_assert(valid(":"));
    cr_assert(valid("-"));
    cr_assert(valid("run-2026.11_26~a:b"));
}

Test(model, id_refuses_other_bytes)
{
    static const char *const bad[] = {
        "a/b", "a b", "a%20b", "caf\xc3\xa9", "\xff", "a\tb", "a+b", "a?b", "a#b",
        "a\"b", "a\\b", "a@b", "a,b",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cr_assert_not(valid(bad[i]), "\"%s\" accepted", bad[i]);
    /* Every byte outside the class, alone. */
    for (int c = 1; c < 256; c++) {
        bool allowed = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                       (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '~' ||
                       c == ':' || c == '-';
        char s[2] = { (char)c, '\0' };
        cr_assert_eq(model_id_valid(s, 1), allowed, "byte 0x%02x", c);
    }
    /* The length is what counts, not a NUL: an embedded NUL is not allowed. */
    cr_assert_not(model_id_valid("ab\0c", 4));
}

/* ---- timestamps ---- */

static int64_t parse_ok(const char *s)
{
    int64_t ms = 42;
    cr_assert_eq(model_ts_parse(s, &ms), 0, "\"%s\" refused", s);
    return ms;
}

static void format_is(int64_t ms, const char *want)
{
    char buf[NS_TS_BUF];
    memset(buf, 'x', sizeof buf);
    model_ts_format(ms, buf);
    cr_assert_str_eq(buf, want, "format(%lld)", (long long)ms);
}

Test(model, ts_format_and_parse_round_trip)
{
    format_is(0, "1970-01-01T00:00:00.000Z");
    cr_assert_eq(parse_ok("1970-01-01T00:00:00.000Z"), 0);
    cr_assert_eq(parse_ok("1970-01-01T00:00:00Z"), 0);

    format_is(T0, "2026-11-26T16:27:29.123Z");
    cr_assert_eq(parse_ok("2026-11-26T16:27:29.123Z"), T0);

    /* Leap day: 2024-02-29T00:00:00Z is 1709164800 s. */
    int64_t leap = INT64_C(1709164800000);
    cr_assert_eq(parse_ok("2024-02-29T00:00:00.000Z"), leap);
    format_is(leap, "2024-02-29T00:00:00.000Z");
    format_is(leap + 86400000, "2024-03-01T00:00:00.000Z");
    cr_assert_eq(parse_ok("2000-02-29T12:00:00Z"), INT64_C(951825600000));

    /* Just before the epoch. */
    format_is(-1, "1969-12-31T23:59:59.999Z");
    cr_assert_eq(parse_ok("1969-12-31T23:59:59.999Z"), -1);

    /* format(parse(x)) == x over a spread of values. */
    char buf[NS_TS_BUF];
    for (int64_t ms = 0; ms < INT64_C(4102444800000); ms += INT64_C(987654321987)) {
        model_ts_format(ms, buf);
        cr_assert_eq(parse_ok(buf), ms, "%s", buf);
    }
}

Test(model, ts_lowercase_t_and_z)
{
    cr_assert_eq(parse_ok("2026-11-26t16:27:29.123z"), T0);
}

Test(model, ts_offsets_normalised_to_utc)
{
    /* 18:27:29+02:00 and 10:57:29-05:30 are both 16:27:29Z. */
    cr_assert_eq(parse_ok("2026-11-26T18:27:29.123+02:00"), T0);
    cr_assert_eq(parse_ok("2026-11-26T10:57:29.123-05:30"), T0);
    cr_assert_eq(parse_ok("2026-11-26T16:27:29.123+00:00"), T0);
    cr_assert_eq(parse_ok("2026-11-26T16:27:29.123-00:00"), T0);
    /* An offset that crosses midnight moves the date too. */
    char buf[NS_TS_BUF];
    model_ts_format(parse_ok("2026-01-01T01:00:00+02:00"), buf);
    cr_assert_str_eq(buf, "2025-12-31T23:00:00.000Z");
}

Test(model, ts_fractions_truncated_to_ms)
{
    static const struct {
        const char *s;
        int64_t ms;
    } cases[] = {
        { "2026-11-26T16:27:29.1Z", 100 },
        { "2026-11-26T16:27:29.12Z", 120 },
        { "2026-11-26T16:27:29.123Z", 123 },
        { "2026-11-26T16:27:29.1239Z", 123 },
        { "2026-11-26T16:27:29.12399Z", 123 },
        { "2026-11-26T16:27:29.123999Z", 123 },
        { "2026-11-26T16:27:29.1239999Z", 123 },
        { "2026-11-26T16:27:29.12399999Z", 123 },
        { "2026-11-26T16:27:29.123999999Z", 123 },
        { "2026-11-26T16:27:29.999999999Z", 999 },
        { "2026-11-26T16:27:29.000000001Z", 0 },
    };
    int64_t base = T0 - 123;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        cr_assert_eq(parse_ok(cases[i].s), base + cases[i].ms, "%s", cases[i].s);
}

Test(model, ts_parse_refuses_invalid)
{
    static const char *const bad[] = {
        "",
        "2026-02-30T00:00:00Z",      /* no such day */
        "2025-02-29T00:00:00Z",      /* not a leap year */
        "1900-02-29T00:00:00Z",      /* century, not a leap year */
        "2026-13-01T00:00:00Z",
        "2026-00-10T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2026-11-00T00:00:00Z",
        "2026-11-26T25:00:00Z",
        "2026-11-26T24:00:00Z",
        "2026-11-26T16:60:00Z",
        "2026-11-26T16:27:29",       /* missing zone */
        "2026-11-26T16:27:29.123",   /* missing zone */
        "2026-11-26T16:27:29.123Zjunk",
        "2026-11-26T16:27:29.123Z ",
        "2026-11-26T16:27:29.Z",     /* a dot without digits */
        "2026-11-26 16:27:29Z",      /* space instead of T */
        "2026-11-26",
        "2026-11-26T16:27Z",
        "26-11-26T16:27:29Z",
        "2026-1-26T16:27:29Z",
        "2026-11-26T16:27:29+0200",
        "2026-11-26T16:27:29+02",
        "2026-11-26T16:27:29+24:00",
        "2026-11-26T16:27:29+02:60",
        "2026-11-26T16:27:29+02:00x",
        "now",
        "1795710449123",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int64_t ms = 42;
        cr_assert_eq(model_ts_parse(bad[i], &ms), -1, "\"%s\" parsed", bad[i]);
    }
}

Test(model, now_is_plausible)
{
    /* After this file was written (2026-01-01) and before 2100: a clock in ms, not s or us. */
    int64_t now = model_now_ms();
    cr_assert_gt(now, INT64_C(1700000000000));
    cr_assert_lt(now, INT64_C(4102444800000));
}

/* ---- rows ---- */

static ns_row draft_full(void)
{
    ns_row d;
    memset(&d, 0, sizeof d);
    d.run_id = "run-1";
    d.node_id = "node-a";
    d.status = NS_FAILED;
    d.attempt = 3;
    for (int i = 0; i < NS_TS_COUNT; i++)
        d.ts[i] = T0 + i;
    d.last_error = "boom";
    d.retryable = true;
    d.suspension_reason = "waiting for approval";
    d.resume_state = "{\"cursor\":7}";
    d.outputs = "[1,2,3]";
    d.updated_at = T0 + 100;
    d.seq = 77;
    return d;
}

static bool inside(const ns_row *row, const char *p, size_t extra)
{
    return p >= row->data && p + strlen(p) + 1 <= row->data + extra;
}

Test(model, row_copy_packs_strings)
{
    /* Borrowed strings on the stack, so the test notices a copy that keeps pointers. */
    char run[] = "run-1", node[] = "node-a", err[] = "boom", reason[] = "waiting for approval";
    char rs[] = "{\"cursor\":7}", out[] = "[1,2,3]";
    ns_row d = draft_full();
    d.run_id = run;
    d.node_id = node;
    d.last_error = err;
    d.suspension_reason = reason;
    d.resume_state = rs;
    d.outputs = out;
    size_t extra = sizeof run + sizeof node + sizeof err + sizeof reason + sizeof rs + sizeof out;

    ns_row *r = model_row_copy(&d);
    cr_assert_not_null(r);
    cr_assert_eq(atomic_load(&r->refs), 1);
    const char *strs[] = { r->run_id, r->node_id, r->last_error, r->suspension_reason,
                           r->resume_state, r->outputs };
    for (size_t i = 0; i < sizeof strs / sizeof *strs; i++)
        cr_assert(inside(r, strs[i], extra), "string %zu not packed into the row", i);
    /* Scribble over the originals: the row must not change. */
    memset(run, 'X', sizeof run - 1);
    memset(out, 'X', sizeof out - 1);
    cr_assert_str_eq(r->run_id, "run-1");
    cr_assert_str_eq(r->node_id, "node-a");
    cr_assert_str_eq(r->last_error, "boom");
    cr_assert_str_eq(r->suspension_reason, "waiting for approval");
    cr_assert_str_eq(r->resume_state, "{\"cursor\":7}");
    cr_assert_str_eq(r->outputs, "[1,2,3]");
    cr_assert_eq(r->status, NS_FAILED);
    cr_assert_eq(r->attempt, 3);
    for (int i = 0; i < NS_TS_COUNT; i++)
        cr_assert_eq(r->ts[i], T0 + i);
    cr_assert(r->retryable);
    cr_assert_eq(r->updated_at, T0 + 100);
    cr_assert_eq(r->seq, 77);

    /* Copying a packed row gives an independent packed row. */
    ns_row *r2 = model_row_copy(r);
    cr_assert_not_null(r2);
    cr_assert_eq(atomic_load(&r2->refs), 1);
    cr_assert(inside(r2, r2->outputs, extra));
    cr_assert(model_row_same(r, r2));
    model_row_unref(r);
    cr_assert_str_eq(r2->suspension_reason, "waiting for approval");
    model_row_unref(r2);
}

Test(model, row_copy_keeps_nulls)
{
    ns_row d = draft_full();
    d.last_error = NULL;
    d.suspension_reason = NULL;
    d.resume_state = NULL;
    d.outputs = NULL;
    d.ts[NS_TS_FAILED] = NS_TS_NULL;
    ns_row *r = model_row_copy(&d);
    cr_assert_not_null(r);
    cr_assert_null(r->last_error);
    cr_assert_null(r->suspension_reason);
    cr_assert_null(r->resume_state);
    cr_assert_null(r->outputs);
    cr_assert_eq(r->ts[NS_TS_FAILED], NS_TS_NULL);
    cr_assert_str_eq(r->run_id, "run-1");
    cr_assert_str_eq(r->node_id, "node-a");
    /* An empty string is not NULL. */
    d.last_error = "";
    ns_row *r2 = model_row_copy(&d);
    cr_assert_not_null(r2);
    cr_assert_not_null(r2->last_error);
    cr_assert_str_eq(r2->last_error, "");
    cr_assert_not(model_row_same(r, r2));
    model_row_unref(r);
    model_row_unref(r2);
}

Test(model, row_refcount)
{
    ns_row d = draft_full();
    ns_row *r = model_row_copy(&d);
    cr_assert_not_null(r);
    model_row_ref(r);
    model_row_ref(r);
    cr_assert_eq(atomic_load(&r->refs), 3);
    model_row_unref(r);
    cr_assert_eq(atomic_load(&r->refs), 2);
    model_row_unref(r);
    cr_assert_eq(atomic_load(&r->refs), 1);
    cr_assert_str_eq(r->node_id, "node-a"); /* still alive */
    model_row_unref(r);                     /* frees (ASan would see a leak or double free) */
    model_row_unref(NULL);                  /* a no-op */
}

Test(model, row_same_ignores_seq_and_updated_at)
{
    ns_row a = draft_full();
    ns_row b = draft_full();
    /* Equal strings at different addresses are the same. */
    char err[] = "boom";
    b.last_error = err;
    b.seq = 1000;
    b.updated_at = 5;
    atomic_init(&b.refs, 9);
    cr_assert(model_row_same(&a, &b));
}

Test(model, row_same_sees_every_state_field)
{
    ns_row a = draft_full();
    ns_row b;

#define DIFFERS(stmt)                                               \
    do {                                                            \
        b = draft_full();                                           \
        stmt;                                                       \
        cr_assert_not(model_row_same(&a, &b), "same after: " #stmt); \
        cr_assert_not(model_row_same(&b, &a), "same after: " #stmt); \
    } while (0)

    DIFFERS(b.run_id = "run-2");
    DIFFERS(b.node_id = "node-b");
    DIFFERS(b.status = NS_COMPLETED);
    DIFFERS(b.attempt = 4);
    for (int i = 0; i < NS_TS_COUNT; i++)
        DIFFERS(b.ts[i] = NS_TS_NULL);
    DIFFERS(b.last_error = NULL);
    DIFFERS(b.last_error = "bang");
    DIFFERS(b.retryable = false);
    DIFFERS(b.suspension_reason = NULL);
    DIFFERS(b.suspension_reason = "other");
    DIFFERS(b.resume_state = NULL);
    DIFFERS(b.resume_state = "{\"cursor\":8}");
    DIFFERS(b.outputs = NULL);
    DIFFERS(b.outputs = "[1,2]");
#undef DIFFERS
}

Test(model, ts_parse_refuses_utc_times_outside_four_digit_years)
{
    int64_t ms;
    cr_assert_eq(model_ts_parse("9999-12-31T23:30:00-01:00", &ms), -1, "year 10000 in UTC");
    cr_assert_eq(model_ts_parse("0000-01-01T00:30:00+01:00", &ms), -1, "year -1 in UTC");
    cr_assert_eq(model_ts_parse("9999-12-31T23:59:59.999Z", &ms), 0);
    char buf[NS_TS_BUF];
    model_ts_format(ms, buf);
    cr_assert_str_eq(buf, "9999-12-31T23:59:59.999Z");
    cr_assert_eq(model_ts_parse("0000-01-01T00:00:00Z", &ms), 0);
    model_ts_format(ms, buf);
    cr_assert_str_eq(buf, "0000-01-01T00:00:00.000Z");
}
