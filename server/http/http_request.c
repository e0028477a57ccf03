#include "http_internal.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "deadline.h"
#include "framing.h"
#include "lockcheck.h"
#include "logfmt.h"
#include "loglevel.h"
#include "model.h"
#include "waitq.h"

/* ---- framing ---------------------------------------------------------------- */

static enum MHD_Result http_framing_field(void *cls, enum MHD_ValueKind kind,
                                          const char *key, size_t key_size,
                                          const char *value, size_t value_size)
{
    framing_add(cls, key, key_size, value, value_size);
    return MHD_YES;
}

/* The verdict on the request's Content-Length / Transfer-Encoding fields. */
framing_verdict http_framing(struct MHD_Connection *con)
{
    framing_state st;

    framing_init(&st);
    if (MHD_get_connection_values_n(con, MHD_HEADER_KIND, http_framing_field,
                                    &st) < 0)
        return FRAMING_OK;
    return framing_verdict_of(&st);
}

/* ---- the request's share of the connection's memory ------------------------ */

/*
 * Bounds on what the request line and fields (header fields, cookies,
 * query arguments) may take of the connection's memory pool (MHD's default,
 * 32 KiB), which must still hold the answer's header: the bytes of their
 * names and values, and their number (MHD keeps a record of ~56 bytes per
 * field there too). Requests past them are refused 431 before anything is
 * applied. Found by trial with 0.9.75: a POST whose fields took ~32.2 KB
 * was applied and then never answered ("failed to create response header");
 * 100 fields leave room for the answer until ~25.5 KB, and these bounds
 * together keep ~9 KB of it.
 */
#define HTTP_FIELDS_MAX_BYTES (16 * 1024)
#define HTTP_FIELDS_MAX 100

typedef struct http_fields_size {
    size_t bytes;
    size_t fields;
} http_fields_size;

/* Counts the fields, and adds up the bytes of the kinds asked (cookies: MHD's copies). */
typedef struct http_fields_visit_ctx {
    http_fields_size *fs;
    bool count_bytes;
} http_fields_visit_ctx;

static enum MHD_Result http_fields_visit(void *cls, enum MHD_ValueKind kind,
                                         const char *key, size_t key_size,
                                         const char *value, size_t value_size)
{
    http_fields_visit_ctx *v = cls;

    (void)kind;
    (void)key;
    (void)value;
    if (v->count_bytes)
        v->fs->bytes += key_size + value_size;
    v->fs->fields++;
    return MHD_YES;
}

/*
 * What the request takes against the bounds above. The request's head as
 * it arrived, whitespace included (MHD strips the blanks around a value
 * but they stay in its buffer: counting the values alone let 16 KB of
 * padding through), plus the copy MHD makes of the cookies; and every
 * field. The names and values alone when MHD does not tell the head's size.
 */
static http_fields_size http_fields_size_of(struct MHD_Connection *con, const char *method,
                                            const char *url, const char *version)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(con, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    bool head_known = ci != NULL && ci->header_size > 0;
    http_fields_size fs = { head_known ? ci->header_size
                                       : strlen(method) + strlen(url) + strlen(version), 0 };
    http_fields_visit_ctx lines = { &fs, !head_known }, cookies = { &fs, true };

    (void)MHD_get_connection_values_n(
        con, (enum MHD_ValueKind)(MHD_HEADER_KIND | MHD_GET_ARGUMENT_KIND), http_fields_visit,
        &lines);
    (void)MHD_get_connection_values_n(con, MHD_COOKIE_KIND, http_fields_visit, &cookies);
    return fs;
}

/* ---- request lookups handed to the api ------------------------------------ */

/* Looking for the nth line of the header name. */
typedef struct header_line {
    const char *name;
    size_t nth;
    const char *value;
} header_line;

static enum MHD_Result header_line_visit(void *cls, enum MHD_ValueKind kind, const char *key,
                                         const char *value)
{
    (void)kind;
    header_line *h = cls;
    if (strcasecmp(key, h->name) != 0)
        return MHD_YES;
    if (h->nth > 0) {
        h->nth--;
        return MHD_YES;
    }
    h->value = value;
    return MHD_NO;
}

static const char *http_header(void *ctx, const char *name, size_t nth)
{
    if (nth == 0)
        return MHD_lookup_connection_value(ctx, MHD_HEADER_KIND, name);
    header_line h = { name, nth, NULL };
    MHD_get_connection_values(ctx, MHD_HEADER_KIND, header_line_visit, &h);
    return h.value;
}

/* Looking for the first query argument of exactly this name. */
typedef struct query_arg {
    const char *name;
    const char *value;
} query_arg;

static enum MHD_Result query_arg_visit(void *cls, enum MHD_ValueKind kind, const char *key,
                                       const char *value)
{
    (void)kind;
    query_arg *q = cls;
    if (strcmp(key, q->name) != 0)
        return MHD_YES;
    /* "?wait" (no '=') is present with a NULL value in MHD: the api wants "". */
    q->value = value != NULL ? value : "";
    return MHD_NO;
}

/*
 * Names are matched as sent, byte for byte: MHD's own lookup compares them
 * caselessly, so "?Limit=1" was taken for ?limit. A name in another case is
 * one the api does not know, and it ignores those.
 */
static const char *http_query(void *ctx, const char *name)
{
    query_arg q = { name, NULL };
    MHD_get_connection_values(ctx, MHD_GET_ARGUMENT_KIND, query_arg_visit, &q);
    return q.value;
}

/*
 * MHD_OPTION_UNESCAPE_CALLBACK: the URL and query values stay as sent. MHD's
 * own unescaping ran before the api saw them, so "/runs/r1%00/nodes/n1/state"
 * arrived as "/runs/r1" (a shorter id, another route) and "%2F" as a route
 * separator. The api refuses '%' in ids and decodes query values itself.
 * (MHD still turns '+' in query values into ' ' before calling this.)
 */
size_t http_unescape_none(void *cls, struct MHD_Connection *con, char *s)
{
    (void)cls;
    (void)con;
    return strlen(s);
}

/* ---- answering ------------------------------------------------------------ */

/* The client's address as text, or "-" when MHD cannot tell. */
void http_remote(struct MHD_Connection *con, char *buf, size_t size)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(con, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci != NULL ? ci->client_addr : NULL;
    const void *addr = NULL;

    if (sa != NULL && sa->sa_family == AF_INET)
        addr = &((const struct sockaddr_in *)(const void *)sa)->sin_addr;
    else if (sa != NULL && sa->sa_family == AF_INET6)
        addr = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
    if (addr == NULL || inet_ntop(sa->sa_family, addr, buf, (socklen_t)size) == NULL)
        snprintf(buf, size, "-");
}

/*
 * One access line for an answer just queued. Method and path come from the
 * client, so they are quoted (and cut to fit) like any logfmt value.
 */
static void http_access_log(http_server *s, struct MHD_Connection *con,
                            const http_req *r, const char *method,
                            const char *url, int status, size_t bytes)
{
    char qmethod[40];
    char qpath[256];
    char remote[INET6_ADDRSTRLEN];
    double ms = (double)(model_mono_ns() - r->start_ns) / 1e6;

    http_remote(con, remote, sizeof remote);
    http_log(s, NS_LOG_INFO, "access",
             "method=%s path=%s status=%d bytes=%zu duration_ms=%.2f remote=%s",
             logfmt_quote(qmethod, sizeof qmethod, method),
             logfmt_quote(qpath, sizeof qpath, url), status, bytes, ms, remote);
}

/* Bytes MHD asks a streamed body for at a time. */
#define HTTP_STREAM_BLOCK (64 * 1024)

/* MHD's content reader over an api_stream; a short or failed read cuts the answer. */
static ssize_t http_stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    api_stream *st = cls;
    ssize_t got = st->read(st->ctx, pos, buf, max);

    return got > 0 ? got : MHD_CONTENT_READER_END_WITH_ERROR;
}

static void http_stream_free(void *cls)
{
    api_stream *st = cls;

    st->close(st->ctx);
    free(st);
}

/*
 * Queues resp on the connection and frees it. The body moves to MHD, which
 * frees it with free() once sent. MHD_NO (close the connection) when MHD
 * cannot take the response. With the access log on, a queued answer is
 * logged for r's method and url.
 */
enum MHD_Result http_queue(http_server *s, const http_req *r,
                           const char *method, const char *url,
                           struct MHD_Connection *con, api_response *resp)
{
    struct MHD_Response *mr;
    enum MHD_Result ret = MHD_NO;
    bool streamed = resp->stream.read != NULL;
    bool buffered = !streamed && resp->body != NULL && resp->body_len > 0;
    /*
     * A 304 holds the body its 200 would have, which MHD does not send but
     * measures: Content-Length is then the 200's, as RFC 9110 8.6 wants
     * (an empty one would say 0).
     */
    bool has_body = resp->status != 304 && (streamed || buffered);
    size_t bytes = streamed ? (size_t)resp->stream.size
                   : has_body ? resp->body_len : 0;

    if (streamed) {
        /* The response outlives resp: MHD gets a copy of the stream and,
         * once it has one, closes it through http_stream_free. */
        api_stream *st = malloc(sizeof *st);

        mr = NULL;
        if (st != NULL) {
            *st = resp->stream;
            mr = MHD_create_response_from_callback(st->size, HTTP_STREAM_BLOCK,
                                                   http_stream_read, st,
                                                   http_stream_free);
            if (mr != NULL)
                memset(&resp->stream, 0, sizeof resp->stream);
            else
                free(st);
        }
    } else if (buffered) {
        mr = MHD_create_response_from_buffer_with_free_callback(
            resp->body_len, resp->body, free);
        if (mr != NULL)
            resp->body = NULL;
    } else {
        mr = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    }
    if (mr == NULL)
        goto out;
    if (has_body && resp->content_type != NULL &&
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE,
                                resp->content_type) != MHD_YES)
        goto out;
    if (resp->etag[0] != '\0' &&
        MHD_add_response_header(mr, MHD_HTTP_HEADER_ETAG, resp->etag) != MHD_YES)
        goto out;
    if (resp->retry_after > 0) {
        char secs[24];

        snprintf(secs, sizeof secs, "%u", resp->retry_after);
        if (MHD_add_response_header(mr, MHD_HTTP_HEADER_RETRY_AFTER, secs) != MHD_YES)
            goto out;
    }
    if (resp->disposition[0] != '\0' &&
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_DISPOSITION,
                                resp->disposition) != MHD_YES)
        goto out;
    if (resp->allow != NULL &&
        MHD_add_response_header(mr, MHD_HTTP_HEADER_ALLOW, resp->allow) != MHD_YES)
        goto out;
    if (resp->vary != NULL &&
        MHD_add_response_header(mr, MHD_HTTP_HEADER_VARY, resp->vary) != MHD_YES)
        goto out;
    if ((r->must_close || http_state_of(s) >= HTTP_STOPPING) &&
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CONNECTION, "close") != MHD_YES)
        goto out;
    if (resp->www_authenticate != NULL &&
        MHD_add_response_header(mr, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                                resp->www_authenticate) != MHD_YES)
        goto out;
    ret = MHD_queue_response(con, (unsigned)resp->status, mr);
    if (ret == MHD_YES && s->access_log)
        http_access_log(s, con, r, method, url, resp->status, bytes);
out:
    if (mr != NULL)
        MHD_destroy_response(mr);
    api_response_free(resp);
    return ret;
}


/* Bodies declared shorter than this get a buffer of their own size at once. */
#define HTTP_BODY_FIRST_MAX 4096

/* Appends a chunk of body, or only counts it once past the limit. 0 / -1 (OOM). */
static int http_append(http_server *s, http_req *r, const char *data, size_t n)
{
    size_t need;
    char *grown;

    if (r->too_large || r->oom || r->discard)
        return 0;
    if (n > r->max_body - r->len) {
        /* Past the limit: drop what we have and keep draining the rest, so
         * the connection stays usable for the 413 and after it. */
        r->too_large = true;
        free(r->body);
        r->body = NULL;
        r->len = r->cap = 0;
        return 0;
    }
    need = r->len + n + 1;
    if (need > r->cap) {
        /*
         * A small declared length at once (MHD delivers no more than it):
         * a node's update is tens of bytes. Else doubling from 4 KiB, so a
         * client that declares much and sends little is not given it all.
         */
        size_t cap = r->cap != 0 ? r->cap
                     : r->declared > 0 && r->declared < HTTP_BODY_FIRST_MAX ? r->declared + 1
                     : HTTP_BODY_FIRST_MAX;

        while (cap < need)
            cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        if (cap > r->max_body + 1)
            cap = r->max_body + 1;
        grown = realloc(r->body, cap);
        if (grown == NULL)
            return -1;
        r->body = grown;
        r->cap = cap;
    }
    memcpy(r->body + r->len, data, n);
    r->len += n;
    r->body[r->len] = '\0';
    return 0;
}

/*
 * The body length a Content-Length declares: 0 without one (or chunked),
 * SIZE_MAX past what a size_t holds. Malformed ones MHD itself refuses.
 */
static size_t http_declared_length(const char *value)
{
    unsigned long long n;
    char *end;

    if (value == NULL || *value < '0' || *value > '9')
        return 0;
    errno = 0;
    n = strtoull(value, &end, 10);
    if (errno == ERANGE || n >= SIZE_MAX)
        return SIZE_MAX;
    return (size_t)n;
}

/*
 * Answers problem id on the first call, before any of the body is read,
 * and closes the connection: the exception to answering on the last call,
 * for requests where the close is what it wants.
 */
static enum MHD_Result http_refuse(http_server *s, http_req *r, const char *method,
                                   const char *url, struct MHD_Connection *con,
                                   problem_id id, const char *detail)
{
    api_response resp;

    r->must_close = true;
    api_problem(s->a, &resp, id, detail);
    return http_queue(s, r, method, url, con, &resp);
}

/*
 * A request whose fields leave too little of the connection's memory for
 * its answer (see HTTP_FIELDS_MAX_BYTES) is refused 431 before it is
 * applied: answered later, it would have been applied and then closed
 * unanswered, and a client that gets no answer sends it again.
 */
static bool http_fields_too_large(struct MHD_Connection *con, const char *method,
                                  const char *url, const char *version, char *detail,
                                  size_t size)
{
    http_fields_size fs = http_fields_size_of(con, method, url, version);

    if (fs.bytes <= HTTP_FIELDS_MAX_BYTES && fs.fields <= HTTP_FIELDS_MAX)
        return false;
    snprintf(detail, size,
             "the request line and header fields take %zu bytes in %zu fields (query "
             "arguments included); at most %d bytes and %d fields are taken",
             fs.bytes, fs.fields, HTTP_FIELDS_MAX_BYTES, HTTP_FIELDS_MAX);
    return true;
}

/* The api's view of the request on con, without its body. */
static void http_api_request(api_request *req, const char *method, const char *url,
                             struct MHD_Connection *con)
{
    memset(req, 0, sizeof *req);
    req->method = method;
    req->path = url;
    req->header = http_header;
    req->query = http_query;
    req->ctx = con;
}

void http_api_call(http_server *s, http_req *r, const char *method, const char *url,
                   struct MHD_Connection *con, bool no_wait, api_response *resp)
{
    api_request req;

    memset(resp, 0, sizeof *resp);
    if (r->too_large) {
        char detail[96];

        snprintf(detail, sizeof detail, "the request body exceeds %zu bytes",
                 r->max_body);
        api_problem(s->a, resp, PROBLEM_BODY_TOO_LARGE, detail);
    } else if (r->oom) {
        api_problem(s->a, resp, PROBLEM_OUT_OF_MEMORY,
                    "out of memory while reading the request body");
    } else {
        http_api_request(&req, method, url, con);
        req.body = r->body;
        req.body_len = r->len;
        req.no_wait = no_wait;
        api_handle(s->a, &req, resp);
    }
}

/*
 * Parks r until resp's wait_seq is durable, or queues resp now: it waits on
 * nothing, or its seq is durable already. api_finish_wait may ask for one
 * more wait (an update judged again), so it is asked again until it does not.
 */
static enum MHD_Result http_park_or_queue(http_server *s, http_req *r, const char *method,
                                          const char *url, struct MHD_Connection *con,
                                          api_response *resp)
{
    while (resp->wait_seq > 0) {
        if (engine_durable_seq(s->e) < resp->wait_seq) {
            if (resp != &r->resp)
                r->resp = *resp;
            http_park(s, r);
            return MHD_YES;
        }
        api_finish_wait(s->a, resp, true);
    }
    return http_queue(s, r, method, url, con, resp);
}

/* Whether the request asks for a 100 Continue before it sends its body. */
static bool http_expects_continue(struct MHD_Connection *con)
{
    const char *expect = MHD_lookup_connection_value(con, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_EXPECT);
    return expect != NULL && strcasecmp(expect, "100-continue") == 0;
}

/*
 * Whether the api will answer this request 401 whatever its body. Then the
 * body is drained without being stored, and never counts as too large: a
 * client without the token must not make the service hold what it sends
 * (30 such uploads of 15 MiB took the server to 460 MiB before), and its
 * answer is the 401, not a 413.
 */
static bool http_auth_refused(http_server *s, http_req *r, const char *method,
                              const char *url, struct MHD_Connection *con)
{
    api_request req;

    http_api_request(&req, method, url, con);
    r->discard = api_auth_refused(s->a, &req);
    return r->discard;
}

/*
 * The answer (401 or 413) to a client that holds its body back until a 100
 * Continue, given on the first call so that it is never invited to upload
 * what would be refused. MHD closes the connection after it, as it must
 * with a body announced and not sent.
 */
static enum MHD_Result http_answer_before_body(http_server *s, http_req *r,
                                               const char *method, const char *url,
                                               struct MHD_Connection *con)
{
    api_response resp;

    r->must_close = true;
    http_api_call(s, r, method, url, con, false, &resp);
    return http_queue(s, r, method, url, con, &resp);
}

enum MHD_Result http_on_request(void *cls, struct MHD_Connection *con,
                                       const char *url, const char *method,
                                       const char *version,
                                       const char *upload_data,
                                       size_t *upload_data_size, void **con_cls)
{
    http_server *s = cls;
    http_req *r = *con_cls;
    api_response resp;

    if (r == NULL) {
        /* Headers only. No response here as a rule: queueing one now makes
         * MHD 0.9.75 close the connection after it. */
        framing_verdict framing;
        char detail[192];
        http_conn *c = http_conn_of(con);

        if (c != NULL)
            http_headers_disarm(s, c);
        r = calloc(1, sizeof *r);
        if (r == NULL)
            return MHD_NO;
        r->srv = s;
        r->con = con;
        r->phase = HTTP_READING;
        waitq_item_init(&r->wait);
        r->start_ns = model_mono_ns();
        atomic_fetch_add(&s->inflight, 1);
        *con_cls = r;
        if (http_fields_too_large(con, method, url, version, detail, sizeof detail))
            return http_refuse(s, r, method, url, con, PROBLEM_HEADER_FIELDS_TOO_LARGE,
                               detail);
        /*
         * A body that cannot be delimited one way only: where the next
         * request would start is exactly what is in doubt (request
         * smuggling).
         */
        framing = http_framing(con);
        if (framing != FRAMING_OK)
            return http_refuse(s, r, method, url, con, PROBLEM_BAD_FRAMING,
                               framing_detail(framing));
        if (http_auth_refused(s, r, method, url, con))
            return http_expects_continue(con)
                       ? http_answer_before_body(s, r, method, url, con)
                       : MHD_YES;
        r->max_body = api_body_limit(s->a, method, url);
        r->declared = http_declared_length(
            MHD_lookup_connection_value(con, MHD_HEADER_KIND,
                                        MHD_HTTP_HEADER_CONTENT_LENGTH));
        r->too_large = r->declared > r->max_body;
        if (r->too_large && http_expects_continue(con))
            return http_answer_before_body(s, r, method, url, con);
        return MHD_YES;
    }

    if (r->poll != NULL) {
        if (http_poll_resumed(s, r, method, url, con, &resp))
            return MHD_YES;
        return http_queue(s, r, method, url, con, &resp);
    }
    if (r->phase == HTTP_RESUMED) {
        /* Back from parking; the resumer recorded durability under mu. */
        bool durable;

        lockcheck_lock(&s->mu);
        durable = r->durable;
        lockcheck_unlock(&s->mu);
        api_finish_wait(s->a, &r->resp, durable);
        return http_park_or_queue(s, r, method, url, con, &r->resp);
    }
    if (r->phase == HTTP_PARKED)
        return MHD_YES;  /* not expected: MHD does not call a suspended request */
    if (r->must_close) {
        /* Answered on the first call already; nothing it sends matters. */
        *upload_data_size = 0;
        return MHD_YES;
    }

    if (*upload_data_size != 0) {
        if (http_append(s, r, upload_data, *upload_data_size) != 0) {
            r->oom = true;
            free(r->body);
            r->body = NULL;
            r->len = r->cap = 0;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }

    http_api_call(s, r, method, url, con, false, &resp);
    if (resp.events)
        return http_stream_start(s, r, method, url, con, &resp);
    if (resp.poll_wait > 0 && http_poll_park(s, r, method, url, con, &resp))
        return MHD_YES;
    return http_park_or_queue(s, r, method, url, con, &resp);
}

/* MHD_OPTION_NOTIFY_COMPLETED: a request ended (answered, failed or shut down). */
void http_on_completed(void *cls, struct MHD_Connection *con,
                              void **con_cls, enum MHD_RequestTerminationCode toe)
{
    http_server *s = cls;
    http_req *r = *con_cls;
    http_conn *c = http_conn_of(con);

    /* The next request's headers are due within the timeout from now. */
    if (c != NULL)
        http_headers_arm(s, c);
    if (r == NULL)
        return;
    /* A request still parked here would be a bug: it is never on the waiter
     * list when MHD ends it, because every park ends with a resume first. */
    /* A long poll the shutdown or a closed connection ended while parked. */
    watch_close(r->poll);
    api_response_free(&r->resp);
    free(r->body);
    free(r);
    *con_cls = NULL;
    atomic_fetch_sub(&s->inflight, 1);
}

