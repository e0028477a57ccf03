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

codec_batch *codec_decode_batch_tree(const char *body, size_t len, const char *run_id,
                                     size_t max_error_bytes, size_t max_items,
                                     int *status, char *detail, size_t detail_len)
{
    char scratch[1];
    codec_detail_dest(&detail, &detail_len, scratch);
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
