/*
 * it_startup: the real binary fails to start clearly (non-zero exit, a
 * message on stderr naming the problem) for an unopenable database, a bad
 * option value from a flag or the environment, a port in use, an unknown
 * flag and bad token settings; --help and --version exit 0. Also what the
 * log says about a run: the started line with every setting, one access
 * line per answered request with --access-log, and the stopped line.
 *
 * Processes that must fail are run by run_bin below (ns_run_env, with
 * stdout and stderr apart); servers that must come up go through ns_start.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "it_assert.h"

/* A process that should fail at once gets this long before SIGKILL. */
#define RUN_TIMEOUT_S 15.0

/* What a finished run of the binary left behind. */
typedef struct run_result {
    int code;          /* exit code; 128 + signal; -1 when it had to be killed */
    char out[32768];   /* stdout, NUL-terminated (cut to fit) */
    char err[32768];   /* stderr */
} run_result;

TestSuite(startup, .init = it_env_clear, .timeout = 120);

/*
 * Runs NODESTATE_BIN with args (NULL-terminated, without the program name)
 * and the test's environment (no NODESTATE_*: the suite clears them) plus
 * env (NULL-terminated "NAME=value" or NULL). Waits at most RUN_TIMEOUT_S,
 * then kills it (code -1). Asserts on setup failures.
 */
static run_result *run_bin(const char *const *args, const char *const *env)
{
    static run_result r;  /* one run at a time per test process */
    char *out = NULL, *err = NULL;

    memset(&r, 0, sizeof r);
    r.code = ns_run_env(args, env, RUN_TIMEOUT_S, &out, &err);
    cr_assert(out != NULL && err != NULL, "cannot run %s (see stderr)", NODESTATE_BIN);
    snprintf(r.out, sizeof r.out, "%s", out);
    snprintf(r.err, sizeof r.err, "%s", err);
    free(out);
    free(err);
    return &r;
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})
#define ENV(...) ((const char *const[]){__VA_ARGS__, NULL})

/* A fresh directory for a test's files; removed by ns_rm_dir. */
static void make_dir(char *buf, size_t size)
{
    cr_assert_eq(ns_tmp_dir(buf, size, "it-startup"), 0, "mkdtemp: %s", strerror(errno));
}

/* Asserts a clean failure: non-zero exit and every needle in stderr. */
static void assert_fails(const run_result *r, const char *what,
                         const char *const *needles)
{
    cr_assert(r->code > 0 && r->code < 128,
              "%s: exit code %d, want a non-zero exit (not a crash or a hang); "
              "stderr:\n%s", what, r->code, r->err);
    for (; *needles != NULL; needles++)
        cr_assert_not_null(strstr(r->err, *needles),
                           "%s: stderr does not name \"%s\":\n%s", what,
                           *needles, r->err);
    /* It failed before serving: it never claimed to listen. */
    cr_assert_null(strstr(r->err, "msg=listening"), "%s: it listened:\n%s",
                   what, r->err);
}

/* ---- the database ------------------------------------------------------- */

Test(startup, db_in_missing_directory)
{
    run_result *r = run_bin(ARGS("--listen", "127.0.0.1:0", "--db",
                                 "/nonexistent-dir/x.db"), NULL);
    assert_fails(r, "--db /nonexistent-dir/x.db",
                 ARGS("level=error", "/nonexistent-dir/x.db"));
}

Test(startup, db_is_a_directory)
{
    char dir[64];

    make_dir(dir, sizeof dir);
    run_result *r = run_bin(ARGS("--listen", "127.0.0.1:0", "--db", dir), NULL);
    assert_fails(r, "--db <a directory>", ARGS("level=error", dir));
    ns_rm_dir(dir);
}

Test(startup, db_from_environment)
{
    run_result *r = run_bin(ARGS("--listen", "127.0.0.1:0"),
                            ENV("NODESTATE_DB=/nonexistent-dir/env.db"));
    assert_fails(r, "NODESTATE_DB=/nonexistent-dir/env.db",
                 ARGS("/nonexistent-dir/env.db"));
}

/* ---- option values ------------------------------------------------------ */

Test(startup, bad_value_from_flag)
{
    run_result *r = run_bin(ARGS("--batch-size", "abc"), NULL);
    assert_fails(r, "--batch-size abc",
                 ARGS("--batch-size", "\"abc\"", "not a whole number",
                      "command line"));
    cr_assert_eq(r->code, 2, "a configuration error exits 2: %d", r->code);
    cr_assert_str_eq(r->out, "", "nothing on stdout: %s", r->out);
}

Test(startup, bad_value_from_environment)
{
    run_result *r = run_bin(NULL, ENV("NODESTATE_BATCH_SIZE=abc"));
    assert_fails(r, "NODESTATE_BATCH_SIZE=abc",
                 ARGS("--batch-size", "NODESTATE_BATCH_SIZE", "\"abc\""));
    cr_assert_eq(r->code, 2);
}

Test(startup, other_bad_values)
{
    static const char *const cases[][3] = {
        /* flag, value, what the message must name */
        {"--listen", "127.0.0.1:99999", "--listen"},
        {"--listen", "example.com:80", "--listen"},
        {"--batch-interval", "-1", "--batch-interval"},
        {"--synchronous", "off", "--synchronous"},
        {"--log-level", "loud", "--log-level"},
        {"--access-log=maybe", NULL, "--access-log"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        run_result *r = cases[i][1] != NULL
                            ? run_bin(ARGS(cases[i][0], cases[i][1]), NULL)
                            : run_bin(ARGS(cases[i][0]), NULL);
        assert_fails(r, cases[i][0], ARGS(cases[i][2]));
    }
}

Test(startup, unknown_flag_and_stray_argument)
{
    run_result *r = run_bin(ARGS("--no-such-flag"), NULL);
    assert_fails(r, "--no-such-flag", ARGS("--no-such-flag", "unknown option"));

    r = run_bin(ARGS("stray"), NULL);
    assert_fails(r, "stray", ARGS("stray"));

    r = run_bin(ARGS("--db"), NULL);
    assert_fails(r, "--db without a value", ARGS("--db", "needs a value"));
}

/* ---- the port ----------------------------------------------------------- */

Test(startup, port_in_use)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    char listen_arg[64], port_text[16];
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    cr_assert_geq(fd, 0);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = 0;
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0, "bind: %s",
                 strerror(errno));
    cr_assert_eq(listen(fd, 1), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    snprintf(port_text, sizeof port_text, "%u", (unsigned)ntohs(sa.sin_port));
    snprintf(listen_arg, sizeof listen_arg, "127.0.0.1:%s", port_text);

    char dir[64], db[128];
    make_dir(dir, sizeof dir);
    snprintf(db, sizeof db, "%s/nodestate.db", dir);
    run_result *r = run_bin(ARGS("--listen", listen_arg, "--db", db), NULL);
    assert_fails(r, "port in use",
                 ARGS("level=error", listen_arg, "in use"));
    close(fd);
    ns_rm_dir(dir);
}

/* ---- the token settings ------------------------------------------------- */

Test(startup, token_file_problems)
{
    char dir[64], path[128], env[160];

    make_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/token", dir);

    /* Missing file. */
    run_result *r = run_bin(ARGS("--token-file", path), NULL);
    assert_fails(r, "missing token file",
                 ARGS("--token-file", path, "No such file"));

    /* Empty, or only a newline. */
    it_write_file(path, "\n");
    r = run_bin(ARGS("--token-file", path), NULL);
    assert_fails(r, "empty token file", ARGS("--token-file", path, "empty"));

    /* A directory. */
    r = run_bin(ARGS("--token-file", dir), NULL);
    assert_fails(r, "directory as token file", ARGS("--token-file", dir));

    /* Unreadable (root reads anything, so only checked for others). */
    it_write_file(path, "filetoken\n");
    cr_assert_eq(chmod(path, 0), 0);
    if (geteuid() != 0) {
        r = run_bin(ARGS("--token-file", path), NULL);
        assert_fails(r, "unreadable token file",
                     ARGS("--token-file", path, "Permission denied"));
    }
    cr_assert_eq(chmod(path, 0600), 0);

    /* From the environment, the message names the variable. */
    snprintf(env, sizeof env, "NODESTATE_TOKEN_FILE=%s/none", dir);
    r = run_bin(NULL, ENV(env));
    assert_fails(r, "missing token file from env",
                 ARGS("--token-file", "NODESTATE_TOKEN_FILE", "/none"));

    /* Two lines is a mistake, not a token with a newline in it; never echoed. */
    it_write_file(path, "filetoken\nsecond-line\n");
    r = run_bin(ARGS("--token-file", path), NULL);
    assert_fails(r, "two-line token file", ARGS("--token-file", path));
    cr_assert_null(strstr(r->err, "filetoken"), "the token leaked:\n%s", r->err);
    cr_assert_null(strstr(r->err, "second-line"), "the token leaked:\n%s", r->err);

    ns_rm_dir(dir);
}

Test(startup, token_and_token_file_together)
{
    char dir[64], path[128], env[160];

    make_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/token", dir);
    it_write_file(path, "filetoken\n");

    run_result *r = run_bin(ARGS("--token", "flagtoken", "--token-file", path), NULL);
    assert_fails(r, "both flags", ARGS("--token", "--token-file", "only one"));
    cr_assert_null(strstr(r->err, "flagtoken"), "the token leaked:\n%s", r->err);
    cr_assert_null(strstr(r->err, "filetoken"), "the token leaked:\n%s", r->err);

    snprintf(env, sizeof env, "NODESTATE_TOKEN_FILE=%s", path);
    r = run_bin(NULL, ENV("NODESTATE_TOKEN=envtoken", env));
    assert_fails(r, "both variables",
                 ARGS("--token", "--token-file", "NODESTATE_TOKEN"));
    cr_assert_null(strstr(r->err, "envtoken"), "the token leaked:\n%s", r->err);

    ns_rm_dir(dir);
}

Test(startup, bad_token_is_not_echoed)
{
    run_result *r = run_bin(ARGS("--token=has space1234"), NULL);
    assert_fails(r, "token with a blank", ARGS("--token"));
    cr_assert_null(strstr(r->err, "space1234"), "the token leaked:\n%s", r->err);

    r = run_bin(ARGS("--token="), NULL);
    assert_fails(r, "empty token", ARGS("--token", "empty"));
}

/* ---- --help and --version ----------------------------------------------- */

Test(startup, help_and_version_exit_zero)
{
    run_result *r = run_bin(ARGS("--version"), NULL);
    cr_assert_eq(r->code, 0, "--version: exit %d, stderr %s", r->code, r->err);
    cr_assert_eq(strncmp(r->out, "nodestate ", 10), 0, "--version printed %s", r->out);

    /* --help wins over a bad variable: help is how one finds the fix. */
    r = run_bin(ARGS("--help"), ENV("NODESTATE_BATCH_SIZE=abc"));
    cr_assert_eq(r->code, 0, "--help: exit %d, stderr %s", r->code, r->err);
    static const char *const listed[] = {
        "--listen", "--db", "--batch-size", "--token ", "NODESTATE_TOKEN\n",
        "--token-file", "NODESTATE_TOKEN_FILE", "--access-log",
        "NODESTATE_ACCESS_LOG", "--log-level", "--version",
    };
    for (size_t i = 0; i < sizeof listed / sizeof listed[0]; i++)
        cr_assert_not_null(strstr(r->out, listed[i]), "--help lacks %s:\n%s",
                           listed[i], r->out);
}

/* ---- what the log says -------------------------------------------------- */

/* The value of key in a logfmt line (unquoted values only), or "". */
static void field(const char *line, const char *key, char *buf, size_t size)
{
    char pat[64];
    const char *p;
    size_t n = 0;

    snprintf(pat, sizeof pat, " %s=", key);
    buf[0] = '\0';
    p = strstr(line, pat);
    if (p == NULL)
        return;
    p += strlen(pat);
    while (p[n] != '\0' && p[n] != ' ' && p[n] != '\n' && n + 1 < size)
        n++;
    memcpy(buf, p, n);
    buf[n] = '\0';
}

/* Splits log into lines holding needle; returns how many (at most max). */
static size_t lines_with(char *log, const char *needle, char **lines, size_t max)
{
    size_t n = 0;
    char *save = NULL;

    for (char *l = strtok_r(log, "\n", &save); l != NULL;
         l = strtok_r(NULL, "\n", &save)) {
        if (strstr(l, needle) != NULL && n < max)
            lines[n++] = l;
    }
    return n;
}

/* One expected access line. */
typedef struct access_want {
    const char *method;
    const char *path;
    long status;
    size_t bytes;
} access_want;

Test(startup, access_log_one_line_per_request)
{
    ns_server *s = ns_start("--access-log --max-body-bytes 64");
    cr_assert_not_null(s, "server did not start");
    access_want want[4];
    ns_resp r = {0};
    char big[200];

    /* 202: queued. */
    cr_assert_eq(ns_post_state(s, "r1", "n1", NULL, "{\"status\":\"running\"}", &r), 0);
    cr_assert_eq(r.status, 202, "body %s", r.body);
    want[0] = (access_want){"POST", "/runs/r1/nodes/n1/state", 202, r.body_len};

    /* 404: no such node. */
    cr_assert_eq(ns_get_state(s, "r1", "nope", &r), 0);
    cr_assert_eq(r.status, 404);
    want[1] = (access_want){"GET", "/runs/r1/nodes/nope/state", 404, r.body_len};

    /* 413: answered by the transport before the api sees it. */
    memset(big, ' ', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    big[0] = '{';
    big[sizeof big - 2] = '}';
    cr_assert_eq(ns_post_state(s, "r1", "n2", NULL, big, &r), 0);
    cr_assert_eq(r.status, 413, "body %s", r.body);
    want[2] = (access_want){"POST", "/runs/r1/nodes/n2/state", 413, r.body_len};

    /* 200 after parking until durable. */
    cr_assert_eq(ns_post_state(s, "r1", "n3", "?wait=true",
                               "{\"status\":\"completed\"}", &r), 0);
    cr_assert_eq(r.status, 200, "body %s", r.body);
    want[3] = (access_want){"POST", "/runs/r1/nodes/n3/state", 200, r.body_len};
    ns_resp_free(&r);

    /* After the exit every line is in the captured log. */
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    char *log = ns_log(s);
    cr_assert_not_null(log);
    char *copy = strdup(log);
    cr_assert_not_null(copy);

    char *lines[8];
    size_t n = lines_with(log, " msg=access ", lines, 8);
    cr_assert_eq(n, 4, "%zu access lines, want 4; log:\n%s", n, copy);
    for (size_t i = 0; i < n; i++) {
        char v[256], num[32];

        cr_assert(strstr(lines[i], " level=info ") != NULL, "%s", lines[i]);
        field(lines[i], "method", v, sizeof v);
        cr_assert_str_eq(v, want[i].method, "line %zu: %s", i, lines[i]);
        field(lines[i], "path", v, sizeof v);
        cr_assert_str_eq(v, want[i].path, "line %zu: %s", i, lines[i]);
        field(lines[i], "status", v, sizeof v);
        snprintf(num, sizeof num, "%ld", want[i].status);
        cr_assert_str_eq(v, num, "line %zu: %s", i, lines[i]);
        field(lines[i], "bytes", v, sizeof v);
        snprintf(num, sizeof num, "%zu", want[i].bytes);
        cr_assert_str_eq(v, num, "line %zu: %s", i, lines[i]);
        field(lines[i], "duration_ms", v, sizeof v);
        char *end = NULL;
        double ms = strtod(v, &end);
        cr_assert(v[0] != '\0' && *end == '\0' && ms >= 0,
                  "line %zu: bad duration_ms in %s", i, lines[i]);
        field(lines[i], "remote", v, sizeof v);
        cr_assert_str_eq(v, "127.0.0.1", "line %zu: %s", i, lines[i]);
    }
    free(log);
    free(copy);
    ns_free(s);
}

Test(startup, no_access_log_by_default)
{
    ns_server *s = ns_start(NULL);
    cr_assert_not_null(s, "server did not start");
    ns_resp r = {0};

    cr_assert_eq(ns_req(s, "GET", "/healthz", NULL, NULL, &r), 0);
    cr_assert_eq(r.status, 200);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_not(ns_log_contains(s, "msg=access"), "access line without --access-log");
    ns_free(s);
}

Test(startup, started_and_stopped_lines)
{
    ns_server *s = ns_start("--batch-size 7 --access-log");
    cr_assert_not_null(s, "server did not start");
    ns_resp r = {0};

    for (int i = 0; i < 3; i++) {
        char node[16];
        snprintf(node, sizeof node, "n%d", i);
        cr_assert_eq(ns_post_state(s, "r", node, NULL, "{\"status\":\"scheduled\"}", &r), 0);
        cr_assert_eq(r.status, 202);
    }
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);

    char *log = ns_log(s);
    cr_assert_not_null(log);
    char *copy = strdup(log);
    cr_assert_not_null(copy);
    char *lines[4];
    char v[256];

    cr_assert_eq(lines_with(log, " msg=started ", lines, 4), 1, "log:\n%s", copy);
    static const char *const settings[] = {
        "version=", "listen=127.0.0.1:0", "db=", "batch_size=7",
        "batch_interval=", "queue_capacity=", "shutdown_timeout=", "synchronous=",
        "threads=", "max_body_bytes=", "max_connections=", "connection_timeout=",
        "max_wait=", "log_level=info", "token=unset", "token_file=\"\"",
        "access_log=true",
    };
    for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++)
        cr_assert_not_null(strstr(lines[0], settings[i]), "started line lacks %s: %s",
                           settings[i], lines[0]);
    field(lines[0], "threads", v, sizeof v);
    cr_assert(atoi(v) >= 1, "threads is the effective count, not 0: %s", lines[0]);

    free(log);
    log = strdup(copy);
    cr_assert_not_null(log);
    cr_assert_eq(lines_with(log, " msg=stopped ", lines, 4), 1, "log:\n%s", copy);
    field(lines[0], "unflushed", v, sizeof v);
    cr_assert_str_eq(v, "0", "%s", lines[0]);
    field(lines[0], "flushed", v, sizeof v);
    /* How many the close itself flushed depends on the writer's timing;
     * never more than were accepted. */
    cr_assert(v[0] >= '0' && v[0] <= '3' && v[1] == '\0', "%s", lines[0]);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state", NULL), 3);
    free(log);
    free(copy);
    ns_free(s);
}
