/*
 * api: the REST resources of the service, with no MHD and no SQLite. The
 * HTTP transport hands over one whole request (method, path, body, and
 * lookups for headers and query arguments) and gets back one response (status,
 * content type, body, a few headers). The route table lives in router.c, the
 * handlers in handlers.c and handlers_read.c, responses are built in api.c
 * (api_internal.h is what they share); every problem answer is one of
 * problems.h; JSON goes through codec, Prometheus text through prom.
 *
 * A POST with ?wait=true is answered in two steps: api_handle returns a
 * response whose wait_seq is set; the transport parks the request until the
 * engine's durable seq reaches wait_seq or wait_timeout passes, then calls
 * api_finish_wait to turn it into the final 200 (durable) or 202. Once
 * only, api_finish_wait may set wait_seq again (an update a shared store
 * refused as superseded, judged again and queued again): the transport
 * parks it again, as it did the first time.
 *
 * Watching a run is answered in two steps too. GET /runs/{run_id}/events
 * returns a response with events set (checked, the run found or its delete
 * missed, not counted yet): the transport opens the stream of the run's
 * changes (server/http/watch.h), asks api_missed_delete once its watcher
 * sees every later change, and counts it with api_count_status. HEAD gets
 * the same response; the transport sends the stream's headers alone. A long
 * poll, GET /runs/{run_id}/nodes?since=N&wait=S that finds nothing above N,
 * returns poll_wait > 0: the transport parks it until a change of the run or
 * S seconds, then calls api_handle again (with no_wait once the time is up).
 *
 * Every final answer (api_handle's when not parked, api_finish_wait's,
 * api_problem's) is counted by status code in the engine's stats.
 */
#ifndef NODESTATE_API_H
#define NODESTATE_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h> /* ssize_t */

#include "engine.h"
#include "problems.h"

typedef struct api api;

typedef struct api_config {
    size_t max_body_bytes;   /* the transport answers 413 above this */
    size_t max_error_bytes;  /* longest last_error */
    size_t max_batch_updates;    /* most items in one batch (POST /runs/{run_id}/nodes) */
    size_t max_batch_body_bytes; /* the transport answers 413 above this for a batch */
    double max_wait;         /* cap on ?timeout= seconds */
    double default_wait;     /* ?wait=true without ?timeout= */
    const char *token;       /* bearer token every route but /healthz needs; NULL: no auth */
} api_config;

typedef struct api_request {
    const char *method;
    const char *path;        /* path as sent (not percent-decoded), no query string */
    const char *body;        /* NULL when there is none */
    size_t body_len;
    /*
     * The value of the nth line (0 the first) of the header with this
     * case-insensitive name, or NULL when it has fewer lines.
     */
    const char *(*header)(void *ctx, const char *name, size_t nth);
    /*
     * Query argument by name as sent, still percent-encoded (the api decodes
     * it; '+' may already be ' '), or NULL (present without value: "").
     */
    const char *(*query)(void *ctx, const char *name);
    void *ctx;
    bool no_wait;            /* a long poll's time is up: answer what there is */
} api_request;

/*
 * A body read as it is sent, instead of api_response.body: the transport
 * calls read for the bytes from pos on (how many, -1 on an error that
 * must cut the answer short) until size bytes have gone, then close once,
 * sent or not. api_response_free closes a stream the transport did not take.
 */
typedef struct api_stream {
    ssize_t (*read)(void *ctx, uint64_t pos, char *buf, size_t n);
    void (*close)(void *ctx);
    void *ctx;
    uint64_t size;
} api_stream;

typedef struct api_response {
    int status;
    const char *content_type;  /* static string; NULL with no body */
    char *body;                /* malloc'd; api_response_free frees it */
    size_t body_len;
    char etag[32];             /* "" for none, else a quoted entity tag */
    unsigned retry_after;      /* seconds; 0 for no Retry-After */
    const char *allow;         /* Allow header of a 405, else NULL */
    const char *www_authenticate; /* WWW-Authenticate of a 401, else NULL */
    const char *vary;          /* Vary: the request headers the body was chosen by, or NULL */
    api_stream stream;         /* .read != NULL: the body (content_type set, body NULL) */
    char disposition[96];      /* Content-Disposition, or "" for none */
    int64_t wait_seq;          /* > 0: park until durable (see above) */
    double wait_timeout;       /* seconds to park at most */
    struct api_wait *wait;     /* api's own: what to answer with once parked */
    bool events;               /* GET or HEAD .../events: stream watch_run's changes (see above) */
    bool events_durable;       /*   ?durable=true: only committed changes */
    int64_t since;             /* stream or poll: the changes above this seq */
    double poll_wait;          /* > 0: long poll with nothing yet; seconds to wait at most */
    char watch_run[NS_ID_MAX + 1]; /* the run of a stream or poll */
} api_response;

/* cfg->token is copied. NULL when out of memory. */
api *api_new(engine *e, const api_config *cfg);
void api_free(api *a);
/* Answers one request; never fails (out of memory becomes a 500). */
void api_handle(api *a, const api_request *req, api_response *resp);
/*
 * Finishes a parked ?wait=true response: 200 durable or 202 not yet, or
 * parked again (wait_seq set, see above).
 */
void api_finish_wait(api *a, api_response *resp, bool durable);
/*
 * A problem+json response the transport itself decides on (bad-framing,
 * body-too-large, out-of-memory); a 400 or 413 counts as an update refused
 * for bad input, a 503 gets Retry-After.
 */
void api_problem(api *a, api_response *resp, problem_id id, const char *detail);
void api_response_free(api_response *resp);
/*
 * The largest body the transport takes for this method and path (before
 * reading it): max_batch_body_bytes for a batch of updates, else
 * max_body_bytes.
 */
size_t api_body_limit(const api *a, const char *method, const char *path);
/*
 * Whether api_handle will answer req 401 whatever its body: its path needs
 * the token (every one but /healthz, and a path of no route) and req has
 * none or a wrong one. The transport asks with the headers only (body
 * NULL), so that a client without the token cannot make it store a body,
 * nor be told to send one.
 */
bool api_auth_refused(const api *a, const api_request *req);
/* Counts an answer the transport gives on the api's word (a stream's 200). */
void api_count_status(api *a, int status);
/*
 * A watcher of run_id resuming from since (> 0) that missed the run's
 * delete, whether or not the run was written anew since: that delete's
 * seq, else 0 (since 0 missed nothing: it asks for all there is).
 * *committed: it is on record in the store.
 */
int64_t api_missed_delete(api *a, const char *run_id, int64_t since, bool *committed);
/* A node's JSON exactly as GET .../state answers it (malloc'd, *len bytes), or NULL. */
char *api_node_json(const ns_row *row, bool durable, size_t *len);

#endif
