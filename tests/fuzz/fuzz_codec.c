/*
 * fuzz_codec: the update codec. Each input is a request body for the node
 * (run-1, node-1). Whatever codec_decode_update makes of it must be a 400 or
 * 422 with a detail, or an update; an update is applied to a new node with
 * the transition rules, the row encoded with codec_row, and that text (a GET
 * body, which clients may POST back) decoded again: it must decode, and
 * repeat the row exactly (a duplicate under the rules). So the encoder's
 * escaping, timestamps and the verbatim JSON members are checked against
 * the decoder.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzzkit.h"
#include "buf.h"
#include "codec.h"
#include "rules.h"

#define CODEC_RUN "run-1"
#define CODEC_NODE "node-1"
#define CODEC_MAX_ERROR 4096
/* A fixed clock: the stamps rules_apply adds then never differ between runs. */
#define CODEC_NOW_MS INT64_C(1764000000000)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ns_update u;
    int status = 0;
    char detail[512];
    codec_doc *doc = codec_decode_update((const char *)data, size, CODEC_RUN,
                                         CODEC_NODE, CODEC_MAX_ERROR, &u, &status,
                                         detail, sizeof detail);
    if (!doc) {
        fuzzkit_check(status == 400 || status == 422, "a refusal that is not 400 or 422");
        fuzzkit_check(detail[0] != '\0', "a refusal without a detail");
        return 0;
    }
    ns_row draft;
    rules_verdict v = rules_apply(NULL, CODEC_RUN, CODEC_NODE, &u, CODEC_NOW_MS, &draft);
    fuzzkit_check(v == RULES_APPLY, "a new node refused an update");
    draft.seq = 1;
    draft.updated_at = CODEC_NOW_MS;
    ns_row *row = model_row_copy(&draft);
    codec_doc_free(doc);   /* the packed row owns copies of every string */
    fuzzkit_check(row != NULL, "model_row_copy ran out of memory");
    fuzzkit_round_trip("fuzz_codec", row, CODEC_NOW_MS);
    model_row_unref(row);
    return 0;
}
