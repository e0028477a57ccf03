/*
 * it_dblock: one process per database file. A second server on a file a
 * running server holds exits 1 at start, naming the holder's pid and the
 * lock file, and leaves the holder's rows alone; once the holder stopped
 * cleanly, or was SIGKILLed (its lock file stays behind), a new server
 * starts on the file.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "it_assert.h"

/* A bound for a start that must fail at once, not an expectation. */
#define RUN_TIMEOUT 60.0

/*
 * Runs a second server with --db db (and more arguments, NULL-ended);
 * asserts it is refused at start, naming s's pid and the text want
 * (NULL: nothing more).
 */
static void assert_refused(ns_server *s, const char *db, const char *want, const char *more[])
{
    char port_file[4200], want_pid[64];
    snprintf(port_file, sizeof port_file, "%s/second.port", ns_dir(s));
    snprintf(want_pid, sizeof want_pid, "pid %d", (int)ns_pid(s));
    const char *argv[16] = { "--listen", "127.0.0.1:0", "--db", db, "--port-file", port_file };
    size_t argc = 6;
    for (size_t i = 0; more && more[i] && argc < 15; i++)
        argv[argc++] = more[i];
    argv[argc] = NULL;
    char *out = NULL;
    int code = ns_run(argv, RUN_TIMEOUT, &out);
    cr_assert_not_null(out);
    cr_assert_eq(code, 1, "second server (--db %s): exit %d, want 1; output:\n%s", db, code,
                 out);
    cr_assert_not_null(strstr(out, want_pid), "no \"%s\" (the holder) in:\n%s", want_pid,
                       out);
    if (want)
        cr_assert_not_null(strstr(out, want), "no \"%s\" in:\n%s", want, out);
    cr_assert_not_null(strstr(out, "msg=start-failed"), "%s", out);
    cr_assert_null(strstr(out, "msg=listening"), "the second server listened:\n%s", out);
    cr_assert_neq(access(port_file, F_OK), 0, "the second server wrote a port file");
    free(out);
}

/* Runs a second server on s's database; asserts it is refused, naming s and its lock file. */
static void assert_second_server_refused(ns_server *s)
{
    char lock[4200];
    snprintf(lock, sizeof lock, "%s.lock", ns_db_path(s));
    assert_refused(s, ns_db_path(s), lock, NULL);
}

Test(dblock, second_server_on_one_file_exits_1_naming_the_holder)
{
    ns_server *s = ns_start("--batch-interval 60");
    cr_assert_not_null(s);
    json_decref(it_post_json(s, "r", "n", "?wait=true",
                             "{\"status\":\"completed\",\"outputs\":{\"rows\":3}}", 200));

    assert_second_server_refused(s);

    /* The holder goes on as before: its row is intact and it still serves. */
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='r' AND "
                              "node_id='n' AND status='completed' AND "
                              "json_extract(outputs_json, '$.rows') = 3", NULL), 1);
    json_t *got = it_get_json(s, "/runs/r/nodes/n/state", 200);
    cr_assert_str_eq(ns_jstr(got, "status"), "completed");
    json_decref(got);

    /* Stopped cleanly, the holder leaves the file free (and no lock file). */
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    char lock[4200];
    snprintf(lock, sizeof lock, "%s.lock", ns_db_path(s));
    cr_assert_neq(access(lock, F_OK), 0, "the lock file outlived a clean stop");
    cr_assert_eq(ns_restart(s, NULL), 0, "no start after the holder stopped");
    got = it_get_json(s, "/runs/r/nodes/n/state", 200);
    cr_assert_str_eq(ns_jstr(got, "status"), "completed");
    json_decref(got);
    assert_second_server_refused(s);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

Test(dblock, lock_file_of_a_killed_server_does_not_block_a_restart)
{
    ns_server *s = ns_start(NULL);
    cr_assert_not_null(s);
    json_decref(it_post_json(s, "r", "n", "?wait=true", "{\"status\":\"running\"}", 200));
    pid_t dead = ns_pid(s);
    cr_assert_eq(ns_kill(s), 128 + SIGKILL);

    /* The file stays behind naming the dead process... */
    char lock[4200];
    snprintf(lock, sizeof lock, "%s.lock", ns_db_path(s));
    FILE *f = fopen(lock, "r");
    cr_assert_not_null(f, "no lock file left by the killed server");
    long pid = -1;
    cr_assert_eq(fscanf(f, "%ld", &pid), 1);
    fclose(f);
    cr_assert_eq(pid, (long)dead);

    /* ...but the kernel dropped the lock with the process. */
    cr_assert_eq(ns_restart(s, NULL), 0, "a dead server's lock file blocks the restart");
    json_t *got = it_get_json(s, "/runs/r/nodes/n/state", 200);
    cr_assert_str_eq(ns_jstr(got, "status"), "running");
    json_decref(got);
    assert_second_server_refused(s);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

/*
 * Other names of the same file are the same database: a symbolic link (to
 * the file or to its directory) and a hard link are refused like the name
 * itself, and the holder's row is what it was.
 */
Test(dblock, a_second_server_under_another_name_of_the_file_exits_1)
{
    ns_server *s = ns_start(NULL);
    cr_assert_not_null(s);
    json_decref(it_post_json(s, "r", "n", "?wait=true", "{\"status\":\"completed\"}", 200));
    char sym[4200], dir[4200], via_dir[4300], hard[4200];
    snprintf(sym, sizeof sym, "%s/sym.db", ns_dir(s));
    snprintf(dir, sizeof dir, "%s/dir", ns_dir(s));
    snprintf(via_dir, sizeof via_dir, "%s/%s", dir, strrchr(ns_db_path(s), '/') + 1);
    snprintf(hard, sizeof hard, "%s/hard.db", ns_dir(s));
    cr_assert_eq(symlink(ns_db_path(s), sym), 0);
    cr_assert_eq(symlink(ns_dir(s), dir), 0);
    cr_assert_eq(link(ns_db_path(s), hard), 0);

    char lock[4200];
    snprintf(lock, sizeof lock, "%s.lock", ns_db_path(s));
    assert_refused(s, sym, lock, NULL);
    assert_refused(s, via_dir, lock, NULL);
    assert_refused(s, hard, "hard link", NULL);

    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='r' AND "
                              "node_id='n' AND status='completed'", NULL), 1);
    json_t *got = it_get_json(s, "/runs/r/nodes/n/state", 200);
    cr_assert_str_eq(ns_jstr(got, "status"), "completed");
    json_decref(got);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    unlink(sym);
    unlink(dir);
    unlink(hard);
    ns_free(s);
}

/* Two databases, one --spill-path: the second server would mix its rows with the first's. */
Test(dblock, a_second_server_on_the_same_spill_path_exits_1)
{
    char spill[4200], other_db[4200];
    ns_server *s = ns_start(NULL);
    cr_assert_not_null(s);
    snprintf(spill, sizeof spill, "%s/shared.spill", ns_dir(s));
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_eq(ns_restart(s, "--spill-path %s", spill), 0);
    snprintf(other_db, sizeof other_db, "%s/other.db", ns_dir(s));
    char lock[4300];
    snprintf(lock, sizeof lock, "%s.lock", spill);
    assert_refused(s, other_db, lock, (const char *[]){ "--spill-path", spill, NULL });
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}
