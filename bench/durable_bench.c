/*
 * durable_bench: durable acknowledgements of the real binary against the
 * one-commit-per-update ceiling of the same disk, measured in the same run.
 *
 * For each synchronous mode (normal, full):
 *
 *   ceiling  one thread, one connection, a loop of single-row upserts on a
 *            SQLite file in the same directory as the service's database,
 *            with the service's schema (laid out by its own store) and the
 *            same synchronous mode, each upsert its own transaction. This is
 *            the best a design that commits every update before answering
 *            can do on this disk. It is measured in two halves, one before
 *            and one after the durable run, so drift from the machine's other
 *            load hits both sides alike.
 *   durable  the nodestate binary, started with --synchronous MODE; --clients
 *            threads, each with its own keep-alive libcurl handle, post node
 *            lifecycles (scheduled, running, completed; each step after the
 *            previous one was answered) with ?wait=true. An ack is a 200 whose
 *            body says "durable":true. acks/s and latency are taken over the
 *            requests that finished inside the measuring window (after
 *            --warmup); the service's batches_written over the same window
 *            gives acks per commit.
 *
 * Afterwards the service is stopped with SIGTERM and its file is checked:
 * every node whose "scheduled" (or "completed") was acked durable has a row
 * (a completed row), and there are no more rows than nodes the service
 * accepted. The exit status is 0 only when every check passed; whether the
 * target (durable acks/s >= 2x the ceiling under full) was met is printed,
 * not enforced, because this shared machine's numbers are noisy.
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
#define DB_START_LIMIT_MS 10000
/* How long the service may take to flush and exit after SIGTERM. */
#define DB_STOP_LIMIT_MS 120000
/* Transport timeout of one request: longer than any ?timeout= we send. */
#define DB_REQUEST_TIMEOUT_S 120L
/* Latency samples a client records before it grows its array. */
#define DB_SAMPLES_INITIAL 4096

/* What one request came back as. */
typedef enum db_kind {
    DB_ACK,          /* 200 "durable":true */
    DB_NOT_DURABLE,  /* 202: accepted, the wait timed out first */
    DB_OTHER_2XX,    /* 200 without durable:true (a duplicate) */
    DB_FAILED,       /* non-2xx or transport error */
    DB_KIND_COUNT
} db_kind;

typedef struct db_opts {
    char server[PATH_MAX];     /* the nodestate binary */
    bench_arg_list server_args;
    unsigned clients;
    unsigned runs;             /* nodes are spread over this many runs */
    double duration;           /* seconds measured per mode */
    double warmup;             /* seconds run before measuring */
    double ceiling_seconds;    /* ceiling time per mode, split in two halves */
    double wait_timeout;       /* ?timeout= sent with wait=true; 0: none */
    int sync_modes;            /* BENCH_SYNC_* bits */
    const char *dir;
    bool keep;
} db_opts;

/* One finished request. */
typedef struct db_sample {
    uint64_t done_ns;          /* monotonic time it was answered */
    uint32_t lat_us;
    uint8_t kind;              /* db_kind */
} db_sample;

/* State the client threads share with main. */
typedef struct db_shared {
    const db_opts *o;
    char base_url[128];        /* http://HOST:PORT */
    _Atomic bool stop;
} db_shared;

typedef struct db_client {
    db_shared *sh;
    unsigned index;
    db_sample *samples;
    size_t n_samples, cap_samples;
    /* Over the whole run, warm-up included, for the row check. */
    uint64_t sched_acked;      /* nodes whose "scheduled" was acked durable */
    uint64_t sched_accepted;   /* ... answered 2xx */
    uint64_t completed_acked;
    uint64_t completed_accepted;
    uint64_t transport_errors; /* unknown outcome: may or may not be queued */
    uint64_t failures;         /* non-2xx answers */
    bool alloc_failed;
    pthread_t thread;
} db_client;

/* One mode's numbers. */
typedef struct db_result {
    const char *sync;
    bool ran;
    bool ok;                   /* server ran, stopped cleanly, rows check */
    /* ceiling */
    uint64_t ceil_updates;
    double ceil_seconds;
    double ceil_rate[2];       /* each half */
    double ceil_p50_us, ceil_p99_us;
    /* durable */
    uint64_t kinds[DB_KIND_COUNT];
    double window_s;
    double ack_p50_us, ack_p99_us;
    uint64_t commits;          /* batches_written over the window */
} db_result;

static const char *const db_steps[3] = {"scheduled", "running", "completed"};

static int db_cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v (n > 0). */
static double db_pct(const uint32_t *v, size_t n, unsigned pct)
{
    return (double)v[(n - 1) * pct / 100];
}

/* ---- the service --------------------------------------------------------- */

/* Starts the service on 127.0.0.1:0 with db_path and the sync mode. */
static int db_server_start(bench_server *srv, const db_opts *o,
                           const char *db_path, bool full)
{
    const char *argv[BENCH_MAX_SERVER_ARGS + 10];
    const char *sync[2] = {"--synchronous", full ? "full" : "normal"};

    bench_server_argv(argv, o->server, db_path, sync, 2, &o->server_args);
    return bench_server_start(srv, "durable_bench", argv, DB_START_LIMIT_MS);
}

/* ---- the client threads ------------------------------------------------ */

static int db_record(db_client *cl, uint64_t done_ns, uint64_t lat_ns,
                     db_kind kind)
{
    if (cl->n_samples == cl->cap_samples) {
        size_t cap = cl->cap_samples ? cl->cap_samples * 2
                                     : DB_SAMPLES_INITIAL;
        db_sample *grown = realloc(cl->samples, cap * sizeof *grown);

        if (grown == NULL) {
            cl->alloc_failed = true;
            return -1;
        }
        cl->samples = grown;
        cl->cap_samples = cap;
    }
    uint64_t us = lat_ns / 1000;
    cl->samples[cl->n_samples++] = (db_sample){
        .done_ns = done_ns,
        .lat_us = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us,
        .kind = (uint8_t)kind,
    };
    return 0;
}

/*
 * One client: node after node, each through its three steps, every step
 * posted with ?wait=true once the previous one was answered. A node whose
 * step failed is abandoned (its next step could be refused as illegal).
 */
static void *db_client_main(void *arg)
{
    db_client *cl = arg;
    const db_opts *o = cl->sh->o;
    struct curl_slist *headers = bench_json_headers();
    bench_body *body = malloc(sizeof *body);
    char bodies[3][40], url[512], query[64];
    CURL *c = NULL;
    uint64_t node = 0;
    int step = 0;

    if (o->wait_timeout > 0)
        snprintf(query, sizeof query, "?wait=true&timeout=%g",
                 o->wait_timeout);
    else
        snprintf(query, sizeof query, "?wait=true");
    for (int s = 0; s < 3; s++)
        snprintf(bodies[s], sizeof bodies[s], "{\"status\":\"%s\"}",
                 db_steps[s]);
    if (body == NULL || headers == NULL
        || (c = bench_curl_new(body, headers, DB_REQUEST_TIMEOUT_S)) == NULL) {
        cl->alloc_failed = true;
        goto out;
    }
    while (!atomic_load(&cl->sh->stop)) {
        long code = 0;
        uint64_t t0, t1;
        CURLcode cc;
        db_kind kind;

        snprintf(url, sizeof url, "%s/runs/dbench-%" PRIu64 "/nodes/c%u-n%"
                 PRIu64 "/state%s", cl->sh->base_url, node % o->runs,
                 cl->index, node, query);
        body->len = 0;
        body->data[0] = '\0';
        if (curl_easy_setopt(c, CURLOPT_URL, url) != CURLE_OK
            || curl_easy_setopt(c, CURLOPT_POSTFIELDS, bodies[step])
                   != CURLE_OK) {
            cl->alloc_failed = true;
            break;
        }
        t0 = bench_now_ns();
        cc = curl_easy_perform(c);
        t1 = bench_now_ns();
        if (cc == CURLE_OK)
            cc = curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
        if (cc != CURLE_OK) {
            if (cl->transport_errors++ == 0)
                fprintf(stderr, "durable_bench: client %u: %s\n", cl->index,
                        curl_easy_strerror(cc));
            kind = DB_FAILED;
        } else if (code == 200
                   && strstr(body->data, "\"durable\":true") != NULL) {
            kind = DB_ACK;
        } else if (code == 202) {
            kind = DB_NOT_DURABLE;
        } else if (code >= 200 && code < 300) {
            kind = DB_OTHER_2XX;
        } else {
            if (cl->failures++ == 0)
                fprintf(stderr, "durable_bench: client %u: HTTP %ld: %.200s\n",
                        cl->index, code, body->data);
            kind = DB_FAILED;
        }
        if (db_record(cl, t1, t1 - t0, kind) != 0)
            break;
        if (kind != DB_FAILED) {
            if (step == 0) {
                cl->sched_accepted++;
                cl->sched_acked += kind == DB_ACK;
            } else if (step == 2) {
                cl->completed_accepted++;
                cl->completed_acked += kind == DB_ACK;
            }
        }
        if (kind == DB_FAILED || step == 2) {
            node++;
            step = 0;
        } else {
            step++;
        }
    }
out:
    curl_easy_cleanup(c);
    curl_slist_free_all(headers);
    free(body);
    return NULL;
}

/*
 * Checks the service's file after it stopped: the durable acks are all in it
 * and it holds no node the service did not accept. Returns 0 or -1.
 */
static int db_check_rows(const char *path, const db_client *cls, unsigned n,
                         const char *sync)
{
    uint64_t sched_acked = 0, sched_max = 0, done_acked = 0, done_max = 0;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t rows = -1, completed = -1;
    int rc = -1;

    for (unsigned i = 0; i < n; i++) {
        sched_acked += cls[i].sched_acked;
        done_acked += cls[i].completed_acked;
        /* A transport error leaves open whether that step was queued. */
        sched_max += cls[i].sched_accepted + cls[i].transport_errors;
        done_max += cls[i].completed_accepted + cls[i].transport_errors;
    }
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK
        || sqlite3_prepare_v2(db,
                              "SELECT count(*), coalesce(sum(status ="
                              " 'completed'), 0) FROM run_node_state",
                              -1, &st, NULL) != SQLITE_OK
        || sqlite3_step(st) != SQLITE_ROW) {
        fprintf(stderr, "durable_bench: check %s: %s\n", path,
                db ? sqlite3_errmsg(db) : "out of memory");
        goto out;
    }
    rows = sqlite3_column_int64(st, 0);
    completed = sqlite3_column_int64(st, 1);
    bool ok = (uint64_t)rows >= sched_acked && (uint64_t)rows <= sched_max
              && (uint64_t)completed >= done_acked
              && (uint64_t)completed <= done_max;
    printf("check %-6s rows %" PRId64 " (acked %" PRIu64 ", accepted %"
           PRIu64 "), completed %" PRId64 " (acked %" PRIu64 ", accepted %"
           PRIu64 "): %s\n", sync, rows, sched_acked, sched_max, completed,
           done_acked, done_max, ok ? "OK" : "FAILED");
    rc = ok ? 0 : -1;
out:
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc;
}

/*
 * The durable half of one mode: starts the service, runs the clients for
 * warmup + duration, stops it and checks its file. Fills r's durable fields.
 * Returns 0 or -1.
 */
static int db_run_durable(const db_opts *o, const char *dir, bool full,
                          db_result *r)
{
    db_shared sh = {.o = o};
    bench_server srv = {0};
    db_client *cls = calloc(o->clients, sizeof *cls);
    bench_body *body = malloc(sizeof *body);
    uint32_t *acks = NULL;
    char db_path[PATH_MAX];
    unsigned started = 0;
    CURL *c = NULL;
    int64_t b0 = -1, b1 = -1;
    uint64_t w0 = 0, w1 = 0;
    int rc = -1;

    atomic_init(&sh.stop, false);
    snprintf(db_path, sizeof db_path, "%s/durable-%s.db", dir, r->sync);
    snprintf(srv.log_path, sizeof srv.log_path, "%s/durable-%s.log", dir,
             r->sync);
    if (cls == NULL || body == NULL
        || (c = bench_curl_new(body, NULL, DB_REQUEST_TIMEOUT_S)) == NULL)
        goto out;
    if (db_server_start(&srv, o, db_path, full) != 0)
        goto out;
    snprintf(sh.base_url, sizeof sh.base_url, "http://%s", srv.addr);
    printf("durable %-6s: service pid %d on %s, db %s\n", r->sync,
           (int)srv.pid, srv.addr, db_path);
    fflush(stdout);

    for (; started < o->clients; started++) {
        cls[started].sh = &sh;
        cls[started].index = started;
        if (pthread_create(&cls[started].thread, NULL, db_client_main,
                           &cls[started]) != 0)
            break;
    }
    if (started == o->clients) {
        bench_sleep_ms((long)(o->warmup * 1000));
        b0 = bench_get_stat(c, body, sh.base_url, "batches_written");
        w0 = bench_now_ns();
        bench_sleep_ms((long)(o->duration * 1000));
        w1 = bench_now_ns();
        b1 = bench_get_stat(c, body, sh.base_url, "batches_written");
    } else {
        fprintf(stderr, "durable_bench: cannot start client threads\n");
    }
    atomic_store(&sh.stop, true);
    for (unsigned i = 0; i < started; i++)
        pthread_join(cls[i].thread, NULL);
    if (bench_server_stop(&srv, "durable_bench", DB_STOP_LIMIT_MS) != 0
        || started < o->clients)
        goto out;

    bool alloc_failed = false;
    size_t n_acks = 0, n_in = 0, at = 0;
    for (unsigned i = 0; i < o->clients; i++) {
        alloc_failed |= cls[i].alloc_failed;
        for (size_t k = 0; k < cls[i].n_samples; k++) {
            const db_sample *s = &cls[i].samples[k];
            if (s->done_ns < w0 || s->done_ns > w1)
                continue;
            r->kinds[s->kind]++;
            n_acks += s->kind == DB_ACK;
            n_in++;
        }
    }
    if (alloc_failed) {
        fprintf(stderr, "durable_bench: a client ran out of memory\n");
        goto out;
    }
    r->window_s = (double)(w1 - w0) / 1e9;
    r->commits = b0 >= 0 && b1 >= b0 ? (uint64_t)(b1 - b0) : 0;
    if (n_acks > 0) {
        acks = malloc(n_acks * sizeof *acks);
        if (acks == NULL)
            goto out;
        for (unsigned i = 0; i < o->clients; i++)
            for (size_t k = 0; k < cls[i].n_samples; k++) {
                const db_sample *s = &cls[i].samples[k];
                if (s->done_ns >= w0 && s->done_ns <= w1
                    && s->kind == DB_ACK)
                    acks[at++] = s->lat_us;
            }
        qsort(acks, n_acks, sizeof *acks, db_cmp_u32);
        r->ack_p50_us = db_pct(acks, n_acks, 50);
        r->ack_p99_us = db_pct(acks, n_acks, 99);
    }
    printf("durable %-6s: %zu requests in %.2f s: %" PRIu64 " acked durable, "
           "%" PRIu64 " 202 not durable, %" PRIu64 " other 2xx, %" PRIu64
           " failed; %" PRIu64 " commits\n", r->sync, n_in, r->window_s,
           r->kinds[DB_ACK], r->kinds[DB_NOT_DURABLE], r->kinds[DB_OTHER_2XX],
           r->kinds[DB_FAILED], r->commits);
    rc = db_check_rows(db_path, cls, o->clients, r->sync);
    if (r->kinds[DB_FAILED] != 0 || n_acks == 0)
        rc = -1;
out:
    bench_server_kill(&srv);
    if (!o->keep) {
        bench_remove_db(db_path);
        unlink(srv.log_path);
    }
    for (unsigned i = 0; cls != NULL && i < o->clients; i++)
        free(cls[i].samples);
    free(cls);
    free(acks);
    curl_easy_cleanup(c);
    free(body);
    return rc;
}

/* ---- the ceiling: one commit per update ---------------------------------- */

typedef struct db_ceiling {
    sqlite3 *db;
    sqlite3_stmt *upsert;
    uint64_t node;             /* lifecycle position, kept across halves */
    int step;
    int64_t ts[3];
    int64_t seq;
    uint32_t *lat_us;
    size_t n_lat, cap_lat;
} db_ceiling;

/*
 * Lays out the service's schema in path with the service's own store, then
 * opens the ceiling's connection to it: engine_bench's direct design, one
 * writer. 0 or -1.
 */
static int db_ceiling_open(db_ceiling *cg, const char *path, bool full)
{
    if (bench_direct_init("durable_bench", path, full) != 0)
        return -1;
    if (bench_direct_open(path, full, &cg->db, &cg->upsert) != 0) {
        fprintf(stderr, "durable_bench: ceiling %s: %s\n", path,
                cg->db ? sqlite3_errmsg(cg->db) : "out of memory");
        return -1;
    }
    return 0;
}

static void db_ceiling_close(db_ceiling *cg)
{
    sqlite3_finalize(cg->upsert);
    sqlite3_close(cg->db);
    free(cg->lat_us);
}

/*
 * Upserts for `seconds`, each in its own (autocommit) transaction, walking
 * node lifecycles like the clients do. Adds to *updates; 0 or -1.
 */
static int db_ceiling_loop(db_ceiling *cg, double seconds, unsigned runs,
                           uint64_t *updates)
{
    uint64_t end = bench_now_ns() + (uint64_t)(seconds * 1e9);
    sqlite3_stmt *st = cg->upsert;

    while (bench_now_ns() < end) {
        char run[32], node[32];
        uint64_t t0 = bench_now_ns(), us;
        int64_t now = model_now_ms();
        int rc;

        if (cg->step == 0)
            cg->ts[0] = cg->ts[1] = cg->ts[2] = NS_TS_NULL;
        cg->ts[cg->step] = now;
        snprintf(run, sizeof run, "dbench-%" PRIu64, cg->node % runs);
        snprintf(node, sizeof node, "c0-n%" PRIu64, cg->node);
        if (bench_direct_bind(st, run, node, db_steps[cg->step], cg->ts, now,
                              ++cg->seq) != SQLITE_OK)
            goto err;
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            goto err;
        us = (bench_now_ns() - t0) / 1000;
        if (cg->n_lat == cg->cap_lat) {
            size_t cap = cg->cap_lat ? cg->cap_lat * 2 : DB_SAMPLES_INITIAL;
            uint32_t *grown = realloc(cg->lat_us, cap * sizeof *grown);
            if (grown == NULL)
                goto err;
            cg->lat_us = grown;
            cg->cap_lat = cap;
        }
        cg->lat_us[cg->n_lat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
        (*updates)++;
        if (++cg->step == 3) {
            cg->step = 0;
            cg->node++;
        }
    }
    return 0;
err:
    fprintf(stderr, "durable_bench: ceiling upsert: %s\n",
            sqlite3_errmsg(cg->db));
    return -1;
}

/* The whole of one mode: ceiling, durable, ceiling. 0 or -1. */
static int db_run_mode(const db_opts *o, const char *dir, bool full,
                       db_result *r)
{
    db_ceiling cg = {0};
    char path[PATH_MAX];
    uint64_t n[2] = {0, 0};
    double secs[2];
    int rc = -1, durable_rc = -1;

    snprintf(path, sizeof path, "%s/ceiling-%s.db", dir, r->sync);
    if (db_ceiling_open(&cg, path, full) != 0)
        goto out;
    for (int half = 0; half < 2; half++) {
        uint64_t t0;

        if (half == 1)
            durable_rc = db_run_durable(o, dir, full, r);
        t0 = bench_now_ns();
        if (db_ceiling_loop(&cg, o->ceiling_seconds / 2, o->runs, &n[half])
            != 0)
            goto out;
        secs[half] = (double)(bench_now_ns() - t0) / 1e9;
        r->ceil_rate[half] = secs[half] > 0 ? (double)n[half] / secs[half]
                                            : 0;
        printf("ceiling %-6s: half %d: %" PRIu64 " commits in %.2f s, "
               "%.0f/s\n", r->sync, half + 1, n[half], secs[half],
               r->ceil_rate[half]);
        fflush(stdout);
    }
    r->ceil_updates = n[0] + n[1];
    r->ceil_seconds = secs[0] + secs[1];
    if (cg.n_lat > 0) {
        qsort(cg.lat_us, cg.n_lat, sizeof *cg.lat_us, db_cmp_u32);
        r->ceil_p50_us = db_pct(cg.lat_us, cg.n_lat, 50);
        r->ceil_p99_us = db_pct(cg.lat_us, cg.n_lat, 99);
    }
    rc = durable_rc;
out:
    db_ceiling_close(&cg);
    if (!o->keep)
        bench_remove_db(path);
    return rc;
}

/* ---- the program --------------------------------------------------------- */

static void db_usage(FILE *out)
{
    fprintf(out,
            "usage: durable_bench [options]\n"
            "  --server PATH        nodestate binary (default: ../nodestate beside this program)\n"
            "  --server-arg ARG     one more argument for the service (repeatable)\n"
            "  --clients N          client threads, default 32\n"
            "  --runs N             runs the nodes are spread over, default 16\n"
            "  --duration S         seconds measured per sync mode, default 10\n"
            "  --warmup S           seconds run before measuring, default 1\n"
            "  --ceiling-seconds S  ceiling loop per sync mode (two halves), default 6\n"
            "  --wait-timeout S     ?timeout= sent with wait=true (default: the service's)\n"
            "  --sync MODE          normal, full or both (default both)\n"
            "  --dir DIR            where the files go (TMPDIR or /tmp); the disk measured\n"
            "  --keep               keep the database files and service logs\n");
}

/* Parses argv over the defaults in o; 0 to run, 1 after --help, -1 on error. */
static int db_parse(db_opts *o, int argc, char **argv)
{
    const bench_opt opts[] = {
        {"--server", BENCH_OPT_PATH, o->server, 0, 0, 0, 0},
        {"--server-arg", BENCH_OPT_ARG_LIST, &o->server_args, 0, 0, 0, 0},
        {"--clients", BENCH_OPT_UNSIGNED, &o->clients, 1, 1024, 0, 0},
        {"--runs", BENCH_OPT_UNSIGNED, &o->runs, 1, 1000000, 0, 0},
        {"--duration", BENCH_OPT_NUMBER, &o->duration, 0, 0, 0.1, 3600},
        {"--warmup", BENCH_OPT_NUMBER, &o->warmup, 0, 0, 0, 600},
        {"--ceiling-seconds", BENCH_OPT_NUMBER, &o->ceiling_seconds, 0, 0,
         0.1, 3600},
        {"--wait-timeout", BENCH_OPT_NUMBER, &o->wait_timeout, 0, 0, 0.001,
         3600},
        {"--sync", BENCH_OPT_SYNC, &o->sync_modes, 0, 0, 0, 0},
        {"--dir", BENCH_OPT_STRING, &o->dir, 0, 0, 0, 0},
        {"--keep", BENCH_OPT_FLAG, &o->keep, 0, 0, 0, 0},
    };

    return bench_parse_args("durable_bench", opts,
                            sizeof opts / sizeof opts[0], db_usage, argc,
                            argv);
}

int main(int argc, char **argv)
{
    db_opts o = {
        .clients = 32,
        .runs = 16,
        .duration = 10,
        .warmup = 1,
        .ceiling_seconds = 6,
        .sync_modes = BENCH_SYNC_NORMAL | BENCH_SYNC_FULL,
    };
    db_result res[2];
    size_t n_res = 0;
    char dir[PATH_MAX / 2];
    int failed = 0;

    bench_default_server(o.server, sizeof o.server);
    o.dir = bench_default_dir();
    switch (db_parse(&o, argc, argv)) {
    case 1:
        return 0;
    case -1:
        return 2;
    }
    if (bench_check_server("durable_bench", o.server) != 0)
        return 2;
    /* A client whose server went away must not kill the program. */
    signal(SIGPIPE, SIG_IGN);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "durable_bench: curl_global_init failed\n");
        return 1;
    }
    if (bench_make_dir("durable_bench", o.dir, dir, sizeof dir) != 0) {
        curl_global_cleanup();
        return 1;
    }

    printf("nodestate durable_bench\n");
    bench_print_machine(true);
    printf("workload: %u clients, keep-alive, POST ...?wait=true%s, "
           "lifecycle scheduled->running->completed over %u runs; "
           "warm-up %.1f s, measured %.1f s\n", o.clients,
           o.wait_timeout > 0 ? " with timeout" : "", o.runs, o.warmup,
           o.duration);
    printf("ceiling: one thread, single-row upsert per transaction, %.1f s "
           "(half before, half after the durable run)\n", o.ceiling_seconds);
    printf("service: %s", o.server);
    for (size_t i = 0; i < o.server_args.n; i++)
        printf(" %s", o.server_args.args[i]);
    printf("; files in %s\n\n", dir);
    fflush(stdout);

    for (int m = 0; m < 2; m++) {
        bool full = m == 1;

        if (!(o.sync_modes & (full ? BENCH_SYNC_FULL : BENCH_SYNC_NORMAL)))
            continue;
        db_result *r = &res[n_res++];
        memset(r, 0, sizeof *r);
        r->sync = full ? "full" : "normal";
        r->ran = true;
        r->ok = db_run_mode(&o, dir, full, r) == 0;
        printf("\n");
        fflush(stdout);
    }
    if (!o.keep)
        rmdir(dir);

    printf("%-7s %12s %9s %9s %12s %9s %9s %11s %7s\n", "sync",
           "ceiling/s", "c_p50_us", "c_p99_us", "acks/s", "p50_us",
           "p99_us", "acks/commit", "ratio");
    for (size_t i = 0; i < n_res; i++) {
        const db_result *r = &res[i];
        double ceil = r->ceil_seconds > 0
                          ? (double)r->ceil_updates / r->ceil_seconds : 0;
        double acks = r->window_s > 0
                          ? (double)r->kinds[DB_ACK] / r->window_s : 0;

        printf("%-7s %12.0f %9.0f %9.0f %12.0f %9.0f %9.0f %11.1f %6.1fx%s\n",
               r->sync, ceil, r->ceil_p50_us, r->ceil_p99_us, acks,
               r->ack_p50_us, r->ack_p99_us,
               r->commits > 0 ? (double)r->kinds[DB_ACK] / (double)r->commits
                              : 0.0,
               ceil > 0 ? acks / ceil : 0.0, r->ok ? "" : "  FAILED");
        if (!r->ok)
            failed = 1;
        if (strcmp(r->sync, "full") == 0 && ceil > 0)
            printf("target (full): durable acks/s >= 2x ceiling: %s "
                   "(%.1fx)\n", acks / ceil >= 2.0 ? "met" : "NOT met",
                   acks / ceil);
    }
    printf("ratio = durable acks/s / ceiling commits/s; latencies: ceiling "
           "per commit, durable per acked request\n");
    curl_global_cleanup();
    return failed;
}
