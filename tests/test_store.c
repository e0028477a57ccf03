/*
 * Unit tests for store: schema and pragmas on open, the write/read round
 * trip, upsert and delete semantics, last_seq persistence, version refusal,
 * and all-or-nothing batches when SQLite says no.
 *
 * Each test gets a fresh directory from mkdtemp; raw sqlite3 connections
 * inspect the file or hold locks the way another process would.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "server/engine/model.h"
#include "server/engine/store.h"

/* Criterion fixtures have no context argument; this is per test process. */
static char tmp_dir[64];
static char db_path[128];

static void setup(void)
{
    strcpy(tmp_dir, "/tmp/test_store.XXXXXX");
    cr_assert(mkdtemp(tmp_dir) != NULL);
    snprintf(db_path, sizeof db_path, "%s/ns.db", tmp_dir);
}

static void teardown(void)
{
    static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
    char p[PATH_MAX + 16];

    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        snprintf(p, sizeof p, "%s%s", db_path, suffixes[i]);
        unlink(p);
    }
    rmdir(tmp_dir);
}

TestSuite(store, .init = setup, .fini = teardown);

/* 2026-11-26T16:27:29.123Z and a few neighbours. */
#define T0 INT64_C(1795710449123)

static store *open_store(void)
{
    char err[512] = "";
    store *s = store_open(db_path, false, err, sizeof err);

    cr_assert(s != NULL, "store_open: %s", err);
    return s;
}

static store_reader *open_reader(void)
{
    char err[512] = "";
    store_reader *r = store_reader_open(db_path, err, sizeof err);

    cr_assert(r != NULL, "store_reader_open: %s", err);
    return r;
}

static sqlite3 *open_raw(void)
{
    sqlite3 *db = NULL;

    cr_assert(sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READWRITE, NULL)
              == SQLITE_OK);
    return db;
}

static int64_t raw_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    int64_t v;

    cr_assert(sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK,
              "%s: %s", sql, sqlite3_errmsg(db));
    cr_assert(sqlite3_step(st) == SQLITE_ROW, "%s: no row", sql);
    v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* Copies the first column of the first row into buf ("" for NULL). */
static void raw_text(sqlite3 *db, const char *sql, char *buf, size_t len)
{
    sqlite3_stmt *st = NULL;
    const unsigned char *t;

    cr_assert(sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK,
              "%s: %s", sql, sqlite3_errmsg(db));
    cr_assert(sqlite3_step(st) == SQLITE_ROW, "%s: no row", sql);
    t = sqlite3_column_text(st, 0);
    snprintf(buf, len, "%s", t != NULL ? (const char *)t : "");
    sqlite3_finalize(st);
}

/* A draft with every timestamp NULL and every optional text NULL. */
static ns_row draft(const char *run, const char *node, ns_status st,
                    int64_t seq)
{
    ns_row d;

    memset(&d, 0, sizeof d);
    d.run_id = run;
    d.node_id = node;
    d.status = st;
    d.attempt = 1;
    for (int f = 0; f < NS_TS_COUNT; f++)
        d.ts[f] = NS_TS_NULL;
    d.updated_at = T0 + seq;
    d.seq = seq;
    return d;
}

static int write_rows(store *s, ns_row *const *rows, size_t n,
                      const char *const *deletes, size_t nd, int64_t last_seq)
{
    store_batch b = {
        .delete_runs = deletes,
        .n_deletes = nd,
        .rows = rows,
        .n_rows = n,
        .last_seq = last_seq,
    };
    return store_write(s, &b);
}

/* What a load_run delivered. */
#define MAX_LOADED 16
typedef struct loaded {
    ns_row *rows[MAX_LOADED];
    size_t n;
    size_t stop_after;          /* fn returns -1 after this many; 0 = never */
} loaded;

static int collect(void *ctx, ns_row *row)
{
    loaded *l = ctx;

    cr_assert(l->n < MAX_LOADED);
    cr_assert(row->refs == 1, "a delivered row carries one reference");
    l->rows[l->n++] = row;
    if (l->stop_after != 0 && l->n >= l->stop_after)
        return -1;
    return 0;
}

static void loaded_free(loaded *l)
{
    for (size_t i = 0; i < l->n; i++)
        model_row_unref(l->rows[i]);
    l->n = 0;
}

static void load(store_reader *r, const char *run, loaded *l)
{
    memset(l, 0, sizeof *l);
    cr_assert(eq(int, store_reader_load_run(r, run, collect, l), 0));
}

static void assert_str_or_null(const char *got, const char *want,
                               const char *field)
{
    if (want == NULL)
        cr_assert(got == NULL, "%s: want NULL, got \"%s\"", field, got);
    else {
        cr_assert(got != NULL, "%s: want \"%s\", got NULL", field, want);
        cr_assert(eq(str, (char *)got, (char *)want), "%s", field);
    }
}

/* Every field of got equals want (refs and packing aside). */
static void assert_row_eq(const ns_row *got, const ns_row *want)
{
    cr_assert(eq(str, (char *)got->run_id, (char *)want->run_id));
    cr_assert(eq(str, (char *)got->node_id, (char *)want->node_id));
    cr_assert(eq(int, got->status, want->status));
    cr_assert(eq(i64, got->attempt, want->attempt));
    for (int f = 0; f < NS_TS_COUNT; f++)
        cr_assert(eq(i64, got->ts[f], want->ts[f]), "ts[%d]", f);
    assert_str_or_null(got->last_error, want->last_error, "last_error");
    cr_assert(eq(int, got->retryable, want->retryable));
    assert_str_or_null(got->suspension_reason, want->suspension_reason,
                       "suspension_reason");
    assert_str_or_null(got->resume_state, want->resume_state, "resume_state");
    assert_str_or_null(got->outputs, want->outputs, "outputs");
    cr_assert(eq(i64, got->updated_at, want->updated_at));
    cr_assert(eq(i64, got->seq, want->seq));
}

Test(store, open_creates_schema_wal_and_version)
{
    store *s = open_store();
    sqlite3 *db;
    char mode[16];

    cr_assert(eq(i64, store_last_seq(s), 0));
    db = open_raw();
    cr_assert(eq(i64, raw_int(db, "PRAGMA user_version"), 1));
    raw_text(db, "PRAGMA journal_mode", mode, sizeof mode);
    cr_assert(eq(str, mode, "wal"));
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM sqlite_master WHERE"
                                  " type='table' AND name IN"
                                  " ('run_node_state','nodestate_meta')"), 2));
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM sqlite_master WHERE"
                                  " type='index' AND"
                                  " name='run_node_state_run_status'"
                                  " AND tbl_name='run_node_state'"), 1));
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM pragma_table_info("
                                  "'run_node_state')"), 16));
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM pragma_table_info("
                                  "'run_node_state') WHERE pk > 0"), 2));
    /* WITHOUT ROWID: there is no rowid to select. */
    cr_assert(sqlite3_exec(db, "SELECT rowid FROM run_node_state", NULL, NULL,
                           NULL) != SQLITE_OK);
    sqlite3_close(db);
    store_close(s);

    /* Reopening an existing version-1 file is fine. */
    s = open_store();
    store_close(s);
}

Test(store, write_then_read_back_field_by_field)
{
    store *s = open_store();
    store_reader *r;
    loaded l;
    ns_row a = draft("run-1", "a", NS_COMPLETED, 7);
    ns_row b = draft("run-1", "b", NS_SUSPENDED, 8);

    a.attempt = 3;
    a.ts[NS_TS_SCHEDULED] = T0;
    a.ts[NS_TS_STARTED] = T0 + 1000;
    a.ts[NS_TS_COMPLETED] = T0 + 2500;
    a.last_error = "boom: \"quoted\" ünïcode";
    a.retryable = true;
    a.outputs = "{\"k\":[1,2,{\"x\":null}]}";
    a.resume_state = "42";
    b.ts[NS_TS_SUSPENDED] = T0 + 5;
    b.suspension_reason = "waiting for approval";
    b.resume_state = "{\"cursor\":\"abc\"}";
    b.retryable = false;

    ns_row *rows[] = {&a, &b};
    cr_assert(eq(int, write_rows(s, rows, 2, NULL, 0, 8), 0),
              "store_write: %s", store_errmsg(s));
    cr_assert(eq(i64, store_last_seq(s), 8));

    r = open_reader();
    load(r, "run-1", &l);
    cr_assert(eq(sz, l.n, 2));
    assert_row_eq(l.rows[0], &a);
    assert_row_eq(l.rows[1], &b);
    loaded_free(&l);

    /* A run with no rows delivers nothing and succeeds. */
    load(r, "run-unknown", &l);
    cr_assert(eq(sz, l.n, 0));

    /* On disk: RFC 3339 text, NULL for absent timestamps, 0/1 retryable. */
    sqlite3 *db = open_raw();
    char buf[64];
    raw_text(db, "SELECT scheduled_at FROM run_node_state WHERE node_id='a'",
             buf, sizeof buf);
    cr_assert(eq(str, buf, "2026-11-26T16:27:29.123Z"));
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM run_node_state WHERE"
                                  " node_id='b' AND scheduled_at IS NULL"
                                  " AND failed_at IS NULL"), 1));
    cr_assert(eq(i64, raw_int(db, "SELECT retryable FROM run_node_state"
                                  " WHERE node_id='a'"), 1));
    raw_text(db, "SELECT status FROM run_node_state WHERE node_id='b'", buf,
             sizeof buf);
    cr_assert(eq(str, buf, "suspended"));
    sqlite3_close(db);

    store_reader_close(r);
    store_close(s);
}

Test(store, upsert_replaces_the_row)
{
    store *s = open_store();
    store_reader *r = open_reader();
    loaded l;
    ns_row v1 = draft("run", "n", NS_RUNNING, 1);
    ns_row v2 = draft("run", "n", NS_FAILED, 2);

    v1.ts[NS_TS_STARTED] = T0;
    v1.last_error = "old";
    v1.outputs = "[1]";
    v1.retryable = true;
    ns_row *rows1[] = {&v1};
    cr_assert(eq(int, write_rows(s, rows1, 1, NULL, 0, 1), 0));

    /* v2 clears what v1 had set: NULL must overwrite, not keep. */
    v2.attempt = 2;
    v2.ts[NS_TS_FAILED] = T0 + 10;
    v2.suspension_reason = "new";
    ns_row *rows2[] = {&v2};
    cr_assert(eq(int, write_rows(s, rows2, 1, NULL, 0, 2), 0));

    load(r, "run", &l);
    cr_assert(eq(sz, l.n, 1));
    assert_row_eq(l.rows[0], &v2);
    loaded_free(&l);
    store_reader_close(r);
    store_close(s);
}

Test(store, delete_run_removes_only_that_run_and_comes_first)
{
    store *s = open_store();
    store_reader *r = open_reader();
    loaded l;
    ns_row a1 = draft("r1", "a", NS_RUNNING, 1);
    ns_row b1 = draft("r1", "b", NS_RUNNING, 2);
    ns_row a2 = draft("r2", "a", NS_SCHEDULED, 3);
    ns_row c1 = draft("r1", "c", NS_IDLE, 4);

    ns_row *rows[] = {&a1, &b1, &a2};
    cr_assert(eq(int, write_rows(s, rows, 3, NULL, 0, 3), 0));

    /* Deletes apply before the upserts of the same batch. */
    const char *const del[] = {"r1"};
    ns_row *rows2[] = {&c1};
    cr_assert(eq(int, write_rows(s, rows2, 1, del, 1, 4), 0),
              "store_write: %s", store_errmsg(s));

    load(r, "r1", &l);
    cr_assert(eq(sz, l.n, 1));
    assert_row_eq(l.rows[0], &c1);
    loaded_free(&l);
    load(r, "r2", &l);
    cr_assert(eq(sz, l.n, 1));
    assert_row_eq(l.rows[0], &a2);
    loaded_free(&l);

    /* Deleting a run that does not exist is not an error. */
    const char *const del2[] = {"nope"};
    cr_assert(eq(int, write_rows(s, NULL, 0, del2, 1, 4), 0));
    store_reader_close(r);
    store_close(s);
}

Test(store, last_seq_persists_and_survives_deleting_all_rows)
{
    store *s = open_store();
    ns_row a = draft("r", "a", NS_RUNNING, 41);
    ns_row *rows[] = {&a};

    cr_assert(eq(int, write_rows(s, rows, 1, NULL, 0, 42), 0));
    cr_assert(eq(i64, store_last_seq(s), 42));
    store_close(s);

    /* Reopen with synchronous=FULL: the other mode reads the same file. */
    char err[512] = "";
    s = store_open(db_path, true, err, sizeof err);
    cr_assert(s != NULL, "store_open: %s", err);
    cr_assert(eq(i64, store_last_seq(s), 42));
    const char *const del[] = {"r"};
    cr_assert(eq(int, write_rows(s, NULL, 0, del, 1, 43), 0));
    store_close(s);

    s = open_store();
    cr_assert(eq(i64, store_last_seq(s), 43));
    sqlite3 *db = open_raw();
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM run_node_state"), 0));
    sqlite3_close(db);
    store_close(s);
}

Test(store, newer_schema_version_is_refused)
{
    sqlite3 *db = NULL;
    char err[512] = "";

    cr_assert(sqlite3_open_v2(db_path, &db,
                              SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                              NULL) == SQLITE_OK);
    cr_assert(sqlite3_exec(db, "PRAGMA user_version = 2", NULL, NULL, NULL)
              == SQLITE_OK);
    sqlite3_close(db);

    cr_assert(store_open(db_path, false, err, sizeof err) == NULL);
    cr_assert(strstr(err, "database schema version 2 is newer than this"
                          " nodestate supports (1)") != NULL, "err: %s", err);
    cr_assert(strstr(err, db_path) != NULL, "err names the path: %s", err);
}

Test(store, open_errors_name_the_path)
{
    char err[512] = "";
    char bad[PATH_MAX + 32];
    FILE *f;

    snprintf(bad, sizeof bad, "%s/no/such/dir/x.db", tmp_dir);
    cr_assert(store_open(bad, false, err, sizeof err) == NULL);
    cr_assert(strstr(err, bad) != NULL, "err: %s", err);

    /* A file that is not a database. */
    f = fopen(db_path, "w");
    cr_assert(f != NULL);
    for (int i = 0; i < 64; i++)
        fputs("this is not an sqlite database file\n", f);
    fclose(f);
    err[0] = '\0';
    cr_assert(store_open(db_path, true, err, sizeof err) == NULL);
    cr_assert(strstr(err, db_path) != NULL, "err: %s", err);
}

/*
 * The timeout is a hang guard, not a measurement: the write should give up
 * after its 100 ms busy timeout, so 10 s only trips if it waits on the lock.
 */
Test(store, write_fails_fast_under_external_lock_then_succeeds, .timeout = 10)
{
    store *s = open_store();
    store_reader *r = open_reader();
    loaded l;
    ns_row a = draft("r", "a", NS_RUNNING, 1);
    ns_row a2 = draft("r", "a", NS_COMPLETED, 2);
    ns_row b = draft("r", "b", NS_SCHEDULED, 3);
    ns_row *base[] = {&a};
    ns_row *next[] = {&a2, &b};
    const char *const del[] = {"r"};
    sqlite3 *other = open_raw();

    cr_assert(eq(int, write_rows(s, base, 1, NULL, 0, 1), 0));
    cr_assert(sqlite3_exec(other, "BEGIN EXCLUSIVE", NULL, NULL, NULL)
              == SQLITE_OK);

    cr_assert(eq(int, write_rows(s, next, 2, del, 1, 3), -1));
    cr_assert(strlen(store_errmsg(s)) > 0);
    cr_assert(strstr(store_errmsg(s), "locked") != NULL, "errmsg: %s",
              store_errmsg(s));
    cr_assert(eq(i64, store_last_seq(s), 1), "last_seq only moves on commit");

    cr_assert(sqlite3_exec(other, "COMMIT", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(other);

    load(r, "r", &l);
    cr_assert(eq(sz, l.n, 1), "nothing of the failed batch was written");
    assert_row_eq(l.rows[0], &a);
    loaded_free(&l);

    /* The same batch goes through once the lock is gone. */
    cr_assert(eq(int, write_rows(s, next, 2, del, 1, 3), 0),
              "store_write: %s", store_errmsg(s));
    cr_assert(eq(i64, store_last_seq(s), 3));
    load(r, "r", &l);
    cr_assert(eq(sz, l.n, 2));
    assert_row_eq(l.rows[0], &a2);
    assert_row_eq(l.rows[1], &b);
    loaded_free(&l);
    store_reader_close(r);
    store_close(s);
}

Test(store, failure_mid_batch_rolls_back_everything)
{
    store *s = open_store();
    store_reader *r = open_reader();
    loaded l;
    ns_row keep = draft("r", "keep", NS_RUNNING, 1);
    ns_row other = draft("q", "x", NS_RUNNING, 2);
    ns_row good = draft("q", "y", NS_SCHEDULED, 3);
    ns_row bad = draft("q", "z", NS_STATUS_COUNT, 4); /* no status name */
    ns_row *base[] = {&keep, &other};
    ns_row *batch[] = {&good, &bad};
    ns_row *fixed[] = {&good};
    const char *const del[] = {"r"};

    cr_assert(eq(int, write_rows(s, base, 2, NULL, 0, 2), 0));

    /* The delete and the first upsert succeed inside the transaction. */
    cr_assert(eq(int, write_rows(s, batch, 2, del, 1, 4), -1));
    cr_assert(strlen(store_errmsg(s)) > 0);
    cr_assert(eq(i64, store_last_seq(s), 2));

    load(r, "r", &l);
    cr_assert(eq(sz, l.n, 1), "the delete was rolled back");
    assert_row_eq(l.rows[0], &keep);
    loaded_free(&l);
    load(r, "q", &l);
    cr_assert(eq(sz, l.n, 1), "the good upsert was rolled back");
    assert_row_eq(l.rows[0], &other);
    loaded_free(&l);

    sqlite3 *db = open_raw();
    cr_assert(eq(i64, raw_int(db, "SELECT value FROM nodestate_meta WHERE"
                                  " key='last_seq'"), 2));
    sqlite3_close(db);

    /* Statements were reset: the next batch on the same store works. */
    cr_assert(eq(int, write_rows(s, fixed, 1, del, 1, 3), 0),
              "store_write: %s", store_errmsg(s));
    load(r, "r", &l);
    cr_assert(eq(sz, l.n, 0));
    load(r, "q", &l);
    cr_assert(eq(sz, l.n, 2));
    assert_row_eq(l.rows[0], &other);
    assert_row_eq(l.rows[1], &good);
    loaded_free(&l);
    store_reader_close(r);
    store_close(s);
}

Test(store, reader_returns_rows_in_node_id_order)
{
    store *s = open_store();
    store_reader *r = open_reader();
    loaded l;
    ns_row c = draft("r", "c", NS_IDLE, 1);
    ns_row a = draft("r", "a", NS_IDLE, 2);
    ns_row b = draft("r", "B", NS_IDLE, 3);
    ns_row d = draft("r", "a.1", NS_IDLE, 4);

    /* Written out of order, in two batches. */
    ns_row *first[] = {&c, &a};
    ns_row *second[] = {&d, &b};
    cr_assert(eq(int, write_rows(s, first, 2, NULL, 0, 2), 0));
    cr_assert(eq(int, write_rows(s, second, 2, NULL, 0, 4), 0));

    load(r, "r", &l);
    cr_assert(eq(sz, l.n, 4));
    /* Byte order: uppercase sorts before lowercase. */
    cr_assert(eq(str, (char *)l.rows[0]->node_id, "B"));
    cr_assert(eq(str, (char *)l.rows[1]->node_id, "a"));
    cr_assert(eq(str, (char *)l.rows[2]->node_id, "a.1"));
    cr_assert(eq(str, (char *)l.rows[3]->node_id, "c"));
    loaded_free(&l);
    store_reader_close(r);
    store_close(s);
}

Test(store, reader_stops_when_fn_says_so)
{
    store *s = open_store();
    store_reader *r = open_reader();
    loaded l;
    ns_row a = draft("r", "a", NS_IDLE, 1);
    ns_row b = draft("r", "b", NS_IDLE, 2);
    ns_row *rows[] = {&a, &b};

    cr_assert(eq(int, write_rows(s, rows, 2, NULL, 0, 2), 0));
    memset(&l, 0, sizeof l);
    l.stop_after = 1;
    cr_assert(eq(int, store_reader_load_run(r, "r", collect, &l), -1));
    cr_assert(eq(sz, l.n, 1));
    loaded_free(&l);

    /* The statement was reset: a full read still works afterwards. */
    load(r, "r", &l);
    cr_assert(eq(sz, l.n, 2));
    loaded_free(&l);
    store_reader_close(r);
    store_close(s);
}

Test(store, reader_refuses_a_row_it_cannot_parse)
{
    store *s = open_store();
    store_reader *r = open_reader();
    loaded l;
    ns_row a = draft("r", "a", NS_IDLE, 1);
    ns_row *rows[] = {&a};
    sqlite3 *db;

    cr_assert(eq(int, write_rows(s, rows, 1, NULL, 0, 1), 0));
    db = open_raw();
    cr_assert(sqlite3_exec(db, "UPDATE run_node_state SET status='bogus'",
                           NULL, NULL, NULL) == SQLITE_OK);
    memset(&l, 0, sizeof l);
    cr_assert(eq(int, store_reader_load_run(r, "r", collect, &l), -1));
    cr_assert(eq(sz, l.n, 0));

    cr_assert(sqlite3_exec(db, "UPDATE run_node_state SET status='idle',"
                               " started_at='yesterday'",
                           NULL, NULL, NULL) == SQLITE_OK);
    cr_assert(eq(int, store_reader_load_run(r, "r", collect, &l), -1));
    cr_assert(eq(sz, l.n, 0));
    sqlite3_close(db);
    store_reader_close(r);
    store_close(s);
}
