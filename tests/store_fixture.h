/*
 * store_fixture: set-up the unit tests on a real database file share
 * (test_store.c, test_engine.c and the engine's parts, and faults_store.c
 * against the NODESTATE_FAULTS build of the core): a fresh directory per
 * test, opening the store and a reader, drafting rows and recording what
 * store_write's on_isolated callback was told.
 *
 * These assert with Criterion; call them only from a test or its fixtures.
 */
#ifndef NODESTATE_STORE_FIXTURE_H
#define NODESTATE_STORE_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "engine.h"
#include "store.h"

/* 2026-11-26T16:27:29.123Z; a draft's updated_at is this plus its seq. */
#define SFX_T0 INT64_C(1795710449123)

/* Makes /tmp/<name>.XXXXXX and the database path inside it. */
void sfx_setup(const char *name);
/*
 * Removes the database with its companions and spill sidecar, for a test
 * that makes several files in turn; sfx_teardown also removes the dir.
 */
void sfx_remove_files(void);
void sfx_teardown(void);
/* The directory and the database path sfx_setup made. */
const char *sfx_dir(void);
const char *sfx_db_path(void);

/* store_open / store_reader_open on the database path; assert success. */
store *sfx_open_store(void);
store_reader *sfx_open_reader(void);

/*
 * engine_open on the database path with a batch interval of 60 s (only a
 * flush or a waiter commits) and room for 10,000 queued updates; asserts
 * success.
 */
engine *sfx_open_engine(void);
/* Sleeps ms milliseconds: the pause between two looks of a bounded wait. */
void sfx_sleep_ms(long ms);
/* An update to status st, no timestamps, attempt given when > 0. */
ns_update sfx_update(ns_status st, int64_t attempt);
/* Submits status st (no timestamps given) to run/node; asserts ACCEPTED. */
void sfx_accept(engine *e, const char *run, const char *node, ns_status st);

/* A draft with every timestamp NULL and every optional text NULL. */
ns_row sfx_draft(const char *run, const char *node, ns_status st,
                 int64_t seq);

/* What sfx_on_isolated was told (pass one as store_batch.isolated_ctx). */
#define SFX_MAX_ISOLATED 8
typedef struct sfx_isolated {
    const ns_row *rows[SFX_MAX_ISOLATED];
    char why[SFX_MAX_ISOLATED][256];
    size_t n;
} sfx_isolated;

void sfx_on_isolated(void *ctx, const ns_row *row, const char *why);

/* What store_expired_runs handed sfx_note, as "a,b,c"; stops after stop_after (0: never). */
typedef struct sfx_found {
    char ids[512];
    size_t n, stop_after;
} sfx_found;

/* store_expired_runs' callback: appends run_id to the sfx_found at ctx. */
int sfx_note(void *ctx, const char *run_id, int64_t max_seq);

#endif
