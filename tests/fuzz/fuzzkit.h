/*
 * fuzzkit: what the libFuzzer targets in tests/fuzz share. It turns fuzz
 * input into an api_request (a small HTTP-like text, so seeds stay readable),
 * opens a real engine and api on a temporary SQLite file for the targets
 * that drive api_handle, and checks the invariants every answer must keep.
 *
 * Request text, as fuzzkit_request_parse reads it:
 *
 *     METHOD TARGET\n            TARGET is PATH[?QUERY], percent-decoded
 *     Name: value\n              any number of headers (at most 16 kept)
 *     \n
 *     BODY                       the rest, byte for byte (absent: no body)
 *
 * QUERY is name[=value] pairs joined by '&', each part percent-decoded like
 * the transport's: "?wait" alone is present with the value "".
 */
#ifndef NODESTATE_FUZZKIT_H
#define NODESTATE_FUZZKIT_H

#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "engine.h"

#define FUZZKIT_MAX_FIELDS 16

typedef struct fuzzkit_field {
    const char *name;
    const char *value;
} fuzzkit_field;

typedef struct fuzzkit_request {
    const char *method;
    const char *path;
    const char *body;      /* exactly body_len bytes, not NUL-terminated; NULL: none */
    size_t body_len;
    fuzzkit_field headers[FUZZKIT_MAX_FIELDS];
    size_t header_count;
    fuzzkit_field query[FUZZKIT_MAX_FIELDS];
    size_t query_count;
    char *text;            /* owns method, path and every name and value */
    char *body_copy;       /* owns body, sized exactly so ASan sees overreads */
} fuzzkit_request;

/* Parses data into r. Returns -1 (r needs no free) when out of memory. */
int fuzzkit_request_parse(fuzzkit_request *r, const uint8_t *data, size_t size);
void fuzzkit_request_free(fuzzkit_request *r);
/* An api_request reading from r (which must outlive it). */
void fuzzkit_request_api(const fuzzkit_request *r, api_request *out);

/* An engine and an api over a temporary database of their own. */
typedef struct fuzzkit_env {
    char dir[64];
    char db_path[128];
    engine *e;
    api *a;
} fuzzkit_env;

/*
 * Opens env in a new directory /tmp/<name>.XXXXXX (under $TMPDIR when set),
 * with small bounds so a long run keeps its memory flat; token may be NULL.
 * Aborts on failure: a fuzz target without its engine has nothing to test.
 */
void fuzzkit_env_open(fuzzkit_env *env, const char *name, const char *token);
/* Closes the engine and removes the directory and its files. */
void fuzzkit_env_close(fuzzkit_env *env);

/*
 * Answers req through env's api the way the transport does, a parked
 * ?wait=true finished at once (durable or not, by the engine's durable seq),
 * and aborts when the answer breaks an invariant: a status outside 100..599,
 * a body without a content type or with a NUL in it, a JSON body that
 * jansson cannot read, a 304 with a body. Returns the final status.
 */
int fuzzkit_answer(fuzzkit_env *env, const api_request *req);

/* Aborts with a message on stderr when ok is false: the fuzzer records a crash. */
void fuzzkit_check(int ok, const char *what);

/*
 * Encodes row as an answer does, decodes the text as an update of the same
 * node and aborts unless the rules (at now_ms) call it a duplicate: what
 * the service writes, it reads back unchanged. who names the target in
 * the message.
 */
void fuzzkit_round_trip(const char *who, const ns_row *row, int64_t now_ms);

#endif
