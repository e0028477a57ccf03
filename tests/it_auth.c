/*
 * it_auth: bearer-token authentication of the real binary. With a token
 * (--token, NODESTATE_TOKEN, --token-file or NODESTATE_TOKEN_FILE) every
 * route but /healthz needs "Authorization: Bearer <token>"; a missing or
 * wrong one is a 401 problem with WWW-Authenticate: Bearer. The body of a
 * request refused so is drained, never stored, and a client waiting for a
 * 100 Continue gets the 401 instead. The token never shows in the log or in
 * --help.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "it_assert.h"

#define TOKEN "secret123"
#define AUTH_OK "Authorization: Bearer " TOKEN

TestSuite(auth, .init = it_env_clear, .timeout = 120);

static ns_server *start(const char *args)
{
    ns_server *s = ns_start("%s", args);
    cr_assert_not_null(s, "server did not start with %s", args);
    return s;
}

/* ---- the WWW-Authenticate header ------------------------------------------ */

/* GET path with an optional extra header; returns the status, fills www. */
static long get_www_authenticate(ns_server *s, const char *path,
                                 const char *header, char *www, size_t size)
{
    const char *headers[] = {header, NULL};
    ns_resp r = {0};

    cr_assert_eq(ns_req(s, "GET", path, NULL, header != NULL ? headers : NULL, &r),
                 0, "GET %s: %s", path, r.error);
    snprintf(www, size, "%s", r.www_authenticate);
    long status = r.status;
    ns_resp_free(&r);
    return status;
}

/* ---- assertions ----------------------------------------------------------- */

static void assert_401(ns_server *s, const char *method, const char *path,
                       const char *body, const char *header)
{
    const char *headers[] = {header, NULL};
    ns_resp r = {0};
    char why[512];

    cr_assert_eq(ns_req(s, method, path, body, header != NULL ? headers : NULL, &r),
                 0, "%s %s: %s", method, path, r.error);
    cr_assert_eq(ns_check_problem(&r, 401, "unauthorized", why, sizeof why), 0,
                 "%s %s with %s: %s (body %s)", method, path,
                 header != NULL ? header : "no header", why, r.body);
    ns_resp_free(&r);
}

static void assert_status(ns_server *s, const char *method, const char *path,
                          const char *body, const char *header, long want)
{
    const char *headers[] = {header, NULL};
    ns_resp r = {0};

    cr_assert_eq(ns_req(s, method, path, body, header != NULL ? headers : NULL, &r),
                 0, "%s %s: %s", method, path, r.error);
    cr_assert_eq(r.status, want, "%s %s with %s: status %ld, want %ld; body %s",
                 method, path, header != NULL ? header : "no header", r.status,
                 want, r.body);
    ns_resp_free(&r);
}

/* Every route the api serves, in an order where each succeeds with the token. */
typedef struct route {
    const char *method;
    const char *path;
    const char *body;
    long ok;             /* the status with the right token, in this order */
} route;

static const route routes[] = {
    {"POST", "/runs/r1/nodes/n1/state", "{\"status\":\"running\"}", 202},
    {"GET", "/runs/r1/nodes/n1/state", NULL, 200},
    {"GET", "/runs/r1/nodes", NULL, 200},
    {"GET", "/runs/r1", NULL, 200},
    {"DELETE", "/runs/r1", NULL, 202},
    {"GET", "/stats", NULL, 200},
    {"GET", "/stats?format=json", NULL, 200},
    {"GET", "/metrics", NULL, 200},
    {"GET", "/readyz", NULL, 200},
    {"GET", "/backup", NULL, 200},
    {"GET", "/no/such/path", NULL, 404},
};
#define N_ROUTES (sizeof routes / sizeof routes[0])

/* The checks every way of giving the token must pass. */
static void assert_token_required(ns_server *s, const char *token)
{
    char ok[256], www[256];

    snprintf(ok, sizeof ok, "Authorization: Bearer %s", token);
    for (size_t i = 0; i < N_ROUTES; i++)
        assert_401(s, routes[i].method, routes[i].path, routes[i].body, NULL);
    cr_assert_eq(get_www_authenticate(s, "/readyz", NULL, www, sizeof www), 401);
    cr_assert_eq(strncmp(www, "Bearer", 6), 0, "WWW-Authenticate: %s", www);
    assert_status(s, "GET", "/readyz", NULL, ok, 200);
    assert_status(s, "GET", "/healthz", NULL, NULL, 200);
}

/* ---- tests ---------------------------------------------------------------- */

Test(auth, no_token_is_401_on_every_route_but_healthz)
{
    ns_server *s = start("--token " TOKEN);
    char www[256];

    for (size_t i = 0; i < N_ROUTES; i++)
        assert_401(s, routes[i].method, routes[i].path, routes[i].body, NULL);

    cr_assert_eq(get_www_authenticate(s, "/stats", NULL, www, sizeof www), 401);
    cr_assert_eq(strncmp(www, "Bearer", 6), 0, "WWW-Authenticate: %s", www);
    cr_assert_eq(get_www_authenticate(s, "/runs/r1/nodes/n1/state", NULL, www,
                                      sizeof www), 401);
    cr_assert_eq(strncmp(www, "Bearer", 6), 0, "WWW-Authenticate: %s", www);

    /* Liveness stays open for orchestrators' probes. */
    assert_status(s, "GET", "/healthz", NULL, NULL, 200);
    assert_status(s, "GET", "/healthz", NULL, "Authorization: Bearer wrong", 200);

    /* Nothing was written by the refused POST. */
    assert_status(s, "GET", "/runs/r1/nodes/n1/state", NULL, AUTH_OK, 404);
    ns_free(s);
}

Test(auth, wrong_token_is_401)
{
    ns_server *s = start("--token " TOKEN);
    static const char *const wrong[] = {
        "Authorization: Bearer wrong",
        "Authorization: Bearer secret12",      /* a prefix */
        "Authorization: Bearer secret1234",    /* longer */
        "Authorization: Bearer Secret123",     /* case matters in the token */
        "Authorization: Bearer",               /* no token */
        "Authorization: Basic " TOKEN,         /* another scheme */
        "Authorization: " TOKEN,               /* no scheme */
        "X-Token: " TOKEN,                     /* another header */
    };
    char www[256];

    for (size_t w = 0; w < sizeof wrong / sizeof wrong[0]; w++)
        for (size_t i = 0; i < N_ROUTES; i++)
            assert_401(s, routes[i].method, routes[i].path, routes[i].body, wrong[w]);
    cr_assert_eq(get_www_authenticate(s, "/readyz", "Authorization: Bearer wrong",
                                      www, sizeof www), 401);
    cr_assert_eq(strncmp(www, "Bearer", 6), 0, "WWW-Authenticate: %s", www);
    ns_free(s);
}

Test(auth, right_token_works)
{
    ns_server *s = start("--token " TOKEN);

    assert_status(s, "POST", "/runs/r1/nodes/n1/state", "{\"status\":\"running\"}",
                  AUTH_OK, 202);
    assert_status(s, "POST", "/runs/r1/nodes/n2/state?wait=true",
                  "{\"status\":\"running\"}", AUTH_OK, 200);
    assert_status(s, "GET", "/runs/r1/nodes/n1/state", NULL, AUTH_OK, 200);
    assert_status(s, "GET", "/runs/r1/nodes", NULL, AUTH_OK, 200);
    assert_status(s, "GET", "/runs/r1", NULL, AUTH_OK, 200);
    assert_status(s, "GET", "/stats", NULL, AUTH_OK, 200);
    assert_status(s, "GET", "/stats?format=json", NULL, AUTH_OK, 200);
    assert_status(s, "GET", "/metrics", NULL, AUTH_OK, 200);
    assert_status(s, "GET", "/readyz", NULL, AUTH_OK, 200);
    assert_status(s, "GET", "/healthz", NULL, AUTH_OK, 200);
    assert_status(s, "GET", "/no/such/path", NULL, AUTH_OK, 404);
    assert_status(s, "DELETE", "/runs/r1", NULL, AUTH_OK, 202);
    ns_free(s);
}

Test(auth, no_token_configured_means_open)
{
    ns_server *s = start("");

    assert_status(s, "GET", "/readyz", NULL, NULL, 200);
    assert_status(s, "POST", "/runs/r1/nodes/n1/state", "{\"status\":\"running\"}",
                  NULL, 202);
    /* A header nobody asked for is ignored. */
    assert_status(s, "GET", "/runs/r1/nodes/n1/state", NULL,
                  "Authorization: Bearer anything", 200);
    cr_assert(ns_log_contains(s, " token=unset"), "started line lacks token=unset");
    ns_free(s);
}

Test(auth, token_from_environment)
{
    cr_assert_eq(setenv("NODESTATE_TOKEN", "envtoken456", 1), 0);
    ns_server *s = start("");

    assert_token_required(s, "envtoken456");
    assert_401(s, "GET", "/readyz", NULL, AUTH_OK);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_not(ns_log_contains(s, "envtoken456"), "the token is in the log");
    cr_assert(ns_log_contains(s, " token=set"), "started line lacks token=set");
    ns_free(s);
}

/* A temporary token file holding text; path receives its name. */
static void token_file(char *dir, size_t dir_size, char *path, size_t size,
                       const char *text)
{
    cr_assert_eq(ns_tmp_dir(dir, dir_size, "it-auth"), 0, "mkdtemp: %s", strerror(errno));
    snprintf(path, size, "%s/token", dir);
    it_write_file(path, text);
}

Test(auth, token_from_file)
{
    char dir[64], path[128];

    /* The newline `echo` leaves is not part of the token. */
    token_file(dir, sizeof dir, path, sizeof path, "filetoken789\n");
    ns_server *s = ns_start("--token-file %s", path);
    cr_assert_not_null(s, "server did not start with --token-file");

    assert_token_required(s, "filetoken789");
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_not(ns_log_contains(s, "filetoken789"), "the token is in the log");
    cr_assert(ns_log_contains(s, " token=set"), "started line lacks token=set");
    cr_assert(ns_log_contains(s, path), "started line lacks the token file's path");
    ns_free(s);
    unlink(path);
    rmdir(dir);
}

Test(auth, token_file_from_environment)
{
    char dir[64], path[128];

    token_file(dir, sizeof dir, path, sizeof path, "envfiletoken\r\n");
    cr_assert_eq(setenv("NODESTATE_TOKEN_FILE", path, 1), 0);
    ns_server *s = start("");

    assert_token_required(s, "envfiletoken");
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_not(ns_log_contains(s, "envfiletoken"), "the token is in the log");
    ns_free(s);
    unlink(path);
    rmdir(dir);
}

Test(auth, token_absent_from_log)
{
    /* Debug level and the access log: the most the service ever writes. */
    ns_server *s = start("--token " TOKEN " --log-level debug --access-log");
    char www[256];

    for (size_t i = 0; i < N_ROUTES; i++) {
        long ok = routes[i].ok;
        /* The PostgreSQL store is backed up with pg_dump: 501, past the token all the same. */
        if (ns_pg_base() != NULL && strcmp(routes[i].path, "/backup") == 0)
            ok = 501;
        assert_status(s, routes[i].method, routes[i].path, routes[i].body, AUTH_OK, ok);
        assert_401(s, routes[i].method, routes[i].path, routes[i].body,
                   "Authorization: Bearer " TOKEN "x");
    }
    cr_assert_eq(get_www_authenticate(s, "/readyz", NULL, www, sizeof www), 401);
    /* The path is logged; a token in it would be the client's doing. */
    cr_assert_eq(ns_stop(s, SIGTERM), 0);

    char *log = ns_log(s);
    cr_assert_not_null(log);
    cr_assert_null(strstr(log, TOKEN), "the token is in the log:\n%s", log);
    cr_assert_not_null(strstr(log, " msg=started "), "no started line:\n%s", log);
    cr_assert_not_null(strstr(log, " token=set"), "started line lacks token=set:\n%s", log);
    cr_assert_not_null(strstr(log, " status=401 "), "401s are access-logged:\n%s", log);
    cr_assert_not_null(strstr(log, " msg=stopped "), "no stopped line:\n%s", log);
    free(log);
    ns_free(s);
}

/* ---- bodies of requests without the token ---------------------------------- */

/* Bound on every wait for the server to act; meeting the condition ends it. */
#define WAIT_S 30.0

/* Reads to the close; asserts exactly one answer, a 401 problem. */
static void assert_raw_401(int fd, const char *what)
{
    static char buf[8192];
    size_t len;

    it_raw_read_to_close(fd, buf, sizeof buf, &len, WAIT_S);
    cr_assert(strncmp(buf, "HTTP/1.1 401 ", 13) == 0, "%s: %.300s", what, buf);
    cr_assert_null(strstr(buf + 1, "HTTP/1.1 "), "%s: more than one answer: %.300s", what, buf);
    cr_assert_not_null(strstr(buf, "urn:nodestate:problem:unauthorized"), "%s: %.300s", what,
                       buf);
}

#define UPLOADS 8
#define UPLOAD_BYTES (15u << 20)   /* under --max-batch-body-bytes (16 MiB) */
#define UPLOAD_CHUNK (64u << 10)

/*
 * Batches of 15 MiB sent together without the token are each answered 401
 * after their body, and the server holds none of them: their bodies are
 * drained, not buffered (30 such uploads took it from 9 to 460 MiB).
 */
Test(auth, bodies_without_the_token_are_not_buffered, .timeout = 180)
{
    ns_server *s = start("--token " TOKEN);
    static char chunk[UPLOAD_CHUNK];
    char head[256];
    int fds[UPLOADS];

    memset(chunk, 'x', sizeof chunk);
    snprintf(head, sizeof head,
             "POST /runs/r/nodes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: %u\r\nConnection: close\r\n\r\n", UPLOAD_BYTES);
    long before = ns_status_kib(s, "VmHWM");
    cr_assert_gt(before, 0);
    for (int i = 0; i < UPLOADS; i++) {
        fds[i] = it_raw_connect(s, NULL);
        cr_assert_eq(ns_raw_send_str(fds[i], head), 0);
    }
    /* In turns, so that every upload is under way at once. */
    for (unsigned sent = 0; sent < UPLOAD_BYTES; sent += UPLOAD_CHUNK)
        for (int i = 0; i < UPLOADS; i++)
            cr_assert_eq(ns_raw_send(fds[i], chunk, UPLOAD_CHUNK), 0,
                         "upload %d cut off after %u bytes", i, sent);
    for (int i = 0; i < UPLOADS; i++) {
        assert_raw_401(fds[i], "a batch without the token");
        close(fds[i]);
    }
    long grew = ns_status_kib(s, "VmHWM") - before;
    cr_assert(!NS_MEMORY_TELLS_OURS || grew < (long)(UPLOAD_BYTES >> 10),
              "%d uploads of %u MiB without the token grew the server's peak by %ld MiB",
              UPLOADS, UPLOAD_BYTES >> 20, grew / 1024);

    /* A body over the limit is no exception: the answer is the 401, not a 413. */
    size_t big = (2u << 20) + 1;
    char *body = malloc(big + 1);
    cr_assert_not_null(body);
    memset(body, ' ', big);
    body[big] = '\0';
    assert_401(s, "POST", "/runs/r/nodes/n/state", body, NULL);
    free(body);
    /* Nothing was applied. */
    assert_status(s, "GET", "/runs/r", NULL, AUTH_OK, 404);
    ns_free(s);
}

/* Sends a POST's headers asking for a 100 Continue; returns the socket. */
static int expect_continue(ns_server *s, const char *auth)
{
    char head[512];
    int fd = it_raw_connect(s, NULL);

    snprintf(head, sizeof head,
             "POST /runs/r/nodes/n/state HTTP/1.1\r\nHost: x\r\n"
             "Content-Type: application/json\r\nContent-Length: 20\r\n%s"
             "Expect: 100-continue\r\n\r\n", auth);
    cr_assert_eq(ns_raw_send_str(fd, head), 0);
    return fd;
}

/* The status line of the first answer on fd; asserts it came. */
static void first_status(int fd, char *buf, size_t cap)
{
    long long until = ns_mono_ms() + (long long)(WAIT_S * 1000);
    size_t len = 0;

    buf[0] = '\0';
    while (strstr(buf, "\r\n\r\n") == NULL) {
        cr_assert(ns_mono_ms() < until, "no answer within %.0f s: %.300s", WAIT_S, buf);
        if (it_raw_read_for(fd, buf, cap, &len, 100) == 1)
            break;
    }
}

/*
 * A client without the token that waits for a 100 Continue is not invited
 * to send its body: it gets the 401 at once, and the connection is closed
 * (the body it announced never comes). With the token it is invited.
 */
Test(auth, expect_continue_without_the_token_gets_401_not_100)
{
    ns_server *s = start("--token " TOKEN);
    char buf[4096];

    int fd = expect_continue(s, "");
    first_status(fd, buf, sizeof buf);
    cr_assert(strncmp(buf, "HTTP/1.1 401 ", 13) == 0, "without the token: %.300s", buf);
    close(fd);
    fd = expect_continue(s, "Authorization: Bearer wrong\r\n");
    assert_raw_401(fd, "a wrong token and Expect: 100-continue");
    close(fd);

    fd = expect_continue(s, AUTH_OK "\r\n");
    first_status(fd, buf, sizeof buf);
    cr_assert(strncmp(buf, "HTTP/1.1 100 ", 13) == 0, "with the token: %.300s", buf);
    cr_assert_eq(ns_raw_send_str(fd, "{\"status\":\"running\"}"), 0);
    first_status(fd, buf, sizeof buf);
    cr_assert(strncmp(buf, "HTTP/1.1 202 ", 13) == 0, "the body after the 100: %.300s", buf);
    close(fd);
    ns_free(s);
}

/* ---- --help --------------------------------------------------------------- */

Test(auth, token_absent_from_help)
{
    const char *const env[] = {"NODESTATE_TOKEN=" TOKEN, NULL};
    const char *const args[] = {"--token", TOKEN, "--help", NULL};
    char *out = NULL;
    /* --help exits at once: the bound is for a hang, not an expectation. */
    int code = ns_run_env(args, env, 60.0, &out, NULL);

    cr_assert_not_null(out);
    cr_assert_eq(code, 0, "--help: exit %d:\n%s", code, out);
    cr_assert_not_null(strstr(out, "--token"), "help lacks --token:\n%s", out);
    cr_assert_not_null(strstr(out, "NODESTATE_TOKEN"), "help lacks the variable");
    cr_assert_null(strstr(out, TOKEN), "the token is in --help:\n%s", out);
    free(out);
}
