/*
 * api_internal: what the files of the api module share, and nothing outside
 * api/ may use (api.h is the module's public header). api.c owns the api
 * object and builds responses; router.c matches a path to a route of its
 * table, checks the token and calls the route's handler; handlers.c answers
 * each route, the reads in handlers_read.c.
 */
#ifndef NODESTATE_API_INTERNAL_H
#define NODESTATE_API_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "buf.h"
#include "problems.h"

#define API_JSON_TYPE "application/json"
/* The detail of an update (or batch item) the database refused for good. */
#define API_WRITE_REFUSED_DETAIL                                                       \
    "the database refused this update for good; it is not stored (see the "           \
    "row-isolated log line, or row-superseded where a shared database holds a newer " \
    "state of the node)"
#define API_EVENT_STREAM_TYPE "text/event-stream"
/* Path segments of the longest route. */
#define API_MAX_SEGMENTS 5

struct api {
    engine *engine;
    api_config cfg;        /* cfg.token points at token below */
    char *token;           /* NULL: no auth */
    size_t token_len;
};

/*
 * Where an item of a batch that got a seq sits in its rendered results:
 * [start, end) is its object, start..mid its `{"node_id":"…"` part.
 */
typedef struct api_batch_seq {
    size_t start, mid, end;
    int64_t seq;
    bool duplicate;       /* counted in duplicates, not accepted */
    size_t item;          /* its index among the request's items */
} api_batch_seq;

/* What a parked ?wait=true response is rebuilt from. */
struct api_wait {
    ns_row *row;          /* node update: the row; NULL for a delete */
    bool duplicate;       /* node update: it repeated the node's (queued) state: 200 always */
    /*
     * A single update's or a batch's body, kept with a shared store to
     * judge it (or the refused items) again if the store finds a newer
     * state of the node (ENGINE_REFUSED_SUPERSEDED); NULL once judged
     * again, with SQLite, and for the other writes.
     */
    char *body;
    size_t body_len;
    int64_t deadline_ns;  /* with body: when the wait ends (model_mono_ns) */
    char run_id[NS_ID_MAX + 1];
    size_t deleted;
    int64_t seq;
    /* A batch (POST /runs/{run_id}/nodes): its results array, rendered once; NULL otherwise. */
    char *batch_results;
    size_t batch_results_len;
    /* A batch: its items with a seq, in order, to tell which were refused. */
    api_batch_seq *batch_seqs;
    size_t n_batch_seqs;
    size_t accepted, duplicates, refused;
};

/* The path parameters a route captured. */
typedef struct route_args {
    char run_id[NS_ID_MAX + 1];
    char node_id[NS_ID_MAX + 1];
} route_args;

typedef void handler_fn(api *a, const api_request *req, const route_args *args,
                        api_response *resp);

/* What a route does besides calling its handlers. */
enum route_flag {
    /* Answered without a token: liveness stays open so orchestrators can probe it. */
    ROUTE_NO_AUTH = 1u << 0,
    /*
     * Its POST is a node update: the body must be JSON (else 415), and a
     * refusal for bad input counts in updates_rejected.invalid.
     */
    ROUTE_UPDATE = 1u << 1,
    /* Its POST takes many updates: the body may reach max_batch_body_bytes. */
    ROUTE_BATCH = 1u << 2,
};

typedef struct api_route {
    const char *pattern[API_MAX_SEGMENTS]; /* "{run}" and "{node}" capture ids */
    const char *allow;                     /* the methods of the handlers below */
    unsigned flags;                        /* enum route_flag bits */
    handler_fn *get;                       /* GET and HEAD */
    handler_fn *post;
    handler_fn *del;
} api_route;

/* ---- router.c ---- */

/* The route table, *count entries. */
const api_route *api_routes(size_t *count);
/* Routes one request to its handler, or answers 401, 404, 405, 400 or 415 itself. */
void api_dispatch(api *a, const api_request *req, api_response *resp);

/* ---- api.c: building responses ---- */

/* Takes b's bytes as the body; a bodiless 500 if rendering ran out of memory. */
void api_respond(api_response *resp, int status, const char *type, buf *b);
/* The problem id with detail (NULL for none); a 503 also gets Retry-After. */
void api_answer_problem(api_response *resp, problem_id id, const char *detail);
/*
 * After a read of a whole run: true when res is ENGINE_ACCEPTED; otherwise
 * answers 404 "no such run" (ENGINE_NOT_FOUND) or 500 "<doing> failed" and
 * returns false.
 */
bool api_run_read_ok(api_response *resp, engine_result res, const char *doing);
/* As api_answer_problem, with the node's current state as "current". */
void api_answer_conflict(api_response *resp, problem_id id, const char *detail,
                         const ns_row *current, bool durable);
/* Counts an update refused for bad input (updates_rejected.invalid). */
void api_count_invalid(api *a);
void api_set_etag(api_response *resp, int64_t seq, bool queued);
bool api_is_durable(api *a, int64_t seq);
void api_row_response(api_response *resp, int status, const ns_row *row, bool durable);
void api_deleted_response(api_response *resp, int status, const struct api_wait *w,
                          bool durable);
/* A batch's answer: its counts, last_seq w->seq (0: none), durable, and its results. */
void api_batch_response(api_response *resp, int status, const struct api_wait *w,
                        bool durable);
/* Frees a wait and what it holds. */
void api_wait_free(struct api_wait *w);
/*
 * A batch found durable (at once, or when its wait ended): its items whose
 * seq the engine refused after all (engine_refused) become write-refused
 * problems in the results, and the counts follow; with its body kept (a
 * shared store), an item refused as superseded is judged again instead, as
 * if it had just arrived, and the body is dropped (judged once). 0; 1 when
 * an item was judged again (it may have been queued anew: the batch is
 * durable only if api_batch_wait_seq says so); -1 out of memory (the
 * results unchanged).
 */
int api_batch_mark_refused(api *a, struct api_wait *w);
/*
 * The seq batch w must wait on to be durable: the highest of its own seqs
 * not yet covered (engine_durability_covers; another instance's seq, found
 * as a duplicate, may be higher and on disk); 0 when it is durable now.
 */
int64_t api_batch_wait_seq(api *a, const struct api_wait *w);
/*
 * The status of batch w's answer: 202 while an accepted item is not
 * durable, else 200 (durable: whether api_batch_wait_seq found none).
 */
int api_batch_status(api *a, const struct api_wait *w, bool durable);
/*
 * Answers batch w, durable when wait_seq (api_batch_wait_seq) is 0: 202
 * when an accepted item is not durable yet, else 200 (a batch of
 * duplicates changes nothing, as a duplicate posted alone gets a 200); with
 * wait, a batch not durable yet (duplicates included, as a duplicate's
 * ?wait=true waits too) is parked on wait_seq for timeout seconds. Returns
 * whether it parked (the wait then owns w).
 */
bool api_batch_answer(api *a, api_response *resp, struct api_wait *w, int64_t wait_seq,
                      bool wait, double timeout);
/* Header value by name (its first line), or NULL. */
const char *api_header(const api_request *req, const char *name);
/* The value of the header's nth line (0 the first), or NULL past its last. */
const char *api_header_line(const api_request *req, const char *name, size_t nth);

/* ---- handlers.c: reading a request's query, for handlers_read.c too ---- */

/* Longest query value read, decoded: ours are short (an id, a status list). */
#define API_QUERY_VALUE_MAX 1024
/*
 * Query argument name, percent-decoded into out: 1 when present, 0 when
 * absent, -1 after answering 400.
 */
int api_query_arg(const api_request *req, api_response *resp, const char *name,
                  char out[API_QUERY_VALUE_MAX + 1]);
/* A boolean query flag's value: "", "true", "1" true; "false", "0" false; -1 otherwise. */
int api_flag_value(const char *v);
/*
 * A number of seconds >= 0 written in plain decimal ("5", "0.25", ".5",
 * "1e1"): 0 with *out, or -1 (a sign, blanks, hex, inf, nan, too large).
 */
int api_seconds_value(const char *v, double *out);

/* ---- handlers.c and handlers_read.c: one per route and method ---- */

handler_fn api_get_state;
handler_fn api_post_state;
/*
 * A single update to run_id/node_id judged again against the stored state
 * (api_finish_wait, after a shared store refused it as superseded): answered
 * as api_post_state would, except that it waits at most timeout seconds and
 * is never judged a third time.
 */
void api_post_state_again(api *a, const char *run_id, const char *node_id, const char *body,
                          size_t len, double timeout, api_response *resp);
handler_fn api_post_batch;
handler_fn api_list_nodes;
handler_fn api_get_run;
handler_fn api_delete_run;
handler_fn api_get_stats;
handler_fn api_get_metrics;
handler_fn api_get_healthz;
handler_fn api_get_readyz;
handler_fn api_get_backup;
handler_fn api_watch_run;

#endif
