/*
 * it_backpressure: a full queue refuses writes instead of growing. With the
 * database locked and a long batch interval the queue fills: the next POST is
 * 503 queue-full with a whole-seconds Retry-After and changes nothing,
 * /readyz is 503 not-ready with the reason; once the lock is gone and the
 * writer drains, /readyz is 200 again, every accepted (202) update is in the
 * file and no refused (503) one is. --queue-max-bytes bounds the queue in
 * bytes the same way: big updates meet 503 queue-full long before the entry
 * capacity, with the bytes held reported as queue_bytes. While draining for
 * shutdown /readyz is 503 too, and the request still in flight is answered.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "it_assert.h"

enum {
    CAPACITY = 50,
    MAX_POSTS = 500,         /* bound on the fill loop */
    REFUSED = 5,             /* further new nodes refused after the first 503 */
};

/* Retry-After must be a whole number of seconds, at least 1. */
static void check_retry_after(const ns_resp *r)
{
    const char *v = r->retry_after;
    cr_assert(v[0] != '\0', "503 without Retry-After: %s", r->body);
    for (const char *p = v; *p != '\0'; p++)
        cr_assert(isdigit((unsigned char)*p), "Retry-After \"%s\" is not whole seconds", v);
    cr_assert_geq(atol(v), 1, "Retry-After \"%s\"", v);
}

static void node_body(char *buf, size_t len, int i)
{
    snprintf(buf, len, "{\"status\":\"running\",\"outputs\":%d}", i);
}

/*
 * Polls /readyz (bounded) until it answers want; the last answer stays in r.
 * When a request fails and spare is given, the rest go through spare: a
 * stopping server closes each connection after its next answer and
 * accepts no new one, and an answer computed just before the drain began
 * can still say 200, so a second connection opened before the stop asks
 * again (one asked after the stop began must say 503).
 */
static bool wait_readyz_on(ns_server *s, ns_client *spare, long want, ns_resp *r,
                           double timeout_s)
{
    long long deadline = ns_mono_ms() + (long long)(timeout_s * 1000);
    bool on_spare = false;
    for (int i = 0; i < 10000 && ns_mono_ms() < deadline; i++) {
        ns_resp_free(r);
        int rc = on_spare ? ns_client_req(spare, "GET", "/readyz", NULL, NULL, r)
                          : ns_req(s, "GET", "/readyz", NULL, NULL, r);
        if (rc == 0 && r->status == want)
            return true;
        if (rc != 0 && spare != NULL && !on_spare) {
            on_spare = true;
            continue;
        }
        struct timespec ts = { 0, 20 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    return false;
}

static bool wait_readyz(ns_server *s, long want, ns_resp *r, double timeout_s)
{
    return wait_readyz_on(s, NULL, want, r, timeout_s);
}

Test(backpressure, full_queue_503_then_drain_and_ready_again)
{
    ns_server *s = ns_start("--queue-capacity %d --batch-interval 60", CAPACITY);
    cr_assert_not_null(s);
    ns_resp r = { 0 };
    cr_assert(wait_readyz(s, 200, &r, 30.0), "/readyz at start: %ld %s", r.status, r.body);
    it_store_lock *db = it_lock_store(s);

    /* Fill the queue. Nothing reaches the file: a full queue wakes the writer,
     * which takes one batch (at most the queue's worth) into its hands and
     * keeps failing on the lock, so the queue fills up a second time. */
    int accepted = 0;
    bool writer_holds_a_batch = false;
    char node[16], body[96], why[512];
    for (int i = 0; i < MAX_POSTS; i++) {
        snprintf(node, sizeof node, "n%03d", i);
        node_body(body, sizeof body, i);
        cr_assert_eq(ns_post_state(s, "bp", node, NULL, body, &r), 0, "%s", r.error);
        if (r.status == 503 && writer_holds_a_batch)
            break;
        if (r.status == 503) {
            /* The first 503 may come before the woken writer took its batch;
             * once it has failed on the lock it holds that batch, and the
             * queue can only fill. Then post the same node again. */
            cr_assert_eq(ns_wait_stat_ge(s, "errors", 1, 30.0), 0, "the writer never failed");
            writer_holds_a_batch = true;
            i--;
            continue;
        }
        cr_assert_eq(r.status, 202, "POST %d: %ld %s", i, r.status, r.body);
        accepted++;
    }
    cr_assert(accepted >= CAPACITY && accepted <= 2 * CAPACITY,
              "%d accepted before the first 503, capacity %d", accepted, CAPACITY);
    fprintf(stderr, "it_backpressure: %d accepted before the first 503 (capacity %d)\n",
            accepted, CAPACITY);
    cr_assert_eq(ns_check_problem(&r, 503, "queue-full", why, sizeof why), 0, "%s", why);
    check_retry_after(&r);
    int first_refused = accepted;

    /* More refusals: new nodes, and a change to an accepted node. */
    for (int i = first_refused + 1; i <= first_refused + REFUSED; i++) {
        snprintf(node, sizeof node, "n%03d", i);
        node_body(body, sizeof body, i);
        cr_assert_eq(ns_post_state(s, "bp", node, NULL, body, &r), 0);
        cr_assert_eq(ns_check_problem(&r, 503, "queue-full", why, sizeof why), 0, "%s", why);
        check_retry_after(&r);
    }
    cr_assert_eq(ns_post_state(s, "bp", "n000", NULL, "{\"status\":\"completed\"}", &r), 0);
    cr_assert_eq(ns_check_problem(&r, 503, "queue-full", why, sizeof why), 0, "%s", why);
    cr_assert_eq(ns_req(s, "DELETE", "/runs/bp", NULL, NULL, &r), 0);
    cr_assert_eq(ns_check_problem(&r, 503, "queue-full", why, sizeof why), 0,
                 "DELETE with a full queue: %s", why);
    /* A refused update changed nothing in memory. */
    cr_assert_eq(ns_get_state(s, "bp", "n000", &r), 0);
    cr_assert_eq(r.status, 200);
    json_t *doc = ns_resp_json(&r);
    cr_assert_str_eq(ns_jstr(doc, "status"), "running", "a refused update applied: %s", r.body);
    json_decref(doc);
    snprintf(node, sizeof node, "n%03d", first_refused);
    cr_assert_eq(ns_get_state(s, "bp", node, &r), 0);
    cr_assert_eq(r.status, 404, "a refused new node exists: %ld %s", r.status, r.body);
    cr_assert_eq(ns_stat(s, "queue_depth"), CAPACITY);
    cr_assert_eq(ns_stat(s, "updates_queued"), accepted);
    cr_assert_eq(ns_stat(s, "updates_processed"), 0, "committed through an exclusive lock?");

    /* Readiness reports the full queue (or, once the writer has met the lock,
     * the failing commits). */
    cr_assert_eq(ns_req(s, "GET", "/readyz", NULL, NULL, &r), 0);
    cr_assert_eq(ns_check_problem(&r, 503, "not-ready", why, sizeof why), 0, "/readyz: %s", why);
    check_retry_after(&r);
    doc = ns_resp_json(&r);
    const char *detail = ns_jstr(doc, "detail");
    cr_assert(detail != NULL && (strstr(detail, "queue") != NULL ||
                                 strstr(detail, "commit") != NULL),
              "/readyz detail names neither the full queue nor the failing commits: %s",
              r.body);
    fprintf(stderr, "it_backpressure: /readyz detail \"%s\"\n", detail);
    json_decref(doc);
    /* Liveness is another matter. */
    cr_assert_eq(ns_req(s, "GET", "/healthz", NULL, NULL, &r), 0);
    cr_assert_eq(r.status, 200, "/healthz with a full queue: %ld", r.status);

    /* Unlock; a durable re-POST of the last accepted update (a duplicate, so
     * the full queue takes it) asks the writer to commit now. */
    it_unlock_store(db);
    snprintf(node, sizeof node, "n%03d", accepted - 1);
    node_body(body, sizeof body, accepted - 1);
    cr_assert_eq(ns_post_state(s, "bp", node, "?wait=true&timeout=25", body, &r), 0, "%s",
                 r.error);
    cr_assert_eq(r.status, 200, "durable re-POST after unlock: %ld %s", r.status, r.body);
    doc = ns_resp_json(&r);
    cr_assert(json_is_true(json_object_get(doc, "durable")), "%s", r.body);
    json_decref(doc);
    cr_assert_eq(ns_wait_idle(s, 30.0), 0, "the queue did not drain");
    cr_assert(wait_readyz(s, 200, &r, 30.0), "/readyz after the drain: %ld %s", r.status,
              r.body);

    /* Every accepted update is in the file, no refused one is. */
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='bp'", NULL),
                 accepted);
    char limit[16];
    snprintf(limit, sizeof limit, "%d", accepted);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='bp' AND "
                              "status='running' AND CAST(outputs_json AS INTEGER) = "
                              "CAST(substr(node_id, 2) AS INTEGER) AND "
                              "CAST(substr(node_id, 2) AS INTEGER) < CAST(? AS INTEGER)",
                           limit, NULL), accepted);
    for (int i = first_refused; i <= first_refused + REFUSED; i++) {
        snprintf(node, sizeof node, "n%03d", i);
        cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='bp' AND "
                                  "node_id=?", node, NULL), 0, "refused %s is in the file", node);
    }
    cr_assert_eq(ns_stat(s, "updates_processed"), accepted);

    /* Writes are accepted again. */
    cr_assert_eq(ns_post_state(s, "bp", "after", NULL, "{\"status\":\"running\"}", &r), 0);
    cr_assert_eq(r.status, 202, "%ld %s", r.status, r.body);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}

Test(backpressure, queue_max_bytes_503_then_drain)
{
    enum { OUTPUTS = 16 * 1024, BOUND = 1024 * 1024 };
    ns_server *s = ns_start("--queue-max-bytes 1M");
    cr_assert_not_null(s);
    static char body[OUTPUTS + 128];
    char pad[OUTPUTS + 1], node[16], why[512];
    memset(pad, 'y', OUTPUTS);
    pad[OUTPUTS] = '\0';
    snprintf(body, sizeof body, "{\"status\":\"running\",\"outputs\":\"%s\"}", pad);
    it_store_lock *db = it_lock_store(s);

    /* ~16 KB per update: the 1 MiB bound refuses after ~64, far below the 262144 entries. */
    ns_resp r = { 0 };
    int accepted = 0;
    for (int i = 0; i < MAX_POSTS; i++) {
        snprintf(node, sizeof node, "n%03d", i);
        cr_assert_eq(ns_post_state(s, "qb", node, NULL, body, &r), 0, "%s", r.error);
        if (r.status == 503)
            break;
        cr_assert_eq(r.status, 202, "POST %d: %ld %s", i, r.status, r.body);
        accepted++;
    }
    cr_assert_eq(ns_check_problem(&r, 503, "queue-full", why, sizeof why), 0,
                 "%d updates of 16 KB accepted and no 503: %s", accepted, why);
    check_retry_after(&r);
    cr_assert(accepted >= BOUND / OUTPUTS / 2 && accepted <= BOUND / OUTPUTS,
              "%d updates of 16 KB accepted under a bound of 1 MiB", accepted);
    long long held = ns_stat(s, "queue_bytes");
    cr_assert(held > BOUND - 2 * (OUTPUTS + 1024) && held <= BOUND,
              "queue_bytes %lld with %d updates of 16 KB held, bound %d", held, accepted, BOUND);
    cr_assert_eq(ns_stat(s, "updates_queued"), accepted);
    json_t *st = ns_stats(s);
    cr_assert_not_null(st);
    long long full = -1;
    cr_assert_eq(ns_jint(json_object_get(st, "updates_rejected"), "queue_full", &full), 0);
    cr_assert_eq(full, 1);
    json_decref(st);
    cr_assert_eq(ns_get_state(s, "qb", node, &r), 0);
    cr_assert_eq(r.status, 404, "a refused update exists: %ld %s", r.status, r.body);
    cr_assert_eq(ns_req(s, "GET", "/readyz", NULL, NULL, &r), 0);
    cr_assert_eq(ns_check_problem(&r, 503, "not-ready", why, sizeof why), 0, "/readyz: %s", why);

    /* Once the writer can commit, the bytes are free and the same update goes in. */
    it_unlock_store(db);
    cr_assert_eq(ns_wait_idle(s, 30.0), 0, "the queue did not drain");
    cr_assert_eq(ns_stat(s, "queue_bytes"), 0);
    cr_assert(wait_readyz(s, 200, &r, 15.0), "/readyz after the drain: %ld %s", r.status,
              r.body);
    cr_assert_eq(ns_post_state(s, "qb", node, NULL, body, &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 202, "%ld %s", r.status, r.body);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='qb'", NULL),
                 accepted + 1);
    ns_free(s);
}

static void send_all(int fd, const char *text)
{
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t n = send(fd, text + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        cr_assert_gt(n, 0, "send: %s", strerror(errno));
        off += (size_t)n;
    }
}

Test(backpressure, readyz_503_while_draining_for_shutdown)
{
    ns_server *s = ns_start("--shutdown-timeout 20");
    cr_assert_not_null(s);
    ns_resp r = { 0 };
    /* Opens the keep-alive connections the /readyz below will reuse: the
     * listening socket closes at SIGTERM, open connections stay served. */
    cr_assert(wait_readyz(s, 200, &r, 30.0), "/readyz at start: %ld %s", r.status, r.body);
    ns_client *spare = ns_client_new(s);
    cr_assert_not_null(spare);
    ns_resp_free(&r);
    cr_assert_eq(ns_client_req(spare, "GET", "/readyz", NULL, NULL, &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 200, "/readyz at start: %ld %s", r.status, r.body);

    /* A request in flight: headers and half of the body, the rest held back. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct timeval tv = { 30, 0 };
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)ns_port(s)) };
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&addr, sizeof addr), 0, "%s", strerror(errno));
    const char *rest = "{\"status\":\"running\"}";
    char head[256];
    snprintf(head, sizeof head,
             "POST /runs/dr/nodes/n1/state HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             "Content-Type: application/json\r\nContent-Length: %zu\r\n"
             "Expect: 100-continue\r\n\r\n", strlen(rest));
    send_all(fd, head);
    /* The server counts the request from its headers on; its 100 Continue
     * says it has read them (waiting for it, not for a guessed time). */
    char cont[256];
    size_t got = 0;
    while (got < sizeof cont - 1) {
        ssize_t n = recv(fd, cont + got, sizeof cont - 1 - got, 0);
        cr_assert_gt(n, 0, "no 100 Continue: %s", n < 0 ? strerror(errno) : "EOF");
        got += (size_t)n;
        cont[got] = '\0';
        if (strstr(cont, "\r\n\r\n") != NULL)
            break;
    }
    cr_assert(strncmp(cont, "HTTP/1.1 100", 12) == 0, "not a 100 Continue: %.200s", cont);

    pid_t pid = ns_pid(s);
    cr_assert_gt(pid, 0, "cannot find the server's pid");
    cr_assert_eq(kill(pid, SIGTERM), 0);
    cr_assert(wait_readyz_on(s, spare, 503, &r, 30.0), "/readyz while draining: %ld %s %s",
              r.status, r.body, r.error);
    char why[512];
    cr_assert_eq(ns_check_problem(&r, 503, "not-ready", why, sizeof why), 0, "%s", why);
    check_retry_after(&r);
    json_t *doc = ns_resp_json(&r);
    const char *detail = ns_jstr(doc, "detail");
    cr_assert(detail != NULL && strstr(detail, "drain") != NULL,
              "/readyz detail does not say draining: %s", r.body);
    json_decref(doc);
    ns_resp_free(&r);

    /* The request in flight is still answered, and its update kept. */
    send_all(fd, rest);
    char answer[1024];
    ssize_t n = recv(fd, answer, sizeof answer - 1, 0);
    cr_assert_gt(n, 0, "no answer to the request in flight: %s", n < 0 ? strerror(errno) : "EOF");
    answer[n] = '\0';
    cr_assert(strncmp(answer, "HTTP/1.1 202", 12) == 0, "in-flight POST: %.200s", answer);
    close(fd);
    ns_client_free(spare);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_eq(ns_db_int(s, "SELECT count(*) FROM run_node_state WHERE run_id='dr' AND "
                              "node_id='n1' AND status='running'", NULL), 1);
    ns_free(s);
}
