#include "api.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "codec.h"
#include "prom.h"
#include "text.h"

#define JSON_TYPE "application/json"
#define PROBLEM_TYPE "application/problem+json"
/* Seconds a client should wait before retrying a 503. */
#define RETRY_AFTER_SECONDS 1
/* Page sizes of GET /runs/{run_id}/nodes (DESIGN.md §2). */
#define LIST_DEFAULT_LIMIT 1000
#define LIST_MAX_LIMIT 10000
/* Path segments of the longest route. */
#define MAX_SEGMENTS 5
/* Longest query value read, decoded: ours are short (an id, a status list). */
#define QUERY_VALUE_MAX 1024
/* Bytes of a refused method shown in the 405 detail. */
#define METHOD_SHOWN 32

struct api {
    engine *engine;
    api_config cfg;        /* cfg.token points at token below */
    char *token;           /* NULL: no auth */
    size_t token_len;
};

/* What a parked ?wait=true response is rebuilt from. */
struct api_wait {
    ns_row *row;          /* node update: the row; NULL for a delete */
    char run_id[NS_ID_MAX + 1];
    size_t deleted;
    int64_t seq;
};

/* The path parameters a route captured. */
typedef struct route_args {
    char run_id[NS_ID_MAX + 1];
    char node_id[NS_ID_MAX + 1];
} route_args;

typedef void handler_fn(api *a, const api_request *req, const route_args *args,
                        api_response *resp);

api *api_new(engine *e, const api_config *cfg)
{
    api *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->engine = e;
    a->cfg = *cfg;
    if (cfg->token) {
        a->token = strdup(cfg->token);
        if (!a->token) {
            free(a);
            return NULL;
        }
        a->token_len = strlen(a->token);
    }
    a->cfg.token = a->token;
    return a;
}

void api_free(api *a)
{
    if (!a)
        return;
    if (a->token) {
        /* The secret should not outlive its use in freed heap memory. */
        volatile char *p = a->token;
        for (size_t i = 0; i < a->token_len; i++)
            p[i] = 0;
        free(a->token);
    }
    free(a);
}

/* ---- building responses ---- */

static void respond(api_response *resp, int status, const char *type, buf *b)
{
    resp->status = status;
    if (b->failed) {
        /* Out of memory while rendering: a bodiless 500 still tells the truth. */
        buf_free(b);
        resp->status = 500;
        resp->content_type = NULL;
        resp->body = NULL;
        resp->body_len = 0;
        return;
    }
    resp->content_type = type;
    resp->body = buf_steal(b, &resp->body_len);
}

static void problem(api_response *resp, int status, const char *slug,
                    const char *title, const char *detail, const ns_row *current,
                    bool durable)
{
    buf b;
    buf_init(&b);
    codec_problem(&b, status, slug, title, detail, current, durable);
    respond(resp, status, PROBLEM_TYPE, &b);
}

/* Counts an update refused for bad input (updates_rejected.invalid). */
static void count_invalid(api *a)
{
    atomic_fetch_add_explicit(&engine_stats(a->engine)->rejected[NS_REJECT_INVALID], 1,
                              memory_order_relaxed);
}

void api_problem(api *a, api_response *resp, int status, const char *slug,
                 const char *title, const char *detail)
{
    memset(resp, 0, sizeof *resp);
    if (status == 413 || status == 400)
        count_invalid(a);
    problem(resp, status, slug, title, detail, NULL, false);
    if (status == 503)
        resp->retry_after = RETRY_AFTER_SECONDS;
    stats_count_http(engine_stats(a->engine), resp->status);
}

/*
 * The entity tag of a representation that holds seq. A node state also
 * says whether it is durable, and the tag must change whenever the body
 * does: "<seq>" once durable, "<seq>-q" while still queued, so a client
 * holding the queued tag gets 200 (durable: true), not 304, after the commit.
 */
static void set_etag(api_response *resp, int64_t seq, bool queued)
{
    snprintf(resp->etag, sizeof resp->etag, "\"%lld%s\"", (long long)seq,
             queued ? "-q" : "");
}

static bool is_durable(api *a, int64_t seq)
{
    return seq <= engine_durable_seq(a->engine);
}

static void row_response(api *a, api_response *resp, int status, const ns_row *row,
                         bool durable)
{
    buf b;
    buf_init(&b);
    codec_row(&b, row, durable);
    respond(resp, status, JSON_TYPE, &b);
    set_etag(resp, row->seq, !durable);
}

static void deleted_response(api_response *resp, int status, const struct api_wait *w,
                             bool durable)
{
    buf b;
    buf_init(&b);
    codec_deleted(&b, w->run_id, w->deleted, w->seq, durable);
    respond(resp, status, JSON_TYPE, &b);
}

static void internal_error(api_response *resp, const char *detail)
{
    problem(resp, 500, "internal-error", "Internal error", detail, NULL, false);
}

static void queue_full(api_response *resp)
{
    problem(resp, 503, "queue-full", "Queue full",
            "the write queue is full; retry after the Retry-After delay", NULL, false);
    resp->retry_after = RETRY_AFTER_SECONDS;
}

static void not_found(api_response *resp, const char *detail)
{
    problem(resp, 404, "not-found", "Not found", detail, NULL, false);
}

static void bad_query(api_response *resp, const char *detail)
{
    problem(resp, 400, "invalid-query", "Invalid query parameter", detail, NULL, false);
}

/* ---- request helpers ---- */

/*
 * Query argument name, percent-decoded into out (QUERY_VALUE_MAX + 1 bytes).
 * 1 when present (out holds it; "" for a bare "?name"), 0 when absent, -1
 * after answering 400: a value with a bad escape or an encoded NUL, which
 * would otherwise mean something shorter than what was sent.
 */
static int query_arg(const api_request *req, api_response *resp, const char *name,
                     char out[QUERY_VALUE_MAX + 1])
{
    const char *raw = req->query ? req->query(req->ctx, name) : NULL;
    if (!raw)
        return 0;
    text_decode_result r = text_query_decode(out, QUERY_VALUE_MAX + 1, raw, NULL);
    if (r == TEXT_DECODED)
        return 1;
    char detail[160];
    if (r == TEXT_TOO_LONG)
        snprintf(detail, sizeof detail, "query parameter \"%s\" is longer than %d bytes",
                 name, QUERY_VALUE_MAX);
    else
        snprintf(detail, sizeof detail,
                 "query parameter \"%s\" is not percent-encoded right: every %% needs two "
                 "hex digits, and %%00 is not allowed", name);
    bad_query(resp, detail);
    return -1;
}

static const char *header(const api_request *req, const char *name)
{
    return req->header ? req->header(req->ctx, name) : NULL;
}

/* A boolean query flag's value: "", "true", "1" true; "false", "0" false; -1 otherwise. */
static int flag_value(const char *v)
{
    if (!*v || strcmp(v, "true") == 0 || strcmp(v, "1") == 0)
        return 1;
    if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0)
        return 0;
    return -1;
}

/*
 * The ?wait= and ?timeout= of a write. Returns 0 with *wait and *timeout
 * set, or -1 after answering 400.
 */
static int wait_args(api *a, const api_request *req, api_response *resp,
                     bool *wait, double *timeout)
{
    char v[QUERY_VALUE_MAX + 1];
    int has = query_arg(req, resp, "wait", v);
    if (has < 0)
        return -1;
    int w = has ? flag_value(v) : 0;
    if (w < 0) {
        bad_query(resp, "query parameter \"wait\" must be true or false");
        return -1;
    }
    *wait = w == 1;
    *timeout = a->cfg.default_wait;
    has = query_arg(req, resp, "timeout", v);
    if (has < 0)
        return -1;
    if (has) {
        char *end;
        double secs = strtod(v, &end);
        if (!*v || *end || !isfinite(secs) || secs < 0) {
            bad_query(resp, "query parameter \"timeout\" must be a number of seconds >= 0");
            return -1;
        }
        *timeout = secs;
    }
    if (*timeout > a->cfg.max_wait)
        *timeout = a->cfg.max_wait;
    return 0;
}

/* Parks resp until seq is durable; the transport calls api_finish_wait. */
static void park(api *a, api_response *resp, struct api_wait *w, double timeout)
{
    resp->wait = w;
    resp->wait_seq = w->seq;
    resp->wait_timeout = timeout;
    (void)a;
}

/* application/json, application/<x>+json, optional parameters; absent is taken as JSON. */
static bool json_content_type(const char *ct)
{
    if (!ct)
        return true;
    while (*ct == ' ')
        ct++;
    size_t n = strcspn(ct, ";");
    while (n > 0 && ct[n - 1] == ' ')
        n--;
    if (n == 16 && strncasecmp(ct, "application/json", 16) == 0)
        return true;
    return n > 17 && strncasecmp(ct, "application/", 12) == 0 &&
           strncasecmp(ct + n - 5, "+json", 5) == 0 && memchr(ct, '/', n) == ct + 11;
}

/* ---- handlers ---- */

static void post_state(api *a, const api_request *req, const route_args *args,
                       api_response *resp)
{
    bool wait;
    double timeout;
    if (!json_content_type(header(req, "Content-Type"))) {
        count_invalid(a);
        problem(resp, 415, "unsupported-media-type", "Unsupported media type",
                "the body must be JSON (Content-Type: application/json)", NULL, false);
        return;
    }
    if (wait_args(a, req, resp, &wait, &timeout) != 0) {
        /* A bad ?wait= or ?timeout= refuses the update as much as a bad body. */
        count_invalid(a);
        return;
    }
    ns_update u;
    int status = 400;
    char detail[512];
    codec_doc *doc = codec_decode_update(req->body ? req->body : "", req->body_len,
                                         args->run_id, args->node_id,
                                         a->cfg.max_error_bytes, &u, &status,
                                         detail, sizeof detail);
    if (!doc) {
        if (status >= 500) {
            internal_error(resp, detail);
            return;
        }
        count_invalid(a);
        if (status == 400)
            problem(resp, 400, "invalid-json", "Invalid JSON", detail, NULL, false);
        else
            problem(resp, 422, "invalid-update", "Invalid update", detail, NULL, false);
        return;
    }
    ns_row *row = NULL;
    engine_result res = engine_submit(a->engine, args->run_id, args->node_id, &u, &row);
    codec_doc_free(doc);
    switch (res) {
    case ENGINE_ACCEPTED:
    case ENGINE_DUPLICATE: {
        bool durable = res == ENGINE_DUPLICATE && is_durable(a, row->seq);
        row_response(a, resp, res == ENGINE_ACCEPTED ? 202 : 200, row, durable);
        struct api_wait *w = wait && !durable ? calloc(1, sizeof *w) : NULL;
        if (w) {
            w->row = row;
            w->seq = row->seq;
            park(a, resp, w, timeout);
            return; /* the wait keeps the row's reference */
        }
        break;
    }
    case ENGINE_STALE:
        problem(resp, 409, "stale-attempt", "Stale attempt",
                "the update's attempt is lower than the node's current attempt",
                row, is_durable(a, row->seq));
        break;
    case ENGINE_ILLEGAL: {
        char why[256];
        snprintf(why, sizeof why, "a node cannot move from %s to %s within attempt %lld",
                 model_status_name(row->status), model_status_name(u.status),
                 (long long)row->attempt);
        if (row->status == u.status)
            snprintf(why, sizeof why, "node is %s, which is final for attempt %lld",
                     model_status_name(row->status), (long long)row->attempt);
        problem(resp, 409, "illegal-transition", "Illegal transition", why, row,
                is_durable(a, row->seq));
        break;
    }
    case ENGINE_QUEUE_FULL:
        queue_full(resp);
        break;
    case ENGINE_NOT_FOUND:
    case ENGINE_ERROR:
        internal_error(resp, "the update could not be applied (reading the database failed)");
        break;
    }
    model_row_unref(row);
}

/* Whether an If-None-Match header matches the entity tag etag ("*" or one of a list). */
static bool etag_matches(const char *inm, const char *etag)
{
    if (!inm)
        return false;
    size_t n = strlen(etag);
    for (const char *p = inm; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        if (*p == '*')
            return true;
        if (strncmp(p, "W/", 2) == 0)
            p += 2;
        if (strncmp(p, etag, n) == 0 && (p[n] == '\0' || p[n] == ',' || p[n] == ' '))
            return true;
        p += strcspn(p, ",");
    }
    return false;
}

static void get_state(api *a, const api_request *req, const route_args *args,
                      api_response *resp)
{
    engine_result res;
    ns_row *row = engine_get(a->engine, args->run_id, args->node_id, &res);
    if (!row) {
        if (res == ENGINE_NOT_FOUND)
            not_found(resp, "no such node in this run");
        else
            internal_error(resp, "reading the database failed");
        return;
    }
    /* Read once: the tag compared and the body sent must agree. */
    bool durable = is_durable(a, row->seq);
    set_etag(resp, row->seq, !durable);
    if (etag_matches(header(req, "If-None-Match"), resp->etag)) {
        resp->status = 304;
    } else {
        row_response(a, resp, 200, row, durable);
    }
    model_row_unref(row);
}

/* Parses ?status=a,b into a mask of status bits; 0 for a bad name. */
static unsigned status_mask(const char *list)
{
    unsigned mask = 0;
    char name[32];
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, ",");
        if (n == 0 || n >= sizeof name)
            return 0;
        memcpy(name, p, n);
        name[n] = '\0';
        ns_status s;
        if (model_status_parse(name, &s) != 0)
            return 0;
        mask |= 1u << s;
        p += n;
        if (*p == ',')
            p++;
    }
    return mask;
}

static void list_nodes(api *a, const api_request *req, const route_args *args,
                       api_response *resp)
{
    unsigned mask = (1u << NS_STATUS_COUNT) - 1;
    char st[QUERY_VALUE_MAX + 1];
    int has = query_arg(req, resp, "status", st);
    if (has < 0)
        return;
    if (has && *st) {
        mask = status_mask(st);
        if (!mask) {
            bad_query(resp, "query parameter \"status\" must be a comma-separated list of "
                            "idle, scheduled, running, paused, suspended, completed, failed");
            return;
        }
    }
    size_t limit = LIST_DEFAULT_LIMIT;
    char l[QUERY_VALUE_MAX + 1];
    has = query_arg(req, resp, "limit", l);
    if (has < 0)
        return;
    if (has) {
        char *end;
        unsigned long long v = strtoull(l, &end, 10);
        if (!*l || *end || !isdigit((unsigned char)*l) || v < 1 || v > LIST_MAX_LIMIT) {
            bad_query(resp, "query parameter \"limit\" must be a whole number from 1 to 10000");
            return;
        }
        limit = (size_t)v;
    }
    char after_value[QUERY_VALUE_MAX + 1];
    has = query_arg(req, resp, "after", after_value);
    if (has < 0)
        return;
    const char *after = has ? after_value : NULL;
    if (after && !model_id_valid(after, strlen(after))) {
        bad_query(resp, "query parameter \"after\" must be a node id");
        return;
    }
    engine_page page;
    engine_result res = engine_list(a->engine, args->run_id, mask, after, limit, &page);
    if (res == ENGINE_ACCEPTED) {
        buf b;
        buf_init(&b);
        codec_page(&b, args->run_id, &page, engine_durable_seq(a->engine));
        respond(resp, 200, JSON_TYPE, &b);
    } else if (res == ENGINE_NOT_FOUND) {
        not_found(resp, "no such run");
    } else {
        internal_error(resp, "listing the run failed");
    }
    engine_page_free(&page);
}

static void get_run(api *a, const api_request *req, const route_args *args,
                    api_response *resp)
{
    engine_summary s;
    engine_result res = engine_summarize(a->engine, args->run_id, &s);
    if (res == ENGINE_NOT_FOUND) {
        not_found(resp, "no such run");
        return;
    }
    if (res != ENGINE_ACCEPTED) {
        internal_error(resp, "reading the run failed");
        return;
    }
    buf b;
    buf_init(&b);
    codec_summary(&b, args->run_id, &s);
    respond(resp, 200, JSON_TYPE, &b);
    /* A summary does not say what is durable: its tag is the seq alone. */
    set_etag(resp, s.last_seq, false);
}

static void delete_run(api *a, const api_request *req, const route_args *args,
                       api_response *resp)
{
    bool wait;
    double timeout;
    if (wait_args(a, req, resp, &wait, &timeout) != 0)
        return;
    struct api_wait *w = calloc(1, sizeof *w);
    if (!w) {
        internal_error(resp, "out of memory");
        return;
    }
    snprintf(w->run_id, sizeof w->run_id, "%s", args->run_id);
    engine_result res = engine_delete_run(a->engine, args->run_id, &w->deleted, &w->seq);
    if (res == ENGINE_ACCEPTED) {
        deleted_response(resp, 202, w, false);
        if (wait) {
            park(a, resp, w, timeout);
            return;
        }
    } else if (res == ENGINE_NOT_FOUND) {
        not_found(resp, "no such run");
    } else if (res == ENGINE_QUEUE_FULL) {
        queue_full(resp);
    } else {
        internal_error(resp, "deleting the run failed");
    }
    free(w);
}

/*
 * The preference an Accept header gives JSON and Prometheus text: the best q
 * of application/json, and of text/plain, text/(any) or
 * application/openmetrics-text; with the first position of each for ties.
 * A range without q= has q=1; "*" ranges favour neither.
 */
typedef struct accept_pref {
    double json_q, text_q;
    int json_at, text_at;   /* position in the list, -1 when absent */
} accept_pref;

static void accept_parse(const char *accept, accept_pref *p)
{
    *p = (accept_pref){ 0, 0, -1, -1 };
    int at = 0;
    for (const char *item = accept; *item; at++) {
        size_t n = strcspn(item, ",");
        while (n > 0 && *item == ' ') {
            item++;
            n--;
        }
        size_t type_len = strcspn(item, ";, ");
        if (type_len > n)
            type_len = n;
        double q = 1;
        const char *qs = item + type_len;
        while (qs < item + n) {
            qs += strspn(qs, "; ");
            if (strncmp(qs, "q=", 2) == 0) {
                q = strtod(qs + 2, NULL);
                break;
            }
            qs += strcspn(qs, ";,");
        }
        bool json = type_len == 16 && strncasecmp(item, "application/json", 16) == 0;
        bool text = (type_len == 10 && strncasecmp(item, "text/plain", 10) == 0) ||
                    (type_len == 6 && strncasecmp(item, "text/*", 6) == 0) ||
                    (type_len == 28 &&
                     strncasecmp(item, "application/openmetrics-text", 28) == 0);
        if (json && q > p->json_q) {
            p->json_q = q;
            if (p->json_at < 0)
                p->json_at = at;
        }
        if (text && q > p->text_q) {
            p->text_q = q;
            if (p->text_at < 0)
                p->text_at = at;
        }
        item += n;
        if (*item == ',')
            item++;
    }
}

/*
 * Prometheus text unless JSON is asked for by ?format=json (format, decoded;
 * NULL when absent) or an Accept that prefers it.
 */
static bool wants_json(const api_request *req, const char *format)
{
    if (format)
        return strcmp(format, "json") == 0;
    const char *accept = header(req, "Accept");
    if (!accept)
        return false;
    accept_pref p;
    accept_parse(accept, &p);
    if (p.json_q <= 0)
        return false;
    if (p.json_q != p.text_q)
        return p.json_q > p.text_q;
    return p.text_at < 0 || p.json_at < p.text_at;
}

static void render_stats(api *a, api_response *resp, bool json)
{
    buf b;
    buf_init(&b);
    if (json) {
        codec_stats(&b, engine_stats(a->engine), model_now_ms());
        respond(resp, 200, JSON_TYPE, &b);
    } else {
        prom_render(&b, engine_stats(a->engine), model_now_ms());
        respond(resp, 200, PROM_CONTENT_TYPE, &b);
    }
}

static void get_stats(api *a, const api_request *req, const route_args *args,
                      api_response *resp)
{
    char v[QUERY_VALUE_MAX + 1];
    int has = query_arg(req, resp, "format", v);
    if (has < 0)
        return;
    const char *format = has ? v : NULL;
    if (format && strcmp(format, "json") != 0 && strcmp(format, "prometheus") != 0) {
        bad_query(resp, "query parameter \"format\" must be json or prometheus");
        return;
    }
    render_stats(a, resp, wants_json(req, format));
}

static void get_metrics(api *a, const api_request *req, const route_args *args,
                        api_response *resp)
{
    render_stats(a, resp, false);
}

static void status_body(api_response *resp, const char *status)
{
    buf b;
    buf_init(&b);
    buf_puts(&b, "{\"status\":");
    buf_json_string(&b, status);
    buf_puts(&b, "}");
    respond(resp, 200, JSON_TYPE, &b);
}

static void get_healthz(api *a, const api_request *req, const route_args *args,
                        api_response *resp)
{
    if (!engine_alive(a->engine)) {
        problem(resp, 503, "not-alive", "Not alive", "the writer thread is not running",
                NULL, false);
        resp->retry_after = RETRY_AFTER_SECONDS;
        return;
    }
    status_body(resp, "ok");
}

static void get_readyz(api *a, const api_request *req, const route_args *args,
                       api_response *resp)
{
    const char *reason = NULL;
    if (!engine_ready(a->engine, &reason)) {
        problem(resp, 503, "not-ready", "Not ready", reason, NULL, false);
        resp->retry_after = RETRY_AFTER_SECONDS;
        return;
    }
    status_body(resp, "ready");
}

/* ---- authentication ---- */

/*
 * Compares the request's bearer token with the configured one in time that
 * depends only on the configured token's length, not on where they differ.
 */
static bool token_matches(const api *a, const char *given, size_t given_len)
{
    unsigned char diff = given_len != a->token_len;
    for (size_t i = 0; i < a->token_len; i++) {
        unsigned char g = i < given_len ? (unsigned char)given[i] : 0;
        diff |= (unsigned char)a->token[i] ^ g;
    }
    return diff == 0;
}

/* Whether the request may go on; otherwise answers 401 in resp. */
static bool authorized(const api *a, const api_request *req, api_response *resp)
{
    if (!a->token)
        return true;
    const char *auth = header(req, "Authorization");
    if (auth && strncasecmp(auth, "Bearer ", 7) == 0) {
        const char *given = auth + 7;
        while (*given == ' ')
            given++;
        size_t n = strlen(given);
        while (n > 0 && given[n - 1] == ' ')
            n--;
        if (token_matches(a, given, n))
            return true;
        problem(resp, 401, "unauthorized", "Unauthorized",
                "the bearer token is not valid", NULL, false);
        resp->www_authenticate = "Bearer realm=\"nodestate\", error=\"invalid_token\"";
        return false;
    }
    problem(resp, 401, "unauthorized", "Unauthorized",
            "this service needs an Authorization: Bearer <token> header", NULL, false);
    resp->www_authenticate = "Bearer realm=\"nodestate\"";
    return false;
}

/* ---- routing ---- */

typedef struct route {
    const char *pattern[MAX_SEGMENTS]; /* "{run}" and "{node}" capture ids */
    const char *allow;
    handler_fn *get;
    handler_fn *post;
    handler_fn *del;
} route;

static const route routes[] = {
    { { "runs", "{run}", "nodes", "{node}", "state" }, "GET, HEAD, POST", get_state, post_state, NULL },
    { { "runs", "{run}", "nodes" }, "GET, HEAD", list_nodes, NULL, NULL },
    { { "runs", "{run}" }, "GET, HEAD, DELETE", get_run, NULL, delete_run },
    { { "stats" }, "GET, HEAD", get_stats, NULL, NULL },
    { { "metrics" }, "GET, HEAD", get_metrics, NULL, NULL },
    { { "healthz" }, "GET, HEAD", get_healthz, NULL, NULL },
    { { "readyz" }, "GET, HEAD", get_readyz, NULL, NULL },
};

/* Splits "/a/b/c" into at most MAX_SEGMENTS segments; -1 for more, an empty one, or no leading '/'. */
static int split_path(const char *path, const char *seg[MAX_SEGMENTS],
                      size_t len[MAX_SEGMENTS])
{
    if (path[0] != '/')
        return -1;
    int n = 0;
    const char *p = path + 1;
    for (;;) {
        size_t l = strcspn(p, "/");
        if (l == 0 || n == MAX_SEGMENTS)
            return -1;
        seg[n] = p;
        len[n] = l;
        n++;
        p += l;
        if (!*p)
            return n;
        p++;
    }
}

static bool literal_is(const char *seg, size_t len, const char *lit)
{
    return strlen(lit) == len && memcmp(seg, lit, len) == 0;
}

/*
 * Finds the route of a path. Returns the route, or NULL; *bad_id is set when
 * the path has a route's shape but an id in it is invalid, and *encoded when
 * that id holds a '%'. The path is as the client sent it: percent-encoding
 * is never decoded here, so "%00" cannot cut an id short and "%2F" cannot
 * add a segment; ids are unreserved characters, which need no encoding.
 */
static const route *match(const char *path, route_args *args, const char **bad_id,
                          bool *encoded)
{
    const char *seg[MAX_SEGMENTS];
    size_t len[MAX_SEGMENTS];
    *bad_id = NULL;
    *encoded = false;
    int n = split_path(path, seg, len);
    if (n < 0)
        return NULL;
    for (size_t r = 0; r < sizeof routes / sizeof *routes; r++) {
        const route *rt = &routes[r];
        int m = 0;
        while (m < MAX_SEGMENTS && rt->pattern[m])
            m++;
        if (m != n)
            continue;
        bool ok = true;
        const char *id_problem = NULL;
        for (int i = 0; i < n && ok; i++) {
            const char *p = rt->pattern[i];
            if (p[0] != '{') {
                ok = literal_is(seg[i], len[i], p);
                continue;
            }
            char *dst = strcmp(p, "{run}") == 0 ? args->run_id : args->node_id;
            if (!model_id_valid(seg[i], len[i])) {
                if (!id_problem) {
                    id_problem = strcmp(p, "{run}") == 0 ? "run_id" : "node_id";
                    *encoded = memchr(seg[i], '%', len[i]) != NULL;
                }
                dst[0] = '\0';
                continue;
            }
            memcpy(dst, seg[i], len[i]);
            dst[len[i]] = '\0';
        }
        if (!ok) {
            *encoded = false;
            continue;
        }
        *bad_id = id_problem;
        return rt;
    }
    return NULL;
}

static void dispatch(api *a, const api_request *req, api_response *resp);

void api_handle(api *a, const api_request *req, api_response *resp)
{
    memset(resp, 0, sizeof *resp);
    dispatch(a, req, resp);
    if (!resp->wait)
        stats_count_http(engine_stats(a->engine), resp->status);
}

/* Routes one request to its handler, or answers 401, 404, 405 or 400 itself. */
static void dispatch(api *a, const api_request *req, api_response *resp)
{
    /* Liveness stays open without a token, so orchestrators can probe it. */
    if (strcmp(req->path, "/healthz") != 0 && !authorized(a, req, resp))
        return;
    route_args args;
    const char *bad_id;
    bool encoded;
    const route *rt = match(req->path, &args, &bad_id, &encoded);
    if (!rt) {
        not_found(resp, "no resource at this path");
        return;
    }
    handler_fn *h = NULL;
    bool head = strcmp(req->method, "HEAD") == 0;
    if (strcmp(req->method, "GET") == 0 || head)
        h = rt->get;
    else if (strcmp(req->method, "POST") == 0)
        h = rt->post;
    else if (strcmp(req->method, "DELETE") == 0)
        h = rt->del;
    if (!h) {
        /* The method is the client's bytes, anything but a space. */
        char method[METHOD_SHOWN + 1];
        text_safe(method, sizeof method, req->method, strlen(req->method));
        char detail[128];
        snprintf(detail, sizeof detail, "%s is not allowed here; allowed: %s",
                 method, rt->allow);
        problem(resp, 405, "method-not-allowed", "Method not allowed", detail, NULL, false);
        resp->allow = rt->allow;
        return;
    }
    if (bad_id) {
        char detail[256];
        if (encoded)
            snprintf(detail, sizeof detail,
                     "%s must be sent as it is, without percent-encoding (%%): 1 to %d "
                     "bytes of A-Z a-z 0-9 . _ ~ : -", bad_id, NS_ID_MAX);
        else
            snprintf(detail, sizeof detail,
                     "%s must be 1 to %d bytes of A-Z a-z 0-9 . _ ~ : -", bad_id, NS_ID_MAX);
        if (h == post_state)
            count_invalid(a);
        problem(resp, 400, "invalid-id", "Invalid id", detail, NULL, false);
        return;
    }
    h(a, req, &args, resp);
}

void api_finish_wait(api *a, api_response *resp, bool durable)
{
    struct api_wait *w = resp->wait;
    if (!w)
        return;
    free(resp->body);
    resp->body = NULL;
    resp->body_len = 0;
    int status = durable ? 200 : 202;
    if (w->row && durable && engine_refused(a->engine, w->seq))
        problem(resp, 500, "write-refused", "Write refused",
                "the database refused this update for good; it is not stored (see the "
                "row-isolated log line)", NULL, false);
    else if (w->row)
        row_response(a, resp, status, w->row, durable);
    else
        deleted_response(resp, status, w, durable);
    resp->wait_seq = 0;
    resp->wait = NULL;
    model_row_unref(w->row);
    free(w);
    stats_count_http(engine_stats(a->engine), resp->status);
}

void api_response_free(api_response *resp)
{
    free(resp->body);
    resp->body = NULL;
    if (resp->wait) {
        model_row_unref(resp->wait->row);
        free(resp->wait);
        resp->wait = NULL;
    }
}
