#include "api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_internal.h"
#include "codec.h"

#define PROBLEM_TYPE "application/problem+json"
/* Seconds a client should wait before retrying a 503. */
#define RETRY_AFTER_SECONDS 1

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

void api_respond(api_response *resp, int status, const char *type, buf *b)
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

void api_answer_conflict(api_response *resp, problem_id id, const char *detail,
                         const ns_row *current, bool durable)
{
    const problem_type *t = problems_get(id);
    buf b;
    buf_init(&b);
    codec_problem(&b, t->status, t->slug, t->title, detail, current, durable);
    api_respond(resp, t->status, PROBLEM_TYPE, &b);
    /* Every 503 is a passing state: say when to come back. */
    if (t->status == 503)
        resp->retry_after = RETRY_AFTER_SECONDS;
}

void api_answer_problem(api_response *resp, problem_id id, const char *detail)
{
    api_answer_conflict(resp, id, detail, NULL, false);
}

bool api_run_read_ok(api_response *resp, engine_result res, const char *doing)
{
    if (res == ENGINE_ACCEPTED)
        return true;
    if (res == ENGINE_NOT_FOUND) {
        api_answer_problem(resp, PROBLEM_NOT_FOUND, "no such run");
        return false;
    }
    char detail[128];
    snprintf(detail, sizeof detail, "%s failed", doing);
    api_answer_problem(resp, PROBLEM_INTERNAL_ERROR, detail);
    return false;
}

void api_count_invalid(api *a)
{
    atomic_fetch_add_explicit(&engine_stats(a->engine)->rejected[NS_REJECT_INVALID], 1,
                              memory_order_relaxed);
}

void api_problem(api *a, api_response *resp, problem_id id, const char *detail)
{
    int status = problems_get(id)->status;
    memset(resp, 0, sizeof *resp);
    if (status == 413 || status == 400)
        api_count_invalid(a);
    api_answer_problem(resp, id, detail);
    stats_count_http(engine_stats(a->engine), resp->status);
}

/*
 * The entity tag of a representation that holds seq. A node state also
 * says whether it is durable, and the tag must change whenever the body
 * does: "<seq>" once durable, "<seq>-q" while still queued, so a client
 * holding the queued tag gets 200 (durable: true), not 304, after the commit.
 */
void api_set_etag(api_response *resp, int64_t seq, bool queued)
{
    snprintf(resp->etag, sizeof resp->etag, "\"%lld%s\"", (long long)seq,
             queued ? "-q" : "");
}

bool api_is_durable(api *a, int64_t seq)
{
    engine_durability d = engine_durability_now(a->engine);
    return engine_durability_covers(&d, seq);
}

void api_row_response(api_response *resp, int status, const ns_row *row, bool durable)
{
    buf b;
    buf_init(&b);
    codec_row(&b, row, durable);
    api_respond(resp, status, API_JSON_TYPE, &b);
    api_set_etag(resp, row->seq, !durable);
}

void api_deleted_response(api_response *resp, int status, const struct api_wait *w,
                          bool durable)
{
    buf b;
    buf_init(&b);
    codec_deleted(&b, w->run_id, w->deleted, w->seq, durable);
    api_respond(resp, status, API_JSON_TYPE, &b);
}

void api_batch_response(api_response *resp, int status, const struct api_wait *w,
                        bool durable)
{
    buf b;
    buf_init(&b);
    buf_puts(&b, "{\"run_id\":");
    buf_json_string(&b, w->run_id);
    buf_printf(&b, ",\"accepted\":%zu,\"duplicates\":%zu,\"refused\":%zu,\"last_seq\":",
               w->accepted, w->duplicates, w->refused);
    if (w->seq > 0)
        buf_printf(&b, "%lld", (long long)w->seq);
    else
        buf_puts(&b, "null");
    buf_puts(&b, durable ? ",\"durable\":true,\"results\":" : ",\"durable\":false,\"results\":");
    buf_append(&b, w->batch_results, w->batch_results_len);
    buf_append(&b, "}", 1);
    api_respond(resp, status, API_JSON_TYPE, &b);
}

const char *api_header(const api_request *req, const char *name)
{
    return api_header_line(req, name, 0);
}

const char *api_header_line(const api_request *req, const char *name, size_t nth)
{
    return req->header ? req->header(req->ctx, name, nth) : NULL;
}

/* ---- the entry points ---- */

void api_handle(api *a, const api_request *req, api_response *resp)
{
    memset(resp, 0, sizeof *resp);
    api_dispatch(a, req, resp);
    if (!resp->wait && !resp->events && !(resp->poll_wait > 0))
        stats_count_http(engine_stats(a->engine), resp->status);
}

void api_wait_free(struct api_wait *w)
{
    if (!w)
        return;
    model_row_unref(w->row);
    free(w->batch_results);
    free(w->batch_seqs);
    free(w->body);
    free(w);
}

/*
 * A single update a shared store refused because it held a newer state of
 * the node (another instance wrote it; this one judged the update against
 * what it had cached): judged again against the stored state, as if it had
 * just arrived, so the caller learns what the rules say of it there (200
 * when it changes nothing, as when a retry after a failover finds its own
 * first try stored; 409; or applied and waited on once more, for what is
 * left of its timeout). Takes w.
 */
static void judge_again(api *a, api_response *resp, struct api_wait *w)
{
    int64_t left_ns = w->deadline_ns - model_mono_ns();
    memset(resp, 0, sizeof *resp);
    api_post_state_again(a, w->row->run_id, w->row->node_id, w->body, w->body_len,
                         left_ns > 0 ? (double)left_ns / 1e9 : 0, resp);
    api_wait_free(w);
    if (!resp->wait)
        stats_count_http(engine_stats(a->engine), resp->status);
}

/*
 * A batch whose wait ended durable, with items judged again
 * (api_batch_mark_refused): one queued anew is not durable yet, so the
 * batch waits again, for what is left of its timeout, on the highest such
 * seq; 202 when nothing is left, 200 once every seq it names is durable.
 * Takes w.
 */
static void batch_judged_again(api *a, api_response *resp, struct api_wait *w)
{
    int64_t left_ns = w->deadline_ns - model_mono_ns();
    if (api_batch_answer(a, resp, w, api_batch_wait_seq(a, w), left_ns > 0,
                         (double)left_ns / 1e9))
        return;
    api_wait_free(w);
    stats_count_http(engine_stats(a->engine), resp->status);
}

void api_finish_wait(api *a, api_response *resp, bool durable)
{
    struct api_wait *w = resp->wait;
    if (!w)
        return;
    free(resp->body);
    resp->body = NULL;
    resp->body_len = 0;
    resp->wait_seq = 0;
    resp->wait = NULL;
    /* A duplicate changed nothing: 200 (durable or not, as the body says), as when not waited on. */
    int status = durable || w->duplicate ? 200 : 202;
    engine_refusal refused = w->row && durable ? engine_refused(a->engine, w->seq)
                                               : ENGINE_NOT_REFUSED;
    if (refused == ENGINE_REFUSED_SUPERSEDED && w->body) {
        judge_again(a, resp, w);
        return;
    }
    int marked = w->batch_results && durable ? api_batch_mark_refused(a, w) : 0;
    if (marked > 0) {
        batch_judged_again(a, resp, w);
        return;
    }
    if (refused != ENGINE_NOT_REFUSED)
        api_answer_problem(resp, PROBLEM_WRITE_REFUSED, API_WRITE_REFUSED_DETAIL);
    else if (w->row)
        api_row_response(resp, status, w->row, durable);
    else if (marked < 0)
        api_answer_problem(resp, PROBLEM_OUT_OF_MEMORY, "out of memory rendering the answer");
    else if (w->batch_results)
        api_batch_response(resp, api_batch_status(a, w, durable), w, durable);
    else
        api_deleted_response(resp, status, w, durable);
    api_wait_free(w);
    stats_count_http(engine_stats(a->engine), resp->status);
}

void api_response_free(api_response *resp)
{
    free(resp->body);
    resp->body = NULL;
    if (resp->stream.close != NULL)
        resp->stream.close(resp->stream.ctx);
    memset(&resp->stream, 0, sizeof resp->stream);
    api_wait_free(resp->wait);
    resp->wait = NULL;
}

void api_count_status(api *a, int status)
{
    stats_count_http(engine_stats(a->engine), status);
}

char *api_node_json(const ns_row *row, bool durable, size_t *len)
{
    buf b;
    buf_init(&b);
    codec_row(&b, row, durable);
    if (b.failed) {
        buf_free(&b);
        return NULL;
    }
    return buf_steal(&b, len);
}
