/*
 * Unit tests for writer: planning a run of queued ops into one store batch.
 * The newest row per node wins and the others count as coalesced; rows come
 * out sorted by (run_id, node_id); a delete of a run drops the older rows of
 * that run but not newer ones; repeated deletes collapse; last_seq is the
 * seq of the last op.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "writer.h"

/* Ops own their rows and delete ids; this file frees them at the end of each test. */
#define MAX_OPS 64

typedef struct fixture {
    ns_op ops[MAX_OPS];
    size_t n;
} fixture;

static void add_upsert(fixture *f, const char *run, const char *node, ns_status s)
{
    cr_assert_lt(f->n, MAX_OPS);
    ns_row d;
    memset(&d, 0, sizeof d);
    d.run_id = run;
    d.node_id = node;
    d.status = s;
    d.attempt = 1;
    for (int i = 0; i < NS_TS_COUNT; i++)
        d.ts[i] = NS_TS_NULL;
    d.seq = (int64_t)f->n + 1;
    ns_row *r = model_row_copy(&d);
    cr_assert_not_null(r);
    ns_op *op = &f->ops[f->n++];
    memset(op, 0, sizeof *op);
    op->row = r;
    op->seq = r->seq;
}

static void add_delete(fixture *f, const char *run)
{
    cr_assert_lt(f->n, MAX_OPS);
    ns_op *op = &f->ops[f->n];
    memset(op, 0, sizeof *op);
    op->delete_run = strdup(run);
    cr_assert_not_null(op->delete_run);
    op->seq = (int64_t)++f->n;
}

static void fixture_free(fixture *f)
{
    for (size_t i = 0; i < f->n; i++) {
        model_row_unref(f->ops[i].row);
        free(f->ops[i].delete_run);
    }
    f->n = 0;
}

static void plan(fixture *f, writer_plan *p)
{
    cr_assert_eq(writer_plan_build(f->ops, f->n, p), 0);
    /* The batch is a view of the plan's arrays. */
    cr_assert_eq((const void *)p->batch.rows, (const void *)p->rows);
    cr_assert_eq((const void *)p->batch.delete_runs, (const void *)p->deletes);
}

Test(writer, empty)
{
    fixture f = { .n = 0 };
    writer_plan p;
    plan(&f, &p);
    cr_assert_eq(p.batch.n_rows, 0);
    cr_assert_eq(p.batch.n_deletes, 0);
    cr_assert_eq(p.run_deletes, 0);
    cr_assert_eq(p.batch.last_seq, 0);
    cr_assert_eq(p.upserts, 0);
    cr_assert_eq(p.coalesced, 0);
    writer_plan_free(&p);
}

Test(writer, three_ops_one_node_coalesce_to_the_newest)
{
    fixture f = { .n = 0 };
    add_upsert(&f, "r", "a", NS_SCHEDULED);
    add_upsert(&f, "r", "a", NS_RUNNING);
    add_upsert(&f, "r", "a", NS_COMPLETED);
    writer_plan p;
    plan(&f, &p);
    cr_assert_eq(p.batch.n_rows, 1);
    cr_assert_eq(p.batch.rows[0], f.ops[2].row, "not the newest row");
    cr_assert_eq(p.batch.rows[0]->status, NS_COMPLETED);
    cr_assert_eq(p.upserts, 3);
    cr_assert_eq(p.coalesced, 2);
    cr_assert_eq(p.batch.n_deletes, 0);
    cr_assert_eq(p.batch.last_seq, 3);
    writer_plan_free(&p);
    fixture_free(&f);
}

Test(writer, distinct_nodes_are_not_coalesced)
{
    fixture f = { .n = 0 };
    add_upsert(&f, "r", "a", NS_RUNNING);
    add_upsert(&f, "r", "b", NS_RUNNING);
    add_upsert(&f, "s", "a", NS_RUNNING);
    /* ("ab","c") and ("a","bc") are different keys. */
    add_upsert(&f, "ab", "c", NS_RUNNING);
    add_upsert(&f, "a", "bc", NS_RUNNING);
    writer_plan p;
    plan(&f, &p);
    cr_assert_eq(p.batch.n_rows, 5);
    cr_assert_eq(p.coalesced, 0);
    cr_assert_eq(p.upserts, 5);
    writer_plan_free(&p);
    fixture_free(&f);
}

Test(writer, rows_sorted_by_run_then_node)
{
    fixture f = { .n = 0 };
    static const char *const keys[][2] = {
        { "r2", "b" }, { "r1", "z" }, { "r2", "a" }, { "r10", "a" },
        { "r1", "a" }, { "r1", "m" }, { "r1", "z" }, { "r0", "q" },
    };
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        add_upsert(&f, keys[i][0], keys[i][1], NS_RUNNING);
    writer_plan p;
    plan(&f, &p);
    static const char *const want[][2] = {
        { "r0", "q" }, { "r1", "a" }, { "r1", "m" }, { "r1", "z" },
        { "r10", "a" }, { "r2", "a" }, { "r2", "b" },
    };
    cr_assert_eq(p.batch.n_rows, sizeof want / sizeof *want);
    for (size_t i = 0; i < p.batch.n_rows; i++) {
        cr_assert_str_eq(p.batch.rows[i]->run_id, want[i][0], "row %zu", i);
        cr_assert_str_eq(p.batch.rows[i]->node_id, want[i][1], "row %zu", i);
    }
    /* r1/z appears twice: the later op (index 6) wins. */
    cr_assert_eq(p.batch.rows[3], f.ops[6].row);
    cr_assert_eq(p.coalesced, 1);
    writer_plan_free(&p);
    fixture_free(&f);
}

Test(writer, delete_after_upserts_drops_them)
{
    fixture f = { .n = 0 };
    add_upsert(&f, "r", "a", NS_RUNNING);
    add_upsert(&f, "r", "b", NS_RUNNING);
    add_upsert(&f, "other", "a", NS_RUNNING);
    add_delete(&f, "r");
    writer_plan p;
    plan(&f, &p);
    cr_assert_eq(p.batch.n_deletes, 1);
    cr_assert_str_eq(p.batch.delete_runs[0], "r");
    cr_assert_eq(p.batch.n_rows, 1, "rows of the deleted run still written");
    cr_assert_str_eq(p.batch.rows[0]->run_id, "other");
    cr_assert_eq(p.upserts, 3);
    cr_assert_eq(p.coalesced, 2);
    cr_assert_eq(p.batch.last_seq, 4);
    writer_plan_free(&p);
    fixture_free(&f);
}

Test(writer, upsert_after_delete_kept)
{
    fixture f = { .n = 0 };
    add_upsert(&f, "r", "a", NS_RUNNING);
    add_delete(&f, "r");
    add_upsert(&f, "r", "b", NS_SCHEDULED);
    add_upsert(&f, "r", "a", NS_IDLE);
    writer_plan p;
    plan(&f, &p);
    cr_assert_eq(p.batch.n_deletes, 1);
    cr_assert_eq(p.batch.n_rows, 2);
    cr_assert_eq(p.batch.rows[0], f.ops[3].row);
    cr_assert_eq(p.batch.rows[1], f.ops[2].row);
    cr_assert_eq(p.upserts, 3);
    cr_assert_eq(p.coalesced, 1);
    writer_plan_free(&p);
    fixture_free(&f);
}

Test(writer, duplicate_deletes_deduped)
{
    fixture f = { .n = 0 };
    add_delete(&f, "r");
    add_delete(&f, "s");
    add_delete(&f, "r");
    add_upsert(&f, "r", "a", NS_RUNNING);
    add_delete(&f, "r");
    writer_plan p;
    plan(&f, &p);
    cr_assert_eq(p.batch.n_deletes, 2);
    cr_assert_eq(p.run_deletes, 4, "each delete op counts, though three of r make one delete");
    bool r = false, s = false;
    for (size_t i = 0; i < p.batch.n_deletes; i++) {
        r |= strcmp(p.batch.delete_runs[i], "r") == 0;
        s |= strcmp(p.batch.delete_runs[i], "s") == 0;
    }
    cr_assert(r && s);
    cr_assert_eq(p.batch.n_rows, 0, "a row older than the last delete of its run survived");
    cr_assert_eq(p.coalesced, 1);
    cr_assert_eq(p.batch.last_seq, 5);
    writer_plan_free(&p);
    fixture_free(&f);
}

Test(writer, last_seq_is_the_last_ops)
{
    fixture f = { .n = 0 };
    add_upsert(&f, "r", "a", NS_RUNNING);
    add_upsert(&f, "r", "b", NS_RUNNING);
    add_upsert(&f, "r", "a", NS_COMPLETED);
    /* Seqs need not be dense: the engine's are, but the plan must not count. */
    f.ops[0].seq = 100;
    f.ops[1].seq = 250;
    f.ops[2].seq = 260;
    writer_plan p;
    plan(&f, &p);
    cr_assert_eq(p.batch.last_seq, 260);
    writer_plan_free(&p);
    fixture_free(&f);
}

Test(writer, many_ops_many_nodes)
{
    /* More ops than the key set's first size, with every node written twice. */
    enum { NODES = 30 };
    fixture f = { .n = 0 };
    char ids[NODES][8];
    for (int i = 0; i < NODES; i++)
        snprintf(ids[i], sizeof ids[i], "n%02d", NODES - 1 - i);
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < NODES; i++)
            add_upsert(&f, "r", ids[i], round ? NS_COMPLETED : NS_RUNNING);
    writer_plan p;
    plan(&f, &p);
    cr_assert_eq(p.batch.n_rows, NODES);
    cr_assert_eq(p.coalesced, NODES);
    cr_assert_eq(p.upserts, 2 * NODES);
    for (size_t i = 0; i < p.batch.n_rows; i++) {
        char want[32];
        snprintf(want, sizeof want, "n%02zu", i);
        cr_assert_str_eq(p.batch.rows[i]->node_id, want);
        cr_assert_eq(p.batch.rows[i]->status, NS_COMPLETED, "an older row won");
    }
    writer_plan_free(&p);
    fixture_free(&f);
}

Test(writer, plan_free_resets)
{
    fixture f = { .n = 0 };
    add_upsert(&f, "r", "a", NS_RUNNING);
    writer_plan p;
    plan(&f, &p);
    writer_plan_free(&p);
    cr_assert_null(p.rows);
    cr_assert_null(p.deletes);
    writer_plan_free(&p); /* twice is harmless */
    fixture_free(&f);
}

/*
 * A shared store judges a forced update by seq alone, so the row written
 * for a node carries the force of any live op coalesced into it; a force
 * before a delete of its run is moot; no force at all leaves forced NULL.
 */
Test(writer, forced_ops_mark_their_coalesced_row)
{
    fixture f = { .n = 0 };
    add_upsert(&f, "r", "a", NS_RUNNING);
    f.ops[f.n - 1].forced = true;
    add_upsert(&f, "r", "a", NS_COMPLETED); /* newer, not forced: coalesces the forced one */
    add_upsert(&f, "r", "b", NS_RUNNING);
    add_upsert(&f, "s", "a", NS_RUNNING);
    f.ops[f.n - 1].forced = true;
    add_delete(&f, "s");
    add_upsert(&f, "s", "b", NS_RUNNING);
    writer_plan p;
    cr_assert_eq(writer_plan_build(f.ops, f.n, &p), 0);
    cr_assert_eq(p.batch.n_rows, 3);
    cr_assert_not_null(p.batch.forced);
    cr_assert_str_eq(p.batch.rows[0]->node_id, "a");
    cr_assert(p.batch.forced[0], "r/a carries the coalesced force");
    cr_assert_not(p.batch.forced[1], "r/b");
    cr_assert_str_eq(p.batch.rows[2]->run_id, "s");
    cr_assert_not(p.batch.forced[2], "s/b: the forced s/a went with the delete");
    writer_plan_free(&p);
    fixture_free(&f);

    fixture g = { .n = 0 };
    add_upsert(&g, "r", "a", NS_RUNNING);
    cr_assert_eq(writer_plan_build(g.ops, g.n, &p), 0);
    cr_assert_null(p.batch.forced);
    writer_plan_free(&p);
    fixture_free(&g);
}

/*
 * Retention's deletes are marked as such (store_batch.expiring), per
 * delete, so a shared store judges them again; a batch without one has no
 * such array.
 */
Test(writer, expire_ops_mark_their_delete)
{
    fixture f = { .n = 0 };
    add_delete(&f, "api");
    add_delete(&f, "old");
    f.ops[1].expire = true;
    writer_plan p;
    plan(&f, &p);
    cr_assert_eq(p.batch.n_deletes, 2);
    cr_assert_eq(p.run_expires, 1);
    cr_assert_eq(p.run_deletes, 1);
    cr_assert_not_null(p.batch.expiring);
    for (size_t i = 0; i < p.batch.n_deletes; i++)
        cr_assert_eq(p.batch.expiring[i], strcmp(p.batch.delete_runs[i], "old") == 0,
                     "%s", p.batch.delete_runs[i]);
    writer_plan_free(&p);
    fixture_free(&f);

    add_delete(&f, "api");
    plan(&f, &p);
    cr_assert_null(p.batch.expiring);
    writer_plan_free(&p);
    fixture_free(&f);
}
