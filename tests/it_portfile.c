/*
 * it_portfile: --port-file PATH. Once listening on port 0, the server writes
 * the port it really got (digits and a newline) to PATH, replacing what was
 * there, serves on it, and removes it when it stops; a server that cannot
 * write the file exits 1 with a message naming it. (The harness starts every
 * server this way.)
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

Test(portfile, holds_the_port_the_server_listens_on)
{
    ns_server *s = ns_start(NULL);
    cr_assert_not_null(s);
    char path[4200], text[64], want[64];
    snprintf(path, sizeof path, "%s/port", ns_dir(s));
    it_read_file(path, text, sizeof text);
    snprintf(want, sizeof want, "%d\n", ns_port(s));
    cr_assert_str_eq(text, want, "port file holds \"%s\"", text);
    cr_assert_gt(ns_port(s), 0);
    /* The number is the port the log names and the one that answers. */
    char line[128];
    snprintf(line, sizeof line, "msg=listening addr=127.0.0.1:%d", ns_port(s));
    cr_assert(ns_log_contains(s, line), "no \"%s\" in the log", line);
    json_decref(it_get_json(s, "/healthz", 200));
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    cr_assert_neq(access(tmp, F_OK), 0, "the temporary file was left behind");

    /* A clean stop removes it: nobody reads a port no process serves. */
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_neq(access(path, F_OK), 0, "the port file outlived the process");
    /* A restart (on another port 0) replaces what is there with its own port. */
    it_write_file(path, "1\n");
    cr_assert_eq(ns_restart(s, NULL), 0);
    it_read_file(path, text, sizeof text);
    snprintf(want, sizeof want, "%d\n", ns_port(s));
    cr_assert_str_eq(text, want);
    json_decref(it_get_json(s, "/healthz", 200));
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

Test(portfile, unwritable_port_file_exits_1)
{
    char dir[] = "/tmp/nodestate-it-portfile-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char db[128], lock[160];
    snprintf(db, sizeof db, "%s/nodestate.db", dir);
    snprintf(lock, sizeof lock, "%s.lock", db);
    const char *bad = "/nonexistent-dir-for-test/port";
    char *out = NULL;
    int code = ns_run((const char *const[]){ "--listen", "127.0.0.1:0", "--db", db,
                                             "--port-file", bad, NULL },
                      RUN_TIMEOUT, &out);
    cr_assert_not_null(out);
    cr_assert_eq(code, 1, "exit %d, want 1; output:\n%s", code, out);
    cr_assert_not_null(strstr(out, "msg=start-failed"), "%s", out);
    cr_assert_not_null(strstr(out, bad), "the message does not name %s:\n%s", bad, out);
    free(out);
    /* It let go of the database on the way out. */
    cr_assert_neq(access(lock, F_OK), 0, "lock file left after the failed start");
    static const char *const files[] = { "", "-wal", "-shm" };
    for (size_t i = 0; i < 3; i++) {
        char p[200];
        snprintf(p, sizeof p, "%s%s", db, files[i]);
        unlink(p);
    }
    cr_assert_eq(rmdir(dir), 0, "files left in %s", dir);
}
