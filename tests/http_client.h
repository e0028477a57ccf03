/*
 * http_client: HTTP requests to a test's server over libcurl keep-alive
 * handles, and the answers as the tests read them (status, body and the few
 * headers they check). A client is for one thread at a time; the server's
 * own client (ns_req and the helpers on ns_server) is for its main thread.
 * Functions return 0 / -1 (or NULL) and never assert.
 */
#ifndef NODESTATE_HTTP_CLIENT_H
#define NODESTATE_HTTP_CLIENT_H

#include <stddef.h>

#include "server.h"

/* One HTTP answer. Zero it before the first use; ns_*req frees the old body. */
typedef struct ns_resp {
    long status;               /* HTTP status; 0 when the request failed */
    char *body;                /* NUL-terminated, "" when empty (malloc'd) */
    size_t body_len;
    char content_type[256];    /* selected response headers, "" when absent */
    char etag[128];
    char retry_after[64];
    char allow[256];
    char www_authenticate[256];
    char vary[128];
    char content_length[32];
    char error[256];           /* transport error when status == 0 */
} ns_resp;

/*
 * libcurl's process-wide set-up, counted: each ns_start pairs one init with
 * the cleanup in ns_free. 0 or -1.
 */
int ns_http_global_init(void);
void ns_http_global_cleanup(void);

/* A keep-alive client of its own, for one thread at a time. */
ns_client *ns_client_new(const ns_server *s);
/* The same for whatever listens on 127.0.0.1:port (a proxy in front of servers). */
ns_client *ns_client_new_port(int port);
void ns_client_free(ns_client *c);
/*
 * One request: method, path (with query), body (NULL for none; when given it
 * is sent with Content-Type: application/json unless headers set one; a
 * header "Content-Type:" with no value sends none), extra headers as a
 * NULL-terminated list ("Name: value") or NULL. Returns 0 when an HTTP answer
 * came (any status), -1 when the request failed (out->error tells why).
 */
int ns_client_req(ns_client *c, const char *method, const char *path,
                  const char *body, const char *const *headers, ns_resp *out);
/* The same with a body of body_len bytes (may hold NULs). */
int ns_client_req_len(ns_client *c, const char *method, const char *path,
                      const char *body, size_t body_len,
                      const char *const *headers, ns_resp *out);
/* ns_client_req on the server's own client: main thread only. */
int ns_req(ns_server *s, const char *method, const char *path,
           const char *body, const char *const *headers, ns_resp *out);
/* ns_client_req_len on the server's own client: main thread only. */
int ns_req_len(ns_server *s, const char *method, const char *path,
               const char *body, size_t body_len, const char *const *headers,
               ns_resp *out);
/*
 * Repeats the request without a body on s's client (every ~step_ms, at most
 * timeout_s seconds and a bounded number of rounds) until it is answered
 * with status want. 0 when it was; -1 when not in time. The last answer
 * stays in out either way.
 */
int ns_req_until(ns_server *s, const char *method, const char *path,
                 long want, ns_resp *out, double timeout_s, long step_ms);
/* POST /runs/{run}/nodes/{node}/state{query} with a JSON body, on s's client. */
int ns_post_state(ns_server *s, const char *run, const char *node,
                  const char *query, const char *json, ns_resp *out);
int ns_client_post_state(ns_client *c, const char *run, const char *node,
                         const char *json, ns_resp *out);
/* GET /runs/{run}/nodes/{node}/state on s's client. */
int ns_get_state(ns_server *s, const char *run, const char *node, ns_resp *out);
void ns_resp_free(ns_resp *r);

#endif
