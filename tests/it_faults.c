/*
 * it_faults: faults injected into the store (the nodestate-faults test build,
 * driven by NODESTATE_FAULTS) are survived. A commit that fails with SQLITE_BUSY,
 * an I/O error or a full disk is retried with backoff, counted in /stats
 * "errors" and logged (msg=commit-failed), and every update still reaches the
 * file; a row SQLite refuses for good is isolated (msg=row-isolated,
 * rows_isolated) while the rest of its batch commits, and the server keeps
 * working.
 *
 * The harness starts NODESTATE_BIN only, so this file runs nodestate-faults
 * (built beside it in test builds) itself: same arguments as the harness
 * (127.0.0.1 port 0, a database in a fresh temporary directory), the log in a
 * file there, HTTP through libcurl.
 */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

extern char **environ;

/* One nodestate-faults process and its directory. */
typedef struct fsrv {
    char dir[PATH_MAX];
    char db[PATH_MAX + 32];
    char log[PATH_MAX + 32];
    pid_t pid;
    bool running;
    int code;                /* exit code once reaped; 128 + signal */
    int port;
} fsrv;

static void nap_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

/* dirname(NODESTATE_BIN) + "/nodestate-faults". */
static void faults_bin(char *out, size_t len)
{
    const char *bin = NODESTATE_BIN;
    const char *slash = strrchr(bin, '/');
    int dir_len = slash != NULL ? (int)(slash - bin) : 1;
    snprintf(out, len, "%.*s/nodestate-faults", dir_len, slash != NULL ? bin : ".");
}

/* The whole log file as a malloc'd string ("" when empty). */
static char *fsrv_log(const fsrv *f)
{
    FILE *fp = fopen(f->log, "r");
    char *text = NULL;
    size_t len = 0;
    if (fp != NULL) {
        char chunk[4096];
        size_t n;
        while ((n = fread(chunk, 1, sizeof chunk, fp)) > 0) {
            char *grown = realloc(text, len + n + 1);
            cr_assert_not_null(grown);
            text = grown;
            memcpy(text + len, chunk, n);
            len += n;
        }
        fclose(fp);
    }
    if (text == NULL)
        text = calloc(1, 1);
    cr_assert_not_null(text);
    text[len] = '\0';
    return text;
}

static bool fsrv_log_contains(const fsrv *f, const char *needle)
{
    char *log = fsrv_log(f);
    bool found = strstr(log, needle) != NULL;
    free(log);
    return found;
}

/* The port of the msg=listening line, or 0. */
static int fsrv_port_from_log(const fsrv *f)
{
    char *log = fsrv_log(f);
    int port = 0;
    char *line = strstr(log, "msg=listening");
    char *addr = line != NULL ? strstr(line, "addr=") : NULL;
    if (addr != NULL) {
        addr += 5;
        size_t n = strcspn(addr, " \"\n");
        char *colon = NULL;
        for (char *p = addr; p < addr + n; p++)
            if (*p == ':')
                colon = p;
        if (colon != NULL && colon[1] >= '0' && colon[1] <= '9')
            port = atoi(colon + 1);
    }
    free(log);
    return port;
}

/* Reaps the child if it has exited; true when it is gone. */
static bool fsrv_reaped(fsrv *f)
{
    if (!f->running)
        return true;
    int st;
    pid_t r = waitpid(f->pid, &st, WNOHANG);
    if (r == f->pid) {
        f->running = false;
        f->code = WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : -1;
        return true;
    }
    return false;
}

/* Sends sig, waits (bounded) for the exit, SIGKILLs past it; the exit code. */
static int fsrv_stop(fsrv *f, int sig)
{
    if (!f->running)
        return f->code;
    kill(f->pid, sig);
    for (int i = 0; i < 6000 && !fsrv_reaped(f); i++)
        nap_ms(10);
    if (f->running) {
        kill(f->pid, SIGKILL);
        waitpid(f->pid, NULL, 0);
        f->running = false;
        f->code = -1;
    }
    return f->code;
}

/* Starts nodestate-faults with NODESTATE_FAULTS=faults and the extra args. */
static void fsrv_start(fsrv *f, const char *faults, const char *const *extra)
{
    char bin[PATH_MAX];
    faults_bin(bin, sizeof bin);
    cr_assert_eq(access(bin, X_OK), 0,
                 "%s is not built (test builds build it beside nodestate)", bin);
    memset(f, 0, sizeof *f);
    const char *tmp = getenv("TMPDIR");
    snprintf(f->dir, sizeof f->dir, "%s/nodestate-faults-XXXXXX",
             tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
    cr_assert_not_null(mkdtemp(f->dir));
    snprintf(f->db, sizeof f->db, "%s/nodestate.db", f->dir);
    snprintf(f->log, sizeof f->log, "%s/server.log", f->dir);

    const char *argv[32] = { bin, "--listen", "127.0.0.1:0", "--db", f->db };
    int argc = 5;
    for (size_t i = 0; extra != NULL && extra[i] != NULL && argc < 31; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;

    /* The environment with our NODESTATE_FAULTS instead of any inherited one. */
    size_t n_env = 0;
    while (environ[n_env] != NULL)
        n_env++;
    char **envp = calloc(n_env + 2, sizeof *envp);
    cr_assert_not_null(envp);
    char fault_var[512];
    snprintf(fault_var, sizeof fault_var, "NODESTATE_FAULTS=%s", faults);
    size_t k = 0;
    for (size_t i = 0; i < n_env; i++)
        if (strncmp(environ[i], "NODESTATE_", 10) != 0)
            envp[k++] = environ[i];
    envp[k++] = fault_var;
    envp[k] = NULL;

    int log_fd = open(f->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    cr_assert(log_fd >= 0 && null_fd >= 0);
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        /* Dies with the test process, so a failed assert leaves none behind. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        if (dup2(null_fd, 0) == -1 || dup2(log_fd, 1) == -1 || dup2(log_fd, 2) == -1)
            _exit(127);
        execve(bin, (char *const *)argv, envp);
        _exit(127);
    }
    close(log_fd);
    close(null_fd);
    free(envp);
    f->pid = pid;
    f->running = true;
    for (int i = 0; i < 1000 && f->port == 0 && !fsrv_reaped(f); i++) {
        f->port = fsrv_port_from_log(f);
        if (f->port == 0)
            nap_ms(10);
    }
    if (f->port == 0) {
        fsrv_stop(f, SIGKILL);
        char *log = fsrv_log(f);
        cr_assert_fail("nodestate-faults (NODESTATE_FAULTS=%s) did not listen; log:\n%s",
                       faults, log);
    }
}

static void fsrv_free(fsrv *f)
{
    fsrv_stop(f, SIGKILL);
    DIR *d = opendir(f->dir);
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char path[PATH_MAX * 2];
            snprintf(path, sizeof path, "%s/%s", f->dir, e->d_name);
            unlink(path);
        }
        closedir(d);
    }
    rmdir(f->dir);
}

typedef struct fill {
    ns_resp *out;
    size_t cap;
} fill;

static size_t on_body(char *data, size_t size, size_t nmemb, void *ctx)
{
    fill *fl = ctx;
    size_t n = size * nmemb;
    ns_resp *r = fl->out;
    if (r->body_len + n + 1 > fl->cap) {
        size_t cap = fl->cap * 2 > r->body_len + n + 1 ? fl->cap * 2 : r->body_len + n + 1;
        char *grown = realloc(r->body, cap);
        if (grown == NULL)
            return 0;
        r->body = grown;
        fl->cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return n;
}

/* One request to f; out->status 0 (and -1 back) when there was no answer. */
static int fsrv_req(fsrv *f, const char *method, const char *path, const char *body,
                    ns_resp *out)
{
    ns_resp_free(out);
    out->body = calloc(1, 1);
    cr_assert_not_null(out->body);
    fill fl = { out, 1 };
    char url[1024];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", f->port, path);
    CURL *h = curl_easy_init();
    cr_assert_not_null(h);
    struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");
    cr_assert_not_null(hdr);
    bool ok = curl_easy_setopt(h, CURLOPT_URL, url) == CURLE_OK &&
              curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L) == CURLE_OK &&
              curl_easy_setopt(h, CURLOPT_PROXY, "") == CURLE_OK &&
              curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 30000L) == CURLE_OK &&
              curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 5000L) == CURLE_OK &&
              curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body) == CURLE_OK &&
              curl_easy_setopt(h, CURLOPT_WRITEDATA, &fl) == CURLE_OK &&
              curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method) == CURLE_OK &&
              (body == NULL ||
               (curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr) == CURLE_OK &&
                curl_easy_setopt(h, CURLOPT_POSTFIELDS, body) == CURLE_OK));
    cr_assert(ok, "curl_easy_setopt failed");
    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    if (rc == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    else
        snprintf(out->error, sizeof out->error, "%s %s: %s", method, path,
                 curl_easy_strerror(rc));
    out->status = status;
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    return rc == CURLE_OK ? 0 : -1;
}

static void fsrv_post(fsrv *f, const char *run, const char *node, const char *query,
                      const char *json, long want)
{
    char path[256];
    snprintf(path, sizeof path, "/runs/%s/nodes/%s/state%s", run, node, query ? query : "");
    ns_resp r = { 0 };
    cr_assert_eq(fsrv_req(f, "POST", path, json, &r), 0, "%s", r.error);
    cr_assert_eq(r.status, want, "POST %s %s: %ld %s, want %ld", path, json, r.status, r.body,
                 want);
    ns_resp_free(&r);
}

/* One integer counter of JSON /stats, -1 when it cannot be read. */
static long long fsrv_stat(fsrv *f, const char *key)
{
    ns_resp r = { 0 };
    long long v = -1;
    if (fsrv_req(f, "GET", "/stats?format=json", NULL, &r) == 0 && r.status == 200) {
        json_t *doc = ns_resp_json(&r);
        if (ns_jint(doc, key, &v) != 0)
            v = -1;
        json_decref(doc);
    }
    ns_resp_free(&r);
    return v;
}

/* Waits (bounded) until every queued update is committed. */
static bool fsrv_wait_idle(fsrv *f, double timeout_s)
{
    long long deadline = ns_mono_ms() + (long long)(timeout_s * 1000);
    for (int i = 0; i < 10000 && ns_mono_ms() < deadline; i++) {
        long long q = fsrv_stat(f, "updates_queued");
        long long p = fsrv_stat(f, "updates_processed");
        long long d = fsrv_stat(f, "queue_depth");
        if (q >= 0 && q == p && d == 0)
            return true;
        nap_ms(20);
    }
    return false;
}

static long long fsrv_db_int(fsrv *f, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    cr_assert_eq(sqlite3_open_v2(f->db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_busy_timeout(db, 5000), SQLITE_OK);
    cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK, "%s: %s", sql,
                 sqlite3_errmsg(db));
    long long v = -1;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* The first log line holding needle (a copy), or NULL. */
static char *log_line(const fsrv *f, const char *needle)
{
    char *log = fsrv_log(f);
    char *hit = strstr(log, needle);
    char *line = NULL;
    if (hit != NULL) {
        char *start = hit;
        while (start > log && start[-1] != '\n')
            start--;
        size_t n = strcspn(start, "\n");
        line = strndup(start, n);
    }
    free(log);
    return line;
}

/* Whether text holds one of the '|'-separated words, ignoring case. */
static bool mentions(const char *text, const char *words)
{
    char *copy = strdup(words);
    cr_assert_not_null(copy);
    bool found = false;
    char *save = NULL;
    for (char *w = strtok_r(copy, "|", &save); w != NULL && !found;
         w = strtok_r(NULL, "|", &save)) {
        size_t n = strlen(w);
        for (const char *p = text; *p != '\0' && !found; p++)
            found = strncasecmp(p, w, n) == 0;
    }
    free(copy);
    return found;
}

enum { UPDATES = 40 };

/*
 * Injects `faults` (failing `failures` commits), posts UPDATES updates and
 * checks the failures were counted and logged, and everything committed.
 */
static void check_commit_fault(const char *faults, long long failures, const char *what)
{
    cr_assert_eq(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    fsrv f;
    fsrv_start(&f, faults, NULL);
    for (int i = 0; i < UPDATES; i++) {
        char node[16], body[96];
        snprintf(node, sizeof node, "n%03d", i);
        snprintf(body, sizeof body, "{\"status\":\"running\",\"outputs\":%d}", i);
        fsrv_post(&f, "flt", node, NULL, body, 202);
    }
    cr_assert(fsrv_wait_idle(&f, 30.0), "%s: the queue did not drain (errors %lld)", faults,
              fsrv_stat(&f, "errors"));
    long long errors = fsrv_stat(&f, "errors");
    fprintf(stderr, "it_faults: %s: errors %lld, batches %lld\n", faults, errors,
            fsrv_stat(&f, "batches_written"));
    cr_assert_eq(errors, failures, "%s: errors %lld, want %lld", faults, errors, failures);
    char *line = log_line(&f, "msg=commit-failed");
    cr_assert_not_null(line, "%s: no msg=commit-failed in the log", faults);
    cr_assert(strstr(line, "error=") != NULL, "no error= in: %s", line);
    cr_assert(mentions(line, what), "%s: the error does not say \"%s\": %s", faults,
              what, line);
    fprintf(stderr, "it_faults: %s\n", line);
    free(line);
    cr_assert_eq(fsrv_stat(&f, "updates_processed"), UPDATES);
    cr_assert_eq(fsrv_db_int(&f, "SELECT count(*) FROM run_node_state WHERE run_id='flt' AND "
                                 "CAST(outputs_json AS INTEGER) = "
                                 "CAST(substr(node_id, 2) AS INTEGER)"), UPDATES);
    /* Healthy again: ready, and durable writes go through. */
    ns_resp r = { 0 };
    cr_assert_eq(fsrv_req(&f, "GET", "/readyz", NULL, &r), 0);
    cr_assert_eq(r.status, 200, "/readyz after the faults: %ld %s", r.status, r.body);
    ns_resp_free(&r);
    fsrv_post(&f, "flt", "after", "?wait=true", "{\"status\":\"running\"}", 200);
    cr_assert_eq(fsrv_stop(&f, SIGTERM), 0);
    fsrv_free(&f);
    curl_global_cleanup();
}

Test(faults, busy_commits_are_retried)
{
    check_commit_fault("commit=busy:3", 3, "lock|busy");
}

Test(faults, io_errors_are_retried)
{
    check_commit_fault("commit=ioerr:2", 2, "I/O|ioerr");
}

Test(faults, disk_full_is_retried)
{
    check_commit_fault("commit=full:1", 1, "full");
}

Test(faults, faults_start_after_successful_writes)
{
    /* Five commits go through, the next two fail, then all is well again. */
    cr_assert_eq(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    fsrv f;
    fsrv_start(&f, "commit=ioerr:2,after=5", NULL);
    for (int i = 0; i < 10; i++) {
        char node[16];
        snprintf(node, sizeof node, "n%d", i);
        fsrv_post(&f, "aft", node, "?wait=true&timeout=25", "{\"status\":\"running\"}", 200);
        cr_assert_eq(fsrv_stat(&f, "errors"), i < 5 ? 0 : 2, "errors after durable POST %d", i);
    }
    cr_assert_eq(fsrv_stat(&f, "batches_written"), 10);
    cr_assert(fsrv_log_contains(&f, "msg=commit-failed"));
    cr_assert_eq(fsrv_db_int(&f, "SELECT count(*) FROM run_node_state WHERE run_id='aft'"), 10);
    cr_assert_eq(fsrv_stop(&f, SIGTERM), 0);
    fsrv_free(&f);
    curl_global_cleanup();
}

Test(faults, unwritable_row_is_isolated_and_the_batch_commits)
{
    cr_assert_eq(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    fsrv f;
    const char *const extra[] = { "--batch-interval", "60", NULL };
    fsrv_start(&f, "row=bad", extra);
    /* One batch: nothing commits until the durable POST of the last one. */
    fsrv_post(&f, "iso", "a", NULL, "{\"status\":\"running\",\"outputs\":1}", 202);
    fsrv_post(&f, "iso", "bad", NULL, "{\"status\":\"running\",\"outputs\":2}", 202);
    fsrv_post(&f, "iso", "c", NULL, "{\"status\":\"running\",\"outputs\":3}", 202);
    fsrv_post(&f, "other", "d", "?wait=true&timeout=25", "{\"status\":\"running\"}", 200);
    cr_assert(fsrv_wait_idle(&f, 30.0));

    cr_assert_eq(fsrv_stat(&f, "batches_written"), 1, "the batch was split or retried");
    cr_assert_eq(fsrv_stat(&f, "rows_isolated"), 1);
    char *line = log_line(&f, "msg=row-isolated");
    cr_assert_not_null(line, "no msg=row-isolated in the log");
    cr_assert(strstr(line, "node_id=bad") != NULL, "the log line does not name the row: %s",
              line);
    fprintf(stderr, "it_faults: %s\n", line);
    free(line);
    cr_assert_eq(fsrv_db_int(&f, "SELECT count(*) FROM run_node_state WHERE "
                                 "(run_id='iso' AND node_id IN ('a','c')) OR "
                                 "(run_id='other' AND node_id='d')"), 3);
    cr_assert_eq(fsrv_db_int(&f, "SELECT count(*) FROM run_node_state WHERE node_id='bad'"), 0);

    /* Not retried forever: it stays counted once while the server goes on. */
    for (int i = 0; i < 5; i++) {
        char node[16];
        snprintf(node, sizeof node, "later%d", i);
        fsrv_post(&f, "iso", node, "?wait=true&timeout=25", "{\"status\":\"running\"}", 200);
    }
    cr_assert_eq(fsrv_stat(&f, "rows_isolated"), 1);
    cr_assert_eq(fsrv_db_int(&f, "SELECT count(*) FROM run_node_state WHERE run_id='iso'"), 7);
    ns_resp r = { 0 };
    cr_assert_eq(fsrv_req(&f, "GET", "/readyz", NULL, &r), 0);
    cr_assert_eq(r.status, 200, "/readyz: %ld %s", r.status, r.body);
    cr_assert_eq(fsrv_req(&f, "GET", "/healthz", NULL, &r), 0);
    cr_assert_eq(r.status, 200, "/healthz: %ld %s", r.status, r.body);
    ns_resp_free(&r);
    cr_assert_eq(fsrv_stop(&f, SIGTERM), 0);
    fsrv_free(&f);
    curl_global_cleanup();
}
