/*
 * retention: the writer thread's sweep for runs to forget (--retention).
 * A run goes once every node of it is completed or failed and its newest
 * update is older than cfg.retention. The writer finds candidates in the
 * store a page of rows at a time (store_expired_runs: a page costs
 * RETENTION_PAGE_ROWS rows, whatever the size of the table or its runs),
 * judges each again against what the engine has accepted and not yet
 * written (engine_expire_run) and queues its delete like DELETE /runs/{id},
 * so the cache forgets it and a later write starts it afresh. A page runs
 * between batches, never inside one, and pages are spaced: writes never
 * wait for more than one page.
 */
#ifndef NODESTATE_RETENTION_H
#define NODESTATE_RETENTION_H

#include <stdbool.h>
#include <stdint.h>

#include "engine_internal.h"

/*
 * Rows one page examines: reading 4096 rows in key order takes about a
 * millisecond (bench: see README, Retention), so a page never holds up the
 * batches that wait for the writer.
 */
#define RETENTION_PAGE_ROWS 4096
/*
 * Most deletes one page queues: they join the next batch beside the
 * writes, and a delete costs the rows of its run.
 */
#define RETENTION_PAGE_RUNS 256
/* Between two pages of one sweep: the writer's batches go in between. */
#define RETENTION_PAGE_GAP_NS 10000000ll /* 10 ms */
/* A page put off while the queue is half full (in entries or bytes) is tried again after this. */
#define RETENTION_BUSY_NS 1000000000ll   /* 1 s */

/* When the next page is due (CLOCK_MONOTONIC ns); INT64_MAX when none is (off, or draining). Lock held. */
int64_t retention_due_ns(engine *e);
/*
 * Runs a page if one is due: reads candidates without the lock, then queues
 * the deletes the engine agrees to under it, and asks for them to be
 * written at once. Returns whether a page ran. Writer thread, lock held
 * (dropped and taken again meanwhile).
 */
bool retention_run(engine *e);

#endif
