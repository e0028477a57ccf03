/*
 * codec_internal: what the codec's decoders share, and only the module's own
 * .c files include (codec.h is the public header). codec.c decodes one update
 * and defines everything declared here; codec_batch.c decodes a batch and
 * judges each item with the same scanner and codec_member, so an item and a
 * single update are read alike. The encoders (codec_out.c) need none of it.
 */
#ifndef NODESTATE_CODEC_INTERNAL_H
#define NODESTATE_CODEC_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "codec.h"

/* Bytes of a client's member name shown in a detail; the rest is cut ("..."). */
#define CODEC_KEY_SHOWN 64
/* Room for a detail before it is cut to the caller's size; ours fit easily. */
#define CODEC_DETAIL_MAX 512

/*
 * The parsed body the ns_update borrows from: strings point into root, and
 * the two JSON-valued members are copied from the body as the client wrote
 * them (minus whitespace) into text we own. Re-serialising them instead
 * would turn 1.1 into 1.1000000000000001 and cannot hold integers beyond
 * int64, and the API promises these members back as sent.
 */
struct codec_doc {
    json_t *root;
    char *resume_state;   /* compact copy from the body, or NULL */
    char *outputs;        /* compact copy from the body, or NULL */
};

/* A member's value exactly as written in the body; p is NULL when absent. */
typedef struct codec_span {
    const char *p;
    size_t n;
} codec_span;

/* The members whose spelling in the body matters, not just their value. */
typedef struct codec_spans {
    codec_span attempt;        /* an integer must be written as one */
    codec_span resume_state;
    codec_span outputs;
} codec_spans;

/* JSON whitespace; inline because the batch fast path tests every byte between tokens with it. */
static inline bool codec_is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/*
 * A decoder's detail destination made safe to write: a NULL or empty one
 * becomes scratch (one byte). Emptied either way.
 */
static inline void codec_detail_dest(char **detail, size_t *detail_len, char *scratch)
{
    if (*detail == NULL || *detail_len == 0) {
        *detail = scratch;
        *detail_len = 1;
    }
    (*detail)[0] = '\0';
}

/* The refusal helpers: a detail always goes through text_safe. */
void codec_detail(char *detail, size_t detail_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int codec_fail(int *status, int code, char *detail, size_t detail_len,
               const char *fmt, const char *member);

/* The scanner over a body jansson accepted (codec.c says what each reads). */
/*
 * One member "key": value of an object, p at its opening quote: sets the
 * key's text (key..key_end, without quotes) and the value's span; returns
 * the position after the value, or NULL when the text is not a member.
 */
const char *codec_member_next(const char *p, const char *end, const char **key,
                              const char **key_end, codec_span *value);
const char *codec_skip_ws(const char *p, const char *end);
const char *codec_skip_string(const char *p, const char *end);
const char *codec_skip_value(const char *p, const char *end);
bool codec_key_is(const char *p, const char *end, const char *name);
int codec_scan(const char *body, size_t len, codec_spans *spans);

/* JSON text read by jansson as every body and batch item is read, or NULL with err. */
json_t *codec_json_load(const char *text, size_t len, json_error_t *err);
/*
 * Whether jansson refused err's text for something valid JSON may hold but
 * we do not take (a NUL in a string or a member name, a member twice, a
 * number beyond double, nesting past 2048), not for its syntax: in a batch
 * that is one item's fault, not the request's.
 */
bool codec_json_value_refused(const json_error_t *err);
/* "invalid JSON at line L column C: why", in our words where jansson's name its flags. */
void codec_json_detail(const json_error_t *err, char *detail, size_t detail_len);
/*
 * A body as a JSON object, or NULL with *status (400, 500) and detail; err
 * (may be NULL) gets jansson's error (code json_error_unknown otherwise).
 */
json_t *codec_load_object(const char *body, size_t len, int *status,
                          char *detail, size_t detail_len, json_error_t *err);
/* 0 when v is a string equal to id. */
int codec_same_id(json_t *v, const char *id);
/* Checks and stores one member of an update; -1 with *status and detail set. */
int codec_member(codec_doc *d, const codec_spans *spans,
                 const char *key, json_t *v, const char *run_id,
                 const char *node_id, size_t max_error_bytes,
                 ns_update *out, bool *have_status, int *status,
                 char *detail, size_t detail_len);

#endif
