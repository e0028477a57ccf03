/*
 * batch_bench: many updates per request (POST /runs/{run_id}/nodes) end to
 * end against the real binary, next to the writer-only rate measured in the
 * same run.
 *
 *   http    --clients threads, each with its own keep-alive libcurl handle
 *           and run, post requests of --batch NEW nodes ({"node_id",
 *           "status":"running"} items) back to back for --duration seconds
 *           (a 503 is waited out and sent again). The rate is the updates
 *           accepted divided by the time from the first request until every
 *           accepted update is committed (durable_seq reaches last_seq), so
 *           it counts the writer's work, not just acceptance.
 *   writer  --writer-rows rows of new nodes, built the way the engine builds
 *           them, written straight to a fresh file with the service's store
 *           in batches of --writer-batch rows sorted by key, one transaction
 *           each: what the single writer alone can do on this disk. Half is
 *           measured before the http run and half after it (each on a fresh
 *           file), so drift of the machine's other load hits both sides.
 *
 * Then the service is stopped with SIGTERM and its file checked: it holds
 * exactly the updates the answers said were accepted. Exit status 0 only when
 * that check passed; the ratio and the target (>= 150,000 updates/s) are
 * printed, not enforced, because this shared machine's numbers are noisy.
 */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "model.h"
#include "store.h"

#define BB_START_LIMIT_MS 30000
#define BB_STOP_LIMIT_MS 120000
#define BB_DRAIN_LIMIT_MS 300000
#define BB_REQUEST_TIMEOUT_S 60
#define BB_BACKOFF_MS 5
#define BB_TARGET 150000.0

typedef struct bb_opts {
    char server[PATH_MAX];
    bench_arg_list server_args;
    unsigned clients;
    size_t batch;
    size_t writer_batch;
    uint64_t writer_rows;
    double duration;
    const char *dir;
    bool keep;
} bb_opts;

typedef struct bb_shared {
    const bb_opts *o;
    char base_url[128];
    _Atomic bool stop;
} bb_shared;

typedef struct bb_client {
    bb_shared *sh;
    unsigned index;
    pthread_t thread;
    uint64_t accepted, requests, retries, failures;
} bb_client;

/* The "accepted" count of a batch answer, or -1. */
static long long bb_accepted(const bench_body *body)
{
    const char *p = strstr(body->data, "\"accepted\":");
    return p ? strtoll(p + strlen("\"accepted\":"), NULL, 10) : -1;
}

static void *bb_client_main(void *arg)
{
    bb_client *cl = arg;
    const bb_opts *o = cl->sh->o;
    struct curl_slist *headers = bench_json_headers();
    bench_body *body = malloc(sizeof *body);
    size_t cap = 32 + o->batch * 64;
    char *text = malloc(cap), url[256];
    CURL *c = NULL;
    if (!headers || !body || !text || (c = bench_curl_new(body, headers, BB_REQUEST_TIMEOUT_S)) == NULL ||
        curl_easy_setopt(c, CURLOPT_POST, 1L) != CURLE_OK) {
        fprintf(stderr, "batch_bench: cannot set up a client\n");
        cl->failures++;
        goto out;
    }
    snprintf(url, sizeof url, "%s/runs/batch-%u/nodes", cl->sh->base_url, cl->index);
    if (curl_easy_setopt(c, CURLOPT_URL, url) != CURLE_OK)
        goto out;
    for (uint64_t next = 0; !atomic_load(&cl->sh->stop);) {
        size_t len = (size_t)snprintf(text, cap, "{\"updates\":[");
        for (size_t i = 0; i < o->batch; i++)
            len += (size_t)snprintf(text + len, cap - len,
                                    "%s{\"node_id\":\"n%010" PRIu64 "\",\"status\":\"running\"}",
                                    i ? "," : "", next + i);
        len += (size_t)snprintf(text + len, cap - len, "]}");
        long code = 0;
        body->len = 0;
        body->data[0] = '\0';
        CURLcode cc = curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
        if (cc == CURLE_OK)
            cc = curl_easy_setopt(c, CURLOPT_POSTFIELDS, text);
        if (cc == CURLE_OK)
            cc = curl_easy_perform(c);
        if (cc == CURLE_OK)
            cc = curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
        if (cc != CURLE_OK) {
            fprintf(stderr, "batch_bench: %s: %s\n", url, curl_easy_strerror(cc));
            cl->failures++;
            break;
        }
        cl->requests++;
        if (code == 503) {
            cl->retries++;
            bench_sleep_ms(BB_BACKOFF_MS);
            continue;
        }
        long long acc = bb_accepted(body);
        if ((code != 200 && code != 202) || acc != (long long)o->batch) {
            fprintf(stderr, "batch_bench: HTTP %ld, accepted %lld: %.200s\n", code, acc,
                    body->data);
            cl->failures++;
            break;
        }
        cl->accepted += (uint64_t)acc;
        next += o->batch;
    }
out:
    curl_easy_cleanup(c);
    curl_slist_free_all(headers);
    free(text);
    free(body);
    return NULL;
}

static int bb_row_cmp(const void *a, const void *b)
{
    const ns_row *x = *(const ns_row *const *)a, *y = *(const ns_row *const *)b;
    int c = strcmp(x->run_id, y->run_id);
    return c ? c : strcmp(x->node_id, y->node_id);
}

/* Writes rows rows of new nodes to a fresh file with the store, in sorted batches; rows/s or -1. */
static double bb_writer(const char *path, uint64_t rows, size_t per_batch)
{
    char err[512];
    store *s = store_open(path, false, err, sizeof err);
    if (!s) {
        fprintf(stderr, "batch_bench: %s\n", err);
        return -1;
    }
    ns_row **batch = calloc(per_batch, sizeof *batch);
    double rate = -1;
    if (!batch)
        goto out;
    int64_t now = model_now_ms(), seq = 0;
    uint64_t t0 = bench_now_ns();
    for (uint64_t done = 0; done < rows;) {
        size_t n = 0;
        for (; n < per_batch && done < rows; n++, done++) {
            /* As the engine builds a new running node: the start stamped, the rest null. */
            char run[32], node[32];
            snprintf(run, sizeof run, "batch-%" PRIu64, done % 4);
            snprintf(node, sizeof node, "n%010" PRIu64, done);
            ns_row draft = { .run_id = run, .node_id = node, .status = NS_RUNNING, .attempt = 1,
                             .updated_at = now, .seq = ++seq };
            for (int f = 0; f < NS_TS_COUNT; f++)
                draft.ts[f] = NS_TS_NULL;
            draft.ts[NS_TS_STARTED] = now;
            if ((batch[n] = model_row_copy(&draft)) == NULL)
                goto out;
        }
        /* Sorted by (run_id, node_id), as the writer sorts each batch. */
        qsort(batch, n, sizeof *batch, bb_row_cmp);
        store_batch b = { .rows = (ns_row *const *)batch, .n_rows = n, .last_seq = seq };
        int rc = store_write(s, &b);
        for (size_t i = 0; i < n; i++)
            model_row_unref(batch[i]);
        if (rc != 0) {
            fprintf(stderr, "batch_bench: writer: %s\n", store_errmsg(s));
            goto out;
        }
    }
    rate = (double)rows / ((double)(bench_now_ns() - t0) / 1e9);
out:
    free(batch);
    store_close(s);
    return rate;
}

static void bb_usage(FILE *out)
{
    fprintf(out,
            "usage: batch_bench [options]\n"
            "  --server PATH          nodestate binary (default: ../nodestate beside this program)\n"
            "  --server-arg ARG       one more argument for the service (repeatable)\n"
            "  --clients N            client threads, one connection and run each, default 4\n"
            "  --batch N              updates per request, default 1000\n"
            "  --duration S           seconds of posting, default 10\n"
            "  --writer-batch N       rows per transaction of the writer-only run, default 8192\n"
            "  --writer-rows N        rows of the writer-only run (half before, half after), default 400000\n"
            "  --dir DIR              where the files go (TMPDIR or /tmp)\n"
            "  --keep                 keep the database files and service log\n");
}

int main(int argc, char **argv)
{
    bb_opts o = { .clients = 4, .batch = 1000, .writer_batch = 8192, .writer_rows = 400000,
                  .duration = 10 };
    bench_default_server(o.server, sizeof o.server);
    o.dir = bench_default_dir();
    const bench_opt opts[] = {
        {"--server", BENCH_OPT_PATH, o.server, 0, 0, 0, 0},
        {"--server-arg", BENCH_OPT_ARG_LIST, &o.server_args, 0, 0, 0, 0},
        {"--clients", BENCH_OPT_UNSIGNED, &o.clients, 1, 256, 0, 0},
        {"--batch", BENCH_OPT_SIZE, &o.batch, 1, 10000, 0, 0},
        {"--duration", BENCH_OPT_NUMBER, &o.duration, 0, 0, 0.1, 3600},
        {"--writer-batch", BENCH_OPT_SIZE, &o.writer_batch, 1, 1000000, 0, 0},
        {"--writer-rows", BENCH_OPT_U64, &o.writer_rows, 2, 100000000, 0, 0},
        {"--dir", BENCH_OPT_STRING, &o.dir, 0, 0, 0, 0},
        {"--keep", BENCH_OPT_FLAG, &o.keep, 0, 0, 0, 0},
    };
    switch (bench_parse_args("batch_bench", opts, sizeof opts / sizeof *opts, bb_usage, argc,
                             argv)) {
    case 1:
        return 0;
    case -1:
        return 2;
    }
    if (bench_check_server("batch_bench", o.server) != 0)
        return 2;
    signal(SIGPIPE, SIG_IGN);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return 1;
    bb_shared sh = { .o = &o };
    atomic_init(&sh.stop, false);
    bench_server srv = { 0 };
    bench_body *body = malloc(sizeof *body);
    bb_client *cls = calloc(o.clients, sizeof *cls);
    CURL *c = NULL;
    char dir[PATH_MAX] = "", db_path[PATH_MAX + 32], writer_path[PATH_MAX + 32];
    unsigned started = 0;
    uint64_t accepted = 0, requests = 0, retries = 0, failures = 0;
    double http_rate = 0, writer_before = -1;
    int rc = 1;
    if (!body || !cls || bench_make_dir("batch_bench", o.dir, dir, sizeof dir) != 0)
        goto out;
    snprintf(db_path, sizeof db_path, "%s/batch.db", dir);
    snprintf(writer_path, sizeof writer_path, "%s/writer.db", dir);
    snprintf(srv.log_path, sizeof srv.log_path, "%s/batch.log", dir);

    printf("nodestate batch_bench\n");
    bench_print_machine(true);
    printf("workload: %u clients, each its own run and connection, post requests of %zu new "
           "nodes ({\"node_id\",\"status\":\"running\"}) for %.1f s; rate = accepted updates / "
           "time until all are durable; writer-only: %" PRIu64 " rows straight into the store, "
           "%zu per transaction, half before and half after\n", o.clients, o.batch, o.duration,
           o.writer_rows, o.writer_batch);
    writer_before = bb_writer(writer_path, o.writer_rows / 2, o.writer_batch);
    bench_remove_db(writer_path);
    printf("writer (before): %" PRIu64 " rows straight into the store: %.0f rows/s\n",
           o.writer_rows / 2, writer_before);
    fflush(stdout);
    const char *argv_srv[BENCH_MAX_SERVER_ARGS + 10];
    size_t argc_srv = bench_server_argv(argv_srv, o.server, db_path, NULL, 0, &o.server_args);
    printf("service:");
    for (size_t i = 0; i < argc_srv; i++)
        printf(" %s", argv_srv[i]);
    printf("\n");
    fflush(stdout);
    if (bench_server_start(&srv, "batch_bench", argv_srv, BB_START_LIMIT_MS) != 0)
        goto out;
    snprintf(sh.base_url, sizeof sh.base_url, "http://%s", srv.addr);
    if ((c = bench_curl_new(body, NULL, BB_REQUEST_TIMEOUT_S)) == NULL) {
        failures++;
        goto stop;
    }

    uint64_t t0 = bench_now_ns();
    for (; started < o.clients; started++) {
        cls[started] = (bb_client){ .sh = &sh, .index = started };
        if (pthread_create(&cls[started].thread, NULL, bb_client_main, &cls[started]) != 0)
            break;
    }
    bench_sleep_ms((long)(o.duration * 1000));
    atomic_store(&sh.stop, true);
    failures += started < o.clients;
    for (unsigned i = 0; i < started; i++) {
        pthread_join(cls[i].thread, NULL);
        accepted += cls[i].accepted;
        requests += cls[i].requests;
        retries += cls[i].retries;
        failures += cls[i].failures;
    }
    double posted_s = (double)(bench_now_ns() - t0) / 1e9;
    if (bench_wait_drained(c, body, sh.base_url, BB_DRAIN_LIMIT_MS) != 0) {
        fprintf(stderr, "batch_bench: the service did not drain\n");
        failures++;
        goto stop;
    }
    double durable_s = (double)(bench_now_ns() - t0) / 1e9;
    http_rate = (double)accepted / durable_s;
    printf("http:   %" PRIu64 " updates accepted in %" PRIu64 " requests (%" PRIu64
           " 503 retried) in %.2f s, all durable at %.2f s: %.0f updates/s end to end "
           "(%.0f/s accepted)\n", accepted, requests, retries, posted_s, durable_s, http_rate,
           (double)accepted / posted_s);
    fflush(stdout);

stop:
    if (bench_server_stop(&srv, "batch_bench", BB_STOP_LIMIT_MS) != 0)
        failures++;
    long long rows = -1;
    {
        sqlite3 *db = NULL;
        sqlite3_stmt *st = NULL;
        if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
            sqlite3_prepare_v2(db, "SELECT count(*) FROM run_node_state", -1, &st, NULL) ==
                SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
            rows = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        sqlite3_close(db);
    }
    bool kept = rows == (long long)accepted;
    printf("check every accepted update is in the file after SIGTERM: %lld rows, %" PRIu64
           " accepted: %s\n", rows, accepted, kept ? "OK" : "FAILED");
    if (accepted > 0) {
        double writer_after = bb_writer(writer_path, o.writer_rows - o.writer_rows / 2,
                                        o.writer_batch);
        double writer_rate = writer_before > 0 && writer_after > 0
                                 ? (writer_before + writer_after) / 2 : -1;
        printf("writer (after): %" PRIu64 " rows straight into the store: %.0f rows/s; "
               "mean %.0f rows/s\n", o.writer_rows - o.writer_rows / 2, writer_after,
               writer_rate);
        printf("ratio http end to end / writer only: %.2f\n",
               writer_rate > 0 ? http_rate / writer_rate : 0.0);
        printf("target >= %.0f updates/s end to end: %s\n", BB_TARGET,
               http_rate >= BB_TARGET ? "met" : "not met");
    }
    rc = kept && failures == 0 && accepted > 0 ? 0 : 1;
out:
    bench_server_kill(&srv);
    curl_easy_cleanup(c);
    if (!o.keep && dir[0]) {
        bench_remove_db(db_path);
        bench_remove_db(writer_path);
        remove(srv.log_path);
        remove(dir);
    }
    free(cls);
    free(body);
    curl_global_cleanup();
    return rc;
}
