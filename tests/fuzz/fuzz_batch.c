/*
 * fuzz_batch: the batch body of POST /runs/{run_id}/nodes. Each input is a
 * body for run-1. Whatever codec_decode_batch makes of it must be a 400, 413
 * or 422 with a detail, or 1 to BATCH_MAX items, each of them either a 422
 * with a detail or an update with a valid node_id. An update is applied to a
 * new node with the transition rules, the row encoded with codec_row, and
 * that text decoded again as a single update of that node: it must decode
 * and repeat the row exactly, so what an item's own text gives (its spans
 * found by walking the batch) agrees with the decoder of single bodies.
 * codec_decode_batch_tree (jansson's tree for every body, no fast path) must
 * give the same refusal and detail, or the same items.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzzkit.h"
#include "buf.h"
#include "codec.h"
#include "rules.h"

#define BATCH_RUN "run-1"
#define BATCH_MAX 64
#define BATCH_MAX_ERROR 4096
#define BATCH_NOW_MS INT64_C(1764000000000)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool batch_text_same(ns_text a, ns_text b)
{
    if (a.set != b.set || (a.value == NULL) != (b.value == NULL))
        return false;
    return a.value == NULL || strcmp(a.value, b.value) == 0;
}

/* The fast path's answer is the tree decoder's, item by item. */
static void batch_compare(const uint8_t *data, size_t size, const codec_batch *a, int status,
                          const char *detail)
{
    int status2 = 0;
    char detail2[512];
    codec_batch *b = codec_decode_batch_tree((const char *)data, size, BATCH_RUN,
                                             BATCH_MAX_ERROR, BATCH_MAX, &status2, detail2,
                                             sizeof detail2);
    fuzzkit_check((a == NULL) == (b == NULL), "the fast path and the tree disagree on the envelope");
    fuzzkit_check(strcmp(detail, detail2) == 0, "the fast path and the tree give other details");
    if (a == NULL) {
        fuzzkit_check(status == status2, "the fast path and the tree give other statuses");
        return;
    }
    fuzzkit_check(codec_batch_len(a) == codec_batch_len(b), "the decoders count other items");
    for (size_t i = 0; i < codec_batch_len(a); i++) {
        const char *n1, *n2, *w1, *w2;
        const ns_update *u1 = codec_batch_item_at(a, i, &n1, &w1);
        const ns_update *u2 = codec_batch_item_at(b, i, &n2, &w2);
        fuzzkit_check((u1 == NULL) == (u2 == NULL), "the decoders judge an item apart");
        fuzzkit_check((n1 == NULL) == (n2 == NULL) && (n1 == NULL || strcmp(n1, n2) == 0),
                      "the decoders read another node_id");
        if (u1 == NULL) {
            fuzzkit_check(strcmp(w1, w2) == 0, "the decoders refuse an item differently");
            continue;
        }
        bool same = u1->status == u2->status && u1->has_attempt == u2->has_attempt &&
                    u1->attempt == u2->attempt && u1->ts_set == u2->ts_set &&
                    u1->has_retryable == u2->has_retryable && u1->retryable == u2->retryable &&
                    u1->force == u2->force && batch_text_same(u1->last_error, u2->last_error) &&
                    batch_text_same(u1->suspension_reason, u2->suspension_reason) &&
                    batch_text_same(u1->resume_state, u2->resume_state) &&
                    batch_text_same(u1->outputs, u2->outputs) &&
                    memcmp(u1->ts, u2->ts, sizeof u1->ts) == 0;
        fuzzkit_check(same, "the decoders make another update of an item");
    }
    codec_batch_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int status = 0;
    char detail[512];
    codec_batch *b = codec_decode_batch((const char *)data, size, BATCH_RUN, BATCH_MAX_ERROR,
                                        BATCH_MAX, &status, detail, sizeof detail);
    batch_compare(data, size, b, status, detail);
    if (!b) {
        fuzzkit_check(status == 400 || status == 413 || status == 422,
                      "a refused envelope that is not 400, 413 or 422");
        fuzzkit_check(detail[0] != '\0', "a refused envelope without a detail");
        return 0;
    }
    size_t n = codec_batch_len(b);
    fuzzkit_check(n >= 1 && n <= BATCH_MAX, "a batch outside 1..max items");
    for (size_t i = 0; i < n; i++) {
        const char *node_id, *why;
        const ns_update *u = codec_batch_item_at(b, i, &node_id, &why);
        if (!u) {
            fuzzkit_check(why != NULL && why[0] != '\0', "a refused item without a detail");
            continue;
        }
        fuzzkit_check(node_id != NULL && model_id_valid(node_id, strlen(node_id)),
                      "an accepted item without a valid node_id");
        ns_row draft;
        rules_verdict v = rules_apply(NULL, BATCH_RUN, node_id, u, BATCH_NOW_MS, &draft);
        fuzzkit_check(v == RULES_APPLY, "a new node refused an update");
        draft.seq = 1;
        draft.updated_at = BATCH_NOW_MS;
        ns_row *row = model_row_copy(&draft);
        fuzzkit_check(row != NULL, "model_row_copy ran out of memory");
        fuzzkit_round_trip("fuzz_batch", row, BATCH_NOW_MS);
        model_row_unref(row);
    }
    codec_batch_free(b);
    return 0;
}
