/*
 * it_spill: nothing accepted is dropped on shutdown. While another process
 * holds the database's write lock, SIGTERM writes the queued updates (a
 * run's DELETE among them) to the sidecar "<db>.spill" and exits 0, logging
 * how many were spilled; the next start replays the sidecar into the
 * database before it serves, logs it, removes the sidecar, and every update
 * is there, in the file and through the API.
 *
 * The spill starts as soon as the flush stalls, not at the end of
 * --shutdown-timeout (here 60 s, far beyond any wait of the tests), and is
 * written in pieces that each survive a SIGKILL: killed right after the
 * spill starts, after its first piece, or once it is complete, a restart
 * restores every committed piece, so the file holds a prefix in seq order of
 * what was accepted, and all of it when the spill had finished.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "it_assert.h"

enum {
    NODES = 20,              /* new nodes of run "sp", queued under the lock */
    COMPLETED = 5,           /* of them updated a second time (coalesced) */
};

/* One integer from the sidecar (an SQLite file), -1 when there is no row. */
static long long spill_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    cr_assert_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK,
                 "open sidecar %s", path);
    cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK, "%s: %s", sql,
                 sqlite3_errmsg(db));
    long long v = -1;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* The expected state of sp/n%03d i after the spilled updates. */
static const char *sp_status(int i)
{
    return i < COMPLETED ? "completed" : "running";
}

/* Checks run "sp", run "gone" and node gone/c in the file and through GET. */
static void check_replayed(ns_server *s)
{
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='sp'", NULL),
                 NODES);
    ns_resp r = { 0 };
    for (int i = 0; i < NODES; i++) {
        char node[16], want_outputs[16];
        snprintf(node, sizeof node, "n%03d", i);
        snprintf(want_outputs, sizeof want_outputs, "%d", i < COMPLETED ? 1000 + i : i);
        ns_dbrow *row = ns_db_row(s, "SELECT status, outputs_json, attempt FROM run_node_state "
                                     "WHERE run_id='sp' AND node_id=?", node, NULL);
        cr_assert_not_null(row, "sp/%s is not in the file", node);
        cr_assert_str_eq(ns_dbrow_get(row, "status"), sp_status(i), "sp/%s", node);
        cr_assert_str_eq(ns_dbrow_get(row, "outputs_json"), want_outputs, "sp/%s", node);
        cr_assert_str_eq(ns_dbrow_get(row, "attempt"), "2", "sp/%s", node);
        ns_dbrow_free(row);

        cr_assert_eq(ns_get_state(s, "sp", node, &r), 0, "%s", r.error);
        cr_assert_eq(r.status, 200, "GET sp/%s: %ld %s", node, r.status, r.body);
        json_t *doc = ns_resp_json(&r);
        cr_assert_str_eq(ns_jstr(doc, "status"), sp_status(i), "%s", r.body);
        long long out = -1;
        cr_assert_eq(ns_jint(doc, "outputs", &out), 0, "%s", r.body);
        cr_assert_eq(out, i < COMPLETED ? 1000 + i : i, "%s", r.body);
        cr_assert(json_is_true(json_object_get(doc, "durable")), "%s", r.body);
        json_decref(doc);
    }
    /* The DELETE ran before the later update of its run, as it was queued. */
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='gone'", NULL),
                 1);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='gone' "
                              "AND node_id='c' AND status='scheduled'", NULL), 1);
    cr_assert_eq(ns_get_state(s, "gone", "a", &r), 0);
    cr_assert_eq(r.status, 404, "a node of the deleted run came back: %s", r.body);
    cr_assert_eq(ns_get_state(s, "gone", "c", &r), 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    ns_resp_free(&r);
}

Test(spill, locked_database_on_sigterm_spills_and_next_start_replays)
{
    ns_server *s = ns_start("--shutdown-timeout 1 --batch-interval 60");
    cr_assert_not_null(s);
    char spill[4200];
    snprintf(spill, sizeof spill, "%s.spill", ns_db_path(s));

    /* A run that is on disk before the lock, to be deleted under it. */
    it_post(s, "gone", "a", NULL, "{\"status\":\"running\"}", 202);
    it_post(s, "gone", "b", "?wait=true", "{\"status\":\"running\"}", 200);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='gone'", NULL),
                 2);
    long long queued_before = ns_stat(s, "updates_queued");
    cr_assert_eq(queued_before, 2);

    sqlite3 *db = it_lock_db(s);
    for (int i = 0; i < NODES; i++) {
        char node[16], body[96];
        snprintf(node, sizeof node, "n%03d", i);
        snprintf(body, sizeof body, "{\"status\":\"running\",\"attempt\":2,\"outputs\":%d}", i);
        it_post(s, "sp", node, NULL, body, 202);
    }
    for (int i = 0; i < COMPLETED; i++) {
        char node[16], body[96];
        snprintf(node, sizeof node, "n%03d", i);
        snprintf(body, sizeof body, "{\"status\":\"completed\",\"outputs\":%d}", 1000 + i);
        it_post(s, "sp", node, NULL, body, 202);
    }
    ns_resp r = { 0 };
    cr_assert_eq(ns_req(s, "DELETE", "/runs/gone", NULL, NULL, &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 202, "DELETE under the lock: %ld %s", r.status, r.body);
    ns_resp_free(&r);
    it_post(s, "gone", "c", NULL, "{\"status\":\"scheduled\"}", 202);
    const long long spilled = NODES + COMPLETED + 1 + 1;
    cr_assert_eq(ns_stat(s, "updates_queued") - queued_before, spilled);
    cr_assert_eq(ns_stat(s, "queue_depth"), spilled);

    /* The lock outlives --shutdown-timeout: the queue goes to the sidecar. */
    int code = ns_stop(s, SIGTERM);
    char *log = ns_log(s);
    cr_assert_eq(code, 0, "exit code %d after a spill; log:\n%s", code, log);
    char want[64];
    snprintf(want, sizeof want, "msg=spilled updates=%lld", spilled);
    cr_assert(strstr(log, want) != NULL, "no \"%s\" in the log:\n%s", want, log);
    free(log);
    cr_assert_eq(access(spill, F_OK), 0, "no sidecar %s", spill);

    /*
     * The sidecar's log holds the updates (coalesced per node: they went in
     * one piece) and the run deleted, not the database.
     */
    cr_assert_eq(spill_int(spill, "SELECT count(*) FROM spill_log WHERE run_id='sp'"),
                 NODES);
    cr_assert_eq(spill_int(spill, "SELECT count(*) FROM spill_log WHERE run_id='sp' AND "
                                  "status='completed' AND CAST(outputs_json AS INTEGER) = "
                                  "1000 + CAST(substr(node_id, 2) AS INTEGER)"), COMPLETED);
    cr_assert_eq(spill_int(spill, "SELECT count(*) FROM spill_log WHERE run_id='sp' AND "
                                  "status='running' AND CAST(outputs_json AS INTEGER) = "
                                  "CAST(substr(node_id, 2) AS INTEGER)"), NODES - COMPLETED);
    cr_assert_eq(spill_int(spill, "SELECT count(*) FROM spill_log WHERE run_id='gone' "
                                  "AND node_id='c'"), 1);
    cr_assert_eq(spill_int(spill, "SELECT count(*) FROM spill_log WHERE run_id='gone' "
                                  "AND node_id IN ('a','b')"), 0);
    cr_assert_eq(spill_int(spill, "SELECT count(*) FROM spill_deletes WHERE run_id='gone'"), 1);
    it_unlock_db(db);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='sp'", NULL), 0);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='gone'", NULL),
                 2);

    /* The restart replays the sidecar before it serves: no waiting here. */
    cr_assert_eq(ns_restart(s, "--shutdown-timeout 1"), 0, "restart with a sidecar");
    log = ns_log(s);
    snprintf(want, sizeof want, "msg=spill-replayed rows=%d deletes=1", NODES + 1);
    cr_assert(strstr(log, want) != NULL, "no \"%s\" in the log:\n%s", want, log);
    char *replayed = strstr(log, "msg=spill-replayed");
    char *listening = strstr(log, "msg=listening");
    cr_assert(replayed != NULL && listening != NULL && replayed < listening,
              "replayed after it started listening:\n%s", log);
    free(log);
    cr_assert_neq(access(spill, F_OK), 0, "the sidecar %s is still there", spill);
    cr_assert_eq(errno, ENOENT);
    check_replayed(s);

    /* Replayed once: another restart finds no sidecar and changes nothing. */
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_eq(ns_restart(s, NULL), 0);
    cr_assert(!ns_log_contains(s, "msg=spill-replayed"), "replayed twice");
    check_replayed(s);
    /* seq went on past the spilled updates. */
    cr_assert_eq(ns_post_state(s, "sp", "n000", NULL, "{\"status\":\"running\",\"attempt\":3}",
                               &r), 0);
    cr_assert_eq(r.status, 202, "%ld %s", r.status, r.body);
    json_t *doc = ns_resp_json(&r);
    long long seq = 0;
    cr_assert_eq(ns_jint(doc, "seq", &seq), 0);
    cr_assert_gt(seq, 2 + spilled, "seq %lld went back over the spill", seq);
    json_decref(doc);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

static bool spill_done(void *ctx)
{
    return ns_log_contains(ctx, "msg=spilled ");
}

/*
 * A stop that spilled leaves the start unclean even when the lock goes away
 * before the process records its stop: a start that does not replay the
 * sidecar (another --spill-path) skips past every seq handed out, so that
 * the sidecar replayed later keeps what that start wrote (its delete was
 * taken for newer than those rows, which lost them).
 */
Test(spill, a_start_without_the_sidecar_writes_above_its_seqs)
{
    ns_server *s = ns_start("--shutdown-timeout 1");
    cr_assert_not_null(s);
    it_post(s, "r", "a", "?wait=true", "{\"status\":\"running\"}", 200);
    sqlite3 *db = it_lock_db(s);
    it_post(s, "r", "a", NULL, "{\"status\":\"completed\"}", 202);
    long long deleted = it_delete_seq(s, "r", NULL, 202);
    pid_t pid = ns_pid(s);
    cr_assert_eq(kill(pid, SIGTERM), 0);
    cr_assert_eq(ns_wait_until(spill_done, s, 30.0, 5), 0, "no spill");
    /* The lock goes at once: the process may now record its stop. */
    it_unlock_db(db);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_eq(ns_db_int(s, "SELECT value FROM nodestate_meta WHERE key='running'", NULL), 1,
                 "the stop that spilled was recorded clean");

    /* Started with another sidecar path, it does not see the spill. */
    char other[4300], spill[4300];
    snprintf(other, sizeof other, "%s.other-spill", ns_db_path(s));
    snprintf(spill, sizeof spill, "%s.spill", ns_db_path(s));
    cr_assert_eq(ns_restart(s, "--spill-path %s", other), 0);
    cr_assert(ns_log_contains(s, "msg=unclean-stop"), "no skip past the spilled seqs");
    json_t *b = it_post_json(s, "r", "b", "?wait=true", "{\"status\":\"running\"}", 200);
    long long seq = it_jint(b, "seq");
    json_decref(b);
    cr_assert_gt(seq, deleted, "seq %lld is below the spilled delete's %lld", seq, deleted);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);

    /* The sidecar replayed late keeps r/b, written after its delete. */
    cr_assert_eq(access(spill, F_OK), 0, "no sidecar %s", spill);
    cr_assert_eq(ns_restart(s, NULL), 0);
    cr_assert(ns_log_contains(s, "msg=spill-replayed"), "not replayed");
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='r' "
                              "AND node_id='b' AND status='running'", NULL), 1);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='r' "
                              "AND node_id='a'", NULL), 0, "r/a outlived its delete");
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

Test(spill, clean_shutdown_leaves_no_sidecar)
{
    ns_server *s = ns_start("--shutdown-timeout 5 --batch-interval 60");
    cr_assert_not_null(s);
    char spill[4200];
    snprintf(spill, sizeof spill, "%s.spill", ns_db_path(s));
    for (int i = 0; i < 10; i++) {
        char node[16];
        snprintf(node, sizeof node, "n%d", i);
        it_post(s, "clean", node, NULL, "{\"status\":\"running\"}", 202);
    }
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert(!ns_log_contains(s, "msg=spilled"));
    cr_assert_neq(access(spill, F_OK), 0, "a sidecar after a clean flush");
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='clean'", NULL),
                 10);
    ns_free(s);
}

/* ---- SIGKILL during and after the spill ---- */

enum {
    BIG_UPDATES = 6000,      /* ~3 KB each: ~18 MB, several 4 MiB pieces */
    BIG_PAD = 3000,
    WAIT_MS = 30000,         /* bound on every wait below; meeting the condition ends it */
};

/* Polls the server's log until it holds needle; false when WAIT_MS passed first. */
static bool wait_log(ns_server *s, const char *needle)
{
    long long end = ns_mono_ms() + WAIT_MS;
    for (int i = 0; i < WAIT_MS / 5 + 1; i++) {
        if (ns_log_contains(s, needle))
            return true;
        if (ns_mono_ms() >= end)
            break;
        struct timespec ts = { 0, 5 * 1000000L };
        nanosleep(&ts, NULL);
    }
    return ns_log_contains(s, needle);
}

/* Posts BIG_UPDATES new nodes n00000.. of run, each with ~3 KB of outputs; seqs[i] gets node i's seq. */
static void post_big(ns_server *s, const char *run, long long *seqs)
{
    static char body[BIG_PAD + 128];
    char pad[BIG_PAD + 1];
    memset(pad, 'x', BIG_PAD);
    pad[BIG_PAD] = '\0';
    ns_resp r = { 0 };
    for (int i = 0; i < BIG_UPDATES; i++) {
        char node[16];
        snprintf(node, sizeof node, "n%05d", i);
        snprintf(body, sizeof body, "{\"status\":\"running\",\"outputs\":{\"i\":%d,\"pad\":\"%s\"}}",
                 i, pad);
        cr_assert_eq(ns_post_state(s, run, node, NULL, body, &r), 0, "POST %d: %s", i, r.error);
        cr_assert_eq(r.status, 202, "POST %d: %ld %s", i, r.status, r.body);
        json_t *doc = ns_resp_json(&r);
        seqs[i] = it_jint(doc, "seq");
        cr_assert(i == 0 || seqs[i] > seqs[i - 1], "seq does not grow");
        json_decref(doc);
    }
    ns_resp_free(&r);
}

/*
 * After a restart: the file holds, for run, exactly the first k accepted
 * updates, each with its own seq and outputs, for some k (a prefix in seq
 * order: no committed piece lost, none replayed out of order). Returns k.
 */
static long long check_prefix(ns_server *s, const char *run, const long long *seqs)
{
    long long k = ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id = ?", run, NULL);
    cr_assert_geq(k, 0);
    cr_assert_leq(k, BIG_UPDATES);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id = ? AND "
                              "status = 'running' AND "
                              "json_extract(outputs_json, '$.i') = CAST(substr(node_id, 2) AS INTEGER) "
                              "AND length(json_extract(outputs_json, '$.pad')) = 3000", run, NULL),
                 k, "a row of %s does not hold what was posted for it", run);
    if (k == 0)
        return 0;
    cr_assert_eq(ns_db_int(s, "SELECT max(CAST(substr(node_id, 2) AS INTEGER)) FROM run_node_state "
                              "WHERE run_id = ?", run, NULL), k - 1,
                 "the %lld rows of %s are not the first %lld updates: a piece is missing", k, run, k);
    char first[32], last[32];
    snprintf(first, sizeof first, "n%05d", 0);
    snprintf(last, sizeof last, "n%05lld", k - 1);
    cr_assert_eq(ns_db_int(s, "SELECT seq FROM run_node_state WHERE run_id = ? AND node_id = ?",
                           run, first, NULL), seqs[0]);
    cr_assert_eq(ns_db_int(s, "SELECT seq FROM run_node_state WHERE run_id = ? AND node_id = ?",
                           run, last, NULL), seqs[k - 1]);
    return k;
}

/*
 * Locks the database, queues BIG_UPDATES, sends SIGTERM and, once the log
 * shows kill_at, SIGKILL. Then unlocks, restarts and checks what the file
 * holds. Returns how many of the updates survived (the prefix length).
 */
static long long kill_during_spill(const char *kill_at)
{
    static long long seqs[BIG_UPDATES];
    ns_server *s = ns_start("--shutdown-timeout 60 --log-level debug");
    cr_assert_not_null(s);
    char spill[4200];
    snprintf(spill, sizeof spill, "%s.spill", ns_db_path(s));
    sqlite3 *db = it_lock_db(s);
    post_big(s, "big", seqs);

    cr_assert_eq(kill(ns_pid(s), SIGTERM), 0);
    bool seen = wait_log(s, kill_at);
    ns_kill(s);
    char *log = ns_log(s);
    cr_assert(seen, "no \"%s\" within %d s of SIGTERM (the spill must start when the flush "
              "stalls, not at the end of --shutdown-timeout 60); log:\n%s", kill_at,
              WAIT_MS / 1000, log);
    free(log);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id = 'big'", NULL),
                 0, "the database was locked: nothing can be in it yet");
    /* A journal with content: the kill cut a piece short, which the restart must say. */
    char journal[4300];
    snprintf(journal, sizeof journal, "%s-journal", spill);
    struct stat sb;
    bool torn = stat(journal, &sb) == 0 && sb.st_size > 0;
    it_unlock_db(db);

    cr_assert_eq(ns_restart(s, "--shutdown-timeout 5"), 0, "restart after SIGKILL");
    log = ns_log(s);
    char *replayed = strstr(log, "msg=spill-replayed");
    char *listening = strstr(log, "msg=listening");
    cr_assert_not_null(listening);
    cr_assert(replayed == NULL || replayed < listening, "replayed after listening:\n%s", log);
    cr_assert(!torn || strstr(log, "msg=spill-piece-torn") != NULL,
              "a piece was cut short and the restart did not say so:\n%s", log);
    long long k = check_prefix(s, "big", seqs);
    fprintf(stderr, "it_spill: SIGKILL at \"%s\": %lld of %d updates restored%s\n", kill_at, k,
            BIG_UPDATES, strstr(log, "msg=spill-piece-torn") ? ", a torn piece rolled back" : "");
    if (k > 0) {
        char want[64];
        snprintf(want, sizeof want, "msg=spill-replayed rows=%lld deletes=0 pieces=", k);
        cr_assert(replayed != NULL && strncmp(replayed, want, strlen(want)) == 0,
                  "no \"%s\" in the log:\n%s", want, log);
    }
    free(log);
    cr_assert_neq(access(spill, F_OK), 0, "the sidecar is still there after its replay");
    /* The survivors stay: a clean stop and start keep them and replay nothing. */
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_eq(ns_restart(s, NULL), 0);
    cr_assert(!ns_log_contains(s, "msg=spill-replayed"));
    cr_assert_eq(check_prefix(s, "big", seqs), k);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
    return k;
}

Test(spill, sigkill_once_the_spill_is_complete_loses_nothing, .timeout = 240)
{
    /* "spilled" is logged once the last piece is committed, long before the 60 s budget ends. */
    cr_assert_eq(kill_during_spill("msg=spilled "), BIG_UPDATES,
                 "an accepted update was lost");
}

Test(spill, sigkill_after_the_first_piece_keeps_every_committed_piece, .timeout = 240)
{
    cr_assert_geq(kill_during_spill("msg=spill-piece piece=1 "), 1,
                  "the committed first piece was lost");
}

Test(spill, sigkill_as_the_spill_starts_keeps_a_consistent_prefix, .timeout = 240)
{
    kill_during_spill("msg=spill-started ");
}

/*
 * The default sidecar sits beside the database's real file: a server
 * started on a symbolic link to it spills there, and a start under the
 * real name replays it.
 */
Test(spill, the_default_sidecar_is_found_under_every_name_of_the_database)
{
    ns_server *s = ns_start(NULL);
    cr_assert_not_null(s);
    char link_db[4200], real_spill[4300], link_spill[4300];
    snprintf(link_db, sizeof link_db, "%s/link.db", ns_dir(s));
    snprintf(real_spill, sizeof real_spill, "%s.spill", ns_db_path(s));
    snprintf(link_spill, sizeof link_spill, "%s.spill", link_db);
    cr_assert_eq(symlink(ns_db_path(s), link_db), 0);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_eq(ns_restart(s, "--shutdown-timeout 1 --batch-interval 60 --db %s", link_db), 0);

    sqlite3 *db = it_lock_db(s);
    for (int i = 0; i < 3; i++) {
        char node[16];
        snprintf(node, sizeof node, "n%d", i);
        it_post(s, "named", node, NULL, "{\"status\":\"running\"}", 202);
    }
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    it_unlock_db(db);
    cr_assert_eq(access(real_spill, F_OK), 0, "no sidecar beside the real file");
    cr_assert_neq(access(link_spill, F_OK), 0, "the sidecar went beside the link");

    cr_assert_eq(ns_restart(s, NULL), 0);
    cr_assert(ns_log_contains(s, "msg=spill-replayed rows=3"), "not replayed under the real name");
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='named'", NULL),
                 3);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    unlink(link_db);
    ns_free(s);
}
