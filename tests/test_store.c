/*
 * Unit tests for store: schema and pragmas on open, the write/read round
 * trip (a whole run, one node by key, a page after a cursor with a status
 * mask), upsert and delete semantics, last_seq persistence, version refusal,
 * migration of the original design's (version 0) table, all-or-nothing
 * batches when SQLite says no, isolation of a row SQLite refuses by itself,
 * the spill sidecar with its replay, and the online backup.
 *
 * Each test gets a fresh directory from mkdtemp; raw sqlite3 connections
 * inspect the file or hold locks the way another process would.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sqlite3.h>

#include "model.h"
#include "store.h"
#include "sqlite_internal.h" /* STORE_ROWS_MANY */
#include "store_fixture.h"

static void setup(void)
{
    sfx_setup("test_store");
}

TestSuite(store, .init = setup, .fini = sfx_teardown);

/* 2026-11-26T16:27:29.123Z and a few neighbours. */
#define T0 SFX_T0

/* run_node_state as builds before 2026-12-07 made it: in key order, WITHOUT ROWID. */
#define WITHOUT_ROWID_TABLE_SQL                                               \
    "CREATE TABLE run_node_state (run_id TEXT NOT NULL,"                      \
    " node_id TEXT NOT NULL, status TEXT NOT NULL,"                           \
    " attempt INTEGER NOT NULL, scheduled_at TEXT,"                           \
    " started_at TEXT, completed_at TEXT, failed_at TEXT,"                    \
    " suspended_at TEXT, last_error TEXT,"                                    \
    " retryable INTEGER NOT NULL DEFAULT 0,"                                  \
    " suspension_reason TEXT, resume_state_json TEXT,"                        \
    " outputs_json TEXT, updated_at TEXT NOT NULL,"                           \
    " seq INTEGER NOT NULL, PRIMARY KEY (run_id, node_id))"                   \
    " WITHOUT ROWID;"

static sqlite3 *open_raw(void)
{
    sqlite3 *db = NULL;

    cr_assert(sqlite3_open_v2(sfx_db_path(), &db, SQLITE_OPEN_READWRITE, NULL)
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

static void raw_exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;

    cr_assert(sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK, "%s: %s",
              sql, msg != NULL ? msg : "?");
}

/* Another connection takes the write lock, as another process would. */
static sqlite3 *lock_db(void)
{
    sqlite3 *db = open_raw();

    raw_exec(db, "BEGIN EXCLUSIVE");
    return db;
}

static void unlock_db(sqlite3 *db)
{
    raw_exec(db, "COMMIT");
    sqlite3_close(db);
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

/* write_rows, asserting it succeeded. */
static void write_ok(store *s, ns_row *const *rows, size_t n,
                     const char *const *deletes, size_t nd, int64_t last_seq)
{
    cr_assert(eq(int, write_rows(s, rows, n, deletes, nd, last_seq), 0),
              "store_write: %s", store_errmsg(s));
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

/* Loads run into l, asserting success and that no row was skipped. */
static void load(store_reader *r, const char *run, loaded *l)
{
    size_t skipped = 99;

    memset(l, 0, sizeof *l);
    cr_assert(eq(int, store_reader_load_run(r, run, false, collect, l, &skipped),
                 0));
    cr_assert(eq(sz, skipped, 0));
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

/* In expect_run: a row that is counted but not compared. */
#define ANY ((const ns_row *)NULL)

/*
 * Loads run and asserts it holds n rows, the i-th equal to the i-th of the
 * n const ns_row * arguments that follow (ANY: not compared); why, if not
 * NULL, says what a wrong count means.
 */
static void expect_run(store_reader *r, const char *run, const char *why,
                       size_t n, ...)
{
    loaded l;
    va_list ap;

    load(r, run, &l);
    cr_assert(eq(sz, l.n, n), "run \"%s\": %s", run,
              why != NULL ? why : "row count");
    va_start(ap, n);
    for (size_t i = 0; i < n; i++) {
        const ns_row *want = va_arg(ap, const ns_row *);

        if (want != NULL)
            assert_row_eq(l.rows[i], want);
    }
    va_end(ap);
    loaded_free(&l);
}

/*
 * Builds before 2026-12-07 made run_node_state WITHOUT ROWID (the same
 * columns, key and version): such a file is written, read and emptied of a
 * run like a new one, and keeps its layout.
 */
Test(store, a_file_made_without_rowid_is_read_and_written_alike)
{
    sqlite3 *db = NULL;

    cr_assert(sqlite3_open_v2(sfx_db_path(), &db,
                              SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                              NULL) == SQLITE_OK);
    raw_exec(db, "PRAGMA journal_mode = WAL;"
                 WITHOUT_ROWID_TABLE_SQL
                 "CREATE TABLE nodestate_meta ( key TEXT PRIMARY KEY,"
                 " value INTEGER);"
                 "PRAGMA user_version = 2;");
    sqlite3_close(db);

    store *s = sfx_open_store();
    ns_row a = sfx_draft("r", "a", NS_RUNNING, 1);
    ns_row b = sfx_draft("r", "b", NS_SCHEDULED, 2);
    ns_row gone = sfx_draft("old", "x", NS_COMPLETED, 3);
    ns_row a2 = sfx_draft("r", "a", NS_COMPLETED, 4);
    ns_row *first[] = {&a, &b, &gone};
    ns_row *second[] = {&a2};
    const char *deletes[] = {"old"};

    write_ok(s, first, 3, NULL, 0, 3);
    write_ok(s, second, 1, deletes, 1, 4);
    /* Past STORE_ROWS_MANY: each multi-row upsert and single rows, twice (new rows, then updates). */
    enum { MANY = 2 * STORE_ROWS_MANY + STORE_ROWS_FEW + 5 };
    char ids[MANY][16];
    ns_row many[MANY];
    ns_row *many_p[MANY];
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < MANY; i++) {
            snprintf(ids[i], sizeof ids[i], "m%04d", i);
            many[i] = sfx_draft("many", ids[i], pass ? NS_COMPLETED : NS_RUNNING,
                                5 + pass * MANY + i);
            many_p[i] = &many[i];
        }
        write_ok(s, many_p, MANY, NULL, 0, 4 + (pass + 1) * MANY);
    }
    store_reader *r = sfx_open_reader();
    expect_run(r, "r", "updated in place", 2, &a2, &b);
    expect_run(r, "old", "the run deleted", 0);
    store_reader_close(r);
    store_close(s);

    db = open_raw();
    cr_assert(eq(i64, raw_int(db, "SELECT wr FROM pragma_table_list"
                                  " WHERE name = 'run_node_state'"), 1));
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM run_node_state"), 2 + MANY));
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM run_node_state WHERE run_id = 'many'"
                                  " AND status = 'completed'"), MANY));
    cr_assert(eq(i64, raw_int(db, "PRAGMA user_version"), 2));
    sqlite3_close(db);
}

Test(store, open_creates_schema_wal_and_version)
{
    store *s = sfx_open_store();
    sqlite3 *db;
    char mode[16];

    cr_assert(eq(i64, store_last_seq(s), 0));
    db = open_raw();
    cr_assert(eq(i64, raw_int(db, "PRAGMA user_version"), 2));
    raw_text(db, "PRAGMA journal_mode", mode, sizeof mode);
    cr_assert(eq(str, mode, "wal"));
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM sqlite_master WHERE"
                                  " type='table' AND name IN"
                                  " ('run_node_state','nodestate_meta')"), 2));
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM sqlite_master WHERE"
                                  " type='index' AND"
                                  " name='run_node_state_run_status'"
                                  " AND tbl_name='run_node_state'"), 0));
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM pragma_table_info("
                                  "'run_node_state')"), 16));
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM pragma_table_info("
                                  "'run_node_state') WHERE pk > 0"), 2));
    /* A rowid table: rows lie in the order they were first written. */
    cr_assert(eq(i64, raw_int(db, "SELECT wr FROM pragma_table_list"
                                  " WHERE name = 'run_node_state'"), 0));
    sqlite3_close(db);
    store_close(s);

    /* Reopening an existing version-1 file is fine. */
    s = sfx_open_store();
    store_close(s);
}

Test(store, write_then_read_back_field_by_field)
{
    store *s = sfx_open_store();
    store_reader *r;
    ns_row a = sfx_draft("run-1", "a", NS_COMPLETED, 7);
    ns_row b = sfx_draft("run-1", "b", NS_SUSPENDED, 8);

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
    write_ok(s, rows, 2, NULL, 0, 8);
    cr_assert(eq(i64, store_last_seq(s), 8));

    r = sfx_open_reader();
    expect_run(r, "run-1", NULL, 2, &a, &b);

    /* A run with no rows delivers nothing and succeeds. */
    expect_run(r, "run-unknown", NULL, 0);

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

    /* Read light: the same rows without their text and JSON values. */
    loaded l = { 0 };
    cr_assert(eq(int, store_reader_load_run(r, "run-1", true, collect, &l, NULL), 0));
    cr_assert(eq(sz, l.n, 2));
    const ns_row *want[] = { &a, &b };
    for (size_t i = 0; i < 2; i++) {
        ns_row light = *want[i];
        light.last_error = light.suspension_reason = NULL;
        light.resume_state = light.outputs = NULL;
        assert_row_eq(l.rows[i], &light);
    }
    loaded_free(&l);

    store_reader_close(r);
    store_close(s);
}

Test(store, upsert_replaces_the_row)
{
    store *s = sfx_open_store();
    store_reader *r = sfx_open_reader();
    ns_row v1 = sfx_draft("run", "n", NS_RUNNING, 1);
    ns_row v2 = sfx_draft("run", "n", NS_FAILED, 2);

    v1.ts[NS_TS_STARTED] = T0;
    v1.last_error = "old";
    v1.outputs = "[1]";
    v1.retryable = true;
    ns_row *rows1[] = {&v1};
    write_ok(s, rows1, 1, NULL, 0, 1);

    /* v2 clears what v1 had set: NULL must overwrite, not keep. */
    v2.attempt = 2;
    v2.ts[NS_TS_FAILED] = T0 + 10;
    v2.suspension_reason = "new";
    ns_row *rows2[] = {&v2};
    write_ok(s, rows2, 1, NULL, 0, 2);

    expect_run(r, "run", NULL, 1, &v2);
    store_reader_close(r);
    store_close(s);
}

Test(store, delete_run_removes_only_that_run_and_comes_first)
{
    store *s = sfx_open_store();
    store_reader *r = sfx_open_reader();
    ns_row a1 = sfx_draft("r1", "a", NS_RUNNING, 1);
    ns_row b1 = sfx_draft("r1", "b", NS_RUNNING, 2);
    ns_row a2 = sfx_draft("r2", "a", NS_SCHEDULED, 3);
    ns_row c1 = sfx_draft("r1", "c", NS_IDLE, 4);

    ns_row *rows[] = {&a1, &b1, &a2};
    write_ok(s, rows, 3, NULL, 0, 3);

    /* Deletes apply before the upserts of the same batch. */
    const char *const del[] = {"r1"};
    ns_row *rows2[] = {&c1};
    write_ok(s, rows2, 1, del, 1, 4);

    expect_run(r, "r1", NULL, 1, &c1);
    expect_run(r, "r2", NULL, 1, &a2);

    /* Deleting a run that does not exist is not an error. */
    const char *const del2[] = {"nope"};
    write_ok(s, NULL, 0, del2, 1, 4);
    store_reader_close(r);
    store_close(s);
}

Test(store, last_seq_persists_and_survives_deleting_all_rows)
{
    store *s = sfx_open_store();
    ns_row a = sfx_draft("r", "a", NS_RUNNING, 41);
    ns_row *rows[] = {&a};

    write_ok(s, rows, 1, NULL, 0, 42);
    cr_assert(eq(i64, store_last_seq(s), 42));
    store_close(s);

    /* Reopen with synchronous=FULL: the other mode reads the same file. */
    char err[512] = "";
    s = store_open(sfx_db_path(), true, err, sizeof err);
    cr_assert(s != NULL, "store_open: %s", err);
    cr_assert(eq(i64, store_last_seq(s), 42));
    const char *const del[] = {"r"};
    write_ok(s, NULL, 0, del, 1, 43);
    store_close(s);

    s = sfx_open_store();
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

    cr_assert(sqlite3_open_v2(sfx_db_path(), &db,
                              SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                              NULL) == SQLITE_OK);
    cr_assert(sqlite3_exec(db, "PRAGMA user_version = 3", NULL, NULL, NULL)
              == SQLITE_OK);
    sqlite3_close(db);

    cr_assert(store_open(sfx_db_path(), false, err, sizeof err) == NULL);
    cr_assert(strstr(err, "database schema version 3 is newer than this"
                          " nodestate supports (2)") != NULL, "err: %s", err);
    cr_assert(strstr(err, sfx_db_path()) != NULL, "err names the path: %s",
              err);
}

/*
 * Another program's database given as --db (a typo) is refused, and left
 * as it was: no table of ours, its journal mode unchanged.
 */
Test(store, another_programs_database_is_refused_untouched)
{
    sqlite3 *db = NULL;
    char err[512] = "";

    cr_assert(sqlite3_open_v2(sfx_db_path(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                              NULL) == SQLITE_OK);
    cr_assert(sqlite3_exec(db, "CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)",
                           NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);

    cr_assert(store_open(sfx_db_path(), false, err, sizeof err) == NULL);
    cr_assert(strstr(err, "not a nodestate database") != NULL, "err: %s", err);
    cr_assert(sqlite3_open_v2(sfx_db_path(), &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK);
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM sqlite_master"), 1), "tables added");
    char mode[32] = "";
    raw_text(db, "PRAGMA journal_mode", mode, sizeof mode);
    cr_assert(eq(str, mode, "delete"), "journal mode %s", mode);
    sqlite3_close(db);
}

Test(store, open_errors_name_the_path)
{
    char err[512] = "";
    char bad[PATH_MAX + 32];
    FILE *f;

    snprintf(bad, sizeof bad, "%s/no/such/dir/x.db", sfx_dir());
    cr_assert(store_open(bad, false, err, sizeof err) == NULL);
    cr_assert(strstr(err, bad) != NULL, "err: %s", err);

    /* A file that is not a database. */
    f = fopen(sfx_db_path(), "w");
    cr_assert(f != NULL);
    for (int i = 0; i < 64; i++)
        fputs("this is not an sqlite database file\n", f);
    fclose(f);
    err[0] = '\0';
    cr_assert(store_open(sfx_db_path(), true, err, sizeof err) == NULL);
    cr_assert(strstr(err, sfx_db_path()) != NULL, "err: %s", err);
}

/*
 * The timeout is a hang guard, not a measurement: the write should give up
 * after its 100 ms busy timeout, so 10 s only trips if it waits on the lock.
 */
Test(store, write_fails_fast_under_external_lock_then_succeeds, .timeout = 10)
{
    store *s = sfx_open_store();
    store_reader *r = sfx_open_reader();
    ns_row a = sfx_draft("r", "a", NS_RUNNING, 1);
    ns_row a2 = sfx_draft("r", "a", NS_COMPLETED, 2);
    ns_row b = sfx_draft("r", "b", NS_SCHEDULED, 3);
    ns_row *base[] = {&a};
    ns_row *next[] = {&a2, &b};
    const char *const del[] = {"r"};
    sqlite3 *other;

    write_ok(s, base, 1, NULL, 0, 1);
    other = lock_db();

    cr_assert(eq(int, write_rows(s, next, 2, del, 1, 3), -1));
    cr_assert(strlen(store_errmsg(s)) > 0);
    cr_assert(strstr(store_errmsg(s), "locked") != NULL, "errmsg: %s",
              store_errmsg(s));
    cr_assert(eq(i64, store_last_seq(s), 1), "last_seq only moves on commit");

    unlock_db(other);

    expect_run(r, "r", "nothing of the failed batch was written", 1, &a);

    /* The same batch goes through once the lock is gone. */
    write_ok(s, next, 2, del, 1, 3);
    cr_assert(eq(i64, store_last_seq(s), 3));
    expect_run(r, "r", NULL, 2, &a2, &b);
    store_reader_close(r);
    store_close(s);
}

Test(store, failure_mid_batch_rolls_back_everything)
{
    store *s = sfx_open_store();
    store_reader *r = sfx_open_reader();
    ns_row keep = sfx_draft("r", "keep", NS_RUNNING, 1);
    ns_row other = sfx_draft("q", "x", NS_RUNNING, 2);
    ns_row good = sfx_draft("q", "y", NS_SCHEDULED, 3);
    ns_row bad = sfx_draft("q", "z", NS_RUNNING, 4);
    ns_row *base[] = {&keep, &other};
    ns_row *batch[] = {&good, &bad};
    ns_row *fixed[] = {&good};
    const char *const del[] = {"r"};
    sqlite3 *raw;

    write_ok(s, base, 2, NULL, 0, 2);
    /*
     * RAISE(ROLLBACK) is a constraint error like a refused row, but it ends
     * the transaction: that is a batch failure, not an isolated row.
     */
    raw = open_raw();
    cr_assert(sqlite3_exec(raw, "CREATE TRIGGER t_z BEFORE INSERT ON"
                                " run_node_state WHEN NEW.node_id = 'z'"
                                " BEGIN SELECT RAISE(ROLLBACK, 'no z'); END",
                           NULL, NULL, NULL) == SQLITE_OK);

    /* The delete and the first upsert succeed inside the transaction. */
    cr_assert(eq(int, write_rows(s, batch, 2, del, 1, 4), -1));
    cr_assert(strstr(store_errmsg(s), "no z") != NULL, "errmsg: %s",
              store_errmsg(s));
    cr_assert(eq(i64, store_last_seq(s), 2));
    cr_assert(sqlite3_exec(raw, "DROP TRIGGER t_z", NULL, NULL, NULL)
              == SQLITE_OK);
    sqlite3_close(raw);

    expect_run(r, "r", "the delete was rolled back", 1, &keep);
    expect_run(r, "q", "the good upsert was rolled back", 1, &other);

    sqlite3 *db = open_raw();
    cr_assert(eq(i64, raw_int(db, "SELECT value FROM nodestate_meta WHERE"
                                  " key='last_seq'"), 2));
    sqlite3_close(db);

    /* Statements were reset: the next batch on the same store works. */
    write_ok(s, fixed, 1, del, 1, 3);
    expect_run(r, "r", NULL, 0);
    expect_run(r, "q", NULL, 2, &other, &good);
    store_reader_close(r);
    store_close(s);
}

Test(store, reader_returns_rows_in_node_id_order)
{
    store *s = sfx_open_store();
    store_reader *r = sfx_open_reader();
    loaded l;
    ns_row c = sfx_draft("r", "c", NS_IDLE, 1);
    ns_row a = sfx_draft("r", "a", NS_IDLE, 2);
    ns_row b = sfx_draft("r", "B", NS_IDLE, 3);
    ns_row d = sfx_draft("r", "a.1", NS_IDLE, 4);

    /* Written out of order, in two batches. */
    ns_row *first[] = {&c, &a};
    ns_row *second[] = {&d, &b};
    write_ok(s, first, 2, NULL, 0, 2);
    write_ok(s, second, 2, NULL, 0, 4);

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
    store *s = sfx_open_store();
    store_reader *r = sfx_open_reader();
    loaded l;
    ns_row a = sfx_draft("r", "a", NS_IDLE, 1);
    ns_row b = sfx_draft("r", "b", NS_IDLE, 2);
    ns_row *rows[] = {&a, &b};

    write_ok(s, rows, 2, NULL, 0, 2);
    memset(&l, 0, sizeof l);
    l.stop_after = 1;
    cr_assert(eq(int, store_reader_load_run(r, "r", false, collect, &l, NULL), -1));
    cr_assert(eq(sz, l.n, 1));
    loaded_free(&l);

    /* The statement was reset: a full read still works afterwards. */
    expect_run(r, "r", NULL, 2, ANY, ANY);
    store_reader_close(r);
    store_close(s);
}

/* Makes row (run "r", node) unreadable with a raw UPDATE ... SET <set>. */
static void spoil_row(const char *node, const char *set)
{
    char sql[256];
    sqlite3 *db = open_raw();

    snprintf(sql, sizeof sql,
             "UPDATE run_node_state SET %s WHERE run_id = 'r' AND"
             " node_id = '%s'", set, node);
    cr_assert(sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK, "%s",
              sql);
    cr_assert(eq(int, sqlite3_changes(db), 1));
    sqlite3_close(db);
}

/* Loads run "r", expecting success; returns how many rows were skipped. */
static size_t load_skipping(store_reader *r, loaded *l)
{
    size_t skipped = 99;

    memset(l, 0, sizeof *l);
    cr_assert(eq(int, store_reader_load_run(r, "r", false, collect, l, &skipped),
                 0));
    return skipped;
}

Test(store, reader_skips_and_counts_rows_it_cannot_parse)
{
    static const char *const spoilers[] = {
        "status = 'bogus'",
        "started_at = 'yesterday'",
        "failed_at = '2026-11-26 16:27:29'",  /* SQLite's form, not ours */
        "updated_at = '2026-13-01T00:00:00Z'",
        /* The api splices these into responses as they are. */
        "outputs_json = 'done: ok'",
        "outputs_json = ''",
        "resume_state_json = '{\"a\": 1'",
    };
    store *s = sfx_open_store();
    store_reader *r = sfx_open_reader();
    loaded l;
    ns_row a = sfx_draft("r", "a", NS_IDLE, 1);
    ns_row b = sfx_draft("r", "b", NS_RUNNING, 2);
    ns_row c = sfx_draft("r", "c", NS_IDLE, 3);
    ns_row *rows[] = {&a, &b, &c};
    ns_row *fix[] = {&b};

    write_ok(s, rows, 3, NULL, 0, 3);

    for (size_t i = 0; i < sizeof spoilers / sizeof spoilers[0]; i++) {
        spoil_row("b", spoilers[i]);
        cr_assert(eq(sz, load_skipping(r, &l), 1), "%s", spoilers[i]);
        cr_assert(eq(sz, l.n, 2), "%s: the other rows still load",
                  spoilers[i]);
        assert_row_eq(l.rows[0], &a);
        assert_row_eq(l.rows[1], &c);
        loaded_free(&l);
        /* Writing the node again replaces the bad row: the repair path. */
        write_ok(s, fix, 1, NULL, 0, 3);
        cr_assert(eq(sz, load_skipping(r, &l), 0));
        cr_assert(eq(sz, l.n, 3));
        assert_row_eq(l.rows[1], &b);
        loaded_free(&l);
    }

    /* Counted also when fn stops the load, and NULL is allowed. */
    spoil_row("a", "status = 'bogus'");
    size_t skipped = 99;
    memset(&l, 0, sizeof l);
    l.stop_after = 1;
    cr_assert(eq(int, store_reader_load_run(r, "r", false, collect, &l, &skipped),
                 -1));
    cr_assert(eq(sz, skipped, 1));
    cr_assert(eq(sz, l.n, 1));
    assert_row_eq(l.rows[0], &b);
    loaded_free(&l);
    memset(&l, 0, sizeof l);
    cr_assert(eq(int, store_reader_load_run(r, "r", false, collect, &l, NULL), 0));
    cr_assert(eq(sz, l.n, 2));
    loaded_free(&l);

    /* A run whose every row is unreadable loads as empty, not as an error. */
    spoil_row("b", "status = 'bogus'");
    spoil_row("c", "updated_at = 'never'");
    cr_assert(eq(sz, load_skipping(r, &l), 3));
    cr_assert(eq(sz, l.n, 0));
    store_reader_close(r);
    store_close(s);
}

/* ---- reading one node, or a page ---- */

Test(store, reader_loads_one_node_by_key)
{
    store *s = sfx_open_store();
    store_reader *r = sfx_open_reader();
    ns_row a = sfx_draft("r", "a", NS_IDLE, 1);
    ns_row b = sfx_draft("r", "b", NS_RUNNING, 2);
    ns_row x = sfx_draft("other", "x", NS_FAILED, 3);
    b.outputs = "{\"n\":1}";
    b.last_error = "boom";
    ns_row *rows[] = {&a, &b, &x};
    ns_row *got = NULL;
    bool has_rows = false;

    write_ok(s, rows, 3, NULL, 0, 3);
    cr_assert(eq(int, store_reader_load_node(r, "r", "b", &got, &has_rows), 0));
    cr_assert(got != NULL);
    cr_assert(got->refs == 1, "the row carries one reference");
    assert_row_eq(got, &b);
    cr_assert(has_rows);
    model_row_unref(got);
    /* Another node of a run that has rows: none, but the run is there. */
    cr_assert(eq(int, store_reader_load_node(r, "r", "zz", &got, &has_rows), 0));
    cr_assert(got == NULL);
    cr_assert(has_rows, "the run has other rows");
    cr_assert(eq(int, store_reader_load_node(r, "nope", "a", &got, &has_rows), 0));
    cr_assert(got == NULL);
    cr_assert(eq(int, has_rows, 0), "a run without rows");
    /* An unreadable row: 1, no row, the run is there. */
    spoil_row("a", "status = 'bogus'");
    has_rows = false;
    cr_assert(eq(int, store_reader_load_node(r, "r", "a", &got, &has_rows), 1));
    cr_assert(got == NULL);
    cr_assert(has_rows);
    store_reader_close(r);
    store_close(s);
}

/* Loads a page of run "r" into l; returns what the page said. */
static store_page load_page(store_reader *r, const char *run, const char *after,
                            unsigned mask, size_t want, loaded *l)
{
    store_page page;

    memset(l, 0, sizeof *l);
    cr_assert(eq(int, store_reader_load_page(r, run, after, mask, want, collect,
                                             l, &page), 0));
    return page;
}

static void expect_ids(const loaded *l, const char *want)
{
    char got[128] = "";

    for (size_t i = 0; i < l->n; i++) {
        if (i > 0)
            strcat(got, ",");
        strcat(got, l->rows[i]->node_id);
    }
    cr_assert(eq(str, got, (char *)want));
}

Test(store, reader_loads_a_page_after_a_cursor_with_a_status_mask)
{
    store *s = sfx_open_store();
    store_reader *r = sfx_open_reader();
    ns_row d[10];
    ns_row *rows[10];
    char ids[10][8];
    unsigned all = (1u << NS_STATUS_COUNT) - 1;
    unsigned running = 1u << NS_RUNNING;
    loaded l;
    store_page p;

    for (int i = 0; i < 10; i++) {
        snprintf(ids[i], sizeof ids[i], "n%d", i);
        d[i] = sfx_draft("r", ids[i], i % 2 ? NS_RUNNING : NS_COMPLETED, i + 1);
        rows[i] = &d[i];
    }
    write_ok(s, rows, 10, NULL, 0, 10);

    p = load_page(r, "r", NULL, all, 3, &l);
    expect_ids(&l, "n0,n1,n2");
    assert_row_eq(l.rows[1], &d[1]);
    cr_assert(p.more);
    cr_assert(p.run_has_rows);
    cr_assert(eq(sz, p.skipped, 0));
    loaded_free(&l);
    p = load_page(r, "r", "n2", running, 2, &l);
    expect_ids(&l, "n3,n5");
    cr_assert(p.more, "n7 and n9 follow");
    loaded_free(&l);
    p = load_page(r, "r", "n6", running, 2, &l);
    expect_ids(&l, "n7,n9");
    cr_assert(eq(int, p.more, 0), "exactly want left: no more");
    loaded_free(&l);
    p = load_page(r, "r", "n8", 1u << NS_COMPLETED, 5, &l);
    expect_ids(&l, "");
    cr_assert(eq(int, p.more, 0));
    cr_assert(p.run_has_rows, "rows after the cursor, none matching");
    p = load_page(r, "r", "n9", all, 5, &l);
    cr_assert(eq(sz, l.n, 0));
    cr_assert(eq(int, p.more, 0));
    cr_assert(p.run_has_rows, "nothing after the cursor, but the run is there");
    p = load_page(r, "nope", NULL, all, 5, &l);
    cr_assert(eq(sz, l.n, 0));
    cr_assert(eq(int, p.run_has_rows, 0));
    /* An unreadable row is passed over and counted. */
    spoil_row("n4", "updated_at = 'never'");
    p = load_page(r, "r", "n1", all, 4, &l);
    expect_ids(&l, "n2,n3,n5,n6");
    cr_assert(eq(sz, p.skipped, 1));
    cr_assert(p.more);
    loaded_free(&l);
    store_reader_close(r);
    store_close(s);
}

/* ---- row isolation ---- */

/* A row the database refuses whenever node_id is 'bad'. */
static void add_bad_row_trigger(void)
{
    sqlite3 *db = open_raw();

    raw_exec(db, "CREATE TRIGGER refuse_bad BEFORE INSERT ON run_node_state"
                 " WHEN NEW.node_id = 'bad'"
                 " BEGIN SELECT RAISE(ABORT, 'bad row'); END");
    sqlite3_close(db);
}

Test(store, unwritable_rows_are_isolated_and_the_rest_commits)
{
    store *s = sfx_open_store();
    store_reader *r = sfx_open_reader();
    sfx_isolated iso = {0};
    ns_row old_bad = sfx_draft("r", "bad", NS_RUNNING, 1);
    ns_row gone = sfx_draft("old", "x", NS_RUNNING, 2);
    ns_row a = sfx_draft("r", "a", NS_COMPLETED, 3);
    ns_row bad = sfx_draft("r", "bad", NS_FAILED, 4);
    ns_row c = sfx_draft("r", "c", NS_SCHEDULED, 5);
    ns_row nostatus = sfx_draft("r", "d", NS_STATUS_COUNT, 6); /* NOT NULL */
    ns_row *base[] = {&old_bad, &gone};
    ns_row *rows[] = {&a, &bad, &c, &nostatus};
    const char *const del[] = {"old"};

    write_ok(s, base, 2, NULL, 0, 2);
    add_bad_row_trigger();

    store_batch b = {
        .delete_runs = del, .n_deletes = 1, .rows = rows, .n_rows = 4,
        .last_seq = 6, .on_isolated = sfx_on_isolated, .isolated_ctx = &iso,
    };
    cr_assert(eq(int, store_write(s, &b), 0), "store_write: %s",
              store_errmsg(s));
    cr_assert(eq(sz, b.n_isolated, 2));
    cr_assert(eq(sz, iso.n, 2));
    cr_assert(iso.rows[0] == &bad, "the callback gets the batch's own row");
    cr_assert(strstr(iso.why[0], "bad row") != NULL, "why: %s", iso.why[0]);
    cr_assert(iso.rows[1] == &nostatus);
    cr_assert(strstr(iso.why[1], "NOT NULL constraint failed") != NULL,
              "why: %s", iso.why[1]);
    cr_assert(eq(i64, store_last_seq(s), 6));

    /* The good rows and the delete committed; 'bad' kept its old version. */
    expect_run(r, "r", NULL, 3, &a, &old_bad, &c);
    expect_run(r, "old", NULL, 0);

    /* No callback is fine, and n_isolated starts again from zero. */
    ns_row *again[] = {&bad};
    store_batch b2 = {.rows = again, .n_rows = 1, .last_seq = 7,
                      .n_isolated = 99};
    cr_assert(eq(int, store_write(s, &b2), 0));
    cr_assert(eq(sz, b2.n_isolated, 1));
    cr_assert(eq(i64, store_last_seq(s), 7));
    store_reader_close(r);
    store_close(s);
}

/*
 * Enough rows for the writer's multi-row inserts of both sizes and single
 * rows after them, with refused rows in each, a node twice within one chunk
 * and a NULL row:
 * the chunks that SQLite refuses are redone one row each, so exactly the
 * refused rows are left out, reported by their place in the batch.
 */
#define MANY_ROWS 203 /* 3 x STORE_ROWS_MANY, STORE_ROWS_FEW, 3 single rows */
Test(store, multi_row_inserts_isolate_exactly_the_refused_rows)
{
    store *s = sfx_open_store();
    sfx_isolated iso = {0};
    static char ids[MANY_ROWS][16];
    static ns_row d[MANY_ROWS];
    ns_row *rows[MANY_ROWS];
    sqlite3 *db;

    add_bad_row_trigger();
    for (int i = 0; i < MANY_ROWS; i++) {
        snprintf(ids[i], sizeof ids[i], "n%03d", i);
        d[i] = sfx_draft("r", ids[i], NS_RUNNING, i + 1);
        rows[i] = &d[i];
    }
    d[5].status = NS_STATUS_COUNT;            /* NOT NULL, first chunk */
    d[70].node_id = "bad";                    /* the trigger, second chunk */
    d[71].node_id = ids[72];                  /* n072 twice in one chunk: */
    d[71].status = NS_COMPLETED;              /* the later row (72) wins */
    d[195].node_id = "bad";                   /* the chunk of STORE_ROWS_FEW */
    d[201].node_id = "bad";                   /* a single row */

    store_batch b = {.rows = rows, .n_rows = MANY_ROWS, .last_seq = MANY_ROWS,
                     .on_isolated = sfx_on_isolated, .isolated_ctx = &iso};
    cr_assert(eq(int, store_write(s, &b), 0), "store_write: %s",
              store_errmsg(s));
    cr_assert(eq(sz, b.n_isolated, 4));
    cr_assert(eq(sz, iso.n, 4));
    cr_assert(iso.rows[0] == &d[5]);
    cr_assert(strstr(iso.why[0], "NOT NULL constraint failed") != NULL,
              "why: %s", iso.why[0]);
    cr_assert(iso.rows[1] == &d[70]);
    cr_assert(strstr(iso.why[1], "bad row") != NULL, "why: %s", iso.why[1]);
    cr_assert(iso.rows[2] == &d[195]);
    cr_assert(iso.rows[3] == &d[201]);

    db = open_raw();
    /* The rows less the 4 refused, less n072's second row. */
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM run_node_state"),
                 MANY_ROWS - 5));
    cr_assert(eq(i64, raw_int(db, "SELECT seq FROM run_node_state WHERE"
                                  " node_id = 'n072'"), 73));
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM run_node_state"
                                  " WHERE status = 'running'"),
                 MANY_ROWS - 5));
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM run_node_state"
                                  " WHERE node_id IN ('n005', 'n070',"
                                  " 'n195', 'n201', 'bad')"), 0));
    cr_assert(eq(i64, raw_int(db, "SELECT sum(seq) FROM run_node_state"),
                 (int64_t)MANY_ROWS * (MANY_ROWS + 1) / 2 - 6 - 71 - 72
                     - 196 - 202));
    sqlite3_close(db);

    /* A NULL row in a later chunk fails the batch, named by its place. */
    rows[130] = NULL;
    b.on_isolated = NULL;
    cr_assert(eq(int, store_write(s, &b), -1));
    cr_assert(strstr(store_errmsg(s), "row 130 is NULL") != NULL,
              "errmsg: %s", store_errmsg(s));
    store_close(s);
}

Test(store, isolated_rows_are_not_reported_when_the_batch_fails)
{
    store *s = sfx_open_store();
    store_reader *r = sfx_open_reader();
    sfx_isolated iso = {0};
    ns_row a = sfx_draft("r", "a", NS_RUNNING, 1);
    ns_row bad = sfx_draft("r", "bad", NS_RUNNING, 2);
    ns_row *rows[] = {&a, &bad};
    sqlite3 *db;

    add_bad_row_trigger();
    /* Recording last_seq fails after the rows: a batch-level failure. */
    db = open_raw();
    raw_exec(db, "CREATE TRIGGER refuse_meta BEFORE INSERT ON nodestate_meta"
                 " BEGIN SELECT RAISE(ABORT, 'meta refused'); END");

    store_batch b = {.rows = rows, .n_rows = 2, .last_seq = 2,
                     .on_isolated = sfx_on_isolated, .isolated_ctx = &iso};
    cr_assert(eq(int, store_write(s, &b), -1));
    cr_assert(strstr(store_errmsg(s), "meta refused") != NULL, "errmsg: %s",
              store_errmsg(s));
    cr_assert(eq(sz, iso.n, 0), "a retried batch would report it twice");
    cr_assert(eq(sz, b.n_isolated, 0));
    cr_assert(eq(i64, store_last_seq(s), 0));
    expect_run(r, "r", "the good row was rolled back", 0);

    /* The retry commits and reports the row once. */
    raw_exec(db, "DROP TRIGGER refuse_meta");
    sqlite3_close(db);
    cr_assert(eq(int, store_write(s, &b), 0), "store_write: %s",
              store_errmsg(s));
    cr_assert(eq(sz, iso.n, 1));
    cr_assert(iso.rows[0] == &bad);
    cr_assert(eq(sz, b.n_isolated, 1));
    expect_run(r, "r", NULL, 1, &a);
    store_reader_close(r);
    store_close(s);
}

Test(store, a_null_row_fails_the_batch)
{
    store *s = sfx_open_store();
    store_reader *r = sfx_open_reader();
    ns_row a = sfx_draft("r", "a", NS_RUNNING, 1);
    ns_row *rows[] = {&a, NULL};

    cr_assert(eq(int, write_rows(s, rows, 2, NULL, 0, 2), -1));
    cr_assert(strstr(store_errmsg(s), "NULL") != NULL, "errmsg: %s",
              store_errmsg(s));
    expect_run(r, "r", NULL, 0);
    store_reader_close(r);
    store_close(s);
}

/* This binary links the normal core: the variable must do nothing. */
Test(store, normal_build_ignores_NODESTATE_FAULTS)
{
    store *s;
    store_reader *r;
    ns_row a = sfx_draft("r", "a", NS_RUNNING, 1);
    ns_row *rows[] = {&a};

    cr_assert(setenv("NODESTATE_FAULTS", "commit=busy:5,row=a", 1) == 0);
    s = sfx_open_store();
    write_ok(s, rows, 1, NULL, 0, 1);
    r = sfx_open_reader();
    expect_run(r, "r", NULL, 1, ANY);
    store_reader_close(r);
    store_close(s);

    /* Not even a spec it could not read stops it. */
    cr_assert(setenv("NODESTATE_FAULTS", "nonsense", 1) == 0);
    s = sfx_open_store();
    store_close(s);
}

/* ---- spill and replay ---- */

static char spill_path[PATH_MAX + 16];

static const char *spill_file(void)
{
    store_spill_path(sfx_db_path(), spill_path, sizeof spill_path);
    return spill_path;
}

static bool file_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

static void spill(ns_row *const *rows, size_t n, const char *const *deletes,
                  size_t nd, int64_t last_seq)
{
    char err[512] = "";
    store_batch b = {
        .delete_runs = deletes, .n_deletes = nd, .rows = rows, .n_rows = n,
        .last_seq = last_seq,
    };

    cr_assert(eq(int, store_spill(sfx_db_path(), &b, err, sizeof err), 0),
              "store_spill: %s", err);
}

/* store_replay, asserting it succeeded and what it counted. */
static store_replayed replay_ok(store *s, size_t want_rows, size_t want_deletes)
{
    store_replayed got = {99, 99, 99, true};
    char err[512] = "";

    cr_assert(eq(int, store_replay(s, NULL, &got, err, sizeof err), 0),
              "store_replay: %s", err);
    cr_assert(eq(sz, got.rows, want_rows));
    cr_assert(eq(sz, got.deletes, want_deletes));
    return got;
}

static sqlite3 *open_raw_spill(void)
{
    sqlite3 *db = NULL;

    cr_assert(sqlite3_open_v2(spill_file(), &db, SQLITE_OPEN_READWRITE, NULL)
              == SQLITE_OK);
    return db;
}

/*
 * The columns of table in db, in order, joined by ", ", into out; and the
 * same of NS_NODE_FIELDS' columns, leading with lead (the spill log's seq)
 * and leaving out skip.
 */
static void table_columns(sqlite3 *db, const char *table, char *out, size_t len)
{
    sqlite3_stmt *st = NULL;
    size_t n = 0;

    out[0] = '\0';
    cr_assert(sqlite3_prepare_v2(db, "SELECT name FROM pragma_table_info(?1)"
                                     " ORDER BY cid", -1, &st, NULL) == SQLITE_OK);
    cr_assert(sqlite3_bind_text(st, 1, table, -1, SQLITE_STATIC) == SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        int w = snprintf(out + n, len - n, "%s%s", n > 0 ? ", " : "",
                         (const char *)sqlite3_column_text(st, 0));
        cr_assert(w > 0 && (size_t)w < len - n, "the columns of %s are too long", table);
        n += (size_t)w;
    }
    sqlite3_finalize(st);
}

static void list_columns(const char *lead, const char *skip, char *out, size_t len)
{
    size_t n = 0;

    out[0] = '\0';
    if (lead != NULL)
        n += (size_t)snprintf(out, len, "%s", lead);
#define LIST_COLUMN_(name, member, json, column, kind)                     \
    if (skip == NULL || strcmp(column, skip) != 0)                         \
        n += (size_t)snprintf(out + n, len - n, "%s%s", n > 0 ? ", " : "", \
                              column);
    NS_NODE_FIELDS(LIST_COLUMN_)
#undef LIST_COLUMN_
    cr_assert_lt(n, len);
}

/*
 * The store expands its tables' columns from NS_NODE_FIELDS; the tables it creates, in a new database and in a new sidecar, have exactly the columns
 * of NS_NODE_FIELDS, which drives the binding and the reading, in its order.
 */
Test(store, tables_have_the_columns_of_the_node_fields_in_order)
{
    char got[1024], want[1024];
    store *s = sfx_open_store();
    sqlite3 *db = open_raw();

    table_columns(db, "run_node_state", got, sizeof got);
    list_columns(NULL, NULL, want, sizeof want);
    cr_assert(eq(str, got, want), "run_node_state");
    sqlite3_close(db);

    ns_row d = sfx_draft("r", "a", NS_RUNNING, 1);
    ns_row *row = model_row_copy(&d);
    cr_assert_not_null(row);
    spill(&row, 1, NULL, 0, 1);
    model_row_unref(row);
    db = open_raw_spill();
    table_columns(db, "spill_log", got, sizeof got);
    list_columns("seq", "seq", want, sizeof want);
    cr_assert(eq(str, got, want), "spill_log");
    sqlite3_close(db);
    store_close(s);
}

/* "cid|name|type|notnull|dflt|pk;..." of a table, or its indexes. */
#define TABLE_INFO_SQL(t)                                                    \
    "SELECT group_concat(cid || '|' || name || '|' || type || '|' ||"        \
    " \"notnull\" || '|' || ifnull(dflt_value, '') || '|' || pk, ';')"      \
    " FROM (SELECT * FROM pragma_table_info('" t "') ORDER BY cid)"
#define INDEX_LIST_SQL(t)                                                    \
    "SELECT ifnull(group_concat(name || '|' || \"unique\" || '|' || origin"  \
    " || '|' || partial, ';'), '')"                                          \
    " FROM (SELECT * FROM pragma_index_list('" t "') ORDER BY name)"

/*
 * The store expands its tables' columns from NS_NODE_FIELDS; a new file
 * must still get exactly the columns that earlier builds wrote out by hand
 * (an existing file opens unchanged only if the two agree), written out
 * here literally: columns, types, NOT NULL, defaults, key, indexes, the
 * stored CREATE text and the version. Earlier builds made the same table
 * WITHOUT ROWID (still read and written: see
 * a_file_made_without_rowid_is_read_and_written_alike).
 */
Test(store, new_file_has_the_columns_and_key_of_earlier_builds)
{
    char got[2048];
    store *s = sfx_open_store();
    sqlite3 *db = open_raw();

    raw_text(db, TABLE_INFO_SQL("run_node_state"), got, sizeof got);
    cr_assert(eq(str, got,
                 "0|run_id|TEXT|1||1;1|node_id|TEXT|1||2;2|status|TEXT|1||0;"
                 "3|attempt|INTEGER|1||0;4|scheduled_at|TEXT|0||0;"
                 "5|started_at|TEXT|0||0;6|completed_at|TEXT|0||0;"
                 "7|failed_at|TEXT|0||0;8|suspended_at|TEXT|0||0;"
                 "9|last_error|TEXT|0||0;10|retryable|INTEGER|1|0|0;"
                 "11|suspension_reason|TEXT|0||0;"
                 "12|resume_state_json|TEXT|0||0;13|outputs_json|TEXT|0||0;"
                 "14|updated_at|TEXT|1||0;15|seq|INTEGER|1||0"));
    raw_text(db, INDEX_LIST_SQL("run_node_state"), got, sizeof got);
    cr_assert(eq(str, got, "sqlite_autoindex_run_node_state_1|1|pk|0"));
    raw_text(db, "SELECT sql FROM sqlite_master WHERE name = 'run_node_state'",
             got, sizeof got);
    cr_assert(eq(str, got,
                 "CREATE TABLE run_node_state ( run_id TEXT NOT NULL,"
                 " node_id TEXT NOT NULL, status TEXT NOT NULL,"
                 " attempt INTEGER NOT NULL, scheduled_at TEXT,"
                 " started_at TEXT, completed_at TEXT, failed_at TEXT,"
                 " suspended_at TEXT, last_error TEXT,"
                 " retryable INTEGER NOT NULL DEFAULT 0,"
                 " suspension_reason TEXT, resume_state_json TEXT,"
                 " outputs_json TEXT, updated_at TEXT NOT NULL,"
                 " seq INTEGER NOT NULL, PRIMARY KEY (run_id, node_id))"));
    cr_assert(eq(i64, raw_int(db, "PRAGMA user_version"), 2));
    sqlite3_close(db);

    ns_row d = sfx_draft("r", "a", NS_RUNNING, 1);
    ns_row *row = model_row_copy(&d);
    cr_assert_not_null(row);
    spill(&row, 1, NULL, 0, 1);
    model_row_unref(row);
    db = open_raw_spill();
    raw_text(db, TABLE_INFO_SQL("spill_log"), got, sizeof got);
    cr_assert(eq(str, got,
                 "0|seq|INTEGER|0||1;1|run_id|TEXT|1||0;2|node_id|TEXT|1||0;"
                 "3|status|TEXT|1||0;4|attempt|INTEGER|1||0;"
                 "5|scheduled_at|TEXT|0||0;6|started_at|TEXT|0||0;"
                 "7|completed_at|TEXT|0||0;8|failed_at|TEXT|0||0;"
                 "9|suspended_at|TEXT|0||0;10|last_error|TEXT|0||0;"
                 "11|retryable|INTEGER|1|0|0;12|suspension_reason|TEXT|0||0;"
                 "13|resume_state_json|TEXT|0||0;14|outputs_json|TEXT|0||0;"
                 "15|updated_at|TEXT|1||0"));
    raw_text(db, INDEX_LIST_SQL("spill_log"), got, sizeof got);
    cr_assert(eq(str, got, ""));
    raw_text(db, "SELECT sql FROM sqlite_master WHERE name = 'spill_log'",
             got, sizeof got);
    cr_assert(eq(str, got,
                 "CREATE TABLE spill_log ( seq INTEGER PRIMARY KEY,"
                 " run_id TEXT NOT NULL, node_id TEXT NOT NULL,"
                 " status TEXT NOT NULL, attempt INTEGER NOT NULL,"
                 " scheduled_at TEXT, started_at TEXT, completed_at TEXT,"
                 " failed_at TEXT, suspended_at TEXT, last_error TEXT,"
                 " retryable INTEGER NOT NULL DEFAULT 0,"
                 " suspension_reason TEXT, resume_state_json TEXT,"
                 " outputs_json TEXT, updated_at TEXT NOT NULL)"));
    cr_assert(eq(i64, raw_int(db, "PRAGMA user_version"), 1));
    sqlite3_close(db);
    store_close(s);
}

Test(store, spill_path_is_next_to_the_database)
{
    char out[64];

    store_spill_path("/var/lib/ns/ns.db", out, sizeof out);
    cr_assert(eq(str, out, "/var/lib/ns/ns.db.spill"));
}

Test(store, spill_then_replay_round_trip_with_deletes_and_last_seq)
{
    store *s = sfx_open_store();
    store_reader *r;
    ns_row x1 = sfx_draft("r1", "x", NS_RUNNING, 1);
    ns_row a1 = sfx_draft("r1", "a", NS_RUNNING, 2);
    ns_row z3 = sfx_draft("r3", "z", NS_COMPLETED, 3);
    ns_row sa1 = sfx_draft("r1", "a", NS_COMPLETED, 5);
    ns_row sb1 = sfx_draft("r1", "b", NS_RUNNING, 6);
    ns_row sa2 = sfx_draft("r2", "a", NS_SCHEDULED, 7);
    ns_row sc1 = sfx_draft("r1", "c", NS_SUSPENDED, 8);
    ns_row sa2b = sfx_draft("r2", "a", NS_FAILED, 9);
    ns_row *base[] = {&x1, &a1, &z3};
    ns_row *first[] = {&sa1, &sb1, &sa2};
    ns_row *second[] = {&sc1, &sa2b};
    const char *const del[] = {"r1"};

    /* Every column must make the trip through the sidecar. */
    sc1.attempt = 4;
    sc1.ts[NS_TS_SCHEDULED] = T0;
    sc1.ts[NS_TS_STARTED] = T0 + 1;
    sc1.ts[NS_TS_SUSPENDED] = T0 + 2;
    sc1.last_error = "earlier failure";
    sc1.retryable = true;
    sc1.suspension_reason = "approval";
    sc1.resume_state = "{\"cursor\":7}";
    sc1.outputs = "[1,\"two\"]";
    sa2b.ts[NS_TS_FAILED] = T0 + 3;
    sa2b.last_error = "boom";

    write_ok(s, base, 3, NULL, 0, 3);
    cr_assert(false == file_exists(spill_file()));

    /* Two spills append; the second deletes r1, voiding its spilled rows. */
    spill(first, 3, NULL, 0, 7);
    spill(second, 2, del, 1, 10);
    cr_assert(file_exists(spill_file()));
    sqlite3 *sp = open_raw_spill();
    cr_assert(eq(i64, raw_int(sp, "PRAGMA user_version"), 1));
    cr_assert(eq(i64, raw_int(sp, "SELECT count(*) FROM spill_log"), 5),
              "every row is logged, in seq order");
    cr_assert(eq(i64, raw_int(sp, "SELECT count(*) FROM spill_log"
                                  " WHERE run_id = 'r1' AND node_id = 'c'"
                                  " AND seq = 8"), 1));
    cr_assert(eq(i64, raw_int(sp, "SELECT before_seq FROM spill_deletes"
                                  " WHERE run_id = 'r1'"), 8),
              "the delete voids r1's rows of the first piece (seqs <= 7)");
    cr_assert(eq(i64, raw_int(sp, "SELECT value FROM nodestate_meta"
                                  " WHERE key = 'last_seq'"), 10));
    sqlite3_close(sp);
    cr_assert(eq(i64, store_last_seq(s), 3), "spilling is not committing");

    cr_assert(eq(sz, replay_ok(s, 2, 1).pieces, 2), "two spills, two pieces");
    cr_assert(eq(i64, store_last_seq(s), 10));
    cr_assert(false == file_exists(spill_file()),
              "a replayed sidecar is removed");
    char journal[PATH_MAX + 32];
    snprintf(journal, sizeof journal, "%s-journal", spill_file());
    cr_assert(false == file_exists(journal));

    r = sfx_open_reader();
    expect_run(r, "r1", "r1 was deleted, then only c was written", 1, &sc1);
    expect_run(r, "r2", NULL, 1, &sa2b);
    expect_run(r, "r3", "runs the sidecar never named are untouched", 1, &z3);

    /* A second replay finds nothing. */
    replay_ok(s, 0, 0);

    /* The write connection still works after ATTACH/DETACH. */
    ns_row next = sfx_draft("r3", "y", NS_IDLE, 11);
    ns_row *after[] = {&next};
    write_ok(s, after, 1, NULL, 0, 11);
    store_reader_close(r);
    store_close(s);

    s = sfx_open_store();
    cr_assert(eq(i64, store_last_seq(s), 11));
    store_close(s);
}

/*
 * Kills a child process in the middle of a piece's transaction on the
 * sidecar, with pages of it already in the file (a tiny page cache spills
 * them), the way SIGKILL would find a spill: a hot journal is left behind.
 */
static void tear_a_piece(void)
{
    pid_t pid = fork();
    int status = 0;

    cr_assert(pid >= 0);
    if (pid == 0) {
        sqlite3 *db = NULL;

        if (sqlite3_open_v2(spill_file(), &db, SQLITE_OPEN_READWRITE, NULL)
                != SQLITE_OK
            || sqlite3_exec(db,
                            "PRAGMA cache_size = 2; PRAGMA synchronous = FULL;"
                            "BEGIN IMMEDIATE;"
                            "WITH RECURSIVE i(n) AS (SELECT 1 UNION ALL"
                            " SELECT n + 1 FROM i WHERE n < 3000)"
                            " INSERT INTO spill_log (run_id, node_id,"
                            " status, attempt, updated_at, seq)"
                            " SELECT 'torn', printf('n%05d', n), 'running', 1,"
                            " '2026-11-26T16:27:29.123Z', 100 + n FROM i;"
                            "UPDATE nodestate_meta SET value = 99999"
                            " WHERE key = 'last_seq';"
                            "DELETE FROM spill_log WHERE run_id = 'r1';"
                            "INSERT INTO spill_deletes VALUES ('r2', 99999);",
                            NULL, NULL, NULL) != SQLITE_OK)
            _exit(3);
        raise(SIGKILL);
        _exit(4);
    }
    cr_assert(waitpid(pid, &status, 0) == pid);
    bool killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
    cr_assert(killed, "the child did not die inside its transaction (status %d)",
              status);
}

Test(store, a_torn_piece_is_rolled_back_and_reported_and_the_rest_replays)
{
    store *s = sfx_open_store();
    store_reader *r;
    char err[512] = "";
    char journal[PATH_MAX + 32];
    struct stat sb;
    ns_row a = sfx_draft("r1", "a", NS_RUNNING, 1);
    ns_row b = sfx_draft("r1", "b", NS_COMPLETED, 2);
    ns_row c = sfx_draft("r2", "c", NS_SCHEDULED, 3);
    ns_row *one[] = {&a, &b};
    ns_row *two[] = {&c};
    store_batch b1 = {.rows = one, .n_rows = 2, .last_seq = 2};
    store_batch b2 = {.rows = two, .n_rows = 1, .last_seq = 3};

    /* Two pieces through one handle, as the engine spills them. */
    store_sidecar *sc = store_spill_open(sfx_db_path(), err, sizeof err);
    cr_assert(sc != NULL, "store_spill_open: %s", err);
    cr_assert(eq(int, store_spill_append(sc, &b1, err, sizeof err), 0), "%s", err);
    cr_assert(eq(int, store_spill_append(sc, &b2, err, sizeof err), 0), "%s", err);
    store_spill_close(sc);

    tear_a_piece();
    snprintf(journal, sizeof journal, "%s-journal", spill_file());
    bool hot = stat(journal, &sb) == 0 && sb.st_size > 0;
    cr_assert(hot, "no hot journal: the test did not tear a piece");

    store_replayed got = replay_ok(s, 3, 0);
    cr_assert(got.torn, "the torn piece must be reported");
    cr_assert(eq(sz, got.pieces, 2));
    cr_assert(eq(i64, store_last_seq(s), 3), "the torn piece's last_seq is not taken");
    cr_assert(false == file_exists(spill_file()));
    cr_assert(false == file_exists(journal));
    r = sfx_open_reader();
    expect_run(r, "r1", "the committed pieces are kept whole", 2, &a, &b);
    expect_run(r, "r2", NULL, 1, &c);
    expect_run(r, "torn", "nothing of the torn piece", 0);
    store_reader_close(r);
    store_close(s);
}

Test(store, a_sidecar_of_an_earlier_build_still_replays)
{
    store *s = sfx_open_store();
    store_reader *r;
    ns_row a = sfx_draft("r", "a", NS_RUNNING, 1);
    ns_row x = sfx_draft("old", "x", NS_RUNNING, 2);
    ns_row *base[] = {&a, &x};
    sqlite3 *db = NULL;

    write_ok(s, base, 2, NULL, 0, 2);
    /* One row per node keyed like the main table, and the runs deleted. */
    cr_assert(sqlite3_open_v2(spill_file(), &db,
                              SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                              NULL) == SQLITE_OK);
    raw_exec(db, WITHOUT_ROWID_TABLE_SQL
                 "CREATE TABLE nodestate_meta (key TEXT PRIMARY KEY,"
                 " value INTEGER);"
                 "CREATE TABLE spilled_deletes (run_id TEXT PRIMARY KEY);"
                 "PRAGMA user_version = 1;"
                 "INSERT INTO run_node_state (run_id, node_id, status,"
                 " attempt, updated_at, seq) VALUES ('r', 'b', 'completed',"
                 " 1, '2026-11-26T16:27:29.123Z', 5);"
                 "INSERT INTO spilled_deletes VALUES ('old');"
                 "INSERT INTO nodestate_meta VALUES ('last_seq', 6);");
    sqlite3_close(db);

    store_replayed got = replay_ok(s, 1, 1);
    cr_assert(eq(sz, got.pieces, 1));
    cr_assert(eq(i64, store_last_seq(s), 6));
    cr_assert(false == file_exists(spill_file()));
    r = sfx_open_reader();
    expect_run(r, "r", "the spilled row joins the stored one", 2, &a, NULL);
    expect_run(r, "old", "the spilled delete applies", 0);
    store_reader_close(r);
    store_close(s);
}

/* The timeout is a hang guard: replay gives up after the busy timeout. */
Test(store, replay_with_the_database_locked_keeps_the_sidecar, .timeout = 10)
{
    store *s = sfx_open_store();
    store_reader *r = sfx_open_reader();
    store_replayed got;
    char err[512] = "";
    ns_row a = sfx_draft("r", "a", NS_RUNNING, 1);
    ns_row sa = sfx_draft("r", "a", NS_COMPLETED, 2);
    ns_row *base[] = {&a};
    ns_row *spilled[] = {&sa};
    sqlite3 *other;

    write_ok(s, base, 1, NULL, 0, 1);
    spill(spilled, 1, NULL, 0, 2);
    other = lock_db();

    cr_assert(eq(int, store_replay(s, NULL, &got, err, sizeof err), -1));
    cr_assert(strstr(err, "locked") != NULL, "err: %s", err);
    cr_assert(eq(sz, got.rows, 0));
    cr_assert(file_exists(spill_file()), "the sidecar is kept");
    cr_assert(eq(i64, store_last_seq(s), 1));

    unlock_db(other);
    expect_run(r, "r", NULL, 1, &a);

    /* Once the lock is gone the same sidecar replays. */
    replay_ok(s, 1, 0);
    cr_assert(false == file_exists(spill_file()));
    cr_assert(eq(i64, store_last_seq(s), 2));
    expect_run(r, "r", NULL, 1, &sa);
    store_reader_close(r);
    store_close(s);
}

/*
 * A sidecar replayed late, after a server that did not know of it wrote to
 * the database (started with another --spill-path): the spilled delete
 * voids only the run's rows older than itself, never the newer ones, and
 * an older spilled row does not replace a newer one.
 */
Test(store, a_late_replay_keeps_the_writes_made_since)
{
    store *s = sfx_open_store();
    store_reader *r = sfx_open_reader();
    char err[512] = "";
    ns_row a = sfx_draft("r", "a", NS_RUNNING, 1);
    ns_row sa = sfx_draft("r", "a", NS_COMPLETED, 2);
    ns_row other = sfx_draft("q", "x", NS_RUNNING, 3);
    ns_row later_a = sfx_draft("r", "a", NS_FAILED, 100);
    ns_row later_b = sfx_draft("r", "b", NS_RUNNING, 101);
    ns_row *base[] = {&a};
    ns_row *spilled[] = {&other, &sa};
    ns_row *later[] = {&later_a, &later_b};
    const char *del[] = {"r"};
    const int64_t del_seq[] = {4};
    store_batch b = {
        .delete_runs = del, .delete_seqs = del_seq, .n_deletes = 1,
        .rows = spilled, .n_rows = 2, .last_seq = 4,
    };

    write_ok(s, base, 1, NULL, 0, 1);
    cr_assert(eq(int, store_spill(sfx_db_path(), &b, err, sizeof err), 0), "%s", err);
    write_ok(s, later, 2, NULL, 0, 101);

    replay_ok(s, 1, 1);
    expect_run(r, "r", "the writes after the spilled delete stay", 2, &later_a, &later_b);
    expect_run(r, "q", "the spilled row of another run applies", 1, &other);
    store_reader_close(r);
    store_close(s);
}

Test(store, replay_of_a_missing_or_empty_sidecar_is_a_no_op)
{
    store *s = sfx_open_store();
    FILE *f;

    replay_ok(s, 0, 0);

    f = fopen(spill_file(), "w");
    cr_assert(f != NULL);
    fclose(f);
    replay_ok(s, 0, 0);
    cr_assert(false == file_exists(spill_file()));
    cr_assert(eq(i64, store_last_seq(s), 0));
    store_close(s);
}

Test(store, replay_refuses_a_sidecar_it_did_not_write)
{
    store *s = sfx_open_store();
    store_replayed got;
    char err[512] = "";
    sqlite3 *db = NULL;

    cr_assert(sqlite3_open_v2(spill_file(), &db,
                              SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                              NULL) == SQLITE_OK);
    raw_exec(db, "CREATE TABLE something_else (x)");
    sqlite3_close(db);

    cr_assert(eq(int, store_replay(s, NULL, &got, err, sizeof err), -1));
    cr_assert(strstr(err, "not a nodestate spill file") != NULL, "err: %s",
              err);
    cr_assert(strstr(err, spill_file()) != NULL, "err names it: %s", err);
    cr_assert(file_exists(spill_file()));
    store_close(s);
}

Test(store, spill_isolates_a_row_it_cannot_store)
{
    store *s = sfx_open_store();
    sfx_isolated iso = {0};
    store_replayed got;
    char err[512] = "";
    ns_row good = sfx_draft("r", "a", NS_RUNNING, 1);
    ns_row bad = sfx_draft("r", "b", NS_STATUS_COUNT, 2);
    ns_row *both[] = {&good, &bad};
    store_batch b = {.rows = both, .n_rows = 2, .last_seq = 2,
                     .on_isolated = sfx_on_isolated, .isolated_ctx = &iso};

    cr_assert(eq(int, store_spill(sfx_db_path(), &b, err, sizeof err), 0),
              "store_spill: %s", err);
    cr_assert(eq(sz, iso.n, 1));
    cr_assert(iso.rows[0] == &bad);
    cr_assert(eq(int, store_replay(s, NULL, &got, err, sizeof err), 0),
              "store_replay: %s", err);
    cr_assert(eq(sz, got.rows, 1));
    cr_assert(eq(i64, store_last_seq(s), 2));
    store_close(s);
}

/* ---- migration from the original design's file (user_version 0) ---- */

/*
 * Creates the database with raw SQL and no user_version, as the old design
 * did.
 */
static void make_v0(const char *sql)
{
    sqlite3 *db = NULL;

    cr_assert(sqlite3_open_v2(sfx_db_path(), &db,
                              SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                              NULL) == SQLITE_OK);
    raw_exec(db, sql);
    sqlite3_close(db);
}

/* The original table: no seq, retryable, suspension or resume state. */
#define V0_TABLE                                                            \
    "CREATE TABLE run_node_state ("                                         \
    " run_id TEXT NOT NULL, node_id TEXT NOT NULL,"                         \
    " status VARCHAR(16) NOT NULL, attempt INTEGER NOT NULL,"               \
    " scheduled_at TEXT, started_at TEXT, completed_at TEXT,"               \
    " failed_at TEXT, last_error TEXT, outputs_json TEXT,"                  \
    " updated_at TEXT NOT NULL,"                                            \
    " PRIMARY KEY (run_id, node_id));"

Test(store, migrates_a_version_0_file_adding_missing_columns)
{
    store *s;
    store_reader *r;
    sqlite3 *db;
    ns_row want_a = sfx_draft("run", "a", NS_COMPLETED, 0);
    ns_row want_b = sfx_draft("run", "b", NS_FAILED, 0);

    make_v0(V0_TABLE
            "INSERT INTO run_node_state VALUES ('run', 'a', 'completed', 2,"
            " '2026-11-26T16:27:29.123Z', NULL, '2026-11-26T16:27:30.000Z',"
            " NULL, NULL, '{\"k\":1}', '2026-11-26T16:27:31.000Z');"
            "INSERT INTO run_node_state VALUES ('run', 'b', 'failed', 1,"
            " NULL, NULL, NULL, '2026-11-26T16:27:29.500Z', 'boom', NULL,"
            " '2026-11-26T16:27:29.500Z');");
    want_a.attempt = 2;
    want_a.ts[NS_TS_SCHEDULED] = T0;
    want_a.ts[NS_TS_COMPLETED] = T0 + 877;
    want_a.outputs = "{\"k\":1}";
    want_a.updated_at = T0 + 1877;
    want_b.ts[NS_TS_FAILED] = T0 + 377;
    want_b.last_error = "boom";
    want_b.updated_at = T0 + 377;
    /* The old rows had no seq: numbered 1..N in (run_id, node_id) order. */
    want_a.seq = 1;
    want_b.seq = 2;

    s = sfx_open_store();
    cr_assert(eq(i64, store_last_seq(s), 2));
    db = open_raw();
    cr_assert(eq(i64, raw_int(db, "PRAGMA user_version"), 2));
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM pragma_table_info("
                                  "'run_node_state')"), 16));
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM sqlite_master WHERE"
                                  " type='index' AND"
                                  " name='run_node_state_run_status'"), 0));
    cr_assert(eq(i64, raw_int(db, "SELECT value FROM nodestate_meta WHERE"
                                  " key='last_seq'"), 2));
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM run_node_state"), 2));
    sqlite3_close(db);

    /* Old rows read back with the defaults of the new columns. */
    r = sfx_open_reader();
    expect_run(r, "run", NULL, 2, &want_a, &want_b);

    /* And the migrated table takes our writes. */
    ns_row c = sfx_draft("run", "c", NS_SUSPENDED, 5);
    c.suspension_reason = "why";
    c.resume_state = "{}";
    c.retryable = true;
    ns_row *rows[] = {&c};
    write_ok(s, rows, 1, NULL, 0, 5);
    expect_run(r, "run", NULL, 3, ANY, ANY, &c);
    store_reader_close(r);
    store_close(s);

    /* Reopening the now version-1 file changes nothing. */
    s = sfx_open_store();
    cr_assert(eq(i64, store_last_seq(s), 5));
    store_close(s);
}

Test(store, migration_takes_last_seq_from_the_rows)
{
    store *s;

    make_v0("CREATE TABLE run_node_state (run_id TEXT, node_id TEXT,"
            " status TEXT, attempt INTEGER, updated_at TEXT, seq INTEGER,"
            " PRIMARY KEY (run_id, node_id));"
            "INSERT INTO run_node_state VALUES ('r', 'a', 'idle', 1,"
            " '2026-11-26T16:27:29.123Z', 17);"
            "INSERT INTO run_node_state VALUES ('r', 'b', 'idle', 1,"
            " '2026-11-26T16:27:29.123Z', 42);");
    s = sfx_open_store();
    cr_assert(eq(i64, store_last_seq(s), 42));
    store_close(s);
}

/*
 * Opens the database a refused migration left, asserting it is still at
 * version 0 with no nodestate_meta; the caller checks the rest and closes.
 */
static sqlite3 *open_unmigrated(void)
{
    sqlite3 *db = open_raw();

    cr_assert(eq(i64, raw_int(db, "PRAGMA user_version"), 0));
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM sqlite_master WHERE"
                                  " name = 'nodestate_meta'"), 0));
    return db;
}

/* Refused, and the file is left exactly as it was. */
static void assert_migration_refused(const char *table_sql, const char *want)
{
    char err[512] = "";
    sqlite3 *db;

    make_v0(table_sql);
    cr_assert(store_open(sfx_db_path(), false, err, sizeof err) == NULL);
    cr_assert(strstr(err, want) != NULL, "err: %s", err);
    cr_assert(strstr(err, sfx_db_path()) != NULL, "err names the path: %s",
              err);
    db = open_unmigrated();
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM pragma_table_info("
                                  "'run_node_state') WHERE name = 'seq'"), 0));
    sqlite3_close(db);
}

Test(store, migration_refuses_another_primary_key)
{
    assert_migration_refused(
        "CREATE TABLE run_node_state (id INTEGER PRIMARY KEY, run_id TEXT,"
        " node_id TEXT, status TEXT, attempt INTEGER, updated_at TEXT)",
        "primary key of run_node_state is not (run_id, node_id)");
}

Test(store, migration_refuses_a_key_in_the_other_order)
{
    assert_migration_refused(
        "CREATE TABLE run_node_state (run_id TEXT, node_id TEXT, status TEXT,"
        " attempt INTEGER, updated_at TEXT, PRIMARY KEY (node_id, run_id))",
        "primary key of run_node_state is not (run_id, node_id)");
}

Test(store, migration_refuses_non_text_status_or_timestamps)
{
    assert_migration_refused(
        "CREATE TABLE run_node_state (run_id TEXT, node_id TEXT,"
        " status INTEGER, attempt INTEGER, updated_at TEXT,"
        " PRIMARY KEY (run_id, node_id))",
        "run_node_state.status is declared INTEGER, not text");
}

Test(store, migration_refuses_epoch_timestamps)
{
    assert_migration_refused(
        "CREATE TABLE run_node_state (run_id TEXT, node_id TEXT, status TEXT,"
        " attempt INTEGER, started_at BIGINT, updated_at TEXT,"
        " PRIMARY KEY (run_id, node_id))",
        "run_node_state.started_at is declared BIGINT, not text");
}

Test(store, migration_refuses_a_table_without_updated_at)
{
    assert_migration_refused(
        "CREATE TABLE run_node_state (run_id TEXT, node_id TEXT, status TEXT,"
        " attempt INTEGER, PRIMARY KEY (run_id, node_id))",
        "run_node_state has no updated_at column");
}

/* T0 at midnight, and at whole seconds. */
#define T0_DAY (T0 - INT64_C(59249123))
#define T0_SEC (T0 - 123)

Test(store, migration_converts_timestamps_to_our_form)
{
    store *s;
    store_reader *r;
    sqlite3 *db;
    char buf[64];
    ns_row want_a = sfx_draft("run", "a", NS_COMPLETED, 0);
    ns_row want_b = sfx_draft("run", "b", NS_IDLE, 0);

    /* SQLite's CURRENT_TIMESTAMP form, other RFC 3339 forms, date only. */
    make_v0(V0_TABLE
            "INSERT INTO run_node_state VALUES ('run', 'a', 'completed', 1,"
            " '2026-11-26 16:27:29', '2026-11-26 16:27:29.123',"
            " '2026-11-26T18:27:29.5+02:00', NULL, NULL, NULL,"
            " '2026-11-26t16:27:29.1239z');"
            "INSERT INTO run_node_state VALUES ('run', 'b', 'idle', 1,"
            " '2026-11-26', '2026-11-26T16:27', NULL, NULL, NULL, NULL,"
            " '2026-11-26T16:27:29.123Z');");
    want_a.ts[NS_TS_SCHEDULED] = T0_SEC;
    want_a.ts[NS_TS_STARTED] = T0;
    want_a.ts[NS_TS_COMPLETED] = T0_SEC + 500;
    want_a.updated_at = T0;
    want_b.ts[NS_TS_SCHEDULED] = T0_DAY;
    want_b.ts[NS_TS_STARTED] = T0_SEC - 29000;
    want_b.updated_at = T0;
    want_a.seq = 1;
    want_b.seq = 2;

    s = sfx_open_store();
    db = open_raw();
    cr_assert(eq(i64, raw_int(db, "PRAGMA user_version"), 2));
    raw_text(db, "SELECT scheduled_at FROM run_node_state WHERE node_id='a'",
             buf, sizeof buf);
    cr_assert(eq(str, buf, "2026-11-26T16:27:29.000Z"));
    raw_text(db, "SELECT completed_at FROM run_node_state WHERE node_id='a'",
             buf, sizeof buf);
    cr_assert(eq(str, buf, "2026-11-26T16:27:29.500Z"), "in UTC");
    raw_text(db, "SELECT updated_at FROM run_node_state WHERE node_id='a'",
             buf, sizeof buf);
    cr_assert(eq(str, buf, "2026-11-26T16:27:29.123Z"),
              "truncated below the ms, as the reader does");
    raw_text(db, "SELECT scheduled_at FROM run_node_state WHERE node_id='b'",
             buf, sizeof buf);
    cr_assert(eq(str, buf, "2026-11-26T00:00:00.000Z"));
    /* Every stored timestamp now has exactly our shape. */
#define OUR_TS_GLOB                                                         \
    "'[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:"    \
    "[0-9][0-9].[0-9][0-9][0-9]Z'"
    cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM run_node_state WHERE"
                                  " NOT updated_at GLOB " OUR_TS_GLOB
                                  " OR NOT scheduled_at GLOB " OUR_TS_GLOB
                                  " OR NOT coalesce(started_at, '') GLOB "
                                  OUR_TS_GLOB), 0));
    sqlite3_close(db);

    r = sfx_open_reader();
    expect_run(r, "run", NULL, 2, &want_a, &want_b);
    store_reader_close(r);
    store_close(s);
}

Test(store, migration_refuses_values_it_cannot_read_and_changes_nothing)
{
    static const struct {
        const char *col;
        const char *value;      /* SQL literal */
        const char *want;       /* in the message */
    } cases[] = {
        {"started_at", "'yesterday'", "run_node_state.started_at holds"
                                      " 'yesterday'"},
        {"completed_at", "'now'", "run_node_state.completed_at holds 'now'"},
        {"failed_at", "'2461000.5'", "run_node_state.failed_at holds"
                                     " '2461000.5'"},
        {"started_at", "'16:27:29'", "run_node_state.started_at holds"
                                     " '16:27:29'"},
        {"updated_at", "'2026-13-01 00:00:00'",
         "run_node_state.updated_at holds '2026-13-01 00:00:00'"},
        {"updated_at", "NULL", "run_node_state.updated_at holds NULL"},
        {"status", "'done'", "run_node_state.status holds 'done'"},
        {"status", "NULL", "run_node_state.status holds NULL"},
        {"attempt", "NULL", "run_node_state.attempt holds NULL"},
        {"attempt", "0", "run_node_state.attempt holds 0"},
        {"attempt", "-2", "run_node_state.attempt holds -2"},
        {"attempt", "1.5", "run_node_state.attempt holds 1.5"},
        {"attempt", "'two'", "run_node_state.attempt holds 'two'"},
        {"outputs_json", "'done: ok'",
         "run_node_state.outputs_json holds 'done: ok'"},
        {"outputs_json", "''", "run_node_state.outputs_json holds ''"},
        {"resume_state_json", "'{\"a\": 1'",
         "run_node_state.resume_state_json holds '{\"a\": 1'"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char sql[1024];
        char err[512] = "";
        char buf[64];
        sqlite3 *db;

        sfx_remove_files();
        /* Row a converts fine and comes first: its change must not stay. */
        snprintf(sql, sizeof sql,
                 "CREATE TABLE run_node_state (run_id TEXT, node_id TEXT,"
                 " status TEXT, attempt INTEGER, scheduled_at TEXT,"
                 " started_at TEXT, completed_at TEXT, failed_at TEXT,"
                 " updated_at TEXT, resume_state_json TEXT,"
                 " outputs_json TEXT, PRIMARY KEY (run_id, node_id));"
                 "INSERT INTO run_node_state VALUES ('r', 'a', 'idle', 1,"
                 " '2026-11-26 16:27:29', NULL, NULL, NULL,"
                 " '2026-11-26 16:27:29', '{}', '{\"k\":1}');"
                 "INSERT INTO run_node_state VALUES ('r', 'b', 'idle', 1,"
                 " NULL, NULL, NULL, NULL, '2026-11-26T16:27:29.123Z',"
                 " NULL, NULL);"
                 "UPDATE run_node_state SET %s = %s WHERE node_id = 'b';",
                 cases[i].col, cases[i].value);
        make_v0(sql);

        cr_assert(store_open(sfx_db_path(), false, err, sizeof err) == NULL,
                  "%s = %s was migrated", cases[i].col, cases[i].value);
        cr_assert(strstr(err, cases[i].want) != NULL, "err: %s", err);
        cr_assert(strstr(err, "run_id 'r', node_id 'b'") != NULL, "err: %s",
                  err);
        cr_assert(strstr(err, sfx_db_path()) != NULL, "err: %s", err);

        db = open_unmigrated();
        cr_assert(eq(i64, raw_int(db, "SELECT count(*) FROM pragma_table_info"
                                      "('run_node_state')"), 11));
        raw_text(db, "SELECT scheduled_at || '|' || updated_at FROM"
                     " run_node_state WHERE node_id = 'a'", buf, sizeof buf);
        cr_assert(eq(str, buf, "2026-11-26 16:27:29|2026-11-26 16:27:29"),
                  "the conversion was rolled back");
        sqlite3_close(db);
    }
}

Test(store, migration_numbers_rows_without_a_seq_above_the_highest)
{
    store *s;
    store_reader *r;
    loaded l;
    sqlite3 *db;

    /*
     * b keeps its 17; the others (0, NULL, negative, text) are numbered
     * above it in (run_id, node_id) order, run "q" before run "r".
     */
    make_v0("CREATE TABLE run_node_state (run_id TEXT, node_id TEXT,"
            " status TEXT, attempt INTEGER, updated_at TEXT, seq INTEGER,"
            " PRIMARY KEY (run_id, node_id));"
            "INSERT INTO run_node_state VALUES"
            " ('r', 'd', 'idle', 1, '2026-11-26T16:27:29.123Z', -3),"
            " ('r', 'c', 'idle', 1, '2026-11-26T16:27:29.123Z', NULL),"
            " ('r', 'b', 'idle', 1, '2026-11-26T16:27:29.123Z', 17),"
            " ('r', 'a', 'idle', 1, '2026-11-26T16:27:29.123Z', 0),"
            " ('r', 'e', 'idle', 1, '2026-11-26T16:27:29.123Z', 'x'),"
            " ('q', 'z', 'idle', 1, '2026-11-26T16:27:29.123Z', 0);");
    s = sfx_open_store();
    cr_assert(eq(i64, store_last_seq(s), 22));
    db = open_raw();
    cr_assert(eq(i64, raw_int(db, "SELECT value FROM nodestate_meta WHERE"
                                  " key = 'last_seq'"), 22));
    cr_assert(eq(i64, raw_int(db, "SELECT seq FROM run_node_state WHERE"
                                  " run_id = 'q'"), 18));
    sqlite3_close(db);

    r = sfx_open_reader();
    load(r, "r", &l);
    cr_assert(eq(sz, l.n, 5));
    cr_assert(eq(i64, l.rows[0]->seq, 19), "a");
    cr_assert(eq(i64, l.rows[1]->seq, 17), "b keeps its seq");
    cr_assert(eq(i64, l.rows[2]->seq, 20), "c");
    cr_assert(eq(i64, l.rows[3]->seq, 21), "d");
    cr_assert(eq(i64, l.rows[4]->seq, 22), "e");
    loaded_free(&l);
    store_reader_close(r);
    store_close(s);
}

Test(store, migration_numbers_above_a_last_seq_already_recorded)
{
    store *s;
    sqlite3 *db;

    make_v0(V0_TABLE
            "CREATE TABLE nodestate_meta (key TEXT PRIMARY KEY,"
            " value INTEGER);"
            "INSERT INTO nodestate_meta VALUES ('last_seq', 100);"
            "INSERT INTO run_node_state VALUES ('r', 'a', 'idle', 1, NULL,"
            " NULL, NULL, NULL, NULL, NULL, '2026-11-26T16:27:29.123Z');");
    s = sfx_open_store();
    cr_assert(eq(i64, store_last_seq(s), 101));
    db = open_raw();
    cr_assert(eq(i64, raw_int(db, "SELECT seq FROM run_node_state"), 101));
    sqlite3_close(db);
    store_close(s);
}

Test(store, migration_keeps_valid_json_as_written_by_another_tool)
{
    store *s;
    store_reader *r;
    loaded l;

    /* Valid but not compact: still JSON, so it is kept byte for byte. */
    make_v0(V0_TABLE
            "INSERT INTO run_node_state VALUES ('r', 'a', 'completed', 3,"
            " NULL, NULL, NULL, NULL, NULL, ' { \"a\" : [1, 2] } ',"
            " '2026-11-26T16:27:29.123Z');"
            "INSERT INTO run_node_state VALUES ('r', 'b', 'completed', 1,"
            " NULL, NULL, NULL, NULL, NULL, '\"text\"',"
            " '2026-11-26T16:27:29.123Z');");
    s = sfx_open_store();
    r = sfx_open_reader();
    load(r, "r", &l);
    cr_assert(eq(sz, l.n, 2));
    cr_assert(eq(i64, l.rows[0]->attempt, 3));
    assert_str_or_null(l.rows[0]->outputs, " { \"a\" : [1, 2] } ",
                       "outputs");
    assert_str_or_null(l.rows[1]->outputs, "\"text\"", "outputs");
    loaded_free(&l);
    store_reader_close(r);
    store_close(s);
}

/* ---- nodestate_meta for the caller ---- */

Test(store, meta_get_and_set_round_trip_and_survive_reopen)
{
    store *s = sfx_open_store();
    int64_t v = 99;
    sqlite3 *db;
    ns_row a = sfx_draft("r", "a", NS_IDLE, 7);
    ns_row *rows[] = {&a};

    cr_assert(eq(int, store_meta_get(s, "seq_reserved", &v), 1));
    cr_assert(eq(i64, v, 99), "absent leaves *value alone");

    cr_assert(eq(int, store_meta_set(s, "seq_reserved", 1000), 0), "%s",
              store_errmsg(s));
    cr_assert(eq(int, store_meta_get(s, "seq_reserved", &v), 0));
    cr_assert(eq(i64, v, 1000));
    /* Committed at once: another connection sees it. */
    db = open_raw();
    cr_assert(eq(i64, raw_int(db, "SELECT value FROM nodestate_meta WHERE"
                                  " key = 'seq_reserved'"), 1000));
    sqlite3_close(db);

    /* A plain replace, not max(); keys are independent. */
    cr_assert(eq(int, store_meta_set(s, "seq_reserved", 5), 0));
    cr_assert(eq(int, store_meta_set(s, "other", INT64_MIN), 0));
    cr_assert(eq(int, store_meta_get(s, "seq_reserved", &v), 0));
    cr_assert(eq(i64, v, 5));
    cr_assert(eq(int, store_meta_get(s, "other", &v), 0));
    cr_assert(eq(i64, v, INT64_MIN));

    /* store_write's last_seq is readable and unaffected by the caller's. */
    write_ok(s, rows, 1, NULL, 0, 7);
    cr_assert(eq(int, store_meta_get(s, "last_seq", &v), 0));
    cr_assert(eq(i64, v, 7));
    store_close(s);

    s = sfx_open_store();
    cr_assert(eq(int, store_meta_get(s, "seq_reserved", &v), 0));
    cr_assert(eq(i64, v, 5));
    cr_assert(eq(i64, store_last_seq(s), 7));
    store_close(s);
}

Test(store, meta_set_refuses_last_seq)
{
    store *s = sfx_open_store();
    int64_t v = 0;
    ns_row a = sfx_draft("r", "a", NS_IDLE, 3);
    ns_row *rows[] = {&a};

    write_ok(s, rows, 1, NULL, 0, 3);
    cr_assert(eq(int, store_meta_set(s, "last_seq", 1), -1));
    cr_assert(strstr(store_errmsg(s), "last_seq") != NULL, "errmsg: %s",
              store_errmsg(s));
    cr_assert(eq(int, store_meta_get(s, "last_seq", &v), 0));
    cr_assert(eq(i64, v, 3));
    cr_assert(eq(i64, store_last_seq(s), 3));
    store_close(s);
}

Test(store, meta_get_refuses_a_value_that_is_not_an_integer)
{
    store *s = sfx_open_store();
    int64_t v = 99;
    sqlite3 *db = open_raw();

    raw_exec(db, "INSERT INTO nodestate_meta VALUES ('text', 'abc'),"
                 " ('null', NULL)");
    sqlite3_close(db);
    cr_assert(eq(int, store_meta_get(s, "text", &v), -1));
    cr_assert(strstr(store_errmsg(s), "not an integer") != NULL,
              "errmsg: %s", store_errmsg(s));
    cr_assert(eq(int, store_meta_get(s, "null", &v), -1));
    cr_assert(eq(i64, v, 99));
    cr_assert(eq(int, store_meta_get(s, NULL, &v), -1));
    cr_assert(eq(int, store_meta_set(s, NULL, 1), -1));
    store_close(s);
}

/* The timeout is a hang guard: the write gives up after its busy timeout. */
Test(store, meta_set_fails_cleanly_while_the_file_is_locked, .timeout = 10)
{
    store *s = sfx_open_store();
    int64_t v = 0;
    sqlite3 *other;

    cr_assert(eq(int, store_meta_set(s, "k", 1), 0));
    other = lock_db();
    cr_assert(eq(int, store_meta_set(s, "k", 2), -1));
    cr_assert(strstr(store_errmsg(s), "locked") != NULL, "errmsg: %s",
              store_errmsg(s));
    unlock_db(other);

    cr_assert(eq(int, store_meta_get(s, "k", &v), 0));
    cr_assert(eq(i64, v, 1));
    /* The statement was reset: the next set works. */
    cr_assert(eq(int, store_meta_set(s, "k", 2), 0), "%s", store_errmsg(s));
    cr_assert(eq(int, store_meta_get(s, "k", &v), 0));
    cr_assert(eq(i64, v, 2));
    store_close(s);
}

/* ---- the online backup ---- */

/* How many entries of the test directory have ".nodestate-backup-" in their name. */
static int backup_files_left(void)
{
    DIR *d = opendir(sfx_dir());
    struct dirent *e;
    int n = 0;

    cr_assert_not_null(d, "%s: %s", sfx_dir(), strerror(errno));
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".nodestate-backup-") != NULL)
            n++;
    closedir(d);
    return n;
}

/* Reads the whole backup in odd-sized pieces into path; returns its size. */
static uint64_t backup_to_file(store_backup *b, const char *path)
{
    char buf[1000];
    uint64_t pos = 0;
    ssize_t got;
    FILE *f = fopen(path, "wb");

    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    while ((got = store_backup_read(b, pos, buf, sizeof buf)) > 0) {
        cr_assert_eq(fwrite(buf, 1, (size_t)got, f), (size_t)got);
        pos += (uint64_t)got;
    }
    cr_assert_eq(got, 0, "store_backup_read failed at %llu", (unsigned long long)pos);
    cr_assert_eq(fclose(f), 0);
    return pos;
}

Test(store, backup_is_a_snapshot_of_committed_rows_and_leaves_no_file)
{
    store *s = sfx_open_store();
    ns_row a = sfx_draft("run-1", "a", NS_COMPLETED, 7);
    ns_row b = sfx_draft("run-1", "b", NS_RUNNING, 8);
    ns_row *rows[] = {&a, &b};
    store_backup *bk = NULL;
    char err[512] = "", copy[PATH_MAX], text[64];
    sqlite3 *writer, *db = NULL;

    write_ok(s, rows, 2, NULL, 0, 8);
    /*
     * Another connection holds the write lock with a row not committed: the
     * backup neither waits for it nor sees the row (WAL readers see the
     * last commit).
     */
    writer = lock_db();
    raw_exec(writer, "INSERT INTO run_node_state (run_id, node_id, status, attempt, "
                     "updated_at, seq) VALUES ('run-1', 'c', 'running', 1, "
                     "'2026-11-26T16:27:29.123Z', 9)");
    raw_exec(writer, "UPDATE nodestate_meta SET value = 9 WHERE key = 'last_seq'");
    cr_assert_eq(store_backup_open(sfx_db_path(), &bk, err, sizeof err), STORE_BACKUP_OK,
                 "%s", err);
    unlock_db(writer); /* commits c after the snapshot */
    cr_assert_eq(backup_files_left(), 0, "the temporary copy is unlinked once open");

    snprintf(copy, sizeof copy, "%s/copy.db", sfx_dir());
    cr_assert_eq(backup_to_file(bk, copy), store_backup_size(bk));
    cr_assert_gt(store_backup_size(bk), 0);
    /* Past the end there is nothing more. */
    cr_assert_eq(store_backup_read(bk, store_backup_size(bk), text, sizeof text), 0);
    store_backup_close(bk);

    cr_assert_eq(sqlite3_open_v2(copy, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    raw_text(db, "PRAGMA integrity_check", text, sizeof text);
    cr_assert_str_eq(text, "ok");
    cr_assert_eq(raw_int(db, "SELECT count(*) FROM run_node_state"), 2);
    cr_assert_eq(raw_int(db, "SELECT seq FROM run_node_state WHERE node_id = 'a'"), 7);
    raw_text(db, "SELECT status FROM run_node_state WHERE node_id = 'b'", text, sizeof text);
    cr_assert_str_eq(text, "running");
    cr_assert_eq(raw_int(db, "SELECT value FROM nodestate_meta WHERE key = 'last_seq'"), 8);
    cr_assert_eq(raw_int(db, "PRAGMA user_version"), 2);
    sqlite3_close(db);
    unlink(copy);
    store_close(s);

    /* The copy is a database this store opens, as a restore would. */
    cr_assert_eq(backup_files_left(), 0);
}

Test(store, backup_failure_names_the_path_and_leaves_nothing)
{
    char missing[PATH_MAX], err[512] = "";
    store_backup *bk = (store_backup *)(void *)&bk;

    /* No such directory: not even the temporary file can be made. */
    snprintf(missing, sizeof missing, "%s/no-such-dir/ns.db", sfx_dir());
    cr_assert_eq(store_backup_open(missing, &bk, err, sizeof err), STORE_BACKUP_FAILED);
    cr_assert_null(bk);
    cr_assert_not_null(strstr(err, missing), "%s", err);

    /* No database (the directory exists): SQLite refuses a read-only open. */
    cr_assert_eq(store_backup_open(sfx_db_path(), &bk, err, sizeof err),
                 STORE_BACKUP_FAILED);
    cr_assert_null(bk);
    cr_assert_not_null(strstr(err, sfx_db_path()), "%s", err);
    cr_assert_eq(backup_files_left(), 0, "a failed backup left its temporary file");
    store_backup_close(NULL);
}

Test(store, backup_sweep_removes_only_leftover_copies)
{
    static const char *const gone[] = {".nodestate-backup-Ab12_z", ".nodestate-backup-xxxxxx"};
    /* An operator's own copies too, named as earlier builds named theirs. */
    static const char *const kept[] = {".nodestate-backup-short", ".nodestate-backup-toolong7",
                                       ".nodestate-backupXabcdef", ".backup-friday",
                                       ".backup-Ab12_z", "-wal", ".spill"};
    char p[PATH_MAX], err[512] = "";
    size_t removed = 99;

    for (size_t i = 0; i < sizeof gone / sizeof *gone; i++) {
        snprintf(p, sizeof p, "%s%s", sfx_db_path(), gone[i]);
        FILE *f = fopen(p, "w");
        cr_assert_not_null(f);
        fclose(f);
        cr_assert_eq(chmod(p, 0600), 0); /* as mkstemp makes them */
    }
    /* Our name, not our mode: someone made it by hand. */
    snprintf(p, sizeof p, "%s.nodestate-backup-hand00", sfx_db_path());
    FILE *h = fopen(p, "w");
    cr_assert_not_null(h);
    fclose(h);
    cr_assert_eq(chmod(p, 0644), 0);
    for (size_t i = 0; i < sizeof kept / sizeof *kept; i++) {
        snprintf(p, sizeof p, "%s%s", sfx_db_path(), kept[i]);
        FILE *f = fopen(p, "w");
        cr_assert_not_null(f);
        fclose(f);
    }
    /* Another database's leftovers in the same directory are not ours. */
    snprintf(p, sizeof p, "%s/other.db.nodestate-backup-abcdef", sfx_dir());
    FILE *f = fopen(p, "w");
    cr_assert_not_null(f);
    fclose(f);

    cr_assert_eq(store_backup_sweep(sfx_db_path(), &removed, err, sizeof err), 0, "%s", err);
    cr_assert_eq(removed, 2);
    for (size_t i = 0; i < sizeof gone / sizeof *gone; i++) {
        snprintf(p, sizeof p, "%s%s", sfx_db_path(), gone[i]);
        cr_assert_neq(access(p, F_OK), 0, "%s is still there", p);
    }
    for (size_t i = 0; i < sizeof kept / sizeof *kept; i++) {
        snprintf(p, sizeof p, "%s%s", sfx_db_path(), kept[i]);
        cr_assert_eq(access(p, F_OK), 0, "%s was removed", p);
        unlink(p);
    }
    snprintf(p, sizeof p, "%s/other.db.nodestate-backup-abcdef", sfx_dir());
    cr_assert_eq(access(p, F_OK), 0, "another database's file was removed");
    unlink(p);
    snprintf(p, sizeof p, "%s.nodestate-backup-hand00", sfx_db_path());
    cr_assert_eq(access(p, F_OK), 0, "a file of our name made by hand (0644) was removed");
    unlink(p);

    /* Nothing to do is not an error. */
    cr_assert_eq(store_backup_sweep(sfx_db_path(), &removed, err, sizeof err), 0, "%s", err);
    cr_assert_eq(removed, 0);
}

/* store_reader_deleted_seq, asserting it read. */
static int64_t deleted_seq(store_reader *r, const char *run)
{
    int64_t seq = -1;
    cr_assert(eq(int, store_reader_deleted_seq(r, run, &seq), 0));
    return seq;
}

Test(store, a_delete_is_on_record_with_its_seq_until_retention_forgets_it)
{
    store *s = sfx_open_store();
    store_reader *r = sfx_open_reader();
    cr_assert(eq(i64, deleted_seq(r, "r1"), 0), "no delete on record");

    const char *const del[] = {"r1", "r2"};
    const int64_t seqs[] = {5, 6};
    store_batch b = { .delete_runs = del, .delete_seqs = seqs, .n_deletes = 2, .last_seq = 6 };
    cr_assert(eq(int, store_write(s, &b), 0), "%s", store_errmsg(s));
    cr_assert(eq(i64, deleted_seq(r, "r1"), 5));
    cr_assert(eq(i64, deleted_seq(r, "r2"), 6));

    /* A newer delete replaces the record; an older one (a late replay's) does not. */
    const int64_t newer[] = {9}, older[] = {7};
    store_batch nb = { .delete_runs = del, .delete_seqs = newer, .n_deletes = 1, .last_seq = 9 };
    cr_assert(eq(int, store_write(s, &nb), 0), "%s", store_errmsg(s));
    store_batch ob = { .delete_runs = del, .delete_seqs = older, .n_deletes = 1, .last_seq = 9 };
    cr_assert(eq(int, store_write(s, &ob), 0), "%s", store_errmsg(s));
    cr_assert(eq(i64, deleted_seq(r, "r1"), 9));

    /* A batch without seqs (older callers) records nothing. */
    const char *const del3[] = {"r3"};
    write_ok(s, NULL, 0, del3, 1, 10);
    cr_assert(eq(i64, deleted_seq(r, "r3"), 0));

    /* Records older than the cutoff go with the batch that carries it. */
    sqlite3 *raw = open_raw();
    raw_exec(raw, "UPDATE run_deletes SET deleted_at = 1000 WHERE run_id = 'r2'");
    sqlite3_close(raw);
    store_batch fb = { .forget_deletes_before_ms = 2000, .last_seq = 10 };
    cr_assert(eq(int, store_write(s, &fb), 0), "%s", store_errmsg(s));
    cr_assert(eq(i64, deleted_seq(r, "r2"), 0), "forgotten");
    cr_assert(eq(i64, deleted_seq(r, "r1"), 9), "younger than the cutoff: kept");

    /* A spilled delete is on record once replayed, with its own seq. */
    const char *const del4[] = {"r4"};
    const int64_t seq4[] = {12};
    store_batch sb = { .delete_runs = del4, .delete_seqs = seq4, .n_deletes = 1, .last_seq = 13 };
    char err[512] = "";
    cr_assert(eq(int, store_spill(sfx_db_path(), &sb, err, sizeof err), 0), "%s", err);
    replay_ok(s, 0, 1);
    cr_assert(eq(i64, deleted_seq(r, "r4"), 12));
    store_reader_close(r);
    store_close(s);
}

Test(store, a_reader_of_a_file_without_delete_records_finds_none)
{
    store *s = sfx_open_store();
    store_close(s);
    /* As a build that predates run_deletes left it. */
    sqlite3 *raw = open_raw();
    raw_exec(raw, "DROP TABLE run_deletes");
    sqlite3_close(raw);
    store_reader *r = sfx_open_reader();
    cr_assert(eq(i64, deleted_seq(r, "r1"), 0));
    store_reader_close(r);
    /* The next writer makes it again. */
    s = sfx_open_store();
    const char *const del[] = {"r1"};
    const int64_t seqs[] = {3};
    store_batch b = { .delete_runs = del, .delete_seqs = seqs, .n_deletes = 1, .last_seq = 3 };
    cr_assert(eq(int, store_write(s, &b), 0), "%s", store_errmsg(s));
    r = sfx_open_reader();
    cr_assert(eq(i64, deleted_seq(r, "r1"), 3));
    store_reader_close(r);
    store_close(s);
}
