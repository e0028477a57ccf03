/*
 * engine_bench: the write path we replace against the one we built.
 *
 * N producer threads each report full lifecycles (scheduled, running,
 * completed) for their own distinct nodes, spread over several runs.
 *
 *   A  direct SQLite (what we replace): each producer has its own connection
 *      to one shared WAL file (busy_timeout 5000) and commits every upsert in
 *      its own transaction.
 *   B  the engine: producers call engine_submit on one engine; the run ends
 *      when engine_durable_seq reaches the last seq handed out, so the time
 *      to drain the queue to disk is part of the measurement.
 *
 * A is much slower, so it writes fewer updates (--direct-updates) and the two
 * are compared by rate. Each producer keeps a window of nodes in flight and
 * walks them phase by phase, so one node's three updates are --window *
 * --producers updates apart: B's coalescing gets no free lunch from
 * back-to-back updates of one node unless --window 1 asks for it.
 *
 * Afterwards each file is checked: one row per node in every run, all of them
 * completed. Exit status is 0 only when every check passed.
 */
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "bench_common.h"
#include "config.h"
#include "engine.h"
#include "model.h"

/* Pause after a queue-full answer: long enough to let the writer run. */
#define BENCH_QUEUE_FULL_PAUSE_NS 50000L
/* How many times design A retries an upsert that stayed busy for 5 s. */
#define BENCH_BUSY_TRIES 100
/* The longest we wait for the engine to drain before calling it stuck. */
#define BENCH_DRAIN_LIMIT_S 600

typedef struct bench_opts {
    size_t updates;          /* design B: updates to submit */
    size_t direct_updates;   /* design A: updates to commit */
    unsigned producers;
    unsigned runs;           /* nodes are spread over this many runs */
    size_t window;           /* nodes each producer keeps in flight */
    size_t batch_size;       /* engine: most entries per transaction */
    double batch_interval;   /* engine: seconds the oldest entry may wait */
    size_t queue_capacity;   /* engine: bounded queue */
    double shutdown_timeout;
    int sync_modes;          /* BENCH_SYNC_* bits */
    const char *dir;         /* where the temporary directory goes */
    bool keep;               /* keep the database files */
} bench_opts;

/* What one design under one sync mode measured. */
typedef struct bench_result {
    const char *design;
    const char *sync;
    size_t updates;
    double seconds;
    double p50_us;
    double p99_us;
    uint64_t retries;        /* A: still-busy retries; B: queue-full retries */
    uint64_t failures;       /* updates that did not go in */
    uint64_t rows_written;   /* B: row upserts the writer committed */
    uint64_t batches;        /* B: transactions */
    uint64_t coalesced;      /* B: entries absorbed by a newer one */
    bool ok;                 /* ran and passed the row check */
} bench_result;

/* State every producer of one measurement shares. */
typedef struct bench_shared {
    const bench_opts *o;
    pthread_barrier_t start;
    engine *e;               /* B */
    _Atomic int64_t next_seq; /* A: the seq a direct writer would stamp */
} bench_shared;

typedef struct bench_producer {
    bench_shared *sh;
    unsigned index;
    size_t nodes;            /* this producer's nodes: index + k * producers */
    sqlite3 *db;             /* A: this producer's own connection */
    sqlite3_stmt *upsert;    /* A */
    uint64_t *lat_ns;        /* one entry per update */
    size_t n_lat;
    uint64_t retries;
    uint64_t failures;
    int64_t max_seq;         /* B: highest seq accepted */
    pthread_t thread;
} bench_producer;

/* The writer's durable seq, signalled by engine_on_durable. */
typedef struct bench_durable {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int64_t seq;             /* guarded by mu */
} bench_durable;

static const ns_status bench_phases[3] = {NS_SCHEDULED, NS_RUNNING,
                                          NS_COMPLETED};

/* Producer p's k-th node is global node p + k * P; its run is k % runs, so
 * every producer writes into every run, as workers of one run would. */
static size_t bench_global_node(const bench_opts *o, unsigned p, size_t k)
{
    return (size_t)p + k * o->producers;
}

static void bench_node_ids(const bench_opts *o, size_t k, size_t g,
                           char run[32], char node[32])
{
    snprintf(run, 32, "bench-%zu", k % o->runs);
    snprintf(node, 32, "n%zu", g);
}

static size_t bench_producer_nodes(size_t total_nodes, unsigned producers,
                                   unsigned p)
{
    return total_nodes / producers + (p < total_nodes % producers ? 1 : 0);
}

/* ---- design A: direct SQLite --------------------------------------------- */

/*
 * Commits one full-row upsert in its own (autocommit) transaction, as each
 * worker of the old design did. A statement still busy after the 5 s busy
 * timeout is retried, and counted, so the row check stays meaningful.
 * Returns 0, or -1 when SQLite refused it for another reason.
 */
static int bench_direct_upsert(bench_producer *pr, const char *run,
                               const char *node, ns_status status,
                               const int64_t ts[3], int64_t now)
{
    sqlite3_stmt *st = pr->upsert;
    int64_t seq = atomic_fetch_add(&pr->sh->next_seq, 1) + 1;
    int rc = SQLITE_OK;

    if (bench_direct_bind(st, run, node, model_status_name(status), ts, now,
                          seq) != SQLITE_OK)
        goto err;
    for (int tries = 0; tries < BENCH_BUSY_TRIES; tries++) {
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_BUSY && rc != SQLITE_LOCKED)
            break;
        pr->retries++;
    }
    if (rc != SQLITE_DONE)
        goto err;
    return 0;
err:
    if (pr->failures++ == 0)
        fprintf(stderr, "engine_bench: direct upsert: %s\n",
                sqlite3_errmsg(pr->db));
    return -1;
}

static void *bench_direct_main(void *arg)
{
    bench_producer *pr = arg;
    const bench_opts *o = pr->sh->o;
    size_t w = o->window;
    /* Per node in the window: scheduled_at, started_at, completed_at. */
    int64_t (*ts)[3] = calloc(w, sizeof *ts);

    pthread_barrier_wait(&pr->sh->start);
    if (ts == NULL) {
        pr->failures += pr->nodes * 3;
        return NULL;
    }
    for (size_t base = 0; base < pr->nodes; base += w) {
        size_t n = pr->nodes - base < w ? pr->nodes - base : w;
        for (size_t i = 0; i < n; i++)
            ts[i][0] = ts[i][1] = ts[i][2] = NS_TS_NULL;
        for (int phase = 0; phase < 3; phase++) {
            for (size_t i = 0; i < n; i++) {
                size_t k = base + i;
                char run[32], node[32];
                uint64_t t0 = bench_now_ns();
                int64_t now = model_now_ms();

                bench_node_ids(o, k, bench_global_node(o, pr->index, k), run,
                               node);
                ts[i][phase] = now;
                bench_direct_upsert(pr, run, node, bench_phases[phase], ts[i],
                                    now);
                pr->lat_ns[pr->n_lat++] = bench_now_ns() - t0;
            }
        }
    }
    free(ts);
    return NULL;
}

/* ---- design B: the engine ------------------------------------------------ */

static void *bench_engine_main(void *arg)
{
    bench_producer *pr = arg;
    const bench_opts *o = pr->sh->o;
    size_t w = o->window;
    struct timespec pause = {0, BENCH_QUEUE_FULL_PAUSE_NS};

    pthread_barrier_wait(&pr->sh->start);
    for (size_t base = 0; base < pr->nodes; base += w) {
        size_t n = pr->nodes - base < w ? pr->nodes - base : w;
        for (int phase = 0; phase < 3; phase++) {
            for (size_t i = 0; i < n; i++) {
                size_t k = base + i;
                char run[32], node[32];
                ns_update u;
                ns_row *row = NULL;
                engine_result r;
                /* Latency is what the producer waits, backpressure included. */
                uint64_t t0 = bench_now_ns();

                bench_node_ids(o, k, bench_global_node(o, pr->index, k), run,
                               node);
                memset(&u, 0, sizeof u);
                u.status = bench_phases[phase];
                while ((r = engine_submit(pr->sh->e, run, node, &u, &row))
                       == ENGINE_QUEUE_FULL) {
                    pr->retries++;
                    nanosleep(&pause, NULL);
                }
                pr->lat_ns[pr->n_lat++] = bench_now_ns() - t0;
                if (r == ENGINE_ACCEPTED && row != NULL) {
                    if (row->seq > pr->max_seq)
                        pr->max_seq = row->seq;
                } else {
                    if (pr->failures++ == 0)
                        fprintf(stderr, "engine_bench: engine_submit %s/%s "
                                "%s: result %d\n", run, node,
                                model_status_name(u.status), (int)r);
                }
                model_row_unref(row);
            }
        }
    }
    return NULL;
}

static void bench_on_durable(void *ctx, int64_t seq)
{
    bench_durable *d = ctx;

    pthread_mutex_lock(&d->mu);
    if (seq > d->seq)
        d->seq = seq;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

/*
 * Waits until every seq <= target is on disk. Returns 0, or -1 when the
 * writer died or BENCH_DRAIN_LIMIT_S passed first.
 */
static int bench_wait_durable(engine *e, bench_durable *d, int64_t target)
{
    struct timespec limit;
    int rc = 0;

    clock_gettime(CLOCK_REALTIME, &limit);
    limit.tv_sec += BENCH_DRAIN_LIMIT_S;
    engine_flush_soon(e);
    pthread_mutex_lock(&d->mu);
    while (d->seq < target && engine_durable_seq(e) < target) {
        struct timespec tick;

        /* Wake now and then: the callback is the fast path, polling the
         * seq and liveness is the safety net. */
        clock_gettime(CLOCK_REALTIME, &tick);
        tick.tv_nsec += 10000000L;
        if (tick.tv_nsec >= 1000000000L) {
            tick.tv_sec++;
            tick.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&d->cv, &d->mu, &tick);
        if (!engine_alive(e) || tick.tv_sec > limit.tv_sec) {
            rc = -1;
            break;
        }
    }
    pthread_mutex_unlock(&d->mu);
    return rc;
}

/* ---- measurement --------------------------------------------------------- */

static int bench_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentiles over every producer's latencies. */
static int bench_latency(bench_producer *prs, unsigned n, bench_result *res)
{
    size_t total = 0, at = 0;
    uint64_t *all;

    for (unsigned i = 0; i < n; i++)
        total += prs[i].n_lat;
    if (total == 0)
        return 0;
    all = malloc(total * sizeof *all);
    if (all == NULL)
        return -1;
    for (unsigned i = 0; i < n; i++) {
        memcpy(all + at, prs[i].lat_ns, prs[i].n_lat * sizeof *all);
        at += prs[i].n_lat;
    }
    qsort(all, total, sizeof *all, bench_cmp_u64);
    res->p50_us = (double)all[(total - 1) * 50 / 100] / 1000.0;
    res->p99_us = (double)all[(total - 1) * 99 / 100] / 1000.0;
    free(all);
    return 0;
}

/*
 * Checks the file: every run holds exactly the nodes the producers wrote to
 * it, and all of them are completed. Prints what it found; returns 0 or -1.
 */
static int bench_check_rows(const char *path, const bench_opts *o,
                            size_t total_nodes, const char *label)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    size_t *want = calloc(o->runs, sizeof *want);
    size_t rows = 0, completed = 0, bad_runs = 0;
    int rc = -1;

    if (want == NULL)
        goto out;
    for (size_t g = 0; g < total_nodes; g++)
        want[(g / o->producers) % o->runs]++;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK
        || sqlite3_prepare_v2(db,
                              "SELECT run_id, count(*),"
                              " sum(status = 'completed')"
                              " FROM run_node_state GROUP BY run_id",
                              -1, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "engine_bench: check %s: %s\n", path,
                db ? sqlite3_errmsg(db) : "out of memory");
        goto out;
    }
    size_t seen_runs = 0;
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        const char *run = (const char *)sqlite3_column_text(st, 0);
        size_t n = (size_t)sqlite3_column_int64(st, 1);
        size_t done = (size_t)sqlite3_column_int64(st, 2);
        unsigned idx;
        char tail;

        rows += n;
        completed += done;
        seen_runs++;
        if (run == NULL || sscanf(run, "bench-%u%c", &idx, &tail) != 1
            || idx >= o->runs || want[idx] != n || done != n)
            bad_runs++;
    }
    if (step != SQLITE_DONE) {
        fprintf(stderr, "engine_bench: check %s: %s\n", path,
                sqlite3_errmsg(db));
        goto out;
    }
    size_t want_runs = 0;
    for (unsigned r = 0; r < o->runs; r++)
        want_runs += want[r] > 0;
    bool ok = bad_runs == 0 && seen_runs == want_runs && rows == total_nodes
              && completed == total_nodes;
    printf("check %-16s runs %zu/%zu, rows %zu/%zu, completed %zu, "
           "mismatched runs %zu: %s\n", label, seen_runs, want_runs, rows,
           total_nodes, completed, bad_runs, ok ? "OK" : "FAILED");
    rc = ok ? 0 : -1;
out:
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(want);
    return rc;
}

/* Splits the nodes over the producers and gives each a latency array. */
static bench_producer *bench_producers_new(bench_shared *sh, size_t nodes)
{
    const bench_opts *o = sh->o;
    bench_producer *prs = calloc(o->producers, sizeof *prs);

    if (prs == NULL)
        return NULL;
    for (unsigned p = 0; p < o->producers; p++) {
        prs[p].sh = sh;
        prs[p].index = p;
        prs[p].nodes = bench_producer_nodes(nodes, o->producers, p);
        prs[p].lat_ns = malloc((prs[p].nodes * 3 + 1) * sizeof(uint64_t));
        if (prs[p].lat_ns == NULL)
            goto err;
    }
    return prs;
err:
    for (unsigned p = 0; p < o->producers; p++)
        free(prs[p].lat_ns);
    free(prs);
    return NULL;
}

static void bench_producers_free(bench_producer *prs, unsigned n)
{
    if (prs == NULL)
        return;
    for (unsigned p = 0; p < n; p++) {
        sqlite3_finalize(prs[p].upsert);
        sqlite3_close(prs[p].db);
        free(prs[p].lat_ns);
    }
    free(prs);
}

/*
 * Starts the producers, releases them together and returns the start time,
 * or 0 when the start barrier cannot be set up. A thread that cannot be
 * started ends the program: the others would wait at the barrier forever.
 */
static uint64_t bench_start(bench_shared *sh, bench_producer *prs,
                            void *(*fn)(void *))
{
    unsigned n = sh->o->producers, started = 0;

    if (pthread_barrier_init(&sh->start, NULL, n + 1) != 0)
        return 0;
    for (; started < n; started++)
        if (pthread_create(&prs[started].thread, NULL, fn, &prs[started]) != 0)
            break;
    if (started < n) {
        fprintf(stderr, "engine_bench: cannot start producer threads\n");
        exit(1);
    }
    pthread_barrier_wait(&sh->start);
    return bench_now_ns();
}

static void bench_join(bench_shared *sh, bench_producer *prs,
                       bench_result *res)
{
    for (unsigned p = 0; p < sh->o->producers; p++) {
        pthread_join(prs[p].thread, NULL);
        res->updates += prs[p].n_lat;
        res->retries += prs[p].retries;
        res->failures += prs[p].failures;
    }
    pthread_barrier_destroy(&sh->start);
}

/* Design A under one sync mode, into res. Returns 0 or -1. */
static int bench_run_direct(const bench_opts *o, const char *path,
                            bool sync_full, bench_result *res)
{
    bench_shared sh = {.o = o};
    size_t nodes = o->direct_updates / 3;
    bench_producer *prs = NULL;
    uint64_t t0;
    int rc = -1;

    if (nodes < o->producers)
        nodes = o->producers;
    atomic_init(&sh.next_seq, 0);
    /* Both designs write the same table, index and WAL file layout. */
    if (bench_direct_init("engine_bench", path, sync_full) != 0)
        return -1;
    prs = bench_producers_new(&sh, nodes);
    if (prs == NULL)
        goto out;
    /* Connections open before the clock starts: the old design kept them. */
    for (unsigned p = 0; p < o->producers; p++) {
        if (bench_direct_open(path, sync_full, &prs[p].db, &prs[p].upsert)
            != 0) {
            fprintf(stderr, "engine_bench: %s: %s\n", path,
                    prs[p].db ? sqlite3_errmsg(prs[p].db) : "out of memory");
            goto out;
        }
    }
    t0 = bench_start(&sh, prs, bench_direct_main);
    if (t0 == 0)
        goto out;
    bench_join(&sh, prs, res);
    res->seconds = (double)(bench_now_ns() - t0) / 1e9;
    if (bench_latency(prs, o->producers, res) != 0)
        goto out;
    bench_producers_free(prs, o->producers);
    prs = NULL;
    rc = bench_check_rows(path, o, nodes,
                          sync_full ? "A direct full" : "A direct normal");
    if (res->failures != 0)
        rc = -1;
out:
    bench_producers_free(prs, o->producers);
    return rc;
}

/* Design B under one sync mode, into res. Returns 0 or -1. */
static int bench_run_engine(const bench_opts *o, const char *path,
                            bool sync_full, bench_result *res)
{
    bench_shared sh = {.o = o};
    size_t nodes = o->updates / 3;
    bench_producer *prs = NULL;
    bench_durable dur = {.seq = 0};
    engine_config cfg = {
        .db_path = path,
        .batch_size = o->batch_size,
        .batch_interval = o->batch_interval,
        .queue_capacity = o->queue_capacity,
        .shutdown_timeout = o->shutdown_timeout,
        .synchronous_full = sync_full,
    };
    char err[512];
    engine *e = NULL;
    int64_t last = 0;
    uint64_t t0;
    int rc = -1;

    if (nodes < o->producers)
        nodes = o->producers;
    if (pthread_mutex_init(&dur.mu, NULL) != 0)
        return -1;
    if (pthread_cond_init(&dur.cv, NULL) != 0) {
        pthread_mutex_destroy(&dur.mu);
        return -1;
    }
    atomic_init(&sh.next_seq, 0);
    e = engine_open(&cfg, err, sizeof err);
    if (e == NULL) {
        fprintf(stderr, "engine_bench: engine_open: %s\n", err);
        goto out;
    }
    engine_on_durable(e, bench_on_durable, &dur);
    sh.e = e;
    prs = bench_producers_new(&sh, nodes);
    if (prs == NULL)
        goto out;
    t0 = bench_start(&sh, prs, bench_engine_main);
    if (t0 == 0)
        goto out;
    bench_join(&sh, prs, res);
    for (unsigned p = 0; p < o->producers; p++)
        if (prs[p].max_seq > last)
            last = prs[p].max_seq;
    if (bench_wait_durable(e, &dur, last) != 0) {
        fprintf(stderr, "engine_bench: the writer did not reach seq %" PRId64
                " (durable %" PRId64 ")\n", last, engine_durable_seq(e));
        goto out;
    }
    res->seconds = (double)(bench_now_ns() - t0) / 1e9;
    if (bench_latency(prs, o->producers, res) != 0)
        goto out;
    ns_stats *st = engine_stats(e);
    res->rows_written = atomic_load(&st->rows_written);
    res->batches = atomic_load(&st->batches_written);
    res->coalesced = atomic_load(&st->updates_coalesced);
    size_t unwritten = engine_close(e);
    e = NULL;
    if (unwritten != 0) {
        fprintf(stderr, "engine_bench: engine_close left %zu entries "
                "unwritten\n", unwritten);
        goto out;
    }
    rc = bench_check_rows(path, o, nodes,
                          sync_full ? "B engine full" : "B engine normal");
    if (res->failures != 0)
        rc = -1;
out:
    if (e != NULL)
        engine_close(e);
    bench_producers_free(prs, o->producers);
    pthread_cond_destroy(&dur.cv);
    pthread_mutex_destroy(&dur.mu);
    return rc;
}

/* ---- the program --------------------------------------------------------- */

static void bench_usage(FILE *out)
{
    fprintf(out,
            "usage: engine_bench [options]\n"
            "  --updates N          design B (engine) updates, default 300000\n"
            "  --direct-updates N   design A (direct SQLite) updates, default 20000\n"
            "  --producers N        producer threads, default 8\n"
            "  --runs N             runs the nodes are spread over, default 16\n"
            "  --window N           nodes each producer has in flight, default 1024\n"
            "  --batch-size N       engine batch size (service default)\n"
            "  --batch-interval S   engine batch interval seconds (service default)\n"
            "  --queue-capacity N   engine queue capacity (service default)\n"
            "  --sync MODE          normal, full or both (default both)\n"
            "  --dir DIR            where to put the temporary files (TMPDIR or /tmp)\n"
            "  --keep               keep the database files\n");
}

/* Parses argv over the defaults in o; 0 to run, 1 after --help, -1 on error. */
static int bench_parse(bench_opts *o, int argc, char **argv)
{
    const bench_opt opts[] = {
        {"--updates", BENCH_OPT_SIZE, &o->updates, 3, BENCH_NO_MAX, 0, 0},
        {"--direct-updates", BENCH_OPT_SIZE, &o->direct_updates, 3,
         BENCH_NO_MAX, 0, 0},
        {"--producers", BENCH_OPT_UNSIGNED, &o->producers, 1, 1024, 0, 0},
        {"--runs", BENCH_OPT_UNSIGNED, &o->runs, 1, 1000000, 0, 0},
        {"--window", BENCH_OPT_SIZE, &o->window, 1, BENCH_NO_MAX, 0, 0},
        {"--batch-size", BENCH_OPT_SIZE, &o->batch_size, 1, BENCH_NO_MAX, 0,
         0},
        {"--queue-capacity", BENCH_OPT_SIZE, &o->queue_capacity, 1,
         BENCH_NO_MAX, 0, 0},
        {"--batch-interval", BENCH_OPT_NUMBER, &o->batch_interval, 0, 0, 0.0,
         60.0},
        {"--sync", BENCH_OPT_SYNC, &o->sync_modes, 0, 0, 0, 0},
        {"--dir", BENCH_OPT_STRING, &o->dir, 0, 0, 0, 0},
        {"--keep", BENCH_OPT_FLAG, &o->keep, 0, 0, 0, 0},
    };

    return bench_parse_args("engine_bench", opts, sizeof opts / sizeof opts[0],
                            bench_usage, argc, argv);
}

static void bench_print_row(const bench_result *r)
{
    if (!r->ok && r->seconds == 0.0) {
        printf("%-9s %-7s %10s\n", r->design, r->sync, "FAILED");
        return;
    }
    printf("%-9s %-7s %10zu %9.3f %11.0f %9.1f %9.1f %8" PRIu64 "%s\n",
           r->design, r->sync, r->updates, r->seconds,
           r->seconds > 0 ? (double)r->updates / r->seconds : 0.0, r->p50_us,
           r->p99_us, r->retries, r->ok ? "" : "  FAILED");
}

int main(int argc, char **argv)
{
    config defaults;
    bench_opts o = {
        .updates = 300000,
        .direct_updates = 20000,
        .producers = 8,
        .runs = 16,
        .window = 1024,
        .sync_modes = BENCH_SYNC_NORMAL | BENCH_SYNC_FULL,
    };
    /* Each sync mode runs design A, then design B, into its own file. */
    static const struct {
        const char *name;
        const char *file;
        int (*run)(const bench_opts *o, const char *path, bool sync_full,
                   bench_result *res);
    } designs[2] = {
        {"A direct", "a", bench_run_direct},
        {"B engine", "b", bench_run_engine},
    };
    bench_result res[4];
    size_t n_res = 0;
    char dir[PATH_MAX];
    int failed = 0;

    /* The engine runs with the service's defaults unless told otherwise. */
    config_defaults(&defaults);
    o.batch_size = defaults.batch_size;
    o.batch_interval = defaults.batch_interval;
    o.queue_capacity = defaults.queue_capacity;
    o.shutdown_timeout = defaults.shutdown_timeout;
    o.dir = bench_default_dir();
    switch (bench_parse(&o, argc, argv)) {
    case 1:
        return 0;
    case -1:
        return 2;
    }
    if (bench_make_dir("engine_bench", o.dir, dir, sizeof dir) != 0)
        return 1;

    printf("nodestate engine_bench\n");
    bench_print_machine(false);
    printf("workload: %u producers, %u runs, window %zu nodes/producer, "
           "lifecycle scheduled->running->completed\n",
           o.producers, o.runs, o.window);
    printf("engine: batch_size %zu, batch_interval %.3f s, queue_capacity "
           "%zu; files in %s\n\n", o.batch_size, o.batch_interval,
           o.queue_capacity, dir);
    fflush(stdout);

    for (int m = 0; m < 2; m++) {
        bool full = m == 1;
        const char *sync = full ? "full" : "normal";
        char path[PATH_MAX + 16];

        if (!(o.sync_modes & (full ? BENCH_SYNC_FULL : BENCH_SYNC_NORMAL)))
            continue;
        for (int d = 0; d < 2; d++) {
            bench_result *r = &res[n_res++];

            memset(r, 0, sizeof *r);
            r->design = designs[d].name;
            r->sync = sync;
            snprintf(path, sizeof path, "%s/%s-%s.db", dir, designs[d].file,
                     sync);
            r->ok = designs[d].run(&o, path, full, r) == 0;
            if (!o.keep)
                bench_remove_db(path);
        }
        fflush(stdout);
    }
    if (!o.keep)
        rmdir(dir);

    /* retries: A = upserts still busy after busy_timeout, B = queue-full
     * answers the producer waited out. */
    printf("\n%-9s %-7s %10s %9s %11s %9s %9s %8s\n", "design", "sync",
           "updates", "seconds", "updates/s", "p50_us", "p99_us", "retries");
    for (size_t i = 0; i < n_res; i++) {
        bench_print_row(&res[i]);
        if (!res[i].ok)
            failed = 1;
    }
    printf("\n");
    for (size_t i = 0; i + 1 < n_res; i += 2) {
        const bench_result *a = &res[i], *b = &res[i + 1];
        double ra = a->seconds > 0 ? (double)a->updates / a->seconds : 0;
        double rb = b->seconds > 0 ? (double)b->updates / b->seconds : 0;

        if (ra > 0 && rb > 0)
            printf("ratio B/A (updates/s), synchronous=%s: %.1fx\n", a->sync,
                   rb / ra);
        printf("engine %s: %" PRIu64 " rows written in %" PRIu64
               " transactions, %" PRIu64 " updates coalesced\n", b->sync,
               b->rows_written, b->batches, b->coalesced);
    }
    return failed;
}
