/*
 * it_migrate: PRAGMA user_version records the schema. A file the server makes
 * is version 2; a version-0 file holding the older run_node_state table
 * (without seq, suspension_reason, resume_state_json) is migrated straight to
 * version 2 at start and its rows serve as before; a version-1 file loses its
 * (run_id, status) index and keeps every row; a file of a newer version (3)
 * is refused: the process exits non-zero with a message naming the version,
 * and the file is left as it was.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "it_assert.h"

/* Runs sql on a fresh read-write connection to path (creating the file). */
static void exec_db(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    char *err = NULL;
    cr_assert_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL),
                 SQLITE_OK, "open %s", path);
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    cr_assert_eq(rc, SQLITE_OK, "%s: %s", sql, err ? err : "");
    cr_assert_eq(sqlite3_close(db), SQLITE_OK);
}

/* Removes the database the server made, with its WAL files. */
static void remove_db(ns_server *s)
{
    char path[4200];
    const char *const suffixes[] = { "", "-wal", "-shm", "-journal" };
    for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
        snprintf(path, sizeof path, "%s%s", ns_db_path(s), suffixes[i]);
        unlink(path);
    }
    cr_assert_neq(access(ns_db_path(s), F_OK), 0);
}

/* A stopped server whose directory is ready for a hand-made database. */
static ns_server *stopped_server(void)
{
    ns_server *s = ns_start(NULL);
    cr_assert_not_null(s);
    cr_assert_eq(ns_db_int(s, "PRAGMA user_version", NULL), 2, "a new file is version 2");
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM sqlite_master WHERE type='index' AND "
                              "tbl_name='run_node_state' AND sql IS NOT NULL", NULL), 0,
                 "a new file has an index besides the primary key");
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    remove_db(s);
    return s;
}

/* The original design's table: no seq, suspension_reason or resume_state_json. */
static const char v0_schema[] =
    "CREATE TABLE run_node_state ("
    " run_id TEXT NOT NULL,"
    " node_id TEXT NOT NULL,"
    " status TEXT NOT NULL,"
    " attempt INTEGER NOT NULL,"
    " scheduled_at TEXT,"
    " started_at TEXT,"
    " completed_at TEXT,"
    " failed_at TEXT,"
    " suspended_at TEXT,"
    " last_error TEXT,"
    " retryable INTEGER NOT NULL DEFAULT 0,"
    " outputs_json TEXT,"
    " updated_at TEXT NOT NULL,"
    " PRIMARY KEY (run_id, node_id));"
    "INSERT INTO run_node_state VALUES"
    " ('old', 'done', 'completed', 2, '2025-01-01T00:00:00.000Z',"
    "  '2025-01-01T00:00:01.000Z', '2025-01-01T00:00:02.500Z', NULL, NULL, NULL, 0,"
    "  '{\"answer\":42}', '2025-01-01T00:00:02.500Z'),"
    " ('old', 'broke', 'failed', 1, NULL, '2025-01-01T00:00:01.000Z', NULL,"
    "  '2025-01-01T00:00:03.000Z', NULL, 'boom', 1, NULL, '2025-01-01T00:00:03.000Z'),"
    " ('old', 'waits', 'running', 1, NULL, '2025-01-01T00:00:04.000Z', NULL, NULL, NULL,"
    "  NULL, 0, NULL, '2025-01-01T00:00:04.000Z'),"
    " ('other', 'x', 'scheduled', 1, '2025-01-02T00:00:00.000Z', NULL, NULL, NULL, NULL,"
    "  NULL, 0, NULL, '2025-01-02T00:00:00.000Z');";

static json_t *get_node(ns_server *s, const char *run, const char *node)
{
    ns_resp r = { 0 };
    cr_assert_eq(ns_get_state(s, run, node, &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 200, "GET %s/%s after the migration: %ld %s", run, node, r.status,
                 r.body);
    json_t *doc = ns_resp_json(&r);
    cr_assert(json_is_object(doc), "%s", r.body);
    ns_resp_free(&r);
    return doc;
}

Test(migrate, version_0_file_is_migrated)
{
    ns_server *s = stopped_server();
    exec_db(ns_db_path(s), v0_schema);
    cr_assert_eq(ns_db_int(s, "PRAGMA user_version", NULL), 0);

    cr_assert_eq(ns_restart(s, NULL), 0, "start on a version-0 file");
    cr_assert_eq(ns_db_int(s, "PRAGMA user_version", NULL), 2, "not migrated to version 2");
    const char *const added[] = { "seq", "suspension_reason", "resume_state_json" };
    for (size_t i = 0; i < 3; i++)
        cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM pragma_table_info('run_node_state') "
                                  "WHERE name=?", added[i], NULL), 1,
                     "column %s missing after the migration", added[i]);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state", NULL), 4,
                 "rows lost in the migration");

    json_t *n = get_node(s, "old", "done");
    cr_assert_str_eq(ns_jstr(n, "status"), "completed");
    cr_assert_eq(it_jint(n, "attempt"), 2);
    cr_assert_str_eq(ns_jstr(n, "completed_at"), "2025-01-01T00:00:02.500Z");
    cr_assert_str_eq(ns_jstr(n, "scheduled_at"), "2025-01-01T00:00:00.000Z");
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(n, "outputs"), "answer")),
                 42);
    cr_assert(ns_jnull(n, "suspension_reason"));
    cr_assert(ns_jnull(n, "resume_state"));
    cr_assert(json_is_true(json_object_get(n, "durable")));
    json_decref(n);
    n = get_node(s, "old", "broke");
    cr_assert_str_eq(ns_jstr(n, "status"), "failed");
    cr_assert_str_eq(ns_jstr(n, "last_error"), "boom");
    cr_assert(json_is_true(json_object_get(n, "retryable")));
    cr_assert_str_eq(ns_jstr(n, "failed_at"), "2025-01-01T00:00:03.000Z");
    json_decref(n);
    n = get_node(s, "other", "x");
    cr_assert_str_eq(ns_jstr(n, "status"), "scheduled");
    json_decref(n);

    /* The migrated rows are live state: the rules apply, new writes work. */
    ns_resp r = { 0 };
    char why[512];
    cr_assert_eq(ns_post_state(s, "old", "done", NULL, "{\"status\":\"running\"}", &r), 0);
    cr_assert_eq(ns_check_problem(&r, 409, "illegal-transition", why, sizeof why), 0, "%s", why);
    cr_assert_eq(ns_post_state(s, "old", "waits", "?wait=true",
                               "{\"status\":\"suspended\",\"suspension_reason\":\"input\","
                               "\"resume_state\":{\"k\":1}}", &r), 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    ns_resp_free(&r);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='old' AND "
                              "node_id='waits' AND status='suspended' AND "
                              "suspension_reason='input' AND seq > 0 AND "
                              "json_extract(resume_state_json, '$.k') = 1", NULL), 1);
    json_t *sum = NULL;
    cr_assert_eq(ns_req(s, "GET", "/runs/old", NULL, NULL, &r), 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    sum = ns_resp_json(&r);
    cr_assert_eq(it_jint(sum, "nodes"), 3);
    json_decref(sum);
    ns_resp_free(&r);

    /* Migrated once: the next start finds version 2 and serves the same. */
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_eq(ns_restart(s, NULL), 0);
    cr_assert_eq(ns_db_int(s, "PRAGMA user_version", NULL), 2);
    n = get_node(s, "old", "waits");
    cr_assert_str_eq(ns_jstr(n, "status"), "suspended");
    cr_assert_str_eq(ns_jstr(n, "suspension_reason"), "input");
    json_decref(n);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

/* A file as version 1 made it: the same table plus an index on (run_id, status). */
static const char v1_schema[] =
    "CREATE TABLE run_node_state (run_id TEXT NOT NULL, node_id TEXT NOT NULL,"
    " status TEXT NOT NULL, attempt INTEGER NOT NULL, scheduled_at TEXT,"
    " started_at TEXT, completed_at TEXT, failed_at TEXT, suspended_at TEXT,"
    " last_error TEXT, retryable INTEGER NOT NULL DEFAULT 0, suspension_reason TEXT,"
    " resume_state_json TEXT, outputs_json TEXT, updated_at TEXT NOT NULL,"
    " seq INTEGER NOT NULL, PRIMARY KEY (run_id, node_id)) WITHOUT ROWID;"
    "CREATE INDEX run_node_state_run_status ON run_node_state (run_id, status);"
    "CREATE TABLE nodestate_meta (key TEXT PRIMARY KEY, value INTEGER);"
    "WITH RECURSIVE i(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM i WHERE n < 500)"
    " INSERT INTO run_node_state (run_id, node_id, status, attempt, started_at,"
    " outputs_json, updated_at, seq)"
    " SELECT 'v1', printf('n%03d', n), CASE WHEN n % 2 THEN 'running' ELSE 'completed' END,"
    " 1, '2026-01-01T00:00:00.000Z', '{\"n\":' || n || '}', '2026-01-01T00:00:01.000Z', n"
    " FROM i;"
    "INSERT INTO nodestate_meta VALUES ('last_seq', 600);"
    "PRAGMA user_version = 1;";

Test(migrate, version_1_file_loses_the_status_index)
{
    ns_server *s = stopped_server();
    exec_db(ns_db_path(s), v1_schema);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM sqlite_master WHERE "
                              "name='run_node_state_run_status'", NULL), 1);

    cr_assert_eq(ns_restart(s, NULL), 0, "start on a version-1 file");
    cr_assert_eq(ns_db_int(s, "PRAGMA user_version", NULL), 2, "not migrated to version 2");
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM sqlite_master WHERE "
                              "name='run_node_state_run_status'", NULL), 0,
                 "the (run_id, status) index is still there");
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='v1' AND "
                              "seq = CAST(substr(node_id, 2) AS INTEGER) AND "
                              "json_extract(outputs_json, '$.n') = seq AND "
                              "status = CASE WHEN seq % 2 THEN 'running' ELSE 'completed' END",
                              NULL), 500, "rows lost or changed in the migration");
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM pragma_integrity_check "
                              "WHERE integrity_check <> 'ok'", NULL), 0,
                 "integrity_check does not say ok");

    /* Listing by status still works, and seq goes on from the recorded last_seq. */
    ns_resp r = { 0 };
    cr_assert_eq(ns_req(s, "GET", "/runs/v1/nodes?status=completed&limit=10000", NULL, NULL,
                        &r), 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    json_t *page = ns_resp_json(&r);
    cr_assert_eq(json_array_size(json_object_get(page, "nodes")), 250, "%s", r.body);
    json_decref(page);
    ns_resp_free(&r);
    cr_assert_eq(ns_post_state(s, "v1", "n001", "?wait=true", "{\"status\":\"completed\"}",
                               &r), 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    json_t *n = ns_resp_json(&r);
    cr_assert_eq(it_jint(n, "seq"), 601);
    json_decref(n);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

Test(migrate, newer_version_is_refused)
{
    ns_server *s = stopped_server();
    /* Today's table, but a version this build does not know. */
    exec_db(ns_db_path(s),
            "CREATE TABLE run_node_state (run_id TEXT NOT NULL, node_id TEXT NOT NULL,"
            " status TEXT NOT NULL, attempt INTEGER NOT NULL, scheduled_at TEXT,"
            " started_at TEXT, completed_at TEXT, failed_at TEXT, suspended_at TEXT,"
            " last_error TEXT, retryable INTEGER NOT NULL DEFAULT 0, suspension_reason TEXT,"
            " resume_state_json TEXT, outputs_json TEXT, updated_at TEXT NOT NULL,"
            " seq INTEGER NOT NULL, PRIMARY KEY (run_id, node_id)) WITHOUT ROWID;"
            "INSERT INTO run_node_state (run_id, node_id, status, attempt, updated_at, seq)"
            " VALUES ('future', 'n', 'running', 1, '2030-01-01T00:00:00.000Z', 7);"
            "PRAGMA user_version = 3;");

    cr_assert_neq(ns_restart(s, NULL), 0, "a version-3 file was served");
    int code = ns_stop(s, SIGTERM);
    char *log = ns_log(s);
    cr_assert(code > 0 && code < 128, "exit code %d, want a non-zero exit; log:\n%s", code, log);
    /* The message names the version it found. */
    cr_assert(strstr(log, "version 3") != NULL || strstr(log, "version=3") != NULL ||
              strstr(log, "version: 3") != NULL,
              "no message naming version 3 in the log:\n%s", log);
    free(log);
    /* Refused, not touched. */
    cr_assert_eq(ns_db_int(s, "PRAGMA user_version", NULL), 3);
    cr_assert_eq(ns_db_int(s, "SELECT seq FROM run_node_state WHERE run_id='future'", NULL), 7);
    ns_free(s);
}
