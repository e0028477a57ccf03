/*
 * it_crash: a durable acknowledgement survives a crash. Many clients post with
 * ?wait=true while the server is killed with SIGKILL in mid-stream; after a
 * restart on the same file, every update that was answered 200 durable:true
 * is there (in the file and through GET), with at least the acknowledged
 * value (later, unacknowledged updates of the same node may be there too).
 * And seqs handed out before a crash are never handed out again.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "it_assert.h"

enum {
    CLIENTS = 16,
    NODES_PER_CLIENT = 4,
    MAX_POSTS = 5000,        /* per client; the kill comes long before */
    KILL_AFTER_ACKS = 600,   /* durable acks seen before the SIGKILL */
};

typedef struct client {
    ns_client *c;
    int id;
    atomic_bool *stop;
    atomic_int *acks_total;
    /* Highest value acknowledged durable per node; 0: none. */
    _Atomic long long acked[NODES_PER_CLIENT];
    int posts;
    int unexpected;          /* answers other than 200 durable / 202 */
    char first_error[512];
} client;

static bool durable_true(const ns_resp *r)
{
    json_t *doc = ns_resp_json(r);
    bool ok = json_is_true(json_object_get(doc, "durable"));
    json_decref(doc);
    return ok;
}

static void *client_main(void *arg)
{
    client *c = arg;
    ns_resp r = { 0 };
    for (long long v = 1; v <= MAX_POSTS && !atomic_load(c->stop); v++) {
        int node = (int)(v % NODES_PER_CLIENT);
        char path[128], body[96];
        snprintf(path, sizeof path, "/runs/crash-%d/nodes/c%02d-n%d/state?wait=true&timeout=20",
                 c->id % 4, c->id, node);
        snprintf(body, sizeof body, "{\"status\":\"running\",\"outputs\":%lld}", v);
        c->posts++;
        if (ns_client_req(c->c, "POST", path, body, NULL, &r) != 0)
            break; /* the server is gone */
        if (r.status == 200 && durable_true(&r)) {
            atomic_store(&c->acked[node], v);
            atomic_fetch_add(c->acks_total, 1);
        } else if (r.status != 202) {
            if (c->unexpected++ == 0)
                snprintf(c->first_error, sizeof c->first_error, "%s: %ld %s", path, r.status,
                         r.body);
            break;
        }
    }
    ns_resp_free(&r);
    return NULL;
}

/* Whether the clients have had KILL_AFTER_ACKS acknowledgements (ctx: the count). */
static bool enough_acks(void *ctx)
{
    return atomic_load((atomic_int *)ctx) >= KILL_AFTER_ACKS;
}

static void check_survived(const char *sync)
{
    ns_server *s = ns_start("--synchronous %s", sync);
    cr_assert_not_null(s);
    atomic_bool stop = false;
    atomic_int acks_total = 0;
    client cl[CLIENTS];
    pthread_t t[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        memset(&cl[i], 0, sizeof cl[i]);
        cl[i].id = i;
        cl[i].stop = &stop;
        cl[i].acks_total = &acks_total;
        cl[i].c = ns_client_new(s);
        cr_assert_not_null(cl[i].c);
        cr_assert_eq(pthread_create(&t[i], NULL, client_main, &cl[i]), 0);
    }
    /* Bounded wait for enough acknowledgements, then kill in mid-stream. */
    (void)ns_wait_until(enough_acks, &acks_total, 60.0, 10);
    int acks_at_kill = atomic_load(&acks_total);
    int code = ns_kill(s);
    atomic_store(&stop, true);
    int unexpected = 0;
    char first[512] = "";
    for (int i = 0; i < CLIENTS; i++) {
        pthread_join(t[i], NULL);
        ns_client_free(cl[i].c);
        if (cl[i].unexpected > 0 && unexpected == 0)
            snprintf(first, sizeof first, "%s", cl[i].first_error);
        unexpected += cl[i].unexpected;
    }
    fprintf(stderr, "it_crash (%s): SIGKILL after %d durable acks (%d in all)\n", sync,
            acks_at_kill, atomic_load(&acks_total));
    cr_assert_eq(code, 128 + SIGKILL, "exit code %d, want death by SIGKILL", code);
    cr_assert_eq(unexpected, 0, "unexpected answers before the kill; first: %s", first);
    cr_assert_geq(acks_at_kill, KILL_AFTER_ACKS, "only %d durable acks in 60 s", acks_at_kill);

    cr_assert_eq(ns_restart(s, "--synchronous %s", sync), 0, "restart after SIGKILL");
    ns_resp r = { 0 };
    int checked = 0;
    for (int i = 0; i < CLIENTS; i++) {
        for (int n = 0; n < NODES_PER_CLIENT; n++) {
            long long want = atomic_load(&cl[i].acked[n]);
            if (want == 0)
                continue;
            char run[32], node[32];
            snprintf(run, sizeof run, "crash-%d", i % 4);
            snprintf(node, sizeof node, "c%02d-n%d", i, n);
            long long in_file = ns_db_int(s, "SELECT CAST(outputs_json AS INTEGER) FROM "
                                             "run_node_state WHERE run_id=? AND node_id=?",
                                          run, node, NULL);
            cr_assert_geq(in_file, want, "%s/%s: acknowledged %lld durable, file has %lld",
                          run, node, want, in_file);
            cr_assert_eq(ns_get_state(s, run, node, &r), 0, "%s", r.error);
            cr_assert_eq(r.status, 200, "GET %s/%s after restart: %ld %s", run, node,
                         r.status, r.body);
            json_t *doc = ns_resp_json(&r);
            long long got = -1;
            cr_assert_eq(ns_jint(doc, "outputs", &got), 0, "%s", r.body);
            cr_assert_geq(got, want, "GET %s/%s: outputs %lld, acknowledged %lld", run, node,
                          got, want);
            cr_assert_eq(got, in_file, "GET and file disagree on %s/%s", run, node);
            cr_assert(json_is_true(json_object_get(doc, "durable")), "%s", r.body);
            json_decref(doc);
            checked++;
        }
    }
    cr_assert_geq(checked, CLIENTS, "too few acknowledged nodes to check (%d)", checked);
    /* The restarted server goes on taking durable writes. */
    cr_assert_eq(ns_post_state(s, "crash-after", "x", "?wait=true", "{\"status\":\"running\"}",
                               &r), 0);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

Test(crash, sigkill_keeps_every_durable_ack)
{
    check_survived("normal");
}

Test(crash, sigkill_keeps_every_durable_ack_synchronous_full)
{
    check_survived("full");
}

/*
 * Seqs handed out by a process that dies before committing them are never
 * handed out again: they were ETags of accepted updates. Nothing commits
 * here (a minute's batch interval), so the restart finds no trace of them
 * on disk and must still start above them.
 */
Test(crash, seq_never_reused_after_sigkill)
{
    ns_server *s = ns_start("--batch-interval 60");
    cr_assert_not_null(s);
    long long highest = 0;
    for (int i = 0; i < 20; i++) {
        char node[16];
        snprintf(node, sizeof node, "n%d", i);
        json_t *doc = it_post_json(s, "seqs", node, NULL, "{\"status\":\"running\"}", 202);
        long long seq = it_jint(doc, "seq");
        json_decref(doc);
        highest = seq > highest ? seq : highest;
    }
    cr_assert_eq(ns_kill(s), 128 + SIGKILL);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state", NULL), 0,
                 "nothing should have been committed");
    cr_assert_eq(ns_restart(s, "--batch-interval 60"), 0);
    json_t *doc = it_post_json(s, "seqs", "after", NULL, "{\"status\":\"running\"}", 202);
    long long seq = it_jint(doc, "seq");
    json_decref(doc);
    cr_assert_gt(seq, highest, "seq %lld handed out again after the crash (had %lld)", seq,
                 highest);
    cr_assert(ns_log_contains(s, "msg=unclean-stop"), "no msg=unclean-stop in the log");
    /* A second crash before anything of this process was committed: still no reuse. */
    highest = seq;
    cr_assert_eq(ns_kill(s), 128 + SIGKILL);
    cr_assert_eq(ns_restart(s, "--batch-interval 60"), 0);
    doc = it_post_json(s, "seqs", "again", NULL, "{\"status\":\"running\"}", 202);
    seq = it_jint(doc, "seq");
    json_decref(doc);
    cr_assert_gt(seq, highest, "seq %lld handed out again after a second crash (had %lld)",
                 seq, highest);
    /* A clean stop needs no skip: the next start continues right after. */
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_eq(ns_restart(s, "--batch-interval 60"), 0);
    doc = it_post_json(s, "seqs", "later", NULL, "{\"status\":\"running\"}", 202);
    cr_assert_eq(it_jint(doc, "seq"), seq + 1, "a clean stop should not skip seqs");
    json_decref(doc);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}
