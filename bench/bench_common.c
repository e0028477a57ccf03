#include "bench_common.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "model.h"
#include "store.h"

/* Polling step of the start and stop waits. */
#define BENCH_POLL_MS 20
/* Lines of the service's log shown when it fails. */
#define BENCH_TAIL_LINES 20
/* Longest log line looked at; a longer one is read in pieces. */
#define BENCH_LINE_MAX 2048

/* ---- the command line --------------------------------------------------- */

static const bench_opt *bench_find_opt(const bench_opt *opts, size_t n_opts,
                                       const char *name)
{
    for (size_t i = 0; i < n_opts; i++)
        if (strcmp(opts[i].name, name) == 0)
            return &opts[i];
    return NULL;
}

/* An unsigned decimal integer in [min, max] into *out; 0 or -1 printed. */
static int bench_parse_uint(const char *prog, const bench_opt *opt,
                            const char *v, uint64_t *out)
{
    uint64_t max = opt->max;
    char *end;
    unsigned long long n;

    if (max == BENCH_NO_MAX && opt->kind != BENCH_OPT_U64)
        max = opt->kind == BENCH_OPT_SIZE ? SIZE_MAX / 8 : UINT_MAX;
    errno = 0;
    n = strtoull(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || v[0] == '-' || n < opt->min
        || n > max) {
        if (opt->max == BENCH_NO_MAX)
            fprintf(stderr, "%s: %s wants an integer >= %" PRIu64 ", got "
                    "\"%s\"\n", prog, opt->name, opt->min, v);
        else
            fprintf(stderr, "%s: %s wants an integer in [%" PRIu64 ", %"
                    PRIu64 "], got \"%s\"\n", prog, opt->name, opt->min,
                    opt->max, v);
        return -1;
    }
    *out = n;
    return 0;
}

/* Stores v in opt's destination. 0, or -1 with the reason printed. */
static int bench_set_opt(const char *prog, const bench_opt *opt,
                         const char *v)
{
    uint64_t n;
    char *end;
    double d;

    switch (opt->kind) {
    case BENCH_OPT_FLAG:
        *(bool *)opt->dst = true;
        return 0;
    case BENCH_OPT_STRING:
        *(const char **)opt->dst = v;
        return 0;
    case BENCH_OPT_PATH:
        snprintf(opt->dst, PATH_MAX, "%s", v);
        return 0;
    case BENCH_OPT_ARG_LIST: {
        bench_arg_list *l = opt->dst;

        if (l->n == BENCH_MAX_SERVER_ARGS) {
            fprintf(stderr, "%s: at most %d %s\n", prog,
                    BENCH_MAX_SERVER_ARGS, opt->name);
            return -1;
        }
        l->args[l->n++] = v;
        return 0;
    }
    case BENCH_OPT_SYNC:
        if (strcmp(v, "normal") == 0)
            *(int *)opt->dst = BENCH_SYNC_NORMAL;
        else if (strcmp(v, "full") == 0)
            *(int *)opt->dst = BENCH_SYNC_FULL;
        else if (strcmp(v, "both") == 0)
            *(int *)opt->dst = BENCH_SYNC_NORMAL | BENCH_SYNC_FULL;
        else {
            fprintf(stderr, "%s: %s wants normal, full or both, got \"%s\"\n",
                    prog, opt->name, v);
            return -1;
        }
        return 0;
    case BENCH_OPT_UNSIGNED:
    case BENCH_OPT_SIZE:
    case BENCH_OPT_U64:
        if (bench_parse_uint(prog, opt, v, &n) != 0)
            return -1;
        /* max fits the destination: BENCH_NO_MAX is clamped above, and
         * the programs' own bounds are smaller. */
        if (opt->kind == BENCH_OPT_UNSIGNED)
            *(unsigned *)opt->dst = (unsigned)n;
        else if (opt->kind == BENCH_OPT_SIZE)
            *(size_t *)opt->dst = (size_t)n;
        else
            *(uint64_t *)opt->dst = n;
        return 0;
    case BENCH_OPT_NUMBER:
        errno = 0;
        d = strtod(v, &end);
        if (errno != 0 || end == v || *end != '\0'
            || !(d >= opt->lo && d <= opt->hi)) {
            fprintf(stderr, "%s: %s wants a number in [%g, %g], got \"%s\"\n",
                    prog, opt->name, opt->lo, opt->hi, v);
            return -1;
        }
        *(double *)opt->dst = d;
        return 0;
    }
    return -1;
}

int bench_parse_args(const char *prog, const bench_opt *opts, size_t n_opts,
                     void (*usage)(FILE *out), int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const bench_opt *opt;

        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 1;
        }
        opt = bench_find_opt(opts, n_opts, a);
        if (opt == NULL) {
            fprintf(stderr, "%s: unknown option %s\n", prog, a);
            usage(stderr);
            return -1;
        }
        if (opt->kind == BENCH_OPT_FLAG) {
            if (bench_set_opt(prog, opt, NULL) != 0)
                return -1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "%s: %s needs a value\n", prog, a);
            return -1;
        }
        if (bench_set_opt(prog, opt, argv[++i]) != 0)
            return -1;
    }
    return 0;
}

const char *bench_default_dir(void)
{
    const char *tmp = getenv("TMPDIR");

    return tmp != NULL ? tmp : "/tmp";
}

int bench_make_dir(const char *prog, const char *parent, char *out,
                   size_t size)
{
    snprintf(out, size, "%s/%s.XXXXXX", parent, prog);
    if (mkdtemp(out) == NULL) {
        fprintf(stderr, "%s: mkdtemp %s: %s\n", prog, out, strerror(errno));
        return -1;
    }
    return 0;
}

/* ---- the clock ---------------------------------------------------------- */

uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void bench_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ---- the machine and files ---------------------------------------------- */

void bench_print_machine(bool with_libcurl)
{
    char model[256] = "unknown", line[512];
    struct utsname u;
    FILE *f = fopen("/proc/cpuinfo", "r");

    while (f != NULL && fgets(line, sizeof line, f) != NULL) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon != NULL) {
            colon++;
            while (*colon == ' ' || *colon == '\t')
                colon++;
            colon[strcspn(colon, "\n")] = '\0';
            snprintf(model, sizeof model, "%s", colon);
            break;
        }
    }
    if (f != NULL)
        fclose(f);
    printf("machine: nproc %ld, cpu \"%s\"", sysconf(_SC_NPROCESSORS_ONLN),
           model);
    if (uname(&u) == 0)
        printf(", kernel %s %s %s", u.sysname, u.release, u.machine);
    printf(", sqlite %s", sqlite3_libversion());
    if (with_libcurl)
        printf(", libcurl %s", curl_version_info(CURLVERSION_NOW)->version);
    printf("\n");
}

void bench_default_server(char *out, size_t size)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    char *slash;

    snprintf(out, size, "nodestate");
    if (n <= 0)
        return;
    self[n] = '\0';
    slash = strrchr(self, '/');
    if (slash == NULL)
        return;
    *slash = '\0';
    snprintf(out, size, "%.*s/../nodestate", (int)(size - 16), self);
}

void bench_remove_db(const char *db_path)
{
    char side[PATH_MAX + 8];

    unlink(db_path);
    snprintf(side, sizeof side, "%s-wal", db_path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", db_path);
    unlink(side);
}

/* ---- direct SQLite ------------------------------------------------------ */

/* The full-row upsert each worker of the old design committed. */
static const char bench_upsert_sql[] =
    "INSERT INTO run_node_state (run_id, node_id, status, attempt,"
    " scheduled_at, started_at, completed_at, failed_at, suspended_at,"
    " last_error, retryable, suspension_reason, resume_state_json,"
    " outputs_json, updated_at, seq)"
    " VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, NULL, NULL, NULL, 0, NULL, NULL,"
    " NULL, ?7, ?8)"
    " ON CONFLICT (run_id, node_id) DO UPDATE SET"
    " status = excluded.status, attempt = excluded.attempt,"
    " scheduled_at = excluded.scheduled_at, started_at = excluded.started_at,"
    " completed_at = excluded.completed_at, failed_at = excluded.failed_at,"
    " suspended_at = excluded.suspended_at, last_error = excluded.last_error,"
    " retryable = excluded.retryable,"
    " suspension_reason = excluded.suspension_reason,"
    " resume_state_json = excluded.resume_state_json,"
    " outputs_json = excluded.outputs_json,"
    " updated_at = excluded.updated_at, seq = excluded.seq";

int bench_direct_init(const char *prog, const char *path, bool sync_full)
{
    char err[512];
    store *s = store_open(path, sync_full, err, sizeof err);

    if (s == NULL) {
        fprintf(stderr, "%s: %s\n", prog, err);
        return -1;
    }
    store_close(s);
    return 0;
}

int bench_direct_open(const char *path, bool sync_full, sqlite3 **db,
                      sqlite3_stmt **upsert)
{
    if (sqlite3_open_v2(path, db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK
        || sqlite3_busy_timeout(*db, 5000) != SQLITE_OK
        || sqlite3_exec(*db, sync_full ? "PRAGMA synchronous = FULL"
                                       : "PRAGMA synchronous = NORMAL",
                        NULL, NULL, NULL) != SQLITE_OK
        || sqlite3_prepare_v2(*db, bench_upsert_sql, -1, upsert, NULL)
               != SQLITE_OK)
        return -1;
    return 0;
}

/* Binds an optional timestamp: NS_TS_NULL is SQL NULL. */
static int bench_bind_ts(sqlite3_stmt *st, int idx, int64_t ms)
{
    char buf[NS_TS_BUF];

    if (ms == NS_TS_NULL)
        return sqlite3_bind_null(st, idx);
    model_ts_format(ms, buf);
    return sqlite3_bind_text(st, idx, buf, -1, SQLITE_TRANSIENT);
}

int bench_direct_bind(sqlite3_stmt *upsert, const char *run, const char *node,
                      const char *status, const int64_t ts[3], int64_t now,
                      int64_t seq)
{
    int rc;

    if ((rc = sqlite3_bind_text(upsert, 1, run, -1, SQLITE_TRANSIENT))
            != SQLITE_OK
        || (rc = sqlite3_bind_text(upsert, 2, node, -1, SQLITE_TRANSIENT))
               != SQLITE_OK
        || (rc = sqlite3_bind_text(upsert, 3, status, -1, SQLITE_STATIC))
               != SQLITE_OK
        || (rc = bench_bind_ts(upsert, 4, ts[0])) != SQLITE_OK
        || (rc = bench_bind_ts(upsert, 5, ts[1])) != SQLITE_OK
        || (rc = bench_bind_ts(upsert, 6, ts[2])) != SQLITE_OK
        || (rc = bench_bind_ts(upsert, 7, now)) != SQLITE_OK)
        return rc;
    return sqlite3_bind_int64(upsert, 8, seq);
}

/* ---- the service -------------------------------------------------------- */

int bench_check_server(const char *prog, const char *server)
{
    if (access(server, X_OK) == 0)
        return 0;
    fprintf(stderr, "%s: %s: %s (use --server)\n", prog, server,
            strerror(errno));
    return -1;
}

size_t bench_server_argv(const char **argv, const char *server,
                         const char *db_path, const char *const *extra,
                         size_t n_extra, const bench_arg_list *args)
{
    size_t argc = 0;

    argv[argc++] = server;
    argv[argc++] = "--listen";
    argv[argc++] = "127.0.0.1:0";
    argv[argc++] = "--db";
    argv[argc++] = db_path;
    for (size_t i = 0; i < n_extra; i++)
        argv[argc++] = extra[i];
    for (size_t i = 0; i < args->n; i++)
        argv[argc++] = args->args[i];
    argv[argc] = NULL;
    return argc;
}

/* Finds addr= on the msg=listening line of the log; 0 when found. */
static int bench_read_addr(const char *log_path, char *addr, size_t size)
{
    char line[BENCH_LINE_MAX];
    FILE *f = fopen(log_path, "r");
    int rc = -1;

    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f) != NULL) {
        const char *a;
        size_t n;

        if (strstr(line, "msg=listening") == NULL
            || (a = strstr(line, "addr=")) == NULL)
            continue;
        a += 5;
        n = strcspn(a, " \t\r\n\"");
        if (n == 0 || n >= size)
            continue;
        memcpy(addr, a, n);
        addr[n] = '\0';
        rc = 0;
        break;
    }
    fclose(f);
    return rc;
}

static bool bench_log_has(const char *log_path, const char *needle)
{
    char line[BENCH_LINE_MAX];
    FILE *f = fopen(log_path, "r");
    bool found = false;

    while (f != NULL && !found && fgets(line, sizeof line, f) != NULL)
        found = strstr(line, needle) != NULL;
    if (f != NULL)
        fclose(f);
    return found;
}

static void bench_print_log_tail(const char *log_path)
{
    char tail[BENCH_TAIL_LINES][BENCH_LINE_MAX];
    char line[BENCH_LINE_MAX];
    size_t n = 0;
    FILE *f = fopen(log_path, "r");

    if (f == NULL)
        return;
    while (fgets(line, sizeof line, f) != NULL)
        snprintf(tail[n++ % BENCH_TAIL_LINES], sizeof tail[0], "%s", line);
    fclose(f);
    for (size_t i = n > BENCH_TAIL_LINES ? n - BENCH_TAIL_LINES : 0; i < n; i++)
        fprintf(stderr, "  | %s", tail[i % BENCH_TAIL_LINES]);
}

int bench_server_start(bench_server *srv, const char *prog,
                       const char *const *argv, int start_limit_ms)
{
    pid_t pid;

    srv->pid = 0;
    srv->addr[0] = '\0';
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0) {
        fprintf(stderr, "%s: fork: %s\n", prog, strerror(errno));
        return -1;
    }
    if (pid == 0) {
        int log = open(srv->log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int null = open("/dev/null", O_RDWR);

        if (log < 0 || null < 0 || dup2(log, STDERR_FILENO) < 0
            || dup2(null, STDOUT_FILENO) < 0 || dup2(null, STDIN_FILENO) < 0)
            _exit(126);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    srv->pid = pid;
    for (int waited = 0; waited < start_limit_ms; waited += BENCH_POLL_MS) {
        int status;

        if (bench_read_addr(srv->log_path, srv->addr, sizeof srv->addr) == 0)
            return 0;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            srv->pid = 0;
            fprintf(stderr, "%s: %s exited before listening (status %d); "
                    "its log:\n", prog, argv[0], status);
            bench_print_log_tail(srv->log_path);
            return -1;
        }
        bench_sleep_ms(BENCH_POLL_MS);
    }
    fprintf(stderr, "%s: %s did not log msg=listening within %d ms; "
            "its log:\n", prog, argv[0], start_limit_ms);
    bench_print_log_tail(srv->log_path);
    bench_server_kill(srv);
    return -1;
}

int bench_server_stop(bench_server *srv, const char *prog, int stop_limit_ms)
{
    int status = 0;

    if (srv->pid <= 0)
        return -1;
    kill(srv->pid, SIGTERM);
    for (int waited = 0;; waited += BENCH_POLL_MS) {
        pid_t r = waitpid(srv->pid, &status, WNOHANG);

        if (r == srv->pid)
            break;
        if (r < 0 && errno != EINTR) {
            srv->pid = 0;
            return -1;
        }
        if (waited >= stop_limit_ms) {
            fprintf(stderr, "%s: the service ignored SIGTERM for %d ms, "
                    "killing it\n", prog, stop_limit_ms);
            bench_server_kill(srv);
            return -1;
        }
        bench_sleep_ms(BENCH_POLL_MS);
    }
    srv->pid = 0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0
        || !bench_log_has(srv->log_path, "msg=stopped")) {
        fprintf(stderr, "%s: the service did not stop cleanly (wait status "
                "%d); its log:\n", prog, status);
        bench_print_log_tail(srv->log_path);
        return -1;
    }
    return 0;
}

void bench_server_kill(bench_server *srv)
{
    if (srv->pid <= 0)
        return;
    kill(srv->pid, SIGKILL);
    while (waitpid(srv->pid, NULL, 0) < 0 && errno == EINTR)
        ;
    srv->pid = 0;
}

/* ---- HTTP --------------------------------------------------------------- */

static size_t bench_on_body(char *ptr, size_t size, size_t nmemb, void *ctx)
{
    bench_body *b = ctx;
    size_t n = size * nmemb;
    size_t room = sizeof b->data - 1 - b->len;
    size_t take = n < room ? n : room;

    /* Only the start of a body is looked at; the rest is dropped, not an
     * error, so a large answer never aborts a request. */
    memcpy(b->data + b->len, ptr, take);
    b->len += take;
    b->data[b->len] = '\0';
    return n;
}

CURL *bench_curl_new(bench_body *body, struct curl_slist *headers,
                     long timeout_s)
{
    CURL *c = curl_easy_init();

    if (c == NULL)
        return NULL;
    if (curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L) != CURLE_OK
        || curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L) != CURLE_OK
        || curl_easy_setopt(c, CURLOPT_TIMEOUT, timeout_s) != CURLE_OK
        || curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, bench_on_body)
               != CURLE_OK
        || curl_easy_setopt(c, CURLOPT_WRITEDATA, body) != CURLE_OK
        || (headers != NULL
            && curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers) != CURLE_OK)) {
        curl_easy_cleanup(c);
        return NULL;
    }
    return c;
}

struct curl_slist *bench_json_headers(void)
{
    struct curl_slist *h = curl_slist_append(NULL,
                                             "Content-Type: application/json");
    struct curl_slist *both;

    if (h == NULL)
        return NULL;
    /* No Expect: 100-continue round trip before each small body. */
    both = curl_slist_append(h, "Expect:");
    if (both == NULL)
        curl_slist_free_all(h);
    return both;
}

int64_t bench_get_stat(CURL *c, bench_body *body, const char *base,
                       const char *key)
{
    char url[256], pat[64];
    long code = 0;
    const char *p;

    snprintf(url, sizeof url, "%s/stats?format=json", base);
    body->len = 0;
    body->data[0] = '\0';
    if (curl_easy_setopt(c, CURLOPT_URL, url) != CURLE_OK
        || curl_easy_setopt(c, CURLOPT_HTTPGET, 1L) != CURLE_OK
        || curl_easy_perform(c) != CURLE_OK
        || curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code) != CURLE_OK
        || code != 200)
        return -1;
    snprintf(pat, sizeof pat, "\"%s\":", key);
    p = strstr(body->data, pat);
    if (p == NULL)
        return -1;
    return strtoll(p + strlen(pat), NULL, 10);
}

int bench_wait_drained(CURL *c, bench_body *body, const char *base,
                       int limit_ms)
{
    for (int waited = 0; waited < limit_ms; waited += 100) {
        int64_t last = bench_get_stat(c, body, base, "last_seq");
        int64_t durable = bench_get_stat(c, body, base, "durable_seq");

        if (last >= 0 && durable >= last)
            return 0;
        bench_sleep_ms(100);
    }
    return -1;
}
