/*
 * The handlers that read: GET of a node, a run's nodes (a page, or what
 * changed since a seq, as a long poll), a run's summary, and the checks
 * before a run's event stream. Separate from handlers.c, which answers the
 * writes and the service's own routes (stats, health, backup): reads share
 * nothing with them but the query helpers of api_internal.h.
 */
#include "api_internal.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

/* Page sizes of GET /runs/{run_id}/nodes (README "API in short"). */
#define LIST_DEFAULT_LIMIT 1000
#define LIST_MAX_LIMIT 10000

/* Whether one If-None-Match line matches the entity tag etag ("*" or one of a list). */
static bool etag_line_matches(const char *inm, const char *etag)
{
    size_t n = strlen(etag);
    for (const char *p = inm; *p;) {
        p += strspn(p, " \t,");
        if (*p == '*')
            return true;
        if (strncmp(p, "W/", 2) == 0)
            p += 2;
        /* strchr finds the terminating NUL too: a tag at the line's end. */
        if (strncmp(p, etag, n) == 0 && strchr(" \t,", p[n]))
            return true;
        p += strcspn(p, ",");
    }
    return false;
}

/*
 * Whether the request's If-None-Match matches resp's ETag: a list may
 * come on several header lines (RFC 9110 5.3), each one is looked at.
 */
static bool not_modified(const api_request *req, const api_response *resp)
{
    const char *line;
    for (size_t i = 0; (line = api_header_line(req, "If-None-Match", i)) != NULL; i++)
        if (etag_line_matches(line, resp->etag))
            return true;
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
    /* A 304 carries the body a 200 would: its Content-Length must be that one's (RFC 9110 8.6). */
    api_row_response(resp, not_modified(req, resp) ? 304 : 200, row, durable);
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
        if (*p == ',' && !*++p)
            return 0; /* a trailing comma names nothing */
    }
    return mask;
}

/*
 * since as this server can answer it. One above every seq it has handed
 * out comes from a timeline it does not know: the database was restored
 * from a backup older than what the client saw, or another instance of a
 * shared store handed it out. Nothing then says which of the run's nodes
 * the client has seen, so it gets them all again rather than nothing until
 * the seqs catch up.
 */
static int64_t since_known(api *a, int64_t since)
{
    return since > engine_durability_now(a->engine).last_seq ? 0 : since;
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

/* Orders rows by node_id, then seq. */
static int row_node_seq_cmp(const void *x, const void *y)
{
    const ns_row *a = *(ns_row *const *)x, *b = *(ns_row *const *)y;
    int c = strcmp(a->node_id, b->node_id);
    return c ? c : (a->seq > b->seq) - (a->seq < b->seq);
}

/*
 * since_scan's collector: the rows above since with the lowest seqs, at
 * most limit of them and ENGINE_PAGE_MAX_BYTES (at least one), as a
 * max-heap by seq. A row that does not fit (the highest of those seen)
 * lowers cut to its seq: every row seen below cut is kept, so the answer is
 * whole below cut, and nothing at or above it may be answered (a client
 * asking again from the highest seq it got would never see the rows left
 * out). The answer is bounded so, not by the run: asking from 0 on a run
 * too big to cache held a copy of all of it.
 */
typedef struct since_rows {
    engine_page *all;
    size_t cap, limit, bytes, max_bytes;
    int64_t since;
    int64_t cut;        /* the lowest seq left out; INT64_MAX: none */
} since_rows;

static void heap_swap(ns_row **v, size_t i, size_t j)
{
    ns_row *t = v[i];
    v[i] = v[j];
    v[j] = t;
}

/* Drops the highest seq (the heap's top), lowering s->cut to it. */
static void since_drop_top(since_rows *s)
{
    ns_row **v = s->all->rows;
    size_t n = --s->all->count;
    ns_row *top = v[0];
    if (top->seq < s->cut)
        s->cut = top->seq;
    s->bytes -= model_row_bytes(top);
    model_row_unref(top);
    v[0] = v[n];
    for (size_t i = 0;;) {
        size_t l = 2 * i + 1, r = l + 1, big = i;
        if (l < n && v[l]->seq > v[big]->seq)
            big = l;
        if (r < n && v[r]->seq > v[big]->seq)
            big = r;
        if (big == i)
            break;
        heap_swap(v, i, big);
        i = big;
    }
}

static int since_keep(void *ctx, ns_row *r)
{
    since_rows *s = ctx;
    if (r->seq <= s->since || r->seq >= s->cut)
        return 0;
    model_row_ref(r);
    if (engine_page_push(s->all, &s->cap, r) != 0) {
        model_row_unref(r);
        return -1;
    }
    s->bytes += model_row_bytes(r);
    ns_row **v = s->all->rows;
    for (size_t i = s->all->count - 1; i > 0 && v[(i - 1) / 2]->seq < v[i]->seq; i = (i - 1) / 2)
        heap_swap(v, i, (i - 1) / 2);
    while (s->all->count > s->limit || (s->all->count > 1 && s->bytes > s->max_bytes))
        since_drop_top(s);
    return 0;
}

/*
 * The run's nodes with seq > since into *all (references held), at most
 * limit and max_bytes of the lowest seqs, in node_id order; *cut as
 * since_rows says. Page by page: there is no index by seq, so a run is
 * scanned once per ask, each page under its own hold of the engine's lock
 * (a run of 100,000 nodes must not hold it for all of them).
 */
static engine_result since_scan(engine *e, const char *run_id, unsigned mask, int64_t since,
                                size_t limit, size_t max_bytes, engine_page *all, int64_t *cut)
{
    *all = (engine_page){ 0 };
    since_rows s = { .all = all, .limit = limit, .max_bytes = max_bytes, .since = since,
                     .cut = INT64_MAX };
    engine_result res = engine_scan(e, run_id, mask, LIST_MAX_LIMIT, since_keep, &s);
    if (all->count > 1)
        qsort(all->rows, all->count, sizeof *all->rows, row_node_seq_cmp);
    *cut = s.cut;
    return res;
}


static int row_node_key_cmp(const void *key, const void *y)
{
    return strcmp(key, (*(ns_row *const *)y)->node_id);
}

/*
 * Makes all (since_scan's: node_id order) what the run held when its
 * follow ended: each node's newest state among changes replaces what a
 * page read (or leaves it out when outside mask), or joins it. A node read
 * before it moved on is then never missing while a later one shows a
 * newer seq, and one that keeps moving is still there: a client asking
 * again from the highest seq it got misses no node's latest state. changes
 * is sorted in place; its references stay its own. 0, or -1 out of memory.
 */
static int since_merge(engine_page *all, engine_page *changes, unsigned mask, int64_t since)
{
    size_t n = all->count, extra = 0;
    if (changes->count == 0)
        return 0;
    ns_row **grown = realloc(all->rows, (n + changes->count) * sizeof *grown);
    bool *out = calloc(n + 1, sizeof *out);    /* read, but now outside mask */
    if (grown)
        all->rows = grown;
    if (!grown || !out) {
        free(out);
        return -1;
    }
    qsort(changes->rows, changes->count, sizeof *changes->rows, row_node_seq_cmp);
    for (size_t i = 0; i < changes->count; i++) {
        ns_row *c = changes->rows[i];
        if (i + 1 < changes->count && strcmp(changes->rows[i + 1]->node_id, c->node_id) == 0)
            continue; /* a newer one of the same node follows */
        bool wanted = (mask & (1u << c->status)) && c->seq > since;
        ns_row **at = n ? bsearch(c->node_id, all->rows, n, sizeof *all->rows,
                                  row_node_key_cmp)
                        : NULL;
        if (at) {
            /* Replaced in place even when it goes, so the order bsearch needs holds. */
            model_row_unref(*at);
            model_row_ref(c);
            *at = c;
            out[at - all->rows] = !wanted;
        } else if (wanted) {
            model_row_ref(c);
            all->rows[n + extra++] = c;
        }
    }
    size_t kept = 0;
    for (size_t i = 0; i < n + extra; i++) {
        if (i < n && out[i])
            model_row_unref(all->rows[i]);
        else
            all->rows[kept++] = all->rows[i];
    }
    all->count = kept;
    free(out);
    return 0;
}

/* Keeps the rows of all whose seq is in [lo, hi), dropping the others. */
static void since_keep_between(engine_page *all, int64_t lo, int64_t hi)
{
    size_t kept = 0;
    for (size_t i = 0; i < all->count; i++) {
        if (all->rows[i]->seq < lo || all->rows[i]->seq >= hi)
            model_row_unref(all->rows[i]);
        else
            all->rows[kept++] = all->rows[i];
    }
    all->count = kept;
}

/*
 * Leaves out of all the rows at or above cut (since_rows: they moved on
 * during the scan, past rows it left out). True when that leaves nothing
 * though rows were left out: the answer would say "nothing above since".
 */
static bool since_cut(engine_page *all, int64_t cut)
{
    since_keep_between(all, INT64_MIN, cut);
    return all->count == 0 && cut != INT64_MAX;
}

int64_t api_missed_delete(api *a, const char *run_id, int64_t since, bool *committed)
{
    *committed = true;
    if (since <= 0)
        return 0;
    int64_t seq = engine_deleted_seq(a->engine, run_id, committed);
    return seq > since ? seq : 0;
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
    since = since_known(a, since);
    double wait = 0;
    char w[API_QUERY_VALUE_MAX + 1];
    int has = api_query_arg(req, resp, "wait", w);
    if (has < 0)
        return;
    if (has) {
        if (api_seconds_value(w, &wait) != 0) {
            api_answer_problem(resp, PROBLEM_INVALID_QUERY,
                               "query parameter \"wait\" must be a number of seconds >= 0");
            return;
        }
        if (wait > a->cfg.max_wait)
            wait = a->cfg.max_wait;
    }
    /*
     * Followed while it is scanned, so that nodes moving on between two
     * pages are read as the follow leaves them (since_merge). A follow
     * broken by a delete of the run (or memory) is tried again.
     */
    engine_page all = { 0 };
    engine_result res = ENGINE_ERROR;
    for (int tries = 0; tries < 3; tries++) {
        engine_follow *f = engine_follow_begin(a->engine, args->run_id);
        if (!f)
            break;
        /*
         * Each try keeps more: kept nodes that keep moving past the cut
         * (a few hot ones, a small limit) must not empty every answer.
         */
        size_t keep = tries == 0 ? limit : tries == 1 ? limit * 16 + 256 : LIST_MAX_LIMIT;
        size_t max_bytes = (size_t)ENGINE_PAGE_MAX_BYTES << (tries == 2 ? 3 : 0);
        int64_t cut;
        res = since_scan(a->engine, args->run_id, mask, since,
                         keep < LIST_MAX_LIMIT ? keep : LIST_MAX_LIMIT, max_bytes, &all, &cut);
        engine_page changes;
        bool whole = engine_follow_end(a->engine, f, &changes);
        if (res == ENGINE_ACCEPTED && whole && since_merge(&all, &changes, mask, since) != 0)
            res = ENGINE_ERROR;
        engine_page_free(&changes);
        if (res == ENGINE_ACCEPTED && whole && since_cut(&all, cut) && tries < 2)
            whole = false; /* every node kept moved past the cut: look again */
        if (res != ENGINE_ACCEPTED || whole)
            break;
        engine_page_free(&all);
        res = ENGINE_ERROR;
    }
    /*
     * After the scan: a delete that came before it, or during it, is on
     * record by now, so a client is never handed the new run's nodes as if
     * the old ones were still there.
     */
    bool committed;
    int64_t deleted = res == ENGINE_ACCEPTED
                      ? api_missed_delete(a, args->run_id, since, &committed) : 0;
    /* A delete after the scan: what it read below it is the old run's, gone. */
    if (res == ENGINE_ACCEPTED && deleted > 0)
        since_keep_between(&all, deleted, INT64_MAX);
    if (api_run_read_ok(resp, res, "listing the run")) {
        if (all.count > 1)
            qsort(all.rows, all.count, sizeof *all.rows, row_seq_cmp);
        /* The lowest seqs, at most limit and 8 MiB: the client asks again from the last. */
        engine_page_cut(&all, limit);
        all.more = false; /* next stays null: the cursor of ?since= is the last seq */
        buf b;
        buf_init(&b);
        engine_durability d = engine_durability_now(a->engine);
        codec_page(&b, args->run_id, &all, &d, deleted);
        api_respond(resp, 200, API_JSON_TYPE, &b);
        if (all.count == 0 && deleted == 0 && wait > 0 && !req->no_wait) {
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
    char st[API_QUERY_VALUE_MAX + 1];
    int has = api_query_arg(req, resp, "status", st);
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
    char l[API_QUERY_VALUE_MAX + 1];
    has = api_query_arg(req, resp, "limit", l);
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
    char after_value[API_QUERY_VALUE_MAX + 1];
    has = api_query_arg(req, resp, "after", after_value);
    if (has < 0)
        return;
    const char *after = has ? after_value : NULL;
    if (after && !model_id_valid(after, strlen(after))) {
        api_answer_problem(resp, PROBLEM_INVALID_QUERY,
                           "query parameter \"after\" must be a node id");
        return;
    }
    char since_value[API_QUERY_VALUE_MAX + 1];
    has = api_query_arg(req, resp, "since", since_value);
    if (has < 0)
        return;
    if (has) {
        list_since(a, req, args, resp, mask, limit, after, since_value);
        return;
    }
    /* A long poll waits for nodes above a seq: without one, nothing says what to wait for. */
    char w[API_QUERY_VALUE_MAX + 1];
    if ((has = api_query_arg(req, resp, "wait", w)) != 0) {
        if (has > 0)
            api_answer_problem(resp, PROBLEM_INVALID_QUERY,
                               "query parameter \"wait\" needs \"since\" (a long poll "
                               "waits for the nodes above that seq)");
        return;
    }
    engine_page page;
    engine_result res = engine_list(a->engine, args->run_id, mask, after, limit, &page);
    if (api_run_read_ok(resp, res, "listing the run")) {
        buf b;
        buf_init(&b);
        engine_durability d = engine_durability_now(a->engine);
        codec_page(&b, args->run_id, &page, &d, 0);
        api_respond(resp, 200, API_JSON_TYPE, &b);
    }
    engine_page_free(&page);
}

void api_get_run(api *a, const api_request *req, const route_args *args,
                 api_response *resp)
{
    engine_summary s;
    engine_result res = engine_summarize(a->engine, args->run_id, &s);
    if (!api_run_read_ok(resp, res, "reading the run"))
        return;
    /*
     * A summary does not say what is durable: its tag is the seq alone.
     * With a shared store seqs come in blocks per instance, so a node added
     * below the run's last seq changes the summary and not the tag: no 304.
     */
    api_set_etag(resp, s.last_seq, false);
    buf b;
    buf_init(&b);
    codec_summary(&b, args->run_id, &s);
    api_respond(resp, !engine_shared(a->engine) && not_modified(req, resp) ? 304 : 200,
                API_JSON_TYPE, &b);
}

/*
 * GET /runs/{run}/events: checks what a stream needs (api.h); the
 * transport streams. Last-Event-ID, which an EventSource sends when it
 * reconnects, wins over ?since=. HEAD is checked the same way.
 */
void api_watch_run(api *a, const api_request *req, const route_args *args,
                   api_response *resp)
{
    int64_t since = 0;
    char v[API_QUERY_VALUE_MAX + 1];
    int has = api_query_arg(req, resp, "since", v);
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
    since = since_known(a, since);
    has = api_query_arg(req, resp, "durable", v);
    if (has < 0)
        return;
    int durable = has ? api_flag_value(v) : 0;
    if (durable < 0) {
        api_answer_problem(resp, PROBLEM_INVALID_QUERY,
                           "query parameter \"durable\" must be true or false");
        return;
    }
    engine_page page;
    engine_result res = engine_list(a->engine, args->run_id, (1u << NS_STATUS_COUNT) - 1,
                                    NULL, 1, &page);
    engine_page_free(&page);
    /* Gone, but deleted after the client's since: the stream tells it so (the transport looks again). */
    bool committed;
    if (res == ENGINE_NOT_FOUND && api_missed_delete(a, args->run_id, since, &committed) > 0)
        res = ENGINE_ACCEPTED;
    if (!api_run_read_ok(resp, res, "reading the run"))
        return;
    /* HEAD too: the transport answers it with a stream's status and headers, and opens none. */
    resp->status = 200;
    resp->content_type = API_EVENT_STREAM_TYPE;
    resp->events = true;
    resp->events_durable = durable == 1;
    resp->since = since;
    snprintf(resp->watch_run, sizeof resp->watch_run, "%s", args->run_id);
}
