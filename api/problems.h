/*
 * problems: every kind of problem+json answer the service gives, listed once.
 * A problem type is a slug (its `type` is urn:nodestate:problem:<slug>), a
 * status and a title that never varies; only the detail is per answer. The
 * list is an X-macro so the enum, the table and anything else that needs
 * the list expand the same lines; the README's "Problem types" table and
 * openapi.yaml are checked against it by tests/test_problems.c.
 */
#ifndef NODESTATE_PROBLEMS_H
#define NODESTATE_PROBLEMS_H

/* X(NAME, status, "slug", "Title"): one line per problem type. */
#define PROBLEMS_LIST(X)                                                              \
    X(INVALID_JSON, 400, "invalid-json", "Invalid JSON")                              \
    X(INVALID_ID, 400, "invalid-id", "Invalid id")                                    \
    X(INVALID_QUERY, 400, "invalid-query", "Invalid query parameter")                 \
    X(BAD_FRAMING, 400, "bad-framing", "Bad request framing")                         \
    X(UNAUTHORIZED, 401, "unauthorized", "Unauthorized")                              \
    X(NOT_FOUND, 404, "not-found", "Not found")                                       \
    X(METHOD_NOT_ALLOWED, 405, "method-not-allowed", "Method not allowed")            \
    X(STALE_ATTEMPT, 409, "stale-attempt", "Stale attempt")                           \
    X(ILLEGAL_TRANSITION, 409, "illegal-transition", "Illegal transition")            \
    X(BODY_TOO_LARGE, 413, "body-too-large", "Request body too large")                \
    X(TOO_MANY_UPDATES, 413, "too-many-updates", "Too many updates")                  \
    X(UNSUPPORTED_MEDIA_TYPE, 415, "unsupported-media-type", "Unsupported media type") \
    X(INVALID_UPDATE, 422, "invalid-update", "Invalid update")                        \
    X(HEADER_FIELDS_TOO_LARGE, 431, "header-fields-too-large",                         \
      "Request header fields too large")                                               \
    X(INTERNAL_ERROR, 500, "internal-error", "Internal error")                        \
    X(WRITE_REFUSED, 500, "write-refused", "Write refused")                           \
    X(BACKUP_UNSUPPORTED, 501, "backup-unsupported", "Backup not supported")          \
    X(QUEUE_FULL, 503, "queue-full", "Queue full")                                    \
    X(OUT_OF_MEMORY, 503, "out-of-memory", "Service unavailable")                     \
    X(NOT_ALIVE, 503, "not-alive", "Not alive")                                       \
    X(NOT_READY, 503, "not-ready", "Not ready")                                       \
    X(BACKUP_BUSY, 503, "backup-busy", "Backup in progress")                          \
    X(TOO_MANY_WATCHERS, 503, "too-many-watchers", "Too many watchers")

typedef enum problem_id {
#define PROBLEMS_ENUM(name, status, slug, title) PROBLEM_##name,
    PROBLEMS_LIST(PROBLEMS_ENUM)
#undef PROBLEMS_ENUM
    PROBLEM_COUNT
} problem_id;

typedef struct problem_type {
    int status;
    const char *slug;   /* lower-case letters and '-': put in a URI unescaped */
    const char *title;
} problem_type;

/* The type of id; id must be below PROBLEM_COUNT. */
const problem_type *problems_get(problem_id id);

#endif
