/*
 * fuzz_router: the router and every handler behind it. Each input is one
 * request in fuzzkit's text form (method, path, query, headers, body),
 * answered by api_handle against a real engine on a temporary SQLite file
 * that stays open for the whole run, so writes, reads through SQLite, pages,
 * summaries, deletes and ?wait=true all see the state earlier inputs left.
 * fuzzkit_answer checks each answer's invariants.
 *
 * The engine outlives the inputs, so an input found to crash may need the
 * ones before it to do so again; the crash report names the input that did.
 */
#include <stdint.h>
#include <stdlib.h>

#include "fuzzkit.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* libFuzzer calls the target with no context: the engine has to live here. */
static fuzzkit_env router_env;

static void router_close(void)
{
    fuzzkit_env_close(&router_env);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzzkit_env_open(&router_env, "fuzz_router", NULL);
    atexit(router_close);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzzkit_request r;
    if (fuzzkit_request_parse(&r, data, size) != 0)
        return 0;
    api_request req;
    fuzzkit_request_api(&r, &req);
    fuzzkit_answer(&router_env, &req);
    fuzzkit_request_free(&r);
    return 0;
}
