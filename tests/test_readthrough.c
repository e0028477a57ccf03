/*
 * Unit tests for readthrough, on a real SQLite file: after a reopen the
 * cache is empty, so a node's read brings in that node alone (the run is
 * cached in part), a whole-run read completes the run from the file, and a
 * run that is not on disk is NOT_FOUND without being cached. Called with the
 * engine's lock held, as the engine does.
 */
#include <criterion/criterion.h>

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "store_fixture.h"
#include "server/engine/readthrough.h"

static void setup(void)
{
    sfx_setup("test_readthrough");
}

TestSuite(readthrough, .init = setup, .fini = sfx_teardown, .timeout = 120);

static engine *open_engine(void)
{
    engine_config c = {
        .db_path = sfx_db_path(),
        .batch_size = 1000,
        .batch_interval = 60,
        .queue_capacity = 10000,
        .shutdown_timeout = 10,
    };
    char err[512] = "";
    engine *e = engine_open(&c, err, sizeof err);
    cr_assert_not_null(e, "engine_open: %s", err);
    return e;
}

static void accept(engine *e, const char *run, const char *node, ns_status s)
{
    ns_update u;
    memset(&u, 0, sizeof u);
    u.status = s;
    for (int i = 0; i < NS_TS_COUNT; i++)
        u.ts[i] = NS_TS_NULL;
    ns_row *out = NULL;
    cr_assert_eq(engine_submit(e, run, node, &u, &out), ENGINE_ACCEPTED);
    model_row_unref(out);
}

Test(readthrough, node_then_whole_run_from_the_file)
{
    engine *e = open_engine();
    accept(e, "r", "a", NS_RUNNING);
    accept(e, "r", "b", NS_SCHEDULED);
    cr_assert_eq(engine_close(e), 0);
    e = open_engine(); /* an empty cache over the stored rows */

    lockcheck_lock(&e->lock);
    ns_row *cur = NULL;
    engine_result res = ENGINE_ERROR;
    cache_run *run = readthrough_run_node(e, "r", "a", false, &cur, &res);
    cr_assert_not_null(run);
    cr_assert_not_null(cur);
    cr_assert_str_eq(cur->node_id, "a");
    cr_assert_eq(cur->status, NS_RUNNING);
    cr_assert_not(run->complete, "one node's read cached the whole run");
    cr_assert_eq(run->nodes, 1);

    cache_run *view = NULL;
    cache_run *whole = readthrough_run_whole(e, "r", &res, &view);
    cr_assert_not_null(whole);
    cr_assert_null(view);
    cr_assert(whole->complete);
    cr_assert_eq(whole->nodes, 2);

    cur = NULL;
    cr_assert_null(readthrough_run_node(e, "nope", "x", false, &cur, &res));
    cr_assert_eq(res, ENGINE_NOT_FOUND);
    cr_assert_null(cur);
    lockcheck_unlock(&e->lock);
    cr_assert_eq(engine_close(e), 0);
}
