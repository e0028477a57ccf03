/*
 * test_pg_store: the PostgreSQL store through store.h, on a fresh database
 * of the throwaway cluster in NODESTATE_TEST_PG (scripts/pg.sh prints one;
 * scripts/test.sh sets it for its release pass). Without it every test is
 * skipped, saying so.
 */
#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store.h"
#include "store_fixture.h"
#include "store_listen.h"

static char uri[1024];
static char dbname[64];

/* Runs sql on the base database (or on ours); asserts it worked. */
static void admin(const char *on, const char *sql)
{
    PGconn *c = PQconnectdb(on);
    cr_assert_eq(PQstatus(c), CONNECTION_OK, "%s", PQerrorMessage(c));
    PQclear(PQexec(c, "SET client_min_messages = warning"));
    PGresult *r = PQexec(c, sql);
    cr_assert(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK,
              "%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    PQfinish(c);
}

/* The first value of a query on our database, as a malloc'd string (NULL: none). */
static char *value_of(const char *sql)
{
    PGconn *c = PQconnectdb(uri);
    cr_assert_eq(PQstatus(c), CONNECTION_OK, "%s", PQerrorMessage(c));
    PGresult *r = PQexec(c, sql);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s: %s", sql, PQresultErrorMessage(r));
    char *v = PQntuples(r) && !PQgetisnull(r, 0, 0) ? strdup(PQgetvalue(r, 0, 0)) : NULL;
    PQclear(r);
    PQfinish(c);
    return v;
}

static long long int_of(const char *sql)
{
    char *v = value_of(sql);
    long long n = v ? atoll(v) : -1;
    free(v);
    return n;
}

static void fresh_db(void)
{
    const char *base = getenv("NODESTATE_TEST_PG");
    if (base == NULL || base[0] == '\0')
        cr_skip_test("NODESTATE_TEST_PG is unset (scripts/pg.sh start DIR prints a URI)");
    static unsigned n;
    char sql[160];
    snprintf(dbname, sizeof dbname, "ns_unit_%ld_%u", (long)getpid(), ++n);
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s", dbname);
    admin(base, sql);
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", dbname);
    admin(base, sql);
    const char *slash = strchr(strstr(base, "://") + 3, '/');
    cr_assert_not_null(slash, "NODESTATE_TEST_PG needs a /database: %s", base);
    snprintf(uri, sizeof uri, "%.*s/%s", (int)(slash - base), base, dbname);
    sfx_setup("pgstore"); /* a directory for sidecars */
}

static void drop_db(void)
{
    const char *base = getenv("NODESTATE_TEST_PG");
    if (base == NULL || base[0] == '\0' || dbname[0] == '\0')
        return;
    char sql[160];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", dbname);
    admin(base, sql);
    sfx_teardown();
}

static store *open_pg(void)
{
    char err[512] = "";
    store *s = store_open(uri, false, err, sizeof err);
    cr_assert_not_null(s, "store_open: %s", err);
    cr_assert(store_shared(s));
    return s;
}

static store_reader *open_reader(void)
{
    char err[512] = "";
    store_reader *r = store_reader_open(uri, err, sizeof err);
    cr_assert_not_null(r, "store_reader_open: %s", err);
    return r;
}

/* A packed row with attempt, one reference. */
static ns_row *row_of(const char *run, const char *node, ns_status st, int64_t attempt,
                      int64_t seq)
{
    ns_row d = sfx_draft(run, node, st, seq);
    d.attempt = attempt;
    ns_row *r = model_row_copy(&d);
    cr_assert_not_null(r);
    return r;
}

/* What on_superseded was told. */
typedef struct superseded {
    sfx_isolated iso; /* first: store_batch.isolated_ctx serves both callbacks */
    char keys[8][300];
    size_t n;
} superseded;

static void on_superseded(void *ctx, const ns_row *row)
{
    superseded *s = ctx;
    cr_assert_lt(s->n, 8);
    snprintf(s->keys[s->n++], sizeof s->keys[0], "%s/%s", row->run_id, row->node_id);
}

static void on_isolated(void *ctx, const ns_row *row, const char *why)
{
    sfx_on_isolated(&((superseded *)ctx)->iso, row, why);
}

/* Writes rows (sorted by key) in one batch, forced as given; asserts commit. */
static void write_rows(store *s, ns_row **rows, size_t n, const bool *forced, superseded *out)
{
    memset(out, 0, sizeof *out);
    store_batch b = { .rows = rows, .n_rows = n, .forced = forced, .last_seq = 0,
                      .on_isolated = on_isolated, .on_superseded = on_superseded,
                      .isolated_ctx = out };
    cr_assert_eq(store_write(s, &b), 0, "store_write: %s", store_errmsg(s));
    cr_assert_eq(b.n_superseded, out->n);
    cr_assert_eq(b.n_isolated, out->iso.n);
}

static void unref_all(ns_row **rows, size_t n)
{
    for (size_t i = 0; i < n; i++)
        model_row_unref(rows[i]);
}

TestSuite(pg_store, .init = fresh_db, .fini = drop_db);

Test(pg_store, batch_upsert_writes_and_reads_back)
{
    store *s = open_pg();
    ns_row *rows[3] = { row_of("r1", "a", NS_RUNNING, 1, 1), row_of("r1", "b", NS_SCHEDULED, 1, 2),
                        row_of("r2", "a", NS_COMPLETED, 1, 3) };
    superseded sup;
    write_rows(s, rows, 3, NULL, &sup);
    cr_assert_eq(sup.n, 0);
    cr_assert_eq(int_of("SELECT count(*) FROM run_node_state"), 3);
    char *st = value_of("SELECT status FROM run_node_state WHERE run_id='r2' AND node_id='a'");
    cr_assert_str_eq(st, "completed");
    free(st);
    unref_all(rows, 3);

    /* The reader sees them, in node order, with their values. */
    store_reader *r = open_reader();
    ns_row *got = NULL;
    bool has = false;
    cr_assert_eq(store_reader_load_node(r, "r1", "b", &got, &has), 0);
    cr_assert_not_null(got);
    cr_assert(has);
    cr_assert_eq(got->status, NS_SCHEDULED);
    cr_assert_eq(got->seq, 2);
    cr_assert_eq(got->updated_at, SFX_T0 + 2);
    model_row_unref(got);
    cr_assert_eq(store_reader_load_node(r, "r1", "zz", &got, &has), 0);
    cr_assert_null(got);
    cr_assert(has, "r1 has other rows");
    /* A delete and an upsert of the same run in one batch: delete first. */
    ns_row *again[1] = { row_of("r1", "c", NS_IDLE, 1, 4) };
    const char *del[1] = { "r1" };
    store_batch b = { .delete_runs = del, .n_deletes = 1, .rows = again, .n_rows = 1 };
    cr_assert_eq(store_write(s, &b), 0, "%s", store_errmsg(s));
    cr_assert_eq(int_of("SELECT count(*) FROM run_node_state WHERE run_id='r1'"), 1);
    unref_all(again, 1);
    store_reader_close(r);
    store_close(s);
}

/*
 * The store judges each row against the stored one: another instance's
 * newer state (or a former owner's late write) is never regressed, and each
 * refused row is reported.
 */
Test(pg_store, judge_refuses_rows_the_rules_do_not_admit)
{
    store *s = open_pg();
    superseded sup;
    ns_row *base[4] = { row_of("j", "done", NS_COMPLETED, 1, 100), row_of("j", "old", NS_RUNNING, 2, 100),
                        row_of("j", "run", NS_RUNNING, 1, 100), row_of("j", "seq", NS_SCHEDULED, 1, 100) };
    write_rows(s, base, 4, NULL, &sup);
    cr_assert_eq(sup.n, 0);
    unref_all(base, 4);

    ns_row *late[4] = {
        row_of("j", "done", NS_RUNNING, 1, 200),   /* below a terminal status */
        row_of("j", "old", NS_COMPLETED, 1, 200),  /* a lower attempt */
        row_of("j", "run", NS_PAUSED, 1, 200),     /* rank 2 to rank 2: free */
        row_of("j", "seq", NS_RUNNING, 1, 50),     /* an older seq */
    };
    write_rows(s, late, 4, NULL, &sup);
    cr_assert_eq(sup.n, 3, "%zu refused", sup.n);
    cr_assert_str_eq(sup.keys[0], "j/done");
    cr_assert_str_eq(sup.keys[1], "j/old");
    cr_assert_str_eq(sup.keys[2], "j/seq");
    cr_assert_eq(int_of("SELECT count(*) FROM run_node_state WHERE node_id='done'"
                        " AND status='completed' AND seq=100"), 1);
    cr_assert_eq(int_of("SELECT attempt FROM run_node_state WHERE node_id='old'"), 2);
    cr_assert_eq(int_of("SELECT count(*) FROM run_node_state WHERE node_id='run'"
                        " AND status='paused' AND seq=200"), 1);
    cr_assert_eq(int_of("SELECT seq FROM run_node_state WHERE node_id='seq'"), 100);
    unref_all(late, 4);

    /* A new attempt always applies; force applies unless its seq is older. */
    ns_row *forced_rows[3] = { row_of("j", "done", NS_SCHEDULED, 1, 300),
                               row_of("j", "old", NS_RUNNING, 3, 300),
                               row_of("j", "seq", NS_IDLE, 1, 60) };
    bool forced[3] = { true, false, true };
    write_rows(s, forced_rows, 3, forced, &sup);
    cr_assert_eq(sup.n, 1);
    cr_assert_str_eq(sup.keys[0], "j/seq");
    cr_assert_eq(int_of("SELECT count(*) FROM run_node_state WHERE node_id='done'"
                        " AND status='scheduled' AND seq=300"), 1);
    cr_assert_eq(int_of("SELECT attempt FROM run_node_state WHERE node_id='old'"), 3);
    unref_all(forced_rows, 3);
    store_close(s);
}

/* A row PostgreSQL refuses (text that is not UTF-8) is left out; the rest commits. */
Test(pg_store, unwritable_row_is_isolated)
{
    store *s = open_pg();
    ns_row d = sfx_draft("iso", "b", NS_FAILED, 2);
    d.last_error = "bad \xff\xfe bytes";
    ns_row *rows[3] = { row_of("iso", "a", NS_RUNNING, 1, 1), model_row_copy(&d),
                        row_of("iso", "c", NS_RUNNING, 1, 3) };
    superseded sup;
    write_rows(s, rows, 3, NULL, &sup);
    cr_assert_eq(sup.iso.n, 1);
    cr_assert_eq(sup.iso.rows[0], rows[1]);
    cr_assert(strstr(sup.iso.why[0], "UTF8") != NULL || strstr(sup.iso.why[0], "encoding") != NULL,
              "%s", sup.iso.why[0]);
    cr_assert_eq(sup.n, 0, "an isolated row is not also superseded");
    cr_assert_eq(int_of("SELECT count(*) FROM run_node_state WHERE run_id='iso'"), 2);
    unref_all(rows, 3);
    store_close(s);
}

/* Blocks are disjoint, increasing, above what was asked, and survive a reopen. */
Test(pg_store, seq_blocks_are_reserved_in_the_store)
{
    store *s = open_pg();
    store_reader *r1 = open_reader(), *r2 = open_reader();
    int64_t f1, l1, f2, l2, f3, l3;
    cr_assert_eq(store_reader_seq_block(r1, 0, 100, &f1, &l1), 0);
    cr_assert_eq(store_reader_seq_block(r2, 0, 100, &f2, &l2), 0);
    cr_assert_eq(l1 - f1 + 1, 100);
    cr_assert_eq(l2 - f2 + 1, 100);
    cr_assert(f2 > l1, "blocks overlap: [%lld,%lld] [%lld,%lld]", (long long)f1,
              (long long)l1, (long long)f2, (long long)l2);
    cr_assert_eq(store_reader_seq_block(r1, 5000, 10, &f3, &l3), 0);
    cr_assert_gt(f3, 5000);
    cr_assert_eq(int_of("SELECT value FROM nodestate_meta WHERE key='seq_reserved'"), l3);
    store_reader_close(r1);
    store_reader_close(r2);
    store_close(s);
    /* A new process starts above every block handed out. */
    s = open_pg();
    cr_assert_geq(store_last_seq(s), l3);
    store_close(s);
}

Test(pg_store, schema_is_versioned_and_a_newer_one_refused)
{
    store *s = open_pg();
    int64_t v = 0;
    cr_assert_eq(store_meta_get(s, "schema_version", &v), 0);
    cr_assert_eq(v, 1);
    cr_assert_eq(store_meta_set(s, "mine", 42), 0);
    cr_assert_eq(store_meta_get(s, "mine", &v), 0);
    cr_assert_eq(v, 42);
    cr_assert_eq(store_meta_get(s, "absent", &v), 1);
    cr_assert_eq(store_meta_set(s, "seq_reserved", 1), -1, "the store's own key");
    store_close(s);
    /* Opening again (another instance) finds the schema in place. */
    s = open_pg();
    store_close(s);
    admin(uri, "UPDATE nodestate_meta SET value = 2 WHERE key = 'schema_version'");
    char err[512] = "";
    cr_assert_null(store_open(uri, false, err, sizeof err));
    cr_assert(strstr(err, "newer") != NULL, "%s", err);
    cr_assert_null(store_reader_open("postgresql://127.0.0.1:1/none?connect_timeout=2", err,
                                     sizeof err));
    cr_assert(strstr(err, "connecting") != NULL, "%s", err);
}

/* The runs another instance's listener heard of (its thread writes, the test reads). */
static struct {
    pthread_mutex_t lock;
    bool kept, gone;
} heard = { PTHREAD_MUTEX_INITIALIZER, false, false };

static void on_runs_changed(void *ctx, const char *const *run_ids, size_t n)
{
    (void)ctx;
    pthread_mutex_lock(&heard.lock);
    for (size_t i = 0; run_ids && i < n; i++) {
        heard.kept |= strcmp(run_ids[i], "kept") == 0;
        heard.gone |= strcmp(run_ids[i], "gone") == 0;
    }
    pthread_mutex_unlock(&heard.lock);
}

static bool heard_both(void)
{
    pthread_mutex_lock(&heard.lock);
    bool both = heard.kept && heard.gone;
    pthread_mutex_unlock(&heard.lock);
    return both;
}

/*
 * The sidecar (a local SQLite file) replays into PostgreSQL, deletes first,
 * then goes; the other instances hear of the runs it changed, as of any
 * batch, so none keeps serving what it had cached of them.
 */
Test(pg_store, sidecar_replays_into_postgresql)
{
    store *s = open_pg();
    ns_row *before[1] = { row_of("gone", "a", NS_RUNNING, 1, 1) };
    superseded sup;
    write_rows(s, before, 1, NULL, &sup);
    unref_all(before, 1);

    char spill[4200], err[512] = "";
    snprintf(spill, sizeof spill, "%s/pg.spill", sfx_dir());
    store_sidecar *sc = store_spill_open_file(spill, err, sizeof err);
    cr_assert_not_null(sc, "%s", err);
    const char *del[1] = { "gone" };
    ns_row *rows[2] = { row_of("kept", "a", NS_RUNNING, 1, 7), row_of("kept", "b", NS_COMPLETED, 1, 8) };
    store_batch b = { .delete_runs = del, .n_deletes = 1, .rows = rows, .n_rows = 2, .last_seq = 8 };
    cr_assert_eq(store_spill_append(sc, &b, err, sizeof err), 0, "%s", err);
    store_spill_close(sc);
    unref_all(rows, 2);

    store_listener *other = store_listen_start(uri, "other", on_runs_changed, NULL, err,
                                               sizeof err);
    cr_assert_not_null(other, "%s", err);
    cr_assert_eq(store_set_spill_file(s, spill), 0);
    store_replayed got;
    cr_assert_eq(store_replay(s, "replayer", &got, err, sizeof err), 0, "%s", err);
    for (int i = 0; i < 3000 && !heard_both(); i++)
        sfx_sleep_ms(10);
    cr_assert(heard_both(), "the other instance did not hear of both runs within 30 s");
    store_listen_stop(other);
    cr_assert_eq(got.rows, 2);
    cr_assert_eq(got.deletes, 1);
    cr_assert_eq(got.pieces, 1);
    cr_assert_eq(int_of("SELECT count(*) FROM run_node_state WHERE run_id='gone'"), 0);
    cr_assert_eq(int_of("SELECT count(*) FROM run_node_state WHERE run_id='kept'"), 2);
    struct stat sb;
    cr_assert_neq(stat(spill, &sb), 0, "the sidecar is still there");
    store_close(s);
}

/* ---- retention's page walk (pg_expire.c, judged by store_expire.c) ---- */

/* Writes run/node rows with status and updated_at in one batch (sorted by key). */
typedef struct aged {
    const char *run, *node;
    ns_status st;
    int64_t at;
} aged;

static void write_aged(store *s, const aged *a, size_t n)
{
    static int64_t seq; /* rising, so a later write wins */
    ns_row *rows[16];
    cr_assert_leq(n, 16);
    for (size_t i = 0; i < n; i++) {
        ns_row d = sfx_draft(a[i].run, a[i].node, a[i].st, ++seq);
        d.updated_at = a[i].at;
        rows[i] = model_row_copy(&d);
        cr_assert_not_null(rows[i]);
    }
    bool forced[16];
    for (size_t i = 0; i < n; i++)
        forced[i] = true; /* as a test's rows: judged by seq alone */
    superseded sup;
    write_rows(s, rows, n, forced, &sup);
    unref_all(rows, n);
}


#define HOUR_MS INT64_C(3600000)

Test(pg_store, expired_runs_are_all_terminal_and_older_than_the_cutoff)
{
    store *s = open_pg();
    cr_assert(store_can_expire(s));
    int64_t cutoff = SFX_T0;
    aged rows[] = {
        { "a-done", "n1", NS_COMPLETED, cutoff - 10 },  { "a-done", "n2", NS_FAILED, cutoff - 5000 },
        { "b-open", "n1", NS_COMPLETED, cutoff - 10 },  { "b-open", "n2", NS_RUNNING, cutoff - 10 },
        { "c-recent", "n1", NS_COMPLETED, cutoff },     { "d-mixed", "n1", NS_COMPLETED, cutoff - HOUR_MS },
        { "d-mixed", "n2", NS_COMPLETED, cutoff + 1 },  { "e-failed", "n1", NS_FAILED, cutoff - 1 },
        { "f-paused", "n1", NS_PAUSED, cutoff - HOUR_MS }, { "g-idle", "n1", NS_IDLE, cutoff - HOUR_MS },
    };
    write_aged(s, rows, sizeof rows / sizeof rows[0]);
    store_expiry_cursor c = { .expired_so_far = false };
    sfx_found f = { .n = 0 };
    cr_assert_eq(store_expired_runs(s, cutoff, 100, &c, sfx_note, &f), 10, "%s", store_errmsg(s));
    cr_assert_str_eq(f.ids, "a-done,e-failed");
    cr_assert_str_eq(c.run_id, "", "a short page ends the sweep");
    store_close(s);
}

/*
 * Pages of 2 rows in key order ("C" collation: "B" sorts before "a"); a run
 * is handed over once its last row is seen, which may be pages later, and
 * one whose rows changed between pages is checked again whole.
 */
Test(pg_store, expired_runs_walk_the_key_a_page_at_a_time)
{
    store *s = open_pg();
    aged rows[] = {
        { "B", "a", NS_COMPLETED, SFX_T0 }, { "r1", "a", NS_COMPLETED, SFX_T0 },
        { "r1", "b", NS_COMPLETED, SFX_T0 }, { "r1", "c", NS_FAILED, SFX_T0 },
        { "r2", "a", NS_RUNNING, SFX_T0 },  { "r3", "a", NS_COMPLETED, SFX_T0 },
        { "r3", "b", NS_COMPLETED, SFX_T0 },
    };
    write_aged(s, rows, 7);
    static const struct {
        int examined;
        const char *ids, *run, *node;
    } pages[] = {
        { 2, "B", "r1", "a" },      /* B whole at r1's first row */
        { 2, "", "r1", "c" },       /* r1 not known to be whole yet */
        { 2, "r1", "r3", "a" },     /* r1 ends; r2 runs */
        { 1, "r3", "", "" },        /* the end: r3 whole, the sweep starts over */
        { 2, "B", "r1", "a" },
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
    /* Between pages, a node of r1 the sweep has passed starts running again. */
    sfx_found f = { .n = 0 };
    cr_assert_eq(store_expired_runs(s, SFX_T0 + 1, 2, &c, sfx_note, &f), 2);
    cr_assert_str_eq(f.ids, "");
    aged again = { "r1", "a", NS_RUNNING, SFX_T0 - 1 };
    write_aged(s, &again, 1);
    cr_assert_eq(store_expired_runs(s, SFX_T0 + 1, 2, &c, sfx_note, &f), 2);
    cr_assert_str_eq(f.ids, "", "r1 has a running node again: kept");
    /* A callback that stops gets its run again from the next page. */
    memset(&c, 0, sizeof c);
    f = (sfx_found){ .n = 0, .stop_after = 1 };
    cr_assert_eq(store_expired_runs(s, SFX_T0 + 1, 100, &c, sfx_note, &f), 7);
    cr_assert_str_eq(f.ids, "B");
    f = (sfx_found){ .n = 0 };
    cr_assert_eq(store_expired_runs(s, SFX_T0 + 1, 100, &c, sfx_note, &f), 0, "r3 was all examined");
    cr_assert_str_eq(f.ids, "r3");
    cr_assert_str_eq(c.run_id, "");
    store_close(s);
}

/*
 * A page is an index scan of the primary key from the cursor, stopped by
 * the LIMIT: no sort, no sequential scan (on a table of 20,000 rows, where
 * the planner would choose them if the key could not serve).
 */
Test(pg_store, expired_runs_page_plan_walks_the_primary_key)
{
    store *s = open_pg();
    store_close(s);
    admin(uri, "INSERT INTO run_node_state (run_id, node_id, status, attempt, updated_at, seq)"
               " SELECT 'run-' || (i / 20), 'node-' || (i % 20), 'completed', 1,"
               " '2020-01-01T00:00:00.000Z', i FROM generate_series(1, 20000) i");
    admin(uri, "ANALYZE run_node_state");
    char sql[600] = "PREPARE page(text, text, bigint) AS ";
    size_t len = strlen(sql);
    cr_assert_eq(store_pg_expired_sql(sql + len, sizeof sql - len), 0);
    PGconn *c = PQconnectdb(uri);
    cr_assert_eq(PQstatus(c), CONNECTION_OK, "%s", PQerrorMessage(c));
    PGresult *r = PQexec(c, sql);
    cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQresultErrorMessage(r));
    PQclear(r);
    const char *cursors[] = { "EXPLAIN EXECUTE page('', '', 4096)",
                              "EXPLAIN EXECUTE page('run-500', 'node-3', 4096)" };
    for (size_t k = 0; k < 2; k++) {
        char plan[2048] = "";
        r = PQexec(c, cursors[k]);
        cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQresultErrorMessage(r));
        for (int i = 0; i < PQntuples(r); i++) {
            size_t l = strlen(plan);
            snprintf(plan + l, sizeof plan - l, "%s\n", PQgetvalue(r, i, 0));
        }
        PQclear(r);
        cr_assert(strstr(plan, "Index Scan using run_node_state_pkey") != NULL, "plan:\n%s", plan);
        cr_assert(strstr(plan, "Index Cond: (ROW(run_id, node_id) > ROW(") != NULL, "plan:\n%s", plan);
        cr_assert(strstr(plan, "Sort") == NULL && strstr(plan, "Seq Scan") == NULL, "plan:\n%s", plan);
    }
    PQfinish(c);
}

/* ---- retention's deletes, judged again by the shared store ---- */

typedef struct kept_runs {
    superseded sup;   /* first: isolated_ctx serves every callback */
    char ids[256];
} kept_runs;

static void on_kept(void *ctx, const char *run_id, int64_t seq)
{
    (void)seq;
    kept_runs *k = ctx;
    size_t len = strlen(k->ids);
    snprintf(k->ids + len, sizeof k->ids - len, "%s%s", len ? "," : "", run_id);
}

/* Deletes runs in one batch, expiring as given, judged against cutoff; the kept ones as "a,b". */
static void delete_runs(store *s, const char *const *runs, const bool *expiring, size_t n,
                        int64_t cutoff, kept_runs *k)
{
    memset(k, 0, sizeof *k);
    store_batch b = { .delete_runs = runs, .n_deletes = n, .expiring = expiring,
                      .expire_cutoff_ms = cutoff, .on_expire_kept = on_kept,
                      .on_isolated = on_isolated, .on_superseded = on_superseded,
                      .isolated_ctx = k };
    cr_assert_eq(store_write(s, &b), 0, "store_write: %s", store_errmsg(s));
    size_t commas = 0;
    for (const char *p = k->ids; *p; p++)
        commas += *p == ',';
    cr_assert_eq(b.n_expire_kept, k->ids[0] ? commas + 1 : 0);
}

static long long rows_of_run(const char *run)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM run_node_state WHERE run_id = '%s'", run);
    return int_of(sql);
}

/*
 * Another instance may write a run between this one's sweep and its
 * delete: the store deletes a run retention queued only if it is still
 * expired, and keeps it whole otherwise; a DELETE /runs/{id} goes whatever.
 */
Test(pg_store, expiring_delete_keeps_a_run_written_since)
{
    store *s = open_pg();
    aged rows[] = {
        { "x-old", "a", NS_COMPLETED, SFX_T0 - 10 },   { "x-old", "b", NS_FAILED, SFX_T0 - 10 },
        { "y-fresh", "a", NS_COMPLETED, SFX_T0 - 10 }, { "y-fresh", "b", NS_COMPLETED, SFX_T0 },
        { "z-open", "a", NS_RUNNING, SFX_T0 - 10 },    { "z-plain", "a", NS_RUNNING, SFX_T0 },
    };
    write_aged(s, rows, 6);
    const char *runs[] = { "x-old", "y-fresh", "z-open", "z-plain" };
    const bool expiring[] = { true, true, true, false };
    kept_runs k;
    delete_runs(s, runs, expiring, 4, SFX_T0, &k);
    cr_assert_str_eq(k.ids, "y-fresh,z-open");
    cr_assert_eq(rows_of_run("x-old"), 0);
    cr_assert_eq(rows_of_run("y-fresh"), 2, "kept whole");
    cr_assert_eq(rows_of_run("z-open"), 1);
    cr_assert_eq(rows_of_run("z-plain"), 0, "an API delete is not judged");
    store_close(s);
}

/* store_write of one expiring delete, on a thread of its own. */
typedef struct expiring_write {
    store *s;
    const char *run;
    int rc;
    kept_runs k;
} expiring_write;

static void *expiring_write_thread(void *arg)
{
    expiring_write *w = arg;
    const char *runs[1] = { w->run };
    const bool expiring[1] = { true };
    store_batch b = { .delete_runs = runs, .n_deletes = 1, .expiring = expiring,
                      .expire_cutoff_ms = SFX_T0, .on_expire_kept = on_kept,
                      .isolated_ctx = &w->k };
    /*
     * As the writer does, a failed batch is tried again: on a machine too
     * busy to see the wait (and commit the write) within the 1 s lock
     * timeout, the first try fails and the next one finds the write
     * committed, which must keep the run all the same.
     */
    for (int i = 0; i < 5; i++) {
        w->k = (kept_runs){ 0 };
        if ((w->rc = store_write(w->s, &b)) == 0)
            break;
    }
    return NULL;
}

/*
 * Another instance's write in flight when the delete comes: the delete
 * waits for it (the run's rows are locked first) and then sees it, so the
 * run is kept, the new state of the node included. (Judged on the rows as
 * they were, the delete would wait on the same row and then remove its new
 * version.)
 */
Test(pg_store, expiring_delete_waits_for_a_write_in_flight_and_keeps_the_run)
{
    store *s = open_pg();
    aged rows[] = { { "w", "a", NS_COMPLETED, SFX_T0 - 10 }, { "w", "b", NS_COMPLETED, SFX_T0 - 10 } };
    write_aged(s, rows, 2);
    PGconn *other = PQconnectdb(uri), *watch = PQconnectdb(uri);
    cr_assert_eq(PQstatus(other), CONNECTION_OK, "%s", PQerrorMessage(other));
    cr_assert_eq(PQstatus(watch), CONNECTION_OK, "%s", PQerrorMessage(watch));
    PGresult *r = PQexec(other, "BEGIN; UPDATE run_node_state SET status = 'running',"
                                " updated_at = '2099-01-01T00:00:00.000Z'"
                                " WHERE run_id = 'w' AND node_id = 'b'");
    cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQresultErrorMessage(r));
    PQclear(r);

    expiring_write w = { .s = s, .run = "w", .rc = -2 };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, expiring_write_thread, &w), 0);
    /* Commits once the delete waits on the row lock (bounded: the lock times out after 1 s). */
    bool waiting = false;
    for (int i = 0; i < 2000 && !waiting; i++) {
        r = PQexec(watch, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                          " AND datname = current_database()");
        waiting = PQresultStatus(r) == PGRES_TUPLES_OK && atoi(PQgetvalue(r, 0, 0)) > 0;
        PQclear(r);
        if (!waiting)
            usleep(1000);
    }
    r = PQexec(other, "COMMIT");
    cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQresultErrorMessage(r));
    PQclear(r);
    cr_assert_eq(pthread_join(t, NULL), 0);
    cr_assert(waiting, "the delete never waited for the write in flight");
    cr_assert_eq(w.rc, 0, "store_write: %s", store_errmsg(s));
    cr_assert_str_eq(w.k.ids, "w");
    cr_assert_eq(rows_of_run("w"), 2, "the run is kept whole");
    char *st = value_of("SELECT status FROM run_node_state WHERE run_id = 'w' AND node_id = 'b'");
    cr_assert_str_eq(st, "running", "the write in flight is not lost");
    free(st);
    PQfinish(other);
    PQfinish(watch);
    store_close(s);
}

/* store_reader_deleted_seq of our database. */
static int64_t deleted_seq_of(store_reader *r, const char *run)
{
    int64_t seq = -1;
    cr_assert_eq(store_reader_deleted_seq(r, run, &seq), 0);
    return seq;
}

/*
 * A run's delete is on record with its seq (the newest wins), in the
 * delete's transaction, on either way of writing a batch; retention's delete
 * of a run it keeps is no delete; old records go with a cutoff.
 */
Test(pg_store, deletes_are_on_record_with_their_seq)
{
    store *s = open_pg();
    store_reader *r = open_reader();
    cr_assert_eq(deleted_seq_of(r, "gone"), 0);
    aged rows[] = {
        { "gone", "a", NS_RUNNING, SFX_T0 },  { "kept", "a", NS_COMPLETED, SFX_T0 },
        { "expired", "a", NS_COMPLETED, SFX_T0 - 10 },
    };
    write_aged(s, rows, 3);
    const char *runs[] = { "gone", "kept", "expired" };
    const bool expiring[] = { false, true, true };
    const int64_t seqs[] = { 100, 101, 102 };
    kept_runs k = { 0 };
    store_batch b = { .delete_runs = runs, .delete_seqs = seqs, .n_deletes = 3,
                      .expiring = expiring, .expire_cutoff_ms = SFX_T0 - 5,
                      .on_expire_kept = on_kept, .isolated_ctx = &k, .last_seq = 102 };
    cr_assert_eq(store_write(s, &b), 0, "store_write: %s", store_errmsg(s));
    cr_assert_str_eq(k.ids, "kept");
    cr_assert_eq(deleted_seq_of(r, "gone"), 100);
    cr_assert_eq(deleted_seq_of(r, "kept"), 0, "kept by retention: not deleted");
    cr_assert_eq(deleted_seq_of(r, "expired"), 102);

    /* Older does not replace newer; a batch that isolates a row records its deletes too. */
    const int64_t older[] = { 90 }, newer[] = { 110 };
    store_batch ob = { .delete_runs = runs, .delete_seqs = older, .n_deletes = 1, .last_seq = 102 };
    cr_assert_eq(store_write(s, &ob), 0, "store_write: %s", store_errmsg(s));
    cr_assert_eq(deleted_seq_of(r, "gone"), 100);
    ns_row d = sfx_draft("iso", "b", NS_FAILED, 111);
    d.last_error = "bad \xff\xfe bytes";
    ns_row *bad[1] = { model_row_copy(&d) };
    bool forced[1] = { true };
    sfx_isolated iso = { 0 };
    store_batch nb = { .delete_runs = runs, .delete_seqs = newer, .n_deletes = 1, .rows = bad,
                       .n_rows = 1, .forced = forced, .on_isolated = sfx_on_isolated,
                       .isolated_ctx = &iso, .last_seq = 111 };
    cr_assert_eq(store_write(s, &nb), 0, "store_write: %s", store_errmsg(s));
    cr_assert_eq(nb.n_isolated, 1);
    cr_assert_eq(deleted_seq_of(r, "gone"), 110);
    unref_all(bad, 1);

    /* Records older than the cutoff go. */
    admin(uri, "UPDATE run_deletes SET deleted_at = 1000 WHERE run_id = 'expired'");
    store_batch fb = { .forget_deletes_before_ms = 2000, .last_seq = 111 };
    cr_assert_eq(store_write(s, &fb), 0, "store_write: %s", store_errmsg(s));
    cr_assert_eq(deleted_seq_of(r, "expired"), 0);
    cr_assert_eq(deleted_seq_of(r, "gone"), 110);
    store_reader_close(r);
    store_close(s);
}

/* Retention's delete of a run a DELETE /runs/{id} removed already expired nothing: reported, not counted. */
Test(pg_store, expiring_delete_of_a_run_gone_already_is_not_an_expiry)
{
    store *s = open_pg();
    aged rows[] = { { "old", "a", NS_COMPLETED, SFX_T0 - 10 } };
    write_aged(s, rows, 1);
    const char *runs[] = { "old", "gone" };
    const bool expiring[] = { true, true };
    kept_runs k;
    delete_runs(s, runs, expiring, 2, SFX_T0, &k);
    cr_assert_str_eq(k.ids, "gone");
    cr_assert_eq(rows_of_run("old"), 0);
    store_close(s);
}
