/*
 * store_fixture: the store unit tests' shared set-up; see store_fixture.h.
 */
#include "store_fixture.h"

#include <criterion/criterion.h>

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Criterion fixtures have no context argument; this is per test process. */
static char tmp_dir[64];
static char db_path[128];

void sfx_setup(const char *name)
{
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/%s.XXXXXX", name);
    cr_assert(mkdtemp(tmp_dir) != NULL);
    snprintf(db_path, sizeof db_path, "%s/ns.db", tmp_dir);
}

void sfx_remove_files(void)
{
    static const char *const suffixes[] = {
        "", "-wal", "-shm", "-journal",
        ".spill", ".spill-wal", ".spill-shm", ".spill-journal",
        ".lock",   /* an engine's, left when a test does not close it */
    };
    char p[PATH_MAX + 16];

    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        snprintf(p, sizeof p, "%s%s", db_path, suffixes[i]);
        unlink(p);
    }
}

void sfx_teardown(void)
{
    sfx_remove_files();
    rmdir(tmp_dir);
}

const char *sfx_dir(void)
{
    return tmp_dir;
}

const char *sfx_db_path(void)
{
    return db_path;
}

engine *sfx_open_engine(void)
{
    engine_config c = {
        .db_path = db_path,
        .batch_size = 1000,
        .batch_interval = 60,
        .queue_capacity = 10000,
        .shutdown_timeout = 10,
    };
    char err[512] = "";
    engine *e = engine_open(&c, err, sizeof err);

    cr_assert(e != NULL, "engine_open: %s", err);
    return e;
}

void sfx_sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

ns_update sfx_update(ns_status st, int64_t attempt)
{
    ns_update u;

    memset(&u, 0, sizeof u);
    u.status = st;
    for (int i = 0; i < NS_TS_COUNT; i++)
        u.ts[i] = NS_TS_NULL;
    if (attempt > 0) {
        u.has_attempt = true;
        u.attempt = attempt;
    }
    return u;
}

void sfx_accept(engine *e, const char *run, const char *node, ns_status st)
{
    ns_update u = sfx_update(st, 0);
    ns_row *out = NULL;

    cr_assert_eq(engine_submit(e, run, node, &u, &out), ENGINE_ACCEPTED);
    model_row_unref(out);
}

store *sfx_open_store(void)
{
    char err[512] = "";
    store *s = store_open(db_path, false, err, sizeof err);

    cr_assert(s != NULL, "store_open: %s", err);
    return s;
}

store_reader *sfx_open_reader(void)
{
    char err[512] = "";
    store_reader *r = store_reader_open(db_path, err, sizeof err);

    cr_assert(r != NULL, "store_reader_open: %s", err);
    return r;
}

ns_row sfx_draft(const char *run, const char *node, ns_status st,
                 int64_t seq)
{
    ns_row d;

    memset(&d, 0, sizeof d);
    d.run_id = run;
    d.node_id = node;
    d.status = st;
    d.attempt = 1;
    for (int f = 0; f < NS_TS_COUNT; f++)
        d.ts[f] = NS_TS_NULL;
    d.updated_at = SFX_T0 + seq;
    d.seq = seq;
    return d;
}

void sfx_on_isolated(void *ctx, const ns_row *row, const char *why)
{
    sfx_isolated *iso = ctx;

    cr_assert(iso->n < SFX_MAX_ISOLATED);
    cr_assert(why != NULL);
    iso->rows[iso->n] = row;
    snprintf(iso->why[iso->n], sizeof iso->why[0], "%s", why);
    iso->n++;
}

int sfx_note(void *ctx, const char *run_id, int64_t max_seq)
{
    (void)max_seq;
    sfx_found *f = ctx;
    if (f->stop_after && f->n == f->stop_after)
        return -1;
    size_t len = strlen(f->ids);
    snprintf(f->ids + len, sizeof f->ids - len, "%s%s", len ? "," : "", run_id);
    f->n++;
    return 0;
}
