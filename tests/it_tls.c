/*
 * it_tls: --tls-cert / --tls-key on the real binary. With a self-signed
 * certificate for 127.0.0.1 (made with openssl in a scratch directory) the
 * server speaks HTTPS that libcurl verifies against that certificate: a
 * POST ?wait=true is answered 200 once durable and a GET on the same
 * kept-alive connection sees it; a client that does not trust the
 * certificate is refused by its own check; plain HTTP to the port gets no
 * answer and leaves the server serving; a connection that never finishes
 * its handshake is closed by the header deadline. A missing file, a file
 * that is not PEM, a certificate GnuTLS refuses, or one option without the
 * other makes the start fail with exit 1 and a message saying which.
 */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "it_assert.h"

/* A bound for a start that must fail at once, and for one request. */
#define RUN_TIMEOUT 60.0
#define REQ_TIMEOUT 60L

static char dir[128];
static char cert[256];
static char key[256];

/* A certificate (CN and SAN 127.0.0.1) and its key in a fresh directory. */
static void make_cert(void)
{
    char cmd[1024];
    int rc;

    it_env_clear();
    cr_assert_eq(ns_tmp_dir(dir, sizeof dir, "it-tls"), 0);
    snprintf(cert, sizeof cert, "%s/cert.pem", dir);
    snprintf(key, sizeof key, "%s/key.pem", dir);
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
             "-nodes -keyout '%s' -out '%s' -days 2 -subj /CN=127.0.0.1 "
             "-addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1", key, cert);
    rc = system(cmd);
    cr_assert(rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0,
              "openssl could not make a certificate (is it installed?): %s", cmd);
}

static void remove_cert(void)
{
    ns_rm_dir(dir);
}

TestSuite(tls, .init = make_cert, .fini = remove_cert, .timeout = 240);

/* ---- an HTTPS client ---- */

typedef struct answer {
    long status;
    CURLcode rc;
    char body[4096];
    size_t len;
    long connects;      /* new connections this request made */
} answer;

static size_t on_body(char *data, size_t size, size_t n, void *ctx)
{
    answer *a = ctx;
    size_t len = size * n, room = sizeof a->body - 1 - a->len;

    memcpy(a->body + a->len, data, len < room ? len : room);
    a->len += len < room ? len : room;
    a->body[a->len] = '\0';
    return len;
}

/* One request on handle c (kept alive between calls); ca NULL: the system's CAs. */
static void request(CURL *c, const char *url, const char *method, const char *body,
                    const char *ca, answer *a)
{
    struct curl_slist *hdrs = curl_slist_append(NULL, "Content-Type: application/json");

    memset(a, 0, sizeof *a);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    if (body == NULL)
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_CAINFO, ca);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, a);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, REQ_TIMEOUT);
    a->rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &a->status);
    curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &a->connects);
    curl_slist_free_all(hdrs);
}

static void url_of(const ns_server *s, const char *scheme, const char *path,
                   char *out, size_t len)
{
    snprintf(out, len, "%s://127.0.0.1:%d%s", scheme, ns_port(s), path);
}

Test(tls, https_serves_waits_and_keeps_alive_with_a_verified_certificate)
{
    ns_server *s = ns_start("--tls-cert %s --tls-key %s", cert, key);
    char url[256];
    answer a;
    CURL *c;
    json_t *j;
    long long seq_post = 0, seq_get = -1;

    cr_assert_not_null(s);
    cr_assert(ns_log_contains(s, "scheme=https"), "the listening line does not say https");
    c = curl_easy_init();
    cr_assert_not_null(c);

    url_of(s, "https", "/runs/r1/nodes/n1/state?wait=true", url, sizeof url);
    request(c, url, "POST", "{\"status\":\"running\",\"outputs\":{\"tls\":true}}", cert, &a);
    cr_assert_eq(a.rc, CURLE_OK, "POST over https: %s", curl_easy_strerror(a.rc));
    cr_assert_eq(a.status, 200, "POST ?wait=true: %ld %s", a.status, a.body);
    j = json_loads(a.body, 0, NULL);
    cr_assert_not_null(j, "%s", a.body);
    cr_assert(json_is_true(json_object_get(j, "durable")), "%s", a.body);
    cr_assert_eq(ns_jint(j, "seq", &seq_post), 0);
    json_decref(j);

    url_of(s, "https", "/runs/r1/nodes/n1/state", url, sizeof url);
    request(c, url, "GET", NULL, cert, &a);
    cr_assert_eq(a.rc, CURLE_OK, "GET over https: %s", curl_easy_strerror(a.rc));
    cr_assert_eq(a.status, 200, "%s", a.body);
    cr_assert_eq(a.connects, 0, "the GET opened a new connection: no keep-alive over TLS");
    j = json_loads(a.body, 0, NULL);
    cr_assert_not_null(j);
    cr_assert_eq(ns_jint(j, "seq", &seq_get), 0);
    cr_assert_eq(seq_get, seq_post);
    cr_assert_str_eq(ns_jstr(j, "status"), "running");
    json_decref(j);
    curl_easy_cleanup(c);

    /* A client that does not trust the certificate refuses the server. */
    c = curl_easy_init();
    url_of(s, "https", "/healthz", url, sizeof url);
    request(c, url, "GET", NULL, NULL, &a);
    cr_assert_eq(a.rc, CURLE_PEER_FAILED_VERIFICATION, "an untrusted certificate: %s",
                 curl_easy_strerror(a.rc));
    curl_easy_cleanup(c);

    /* Plain HTTP to the TLS port gets no HTTP answer; the server goes on. */
    c = curl_easy_init();
    url_of(s, "http", "/healthz", url, sizeof url);
    request(c, url, "GET", NULL, NULL, &a);
    cr_assert_neq(a.rc, CURLE_OK, "plain HTTP was answered %ld: %s", a.status, a.body);
    cr_assert_eq(a.status, 0);
    curl_easy_cleanup(c);
    c = curl_easy_init();
    url_of(s, "https", "/healthz", url, sizeof url);
    request(c, url, "GET", NULL, cert, &a);
    cr_assert_eq(a.rc, CURLE_OK, "https after a plain request: %s", curl_easy_strerror(a.rc));
    cr_assert_eq(a.status, 200);
    curl_easy_cleanup(c);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

Test(tls, a_handshake_never_sent_is_closed_at_the_header_deadline)
{
    ns_server *s = ns_start("--tls-cert %s --tls-key %s --header-timeout 1", cert, key);
    char buf[256];
    size_t len = 0;
    int fd;

    cr_assert_not_null(s);
    fd = it_raw_connect(s, NULL);
    /* Bounded far above the deadline; the close itself ends the wait. */
    it_raw_read_to_close(fd, buf, sizeof buf, &len, 30.0);
    cr_assert_eq(len, 0, "the server sent %zu bytes to a client that said nothing", len);
    close(fd);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

/*
 * Runs the binary with the TLS arguments given; asserts exit 1 with want in
 * its output, and, with before_db, that the database was not even created:
 * files that cannot be read, and what GnuTLS refuses, are refused first.
 */
static void start_fails(bool before_db, const char *want, const char *a1,
                        const char *v1, const char *a2, const char *v2)
{
    char db[256];
    char *out = NULL;
    int code;

    snprintf(db, sizeof db, "%s/never.db", dir);
    code = ns_run((const char *const[]){"--listen", "127.0.0.1:0", "--db", db,
                                        a1, v1, a2, v2, NULL},
                  RUN_TIMEOUT, &out);
    cr_assert_not_null(out);
    cr_assert_eq(code, 1, "exit %d, want 1:\n%s", code, out);
    cr_assert_not_null(strstr(out, "msg=start-failed"), "%s", out);
    cr_assert_not_null(strstr(out, want), "no \"%s\" in:\n%s", want, out);
    free(out);
    if (before_db)
        cr_assert_neq(access(db, F_OK), 0, "the database was created");
    static const char *const files[] = {"", "-wal", "-shm", ".lock"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char p[300];
        snprintf(p, sizeof p, "%s%s", db, files[i]);
        unlink(p);
    }
}

Test(tls, bad_certificate_files_fail_the_start_with_a_message)
{
    char missing[300], junk[300], bad[300];

    snprintf(missing, sizeof missing, "%s/missing.pem", dir);
    snprintf(junk, sizeof junk, "%s/junk.pem", dir);
    snprintf(bad, sizeof bad, "%s/bad.pem", dir);
    it_write_file(junk, "not a certificate\n");
    it_write_file(bad, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");

    start_fails(true, missing, "--tls-cert", missing, "--tls-key", key);
    start_fails(true, "No such file", "--tls-cert", cert, "--tls-key", missing);
    start_fails(true, "not a PEM file", "--tls-cert", junk, "--tls-key", key);
    start_fails(true, "give both", "--tls-cert", cert, "--log-level", "info");
    start_fails(true, "give both", "--tls-key", key, "--log-level", "info");
    start_fails(true, "GnuTLS", "--tls-cert", bad, "--tls-key", key);
    /* The certificate where the key belongs. */
    start_fails(true, "the TLS certificate and key are refused", "--tls-cert", cert,
                "--tls-key", cert);
    /* A key of another certificate. */
    char other[300], cmd[700];
    snprintf(other, sizeof other, "%s/other-key.pem", dir);
    snprintf(cmd, sizeof cmd,
             "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out '%s' "
             ">/dev/null 2>&1", other);
    int rc = system(cmd);
    cr_assert(rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "%s", cmd);
    start_fails(true, "the TLS certificate and key are refused", "--tls-cert", cert,
                "--tls-key", other);
}

/* ---- a stop asked for while starting (a FIFO as the certificate holds the start) ---- */

/* The log of a server started by hand: its stderr, written to a file. */
static char *read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    static char text[65536];
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    fclose(f);
    return text;
}

/* Threads of pid (from /proc), or -1. */
static int threads_of(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    int n = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "Threads:", 8) == 0)
            n = atoi(line + 8);
    if (f)
        fclose(f);
    return n;
}

typedef struct starting {
    pid_t pid;
} starting;

/* The start-up guard runs (the first thread main starts): a signal now is the guard's. */
static bool guarded(void *arg)
{
    return threads_of(((starting *)arg)->pid) >= 2;
}

/* Exit status of pid (waited for, bounded by RUN_TIMEOUT, then SIGKILLed: -1). */
static int wait_exit(pid_t pid)
{
    for (int i = 0; i < (int)(RUN_TIMEOUT * 100); i++) {
        int st;
        pid_t got = waitpid(pid, &st, WNOHANG);
        if (got == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        ns_sleep_ms(10);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

/* Starts nodestate reading its certificate from a FIFO (which blocks until written). */
static pid_t start_on_fifo(const char *fifo, const char *log, const char *shutdown_timeout)
{
    char db[256];
    snprintf(db, sizeof db, "%s/fifo.db", dir);
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        FILE *err = freopen(log, "w", stderr);
        (void)err;
        execl(NODESTATE_BIN, NODESTATE_BIN, "--listen", "127.0.0.1:0", "--db", db,
              "--tls-cert", fifo, "--tls-key", key, "--shutdown-timeout", shutdown_timeout,
              (char *)NULL);
        _exit(127);
    }
    starting s = { pid };
    cr_assert_eq(ns_wait_until(guarded, &s, RUN_TIMEOUT, 5), 0, "the start-up guard never ran");
    return pid;
}

Test(tls, a_stop_during_a_start_that_does_not_end_exits_after_the_shutdown_timeout)
{
    char fifo[256], log[256];
    snprintf(fifo, sizeof fifo, "%s/held.pem", dir);
    snprintf(log, sizeof log, "%s/held.log", dir);
    pid_t pid = start_on_fifo(fifo, log, "1");
    cr_assert_eq(kill(pid, SIGTERM), 0);
    /* Nobody writes the FIFO: the start never ends, the guard gives up on it. */
    cr_assert_eq(wait_exit(pid), 0, "log:\n%s", read_file(log));
    char *text = read_file(log);
    cr_assert_not_null(strstr(text, "msg=stopping signal=TERM during=start-up"), "%s", text);
    cr_assert_not_null(strstr(text, "msg=start-abandoned"), "%s", text);
    unlink(fifo);
}

Test(tls, a_stop_during_a_start_that_ends_in_time_stops_at_once)
{
    char fifo[256], log[256];
    snprintf(fifo, sizeof fifo, "%s/late.pem", dir);
    snprintf(log, sizeof log, "%s/late.log", dir);
    /* A timeout far beyond this test's steps: the start ends first however busy the machine. */
    pid_t pid = start_on_fifo(fifo, log, "120");
    cr_assert_eq(kill(pid, SIGTERM), 0);
    /* The certificate comes after the signal: the start ends, and the server stops at once. */
    char *pem = strdup(read_file(cert));
    FILE *w = fopen(fifo, "w");
    cr_assert_not_null(w);
    fputs(pem, w);
    fclose(w);
    free(pem);
    cr_assert_eq(wait_exit(pid), 0, "log:\n%s", read_file(log));
    char *text = read_file(log);
    cr_assert_not_null(strstr(text, "msg=stopping signal=TERM during=start-up"), "%s", text);
    cr_assert_not_null(strstr(text, "msg=stopped"), "%s", text);
    cr_assert_null(strstr(text, "msg=start-abandoned"), "%s", text);
    unlink(fifo);
}
