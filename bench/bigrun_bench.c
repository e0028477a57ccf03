/*
 * bigrun_bench: whether one big run holds up everyone else, against the real
 * binary, in one run.
 *
 * Run "big" is laid into a fresh file straight through SQLite (--nodes rows,
 * n000000..., all running; the schema laid out by the service's own store),
 * and so is run "ctl" with --control-nodes, the same way; then nodestate is
 * started on the file with its defaults plus --server-arg, and a summary of
 * each run (GET /runs/{run}) reads it whole into the cache, as if it had been
 * written through the service (--cold skips that: the runs are then cached
 * in part, and listings read their pages from SQLite). Then:
 *
 *   alone    --small-clients threads, each with its own keep-alive libcurl
 *            handle, write small runs: one POST {"status":"running"} per new
 *            node, --small-run-nodes nodes per run. Their 2xx answers per
 *            second are taken over --duration seconds after --warmup.
 *   control  the same clients go on while --big-clients threads loop over:
 *            POST a new node to run "ctl", then list it
 *            (GET /runs/ctl/nodes?status=running&limit=100&after=<a random
 *            preloaded node>). This is what those clients cost by the CPU
 *            and HTTP work they bring, on a run of ordinary size.
 *   big      the same, on the big run instead. A listing right after an add
 *            is what used to sort the whole run under the engine's lock.
 *
 * Each phase is measured the same way, after the same warm-up. It prints the
 * small clients' rate in each phase with the ratios to "alone" and to
 * "control" (how much of their rate they keep beside the big run, and how
 * much of that loss is the big run's size rather than the extra clients),
 * and the big clients' adds and listings per second. A 503 (queue full) is waited out and retried; any other
 * failure is counted. Afterwards the service is stopped with SIGTERM and the
 * file must hold the big run's nodes plus every add accepted, and every small
 * node accepted. The exit status is 0 only when every answer was 2xx (or a
 * retried 503) and those checks passed; the ratio itself is printed, not
 * enforced, because this shared machine's numbers are noisy.
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
#include <unistd.h>

#include <curl/curl.h>
#include <sqlite3.h>

#include "bench_common.h"
#include "model.h"

/* How long the service may take to log its address after starting. */
#define BR_START_LIMIT_MS 30000
/* How long the service may take to flush and exit after SIGTERM. */
#define BR_STOP_LIMIT_MS 120000
/* Transport timeout of one request. */
#define BR_REQUEST_TIMEOUT_S 60L
/* Pause after a 503 (queue full) before posting again. */
#define BR_BACKOFF_MS 20
/* Nodes per listing page. */
#define BR_PAGE 100
/* The preloaded runs: the big one, and one of ordinary size for the control phase. */
#define BR_BIG "big"
#define BR_CTL "ctl"

typedef struct br_opts {
    char server[PATH_MAX];
    bench_arg_list server_args;
    uint64_t nodes;            /* preloaded into the big run */
    uint64_t control_nodes;    /* preloaded into the control run */
    unsigned small_clients;
    unsigned big_clients;
    unsigned small_run_nodes;
    double duration;           /* seconds measured per phase */
    double warmup;             /* seconds before each measurement */
    bool cold;                 /* no summaries first: the runs stay on disk */
    const char *dir;
    bool keep;
} br_opts;

/* What the threads share with main. */
typedef struct br_shared {
    const br_opts *o;
    char base_url[128];
    _Atomic int target;        /* the big clients' run: 0 none yet, 1 ctl, 2 big */
    _Atomic bool stop;
} br_shared;

typedef struct br_client {
    br_shared *sh;
    unsigned index;
    bool big;
    _Atomic uint64_t posts;    /* 2xx answers to POSTs */
    _Atomic uint64_t lists;    /* 200 answers to listings (big clients) */
    uint64_t retries;          /* 503 answers waited out */
    uint64_t failures;         /* other answers and transport errors */
    pthread_t thread;
} br_client;

/* ---- preloading the big run --------------------------------------------- */

static int br_preload(const char *db_path, uint64_t nodes, uint64_t control_nodes)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *upsert = NULL;
    int rc = -1;
    int64_t now = model_now_ms();
    const int64_t ts[3] = { now, now, NS_TS_NULL };
    char node[32], sql[256];

    if (bench_direct_init("bigrun_bench", db_path, false) != 0)
        return -1;
    if (bench_direct_open(db_path, false, &db, &upsert) != 0
        || sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        goto out;
    for (uint64_t i = 0; i < nodes + control_nodes; i++) {
        bool big = i < nodes;
        snprintf(node, sizeof node, "n%06" PRIu64, big ? i : i - nodes);
        if (bench_direct_bind(upsert, big ? BR_BIG : BR_CTL, node, "running", ts, now,
                              (int64_t)i + 1) != SQLITE_OK
            || sqlite3_step(upsert) != SQLITE_DONE
            || sqlite3_reset(upsert) != SQLITE_OK)
            goto out;
    }
    /* seq goes on above the preloaded rows, as if the service had written them. */
    snprintf(sql, sizeof sql,
             "INSERT INTO nodestate_meta (key, value) VALUES ('last_seq', %"
             PRIu64 ") ON CONFLICT (key) DO UPDATE SET value = excluded.value;"
             " COMMIT; PRAGMA wal_checkpoint(TRUNCATE)", nodes + control_nodes);
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
        goto out;
    rc = 0;
out:
    if (rc != 0)
        fprintf(stderr, "bigrun_bench: preloading %s: %s\n", db_path,
                db ? sqlite3_errmsg(db) : "out of memory");
    sqlite3_finalize(upsert);
    sqlite3_close(db);
    return rc;
}

static int64_t br_count(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t n = -1;

    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK
        && sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK
        && sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    else
        fprintf(stderr, "bigrun_bench: %s: %s\n", path,
                db ? sqlite3_errmsg(db) : "out of memory");
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

/* ---- the client threads ------------------------------------------------ */

/*
 * One request; a 503 is waited out and the request sent again. Returns the
 * final HTTP status, or 0 on a transport error (printed).
 */
static long br_request(br_client *cl, CURL *c, bench_body *body, const char *url,
                       bool post)
{
    for (;;) {
        long code = 0;
        body->len = 0;
        body->data[0] = '\0';
        /* POSTFIELDS stays set; CURLOPT_POST re-arms it after a GET. */
        CURLcode cc = curl_easy_setopt(c, CURLOPT_URL, url);
        if (cc == CURLE_OK)
            cc = post ? curl_easy_setopt(c, CURLOPT_POST, 1L)
                      : curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
        if (cc == CURLE_OK)
            cc = curl_easy_perform(c);
        if (cc == CURLE_OK)
            cc = curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
        if (cc != CURLE_OK) {
            fprintf(stderr, "bigrun_bench: %s: %s\n", url, curl_easy_strerror(cc));
            return 0;
        }
        if (code != 503 || atomic_load(&cl->sh->stop))
            return code;
        cl->retries++;
        bench_sleep_ms(BR_BACKOFF_MS);
    }
}

static void *br_client_main(void *arg)
{
    br_client *cl = arg;
    const br_opts *o = cl->sh->o;
    static const char body_text[] = "{\"status\":\"running\"}";
    struct curl_slist *headers = bench_json_headers();
    bench_body *body = malloc(sizeof *body);
    char url[384];
    CURL *c = NULL;
    uint64_t seed = 0x9e3779b97f4a7c15ull * (cl->index + 1);

    if (body == NULL || headers == NULL
        || (c = bench_curl_new(body, headers, BR_REQUEST_TIMEOUT_S)) == NULL
        || curl_easy_setopt(c, CURLOPT_POSTFIELDS, body_text) != CURLE_OK) {
        fprintf(stderr, "bigrun_bench: cannot set up a client\n");
        cl->failures++;
        goto out;
    }
    while (cl->big && !atomic_load(&cl->sh->target) && !atomic_load(&cl->sh->stop))
        bench_sleep_ms(5);
    for (uint64_t i = 0; !atomic_load(&cl->sh->stop); i++) {
        bool on_big = atomic_load(&cl->sh->target) == 2;
        const char *run = on_big ? BR_BIG : BR_CTL;
        if (cl->big)
            snprintf(url, sizeof url, "%s/runs/%s/nodes/x%u-%" PRIu64 "/state",
                     cl->sh->base_url, run, cl->index, i);
        else
            snprintf(url, sizeof url, "%s/runs/s%u-%" PRIu64 "/nodes/n%" PRIu64 "/state",
                     cl->sh->base_url, cl->index, i / o->small_run_nodes,
                     i % o->small_run_nodes);
        long code = br_request(cl, c, body, url, true);
        if (code < 200 || code >= 300) {
            if (code != 0 && !atomic_load(&cl->sh->stop))
                fprintf(stderr, "bigrun_bench: %s: HTTP %ld: %.200s\n", url, code, body->data);
            if (code != 503)
                cl->failures++;
            continue;
        }
        atomic_fetch_add(&cl->posts, 1);
        if (!cl->big)
            continue;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        snprintf(url, sizeof url, "%s/runs/%s/nodes?status=running&limit=%d"
                 "&after=n%06" PRIu64, cl->sh->base_url, run, BR_PAGE,
                 seed % (on_big ? o->nodes : o->control_nodes));
        code = br_request(cl, c, body, url, false);
        if (code == 200) {
            atomic_fetch_add(&cl->lists, 1);
        } else {
            fprintf(stderr, "bigrun_bench: %s: HTTP %ld: %.200s\n", url, code, body->data);
            cl->failures++;
        }
    }
out:
    curl_easy_cleanup(c);
    curl_slist_free_all(headers);
    free(body);
    return NULL;
}

/* Sums one counter over the small (big false) or big clients. */
static uint64_t br_sum(br_client *cls, unsigned n, bool big, bool lists)
{
    uint64_t sum = 0;
    for (unsigned i = 0; i < n; i++)
        if (cls[i].big == big)
            sum += atomic_load(lists ? &cls[i].lists : &cls[i].posts);
    return sum;
}

/* One phase's rates, per second. */
typedef struct br_phase {
    double small;              /* small-run writers' 2xx POSTs */
    double adds, lists;        /* the other clients' POSTs and listings */
} br_phase;

/* Measures the clients' rates over duration seconds. */
static void br_measure(br_phase *ph, br_client *cls, unsigned n, double duration)
{
    uint64_t s0 = br_sum(cls, n, false, false), p0 = br_sum(cls, n, true, false);
    uint64_t l0 = br_sum(cls, n, true, true), t0 = bench_now_ns();
    bench_sleep_ms((long)(duration * 1000));
    uint64_t s1 = br_sum(cls, n, false, false), p1 = br_sum(cls, n, true, false);
    uint64_t l1 = br_sum(cls, n, true, true), t1 = bench_now_ns();
    double secs = (double)(t1 - t0) / 1e9;
    ph->small = (double)(s1 - s0) / secs;
    ph->adds = (double)(p1 - p0) / secs;
    ph->lists = (double)(l1 - l0) / secs;
}

/* ---- the program --------------------------------------------------------- */

static void br_usage(FILE *out)
{
    fprintf(out,
            "usage: bigrun_bench [options]\n"
            "  --server PATH          nodestate binary (default: ../nodestate beside this program)\n"
            "  --server-arg ARG       one more argument for the service (repeatable)\n"
            "  --nodes N              nodes preloaded into the big run, default 100000\n"
            "  --control-nodes N      nodes preloaded into the control run, default 1000\n"
            "  --small-clients N      clients writing small runs, default 4\n"
            "  --big-clients N        clients adding to and listing the big run, default 2\n"
            "  --small-run-nodes N    nodes per small run, default 50\n"
            "  --duration S           seconds measured per phase, default 5\n"
            "  --warmup S             seconds before each measurement, default 1\n"
            "  --cold                 do not read the runs into the cache first\n"
            "  --dir DIR              where the files go (TMPDIR or /tmp)\n"
            "  --keep                 keep the database file and service log\n");
}

static int br_parse(br_opts *o, int argc, char **argv)
{
    const bench_opt opts[] = {
        {"--server", BENCH_OPT_PATH, o->server, 0, 0, 0, 0},
        {"--server-arg", BENCH_OPT_ARG_LIST, &o->server_args, 0, 0, 0, 0},
        {"--nodes", BENCH_OPT_U64, &o->nodes, 1, 100000000, 0, 0},
        {"--control-nodes", BENCH_OPT_U64, &o->control_nodes, 1, 100000000, 0, 0},
        {"--small-clients", BENCH_OPT_UNSIGNED, &o->small_clients, 1, 1024, 0, 0},
        {"--big-clients", BENCH_OPT_UNSIGNED, &o->big_clients, 1, 1024, 0, 0},
        {"--small-run-nodes", BENCH_OPT_UNSIGNED, &o->small_run_nodes, 1, 1000000, 0, 0},
        {"--duration", BENCH_OPT_NUMBER, &o->duration, 0, 0, 0.1, 3600},
        {"--warmup", BENCH_OPT_NUMBER, &o->warmup, 0, 0, 0, 600},
        {"--cold", BENCH_OPT_FLAG, &o->cold, 0, 0, 0, 0},
        {"--dir", BENCH_OPT_STRING, &o->dir, 0, 0, 0, 0},
        {"--keep", BENCH_OPT_FLAG, &o->keep, 0, 0, 0, 0},
    };

    return bench_parse_args("bigrun_bench", opts, sizeof opts / sizeof opts[0],
                            br_usage, argc, argv);
}

int main(int argc, char **argv)
{
    br_opts o = {
        .nodes = 100000,
        .control_nodes = 1000,
        .small_clients = 4,
        .big_clients = 2,
        .small_run_nodes = 50,
        .duration = 5,
        .warmup = 1,
    };
    br_shared sh = { .o = &o };
    bench_server srv = { 0 };
    bench_body *body = malloc(sizeof *body);
    br_client *cls = NULL;
    CURL *c = NULL;
    char dir[PATH_MAX] = "", db_path[PATH_MAX + 32] = "";
    unsigned n_cls = 0, started = 0;
    int rc = 1;

    bench_default_server(o.server, sizeof o.server);
    o.dir = bench_default_dir();
    switch (br_parse(&o, argc, argv)) {
    case 1:
        free(body);
        return 0;
    case -1:
        free(body);
        return 2;
    }
    if (bench_check_server("bigrun_bench", o.server) != 0) {
        free(body);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    atomic_init(&sh.target, 0);
    atomic_init(&sh.stop, false);
    if (body == NULL || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "bigrun_bench: cannot initialise libcurl\n");
        free(body);
        return 1;
    }
    if (bench_make_dir("bigrun_bench", o.dir, dir, sizeof dir) != 0)
        goto out;
    snprintf(db_path, sizeof db_path, "%s/bigrun.db", dir);
    snprintf(srv.log_path, sizeof srv.log_path, "%s/bigrun.log", dir);

    printf("nodestate bigrun_bench\n");
    bench_print_machine(true);
    printf("workload: run \"" BR_BIG "\" preloaded with %" PRIu64 " nodes, \"" BR_CTL
           "\" with %" PRIu64 "; %u clients write small runs (%u nodes each, one POST per "
           "node); beside them (control: on \"" BR_CTL "\", then on \"" BR_BIG "\") %u "
           "clients loop over POST a new node + GET a page of the run (status=running, "
           "limit=%d, after=a random node); %.1f s measured per phase after %.1f s of "
           "warm-up\n", o.nodes, o.control_nodes, o.small_clients, o.small_run_nodes,
           o.big_clients, BR_PAGE, o.duration, o.warmup);
    fflush(stdout);
    uint64_t t0 = bench_now_ns();
    if (br_preload(db_path, o.nodes, o.control_nodes) != 0)
        goto out;
    printf("preload: %" PRIu64 " rows in %.1f s\n", o.nodes + o.control_nodes,
           (double)(bench_now_ns() - t0) / 1e9);

    const char *argv_srv[BENCH_MAX_SERVER_ARGS + 10];
    size_t argc_srv = bench_server_argv(argv_srv, o.server, db_path, NULL, 0,
                                        &o.server_args);
    printf("service:");
    for (size_t i = 0; i < argc_srv; i++)
        printf(" %s", argv_srv[i]);
    printf("\n");
    fflush(stdout);
    if (bench_server_start(&srv, "bigrun_bench", argv_srv, BR_START_LIMIT_MS) != 0)
        goto out;
    snprintf(sh.base_url, sizeof sh.base_url, "http://%s", srv.addr);
    if ((c = bench_curl_new(body, NULL, BR_REQUEST_TIMEOUT_S)) == NULL)
        goto out;
    for (int k = 0; k < 2 && !o.cold; k++) {
        char url[256];
        long code = 0;
        snprintf(url, sizeof url, "%s/runs/%s", sh.base_url, k ? BR_CTL : BR_BIG);
        t0 = bench_now_ns();
        if (curl_easy_setopt(c, CURLOPT_URL, url) != CURLE_OK
            || curl_easy_perform(c) != CURLE_OK
            || curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code) != CURLE_OK
            || code != 200) {
            fprintf(stderr, "bigrun_bench: GET %s: HTTP %ld\n", url, code);
            goto out;
        }
        printf("GET %s (reads the run whole into the cache): %.0f ms\n", url,
               (double)(bench_now_ns() - t0) / 1e6);
    }
    printf("cache: %" PRId64 " nodes, %" PRId64 " bytes\n",
           bench_get_stat(c, body, sh.base_url, "cache_nodes"),
           bench_get_stat(c, body, sh.base_url, "cache_bytes"));
    fflush(stdout);

    n_cls = o.small_clients + o.big_clients;
    if ((cls = calloc(n_cls, sizeof *cls)) == NULL)
        goto out;
    for (; started < n_cls; started++) {
        br_client *cl = &cls[started];
        cl->sh = &sh;
        cl->index = started;
        cl->big = started >= o.small_clients;
        atomic_init(&cl->posts, 0);
        atomic_init(&cl->lists, 0);
        if (pthread_create(&cl->thread, NULL, br_client_main, cl) != 0)
            break;
    }
    if (started < n_cls) {
        fprintf(stderr, "bigrun_bench: cannot start client threads\n");
        goto stop;
    }

    /* alone, then beside the control run, then beside the big run */
    br_phase ph[3];
    for (int k = 0; k < 3; k++) {
        if (k > 0)
            atomic_store(&sh.target, k);
        bench_sleep_ms((long)(o.warmup * 1000));
        br_measure(&ph[k], cls, n_cls, o.duration);
    }
    printf("\n%-48s %12s %10s %12s\n", "phase", "small-run", "ratio to", "beside them:");
    printf("%-48s %12s %10s %12s\n", "", "writes/s", "alone", "adds/s, lists/s");
    static const char *const names[3] = {
        "small-run writers alone", "beside clients on \"" BR_CTL "\" (control)",
        "beside clients on \"" BR_BIG "\"",
    };
    for (int k = 0; k < 3; k++) {
        printf("%-48s %12.0f %10.2f", names[k], ph[k].small, ph[0].small > 0 ? ph[k].small / ph[0].small : 0.0);
        if (k > 0)
            printf("   %6.0f, %6.0f", ph[k].adds, ph[k].lists);
        printf("\n");
    }
    printf("ratio beside the big run / alone: %.2f; / control: %.2f\n",
           ph[0].small > 0 ? ph[2].small / ph[0].small : 0.0,
           ph[1].small > 0 ? ph[2].small / ph[1].small : 0.0);
    fflush(stdout);

stop:
    atomic_store(&sh.stop, true);
    uint64_t failures = 0, retries = 0;
    for (unsigned i = 0; i < started; i++) {
        pthread_join(cls[i].thread, NULL);
        failures += cls[i].failures;
        retries += cls[i].retries;
    }
    if (started < n_cls)
        goto out;
    uint64_t small_posts = br_sum(cls, n_cls, false, false);
    uint64_t big_posts = br_sum(cls, n_cls, true, false); /* to both runs */
    printf("answers: %" PRIu64 " small-run POSTs, %" PRIu64 " big-run POSTs, %" PRIu64
           " listings accepted; %" PRIu64 " queue-full retries, %" PRIu64 " failures\n",
           small_posts, big_posts, br_sum(cls, n_cls, true, true), retries, failures);
    if (bench_wait_drained(c, body, sh.base_url, BR_STOP_LIMIT_MS) != 0) {
        fprintf(stderr, "bigrun_bench: the queue did not drain\n");
        goto out;
    }
    if (bench_server_stop(&srv, "bigrun_bench", BR_STOP_LIMIT_MS) != 0)
        goto out;
    int64_t big_rows = br_count(db_path, "SELECT count(*) FROM run_node_state WHERE run_id IN ('"
                                         BR_BIG "', '" BR_CTL "')");
    int64_t rows = br_count(db_path, "SELECT count(*) FROM run_node_state");
    uint64_t preloaded = o.nodes + o.control_nodes;
    bool ok_big = big_rows >= 0 && (uint64_t)big_rows == preloaded + big_posts;
    bool ok_all = rows >= 0 && (uint64_t)rows == preloaded + big_posts + small_posts;
    printf("check rows of " BR_BIG " and " BR_CTL " %" PRId64 " == preloaded + adds %" PRIu64
           ": %s\n", big_rows, preloaded + big_posts, ok_big ? "OK" : "FAILED");
    printf("check all rows %" PRId64 " == preloaded + every POST accepted %" PRIu64 ": %s\n",
           rows, preloaded + big_posts + small_posts, ok_all ? "OK" : "FAILED");
    printf("check failures %" PRIu64 ": %s\n", failures, failures == 0 ? "OK" : "FAILED");
    rc = ok_big && ok_all && failures == 0 ? 0 : 1;
out:
    if (rc != 0 && started == n_cls && n_cls > 0 && !atomic_load(&sh.stop)) {
        atomic_store(&sh.stop, true);
        for (unsigned i = 0; i < started; i++)
            pthread_join(cls[i].thread, NULL);
    }
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
