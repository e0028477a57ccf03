#include "bench_server.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

/* Polling step of the start and stop waits. */
#define BENCH_POLL_MS 20
/* Lines of the service's log shown when it fails. */
#define BENCH_TAIL_LINES 20
/* Longest log line looked at; a longer one is read in pieces. */
#define BENCH_LINE_MAX 2048

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

/* ---- the machine --------------------------------------------------------- */

void bench_print_machine(void)
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
    printf(", sqlite %s, libcurl %s\n", sqlite3_libversion(),
           curl_version_info(CURLVERSION_NOW)->version);
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

/* ---- the service --------------------------------------------------------- */

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

/* ---- HTTP ---------------------------------------------------------------- */

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
