/*
 * Unit tests for engine_runs_changed: what the engine does when another
 * instance sharing its store commits to runs it caches. The other instance
 * is played by a second SQLite connection changing the file under the
 * engine; the real writer thread runs.
 *
 * Each test first shows the engine still answering from its cache after the
 * file changed (so the test could not pass without the invalidation), then
 * calls engine_runs_changed and checks the answer follows the file.
 * No assertion depends on timing: waits poll with a generous bound.
 */
#include <criterion/criterion.h>

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#include "store_fixture.h"
#include "engine.h"
#include "model.h"

static void setup(void)
{
    sfx_setup("test_engine_invalidate");
}

TestSuite(engine_invalidate, .init = setup, .fini = sfx_teardown, .timeout = 120);

#define HANG_SECONDS 30

/* Flushes and polls until everything accepted so far is durable. */
static void wait_all_durable(engine *e)
{
    int64_t want = atomic_load(&engine_stats(e)->last_seq);
    for (int i = 0; i < HANG_SECONDS * 200; i++) {
        engine_flush_soon(e);
        if (engine_durable_seq(e) >= want)
            return;
        sfx_sleep_ms(5);
    }
    cr_assert_fail("seq %lld not durable after %d s", (long long)want, HANG_SECONDS);
}

/* Another instance's commit: the stored row of run/node becomes `status` with a seq above ours. */
static void commit_elsewhere(const char *run, const char *node, const char *status)
{
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open_v2(sfx_db_path(), &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, HANG_SECONDS * 1000);
    char sql[512];
    snprintf(sql, sizeof sql,
             "UPDATE run_node_state SET status = '%s', seq = seq + 1000000 "
             "WHERE run_id = '%s' AND node_id = '%s'", status, run, node);
    char *msg = NULL;
    cr_assert_eq(sqlite3_exec(db, sql, NULL, NULL, &msg), SQLITE_OK, "%s", msg ? msg : "");
    cr_assert_eq(sqlite3_changes(db), 1, "no row %s/%s to change", run, node);
    sqlite3_close(db);
}

/* The status engine_get answers for run/node. */
static ns_status status_of(engine *e, const char *run, const char *node)
{
    engine_result res = ENGINE_ERROR;
    ns_row *row = engine_get(e, run, node, &res);
    cr_assert_not_null(row, "engine_get %s/%s: result %d", run, node, (int)res);
    ns_status s = row->status;
    model_row_unref(row);
    return s;
}

static uint64_t invalidations(engine *e)
{
    return atomic_load(&engine_stats(e)->cache_invalidations);
}

Test(engine_invalidate, idle_runs_named_are_read_again_others_stay)
{
    engine *e = sfx_open_engine();
    sfx_accept(e, "r1", "n", NS_RUNNING);
    sfx_accept(e, "r2", "n", NS_RUNNING);
    wait_all_durable(e);
    commit_elsewhere("r1", "n", "completed");
    commit_elsewhere("r2", "n", "failed");
    /* The premise: the cache still answers what this instance wrote. */
    cr_assert_eq(status_of(e, "r1", "n"), NS_RUNNING);
    cr_assert_eq(status_of(e, "r2", "n"), NS_RUNNING);

    const char *const changed[] = { "r1", "not-cached" };
    engine_runs_changed(e, changed, 2);
    cr_assert_eq(status_of(e, "r1", "n"), NS_COMPLETED);
    /* Only the runs named: r2 was not said to change. */
    cr_assert_eq(status_of(e, "r2", "n"), NS_RUNNING);
    cr_assert_eq(invalidations(e), 1, "a run not cached is not counted");
    engine_close(e);
}

Test(engine_invalidate, run_with_queued_writes_is_read_again_after_they_commit)
{
    engine *e = sfx_open_engine(); /* commits only when asked */
    sfx_accept(e, "r", "a", NS_RUNNING);
    wait_all_durable(e);
    sfx_accept(e, "r", "b", NS_SCHEDULED); /* queued, not committed */
    commit_elsewhere("r", "a", "completed");

    const char *const changed[] = { "r" };
    engine_runs_changed(e, changed, 1);
    /* Its queued write stays visible, so the run stays until it commits. */
    cr_assert_eq(status_of(e, "r", "b"), NS_SCHEDULED);
    cr_assert_eq(status_of(e, "r", "a"), NS_RUNNING);

    wait_all_durable(e);
    /* Committed: the run is read again, with the other instance's row. */
    for (int i = 0; i < HANG_SECONDS * 200 && status_of(e, "r", "a") != NS_COMPLETED; i++)
        sfx_sleep_ms(5); /* the drop follows the commit, after durable_seq moved */
    cr_assert_eq(status_of(e, "r", "a"), NS_COMPLETED);
    cr_assert_eq(status_of(e, "r", "b"), NS_SCHEDULED);
    cr_assert_eq(invalidations(e), 1);
    engine_close(e);
}

Test(engine_invalidate, null_means_every_run)
{
    engine *e = sfx_open_engine();
    sfx_accept(e, "r1", "n", NS_RUNNING);
    sfx_accept(e, "r2", "n", NS_RUNNING);
    wait_all_durable(e);
    commit_elsewhere("r1", "n", "completed");
    commit_elsewhere("r2", "n", "failed");
    cr_assert_eq(status_of(e, "r1", "n"), NS_RUNNING);

    engine_runs_changed(e, NULL, 0);
    cr_assert_eq(status_of(e, "r1", "n"), NS_COMPLETED);
    cr_assert_eq(status_of(e, "r2", "n"), NS_FAILED);
    cr_assert_eq(invalidations(e), 2);
    cr_assert_eq(atomic_load(&engine_stats(e)->cache_runs), 2, "both read again");
    engine_close(e);
}

/*
 * Every run changed, while one has a queued write and a clean node (so it
 * is on the recency list): it stays, pinned, until the write commits. Before,
 * it was removed with the others, its queued write was no longer readable
 * and the writer settled it into freed memory.
 */
Test(engine_invalidate, null_keeps_runs_with_queued_writes)
{
    engine *e = sfx_open_engine(); /* commits only when asked */
    sfx_accept(e, "r", "a", NS_RUNNING);
    wait_all_durable(e);
    sfx_accept(e, "r", "b", NS_SCHEDULED); /* queued, not committed */
    commit_elsewhere("r", "a", "completed");

    engine_runs_changed(e, NULL, 0);
    cr_assert_eq(status_of(e, "r", "b"), NS_SCHEDULED, "a queued write stays readable");
    wait_all_durable(e);
    for (int i = 0; i < HANG_SECONDS * 200 && status_of(e, "r", "a") != NS_COMPLETED; i++)
        sfx_sleep_ms(5); /* the drop follows the commit, after durable_seq moved */
    cr_assert_eq(status_of(e, "r", "a"), NS_COMPLETED);
    cr_assert_eq(status_of(e, "r", "b"), NS_SCHEDULED);
    cr_assert_eq(engine_close(e), 0);
}
