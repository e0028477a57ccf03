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
#include "readthrough.h"

static void setup(void)
{
    sfx_setup("test_readthrough");
}

TestSuite(readthrough, .init = setup, .fini = sfx_teardown, .timeout = 120);

Test(readthrough, node_then_whole_run_from_the_file)
{
    engine *e = sfx_open_engine();
    sfx_accept(e, "r", "a", NS_RUNNING);
    sfx_accept(e, "r", "b", NS_SCHEDULED);
    cr_assert_eq(engine_close(e), 0);
    e = sfx_open_engine(); /* an empty cache over the stored rows */

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
    cache_run *whole = readthrough_run_whole(e, "r", false, &res, &view);
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
