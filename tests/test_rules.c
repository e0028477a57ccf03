/*
 * Unit tests for rules: the transition table of docs/design.md §3 for every
 * (current status, new status) pair within one attempt, plus a node never
 * seen; attempts as fencing tokens (stale, new try clearing the attempt's
 * own fields); server-side timestamp stamping; null clearing fields; and
 * force skipping the checks but not the duplicate detection.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <string.h>

#include "model.h"
#include "rules.h"

#define RUN "run-1"
#define NODE "node-a"
/* The server clock handed to rules_apply, and times the rows already hold. */
#define NOW INT64_C(1795710449123)
#define T_SCHED (NOW - 50000)
#define T_START (NOW - 40000)
#define T_DONE (NOW - 30000)
#define T_FAIL (NOW - 20000)
#define T_SUSP (NOW - 10000)
#define CUR_SEQ 41
#define CUR_UPDATED (NOW - 1000)

static const char *const names[NS_STATUS_COUNT] = {
    "idle", "scheduled", "running", "paused", "suspended", "completed", "failed",
};

static const char *const verdicts[] = { "APPLY", "DUPLICATE", "STALE", "ILLEGAL" };

/* An update that gives only a status. */
static ns_update upd(ns_status s)
{
    ns_update u;
    memset(&u, 0, sizeof u);
    u.status = s;
    for (int i = 0; i < NS_TS_COUNT; i++)
        u.ts[i] = NS_TS_NULL;
    return u;
}

static void upd_ts(ns_update *u, ns_ts_field f, int64_t v)
{
    u->ts_set |= 1u << f;
    u->ts[f] = v;
}

/* A packed current row in status s, attempt a, with every timestamp its history would hold. */
static ns_row *cur_row(ns_status s, int64_t attempt)
{
    ns_row d;
    memset(&d, 0, sizeof d);
    d.run_id = RUN;
    d.node_id = NODE;
    d.status = s;
    d.attempt = attempt;
    for (int i = 0; i < NS_TS_COUNT; i++)
        d.ts[i] = NS_TS_NULL;
    if (s != NS_IDLE)
        d.ts[NS_TS_SCHEDULED] = T_SCHED;
    if (model_status_rank(s) >= 2)
        d.ts[NS_TS_STARTED] = T_START;
    if (s == NS_SUSPENDED)
        d.ts[NS_TS_SUSPENDED] = T_SUSP;
    if (s == NS_COMPLETED)
        d.ts[NS_TS_COMPLETED] = T_DONE;
    if (s == NS_FAILED)
        d.ts[NS_TS_FAILED] = T_FAIL;
    d.updated_at = CUR_UPDATED;
    d.seq = CUR_SEQ;
    ns_row *r = model_row_copy(&d);
    cr_assert_not_null(r);
    return r;
}

/* A current row with every optional field filled. */
static ns_row *cur_full(ns_status s, int64_t attempt)
{
    ns_row *base = cur_row(s, attempt);
    ns_row d = *base;
    d.ts[NS_TS_SUSPENDED] = T_SUSP;
    d.ts[NS_TS_COMPLETED] = T_DONE;
    d.ts[NS_TS_FAILED] = T_FAIL;
    d.last_error = "disk full";
    d.retryable = true;
    d.suspension_reason = "needs approval";
    d.resume_state = "{\"step\":3}";
    d.outputs = "{\"rows\":10}";
    ns_row *r = model_row_copy(&d);
    cr_assert_not_null(r);
    model_row_unref(base);
    return r;
}

static rules_verdict run(const ns_row *cur, const ns_update *u, ns_row *draft)
{
    return rules_apply(cur, RUN, NODE, u, NOW, draft);
}

static void expect(rules_verdict got, rules_verdict want, const char *what)
{
    cr_assert_eq(got, want, "%s: got %s, want %s", what, verdicts[got], verdicts[want]);
}

/* ---- the full table ---- */

#define A RULES_APPLY
#define I RULES_ILLEGAL
#define D RULES_DUPLICATE

/* want[current][new], same attempt, the update giving only the status. */
static const rules_verdict table[NS_STATUS_COUNT][NS_STATUS_COUNT] = {
    /*              idle sched run paused susp compl failed */
    /* idle      */ { D, A, A, A, A, A, A },
    /* scheduled */ { I, D, A, A, A, A, A },
    /* running   */ { I, I, D, A, A, A, A },
    /* paused    */ { I, I, A, D, A, A, A },
    /* suspended */ { I, I, A, A, D, A, A },
    /* completed */ { I, I, I, I, I, D, I },
    /* failed    */ { I, I, I, I, I, I, D },
};

#undef A
#undef I
#undef D

static void check_pair(ns_status from, ns_status to, bool explicit_attempt)
{
    char what[96];
    snprintf(what, sizeof what, "%s -> %s (attempt %s)", names[from], names[to],
             explicit_attempt ? "given" : "absent");
    ns_row *cur = cur_full(from, 2);
    ns_update u = upd(to);
    if (explicit_attempt) {
        u.has_attempt = true;
        u.attempt = 2;
    }
    ns_row draft;
    rules_verdict v = run(cur, &u, &draft);
    expect(v, table[from][to], what);
    if (v == RULES_DUPLICATE) {
        cr_assert(model_row_same(cur, &draft), "%s: duplicate draft differs", what);
    } else if (v == RULES_APPLY) {
        cr_assert_eq(draft.status, to, "%s", what);
        cr_assert_eq(draft.attempt, 2, "%s", what);
        cr_assert_eq(draft.seq, CUR_SEQ, "%s: seq not copied from cur", what);
        cr_assert_eq(draft.updated_at, CUR_UPDATED, "%s", what);
        cr_assert_str_eq(draft.run_id, RUN);
        cr_assert_str_eq(draft.node_id, NODE);
        /* Same attempt: the attempt's fields carry over. */
        cr_assert_str_eq(draft.last_error, "disk full", "%s", what);
        cr_assert_str_eq(draft.outputs, "{\"rows\":10}", "%s", what);
        cr_assert_str_eq(draft.suspension_reason, "needs approval", "%s", what);
        cr_assert_str_eq(draft.resume_state, "{\"step\":3}", "%s", what);
        cr_assert(draft.retryable, "%s", what);
        /* Moving into a status stamps its timestamp; the others are kept. */
        int f = model_status_ts_field(to);
        for (int i = 0; i < NS_TS_COUNT; i++) {
            int64_t want = i == f ? NOW : cur->ts[i];
            cr_assert_eq(draft.ts[i], want, "%s: %s", what, model_ts_field_name((ns_ts_field)i));
        }
    }
    model_row_unref(cur);
}

Test(rules, every_pair_same_attempt_given)
{
    for (int from = 0; from < NS_STATUS_COUNT; from++)
        for (int to = 0; to < NS_STATUS_COUNT; to++)
            check_pair((ns_status)from, (ns_status)to, true);
}

Test(rules, every_pair_same_attempt_absent)
{
    for (int from = 0; from < NS_STATUS_COUNT; from++)
        for (int to = 0; to < NS_STATUS_COUNT; to++)
            check_pair((ns_status)from, (ns_status)to, false);
}

Test(rules, table_matches_the_rank_rules)
{
    /* The literal table above, cross-checked against the rules as docs/design.md words them. */
    for (int from = 0; from < NS_STATUS_COUNT; from++) {
        for (int to = 0; to < NS_STATUS_COUNT; to++) {
            rules_verdict want = RULES_APPLY;
            if (from == to)
                want = RULES_DUPLICATE;
            else if (model_status_rank((ns_status)to) < model_status_rank((ns_status)from) ||
                     model_status_terminal((ns_status)from))
                want = RULES_ILLEGAL;
            cr_assert_eq(table[from][to], want, "%s -> %s", names[from], names[to]);
        }
    }
}

Test(rules, no_current_row_always_applies)
{
    for (int to = 0; to < NS_STATUS_COUNT; to++) {
        ns_update u = upd((ns_status)to);
        ns_row draft;
        expect(run(NULL, &u, &draft), RULES_APPLY, names[to]);
        cr_assert_eq(draft.status, (ns_status)to);
        cr_assert_eq(draft.attempt, 1, "absent attempt on a new node is 1");
        cr_assert_eq(draft.seq, 0);
        cr_assert_eq(draft.updated_at, 0);
        cr_assert_str_eq(draft.run_id, RUN);
        cr_assert_str_eq(draft.node_id, NODE);
        cr_assert_null(draft.last_error);
        cr_assert_null(draft.suspension_reason);
        cr_assert_null(draft.resume_state);
        cr_assert_null(draft.outputs);
        cr_assert_not(draft.retryable);
        int f = model_status_ts_field((ns_status)to);
        for (int i = 0; i < NS_TS_COUNT; i++)
            cr_assert_eq(draft.ts[i], i == f ? NOW : NS_TS_NULL, "%s: %s", names[to],
                         model_ts_field_name((ns_ts_field)i));
    }
}

Test(rules, new_node_with_explicit_attempt_and_fields)
{
    ns_update u = upd(NS_FAILED);
    u.has_attempt = true;
    u.attempt = 5;
    u.last_error = (ns_text){ true, "oops" };
    u.has_retryable = true;
    u.retryable = true;
    upd_ts(&u, NS_TS_FAILED, T_FAIL);
    ns_row draft;
    expect(run(NULL, &u, &draft), RULES_APPLY, "new failed");
    cr_assert_eq(draft.attempt, 5);
    cr_assert_str_eq(draft.last_error, "oops");
    cr_assert(draft.retryable);
    cr_assert_eq(draft.ts[NS_TS_FAILED], T_FAIL, "a given timestamp is not re-stamped");
}

/* ---- attempts ---- */

Test(rules, lower_attempt_is_stale_whatever_the_status)
{
    for (int from = 0; from < NS_STATUS_COUNT; from++) {
        ns_row *cur = cur_full((ns_status)from, 3);
        for (int to = 0; to < NS_STATUS_COUNT; to++) {
            ns_update u = upd((ns_status)to);
            u.has_attempt = true;
            u.attempt = 2;
            ns_row draft;
            char what[64];
            snprintf(what, sizeof what, "%s@3 <- %s@2", names[from], names[to]);
            expect(run(cur, &u, &draft), RULES_STALE, what);
        }
        model_row_unref(cur);
    }
}

Test(rules, higher_attempt_starts_a_new_try)
{
    ns_row *cur = cur_full(NS_FAILED, 1);
    ns_update u = upd(NS_RUNNING);
    u.has_attempt = true;
    u.attempt = 2;
    ns_row draft;
    expect(run(cur, &u, &draft), RULES_APPLY, "failed@1 -> running@2");
    cr_assert_eq(draft.status, NS_RUNNING);
    cr_assert_eq(draft.attempt, 2);
    /* Kept: what a retry needs. */
    cr_assert_eq(draft.ts[NS_TS_SCHEDULED], T_SCHED, "scheduled_at not kept");
    cr_assert_str_eq(draft.resume_state, "{\"step\":3}", "resume_state not kept");
    /* Cleared: the old try's own fields; started_at is stamped anew. */
    cr_assert_eq(draft.ts[NS_TS_STARTED], NOW);
    cr_assert_eq(draft.ts[NS_TS_COMPLETED], NS_TS_NULL);
    cr_assert_eq(draft.ts[NS_TS_FAILED], NS_TS_NULL);
    cr_assert_eq(draft.ts[NS_TS_SUSPENDED], NS_TS_NULL);
    cr_assert_null(draft.last_error);
    cr_assert_null(draft.suspension_reason);
    cr_assert_null(draft.outputs);
    cr_assert_not(draft.retryable);
    cr_assert_eq(draft.seq, CUR_SEQ);
    model_row_unref(cur);
}

Test(rules, higher_attempt_same_status_restamps)
{
    ns_row *cur = cur_full(NS_RUNNING, 1);
    ns_update u = upd(NS_RUNNING);
    u.has_attempt = true;
    u.attempt = 2;
    ns_row draft;
    expect(run(cur, &u, &draft), RULES_APPLY, "running@1 -> running@2");
    cr_assert_eq(draft.ts[NS_TS_STARTED], NOW, "a new try moves into running again");
    model_row_unref(cur);
}

Test(rules, higher_attempt_may_go_to_a_lower_rank)
{
    for (int from = 0; from < NS_STATUS_COUNT; from++) {
        for (int to = 0; to < NS_STATUS_COUNT; to++) {
            ns_row *cur = cur_full((ns_status)from, 1);
            ns_update u = upd((ns_status)to);
            u.has_attempt = true;
            u.attempt = 7;
            ns_row draft;
            char what[64];
            snprintf(what, sizeof what, "%s@1 -> %s@7", names[from], names[to]);
            expect(run(cur, &u, &draft), RULES_APPLY, what);
            cr_assert_eq(draft.attempt, 7, "%s", what);
            cr_assert_eq(draft.status, (ns_status)to, "%s", what);
            model_row_unref(cur);
        }
    }
    /* completed@1 -> idle@2 keeps scheduled_at (idle stamps nothing). */
    ns_row *cur = cur_full(NS_COMPLETED, 1);
    ns_update u = upd(NS_IDLE);
    u.has_attempt = true;
    u.attempt = 2;
    ns_row draft;
    expect(run(cur, &u, &draft), RULES_APPLY, "completed@1 -> idle@2");
    cr_assert_eq(draft.ts[NS_TS_SCHEDULED], T_SCHED);
    cr_assert_eq(draft.ts[NS_TS_COMPLETED], NS_TS_NULL);
    /* completed@1 -> scheduled@2: moving into scheduled stamps it anew. */
    u = upd(NS_SCHEDULED);
    u.has_attempt = true;
    u.attempt = 2;
    expect(run(cur, &u, &draft), RULES_APPLY, "completed@1 -> scheduled@2");
    cr_assert_eq(draft.ts[NS_TS_SCHEDULED], NOW);
    model_row_unref(cur);
}

Test(rules, higher_attempt_takes_the_update_fields)
{
    ns_row *cur = cur_full(NS_FAILED, 1);
    ns_update u = upd(NS_FAILED);
    u.has_attempt = true;
    u.attempt = 2;
    u.last_error = (ns_text){ true, "again" };
    u.outputs = (ns_text){ true, "[]" };
    u.resume_state = (ns_text){ true, NULL };
    ns_row draft;
    expect(run(cur, &u, &draft), RULES_APPLY, "failed@1 -> failed@2");
    cr_assert_str_eq(draft.last_error, "again");
    cr_assert_str_eq(draft.outputs, "[]");
    cr_assert_null(draft.resume_state, "null clears even a kept field");
    cr_assert_eq(draft.ts[NS_TS_FAILED], NOW);
    model_row_unref(cur);
}

Test(rules, absent_attempt_means_the_current_one)
{
    ns_row *cur = cur_full(NS_RUNNING, 3);
    ns_update u = upd(NS_COMPLETED);
    ns_row draft;
    expect(run(cur, &u, &draft), RULES_APPLY, "running@3 -> completed");
    cr_assert_eq(draft.attempt, 3);
    /* Fields of attempt 3 carry over: not a new try. */
    cr_assert_str_eq(draft.outputs, "{\"rows\":10}");
    cr_assert_eq(draft.ts[NS_TS_STARTED], T_START);
    /* And a regression without attempt is illegal, not stale. */
    u = upd(NS_SCHEDULED);
    expect(run(cur, &u, &draft), RULES_ILLEGAL, "running@3 -> scheduled");
    model_row_unref(cur);
}

/* ---- stamping ---- */

Test(rules, running_without_started_at_is_stamped)
{
    ns_row *cur = cur_row(NS_SCHEDULED, 1);
    ns_update u = upd(NS_RUNNING);
    ns_row draft;
    expect(run(cur, &u, &draft), RULES_APPLY, "scheduled -> running");
    cr_assert_eq(draft.ts[NS_TS_STARTED], NOW);
    cr_assert_eq(draft.ts[NS_TS_SCHEDULED], T_SCHED);
    model_row_unref(cur);
}

Test(rules, running_with_started_at_keeps_it)
{
    ns_row *cur = cur_row(NS_SCHEDULED, 1);
    ns_update u = upd(NS_RUNNING);
    upd_ts(&u, NS_TS_STARTED, T_START - 5);
    ns_row draft;
    expect(run(cur, &u, &draft), RULES_APPLY, "scheduled -> running with started_at");
    cr_assert_eq(draft.ts[NS_TS_STARTED], T_START - 5);
    model_row_unref(cur);
}

Test(rules, same_status_again_does_not_restamp)
{
    ns_row *cur = cur_row(NS_RUNNING, 1);
    ns_update u = upd(NS_RUNNING);
    u.outputs = (ns_text){ true, "{\"progress\":50}" };
    ns_row draft;
    expect(run(cur, &u, &draft), RULES_APPLY, "running -> running with outputs");
    cr_assert_eq(draft.ts[NS_TS_STARTED], T_START, "re-stamped");
    cr_assert_str_eq(draft.outputs, "{\"progress\":50}");
    model_row_unref(cur);
}

Test(rules, explicit_null_clears_a_timestamp)
{
    ns_row *cur = cur_row(NS_SCHEDULED, 1);
    ns_update u = upd(NS_RUNNING);
    upd_ts(&u, NS_TS_STARTED, NS_TS_NULL);
    upd_ts(&u, NS_TS_SCHEDULED, NS_TS_NULL);
    ns_row draft;
    expect(run(cur, &u, &draft), RULES_APPLY, "scheduled -> running, started_at null");
    cr_assert_eq(draft.ts[NS_TS_STARTED], NS_TS_NULL, "null must not be stamped over");
    cr_assert_eq(draft.ts[NS_TS_SCHEDULED], NS_TS_NULL);
    model_row_unref(cur);

    /* Same status, clearing only a timestamp, is a change. */
    cur = cur_row(NS_RUNNING, 1);
    u = upd(NS_RUNNING);
    upd_ts(&u, NS_TS_STARTED, NS_TS_NULL);
    expect(run(cur, &u, &draft), RULES_APPLY, "running, started_at null");
    cr_assert_eq(draft.ts[NS_TS_STARTED], NS_TS_NULL);
    model_row_unref(cur);
}

Test(rules, statuses_without_a_timestamp_stamp_nothing)
{
    ns_row *cur = cur_row(NS_RUNNING, 1);
    ns_update u = upd(NS_PAUSED);
    ns_row draft;
    expect(run(cur, &u, &draft), RULES_APPLY, "running -> paused");
    for (int i = 0; i < NS_TS_COUNT; i++)
        cr_assert_eq(draft.ts[i], cur->ts[i]);
    model_row_unref(cur);
}

Test(rules, suspend_and_fail_stamp_their_fields)
{
    ns_row *cur = cur_row(NS_RUNNING, 1);
    ns_update u = upd(NS_SUSPENDED);
    u.suspension_reason = (ns_text){ true, "approval" };
    ns_row draft;
    expect(run(cur, &u, &draft), RULES_APPLY, "running -> suspended");
    cr_assert_eq(draft.ts[NS_TS_SUSPENDED], NOW);
    cr_assert_str_eq(draft.suspension_reason, "approval");
    u = upd(NS_FAILED);
    expect(run(cur, &u, &draft), RULES_APPLY, "running -> failed");
    cr_assert_eq(draft.ts[NS_TS_FAILED], NOW);
    cr_assert_eq(draft.ts[NS_TS_COMPLETED], NS_TS_NULL);
    model_row_unref(cur);
}

/* ---- fields ---- */

Test(rules, null_clears_text_fields)
{
    ns_row *cur = cur_full(NS_RUNNING, 1);
    ns_update u = upd(NS_RUNNING);
    u.last_error = (ns_text){ true, NULL };
    u.suspension_reason = (ns_text){ true, NULL };
    u.resume_state = (ns_text){ true, NULL };
    u.outputs = (ns_text){ true, NULL };
    ns_row draft;
    expect(run(cur, &u, &draft), RULES_APPLY, "clear all");
    cr_assert_null(draft.last_error);
    cr_assert_null(draft.suspension_reason);
    cr_assert_null(draft.resume_state);
    cr_assert_null(draft.outputs);
    cr_assert(draft.retryable, "absent retryable is unchanged");
    model_row_unref(cur);
}

Test(rules, absent_fields_are_unchanged_and_values_replace)
{
    ns_row *cur = cur_full(NS_RUNNING, 1);
    ns_update u = upd(NS_RUNNING);
    u.last_error = (ns_text){ true, "new error" };
    u.has_retryable = true;
    u.retryable = false;
    ns_row draft;
    expect(run(cur, &u, &draft), RULES_APPLY, "replace some");
    cr_assert_str_eq(draft.last_error, "new error");
    cr_assert_not(draft.retryable);
    cr_assert_str_eq(draft.suspension_reason, "needs approval");
    cr_assert_str_eq(draft.resume_state, "{\"step\":3}");
    cr_assert_str_eq(draft.outputs, "{\"rows\":10}");
    model_row_unref(cur);
}

Test(rules, giving_the_same_values_is_a_duplicate)
{
    ns_row *cur = cur_full(NS_RUNNING, 1);
    ns_update u = upd(NS_RUNNING);
    u.has_attempt = true;
    u.attempt = 1;
    u.last_error = (ns_text){ true, "disk full" };
    u.has_retryable = true;
    u.retryable = true;
    u.outputs = (ns_text){ true, "{\"rows\":10}" };
    upd_ts(&u, NS_TS_STARTED, T_START);
    ns_row draft;
    expect(run(cur, &u, &draft), RULES_DUPLICATE, "same values");
    model_row_unref(cur);
}

Test(rules, terminal_same_status_with_changes_is_illegal)
{
    ns_row *cur = cur_row(NS_COMPLETED, 1);
    ns_update u = upd(NS_COMPLETED);
    u.outputs = (ns_text){ true, "{\"late\":true}" };
    ns_row draft;
    expect(run(cur, &u, &draft), RULES_ILLEGAL, "completed, new outputs");
    u = upd(NS_COMPLETED);
    upd_ts(&u, NS_TS_COMPLETED, T_DONE + 1);
    expect(run(cur, &u, &draft), RULES_ILLEGAL, "completed, new completed_at");
    u = upd(NS_COMPLETED);
    upd_ts(&u, NS_TS_COMPLETED, T_DONE);
    expect(run(cur, &u, &draft), RULES_DUPLICATE, "completed, same completed_at");
    model_row_unref(cur);
}

/* ---- force ---- */

Test(rules, force_bypasses_regression)
{
    ns_row *cur = cur_full(NS_RUNNING, 1);
    ns_update u = upd(NS_SCHEDULED);
    u.force = true;
    ns_row draft;
    expect(run(cur, &u, &draft), RULES_APPLY, "force running -> scheduled");
    cr_assert_eq(draft.status, NS_SCHEDULED);
    cr_assert_eq(draft.attempt, 1);
    cr_assert_eq(draft.ts[NS_TS_SCHEDULED], NOW, "moving into scheduled stamps");
    model_row_unref(cur);
}

Test(rules, force_bypasses_terminal)
{
    ns_row *cur = cur_full(NS_COMPLETED, 1);
    ns_update u = upd(NS_FAILED);
    u.force = true;
    ns_row draft;
    expect(run(cur, &u, &draft), RULES_APPLY, "force completed -> failed");
    cr_assert_eq(draft.status, NS_FAILED);
    u = upd(NS_COMPLETED);
    u.force = true;
    u.outputs = (ns_text){ true, "{\"fixed\":true}" };
    expect(run(cur, &u, &draft), RULES_APPLY, "force completed, new outputs");
    cr_assert_str_eq(draft.outputs, "{\"fixed\":true}");
    u = upd(NS_IDLE);
    u.force = true;
    expect(run(cur, &u, &draft), RULES_APPLY, "force completed -> idle");
    model_row_unref(cur);
}

Test(rules, force_bypasses_stale)
{
    ns_row *cur = cur_full(NS_RUNNING, 4);
    ns_update u = upd(NS_RUNNING);
    u.force = true;
    u.has_attempt = true;
    u.attempt = 2;
    ns_row draft;
    expect(run(cur, &u, &draft), RULES_APPLY, "force running@4 <- running@2");
    cr_assert_eq(draft.attempt, 2);
    model_row_unref(cur);
}

Test(rules, duplicate_under_force)
{
    ns_row *cur = cur_full(NS_COMPLETED, 1);
    ns_update u = upd(NS_COMPLETED);
    u.force = true;
    ns_row draft;
    expect(run(cur, &u, &draft), RULES_DUPLICATE, "force, no change");
    model_row_unref(cur);
}
