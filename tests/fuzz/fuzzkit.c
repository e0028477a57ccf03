#include "fuzzkit.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <jansson.h>

#include "buf.h"
#include "codec.h"
#include "rules.h"
#include "text.h"

void fuzzkit_check(int ok, const char *what)
{
    if (ok)
        return;
    fprintf(stderr, "fuzzkit: invariant broken: %s\n", what);
    abort();
}

/* ---- request text ---- */

/* Decodes %XX in place, as the transport does; a %00 ends the C string there. */
static void percent_decode(char *s)
{
    char *out = s;
    for (char *p = s; *p; p++) {
        int hi, lo;
        if (*p == '%' && (hi = text_hex_digit(p[1])) >= 0 && (lo = text_hex_digit(p[2])) >= 0) {
            *out++ = (char)(hi << 4 | lo);
            p += 2;
        } else {
            *out++ = *p;
        }
    }
    *out = '\0';
}

/* Splits the query part q (modified in place) into r->query. */
static void parse_query(fuzzkit_request *r, char *q)
{
    while (q && *q && r->query_count < FUZZKIT_MAX_FIELDS) {
        char *next = strchr(q, '&');
        if (next)
            *next++ = '\0';
        char *eq = strchr(q, '=');
        if (eq)
            *eq++ = '\0';
        percent_decode(q);
        if (eq)
            percent_decode(eq);
        r->query[r->query_count].name = q;
        r->query[r->query_count].value = eq ? eq : "";
        r->query_count++;
        q = next;
    }
}

int fuzzkit_request_parse(fuzzkit_request *r, const uint8_t *data, size_t size)
{
    memset(r, 0, sizeof *r);
    /* The head ends at the first blank line; the body is what follows it. */
    size_t head_len = size, body_at = size;
    for (size_t i = 0; i + 1 < size; i++) {
        if (data[i] == '\n' && data[i + 1] == '\n') {
            head_len = i;
            body_at = i + 2;
            break;
        }
    }
    r->text = malloc(head_len + 1);
    if (!r->text)
        return -1;
    memcpy(r->text, data, head_len);
    r->text[head_len] = '\0';   /* a NUL in the head simply ends it early */
    if (head_len < size) {
        r->body_len = size - body_at;
        /* malloc(0) may give NULL; one spare byte keeps a real pointer. */
        r->body_copy = malloc(r->body_len ? r->body_len : 1);
        if (!r->body_copy) {
            free(r->text);
            r->text = NULL;
            return -1;
        }
        memcpy(r->body_copy, data + body_at, r->body_len);
        r->body = r->body_copy;
    }

    char *line = r->text;
    char *rest = strchr(line, '\n');
    if (rest)
        *rest++ = '\0';
    char *sp = strchr(line, ' ');
    if (sp)
        *sp++ = '\0';
    r->method = line;
    /* Without a target the path is "": the NUL at the end of text, writable. */
    char *target = sp ? sp : r->text + head_len;
    char *q = strchr(target, '?');
    if (q)
        *q++ = '\0';
    percent_decode(target);
    r->path = target;
    parse_query(r, q);

    while (rest && *rest && r->header_count < FUZZKIT_MAX_FIELDS) {
        line = rest;
        rest = strchr(line, '\n');
        if (rest)
            *rest++ = '\0';
        char *colon = strchr(line, ':');
        if (!colon)
            continue;
        *colon++ = '\0';
        while (*colon == ' ')
            colon++;
        r->headers[r->header_count].name = line;
        r->headers[r->header_count].value = colon;
        r->header_count++;
    }
    return 0;
}

void fuzzkit_request_free(fuzzkit_request *r)
{
    free(r->text);
    free(r->body_copy);
    memset(r, 0, sizeof *r);
}

/* Header names are case-insensitive; the first one given wins, like MHD's lookup. */
static const char *request_header(void *ctx, const char *name, size_t nth)
{
    const fuzzkit_request *r = ctx;
    for (size_t i = 0; i < r->header_count; i++)
        if (strcasecmp(r->headers[i].name, name) == 0 && nth-- == 0)
            return r->headers[i].value;
    return NULL;
}

static const char *request_query(void *ctx, const char *name)
{
    const fuzzkit_request *r = ctx;
    for (size_t i = 0; i < r->query_count; i++)
        if (strcmp(r->query[i].name, name) == 0)
            return r->query[i].value;
    return NULL;
}

void fuzzkit_request_api(const fuzzkit_request *r, api_request *out)
{
    memset(out, 0, sizeof *out);
    out->method = r->method;
    out->path = r->path;
    out->body = r->body;
    out->body_len = r->body_len;
    out->header = request_header;
    out->query = request_query;
    out->ctx = (void *)r;
}

/* ---- engine and api ---- */

void fuzzkit_env_open(fuzzkit_env *env, const char *name, const char *token)
{
    memset(env, 0, sizeof *env);
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp || strlen(tmp) > 24)
        tmp = "/tmp";
    snprintf(env->dir, sizeof env->dir, "%s/%s.XXXXXX", tmp, name);
    fuzzkit_check(mkdtemp(env->dir) != NULL, "mkdtemp");
    snprintf(env->db_path, sizeof env->db_path, "%s/ns.db", env->dir);

    engine_config ec = {
        .db_path = env->db_path,
        .batch_size = 256,
        .batch_interval = 0.01,
        .queue_capacity = 4096,
        .queue_max_bytes = 16u << 20,
        .shutdown_timeout = 10,
        /* Every input may name new runs and nodes: bound what stays in memory. */
        .cache_max_nodes = 2000,
        .cache_max_bytes = 8u << 20,
    };
    char err[512] = "";
    env->e = engine_open(&ec, err, sizeof err);
    if (!env->e)
        fprintf(stderr, "fuzzkit: engine_open: %s\n", err);
    fuzzkit_check(env->e != NULL, "engine_open");

    api_config ac = {
        .max_body_bytes = 1 << 20,
        .max_error_bytes = 4096,
        .max_wait = 30,
        .default_wait = 10,
        .token = token,
    };
    env->a = api_new(env->e, &ac);
    fuzzkit_check(env->a != NULL, "api_new");
}

void fuzzkit_env_close(fuzzkit_env *env)
{
    static const char *const suffixes[] = { "", "-wal", "-shm", "-journal", ".spill",
                                            ".spill-wal", ".spill-shm", ".spill-journal" };
    if (!env->e)
        return;
    api_free(env->a);
    engine_close(env->e);
    env->a = NULL;
    env->e = NULL;
    char p[PATH_MAX];
    for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
        snprintf(p, sizeof p, "%s%s", env->db_path, suffixes[i]);
        unlink(p);
    }
    rmdir(env->dir);
}

/* ---- answering ---- */

static void check_response(const api_response *resp)
{
    fuzzkit_check(resp->status >= 100 && resp->status <= 599, "status outside 100..599");
    fuzzkit_check(resp->wait == NULL && resp->wait_seq == 0, "a finished answer still parked");
    /* A 304 holds the body its 200 would have (the transport sends its length only): checked alike. */
    if (!resp->body)
        return;
    fuzzkit_check(resp->content_type != NULL, "a body without a content type");
    fuzzkit_check(strlen(resp->body) == resp->body_len, "a NUL inside the body");
    if (strstr(resp->content_type, "json")) {
        json_error_t err;
        json_t *doc = json_loadb(resp->body, resp->body_len, JSON_DECODE_INT_AS_REAL, &err);
        if (!doc)
            fprintf(stderr, "fuzzkit: %s in: %.*s\n", err.text, (int)resp->body_len,
                    resp->body);
        fuzzkit_check(doc != NULL, "a JSON body jansson cannot read");
        fuzzkit_check(json_is_object(doc), "a JSON body that is not an object");
        json_decref(doc);
    }
}

int fuzzkit_answer(fuzzkit_env *env, const api_request *req)
{
    api_response resp;
    api_handle(env->a, req, &resp);
    if (resp.wait) {
        /* What the transport's park ends in, without the wait. */
        bool durable = engine_durable_seq(env->e) >= resp.wait_seq;
        api_finish_wait(env->a, &resp, durable);
    }
    check_response(&resp);
    int status = resp.status;
    api_response_free(&resp);
    return status;
}

void fuzzkit_round_trip(const char *who, const ns_row *row, int64_t now_ms)
{
    buf b;
    buf_init(&b);
    codec_row(&b, row, false);
    fuzzkit_check(!b.failed, "codec_row ran out of memory");
    ns_update again;
    int status = 0;
    char detail[512];
    codec_doc *doc = codec_decode_update(b.data, b.len, row->run_id, row->node_id, SIZE_MAX,
                                         &again, &status, detail, sizeof detail);
    if (!doc)
        fprintf(stderr, "%s: %d %s\nin: %.*s\n", who, status, detail, (int)b.len, b.data);
    fuzzkit_check(doc != NULL, "an encoded row does not decode");
    ns_row draft;
    rules_verdict v = rules_apply(row, row->run_id, row->node_id, &again, now_ms, &draft);
    if (v != RULES_DUPLICATE)
        fprintf(stderr, "%s: verdict %d for: %.*s\n", who, (int)v, (int)b.len, b.data);
    fuzzkit_check(v == RULES_DUPLICATE, "an encoded row does not repeat itself");
    codec_doc_free(doc);
    buf_free(&b);
}
