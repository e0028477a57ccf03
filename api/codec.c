/*
 * codec.c: decoding one update (codec_decode_update), and what every decoder
 * of the module shares: the refusal helpers, the scanner that finds a member's
 * text in a body jansson accepted, and codec_member, which judges each member
 * of an update wherever it comes from (codec_internal.h declares them for
 * codec_batch.c). The encoders are in codec_out.c.
 */
#include "codec.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "codec_internal.h"
#include "text.h"

/* Largest attempt we take: beyond 2^53 a JSON number stops being exact in most clients. */
#define CODEC_ATTEMPT_MAX (INT64_C(1) << 53)

void codec_doc_free(codec_doc *d)
{
    if (d == NULL)
        return;
    json_decref(d->root);
    free(d->resume_state);
    free(d->outputs);
    free(d);
}

/*
 * Writes a detail, formatted, into the caller's detail_len bytes. It may hold
 * client text (a member name, jansson's account of the body), so it goes
 * through text_safe: cut at a whole character whatever detail_len is, and
 * anything that is not valid UTF-8 escaped.
 */
void codec_detail(char *detail, size_t detail_len, const char *fmt, ...)
{
    char text[CODEC_DETAIL_MAX];
    va_list ap;

    if (detail == NULL || detail_len == 0)
        return;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (n < 0)
        text[0] = '\0';
    text_safe(detail, detail_len, text, strlen(text));
}

/* Sets the answer of a refused body; always returns -1 so callers can `return codec_fail(...)`. */
int codec_fail(int *status, int code, char *detail, size_t detail_len,
               const char *fmt, const char *member)
{
    *status = code;
    codec_detail(detail, detail_len, fmt, member);
    return -1;
}

/*
 * ---- a scanner over the body jansson has already accepted ----
 *
 * It only has to find where top-level members' values begin and end, so it
 * trusts the grammar jansson checked, but it never reads past end and gives
 * -1/NULL rather than guessing if the text is not what it expects. It does
 * not recurse: nesting is only counted, so jansson's depth limit (2048) is
 * the only one.
 */
const char *codec_skip_ws(const char *p, const char *end)
{
    while (p < end && codec_is_ws(*p))
        p++;
    return p;
}

/* p is at an opening quote: the byte after the closing one, or NULL. */
const char *codec_skip_string(const char *p, const char *end)
{
    for (p++; p < end; p++) {
        if (*p == '\\') {
            p++;    /* the escaped byte cannot end the string */
            continue;
        }
        if (*p == '"')
            return p + 1;
    }
    return NULL;
}

/* A byte that can be part of a number or of true/false/null. */
static bool codec_is_scalar(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
           (c >= 'A' && c <= 'Z') || c == '+' || c == '-' || c == '.';
}

/* p is at a value: the byte after it, or NULL. */
const char *codec_skip_value(const char *p, const char *end)
{
    size_t depth = 0;

    do {
        p = codec_skip_ws(p, end);
        if (p == end)
            return NULL;
        if (*p == '"') {
            p = codec_skip_string(p, end);
            if (p == NULL)
                return NULL;
        } else if (*p == '{' || *p == '[') {
            depth++;
            p++;
        } else if (*p == '}' || *p == ']') {
            if (depth == 0)
                return NULL;
            depth--;
            p++;
        } else if (*p == ',' || *p == ':') {
            if (depth == 0)
                return NULL;
            p++;
        } else {
            const char *start = p;
            while (p < end && codec_is_scalar(*p))
                p++;
            if (p == start)
                return NULL;
        }
    } while (depth > 0);
    return p;
}

/*
 * Whether the key text p..end (between the quotes, escapes still in it)
 * means name. jansson compares keys after unescaping, so we must too:
 * "outp\u0075ts" is outputs. name is ASCII, so any escape for a code point
 * of 0x80 or more cannot match.
 */
bool codec_key_is(const char *p, const char *end, const char *name)
{
    static const char plain[] = "\"\\/bfnrt";
    static const char means[] = "\"\\/\b\f\n\r\t";

    while (p < end) {
        char c = *p++;
        if (c == '\\') {
            if (p == end)
                return false;
            char e = *p++;
            if (e == 'u') {
                unsigned cp = 0;
                for (int i = 0; i < 4; i++) {
                    int h = p < end ? text_hex_digit(*p++) : -1;
                    if (h < 0)
                        return false;
                    cp = cp << 4 | (unsigned)h;
                }
                if (cp == 0 || cp >= 0x80)
                    return false;
                c = (char)cp;
            } else {
                const char *at = strchr(plain, e);
                if (e == '\0' || at == NULL)
                    return false;
                c = means[at - plain];
            }
        }
        if (*name == '\0' || c != *name++)
            return false;
    }
    return *name == '\0';
}

const char *codec_member_next(const char *p, const char *end, const char **key,
                              const char **key_end, codec_span *value)
{
    if (p == end || *p != '"')
        return NULL;
    *key = p + 1;
    p = codec_skip_string(p, end);
    if (p == NULL)
        return NULL;
    *key_end = p - 1;    /* the closing quote */
    p = codec_skip_ws(p, end);
    if (p == end || *p != ':')
        return NULL;
    value->p = codec_skip_ws(p + 1, end);
    p = codec_skip_value(value->p, end);
    if (p == NULL)
        return NULL;
    value->n = (size_t)(p - value->p);
    return p;
}

/*
 * Finds the spans of attempt, resume_state and outputs in the top-level
 * object of body (which jansson accepted as an object with no duplicate
 * keys, so each is there at most once). -1 only if the text is not what
 * jansson said it was.
 */
int codec_scan(const char *body, size_t len, codec_spans *spans)
{
    const char *end = body + len;
    const char *p = codec_skip_ws(body, end);

    memset(spans, 0, sizeof *spans);
    if (p == end || *p != '{')
        return -1;
    p = codec_skip_ws(p + 1, end);
    if (p < end && *p == '}')
        return 0;
    for (;;) {
        const char *key, *key_end;
        codec_span value;
        p = codec_member_next(p, end, &key, &key_end, &value);
        if (p == NULL)
            return -1;

        codec_span *slot = NULL;
        if (codec_key_is(key, key_end, "attempt"))
            slot = &spans->attempt;
        else if (codec_key_is(key, key_end, "resume_state"))
            slot = &spans->resume_state;
        else if (codec_key_is(key, key_end, "outputs"))
            slot = &spans->outputs;
        if (slot != NULL)
            *slot = value;

        p = codec_skip_ws(p, end);
        if (p == end)
            return -1;
        if (*p == '}')
            return 0;
        if (*p != ',')
            return -1;
        p = codec_skip_ws(p + 1, end);
    }
}

/*
 * A copy of the value text without the whitespace outside strings, so the
 * same value sent with other spacing stores the same text (and an update
 * repeating it is still a duplicate). Everything else, number spelling and
 * string escapes included, is kept byte for byte. NULL when out of memory.
 */
static char *codec_compact(codec_span s)
{
    char *out = malloc(s.n + 1);
    if (out == NULL)
        return NULL;

    size_t n = 0;
    bool in_string = false;
    for (size_t i = 0; i < s.n; i++) {
        char c = s.p[i];
        if (in_string) {
            out[n++] = c;
            if (c == '\\' && i + 1 < s.n)
                out[n++] = s.p[++i];
            else if (c == '"')
                in_string = false;
        } else if (!codec_is_ws(c)) {
            if (c == '"')
                in_string = true;
            out[n++] = c;
        }
    }
    out[n] = '\0';
    return out;
}

/*
 * The attempt as written: digits only (no sign, fraction or exponent: "2.0"
 * and "2e0" are refused like any other non-integer) with a value in
 * [1, CODEC_ATTEMPT_MAX]. Read from the text because jansson decodes every
 * number as a double here, which cannot tell 2^53 + 1 from 2^53.
 */
static int codec_attempt_text(codec_span s, int64_t *out)
{
    int64_t v = 0;

    if (s.p == NULL || s.n == 0)
        return -1;
    for (size_t i = 0; i < s.n; i++) {
        if (s.p[i] < '0' || s.p[i] > '9')
            return -1;
        /* v <= 2^53 here, so v * 10 + 9 cannot overflow int64 */
        v = v * 10 + (s.p[i] - '0');
        if (v > CODEC_ATTEMPT_MAX)
            return -1;
    }
    if (v < 1)
        return -1;
    *out = v;
    return 0;
}

/* The ts field named key, or -1. */
static int codec_ts_field(const char *key)
{
    for (int f = 0; f < NS_TS_COUNT; f++) {
        const char *name = model_ts_field_name((ns_ts_field)f);
        if (name != NULL && strcmp(name, key) == 0)
            return f;
    }
    return -1;
}

/* A string-or-null member into an ns_text; -1 for any other type. */
static int codec_text(json_t *v, ns_text *out)
{
    if (json_is_null(v)) {
        out->set = true;
        out->value = NULL;
        return 0;
    }
    if (!json_is_string(v))
        return -1;
    out->set = true;
    out->value = json_string_value(v);
    return 0;
}

/*
 * An any-JSON member: null clears, anything else becomes the compact copy
 * of its text in the body, owned by *slot. Returns -1 only when the scanner
 * did not find the member or out of memory.
 */
static int codec_raw(json_t *v, codec_span text, char **slot, ns_text *out)
{
    out->set = true;
    out->value = NULL;
    if (json_is_null(v))
        return 0;
    if (text.p == NULL)
        return -1;
    free(*slot);    /* cannot hold anything: duplicates are refused */
    *slot = codec_compact(text);
    if (*slot == NULL)
        return -1;
    out->value = *slot;
    return 0;
}

/* A member that must, when present, repeat the id from the path. */
int codec_same_id(json_t *v, const char *id)
{
    return json_is_string(v) && id != NULL &&
           strcmp(json_string_value(v), id) == 0 ? 0 : -1;
}

/* Checks and stores one member of the body; -1 with *status and detail set. */
int codec_member(codec_doc *d, const codec_spans *spans,
                 const char *key, json_t *v, const char *run_id,
                 const char *node_id, size_t max_error_bytes,
                 ns_update *out, bool *have_status, int *status,
                 char *detail, size_t detail_len)
{
    int f;

    if (strcmp(key, "status") == 0) {
        if (!json_is_string(v) ||
            model_status_parse(json_string_value(v), &out->status) != 0)
            return codec_fail(status, 422, detail, detail_len,
                              "member \"%s\" must be one of idle, scheduled, "
                              "running, paused, suspended, completed, failed",
                              key);
        *have_status = true;
    } else if (strcmp(key, "attempt") == 0) {
        int64_t attempt;
        if (!json_is_number(v) ||
            codec_attempt_text(spans->attempt, &attempt) != 0)
            return codec_fail(status, 422, detail, detail_len,
                              "member \"%s\" must be an integer >= 1 "
                              "and <= 2^53", key);
        out->has_attempt = true;
        out->attempt = attempt;
    } else if ((f = codec_ts_field(key)) >= 0) {
        int64_t ms = NS_TS_NULL;
        if (!json_is_null(v) &&
            (!json_is_string(v) || model_ts_parse(json_string_value(v), &ms) != 0))
            return codec_fail(status, 422, detail, detail_len,
                              "member \"%s\" must be an RFC 3339 date-time "
                              "string or null", key);
        out->ts_set |= 1u << f;
        out->ts[f] = ms;
    } else if (strcmp(key, "last_error") == 0 || strcmp(key, "suspension_reason") == 0) {
        /* The two free texts, bounded alike (--max-error-bytes). */
        if (codec_text(v, key[0] == 'l' ? &out->last_error : &out->suspension_reason) != 0)
            return codec_fail(status, 422, detail, detail_len,
                              "member \"%s\" must be a string or null", key);
        if (json_is_string(v) && json_string_length(v) > max_error_bytes) {
            *status = 422;
            codec_detail(detail, detail_len,
                         "member \"%s\" must be at most %zu bytes long", key,
                         max_error_bytes);
            return -1;
        }
    } else if (strcmp(key, "retryable") == 0) {
        if (!json_is_boolean(v) && !json_is_null(v))
            return codec_fail(status, 422, detail, detail_len,
                              "member \"%s\" must be a boolean or null", key);
        out->has_retryable = true;
        out->retryable = json_is_true(v);
    } else if (strcmp(key, "resume_state") == 0) {
        if (codec_raw(v, spans->resume_state, &d->resume_state, &out->resume_state) != 0)
            return codec_fail(status, 500, detail, detail_len,
                              "cannot store member \"%s\"", key);
    } else if (strcmp(key, "outputs") == 0) {
        if (codec_raw(v, spans->outputs, &d->outputs, &out->outputs) != 0)
            return codec_fail(status, 500, detail, detail_len,
                              "cannot store member \"%s\"", key);
    } else if (strcmp(key, "force") == 0) {
        if (!json_is_boolean(v))
            return codec_fail(status, 422, detail, detail_len,
                              "member \"%s\" must be a boolean", key);
        out->force = json_is_true(v);
    } else if (strcmp(key, "run_id") == 0) {
        if (codec_same_id(v, run_id) != 0)
            return codec_fail(status, 422, detail, detail_len,
                              "member \"%s\" must equal the run id in the path",
                              key);
    } else if (strcmp(key, "node_id") == 0) {
        if (codec_same_id(v, node_id) != 0)
            return codec_fail(status, 422, detail, detail_len,
                              "member \"%s\" must equal the node id in the path",
                              key);
    } else if (strcmp(key, "updated_at") == 0 || strcmp(key, "seq") == 0 ||
               strcmp(key, "durable") == 0) {
        /* Server-owned fields: ignored so a GET body can be POSTed back. */
    } else {
        /*
         * The key came from the client: bound it so the detail stays
         * readable, cut at a whole character (a byte count could split one).
         */
        char shown[CODEC_KEY_SHOWN + 1];
        text_safe(shown, sizeof shown, key, strlen(key));
        *status = 422;
        codec_detail(detail, detail_len, "unknown member \"%s\"", shown);
        return -1;
    }
    return 0;
}

json_t *codec_json_load(const char *text, size_t len, json_error_t *err)
{
    /*
     * DECODE_ANY so a bare scalar gets "not an object" rather than a parse
     * error. INT_AS_REAL so an integer beyond int64 in outputs/resume_state
     * (any JSON, as the API allows) does not make jansson refuse the body; their
     * text comes from the body, and attempt is read from its text, so no
     * precision is lost. A number beyond double range (1e400, a 310-digit
     * integer) is still refused (codec_json_value_refused).
     */
    return json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY |
                                     JSON_DECODE_INT_AS_REAL, err);
}

bool codec_json_value_refused(const json_error_t *err)
{
    switch (json_error_code(err)) {
    case json_error_null_character:
    case json_error_null_byte_in_key:
    case json_error_duplicate_key:
    case json_error_numeric_overflow:
    case json_error_stack_overflow:
        return true;
    default:
        return false;
    }
}

void codec_json_detail(const json_error_t *err, char *detail, size_t detail_len)
{
    const char *why;
    switch (json_error_code(err)) {
    case json_error_null_character:
        why = "a string holds \\u0000 (NUL), which is not taken";
        break;
    case json_error_null_byte_in_key:
        why = "a member name holds \\u0000 (NUL), which is not taken";
        break;
    case json_error_duplicate_key:
        why = "a member name appears twice in one object";
        break;
    case json_error_numeric_overflow:
        why = "a number is beyond the range of a double";
        break;
    case json_error_stack_overflow:
        why = "nested deeper than 2048 levels";
        break;
    default:
        why = err->text; /* it may quote the body, and it cuts it at a byte count */
        break;
    }
    codec_detail(detail, detail_len, "invalid JSON at line %d column %d: %s", err->line,
                 err->column, why);
}

/*
 * The body as a JSON object (a new reference), or NULL with *status and
 * detail set: 400 for an empty body, a NUL byte, invalid JSON or another
 * value than an object, 500 out of memory. Every body we decode is read
 * this one way. err (may be NULL) gets jansson's error, or a code of
 * json_error_unknown when the refusal was not jansson's.
 */
json_t *codec_load_object(const char *body, size_t len, int *status,
                          char *detail, size_t detail_len, json_error_t *err)
{
    json_error_t own;
    if (err == NULL)
        err = &own;
    memset(err, 0, sizeof *err);
    if (body == NULL || len == 0) {
        codec_fail(status, 400, detail, detail_len, "%s", "empty body");
        return NULL;
    }
    /* JSON text never holds a raw NUL; jansson's reader would stop at one mid-number. */
    if (memchr(body, '\0', len) != NULL) {
        codec_fail(status, 400, detail, detail_len, "%s",
                   "invalid JSON: the body contains a NUL byte");
        return NULL;
    }
    json_t *root = codec_json_load(body, len, err);
    if (root == NULL) {
        *status = 400;
        codec_json_detail(err, detail, detail_len);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        memset(err, 0, sizeof *err);
        codec_fail(status, 400, detail, detail_len, "%s", "body must be a JSON object");
        return NULL;
    }
    return root;
}

/*
 * ---- the memory a tree of the body takes, bounded before it is built ----
 *
 * jansson's tree of a body of tiny values takes many times the body (2.14
 * on glibc, measured with malloc's 16 bytes per block: an object 232
 * bytes, an array 136, a member 74 besides its key and value, a string 68
 * plus its length, a number 40, an array slot up to 16 as the array
 * doubles), so 16 MiB of {"updates":[{},{},...]} took 1.26 GB before its
 * items were even counted. The estimate reads the text once, allocating
 * nothing, counting a key as a string too; the api refuses a body over
 * the budget before a decoder builds its tree (codec.h).
 */
#define CODEC_TREE_OBJECT 232u
#define CODEC_TREE_ARRAY 136u
#define CODEC_TREE_MEMBER 74u
#define CODEC_TREE_STRING 68u
#define CODEC_TREE_NUMBER 40u
#define CODEC_TREE_SLOT 16u

size_t codec_tree_budget(size_t len)
{
    return len > CODEC_TREE_FLOOR / CODEC_TREE_PER_BYTE ? len * CODEC_TREE_PER_BYTE
                                                        : CODEC_TREE_FLOOR;
}

size_t codec_tree_estimate(const char *body, size_t len)
{
    const char *p = body, *end = body + len;
    size_t bytes = 0;
    bool in_number = false;
    while (p < end) {
        char c = *p;
        if (c == '"') {
            const char *after = codec_skip_string(p, end);
            if (after == NULL)
                after = end;
            bytes += CODEC_TREE_STRING + (size_t)(after - p);
            p = after;
            in_number = false;
            continue;
        }
        bool number = (c >= '0' && c <= '9') || c == '-';
        if (number && !in_number)
            bytes += CODEC_TREE_NUMBER;
        in_number = number || (in_number && (c == '.' || c == 'e' || c == 'E' || c == '+'));
        bytes += c == '{'   ? CODEC_TREE_OBJECT
                 : c == '[' ? CODEC_TREE_ARRAY
                 : c == ':' ? CODEC_TREE_MEMBER
                 : c == ',' ? CODEC_TREE_SLOT
                            : 0;
        p++;
    }
    return bytes;
}

codec_doc *codec_decode_update(const char *body, size_t len,
                               const char *run_id, const char *node_id,
                               size_t max_error_bytes, ns_update *out,
                               int *status, char *detail, size_t detail_len)
{
    /* Every path below writes detail; make a NULL/0 destination harmless. */
    char scratch[1];
    codec_detail_dest(&detail, &detail_len, scratch);

    memset(out, 0, sizeof *out);
    for (int f = 0; f < NS_TS_COUNT; f++)
        out->ts[f] = NS_TS_NULL;

    codec_doc *d = calloc(1, sizeof *d);
    if (d == NULL) {
        codec_fail(status, 500, detail, detail_len, "%s", "out of memory");
        return NULL;
    }
    if ((d->root = codec_load_object(body, len, status, detail, detail_len, NULL)) == NULL)
        goto fail;

    codec_spans spans;
    if (codec_scan(body, len, &spans) != 0) {
        /* jansson accepted what the scanner cannot read: our bug, not the client's. */
        codec_fail(status, 500, detail, detail_len, "%s",
                   "cannot locate the members of the body");
        goto fail;
    }

    bool have_status = false;
    const char *key;
    json_t *v;
    json_object_foreach(d->root, key, v) {
        if (codec_member(d, &spans, key, v, run_id, node_id, max_error_bytes,
                         out, &have_status, status, detail, detail_len) != 0)
            goto fail;
    }
    if (!have_status) {
        codec_fail(status, 422, detail, detail_len, "missing member \"%s\"",
                   "status");
        goto fail;
    }
    return d;

fail:
    codec_doc_free(d);
    memset(out, 0, sizeof *out);
    return NULL;
}
