/*
 * Unit tests for writer_thread, with the real writer on a real SQLite file:
 * writer_thread_drop_queue gives up on what is queued and engine_close
 * reports it as lost (nothing of it reaches the file), and the sidecar's
 * path for log lines names the .spill file. The writer is held in its
 * durable callback (writer_blocker.h) while the queue is dropped, so it
 * takes nothing meanwhile; no assertion depends on timing.
 */
#include <criterion/criterion.h>

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "store_fixture.h"
#include "server/engine/writer_thread.h"
#include "writer_blocker.h"

static void setup(void)
{
    sfx_setup("test_writer_thread");
}

TestSuite(writer_thread, .init = setup, .fini = sfx_teardown, .timeout = 120);

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

static void accept(engine *e, const char *run, const char *node)
{
    ns_update u;
    memset(&u, 0, sizeof u);
    u.status = NS_RUNNING;
    for (int i = 0; i < NS_TS_COUNT; i++)
        u.ts[i] = NS_TS_NULL;
    ns_row *out = NULL;
    cr_assert_eq(engine_submit(e, run, node, &u, &out), ENGINE_ACCEPTED);
    model_row_unref(out);
}

Test(writer_thread, dropped_queue_is_reported_lost)
{
    engine *e = open_engine();
    blocker b;
    blocker_arm(e, &b);
    accept(e, "w", "blocker");
    cr_assert(blocker_wait(e, &b), "the writer never committed the blocker");
    accept(e, "r", "a");
    accept(e, "r", "b");
    accept(e, "r", "c");

    lockcheck_lock(&e->lock);
    writer_thread_drop_queue(e);
    cr_assert_eq(e->unflushed, 3);
    lockcheck_unlock(&e->lock);
    atomic_store(&b.release, true);
    cr_assert_eq(engine_close(e), 3);

    e = open_engine();
    engine_result res;
    ns_row *row = engine_get(e, "w", "blocker", &res);
    cr_assert_eq(res, ENGINE_ACCEPTED, "the committed row is gone");
    model_row_unref(row);
    cr_assert_null(engine_get(e, "r", "a", &res));
    cr_assert_eq(res, ENGINE_NOT_FOUND, "a dropped update reached the file");
    cr_assert_eq(engine_close(e), 0);
}

Test(writer_thread, spill_path_names_the_sidecar)
{
    engine *e = open_engine();
    char quoted[4300];
    const char *q = writer_thread_spill_qpath(e, quoted, sizeof quoted);
    cr_assert_not_null(strstr(q, ".spill"), "%s", q);
    cr_assert_not_null(strstr(q, sfx_dir()), "%s", q);
    cr_assert_eq(engine_close(e), 0);
}
