#include "codec.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "text.h"

/* Largest attempt we take: beyond 2^53 a JSON number stops being exact in most clients. */
#define CODEC_ATTEMPT_MAX (INT64_C(1) << 53)
/* Bytes of a client's member name shown in a detail; the rest is cut ("..."). */
#define CODEC_KEY_SHOWN 64
/* Room for a detail before it is cut to the caller's size; ours fit easily. */
#define CODEC_DETAIL_MAX 512
/* Longest problem detail answered, cut at a whole character. */
#define CODEC_PROBLEM_DETAIL_MAX 1024

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
static void codec_detail(char *detail, size_t detail_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void codec_detail(char *detail, size_t detail_len, const char *fmt, ...)
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
static int codec_fail(int *status, int code, char *detail, size_t detail_len,
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

static bool codec_is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static const char *codec_skip_ws(const char *p, const char *end)
{
    while (p < end && codec_is_ws(*p))
        p++;
    return p;
}

/* p is at an opening quote: the byte after the closing one, or NULL. */
static const char *codec_skip_string(const char *p, const char *end)
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
static const char *codec_skip_value(const char *p, const char *end)
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
static bool codec_key_is(const char *p, const char *end, const char *name)
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

/*
 * Finds the spans of attempt, resume_state and outputs in the top-level
 * object of body (which jansson accepted as an object with no duplicate
 * keys, so each is there at most once). -1 only if the text is not what
 * jansson said it was.
 */
static int codec_scan(const char *body, size_t len, codec_spans *spans)
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
        if (p == end || *p != '"')
            return -1;
        const char *key = p + 1;
        p = codec_skip_string(p, end);
        if (p == NULL)
            return -1;
        const char *key_end = p - 1;    /* the closing quote */
        p = codec_skip_ws(p, end);
        if (p == end || *p != ':')
            return -1;
        const char *value = codec_skip_ws(p + 1, end);
        p = codec_skip_value(value, end);
        if (p == NULL)
            return -1;

        codec_span *slot = NULL;
        if (codec_key_is(key, key_end, "attempt"))
            slot = &spans->attempt;
        else if (codec_key_is(key, key_end, "resume_state"))
            slot = &spans->resume_state;
        else if (codec_key_is(key, key_end, "outputs"))
            slot = &spans->outputs;
        if (slot != NULL) {
            slot->p = value;
            slot->n = (size_t)(p - value);
        }

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
static int codec_same_id(json_t *v, const char *id)
{
    return json_is_string(v) && id != NULL &&
           strcmp(json_string_value(v), id) == 0 ? 0 : -1;
}

/* Checks and stores one member of the body; -1 with *status and detail set. */
static int codec_member(codec_doc *d, const codec_spans *spans,
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
    } else if (strcmp(key, "last_error") == 0) {
        if (codec_text(v, &out->last_error) != 0)
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
    } else if (strcmp(key, "suspension_reason") == 0) {
        if (codec_text(v, &out->suspension_reason) != 0)
            return codec_fail(status, 422, detail, detail_len,
                              "member \"%s\" must be a string or null", key);
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

/*
 * The body as a JSON object (a new reference), or NULL with *status and
 * detail set: 400 for an empty body, a NUL byte, invalid JSON or another
 * value than an object, 500 out of memory. Every body we decode is read
 * this one way.
 */
static json_t *codec_load_object(const char *body, size_t len, int *status,
                                 char *detail, size_t detail_len)
{
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
    json_error_t err;
    /*
     * DECODE_ANY so a bare scalar gets "not an object" rather than a parse
     * error. INT_AS_REAL so an integer beyond int64 in outputs/resume_state
     * (any JSON, as the API allows) does not make jansson refuse the body; their
     * text comes from the body, and attempt is read from its text, so no
     * precision is lost. A number beyond double range (1e400, a 310-digit
     * integer) is still refused here as invalid JSON.
     */
    json_t *root = json_loadb(body, len,
                              JSON_REJECT_DUPLICATES | JSON_DECODE_ANY |
                              JSON_DECODE_INT_AS_REAL, &err);
    if (root == NULL) {
        *status = 400;
        /* jansson's text may quote the body, and it cuts it at a byte count. */
        codec_detail(detail, detail_len, "invalid JSON at line %d column %d: %s",
                     err.line, err.column, err.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        codec_fail(status, 400, detail, detail_len, "%s", "body must be a JSON object");
        return NULL;
    }
    return root;
}

codec_doc *codec_decode_update(const char *body, size_t len,
                               const char *run_id, const char *node_id,
                               size_t max_error_bytes, ns_update *out,
                               int *status, char *detail, size_t detail_len)
{
    /* Every path below writes detail; make a NULL/0 destination harmless. */
    char scratch[1];
    if (detail == NULL || detail_len == 0) {
        detail = scratch;
        detail_len = sizeof scratch;
    }
    detail[0] = '\0';

    memset(out, 0, sizeof *out);
    for (int f = 0; f < NS_TS_COUNT; f++)
        out->ts[f] = NS_TS_NULL;

    codec_doc *d = calloc(1, sizeof *d);
    if (d == NULL) {
        codec_fail(status, 500, detail, detail_len, "%s", "out of memory");
        return NULL;
    }
    if ((d->root = codec_load_object(body, len, status, detail, detail_len)) == NULL)
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

/*
 * ---- a batch of updates: {"updates": [ {update + "node_id"}, ... ]} ----
 *
 * The whole body is parsed once by jansson (duplicate keys refused at every
 * depth); the scanner above then walks the same text to find each item's
 * span, so an item's attempt, resume_state and outputs are read from its
 * own text exactly as a single update's are from its body.
 */

/* One item: its update, or the 422 detail that refused it. */
typedef struct codec_batch_item {
    const char *node_id;  /* as sent (a string), or NULL when missing or not a string */
    bool ok;
    ns_update u;          /* ok: the update, strings borrowed from the batch */
    codec_doc own;        /* owns the item's compact resume_state and outputs (root unused) */
    char *detail;         /* !ok: why (malloc'd) */
} codec_batch_item;

struct codec_batch {
    json_t *root;         /* the tree the items borrow from, or NULL (fast path) */
    char *text;           /* the fast path's copy of the body they borrow from, or NULL */
    size_t n;
    codec_batch_item *items;
};

void codec_batch_free(codec_batch *b)
{
    if (b == NULL)
        return;
    for (size_t i = 0; i < b->n; i++) {
        free(b->items[i].own.resume_state);
        free(b->items[i].own.outputs);
        free(b->items[i].detail);
    }
    free(b->items);
    json_decref(b->root);
    free(b->text);
    free(b);
}

size_t codec_batch_len(const codec_batch *b)
{
    return b->n;
}

const ns_update *codec_batch_item_at(const codec_batch *b, size_t i,
                                     const char **node_id, const char **detail)
{
    const codec_batch_item *it = &b->items[i];
    *node_id = it->node_id;
    *detail = it->ok ? NULL : it->detail;
    return it->ok ? &it->u : NULL;
}

/* The span of the top-level member name of the object text body..end; -1 if absent. */
static int codec_find_member(const char *body, const char *end, const char *name,
                             codec_span *out)
{
    const char *p = codec_skip_ws(body, end);
    if (p == end || *p != '{')
        return -1;
    p = codec_skip_ws(p + 1, end);
    while (p < end && *p == '"') {
        const char *key = p + 1;
        p = codec_skip_string(p, end);
        if (p == NULL)
            return -1;
        const char *key_end = p - 1;
        p = codec_skip_ws(p, end);
        if (p == end || *p != ':')
            return -1;
        const char *value = codec_skip_ws(p + 1, end);
        p = codec_skip_value(value, end);
        if (p == NULL)
            return -1;
        if (codec_key_is(key, key_end, name)) {
            out->p = value;
            out->n = (size_t)(p - value);
            return 0;
        }
        p = codec_skip_ws(p, end);
        if (p == end || *p != ',')
            return -1;
        p = codec_skip_ws(p + 1, end);
    }
    return -1;
}

/* Decodes item v (text span t) into it; 0, or -1 with *status 422 (500: memory) and detail. */
static int codec_batch_decode_item(codec_batch_item *it, json_t *v, codec_span t,
                                   const char *run_id, size_t max_error_bytes,
                                   int *status, char *detail, size_t detail_len)
{
    memset(&it->u, 0, sizeof it->u);
    for (int f = 0; f < NS_TS_COUNT; f++)
        it->u.ts[f] = NS_TS_NULL;
    if (!json_is_object(v))
        return codec_fail(status, 422, detail, detail_len, "%s",
                          "each item of \"updates\" must be a JSON object");
    json_t *id = json_object_get(v, "node_id");
    it->node_id = json_is_string(id) ? json_string_value(id) : NULL;
    if (it->node_id == NULL)
        return codec_fail(status, 422, detail, detail_len, "missing member \"%s\" (a string)",
                          "node_id");
    if (!model_id_valid(it->node_id, json_string_length(id)))
        return codec_fail(status, 422, detail, detail_len,
                          "member \"%s\" must be 1 to 128 bytes of A-Z a-z 0-9 . _ ~ : -",
                          "node_id");
    codec_spans spans;
    if (codec_scan(t.p, t.n, &spans) != 0)
        return codec_fail(status, 500, detail, detail_len, "%s",
                          "cannot locate the members of the item");
    bool have_status = false;
    const char *key;
    json_t *m;
    json_object_foreach(v, key, m) {
        if (codec_member(&it->own, &spans, key, m, run_id, it->node_id, max_error_bytes,
                         &it->u, &have_status, status, detail, detail_len) != 0)
            return -1;
    }
    if (!have_status)
        return codec_fail(status, 422, detail, detail_len, "missing member \"%s\"", "status");
    return 0;
}

codec_batch *codec_decode_batch_tree(const char *body, size_t len, const char *run_id,
                                     size_t max_error_bytes, size_t max_items,
                                     int *status, char *detail, size_t detail_len)
{
    char scratch[1];
    if (detail == NULL || detail_len == 0) {
        detail = scratch;
        detail_len = sizeof scratch;
    }
    detail[0] = '\0';
    codec_batch *b = calloc(1, sizeof *b);
    if (b == NULL) {
        codec_fail(status, 500, detail, detail_len, "%s", "out of memory");
        return NULL;
    }
    if ((b->root = codec_load_object(body, len, status, detail, detail_len)) == NULL)
        goto fail;
    const char *key;
    json_t *v;
    json_object_foreach(b->root, key, v) {
        if (strcmp(key, "updates") == 0)
            continue;
        if (strcmp(key, "run_id") == 0) {
            if (codec_same_id(v, run_id) != 0) {
                codec_fail(status, 422, detail, detail_len,
                           "member \"%s\" must equal the run id in the path", key);
                goto fail;
            }
            continue;
        }
        char shown[CODEC_KEY_SHOWN + 1];
        text_safe(shown, sizeof shown, key, strlen(key));
        codec_fail(status, 422, detail, detail_len, "unknown member \"%s\"", shown);
        goto fail;
    }
    json_t *arr = json_object_get(b->root, "updates");
    if (!json_is_array(arr)) {
        codec_fail(status, 422, detail, detail_len, "member \"%s\" must be an array of updates",
                   "updates");
        goto fail;
    }
    size_t n = json_array_size(arr);
    if (n == 0) {
        codec_fail(status, 422, detail, detail_len, "member \"%s\" must hold at least one update",
                   "updates");
        goto fail;
    }
    if (n > max_items) {
        *status = 413;
        codec_detail(detail, detail_len, "\"updates\" holds %zu items; at most %zu are taken "
                     "in one request", n, max_items);
        goto fail;
    }
    b->items = calloc(n, sizeof *b->items);
    if (b->items == NULL) {
        codec_fail(status, 500, detail, detail_len, "%s", "out of memory");
        goto fail;
    }
    b->n = n;
    codec_span list;
    const char *end = body + len;
    if (codec_find_member(body, end, "updates", &list) != 0 || *list.p != '[') {
        codec_fail(status, 500, detail, detail_len, "%s", "cannot locate \"updates\"");
        goto fail;
    }
    const char *p = list.p + 1;
    for (size_t i = 0; i < n; i++) {
        codec_batch_item *it = &b->items[i];
        p = codec_skip_ws(p, end);
        codec_span t = { p, 0 };
        const char *after = codec_skip_value(p, end);
        if (after == NULL) {
            codec_fail(status, 500, detail, detail_len, "%s", "cannot locate an update");
            goto fail;
        }
        t.n = (size_t)(after - p);
        p = codec_skip_ws(after, end);
        if (p < end && *p == ',')
            p++;
        char why[CODEC_DETAIL_MAX];
        int item_status = 422;
        if (codec_batch_decode_item(it, json_array_get(arr, i), t, run_id, max_error_bytes,
                                    &item_status, why, sizeof why) == 0) {
            it->ok = true;
            continue;
        }
        if (item_status >= 500 || (it->detail = strdup(why)) == NULL) {
            codec_fail(status, 500, detail, detail_len, "%s", why);
            goto fail;
        }
    }
    return b;
fail:
    codec_batch_free(b);
    return NULL;
}

/*
 * The fast path of codec_decode_batch. Building jansson's tree (an object,
 * a hash table and a string per member, for every item) was most of what a
 * batch of new nodes cost to decode. The commonest body, nothing but
 *   {"updates":[{"node_id":"...","status":"..."}, ...]}
 * with both members in either order, their strings printable ASCII without
 * escapes, every node_id valid and every status known, is read here straight
 * from the text into one copy of it. Anything else (another member, an
 * escape, a byte outside printable ASCII, a duplicate key, a refused item,
 * more than max_items, malformed JSON) makes it answer NULL, and
 * codec_decode_batch_tree decodes the body: so every error and every detail
 * comes from the one decoder, and a body this path takes is one that
 * decoder takes, with the same items (the fuzzer and test_codec check that
 * both agree). Out of memory it answers NULL too, and the tree decoder then
 * finds out for itself.
 */
typedef struct codec_fast {
    char *p;        /* the copy being read */
    char *end;
} codec_fast;

static void codec_fast_ws(codec_fast *f)
{
    while (f->p < f->end && codec_is_ws(*f->p))
        f->p++;
}

/* Consumes c (after whitespace); false if it is not next. */
static bool codec_fast_char(codec_fast *f, char c)
{
    codec_fast_ws(f);
    if (f->p == f->end || *f->p != c)
        return false;
    f->p++;
    return true;
}

/*
 * A string of printable ASCII without escapes, after whitespace: NUL-ends
 * it in place (over its closing quote) and returns its start, or NULL.
 */
static char *codec_fast_string(codec_fast *f, size_t *len)
{
    if (!codec_fast_char(f, '"'))
        return NULL;
    char *start = f->p;
    while (f->p < f->end && *f->p != '"') {
        unsigned char c = (unsigned char)*f->p;
        if (c < 0x20 || c > 0x7e || c == '\\')
            return NULL;
        f->p++;
    }
    if (f->p == f->end)
        return NULL;
    *len = (size_t)(f->p - start);
    *f->p++ = '\0';
    return start;
}

/* One {"node_id": ..., "status": ...} item into it; false if not the fast path's. */
static bool codec_fast_item(codec_fast *f, codec_batch_item *it)
{
    const char *node_id = NULL, *st = NULL;
    size_t len;

    if (!codec_fast_char(f, '{'))
        return false;
    for (int m = 0; m < 2; m++) {
        if (m == 1 && !codec_fast_char(f, ','))
            return false;
        const char *key = codec_fast_string(f, &len);
        if (key == NULL || !codec_fast_char(f, ':'))
            return false;
        if (strcmp(key, "node_id") == 0 && node_id == NULL) {
            node_id = codec_fast_string(f, &len);
            if (node_id == NULL || !model_id_valid(node_id, len))
                return false;
        } else if (strcmp(key, "status") == 0 && st == NULL) {
            st = codec_fast_string(f, &len);
            if (st == NULL)
                return false;
        } else {
            return false;
        }
    }
    if (!codec_fast_char(f, '}'))
        return false;
    memset(&it->u, 0, sizeof it->u);
    for (int t = 0; t < NS_TS_COUNT; t++)
        it->u.ts[t] = NS_TS_NULL;
    if (model_status_parse(st, &it->u.status) != 0)
        return false;
    it->node_id = node_id;
    it->ok = true;
    return true;
}

static codec_batch *codec_decode_batch_fast(const char *body, size_t len, size_t max_items)
{
    /* A cheap first look: the first member is "updates", or this is not ours. */
    const char *q = codec_skip_ws(body, body + len);
    if (q == body + len || *q != '{')
        return NULL;
    q = codec_skip_ws(q + 1, body + len);
    if ((size_t)(body + len - q) < 10 || memcmp(q, "\"updates\"", 9) != 0)
        return NULL;

    codec_batch *b = calloc(1, sizeof *b);
    /* Every item takes at least the 30 bytes of {"node_id":"x","status":"idle"}. */
    size_t cap = len / 30 + 1;
    if (cap > max_items)
        cap = max_items;
    if (b == NULL || (b->text = malloc(len)) == NULL ||
        (b->items = calloc(cap, sizeof *b->items)) == NULL)
        goto not_mine;
    memcpy(b->text, body, len);
    codec_fast f = { b->text, b->text + len };
    size_t klen;
    const char *key;
    if (!codec_fast_char(&f, '{') || (key = codec_fast_string(&f, &klen)) == NULL ||
        strcmp(key, "updates") != 0 || !codec_fast_char(&f, ':') || !codec_fast_char(&f, '['))
        goto not_mine;
    do {
        if (b->n == cap || !codec_fast_item(&f, &b->items[b->n]))
            goto not_mine;
        b->n++;
    } while (codec_fast_char(&f, ','));
    if (!codec_fast_char(&f, ']') || !codec_fast_char(&f, '}'))
        goto not_mine;
    codec_fast_ws(&f);
    if (f.p != f.end)
        goto not_mine;
    return b;
not_mine:
    codec_batch_free(b);
    return NULL;
}

codec_batch *codec_decode_batch(const char *body, size_t len, const char *run_id,
                                size_t max_error_bytes, size_t max_items,
                                int *status, char *detail, size_t detail_len)
{
    /* A NUL byte is the tree decoder's 400; the fast path reads no further than len. */
    if (body != NULL && len > 0 && memchr(body, '\0', len) == NULL) {
        codec_batch *b = codec_decode_batch_fast(body, len, max_items);
        if (b != NULL) {
            if (detail != NULL && detail_len > 0)
                detail[0] = '\0';
            return b;
        }
    }
    return codec_decode_batch_tree(body, len, run_id, max_error_bytes, max_items, status,
                                   detail, detail_len);
}

/* ---- encoders: written by hand into buf, no jansson objects needed ---- */

/* A string literal, its length known at compile time. */
#define CODEC_LIT(b, s) buf_append((b), (s), sizeof(s) - 1)

static void codec_ts(buf *b, int64_t ms)
{
    if (ms == NS_TS_NULL) {
        CODEC_LIT(b, "null");
        return;
    }
    /* Quoted in place: one append instead of three. */
    char ts[NS_TS_BUF + 2];
    model_ts_format(ms, ts + 1);
    size_t n = strlen(ts + 1);
    ts[0] = '"';
    ts[n + 1] = '"';
    buf_append(b, ts, n + 2);
}

/* A decimal integer without printf, which dominated encoding a row. */
static void codec_i64(buf *b, int64_t v)
{
    char tmp[24];
    char *p = tmp + sizeof tmp;
    uint64_t u = v < 0 ? 0u - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10u);
        u /= 10u;
    } while (u != 0);
    if (v < 0)
        *--p = '-';
    buf_append(b, p, (size_t)(tmp + sizeof tmp - p));
}

/* Stored JSON text, already compact; NULL is JSON null. */
static void codec_raw_out(buf *b, const char *json)
{
    buf_puts(b, json != NULL ? json : "null");
}

static void codec_bool(buf *b, bool v)
{
    if (v)
        CODEC_LIT(b, "true");
    else
        CODEC_LIT(b, "false");
}

/*
 * A fixed-point number of millionths as an exact JSON number ("1.5",
 * "0.000002", "3.0"); the fraction is always there so clients see a float.
 */
static void codec_micro(buf *b, uint64_t micro)
{
    char frac[8];
    snprintf(frac, sizeof frac, "%06u", (unsigned)(micro % 1000000u));
    size_t n = strlen(frac);
    while (n > 1 && frac[n - 1] == '0')
        n--;
    buf_printf(b, "%" PRIu64 ".", micro / 1000000u);
    buf_append(b, frac, n);
}

/* The encoders of NS_NODE_FIELDS' kinds, codec_field_<kind>. */
static void codec_field_id(buf *b, const char *v)
{
    buf_json_string(b, v);
}

static void codec_field_status(buf *b, ns_status v)
{
    buf_json_string(b, model_status_name(v));
}

static void codec_field_int(buf *b, int64_t v)
{
    codec_i64(b, v);
}

static void codec_field_timestamp(buf *b, int64_t v)
{
    codec_ts(b, v);
}

static void codec_field_text(buf *b, const char *v)
{
    buf_json_string(b, v);
}

static void codec_field_bool(buf *b, bool v)
{
    codec_bool(b, v);
}

static void codec_field_json(buf *b, const char *v)
{
    codec_raw_out(b, v);
}

void codec_row(buf *b, const ns_row *row, bool durable)
{
    /* Every key goes out with a comma before it; the first comma becomes the brace. */
    size_t open = b->len;
#define CODEC_FIELD_(name, member, json, column, kind) \
    CODEC_LIT(b, ",\"" json "\":");                     \
    codec_field_##kind(b, row->member);
    NS_NODE_FIELDS(CODEC_FIELD_)
#undef CODEC_FIELD_
    CODEC_LIT(b, ",\"durable\":");
    codec_bool(b, durable);
    CODEC_LIT(b, "}");
    if (!b->failed)
        b->data[open] = '{';
}

void codec_problem(buf *b, int status, const char *slug, const char *title,
                   const char *detail, const ns_row *current, bool durable)
{
    /* The slug is ours, never the client's, so it needs no escaping. */
    buf_puts(b, "{\"type\":\"urn:nodestate:problem:");
    buf_puts(b, slug);
    buf_puts(b, "\",\"title\":");
    buf_json_string(b, title);
    buf_printf(b, ",\"status\":%d", status);
    if (detail != NULL) {
        /*
         * The one gate every detail passes: whatever request bytes a caller
         * put in, the answer stays valid UTF-8, cut at a whole character.
         */
        char safe[CODEC_PROBLEM_DETAIL_MAX];
        text_safe(safe, sizeof safe, detail, strlen(detail));
        buf_puts(b, ",\"detail\":");
        buf_json_string(b, safe);
    }
    if (current != NULL) {
        buf_puts(b, ",\"current\":");
        codec_row(b, current, durable);
    }
    buf_append(b, "}", 1);
}

void codec_page(buf *b, const char *run_id, const engine_page *page,
                int64_t durable_seq)
{
    buf_puts(b, "{\"run_id\":");
    buf_json_string(b, run_id);
    buf_puts(b, ",\"nodes\":[");
    for (size_t i = 0; i < page->count; i++) {
        if (i > 0)
            buf_append(b, ",", 1);
        codec_row(b, page->rows[i], page->rows[i]->seq <= durable_seq);
    }
    buf_puts(b, "],\"next\":");
    /* next is the cursor for ?after=, and only when more nodes follow. */
    if (page->more && page->count > 0)
        buf_json_string(b, page->rows[page->count - 1]->node_id);
    else
        buf_puts(b, "null");
    buf_append(b, "}", 1);
}

void codec_summary(buf *b, const char *run_id, const engine_summary *s)
{
    buf_puts(b, "{\"run_id\":");
    buf_json_string(b, run_id);
    buf_printf(b, ",\"nodes\":%zu,\"counts\":{", s->nodes);
    for (int st = 0; st < NS_STATUS_COUNT; st++)
        buf_printf(b, "%s\"%s\":%zu", st > 0 ? "," : "",
                   model_status_name((ns_status)st), s->counts[st]);
    buf_printf(b, "},\"last_seq\":%" PRId64 ",\"updated_at\":", s->last_seq);
    if (s->nodes == 0)
        buf_puts(b, "null");
    else
        codec_ts(b, s->updated_at);
    buf_append(b, "}", 1);
}

void codec_deleted(buf *b, const char *run_id, size_t deleted, int64_t seq,
                   bool durable)
{
    buf_puts(b, "{\"run_id\":");
    buf_json_string(b, run_id);
    buf_printf(b, ",\"deleted\":%zu,\"seq\":%" PRId64 ",\"durable\":", deleted,
               seq);
    codec_bool(b, durable);
    buf_append(b, "}", 1);
}

static void codec_hist(buf *b, const char *name, const ns_hist *h)
{
    buf_printf(b, ",\"%s\":{\"count\":%" PRIu64 ",\"sum\":", name,
               atomic_load(&h->count));
    codec_micro(b, atomic_load(&h->sum_micro));
    buf_append(b, "}", 1);
}

/* One member of the stats object; sep is "" for the first and "," after. */
static void codec_stat_u64(buf *b, const char **sep, const char *name,
                           uint64_t v)
{
    buf_printf(b, "%s\"%s\":%" PRIu64, *sep, name, v);
    *sep = ",";
}

static void codec_stat_i64(buf *b, const char **sep, const char *name,
                           int64_t v)
{
    buf_printf(b, "%s\"%s\":%" PRId64, *sep, name, v);
    *sep = ",";
}

#define CODEC_STAT(b, sep, name, v) \
    _Generic((v), uint64_t: codec_stat_u64, int64_t: codec_stat_i64)(b, sep, name, v)

/* The members of NS_STATS_SCALARS that go on this side of updates_rejected. */
static void codec_scalars(buf *b, const char **sep, const ns_stats *s,
                          ns_stat_at at)
{
#define CODEC_SCALAR_(field, prom, type, store, json_at, prom_at, help) \
    if ((json_at) == at)                                              \
        CODEC_STAT(b, sep, #field, NS_STAT_READ_##store(&s->field));
    NS_STATS_SCALARS(CODEC_SCALAR_)
#undef CODEC_SCALAR_
}

void codec_stats(buf *b, const ns_stats *s, int64_t now_ms)
{
    const char *sep = "";
    buf_append(b, "{", 1);
    codec_scalars(b, &sep, s, NS_STAT_BEFORE_REJECTED);
    buf_printf(b, "%s\"updates_rejected\":{", sep);
    for (int r = 0; r < NS_REJECT_COUNT; r++) {
        const char *name = stats_reject_name((ns_reject)r);
        buf_printf(b, "%s\"%s\":%" PRIu64, r > 0 ? "," : "",
                   name != NULL ? name : "unknown",
                   atomic_load(&s->rejected[r]));
    }
    buf_append(b, "}", 1);
    sep = ",";
    codec_scalars(b, &sep, s, NS_STAT_AFTER_REJECTED);
    buf_puts(b, ",\"uptime_seconds\":");
    /* The wall clock can step back; uptime never goes negative. */
    int64_t up_ms = now_ms > s->start_ms ? now_ms - s->start_ms : 0;
    codec_micro(b, (uint64_t)up_ms * 1000u);
#define CODEC_HIST_(field, prom, bounds, help) codec_hist(b, #field, &s->field);
    NS_STATS_HISTS(CODEC_HIST_)
#undef CODEC_HIST_
    /* Codes never answered are left out, as in the Prometheus text. */
    buf_puts(b, ",\"http_responses\":{");
    bool first = true;
    for (int i = 0; i < NS_HTTP_CODES; i++) {
        uint64_t n = atomic_load(&s->http_responses[i]);
        if (n == 0)
            continue;
        buf_printf(b, "%s\"%d\":%" PRIu64, first ? "" : ",", NS_HTTP_MIN + i, n);
        first = false;
    }
    buf_puts(b, "}}");
}
