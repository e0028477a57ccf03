/*
 * writer_blocker: holds the engine's writer thread inside its on_durable
 * callback, so it takes nothing more from the queue until released. Tests of
 * a full queue use it: the queue then stays full however the writer decides
 * when to flush. Header-only; each unit test that needs it includes it once.
 */
#ifndef NODESTATE_WRITER_BLOCKER_H
#define NODESTATE_WRITER_BLOCKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "engine.h"

/* Upper bound on any wait here: a hang becomes a failure, never a timing check. */
#define BLOCKER_HANG_SECONDS 30

typedef struct blocker {
    _Atomic bool entered;   /* the writer is inside the callback */
    _Atomic bool release;   /* let it go */
} blocker;

static inline void blocker_nap(void)
{
    struct timespec ts = { 0, 5 * 1000000L };
    nanosleep(&ts, NULL);
}

static inline void blocker_hold(void *ctx, int64_t durable_seq)
{
    blocker *b = ctx;
    (void)durable_seq;
    atomic_store(&b->entered, true);
    for (int i = 0; i < BLOCKER_HANG_SECONDS * 200 && !atomic_load(&b->release); i++)
        blocker_nap();
}

/* Hooks b into e; the next commit parks the writer. */
static inline void blocker_arm(engine *e, blocker *b)
{
    atomic_init(&b->entered, false);
    atomic_init(&b->release, false);
    engine_on_durable(e, blocker_hold, b);
}

/* Waits (bounded) until the writer is parked; asking it to flush meanwhile. True once it is. */
static inline bool blocker_wait(engine *e, blocker *b)
{
    for (int i = 0; i < BLOCKER_HANG_SECONDS * 200 && !atomic_load(&b->entered); i++) {
        engine_flush_soon(e);
        blocker_nap();
    }
    return atomic_load(&b->entered);
}

#endif
