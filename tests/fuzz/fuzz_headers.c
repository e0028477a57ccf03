/*
 * fuzz_headers: the parsers of request headers, reached through api_handle
 * with a bearer token configured: Authorization (every route), Accept (the
 * content negotiation of /stats), If-None-Match (GET of a node, whose ETag
 * the input may guess) and Content-Type (POST).
 *
 * Input: one control byte, then up to five header values separated by '\n'
 * in the order Authorization, Accept, If-None-Match, Content-Type, and a
 * second If-None-Match line.
 *   bits 0-1 of the control byte: the request, one of
 *            GET /stats, GET the node, POST the node, GET the run;
 *   bit 2:   send the right token instead of the first value (so the other
 *            parsers are reached without guessing it);
 *   bits 3-7: whether each of the five header lines is sent at all.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fuzzkit.h"

#define HEADERS_TOKEN "fuzz-secret-token"
#define HEADERS_RUN "run-1"
#define HEADERS_NODE "node-1"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* libFuzzer calls the target with no context: the engine has to live here. */
static fuzzkit_env headers_env;

static const char *const header_names[5] = {
    "Authorization", "Accept", "If-None-Match", "Content-Type", "If-None-Match",
};

typedef struct headers_input {
    const char *values[5];   /* NULL: not sent */
} headers_input;

static const char *headers_lookup(void *ctx, const char *name, size_t nth)
{
    const headers_input *in = ctx;
    for (size_t i = 0; i < 5; i++)
        if (in->values[i] && strcasecmp(header_names[i], name) == 0 && nth-- == 0)
            return in->values[i];
    return NULL;
}

static void headers_close(void)
{
    fuzzkit_env_close(&headers_env);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzzkit_env_open(&headers_env, "fuzz_headers", HEADERS_TOKEN);
    atexit(headers_close);
    /* The node the GETs read, so If-None-Match is compared with a real ETag. */
    headers_input in = { { "Bearer " HEADERS_TOKEN, NULL, NULL, NULL, NULL } };
    static const char body[] = "{\"status\":\"running\"}";
    api_request req = {
        .method = "POST",
        .path = "/runs/" HEADERS_RUN "/nodes/" HEADERS_NODE "/state",
        .body = body,
        .body_len = sizeof body - 1,
        .header = headers_lookup,
        .ctx = &in,
    };
    fuzzkit_check(fuzzkit_answer(&headers_env, &req) == 202, "the first update not accepted");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    unsigned control = data[0];
    char *text = malloc(size);
    if (!text)
        return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';

    headers_input in = { { NULL, NULL, NULL, NULL, NULL } };
    char *p = text;
    for (size_t i = 0; i < 5 && p; i++) {
        char *next = strchr(p, '\n');
        if (next)
            *next++ = '\0';
        if (control & (8u << i))
            in.values[i] = p;
        p = next;
    }
    if (control & 4u)
        in.values[0] = "Bearer " HEADERS_TOKEN;

    static const char body[] = "{\"status\":\"running\"}";
    api_request req = { .method = "GET", .header = headers_lookup, .ctx = &in };
    switch (control & 3u) {
    case 0:
        req.path = "/stats";
        break;
    case 1:
        req.path = "/runs/" HEADERS_RUN "/nodes/" HEADERS_NODE "/state";
        break;
    case 2:
        /* Changes nothing after the first time: a duplicate, answered 200. */
        req.method = "POST";
        req.path = "/runs/" HEADERS_RUN "/nodes/" HEADERS_NODE "/state";
        req.body = body;
        req.body_len = sizeof body - 1;
        break;
    default:
        req.path = "/runs/" HEADERS_RUN;
        break;
    }
    int status = fuzzkit_answer(&headers_env, &req);
    if (control & 4u)
        fuzzkit_check(status != 401, "the right token refused");
    else if (!in.values[0])
        fuzzkit_check(status == 401, "no Authorization header, yet not 401");
    else if (strncasecmp(in.values[0], "Bearer ", 7) != 0)
        fuzzkit_check(status == 401, "an Authorization that is not Bearer, yet not 401");
    free(text);
    return 0;
}
