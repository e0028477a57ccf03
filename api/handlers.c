/*
 * The handlers that write (a node update, a batch, a run's delete, with
 * their ?wait=) and the service's own routes (stats, metrics, health,
 * backup), with the query helpers every handler uses. The reads are in
 * handlers_read.c.
 */
#include "api_internal.h"

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

static void queue_full(api_response *resp)
{
    api_answer_problem(resp, PROBLEM_QUEUE_FULL,
                       "the write queue is full; retry after the Retry-After delay");
}

/* ---- request helpers ---- */

/*
 * Query argument name, percent-decoded into out (API_QUERY_VALUE_MAX + 1 bytes).
 * 1 when present (out holds it; "" for a bare "?name"), 0 when absent, -1
 * after answering 400: a value with a bad escape or an encoded NUL, which
 * would otherwise mean something shorter than what was sent.
 */
int api_query_arg(const api_request *req, api_response *resp, const char *name,
                  char out[API_QUERY_VALUE_MAX + 1])
{
    const char *raw = req->query ? req->query(req->ctx, name) : NULL;
    if (!raw)
        return 0;
    text_decode_result r = text_query_decode(out, API_QUERY_VALUE_MAX + 1, raw, NULL);
    if (r == TEXT_DECODED)
        return 1;
    char detail[160];
    if (r == TEXT_TOO_LONG)
        snprintf(detail, sizeof detail, "query parameter \"%s\" is longer than %d bytes",
                 name, API_QUERY_VALUE_MAX);
    else
        snprintf(detail, sizeof detail,
                 "query parameter \"%s\" is not percent-encoded right: every %% needs two "
                 "hex digits, and %%00 is not allowed", name);
    api_answer_problem(resp, PROBLEM_INVALID_QUERY, detail);
    return -1;
}

/* A boolean query flag's value: "", "true", "1" true; "false", "0" false; -1 otherwise. */
int api_flag_value(const char *v)
{
    if (!*v || strcmp(v, "true") == 0 || strcmp(v, "1") == 0)
        return 1;
    if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0)
        return 0;
    return -1;
}

int api_seconds_value(const char *v, double *out)
{
    size_t digits = strspn(v, "0123456789");
    const char *p = v + digits;
    if (*p == '.') {
        size_t frac = strspn(p + 1, "0123456789");
        digits += frac;
        p += 1 + frac;
    }
    if (digits == 0)
        return -1;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-')
            p++;
        size_t exp = strspn(p, "0123456789");
        if (exp == 0)
            return -1;
        p += exp;
    }
    double secs = strtod(v, NULL);
    if (*p != '\0' || !isfinite(secs))
        return -1;
    *out = secs;
    return 0;
}

/*
 * The ?wait= and ?timeout= of a write. Returns 0 with *wait and *timeout
 * set, or -1 after answering 400.
 */
static int wait_args(api *a, const api_request *req, api_response *resp,
                     bool *wait, double *timeout)
{
    char v[API_QUERY_VALUE_MAX + 1];
    int has = api_query_arg(req, resp, "wait", v);
    if (has < 0)
        return -1;
    int w = has ? api_flag_value(v) : 0;
    if (w < 0) {
        api_answer_problem(resp, PROBLEM_INVALID_QUERY,
                           "query parameter \"wait\" must be true or false");
        return -1;
    }
    *wait = w == 1;
    *timeout = a->cfg.default_wait;
    has = api_query_arg(req, resp, "timeout", v);
    if (has < 0)
        return -1;
    if (has && api_seconds_value(v, timeout) != 0) {
        api_answer_problem(resp, PROBLEM_INVALID_QUERY,
                           "query parameter \"timeout\" must be a number of seconds >= 0");
        return -1;
    }
    if (*timeout > a->cfg.max_wait)
        *timeout = a->cfg.max_wait;
    return 0;
}

/*
 * Parks resp until wait_seq is durable; the transport calls api_finish_wait,
 * which renders the answer then. Nothing is rendered before: a parked
 * answer's first body would only be thrown away.
 */
static void park(api_response *resp, struct api_wait *w, int64_t wait_seq, double timeout)
{
    resp->wait = w;
    resp->wait_seq = wait_seq;
    resp->wait_timeout = timeout;
}

/* ---- handlers ---- */

/*
 * Keeps a copy of the body in w, to judge the update again should a shared
 * store refuse it as superseded (api_finish_wait; SQLite never does, so
 * nothing is kept there). Out of memory it is not kept, and such a refusal
 * is answered as one.
 */
static void keep_body(struct api_wait *w, const char *body, size_t len, double timeout)
{
    w->body = malloc(len + 1);
    if (!w->body)
        return;
    memcpy(w->body, body, len);
    w->body[len] = '\0';
    w->body_len = len;
    w->deadline_ns = model_mono_ns() + (int64_t)(timeout * 1e9);
}

/*
 * Judges one update (body) to run_id/node_id and answers it; with wait,
 * parks the answer until the update is durable, timeout seconds at most.
 * again: it was judged before, against a state a shared store found older
 * (api_post_state_again), so it is not kept to be judged a third time.
 */
static void post_state(api *a, const char *run_id, const char *node_id, const char *body,
                       size_t len, bool wait, double timeout, bool again, api_response *resp)
{
    ns_update u;
    int status = 400;
    char detail[512];
    codec_doc *doc = codec_decode_update(body, len, run_id, node_id, a->cfg.max_error_bytes,
                                         &u, &status, detail, sizeof detail);
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
    engine_result res = engine_submit(a->engine, run_id, node_id, &u, &row);
    codec_doc_free(doc);
    switch (res) {
    case ENGINE_ACCEPTED:
    case ENGINE_DUPLICATE: {
        if (again && res == ENGINE_DUPLICATE &&
            engine_refused(a->engine, row->seq) != ENGINE_NOT_REFUSED) {
            /* Judged against its own refused row, still cached (refused while spilling): not stored. */
            api_answer_problem(resp, PROBLEM_WRITE_REFUSED, API_WRITE_REFUSED_DETAIL);
            break;
        }
        bool durable = res == ENGINE_DUPLICATE && api_is_durable(a, row->seq);
        struct api_wait *w = wait && !durable ? calloc(1, sizeof *w) : NULL;
        if (w) {
            w->row = row;
            w->seq = row->seq;
            w->duplicate = res == ENGINE_DUPLICATE;
            if (!again && engine_shared(a->engine))
                keep_body(w, body, len, timeout);
            park(resp, w, w->seq, timeout);
            return; /* the wait keeps the row's reference */
        }
        api_row_response(resp, res == ENGINE_ACCEPTED ? 202 : 200, row, durable);
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

/*
 * Whether req's body would take more memory to decode than its budget
 * (codec_tree_budget): then answered 413 body-too-large, before a decoder
 * builds its tree. A body of tiny values ([{},{},...]) costs jansson ~80
 * times its size: 15 MiB of them took 1.26 GB.
 */
static bool body_too_costly(api *a, const api_request *req, api_response *resp)
{
    size_t len = req->body ? req->body_len : 0;
    size_t need = codec_tree_estimate(len ? req->body : "", len);
    size_t budget = codec_tree_budget(len);
    if (need <= budget)
        return false;
    char detail[192];
    snprintf(detail, sizeof detail,
             "decoding this body would take about %zu MiB; at most %zu MiB is taken for one "
             "request (8 times its size, at least 64 MiB): send fewer or smaller values",
             need >> 20, budget >> 20);
    api_count_invalid(a);
    api_answer_problem(resp, PROBLEM_BODY_TOO_LARGE, detail);
    return true;
}

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
    if (body_too_costly(a, req, resp))
        return;
    post_state(a, args->run_id, args->node_id, req->body ? req->body : "", req->body_len,
               wait, timeout, false, resp);
}

void api_post_state_again(api *a, const char *run_id, const char *node_id, const char *body,
                          size_t len, double timeout, api_response *resp)
{
    post_state(a, run_id, node_id, body, len, true, timeout, true, resp);
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
 * Writes the result of one item, judged res (seq its seq, current the
 * node's state when refused), to b and counts it in w: 202 or 200 with its
 * seq, whose place in b goes to *at (returns true), or its problem: 409
 * with the current node, or 500 with fail_detail.
 */
static bool batch_item(api *a, struct api_wait *w, buf *b, const char *node_id,
                       const ns_update *u, engine_result res, int64_t seq, const ns_row *current,
                       const char *fail_detail, api_batch_seq *at)
{
    char why[256];
    switch (res) {
    case ENGINE_ACCEPTED:
    case ENGINE_DUPLICATE:
        if (res == ENGINE_ACCEPTED)
            w->accepted++;
        else
            w->duplicates++;
        if (seq > w->seq)
            w->seq = seq;
        at->start = b->len;
        at->seq = seq;
        at->duplicate = res == ENGINE_DUPLICATE;
        buf_puts(b, "{\"node_id\":");
        buf_json_string(b, node_id);
        at->mid = b->len;
        buf_printf(b, ",\"code\":%d,\"seq\":%lld}", res == ENGINE_ACCEPTED ? 202 : 200,
                   (long long)seq);
        at->end = b->len;
        return true;
    case ENGINE_STALE:
    case ENGINE_ILLEGAL:
        w->refused++;
        refusal_detail(why, sizeof why, res, current, u);
        batch_problem(b, node_id,
                      res == ENGINE_STALE ? PROBLEM_STALE_ATTEMPT : PROBLEM_ILLEGAL_TRANSITION,
                      why, current, current && api_is_durable(a, current->seq));
        return false;
    default:
        w->refused++;
        batch_problem(b, node_id, PROBLEM_INTERNAL_ERROR, fail_detail, NULL, false);
        return false;
    }
}

/*
 * Renders results[] (one per good item, in body order) and the bad items into w: the results array in body
 * order, the counts, the highest seq to wait on, and where each item with a seq sits
 * (api_batch_mark_refused). 0, or -1 out of memory.
 */
static int batch_render(api *a, const codec_batch *cb, const engine_batch_result *results,
                        struct api_wait *w)
{
    size_t n = codec_batch_len(cb), k = 0;
    if (n > 0 && !(w->batch_seqs = malloc(n * sizeof *w->batch_seqs)))
        return -1;
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
        api_batch_seq at = { .item = i };
        if (batch_item(a, w, &b, node_id, u, r->res, r->seq, r->current,
                       "the update could not be applied (out of memory)", &at))
            w->batch_seqs[w->n_batch_seqs++] = at;
    }
    buf_append(&b, "]", 1);
    w->batch_results = buf_steal(&b, &w->batch_results_len);
    return w->batch_results ? 0 : -1;
}

/*
 * An item of batch cb that a shared store refused as superseded (old: its
 * place and seq), judged again as if it had just arrived, as a single
 * update is (judge_again): its new result goes to b, its place to *at if it
 * got a seq (returns true). Its old count in w is taken back first.
 */
static bool batch_item_again(api *a, struct api_wait *w, const codec_batch *cb,
                             const api_batch_seq *old, buf *b, api_batch_seq *at)
{
    const char *node_id, *why;
    const ns_update *u = codec_batch_item_at(cb, old->item, &node_id, &why);
    if (old->duplicate)
        w->duplicates--;
    else
        w->accepted--;
    *at = (api_batch_seq){ .item = old->item };
    if (!u) {
        /* The body decoded to this item once; it cannot fail to now. */
        w->refused++;
        batch_problem(b, node_id, PROBLEM_INTERNAL_ERROR, why, NULL, false);
        return false;
    }
    ns_row *row = NULL;
    engine_result res = engine_submit(a->engine, w->run_id, node_id, u, &row);
    bool has_seq = batch_item(a, w, b, node_id, u, res, row ? row->seq : 0, row,
                              res == ENGINE_QUEUE_FULL
                                  ? "the queue was full when the update was judged again"
                                  : "the update could not be applied (reading the database failed)",
                              at);
    model_row_unref(row);
    return has_seq;
}

int api_batch_mark_refused(api *a, struct api_wait *w)
{
    int64_t lo = INT64_MAX, hi = INT64_MIN;
    for (size_t i = 0; i < w->n_batch_seqs; i++) {
        if (w->batch_seqs[i].seq < lo)
            lo = w->batch_seqs[i].seq;
        if (w->batch_seqs[i].seq > hi)
            hi = w->batch_seqs[i].seq;
    }
    if (w->n_batch_seqs == 0 || !engine_refused_between(a->engine, lo, hi))
        return 0;
    /*
     * Rare (a row the database refused): the results again, each refused
     * item replaced, every item with a seq placed anew (an item judged
     * again may get one or lose it, and the text around moves).
     */
    codec_batch *cb = NULL;
    if (w->body) {
        int status;
        char detail[256];
        cb = codec_decode_batch(w->body, w->body_len, w->run_id, a->cfg.max_error_bytes,
                                a->cfg.max_batch_updates, &status, detail, sizeof detail);
    }
    api_batch_seq *seqs = malloc(w->n_batch_seqs * sizeof *seqs);
    buf b;
    buf_init(&b);
    size_t n_seqs = 0, from = 0;
    size_t accepted = w->accepted, duplicates = w->duplicates, refused = w->refused;
    bool again = false;
    for (size_t i = 0; seqs && i < w->n_batch_seqs; i++) {
        const api_batch_seq *at = &w->batch_seqs[i];
        buf_append(&b, w->batch_results + from, at->start - from);
        from = at->end;
        engine_refusal why = engine_refused(a->engine, at->seq);
        if (why == ENGINE_NOT_REFUSED) {
            seqs[n_seqs++] = (api_batch_seq){ b.len, b.len + (at->mid - at->start),
                                              b.len + (at->end - at->start), at->seq,
                                              at->duplicate, at->item };
            buf_append(&b, w->batch_results + at->start, at->end - at->start);
            continue;
        }
        if (why == ENGINE_REFUSED_SUPERSEDED && cb) {
            again = true;
            if (batch_item_again(a, w, cb, at, &b, &seqs[n_seqs]))
                n_seqs++;
            continue;
        }
        const problem_type *t = problems_get(PROBLEM_WRITE_REFUSED);
        buf_append(&b, w->batch_results + at->start, at->mid - at->start);
        buf_printf(&b, ",\"code\":%d,\"problem\":", t->status);
        codec_problem(&b, t->status, t->slug, t->title, API_WRITE_REFUSED_DETAIL, NULL, false);
        buf_append(&b, "}", 1);
        if (at->duplicate)
            w->duplicates--;
        else
            w->accepted--;
        w->refused++;
    }
    codec_batch_free(cb);
    size_t len = 0;
    if (seqs)
        buf_append(&b, w->batch_results + from, w->batch_results_len - from);
    char *results = seqs ? buf_steal(&b, &len) : NULL;
    if (!results) {
        buf_free(&b);
        free(seqs);
        /* The counts as they were; an item judged again stays judged (its row is queued). */
        w->accepted = accepted;
        w->duplicates = duplicates;
        w->refused = refused;
        return -1;
    }
    free(w->batch_results);
    w->batch_results = results;
    w->batch_results_len = len;
    free(w->batch_seqs);
    w->batch_seqs = seqs;
    w->n_batch_seqs = n_seqs;
    /* last_seq: the highest seq a result still shows (an item refused lost its). */
    w->seq = 0;
    for (size_t i = 0; i < n_seqs; i++)
        if (seqs[i].seq > w->seq)
            w->seq = seqs[i].seq;
    /* Judged once: a second refusal is answered as one. */
    free(w->body);
    w->body = NULL;
    return again ? 1 : 0;
}

/* The highest seq of w's items (with duplicates or not) not durable yet; 0 when none. */
static int64_t batch_pending_seq(api *a, const struct api_wait *w, bool duplicates)
{
    engine_durability d = engine_durability_now(a->engine);
    int64_t wait_seq = 0;
    for (size_t i = 0; i < w->n_batch_seqs; i++) {
        const api_batch_seq *at = &w->batch_seqs[i];
        if ((duplicates || !at->duplicate) && at->seq > wait_seq &&
            !engine_durability_covers(&d, at->seq))
            wait_seq = at->seq;
    }
    return wait_seq;
}

int64_t api_batch_wait_seq(api *a, const struct api_wait *w)
{
    return batch_pending_seq(a, w, true);
}

int api_batch_status(api *a, const struct api_wait *w, bool durable)
{
    /* A duplicate changes nothing: only an accepted item still queued makes it a 202. */
    return !durable && batch_pending_seq(a, w, false) != 0 ? 202 : 200;
}

bool api_batch_answer(api *a, api_response *resp, struct api_wait *w, int64_t wait_seq,
                      bool wait, double timeout)
{
    bool durable = wait_seq == 0;
    if (wait && !durable) {
        park(resp, w, wait_seq, timeout);
        return true;
    }
    api_batch_response(resp, api_batch_status(a, w, durable), w, durable);
    return false;
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
    if (body_too_costly(a, req, resp))
        return;
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
    /*
     * Kept before durability is looked at: the writer may commit the batch
     * (and the store refuse an item as superseded) before the look.
     */
    if (wait && engine_shared(a->engine))
        keep_body(w, req->body ? req->body : "", req->body_len, timeout);
    /* Durable at once: an item the store refused meanwhile is judged again or named. */
    int64_t wait_seq = api_batch_wait_seq(a, w);
    int marked = wait_seq == 0 ? api_batch_mark_refused(a, w) : 0;
    if (marked < 0) {
        api_answer_problem(resp, PROBLEM_OUT_OF_MEMORY, "out of memory rendering the answer");
        goto done;
    }
    if (marked > 0)
        wait_seq = api_batch_wait_seq(a, w); /* an item judged again may be queued anew */
    if (api_batch_answer(a, resp, w, wait_seq, wait, timeout))
        w = NULL; /* the wait keeps it */
done:
    api_wait_free(w);
    free(results);
    free(items);
    codec_batch_free(cb);
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
    if (res == ENGINE_ACCEPTED && wait) {
        park(resp, w, w->seq, timeout);
        return;
    } else if (res == ENGINE_ACCEPTED) {
        api_deleted_response(resp, 202, w, false);
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
    char v[API_QUERY_VALUE_MAX + 1];
    int has = api_query_arg(req, resp, "format", v);
    if (has < 0)
        return;
    const char *format = has ? v : NULL;
    if (format && strcmp(format, "json") != 0 && strcmp(format, "prometheus") != 0) {
        api_answer_problem(resp, PROBLEM_INVALID_QUERY,
                           "query parameter \"format\" must be json or prometheus");
        return;
    }
    render_stats(a, resp, wants_json(req, format));
    /* Without ?format= the Accept header chose the body: a cache must key on it. */
    if (!format)
        resp->vary = "Accept";
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
