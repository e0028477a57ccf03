#include "api_internal.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "codec.h"
#include "engine_batch.h"
#include "prom.h"
#include "text.h"

/* What GET /backup sends: an SQLite database file. */
#define BACKUP_TYPE "application/vnd.sqlite3"
/* Page sizes of GET /runs/{run_id}/nodes (README "API in short"). */
#define LIST_DEFAULT_LIMIT 1000
#define LIST_MAX_LIMIT 10000
/* Longest query value read, decoded: ours are short (an id, a status list). */
#define QUERY_VALUE_MAX 1024

static void queue_full(api_response *resp)
{
    api_answer_problem(resp, PROBLEM_QUEUE_FULL,
                       "the write queue is full; retry after the Retry-After delay");
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
    api_answer_problem(resp, PROBLEM_INVALID_QUERY, detail);
    return -1;
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
        api_answer_problem(resp, PROBLEM_INVALID_QUERY,
                           "query parameter \"wait\" must be true or false");
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
            api_answer_problem(resp, PROBLEM_INVALID_QUERY,
                               "query parameter \"timeout\" must be a number of "
                               "seconds >= 0");
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

/* ---- handlers ---- */

void api_post_state(api *a, const api_request *req, const route_args *args,
                    api_response *resp)
{
    bool wait;
    double timeout;
    if (wait_args(a, req, resp, &wait, &timeout) != 0) {
        /* A bad ?wait= or ?timeout= refuses the update as much as a bad body. */
        api_count_invalid(a);
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
            api_answer_problem(resp, PROBLEM_INTERNAL_ERROR, detail);
            return;
        }
        api_count_invalid(a);
        if (status == 400)
            api_answer_problem(resp, PROBLEM_INVALID_JSON, detail);
        else
            api_answer_problem(resp, PROBLEM_INVALID_UPDATE, detail);
        return;
    }
    ns_row *row = NULL;
    engine_result res = engine_submit(a->engine, args->run_id, args->node_id, &u, &row);
    codec_doc_free(doc);
    switch (res) {
    case ENGINE_ACCEPTED:
    case ENGINE_DUPLICATE: {
        bool durable = res == ENGINE_DUPLICATE && api_is_durable(a, row->seq);
        api_row_response(resp, res == ENGINE_ACCEPTED ? 202 : 200, row, durable);
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
        api_answer_conflict(resp, PROBLEM_STALE_ATTEMPT,
                            "the update's attempt is lower than the node's current attempt",
                            row, api_is_durable(a, row->seq));
        break;
    case ENGINE_ILLEGAL: {
        char why[256];
        snprintf(why, sizeof why, "a node cannot move from %s to %s within attempt %lld",
                 model_status_name(row->status), model_status_name(u.status),
                 (long long)row->attempt);
        if (row->status == u.status)
            snprintf(why, sizeof why, "node is %s, which is final for attempt %lld",
                     model_status_name(row->status), (long long)row->attempt);
        api_answer_conflict(resp, PROBLEM_ILLEGAL_TRANSITION, why, row,
                            api_is_durable(a, row->seq));
        break;
    }
    case ENGINE_QUEUE_FULL:
        queue_full(resp);
        break;
    case ENGINE_NOT_FOUND:
    case ENGINE_ERROR:
        api_answer_problem(resp, PROBLEM_INTERNAL_ERROR,
                           "the update could not be applied (reading the database failed)");
        break;
    }
    model_row_unref(row);
}

/* ---- POST /runs/{run_id}/nodes: many updates at once ---- */

/* One item's problem as the "problem" of its result: {"node_id","code","problem"}. */
static void batch_problem(buf *b, const char *node_id, problem_id id, const char *detail,
                          const ns_row *current, bool durable)
{
    const problem_type *t = problems_get(id);
    buf_puts(b, "{\"node_id\":");
    buf_json_string(b, node_id);
    buf_printf(b, ",\"code\":%d,\"problem\":", t->status);
    codec_problem(b, t->status, t->slug, t->title, detail, current, durable);
    buf_append(b, "}", 1);
}

/* The 409 detail of an item refused by the rules (as api_post_state words it). */
static void refusal_detail(char *why, size_t len, engine_result res, const ns_row *cur,
                           const ns_update *u)
{
    if (res == ENGINE_STALE || !cur)
        snprintf(why, len, "the update's attempt is lower than the node's current attempt");
    else if (cur->status == u->status)
        snprintf(why, len, "node is %s, which is final for attempt %lld",
                 model_status_name(cur->status), (long long)cur->attempt);
    else
        snprintf(why, len, "a node cannot move from %s to %s within attempt %lld",
                 model_status_name(cur->status), model_status_name(u->status),
                 (long long)cur->attempt);
}

/*
 * Renders results[] (one per good item, in body order) and the bad items into w: the results array in body
 * order, the counts and the highest seq to wait on. 0, or -1 out of memory.
 */
static int batch_render(api *a, const codec_batch *cb, const engine_batch_result *results,
                        struct api_wait *w)
{
    size_t n = codec_batch_len(cb), k = 0;
    buf b;
    buf_init(&b);
    buf_append(&b, "[", 1);
    for (size_t i = 0; i < n; i++) {
        const char *node_id, *detail;
        const ns_update *u = codec_batch_item_at(cb, i, &node_id, &detail);
        if (i > 0)
            buf_append(&b, ",", 1);
        if (!u) {
            w->refused++;
            batch_problem(&b, node_id, PROBLEM_INVALID_UPDATE, detail, NULL, false);
            continue;
        }
        const engine_batch_result *r = &results[k++];
        char why[256];
        switch (r->res) {
        case ENGINE_ACCEPTED:
        case ENGINE_DUPLICATE:
            if (r->res == ENGINE_ACCEPTED)
                w->accepted++;
            else
                w->duplicates++;
            if (r->seq > w->seq)
                w->seq = r->seq;
            buf_puts(&b, "{\"node_id\":");
            buf_json_string(&b, node_id);
            buf_printf(&b, ",\"code\":%d,\"seq\":%lld}", r->res == ENGINE_ACCEPTED ? 202 : 200,
                       (long long)r->seq);
            break;
        case ENGINE_STALE:
        case ENGINE_ILLEGAL:
            w->refused++;
            refusal_detail(why, sizeof why, r->res, r->current, u);
            batch_problem(&b, node_id,
                          r->res == ENGINE_STALE ? PROBLEM_STALE_ATTEMPT : PROBLEM_ILLEGAL_TRANSITION,
                          why, r->current, r->current && api_is_durable(a, r->current->seq));
            break;
        default:
            w->refused++;
            batch_problem(&b, node_id, PROBLEM_INTERNAL_ERROR,
                          "the update could not be applied (out of memory)", NULL, false);
            break;
        }
    }
    buf_append(&b, "]", 1);
    w->batch_results = buf_steal(&b, &w->batch_results_len);
    return w->batch_results ? 0 : -1;
}

void api_post_batch(api *a, const api_request *req, const route_args *args,
                    api_response *resp)
{
    bool wait;
    double timeout;
    if (wait_args(a, req, resp, &wait, &timeout) != 0) {
        api_count_invalid(a);
        return;
    }
    int status = 400;
    char detail[512];
    engine_batch_item *items = NULL;
    engine_batch_result *results = NULL;
    struct api_wait *w = NULL;
    size_t m = 0;
    codec_batch *cb = codec_decode_batch(req->body ? req->body : "", req->body_len,
                                         args->run_id, a->cfg.max_error_bytes,
                                         a->cfg.max_batch_updates, &status, detail,
                                         sizeof detail);
    if (!cb) {
        if (status >= 500) {
            api_answer_problem(resp, PROBLEM_INTERNAL_ERROR, detail);
            return;
        }
        api_count_invalid(a);
        api_answer_problem(resp, status == 400   ? PROBLEM_INVALID_JSON
                                 : status == 413 ? PROBLEM_TOO_MANY_UPDATES
                                                 : PROBLEM_INVALID_UPDATE,
                           detail);
        return;
    }
    size_t n = codec_batch_len(cb);
    ns_stats *st = engine_stats(a->engine);
    atomic_fetch_add_explicit(&st->batch_requests, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&st->batch_request_updates, n, memory_order_relaxed);
    items = malloc(n * sizeof *items);
    results = malloc(n * sizeof *results);
    w = calloc(1, sizeof *w);
    if (!items || !results || !w) {
        api_answer_problem(resp, PROBLEM_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const char *node_id, *why;
        const ns_update *u = codec_batch_item_at(cb, i, &node_id, &why);
        if (u)
            items[m++] = (engine_batch_item){ node_id, u };
        else
            api_count_invalid(a);
    }
    engine_result res = engine_batch_submit(a->engine, args->run_id, items, m, results);
    if (res == ENGINE_QUEUE_FULL) {
        queue_full(resp);
        goto done;
    }
    if (res != ENGINE_ACCEPTED) {
        api_answer_problem(resp, PROBLEM_INTERNAL_ERROR,
                           "the updates could not be applied (reading the database failed)");
        goto done;
    }
    snprintf(w->run_id, sizeof w->run_id, "%s", args->run_id);
    int rendered = batch_render(a, cb, results, w);
    engine_batch_results_free(results, m);
    if (rendered != 0) {
        api_answer_problem(resp, PROBLEM_OUT_OF_MEMORY, "out of memory rendering the answer");
        goto done;
    }
    /* Durable once the highest seq it accepted (or found as a duplicate) is. */
    bool durable = w->seq == 0 || api_is_durable(a, w->seq);
    api_batch_response(resp, durable ? 200 : 202, w, durable);
    if (wait && !durable) {
        park(a, resp, w, timeout);
        w = NULL; /* the wait keeps it */
    }
done:
    if (w)
        free(w->batch_results);
    free(w);
    free(results);
    free(items);
    codec_batch_free(cb);
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

void api_get_state(api *a, const api_request *req, const route_args *args,
                   api_response *resp)
{
    engine_result res;
    ns_row *row = engine_get(a->engine, args->run_id, args->node_id, &res);
    if (!row) {
        if (res == ENGINE_NOT_FOUND)
            api_answer_problem(resp, PROBLEM_NOT_FOUND, "no such node in this run");
        else
            api_answer_problem(resp, PROBLEM_INTERNAL_ERROR, "reading the database failed");
        return;
    }
    /* Read once: the tag compared and the body sent must agree. */
    bool durable = api_is_durable(a, row->seq);
    api_set_etag(resp, row->seq, !durable);
    if (etag_matches(api_header(req, "If-None-Match"), resp->etag)) {
        resp->status = 304;
    } else {
        api_row_response(resp, 200, row, durable);
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

/* A seq from a query value or header: digits only, at most 2^63-1. -1 otherwise. */
static int64_t seq_value(const char *v)
{
    if (!*v || strlen(v) > 19 || strspn(v, "0123456789") != strlen(v))
        return -1;
    unsigned long long n = strtoull(v, NULL, 10);
    return n > INT64_MAX ? -1 : (int64_t)n;
}

/* Orders rows by seq. */
static int row_seq_cmp(const void *x, const void *y)
{
    int64_t a = (*(ns_row *const *)x)->seq, b = (*(ns_row *const *)y)->seq;
    return (a > b) - (a < b);
}

/*
 * GET /runs/{run}/nodes?since=N[&wait=S]: the run's nodes whose seq is
 * above N, in seq order, at most limit (the client asks again with the
 * last one's seq). None yet and wait > 0: a long poll (api.h).
 */
static void list_since(api *a, const api_request *req, const route_args *args,
                       api_response *resp, unsigned mask, size_t limit,
                       const char *after, const char *since_value)
{
    int64_t since = seq_value(since_value);
    if (since < 0 || after) {
        api_answer_problem(resp, PROBLEM_INVALID_QUERY, after
                           ? "query parameters \"since\" and \"after\" do not go together"
                           : "query parameter \"since\" must be a whole number >= 0 (a seq)");
        return;
    }
    double wait = 0;
    char w[QUERY_VALUE_MAX + 1];
    int has = query_arg(req, resp, "wait", w);
    if (has < 0)
        return;
    if (has) {
        char *end;
        wait = strtod(w, &end);
        if (!*w || *end || !isfinite(wait) || wait < 0) {
            api_answer_problem(resp, PROBLEM_INVALID_QUERY,
                               "query parameter \"wait\" must be a number of seconds >= 0");
            return;
        }
        if (wait > a->cfg.max_wait)
            wait = a->cfg.max_wait;
    }
    /* Every matching node, page by page: no index by seq, a run is scanned once per ask. */
    engine_page all = { 0 }, page;
    char last[NS_ID_MAX + 1] = "";
    engine_result res;
    size_t cap = 0;
    do {
        res = engine_list(a->engine, args->run_id, mask, *last ? last : NULL, LIST_MAX_LIMIT,
                          &page);
        if (res != ENGINE_ACCEPTED) {
            engine_page_free(&page);
            break;
        }
        if (page.count)
            snprintf(last, sizeof last, "%s", page.rows[page.count - 1]->node_id);
        for (size_t i = 0; i < page.count; i++) {
            ns_row *r = page.rows[i];
            if (r->seq <= since)
                continue;
            if (all.count == cap) {
                size_t ncap = cap ? cap * 2 : 64;
                ns_row **grown = realloc(all.rows, ncap * sizeof *grown);
                if (!grown) {
                    res = ENGINE_ERROR;
                    break;
                }
                all.rows = grown;
                cap = ncap;
            }
            model_row_ref(r);
            all.rows[all.count++] = r;
        }
        bool more = page.more;
        engine_page_free(&page);
        if (!more || res != ENGINE_ACCEPTED)
            break;
    } while (1);
    if (res == ENGINE_NOT_FOUND) {
        api_answer_problem(resp, PROBLEM_NOT_FOUND, "no such run");
    } else if (res != ENGINE_ACCEPTED) {
        api_answer_problem(resp, PROBLEM_INTERNAL_ERROR, "listing the run failed");
    } else {
        if (all.count > 1)
            qsort(all.rows, all.count, sizeof *all.rows, row_seq_cmp);
        size_t count = all.count;
        if (all.count > limit)
            all.count = limit;
        buf b;
        buf_init(&b);
        codec_page(&b, args->run_id, &all, engine_durable_seq(a->engine));
        api_respond(resp, 200, API_JSON_TYPE, &b);
        all.count = count;
        if (all.count == 0 && wait > 0 && !req->no_wait) {
            resp->poll_wait = wait;
            resp->since = since;
            snprintf(resp->watch_run, sizeof resp->watch_run, "%s", args->run_id);
        }
    }
    engine_page_free(&all);
}

void api_list_nodes(api *a, const api_request *req, const route_args *args,
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
            api_answer_problem(resp, PROBLEM_INVALID_QUERY,
                               "query parameter \"status\" must be a comma-separated "
                               "list of idle, scheduled, running, paused, suspended, "
                               "completed, failed");
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
            api_answer_problem(resp, PROBLEM_INVALID_QUERY,
                               "query parameter \"limit\" must be a whole number from 1 "
                               "to 10000");
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
        api_answer_problem(resp, PROBLEM_INVALID_QUERY,
                           "query parameter \"after\" must be a node id");
        return;
    }
    char since_value[QUERY_VALUE_MAX + 1];
    has = query_arg(req, resp, "since", since_value);
    if (has < 0)
        return;
    if (has) {
        list_since(a, req, args, resp, mask, limit, after, since_value);
        return;
    }
    engine_page page;
    engine_result res = engine_list(a->engine, args->run_id, mask, after, limit, &page);
    if (res == ENGINE_ACCEPTED) {
        buf b;
        buf_init(&b);
        codec_page(&b, args->run_id, &page, engine_durable_seq(a->engine));
        api_respond(resp, 200, API_JSON_TYPE, &b);
    } else if (res == ENGINE_NOT_FOUND) {
        api_answer_problem(resp, PROBLEM_NOT_FOUND, "no such run");
    } else {
        api_answer_problem(resp, PROBLEM_INTERNAL_ERROR, "listing the run failed");
    }
    engine_page_free(&page);
}

void api_get_run(api *a, const api_request *req, const route_args *args,
                 api_response *resp)
{
    engine_summary s;
    engine_result res = engine_summarize(a->engine, args->run_id, &s);
    if (res == ENGINE_NOT_FOUND) {
        api_answer_problem(resp, PROBLEM_NOT_FOUND, "no such run");
        return;
    }
    if (res != ENGINE_ACCEPTED) {
        api_answer_problem(resp, PROBLEM_INTERNAL_ERROR, "reading the run failed");
        return;
    }
    buf b;
    buf_init(&b);
    codec_summary(&b, args->run_id, &s);
    api_respond(resp, 200, API_JSON_TYPE, &b);
    /* A summary does not say what is durable: its tag is the seq alone. */
    api_set_etag(resp, s.last_seq, false);
}

void api_delete_run(api *a, const api_request *req, const route_args *args,
                    api_response *resp)
{
    bool wait;
    double timeout;
    if (wait_args(a, req, resp, &wait, &timeout) != 0)
        return;
    struct api_wait *w = calloc(1, sizeof *w);
    if (!w) {
        api_answer_problem(resp, PROBLEM_INTERNAL_ERROR, "out of memory");
        return;
    }
    snprintf(w->run_id, sizeof w->run_id, "%s", args->run_id);
    engine_result res = engine_delete_run(a->engine, args->run_id, &w->deleted, &w->seq);
    if (res == ENGINE_ACCEPTED) {
        api_deleted_response(resp, 202, w, false);
        if (wait) {
            park(a, resp, w, timeout);
            return;
        }
    } else if (res == ENGINE_NOT_FOUND) {
        api_answer_problem(resp, PROBLEM_NOT_FOUND, "no such run");
    } else if (res == ENGINE_QUEUE_FULL) {
        queue_full(resp);
    } else {
        api_answer_problem(resp, PROBLEM_INTERNAL_ERROR, "deleting the run failed");
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
    const char *accept = api_header(req, "Accept");
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
        api_respond(resp, 200, API_JSON_TYPE, &b);
    } else {
        prom_render(&b, engine_stats(a->engine), model_now_ms());
        api_respond(resp, 200, PROM_CONTENT_TYPE, &b);
    }
}

void api_get_stats(api *a, const api_request *req, const route_args *args,
                   api_response *resp)
{
    char v[QUERY_VALUE_MAX + 1];
    int has = query_arg(req, resp, "format", v);
    if (has < 0)
        return;
    const char *format = has ? v : NULL;
    if (format && strcmp(format, "json") != 0 && strcmp(format, "prometheus") != 0) {
        api_answer_problem(resp, PROBLEM_INVALID_QUERY,
                           "query parameter \"format\" must be json or prometheus");
        return;
    }
    render_stats(a, resp, wants_json(req, format));
}

void api_get_metrics(api *a, const api_request *req, const route_args *args,
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
    api_respond(resp, 200, API_JSON_TYPE, &b);
}

void api_get_healthz(api *a, const api_request *req, const route_args *args,
                     api_response *resp)
{
    if (!engine_alive(a->engine)) {
        api_answer_problem(resp, PROBLEM_NOT_ALIVE, "the writer thread is not running");
        return;
    }
    status_body(resp, "ok");
}

void api_get_readyz(api *a, const api_request *req, const route_args *args,
                    api_response *resp)
{
    const char *reason = NULL;
    if (!engine_ready(a->engine, &reason)) {
        api_answer_problem(resp, PROBLEM_NOT_READY, reason);
        return;
    }
    status_body(resp, "ready");
}

/* ---- GET /backup ---- */

static ssize_t backup_read(void *ctx, uint64_t pos, char *out, size_t n)
{
    return engine_backup_read(ctx, pos, out, n);
}

static void backup_close(void *ctx)
{
    engine_backup_close(ctx);
}

/*
 * The store takes the snapshot now, whole, so that the answer is either a
 * complete database or a problem; only then is it streamed. HEAD takes one
 * too: its Content-Length is the snapshot's.
 */
void api_get_backup(api *a, const api_request *req, const route_args *args,
                    api_response *resp)
{
    engine_backup *b = NULL;
    char err[512];
    char stamp[32];
    time_t now = time(NULL);
    struct tm tm;

    if (gmtime_r(&now, &tm) == NULL ||
        strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm) == 0)
        snprintf(stamp, sizeof stamp, "%lld", (long long)now);
    switch (engine_backup_open(a->engine, &b, err, sizeof err)) {
    case ENGINE_BACKUP_OK:
        break;
    case ENGINE_BACKUP_BUSY:
        api_answer_problem(resp, PROBLEM_BACKUP_BUSY, err);
        return;
    case ENGINE_BACKUP_UNSUPPORTED:
        api_answer_problem(resp, PROBLEM_BACKUP_UNSUPPORTED, err);
        return;
    case ENGINE_BACKUP_FAILED:
    default:
        api_answer_problem(resp, PROBLEM_INTERNAL_ERROR, err);
        return;
    }
    resp->status = 200;
    resp->content_type = BACKUP_TYPE;
    snprintf(resp->disposition, sizeof resp->disposition,
             "attachment; filename=\"nodestate-%s.db\"", stamp);
    resp->stream = (api_stream){backup_read, backup_close, b, engine_backup_size(b)};
}

/*
 * GET /runs/{run}/events: checks what a stream needs (api.h); the
 * transport streams. Last-Event-ID, which an EventSource sends when it
 * reconnects, wins over ?since=. HEAD answers the headers alone.
 */
void api_watch_run(api *a, const api_request *req, const route_args *args,
                   api_response *resp)
{
    int64_t since = 0;
    char v[QUERY_VALUE_MAX + 1];
    int has = query_arg(req, resp, "since", v);
    if (has < 0)
        return;
    if (has && (since = seq_value(v)) < 0) {
        api_answer_problem(resp, PROBLEM_INVALID_QUERY,
                           "query parameter \"since\" must be a whole number >= 0 (a seq)");
        return;
    }
    const char *last_id = api_header(req, "Last-Event-ID");
    if (last_id && *last_id) {
        if ((since = seq_value(last_id)) < 0) {
            api_answer_problem(resp, PROBLEM_INVALID_QUERY,
                               "header Last-Event-ID must be a whole number >= 0 (a seq)");
            return;
        }
    }
    has = query_arg(req, resp, "durable", v);
    if (has < 0)
        return;
    int durable = has ? flag_value(v) : 0;
    if (durable < 0) {
        api_answer_problem(resp, PROBLEM_INVALID_QUERY,
                           "query parameter \"durable\" must be true or false");
        return;
    }
    engine_page page;
    engine_result res = engine_list(a->engine, args->run_id, (1u << NS_STATUS_COUNT) - 1,
                                    NULL, 1, &page);
    engine_page_free(&page);
    if (res == ENGINE_NOT_FOUND) {
        api_answer_problem(resp, PROBLEM_NOT_FOUND, "no such run");
        return;
    }
    if (res != ENGINE_ACCEPTED) {
        api_answer_problem(resp, PROBLEM_INTERNAL_ERROR, "reading the run failed");
        return;
    }
    if (strcmp(req->method, "GET") != 0) {
        /* HEAD: the headers a stream starts with, and its first bytes as the body MHD leaves out. */
        buf b;
        buf_init(&b);
        buf_puts(&b, "retry: 1000\n\n");
        api_respond(resp, 200, API_EVENT_STREAM_TYPE, &b);
        return;
    }
    resp->status = 200;
    resp->content_type = API_EVENT_STREAM_TYPE;
    resp->events = true;
    resp->events_durable = durable == 1;
    resp->since = since;
    snprintf(resp->watch_run, sizeof resp->watch_run, "%s", args->run_id);
}
