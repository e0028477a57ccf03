/*
 * memory_bench: resident memory per cached node of the real binary.
 *
 * Starts nodestate (with --cache-max-nodes above the node count when the
 * binary has that option, so nothing is evicted), reads its VmRSS from
 * /proc/<pid>/status, then fills --nodes distinct nodes over HTTP: --threads
 * client threads, each with its own keep-alive libcurl handle, post one
 * {"status":"scheduled"} per node, the nodes spread evenly over --runs runs
 * (the engine keeps every node of a cached run in memory). Once the queue is
 * drained to disk (durable_seq caught up with last_seq) and --settle seconds
 * have passed, VmRSS is read again. The difference divided by the nodes the
 * cache holds (cache_nodes from /stats) is the memory per cached node; it
 * includes the cache's indexes and whatever the allocator keeps from the
 * fill (queue entries, HTTP buffers), so it is an upper bound on the node's
 * own footprint.
 *
 * The service is then stopped with SIGTERM and its file must hold every node
 * that was accepted. The exit status is 0 only when that check passed and
 * the service stopped cleanly.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>
#include <sqlite3.h>

#include "bench_common.h"
/* How long the service may take to log its address after starting. */
#define MB_START_LIMIT_MS 10000
/* How long the service may take to flush and exit after SIGTERM. */
#define MB_STOP_LIMIT_MS 300000
/* How long the queue may take to drain after the fill. */
#define MB_DRAIN_LIMIT_MS 300000
/* Transport timeout of one request. */
#define MB_REQUEST_TIMEOUT_S 60L
/* Pause after a 503 (queue full) before posting the node again. */
#define MB_BACKOFF_MS 20
/* The --help output read to learn whether the binary has an option. */
#define MB_HELP_MAX 65536

typedef struct mb_opts {
    char server[PATH_MAX];
    bench_arg_list server_args;
    uint64_t nodes;
    unsigned runs;
    unsigned threads;
    uint64_t cache_max_nodes;  /* passed as --cache-max-nodes; 0: never */
    double settle;             /* seconds between drain and the RSS reading */
    const char *dir;
    bool keep;
} mb_opts;

typedef struct mb_shared {
    const mb_opts *o;
    char base_url[128];
    _Atomic uint64_t next;     /* next node index to post */
    _Atomic bool abort;        /* a client gave up: stop the others */
} mb_shared;

typedef struct mb_client {
    mb_shared *sh;
    uint64_t accepted;         /* 2xx */
    uint64_t retries;          /* 503 answers waited out */
    uint64_t failures;         /* other answers and transport errors */
    pthread_t thread;
} mb_client;

/* What /proc/<pid>/status says, in kB; -1 where a line was missing. */
typedef struct mb_mem {
    long rss_kb, anon_kb, hwm_kb;
} mb_mem;

static int mb_read_mem(pid_t pid, mb_mem *m)
{
    char path[64], line[256];
    FILE *f;

    m->rss_kb = m->anon_kb = m->hwm_kb = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "VmRSS:", 6) == 0)
            m->rss_kb = strtol(line + 6, NULL, 10);
        else if (strncmp(line, "RssAnon:", 8) == 0)
            m->anon_kb = strtol(line + 8, NULL, 10);
        else if (strncmp(line, "VmHWM:", 6) == 0)
            m->hwm_kb = strtol(line + 6, NULL, 10);
    }
    fclose(f);
    return m->rss_kb >= 0 ? 0 : -1;
}

/* ---- the service --------------------------------------------------------- */

/* Whether `server --help` mentions option (e.g. "--cache-max-nodes"). */
static bool mb_server_has(const char *server, const char *option)
{
    static char help[MB_HELP_MAX];
    int fds[2];
    size_t len = 0;
    ssize_t n;
    pid_t pid;

    if (pipe(fds) != 0)
        return false;
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return false;
    }
    if (pid == 0) {
        if (dup2(fds[1], STDOUT_FILENO) < 0 || dup2(fds[1], STDERR_FILENO) < 0)
            _exit(126);
        close(fds[0]);
        execl(server, server, "--help", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    while (len < sizeof help - 1
           && ((n = read(fds[0], help + len, sizeof help - 1 - len)) > 0
               || (n < 0 && errno == EINTR)))
        if (n > 0)
            len += (size_t)n;
    help[len] = '\0';
    close(fds[0]);
    waitpid(pid, NULL, 0);
    return strstr(help, option) != NULL;
}

/* Starts the service on 127.0.0.1:0 with db_path, printing its command. */
static int mb_server_start(bench_server *srv, const mb_opts *o,
                           const char *db_path, bool cache_flag)
{
    const char *argv[BENCH_MAX_SERVER_ARGS + 10];
    char cache_max[32];
    const char *cache[2] = {"--cache-max-nodes", cache_max};
    size_t argc;

    snprintf(cache_max, sizeof cache_max, "%" PRIu64, o->cache_max_nodes);
    argc = bench_server_argv(argv, o->server, db_path, cache,
                             cache_flag ? 2 : 0, &o->server_args);

    printf("service:");
    for (size_t i = 0; i < argc; i++)
        printf(" %s", argv[i]);
    printf("\n");
    return bench_server_start(srv, "memory_bench", argv, MB_START_LIMIT_MS);
}

/* ---- the client threads ------------------------------------------------ */

/*
 * Takes node indexes from the shared counter until all are posted; a 503
 * (queue full) is waited out and the same node posted again, any other
 * failure is counted and stops every client.
 */
static void *mb_client_main(void *arg)
{
    mb_client *cl = arg;
    const mb_opts *o = cl->sh->o;
    static const char body_text[] = "{\"status\":\"scheduled\"}";
    struct curl_slist *headers = bench_json_headers();
    bench_body *body = malloc(sizeof *body);
    char url[256];
    CURL *c = NULL;

    if (body == NULL || headers == NULL
        || (c = bench_curl_new(body, headers, MB_REQUEST_TIMEOUT_S)) == NULL
        || curl_easy_setopt(c, CURLOPT_POSTFIELDS, body_text) != CURLE_OK) {
        fprintf(stderr, "memory_bench: cannot set up a client\n");
        cl->failures++;
        atomic_store(&cl->sh->abort, true);
        goto out;
    }
    while (!atomic_load(&cl->sh->abort)) {
        uint64_t i = atomic_fetch_add(&cl->sh->next, 1);
        long code = 0;
        CURLcode cc;

        if (i >= o->nodes)
            break;
        /* Runs hold consecutive blocks of nodes, like a real run would. */
        snprintf(url, sizeof url, "%s/runs/mbench-%" PRIu64 "/nodes/n%"
                 PRIu64 "/state", cl->sh->base_url,
                 i / ((o->nodes + o->runs - 1) / o->runs), i);
        for (;;) {
            body->len = 0;
            body->data[0] = '\0';
            /* POSTFIELDS stays set; CURLOPT_POST re-arms it after a GET. */
            cc = curl_easy_setopt(c, CURLOPT_URL, url);
            if (cc == CURLE_OK)
                cc = curl_easy_setopt(c, CURLOPT_POST, 1L);
            if (cc == CURLE_OK)
                cc = curl_easy_perform(c);
            if (cc == CURLE_OK)
                cc = curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
            if (cc != CURLE_OK || code != 503)
                break;
            cl->retries++;
            bench_sleep_ms(MB_BACKOFF_MS);
        }
        if (cc == CURLE_OK && code >= 200 && code < 300) {
            cl->accepted++;
            continue;
        }
        if (cc != CURLE_OK)
            fprintf(stderr, "memory_bench: %s: %s\n", url,
                    curl_easy_strerror(cc));
        else
            fprintf(stderr, "memory_bench: %s: HTTP %ld: %.200s\n", url, code,
                    body->data);
        cl->failures++;
        atomic_store(&cl->sh->abort, true);
    }
out:
    curl_easy_cleanup(c);
    curl_slist_free_all(headers);
    free(body);
    return NULL;
}

static int64_t mb_count_rows(const char *path)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t n = -1;

    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK
        && sqlite3_prepare_v2(db, "SELECT count(*) FROM run_node_state", -1,
                              &st, NULL) == SQLITE_OK
        && sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    else
        fprintf(stderr, "memory_bench: %s: %s\n", path,
                db ? sqlite3_errmsg(db) : "out of memory");
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

/* ---- the program --------------------------------------------------------- */

static void mb_usage(FILE *out)
{
    fprintf(out,
            "usage: memory_bench [options]\n"
            "  --server PATH          nodestate binary (default: ../nodestate beside this program)\n"
            "  --server-arg ARG       one more argument for the service (repeatable)\n"
            "  --nodes N              nodes to fill, default 1000000\n"
            "  --runs N               runs they are spread over, default 100\n"
            "  --threads N            client threads, default 8\n"
            "  --cache-max-nodes N    passed to the service if it has the option,\n"
            "                         default 2000000; 0 never passes it\n"
            "  --settle S             seconds between drain and reading RSS, default 2\n"
            "  --dir DIR              where the files go (TMPDIR or /tmp)\n"
            "  --keep                 keep the database file and service log\n");
}

/* Parses argv over the defaults in o; 0 to run, 1 after --help, -1 on error. */
static int mb_parse(mb_opts *o, int argc, char **argv)
{
    const bench_opt opts[] = {
        {"--server", BENCH_OPT_PATH, o->server, 0, 0, 0, 0},
        {"--server-arg", BENCH_OPT_ARG_LIST, &o->server_args, 0, 0, 0, 0},
        {"--nodes", BENCH_OPT_U64, &o->nodes, 1, 100000000, 0, 0},
        {"--runs", BENCH_OPT_UNSIGNED, &o->runs, 1, 1000000, 0, 0},
        {"--threads", BENCH_OPT_UNSIGNED, &o->threads, 1, 1024, 0, 0},
        {"--cache-max-nodes", BENCH_OPT_U64, &o->cache_max_nodes, 0,
         UINT64_MAX / 2, 0, 0},
        {"--settle", BENCH_OPT_NUMBER, &o->settle, 0, 0, 0, 600},
        {"--dir", BENCH_OPT_STRING, &o->dir, 0, 0, 0, 0},
        {"--keep", BENCH_OPT_FLAG, &o->keep, 0, 0, 0, 0},
    };

    return bench_parse_args("memory_bench", opts, sizeof opts / sizeof opts[0],
                            mb_usage, argc, argv);
}

int main(int argc, char **argv)
{
    mb_opts o = {
        .nodes = 1000000,
        .runs = 100,
        .threads = 8,
        .cache_max_nodes = 2000000,
        .settle = 2,
    };
    mb_shared sh = {.o = &o};
    bench_server srv = {0};
    mb_client *cls = NULL;
    bench_body *body = malloc(sizeof *body);
    char dir[PATH_MAX] = "", db_path[PATH_MAX] = "";
    mb_mem before, after;
    unsigned started = 0;
    uint64_t accepted = 0, retries = 0, failures = 0, t0, t1;
    int64_t cached = -1, cached_runs = -1, evictions = -1, rows = -1;
    bool cache_flag;
    CURL *c = NULL;
    int rc = 1;

    bench_default_server(o.server, sizeof o.server);
    o.dir = bench_default_dir();
    switch (mb_parse(&o, argc, argv)) {
    case 1:
        free(body);
        return 0;
    case -1:
        free(body);
        return 2;
    }
    if (bench_check_server("memory_bench", o.server) != 0) {
        free(body);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    atomic_init(&sh.next, 0);
    atomic_init(&sh.abort, false);
    if (body == NULL || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "memory_bench: cannot initialise libcurl\n");
        free(body);
        return 1;
    }
    if (bench_make_dir("memory_bench", o.dir, dir, sizeof dir) != 0)
        goto out;
    snprintf(db_path, sizeof db_path, "%s/memory.db", dir);
    snprintf(srv.log_path, sizeof srv.log_path, "%s/memory.log", dir);

    printf("nodestate memory_bench\n");
    bench_print_machine(true);
    printf("workload: %" PRIu64 " nodes, one POST {\"status\":\"scheduled\"} "
           "each, %u runs, %u keep-alive client threads\n", o.nodes, o.runs,
           o.threads);
    cache_flag = o.cache_max_nodes > 0
                 && mb_server_has(o.server, "--cache-max-nodes");
    if (o.cache_max_nodes > 0 && !cache_flag)
        printf("note: %s has no --cache-max-nodes; running with its default "
               "cache bound, which may evict (see cache_nodes below)\n",
               o.server);
    if ((cls = calloc(o.threads, sizeof *cls)) == NULL
        || (c = bench_curl_new(body, NULL, MB_REQUEST_TIMEOUT_S)) == NULL)
        goto out;
    if (mb_server_start(&srv, &o, db_path, cache_flag) != 0)
        goto out;
    snprintf(sh.base_url, sizeof sh.base_url, "http://%s", srv.addr);
    /* Let start-up finish before the baseline is read. */
    bench_sleep_ms(500);
    if (bench_get_stat(c, body, sh.base_url, "cache_nodes") < 0
        || mb_read_mem(srv.pid, &before) != 0) {
        fprintf(stderr, "memory_bench: cannot read the service's stats or "
                "/proc/%d/status\n", (int)srv.pid);
        goto out;
    }

    t0 = bench_now_ns();
    for (; started < o.threads; started++) {
        cls[started].sh = &sh;
        if (pthread_create(&cls[started].thread, NULL, mb_client_main,
                           &cls[started]) != 0)
            break;
    }
    if (started < o.threads) {
        fprintf(stderr, "memory_bench: cannot start client threads\n");
        atomic_store(&sh.abort, true);
    }
    for (unsigned i = 0; i < started; i++) {
        pthread_join(cls[i].thread, NULL);
        accepted += cls[i].accepted;
        retries += cls[i].retries;
        failures += cls[i].failures;
    }
    t1 = bench_now_ns();
    printf("fill: %" PRIu64 " accepted in %.1f s (%.0f/s), %" PRIu64
           " queue-full retries, %" PRIu64 " failures\n", accepted,
           (double)(t1 - t0) / 1e9,
           (double)accepted / ((double)(t1 - t0) / 1e9), retries, failures);
    fflush(stdout);
    if (started < o.threads || failures != 0)
        goto out;
    if (bench_wait_drained(c, body, sh.base_url, MB_DRAIN_LIMIT_MS) != 0) {
        fprintf(stderr, "memory_bench: the queue did not drain within %d "
                "ms\n", MB_DRAIN_LIMIT_MS);
        goto out;
    }
    bench_sleep_ms((long)(o.settle * 1000));
    cached = bench_get_stat(c, body, sh.base_url, "cache_nodes");
    cached_runs = bench_get_stat(c, body, sh.base_url, "cache_runs");
    evictions = bench_get_stat(c, body, sh.base_url, "cache_evictions");
    if (mb_read_mem(srv.pid, &after) != 0 || cached < 0) {
        fprintf(stderr, "memory_bench: cannot read the service's memory or "
                "stats after the fill\n");
        goto out;
    }
    if (bench_server_stop(&srv, "memory_bench", MB_STOP_LIMIT_MS) != 0)
        goto out;
    rows = mb_count_rows(db_path);

    long delta_kb = after.rss_kb - before.rss_kb;
    printf("\nVmRSS   before %8ld kB, after %8ld kB, delta %8ld kB\n",
           before.rss_kb, after.rss_kb, delta_kb);
    printf("RssAnon before %8ld kB, after %8ld kB\n", before.anon_kb,
           after.anon_kb);
    printf("VmHWM   after %8ld kB\n", after.hwm_kb);
    printf("cache: %" PRId64 " nodes in %" PRId64 " runs, %" PRId64
           " evictions\n", cached, cached_runs, evictions);
    printf("\n%-10s %12s %14s %16s\n", "nodes", "cached", "rss_delta_MiB",
           "bytes/cached_node");
    printf("%-10" PRIu64 " %12" PRId64 " %14.1f %16.0f\n", accepted, cached,
           (double)delta_kb / 1024.0,
           cached > 0 ? (double)delta_kb * 1024.0 / (double)cached : 0.0);
    if ((uint64_t)cached < accepted)
        printf("note: the cache holds fewer nodes than were posted; "
               "bytes/cached_node divides by the cached ones\n");
    bool ok = rows >= 0 && (uint64_t)rows == accepted;
    printf("check rows in the file %" PRId64 " vs accepted %" PRIu64 ": %s\n",
           rows, accepted, ok ? "OK" : "FAILED");
    rc = ok ? 0 : 1;
out:
    bench_server_kill(&srv);
    if (!o.keep && db_path[0] != '\0') {
        bench_remove_db(db_path);
        unlink(srv.log_path);
        rmdir(dir);
    }
    free(cls);
    curl_easy_cleanup(c);
    free(body);
    curl_global_cleanup();
    return rc;
}
