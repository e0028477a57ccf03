/*
 * pg_listen: LISTEN/NOTIFY between instances sharing one PostgreSQL
 * database (pg_listen.h). The listener is a connection of its own, on a
 * thread of its own that sleeps in poll() on the connection's socket and a
 * pipe that stop writes to, so a notification is handed over as soon as it
 * arrives and stopping never waits for a timeout.
 */
#include "pg_listen.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

/* PostgreSQL refuses a payload of 8000 bytes or more; leave a margin. */
#define PAYLOAD_MAX 7900
/* Most run ids handed to fn in one call (a payload holds fewer). */
#define IDS_MAX 4096
/* Reconnecting waits this long at first, doubling up to the cap. */
#define RECONNECT_FIRST_MS 50
#define RECONNECT_CAP_MS 1000

struct store_listener {
    char *uri;
    char instance_id[STORE_INSTANCE_ID_MAX + 1];
    store_runs_changed_fn *fn;
    void *ctx;
    PGconn *conn;           /* listener thread only, once started */
    int wake[2];            /* stop writes a byte to wake[1] */
    _Atomic bool stop;
    pthread_t thread;
};

bool pg_listen_is_uri(const char *path)
{
    return path && (strncmp(path, "postgresql://", 13) == 0 ||
                    strncmp(path, "postgres://", 11) == 0);
}

static bool valid_id(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > STORE_INSTANCE_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

/* ---- sending, inside the writer's transaction ---- */

/* Appends s (len bytes) to the growing buffer; 0 or -1 when out of memory. */
static int append(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t want = (*cap ? *cap * 2 : 1024);
        while (want < *len + n + 1)
            want *= 2;
        char *grown = realloc(*buf, want);
        if (!grown)
            return -1;
        *buf = grown;
        *cap = want;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = '\0';
    return 0;
}

/*
 * Adds run to the array literal in arr: a new payload element is opened
 * when the current one would pass PAYLOAD_MAX. *cur is the current
 * element's length (0: none open yet). Ids and run ids are unreserved
 * characters, so an element needs no escaping inside its quotes.
 */
static int add_run(char **arr, size_t *len, size_t *cap, size_t *cur,
                   const char *id, const char *run)
{
    size_t rn = strlen(run);
    if (*cur && *cur + 1 + rn > PAYLOAD_MAX) {
        if (append(arr, len, cap, "\",", 2) != 0)
            return -1;
        *cur = 0;
    }
    if (*cur == 0) {
        if (append(arr, len, cap, "\"", 1) != 0 || append(arr, len, cap, id, strlen(id)) != 0)
            return -1;
        *cur = strlen(id);
    }
    if (append(arr, len, cap, " ", 1) != 0 || append(arr, len, cap, run, rn) != 0)
        return -1;
    *cur += 1 + rn;
    return 0;
}

int pg_listen_payloads(const store_batch *b, char **out, char *err, size_t errlen)
{
    char *arr = NULL;
    size_t len = 0, cap = 0, cur = 0;
    *out = NULL;
    if (!b->notify_id || (b->n_rows == 0 && b->n_deletes == 0))
        return 0;
    if (append(&arr, &len, &cap, "{", 1) != 0)
        goto oom;
    for (size_t i = 0; i < b->n_deletes; i++)
        if (add_run(&arr, &len, &cap, &cur, b->notify_id, b->delete_runs[i]) != 0)
            goto oom;
    /* Rows come sorted by run: name each run once. */
    for (size_t i = 0; i < b->n_rows; i++) {
        const char *run = b->rows[i]->run_id;
        if (i > 0 && strcmp(run, b->rows[i - 1]->run_id) == 0)
            continue;
        if (add_run(&arr, &len, &cap, &cur, b->notify_id, run) != 0)
            goto oom;
    }
    if (append(&arr, &len, &cap, "\"}", 2) != 0)
        goto oom;
    *out = arr;
    return 0;
oom:
    free(arr);
    snprintf(err, errlen, "notify: out of memory");
    return -1;
}

/* ---- listening ---- */

static void ignore_notice(void *ctx, const char *message)
{
    (void)ctx;
    (void)message;
}

/*
 * Connects and LISTENs; the connection, or NULL with err set. The session
 * is named nodestate-listen-<instance id> (application_name), so
 * pg_stat_activity tells each instance's listener apart.
 */
static PGconn *connect_listen(const char *uri, const char *instance_id, char *err,
                              size_t errlen)
{
    char app[32 + STORE_INSTANCE_ID_MAX];
    snprintf(app, sizeof app, "nodestate-listen-%s", instance_id);
    /*
     * The URI first and expanded; the settings after it win over its own.
     * The listener only ever waits for the server, so a connection that
     * died without a word (a host gone, a partition) must be noticed by
     * TCP keepalives: after about 10 + 3 * 5 s, then it is made anew.
     */
    const char *const keys[] = { "dbname", "application_name", "keepalives", "keepalives_idle",
                                 "keepalives_interval", "keepalives_count", NULL };
    const char *const values[] = { uri, app, "1", "10", "5", "3", NULL };
    PGconn *conn = PQconnectdbParams(keys, values, 1);
    PGresult *res = NULL;
    if (!conn) {
        snprintf(err, errlen, "listen: out of memory");
        return NULL;
    }
    if (PQstatus(conn) != CONNECTION_OK)
        goto fail;
    /*
     * The server's words to a session it ends ("terminating connection due
     * to administrator command") would land on stderr, in the middle of the
     * log; the reconnect is what matters.
     */
    PQsetNoticeProcessor(conn, ignore_notice, NULL);
    res = PQexec(conn, "LISTEN " NS_PG_CHANNEL);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        goto fail;
    PQclear(res);
    return conn;
fail:
    snprintf(err, errlen, "listen: %s", PQerrorMessage(conn));
    /* libpq's messages end with a newline; a log line must not. */
    size_t n = strlen(err);
    while (n > 0 && (err[n - 1] == '\n' || err[n - 1] == '\r'))
        err[--n] = '\0';
    PQclear(res);
    PQfinish(conn);
    return NULL;
}

/* Hands the runs of one payload to fn, unless they are our own instance's. */
static void deliver(store_listener *l, char *payload)
{
    const char *ids[IDS_MAX];
    size_t n = 0;
    char *save = NULL;
    char *who = strtok_r(payload, " ", &save);
    if (!who || strcmp(who, l->instance_id) == 0)
        return;
    for (char *run = strtok_r(NULL, " ", &save); run; run = strtok_r(NULL, " ", &save)) {
        ids[n++] = run;
        if (n == IDS_MAX) {
            l->fn(l->ctx, ids, n);
            n = 0;
        }
    }
    if (n)
        l->fn(l->ctx, ids, n);
}

/* Waits ms or until stop; true when stopping. */
static bool nap(store_listener *l, int ms)
{
    struct pollfd p = { .fd = l->wake[0], .events = POLLIN };
    if (!atomic_load(&l->stop))
        (void)poll(&p, 1, ms);
    return atomic_load(&l->stop);
}

static void *listen_main(void *arg)
{
    store_listener *l = arg;
    int backoff = RECONNECT_FIRST_MS;
    while (!atomic_load(&l->stop)) {
        if (!l->conn) {
            char err[512];
            l->conn = connect_listen(l->uri, l->instance_id, err, sizeof err);
            if (!l->conn) {
                if (nap(l, backoff))
                    break;
                backoff = backoff * 2 > RECONNECT_CAP_MS ? RECONNECT_CAP_MS : backoff * 2;
                continue;
            }
            backoff = RECONNECT_FIRST_MS;
            /* Commits while we were away went unheard: any cached run may be old. */
            l->fn(l->ctx, NULL, 0);
        }
        struct pollfd p[2] = {
            { .fd = PQsocket(l->conn), .events = POLLIN },
            { .fd = l->wake[0], .events = POLLIN },
        };
        int n = poll(p, 2, -1);
        if (n < 0 && errno != EINTR)
            (void)nap(l, RECONNECT_FIRST_MS);
        if (atomic_load(&l->stop))
            break;
        if (PQconsumeInput(l->conn) == 0 || PQstatus(l->conn) != CONNECTION_OK) {
            PQfinish(l->conn);
            l->conn = NULL;
            continue;
        }
        PGnotify *note;
        while ((note = PQnotifies(l->conn)) != NULL) {
            deliver(l, note->extra);
            PQfreemem(note);
        }
    }
    return NULL;
}

store_listener *pg_listen_start(const char *uri, const char *instance_id,
                                store_runs_changed_fn *fn, void *ctx,
                                char *err, size_t errlen)
{
    store_listener *l = calloc(1, sizeof *l);
    if (!l) {
        snprintf(err, errlen, "listen: out of memory");
        return NULL;
    }
    l->wake[0] = l->wake[1] = -1;
    atomic_init(&l->stop, false);
    if (!valid_id(instance_id)) {
        snprintf(err, errlen, "listen: instance id '%.80s' is not 1-%d of [A-Za-z0-9._-]",
                 instance_id, STORE_INSTANCE_ID_MAX);
        goto fail;
    }
    strcpy(l->instance_id, instance_id);
    l->fn = fn;
    l->ctx = ctx;
    l->uri = strdup(uri);
    if (!l->uri) {
        snprintf(err, errlen, "listen: out of memory");
        goto fail;
    }
    if (pipe(l->wake) != 0 || fcntl(l->wake[0], F_SETFD, FD_CLOEXEC) != 0 ||
        fcntl(l->wake[1], F_SETFD, FD_CLOEXEC) != 0) {
        snprintf(err, errlen, "listen: pipe: %s", strerror(errno));
        goto fail;
    }
    /* The first connection is made here, so a start that cannot listen fails. */
    l->conn = connect_listen(uri, l->instance_id, err, errlen);
    if (!l->conn)
        goto fail;
    int rc = pthread_create(&l->thread, NULL, listen_main, l);
    if (rc != 0) {
        snprintf(err, errlen, "listen: thread: %s", strerror(rc));
        goto fail;
    }
    return l;
fail:
    if (l->conn)
        PQfinish(l->conn);
    if (l->wake[0] >= 0)
        close(l->wake[0]);
    if (l->wake[1] >= 0)
        close(l->wake[1]);
    free(l->uri);
    free(l);
    return NULL;
}

void pg_listen_stop(store_listener *l)
{
    if (!l)
        return;
    atomic_store(&l->stop, true);
    ssize_t w;
    do
        w = write(l->wake[1], "x", 1);
    while (w < 0 && errno == EINTR);
    pthread_join(l->thread, NULL);
    if (l->conn)
        PQfinish(l->conn);
    close(l->wake[0]);
    close(l->wake[1]);
    free(l->uri);
    free(l);
}
