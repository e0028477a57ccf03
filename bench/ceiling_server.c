/*
 * ceiling_server: the ceiling of nodestate's HTTP stack, for bench/ratio_bench.sh.
 *
 * Bare libmicrohttpd and jansson, nothing else: every POST body is buffered
 * and parsed with json_loadb (as nodestate parses an update), its "status"
 * member read, and the request is answered 202 with what nodestate answers:
 * the node's whole row (its 16 fields, run and node ids taken from the path,
 * ~350 bytes) built with json_pack and json_dumps, and an ETag header. No
 * rules, no cache, no queue, no SQLite: what nodestate's 202 path does beyond
 * this is what the ratio nodestate/ceiling prices. (Until 2026-12-06 it
 * answered a 139-byte body, so the ratio also priced the contract's bigger
 * reply; README's Benchmarks section gives both.)
 *
 *   ceiling_server [--threads N] [--poll]     (N default: online cores)
 *
 * It listens on 127.0.0.1 on a free port and prints "listening addr=HOST:PORT"
 * on stderr; SIGTERM or SIGINT stops it. By default it uses MHD's epoll
 * thread pool, the fastest setup MHD 0.9.75 has here; --poll uses poll()
 * like nodestate does.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

/* A request body buffered across MHD's upload callbacks. */
typedef struct ceiling_req {
    char *body;
    size_t len, cap;
} ceiling_req;

/* Largest body kept; larger ones are answered 413 like nodestate's default. */
#define CEILING_MAX_BODY (1u << 20)

static enum MHD_Result ceiling_answer(struct MHD_Connection *con, unsigned status,
                                      char *text, const char *etag)
{
    struct MHD_Response *resp;
    enum MHD_Result ret;

    resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (resp == NULL) {
        free(text);
        return MHD_NO;
    }
    if (MHD_add_response_header(resp, "Content-Type", "application/json") != MHD_YES ||
        (etag != NULL && MHD_add_response_header(resp, "ETag", etag) != MHD_YES)) {
        MHD_destroy_response(resp);
        return MHD_NO;
    }
    ret = MHD_queue_response(con, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* The run and node ids of /runs/{run}/nodes/{node}/state, copied into run and node. */
static void ceiling_ids(const char *url, char *run, char *node, size_t len)
{
    char fmt[64];

    run[0] = node[0] = '\0';
    snprintf(fmt, sizeof fmt, "/runs/%%%zu[^/]/nodes/%%%zu[^/]", len - 1, len - 1);
    if (sscanf(url, fmt, run, node) != 2)
        run[0] = node[0] = '\0';
}

static enum MHD_Result ceiling_on_request(void *cls, struct MHD_Connection *con,
                                          const char *url, const char *method,
                                          const char *version, const char *upload,
                                          size_t *upload_size, void **con_cls)
{
    ceiling_req *r = *con_cls;
    json_t *doc, *reply;
    json_error_t jerr;
    const char *status;
    char *text;
    char run[256], node[256];

    (void)cls;
    (void)version;
    if (r == NULL) {
        r = calloc(1, sizeof *r);
        if (r == NULL)
            return MHD_NO;
        *con_cls = r;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        if (r->len + *upload_size > CEILING_MAX_BODY)
            return MHD_NO;
        if (r->len + *upload_size > r->cap) {
            size_t cap = (r->len + *upload_size) * 2;
            char *grown = realloc(r->body, cap);
            if (grown == NULL)
                return MHD_NO;
            r->body = grown;
            r->cap = cap;
        }
        memcpy(r->body + r->len, upload, *upload_size);
        r->len += *upload_size;
        *upload_size = 0;
        return MHD_YES;
    }
    if (strcmp(method, "POST") != 0) {
        text = strdup("{\"status\":\"ok\"}");
        return text ? ceiling_answer(con, 200, text, NULL) : MHD_NO;
    }
    doc = json_loadb(r->body ? r->body : "", r->len, 0, &jerr);
    status = json_string_value(json_object_get(doc, "status"));
    if (status == NULL) {
        json_decref(doc);
        text = strdup("{\"type\":\"urn:nodestate:problem:invalid-json\",\"status\":400}");
        return text ? ceiling_answer(con, 400, text, NULL) : MHD_NO;
    }
    ceiling_ids(url, run, node, sizeof run);
    reply = json_pack("{s:s,s:s,s:s,s:i,s:s,s:n,s:n,s:n,s:n,s:n,s:b,s:n,s:n,s:n,s:s,s:i,s:b}",
                      "run_id", run, "node_id", node, "status", status, "attempt", 1,
                      "scheduled_at", "2026-12-06T12:00:00.000Z", "started_at",
                      "completed_at", "failed_at", "suspended_at", "last_error",
                      "retryable", 0, "suspension_reason", "resume_state", "outputs",
                      "updated_at", "2026-12-06T12:00:00.000Z", "seq", 1, "durable", 0);
    json_decref(doc);
    if (reply == NULL)
        return MHD_NO;
    text = json_dumps(reply, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(reply);
    return text ? ceiling_answer(con, 202, text, "\"1-q\"") : MHD_NO;
}

static void ceiling_on_completed(void *cls, struct MHD_Connection *con, void **con_cls,
                                 enum MHD_RequestTerminationCode why)
{
    ceiling_req *r = *con_cls;

    (void)cls;
    (void)con;
    (void)why;
    if (r != NULL) {
        free(r->body);
        free(r);
        *con_cls = NULL;
    }
}

int main(int argc, char **argv)
{
    unsigned threads = (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD;
    struct sockaddr_in sa;
    const union MHD_DaemonInfo *info;
    struct MHD_Daemon *d;
    sigset_t set;
    int sig;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            threads = (unsigned)strtoul(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--poll") == 0) {
            flags = MHD_USE_POLL_INTERNAL_THREAD;
        } else {
            fprintf(stderr, "usage: ceiling_server [--threads N] [--poll]\n");
            return 2;
        }
    }
    if (threads < 1)
        threads = 1;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    d = MHD_start_daemon(flags | MHD_USE_ERROR_LOG, 0, NULL, NULL, ceiling_on_request, NULL,
                         MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                         MHD_OPTION_THREAD_POOL_SIZE, threads,
                         MHD_OPTION_CONNECTION_LIMIT, 1024u,
                         MHD_OPTION_CONNECTION_TIMEOUT, 60u,
                         MHD_OPTION_NOTIFY_COMPLETED, ceiling_on_completed, NULL,
                         MHD_OPTION_END);
    if (d == NULL) {
        fprintf(stderr, "ceiling_server: cannot start the daemon\n");
        return 1;
    }
    info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    if (info == NULL) {
        MHD_stop_daemon(d);
        return 1;
    }
    fprintf(stderr, "listening addr=127.0.0.1:%u threads=%u mode=%s\n",
            (unsigned)info->port, threads,
            flags == MHD_USE_POLL_INTERNAL_THREAD ? "poll" : "epoll");
    sigwait(&set, &sig);
    MHD_stop_daemon(d);
    fprintf(stderr, "stopped\n");
    return 0;
}
