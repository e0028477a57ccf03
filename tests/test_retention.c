/*
 * Unit tests for retention: the store's selection of candidates
 * (store_expired_runs: terminal and old only, a page of rows at a time
 * with a cursor, a run carried over a page checked again, a plan on the
 * primary key) and the engine's sweep on a real file
 * and the real writer thread (server/engine/retention.c): an expired run
 * goes through the writer and the cache forgets it; a run with a write
 * still queued is kept; a write accepted while the delete is queued is
 * kept and starts the run afresh.
 *
 * The clock retention judges by is the test's (engine_config.clock_ms): the
 * tests age every row by moving it forward, never by sleeping. Waits poll
 * a condition with a bound that only turns a hang into a failure.
 */
#include <criterion/criterion.h>

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#include "engine.h"
#include "model.h"
#include "store.h"
#include "store_fixture.h"

static void setup(void)
{
    sfx_setup("test_retention");
}

TestSuite(retention, .init = setup, .fini = sfx_teardown, .timeout = 120);

#define HANG_SECONDS 30
#define HOUR_MS INT64_C(3600000)

/* ---- the store's selection ---- */

/* A row of run/node with status st, last updated at `at` (ms). */
static ns_row row_at(const char *run, const char *node, ns_status st, int64_t at, int64_t seq)
{
    ns_row d = sfx_draft(run, node, st, seq);
    d.updated_at = at;
    return d;
}

static void write_all(store *s, ns_row *rows, size_t n)
{
    ns_row *ptrs[16];
    cr_assert_leq(n, 16);
    for (size_t i = 0; i < n; i++)
        ptrs[i] = &rows[i];
    store_batch b = { .rows = ptrs, .n_rows = n, .last_seq = (int64_t)n };
    cr_assert_eq(store_write(s, &b), 0, "store_write: %s", store_errmsg(s));
}


Test(retention, store_selects_runs_all_terminal_and_older_than_the_cutoff)
{
    store *s = sfx_open_store();
    int64_t cutoff = SFX_T0;
    ns_row rows[] = {
        row_at("a-done", "n1", NS_COMPLETED, cutoff - 10, 1),
        row_at("a-done", "n2", NS_FAILED, cutoff - 5000, 2),
        row_at("b-open", "n1", NS_COMPLETED, cutoff - 10, 3),
        row_at("b-open", "n2", NS_RUNNING, cutoff - 10, 4),
        row_at("c-recent", "n1", NS_COMPLETED, cutoff, 5),
        row_at("d-mixed", "n1", NS_COMPLETED, cutoff - HOUR_MS, 6),
        row_at("d-mixed", "n2", NS_COMPLETED, cutoff + 1, 7),
        row_at("e-failed", "n1", NS_FAILED, cutoff - 1, 8),
        row_at("f-paused", "n1", NS_PAUSED, cutoff - HOUR_MS, 9),
        row_at("g-idle", "n1", NS_IDLE, cutoff - HOUR_MS, 10),
    };
    write_all(s, rows, sizeof rows / sizeof rows[0]);

    store_expiry_cursor cursor = { .expired_so_far = false };
    sfx_found f = { .n = 0 };
    int examined = store_expired_runs(s, cutoff, 100, &cursor, sfx_note, &f);
    cr_assert_eq(examined, 10, "%s", store_errmsg(s));
    /* Only these: a node not terminal, or one updated at or after the cutoff, keeps a run. */
    cr_assert_str_eq(f.ids, "a-done,e-failed");
    cr_assert_str_eq(cursor.run_id, "", "a short page ends the sweep");
    store_close(s);
}

/*
 * Pages of 2 rows: a run is handed over once its last row has been seen,
 * which may be on the next page; the end of the table starts the sweep over.
 */
Test(retention, store_pages_walk_the_table_a_few_rows_at_a_time)
{
    store *s = sfx_open_store();
    ns_row rows[] = {
        row_at("r1", "a", NS_COMPLETED, SFX_T0, 1), row_at("r1", "b", NS_COMPLETED, SFX_T0, 2),
        row_at("r1", "c", NS_FAILED, SFX_T0, 3),    row_at("r2", "a", NS_RUNNING, SFX_T0, 4),
        row_at("r3", "a", NS_COMPLETED, SFX_T0, 5), row_at("r4", "a", NS_COMPLETED, SFX_T0, 6),
    };
    write_all(s, rows, 6);
    static const struct {
        int examined;
        const char *ids, *run, *node;
    } pages[] = {
        { 2, "", "r1", "b" },       /* r1 not seen whole yet */
        { 2, "r1", "r2", "a" },     /* r1 ends with c */
        { 2, "r3", "r4", "a" },     /* r2 runs; r3 done at r4's first row */
        { 0, "r4", "", "" },        /* the end: r4 is whole, the sweep starts over */
        { 2, "", "r1", "b" },
    };
    store_expiry_cursor c = { .expired_so_far = false };
    for (size_t i = 0; i < sizeof pages / sizeof pages[0]; i++) {
        sfx_found f = { .n = 0 };
        cr_assert_eq(store_expired_runs(s, SFX_T0 + 1, 2, &c, sfx_note, &f), pages[i].examined,
                     "page %zu: %s", i, store_errmsg(s));
        cr_assert_str_eq(f.ids, pages[i].ids, "page %zu", i);
        cr_assert_str_eq(c.run_id, pages[i].run, "page %zu", i);
        cr_assert_str_eq(c.node_id, pages[i].node, "page %zu", i);
    }
    /* A callback that stops gets its run again from the next page. */
    memset(&c, 0, sizeof c);
    sfx_found f = { .n = 0, .stop_after = 1 };
    cr_assert_eq(store_expired_runs(s, SFX_T0 + 1, 100, &c, sfx_note, &f), 5);
    cr_assert_str_eq(f.ids, "r1");
    f = (sfx_found){ .n = 0 };
    store_expired_runs(s, SFX_T0 + 1, 100, &c, sfx_note, &f);
    cr_assert_str_eq(f.ids, "r3,r4");
    store_close(s);
}

/*
 * Three expired rows of r1 and one of r2, and a first page of two rows:
 * r1 is carried over to the next page. The store, open.
 */
static store *carried_over(store_expiry_cursor *c, sfx_found *f)
{
    store *s = sfx_open_store();
    ns_row rows[] = {
        row_at("r1", "a", NS_COMPLETED, SFX_T0, 1), row_at("r1", "b", NS_COMPLETED, SFX_T0, 2),
        row_at("r1", "c", NS_COMPLETED, SFX_T0, 3), row_at("r2", "a", NS_COMPLETED, SFX_T0, 4),
    };
    write_all(s, rows, 4);
    cr_assert_eq(store_expired_runs(s, SFX_T0 + 1, 2, c, sfx_note, f), 2);
    cr_assert_str_eq(f->ids, "");
    return s;
}

/*
 * A run judged on an earlier page is checked again whole before it is
 * handed over: a row the sweep had passed may have changed in between.
 */
Test(retention, store_run_carried_over_a_page_is_checked_again)
{
    store_expiry_cursor c = { .expired_so_far = false };
    sfx_found f = { .n = 0 };
    store *s = carried_over(&c, &f);
    /* Between pages, a node the sweep has passed starts running again. */
    ns_row again = row_at("r1", "a", NS_RUNNING, SFX_T0 - 1, 5);
    write_all(s, &again, 1);
    cr_assert_eq(store_expired_runs(s, SFX_T0 + 1, 2, &c, sfx_note, &f), 2);
    cr_assert_str_eq(f.ids, "", "r1 has a running node: not handed over");
    cr_assert_eq(store_expired_runs(s, SFX_T0 + 1, 2, &c, sfx_note, &f), 0);
    cr_assert_str_eq(f.ids, "r2");
    store_close(s);
}

/*
 * A run carried over a page and deleted (DELETE /runs/{id}) before the
 * next: nothing of it is left to expire, so it is not handed over (its
 * expiry would count a run retention never removed).
 */
Test(retention, store_run_carried_over_a_page_and_deleted_meanwhile_is_not_handed_over)
{
    store_expiry_cursor c = { .expired_so_far = false };
    sfx_found f = { .n = 0 };
    store *s = carried_over(&c, &f);
    const char *const del[] = { "r1" };
    store_batch b = { .delete_runs = del, .n_deletes = 1, .last_seq = 5 };
    cr_assert_eq(store_write(s, &b), 0, "%s", store_errmsg(s));
    cr_assert_eq(store_expired_runs(s, SFX_T0 + 1, 2, &c, sfx_note, &f), 1);
    cr_assert_str_eq(f.ids, "r2", "r1 is gone already");

    /* Retention's delete of a run gone already expired nothing: counted so. */
    const bool expiring[] = { true, true };
    const char *const both[] = { "r1", "r2" };
    store_batch x = { .delete_runs = both, .n_deletes = 2, .expiring = expiring,
                      .expire_cutoff_ms = SFX_T0 + 1, .last_seq = 6 };
    cr_assert_eq(store_write(s, &x), 0, "%s", store_errmsg(s));
    cr_assert_eq(x.n_expire_kept, 1, "r1 had no row left to expire");
    store_close(s);
}

/* The plan of store_expired_sql on db, its steps' details joined by ';'. */
static void page_plan(sqlite3 *db, char *plan, size_t len)
{
    char sql[600];
    cr_assert_eq(store_expired_sql(sql + 19, sizeof sql - 19), 0);
    memcpy(sql, "EXPLAIN QUERY PLAN ", 19);
    sqlite3_stmt *st = NULL;
    cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
    plan[0] = '\0';
    while (sqlite3_step(st) == SQLITE_ROW) {
        size_t at = strlen(plan);
        snprintf(plan + at, len - at, "%s;", (const char *)sqlite3_column_text(st, 3));
    }
    sqlite3_finalize(st);
}

/*
 * The page reads the primary key in order from the cursor: no sort, no
 * full scan, no other index needed (the (run_id, status) index is dropped
 * here to show it). The key is an index beside a new file's rowid table,
 * and the table itself in a file made WITHOUT ROWID by earlier builds.
 */
Test(retention, store_page_plan_walks_the_primary_key)
{
    store *s = sfx_open_store();
    store_close(s);
    sqlite3 *db = NULL;
    char plan[1024];
    cr_assert_eq(sqlite3_open(sfx_db_path(), &db), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(db, "DROP INDEX IF EXISTS run_node_state_run_status", NULL, NULL,
                              NULL), SQLITE_OK);
    page_plan(db, plan, sizeof plan);
    cr_assert_str_eq(plan,
                     "SEARCH run_node_state USING INDEX sqlite_autoindex_run_node_state_1"
                     " ((run_id,node_id)>(?,?));",
                     "plan: %s", plan);

    cr_assert_eq(sqlite3_exec(db, "DROP TABLE run_node_state;"
                                  "CREATE TABLE run_node_state (run_id TEXT NOT NULL,"
                                  " node_id TEXT NOT NULL, status TEXT NOT NULL,"
                                  " updated_at TEXT NOT NULL, seq INTEGER NOT NULL,"
                                  " PRIMARY KEY (run_id, node_id)) WITHOUT ROWID",
                              NULL, NULL, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
    page_plan(db, plan, sizeof plan);
    sqlite3_close(db);
    cr_assert_str_eq(plan, "SEARCH run_node_state USING PRIMARY KEY ((run_id,node_id)>(?,?));",
                     "plan: %s", plan);
}

/* ---- the engine's sweep ---- */

/* The test's clock: the wall clock moved forward by `ahead` ms. */
static _Atomic int64_t ahead;

static int64_t test_clock(void *ctx)
{
    (void)ctx;
    return model_now_ms() + atomic_load(&ahead);
}

/* A batch interval of 60 s: only a flush (or retention's own) commits. */
/* The clock stays where `ahead` puts it. */
static engine *open_engine_with(double retention, size_t capacity, double interval)
{
    engine_config c = {
        .db_path = sfx_db_path(),
        .batch_size = 1000,
        .batch_interval = 60,
        .queue_capacity = capacity,
        .shutdown_timeout = 10,
        .retention = retention,
        .retention_interval = interval,
        .clock_ms = test_clock,
    };
    char err[512] = "";
    engine *e = engine_open(&c, err, sizeof err);
    cr_assert_not_null(e, "engine_open: %s", err);
    return e;
}

static engine *open_engine(double retention)
{
    atomic_store(&ahead, 0);
    return open_engine_with(retention, 1000, 0.01);
}

static void wait_u64(_Atomic uint64_t *c, uint64_t want, const char *what)
{
    for (int i = 0; i < HANG_SECONDS * 200 && atomic_load(c) < want; i++)
        sfx_sleep_ms(5);
    cr_assert_geq(atomic_load(c), want, "%s never reached %llu", what, (unsigned long long)want);
}

static void wait_i64(_Atomic int64_t *c, int64_t want, const char *what)
{
    for (int i = 0; i < HANG_SECONDS * 200 && atomic_load(c) < want; i++)
        sfx_sleep_ms(5);
    cr_assert_geq(atomic_load(c), want, "%s never reached %lld", what, (long long)want);
}

/* Flushes and waits until everything accepted so far is durable. */
static void settle(engine *e)
{
    ns_stats *st = engine_stats(e);
    int64_t last = atomic_load(&st->last_seq);
    engine_flush_soon(e);
    wait_i64(&st->durable_seq, last, "durable_seq");
}

static engine_result submit(engine *e, const char *run, const char *node, ns_status status)
{
    ns_update u = sfx_update(status, 0);
    ns_row *out = NULL;
    engine_result r = engine_submit(e, run, node, &u, &out);
    model_row_unref(out);
    return r;
}

static bool has(engine *e, const char *run, const char *node)
{
    engine_result r;
    ns_row *row = engine_get(e, run, node, &r);
    model_row_unref(row);
    cr_assert(r == ENGINE_ACCEPTED || r == ENGINE_NOT_FOUND, "engine_get: %d", r);
    return row != NULL;
}

/* The node ids stored for run, "a,b", read from the file itself. */
static void stored(const char *run, char *out, size_t len)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    out[0] = '\0';
    cr_assert_eq(sqlite3_open_v2(sfx_db_path(), &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_prepare_v2(db,
                                    "SELECT node_id FROM run_node_state WHERE run_id = ?1 "
                                    "ORDER BY node_id", -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_text(st, 1, run, -1, SQLITE_STATIC);
    while (sqlite3_step(st) == SQLITE_ROW) {
        size_t n = strlen(out);
        snprintf(out + n, len - n, "%s%s", n ? "," : "", (const char *)sqlite3_column_text(st, 0));
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
}

Test(retention, expired_run_goes_through_the_writer_and_the_cache_forgets_it)
{
    engine *e = open_engine(3600);
    ns_stats *st = engine_stats(e);
    submit(e, "done", "a", NS_COMPLETED);
    submit(e, "done", "b", NS_FAILED);
    submit(e, "open", "a", NS_COMPLETED);
    submit(e, "open", "b", NS_RUNNING);
    settle(e);
    cr_assert_eq(atomic_load(&st->runs_expired), 0, "nothing is an hour old yet");

    atomic_store(&ahead, 2 * HOUR_MS);
    wait_u64(&st->runs_expired, 1, "runs_expired");
    char ids[256];
    stored("done", ids, sizeof ids);
    cr_assert_str_eq(ids, "", "the expired run's rows are gone from the file");
    cr_assert_not(has(e, "done", "a"), "the cache forgot it");
    stored("open", ids, sizeof ids);
    cr_assert_str_eq(ids, "a,b", "a run with a running node stays");
    cr_assert(has(e, "open", "b"));
    cr_assert_eq(atomic_load(&st->runs_deleted), 0, "counted as expired, not deleted");

    /* A later write starts afresh: completed -> scheduled would be a 409 on the old node. */
    cr_assert_eq(submit(e, "done", "a", NS_SCHEDULED), ENGINE_ACCEPTED);
    engine_close(e);
}

Test(retention, off_deletes_nothing)
{
    engine *e = open_engine(0);
    ns_stats *st = engine_stats(e);
    submit(e, "done", "a", NS_COMPLETED);
    settle(e);
    atomic_store(&ahead, 1000 * HOUR_MS);
    /* A marker run committed after the jump: had a sweep run, it would have been by now. */
    submit(e, "later", "a", NS_RUNNING);
    settle(e);
    cr_assert(has(e, "done", "a"));
    cr_assert_eq(atomic_load(&st->runs_expired), 0);
    engine_close(e);
}

/*
 * The disk says "done" has expired, but a write of it is queued: judged
 * against the engine, it is kept, and the write with it. Deleting it on the
 * disk's word would drop the queued write (it is older than the delete).
 */
Test(retention, run_with_a_queued_write_is_kept)
{
    engine *e = open_engine(3600);
    ns_stats *st = engine_stats(e);
    submit(e, "done", "a", NS_COMPLETED);
    submit(e, "other", "a", NS_COMPLETED);
    settle(e);
    /* Queued, not written: the batch interval is 60 s and no flush asks for it. */
    cr_assert_eq(submit(e, "done", "b", NS_RUNNING), ENGINE_ACCEPTED);

    atomic_store(&ahead, 2 * HOUR_MS);
    /* One page sees both; "other" goes, and its delete flushes the queued write too. */
    wait_u64(&st->runs_expired, 1, "runs_expired");
    settle(e);
    char ids[256];
    stored("other", ids, sizeof ids);
    cr_assert_str_eq(ids, "");
    stored("done", ids, sizeof ids);
    cr_assert_str_eq(ids, "a,b", "the run with the queued write kept every node");
    cr_assert(has(e, "done", "a"));
    cr_assert(has(e, "done", "b"));
    cr_assert_eq(atomic_load(&st->runs_expired), 1);
    engine_close(e);
}

/*
 * A run a client's delete is queued for is the delete's: the page that
 * finds it on disk leaves it alone, so it is deleted once and counted once,
 * as a delete. ("other" expires in the same page, which is how the test
 * knows a page has looked at both.)
 */
Test(retention, run_with_a_queued_delete_is_left_to_it)
{
    engine *e = open_engine(3600);
    ns_stats *st = engine_stats(e);
    submit(e, "gone", "a", NS_COMPLETED);
    submit(e, "other", "a", NS_COMPLETED);
    settle(e);
    size_t deleted = 0;
    int64_t seq = 0;
    cr_assert_eq(engine_delete_run(e, "gone", &deleted, &seq), ENGINE_ACCEPTED);

    atomic_store(&ahead, 2 * HOUR_MS);
    wait_u64(&st->runs_expired, 1, "runs_expired");
    settle(e);
    char ids[256];
    stored("gone", ids, sizeof ids);
    cr_assert_str_eq(ids, "");
    cr_assert_eq(atomic_load(&st->runs_deleted), 1);
    cr_assert_eq(atomic_load(&st->runs_expired), 1, "\"gone\" was not deleted a second time");
    engine_close(e);
}

/*
 * The delete is queued (its commit held back by another connection's lock)
 * when a write of the run comes: the write lands on the emptied run, is
 * committed after the delete and kept.
 */
Test(retention, write_while_the_delete_is_queued_is_kept_and_starts_afresh)
{
    engine *e = open_engine(3600);
    ns_stats *st = engine_stats(e);
    submit(e, "done", "a", NS_COMPLETED);
    submit(e, "done", "b", NS_COMPLETED);
    settle(e);
    int64_t before = atomic_load(&st->last_seq);

    sqlite3 *lock = NULL;
    cr_assert_eq(sqlite3_open(sfx_db_path(), &lock), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(lock, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
    atomic_store(&ahead, 2 * HOUR_MS);
    /* The delete took a seq: it is queued, and cannot commit while the lock is held. */
    wait_i64(&st->last_seq, before + 1, "last_seq");
    cr_assert_lt(atomic_load(&st->durable_seq), before + 1);
    cr_assert_not(has(e, "done", "a"), "the cache forgot the run at once");
    /* Fresh: the old node's completed would refuse scheduled. */
    cr_assert_eq(submit(e, "done", "a", NS_SCHEDULED), ENGINE_ACCEPTED);
    cr_assert_eq(sqlite3_exec(lock, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(lock);

    settle(e);
    char ids[256];
    stored("done", ids, sizeof ids);
    cr_assert_str_eq(ids, "a", "the new write survived the delete queued before it");
    cr_assert(has(e, "done", "a"));
    cr_assert_not(has(e, "done", "b"));
    cr_assert_eq(atomic_load(&st->runs_expired), 1);
    engine_close(e);
}

/*
 * More expired runs than the queue has room for: those left over are
 * queued as room comes back (about a second later), not a whole
 * --retention-interval later (an hour here).
 */
Test(retention, runs_past_the_queues_room_expire_without_waiting_a_whole_interval)
{
    enum { RUNS = 12 };
    atomic_store(&ahead, 0);
    engine *e = open_engine_with(3600, 1000, 0.01);
    char run[16];
    for (int i = 0; i < RUNS; i++) {
        snprintf(run, sizeof run, "r%02d", i);
        submit(e, run, "a", NS_COMPLETED);
    }
    settle(e);
    engine_close(e);

    /* Expired from the first sweep, at start-up; the next full sweep would be an hour on. */
    atomic_store(&ahead, 2 * HOUR_MS);
    e = open_engine_with(3600, 4, 3600);
    ns_stats *st = engine_stats(e);
    wait_u64(&st->runs_expired, RUNS, "runs_expired");
    for (int i = 0; i < RUNS; i++) {
        char ids[64];
        snprintf(run, sizeof run, "r%02d", i);
        stored(run, ids, sizeof ids);
        cr_assert_str_eq(ids, "", "%s still stored", run);
    }
    engine_close(e);
}
