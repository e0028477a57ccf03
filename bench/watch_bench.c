/*
 * watch_bench: what watching runs costs the writers, and what idle event
 * streams cost the server, against the real binary, in one run.
 *
 *   writes   --writers threads, each with its own keep-alive libcurl handle,
 *            POST {"status":"running"} to new nodes spread over --runs runs
 *            for --duration seconds: their 2xx answers per second. Measured
 *            with no watcher ("none"), then with --watchers event streams
 *            open on the written runs (GET /runs/{run}/events, spread over
 *            the runs, read by one thread through a libcurl multi handle:
 *            "watched"), alternating --rounds times. It prints the ratio
 *            watched / none (target >= 0.8) and the events the streams got.
 *   idle     --idle streams opened on the runs and left idle: the server's
 *            resident memory (VmRSS) and thread count (/proc/PID/status)
 *            before and after, and the memory per stream.
 *
 * The load generator shares the machine's cores with the server (reading
 * the streams included), so the ratio is a floor. The numbers are printed,
 * not enforced; the exit status says whether every answer was 2xx, every
 * stream opened and the server stopped cleanly.
 */
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
#include <sys/resource.h>
#include <unistd.h>

#include <curl/curl.h>

#include "bench_common.h"

#define WB_START_LIMIT_MS 30000
#define WB_STOP_LIMIT_MS 120000
#define WB_REQUEST_TIMEOUT_S 60L
/* How long opening all the streams may take. */
#define WB_OPEN_LIMIT_MS 60000

typedef struct wb_opts {
    char server[PATH_MAX];
    bench_arg_list server_args;
    unsigned writers;
    unsigned runs;
    unsigned watchers;
    unsigned idle;
    unsigned rounds;
    double duration;
    const char *dir;
} wb_opts;

typedef struct wb_shared {
    const wb_opts *o;
    pid_t server;
    char base[128];
    _Atomic bool stop;
    _Atomic uint64_t failures;
} wb_shared;

typedef struct wb_writer {
    wb_shared *sh;
    unsigned index;
    unsigned round;           /* node ids differ per phase */
    uint64_t ok;
    pthread_t thread;
} wb_writer;

static void *wb_writer_main(void *arg)
{
    wb_writer *w = arg;
    bench_body *body = malloc(sizeof *body);
    struct curl_slist *hdrs = bench_json_headers();
    CURL *c = body && hdrs ? bench_curl_new(body, hdrs, WB_REQUEST_TIMEOUT_S) : NULL;
    const char *json = "{\"status\":\"running\"}";
    char url[256];

    if (!c) {
        atomic_fetch_add(&w->sh->failures, 1);
        goto out;
    }
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, json);
    for (uint64_t i = 0; !atomic_load(&w->sh->stop); i++) {
        long code = 0;
        snprintf(url, sizeof url, "%s/runs/r%03u/nodes/p%u-w%u-%" PRIu64 "/state", w->sh->base,
                 (unsigned)((i + w->index) % w->sh->o->runs), w->round, w->index, i);
        body->len = 0;
        if (curl_easy_setopt(c, CURLOPT_URL, url) != CURLE_OK || curl_easy_perform(c) != CURLE_OK
            || curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code) != CURLE_OK)
            code = 0;
        if (code / 100 == 2)
            w->ok++;
        else
            atomic_fetch_add(&w->sh->failures, 1);
    }
out:
    curl_easy_cleanup(c);
    curl_slist_free_all(hdrs);
    free(body);
    return NULL;
}

/* CPU seconds the process has used (user + system), from /proc/PID/stat. */
static double wb_cpu_seconds(pid_t pid)
{
    char path[64], buf[1024];
    unsigned long ut = 0, st = 0;
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    /* After the command's ")": state, then 10 fields, then utime and stime. */
    const char *p = strrchr(buf, ')');
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* One phase of writes: 2xx answers per second; *ok gets their number. */
static double wb_write_phase(wb_shared *sh, unsigned round, uint64_t *ok_out)
{
    const wb_opts *o = sh->o;
    wb_writer *ws = calloc(o->writers, sizeof *ws);
    uint64_t ok = 0;
    if (!ws)
        return 0;
    atomic_store(&sh->stop, false);
    uint64_t t0 = bench_now_ns();
    for (unsigned i = 0; i < o->writers; i++) {
        ws[i] = (wb_writer){ .sh = sh, .index = i, .round = round };
        pthread_create(&ws[i].thread, NULL, wb_writer_main, &ws[i]);
    }
    bench_sleep_ms((long)(o->duration * 1000));
    atomic_store(&sh->stop, true);
    for (unsigned i = 0; i < o->writers; i++) {
        pthread_join(ws[i].thread, NULL);
        ok += ws[i].ok;
    }
    double secs = (double)(bench_now_ns() - t0) / 1e9;
    free(ws);
    *ok_out = ok;
    return (double)ok / secs;
}

/* ---- streams: one thread, one multi handle ---- */

typedef struct wb_streams {
    wb_shared *sh;
    unsigned n;
    int64_t since;            /* the last seq when they open: no catch-up to read */
    _Atomic bool stop;
    _Atomic uint64_t bytes;
    _Atomic uint64_t events;  /* "event: node" lines */
    _Atomic uint64_t broken;  /* streams that ended or failed before the stop */
    pthread_t thread;
} wb_streams;

static size_t wb_stream_write(char *p, size_t size, size_t n, void *arg)
{
    wb_streams *st = arg;
    size_t len = size * n;
    atomic_fetch_add_explicit(&st->bytes, len, memory_order_relaxed);
    /* A node event is the only text with "t: n" in it (event: node); one split across reads goes uncounted. */
    for (size_t k = 0; k + 4 <= len; k++)
        if (p[k] == 't' && p[k + 1] == ':' && p[k + 2] == ' ' && p[k + 3] == 'n')
            atomic_fetch_add_explicit(&st->events, 1, memory_order_relaxed);
    return len;
}

static void *wb_streams_main(void *arg)
{
    wb_streams *st = arg;
    CURLM *m = curl_multi_init();
    CURL **hs = calloc(st->n, sizeof *hs);
    char url[256];
    if (!m || !hs) {
        atomic_fetch_add(&st->broken, st->n);
        goto out;
    }
    for (unsigned i = 0; i < st->n; i++) {
        snprintf(url, sizeof url, "%s/runs/r%03u/events?since=%" PRId64, st->sh->base,
                 i % st->sh->o->runs, st->since);
        hs[i] = curl_easy_init();
        if (!hs[i]) {
            atomic_fetch_add(&st->broken, 1);
            continue;
        }
        curl_easy_setopt(hs[i], CURLOPT_URL, url);
        curl_easy_setopt(hs[i], CURLOPT_WRITEFUNCTION, wb_stream_write);
        curl_easy_setopt(hs[i], CURLOPT_WRITEDATA, st);
        curl_easy_setopt(hs[i], CURLOPT_NOSIGNAL, 1L);
        curl_multi_add_handle(m, hs[i]);
    }
    int running = 1;
    while (!atomic_load(&st->stop)) {
        curl_multi_perform(m, &running);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(m, &left)) != NULL)
            if (msg->msg == CURLMSG_DONE)
                atomic_fetch_add(&st->broken, 1);
        curl_multi_poll(m, NULL, 0, 100, NULL);
    }
out:
    for (unsigned i = 0; hs && i < st->n; i++)
        if (hs[i]) {
            curl_multi_remove_handle(m, hs[i]);
            curl_easy_cleanup(hs[i]);
        }
    free(hs);
    curl_multi_cleanup(m);
    return NULL;
}

/* Opens n streams and waits until the server counts them all. 0 / -1. */
static int wb_streams_open(wb_streams *st, wb_shared *sh, unsigned n, CURL *c, bench_body *body)
{
    memset(st, 0, sizeof *st);
    st->sh = sh;
    st->n = n;
    st->since = bench_get_stat(c, body, sh->base, "last_seq");
    pthread_create(&st->thread, NULL, wb_streams_main, st);
    for (uint64_t t0 = bench_now_ns(); bench_now_ns() - t0 < WB_OPEN_LIMIT_MS * 1000000ull;) {
        if (bench_get_stat(c, body, sh->base, "watchers") >= (int64_t)n)
            return 0;
        bench_sleep_ms(50);
    }
    fprintf(stderr, "watch_bench: %u streams did not all open (watchers %" PRId64 ")\n", n,
            bench_get_stat(c, body, sh->base, "watchers"));
    return -1;
}

static void wb_streams_close(wb_streams *st)
{
    atomic_store(&st->stop, true);
    pthread_join(st->thread, NULL);
}

/* VmRSS (kB) and Threads of pid, from /proc. */
static void wb_proc(pid_t pid, long *rss_kb, long *threads)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    *rss_kb = *threads = -1;
    while (f && fgets(line, sizeof line, f)) {
        sscanf(line, "VmRSS: %ld", rss_kb);
        sscanf(line, "Threads: %ld", threads);
    }
    if (f)
        fclose(f);
}

static void wb_usage(FILE *out)
{
    fprintf(out,
            "usage: watch_bench [options]\n"
            "  --server PATH          the nodestate binary (default: next to this program)\n"
            "  --server-arg ARG       one more argument for the service (repeatable)\n"
            "  --writers N            writer threads, default 4\n"
            "  --runs N               runs written and watched, default 100\n"
            "  --watchers N           streams open while writing, default 100\n"
            "  --idle N               idle streams measured, default 1000\n"
            "  --rounds N             none/watched rounds, default 2\n"
            "  --duration S           seconds per phase, default 5\n"
            "  --dir DIR              where the files go (TMPDIR or /tmp)\n");
}

int main(int argc, char **argv)
{
    wb_opts o = { .writers = 4, .runs = 100, .watchers = 100, .idle = 1000, .rounds = 2,
                  .duration = 5 };
    wb_shared sh = { .o = &o };
    bench_server srv = { 0 };
    bench_body *body = malloc(sizeof *body);
    CURL *c = NULL;
    struct curl_slist *hdrs = NULL;
    char dir[PATH_MAX] = "", db_path[PATH_MAX + 32] = "";
    int rc = 1;

    bench_default_server(o.server, sizeof o.server);
    o.dir = bench_default_dir();
    const bench_opt opts[] = {
        {"--server", BENCH_OPT_PATH, o.server, 0, 0, 0, 0},
        {"--server-arg", BENCH_OPT_ARG_LIST, &o.server_args, 0, 0, 0, 0},
        {"--writers", BENCH_OPT_UNSIGNED, &o.writers, 1, 256, 0, 0},
        {"--runs", BENCH_OPT_UNSIGNED, &o.runs, 1, 1000, 0, 0},
        {"--watchers", BENCH_OPT_UNSIGNED, &o.watchers, 1, 10000, 0, 0},
        {"--idle", BENCH_OPT_UNSIGNED, &o.idle, 1, 10000, 0, 0},
        {"--rounds", BENCH_OPT_UNSIGNED, &o.rounds, 1, 100, 0, 0},
        {"--duration", BENCH_OPT_NUMBER, &o.duration, 0, 0, 0.1, 3600},
        {"--dir", BENCH_OPT_STRING, &o.dir, 0, 0, 0, 0},
    };
    switch (bench_parse_args("watch_bench", opts, sizeof opts / sizeof opts[0], wb_usage,
                             argc, argv)) {
    case 1:
        free(body);
        return 0;
    case -1:
        free(body);
        return 2;
    }
    if (!body || bench_check_server("watch_bench", o.server) != 0) {
        free(body);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    /* Every idle stream is a socket on both sides: room for them (the service inherits it). */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK
        || bench_make_dir("watch_bench", o.dir, dir, sizeof dir) != 0)
        goto out;
    snprintf(db_path, sizeof db_path, "%s/watch.db", dir);
    snprintf(srv.log_path, sizeof srv.log_path, "%s/watch.log", dir);

    printf("nodestate watch_bench\n");
    bench_print_machine(true);
    printf("workload: %u writers POST new nodes over %u runs, %.1f s per phase, %u rounds of "
           "none / %u watchers on those runs; then %u idle streams\n", o.writers, o.runs,
           o.duration, o.rounds, o.watchers, o.idle);
    char conns[16];
    snprintf(conns, sizeof conns, "%u", o.idle + o.watchers + o.writers + 64);
    const char *extra[] = { "--max-connections-per-ip", "0", "--max-connections", conns,
                            "--max-watchers", conns };
    const char *argv_srv[BENCH_MAX_SERVER_ARGS + 10];
    size_t argc_srv = bench_server_argv(argv_srv, o.server, db_path, extra, 6, &o.server_args);
    printf("service:");
    for (size_t i = 0; i < argc_srv; i++)
        printf(" %s", argv_srv[i]);
    printf("\n");
    fflush(stdout);
    if (bench_server_start(&srv, "watch_bench", argv_srv, WB_START_LIMIT_MS) != 0)
        goto out;
    snprintf(sh.base, sizeof sh.base, "http://%s", srv.addr);
    hdrs = bench_json_headers();
    if (!hdrs || (c = bench_curl_new(body, hdrs, WB_REQUEST_TIMEOUT_S)) == NULL)
        goto out;
    /* Every run exists, so that its stream opens. */
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, "{\"status\":\"idle\"}");
    for (unsigned r = 0; r < o.runs; r++) {
        char url[256];
        long code = 0;
        snprintf(url, sizeof url, "%s/runs/r%03u/nodes/first/state", sh.base, r);
        curl_easy_setopt(c, CURLOPT_URL, url);
        if (curl_easy_perform(c) != CURLE_OK
            || curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code) != CURLE_OK || code != 202) {
            fprintf(stderr, "watch_bench: POST %s: HTTP %ld\n", url, code);
            goto out;
        }
    }
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);

    double none = 0, watched = 0, cpu_none = 0, cpu_watched = 0;
    uint64_t events = 0, n_none = 0, n_watched = 0, n;
    unsigned phase = 0;
    for (unsigned r = 0; r < o.rounds; r++) {
        /* The server's CPU per accepted update: what the machine's other load does not change much. */
        bench_wait_drained(c, body, sh.base, 60000);
        double cpu0 = wb_cpu_seconds(srv.pid);
        double a = wb_write_phase(&sh, phase++, &n);
        bench_wait_drained(c, body, sh.base, 60000);
        cpu_none += wb_cpu_seconds(srv.pid) - cpu0;
        n_none += n;
        wb_streams st;
        if (wb_streams_open(&st, &sh, o.watchers, c, body) != 0) {
            wb_streams_close(&st);
            goto out;
        }
        cpu0 = wb_cpu_seconds(srv.pid);
        double b = wb_write_phase(&sh, phase++, &n);
        bench_wait_drained(c, body, sh.base, 60000);
        cpu_watched += wb_cpu_seconds(srv.pid) - cpu0;
        n_watched += n;
        wb_streams_close(&st);
        events += atomic_load(&st.events);
        if (atomic_load(&st.broken))
            atomic_fetch_add(&sh.failures, atomic_load(&st.broken));
        printf("round %u: none %.0f/s, %u watchers %.0f/s (%.2f); events received %" PRIu64 "\n",
               r + 1, a, o.watchers, b, a > 0 ? b / a : 0, atomic_load(&st.events));
        fflush(stdout);
        none += a;
        watched += b;
    }
    printf("writes: none %.0f/s, with %u watchers %.0f/s: ratio %.2f (target >= 0.8); "
           "%" PRIu64 " events sent to the streams\n", none / o.rounds, o.watchers,
           watched / o.rounds, none > 0 ? watched / none : 0, events);
    double us_none = n_none ? cpu_none * 1e6 / (double)n_none : 0;
    double us_watched = n_watched ? cpu_watched * 1e6 / (double)n_watched : 0;
    printf("server CPU per accepted update: none %.1f us, with %u watchers %.1f us (each "
           "update also sent as an event): ratio none/watched %.2f\n", us_none, o.watchers,
           us_watched, us_watched > 0 ? us_none / us_watched : 0);

    long rss0, th0, rss1, th1;
    bench_wait_drained(c, body, sh.base, 60000);
    wb_proc(srv.pid, &rss0, &th0);
    wb_streams idle;
    int opened = wb_streams_open(&idle, &sh, o.idle, c, body);
    wb_proc(srv.pid, &rss1, &th1);
    wb_streams_close(&idle);
    if (opened != 0)
        goto out;
    printf("idle streams: %u open; server RSS %ld -> %ld kB (+%.1f kB per stream), threads %ld "
           "-> %ld\n", o.idle, rss0, rss1, (double)(rss1 - rss0) / o.idle, th0, th1);
    rc = atomic_load(&sh.failures) ? 1 : 0;
    if (rc)
        fprintf(stderr, "watch_bench: %" PRIu64 " failed requests or broken streams\n",
                atomic_load(&sh.failures));
out:
    curl_easy_cleanup(c);
    curl_slist_free_all(hdrs);
    if (srv.pid && bench_server_stop(&srv, "watch_bench", WB_STOP_LIMIT_MS) != 0)
        rc = 1;
    free(body);
    curl_global_cleanup();
    return rc;
}
