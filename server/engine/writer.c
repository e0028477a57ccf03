#include "writer.h"

#include <stdlib.h>
#include <string.h>

/* A set of (run, node) keys; node NULL stands for "the whole run" (a delete). */
typedef struct keyset {
    const char **runs;
    const char **nodes;
    size_t mask;
} keyset;

static uint64_t hash_key(const char *run, const char *node)
{
    /* "\xff" never occurs in an id: ("ab","c") and ("a","bc") hash apart. */
    uint64_t h = model_hash(model_hash(MODEL_HASH_SEED, run), "\xff");
    if (node)
        h = model_hash(h, node);
    return h ^ (h >> 29);
}

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* Adds (run, node); returns false if it was already there. */
static bool keyset_add(keyset *k, const char *run, const char *node)
{
    size_t i = hash_key(run, node) & k->mask;
    while (k->runs[i]) {
        if (str_eq(k->nodes[i], node) && strcmp(k->runs[i], run) == 0)
            return false;
        i = (i + 1) & k->mask;
    }
    k->runs[i] = run;
    k->nodes[i] = node;
    return true;
}

static bool keyset_has(const keyset *k, const char *run, const char *node)
{
    size_t i = hash_key(run, node) & k->mask;
    while (k->runs[i]) {
        if (str_eq(k->nodes[i], node) && strcmp(k->runs[i], run) == 0)
            return true;
        i = (i + 1) & k->mask;
    }
    return false;
}

static int by_key(const void *a, const void *b)
{
    const ns_row *x = *(const ns_row *const *)a;
    const ns_row *y = *(const ns_row *const *)b;
    int c = strcmp(x->run_id, y->run_id);
    return c ? c : strcmp(x->node_id, y->node_id);
}

int writer_plan_build(const ns_op *ops, size_t n, writer_plan *plan)
{
    memset(plan, 0, sizeof *plan);
    size_t slots = 16;
    while (slots < n * 2)
        slots *= 2;
    keyset k = { calloc(slots, sizeof *k.runs), calloc(slots, sizeof *k.nodes), slots - 1 };
    /* The nodes with a forced update among their live ops: a coalesced row inherits the force. */
    keyset f = { NULL, NULL, slots - 1 };
    plan->deletes = malloc((n ? n : 1) * sizeof *plan->deletes);
    plan->delete_seqs = malloc((n ? n : 1) * sizeof *plan->delete_seqs);
    plan->expiring = malloc((n ? n : 1) * sizeof *plan->expiring);
    plan->rows = malloc((n ? n : 1) * sizeof *plan->rows);
    if (!k.runs || !k.nodes || !plan->deletes || !plan->delete_seqs || !plan->expiring ||
        !plan->rows)
        goto err;

    /*
     * Newest first: the first row seen for a node is the one that wins, and a
     * row older than a delete of its run is moot.
     */
    size_t n_del = 0, n_rows = 0;
    for (size_t i = n; i-- > 0;) {
        const ns_op *op = &ops[i];
        if (op->delete_run) {
            if (op->expire)
                plan->run_expires++;
            else
                plan->run_deletes++;
            if (keyset_add(&k, op->delete_run, NULL)) {
                plan->expiring[n_del] = op->expire;
                plan->delete_seqs[n_del] = op->seq;
                plan->deletes[n_del++] = op->delete_run;
            }
            continue;
        }
        plan->upserts++;
        const ns_row *r = op->row;
        if (op->forced && !keyset_has(&k, r->run_id, NULL)) {
            if (!f.runs && (!(f.runs = calloc(slots, sizeof *f.runs)) ||
                            !(f.nodes = calloc(slots, sizeof *f.nodes))))
                goto err;
            keyset_add(&f, r->run_id, r->node_id);
        }
        if (keyset_has(&k, r->run_id, NULL) || !keyset_add(&k, r->run_id, r->node_id)) {
            plan->coalesced++;
            continue;
        }
        plan->rows[n_rows++] = op->row;
    }
    qsort(plan->rows, n_rows, sizeof *plan->rows, by_key);
    if (f.runs) {
        if (!(plan->forced = malloc((n_rows ? n_rows : 1) * sizeof *plan->forced)))
            goto err;
        for (size_t i = 0; i < n_rows; i++)
            plan->forced[i] = keyset_has(&f, plan->rows[i]->run_id, plan->rows[i]->node_id);
        plan->batch.forced = plan->forced;
    }

    plan->batch.delete_runs = plan->deletes;
    plan->batch.delete_seqs = plan->delete_seqs;
    if (plan->run_expires)
        plan->batch.expiring = plan->expiring;
    plan->batch.n_deletes = n_del;
    plan->batch.rows = plan->rows;
    plan->batch.n_rows = n_rows;
    plan->batch.last_seq = n ? ops[n - 1].seq : 0;
    free(k.runs);
    free(k.nodes);
    free(f.runs);
    free(f.nodes);
    return 0;
err:
    free(k.runs);
    free(k.nodes);
    free(f.runs);
    free(f.nodes);
    writer_plan_free(plan);
    return -1;
}

void writer_plan_free(writer_plan *plan)
{
    free(plan->deletes);
    free(plan->delete_seqs);
    free(plan->expiring);
    free(plan->rows);
    free(plan->forced);
    memset(plan, 0, sizeof *plan);
}
