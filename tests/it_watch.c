/*
 * it_watch: watching a run. GET /runs/{run_id}/events streams the run's
 * node states as Server-Sent Events, read here by a libcurl client that
 * parses the stream: every node's final state arrives, in seq order, while
 * 8 writers post to 1,000 nodes; a reconnect with Last-Event-ID in the
 * middle of a burst loses no node's final state; ?durable=true sends
 * nothing the disk does not hold; deleting the run ends its streams; a
 * client that stops reading is dropped once past --watch-buffer-bytes and
 * its memory goes; SIGTERM ends a durable stream cleanly after the final
 * flush; HEAD answers a stream's headers and nothing more. GET
 * .../nodes?since=N&wait=S answers once a change comes.
 * (tests/contract covers the answers' shapes and the 503.)
 */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "harness.h"
#include "it_assert.h"

enum {
    NODES = 1000,
    WRITERS = 8,
    STEPS = 3,            /* scheduled, running, completed */
};
/* Bounds, not expectations. */
#define WAIT_S 60.0

/* ---- an SSE client on libcurl, in a thread of its own ---- */

typedef struct sse {
    int port;
    char run[64];
    bool durable;
    int abort_after;            /* drop the connection after this many node events, once; 0 never */
    pthread_t thread;
    pthread_mutex_t mu;
    /* Parsing state (the thread's own). */
    char line[1 << 16];
    size_t line_len;
    char event[32];
    long long id;
    char *data;
    int conn_events;            /* node events on this connection */
    bool aborting;
    /* Results (mu). */
    long long seq[NODES];       /* latest seq seen per node n0000..n0999; 0 none */
    char status[NODES][16];
    long long last_id;          /* last id seen, across connections */
    int node_events;
    int synced;
    int deleted;
    long long deleted_id;       /* the id of the last "deleted" event */
    int out_of_order;           /* an id not above the previous one */
    int mismatched;             /* data's seq is not the id, or data is not a node */
    int not_durable;            /* "durable": false in a node event */
    int connections;
    CURLcode result;            /* of the last connection */
    long http_status;
    bool done;
} sse;

static int node_index(const char *node_id)
{
    if (node_id[0] != 'n')
        return -1;
    int i = atoi(node_id + 1);
    return i >= 0 && i < NODES ? i : -1;
}

/* One whole event: counts it, under mu. */
static void sse_dispatch(sse *c)
{
    pthread_mutex_lock(&c->mu);
    if (strcmp(c->event, "synced") == 0) {
        c->synced++;
    } else if (strcmp(c->event, "deleted") == 0) {
        c->deleted++;
        c->deleted_id = c->id;
    } else if (strcmp(c->event, "node") == 0) {
        json_t *doc = c->data ? json_loads(c->data, 0, NULL) : NULL;
        const char *node = doc ? json_string_value(json_object_get(doc, "node_id")) : NULL;
        long long seq = doc ? json_integer_value(json_object_get(doc, "seq")) : -1;
        const char *st = doc ? json_string_value(json_object_get(doc, "status")) : NULL;
        int i = node ? node_index(node) : -1;
        if (!doc || seq != c->id || !st || i < 0)
            c->mismatched++;
        if (c->id <= c->last_id)
            c->out_of_order++;
        if (doc && !json_is_true(json_object_get(doc, "durable")))
            c->not_durable++;
        if (i >= 0 && seq > c->seq[i]) {
            c->seq[i] = seq;
            snprintf(c->status[i], sizeof c->status[i], "%s", st ? st : "");
        }
        c->last_id = c->id;
        c->node_events++;
        c->conn_events++;
        json_decref(doc);
    }
    pthread_mutex_unlock(&c->mu);
    c->event[0] = '\0';
    c->id = -1;
    free(c->data);
    c->data = NULL;
}

static void sse_line(sse *c, const char *l)
{
    if (!*l) {
        if (c->event[0])
            sse_dispatch(c);
        return;
    }
    if (strncmp(l, "event: ", 7) == 0)
        snprintf(c->event, sizeof c->event, "%s", l + 7);
    else if (strncmp(l, "id: ", 4) == 0)
        c->id = atoll(l + 4);
    else if (strncmp(l, "data: ", 6) == 0) {
        free(c->data);
        c->data = strdup(l + 6);
    }
}

static size_t sse_write(char *p, size_t size, size_t n, void *arg)
{
    sse *c = arg;
    size_t len = size * n;
    for (size_t k = 0; k < len; k++) {
        if (p[k] != '\n') {
            if (c->line_len + 1 < sizeof c->line)
                c->line[c->line_len++] = p[k];
            continue;
        }
        c->line[c->line_len] = '\0';
        sse_line(c, c->line);
        c->line_len = 0;
    }
    if (c->abort_after && c->conn_events >= c->abort_after && !c->aborting) {
        c->aborting = true;   /* once: the reconnect reads to the end */
        return 0;             /* libcurl drops the connection */
    }
    return len;
}

/* Connects (again, with Last-Event-ID, after an abort) until a connection ends on its own. */
static void *sse_main(void *arg)
{
    sse *c = arg;
    for (int round = 0; round < 4; round++) {
        CURL *h = curl_easy_init();
        char url[256], last[64];
        struct curl_slist *hdrs = NULL;
        snprintf(url, sizeof url, "http://127.0.0.1:%d/runs/%s/events%s", c->port, c->run,
                 c->durable ? "?durable=true" : "");
        pthread_mutex_lock(&c->mu);
        if (c->last_id > 0) {
            snprintf(last, sizeof last, "Last-Event-ID: %lld", c->last_id);
            hdrs = curl_slist_append(hdrs, last);
        }
        c->connections++;
        pthread_mutex_unlock(&c->mu);
        c->line_len = 0;
        c->event[0] = '\0';
        c->conn_events = 0;
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sse_write);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, c);
        curl_easy_setopt(h, CURLOPT_TIMEOUT, 120L);   /* a bound: the test ends each stream */
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        CURLcode rc = curl_easy_perform(h);
        long status = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        curl_slist_free_all(hdrs);
        curl_easy_cleanup(h);
        pthread_mutex_lock(&c->mu);
        c->result = rc;
        c->http_status = status;
        pthread_mutex_unlock(&c->mu);
        if (rc != CURLE_WRITE_ERROR)
            break;
    }
    free(c->data);
    c->data = NULL;
    pthread_mutex_lock(&c->mu);
    c->done = true;
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* A stream that starts with Last-Event-ID: from (0: none); abort_after drops it once. */
static sse *sse_open_from(ns_server *s, const char *run, bool durable, int abort_after,
                          long long from)
{
    sse *c = calloc(1, sizeof *c);
    cr_assert_not_null(c);
    c->last_id = from;
    c->port = ns_port(s);
    snprintf(c->run, sizeof c->run, "%s", run);
    c->durable = durable;
    c->abort_after = abort_after;
    c->id = -1;
    pthread_mutex_init(&c->mu, NULL);
    cr_assert_eq(pthread_create(&c->thread, NULL, sse_main, c), 0);
    return c;
}

static sse *sse_open(ns_server *s, const char *run, bool durable, int abort_after)
{
    return sse_open_from(s, run, durable, abort_after, 0);
}

static bool sse_synced(void *arg)
{
    sse *c = arg;
    pthread_mutex_lock(&c->mu);
    bool ok = c->synced > 0;
    pthread_mutex_unlock(&c->mu);
    return ok;
}

static bool sse_done(void *arg)
{
    sse *c = arg;
    pthread_mutex_lock(&c->mu);
    bool ok = c->done;
    pthread_mutex_unlock(&c->mu);
    return ok;
}

/* Joins after the stream ended (asserted within WAIT_S) and frees. */
static void sse_close(sse *c)
{
    cr_assert_eq(ns_wait_until(sse_done, c, WAIT_S, 10), 0, "the stream of %s did not end",
                 c->run);
    pthread_join(c->thread, NULL);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* ---- writers ---- */

typedef struct writer {
    ns_server *s;
    const char *run;
    int id;
    int failures;
} writer;

static const char *const step_body[STEPS] = {
    "{\"status\":\"scheduled\"}", "{\"status\":\"running\"}",
    "{\"status\":\"completed\",\"outputs\":{\"ok\":true}}",
};

/* Each writer walks its share of the nodes through every step, a step at a time. */
static void *writer_main(void *arg)
{
    writer *w = arg;
    ns_client *c = ns_client_new(w->s);
    ns_resp r = { 0 };
    for (int step = 0; step < STEPS && c; step++)
        for (int i = w->id; i < NODES; i += WRITERS) {
            char node[16];
            snprintf(node, sizeof node, "n%04d", i);
            if (ns_client_post_state(c, w->run, node, step_body[step], &r) != 0 ||
                r.status != 202)
                w->failures++;
        }
    if (!c)
        w->failures++;
    ns_resp_free(&r);
    ns_client_free(c);
    return NULL;
}

static void write_all(ns_server *s, const char *run)
{
    pthread_t t[WRITERS];
    writer w[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        w[i] = (writer){ .s = s, .run = run, .id = i };
        cr_assert_eq(pthread_create(&t[i], NULL, writer_main, &w[i]), 0);
    }
    for (int i = 0; i < WRITERS; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(w[i].failures, 0, "writer %d: %d posts not answered 202", i, w[i].failures);
    }
}

/* The final seq of every node, from the listing. */
static void final_seqs(ns_server *s, const char *run, long long seq[NODES])
{
    char path[128];
    snprintf(path, sizeof path, "/runs/%s/nodes?limit=10000", run);
    json_t *page = it_get_json(s, path, 200);
    json_t *nodes = json_object_get(page, "nodes");
    cr_assert_eq(json_array_size(nodes), NODES);
    size_t k;
    json_t *n;
    json_array_foreach(nodes, k, n) {
        int i = node_index(json_string_value(json_object_get(n, "node_id")));
        cr_assert_geq(i, 0);
        seq[i] = json_integer_value(json_object_get(n, "seq"));
    }
    json_decref(page);
}

typedef struct caught_up {
    sse *c;
    const long long *want;
} caught_up;

static bool has_all(void *arg)
{
    caught_up *u = arg;
    pthread_mutex_lock(&u->c->mu);
    bool ok = true;
    for (int i = 0; i < NODES && ok; i++)
        ok = u->c->seq[i] == u->want[i];
    pthread_mutex_unlock(&u->c->mu);
    return ok;
}

static void assert_clean(sse *c)
{
    pthread_mutex_lock(&c->mu);
    cr_assert_eq(c->out_of_order, 0, "%d events out of seq order", c->out_of_order);
    cr_assert_eq(c->mismatched, 0, "%d node events whose data is not the node at that id",
                 c->mismatched);
    pthread_mutex_unlock(&c->mu);
}



/* A stream from Last-Event-ID: from that ends by itself: what it said. */
static void assert_told_deleted(ns_server *s, const char *run, bool durable, long long from,
                                long long deleted)
{
    sse *c = sse_open_from(s, run, durable, 0, from);
    cr_assert_eq(ns_wait_until(sse_done, c, WAIT_S, 10), 0,
                 "a stream from %lld did not end on the delete it missed", from);
    pthread_mutex_lock(&c->mu);
    cr_assert_eq(c->http_status, 200);
    cr_assert_eq(c->result, CURLE_OK, "the stream ended with %s", curl_easy_strerror(c->result));
    cr_assert_eq(c->deleted, 1, "from %lld: %d deleted events", from, c->deleted);
    cr_assert_eq(c->deleted_id, deleted, "from %lld: deleted at %lld, told %lld", from, deleted,
                 c->deleted_id);
    cr_assert_eq(c->node_events, 0, "from %lld: %d nodes before the delete", from,
                 c->node_events);
    cr_assert_eq(c->synced, 0);
    pthread_mutex_unlock(&c->mu);
    sse_close(c);
}

/* GET /runs/{run}/nodes?since=N: its deleted_seq (0 when absent) and how many nodes. */
static long long since_deleted_seq(ns_server *s, const char *run, long long since, size_t *nodes)
{
    char path[128];
    snprintf(path, sizeof path, "/runs/%s/nodes?since=%lld&wait=30", run, since);
    json_t *page = it_get_json(s, path, 200);
    json_t *d = json_object_get(page, "deleted_seq");
    long long seq = d ? json_integer_value(d) : 0;
    cr_assert(d == NULL || (json_is_integer(d) && seq > 0));
    *nodes = json_array_size(json_object_get(page, "nodes"));
    json_decref(page);
    return seq;
}

/* ---- tests ---- */

Test(watch, a_resumed_stream_learns_of_the_delete_it_missed, .timeout = 180)
{
    ns_server *s = ns_start(NULL);
    cr_assert_not_null(s);
    it_post(s, "x", "n0000", "?wait=true", "{\"status\":\"idle\"}", 200);
    json_t *row = it_post_json(s, "x", "n0001", "?wait=true", "{\"status\":\"idle\"}", 200);
    long long seen = it_jint(row, "seq");
    json_decref(row);
    /* The client saw up to `seen`, then the run was deleted and written anew. */
    long long deleted = it_delete_seq(s, "x", NULL, 202);
    row = it_post_json(s, "x", "n0002", "?wait=true", "{\"status\":\"idle\"}", 200);
    long long fresh = it_jint(row, "seq");
    json_decref(row);
    cr_assert_gt(fresh, deleted);

    for (int round = 0; round < 2; round++) {
        /* Told the delete, not the new run's nodes (n0000 and n0001 are gone, not unchanged). */
        assert_told_deleted(s, "x", false, seen, deleted);
        assert_told_deleted(s, "x", true, seen, deleted);
        /* Resumed from the delete: the new run, then synced. */
        sse *c = sse_open_from(s, "x", false, 0, deleted);
        cr_assert_eq(ns_wait_until(sse_synced, c, WAIT_S, 5), 0, "no synced event");
        pthread_mutex_lock(&c->mu);
        cr_assert_eq(c->node_events, 1);
        cr_assert_eq(c->seq[2], fresh);
        cr_assert_eq(c->deleted, 0);
        pthread_mutex_unlock(&c->mu);
        /* The long poll says the same: the nodes now, and the delete before them. */
        size_t nodes = 0;
        cr_assert_eq(since_deleted_seq(s, "x", seen, &nodes), deleted);
        cr_assert_eq(nodes, 1);
        cr_assert_eq(since_deleted_seq(s, "x", deleted, &nodes), 0);
        cr_assert_eq(nodes, 1);
        /* Asking for everything (no since) missed nothing. */
        sse *all = sse_open(s, "x", false, 0);
        cr_assert_eq(ns_wait_until(sse_synced, all, WAIT_S, 5), 0, "no synced event");
        pthread_mutex_lock(&all->mu);
        cr_assert_eq(all->deleted, 0);
        cr_assert_eq(all->node_events, 1);
        pthread_mutex_unlock(&all->mu);
        if (round == 0) {
            /* Once more from the store's record alone, after a restart. */
            ns_stop(s, SIGTERM);
            sse_close(c);
            sse_close(all);
            cr_assert_eq(ns_restart(s, NULL), 0);
            continue;
        }
        /* Gone for good: a stream that missed it is told, one that saw it gets 404. */
        long long again = it_delete_seq(s, "x", NULL, 202);
        cr_assert_eq(ns_wait_until(sse_done, c, WAIT_S, 10), 0);
        sse_close(c);
        sse_close(all);
        assert_told_deleted(s, "x", false, fresh, again);
        sse *late = sse_open_from(s, "x", false, 0, again);
        cr_assert_eq(ns_wait_until(sse_done, late, WAIT_S, 10), 0);
        cr_assert_eq(late->http_status, 404);
        sse_close(late);
        sse *none = sse_open(s, "x", false, 0);
        cr_assert_eq(ns_wait_until(sse_done, none, WAIT_S, 10), 0);
        cr_assert_eq(none->http_status, 404);
        sse_close(none);
    }
    ns_free(s);
}

Test(watch, every_final_state_in_seq_order_from_eight_writers, .timeout = 180)
{
    ns_server *s = ns_start(NULL);
    cr_assert_not_null(s);
    it_post(s, "w", "n0000", NULL, "{\"status\":\"idle\"}", 202);
    sse *a = sse_open(s, "w", false, 0);
    cr_assert_eq(ns_wait_until(sse_synced, a, WAIT_S, 5), 0, "no synced event");
    write_all(s, "w");
    long long want[NODES];
    final_seqs(s, "w", want);
    caught_up u = { a, want };
    cr_assert_eq(ns_wait_until(has_all, &u, WAIT_S, 10), 0,
                 "some node's final state never arrived");
    assert_clean(a);
    for (int i = 0; i < NODES; i++)
        cr_assert_str_eq(a->status[i], "completed", "n%04d ends %s", i, a->status[i]);
    cr_assert_eq(a->synced, 1);
    /* The run's delete ends the stream: an event, then a clean end. */
    it_delete_seq(s, "w", NULL, 202);
    cr_assert_eq(ns_wait_until(sse_done, a, WAIT_S, 10), 0);
    cr_assert_eq(a->deleted, 1);
    cr_assert_eq(a->result, CURLE_OK, "the stream ended with %s", curl_easy_strerror(a->result));
    cr_assert_eq(a->http_status, 200);
    sse_close(a);
    cr_assert_geq(ns_stat(s, "watch_events_sent"), NODES);
    cr_assert_eq(ns_wait_stat_eq(s, "watchers", 0, WAIT_S), 0);
    ns_free(s);
}

Test(watch, reconnect_with_last_event_id_loses_no_final_state, .timeout = 180)
{
    ns_server *s = ns_start(NULL);
    cr_assert_not_null(s);
    it_post(s, "r", "n0000", NULL, "{\"status\":\"idle\"}", 202);
    /* Drops its connection after 300 node events, while the writers are at it, and resumes. */
    sse *a = sse_open(s, "r", false, 300);
    cr_assert_eq(ns_wait_until(sse_synced, a, WAIT_S, 5), 0, "no synced event");
    write_all(s, "r");
    long long want[NODES];
    final_seqs(s, "r", want);
    caught_up u = { a, want };
    cr_assert_eq(ns_wait_until(has_all, &u, WAIT_S, 10), 0,
                 "some node's final state was lost over the reconnect");
    assert_clean(a);   /* ids keep rising across the reconnect too */
    pthread_mutex_lock(&a->mu);
    cr_assert_eq(a->connections, 2, "want one reconnect, got %d connections", a->connections);
    pthread_mutex_unlock(&a->mu);
    it_delete_seq(s, "r", NULL, 202);
    cr_assert_eq(ns_wait_until(sse_done, a, WAIT_S, 10), 0);
    cr_assert_eq(a->deleted, 1);
    sse_close(a);
    ns_free(s);
}

typedef struct saw_seq {
    sse *c;
    int node;
    long long seq;
} saw_seq;

static bool saw(void *arg)
{
    saw_seq *w = arg;
    pthread_mutex_lock(&w->c->mu);
    bool ok = w->c->seq[w->node] >= w->seq;
    pthread_mutex_unlock(&w->c->mu);
    return ok;
}

Test(watch, durable_stream_sends_nothing_above_durable_seq, .timeout = 120)
{
    ns_server *s = ns_start(NULL);
    cr_assert_not_null(s);
    it_post(s, "d", "n0001", "?wait=true", "{\"status\":\"idle\"}", 200);
    sse *plain = sse_open(s, "d", false, 0);
    sse *dur = sse_open(s, "d", true, 0);
    cr_assert_eq(ns_wait_until(sse_synced, plain, WAIT_S, 5), 0);
    cr_assert_eq(ns_wait_until(sse_synced, dur, WAIT_S, 5), 0);
    /* With the database locked nothing commits: the durable stream must hold the change back. */
    it_store_lock *lock = it_lock_store(s);
    json_t *row = it_post_json(s, "d", "n0002", NULL, "{\"status\":\"idle\"}", 202);
    long long seq = it_jint(row, "seq");
    json_decref(row);
    saw_seq in_plain = { plain, 2, seq };
    cr_assert_eq(ns_wait_until(saw, &in_plain, WAIT_S, 5), 0, "the plain stream missed seq %lld", seq);
    cr_assert_lt(ns_stat(s, "durable_seq"), seq);
    pthread_mutex_lock(&dur->mu);
    cr_assert_lt(dur->last_id, seq, "the durable stream sent seq %lld before its commit", seq);
    pthread_mutex_unlock(&dur->mu);
    it_unlock_store(lock);
    saw_seq in_dur = { dur, 2, seq };
    cr_assert_eq(ns_wait_until(saw, &in_dur, WAIT_S, 5), 0, "the durable stream never sent seq %lld", seq);
    cr_assert_geq(ns_stat(s, "durable_seq"), seq);
    /* Many more, each event checked: durable when sent. */
    write_all(s, "d");
    long long want[NODES];
    final_seqs(s, "d", want);
    caught_up u = { dur, want };
    cr_assert_eq(ns_wait_until(has_all, &u, WAIT_S, 10), 0);
    assert_clean(dur);
    pthread_mutex_lock(&dur->mu);
    cr_assert_eq(dur->not_durable, 0, "%d events said durable: false", dur->not_durable);
    pthread_mutex_unlock(&dur->mu);
    it_delete_seq(s, "d", NULL, 202);
    sse_close(plain);
    sse_close(dur);
    ns_free(s);
}

Test(watch, a_client_that_stops_reading_is_dropped, .timeout = 180)
{
    ns_server *s = ns_start("--watch-buffer-bytes 64K --connection-timeout 5");
    cr_assert_not_null(s);
    it_post(s, "slow", "n0", NULL, "{\"status\":\"idle\"}", 202);
    int fd = it_raw_connect(s, NULL);
    cr_assert_eq(ns_raw_send_str(fd, "GET /runs/slow/events HTTP/1.1\r\nHost: t\r\n\r\n"), 0);
    cr_assert_eq(ns_wait_stat_eq(s, "watchers", 1, WAIT_S), 0);
    /* Never read: the socket's buffers fill, then the watcher's; 8 KiB per node. */
    size_t big = 8192;
    char *body = malloc(big + 64);
    cr_assert_not_null(body);
    int n = snprintf(body, big + 64, "{\"status\":\"running\",\"outputs\":\"");
    memset(body + n, 'x', big);
    snprintf(body + n + big, 64, "\"}");
    bool dropped = false;
    for (int i = 1; i <= 8000 && !dropped; i++) {
        char node[16];
        snprintf(node, sizeof node, "n%d", i);
        it_post(s, "slow", node, NULL, body, 202);
        if (i % 100 == 0)
            dropped = ns_stat(s, "watch_dropped") >= 1;
    }
    free(body);
    cr_assert(dropped, "a stream 64 MB behind was not dropped");
    /* The client still never reads: the server lets go of the connection by itself, watcher and all. */
    cr_assert_eq(ns_wait_stat_eq(s, "watchers", 0, WAIT_S), 0);
    close(fd);
    ns_free(s);
}

/*
 * A stream or a long poll whose client went away gives its --max-watchers
 * place back without a write to find out (no heartbeats here, no change).
 */
Test(watch, a_client_that_left_frees_its_place, .timeout = 120)
{
    ns_server *s = ns_start("--watch-heartbeat 0 --max-watchers 1");
    cr_assert_not_null(s);
    it_post(s, "gone", "n0", NULL, "{\"status\":\"idle\"}", 202);
    static const char *const asks[] = {
        "GET /runs/gone/events HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET /runs/gone/nodes?since=1&wait=100 HTTP/1.1\r\nHost: t\r\n\r\n",
    };
    for (size_t i = 0; i < 2; i++) {
        int fd = it_raw_connect(s, NULL);
        cr_assert_eq(ns_raw_send_str(fd, asks[i]), 0);
        cr_assert_eq(ns_wait_stat_eq(s, "watchers", 1, WAIT_S), 0, "ask %zu did not park", i);
        close(fd);
        cr_assert_eq(ns_wait_stat_eq(s, "watchers", 0, WAIT_S), 0,
                     "ask %zu kept its place after its client left", i);
    }
    /* The place is free: a new stream is taken, not refused with 503. */
    int fd = it_raw_connect(s, NULL);
    cr_assert_eq(ns_raw_send_str(fd, asks[0]), 0);
    char buf[1024];
    size_t len = 0;
    buf[0] = '\0';
    for (int tries = 0; strstr(buf, "\r\n\r\n") == NULL; tries++) {
        cr_assert(tries < 600, "no answer in 60 s: %.300s", buf);
        cr_assert_eq(it_raw_read_for(fd, buf, sizeof buf, &len, 100), 0, "closed: %.300s", buf);
    }
    cr_assert(strncmp(buf, "HTTP/1.1 200", 12) == 0, "%.300s", buf);
    close(fd);
    ns_free(s);
}

/* Reads from fd until the end of an answer's headers (60 s at most); returns where its body starts. */
static char *read_headers(int fd, char *buf, size_t cap, size_t *len)
{
    char *end;

    for (int tries = 0; (end = strstr(buf, "\r\n\r\n")) == NULL; tries++) {
        cr_assert(tries < 600, "no headers in 60 s: %.300s", buf);
        bool closed = it_raw_read_for(fd, buf, cap, len, 100) == 1;
        cr_assert(!closed || strstr(buf, "\r\n\r\n") != NULL, "closed: %.300s", buf);
    }
    return end + 4;
}

static int line_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * The status line, then the header lines of head (cut at its end) sorted,
 * into out: all but Date and the fields of the connection's framing.
 */
static void header_set(char *head, char *out, size_t cap)
{
    static const char *const left_out[] = { "Date:", "Connection:", "Transfer-Encoding:" };
    char *lines[32];
    size_t n = 0;

    for (char *l = strtok(head, "\r\n"); l != NULL; l = strtok(NULL, "\r\n")) {
        bool keep = true;
        for (size_t i = 0; i < sizeof left_out / sizeof *left_out; i++)
            keep = keep && strncasecmp(l, left_out[i], strlen(left_out[i])) != 0;
        cr_assert_lt(n, sizeof lines / sizeof *lines, "too many header lines");
        if (keep)
            lines[n++] = l;
    }
    cr_assert_gt(n, 0, "no status line");
    qsort(lines + 1, n - 1, sizeof *lines, line_cmp);
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        cr_assert_lt(strlen(out) + strlen(lines[i]) + 2, cap);
        strcat(out, lines[i]);
        strcat(out, "\n");
    }
}

/*
 * HEAD of a stream answers what GET does, body aside (RFC 9110 9.3.2): the
 * same status and header fields, so no Content-Length where GET's length is
 * unknown, and the headers only a stream has. Not GET's framing: GET's is
 * chunked, and MHD 0.9.75 would end a chunked HEAD with a last chunk, a
 * body; HEAD is closed after its headers instead, with not a byte more.
 */
Test(watch, head_answers_the_headers_of_the_stream, .timeout = 120)
{
    ns_server *s = ns_start(NULL);
    cr_assert_not_null(s);
    it_post(s, "h", "n0", NULL, "{\"status\":\"idle\"}", 202);
    static const char *const methods[] = { "GET", "HEAD" };
    char sets[2][1024];
    for (size_t i = 0; i < 2; i++) {
        int fd = it_raw_connect(s, NULL);
        char req[128];
        snprintf(req, sizeof req, "%s /runs/h/events HTTP/1.1\r\nHost: t\r\n\r\n", methods[i]);
        cr_assert_eq(ns_raw_send_str(fd, req), 0);
        char buf[4096] = "";
        size_t len = 0;
        char *body = read_headers(fd, buf, sizeof buf, &len);
        if (strcmp(methods[i], "HEAD") == 0) {
            size_t head_len = (size_t)(body - buf);
            cr_assert_eq(it_raw_read_for(fd, buf, sizeof buf, &len, 30000), 1,
                         "HEAD's connection stayed open: %.300s", buf);
            cr_assert_eq(len, head_len, "HEAD sent a body: %s", body);
        }
        body[0] = '\0';
        header_set(buf, sets[i], sizeof sets[i]);
        cr_assert(strstr(sets[i], "Content-Length:") == NULL, "%s: %s", methods[i], sets[i]);
        close(fd);
    }
    cr_assert(strstr(sets[0], "HTTP/1.1 200") == sets[0], "%s", sets[0]);
    cr_assert(strstr(sets[0], "X-Accel-Buffering: no\n") != NULL, "%s", sets[0]);
    cr_assert_str_eq(sets[1], sets[0], "HEAD:\n%s\nGET:\n%s", sets[1], sets[0]);
    ns_free(s);
}

#define BIG_NODES 2000
#define BIG_OUTPUT (20 * 1000)
#define BIG_BATCH 200
#define BIG_STREAMS 4

/* A stream of run "big" from a client with a 4 KiB receive buffer that reads only the headers. */
static int big_stream(const ns_server *s)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    int small = 4096;
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small), 0);
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons((uint16_t)ns_port(s)) };
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&to, sizeof to), 0);
    cr_assert_eq(ns_raw_send_str(fd, "GET /runs/big/events HTTP/1.1\r\nHost: t\r\n\r\n"), 0);
    /* The headers come after the catch-up is taken: then the stream holds what it will. */
    char buf[4096];
    size_t len = 0;
    buf[0] = '\0';
    for (int tries = 0; strstr(buf, "\r\n\r\n") == NULL; tries++) {
        cr_assert(tries < 600, "no answer in 60 s");
        cr_assert_eq(it_raw_read_for(fd, buf, sizeof buf, &len, 100), 0);
    }
    cr_assert(strncmp(buf, "HTTP/1.1 200", 12) == 0, "%.200s", buf);
    return fd;
}

/*
 * Streams on a run of big rows that is not cached (rows read from the file
 * are each stream's own) do not each hold the run's rows until they are
 * sent: four clients that read nothing of a 40 MB run held ~150 MB before.
 */
Test(watch, streams_on_a_big_uncached_run_do_not_each_hold_its_rows, .timeout = 180)
{
    ns_server *s = ns_start(NULL);
    cr_assert_not_null(s);
    size_t cap = (size_t)BIG_BATCH * (BIG_OUTPUT + 96) + 64;
    char *body = malloc(cap);
    cr_assert_not_null(body);
    for (int b = 0; b < BIG_NODES / BIG_BATCH; b++) {
        size_t n = (size_t)snprintf(body, cap, "{\"updates\":[");
        for (int i = 0; i < BIG_BATCH; i++) {
            n += (size_t)snprintf(body + n, cap - n, "%s{\"node_id\":\"n%05d\",\"status\":"
                                  "\"running\",\"outputs\":\"", i ? "," : "", b * BIG_BATCH + i);
            memset(body + n, 'x', BIG_OUTPUT);
            n += BIG_OUTPUT;
            n += (size_t)snprintf(body + n, cap - n, "\"}");
        }
        snprintf(body + n, cap - n, "]}");
        ns_resp r = { 0 };
        const char *hdr[] = { "Content-Type: application/json", NULL };
        cr_assert_eq(ns_req(s, "POST", "/runs/big/nodes", body, hdr, &r), 0);
        cr_assert_eq(r.status, 202, "%ld %.200s", r.status, r.body);
        ns_resp_free(&r);
    }
    free(body);
    cr_assert_eq(ns_wait_stat_ge(s, "durable_seq", BIG_NODES, WAIT_S), 0);
    /* Started again, nothing of the run is cached: the streams read it from the file. */
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_eq(ns_restart(s, "--cache-max-bytes 16M"), 0);
    long before = ns_status_kib(s, "VmRSS");
    cr_assert_gt(before, 0);
    int fds[BIG_STREAMS];
    for (int i = 0; i < BIG_STREAMS; i++)
        fds[i] = big_stream(s);
    cr_assert_eq(ns_wait_stat_eq(s, "watchers", BIG_STREAMS, WAIT_S), 0);
    long grew = ns_status_kib(s, "VmRSS") - before;
    /* One copy of the run is 40 MB; the four streams together hold well under that. */
    cr_assert(!NS_MEMORY_TELLS_OURS || grew < 32 * 1024, "%d streams grew the server by %ld MiB",
              BIG_STREAMS, grew / 1024);
    for (int i = 0; i < BIG_STREAMS; i++)
        close(fds[i]);
    ns_free(s);
}

typedef struct poller {
    ns_server *s;
    char path[128];
    ns_resp r;
    int rc;
} poller;

static void *poll_main(void *arg)
{
    poller *p = arg;
    ns_client *c = ns_client_new(p->s);
    p->rc = c ? ns_client_req(c, "GET", p->path, NULL, NULL, &p->r) : -1;
    ns_client_free(c);
    return NULL;
}

Test(watch, long_poll_answers_on_the_next_change, .timeout = 120)
{
    ns_server *s = ns_start(NULL);
    cr_assert_not_null(s);
    json_t *row = it_post_json(s, "p", "a", NULL, "{\"status\":\"running\"}", 202);
    long long seq = it_jint(row, "seq");
    json_decref(row);
    poller p = { .s = s };
    snprintf(p.path, sizeof p.path, "/runs/p/nodes?since=%lld&wait=50", seq);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, poll_main, &p), 0);
    cr_assert_eq(ns_wait_stat_eq(s, "watchers", 1, WAIT_S), 0, "the poll did not park");
    it_post(s, "p", "b", NULL, "{\"status\":\"scheduled\"}", 202);
    pthread_join(t, NULL);
    cr_assert_eq(p.rc, 0);
    cr_assert_eq(p.r.status, 200, "%ld %s", p.r.status, p.r.body);
    json_t *doc = ns_resp_json(&p.r);
    json_t *nodes = json_object_get(doc, "nodes");
    cr_assert_eq(json_array_size(nodes), 1, "%s", p.r.body);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(nodes, 0), "node_id")), "b");
    json_decref(doc);
    ns_resp_free(&p.r);
    /* Nothing comes: the empty list once the wait is over. */
    char path[96];
    snprintf(path, sizeof path, "/runs/p/nodes?since=%lld&wait=0.2", ns_stat(s, "last_seq"));
    json_t *empty = it_get_json(s, path, 200);
    cr_assert_eq(json_array_size(json_object_get(empty, "nodes")), 0);
    json_decref(empty);
    cr_assert_eq(ns_wait_stat_eq(s, "watchers", 0, WAIT_S), 0);
    ns_free(s);
}

Test(watch, sigterm_ends_a_durable_stream_after_the_final_flush, .timeout = 120)
{
    ns_server *s = ns_start("--batch-interval 5");
    cr_assert_not_null(s);
    it_post(s, "t", "n0000", "?wait=true", "{\"status\":\"idle\"}", 200);
    sse *dur = sse_open(s, "t", true, 0);
    cr_assert_eq(ns_wait_until(sse_synced, dur, WAIT_S, 5), 0);
    long long want[NODES] = { 0 };
    for (int i = 0; i < 200; i++) {
        char node[16];
        snprintf(node, sizeof node, "n%04d", i);
        json_t *row = it_post_json(s, "t", node, NULL, "{\"status\":\"running\"}", 202);
        want[i] = it_jint(row, "seq");
        json_decref(row);
    }
    /* Queued, not committed (the batch waits 5 s): the flush on SIGTERM commits them, the stream sends them, then ends. */
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    cr_assert_eq(ns_wait_until(sse_done, dur, WAIT_S, 10), 0);
    cr_assert_eq(dur->result, CURLE_OK, "the stream ended with %s", curl_easy_strerror(dur->result));
    caught_up u = { dur, want };
    cr_assert(has_all(&u), "a committed change was not sent before the stream ended");
    assert_clean(dur);
    sse_close(dur);
    ns_free(s);
}
