/*
 * Unit tests for engine, on a real SQLite file in a fresh temp directory and
 * the real writer thread: submit verdicts and what *out holds; durability;
 * coalescing and the batch size bound seen through the counters; a full
 * queue refusing without changing anything; deleting runs; restarting on the
 * same file; listing and summarising (also read through after a reopen); and
 * engine_close flushing what is queued. Persistence is checked with sqlite3
 * directly, not through the engine.
 *
 * No assertion depends on timing: a long batch_interval keeps the writer
 * waiting, engine_flush_soon releases it, and waits for durability poll with a
 * generous bound that only turns a hang into a failure.
 */
#include <criterion/criterion.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "writer_blocker.h"
#include "server/engine/engine.h"
#include "server/engine/model.h"

/* Criterion fixtures have no context argument; this is per test process. */
static char tmp_dir[64];
static char db_path[128];

static void setup(void)
{
    strcpy(tmp_dir, "/tmp/test_engine.XXXXXX");
    cr_assert_not_null(mkdtemp(tmp_dir));
    snprintf(db_path, sizeof db_path, "%s/ns.db", tmp_dir);
}

static void teardown(void)
{
    static const char *const suffixes[] = { "", "-wal", "-shm", "-journal", ".spill", ".spill-wal", ".spill-shm", ".spill-journal" };
    char p[PATH_MAX + 16];
    for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
        snprintf(p, sizeof p, "%s%s", db_path, suffixes[i]);
        unlink(p);
    }
    rmdir(tmp_dir);
}

TestSuite(engine, .init = setup, .fini = teardown, .timeout = 120);

#define ALL ((1u << NS_STATUS_COUNT) - 1)
/* Seconds any wait for the writer may take before the test calls it a hang. */
#define HANG_SECONDS 30

static engine_config config(size_t batch_size, double interval, size_t capacity)
{
    engine_config c = {
        .db_path = db_path,
        .batch_size = batch_size,
        .batch_interval = interval,
        .queue_capacity = capacity,
        .shutdown_timeout = 10,
        .synchronous_full = false,
        .log = NULL,
        .log_ctx = NULL,
    };
    return c;
}

static engine *open_with(const engine_config *c)
{
    char err[512] = "";
    engine *e = engine_open(c, err, sizeof err);
    cr_assert_not_null(e, "engine_open: %s", err);
    return e;
}

/* A writer that flushes only when asked (or when a batch fills). */
static engine *open_lazy(void)
{
    engine_config c = config(1000, 60, 10000);
    return open_with(&c);
}

static ns_update upd(ns_status s, int64_t attempt)
{
    ns_update u;
    memset(&u, 0, sizeof u);
    u.status = s;
    for (int i = 0; i < NS_TS_COUNT; i++)
        u.ts[i] = NS_TS_NULL;
    if (attempt > 0) {
        u.has_attempt = true;
        u.attempt = attempt;
    }
    return u;
}

/* Submits and returns the verdict; *seq (if not NULL) gets the row's seq. */
static engine_result submit(engine *e, const char *run, const char *node, ns_status s,
                            int64_t attempt, int64_t *seq)
{
    ns_update u = upd(s, attempt);
    ns_row *out = NULL;
    engine_result r = engine_submit(e, run, node, &u, &out);
    if (r == ENGINE_QUEUE_FULL || r == ENGINE_ERROR || r == ENGINE_NOT_FOUND) {
        cr_assert_null(out);
    } else {
        cr_assert_not_null(out);
        cr_assert_str_eq(out->run_id, run);
        cr_assert_str_eq(out->node_id, node);
        if (seq)
            *seq = out->seq;
    }
    model_row_unref(out);
    return r;
}

static void accept(engine *e, const char *run, const char *node, ns_status s)
{
    cr_assert_eq(submit(e, run, node, s, 0, NULL), ENGINE_ACCEPTED, "%s/%s -> %s", run,
                 node, model_status_name(s));
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* Polls until seq is durable; flush asks the writer not to wait for its interval. */
static void wait_durable(engine *e, int64_t seq, bool flush)
{
    for (int i = 0; i < HANG_SECONDS * 200; i++) {
        if (flush)
            engine_flush_soon(e);
        if (engine_durable_seq(e) >= seq)
            return;
        sleep_ms(5);
    }
    cr_assert_fail("seq %lld not durable after %d s (durable %lld)", (long long)seq,
                   HANG_SECONDS, (long long)engine_durable_seq(e));
}

/* Polls until a counter reaches want (counters move after durable_seq is published). */
static void wait_counter(_Atomic uint64_t *c, uint64_t want)
{
    for (int i = 0; i < HANG_SECONDS * 200 && atomic_load(c) < want; i++)
        sleep_ms(5);
}

static ns_row *get(engine *e, const char *run, const char *node)
{
    engine_result r;
    ns_row *row = engine_get(e, run, node, &r);
    cr_assert_not_null(row, "%s/%s not found (%d)", run, node, r);
    cr_assert_eq(r, ENGINE_ACCEPTED);
    return row;
}

static void get_none(engine *e, const char *run, const char *node)
{
    engine_result r = ENGINE_ACCEPTED;
    ns_row *row = engine_get(e, run, node, &r);
    cr_assert_null(row, "%s/%s found", run, node);
    cr_assert_eq(r, ENGINE_NOT_FOUND);
}

/* ---- reading the file directly ---- */

static sqlite3 *db_open(void)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL);
    cr_assert_eq(rc, SQLITE_OK, "sqlite3_open_v2: %s", db ? sqlite3_errmsg(db) : "?");
    return db;
}

/* One integer from sql with an optional text parameter. */
static int64_t db_int(const char *sql, const char *param)
{
    sqlite3 *db = db_open();
    sqlite3_stmt *st = NULL;
    cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK, "%s: %s", sql,
                 sqlite3_errmsg(db));
    if (param)
        cr_assert_eq(sqlite3_bind_text(st, 1, param, -1, SQLITE_TRANSIENT), SQLITE_OK);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW, "%s: %s", sql, sqlite3_errmsg(db));
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static int64_t db_count(const char *run)
{
    return db_int("SELECT COUNT(*) FROM run_node_state WHERE run_id = ?1", run);
}

/* status and seq of a stored row; false when absent. */
static bool db_row(const char *run, const char *node, char *status, size_t n, int64_t *seq)
{
    sqlite3 *db = db_open();
    sqlite3_stmt *st = NULL;
    const char *sql = "SELECT status, seq FROM run_node_state WHERE run_id = ?1 AND node_id = ?2";
    cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
    cr_assert_eq(sqlite3_bind_text(st, 1, run, -1, SQLITE_TRANSIENT), SQLITE_OK);
    cr_assert_eq(sqlite3_bind_text(st, 2, node, -1, SQLITE_TRANSIENT), SQLITE_OK);
    int rc = sqlite3_step(st);
    bool found = rc == SQLITE_ROW;
    if (found) {
        snprintf(status, n, "%s", (const char *)sqlite3_column_text(st, 0));
        *seq = sqlite3_column_int64(st, 1);
    } else {
        cr_assert_eq(rc, SQLITE_DONE, "%s", sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return found;
}

/* ---- verdicts ---- */

Test(engine, open_fresh_file)
{
    engine *e = open_lazy();
    cr_assert(engine_alive(e));
    const char *why = NULL;
    cr_assert(engine_ready(e, &why), "not ready: %s", why ? why : "?");
    cr_assert_eq(engine_durable_seq(e), 0);
    cr_assert_eq(atomic_load(&engine_stats(e)->last_seq), 0);
    cr_assert_eq(engine_config_of(e)->batch_size, 1000);
    cr_assert_str_eq(engine_config_of(e)->db_path, db_path);
    cr_assert_eq(engine_close(e), 0);
    cr_assert_eq(access(db_path, F_OK), 0, "no database file");
}

Test(engine, open_refuses_zero_sizes)
{
    char err[256] = "";
    engine_config c = config(0, 0.1, 10);
    cr_assert_null(engine_open(&c, err, sizeof err));
    cr_assert_neq(err[0], '\0', "no message");
    c = config(10, 0.1, 0);
    err[0] = '\0';
    cr_assert_null(engine_open(&c, err, sizeof err));
    cr_assert_neq(err[0], '\0');
}

Test(engine, open_bad_path_fails_with_message)
{
    char err[512] = "";
    engine_config c = config(10, 0.1, 10);
    c.db_path = "/nonexistent-dir-for-test/ns.db";
    cr_assert_null(engine_open(&c, err, sizeof err));
    cr_assert_neq(err[0], '\0');
}

Test(engine, submit_get_duplicate_stale_illegal)
{
    engine *e = open_lazy();
    ns_stats *st = engine_stats(e);
    ns_update u = upd(NS_SCHEDULED, 0);
    ns_row *out = NULL;
    cr_assert_eq(engine_submit(e, "r", "a", &u, &out), ENGINE_ACCEPTED);
    cr_assert_not_null(out);
    cr_assert_eq(out->status, NS_SCHEDULED);
    cr_assert_eq(out->attempt, 1);
    cr_assert_eq(out->seq, 1);
    cr_assert_neq(out->ts[NS_TS_SCHEDULED], NS_TS_NULL, "scheduled_at not stamped");
    cr_assert_gt(out->updated_at, 0);
    int64_t first_seq = out->seq;
    model_row_unref(out);

    ns_row *g = get(e, "r", "a");
    cr_assert_eq(g->seq, first_seq);
    cr_assert_eq(g->status, NS_SCHEDULED);
    model_row_unref(g);

    /* The same update again: nothing changes, *out is the current row. */
    int64_t seq = 0;
    cr_assert_eq(submit(e, "r", "a", NS_SCHEDULED, 1, &seq), ENGINE_DUPLICATE);
    cr_assert_eq(seq, first_seq);

    /* A new attempt. */
    cr_assert_eq(submit(e, "r", "a", NS_RUNNING, 2, &seq), ENGINE_ACCEPTED);
    cr_assert_eq(seq, 2);

    /* Stale: *out is the current row. */
    u = upd(NS_COMPLETED, 1);
    cr_assert_eq(engine_submit(e, "r", "a", &u, &out), ENGINE_STALE);
    cr_assert_not_null(out);
    cr_assert_eq(out->status, NS_RUNNING);
    cr_assert_eq(out->attempt, 2);
    cr_assert_eq(out->seq, 2);
    model_row_unref(out);

    /* Illegal: *out is the current row. */
    u = upd(NS_SCHEDULED, 0);
    cr_assert_eq(engine_submit(e, "r", "a", &u, &out), ENGINE_ILLEGAL);
    cr_assert_not_null(out);
    cr_assert_eq(out->status, NS_RUNNING);
    cr_assert_eq(out->seq, 2);
    model_row_unref(out);

    g = get(e, "r", "a");
    cr_assert_eq(g->status, NS_RUNNING, "a refused update changed the cache");
    cr_assert_eq(g->attempt, 2);
    model_row_unref(g);

    cr_assert_eq(atomic_load(&st->updates_queued), 2);
    cr_assert_eq(atomic_load(&st->updates_duplicate), 1);
    cr_assert_eq(atomic_load(&st->rejected[NS_REJECT_STALE]), 1);
    cr_assert_eq(atomic_load(&st->rejected[NS_REJECT_ILLEGAL]), 1);
    cr_assert_eq(atomic_load(&st->last_seq), 2);
    cr_assert_eq(atomic_load(&st->cache_nodes), 1);

    get_none(e, "r", "b");
    get_none(e, "nope", "a");
    cr_assert_eq(engine_close(e), 0);
}

Test(engine, fields_reach_the_row)
{
    engine *e = open_lazy();
    ns_update u = upd(NS_FAILED, 3);
    u.last_error = (ns_text){ true, "boom" };
    u.has_retryable = true;
    u.retryable = true;
    u.outputs = (ns_text){ true, "{\"n\":1}" };
    u.ts_set = 1u << NS_TS_FAILED;
    u.ts[NS_TS_FAILED] = INT64_C(1795710449123);
    ns_row *out = NULL;
    cr_assert_eq(engine_submit(e, "r", "a", &u, &out), ENGINE_ACCEPTED);
    model_row_unref(out);
    ns_row *g = get(e, "r", "a");
    cr_assert_eq(g->attempt, 3);
    cr_assert_str_eq(g->last_error, "boom");
    cr_assert(g->retryable);
    cr_assert_str_eq(g->outputs, "{\"n\":1}");
    cr_assert_eq(g->ts[NS_TS_FAILED], INT64_C(1795710449123));
    model_row_unref(g);
    cr_assert_eq(engine_close(e), 0);
}

/* ---- the writer ---- */

Test(engine, durable_seq_reaches_last_seq)
{
    engine_config c = config(16, 0.01, 1000);
    engine *e = open_with(&c);
    char node[16];
    for (int i = 0; i < 50; i++) {
        snprintf(node, sizeof node, "n%02d", i);
        accept(e, "r", node, NS_RUNNING);
    }
    cr_assert_eq(atomic_load(&engine_stats(e)->last_seq), 50);
    /* No flush request: the interval alone must get everything written. */
    wait_durable(e, 50, false);
    cr_assert_eq(engine_durable_seq(e), 50);
    cr_assert_eq(db_count("r"), 50);
    cr_assert_eq(db_int("SELECT MAX(seq) FROM run_node_state", NULL), 50);
    cr_assert_eq(engine_close(e), 0);
}

/* Records the highest durable seq the writer reported (called on the writer thread). */
static void record_durable(void *ctx, int64_t durable_seq)
{
    _Atomic int64_t *seen = ctx;
    int64_t old = atomic_load(seen);
    while (durable_seq > old && !atomic_compare_exchange_weak(seen, &old, durable_seq)) {
    }
}

Test(engine, on_durable_reports_the_seq)
{
    _Atomic int64_t seen;
    atomic_init(&seen, 0);
    engine *e = open_lazy();
    engine_on_durable(e, record_durable, &seen);
    accept(e, "r", "a", NS_RUNNING);
    accept(e, "r", "b", NS_RUNNING);
    wait_durable(e, 2, true);
    for (int i = 0; i < HANG_SECONDS * 200 && atomic_load(&seen) < 2; i++)
        sleep_ms(5);
    cr_assert_eq(atomic_load(&seen), 2);
    cr_assert_eq(engine_close(e), 0);
}

Test(engine, coalescing_through_the_writer)
{
    /* A long interval keeps the three in the queue until the flush request. */
    engine_config c = config(100, 10, 1000);
    engine *e = open_with(&c);
    ns_stats *st = engine_stats(e);
    accept(e, "r", "a", NS_SCHEDULED);
    accept(e, "r", "a", NS_RUNNING);
    accept(e, "r", "a", NS_COMPLETED);
    cr_assert_eq(engine_durable_seq(e), 0, "written before the interval or a flush");
    wait_durable(e, 3, true);
    wait_counter(&st->updates_processed, 3);
    cr_assert_eq(atomic_load(&st->updates_processed), 3);
    cr_assert_eq(atomic_load(&st->updates_coalesced), 2);
    cr_assert_eq(atomic_load(&st->rows_written), 1);
    cr_assert_eq(atomic_load(&st->batches_written), 1);
    cr_assert_eq(atomic_load(&st->updates_queued), 3);
    cr_assert_eq(atomic_load(&st->errors), 0);
    char status[16];
    int64_t seq = 0;
    cr_assert(db_row("r", "a", status, sizeof status, &seq));
    cr_assert_str_eq(status, "completed");
    cr_assert_eq(seq, 3);
    cr_assert_eq(engine_close(e), 0);
}

Test(engine, batch_size_bounds_each_transaction)
{
    engine_config c = config(10, 10, 1000);
    engine *e = open_with(&c);
    ns_stats *st = engine_stats(e);
    char node[16];
    for (int i = 0; i < 100; i++) {
        snprintf(node, sizeof node, "n%03d", i);
        accept(e, "r", node, NS_RUNNING);
    }
    wait_durable(e, 100, true);
    wait_counter(&st->updates_processed, 100);
    cr_assert_eq(atomic_load(&st->updates_processed), 100);
    cr_assert_eq(atomic_load(&st->rows_written), 100);
    cr_assert_eq(atomic_load(&st->updates_coalesced), 0);
    cr_assert_geq(atomic_load(&st->batches_written), 10,
                  "a batch held more than batch_size entries");
    cr_assert_eq(atomic_load(&st->batch_updates.count), atomic_load(&st->batches_written));
    cr_assert_eq(db_count("r"), 100);
    cr_assert_eq(engine_close(e), 0);
}

/* Commits one row and returns once the writer is stuck in the callback after it. */
static void stall_writer(engine *e, blocker *b)
{
    blocker_arm(e, b);
    accept(e, "w", "blocker", NS_RUNNING);
    cr_assert(blocker_wait(e, b), "the writer never committed the blocker");
}

Test(engine, queue_full_changes_nothing)
{
    engine_config c = config(1, 0, 2);
    engine *e = open_with(&c);
    ns_stats *st = engine_stats(e);
    blocker b;
    stall_writer(e, &b);

    /* Capacity 2: the third distinct write finds the queue full. */
    accept(e, "r", "a", NS_SCHEDULED);
    accept(e, "r", "b", NS_SCHEDULED);
    cr_assert_eq(submit(e, "r", "c", NS_SCHEDULED, 0, NULL), ENGINE_QUEUE_FULL);
    get_none(e, "r", "c");
    /* A change to a known node is refused too, and leaves it as it was. */
    cr_assert_eq(submit(e, "r", "a", NS_RUNNING, 0, NULL), ENGINE_QUEUE_FULL);
    ns_row *g = get(e, "r", "a");
    cr_assert_eq(g->status, NS_SCHEDULED);
    cr_assert_eq(g->seq, 2);
    model_row_unref(g);
    /* A new run is not left behind in the cache. */
    cr_assert_eq(submit(e, "fresh", "x", NS_SCHEDULED, 0, NULL), ENGINE_QUEUE_FULL);
    get_none(e, "fresh", "x");
    engine_page page;
    cr_assert_eq(engine_list(e, "fresh", ALL, NULL, 10, &page), ENGINE_NOT_FOUND);
    engine_page_free(&page);
    cr_assert_eq(atomic_load(&st->cache_runs), 2);
    cr_assert_eq(atomic_load(&st->cache_nodes), 3);
    /* A delete needs a queue slot as well. */
    size_t deleted = 99;
    int64_t dseq = 99;
    cr_assert_eq(engine_delete_run(e, "r", &deleted, &dseq), ENGINE_QUEUE_FULL);
    model_row_unref(get(e, "r", "b"));
    /* A duplicate needs no slot. */
    cr_assert_eq(submit(e, "r", "b", NS_SCHEDULED, 0, NULL), ENGINE_DUPLICATE);

    cr_assert_eq(atomic_load(&st->rejected[NS_REJECT_QUEUE_FULL]), 4);
    cr_assert_eq(atomic_load(&st->last_seq), 3, "a refused write used a seq");
    cr_assert_eq(atomic_load(&st->updates_queued), 3);
    cr_assert_eq(atomic_load(&st->queue_depth), 2);
    const char *why = NULL;
    cr_assert_not(engine_ready(e, &why), "ready with a full queue");
    cr_assert_not_null(why);

    atomic_store(&b.release, true);
    cr_assert_eq(engine_close(e), 0);
    cr_assert_eq(db_count("r"), 2);
    cr_assert_eq(db_count("fresh"), 0);
    char status[16];
    int64_t seq;
    cr_assert_not(db_row("r", "c", status, sizeof status, &seq));
    cr_assert(db_row("r", "a", status, sizeof status, &seq));
    cr_assert_str_eq(status, "scheduled");
    cr_assert_eq(seq, 2);
}

/* An update to run "rb" carrying outputs of `size` bytes of JSON text (with its NUL). */
static engine_result submit_big(engine *e, const char *node, size_t size)
{
    char *outputs = malloc(size);
    cr_assert_not_null(outputs);
    memset(outputs, 'x', size - 1);
    outputs[0] = outputs[size - 2] = '"';
    outputs[size - 1] = '\0';
    ns_update u = upd(NS_RUNNING, 0);
    u.outputs.set = true;
    u.outputs.value = outputs;
    ns_row *out = NULL;
    engine_result r = engine_submit(e, "rb", node, &u, &out);
    model_row_unref(out);
    free(outputs);
    return r;
}

Test(engine, queue_byte_bound_refuses_and_changes_nothing)
{
    enum { BIG = 8192 };
    engine_config c = config(1, 0, 1000);
    c.queue_max_bytes = 64 * 1024;
    engine *e = open_with(&c);
    ns_stats *st = engine_stats(e);
    blocker b;
    stall_writer(e, &b);
    cr_assert_eq(atomic_load(&st->queue_bytes), 0, "the blocker's op is released");

    /* Each op holds its row: the struct, "rb", "nNN" and the outputs. */
    const size_t per = sizeof(ns_row) + 3 + 4 + BIG;
    const size_t fit = c.queue_max_bytes / per;
    cr_assert_lt(fit, 1000, "the byte bound, not the capacity, must be what refuses");
    for (size_t i = 0; i < fit; i++) {
        char node[24];
        snprintf(node, sizeof node, "n%02zu", i);
        cr_assert_eq(submit_big(e, node, BIG), ENGINE_ACCEPTED, "%s", node);
    }
    cr_assert_eq(atomic_load(&st->queue_bytes), fit * per);
    const char *why = NULL;
    cr_assert(engine_ready(e, &why), "not ready before any refusal: %s", why);
    int64_t last = atomic_load(&st->last_seq);
    cr_assert_eq(submit_big(e, "nXX", BIG), ENGINE_QUEUE_FULL);
    cr_assert_not(engine_ready(e, &why), "ready while writes are refused for bytes");
    cr_assert(strstr(why, "queue-max-bytes") != NULL, "%s", why);
    get_none(e, "rb", "nXX");
    cr_assert_eq(submit_big(e, "n00", BIG + 1), ENGINE_QUEUE_FULL, "a change of a queued node too");
    ns_row *g = get(e, "rb", "n00");
    cr_assert_eq(strlen(g->outputs), BIG - 1, "a refused update changed the node");
    model_row_unref(g);
    cr_assert_eq(atomic_load(&st->last_seq), last, "a refused write used a seq");
    cr_assert_eq(atomic_load(&st->rejected[NS_REJECT_QUEUE_FULL]), 2);
    cr_assert_eq(atomic_load(&st->queue_bytes), fit * per);
    /* What is left of the bound still takes a small update: bytes decide, not entries. */
    cr_assert_lt(fit * per + sizeof(ns_row) + 3 + 6, c.queue_max_bytes);
    accept(e, "rb", "small", NS_SCHEDULED);

    /* Once written, the bytes are free again. */
    atomic_store(&b.release, true);
    engine_on_durable(e, NULL, NULL);
    for (int i = 0; i < HANG_SECONDS * 200 && atomic_load(&st->queue_bytes) != 0; i++) {
        engine_flush_soon(e);
        sleep_ms(5);
    }
    cr_assert_eq(atomic_load(&st->queue_bytes), 0);
    cr_assert(engine_ready(e, &why), "still not ready once written: %s", why);
    cr_assert_eq(submit_big(e, "nXX", BIG), ENGINE_ACCEPTED);
    cr_assert_eq(engine_close(e), 0);
    cr_assert_eq(db_count("rb"), (int64_t)fit + 2);
}

/* ---- deleting ---- */

Test(engine, delete_run_forgets_it_for_good)
{
    engine *e = open_lazy();
    ns_stats *st = engine_stats(e);
    accept(e, "r", "a", NS_RUNNING);
    accept(e, "r", "b", NS_COMPLETED);
    accept(e, "other", "x", NS_RUNNING);
    wait_durable(e, 3, true);
    cr_assert_eq(db_count("r"), 2);

    size_t deleted = 0;
    int64_t seq = 0;
    cr_assert_eq(engine_delete_run(e, "r", &deleted, &seq), ENGINE_ACCEPTED);
    cr_assert_eq(deleted, 2);
    cr_assert_eq(seq, 4);
    /* Gone at once, before the writer has committed the delete. */
    get_none(e, "r", "a");
    get_none(e, "r", "b");
    engine_page page;
    cr_assert_eq(engine_list(e, "r", ALL, NULL, 10, &page), ENGINE_NOT_FOUND);
    engine_page_free(&page);
    engine_summary sum;
    cr_assert_eq(engine_summarize(e, "r", &sum), ENGINE_NOT_FOUND);
    cr_assert_eq(engine_delete_run(e, "r", &deleted, &seq), ENGINE_NOT_FOUND,
                 "a deleted run deleted again");
    cr_assert_eq(engine_delete_run(e, "never", &deleted, &seq), ENGINE_NOT_FOUND);

    wait_durable(e, 4, true);
    wait_counter(&st->runs_deleted, 1);
    cr_assert_eq(atomic_load(&st->runs_deleted), 1);
    cr_assert_eq(db_count("r"), 0);
    /* After the commit the run is read through from the file: still gone. */
    get_none(e, "r", "a");
    ns_row *x = get(e, "other", "x");
    cr_assert_eq(x->status, NS_RUNNING);
    model_row_unref(x);

    cr_assert_eq(engine_close(e), 0);
    e = open_lazy();
    get_none(e, "r", "a");
    get_none(e, "r", "b");
    cr_assert_eq(engine_delete_run(e, "r", &deleted, &seq), ENGINE_NOT_FOUND);
    x = get(e, "other", "x");
    model_row_unref(x);
    /* The delete's seq is not reused. */
    int64_t s = 0;
    cr_assert_eq(submit(e, "other", "y", NS_IDLE, 0, &s), ENGINE_ACCEPTED);
    cr_assert_eq(s, 5);
    cr_assert_eq(engine_close(e), 0);
    cr_assert_eq(db_count("r"), 0);
    cr_assert_eq(db_count("other"), 2);
}

Test(engine, delete_then_recreate_in_one_batch)
{
    engine *e = open_lazy();
    accept(e, "r", "a", NS_COMPLETED);
    accept(e, "r", "b", NS_RUNNING);
    size_t deleted = 0;
    int64_t seq = 0;
    cr_assert_eq(engine_delete_run(e, "r", &deleted, &seq), ENGINE_ACCEPTED);
    cr_assert_eq(deleted, 2);
    /* After the delete a is a new node: scheduled is legal again. */
    int64_t s = 0;
    cr_assert_eq(submit(e, "r", "a", NS_SCHEDULED, 0, &s), ENGINE_ACCEPTED);
    ns_row *g = get(e, "r", "a");
    cr_assert_eq(g->status, NS_SCHEDULED);
    cr_assert_eq(g->attempt, 1);
    model_row_unref(g);
    get_none(e, "r", "b");
    cr_assert_eq(engine_close(e), 0);
    cr_assert_eq(db_count("r"), 1);
    char status[16];
    int64_t dbseq;
    cr_assert(db_row("r", "a", status, sizeof status, &dbseq));
    cr_assert_str_eq(status, "scheduled");
    cr_assert_eq(dbseq, s);
}

/* ---- restart ---- */

Test(engine, restart_reads_the_persisted_state)
{
    engine *e = open_lazy();
    ns_update u = upd(NS_RUNNING, 2);
    u.outputs = (ns_text){ true, "{\"progress\":0.5}" };
    u.resume_state = (ns_text){ true, "[\"cursor\",9]" };
    ns_row *out = NULL;
    cr_assert_eq(engine_submit(e, "r", "a", &u, &out), ENGINE_ACCEPTED);
    model_row_unref(out);
    accept(e, "r", "b", NS_SCHEDULED);
    ns_row *before = get(e, "r", "a");
    cr_assert_eq(engine_close(e), 0);

    e = open_lazy();
    cr_assert_eq(atomic_load(&engine_stats(e)->last_seq), 2);
    cr_assert_eq(engine_durable_seq(e), 2);
    ns_row *after = get(e, "r", "a");
    cr_assert(model_row_same(before, after), "the reopened row differs");
    cr_assert_eq(after->seq, before->seq);
    cr_assert_eq(after->updated_at, before->updated_at);
    cr_assert_str_eq(after->outputs, "{\"progress\":0.5}");
    cr_assert_str_eq(after->resume_state, "[\"cursor\",9]");
    model_row_unref(after);

    /* The rules use the persisted row. */
    u = upd(NS_SCHEDULED, 0);
    cr_assert_eq(engine_submit(e, "r", "a", &u, &out), ENGINE_ILLEGAL);
    cr_assert_eq(out->seq, before->seq);
    cr_assert_eq(out->status, NS_RUNNING);
    model_row_unref(out);
    cr_assert_eq(submit(e, "r", "a", NS_COMPLETED, 1, NULL), ENGINE_STALE);
    cr_assert_eq(submit(e, "r", "a", NS_RUNNING, 2, NULL), ENGINE_DUPLICATE);
    /* And the seq continues above the old one. */
    int64_t s = 0;
    cr_assert_eq(submit(e, "r", "a", NS_COMPLETED, 0, &s), ENGINE_ACCEPTED);
    cr_assert_eq(s, 3);
    cr_assert_eq(submit(e, "new-run", "z", NS_IDLE, 0, &s), ENGINE_ACCEPTED);
    cr_assert_eq(s, 4);
    model_row_unref(before);
    cr_assert_eq(engine_close(e), 0);

    e = open_lazy();
    cr_assert_eq(atomic_load(&engine_stats(e)->last_seq), 4);
    ns_row *g = get(e, "r", "a");
    cr_assert_eq(g->status, NS_COMPLETED);
    cr_assert_eq(g->seq, 3);
    model_row_unref(g);
    cr_assert_eq(engine_close(e), 0);
}

/* ---- listing and summaries ---- */

/* Nodes n0..n5 of run r: idle scheduled running running completed failed, in a shuffled order. */
static void list_fixture(engine *e)
{
    static const int order[] = { 3, 0, 5, 1, 4, 2 };
    static const ns_status status[] = { NS_IDLE, NS_SCHEDULED, NS_RUNNING,
                                        NS_RUNNING, NS_COMPLETED, NS_FAILED };
    char node[8];
    for (size_t i = 0; i < sizeof order / sizeof *order; i++) {
        snprintf(node, sizeof node, "n%d", order[i]);
        accept(e, "r", node, status[order[i]]);
    }
    accept(e, "other", "n9", NS_RUNNING);
}

static void check_listing(engine *e)
{
    engine_page page;
    cr_assert_eq(engine_list(e, "r", ALL, NULL, 100, &page), ENGINE_ACCEPTED);
    cr_assert_eq(page.count, 6);
    cr_assert_not(page.more);
    char node[32];
    for (size_t i = 0; i < page.count; i++) {
        snprintf(node, sizeof node, "n%zu", i);
        cr_assert_str_eq(page.rows[i]->node_id, node);
        cr_assert_str_eq(page.rows[i]->run_id, "r");
    }
    engine_page_free(&page);

    unsigned mask = (1u << NS_SCHEDULED) | (1u << NS_RUNNING);
    cr_assert_eq(engine_list(e, "r", mask, NULL, 100, &page), ENGINE_ACCEPTED);
    cr_assert_eq(page.count, 3);
    cr_assert_str_eq(page.rows[0]->node_id, "n1");
    cr_assert_str_eq(page.rows[1]->node_id, "n2");
    cr_assert_str_eq(page.rows[2]->node_id, "n3");
    engine_page_free(&page);

    cr_assert_eq(engine_list(e, "r", ALL, "n1", 2, &page), ENGINE_ACCEPTED);
    cr_assert_eq(page.count, 2);
    cr_assert_str_eq(page.rows[0]->node_id, "n2");
    cr_assert_str_eq(page.rows[1]->node_id, "n3");
    cr_assert(page.more);
    engine_page_free(&page);

    cr_assert_eq(engine_list(e, "r", ALL, "n5", 2, &page), ENGINE_ACCEPTED);
    cr_assert_eq(page.count, 0, "found but empty past the end");
    cr_assert_not(page.more);
    engine_page_free(&page);

    cr_assert_eq(engine_list(e, "r", 1u << NS_PAUSED, NULL, 10, &page), ENGINE_ACCEPTED);
    cr_assert_eq(page.count, 0);
    engine_page_free(&page);

    cr_assert_eq(engine_list(e, "missing", ALL, NULL, 10, &page), ENGINE_NOT_FOUND);
    engine_page_free(&page);

    engine_summary s;
    cr_assert_eq(engine_summarize(e, "r", &s), ENGINE_ACCEPTED);
    cr_assert_eq(s.nodes, 6);
    static const size_t want[NS_STATUS_COUNT] = { 1, 1, 2, 0, 0, 1, 1 };
    for (int i = 0; i < NS_STATUS_COUNT; i++)
        cr_assert_eq(s.counts[i], want[i], "count of %s", model_status_name((ns_status)i));
    cr_assert_eq(s.last_seq, 6, "the other run's seq 7 leaked in");
    ns_row *last = get(e, "r", "n2"); /* inserted last */
    cr_assert_eq(s.updated_at, last->updated_at);
    model_row_unref(last);
    cr_assert_eq(engine_summarize(e, "missing", &s), ENGINE_NOT_FOUND);
}

Test(engine, list_and_summarize)
{
    engine *e = open_lazy();
    list_fixture(e);
    check_listing(e);
    cr_assert_eq(engine_close(e), 0);
}

Test(engine, list_and_summarize_read_through_after_reopen)
{
    engine *e = open_lazy();
    list_fixture(e);
    cr_assert_eq(engine_close(e), 0);
    e = open_lazy();
    ns_stats *st = engine_stats(e);
    cr_assert_eq(atomic_load(&st->cache_nodes), 0, "a fresh engine has an empty cache");
    check_listing(e);
    cr_assert_geq(atomic_load(&st->cache_loads), 1);
    cr_assert_eq(atomic_load(&st->cache_nodes), 6, "only r (6 nodes) was read through");
    cr_assert_eq(engine_close(e), 0);

    /* Summary first, on a cold cache. */
    e = open_lazy();
    engine_summary s;
    cr_assert_eq(engine_summarize(e, "r", &s), ENGINE_ACCEPTED);
    cr_assert_eq(s.nodes, 6);
    cr_assert_eq(s.counts[NS_RUNNING], 2);
    cr_assert_eq(engine_close(e), 0);
}

/* ---- closing ---- */

Test(engine, close_flushes_everything_queued)
{
    /* The writer would wait a minute; close must not. */
    engine_config c = config(1000, 60, 10000);
    engine *e = open_with(&c);
    char node[16];
    for (int i = 0; i < 300; i++) {
        snprintf(node, sizeof node, "n%03d", i % 200);
        accept(e, "r", node, i < 200 ? NS_SCHEDULED : NS_RUNNING);
    }
    cr_assert_eq(engine_durable_seq(e), 0, "written before the interval or a flush");
    cr_assert_eq(engine_close(e), 0, "close left entries unwritten");
    cr_assert_eq(db_count("r"), 200);
    cr_assert_eq(db_int("SELECT MAX(seq) FROM run_node_state", NULL), 300);
    cr_assert_eq(db_int("SELECT COUNT(*) FROM run_node_state WHERE status = 'running'", NULL),
                 100);
    char status[16];
    int64_t seq;
    cr_assert(db_row("r", "n050", status, sizeof status, &seq));
    cr_assert_str_eq(status, "running");
    cr_assert_eq(seq, 251);
    cr_assert(db_row("r", "n150", status, sizeof status, &seq));
    cr_assert_str_eq(status, "scheduled");
    cr_assert_eq(seq, 151);
}

Test(engine, close_flushes_a_queued_delete)
{
    engine *e = open_lazy();
    accept(e, "r", "a", NS_RUNNING);
    wait_durable(e, 1, true);
    size_t deleted;
    int64_t seq;
    cr_assert_eq(engine_delete_run(e, "r", &deleted, &seq), ENGINE_ACCEPTED);
    cr_assert_eq(engine_close(e), 0);
    cr_assert_eq(db_count("r"), 0);
}

/* ---- bounded cache and draining ---- */

Test(engine, cache_bound_evicts_written_runs)
{
    engine_config c = config(1000, 60, 10000);
    c.cache_max_nodes = 10;
    engine *e = open_with(&c);
    ns_stats *st = engine_stats(e);
    char run[16], node[16];
    for (int r = 0; r < 4; r++) {
        snprintf(run, sizeof run, "r%d", r);
        for (int n = 0; n < 5; n++) {
            snprintf(node, sizeof node, "n%d", n);
            accept(e, run, node, NS_RUNNING);
        }
    }
    /* Nothing is written yet, so nothing may go: the cache is the only copy. */
    cr_assert_eq(atomic_load(&st->cache_nodes), 20);
    cr_assert_eq(atomic_load(&st->cache_evictions), 0);
    wait_durable(e, 20, true);
    /* Once written, the least recently used runs go until the bound holds. */
    cr_assert_leq(atomic_load(&st->cache_nodes), 10);
    cr_assert_geq(atomic_load(&st->cache_evictions), 2);
    /* An evicted run reads through, whole. */
    uint64_t loads = atomic_load(&st->cache_loads);
    ns_row *g = get(e, "r0", "n3");
    cr_assert_eq(g->status, NS_RUNNING);
    cr_assert_eq(g->seq, 4);
    model_row_unref(g);
    cr_assert_eq(atomic_load(&st->cache_loads), loads + 1, "r0 was not evicted");
    engine_summary s;
    cr_assert_eq(engine_summarize(e, "r0", &s), ENGINE_ACCEPTED);
    cr_assert_eq(s.nodes, 5);
    cr_assert_leq(atomic_load(&st->cache_nodes), 10);
    /* The rules still see evicted state. */
    cr_assert_eq(submit(e, "r1", "n0", NS_SCHEDULED, 0, NULL), ENGINE_ILLEGAL);
    cr_assert_eq(engine_close(e), 0);
}

Test(engine, drain_makes_unready_but_writes_work)
{
    engine *e = open_lazy();
    const char *why = NULL;
    cr_assert(engine_ready(e, &why));
    engine_drain(e);
    cr_assert_not(engine_ready(e, &why));
    cr_assert_not_null(why);
    cr_assert(engine_alive(e));
    accept(e, "r", "a", NS_RUNNING);
    /* Draining, the writer no longer waits out batch_interval (minutes here). */
    wait_durable(e, 1, false);
    cr_assert_eq(engine_close(e), 0);
    cr_assert_eq(db_count("r"), 1);
}
