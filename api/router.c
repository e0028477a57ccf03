#include "api_internal.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "text.h"

/*
 * The route table and what every request goes through before its handler:
 * the token, the path's match, the method, the ids, and for an update the
 * media type. What a route needs besides its handlers is a flag on its
 * entry, never a comparison with its path.
 */

/* Bytes of a refused method shown in the 405 detail. */
#define METHOD_SHOWN 32

static const api_route routes[] = {
    { { "runs", "{run}", "nodes", "{node}", "state" }, "GET, HEAD, POST", ROUTE_UPDATE,
      api_get_state, api_post_state, NULL },
    { { "runs", "{run}", "nodes" }, "GET, HEAD, POST", ROUTE_UPDATE | ROUTE_BATCH,
      api_list_nodes, api_post_batch, NULL },
    { { "runs", "{run}", "events" }, "GET, HEAD", 0, api_watch_run, NULL, NULL },
    { { "runs", "{run}" }, "GET, HEAD, DELETE", 0, api_get_run, NULL, api_delete_run },
    { { "stats" }, "GET, HEAD", 0, api_get_stats, NULL, NULL },
    { { "metrics" }, "GET, HEAD", 0, api_get_metrics, NULL, NULL },
    { { "healthz" }, "GET, HEAD", ROUTE_NO_AUTH, api_get_healthz, NULL, NULL },
    { { "readyz" }, "GET, HEAD", 0, api_get_readyz, NULL, NULL },
    { { "backup" }, "GET, HEAD", 0, api_get_backup, NULL, NULL },
};

const api_route *api_routes(size_t *count)
{
    *count = sizeof routes / sizeof *routes;
    return routes;
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

/* Where the request's bearer token stands. */
typedef enum auth_verdict {
    AUTH_OK,       /* no token configured, or the right one given */
    AUTH_MISSING,  /* no "Authorization: Bearer" header */
    AUTH_INVALID,  /* a bearer token that is not the configured one */
} auth_verdict;

static auth_verdict auth_check(const api *a, const api_request *req)
{
    if (!a->token)
        return AUTH_OK;
    const char *auth = api_header(req, "Authorization");
    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0)
        return AUTH_MISSING;
    const char *given = auth + 7;
    while (*given == ' ')
        given++;
    size_t n = strlen(given);
    while (n > 0 && given[n - 1] == ' ')
        n--;
    return token_matches(a, given, n) ? AUTH_OK : AUTH_INVALID;
}

/* Whether the request may go on; otherwise answers 401 in resp. */
static bool authorized(const api *a, const api_request *req, api_response *resp)
{
    switch (auth_check(a, req)) {
    case AUTH_OK:
        return true;
    case AUTH_INVALID:
        api_answer_problem(resp, PROBLEM_UNAUTHORIZED, "the bearer token is not valid");
        resp->www_authenticate = "Bearer realm=\"nodestate\", error=\"invalid_token\"";
        return false;
    case AUTH_MISSING:
        break;
    }
    api_answer_problem(resp, PROBLEM_UNAUTHORIZED,
                       "this service needs an Authorization: Bearer <token> header");
    resp->www_authenticate = "Bearer realm=\"nodestate\"";
    return false;
}

/* Whether a request to rt (NULL: no route) must carry the token. */
static bool needs_token(const api_route *rt)
{
    return !(rt && (rt->flags & ROUTE_NO_AUTH));
}

/* ---- matching ---- */

/*
 * Splits "/a/b/c" into at most API_MAX_SEGMENTS segments; -1 for more or no
 * leading '/'. A segment may be empty ("/runs//nodes"): where a route has an
 * id, that is an invalid id (400), not an unknown path.
 */
static int split_path(const char *path, const char *seg[API_MAX_SEGMENTS],
                      size_t len[API_MAX_SEGMENTS])
{
    if (path[0] != '/')
        return -1;
    int n = 0;
    const char *p = path + 1;
    for (;;) {
        size_t l = strcspn(p, "/");
        if (n == API_MAX_SEGMENTS)
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
static const api_route *match(const char *path, route_args *args, const char **bad_id,
                              bool *encoded)
{
    const char *seg[API_MAX_SEGMENTS];
    size_t len[API_MAX_SEGMENTS];
    *bad_id = NULL;
    *encoded = false;
    int n = split_path(path, seg, len);
    if (n < 0)
        return NULL;
    for (size_t r = 0; r < sizeof routes / sizeof *routes; r++) {
        const api_route *rt = &routes[r];
        int m = 0;
        while (m < API_MAX_SEGMENTS && rt->pattern[m])
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

/* ---- dispatching ---- */

/*
 * application/json, application/<x>+json, optional parameters; absent is
 * taken as JSON. A subtype holds no '/': "application/vnd.a/b+json" is no
 * media type at all.
 */
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
           strncasecmp(ct + n - 5, "+json", 5) == 0 && memchr(ct + 12, '/', n - 12) == NULL;
}

bool api_auth_refused(const api *a, const api_request *req)
{
    route_args args;
    const char *bad_id;
    bool encoded;
    const api_route *rt = match(req->path, &args, &bad_id, &encoded);
    return needs_token(rt) && auth_check(a, req) != AUTH_OK;
}

size_t api_body_limit(const api *a, const char *method, const char *path)
{
    route_args args;
    const char *bad_id;
    bool encoded;
    const api_route *rt = match(path, &args, &bad_id, &encoded);
    if (rt && (rt->flags & ROUTE_BATCH) && strcmp(method, "POST") == 0)
        return a->cfg.max_batch_body_bytes;
    return a->cfg.max_body_bytes;
}

void api_dispatch(api *a, const api_request *req, api_response *resp)
{
    route_args args;
    const char *bad_id;
    bool encoded;
    const api_route *rt = match(req->path, &args, &bad_id, &encoded);
    /* Before the 404: without a token, no path says whether it exists. */
    if (needs_token(rt) && !authorized(a, req, resp))
        return;
    if (!rt) {
        api_answer_problem(resp, PROBLEM_NOT_FOUND, "no resource at this path");
        return;
    }
    handler_fn *h = NULL;
    if (strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0)
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
        api_answer_problem(resp, PROBLEM_METHOD_NOT_ALLOWED, detail);
        resp->allow = rt->allow;
        return;
    }
    bool update = (rt->flags & ROUTE_UPDATE) && h == rt->post;
    if (bad_id) {
        char detail[256];
        if (encoded)
            snprintf(detail, sizeof detail,
                     "%s must be sent as it is, without percent-encoding (%%): 1 to %d "
                     "bytes of A-Z a-z 0-9 . _ ~ : -", bad_id, NS_ID_MAX);
        else
            snprintf(detail, sizeof detail,
                     "%s must be 1 to %d bytes of A-Z a-z 0-9 . _ ~ : -", bad_id, NS_ID_MAX);
        if (update)
            api_count_invalid(a);
        api_answer_problem(resp, PROBLEM_INVALID_ID, detail);
        return;
    }
    if (update && !json_content_type(api_header(req, "Content-Type"))) {
        api_count_invalid(a);
        api_answer_problem(resp, PROBLEM_UNSUPPORTED_MEDIA_TYPE,
                           "the body must be JSON (Content-Type: application/json)");
        return;
    }
    h(a, req, &args, resp);
}
