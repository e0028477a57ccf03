#include "http_internal.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <microhttpd.h>

#include "lockcheck.h"
#include "model.h"
#include "watch.h"

/*
 * The HTTP side of watching a run (watch.h holds the rest): an event
 * stream is a callback response whose reader writes what its watcher
 * holds and, with nothing to write, suspends its connection until the hub
 * resumes it; a long poll is a request suspended until its watcher fires.
 * Either way no thread waits for a client: 1,000 idle streams are 1,000
 * suspended connections and their watchers' memory.
 */

/*
 * Bytes MHD asks the reader for at most per call: also the buffer MHD keeps
 * per stream, so it is small (1,000 idle streams measured 50 kB each with
 * 32 KiB, 28 kB with 8 KiB); a bigger event just takes several calls.
 */
#define HTTP_STREAM_BLOCK (8 * 1024)
/*
 * Rows asked of the engine per page of a catch-up: a page's rows are held
 * whole until their stubs are made, so it is small (big outputs add up).
 */
#define HTTP_CATCH_UP_PAGE 256

/* watch_config.resume: the hub's thread, no lock of ours held. */
void http_stream_resume(void *owner)
{
    MHD_resume_connection(owner);
}

/* watch_config.encode. */
char *http_stream_encode(void *ctx, const ns_row *row, bool durable, size_t *len)
{
    (void)ctx;
    return api_node_json(row, durable, len);
}

/* watch_config.fetch: ctx is the engine. */
int http_stream_fetch(void *ctx, const char *run_id, const char *node_id, ns_row **row)
{
    engine_result res;
    *row = engine_get(ctx, run_id, node_id, &res);
    return *row != NULL || res == ENGINE_NOT_FOUND ? 0 : -1;
}

/*
 * What a catch-up holds of row until its turn: its ids and seq, the rest
 * left out (watch_config.fetch reads it then). NULL when out of memory.
 */
static ns_row *http_stream_stub(const ns_row *row)
{
    ns_row stub = { .run_id = row->run_id, .node_id = row->node_id, .status = row->status,
                    .attempt = row->attempt, .updated_at = row->updated_at, .seq = row->seq };
    for (int i = 0; i < NS_TS_COUNT; i++)
        stub.ts[i] = NS_TS_NULL;
    return model_row_copy(&stub);
}

/* The connection's socket, or -1. */
static int http_socket_of(struct MHD_Connection *con)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(con, MHD_CONNECTION_INFO_CONNECTION_FD);
    return info != NULL ? (int)info->connect_fd : -1;
}

/* MHD's content reader of a stream. */
static ssize_t http_stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    watcher *w = cls;
    ssize_t n = watch_fill(w, buf, max);

    (void)pos;
    if (n == WATCH_FILL_IDLE) {
        struct MHD_Connection *con = watch_owner(w);

        /* Suspended before parking, so that the hub's resume always finds it suspended. */
        MHD_suspend_connection(con);
        if (watch_park(w, http_socket_of(con)))
            MHD_resume_connection(con);
        return 0;
    }
    if (n == WATCH_FILL_END)
        return MHD_CONTENT_READER_END_OF_STREAM;
    if (n == WATCH_FILL_DROP)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    return n;
}

/* MHD is done with the stream's response: its connection ended. */
static void http_stream_free(void *cls)
{
    watch_close(cls);
}

/*
 * Hands the run's nodes to a new watcher, page by page: whatever changes
 * meanwhile the watcher has already seen. It holds a stub of each row, not
 * the row: a stream on a run of big rows would hold all of them (each an
 * own copy for a run too big to cache) until sent. ENGINE_ACCEPTED,
 * NOT_FOUND (the run went since the api looked) or ERROR.
 */
/* A catch-up's collector: a stub of each row (engine_scan's fn). */
typedef struct stub_rows {
    engine_page page;
    size_t cap;
} stub_rows;

static int http_stream_keep_stub(void *ctx, ns_row *row)
{
    stub_rows *s = ctx;
    ns_row *stub = http_stream_stub(row);
    if (stub != NULL && engine_page_push(&s->page, &s->cap, stub) == 0)
        return 0;
    model_row_unref(stub);
    return -1;
}

static engine_result http_stream_catch_up(http_server *s, watcher *w, const char *run_id,
                                          int64_t since)
{
    /*
     * Looked for once w sees every later change: a delete the client missed
     * (queued or committed by now) is told instead of the run's nodes,
     * which, if the run was written anew, would read as its old ones.
     */
    bool committed;
    int64_t deleted = api_missed_delete(s->a, run_id, since, &committed);
    if (deleted > 0) {
        watch_deleted_before(w, deleted, committed);
        return watch_catch_up(w, NULL, 0) == 0 ? ENGINE_ACCEPTED : ENGINE_ERROR;
    }
    stub_rows stubs = { { 0 }, 0 };
    engine_result res = engine_scan(s->e, run_id, (1u << NS_STATUS_COUNT) - 1,
                                    HTTP_CATCH_UP_PAGE, http_stream_keep_stub, &stubs);

    /* Gone since the api looked, through a delete the watcher saw: it sends "deleted" and ends. */
    if (res == ENGINE_NOT_FOUND && watch_deleted(w))
        res = ENGINE_ACCEPTED;
    if (res == ENGINE_ACCEPTED && watch_catch_up(w, stubs.page.rows, stubs.page.count) != 0)
        res = ENGINE_ERROR;
    engine_page_free(&stubs.page);
    return res;
}

/* A watcher could not be opened: 503 too many, or out of memory. */
static void http_watch_refused(http_server *s, api_response *resp, int err)
{
    api_response_free(resp);
    if (err == WATCH_TOO_MANY)
        api_problem(s->a, resp, PROBLEM_TOO_MANY_WATCHERS,
                    "--max-watchers streams and long polls are open; retry later");
    else
        api_problem(s->a, resp, PROBLEM_OUT_OF_MEMORY, "out of memory opening a watcher");
}

/*
 * Queues mr, a stream's 200, with the headers of every stream, and lets go
 * of it. MHD_NO (close the connection) when it cannot.
 */
static enum MHD_Result http_stream_queue(http_server *s, struct MHD_Connection *con,
                                         struct MHD_Response *mr)
{
    enum MHD_Result ret = MHD_NO;

    if (MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream") != MHD_YES ||
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache") != MHD_YES ||
        /* Proxies such as nginx would otherwise hold events back to fill their buffers. */
        MHD_add_response_header(mr, "X-Accel-Buffering", "no") != MHD_YES)
        goto out;
    ret = MHD_queue_response(con, MHD_HTTP_OK, mr);
    if (ret == MHD_YES)
        api_count_status(s->a, MHD_HTTP_OK);
out:
    MHD_destroy_response(mr);
    return ret;
}

/* A HEAD's content reader: MHD sends HEAD no body, so it ends at once if ever asked. */
static ssize_t http_stream_head_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)cls;
    (void)pos;
    (void)buf;
    (void)max;
    return MHD_CONTENT_READER_END_OF_STREAM;
}

/*
 * HEAD of a stream: GET's status and headers, and no watcher, since nothing
 * is sent. Its length is unknown as GET's is, so there is no Content-Length
 * (RFC 9110 8.6: none GET would not send). Not chunked as GET is, though:
 * MHD 0.9.75 ends a chunked answer to HEAD with the last chunk "0\r\n\r\n",
 * bytes a kept-alive client would take for the next answer. Unchunked and of
 * no known length, it is closed after the headers (Connection: close), and
 * RFC 9112 6.1 lets a HEAD answer leave GET's transfer coding unsaid.
 */
static enum MHD_Result http_stream_head(http_server *s, struct MHD_Connection *con)
{
    struct MHD_Response *mr = MHD_create_response_from_callback(
        MHD_SIZE_UNKNOWN, HTTP_STREAM_BLOCK, http_stream_head_read, NULL, NULL);

    if (mr == NULL)
        return MHD_NO;
    if (MHD_set_response_options(mr, MHD_RF_HTTP_VERSION_1_0_ONLY, MHD_RO_END) != MHD_YES) {
        MHD_destroy_response(mr);
        return MHD_NO;
    }
    return http_stream_queue(s, con, mr);
}

/*
 * Answers resp (api_response.events) with the run's event stream, or with a
 * problem when it cannot be opened. HEAD gets the stream's headers alone.
 */
enum MHD_Result http_stream_start(http_server *s, http_req *r, const char *method,
                                  const char *url, struct MHD_Connection *con,
                                  api_response *resp)
{
    struct MHD_Response *mr;
    engine_result res;
    int err = 0;
    watcher *w;

    if (strcmp(method, "HEAD") == 0) {
        api_response_free(resp);
        return http_stream_head(s, con);
    }
    w = watch_open(s->hub, WATCH_STREAM, resp->watch_run, resp->since,
                   resp->events_durable, con, 0, &err);
    if (w == NULL) {
        http_watch_refused(s, resp, err);
        return http_queue(s, r, method, url, con, resp);
    }
    res = http_stream_catch_up(s, w, resp->watch_run, resp->since);
    if (res != ENGINE_ACCEPTED) {
        watch_close(w);
        api_response_free(resp);
        if (res == ENGINE_NOT_FOUND)
            api_problem(s->a, resp, PROBLEM_NOT_FOUND, "no such run");
        else
            api_problem(s->a, resp, PROBLEM_INTERNAL_ERROR, "reading the run failed");
        return http_queue(s, r, method, url, con, resp);
    }
    api_response_free(resp);
    /* From here on the response owns w: its free callback closes it, whatever happens. */
    mr = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, HTTP_STREAM_BLOCK,
                                           http_stream_read, w, http_stream_free);
    if (mr == NULL) {
        watch_close(w);
        return MHD_NO;
    }
    return http_stream_queue(s, con, mr);
}

/*
 * resp is a long poll (api_response.poll_wait > 0): parks r until a change
 * of the run above resp->since or the poll's deadline. Returns true when
 * parked; false with resp the answer to give now.
 */
bool http_poll_park(http_server *s, http_req *r, const char *method, const char *url,
                    struct MHD_Connection *con, api_response *resp)
{
    int err = 0;
    watcher *w;

    if (r->poll_deadline_ns == 0)
        r->poll_deadline_ns = model_mono_ns() + http_seconds_ns(resp->poll_wait);
    if (http_state_of(s) >= HTTP_STOPPING) {
        api_response_free(resp);
        http_api_call(s, r, method, url, con, true, resp);
        return false;
    }
    w = watch_open(s->hub, WATCH_POLL, resp->watch_run, resp->since, false, con,
                   r->poll_deadline_ns, &err);
    if (w == NULL) {
        http_watch_refused(s, resp, err);
        return false;
    }
    /* A change between the api's look and watch_open: look again, now that the watcher sees every later one. */
    api_response_free(resp);
    http_api_call(s, r, method, url, con, false, resp);
    if (!(resp->poll_wait > 0)) {
        watch_close(w);
        return false;
    }
    api_response_free(resp);
    r->poll = w;
    MHD_suspend_connection(con);
    if (watch_park(w, http_socket_of(con)))
        MHD_resume_connection(con);
    return true;
}

/* A parked long poll is back: a change, its deadline, or the shutdown. */
bool http_poll_resumed(http_server *s, http_req *r, const char *method, const char *url,
                       struct MHD_Connection *con, api_response *resp)
{
    bool done = watch_timed_out(r->poll) || model_mono_ns() >= r->poll_deadline_ns ||
                http_state_of(s) >= HTTP_STOPPING;

    watch_close(r->poll);
    r->poll = NULL;
    http_api_call(s, r, method, url, con, done, resp);
    return resp->poll_wait > 0 && http_poll_park(s, r, method, url, con, resp);
}
