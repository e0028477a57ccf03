/*
 * json_check: reading the JSON the server answers with: the body of an
 * answer parsed, members read by type, an RFC 9457 problem checked whole, and
 * the RFC 3339 timestamps the answers carry turned into milliseconds. The
 * functions report and never assert.
 */
#ifndef NODESTATE_JSON_CHECK_H
#define NODESTATE_JSON_CHECK_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "http_client.h"

/* The body parsed as JSON (json_decref it), or NULL when it is not JSON. */
json_t *ns_resp_json(const ns_resp *r);
/* Member key as a string, or NULL when absent or not a string. */
const char *ns_jstr(const json_t *o, const char *key);
/* Member key as an integer into *out; 0, or -1 when absent or not an integer. */
int ns_jint(const json_t *o, const char *key, long long *out);
/* Whether member key is present and JSON null. */
bool ns_jnull(const json_t *o, const char *key);
/*
 * Whether r is an RFC 9457 problem as the spec wants it: the HTTP status,
 * Content-Type application/problem+json, and a body with type
 * "urn:nodestate:problem:<slug>", a non-empty title, status equal to the HTTP
 * status, a non-empty detail. 0, or -1 with the reason in why.
 */
int ns_check_problem(const ns_resp *r, long status, const char *slug,
                     char *why, size_t why_len);
/* Milliseconds since the epoch of an RFC 3339 "...Z" timestamp, or -1. */
long long ns_ts_ms(const char *ts);

#endif
