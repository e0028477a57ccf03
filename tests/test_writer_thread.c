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
#include "writer_thread.h"
#include "writer_blocker.h"

static void setup(void)
{
    sfx_setup("test_writer_thread");
}

TestSuite(writer_thread, .init = setup, .fini = sfx_teardown, .timeout = 120);

Test(writer_thread, dropped_queue_is_reported_lost)
{
    engine *e = sfx_open_engine();
    blocker b;
    blocker_arm(e, &b);
    sfx_accept(e, "w", "blocker", NS_RUNNING);
    cr_assert(blocker_wait(e, &b), "the writer never committed the blocker");
    sfx_accept(e, "r", "a", NS_RUNNING);
    sfx_accept(e, "r", "b", NS_RUNNING);
    sfx_accept(e, "r", "c", NS_RUNNING);

    lockcheck_lock(&e->lock);
    writer_thread_drop_queue(e);
    cr_assert_eq(e->unflushed, 3);
    lockcheck_unlock(&e->lock);
    atomic_store(&b.release, true);
    cr_assert_eq(engine_close(e), 3);

    e = sfx_open_engine();
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
    engine *e = sfx_open_engine();
    char quoted[4300];
    const char *q = writer_thread_spill_qpath(e, quoted, sizeof quoted);
    cr_assert_not_null(strstr(q, ".spill"), "%s", q);
    cr_assert_not_null(strstr(q, sfx_dir()), "%s", q);
    cr_assert_eq(engine_close(e), 0);
}
