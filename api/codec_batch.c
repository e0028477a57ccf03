/*
 * codec_batch.c: decoding a batch body (POST /runs/{run_id}/nodes):
 * codec_decode_batch with its fast path for the commonest bodies, and the
 * jansson tree decoder codec_decode_batch_tree every other body goes to. Apart
 * from codec.c because the envelope, the items and the second reader of the
 * text are a concern of their own; each item is still judged by codec.c's
 * codec_member, so an item and a single update can never be read apart.
 */
#include "codec.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "codec_internal.h"
#include "text.h"

/*
 * ---- a batch of updates: {"updates": [ {update + "node_id"}, ... ]} ----
 *
 * The whole body is parsed once by jansson (duplicate keys refused at every
 * depth); codec.c's scanner then walks the same text to find each item's
 * span, so an item's attempt, resume_state and outputs are read from its
 * own text exactly as a single update's are from its body.
 */

/* One item: its update, or the 422 detail that refused it. */
typedef struct codec_batch_item {
    const char *node_id;  /* as sent (a string), or NULL when missing or not a string */
    char *id;             /* node_id's own copy when no tree holds it (an item read as text) */
    bool ok;
    ns_update u;          /* ok: the update, strings borrowed from the batch */
    codec_doc own;        /* its compact resume_state and outputs; root: its own tree, when read alone */
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
        json_decref(b->items[i].own.root);
        free(b->items[i].own.resume_state);
        free(b->items[i].own.outputs);
        free(b->items[i].detail);
        free(b->items[i].id);
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
        const char *key, *key_end;
        p = codec_member_next(p, end, &key, &key_end, out);
        if (p == NULL)
            return -1;
        if (codec_key_is(key, key_end, name))
            return 0;
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

/*
 * Checks the envelope root: "run_id" (if any) the path's, nothing else but
 * "updates", an array of 1 to max_items. Its array, or NULL with *status
 * and detail.
 */
static json_t *codec_batch_envelope(json_t *root, const char *run_id, size_t max_items,
                                    int *status, char *detail, size_t detail_len)
{
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "updates") == 0)
            continue;
        if (strcmp(key, "run_id") == 0) {
            if (codec_same_id(v, run_id) != 0) {
                codec_fail(status, 422, detail, detail_len,
                           "member \"%s\" must equal the run id in the path", key);
                return NULL;
            }
            continue;
        }
        char shown[CODEC_KEY_SHOWN + 1];
        text_safe(shown, sizeof shown, key, strlen(key));
        codec_fail(status, 422, detail, detail_len, "unknown member \"%s\"", shown);
        return NULL;
    }
    json_t *arr = json_object_get(root, "updates");
    if (!json_is_array(arr)) {
        codec_fail(status, 422, detail, detail_len, "member \"%s\" must be an array of updates",
                   "updates");
        return NULL;
    }
    size_t n = json_array_size(arr);
    if (n == 0) {
        codec_fail(status, 422, detail, detail_len, "member \"%s\" must hold at least one update",
                   "updates");
        return NULL;
    }
    if (n > max_items) {
        *status = 413;
        codec_detail(detail, detail_len, "\"updates\" holds %zu items; at most %zu are taken "
                     "in one request", n, max_items);
        return NULL;
    }
    return arr;
}

/*
 * Hands each item of the top-level "updates" array of body, found by the
 * scanner, to visit in order: their count, or -1 when the text is not read
 * as such an array (visit may have seen some items by then).
 */
static long codec_batch_walk(const char *body, size_t len,
                             void (*visit)(void *ctx, size_t i, codec_span item), void *ctx)
{
    const char *end = body + len;
    codec_span list;
    if (codec_find_member(body, end, "updates", &list) != 0 || *list.p != '[')
        return -1;
    const char *p = codec_skip_ws(list.p + 1, end);
    long n = 0;
    if (p < end && *p == ']')
        return 0;
    for (;;) {
        const char *after = codec_skip_value(p, end);
        if (after == NULL)
            return -1;
        visit(ctx, (size_t)n++, (codec_span){ p, (size_t)(after - p) });
        p = codec_skip_ws(after, end);
        if (p < end && *p == ']')
            return n;
        if (p == end || *p != ',')
            return -1;
        p = codec_skip_ws(p + 1, end);
    }
}

/* Where codec_batch_spans stores the spans. */
typedef struct span_list {
    codec_span *out;
    size_t cap;
} span_list;

static void span_keep(void *ctx, size_t i, codec_span item)
{
    span_list *l = ctx;
    if (i < l->cap)
        l->out[i] = item;
}

/* The spans of the items of body's "updates" (at most cap kept in out): codec_batch_walk's count. */
static long codec_batch_spans(const char *body, size_t len, codec_span *out, size_t cap)
{
    span_list l = { out, cap };
    return codec_batch_walk(body, len, span_keep, &l);
}

/* Building the envelope of a body: its text with every item replaced by 0. */
typedef struct envelope_text {
    const char *body;
    char *env;     /* holds the body's length + 1 bytes */
    size_t len;    /* of env so far */
    size_t from;   /* the body's bytes before this are in env */
} envelope_text;

static void envelope_keep(void *ctx, size_t i, codec_span item)
{
    (void)i;
    envelope_text *e = ctx;
    size_t at = (size_t)(item.p - e->body);
    memcpy(e->env + e->len, e->body + e->from, at - e->from);
    e->len += at - e->from;
    e->env[e->len++] = '0';
    e->from = at + item.n;
}

/*
 * The node_id of an item jansson would not read (text t), when it is
 * plainly there: a top-level member holding a valid id without escapes (the
 * first, if named twice); NULL otherwise or out of memory.
 */
static char *codec_item_id(codec_span t)
{
    codec_span v;
    if (codec_find_member(t.p, t.p + t.n, "node_id", &v) != 0 || v.n < 2 || *v.p != '"' ||
        memchr(v.p, '\\', v.n) != NULL || !model_id_valid(v.p + 1, v.n - 2))
        return NULL;
    return strndup(v.p + 1, v.n - 2);
}

/*
 * Judges item v (text t) into it: ok, or refused with its 422 detail. 0, or
 * -1 with *status 500 and detail when out of memory.
 */
static int codec_batch_take(codec_batch_item *it, json_t *v, codec_span t, const char *run_id,
                            size_t max_error_bytes, int *status, char *detail,
                            size_t detail_len)
{
    char why[CODEC_DETAIL_MAX];
    int item_status = 422;
    if (codec_batch_decode_item(it, v, t, run_id, max_error_bytes, &item_status, why,
                                sizeof why) == 0) {
        it->ok = true;
        return 0;
    }
    if (item_status >= 500 || (it->detail = strdup(why)) == NULL) {
        codec_fail(status, 500, detail, detail_len, "%s", why);
        return -1;
    }
    return 0;
}

/* Allocates b's n items; 0, or -1 with *status 500. */
static int codec_batch_alloc(codec_batch *b, size_t n, int *status, char *detail,
                             size_t detail_len)
{
    b->items = calloc(n, sizeof *b->items);
    if (b->items == NULL)
        return codec_fail(status, 500, detail, detail_len, "%s", "out of memory");
    b->n = n;
    return 0;
}

/*
 * A body jansson refused for something inside it that valid JSON may hold
 * (codec_json_value_refused): read again item by item, so that the item
 * holding it gets its own 422 and the others still apply. The envelope is
 * read with every item in it replaced by 0, each item on its own. NULL
 * when that does not hold (the envelope or an item is not JSON, or the
 * scanner does not find the items): then the body's own refusal stands,
 * and *status and detail are left as they were, unless the envelope itself
 * is refused (413, 422) or memory runs out (500).
 */
static codec_batch *codec_decode_batch_by_item(const char *body, size_t len, const char *run_id,
                                               size_t max_error_bytes, size_t max_items,
                                               int *status, char *detail, size_t detail_len)
{
    codec_batch *b = calloc(1, sizeof *b);
    codec_span *spans = NULL;
    envelope_text e = { body, malloc(len + 1), 0, 0 };
    json_error_t err;
    if (b == NULL || e.env == NULL) {
        codec_fail(status, 500, detail, detail_len, "%s", "out of memory");
        goto fail;
    }
    long n = codec_batch_walk(body, len, envelope_keep, &e);
    if (n < 0)
        goto fail;
    memcpy(e.env + e.len, body + e.from, len - e.from);
    e.len += len - e.from;
    b->root = codec_json_load(e.env, e.len, &err);
    if (b->root == NULL || !json_is_object(b->root))
        goto fail;
    /*
     * Refused, the envelope says why (413: too many items, none is read;
     * 422); with another count than the scanner's items, the body's 400
     * stands.
     */
    json_t *arr = codec_batch_envelope(b->root, run_id, max_items, status, detail, detail_len);
    if (arr == NULL || json_array_size(arr) != (size_t)n)
        goto fail;
    if ((spans = malloc((size_t)n * sizeof *spans)) == NULL) {
        codec_fail(status, 500, detail, detail_len, "%s", "out of memory");
        goto fail;
    }
    codec_batch_spans(body, len, spans, (size_t)n);
    if (codec_batch_alloc(b, (size_t)n, status, detail, detail_len) != 0)
        goto fail;
    for (size_t i = 0; i < b->n; i++) {
        codec_batch_item *it = &b->items[i];
        it->own.root = codec_json_load(spans[i].p, spans[i].n, &err);
        if (it->own.root == NULL) {
            char why[CODEC_DETAIL_MAX];
            if (!codec_json_value_refused(&err))
                goto fail; /* not JSON: the body's 400 stands */
            codec_json_detail(&err, why, sizeof why);
            if ((it->detail = strdup(why)) == NULL) {
                codec_fail(status, 500, detail, detail_len, "%s", "out of memory");
                goto fail;
            }
            it->node_id = it->id = codec_item_id(spans[i]);
            continue;
        }
        if (codec_batch_take(it, it->own.root, spans[i], run_id, max_error_bytes, status,
                             detail, detail_len) != 0)
            goto fail;
    }
    free(spans);
    free(e.env);
    return b;
fail:
    codec_batch_free(b);
    free(spans);
    free(e.env);
    return NULL;
}

codec_batch *codec_decode_batch_tree(const char *body, size_t len, const char *run_id,
                                     size_t max_error_bytes, size_t max_items,
                                     int *status, char *detail, size_t detail_len)
{
    char scratch[1];
    codec_detail_dest(&detail, &detail_len, scratch);
    json_error_t err;
    codec_batch *b = calloc(1, sizeof *b);
    if (b == NULL) {
        codec_fail(status, 500, detail, detail_len, "%s", "out of memory");
        return NULL;
    }
    if ((b->root = codec_load_object(body, len, status, detail, detail_len, &err)) == NULL) {
        codec_batch_free(b);
        return codec_json_value_refused(&err)
                   ? codec_decode_batch_by_item(body, len, run_id, max_error_bytes, max_items,
                                                status, detail, detail_len)
                   : NULL;
    }
    json_t *arr = codec_batch_envelope(b->root, run_id, max_items, status, detail, detail_len);
    size_t n = arr != NULL ? json_array_size(arr) : 0;
    codec_span *spans = arr != NULL ? malloc(n * sizeof *spans) : NULL;
    if (arr == NULL)
        goto fail;
    if (spans == NULL || codec_batch_alloc(b, n, status, detail, detail_len) != 0) {
        codec_fail(status, 500, detail, detail_len, "%s", "out of memory");
        goto fail;
    }
    if (codec_batch_spans(body, len, spans, n) != (long)n) {
        codec_fail(status, 500, detail, detail_len, "%s", "cannot locate the updates");
        goto fail;
    }
    for (size_t i = 0; i < n; i++)
        if (codec_batch_take(&b->items[i], json_array_get(arr, i), spans[i], run_id,
                             max_error_bytes, status, detail, detail_len) != 0)
            goto fail;
    free(spans);
    return b;
fail:
    free(spans);
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
