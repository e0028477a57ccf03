/*
 * Scale-out, end to end with real processes: three nodestate instances on
 * one PostgreSQL database behind HAProxy running docker/haproxy.cfg (only
 * its bind address and its servers' addresses replaced by local ones), one
 * instance SIGKILLed in the middle of the load and started again later.
 *
 * 16 clients drive 200 runs through HAProxy with ?wait=true, each node
 * through its life (scheduled -> running -> completed; every fifth fails
 * and is retried with attempt 2), every run advancing throughout the test,
 * so the dead instance's runs move to the others and back. A request that
 * fails in transit (the instance died, HAProxy answered 502/503) is sent
 * again, as a worker would. Then:
 *   - every `200 durable:true` answer is in PostgreSQL: the node's stored
 *     seq is >= the acknowledged one, and its stored state is >= every
 *     acknowledged state by the rules' order (attempt, then rank), so no
 *     node regressed;
 *   - after each durable answer, GETs through HAProxy show that state (or a
 *     later one) within 2 s of the answer (polled; the first look usually
 *     shows it);
 *   - after the SIGKILL, every run (the dead instance's included) is
 *     answered through HAProxy within 5 s;
 *   - at the end every instance, asked directly, answers every node as
 *     PostgreSQL holds it: an instance that cached a run while it owned it
 *     dropped that copy when another instance committed to the run
 *     (LISTEN/NOTIFY), which cache_invalidations counts.
 *
 * Needs NODESTATE_TEST_PG (a libpq URI of a PostgreSQL server whose user may
 * create databases; scripts/test.sh starts a throwaway cluster) and haproxy
 * on PATH; skipped, saying so, without them. The test makes its own database
 * and drops it at the end.
 */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "harness.h"

#define INSTANCES 3
#define CLIENTS 16
#define RUNS 200
#define NODES 4                  /* per run */
#define TOTAL_NODES (RUNS * NODES)
#define MAX_STEPS 5              /* the longest life: a failed first attempt */
#define VISIBLE_MS 2000          /* a durable update shows through HAProxy within */
#define FAILOVER_MS 5000         /* the dead instance's runs are served within */
#define RETRY_SECONDS 30         /* one update is sent again for at most this long */
#define HANG_SECONDS 60

typedef struct step {
    const char *status;
    int attempt;
} step;

static const step normal_life[] = { { "scheduled", 1 }, { "running", 1 }, { "completed", 1 } };
static const step retried_life[] = { { "scheduled", 1 }, { "running", 1 }, { "failed", 1 },
                                     { "running", 2 }, { "completed", 2 } };

static int rank_of(const char *status)
{
    if (strcmp(status, "idle") == 0)
        return 0;
    if (strcmp(status, "scheduled") == 0)
        return 1;
    if (strcmp(status, "completed") == 0 || strcmp(status, "failed") == 0)
        return 3;
    return 2; /* running, paused, suspended */
}

/* Whether (status, attempt) is at or past (s0, a0) by the rules' order. */
static bool at_or_past(const char *status, long long attempt, const char *s0, long long a0)
{
    if (attempt != a0)
        return attempt > a0;
    if (rank_of(status) != rank_of(s0))
        return rank_of(status) > rank_of(s0);
    /* Same rank: a terminal status is final, so the same one; rank 2 moves freely. */
    return rank_of(status) != 3 || strcmp(status, s0) == 0;
}

/* What the clients learned about one node; written by its one client only. */
typedef struct node_acks {
    int n;                        /* durable acknowledgements */
    char status[MAX_STEPS][16];
    long long attempt[MAX_STEPS];
    long long seq[MAX_STEPS];
} node_acks;

typedef struct scale_test {
    int haproxy_port;
    ns_server *ns[INSTANCES];
    node_acks acks[TOTAL_NODES];
    _Atomic long steps_done;      /* updates answered (durable or not) */
    _Atomic long durable_acks;
    _Atomic long resent;          /* requests sent again after failing in transit */
    _Atomic long slow_visible;    /* durable updates not shown by the first GET */
    _Atomic bool failed;
    pthread_mutex_t why_lock;
    char why[1024];               /* the first failure, guarded by why_lock */
} scale_test;

static void fail_with(scale_test *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail_with(scale_test *t, const char *fmt, ...)
{
    pthread_mutex_lock(&t->why_lock);
    if (!atomic_load(&t->failed)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(t->why, sizeof t->why, fmt, ap);
        va_end(ap);
        atomic_store(&t->failed, true);
    }
    pthread_mutex_unlock(&t->why_lock);
}

static void node_name(int node_index, char *run, size_t run_len, char *node, size_t node_len)
{
    snprintf(run, run_len, "scale-run-%03d", node_index / NODES);
    snprintf(node, node_len, "n%d", node_index % NODES);
}

static const step *life_of(int node_index, int *len)
{
    if (node_index % 5 == 0) {
        *len = (int)(sizeof retried_life / sizeof *retried_life);
        return retried_life;
    }
    *len = (int)(sizeof normal_life / sizeof *normal_life);
    return normal_life;
}

/* status, attempt and seq of a node's JSON answer; -1 when it is not one. */
static int parse_node(const char *body, char *status, size_t status_len, long long *attempt,
                      long long *seq, bool *durable)
{
    json_t *j = json_loads(body, 0, NULL);
    int rc = -1;
    if (!j)
        return -1;
    const char *st = json_string_value(json_object_get(j, "status"));
    json_t *a = json_object_get(j, "attempt"), *sq = json_object_get(j, "seq");
    if (st && json_is_integer(a) && json_is_integer(sq)) {
        snprintf(status, status_len, "%s", st);
        *attempt = json_integer_value(a);
        *seq = json_integer_value(sq);
        if (durable)
            *durable = json_is_true(json_object_get(j, "durable"));
        rc = 0;
    }
    json_decref(j);
    return rc;
}

/*
 * Polls GET through HAProxy until the node shows (status, attempt) or later,
 * at most until VISIBLE_MS after acked_ms.
 */
static void check_visible(scale_test *t, ns_client *c, const char *run, const char *node,
                          const char *status, long long attempt, long long acked_ms)
{
    char path[256];
    snprintf(path, sizeof path, "/runs/%s/nodes/%s/state", run, node);
    ns_resp r = { 0 };
    char got[16] = "";
    long long got_attempt = 0, got_seq = 0;
    for (int round = 0; round < 1000; round++) {
        if (ns_client_req(c, "GET", path, NULL, NULL, &r) == 0 && r.status == 200 &&
            parse_node(r.body, got, sizeof got, &got_attempt, &got_seq, NULL) == 0 &&
            at_or_past(got, got_attempt, status, attempt))
            break;
        if (round == 0)
            atomic_fetch_add(&t->slow_visible, 1);
        if (ns_mono_ms() - acked_ms > VISIBLE_MS) {
            fail_with(t, "%s/%s acknowledged durable as %s attempt %lld, but GET through "
                      "HAProxy still answers %ld %s attempt %lld %d ms later",
                      run, node, status, attempt, r.status, got, got_attempt, VISIBLE_MS);
            break;
        }
        ns_sleep_ms(20);
    }
    ns_resp_free(&r);
}

/* Sends one update until it is answered 200 or 202, resending what failed in transit. */
static void send_step(scale_test *t, ns_client *c, int node_index, const step *s)
{
    char run[64], node[16], path[256], body[96];
    node_name(node_index, run, sizeof run, node, sizeof node);
    snprintf(path, sizeof path, "/runs/%s/nodes/%s/state?wait=true", run, node);
    snprintf(body, sizeof body, "{\"status\":\"%s\",\"attempt\":%d}", s->status, s->attempt);
    ns_resp r = { 0 };
    long long start = ns_mono_ms();
    for (int tries = 0; tries < 10000; tries++) {
        int rc = ns_client_req(c, "POST", path, body, NULL, &r);
        if (rc == 0 && (r.status == 200 || r.status == 202))
            break;
        /* Died with its instance, or HAProxy found no instance yet: a worker sends it again. */
        bool transit = rc != 0 || r.status == 502 || r.status == 503 || r.status == 504;
        if (!transit || ns_mono_ms() - start > RETRY_SECONDS * 1000) {
            fail_with(t, "POST %s %s: %ld %s%s", path, body, r.status, r.body ? r.body : "",
                      r.error);
            ns_resp_free(&r);
            return;
        }
        atomic_fetch_add(&t->resent, 1);
        ns_sleep_ms(20);
    }
    long long acked_ms = ns_mono_ms();
    char status[16];
    long long attempt = 0, seq = 0;
    bool durable = false;
    if (parse_node(r.body, status, sizeof status, &attempt, &seq, &durable) != 0) {
        fail_with(t, "POST %s: not a node in the answer: %s", path, r.body);
    } else if (r.status == 200 && durable) {
        node_acks *a = &t->acks[node_index];
        if (a->n < MAX_STEPS) {
            snprintf(a->status[a->n], sizeof a->status[a->n], "%s", status);
            a->attempt[a->n] = attempt;
            a->seq[a->n] = seq;
            a->n++;
        }
        atomic_fetch_add(&t->durable_acks, 1);
        check_visible(t, c, run, node, status, attempt, acked_ms);
    }
    atomic_fetch_add(&t->steps_done, 1);
    ns_resp_free(&r);
}

typedef struct client_arg {
    scale_test *t;
    int index;
} client_arg;

/* One client: its runs (index, index + CLIENTS, ...), all advanced a step at a time. */
static void *client_main(void *p)
{
    client_arg *ca = p;
    scale_test *t = ca->t;
    ns_client *c = ns_client_new_port(t->haproxy_port);
    if (!c) {
        fail_with(t, "client %d: no HTTP client", ca->index);
        return NULL;
    }
    for (int stepno = 0; stepno < MAX_STEPS && !atomic_load(&t->failed); stepno++)
        for (int run = ca->index; run < RUNS && !atomic_load(&t->failed); run += CLIENTS)
            for (int n = 0; n < NODES; n++) {
                int node_index = run * NODES + n, len = 0;
                const step *life = life_of(node_index, &len);
                if (stepno < len)
                    send_step(t, c, node_index, &life[stepno]);
            }
    ns_client_free(c);
    return NULL;
}

/* ---- PostgreSQL and HAProxy ---- */

/* uri with its database replaced by db. */
static void uri_with_db(const char *uri, const char *db, char *out, size_t len)
{
    const char *scheme_end = strstr(uri, "://");
    const char *host = scheme_end ? scheme_end + 3 : uri;
    const char *slash = strchr(host, '/');
    const char *query = strchr(host, '?');
    size_t base = slash ? (size_t)(slash - uri) : query ? (size_t)(query - uri) : strlen(uri);
    snprintf(out, len, "%.*s/%s%s", (int)base, uri, db, query ? query : "");
}

static void quiet(void *ctx, const char *message)
{
    (void)ctx;
    (void)message;
}

static void pg_exec(const char *uri, const char *sql)
{
    PGconn *c = PQconnectdb(uri);
    cr_assert(c && PQstatus(c) == CONNECTION_OK, "connect %s: %s", uri, c ? PQerrorMessage(c) : "");
    PQsetNoticeProcessor(c, quiet, NULL); /* "does not exist, skipping" */
    PGresult *r = PQexec(c, sql);
    cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
}

/* A port nothing listens on now (the kernel's pick; HAProxy binds it next). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/*
 * Writes docker/haproxy.cfg to path with `bind :8080` on 127.0.0.1:port
 * and each "nsN:8080" server at 127.0.0.1:<instance N's port>.
 */
static void write_haproxy_cfg(const char *path, int port, const int *ports)
{
    char src[PATH_MAX];
    snprintf(src, sizeof src, "%s/docker/haproxy.cfg", NODESTATE_SOURCE_DIR);
    FILE *in = fopen(src, "r");
    cr_assert_not_null(in, "%s: %s", src, strerror(errno));
    FILE *out = fopen(path, "w");
    cr_assert_not_null(out, "%s: %s", path, strerror(errno));
    char line[1024];
    int binds = 0, servers = 0;
    while (fgets(line, sizeof line, in)) {
        char *bind = strstr(line, "bind :8080");
        int n = 0;
        char *srv = NULL;
        for (int i = 0; i < INSTANCES && !srv; i++) {
            char name[32];
            snprintf(name, sizeof name, " ns%d:8080", i + 1);
            if ((srv = strstr(line, name)) != NULL)
                n = i;
        }
        if (bind) {
            fprintf(out, "%.*sbind 127.0.0.1:%d%s", (int)(bind - line), line, port,
                    bind + strlen("bind :8080"));
            binds++;
        } else if (srv) {
            fprintf(out, "%.*s 127.0.0.1:%d%s", (int)(srv - line), line, ports[n],
                     srv + strlen(" nsX:8080"));
            servers++;
        } else {
            fputs(line, out);
        }
    }
    fclose(in);
    cr_assert_eq(fclose(out), 0);
    cr_assert_eq(binds, 1, "docker/haproxy.cfg: want one `bind :8080`");
    cr_assert_eq(servers, INSTANCES, "docker/haproxy.cfg: want servers ns1..ns%d on :8080", INSTANCES);
}

static pid_t start_haproxy(const char *cfg, const char *log)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execlp("haproxy", "haproxy", "-db", "-f", cfg, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static void stop_haproxy(pid_t pid)
{
    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    for (int i = 0; i < 500; i++) {
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return;
        ns_sleep_ms(20);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

typedef struct proxied {
    ns_client *c;
    const char *path;
} proxied;

static bool answers_200(void *p)
{
    proxied *x = p;
    ns_resp r = { 0 };
    bool ok = ns_client_req(x->c, "GET", x->path, NULL, NULL, &r) == 0 && r.status == 200;
    ns_resp_free(&r);
    return ok;
}

/* Whether every run that has a node answers through HAProxy, in one sweep. */
static bool every_run_served(ns_client *c, int *first_missing)
{
    ns_resp r = { 0 };
    bool all = true;
    for (int run = 0; run < RUNS && all; run++) {
        char path[64];
        snprintf(path, sizeof path, "/runs/scale-run-%03d", run);
        if (ns_client_req(c, "GET", path, NULL, NULL, &r) != 0 || r.status != 200) {
            all = false;
            *first_missing = run;
        }
    }
    ns_resp_free(&r);
    return all;
}

/*
 * Requests HAProxy's log (option httplog) says each server answered, and
 * how many of all it answered itself with 502 (the server died under them).
 */
static void served_by(const char *log, long counts[INSTANCES], long *bad_gateway)
{
    FILE *f = fopen(log, "r");
    char line[2048];
    for (int i = 0; i < INSTANCES; i++)
        counts[i] = 0;
    *bad_gateway = 0;
    while (f && fgets(line, sizeof line, f)) {
        if (strstr(line, " 502 "))
            (*bad_gateway)++;
        for (int i = 0; i < INSTANCES; i++) {
            char name[32];
            snprintf(name, sizeof name, " nodestate/ns%d ", i + 1);
            if (strstr(line, name))
                counts[i]++;
        }
    }
    if (f)
        fclose(f);
}

static bool progressed(scale_test *t, long want)
{
    return atomic_load(&t->steps_done) >= want || atomic_load(&t->failed);
}

/* Waits (bounded) until the clients answered `want` steps; false when they stopped first. */
static bool wait_progress(scale_test *t, long want)
{
    for (int i = 0; i < HANG_SECONDS * 100 && !progressed(t, want); i++)
        ns_sleep_ms(10);
    return atomic_load(&t->steps_done) >= want;
}

static long total_steps(void)
{
    long total = 0;
    for (int i = 0; i < TOTAL_NODES; i++) {
        int len = 0;
        (void)life_of(i, &len);
        total += len;
    }
    return total;
}

/* The stored row of every node, by node index. */
typedef struct stored {
    char status[16];
    long long attempt, seq;
    bool present;
} stored;

static void read_store(const char *uri, stored *rows)
{
    PGconn *c = PQconnectdb(uri);
    cr_assert(c && PQstatus(c) == CONNECTION_OK, "connect: %s", c ? PQerrorMessage(c) : "");
    PGresult *r = PQexec(c, "SELECT run_id, node_id, status, attempt, seq FROM run_node_state "
                            "WHERE run_id LIKE 'scale-run-%'");
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(c));
    for (int i = 0; i < PQntuples(r); i++) {
        int run = -1, node = -1;
        if (sscanf(PQgetvalue(r, i, 0), "scale-run-%d", &run) != 1 ||
            sscanf(PQgetvalue(r, i, 1), "n%d", &node) != 1 || run < 0 || run >= RUNS ||
            node < 0 || node >= NODES)
            cr_assert_fail("unexpected row %s/%s", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
        stored *s = &rows[run * NODES + node];
        snprintf(s->status, sizeof s->status, "%s", PQgetvalue(r, i, 2));
        s->attempt = atoll(PQgetvalue(r, i, 3));
        s->seq = atoll(PQgetvalue(r, i, 4));
        s->present = true;
    }
    PQclear(r);
    PQfinish(c);
}

/* Whether instance c answers every node as stored; *bad names the first that differs. */
static bool instance_agrees(ns_client *c, const stored *rows, int *bad)
{
    ns_resp r = { 0 };
    bool all = true;
    for (int i = 0; i < TOTAL_NODES && all; i++) {
        char run[64], node[16], path[256], status[16] = "";
        long long attempt = 0, seq = 0;
        node_name(i, run, sizeof run, node, sizeof node);
        snprintf(path, sizeof path, "/runs/%s/nodes/%s/state", run, node);
        all = ns_client_req(c, "GET", path, NULL, NULL, &r) == 0 && r.status == 200 &&
              parse_node(r.body, status, sizeof status, &attempt, &seq, NULL) == 0 &&
              strcmp(status, rows[i].status) == 0 && attempt == rows[i].attempt &&
              seq == rows[i].seq;
        if (!all)
            *bad = i;
    }
    ns_resp_free(&r);
    return all;
}

static long long stat_of(ns_server *s, const char *name)
{
    ns_resp r = { 0 };
    long long v = -1;
    if (ns_req(s, "GET", "/stats?format=json", NULL, NULL, &r) == 0 && r.status == 200) {
        json_t *j = json_loads(r.body, 0, NULL);
        if (j && json_is_integer(json_object_get(j, name)))
            v = json_integer_value(json_object_get(j, name));
        json_decref(j);
    }
    ns_resp_free(&r);
    return v;
}

Test(scaleout, three_instances_behind_haproxy_one_killed_and_restarted, .timeout = 300)
{
    const char *base = getenv("NODESTATE_TEST_PG");
    if (!base || !*base)
        cr_skip_test("NODESTATE_TEST_PG is not set (a PostgreSQL URI): skipped; "
                     "scripts/test.sh runs it on a throwaway cluster");
    if (system("haproxy -v >/dev/null 2>&1") != 0)
        cr_skip_test("haproxy is not on PATH (bash scripts/deps.sh --test installs it)");

    static scale_test t; /* big: the acks of every node */
    memset(&t, 0, sizeof t);
    pthread_mutex_init(&t.why_lock, NULL);
    char db[64], uri[1024], sql[128];
    snprintf(db, sizeof db, "it_scaleout_%d", (int)getpid());
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s", db);
    pg_exec(base, sql);
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", db);
    pg_exec(base, sql);
    uri_with_db(base, db, uri, sizeof uri);

    int ports[INSTANCES];
    /* Each instance's spill sidecar of its own, where its restart finds it. */
    char spill_dir[] = "/tmp/it_scaleout.XXXXXX", spill[INSTANCES][PATH_MAX];
    cr_assert_not_null(mkdtemp(spill_dir));
    for (int i = 0; i < INSTANCES; i++) {
        snprintf(spill[i], sizeof spill[i], "%s/ns%d.spill", spill_dir, i + 1);
        /* --db last: it wins over the harness's SQLite file. */
        t.ns[i] = ns_start("--batch-interval 0.02 --spill-path %s --db %s", spill[i], uri);
        cr_assert_not_null(t.ns[i], "instance %d did not start", i + 1);
        ports[i] = ns_port(t.ns[i]);
    }

    char cfg[PATH_MAX], log[PATH_MAX];
    snprintf(cfg, sizeof cfg, "%s/haproxy.cfg", ns_dir(t.ns[0]));
    snprintf(log, sizeof log, "%s/haproxy.log", ns_dir(t.ns[0]));
    pid_t hp = -1;
    ns_client *probe = NULL;
    /* A port picked and freed may be taken by someone else before HAProxy binds it: try again. */
    for (int tries = 0; tries < 5 && !probe; tries++) {
        t.haproxy_port = free_port();
        write_haproxy_cfg(cfg, t.haproxy_port, ports);
        hp = start_haproxy(cfg, log);
        ns_client *c = ns_client_new_port(t.haproxy_port);
        cr_assert_not_null(c);
        proxied x = { c, "/readyz" };
        if (ns_wait_until(answers_200, &x, 30, 20) == 0) {
            probe = c;
        } else {
            ns_client_free(c);
            stop_haproxy(hp);
            hp = -1;
        }
    }
    cr_assert_not_null(probe, "HAProxy did not answer /readyz on its port (log: %s)", log);

    pthread_t threads[CLIENTS];
    client_arg args[CLIENTS];
    long long t0 = ns_mono_ms();
    for (int i = 0; i < CLIENTS; i++) {
        args[i] = (client_arg){ &t, i };
        cr_assert_eq(pthread_create(&threads[i], NULL, client_main, &args[i]), 0);
    }

    /* A third of the way: SIGKILL the second instance, mid-run. */
    long total = total_steps();
    bool killed = false, restarted = false;
    long long failover_ms = -1;
    int missing = -1;
    if (wait_progress(&t, total / 3)) {
        ns_kill(t.ns[1]);
        killed = true;
        long long kill_ms = ns_mono_ms();
        for (int round = 0; round < 10000; round++) {
            if (every_run_served(probe, &missing)) {
                failover_ms = ns_mono_ms() - kill_ms;
                break;
            }
            if (ns_mono_ms() - kill_ms > FAILOVER_MS)
                break;
            ns_sleep_ms(20);
        }
        /* Two thirds: back on its old port, where HAProxy looks for it. */
        if (wait_progress(&t, 2 * total / 3))
            restarted = ns_restart(t.ns[1], "--batch-interval 0.02 --spill-path %s --db %s "
                                   "--listen 127.0.0.1:%d", spill[1], uri, ports[1]) == 0;
    }
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(threads[i], NULL);
    long long load_ms = ns_mono_ms() - t0;

    cr_assert_not(atomic_load(&t.failed), "%s", t.why);
    cr_assert(killed, "the clients stopped before a third of the steps");
    cr_assert_geq(failover_ms, 0, "run scale-run-%03d was not served through HAProxy within %d ms "
                  "of the SIGKILL", missing, FAILOVER_MS);
    cr_assert(restarted, "the killed instance did not start again");

    /* Every durable answer is in PostgreSQL, and no node went back. */
    static stored rows[TOTAL_NODES];
    memset(rows, 0, sizeof rows);
    read_store(uri, rows);
    long checked = 0;
    for (int i = 0; i < TOTAL_NODES; i++) {
        const node_acks *a = &t.acks[i];
        char run[64], node[16];
        node_name(i, run, sizeof run, node, sizeof node);
        for (int k = 0; k < a->n; k++) {
            cr_assert(rows[i].present, "%s/%s acknowledged durable, not in PostgreSQL", run, node);
            cr_assert_geq(rows[i].seq, a->seq[k], "%s/%s: stored seq %lld below acknowledged %lld",
                          run, node, rows[i].seq, a->seq[k]);
            cr_assert(at_or_past(rows[i].status, rows[i].attempt, a->status[k], a->attempt[k]),
                      "%s/%s regressed: stored %s attempt %lld, acknowledged %s attempt %lld",
                      run, node, rows[i].status, rows[i].attempt, a->status[k], a->attempt[k]);
            checked++;
        }
        int len = 0;
        const step *life = life_of(i, &len);
        cr_assert(rows[i].present && strcmp(rows[i].status, life[len - 1].status) == 0 &&
                  rows[i].attempt == life[len - 1].attempt,
                  "%s/%s ends as %s attempt %lld, want %s attempt %d", run, node,
                  rows[i].status, rows[i].attempt, life[len - 1].status, life[len - 1].attempt);
    }
    cr_assert_gt(checked, 0);

    /* Every instance, asked directly, answers what PostgreSQL holds (bounded poll). */
    long long invalidations = 0;
    for (int i = 0; i < INSTANCES; i++) {
        ns_client *c = ns_client_new(t.ns[i]);
        cr_assert_not_null(c);
        int bad = -1;
        bool agrees = false;
        long long start = ns_mono_ms();
        for (int round = 0; round < 1000 && !agrees; round++) {
            agrees = instance_agrees(c, rows, &bad);
            if (!agrees && ns_mono_ms() - start > 10000)
                break;
            if (!agrees)
                ns_sleep_ms(50);
        }
        ns_client_free(c);
        char run[64] = "", node[16] = "";
        if (bad >= 0)
            node_name(bad, run, sizeof run, node, sizeof node);
        cr_assert(agrees, "instance %d answers %s/%s otherwise than PostgreSQL (%s attempt %lld seq %lld)",
                  i + 1, run, node, bad >= 0 ? rows[bad].status : "", bad >= 0 ? rows[bad].attempt : 0,
                  bad >= 0 ? rows[bad].seq : 0);
        invalidations += stat_of(t.ns[i], "cache_invalidations");
    }
    cr_assert_gt(invalidations, 0, "no instance dropped a run another one committed to");

    ns_client_free(probe);
    stop_haproxy(hp); /* its log is complete once it is gone */
    long served[INSTANCES], bad_gateway = 0;
    served_by(log, served, &bad_gateway);
    fprintf(stderr, "it_scaleout: %ld steps (%ld durable acks checked) in %lld ms, %ld resent, "
            "%ld not shown by the first GET, failover %lld ms, %lld cache invalidations, "
            "requests served by ns1/ns2/ns3: %ld/%ld/%ld, %ld answered 502 by HAProxy\n",
            atomic_load(&t.steps_done), checked, load_ms, atomic_load(&t.resent),
            atomic_load(&t.slow_visible), failover_ms, invalidations,
            served[0], served[1], served[2], bad_gateway);
    for (int i = 0; i < INSTANCES; i++)
        cr_assert_gt(served[i], 0, "HAProxy sent nothing to ns%d: the runs were not spread", i + 1);
    for (int i = 0; i < INSTANCES; i++) {
        cr_assert_eq(ns_stop(t.ns[i], SIGTERM), 0, "instance %d did not stop cleanly", i + 1);
        ns_free(t.ns[i]);
    }
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s", db);
    pg_exec(base, sql);
    char rm[PATH_MAX + 16];
    snprintf(rm, sizeof rm, "rm -rf '%s'", spill_dir);
    cr_assert_eq(system(rm), 0);
}
