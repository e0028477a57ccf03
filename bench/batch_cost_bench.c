/*
 * batch_cost_bench: what one item of a batch of new nodes costs the service
 * in CPU time, without HTTP, libcurl or the clients beside it (the parts
 * batch_bench measures together on two shared cores). All times are the
 * calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID), which the machine's
 * other load changes far less than the wall clock.
 *
 *   decode  --requests bodies of --batch {"node_id","status":"running"}
 *           items, decoded by codec_decode_batch (its fast path) and by
 *           codec_decode_batch_tree (jansson's tree), alternating, --rounds
 *           times: ns per item each, and their ratio.
 *   api     the same bodies through api_handle on a fresh engine (decode,
 *           judge against the cache, accept into the queue, render the
 *           answer), each request a new set of nodes of one run: ns per item.
 *           The writer runs in its own thread and is not counted.
 *
 * Compare builds by running each build's binary; the ratio of the decoders
 * is a same-run comparison in one binary.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "bench_common.h"
#include "codec.h"
#include "engine.h"

#define BC_RUN "bench-run"

typedef struct bc_opts {
    size_t batch;
    size_t requests;
    unsigned rounds;
    const char *dir;
} bc_opts;

static double bc_cpu_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* A body of n new nodes, named after tag so that every request adds its own; NULL on OOM. */
static char *bc_body(size_t n, size_t tag, size_t *len)
{
    size_t cap = n * 64 + 32, at = 0;
    char *b = malloc(cap);
    if (b == NULL)
        return NULL;
    at += (size_t)snprintf(b, cap, "{\"updates\":[");
    for (size_t i = 0; i < n; i++)
        at += (size_t)snprintf(b + at, cap - at,
                               "%s{\"node_id\":\"node-%06zu-%zu\",\"status\":\"running\"}",
                               i ? "," : "", i, tag);
    at += (size_t)snprintf(b + at, cap - at, "]}");
    *len = at;
    return b;
}

/* CPU seconds to decode body `times` times with the fast path or the tree; -1 on failure. */
static double bc_decode(const char *body, size_t len, size_t n, size_t times, bool tree)
{
    double t0 = bc_cpu_s();
    for (size_t r = 0; r < times; r++) {
        int status = 0;
        char detail[256];
        codec_batch *b = tree ? codec_decode_batch_tree(body, len, BC_RUN, 4096, n, &status,
                                                        detail, sizeof detail)
                              : codec_decode_batch(body, len, BC_RUN, 4096, n, &status,
                                                   detail, sizeof detail);
        if (b == NULL || codec_batch_len(b) != n) {
            fprintf(stderr, "batch_cost_bench: decode failed: %d %s\n", status, detail);
            codec_batch_free(b);
            return -1;
        }
        codec_batch_free(b);
    }
    return bc_cpu_s() - t0;
}

static const char *bc_no_header(void *ctx, const char *name, size_t nth)
{
    (void)ctx;
    (void)name;
    (void)nth;
    return NULL;
}

static const char *bc_no_query(void *ctx, const char *name)
{
    (void)ctx;
    (void)name;
    return NULL;
}

/* ns of CPU per item through api_handle, each request new nodes; -1 on failure. */
static double bc_api(const bc_opts *o)
{
    char dir[PATH_MAX], db[PATH_MAX + 16], err[512] = "";
    double total = -1, spent = 0;
    engine *e = NULL;
    api *a = NULL;

    if (bench_make_dir("batch_cost_bench", o->dir, dir, sizeof dir) != 0)
        return -1;
    snprintf(db, sizeof db, "%s/api.db", dir);
    engine_config c = { .db_path = db, .batch_size = 10000, .batch_interval = 1,
                        .queue_capacity = o->batch * o->requests + 1, .shutdown_timeout = 600 };
    api_config ac = { .max_body_bytes = 1 << 20, .max_error_bytes = 65536,
                      .max_batch_updates = o->batch, .max_batch_body_bytes = 64 << 20,
                      .max_wait = 30, .default_wait = 10 };
    if ((e = engine_open(&c, err, sizeof err)) == NULL || (a = api_new(e, &ac)) == NULL) {
        fprintf(stderr, "batch_cost_bench: %s\n", err[0] ? err : "out of memory");
        goto out;
    }
    for (size_t r = 0; r < o->requests; r++) {
        size_t len;
        char *body = bc_body(o->batch, r, &len);
        if (body == NULL)
            goto out;
        api_request rq = { .method = "POST", .path = "/runs/" BC_RUN "/nodes", .body = body,
                           .body_len = len, .header = bc_no_header, .query = bc_no_query };
        api_response rs;
        memset(&rs, 0, sizeof rs);
        double t0 = bc_cpu_s();
        api_handle(a, &rq, &rs);
        spent += bc_cpu_s() - t0;
        int status = rs.status;
        api_response_free(&rs);
        free(body);
        if (status != 200 && status != 202) {
            fprintf(stderr, "batch_cost_bench: POST answered %d\n", status);
            goto out;
        }
    }
    total = spent * 1e9 / (double)(o->batch * o->requests);
out:
    api_free(a);
    if (e != NULL && engine_close(e) != 0)
        total = -1;
    bench_remove_db(db);
    remove(dir);
    return total;
}

static void bc_usage(FILE *out)
{
    fprintf(out,
            "usage: batch_cost_bench [options]\n"
            "  --batch N      items per request, default 1000\n"
            "  --requests N   requests per measurement, default 100\n"
            "  --rounds N     alternating decode rounds, default 5\n"
            "  --dir DIR      where the database goes (TMPDIR or /tmp)\n");
}

int main(int argc, char **argv)
{
    bc_opts o = { .batch = 1000, .requests = 100, .rounds = 5 };
    o.dir = bench_default_dir();
    const bench_opt opts[] = {
        {"--batch", BENCH_OPT_SIZE, &o.batch, 1, 10000, 0, 0},
        {"--requests", BENCH_OPT_SIZE, &o.requests, 1, 100000, 0, 0},
        {"--rounds", BENCH_OPT_UNSIGNED, &o.rounds, 1, 1000, 0, 0},
        {"--dir", BENCH_OPT_STRING, &o.dir, 0, 0, 0, 0},
    };
    switch (bench_parse_args("batch_cost_bench", opts, sizeof opts / sizeof *opts, bc_usage,
                             argc, argv)) {
    case 1:
        return 0;
    case -1:
        return 2;
    }
    printf("nodestate batch_cost_bench\n");
    bench_print_machine(false);
    printf("workload: requests of %zu new nodes ({\"node_id\",\"status\":\"running\"}), "
           "CPU time of the calling thread\n", o.batch);

    size_t len;
    char *body = bc_body(o.batch, 0, &len);
    if (body == NULL)
        return 1;
    double sum_tree = 0, sum_fast = 0;
    for (unsigned r = 0; r < o.rounds; r++) {
        double tree = bc_decode(body, len, o.batch, o.requests, true);
        double fast = bc_decode(body, len, o.batch, o.requests, false);
        if (tree < 0 || fast < 0) {
            free(body);
            return 1;
        }
        sum_tree += tree;
        sum_fast += fast;
        double per = 1e9 / (double)(o.batch * o.requests);
        printf("decode round %u: tree %.0f ns/item, fast path %.0f ns/item, tree/fast %.1f\n",
               r + 1, tree * per, fast * per, tree / fast);
    }
    printf("decode: tree/fast %.1f over %u rounds\n", sum_tree / sum_fast, o.rounds);
    free(body);

    double api_ns = bc_api(&o);
    if (api_ns < 0)
        return 1;
    printf("api: %.0f ns CPU per item (decode, judge, accept, render; %zu requests)\n", api_ns,
           o.requests);
    return 0;
}
