/*
 * test_store_expire: the backend-neutral judging of retention's pages
 * (server/store/store_expire.c), fed rows by hand, with a recheck that
 * answers as told: no database needed. test_retention.c (SQLite) and
 * test_pg_store.c (PostgreSQL) run it behind real pages.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "store_expire.h"

/* 2026-11-26T16:27:29.123Z */
#define T0 INT64_C(1795710449123)
#define OLD "2026-11-26T16:27:29.000Z"
#define NEW "2026-11-26T16:27:29.123Z"

typedef struct probe {
    char handed[256];
    int rechecks;
    int recheck_answer;     /* 1 still expired, 0 kept, -1 error */
    char rechecked[64];
} probe;

static int recheck(void *backend, const char *run_id, const char *cutoff)
{
    probe *p = backend;
    cr_assert_str_eq(cutoff, NEW, "the cutoff in updated_at's form");
    p->rechecks++;
    snprintf(p->rechecked, sizeof p->rechecked, "%s", run_id);
    return p->recheck_answer;
}

/* Notes "run@max_seq". */
static int hand(void *ctx, const char *run_id, int64_t max_seq)
{
    probe *p = ctx;
    size_t len = strlen(p->handed);
    snprintf(p->handed + len, sizeof p->handed - len, "%s%s@%lld", len ? "," : "", run_id,
             (long long)max_seq);
    return 0;
}

/* Feeds a row; each gets the next seq of this counter (rows of a run need not rise). */
static int64_t next_seq;

static void feed(store_expiry_walk *w, const char *run, const char *node, const char *at,
                 const char *status)
{
    cr_assert_eq(store_expiry_row(w, run, node, at, status, ++next_seq), 0);
}

Test(store_expire, runs_are_judged_as_their_rows_go_by)
{
    probe p = { .recheck_answer = 1 };
    store_expiry_cursor c = { .expired_so_far = false };
    store_expiry_walk w;
    next_seq = 0;
    store_expiry_begin(&w, &c, T0, recheck, &p, hand, &p);
    feed(&w, "a", "1", OLD, "completed");
    feed(&w, "a", "2", OLD, "failed");
    feed(&w, "b", "1", OLD, "running");
    feed(&w, "c", "1", NEW, "completed");       /* at the cutoff: not older */
    feed(&w, "d", "1", NULL, "completed");      /* cannot be judged: kept */
    feed(&w, "e", "1", OLD, "no-such-status");  /* another build's row: kept */
    feed(&w, "f", "1", OLD, "completed");
    cr_assert_eq(store_expiry_row(&w, NULL, "x", OLD, "completed", 99), 0,
                 "a row without id is skipped");
    cr_assert_eq(store_expiry_end(&w, true), 7);
    cr_assert_str_eq(p.handed, "a@2,f@7", "each with the highest seq of its rows");
    cr_assert_eq(p.rechecks, 0, "nothing spanned a page");
    cr_assert_str_eq(c.run_id, "", "the end of the table starts the sweep over");
}

Test(store_expire, a_run_carried_over_is_rechecked_before_it_is_handed)
{
    probe p = { .recheck_answer = 0 };
    store_expiry_cursor c = { .expired_so_far = false };
    store_expiry_walk w;
    store_expiry_begin(&w, &c, T0, recheck, &p, hand, &p);
    feed(&w, "a", "1", OLD, "completed");
    cr_assert_eq(store_expiry_end(&w, false), 1);
    cr_assert(c.spans);
    cr_assert_str_eq(c.node_id, "1");

    store_expiry_begin(&w, &c, T0, recheck, &p, hand, &p);
    feed(&w, "a", "2", OLD, "completed");
    feed(&w, "b", "1", OLD, "completed");
    cr_assert_eq(p.rechecks, 1);
    cr_assert_str_eq(p.rechecked, "a");
    cr_assert_str_eq(p.handed, "", "the recheck found a node that keeps it");
    /* A recheck that fails stops the page with an error. */
    p.recheck_answer = -1;
    cr_assert_eq(store_expiry_end(&w, false), 2);
    store_expiry_begin(&w, &c, T0, recheck, &p, hand, &p);
    cr_assert_eq(store_expiry_row(&w, "c", "1", OLD, "completed", 1), 1);
    cr_assert_eq(store_expiry_end(&w, true), -1);
    cr_assert_str_eq(c.run_id, "b", "the cursor stays on the run");
}

Test(store_expire, keeps_sql_names_the_terminal_statuses)
{
    char sql[256];
    cr_assert_eq(store_expiry_keeps_sql("$2", sql, sizeof sql), 0);
    cr_assert_str_eq(sql, "(status NOT IN ('completed','failed') OR updated_at IS NULL"
                          " OR updated_at >= $2)");
    cr_assert_eq(store_expiry_keeps_sql("?2", sql, 20), -1, "too small");
}
